"""`rescueui verify IMAGE_DIR`: check every chunk and hash of an image, without a target."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "verify",
        help="verify an image folder (every chunk, stream and manifest hash)",
        description="Decompress and hash every chunk of the image in IMAGE_DIR and check the "
        "stream root hashes and the manifest hash. Nothing is written except a report. "
        "Exit status 0 only if the image is intact.",
    )
    p.add_argument("image_dir", metavar="IMAGE_DIR", help="folder made by 'rescueui capture'")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    from rescueui.cli.progress_display import run_job
    from rescueui.core.verify import verify_image

    return run_job(
        "verify",
        lambda progress, cancel: verify_image(args.image_dir, progress=progress, cancel=cancel),
        quiet=args.quiet,
        as_json=args.json,
    )
