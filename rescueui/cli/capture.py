"""`rescueui capture SOURCE IMAGE_DIR [--level N] [--partition N ...] [--allow-mounted]
[--all-blocks]`."""

from __future__ import annotations

import argparse
import re

from rescueui.cli.output import partition_number

MIN_LEVEL, MAX_LEVEL = 1, 19


def zstd_level(text: str) -> int:
    """``--level N``: a whole number from 1 to 19 (ASCII digits), else a usage error naming
    the range."""
    value = text.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number; give a zstd level from {MIN_LEVEL} to {MAX_LEVEL} "
            "(3, the default, is fast; 19 is about 12% smaller and far slower)"
        )
    level = int(value)
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        raise argparse.ArgumentTypeError(
            f"zstd level {level} is out of range; give {MIN_LEVEL} to {MAX_LEVEL} "
            "(3, the default, is fast; 19 is about 12% smaller and far slower)"
        )
    return level


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
    p.add_argument(
        "--level",
        type=zstd_level,
        default=3,
        metavar="N",
        help=f"zstd level {MIN_LEVEL}-{MAX_LEVEL} (default 3)",
    )
    p.add_argument(
        "--partition",
        type=partition_number,
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
    p.add_argument(
        "--all-blocks",
        action="store_true",
        help="read every byte of every partition (default: only the blocks each filesystem "
        "uses, from partclone's map; swap gets a fresh header)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    from rescueui.cli.progress_display import run_job
    from rescueui.core.capture import capture

    return run_job(
        "capture",
        lambda progress, cancel: capture(
            args.source,
            args.image_dir,
            level=args.level,
            partitions=args.partition,
            allow_mounted_rw=args.allow_mounted,
            all_blocks=args.all_blocks,
            progress=progress,
            cancel=cancel,
        ),
        quiet=args.quiet,
        as_json=args.json,
    )
