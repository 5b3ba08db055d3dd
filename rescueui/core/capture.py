"""Capture a disk (or a disk image file) into a rescueui image folder.

Pipeline, memory bounded whatever the disk size::

    reader thread ──(page-aligned buffer pool)──> 2-3 workers ──(in order)──> writer
    pread/O_DIRECT                                 zero check, BLAKE3,        .zst append,
                                                   zstd frame                 index, progress

The reader fills a small pool of page-aligned buffers (O_DIRECT on block devices);
workers check a chunk against a zero buffer, hash it (BLAKE3) and compress it into one
independent zstd frame (both release the GIL); the coordinating thread writes frames in
disk order, builds the chunk index and reports progress by bytes. A zero chunk costs
only the comparison: its hash and its frame are known.

A capture that does not finish (cancel, full destination, read error, crash) leaves the
folder marked ``INCOMPLETE``, which :meth:`rescueui.core.image.Image.open` refuses.
On failure :func:`capture` raises a :class:`~rescueui.core.errors.RescueError` whose
``report`` attribute is the (already written) failed :class:`JobReport`.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import itertools
import math
import os
import re
import stat
import subprocess
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import blake3
import zstandard

from rescueui import __version__
from rescueui.core import blockdev, parttable
from rescueui.core.errors import CancelledError, CaptureError, DiskError, RescueError
from rescueui.core.image import (
    CHUNK_SIZE,
    FORMAT_VERSION,
    INCOMPLETE_MARKER,
    INDEX_VERSIONS,
    MANIFEST_NAME,
    ImageManifest,
    IndexBuilder,
    StreamEntry,
    save_manifest,
    write_file_atomic,
    zero_digest,
)
from rescueui.core.images.usage import usage_line
from rescueui.core.lock import WriterLock
from rescueui.core.pipeline import is_all_zero
from rescueui.core.progress import ChunkEvent, ProgressCallback, ProgressMeter
from rescueui.core.report import JobReport, now_iso
from rescueui.core.swap import swap_header
from rescueui.core.targets.rule import capture_destination_problem, loop_aliases
from rescueui.core.tools import find_tool
from rescueui.core.units import human_size
from rescueui.core.usedblocks import AllBlocks, UsedMap, partition_device, read_used_map

REPORTS_SUBDIR = "reports"
DEFAULT_WORKERS = max(1, min(3, os.cpu_count() or 2))
MIN_LEVEL, MAX_LEVEL = 1, 19  # zstd levels offered (20-22 need far more memory to restore)

DevNum = tuple[int, int]


# ---- planning -------------------------------------------------------------------------
@dataclass
class PlannedStream:
    name: str
    kind: str
    start: int
    size: int
    partition_number: int | None = None
    optional: bool = False  # a gap: dropped again if it turns out all zeros
    fs_type: str | None = None
    label: str | None = None
    fs_uuid: str | None = None
    used: UsedMap | None = None  # what the filesystem uses; None: every byte is read
    all_blocks: str | None = None  # a partition read whole: why (for the report)
    synth: bytes | None = None  # swap: the header mkswap made, stored instead of the pages
    warning: str | None = None  # e.g. a filesystem that was not cleanly unmounted

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def read_bytes(self) -> int:
        """Bytes a capture reads (and progress counts): the used ones, or all."""
        return self.size if self.used is None else self.used.used_bytes

    def used_in(self, start: int, end: int) -> list[tuple[int, int]] | None:
        """The used ranges within ``[start, end)`` of the stream (None: all of it)."""
        if self.used is None:
            return None
        return [(a, a + n) for a, n in self.used.used_in(start, end)]

    def usage(self) -> str:
        """One line for the operator: what of this stream a capture stores."""
        return usage_line(
            self.name,
            self.fs_type,
            self.size,
            None if self.used is None else self.read_bytes,
            self.all_blocks,
            swap=self.synth is not None,
        )


def plan_streams(
    table: dict[str, Any] | None,
    disk_size: int,
    partitions: list[int] | None = None,
    source: str = "the source",
) -> list[PlannedStream]:
    """Cut the disk into streams: head, partitions, gaps (optional), GPT tail; or one 'disk'."""
    if table is None or not table.get("partitions"):
        if partitions:
            raise CaptureError(
                f"{source} has no partitions, so partition {partitions[0]} cannot be captured.",
                hint="Capture the whole disk instead.",
                action="whole-disk",
            )
        return [PlannedStream("disk", "disk", 0, disk_size)]
    ss = parttable.sector_size(table)
    parts: list[PlannedStream] = []
    for p in table["partitions"]:
        if parttable.is_extended(table, p):
            continue
        n = parttable.partition_number(p)
        start, size = int(p["start"]) * ss, int(p["size"]) * ss
        if size <= 0:
            continue
        if start + size > disk_size:
            raise CaptureError(
                f"Partition {n} of {source} ends at byte {start + size}, beyond the end of the "
                f"disk ({disk_size} bytes): the partition table is damaged.",
                hint="Repair the partition table (or capture the raw disk as a file) first.",
            )
        parts.append(PlannedStream(f"p{n}", "partition", start, size, partition_number=n))
    parts.sort(key=lambda s: s.start)
    for a, b in itertools.pairwise(parts):
        if b.start < a.end:
            raise CaptureError(
                f"Partitions {a.partition_number} and {b.partition_number} of {source} overlap: "
                "the partition table is damaged.",
                hint="Repair the partition table first.",
            )
    if partitions:
        by_num = {s.partition_number: s for s in parts}
        missing = [n for n in partitions if n not in by_num]
        if missing:
            have = ", ".join(str(s.partition_number) for s in parts) or "none"
            raise CaptureError(
                f"{source} has no partition {missing[0]} (it has: {have}).",
                hint="Pick one of the partitions listed.",
            )
        return [by_num[n] for n in sorted(set(partitions))]
    out: list[PlannedStream] = []
    if parts and parts[0].start > 0:
        out.append(PlannedStream("head", "head", 0, parts[0].start))
    pos = parts[0].start if parts else 0
    for p in parts:
        if p.start > pos:
            out.append(PlannedStream(f"gap-{pos}", "gap", pos, p.start - pos, optional=True))
        out.append(p)
        pos = p.end
    if table.get("label") == "gpt":
        tail_start = (int(table.get("lastlba", disk_size // ss - 34)) + 1) * ss
        tail_start = min(max(tail_start, pos), disk_size)
        if tail_start > pos:
            out.append(PlannedStream(f"gap-{pos}", "gap", pos, tail_start - pos, optional=True))
        if disk_size > tail_start:
            out.append(PlannedStream("tail", "tail", tail_start, disk_size - tail_start))
    elif disk_size > pos:
        out.append(PlannedStream(f"gap-{pos}", "gap", pos, disk_size - pos, optional=True))
    return out


def probe_filesystem(
    source: str, start: int, size: int
) -> tuple[str | None, str | None, str | None]:
    """(fs type, label, UUID) of the filesystem at ``start`` on ``source`` (blkid
    low-level probe)."""
    blkid = find_tool("blkid")
    if blkid is None:
        return None, None, None
    try:
        proc = subprocess.run(
            [blkid, "-p", "-o", "export", "-O", str(start), "-S", str(size), source],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, None, None
    props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    uuid = props.get("UUID")
    if uuid is not None and not FS_UUID_RE.match(uuid):
        uuid = None
    return props.get("TYPE"), props.get("LABEL"), uuid


FS_UUID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,63}$")


def map_used_blocks(
    source: str,
    plans: list[PlannedStream],
    *,
    all_blocks: bool,
    cancel: threading.Event | None = None,
    on_stream: Any = None,
    in_use: bool = False,
) -> None:
    """Probe each partition's filesystem and learn which blocks it uses (partclone's map,
    :mod:`rescueui.core.usedblocks`); swap gets a fresh header instead of its pages. Sets
    the streams' ``used``, ``all_blocks``, ``synth`` and ``warning``. ``all_blocks``: every
    byte of every partition (the operator asked); ``in_use``: the source is mounted or
    open for writing, so its maps could be stale by the time the blocks are read: every
    byte too."""
    for p in plans:
        if p.kind not in ("partition", "disk"):
            continue
        p.fs_type, p.label, p.fs_uuid = probe_filesystem(source, p.start, p.size)
        if all_blocks or in_use:
            p.all_blocks = (
                "in use while captured: which blocks it uses may change meanwhile"
                if in_use and not all_blocks
                else "every byte was asked for"
            )
            continue
        if on_stream is not None:
            on_stream(p)
        if p.fs_type == "swap":
            try:
                p.synth = swap_header(p.size, p.fs_uuid, p.label)
            except RescueError as exc:
                p.all_blocks = f"swap copied whole: {exc.message}"
                continue
            runs = [(0, len(p.synth))]
            p.used = UsedMap("swap", "mkswap", p.size, tuple(runs), True)
            continue
        try:
            with partition_device(source, p.start, p.size) as dev:
                found = read_used_map(dev, p.fs_type, p.size, cancel=cancel)
        except CaptureError as exc:  # no loop device for the map tool (not root, no losetup)
            found = AllBlocks(f"no used-block map: {exc.message}")
        if isinstance(found, AllBlocks):
            p.all_blocks = found.reason
            if found.unclean:
                p.warning = (
                    f"{p.name} ({p.fs_type}) was not cleanly unmounted: it was captured "
                    f"byte for byte ({found.reason}); the restored filesystem replays its "
                    "journal or needs a check at its first mount."
                )
            continue
        p.used = found
        if not found.clean:
            p.warning = (
                f"{p.name} ({p.fs_type}) was not cleanly unmounted"
                + (f" ({found.note})" if found.note else "")
                + ": its used blocks were captured as they are on the disk, without a "
                "journal replay or check; the restored filesystem replays or needs a check at "
                "its first mount. Capture every byte instead to keep the disk exactly as it is."
            )


def estimate_capture(
    source: str,
    *,
    partitions: list[int] | None = None,
    all_blocks: bool = False,
    cancel: threading.Event | None = None,
) -> list[PlannedStream]:
    """What a capture of ``source`` would store, before it starts (read-only): its streams
    with the filesystems' used blocks (``PlannedStream.usage()`` and ``read_bytes``).
    ``cancel`` stops the map tools (CancelledError)."""
    try:
        table = parttable.read_table(source)
    except DiskError as exc:
        raise CaptureError(exc.message, hint=exc.hint) from exc
    size = blockdev.device_size(source)
    plans = plan_streams(table, size, partitions, source)
    map_used_blocks(source, plans, all_blocks=all_blocks, cancel=cancel)
    return plans


# ---- source safety --------------------------------------------------------------------
def _sys_block_dir(devnum: DevNum) -> Path | None:
    p = Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}")
    try:
        return p.resolve(strict=True)
    except OSError:
        return None


def _read_devnum(path: Path) -> DevNum | None:
    try:
        major, minor = path.read_text().strip().split(":")
        return int(major), int(minor)
    except (OSError, ValueError):
        return None


def source_devnums(devnum: DevNum) -> dict[DevNum, str]:
    """The device and its partitions (device numbers -> kernel names)."""
    out: dict[DevNum, str] = {}
    sysdir = _sys_block_dir(devnum)
    if sysdir is None:
        return {devnum: f"{devnum[0]}:{devnum[1]}"}
    out[devnum] = sysdir.name
    for child in sysdir.iterdir():
        if (child / "partition").exists():
            dn = _read_devnum(child / "dev")
            if dn is not None:
                out[dn] = child.name
    return out


def busy_read_write(devnums: dict[DevNum, str]) -> list[str]:
    """Read-write mounts and active swap on these devices, as operator-readable strings."""
    from rescueui.core import mounts

    found: list[str] = []
    try:
        entries = mounts.read_mountinfo()
    except OSError:
        entries = []
    for e in entries:
        dev = mounts.mount_devnum(e)
        if dev in devnums and "rw" in e.options.split(","):
            found.append(f"/dev/{devnums[dev]} is mounted read-write on {e.mountpoint}")
    for s in mounts.read_swaps():
        if s.kind == "partition" and s.devnum in devnums:
            found.append(f"/dev/{devnums[s.devnum]} is in use as swap")
    for name in devnums.values():
        try:
            holders = sorted(p.name for p in Path(f"/sys/class/block/{name}/holders").iterdir())
        except OSError:
            continue
        if holders:
            found.append(f"/dev/{name} is in use by {', '.join(holders)} (RAID/LVM/crypt)")
    return found


def describe_source(path: str, kind: str, size: int, lss: int, pss: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "path": path,
        "kind": kind,
        "size_bytes": size,
        "logical_sector_size": lss,
        "physical_sector_size": pss,
        "model": None,
        "vendor": None,
        "serial": None,
        "wwn": None,
        "bus": "file" if kind == "file" else None,
    }
    if kind == "block":
        try:
            from rescueui.core.disks import find_disk

            disk = find_disk(path)
            if disk is not None:
                for key in ("model", "vendor", "serial", "wwn", "bus"):
                    info[key] = getattr(disk, key, None)
                info["name"] = disk.name
        except Exception:  # description only: never fail a capture over it
            pass
    return info


def host_profile() -> dict[str, Any]:
    try:
        from rescueui.core.host import read_host_profile

        return dict(read_host_profile().to_dict())
    except Exception:
        firmware = "uefi" if os.path.isdir("/sys/firmware/efi") else "bios"
        try:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            mem = 0
        return {"cpus": os.cpu_count() or 1, "memory_bytes": mem, "firmware": firmware}


# ---- destination ----------------------------------------------------------------------
def _our_files(directory: Path) -> list[Path]:
    return [
        p
        for p in directory.iterdir()
        if p.name in (MANIFEST_NAME, INCOMPLETE_MARKER, f".{MANIFEST_NAME}.tmp")
        or p.suffix in (".zst", ".idx")
    ]


def prepare_destination(image_dir: Path) -> None:
    """Create or reuse the image folder; refuse one that holds anything but an incomplete image."""
    if image_dir.exists() and not image_dir.is_dir():
        raise CaptureError(
            f"{image_dir} exists and is not a folder.",
            hint="Give the path of a new (or empty) folder for the image.",
        )
    if image_dir.is_dir():
        entries = [p for p in image_dir.iterdir() if p.name != REPORTS_SUBDIR]
        if entries:
            if not (image_dir / INCOMPLETE_MARKER).exists():
                raise CaptureError(
                    f"The folder {image_dir} is not empty"
                    + (" (it holds an image)" if (image_dir / MANIFEST_NAME).exists() else "")
                    + ": refusing to write an image into it.",
                    hint="Choose a new or empty folder, or delete this one if it is not needed.",
                )
            strangers = [p.name for p in entries if p not in _our_files(image_dir)]
            if strangers:
                raise CaptureError(
                    f"The incomplete image in {image_dir} also holds other files "
                    f"({', '.join(sorted(strangers)[:5])}): refusing to replace it.",
                    hint="Choose a new or empty folder.",
                )
            for p in _our_files(image_dir):
                if p.name != INCOMPLETE_MARKER:
                    p.unlink()
    else:
        image_dir.mkdir(parents=True)
    write_file_atomic(
        image_dir / INCOMPLETE_MARKER,
        b"This image is incomplete: its capture is running or did not finish.\n"
        b"rescueui refuses to restore it. Capture the disk again.\n",
    )


# ---- pipeline -------------------------------------------------------------------------
ZEROS = object()  # a work item's buffer: the chunk lies in a hole of the source file


@dataclass
class _StreamState:
    plan: PlannedStream
    chunk_size: int
    count: int
    data_path: Path
    index_path: Path
    fd: int = -1
    index: IndexBuilder | None = None
    nonzero: bool = False
    chunks_written: int = 0


@dataclass
class _Result:
    st: _StreamState
    i: int
    n: int
    zero: bool
    digest: bytes
    frame: bytes
    moved: int  # bytes read from the source for this chunk
    unused: bool = False  # no byte of the chunk is used by the filesystem: nothing read


@dataclass
class CaptureStats:
    bytes_read: int = 0
    bytes_stored: int = 0
    chunks: int = 0
    zero_chunks: int = 0
    unused_chunks: int = 0
    hole_chunks: int = 0  # in holes of a sparse source file: zeros, not read
    direct_io: bool = False
    streams: list[StreamEntry] = field(default_factory=list)


class _Capture:
    def __init__(
        self,
        src_fd: int,
        src_path: str,
        image_dir: Path,
        plans: list[PlannedStream],
        *,
        level: int,
        chunk_size: int,
        workers: int,
        meter: ProgressMeter,
        cancel: threading.Event,
        direct: bool,
        format_version: int = FORMAT_VERSION,
        data_ranges: list[tuple[int, int]] | None = None,
    ) -> None:
        self.index_version = INDEX_VERSIONS[format_version]
        # a sparse file source: where it holds data (its holes read as zeros, unread)
        self.data_ranges = data_ranges
        self._data_starts = [a for a, _ in data_ranges or []]
        self.src_fd = src_fd
        self.src_path = src_path
        self.image_dir = image_dir
        self.level = level
        self.chunk_size = chunk_size
        self.workers = workers
        self.meter = meter
        self.cancel = cancel
        self.direct = direct
        self.stop = threading.Event()
        self.states = [
            _StreamState(
                plan=p,
                chunk_size=chunk_size,
                count=math.ceil(p.size / chunk_size),
                data_path=image_dir / f"{p.name}.zst",
                index_path=image_dir / f"{p.name}.idx",
            )
            for p in plans
        ]
        self.total_chunks = sum(s.count for s in self.states)
        nbuf = 2 * workers + 2
        self.free: Queue[Any] = Queue()
        for _ in range(nbuf):
            self.free.put(blockdev.aligned_buffer(chunk_size))
        self.work: Queue[Any] = Queue()
        self.max_pending = nbuf
        self.zero = memoryview(bytes(chunk_size))  # sliced without copying
        self._zero_frames: dict[int, bytes] = {}
        self._local = threading.local()
        self.stats = CaptureStats(direct_io=direct)
        self.buffered_fd: int | None = None

    # -- reader ---------------------------------------------------------------------
    def _read_exact(self, buf: Any, n: int, offset: int) -> None:
        view = memoryview(buf)
        done = 0
        try:
            while done < n:
                fd = self.src_fd if self.buffered_fd is None else self.buffered_fd
                try:
                    got = os.preadv(fd, [view[done:n]], offset + done)
                except OSError as exc:
                    if exc.errno == errno.EINVAL and self.buffered_fd is None:
                        # O_DIRECT refused this request (alignment): continue buffered
                        self.buffered_fd = os.open(self.src_path, os.O_RDONLY | os.O_CLOEXEC)
                        self.stats.direct_io = False
                        continue
                    raise
                if got == 0:
                    raise CaptureError(
                        f"{self.src_path} ended at byte {offset + done}, before the expected "
                        f"end ({offset + n}); the disk shrank or was removed.",
                        hint="Check the source disk and its cable, then capture again.",
                    )
                done += got
        except OSError as exc:
            raise CaptureError(
                f"Reading {self.src_path} at byte {offset + done} failed: {exc.strerror}.",
                hint="The source disk may be failing (see 'dmesg'); a failing disk is better "
                "copied with ddrescue first, then captured from the copy.",
            ) from exc
        finally:
            view.release()

    def _fill(self, buf: Any, p: PlannedStream, off: int, n: int, runs: list[Any]) -> int:
        """Read the used ``runs`` (stream offsets) of the chunk at ``off`` into ``buf``,
        zeros elsewhere; returns the bytes read. Mostly used: one read, then the gaps
        zeroed; mostly free: zeros, then one read per run."""
        used = sum(b - a for a, b in runs)
        with memoryview(buf) as view:
            if p.synth is not None:  # swap: the new header, not the old pages
                view[:n] = self.zero[:n]
                for a, b in runs:
                    view[a - off : b - off] = p.synth[a:b]
                return used
            if used * 4 >= n * 3:
                self._read_exact(buf, n, p.start + off)
                pos = off
                for a, b in [*runs, (off + n, off + n)]:
                    if a > pos:
                        view[pos - off : a - off] = self.zero[: a - pos]
                    pos = b
                return used  # progress counts the used bytes (its total is theirs)
            view[:n] = self.zero[:n]
            for a, b in runs:
                with view[a - off : b - off] as part:
                    self._read_exact(part, b - a, p.start + a)
        return used

    def _in_hole(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` of a sparse file source holds no data at all."""
        if self.data_ranges is None:
            return False
        j = bisect.bisect_right(self._data_starts, start) - 1
        if j >= 0 and self.data_ranges[j][1] > start:
            return False
        return j + 1 >= len(self.data_ranges) or self.data_ranges[j + 1][0] >= end

    def _reader(self) -> None:
        try:
            for st in self.states:
                p = st.plan
                for i in range(st.count):
                    off = i * st.chunk_size
                    n = min(st.chunk_size, p.size - off)
                    runs = p.used_in(off, off + n)
                    if runs is not None and not runs:
                        self.work.put((st, i, None, n, 0))  # unused: nothing to read
                        continue
                    if p.synth is None and self._in_hole(p.start + off, p.start + off + n):
                        # a hole of the source file: zeros, known without reading
                        moved = n if runs is None else sum(b - a for a, b in runs)
                        self.stats.hole_chunks += 1
                        self.work.put((st, i, ZEROS, n, moved))
                        continue
                    buf = None
                    while buf is None:
                        if self.stop.is_set() or self.cancel.is_set():
                            return
                        try:
                            buf = self.free.get(timeout=0.2)
                        except Empty:
                            continue
                    if runs is None or runs == [(off, off + n)]:
                        self._read_exact(buf, n, p.start + off)
                        moved = n
                    else:
                        moved = self._fill(buf, p, off, n, runs)
                    self.work.put((st, i, buf, n, moved))
        except BaseException as exc:  # handed to the writer, which raises it
            self.work.put(exc)
            return
        finally:
            self.work.put(None)

    # -- workers --------------------------------------------------------------------
    def _cctx(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(
                level=self.level, write_content_size=True, write_checksum=False
            )
        return c

    def _zero_frame(self, n: int) -> bytes:
        frame = self._zero_frames.get(n)
        if frame is None:
            frame = self._zero_frames[n] = self._cctx().compress(bytes(n))
        return frame

    def _process(self, item: tuple[_StreamState, int, Any, int, int]) -> _Result:
        st, i, buf, n, moved = item
        if buf is None:  # not used by the filesystem: known hash, constant frame
            return _Result(st, i, n, True, zero_digest(n), self._zero_frame(n), 0, True)
        if buf is ZEROS:  # a hole of the source file
            return _Result(st, i, n, True, zero_digest(n), self._zero_frame(n), moved)
        try:
            with memoryview(buf) as mv, mv[:n] as view:
                if is_all_zero(view):
                    return _Result(st, i, n, True, zero_digest(n), self._zero_frame(n), moved)
                digest = blake3.blake3(view).digest()
                frame = self._cctx().compress(view)
            return _Result(st, i, n, False, digest, frame, moved)
        finally:
            self.free.put(buf)

    # -- writer ---------------------------------------------------------------------
    def _write_all(self, fd: int, data: bytes, path: Path) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise self._dest_error(exc, path) from exc

    def _dest_error(self, exc: OSError, path: Path) -> CaptureError:
        written = self.stats.bytes_stored
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return CaptureError(
                f"The destination {self.image_dir} is full: writing {path.name} failed after "
                f"{human_size(written)} of image data ({human_size(self.stats.bytes_read)} of "
                f"{human_size(self.meter.bytes_total)} of the disk captured). The folder is "
                "marked incomplete and cannot be restored.",
                hint="Free space or choose a larger medium, then capture again (the incomplete "
                "folder can be reused or deleted).",
            )
        if exc.errno == errno.EFBIG:
            return CaptureError(
                f"{path} has grown larger than the destination filesystem allows (FAT holds at "
                f"most 4 GiB per file); capture stopped after {human_size(written)}. The folder "
                "is marked incomplete.",
                hint="Write the image to a disk formatted with ext4, XFS, exFAT or NTFS.",
            )
        return CaptureError(
            f"Writing {path} failed: {exc.strerror} (after {human_size(written)} of image data). "
            "The folder is marked incomplete.",
            hint="Check the destination medium (see 'dmesg'), then capture again.",
        )

    def _write_result(self, r: _Result) -> None:
        st = r.st
        if st.fd < 0:
            try:
                # A new file (prepare_destination removed ours): never through a link.
                st.fd = os.open(
                    st.data_path,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                )
            except OSError as exc:
                raise self._dest_error(exc, st.data_path) from exc
            st.index = IndexBuilder(st.chunk_size, self.index_version)
        assert st.index is not None
        self._write_all(st.fd, r.frame, st.data_path)
        st.index.add(len(r.frame), r.n, r.digest, r.zero, r.unused)
        st.nonzero = st.nonzero or not r.zero
        st.chunks_written += 1
        self.stats.bytes_read += r.moved
        self.stats.bytes_stored += len(r.frame)
        self.stats.chunks += 1
        self.stats.zero_chunks += int(r.zero)
        self.stats.unused_chunks += int(r.unused)
        event = ChunkEvent(
            stream=st.plan.name,
            index=r.i,
            offset=st.plan.start + r.i * st.chunk_size,
            length=r.n,
            blake3=r.digest.hex(),
            ok=True,
            zero=r.zero,
        )
        self.meter.advance(
            r.moved,
            stream=st.plan.name,
            chunks_done=self.stats.chunks,
            stream_chunks_done=r.i + 1,
            stream_chunks_total=st.count,
            last_chunk=event,
        )
        if r.i == st.count - 1:
            self._finish_stream(st)

    def _finish_stream(self, st: _StreamState) -> None:
        assert st.index is not None
        try:
            os.fdatasync(st.fd)
        except OSError as exc:
            raise self._dest_error(exc, st.data_path) from exc
        finally:
            os.close(st.fd)
            st.fd = -1
        p = st.plan
        if p.optional and not st.nonzero:
            st.data_path.unlink(missing_ok=True)  # an all-zero gap: restore zeros it anyway
            return
        index_bytes = st.index.encode(p.size)
        try:
            write_file_atomic(st.index_path, index_bytes)
        except OSError as exc:
            raise self._dest_error(exc, st.index_path) from exc
        self.stats.streams.append(
            StreamEntry(
                name=p.name,
                kind=p.kind,
                partition_number=p.partition_number,
                start_bytes=p.start,
                size_bytes=p.size,
                data_file=st.data_path.name,
                index_file=st.index_path.name,
                root_blake3=st.index.root(),
                chunk_size=st.chunk_size,
                fs_type=p.fs_type,
                label=p.label,
                chunk_count=st.count,
                index_blake3=blake3.blake3(index_bytes).hexdigest(),
                compressed_bytes=st.index.offset,
                zero_chunks=st.index.zero_chunks,
                fs_uuid=p.fs_uuid,
                used_bytes=None if p.used is None else p.used.used_bytes,
                used_map=None if p.used is None else p.used.tool,
                all_blocks=p.all_blocks,
                unused_chunks=st.index.unused_chunks,
            )
        )

    def run(self) -> CaptureStats:
        self.meter.update(phase="capture", chunks_total=self.total_chunks)
        reader = threading.Thread(target=self._reader, name="capture-reader", daemon=True)
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="capture-work")
        pending: deque[Future[_Result]] = deque()
        reader.start()
        try:
            while True:
                item = self.work.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                pending.append(pool.submit(self._process, item))
                while pending and (len(pending) >= self.max_pending or pending[0].done()):
                    self._write_result(pending.popleft().result())
                if self.cancel.is_set():
                    raise CancelledError(
                        f"Capture of {self.src_path} cancelled by the operator after "
                        f"{human_size(self.stats.bytes_read)}. The folder {self.image_dir} is "
                        "marked incomplete.",
                        hint="Capture again when ready, or delete the incomplete folder.",
                    )
            while pending:
                self._write_result(pending.popleft().result())
            if self.cancel.is_set() and self.stats.chunks < self.total_chunks:
                raise CancelledError(
                    f"Capture of {self.src_path} cancelled by the operator after "
                    f"{human_size(self.stats.bytes_read)}. The folder {self.image_dir} is "
                    "marked incomplete.",
                    hint="Capture again when ready, or delete the incomplete folder.",
                )
            if self.stats.chunks != self.total_chunks:
                raise CaptureError(
                    f"Capture of {self.src_path} stopped after {self.stats.chunks} of "
                    f"{self.total_chunks} chunks.",
                    hint="Capture again.",
                )
            return self.stats
        finally:
            self.stop.set()
            for f in pending:
                f.cancel()
            # unblock and join the reader
            while reader.is_alive():
                try:
                    self.work.get(timeout=0.1)
                except Empty:
                    pass
            pool.shutdown(wait=True, cancel_futures=True)
            for st in self.states:
                if st.fd >= 0:
                    os.close(st.fd)
                    st.fd = -1
            if self.buffered_fd is not None:
                os.close(self.buffered_fd)


