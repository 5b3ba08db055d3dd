"""Restoring onto a larger (or smaller-but-sufficient) disk: adapt the table, grow the last fs.

* :func:`adapt_table` rewrites an ``sfdisk --json`` partition table for the real size
  of the target: a GPT's ``last-lba`` moves so the backup table lands at the disk's
  real end, and with ``grow=True`` the last partition is extended to the end (end
  aligned down to 1 MiB; a GPT keeps room for its backup entries and header). Pure.
* :func:`grow_filesystem` grows the filesystem in a grown partition: ext2/3/4 with
  ``e2fsck -fy`` + ``resize2fs``, xfs with ``xfs_growfs`` and btrfs with ``btrfs
  filesystem resize max`` on a temporary mount; vfat and others are left as they are,
  with a note.
* :func:`finish_larger_disk` is the wiring a whole-disk restore calls *after* the data
  is written and verified: write the adapted table, tell the kernel, grow the fs.

Every function returns notes for the job report (what was resized, from what to what).
"""

from __future__ import annotations

import copy
import os
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rescueui.core import blockdev, fsmount, parttable
from rescueui.core.errors import RestoreError, TargetTooSmallError, ToolMissingError
from rescueui.core.tools import require_tool
from rescueui.core.units import MiB, human_size

if TYPE_CHECKING:
    from rescueui.core.image import Image

GPT_ENTRY_SIZE = 128
GPT_DEFAULT_ENTRIES = 128
DOS_MAX_SECTORS = 2**32 - 1  # an MBR entry counts sectors in 32 bits
ALIGN = MiB

EXT_TYPES = fsmount.EXT_TYPES
FAT_TYPES = fsmount.FAT_TYPES | {"exfat"}  # not grown either


