"""`rescueui verify IMAGE_DIR`: check every chunk and hash of an image, without a target."""

from __future__ import annotations

import argparse
import json

from rescueui.core.errors import RescueError


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
    from rescueui.cli.capture import failed
    from rescueui.cli.progress_display import ProgressDisplay, cancel_on_interrupt
    from rescueui.core.verify import verify_image

    with cancel_on_interrupt() as cancel:
        display = ProgressDisplay("verify")
        try:
            if args.quiet:
                report = verify_image(args.image_dir, cancel=cancel)
            else:
                with display:
                    report = verify_image(args.image_dir, progress=display.callback, cancel=cancel)
        except RescueError as exc:
            return failed("verify", exc, args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.text, end="")
        for path in report.report_files:
            print(f"Report: {path}")
    return 0
