"""The restore data path: read → decompress → BLAKE3 check → write, then read-back verify.

Work is a :class:`SegmentTable` of :class:`Segment` s in disk order (one per chunk of every stream, plus
"fill" segments for the zero ranges of a whole-disk image that no stream covers). The
coordinating thread (the writer) hands chunks to a small pool of decoder threads
(zstandard and blake3 release the GIL) and writes their results strictly in order, so
a chunk that fails its hash check stops the job with nothing from that chunk onward
written. Memory is bounded by a fixed pool of page-aligned buffers reused for every
chunk, whatever the image size.

The coordinator queues the writes, in order, to one writer thread of their own, so that
it hands the next chunk on while the one before is still being written (a queued write
holds its pool buffer until it is done: the pool still bounds memory).

Zero chunks cost neither decompression nor hashing: the index flag and the known hash
of that many zero bytes are checked, and adjacent zero ranges are made zero on the
target with one ``BLKZEROOUT`` (``blockdev.zero_range``) call. A decoder may also find
that a data chunk reads as all zeros (foreign images: see ``ForeignDecoder``) and return
None: it then joins the zero run instead of being written, and the result counts it.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import mmap
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import blake3

from rescueui.core import blockdev
from rescueui.core.chunkcodec import ChunkPlace, decode_into
from rescueui.core.errors import CorruptImageError, ImageError, RestoreError, VerifyError
from rescueui.core.image import Image, StreamEntry, open_image_file
from rescueui.core.target import TargetHandle
from rescueui.core.units import MiB

ZERO_FLUSH_BYTES = 256 * MiB  # largest single zero_range call (keeps cancel responsive)
FILL_SEGMENT = 4 * MiB  # uncovered zero ranges are cut into pieces of this size

# errno values that mean "the disk went away or is failing", not "bad request".
DEVICE_GONE = {errno.ENODEV, errno.ENXIO, errno.ENOENT}


@lru_cache(maxsize=32)
def zero_hash(length: int) -> str:
    """BLAKE3 (hex) of ``length`` zero bytes."""
    return blake3.blake3(bytes(length)).hexdigest()


_ZEROS = bytes(4 * MiB)  # compared with, never written to


def is_all_zero(view: memoryview | bytes) -> bool:
    """Whether ``view`` holds only zero bytes: a ``memcmp`` against a preallocated zero
    buffer (about 40 ms per GiB here; data usually differs in its first bytes). Slicing an
    mmap copies, and ``memoryview == memoryview`` compares item by item, 100 times slower."""
    for a in range(0, len(view), len(_ZEROS)):
        if not _ZEROS.startswith(view[a : a + len(_ZEROS)]):
            return False
    return True


@dataclass(frozen=True)
class Segment:
    """One piece of work: a chunk of a stream (or a zero fill) at its place on the target."""

    stream: str  # stream name, or "fill" for a zero range no stream covers
    index: int  # chunk index in its stream (fill: running number)
    disk_offset: int  # where it goes on the target
    length: int  # raw bytes
    blake3: str  # expected hash of the raw bytes
    zero: bool
    data_file: str | None = None  # stream data file (None for zero fills)
    file_offset: int = 0
    comp_length: int = 0
    phase: str = "write"  # "partition-table" | "write"
    unused: bool = False  # zero, and not used by the filesystem (made zero: the target is fast)

    @property
    def end(self) -> int:
        return self.disk_offset + self.length

    def where(self) -> str:
        if self.stream == "fill":
            return f"zero range at disk offset {self.disk_offset}"
        return f"stream '{self.stream}', chunk {self.index} (disk offset {self.disk_offset})"


@dataclass(frozen=True)
class _Run:
    """A run of consecutive segments: the chunks of one stream, or one zero fill range."""

    first: int  # index of its first segment in the table
    count: int
    bytes_before: int  # bytes of all segments before this run
    size: int  # bytes of this run
    disk_start: int
    piece: int  # chunk size (stream) or FILL_SEGMENT (fill)
    phase: str
    stream: StreamEntry | None  # None for a fill
    data_file: str | None
    fill_number: int = 0  # fills: number of the first piece
    chunk0: int = 0  # streams: the stream's chunk index of the run's first segment


class SegmentTable:
    """The segments of a restore, in write order, computed on demand from the image index.

    Nothing per chunk is stored here (the image already holds its index), so memory does
    not grow with the disk size beyond the index itself. Behaves like a read-only list.
    """

    def __init__(self, image: Image, *, leave_unused: bool = False) -> None:
        self.image = image
        self.leave_unused = leave_unused
        self.runs: list[_Run] = []
        self._firsts: list[int] = []
        self._count = 0
        self._bytes = 0
        self._fills = 0
        #: ranges of the target left as they are (chunks the filesystem does not use, when
        #: ``leave_unused``): (disk offset, length), in disk order
        self.left: list[tuple[int, int]] = []

    @property
    def left_bytes(self) -> int:
        return sum(n for _, n in self.left)

    def add_stream(self, stream: StreamEntry, base: int, phase: str) -> None:
        data_file = str(self.image.data_path(stream))
        size, piece = stream.size_bytes, stream.chunk_size
        skip = self.image.unused_runs(stream) if self.leave_unused else []
        pos = 0  # next chunk
        for first, count in [*skip, (stream.chunk_count, 0)]:
            if first > pos:
                run_bytes = min(first * piece, size) - pos * piece
                self._add(first - pos, run_bytes, base, piece, phase, stream, data_file, 0, pos)
            if count:
                left_end = min((first + count) * piece, size)
                self.left.append((base + first * piece, left_end - first * piece))
            pos = first + count

    def add_fill(self, start: int, end: int) -> None:
        count = -(-(end - start) // FILL_SEGMENT)
        self._add(count, end - start, start, FILL_SEGMENT, "write", None, None, self._fills)
        self._fills += count

    def _add(
        self,
        count: int,
        size: int,
        disk_start: int,
        piece: int,
        phase: str,
        stream: StreamEntry | None,
        data_file: str | None,
        fill_number: int = 0,
        chunk0: int = 0,
    ) -> None:
        if count <= 0:
            return
        run = _Run(
            self._count,
            count,
            self._bytes,
            size,
            disk_start,
            piece,
            phase,
            stream,
            data_file,
            fill_number,
            chunk0,
        )
        self.runs.append(run)
        self._firsts.append(self._count)
        self._count += count
        self._bytes += size

    def __len__(self) -> int:
        return self._count

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def _run_of(self, i: int) -> _Run:
        if not 0 <= i < self._count:
            raise IndexError(i)
        return self.runs[bisect.bisect_right(self._firsts, i) - 1]

    def __getitem__(self, i: int) -> Segment:
        run = self._run_of(i)
        j = i - run.first
        if run.stream is None:
            off = j * run.piece
            length = min(run.piece, run.size - off)
            return Segment(
                "fill",
                run.fill_number + j,
                run.disk_start + off,
                length,
                zero_hash(length),
                True,
                phase=run.phase,
            )
        j += run.chunk0
        c = self.image.chunk(run.stream, j)
        return Segment(
            stream=run.stream.name,
            index=j,
            disk_offset=run.disk_start + j * run.piece,
            length=c.raw_length,
            blake3=c.blake3,
            zero=c.zero,
            data_file=run.data_file,
            file_offset=c.offset,
            comp_length=c.length,
            phase=run.phase,
            unused=c.unused,
        )

    def bytes_before(self, i: int) -> int:
        """Bytes of segments ``0 .. i-1`` (``i`` may be ``len(self)``)."""
        if i >= self._count:
            return self._bytes
        run = self._run_of(i)
        return run.bytes_before + (i - run.first) * run.piece

    def bytes_between(self, a: int, b: int) -> int:
        return self.bytes_before(b) - self.bytes_before(a) if b > a else 0

    def phase_bytes(self, phase: str, start: int = 0) -> int:
        """Bytes from segment ``start`` on that belong to ``phase``."""
        total = 0
        for run in self.runs:
            if run.phase != phase or run.first + run.count <= start:
                continue
            total += run.size - (max(start - run.first, 0) * run.piece)
        return max(total, 0)

    def stream_chunks(self, name: str) -> int:
        return sum(r.count for r in self.runs if r.stream is not None and r.stream.name == name)

    def max_chunk(self) -> int:
        return max((r.piece for r in self.runs), default=FILL_SEGMENT)


def table_streams(image: Image) -> list[StreamEntry]:
    """The stream that holds the partition table: the head (MBR / primary GPT).

    The GPT backup (the ``tail`` stream) is written in disk order like everything else,
    so that the whole restore runs strictly front to back: when a chunk fails its check,
    nothing at or after its offset has been written.
    """
    return [s for s in image.streams if s.kind == "head"]


def whole_disk_segments(image: Image, *, leave_unused: bool = False) -> SegmentTable:
    """Every segment of a whole-disk restore in disk order (the head, with the partition
    table, comes first), with zero fills for the ranges below the image extent that no
    stream covers. With ``leave_unused`` the chunks no filesystem uses are left out (see
    :attr:`SegmentTable.left`)."""
    table = SegmentTable(image, leave_unused=leave_unused)
    pos = 0
    for s in sorted(image.streams, key=lambda s: s.start_bytes):
        if image.manifest.whole_disk and s.start_bytes > pos:
            table.add_fill(pos, s.start_bytes)
        table.add_stream(s, s.start_bytes, "partition-table" if s.kind == "head" else "write")
        pos = max(pos, s.end_bytes)
    return table


def partition_segments(
    image: Image, stream: StreamEntry, *, leave_unused: bool = False
) -> SegmentTable:
    """A partition restore: the stream goes at offset 0 of the target partition."""
    table = SegmentTable(image, leave_unused=leave_unused)
    table.add_stream(stream, 0, "write")
    return table


# ------------------------------------------------------------------ decoding


class Decoder:
    """Reads, decompresses and hash-checks chunks into caller-provided buffers (thread-safe)."""

    def __init__(self, max_comp: int) -> None:
        self._local = threading.local()
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._max_comp = max_comp

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    fd = open_image_file(path, what="image data file")
                    self._fds[path] = fd
        return fd

    def _comp_buffer(self) -> bytearray:
        buf = getattr(self._local, "comp", None)
        if buf is None:
            buf = self._local.comp = bytearray(self._max_comp)
        return buf

    def decode(self, seg: Segment, out: memoryview) -> memoryview:
        """Fill ``out[:seg.length]`` with the chunk's raw bytes, checked against its BLAKE3."""
        assert seg.data_file is not None
        cview = memoryview(self._comp_buffer())[: seg.comp_length]
        try:
            n = os.preadv(self._fd(seg.data_file), [cview], seg.file_offset)
        except OSError as exc:
            raise ImageError(
                f"Reading {seg.where()} from {seg.data_file} failed: {exc.strerror}.",
                hint="The image medium may be failing; try another copy of the image.",
            ) from exc
        if n != seg.comp_length:
            raise CorruptImageError(
                f"The image data file {seg.data_file} is truncated at {seg.where()}: "
                f"expected {seg.comp_length} bytes at file offset {seg.file_offset}, got {n}.",
                hint="Nothing from this chunk on was written. Use another copy of the image.",
            )
        # The one bounded decoder: never more than seg.length bytes, into the pooled buffer.
        dst = decode_into(
            cview,
            out[: seg.length],
            ChunkPlace(seg.stream, seg.index, seg.disk_offset, seg.data_file, seg.file_offset),
            hint="Nothing from this chunk on was written. The image is damaged or was "
            "altered; use another copy of it.",
        )
        actual = blake3.blake3(dst).hexdigest()
        if actual != seg.blake3:
            raise CorruptImageError(
                f"Image chunk check failed: {seg.where()} has BLAKE3 {actual}, "
                f"the index says {seg.blake3}.",
                hint="Nothing from this chunk on was written. The image is damaged; use "
                "another copy of it (`rescueui verify IMAGE_DIR` checks a copy without a disk).",
            )
        return dst

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def check_zero_segment(seg: Segment) -> None:
    """A zero chunk must carry the known hash of that many zero bytes (no decompression)."""
    if seg.blake3 != zero_hash(seg.length):
        raise CorruptImageError(
            f"{seg.where()} is marked all-zero but its hash is {seg.blake3}, not the hash of "
            f"{seg.length} zero bytes.",
            hint="Nothing from this chunk on was written. The image index is damaged; use "
            "another copy of the image.",
        )


