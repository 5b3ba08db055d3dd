"""Where a file's bytes lie in its filesystem's partition: the FIEMAP ioctl.

::

    extents = file_extents(fd, size)     # None: read the file the ordinary way
    for e in extents: ...                # logical offset, byte offset in the partition

Used to read a large file of an image's read-only view straight from the image (each chunk
decoded and checked in the reading process) instead of through the kernel's filesystem, the
loop device and the FUSE file (:mod:`rescueui.core.files`). Only for filesystems whose
FIEMAP offsets are byte offsets on their device (ext2/3/4, xfs: not btrfs, whose are its
own logical addresses), and only when every extent is a plain one: an extent the kernel
flags as unknown, delayed, encoded, encrypted, unaligned, inline or a tail makes the answer
None.
"""

from __future__ import annotations

import fcntl
import struct
from dataclasses import dataclass

FS_IOC_FIEMAP = 0xC020660B
_HEAD = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, mapped, count, reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3 reserved
BATCH = 256  # extents asked for at a time

FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNWRITTEN = 0x800  # allocated, never written: reads as zeros
# extents whose bytes are not plainly at their physical offset
_UNUSABLE = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400

FS_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs"})  # FIEMAP offsets are device bytes


@dataclass(frozen=True)
class FileExtent:
    logical: int  # offset in the file
    physical: int  # offset in the partition
    length: int
    unwritten: bool = False  # reads as zeros


def file_extents(fd: int, size: int) -> list[FileExtent] | None:
    """The extents of the open regular file ``fd`` (``size`` bytes), in file order; None
    when the filesystem does not answer or an extent is not plain data on the device."""
    out: list[FileExtent] = []
    start = 0
    while start < size:
        request = bytearray(_HEAD.size + BATCH * _EXTENT.size)
        _HEAD.pack_into(request, 0, start, size - start, 0, 0, BATCH, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
        except OSError:
            return None
        mapped = _HEAD.unpack_from(request, 0)[3]
        if mapped == 0:
            break
        last = False
        for i in range(mapped):
            logical, physical, length, _r1, _r2, flags, *_ = _EXTENT.unpack_from(
                request, _HEAD.size + i * _EXTENT.size
            )
            if flags & _UNUSABLE or length <= 0:
                return None
            if out and logical < out[-1].logical + out[-1].length:
                return None  # overlapping or out of order: not trusted
            out.append(FileExtent(logical, physical, length, bool(flags & FIEMAP_EXTENT_UNWRITTEN)))
            last = bool(flags & FIEMAP_EXTENT_LAST)
            start = logical + length
        if last:
            break
    return out
