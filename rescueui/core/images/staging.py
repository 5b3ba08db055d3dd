"""Staging: one partition of an image that can only be read in order, copied once into a
sparse file that can then be read at any place (the read-only view serves it).

Compressed raw images and Clonezilla folders are streams: a byte in the middle is reached
only by decompressing everything before it. To browse one of their partitions, the
partition is read once, from its start to its end, through the image seam's own reader —
the decoder a restore uses, with every check the kind carries (partclone's block
checksums, a bmap's range checksums, the compression's own checks, the stream's length) —
and written into a *sparse* file: blocks that read as zeros and blocks the filesystem does
not use (partclone's bitmap, a bmap's gaps) are left as holes, so the file holds only data.

A compressed raw image is read on past the partition to the end of its stream: its
checksum (gzip's CRC-32, xz's check, zstd's content checksum) sits at the end of each
compressed stream, and a partition whose bytes were never checked against it is not
served. A Clonezilla partition image is a stream of its own, read to its end anyway.

Nothing is written before the free space of the staging folder was checked against what
can be written (:func:`check_space`).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rescueui.core.errors import CancelledError, ImageError, RescueError
from rescueui.core.images.source import clip_extents
from rescueui.core.pipeline import is_all_zero
from rescueui.core.units import MiB, human_size

HOLE_BLOCK = 64 * 1024  # zero runs of this size inside a data piece are left as holes
STEP = 64 * MiB  # a compressed stream is skipped in steps of this size (progress, cancel)
MARGIN = 64 * MiB  # free space kept beyond what staging writes (plus 1 %)

StageProgress = Callable[[int, int], None]
"""``progress(done, total)``: bytes read through the image's reader so far, and in all."""


def needs_staging(image: Any) -> bool:
    """Whether ``image`` (an opened image of any kind) can only be read in order."""
    return not hasattr(image, "read_chunk") and bool(getattr(image, "sequential", False))


def _compressed_stream(image: Any) -> bool:
    return getattr(image, "kind", "") == "raw" and bool(getattr(image, "compression", None))


def data_bytes(image: Any, partition: int) -> int:
    """At most how many bytes staging partition ``partition`` writes: the data extents
    inside it (a partclone bitmap's used blocks; all of it for a raw image without bmap,
    whose zero blocks are found only as they are read)."""
    stream = image.manifest.partition_stream(partition)
    if stream is None:
        raise ImageError(f"The image {image.path} has no partition {partition}.")
    return sum(
        e.length
        for e in clip_extents(image.extents(), stream.start_bytes, stream.end_bytes)
        if e.kind == "data"
    )


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def margin(need: int) -> int:
    return MARGIN + need // 100


def check_space(folder: Path, need: int, what: str, *, chosen: bool = False) -> None:
    """Refuse (RescueError) when ``folder`` has less free space than ``need`` bytes and a
    margin; ``what`` names the partition in the message; ``chosen``: the folder was given
    (not the default one)."""
    free = free_bytes(folder)
    if free >= need + margin(need):
        return
    other = (
        "choose a staging folder on a medium with more free space"
        if chosen
        else ("free space there")
    )
    raise RescueError(
        f"{what} can only be read from its start to its end, so it is first copied into a "
        f"staging file in {folder}: up to {human_size(need)} ({need} bytes) and a margin of "
        f"{human_size(margin(need))} are needed there, but only {human_size(free)} "
        f"({free} bytes) is free.",
        hint=f"To browse it, {other}, or restore the partition onto a disk and browse that.",
    )


def stage_partition(
    image: Any,
    partition: int,
    target: Path,
    *,
    progress: StageProgress | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Write partition ``partition`` of ``image`` (opened, read in order) into the new file
    ``target`` (sparse: only data is written; the file has the partition's size). Every
    piece passes the kind's checks first; a damaged stream raises CorruptImageError naming
    the file and the place, and nothing is served. Returns the bytes written. The caller
    removes ``target`` (also on an error)."""
    stream = image.manifest.partition_stream(partition)
    if stream is None:
        raise ImageError(f"The image {image.path} has no partition {partition}.")
    size, base = int(stream.size_bytes), int(stream.start_bytes)
    table = image.segment_table(partition)
    whole = _compressed_stream(image)
    total = int(image.extent_bytes) if whole else data_bytes(image, partition)
    done = 0
    written = 0

    def moved(now: int) -> None:
        if cancel is not None and cancel.is_set():
            raise CancelledError(f"Reading partition {partition} of {image.path} was cancelled.")
        if progress is not None:
            progress(min(now, total), total)

    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    dec = image.decoder(table)
    try:
        os.ftruncate(fd, size)
        moved(0)
        if whole:  # the stream before the partition: decompressed, checked, not kept
            done = _skip(dec, 0, base, moved)
        buf = memoryview(bytearray(table.max_chunk()))
        for i in range(len(table)):
            seg = table[i]
            if seg.zero:  # zero ranges, blocks the filesystem does not use: holes
                continue
            moved(done)
            data = dec.decode(seg, buf)
            if data is not None:
                written += _write_sparse(fd, data, seg.disk_offset, target)
            done = base + seg.disk_offset + seg.length if whole else done + seg.length
        if whole:  # on to the stream's end: its checksum and length are checked there
            done = _skip(dec, base + size, int(image.extent_bytes), moved)
        moved(total)
    finally:
        dec.close()
        os.close(fd)
    return written


def _skip(dec: Any, start: int, end: int, moved: Callable[[int], None]) -> int:
    """Read a compressed stream on from ``start`` to ``end`` (in steps, reporting)."""
    one = memoryview(bytearray(1))
    pos = start
    while pos < end:
        moved(pos)
        nxt = min(end, pos + STEP)
        dec.read(nxt - 1, one)  # decompresses (and checks) everything up to there
        pos = nxt
    return pos


def _write_sparse(fd: int, data: memoryview, offset: int, target: Path) -> int:
    """Write the runs of ``data`` that are not zero blocks at ``offset``; the bytes written."""
    n = len(data)
    pos = written = 0
    while pos < n:
        while pos < n and is_all_zero(data[pos : pos + HOLE_BLOCK]):
            pos += HOLE_BLOCK
        start = pos
        while pos < n and not is_all_zero(data[pos : pos + HOLE_BLOCK]):
            pos += HOLE_BLOCK
        end = min(pos, n)
        if end > start:
            _pwrite_all(fd, data[start:end], offset + start, target)
            written += end - start
    return written


def _pwrite_all(fd: int, view: memoryview, offset: int, target: Path) -> None:
    got = 0
    while got < len(view):
        try:
            got += os.pwrite(fd, view[got:], offset + got)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                free = free_bytes(target.parent)
                raise RescueError(
                    f"The staging file {target} filled its medium at byte {offset + got} "
                    f"({human_size(free)} free there now).",
                    hint="Choose a staging folder on a medium with more free space, or restore "
                    "the partition onto a disk and browse that.",
                ) from exc
            raise RescueError(
                f"Cannot write the staging file {target} at byte {offset + got}: {exc.strerror}.",
                hint="Check the medium that holds the staging folder.",
            ) from exc