# ------------------------------------------------------------------ errors


def _file_full_error(exc: OSError, path: str, offset: int, action: str) -> RestoreError | None:
    """A full filesystem (or quota, or file size limit) under a file target: not a disk
    "smaller than it claimed". None when ``path`` is not a regular file or errno is another."""
    import stat

    from rescueui.core.units import human_size

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    done = (
        f"; the first {human_size(offset)} ({offset} bytes) of the image were written"
        if offset
        else ""
    )
    folder = os.path.dirname(os.path.abspath(path))
    again = "then run the restore again (or resume it once there is room)."
    if exc.errno == errno.ENOSPC:
        return RestoreError(
            f"The filesystem holding the target file {path} is full (no space left on it, "
            f"ENOSPC) while {action} at byte {offset}{done}.",
            hint=f"Free space there (see `df -h {folder}`) or put the target file on a "
            f"filesystem with room for the whole disk image, {again}",
            action="resume",
        )
    if exc.errno == errno.EDQUOT:
        return RestoreError(
            f"The disk quota on the filesystem holding the target file {path} is used up "
            f"(EDQUOT) while {action} at byte {offset}{done}.",
            hint=f"Free space within the quota or have it raised (see `quota`), or put the "
            f"target file elsewhere, {again}",
            action="resume",
        )
    if exc.errno == errno.EFBIG:
        return RestoreError(
            f"The target file {path} cannot grow past byte {offset}: the filesystem holding it "
            f"does not allow files that large (EFBIG; FAT stops at 4 GiB) while {action}{done}.",
            hint="Put the target file on a filesystem that holds large files (ext4, XFS, exFAT, "
            "NTFS), then run the restore again.",
        )
    return None