# ---- public entry point ---------------------------------------------------------------
def _mounted(devnums: dict[DevNum, str]) -> bool:
    """Whether any of these devices is mounted (read-only or read-write)."""
    from rescueui.core import mounts

    with contextlib.suppress(OSError):
        return any(d in devnums for d in mounts.mounts_by_devnum(mounts.read_mountinfo()))
    return False


def _held_by_another(src: str, name: str, via: str) -> CaptureError:
    return CaptureError(
        f"Refusing to capture {src}: {name} is held exclusively by another program{via} and "
        "not mounted — most likely a restore is writing it. An image read while the disk "
        "changes mixes old and new data.",
        hint="Wait until that program is done (the disk list shows what is in use), then "
        "capture again.",
    )


def _claim_aliases(src: str) -> tuple[list[int], list[str]]:
    """Claim (O_EXCL, read-only) every other loop device on the source's storage for the
    whole capture, so nothing restores onto the source through it meanwhile. Returns the held
    descriptors and the read-write mounts/swap found on such aliases (a capture of a source
    in use needs the operator's consent). Raises when an alias is held by a writer."""
    fds: list[int] = []
    busy: list[str] = []
    try:
        for devnum, name in loop_aliases(src):
            members = source_devnums(devnum)
            if _mounted(members):
                busy += [
                    f"{b} (another path to the same storage)" for b in busy_read_write(members)
                ]
                continue
            try:
                fds.append(os.open(f"/dev/{name}", os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC))
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise _held_by_another(
                        src, f"/dev/{name}", " (another loop device on the same storage)"
                    ) from exc
                # gone meanwhile, or not openable: nothing holds it through us either
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds, busy


