"""`rescueui capture SOURCE IMAGE_DIR [--level N] [--partition N ...] [--allow-mounted]`."""

from __future__ import annotations

import argparse
import json
import sys

from rescueui.core.errors import RescueError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "capture",
        help="capture a disk (or a disk image file) into an image folder",
        description="Capture SOURCE (a whole disk such as /dev/sda, or a disk image file) into "
        "the new folder IMAGE_DIR: one zstd stream per partition plus the boot area, hashed "
        "with BLAKE3. Exit status 0 only on success.",
    )
    p.add_argument("source", metavar="SOURCE", help="disk to capture, e.g. /dev/sda")
    p.add_argument("image_dir", metavar="IMAGE_DIR", help="new or empty folder for the image")
    p.add_argument("--level", type=int, default=3, metavar="N", help="zstd level 1-19 (default 3)")
    p.add_argument(
        "--partition",
        type=int,
        action="append",
        metavar="N",
        help="capture only partition N (repeatable); default: the whole disk",
    )
    p.add_argument(
        "--allow-mounted",
        action="store_true",
        help="capture even if a filesystem on the source is mounted read-write "
        "(the image may be inconsistent; the report says so)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    from rescueui.cli.progress_display import ProgressDisplay, cancel_on_interrupt
    from rescueui.core.capture import capture

    with cancel_on_interrupt() as cancel:
        display = ProgressDisplay("capture")
        try:
            if args.quiet:
                report = capture(
                    args.source,
                    args.image_dir,
                    level=args.level,
                    partitions=args.partition,
                    allow_mounted_rw=args.allow_mounted,
                    cancel=cancel,
                )
            else:
                with display:
                    report = capture(
                        args.source,
                        args.image_dir,
                        level=args.level,
                        partitions=args.partition,
                        allow_mounted_rw=args.allow_mounted,
                        progress=display.callback,
                        cancel=cancel,
                    )
        except RescueError as exc:
            return failed("capture", exc, args.json)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.text, end="")
        for path in report.report_files:
            print(f"Report: {path}")
    return 0


def failed(job: str, exc: RescueError, as_json: bool) -> int:
    """One paragraph on stderr: the cause, the next step, where the report is."""
    report = getattr(exc, "report", None)
    where = ""
    if report is not None and report.report_files:
        where = f" Report: {report.report_files[0]}"
    print(f"rescueui {job}: {exc}{where}", file=sys.stderr)
    if as_json and report is not None:
        print(json.dumps(report.to_dict(), indent=2))
    return exc.exit_code