def device_error(exc: OSError, path: str, offset: int, action: str) -> RestoreError:
    """Turn an OSError on the target into an operator message."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        full = _file_full_error(exc, path, offset, action)
        if full is not None:
            return full
    next_step: str | None = None
    if exc.errno in DEVICE_GONE:
        what = f"{path} disappeared while {action} at byte {offset} ({exc.strerror})"
        hint = (
            "The disk was removed or its controller reset. Reconnect it, then resume the "
            "restore; the journal lets it continue after re-checking what was written."
        )
        next_step = "resume"
    elif exc.errno == errno.ENOSPC:
        what = f"{path} could store no more data at byte {offset} while {action} (ENOSPC)"
        hint = (
            "The device ran out of space below it: for a loop device the filesystem holding "
            "its backing file is full; a thin-provisioned or failing disk does the same. Free "
            "space there and resume the restore, or choose another target."
        )
        next_step = "resume"
    else:
        what = f"I/O error on {path} at byte {offset} while {action}: {exc.strerror}"
        hint = (
            "The disk may be failing (see `dmesg`). Replace it or try another target; a "
            "restore to it cannot be trusted."
        )
    return RestoreError(what + ".", hint=hint, action=next_step)


# ------------------------------------------------------------------ the writer


@dataclass
class WriteResult:
    next_index: int  # segments [start, next_index) are written
    bytes_written: int  # bytes of those segments (written or made zero)
    zero_calls: int
    zero_methods: set[str]
    data_bytes: int = 0  # bytes written with pwrite (the rest was made zero)
    zero_found_bytes: int = 0  # data segments that read as all zeros, made zero instead
    zero_found_segments: int = 0
    unused_zeroed_bytes: int = 0  # space no filesystem uses, made zero


class SegmentDecoder(Protocol):
    """What the writer needs of a decoder: ``decode`` fills the buffer with a data
    segment's checked bytes and returns them, or returns None when they are all zeros (the
    segment is then made zero with the zero ranges around it, not written)."""

    def decode(self, seg: Segment, out: memoryview) -> memoryview | None: ...

    def close(self) -> None: ...


class BufferPool:
    """A fixed set of page-aligned buffers (anonymous mmaps), reused for every chunk."""

    def __init__(self, count: int, size: int) -> None:
        self.size = size
        self._bufs = [blockdev.aligned_buffer(size) for _ in range(count)]
        self._free: deque[memoryview] = deque(memoryview(b) for b in self._bufs)

    def take(self) -> memoryview | None:
        return self._free.popleft() if self._free else None

    def give(self, view: memoryview) -> None:
        self._free.append(view)

    def __len__(self) -> int:
        return len(self._bufs)

    def close(self) -> None:
        self._free.clear()
        for b in self._bufs:
            try:
                b.close()
            except BufferError:  # a view is still referenced somewhere; the GC frees it
                pass


class _Writer:
    """Writes and zero calls in one thread of their own, strictly in the order given (as
    if the coordinator made them itself), so that the coordinator hands the next decoded
    segment on while the one before is still being written. After a failed call nothing
    queued behind it is done; the error is raised by :meth:`reap` or :meth:`drain`.

    Each queued write holds its buffer until it is done (:meth:`reap` gives it back), so
    the buffer pool still bounds the memory."""

    def __init__(self, handle: TargetHandle, pool: BufferPool, zero_ranges: bool) -> None:
        self.handle = handle
        self.pool = pool
        self.zero_ranges = zero_ranges
        self.methods: set[str] = set()
        self._pending: deque[tuple[Future[str | None], memoryview | None]] = deque()
        self._failed = False
        self._zeros: mmap.mmap | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-write")

    def __len__(self) -> int:
        return len(self._pending)

    def write(self, view: memoryview, buf: memoryview, offset: int) -> None:
        self._pending.append((self._executor.submit(self._pwrite, view, offset), buf))

    def zero(self, offset: int, length: int) -> None:
        self._pending.append((self._executor.submit(self._zero, offset, length), None))

    def _pwrite(self, view: memoryview, offset: int) -> str | None:
        if self._failed:
            return None
        try:
            self.handle.pwrite(view, offset)
        except OSError as exc:
            self._failed = True
            raise device_error(exc, self.handle.path, offset, "writing") from exc
        return None

    def _zero(self, offset: int, length: int) -> str | None:
        if self._failed:
            return None
        try:
            if self.zero_ranges:
                return self.handle.zero(offset, length)
            self._write_zeros(offset, length)
            return "write"
        except OSError as exc:
            self._failed = True
            raise device_error(exc, self.handle.path, offset, "zeroing") from exc

    def _write_zeros(self, offset: int, length: int) -> None:
        if self._zeros is None:
            self._zeros = blockdev.aligned_buffer(FILL_SEGMENT)
        zeros = memoryview(self._zeros)
        pos = offset
        try:
            while pos < offset + length:
                n = min(len(zeros), offset + length - pos)
                self.handle.pwrite(zeros[:n], pos)
                pos += n
        finally:
            zeros.release()

    def reap(self, *, wait: bool) -> None:
        """Take the calls that are done off the queue, in order (with ``wait``, wait until
        one gives a buffer back); their buffers go back to the pool; raises the error of a
        failed one."""
        while self._pending and (wait or self._pending[0][0].done()):
            fut, buf = self._pending[0]
            try:
                method = fut.result()
            finally:
                self._pending.popleft()
                if buf is not None:
                    self.pool.give(buf)
                    wait = False
            if method is not None:
                self.methods.add(method)

    def drain(self) -> None:
        """Wait for every queued call; raises the first error."""
        while self._pending:
            self.reap(wait=True)

    def close(self) -> None:
        """Wait for what is still queued (its errors are not raised again: the job has
        already failed or was cancelled) and give every buffer back."""
        while self._pending:
            fut, buf = self._pending.popleft()
            with contextlib.suppress(Exception):
                fut.result()
            if buf is not None:
                self.pool.give(buf)
        self._executor.shutdown(wait=True)
        if self._zeros is not None:
            with contextlib.suppress(BufferError):
                self._zeros.close()


def write_segments(
    handle: TargetHandle,
    segments: SegmentTable | Any,
    start: int,
    *,
    pool: BufferPool,
    decoder: SegmentDecoder,
    workers: int,
    on_progress: Callable[[Segment, int], None],
    on_checkpoint: Callable[[int, int], None],
    cancelled: Callable[[], bool],
    checkpoint_bytes: int,
    zero_ranges: bool = True,
) -> WriteResult:
    """Write ``segments[start:]`` in order. ``on_checkpoint(next_index, bytes)`` is called
    after each fdatasync (every ``checkpoint_bytes``) and at the end.

    Decoder threads read ahead into the pool's buffers; this thread takes their results in
    order and queues them to the writer thread (:class:`_Writer`), which writes them in that
    order. Zero segments, and data segments the decoder found all zero, join a pending zero
    run that is made zero with one call (``handle.zero``: BLKZEROOUT / fallocate) when the
    run ends.

    Raises CorruptImageError (nothing of the bad chunk or after it written), RestoreError
    on I/O errors, and returns early (check ``cancelled``) when cancelled.
    """
    inflight: deque[tuple[int, Segment, Future[memoryview | None] | None, memoryview | None]]
    inflight = deque()
    max_inflight = len(pool) + 64  # zero segments take no buffer
    i = start
    written = data_bytes = found_bytes = found_segments = unused_zeroed = 0
    since_sync = 0
    zero_calls = 0
    # Pending zero range: [zstart, zend)
    zstart = zend = -1
    done_index = start
    writer = _Writer(handle, pool, zero_ranges)

    def flush_zero() -> None:
        nonlocal zstart, zend, zero_calls
        if zend > zstart >= 0:
            writer.zero(zstart, zend - zstart)
            zero_calls += 1
        zstart = zend = -1

    def add_zero(seg: Segment) -> None:
        nonlocal zstart, zend
        if zend == seg.disk_offset and zend - zstart < ZERO_FLUSH_BYTES:
            zend = seg.end
        else:
            flush_zero()
            zstart, zend = seg.disk_offset, seg.end

    def checkpoint(next_index: int) -> None:
        nonlocal since_sync
        flush_zero()
        writer.drain()
        try:
            handle.sync()
        except OSError as exc:
            raise device_error(exc, handle.path, 0, "flushing writes (fdatasync)") from exc
        since_sync = 0
        on_checkpoint(next_index, written)

    def result() -> WriteResult:
        return WriteResult(
            done_index,
            written,
            zero_calls,
            writer.methods,
            data_bytes=data_bytes,
            zero_found_bytes=found_bytes,
            zero_found_segments=found_segments,
            unused_zeroed_bytes=unused_zeroed,
        )

    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore-decode")
    try:
        while i < len(segments) or inflight:
            while i < len(segments) and len(inflight) < max_inflight:
                seg = segments[i]
                if seg.zero:
                    inflight.append((i, seg, None, None))
                else:
                    buf = pool.take()
                    if buf is None and len(writer):
                        # buffers wait in the writer's queue: take back those done, and
                        # wait for the oldest only when nothing else is under way
                        writer.reap(wait=not inflight)
                        buf = pool.take()
                    if buf is None:
                        break
                    inflight.append((i, seg, executor.submit(decoder.decode, seg, buf), buf))
                i += 1
            idx, seg, fut, buf = inflight.popleft()
            if cancelled():
                inflight.appendleft((idx, seg, fut, buf))  # the finally below takes it back
                checkpoint(idx)
                done_index = idx
                return result()
            if fut is None:
                try:
                    check_zero_segment(seg)
                except CorruptImageError:
                    checkpoint(idx)
                    raise
                add_zero(seg)
                if seg.unused:
                    unused_zeroed += seg.length
            else:
                assert buf is not None
                try:
                    view = fut.result()
                except (ImageError, OSError):
                    pool.give(buf)
                    checkpoint(idx)  # what came before is good and durable
                    raise
                if view is None:  # it read as all zeros: made zero, not written
                    pool.give(buf)
                    add_zero(seg)
                    found_bytes += seg.length
                    found_segments += 1
                else:
                    flush_zero()
                    writer.write(view, buf, seg.disk_offset)
                    data_bytes += seg.length
            writer.reap(wait=False)
            written += seg.length
            since_sync += seg.length
            done_index = idx + 1
            on_progress(seg, idx)
            if since_sync >= checkpoint_bytes:
                checkpoint(done_index)
        checkpoint(done_index)
        return result()
    finally:
        for _, _, fut, _ in inflight:
            if fut is not None:
                fut.cancel()
        executor.shutdown(wait=True)
        writer.close()
        # buffers of cancelled/abandoned futures go back to the pool
        for _, _, _, buf in inflight:
            if buf is not None:
                pool.give(buf)


# ------------------------------------------------------------------ read-back verify


@dataclass
class VerifyMismatch:
    index: int
    segment: Segment
    actual: str


class TargetReader:
    """Reads the target back bypassing the page cache (O_DIRECT where possible)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd, self.direct = blockdev.open_direct_read(path)
        except OSError as exc:
            raise device_error(exc, path, 0, "opening for the read-back verify") from exc
        self._buffered: int | None = None

    def read_into(self, view: memoryview, offset: int) -> int:
        n = len(view)
        got = 0
        fd = self.fd
        if self.direct and (n % 512 or offset % 512):
            fd = self._buf_fd()
        while got < n:
            try:
                k = os.preadv(fd, [view[got:]], offset + got)
            except OSError as exc:
                if exc.errno == errno.EINVAL and fd == self.fd and self.direct:
                    fd = self._buf_fd()
                    continue
                raise
            if k == 0:
                break
            got += k
        return got

    def _buf_fd(self) -> int:
        if self._buffered is None:
            self._buffered = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self._buffered

    def close(self) -> None:
        for fd in (self.fd, self._buffered):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def verify_segments(
    path: str,
    segments: SegmentTable,
    start: int,
    stop: int,
    *,
    pool: BufferPool,
    workers: int,
    on_progress: Callable[[Segment, int, str], None],
    cancelled: Callable[[], bool],
    first_mismatch_only: bool = False,
) -> VerifyMismatch | None:
    """Read back ``segments[start:stop]`` and compare each one's BLAKE3 with the image.

    Raises VerifyError on the first mismatch, unless ``first_mismatch_only`` (used by
    resume), which returns it instead. Returns None when everything matched (or when
    cancelled; check ``cancelled``).
    """
    reader = TargetReader(path)

    def read_hash(seg: Segment, buf: memoryview) -> str:
        view = buf[: seg.length]
        got = reader.read_into(view, seg.disk_offset)
        if got != seg.length:
            raise RestoreError(
                f"{path} ended early: could read only {got} of {seg.length} bytes at offset "
                f"{seg.disk_offset} during the read-back verify.",
                hint="The target is smaller than it claimed or was replaced; check it.",
            )
        return blake3.blake3(view).hexdigest()

    inflight: deque[tuple[int, Segment, Future[str], memoryview]] = deque()
    i = start
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore-verify")
    try:
        while i < stop or inflight:
            while i < stop:
                buf = pool.take()
                if buf is None:
                    break
                seg = segments[i]
                inflight.append((i, seg, executor.submit(read_hash, seg, buf), buf))
                i += 1
            idx, seg, fut, buf = inflight.popleft()
            if cancelled():
                return None
            try:
                actual = fut.result()
            except OSError as exc:
                raise device_error(exc, path, seg.disk_offset, "reading back") from exc
            finally:
                pool.give(buf)
            if actual != seg.blake3:
                if first_mismatch_only:
                    return VerifyMismatch(idx, seg, actual)
                raise VerifyError(
                    f"Read-back verify failed: {path} at {seg.where()} holds data with BLAKE3 "
                    f"{actual}, the image says {seg.blake3}.",
                    hint="The target did not store what was written: the disk may be failing "
                    "(see `dmesg`). Do not use it; restore to another disk.",
                )
            on_progress(seg, idx, actual)
        return None
    finally:
        for _, _, fut, _buf in inflight:
            fut.cancel()
        executor.shutdown(wait=True)
        for _, _, _, buf in inflight:
            pool.give(buf)
        reader.close()


def target_path_of(handle: TargetHandle) -> Path:
    return Path(handle.path)
