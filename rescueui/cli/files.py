"""`rescueui files IMAGE --partition N [PATH]`: list a folder inside an image, read-only."""

from __future__ import annotations

import argparse
import stat
import time

from rescueui.cli.output import echo, echo_json, partition_number, say
from rescueui.core.units import human_size


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from rescueui.cli.restore import IMAGE_HELP

    p = sub.add_parser(
        "files",
        help="list a folder inside an image's partition (mounted read-only; nothing written)",
        description="List the folder PATH (default /) of partition N of IMAGE: its filesystem "
        "is mounted read-only from the image itself (no restore), and released afterwards.",
    )
    # one positional list: argparse would give an optional PATH after --partition nothing
    p.add_argument(
        "where", metavar="IMAGE [PATH]", nargs="+", help=f"{IMAGE_HELP}; then the folder (/)"
    )
    p.add_argument("--partition", type=partition_number, required=True, metavar="N")
    p.set_defaults(trailing=[])  # PATH after the options (see rescueui.cli.main)
    p.add_argument("--json", action="store_true", help="print the entries as JSON")


def run(args: argparse.Namespace) -> int:
    from rescueui.core.files import list_folder
    from rescueui.core.images.view import partition_view

    args.where += args.trailing
    if len(args.where) > 2:
        say("rescueui files: give the image and at most one folder in it.")
        return 2
    image_dir, path = args.where[0], (args.where[1] if len(args.where) == 2 else "/")
    said: list[int] = []

    def staging(done: int, total: int) -> None:  # one line: the reading takes a while
        if not said:
            said.append(total)
            say(
                "Partition {} of {} can only be read from its start to its end: reading {} "
                "into a staging file first…",
                args.partition, image_dir, human_size(total),
            )  # fmt: skip

    with partition_view(image_dir, args.partition, progress=staging) as view:
        entries = list_folder(view.root, path)
    if args.json:
        echo_json({"path": path, "entries": [e.to_dict() for e in entries]})
        return 0
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime_ns / 1e9))
        mode = stat.filemode(
            {"file": stat.S_IFREG, "folder": stat.S_IFDIR, "link": stat.S_IFLNK}.get(e.kind, 0)
            | e.mode
        )
        size = human_size(e.size) if e.kind == "file" else ""
        name = e.name + ("/" if e.kind == "folder" else "")
        if e.link_target is not None:
            name += f" -> {e.link_target}"
        echo("{} {:>6}:{:<6} {:>10} {} {}", mode, e.uid, e.gid, size, when, name)
    return 0
