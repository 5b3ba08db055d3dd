"""What is mounted and what is swapping, keyed by device number.

Parses ``/proc/self/mountinfo`` and ``/proc/swaps``. Mounts are matched to disks
by device number (``major:minor``), never by device name: names lie (symlinks,
``/dev/root``, renamed mappers), numbers do not. Filesystems that report an
anonymous device number (btrfs, for one) are resolved through their source
device node.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DevNum = tuple[int, int]

MOUNTINFO = "/proc/self/mountinfo"
SWAPS = "/proc/swaps"

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (``\\040`` space, ``\\011`` tab, ``\\012`` newline, ``\\134`` backslash)."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo``."""

    mount_id: int
    parent_id: int
    devnum: DevNum  # as the kernel reports it (0:N for anonymous/virtual filesystems)
    root: str  # the directory of the filesystem mounted here ("/" unless a bind mount of a subdir)
    mountpoint: str
    options: str
    fs_type: str
    source: str
    super_options: str

    @property
    def is_bind_of_subdir(self) -> bool:
        return self.root != "/"


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse the text of a mountinfo file; malformed lines are skipped."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            major, minor = fields[2].split(":")
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    devnum=(int(major), int(minor)),
                    root=unescape(fields[3]),
                    mountpoint=unescape(fields[4]),
                    options=fields[5],
                    fs_type=unescape(fields[sep + 1]),
                    source=unescape(fields[sep + 2]),
                    super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
                )
            )
        except (ValueError, IndexError):
            continue
    return entries


def read_mountinfo(path: str | Path = MOUNTINFO) -> list[MountEntry]:
    with open(path, "rb") as f:
        return parse_mountinfo(os.fsdecode(f.read()))


def block_devnum(path: str | Path) -> DevNum | None:
    """Device number of a block device node (follows symlinks), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return (os.major(st.st_rdev), os.minor(st.st_rdev))


def _is_block_devnum(devnum: DevNum) -> bool:
    return devnum[0] != 0 and os.path.exists(f"/sys/dev/block/{devnum[0]}:{devnum[1]}")


def mount_devnum(entry: MountEntry) -> DevNum | None:
    """The block device a mount comes from, or None for virtual filesystems (tmpfs, overlay, proc...)."""
    if _is_block_devnum(entry.devnum):
        return entry.devnum
    if entry.source.startswith("/dev/"):
        return block_devnum(entry.source)  # btrfs and friends: anonymous st_dev, real source
    return None


def mounts_by_devnum(entries: Iterable[MountEntry]) -> dict[DevNum, list[MountEntry]]:
    """Mount entries grouped by the block device they come from; whole mounts before bind mounts."""
    out: dict[DevNum, list[MountEntry]] = {}
    for entry in entries:
        dev = mount_devnum(entry)
        if dev is not None:
            out.setdefault(dev, []).append(entry)
    for lst in out.values():
        lst.sort(key=lambda e: (e.is_bind_of_subdir, len(e.mountpoint), e.mountpoint))
    return out


def mount_at(entries: Iterable[MountEntry], mountpoint: str | Path) -> MountEntry | None:
    """The mount visible at exactly this mount point (the last one stacked there)."""
    target = os.path.normpath(str(mountpoint))
    found: MountEntry | None = None
    for entry in entries:
        if entry.mountpoint == target:
            found = entry
    return found


def mount_containing(entries: Iterable[MountEntry], path: str | Path) -> MountEntry | None:
    """The mount whose mount point is the longest prefix of ``path`` (the last one wins on ties)."""
    target = os.path.normpath(os.path.abspath(str(path)))
    best: MountEntry | None = None
    for entry in entries:
        mp = entry.mountpoint
        if target == mp or target.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mountpoint):
                best = entry
    return best


@dataclass(frozen=True)
class SwapEntry:
    """One line of ``/proc/swaps``."""

    filename: str
    kind: str  # "partition" | "file"
    size_kib: int
    used_kib: int
    priority: int

    @property
    def devnum(self) -> DevNum | None:
        """The block device this swap lives on: the device itself, or the one holding the swap file."""
        if self.kind == "partition":
            return block_devnum(self.filename)
        try:
            st = os.stat(self.filename)
        except OSError:
            return None
        return (os.major(st.st_dev), os.minor(st.st_dev))


def parse_swaps(text: str) -> list[SwapEntry]:
    swaps: list[SwapEntry] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        name = unescape(fields[0])
        if name.endswith("(deleted)"):
            name = name[: -len("(deleted)")]
        try:
            swaps.append(
                SwapEntry(
                    filename=name,
                    kind=fields[1],
                    size_kib=int(fields[2]),
                    used_kib=int(fields[3]),
                    priority=int(fields[4]),
                )
            )
        except ValueError:
            continue
    return swaps


def read_swaps(path: str | Path = SWAPS) -> list[SwapEntry]:
    try:
        with open(path, "rb") as f:
            return parse_swaps(os.fsdecode(f.read()))
    except FileNotFoundError:
        return []


def swap_devnums(swaps: Iterable[SwapEntry]) -> set[DevNum]:
    out: set[DevNum] = set()
    for s in swaps:
        dev = s.devnum
        if dev is not None:
            out.add(dev)
    return out
