"""`rescueui disks [--json] [--image PATH] [--live-mount DIR]`: the disks and which may be written to."""

from __future__ import annotations

import argparse
import os
import sys

from rescueui.cli.output import console as safe_console
from rescueui.cli.output import echo, echo_json, say
from rescueui.core.disks import DEFAULT_LIVE_MOUNTS, Disk, Partition, scan_disks, udev_running
from rescueui.core.text import safe_text
from rescueui.core.units import human_size


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "disks",
        help="list disks and partitions, and which may be restored to",
        description="List every disk with its partitions, and whether it may be a restore "
        "target; when it may not, say why (boot medium, mounted, read-only, swap, ...).",
    )
    p.add_argument("--json", action="store_true", help="print the disks as JSON")
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="the selected image (file or folder); the disk holding it is not a target (repeatable)",
    )
    p.add_argument(
        "--live-mount",
        action="append",
        default=None,
        metavar="DIR",
        help="mount point of the running system; its disk is the boot medium (repeatable; "
        f"default: {', '.join(DEFAULT_LIVE_MOUNTS)})",
    )


# Every value from udev (model, serial, labels, mount points, backing files) is shown on one
# line with its control characters escaped (q); the cell's own line breaks are ours. The
# console (rescueui.cli.output) reads no markup in cells and escapes them again.
def q(value: object) -> str:
    return safe_text(value)


def _lines(values: list[str]) -> str:
    return "\n".join(q(v) for v in values)


def _fs_text(fs_type: str | None, label: str | None) -> str:
    if fs_type and label:
        return f"{q(fs_type)} '{q(label)}'"
    return q(fs_type or "") or (f"'{q(label)}'" if label else "")


def _disk_row(disk: Disk) -> list[str]:
    what = " ".join(q(x) for x in (disk.vendor, disk.model) if x)
    if not what and disk.backing_file:
        what = f"backing file {q(disk.backing_file)}"
    serial = f"serial {q(disk.serial)}" if disk.serial else ""
    ident = "\n".join(x for x in (what, serial) if x) or "-"
    layout = q(disk.table_type or "") or _fs_text(disk.fs_type, disk.label) or "-"
    if disk.table_type and disk.fs_type:
        layout += f", {_fs_text(disk.fs_type, disk.label)}"
    return [
        q(disk.path),
        human_size(disk.size_bytes),
        ident,
        q(disk.bus),
        layout,
        _lines(disk.mountpoints),
        "yes" if disk.targetable else "NO",
        _lines(disk.reasons),
    ]


def _partition_row(part: Partition, branch: str) -> list[str]:
    name = f'#{part.number} "{q(part.part_label)}"' if part.part_label else f"#{part.number}"
    extra = [name, f"at {human_size(part.start_bytes)}"]
    if part.swap:
        extra.append("swap")
    if part.holders:
        extra.append("held by " + ", ".join(q(h) for h in part.holders))
    return [
        f"{branch}{q(part.path)}",
        human_size(part.size_bytes),
        ", ".join(extra),
        "",
        _fs_text(part.fs_type, part.label) or "-",
        _lines(part.mountpoints),
        "",
        "",
    ]


def print_table(disks: list[Disk], *, ascii_only: bool = False) -> None:
    from rich import box
    from rich.table import Table

    # Piped or redirected: wide enough that reasons and paths stay on one line (COLUMNS wins).
    wide = sys.stdout.isatty() or "COLUMNS" in os.environ
    console = safe_console(width=None if wide else 200)
    table = Table(box=box.ASCII if ascii_only else box.SQUARE, header_style="bold")
    table.add_column("Device", no_wrap=True)
    table.add_column("Size", no_wrap=True, justify="right")
    table.add_column("Model / serial", overflow="fold", max_width=30)
    table.add_column("Bus")
    table.add_column("Table / filesystem", overflow="fold")
    table.add_column("Mounted on", overflow="fold")
    table.add_column("Target", justify="center")
    table.add_column("Why not", overflow="fold")
    for disk in disks:
        rows = [_disk_row(disk)]
        for i, part in enumerate(disk.partitions):
            last = i == len(disk.partitions) - 1
            branch = (" `-" if last else " |-") if ascii_only else (" └─" if last else " ├─")
            rows.append(_partition_row(part, branch))
        for i, row in enumerate(rows):
            style = None
            if i == 0:
                style = "bold" if disk.targetable else None
            table.add_row(*row, style=style, end_section=i == len(rows) - 1)
    console.print(table)
    targets = sum(d.targetable for d in disks)
    console.print(f"{len(disks)} disk(s); {targets} may be restored to.")


def run(args: argparse.Namespace) -> int:
    disks = scan_disks(image_paths=args.image, live_mounts=args.live_mount)
    if not udev_running():
        say(
            "rescueui: warning: udev is not running; labels, models and serials may be missing "
            "(start it: /lib/systemd/systemd-udevd --daemon && udevadm trigger && udevadm settle)"
        )
    if args.json:
        echo_json([d.to_dict() for d in disks])
    elif not disks:
        echo("No disks found (is udev running? try: udevadm trigger && udevadm settle)")
    else:
        print_table(disks, ascii_only=bool(getattr(args, "ascii", False)))
    return 0
