"""The image-source seam: one interface every kind of image implements.

The engine (plan, restore, verify), the pre-flight and the front ends use an image through
these few things, without asking which kind it is:

* ``kind`` and ``describe()`` — what it is, in words ("qcow2 VM disk", "raw disk image,
  zstd-compressed");
* ``manifest`` — the facts, in the shape of our own manifest
  (:class:`~rescueui.core.image.ImageManifest`): source disk (size, sector size), partition
  table (``sfdisk --json``), source machine where known, one stream per partition;
* ``extent_bytes`` — how many bytes of the target the image covers;
* ``segment_table(partition)`` — the work, in disk order: data segments and zero segments
  (zero and unallocated ranges cost nothing: they are made zero on the target the fast way);
* ``decoder()`` — reads a segment's bytes into a buffer and checks what the kind allows;
* ``integrity`` — what the kind carries to check against (:class:`Integrity`);
* ``sequential`` — whether segments must be read in order by one thread;
* ``supports_resume`` and ``manifest.manifest_blake3`` — an identity for the resume journal;
* ``dir`` — the folder reports go to (next to the image).

Our own folders (:class:`rescueui.core.image.Image`) implement it with their chunk index
and the one chunk decoder. Foreign kinds derive from :class:`ForeignImage`: they give the
extents and a reader; the BLAKE3 of every segment is computed as it is read, so the
read-back verify compares the target with what was read.

:func:`open_image` detects the kind by content (never by file name) and opens it.
"""

from __future__ import annotations

import bisect
import os
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from rescueui.core import parttable
from rescueui.core.errors import CorruptImageError, ImageError, UnsupportedImageError
from rescueui.core.image import CHUNK_SIZE, FORMAT_VERSION, ImageManifest, StreamEntry
from rescueui.core.pipeline import Segment, is_all_zero, zero_hash

SEGMENT = CHUNK_SIZE  # foreign data is cut into pieces of this size (4 MiB)


@dataclass(frozen=True)
class Integrity:
    """What an image kind carries to check its data against, in words for the report."""

    code: str  # "chunk-blake3" | "range-sha256" | "block-checksums" | "none"
    words: str  # e.g. "every 4 MiB chunk's BLAKE3 is checked before it is written"

    @property
    def checked_at_source(self) -> bool:
        return self.code != "none"


NO_SOURCE_CHECKS = Integrity(
    "none",
    "the image carries no checksums: nothing could be checked against the source; the BLAKE3 "
    "of every piece was computed as it was read and the read-back verify compares the disk "
    "with that",
)


@dataclass(frozen=True)
class Extent:
    """A range of the image's disk: ``data`` is read; ``zero`` reads as zeros (holes,
    unallocated clusters, zero clusters) and costs nothing; ``unused`` is space the
    filesystem does not use (a partclone bitmap's free blocks, what a bmap leaves out): it
    reads as zeros too, and a restore may leave it as it is on the target."""

    start: int
    length: int
    kind: str  # "data" | "zero" | "unused"
    sha256: str | None = None  # bmap: the range's expected SHA-256

    @property
    def end(self) -> int:
        return self.start + self.length


class ForeignManifest(ImageManifest):
    """Facts of a foreign image: our manifest's shape, its extent the virtual disk size."""

    virtual_size: int = 0

    @property
    def extent_bytes(self) -> int:  # type: ignore[override]
        return self.virtual_size