def _open_source(path: str) -> tuple[int, str, bool]:
    """(fd, kind, direct) — block devices with O_DIRECT where possible, files buffered."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CaptureError(
            f"Cannot open the source {path}: {exc.strerror}.",
            hint="Check the device name with 'rescueui disks'.",
        ) from exc
    if stat.S_ISBLK(st.st_mode):
        try:
            try:
                # Held exclusively while it is read: nothing mounts it or restores onto it.
                fd, direct = blockdev.open_direct_read(path, exclusive=True)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                # In use. Mounted: read it shared, the mounted check decides whether to go on.
                # Not mounted: another program holds it exclusively (a restore): refuse.
                rdev = st.st_rdev
                if not _mounted(source_devnums((os.major(rdev), os.minor(rdev)))):
                    raise _held_by_another(path, path, "") from exc
                fd, direct = blockdev.open_direct_read(path)
        except OSError as exc:
            raise CaptureError(
                f"Cannot open the source {path}: {exc.strerror}.", hint="Are you root?"
            ) from exc
        return fd, "block", direct
    if stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise CaptureError(f"Cannot open the source {path}: {exc.strerror}.") from exc
        try:
            # A restore onto this file takes an exclusive lock on it: refused while read here.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise CaptureError(
                f"The source {path} is being written by another program (it holds a lock on it).",
                hint="Wait until that program is done, then capture again.",
            ) from exc
        return fd, "file", False
    raise CaptureError(
        f"The source {path} is neither a disk nor a disk image file.",
        hint="Choose a whole disk such as /dev/sda (see 'rescueui disks').",
    )


def capture(
    source: str | Path,
    image_dir: str | Path,
    *,
    level: int = 3,
    partitions: list[int] | None = None,
    allow_mounted_rw: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    chunk_size: int = CHUNK_SIZE,
    workers: int = DEFAULT_WORKERS,
    lock_path: str | None = None,
    all_blocks: bool = False,
    format_version: int = FORMAT_VERSION,
) -> JobReport:
    """Capture ``source`` (a block device or a disk image file) into the folder ``image_dir``.

    Of each partition only the blocks its filesystem uses are read (partclone's map; swap
    gets a fresh header); ``all_blocks`` reads every byte. ``format_version`` 1 writes the
    previous release's format (every byte, no used-block map): kept so that the tests prove
    such images still restore.

    Returns the success :class:`JobReport` (also written to ``image_dir/reports``). On
    failure or cancel raises a :class:`RescueError` (``CaptureError``, ``CancelledError``,
    ...) with the failed report, already written, as ``exc.report``.
    """
    src = os.fspath(source)
    dest = Path(image_dir).absolute()
    cancel = cancel or threading.Event()
    report = JobReport(job="capture", source=src, destination=str(dest), image_dir=str(dest))
    report.details.update(
        {
            "level": level,
            "chunk_size": chunk_size,
            "workers": workers,
            "all_blocks": all_blocks,
            "format_version": format_version,
        }
    )
    fd = -1
    alias_fds: list[int] = []
    lock: WriterLock | None = None
    dest_prepared = False
    try:
        if not MIN_LEVEL <= level <= MAX_LEVEL:
            raise CaptureError(
                f"zstd level {level} is out of range.",
                hint=f"Use {MIN_LEVEL} to {MAX_LEVEL} (default 3).",
            )
        # One writer per machine: a capture never reads a disk a restore is writing, and a
        # restore never starts on a disk being captured (nor anywhere else meanwhile).
        lock = WriterLock(src, job="capture", path=lock_path).acquire()
        fd, kind, direct = _open_source(src)
        size = blockdev.device_size(fd)
        lss = blockdev.logical_sector_size(fd)
        pss = blockdev.physical_sector_size(fd)
        if size == 0:
            raise CaptureError(f"The source {src} is empty (0 bytes).", hint="Choose another disk.")
        # Never write the image onto the storage being captured, by any path (the target rule
        # knows the aliases: partitions, loop devices on the same backing file, hard links).
        problem = capture_destination_problem(src, dest)
        if problem:
            raise CaptureError(
                problem[0].upper() + problem[1:] + ".",
                hint="Write the image to another disk (e.g. a USB disk).",
            )
        warnings: list[str] = []
        alias_fds, busy = _claim_aliases(src)
        if kind == "block":
            rdev = os.fstat(fd).st_rdev
            devnums = source_devnums((os.major(rdev), os.minor(rdev)))
            busy = busy_read_write(devnums) + busy
        if busy:
            if not allow_mounted_rw:
                raise CaptureError(
                    f"Refusing to capture {src}: {'; '.join(busy)}. A filesystem that "
                    "changes while it is read gives an inconsistent image.",
                    hint="Unmount it (or remount it read-only) and try again; to capture "
                    "anyway, allow mounted sources explicitly.",
                    action="allow-mounted",
                )
            warnings.append(
                f"The source was in use during capture ({'; '.join(busy)}); the image may "
                "be inconsistent."
            )
        try:
            table = parttable.read_table(src)
        except DiskError as exc:
            raise CaptureError(exc.message, hint=exc.hint) from exc
        if format_version not in INDEX_VERSIONS:
            raise CaptureError(f"Image format version {format_version} cannot be written.")
        plans = plan_streams(table, size, partitions, src)
        meter = ProgressMeter("capture", 0, progress or (lambda _p: None))
        meter.update(phase="map", message="finding the blocks each filesystem uses")
        map_used_blocks(
            src,
            plans,
            all_blocks=all_blocks or format_version < 2,
            in_use=bool(busy),
            cancel=cancel,
            on_stream=lambda p: meter.update(
                message=f"finding the blocks the filesystem on {p.name} uses"
            ),
        )
        for p in plans:
            if p.warning:
                warnings.append(p.warning)
        system = None
        if not partitions and format_version >= 2:
            meter.update(phase="map", message="examining the installed system (read-only)")
            from rescueui.core.adapt import examine_disk
            from rescueui.core.adapt.system import InstalledSystem

            # A source in use is not mounted a second time (a second device with the same
            # filesystem id confuses btrfs and xfs while the first is mounted).
            found = (
                InstalledSystem(found=False, reason="not examined: the source was in use")
                if busy
                else examine_disk(src, table)
            )
            system = found.to_dict()
            report.details["installed_system"] = found.describe()
        total = sum(p.read_bytes for p in plans)
        report.bytes_total = total
        meter.bytes_total = total
        meter.update(bytes_total=total)
        manifest = ImageManifest(
            version=format_version,
            created=now_iso(),
            tool_version=__version__,
            source_disk=describe_source(src, kind, size, lss, pss),
            partition_table=table,
            host=host_profile(),
            streams=[],
            complete=False,
            warnings=warnings,
            whole_disk=not partitions,
            system=system,
        )
        report.warnings = list(warnings)
        try:
            prepare_destination(dest)
            dest_prepared = True
            save_manifest(dest, manifest)
        except OSError as exc:
            raise CaptureError(
                f"Cannot write to {dest}: {exc.strerror}.",
                hint="Check that the image medium is mounted read-write and has free space.",
            ) from exc
        job = _Capture(
            fd,
            src,
            dest,
            plans,
            level=level,
            chunk_size=chunk_size,
            workers=max(1, workers),
            meter=meter,
            cancel=cancel,
            direct=direct,
            format_version=format_version,
            data_ranges=blockdev.file_data_ranges(fd, size) if kind == "file" else None,
        )
        stats = job.run()
        report.bytes_done = stats.bytes_read
        report.bytes_stored = stats.bytes_stored
        manifest.streams = stats.streams
        manifest.complete = True
        manifest.finished = now_iso()
        try:
            save_manifest(dest, manifest)
            os.unlink(dest / INCOMPLETE_MARKER)
            blockdev_fsync_dir(dest)
        except OSError as exc:
            raise job._dest_error(exc, dest / MANIFEST_NAME) from exc
        meter.update(phase="done")
        report.streams = [_stream_summary(s) for s in stats.streams]
        report.notes += [p.usage() for p in plans if p.kind in ("partition", "disk")]
        report.details.update(
            {
                "chunks": stats.chunks,
                "zero_chunks": stats.zero_chunks,
                "unused_chunks": stats.unused_chunks,
                "hole_chunks": stats.hole_chunks,
                "direct_io": stats.direct_io,
                "gaps_skipped_all_zero": [
                    p.name
                    for p in plans
                    if p.optional and p.name not in {s.name for s in stats.streams}
                ],
                "extent_bytes": manifest.extent_bytes,
                "manifest_blake3": manifest.manifest_blake3,
            }
        )
        report.finish("success")
        report.write(dest / REPORTS_SUBDIR)
        return report
    except RescueError as exc:
        _fail(report, exc, dest if dest_prepared else None)
        raise
    except Exception as exc:  # a bug or an unexpected OS error: still a report, still a message
        err = CaptureError(
            f"Capture of {src} failed unexpectedly: {type(exc).__name__}: {exc}.",
            hint="The image folder is marked incomplete. Please report this with the log.",
        )
        _fail(report, err, dest if dest_prepared else None)
        raise err from exc
    finally:
        for held in [fd, *alias_fds]:
            if held >= 0:
                os.close(held)
        if lock is not None:
            lock.release()


def _stream_summary(s: StreamEntry) -> dict[str, Any]:
    return {
        "name": s.name,
        "kind": s.kind,
        "start_bytes": s.start_bytes,
        "size_bytes": s.size_bytes,
        "compressed_bytes": s.compressed_bytes,
        "zero_chunks": s.zero_chunks,
        "chunk_count": s.chunk_count,
        "fs_type": s.fs_type,
        "label": s.label,
        "fs_uuid": s.fs_uuid,
        "used_bytes": s.used_bytes,
        "used_map": s.used_map,
        "all_blocks": s.all_blocks,
        "unused_chunks": s.unused_chunks,
        "root_blake3": s.root_blake3,
    }


def _fail(report: JobReport, exc: RescueError, dest: Path | None) -> None:
    report.finish("cancelled" if isinstance(exc, CancelledError) else "failed", exc)
    if dest is not None:
        report.details["incomplete_image"] = str(dest)
    report.write(dest / REPORTS_SUBDIR if dest is not None else None)
    exc.report = report  # type: ignore[attr-defined]


def blockdev_fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "CaptureStats",
    "PlannedStream",
    "capture",
    "estimate_capture",
    "map_used_blocks",
    "plan_streams",
    "prepare_destination",
]