def _gpt_tail_sectors(table: dict[str, Any], ss: int) -> int:
    """Sectors a GPT needs at the end of the disk: backup entries + backup header."""
    entries = int(table.get("table-length", GPT_DEFAULT_ENTRIES))
    return -(-entries * GPT_ENTRY_SIZE // ss) + 1


def _number(part: dict[str, Any]) -> int:
    return parttable.partition_number(part)


def _end(part: dict[str, Any]) -> int:
    """First sector after the partition."""
    return int(part["start"]) + int(part["size"])


def adapt_table(
    table: dict[str, Any], target_size: int, *, grow: bool, reserve_end_bytes: int = 0
) -> tuple[dict[str, Any], list[str]]:
    """``table`` rewritten for a target of ``target_size`` bytes, and notes for the report.

    ``reserve_end_bytes``: the grown last partition leaves that much free at the end (a
    partition the fix-ups add there).

    Raises :class:`TargetTooSmallError` when a partition would not fit.
    The input is not modified.
    """
    new = copy.deepcopy(table)
    notes: list[str] = []
    label = new.get("label")
    ss = int(new.get("sectorsize", 512))
    total = target_size // ss  # whole sectors on the target
    parts: list[dict[str, Any]] = list(new.get("partitions") or [])
    if label == "gpt":
        last_usable = total - _gpt_tail_sectors(new, ss) - 1
        limit = last_usable + 1  # first sector partitions may not use
        old_last = new.get("lastlba")
        new["lastlba"] = last_usable
        if old_last != last_usable:
            notes.append(
                f"GPT written for the target's {human_size(target_size)} "
                f"(last usable sector {old_last} -> {last_usable}; backup table at the end)."
            )
    elif label == "dos":
        limit = min(total, DOS_MAX_SECTORS + 1)
    else:
        raise RestoreError(
            f"Cannot adapt a partition table of type {label!r}.",
            hint="Only GPT and DOS/MBR tables are supported.",
        )
    for p in parts:
        if _end(p) > limit:
            short = (_end(p) - limit) * ss
            raise TargetTooSmallError(
                f"Partition {_number(p)} ends {short:,} bytes beyond the usable end of the "
                f"target ({human_size(target_size)}).",
                hint="Choose a larger target disk.",
            )
    if not parts:
        return new, notes
    data_parts = [p for p in parts if not parttable.is_extended(new, p)]
    last = max(data_parts or parts, key=_end)
    aligned_limit = (max(0, limit * ss - reserve_end_bytes) // ALIGN) * ALIGN // ss
    room = (aligned_limit - _end(last)) * ss
    if not grow:
        spare = (limit - _end(last)) * ss
        if spare >= ALIGN:
            notes.append(
                f"Partition sizes kept (no grow): {human_size(spare)} left unused after "
                f"partition {_number(last)}."
            )
        return new, notes
    if room < ALIGN:
        return new, notes
    # A logical partition grows together with the extended partition that holds it (that
    # extended partition is then the last thing on the disk: ``last`` ends after all others).
    container = None
    if label == "dos" and _number(last) >= 5:
        container = next(
            (
                p
                for p in parts
                if parttable.is_extended(new, p) and int(p["start"]) <= int(last["start"]) < _end(p)
            ),
            None,
        )
    old_size = int(last["size"])
    last["size"] = aligned_limit - int(last["start"])
    if container is not None:
        container["size"] = aligned_limit - int(container["start"])
    notes.append(
        f"Partition {_number(last)} grown from {human_size(old_size * ss)} to "
        f"{human_size(int(last['size']) * ss)} to fill the disk."
    )
    return new, notes


def grown_partition(old: dict[str, Any], new: dict[str, Any]) -> int | None:
    """Number of the (non-extended) partition whose size ``adapt_table`` increased."""
    before = {_number(p): int(p["size"]) for p in old.get("partitions") or []}
    for p in new.get("partitions") or []:
        n = _number(p)
        if not parttable.is_extended(new, p) and int(p["size"]) > before.get(n, 0):
            return n
    return None


# --------------------------------------------------------------------------- filesystems


def _tool(name: str) -> str:
    return require_tool(
        name,
        message=f"The program '{name}' is not installed, so the filesystem cannot be grown.",
        hint="It is part of the live image; the restored data is intact, only not grown.",
    )


def _run(cmd: list[str], what: str, ok_codes: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode not in ok_codes:
        out = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise RestoreError(
            f"{what} failed ({' '.join(cmd)}, exit {proc.returncode}): "
            f"{out[-1] if out else 'no output'}.",
            hint="The restored data is intact; the filesystem keeps its original size.",
        )
    return proc.stdout


def _ext_size(path: str) -> int:
    out = _run([_tool("dumpe2fs"), "-h", path], "Reading the ext filesystem size")
    count = size = 0
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Block count":
            count = int(value.strip())
        elif key.strip() == "Block size":
            size = int(value.strip())
    return count * size


def _fs_bytes(mountpoint: str) -> int:
    st = os.statvfs(mountpoint)
    return st.f_blocks * st.f_frsize


def grow_filesystem(partition_path: str, fs_type: str | None) -> str:
    """Grow the filesystem on ``partition_path`` to fill its partition; a note for the report.

    Raises :class:`RestoreError` (or ToolMissingError) when a grower fails; vfat and
    unknown filesystems are left alone (the note says so).
    """
    fs = (fs_type or "").lower()
    if fs in EXT_TYPES:
        # -f: check even if clean; -y: fix what it finds. Exit 1/2 = errors fixed.
        _run([_tool("e2fsck"), "-f", "-y", partition_path], f"Checking {partition_path}", (0, 1, 2))
        before = _ext_size(partition_path)
        _run([_tool("resize2fs"), partition_path], f"Growing {fs} on {partition_path}")
        after = _ext_size(partition_path)
        return (
            f"{fs} filesystem on {partition_path} grown from {human_size(before)} to "
            f"{human_size(after)} (e2fsck -fy, resize2fs)."
        )
    if fs == "xfs":
        with fsmount.mounted(partition_path, "xfs", read_only=False, purpose="grow") as mnt:
            before = _fs_bytes(mnt)
            _run([_tool("xfs_growfs"), mnt], f"Growing xfs on {partition_path}")
            after = _fs_bytes(mnt)
        return (
            f"xfs filesystem on {partition_path} grown from {human_size(before)} to "
            f"{human_size(after)} (xfs_growfs on a temporary mount)."
        )
    if fs == "btrfs":
        with fsmount.mounted(partition_path, "btrfs", read_only=False, purpose="grow") as mnt:
            before = _fs_bytes(mnt)
            _run(
                [_tool("btrfs"), "filesystem", "resize", "max", mnt],
                f"Growing btrfs on {partition_path}",
            )
            after = _fs_bytes(mnt)
        return (
            f"btrfs filesystem on {partition_path} grown from {human_size(before)} to "
            f"{human_size(after)} (btrfs filesystem resize max on a temporary mount)."
        )
    if fs in FAT_TYPES:
        return (
            f"{fs} filesystem on {partition_path} left at its size (FAT is not grown); the "
            "rest of the partition is unused."
        )
    if fs == "swap":
        return (
            f"Swap area on {partition_path} left at its size; run mkswap on it to use the whole "
            "partition (this changes its UUID unless given with -U)."
        )
    what = f"{fs} filesystem" if fs else "Unknown content"
    return f"{what} on {partition_path} left at its size (no grower for it)."


# --------------------------------------------------------------------------- wiring


def _part_bytes(table: dict[str, Any], number: int) -> int:
    ss = int(table.get("sectorsize", 512))
    part = next(p for p in table.get("partitions", []) if _number(p) == number)
    return int(part["size"]) * ss


def _kernel_sees(dev: str, size: int, disk: str, number: int) -> bool:
    """True once the kernel's size of ``dev`` is ``size``; retries ``partx -u`` for a disk."""

    for attempt in range(3):
        try:
            if blockdev.device_size(dev) == size:
                return True
        except Exception:
            pass
        if not stat.S_ISBLK(os.stat(disk).st_mode) or attempt == 2:
            break
        subprocess.run(
            [_tool("partx"), "-u", "--nr", str(number), disk], capture_output=True, check=False
        )
        subprocess.run(["udevadm", "settle", "--timeout=10"], capture_output=True, check=False)
    return False


class HeldTarget(Protocol):
    """The confirmed target held by the restore (``target.TargetHandle``)."""

    def ensure(self, step: str) -> None: ...

    def ensure_partition(self, node: str, number: int, step: str) -> None: ...


def finish_larger_disk(
    target_path: str | Path,
    image: Image,
    grow: bool,
    held: HeldTarget | None = None,
    reserve_end_bytes: int = 0,
) -> list[str]:
    """After a verified whole-disk restore: fit the table to the target, grow the last fs.

    Call it when the target's size differs from the source disk's (it does nothing
    otherwise) and only after the read-back verify (it changes the table the head
    stream wrote). Writes the adapted table with ``parttable.write_table``, tells the
    kernel, then grows the filesystem of the grown partition. Returns report notes; a
    grower failure becomes a note starting with "Not grown:" (the data is intact).

    ``held``: the restore's held target; each step re-checks it first and a target that
    went away or changed ends the step with ``TargetChangedError`` (never a write elsewhere).
    """

    path = os.fspath(target_path)
    table = image.manifest.partition_table
    if not table or not table.get("partitions"):
        return []

    def ensure(step: str) -> None:
        if held is not None:
            held.ensure(step)

    ensure("fitting the partition table to the larger disk")
    size = blockdev.device_size(path)
    src_size = int(image.manifest.source_disk.get("size_bytes") or 0)
    if size == src_size:
        return []
    new, notes = adapt_table(table, size, grow=grow, reserve_end_bytes=reserve_end_bytes)
    if new == table:
        return notes
    ensure("writing the partition table for the larger disk")
    parttable.write_table(path, new)
    ensure("telling the kernel about the new partition table")
    parttable.tell_kernel(path)
    number = grown_partition(table, new) if grow else None
    if number is None:
        return notes
    stream = image.manifest.partition_stream(number)
    fs_type = stream.fs_type if stream else None
    try:
        ensure(f"growing partition {number}")
        with parttable.partition_device(path, number, new, read_only=False) as dev:
            want = _part_bytes(new, number)
            if not _kernel_sees(dev, want, path, number):
                raise RestoreError(
                    f"The kernel still sees the old size of {dev} (the partition may be in use).",
                    hint=f"Run `partx -u {path}` or reboot, then grow the filesystem by hand.",
                )
            if held is not None and dev == parttable.node_name(path, number):
                held.ensure_partition(dev, number, f"growing the filesystem on {dev}")
            else:
                ensure(f"growing the filesystem of partition {number}")
            note = grow_filesystem(dev, fs_type)
            if dev != parttable.node_name(path, number):  # a loop over a disk-image file
                note = note.replace(dev, f"partition {number} of {path} (via {dev})")
            notes.append(note)
    except (RestoreError, ToolMissingError) as exc:
        notes.append(f"Not grown: {exc}")
    return notes