def foreign_manifest(
    *,
    virtual_size: int,
    sector_size: int,
    partition_table: dict[str, Any] | None,
    identity: str,
    source_disk: dict[str, Any] | None = None,
    host: dict[str, Any] | None = None,
    created: str = "",
    warnings: Sequence[str] = (),
    fs_types: dict[int, tuple[str | None, str | None]] | None = None,
) -> ForeignManifest:
    """Facts in our manifest's shape: one stream per partition of ``partition_table``
    (for pre-flight, display and partition restores); ``identity`` binds a journal."""
    streams: list[StreamEntry] = []
    if partition_table:
        ss = int(partition_table.get("sectorsize") or sector_size)
        for part in partition_table.get("partitions", []):
            number = parttable.partition_number(part)
            start, size = int(part.get("start", 0)) * ss, int(part.get("size", 0)) * ss
            fs, label = (fs_types or {}).get(number, (None, None))
            streams.append(
                StreamEntry(
                    name=f"p{number}",
                    kind="partition",
                    partition_number=number,
                    start_bytes=start,
                    size_bytes=size,
                    data_file="",
                    index_file="",
                    root_blake3="",
                    fs_type=fs,
                    label=label,
                    chunk_count=-(-size // SEGMENT),
                )
            )
    disk = {"size_bytes": virtual_size, "logical_sector_size": sector_size}
    disk.update(source_disk or {})
    m = ForeignManifest(
        version=FORMAT_VERSION,
        created=created,
        tool_version="",
        source_disk=disk,
        partition_table=partition_table,
        host=dict(host or {}),
        streams=streams,
        complete=True,
        warnings=list(warnings),
        whole_disk=True,
        manifest_blake3=identity,
    )
    m.virtual_size = virtual_size
    return m


# --------------------------------------------------------------------------- segments


class ExtentTable:
    """The segments of a foreign image, computed on demand from its extents (read-only list).

    Data extents are cut into pieces of at most :data:`SEGMENT` bytes; a zero extent is
    pieces marked zero. The BLAKE3 of a data segment is unknown until it is read: the
    decoder records it here (:meth:`record`), and later lookups (read-back verify) carry it.
    """

    def __init__(
        self,
        extents: Iterable[Extent],
        base: int = 0,
        name: str = "disk",
        *,
        leave_unused: bool = False,
    ) -> None:
        self.name = name
        # (first index, start, length, kind)
        self._pieces: list[tuple[int, int, int, str]] = []
        self._firsts: list[int] = []
        self._before: list[int] = []  # bytes of all pieces before each piece
        self._count = 0
        self._bytes = 0
        self.base = base  # subtracted from extent offsets (partition restores)
        self.leave_unused = leave_unused
        #: ranges left as they are on the target (``unused`` extents, with ``leave_unused``)
        self.left: list[tuple[int, int]] = []
        for e in extents:
            if e.length <= 0:
                continue
            if e.kind == "unused" and leave_unused:
                self.left.append((e.start - base, e.length))
                continue
            count = -(-e.length // SEGMENT)
            self._pieces.append((self._count, e.start - base, e.length, e.kind))
            self._firsts.append(self._count)
            self._before.append(self._bytes)
            self._count += count
            self._bytes += e.length
        self._hashes: dict[int, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    @property
    def total_bytes(self) -> int:
        return self._bytes

    @property
    def left_bytes(self) -> int:
        return sum(n for _, n in self.left)

    @property
    def runs(self) -> list[Any]:
        """One entry per extent, for the per-stream chunk counters of the progress."""
        return [_Run(self.name, -(-length // SEGMENT)) for _, _, length, _ in self._pieces]

    def _piece(self, i: int) -> tuple[int, int, int, str]:
        if not 0 <= i < self._count:
            raise IndexError(i)
        return self._pieces[bisect.bisect_right(self._firsts, i) - 1]

    def __getitem__(self, i: int) -> Segment:
        first, start, length, kind = self._piece(i)
        off = (i - first) * SEGMENT
        n = min(SEGMENT, length - off)
        zero = kind != "data"
        digest = zero_hash(n) if zero else self._hashes.get(i, "")
        return Segment(self.name, i, start + off, n, digest, zero, unused=kind == "unused")

    def record(self, index: int, digest: str) -> None:
        with self._lock:
            self._hashes[index] = digest

    def bytes_before(self, i: int) -> int:
        if i >= self._count:
            return self._bytes
        first = self._piece(i)[0]
        j = bisect.bisect_right(self._firsts, i) - 1
        return self._before[j] + (i - first) * SEGMENT

    def bytes_between(self, a: int, b: int) -> int:
        return self.bytes_before(b) - self.bytes_before(a) if b > a else 0

    def phase_bytes(self, phase: str, start: int = 0) -> int:
        return self.bytes_between(start, self._count) if phase == "write" else 0

    def stream_chunks(self, name: str) -> int:
        return self._count if name == self.name else 0

    def max_chunk(self) -> int:
        return SEGMENT


@dataclass(frozen=True)
class _Run:
    name: str
    count: int

    @property
    def stream(self) -> Any:
        return _Named(self.name)


@dataclass(frozen=True)
class _Named:
    name: str


def clip_extents(extents: Iterable[Extent], start: int, end: int) -> list[Extent]:
    """The parts of ``extents`` inside ``[start, end)``; uncovered ranges become zero."""
    out: list[Extent] = []
    pos = start
    for e in sorted(extents, key=lambda x: x.start):
        a, b = max(e.start, start), min(e.end, end)
        if b <= a:
            continue
        if a > pos:
            out.append(Extent(pos, a - pos, "zero"))
        out.append(Extent(a, b - a, e.kind, e.sha256 if (a, b) == (e.start, e.end) else None))
        pos = b
    if pos < end:
        out.append(Extent(pos, end - pos, "zero"))
    return out


class ForeignDecoder:
    """Reads a foreign data segment into the caller's buffer, runs the kind's own checks,
    and records its BLAKE3 in the table (the read-back verify compares the target with it).

    A data segment that reads as all zeros (zero clusters QEMU maps as data, the zero blocks
    of a raw image without a bmap, of a compressed stream) is not hashed and not written:
    :meth:`decode` returns ``None`` and the writer makes it zero with the zero ranges around
    it (one call per run); its recorded hash is that of so many zero bytes. Every foreign
    kind gets this here, through the seam. Kinds override :meth:`read` (where the bytes come
    from) and :meth:`check` (what the kind carries to check them against).
    """

    def __init__(self, image: ForeignImage, table: ExtentTable) -> None:
        self.image = image
        self.table = table

    def read(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the image's bytes at ``offset`` (of the whole image)."""
        self.image.read_into(offset, view)

    def check(self, seg: Segment, view: memoryview) -> None:
        """The kind's own check of a segment's bytes (every byte, zeros too), before it is
        handed to the writer; raises CorruptImageError. Nothing by default."""

    def decode(self, seg: Segment, out: memoryview) -> memoryview | None:
        """The segment's bytes in ``out[:seg.length]``, or None when they are all zeros."""
        view = out[: seg.length]
        self.read(seg.disk_offset + self.table.base, view)
        self.check(seg, view)
        if is_all_zero(view):
            self.table.record(seg.index, zero_hash(seg.length))
            return None
        self.table.record(seg.index, blake3.blake3(view).hexdigest())
        return view

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- foreign kinds


class ForeignImage(ABC):
    """Base of every image kind that is not our own folder format.

    A kind gives: :attr:`kind`, :meth:`describe`, the facts (``manifest``, built with
    :func:`foreign_manifest`), :meth:`extents` and :meth:`read_into`. Everything the engine
    needs beyond that is here.
    """

    kind: str = "foreign"
    integrity: Integrity = NO_SOURCE_CHECKS
    sequential: bool = False  # True: segments must be read in order (compressed streams)
    # an interrupted restore resumes: the journal binds the image's identity
    # (``manifest.manifest_blake3``); the pieces before its checkpoint are read again to
    # learn their BLAKE3 (a kind keeps none), the target is compared with them, and the
    # writes go on from there (:meth:`rewind` first)
    supports_resume: bool = True
    size_is_estimate: bool = False

    def __init__(self, path: Path, manifest: ForeignManifest) -> None:
        self.path = path
        self.dir = path.parent
        self.manifest = manifest

    # -- what a kind provides --------------------------------------------------------
    @abstractmethod
    def describe(self) -> str:
        """One line for the operator: what this image is."""

    @abstractmethod
    def extents(self) -> list[Extent]:
        """Data and zero ranges covering ``[0, extent_bytes)`` in order."""

    @abstractmethod
    def read_into(self, offset: int, view: memoryview) -> None:
        """Fill ``view`` with the image's bytes at ``offset`` (ImageError on a short read)."""

    def close(self) -> None:  # noqa: B027 - kinds with resources override it
        """Release what the kind holds (helper processes, mounts, descriptors)."""

    def rewind(self) -> None:  # noqa: B027 - sequential kinds with state override it
        """Read from the beginning again (a kind whose readers keep their place)."""

    def first_sector(self) -> bytes:
        """The disk's first 512 bytes (boot code, partition table type) for the pre-flight.
        Sequential kinds override it with what they read while opening."""
        buf = bytearray(512)
        self.read_into(0, memoryview(buf))
        return bytes(buf)

    # -- the seam ---------------------------------------------------------------------
    @property
    def streams(self) -> list[StreamEntry]:
        return self.manifest.streams

    @property
    def extent_bytes(self) -> int:
        return self.manifest.virtual_size

    def segment_table(
        self, partition: int | None = None, *, leave_unused: bool = False
    ) -> ExtentTable:
        """The restore's work in disk order; with ``leave_unused`` without the ``unused``
        extents (kept in the table's ``left``)."""
        if partition is None:
            ext = clip_extents(self.extents(), 0, self.extent_bytes)
            return ExtentTable(ext, leave_unused=leave_unused)
        stream = self.manifest.partition_stream(partition)
        if stream is None:
            raise ImageError(f"The image {self.path} has no partition {partition}.")
        ext = clip_extents(self.extents(), stream.start_bytes, stream.end_bytes)
        return ExtentTable(
            ext, base=stream.start_bytes, name=stream.name, leave_unused=leave_unused
        )

    def decoder(self, table: ExtentTable) -> ForeignDecoder:
        return ForeignDecoder(self, table)

    def __enter__(self) -> ForeignImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- detection

_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
}
_VM_MAGIC = {
    b"QFI\xfb": "qcow2",
    b"KDMV": "vmdk",
    b"# Disk DescriptorFile": "vmdk",
    b"vhdxfile": "vhdx",
    b"conectix": "vpc",
}


@dataclass
class Detected:
    """What :func:`detect_kind` found."""

    kind: str  # "rescueui" | "qcow2" | "vmdk" | "vhdx" | "vdi" | "vpc" | "raw" | "clonezilla"
    compression: str | None = None  # raw images: gzip | xz | zstd | bzip2
    notes: list[str] = field(default_factory=list)


def detect_kind(path: str | Path) -> Detected:
    """The kind of image at ``path``, by content (never by its name)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise ImageError(f"Cannot look at {p}: {exc.strerror}.") from exc
    if stat.S_ISDIR(st.st_mode):
        if (p / "manifest.json").exists() or (p / "INCOMPLETE").exists():
            return Detected("rescueui")
        if (p / "parts").is_file() or (p / "disk").is_file():
            return Detected("clonezilla")
        raise ImageError(
            f"{p} is a folder, but not an image: it holds no manifest.json (rescueui) and no "
            "'disk'/'parts' file (Clonezilla).",
            hint="Choose the image folder itself, or a disk image file.",
        )
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(
            f"{p} is not a regular file or folder; it is not read as an image.",
            hint="Choose an image folder or a disk image file.",
        )
    from rescueui.core.safefile import open_regular

    fd = open_regular(p, what="image file")
    try:
        head = os.pread(fd, 4096, 0)
        tail = os.pread(fd, 512, max(0, st.st_size - 512)) if st.st_size >= 512 else b""
    finally:
        os.close(fd)
    for magic, name in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return Detected("raw", compression=name)
    for magic, name in _VM_MAGIC.items():
        if head.startswith(magic):
            return Detected(name)
    if head[0x40:0x44] == b"\x7f\x10\xda\xbe" or head.startswith(b"<<< "):
        return Detected("vdi")
    if tail.startswith(b"conectix"):
        return Detected("vpc")  # a fixed VHD: raw data and a footer
    return Detected("raw")


def open_image(path: str | Path, *, measure: bool = True) -> Any:
    """Open any image by its content: our folders, VM disks, raw and compressed raw.

    Returns an object implementing the seam (:class:`rescueui.core.image.Image` or a
    :class:`ForeignImage`). Raises :class:`ImageError` (what it is and why not).
    ``measure=False`` (for listing): a compressed raw image that records no size is not
    decompressed to count it; its size is an estimate (``size_is_estimate``).
    """
    p = Path(path)
    found = detect_kind(p)
    if found.kind == "rescueui":
        from rescueui.core.image import Image

        return Image.open(p)
    import importlib

    module, cls = _KINDS.get(found.kind, (None, None))
    if module is None or cls is None:
        raise CorruptImageError(f"{p}: unknown image kind {found.kind}.")
    try:
        kind_cls = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise UnsupportedImageError(
            f"{p} is a {found.kind} image; this rescueui cannot read that kind yet.",
            hint="Convert it to a raw disk image with its own tools, or use a newer rescueui.",
        ) from exc
    if found.kind == "raw":
        return kind_cls.open(p, compression=found.compression, measure=measure)
    if found.kind == "clonezilla":
        return kind_cls.open(p)
    return kind_cls.open(p, fmt=found.kind)


_KINDS = {
    "raw": ("rescueui.core.images.raw", "RawImage"),
    "clonezilla": ("rescueui.core.images.clonezilla", "ClonezillaImage"),
    **{
        k: ("rescueui.core.images.qemu", "QemuImage")
        for k in ("qcow2", "vmdk", "vhdx", "vdi", "vpc")
    },
}


def read_every_data_segment(
    image: ForeignImage,
    progress: Any = None,
    cancelled: threading.Event | None = None,
    table: ExtentTable | None = None,
    decoder: ForeignDecoder | None = None,
) -> int:
    """Read every data segment of ``image`` in order through its decoder (with every check
    the kind carries), writing nothing: the body of a kind's ``check_source``. Returns the
    bytes read; raises at the first damage; ``progress(done, total)``. A kind that reports
    what its decoder counted passes its own ``table`` and ``decoder``."""
    from rescueui.core.errors import CancelledError

    if table is None:
        table = image.segment_table()
    dec = decoder if decoder is not None else image.decoder(table)
    buf = memoryview(bytearray(table.max_chunk()))
    total = sum(e.length for e in image.extents() if e.kind == "data")
    done = 0
    try:
        for i in range(len(table)):
            seg = table[i]
            if seg.zero:
                continue
            if cancelled is not None and cancelled.is_set():
                raise CancelledError(f"Checking {image.path} was cancelled.")
            dec.decode(seg, buf)
            done += seg.length
            if progress is not None:
                progress(done, total)
    finally:
        dec.close()
    return done
