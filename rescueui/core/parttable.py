"""Partition tables through real ``sfdisk``: read as JSON, write back from that JSON.

The table is the ``partitiontable`` object of ``sfdisk --json`` (label, id,
firstlba/lastlba, sectorsize, partitions with node/start/size/type/uuid/name/attrs/
bootable), stored as-is in the image manifest. :func:`write_table` turns it back into
an sfdisk script that keeps the disk identifier, partition numbers, UUIDs, names,
types and attributes. :func:`tell_kernel` makes the kernel see the new partitions
(this kernel has no partition parsers: BLKPG through ``partx`` is the way).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rescueui.core.errors import DiskError
from rescueui.core.tools import find_tool, require_tool

# Partition types of a DOS extended partition (a container of logical partitions).
DOS_EXTENDED_TYPES = frozenset({"5", "f", "85"})

_SAFE_VALUE = re.compile(r"^[0-9A-Za-z_.:,\- ]*$")


def _tool(name: str) -> str:
    return require_tool(
        name, hint="It is part of util-linux; install it (it is in the live image)."
    )


def read_table(
    path: str | Path, *, sector_size: int | None = None, pass_fds: tuple[int, ...] = ()
) -> dict[str, Any] | None:
    """The partition table of a disk or disk image file, or None if it has none.

    ``sector_size``: read it as a disk of that logical sector size (an image file);
    ``pass_fds``: descriptors ``path`` names (``/dev/fd/N`` of an in-memory disk)."""
    sfdisk = _tool("sfdisk")
    cmd = [sfdisk, "--json", os.fspath(path)]
    if sector_size is not None and sector_size != 512:
        cmd[1:1] = ["--sector-size", str(sector_size)]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            errors="replace",
            check=False,
            timeout=60,
            pass_fds=pass_fds,
            env=dict(os.environ, LC_ALL="C"),  # the "no table" message is matched below
        )
    except subprocess.TimeoutExpired as exc:
        raise DiskError(f"sfdisk did not answer in 60 s reading {path}.") from exc
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if "does not contain a recognized partition table" in err:
            return None
        raise DiskError(
            f"Cannot read the partition table of {path}: {err or 'sfdisk failed'}.",
            hint="Check that the disk is readable (see 'dmesg' for I/O errors).",
        )
    try:
        table = json.loads(proc.stdout)["partitiontable"]
    except (ValueError, KeyError) as exc:
        raise DiskError(f"sfdisk printed an unexpected table for {path}: {exc}.") from exc
    return dict(table)


def partition_number(part: dict[str, Any]) -> int:
    """The partition number of one entry of ``partitions`` (trailing digits of ``node``)."""
    m = re.search(r"(\d+)$", str(part.get("node", "")))
    if not m:
        raise DiskError(f"Cannot tell the partition number of {part.get('node')!r}.")
    return int(m.group(1))


def is_extended(table: dict[str, Any], part: dict[str, Any]) -> bool:
    """True for a DOS extended partition (its bytes belong to the logical ones inside)."""
    return table.get("label") == "dos" and str(part.get("type", "")).lower() in DOS_EXTENDED_TYPES


def sector_size(table: dict[str, Any]) -> int:
    return int(table.get("sectorsize", 512))


def node_name(device: str, number: int) -> str:
    """``/dev/sda`` + 1 -> ``/dev/sda1``; ``/dev/loop3`` + 1 -> ``/dev/loop3p1``."""
    sep = "p" if device[-1:].isdigit() else ""
    return f"{device}{sep}{number}"


@contextlib.contextmanager
def partition_device(
    disk: str | Path, number: int, table: dict[str, Any], *, read_only: bool
) -> Iterator[str]:
    """A block device for partition ``number`` of ``table``: its node on a disk the kernel
    was told about (:func:`tell_kernel`), or a temporary loop device over that range of a
    disk-image file (detached afterwards)."""
    from rescueui.core import blockdev

    path = os.fspath(disk)
    if stat.S_ISBLK(os.stat(path).st_mode):
        yield node_name(path, number)
        return
    ss = sector_size(table)
    part = next(p for p in table.get("partitions", []) if partition_number(p) == number)
    start, size = int(part["start"]) * ss, int(part["size"]) * ss
    with blockdev.range_device(path, start, size, read_only=read_only) as dev:
        yield dev


def _quote(value: str) -> str:
    """Quote for an sfdisk script; sfdisk decodes ``\\xNN`` escapes (no backslash-quote)."""
    return '"' + value.replace("\\", "\\x5c").replace('"', "\\x22") + '"'


def table_to_script(table: dict[str, Any], device: str) -> str:
    """An sfdisk script that recreates ``table`` on ``device`` (numbers, ids, names kept)."""
    label = table.get("label")
    if label not in ("gpt", "dos"):
        raise DiskError(
            f"Unsupported partition table type {label!r}.",
            hint="Only GPT and DOS/MBR tables can be written.",
        )
    lines = [f"label: {label}"]
    if table.get("id"):
        lines.append(f"label-id: {table['id']}")
    lines.append("unit: sectors")
    if "sectorsize" in table:
        lines.append(f"sector-size: {int(table['sectorsize'])}")
    if label == "gpt":
        if "firstlba" in table:
            lines.append(f"first-lba: {int(table['firstlba'])}")
        if "lastlba" in table:
            lines.append(f"last-lba: {int(table['lastlba'])}")
        if "table-length" in table:
            lines.append(f"table-length: {int(table['table-length'])}")
    lines.append("")
    for part in table.get("partitions", []):
        fields = [f"start={int(part['start'])}", f"size={int(part['size'])}"]
        ptype = str(part.get("type", ""))
        if ptype:
            if not _SAFE_VALUE.match(ptype):
                raise DiskError(f"Refusing a partition type with odd characters: {ptype!r}.")
            fields.append(f"type={ptype}")
        if part.get("uuid"):
            uuid = str(part["uuid"])
            if not _SAFE_VALUE.match(uuid):
                raise DiskError(f"Refusing a partition UUID with odd characters: {uuid!r}.")
            fields.append(f"uuid={uuid}")
        if part.get("name"):
            fields.append(f"name={_quote(str(part['name']))}")
        if part.get("attrs"):
            fields.append(f"attrs={_quote(str(part['attrs']))}")
        if part.get("bootable"):
            fields.append("bootable")
        lines.append(f"{node_name(device, partition_number(part))} : " + ", ".join(fields))
    return "\n".join(lines) + "\n"


def write_table(path: str | Path, table: dict[str, Any]) -> None:
    """Write ``table`` (an sfdisk-json ``partitiontable``) onto the disk or image file ``path``.

    Does not tell the kernel; call :func:`tell_kernel` afterwards for block devices.
    The caller has confirmed the target (a table is only written by a confirmed
    whole-disk restore).
    """
    sfdisk = _tool("sfdisk")
    device = os.fspath(path)
    script = table_to_script(table, device)
    proc = subprocess.run(
        [sfdisk, "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never", device],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DiskError(
            f"Writing the partition table to {device} failed: "
            f"{proc.stderr.strip() or proc.stdout.strip() or 'sfdisk failed'}.",
            hint="Check that the disk is large enough and not in use, then try again.",
        )


def tell_kernel(path: str | Path) -> None:
    """Make the kernel drop and re-add ``path``'s partitions (BLKPG via partx), then settle.

    Regular files: nothing to do.
    """
    device = os.fspath(path)
    try:
        if not stat.S_ISBLK(os.stat(device).st_mode):
            return
    except FileNotFoundError as exc:
        raise DiskError(f"{device} disappeared.", hint="Check the cable and try again.") from exc
    partx = _tool("partx")
    subprocess.run([partx, "-d", device], capture_output=True, check=False)
    proc = subprocess.run([partx, "-a", device], capture_output=True, text=True, check=False)
    # partx -a fails with "no partitions" on an empty table; that is fine.
    if proc.returncode != 0 and "failed to read partition table" in proc.stderr:
        raise DiskError(f"The kernel could not read the new partition table of {device}.")
    udevadm = find_tool("udevadm")
    if udevadm:
        subprocess.run([udevadm, "settle", "--timeout=30"], capture_output=True, check=False)
