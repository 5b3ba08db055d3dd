"""The one rule for space the filesystems do not use: made zero on the target, or left.

An image that knows which ranges its filesystems do not use (our format 2, a Clonezilla
folder's partclone bitmaps, a bmap) lets a restore skip them: no filesystem reads them. Where
the target makes a range zero without writing it (WRITE ZEROES offloaded to the device, a
loop device or file whose backing file punches holes) they are made zero anyway, so the
target reads back exactly as the image; where zeroing means writing every byte (a spinning
disk, a device without WRITE ZEROES) they are left as they are — hours saved on a large disk
— unless the operator asks for an exact restore.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SYS_DEV_BLOCK = Path("/sys/dev/block")


PROBE_BYTES = 64 * 1024 * 1024  # zeroed once to see whether zeroing is really fast
MIN_ZERO_RATE = 2e9  # bytes/s: zeroing slower than this writes the zeros


@dataclass(frozen=True)
class UnusedSpace:
    """What a restore does with the ranges no filesystem uses, and why (for the report)."""

    zero: bool  # True: made zero (fast); False: left as they are on the target
    reason: str
    asked: bool = False  # the operator asked for an exact restore: zeroed however slow

    @property
    def leave(self) -> bool:
        return not self.zero

    def to_dict(self) -> dict[str, object]:
        return {"zeroed": self.zero, "reason": self.reason}


def _queue_dir(devnum: tuple[int, int], sys_dev_block: Path) -> Path | None:
    """The request queue of the disk behind ``devnum`` (a partition's disk's queue)."""
    try:
        dev = (sys_dev_block / f"{devnum[0]}:{devnum[1]}").resolve(strict=True)
    except OSError:
        return None
    if (dev / "partition").exists():
        dev = dev.parent
    queue = dev / "queue"
    return queue if queue.is_dir() else None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def unused_space(
    kind: str,
    devnum: tuple[int, int] | None,
    *,
    exact: bool,
    sys_dev_block: Path = SYS_DEV_BLOCK,
) -> UnusedSpace:
    """Decide, for a target (``kind`` "block" or "file", its device number), whether the
    space no filesystem uses is made zero or left as it is."""
    if exact:
        return UnusedSpace(True, "an exact restore was asked: every byte as in the image", True)
    if kind == "file":
        return UnusedSpace(True, "the target is a file: zero ranges become holes, nothing written")
    queue = _queue_dir(devnum, sys_dev_block) if devnum else None
    if queue is None:
        return UnusedSpace(
            False, "the target's queue could not be read: zeroing could mean writing every byte"
        )
    if _read_int(queue / "rotational") == 1:
        return UnusedSpace(
            False,
            "the target is a spinning disk: zeroing the space no filesystem uses would write "
            "every byte of it",
        )
    if (_read_int(queue / "write_zeroes_max_bytes") or 0) > 0:
        return UnusedSpace(True, "the target zeroes ranges without writing them (WRITE ZEROES)")
    return UnusedSpace(
        False, "the target cannot zero ranges without writing them (no WRITE ZEROES)"
    )


def probe_zeroing(
    space: UnusedSpace,
    devnum: tuple[int, int] | None,
    ranges: list[tuple[int, int]],
    zero: Callable[[int, int], object],
    *,
    sys_dev_block: Path = SYS_DEV_BLOCK,
) -> UnusedSpace:
    """Before a restore writes (its target open): make the start of the first unused range
    zero as the restore would (``zero(offset, length)``) and see whether that was fast. A
    device that offers WRITE ZEROES may still fall back to writing zeros (a loop device on
    tmpfs: the kernel then drops its WRITE ZEROES), or offload it slowly: then the space is
    left as it is after all. Only for a block device whose queue said it zeroes fast."""
    if not space.zero or space.asked or devnum is None or not ranges:
        return space
    offset, length = ranges[0]
    length = min(length, PROBE_BYTES)
    started = time.monotonic()
    zero(offset, length)
    seconds = max(time.monotonic() - started, 1e-6)
    queue = _queue_dir(devnum, sys_dev_block)
    if queue is not None and (_read_int(queue / "write_zeroes_max_bytes") or 0) == 0:
        return UnusedSpace(
            False,
            "the target offered to zero ranges without writing them (WRITE ZEROES) but "
            "writes the zeros after all",
        )
    rate = length / seconds
    if length >= 4 * 1024 * 1024 and rate < MIN_ZERO_RATE:
        return UnusedSpace(
            False,
            f"zeroing on the target ran at {rate / 1e6:.0f} MB/s: it writes the zeros, which "
            "would cost as much as writing data",
        )
    return space


def unused_space_of(path: str, *, exact: bool = False) -> UnusedSpace:
    """:func:`unused_space` for a target named by its path (the pre-flight's view)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        # not there yet: the new disk image file a job will make in an existing folder
        kind = "file" if os.path.isdir(os.path.dirname(os.path.abspath(path))) else "block"
        return unused_space(kind, None, exact=exact)
    except OSError:
        return unused_space("block", None, exact=exact)
    if stat.S_ISREG(st.st_mode):
        return unused_space("file", None, exact=exact)
    return unused_space("block", (os.major(st.st_rdev), os.minor(st.st_rdev)), exact=exact)


def describe_left(left_bytes: int, zeroed_bytes: int, space: UnusedSpace) -> str:
    """One sentence for the report about the space no filesystem uses in this restore."""
    from rescueui.core.units import human_size

    if space.zero:
        return f"Space no filesystem uses: {human_size(zeroed_bytes)} made zero ({space.reason})."
    return (
        f"Space no filesystem uses: {human_size(left_bytes)} left as it was on the target, "
        f"not written and not read back ({space.reason}); an exact restore makes it zero."
    )


__all__ = [
    "UnusedSpace",
    "describe_left",
    "probe_zeroing",
    "unused_space",
    "unused_space_of",
]
