"""`rescueui verify IMAGE`: check what an image of any kind allows, without a target."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "verify",
        help="verify an image (ours: every chunk and hash; raw: the stream and bmap ranges; "
        "VM disks: QEMU's metadata check)",
        description="Check an image without a target, as far as its kind allows: a rescueui "
        "folder's every chunk, stream root and manifest hash; a raw image's compressed stream "
        "and .bmap range checksums; a VM disk's metadata (qemu-img check; VM disks carry no "
        "data checksums). Nothing is written except a report. Exit status 0 only if the image "
        "is intact as far as it could be checked.",
    )
    p.add_argument("image_dir", metavar="IMAGE", help="image folder or image file")
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
