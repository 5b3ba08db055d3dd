"""`rescueui extract IMAGE --partition N PATH... DEST`: files out of an image, no restore."""

from __future__ import annotations

import argparse

from rescueui.cli.output import partition_number


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from rescueui.cli.restore import IMAGE_HELP

    p = sub.add_parser(
        "extract",
        help="copy files and folders out of an image's partition (read-only view)",
        description="Copy PATH... from partition N of IMAGE into the folder DEST, keeping "
        "modes, owners, times, extended attributes (ACLs), links, hard links and holes. "
        "Nothing at DEST is overwritten. The report lists every file with its SHA-256.",
    )
    p.add_argument("image_dir", metavar="IMAGE", help=IMAGE_HELP)
    p.add_argument("--partition", type=partition_number, required=True, metavar="N")
    p.add_argument("items", metavar="PATH... DEST", nargs="+", help="paths in the image, then DEST")
    p.add_argument(
        "--onto-image-medium",
        action="store_true",
        help="allow DEST on the medium that holds the image",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    from rescueui.cli.output import say
    from rescueui.cli.progress_display import run_job
    from rescueui.core.files import extract

    if len(args.items) < 2:
        say("rescueui extract: give one or more paths in the image, then the destination folder.")
        return 2
    *paths, dest = args.items
    return run_job(
        "extract",
        lambda progress, cancel: extract(
            args.image_dir,
            args.partition,
            paths,
            dest,
            allow_image_medium=args.onto_image_medium,
            progress=progress,
            cancel=cancel,
        ),
        quiet=args.quiet,
        as_json=args.json,
    )
