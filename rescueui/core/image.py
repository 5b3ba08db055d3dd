"""rescueui's own image format (version 1): manifest, per-stream chunk index, reading.

An image is a folder (spec: ``docs/image-format.md``)::

    manifest.json        what was captured, from where; one entry per stream; its own hash
    <stream>.zst         independent zstd frames, one per chunk: ``zstd -dc p1.zst`` = the bytes
    <stream>.idx         binary chunk index: offset, lengths, BLAKE3, zero flag per chunk
    INCOMPLETE           present while a capture runs or after it failed: never a good image

Everything read from an image folder is untrusted: :meth:`Image.open` checks names,
sizes, counts, offsets, the index hashes, the stream root hashes and the manifest hash
before anyone reads a byte of data, and names the file and field at fault.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import struct
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import blake3
import zstandard

from rescueui.core.errors import CorruptImageError, ImageError, UnsupportedImageError

MiB = 1024 * 1024

FORMAT_NAME = "rescueui-image"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
INCOMPLETE_MARKER = "INCOMPLETE"

CHUNK_SIZE = 4 * MiB
ALLOWED_CHUNK_SIZES = frozenset({1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB})
MAX_STREAMS = 1024
MAX_STREAM_BYTES = 1 << 50  # 1 PiB: anything larger is a forged or broken manifest
MAX_MANIFEST_BYTES = 16 * MiB
# zstd's worst case for one frame is a little above the input; anything beyond this is forged.
MAX_FRAME_OVERHEAD = 64 * 1024

STREAM_KINDS = ("head", "partition", "gap", "tail", "disk")
STREAM_NAME_RE = re.compile(r"^(head|tail|disk|p[1-9][0-9]{0,3}|gap-[0-9]{1,20})$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")

# ---- chunk index (binary) -------------------------------------------------------------
INDEX_MAGIC = b"RUIIDX01"
INDEX_HEADER = struct.Struct("<8sIIQQ")  # magic, index version, chunk_size, stream size, count
INDEX_RECORD = struct.Struct("<QIIB32s3x")  # offset, comp length, raw length, flags, digest
INDEX_VERSION = 1
FLAG_ZERO = 0x01


@lru_cache(maxsize=16)
def zero_digest(length: int) -> bytes:
    """BLAKE3 (32 bytes) of ``length`` zero bytes; every zero chunk of that size has it."""
    return blake3.blake3(bytes(length)).digest()


ZERO_CHUNK_BLAKE3: str = zero_digest(CHUNK_SIZE).hex()


def root_of(digests: bytes) -> str:
    """A stream's root hash: BLAKE3 over its concatenated 32-byte chunk digests, in order."""
    return blake3.blake3(digests).hexdigest()


# ---- domain objects -------------------------------------------------------------------
@dataclass
class ChunkRecord:
    index: int
    offset: int  # in the .zst file
    length: int  # compressed bytes
    raw_length: int
    blake3: str  # hex of BLAKE3 of the raw chunk alone
    zero: bool

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.blake3)


@dataclass
class StreamEntry:
    name: str  # "p1", "head", "gap-<start>", "tail", "disk"
    kind: str  # "partition" | "head" | "gap" | "tail" | "disk"
    partition_number: int | None
    start_bytes: int  # where it goes on the disk
    size_bytes: int
    data_file: str
    index_file: str
    root_blake3: str
    chunk_size: int = CHUNK_SIZE
    fs_type: str | None = None
    label: str | None = None
    chunk_count: int = 0
    index_blake3: str = ""
    compressed_bytes: int = 0
    zero_chunks: int = 0

    @property
    def end_bytes(self) -> int:
        return self.start_bytes + self.size_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageManifest:
    version: int
    created: str
    tool_version: str
    source_disk: dict[str, Any]
    partition_table: dict[str, Any] | None
    host: dict[str, Any]
    streams: list[StreamEntry]
    complete: bool
    warnings: list[str] = field(default_factory=list)
    whole_disk: bool = True  # False when only selected partitions were captured
    finished: str | None = None
    manifest_blake3: str = ""  # filled by save_manifest / checked by Image.open

    def stream(self, name: str) -> StreamEntry:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(name)

    def partition_stream(self, number: int) -> StreamEntry | None:
        for s in self.streams:
            if s.kind == "partition" and s.partition_number == number:
                return s
        return None

    @property
    def extent_bytes(self) -> int:
        return max((s.end_bytes for s in self.streams), default=0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d = {"format": FORMAT_NAME, **d}
        return d


# ---- manifest hashing and saving ------------------------------------------------------
def canonical_manifest_bytes(d: dict[str, Any]) -> bytes:
    """The bytes the manifest hash is computed over: the manifest minus its own hash."""
    body = {k: v for k, v in d.items() if k != "manifest_blake3"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_hash(d: dict[str, Any]) -> str:
    return blake3.blake3(canonical_manifest_bytes(d)).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync, rename over ``path``, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_manifest(image_dir: str | Path, manifest: ImageManifest) -> None:
    """(Re)write ``manifest.json`` in ``image_dir`` with a freshly computed manifest hash."""
    d = manifest.to_dict()
    d.pop("manifest_blake3", None)
    digest = manifest_hash(d)
    manifest.manifest_blake3 = digest
    d["manifest_blake3"] = digest
    text = json.dumps(d, indent=2, ensure_ascii=False) + "\n"
    write_file_atomic(Path(image_dir) / MANIFEST_NAME, text.encode())


# ---- index encoding -------------------------------------------------------------------
def encode_index(chunk_size: int, size_bytes: int, records: list[ChunkRecord]) -> bytes:
    parts = [INDEX_HEADER.pack(INDEX_MAGIC, INDEX_VERSION, chunk_size, size_bytes, len(records))]
    for r in records:
        parts.append(
            INDEX_RECORD.pack(
                r.offset, r.length, r.raw_length, FLAG_ZERO if r.zero else 0, r.digest
            )
        )
    return b"".join(parts)


class IndexBuilder:
    """Accumulates index records of one stream while it is being written (compact bytes)."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self._records = bytearray()
        self._digests = bytearray()
        self.count = 0
        self.offset = 0
        self.zero_chunks = 0

    def add(self, length: int, raw_length: int, digest: bytes, zero: bool) -> int:
        """Record the next chunk (written at the current end of the data file); returns its offset."""
        off = self.offset
        self._records += INDEX_RECORD.pack(
            off, length, raw_length, FLAG_ZERO if zero else 0, digest
        )
        self._digests += digest
        self.offset += length
        self.count += 1
        self.zero_chunks += int(zero)
        return off

    def root(self) -> str:
        return root_of(bytes(self._digests))

    def encode(self, size_bytes: int) -> bytes:
        header = INDEX_HEADER.pack(
            INDEX_MAGIC, INDEX_VERSION, self.chunk_size, size_bytes, self.count
        )
        return header + bytes(self._records)


# ---- reading and validation -----------------------------------------------------------
def _req(d: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict):
        raise ImageError(f"{where} is not a JSON object.", hint="The image is damaged.")
    if key not in d:
        raise ImageError(
            f"The field '{key}' is missing in {where}.",
            hint="The image is damaged or was not made by rescueui.",
        )
    value = d[key]
    # bool is a subclass of int: refuse true/false where a number is expected
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ImageError(f"The field '{key}' in {where} has the wrong type (a boolean).")
    if not isinstance(value, types):
        raise ImageError(
            f"The field '{key}' in {where} has the wrong type ({type(value).__name__}).",
            hint="The image is damaged.",
        )
    return value


def _opt(d: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if d.get(key) is None:
        return None
    return _req(d, key, types, where)


def _int_in(d: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int:
    v = int(_req(d, key, int, where))
    if not lo <= v <= hi:
        raise ImageError(f"The field '{key}' in {where} is out of range ({v}).")
    return v


def _safe_file(image_dir: Path, name: str, where: str) -> Path:
    if not FILE_NAME_RE.match(name) or ".." in name or name in (MANIFEST_NAME, INCOMPLETE_MARKER):
        raise ImageError(
            f"Refusing the file name {name!r} in {where}: only plain names inside the image "
            "folder are allowed.",
            hint="The manifest is damaged or forged; do not use this image.",
        )
    path = (image_dir / name).resolve()
    if path.parent != image_dir.resolve():
        raise ImageError(f"The file {name!r} in {where} points outside the image folder.")
    return path


def parse_stream(d: Any, n: int, image_dir: Path, mpath: str) -> StreamEntry:
    where = f"stream #{n} of {mpath}"
    name = _req(d, "name", str, where)
    if not STREAM_NAME_RE.match(name):
        raise ImageError(
            f"Refusing the stream name {name!r} in {mpath}: stream names are head, tail, disk, "
            "p<N> or gap-<offset>.",
            hint="The manifest is damaged or forged; do not use this image.",
        )
    where = f"stream '{name}' of {mpath}"
    kind = _req(d, "kind", str, where)
    if kind not in STREAM_KINDS:
        raise ImageError(f"Unknown stream kind {kind!r} in {where}.")
    pnum = _opt(d, "partition_number", int, where)
    if kind == "partition" and (pnum is None or not 1 <= pnum <= 9999 or name != f"p{pnum}"):
        raise ImageError(f"Partition stream {where} has a bad partition_number ({pnum}).")
    chunk_size = _req(d, "chunk_size", int, where)
    if chunk_size not in ALLOWED_CHUNK_SIZES:
        raise ImageError(
            f"Chunk size {chunk_size} in {where} is not one of the allowed sizes "
            f"({', '.join(str(c // MiB) + ' MiB' for c in sorted(ALLOWED_CHUNK_SIZES))})."
        )
    size = _int_in(d, "size_bytes", where, 1, MAX_STREAM_BYTES)
    start = _int_in(d, "start_bytes", where, 0, MAX_STREAM_BYTES)
    count = _int_in(d, "chunk_count", where, 1, MAX_STREAM_BYTES // min(ALLOWED_CHUNK_SIZES))
    if count != math.ceil(size / chunk_size):
        raise ImageError(
            f"{where} says {count} chunks, but {size} bytes in {chunk_size}-byte chunks "
            f"are {math.ceil(size / chunk_size)}.",
            hint="The manifest is damaged; do not use this image.",
        )
    root = _req(d, "root_blake3", str, where)
    idx_hash = _req(d, "index_blake3", str, where)
    for key, value in (("root_blake3", root), ("index_blake3", idx_hash)):
        if not HEX64_RE.match(value):
            raise ImageError(f"The field '{key}' in {where} is not a BLAKE3 hex digest.")
    data_file = _req(d, "data_file", str, where)
    index_file = _req(d, "index_file", str, where)
    _safe_file(image_dir, data_file, where)
    _safe_file(image_dir, index_file, where)
    if data_file == index_file:
        raise ImageError(f"{where} uses the same file for data and index.")
    return StreamEntry(
        name=name,
        kind=kind,
        partition_number=pnum,
        start_bytes=start,
        size_bytes=size,
        data_file=data_file,
        index_file=index_file,
        root_blake3=root,
        chunk_size=chunk_size,
        fs_type=_opt(d, "fs_type", str, where),
        label=_opt(d, "label", str, where),
        chunk_count=count,
        index_blake3=idx_hash,
        compressed_bytes=_int_in(d, "compressed_bytes", where, 0, MAX_STREAM_BYTES * 2)
        if "compressed_bytes" in d
        else 0,
        zero_chunks=_int_in(d, "zero_chunks", where, 0, count) if "zero_chunks" in d else 0,
    )


def parse_manifest(raw: dict[str, Any], image_dir: Path, mpath: str) -> ImageManifest:
    """Turn untrusted manifest JSON into an :class:`ImageManifest` (checks types and bounds)."""
    if not isinstance(raw, dict):
        raise ImageError(f"{mpath} is not a JSON object.", hint="The image is damaged.")
    fmt = raw.get("format")
    if fmt != FORMAT_NAME:
        raise UnsupportedImageError(
            f"{mpath} is not a rescueui image manifest (format {fmt!r}).",
            hint="Choose the folder of an image made by 'rescueui capture'.",
        )
    version = _req(raw, "version", int, mpath)
    if version not in SUPPORTED_VERSIONS:
        from rescueui import __version__

        raise UnsupportedImageError(
            f"The image {image_dir} uses format version {version}; this rescueui "
            f"({__version__}) reads version "
            f"{', '.join(str(v) for v in SUPPORTED_VERSIONS)} only.",
            hint="Use the rescueui version that made the image, or a newer one.",
        )
    complete = _req(raw, "complete", bool, mpath)
    streams_raw = _req(raw, "streams", list, mpath)
    if len(streams_raw) > MAX_STREAMS:
        raise ImageError(f"{mpath} lists {len(streams_raw)} streams (at most {MAX_STREAMS}).")
    streams = [parse_stream(s, i, image_dir, mpath) for i, s in enumerate(streams_raw)]
    names = [s.name for s in streams]
    files = [f for s in streams for f in (s.data_file, s.index_file)]
    if len(set(names)) != len(names) or len(set(files)) != len(files):
        raise ImageError(f"{mpath} lists the same stream or file twice.")
    source_disk = _req(raw, "source_disk", dict, mpath)
    src_size = _int_in(source_disk, "size_bytes", f"'source_disk' of {mpath}", 0, MAX_STREAM_BYTES)
    ordered = sorted(streams, key=lambda s: s.start_bytes)
    for a, b in itertools.pairwise(ordered):
        if b.start_bytes < a.end_bytes:
            raise ImageError(f"Streams '{a.name}' and '{b.name}' overlap in {mpath}.")
    for s in streams:
        if s.end_bytes > src_size:
            raise ImageError(
                f"Stream '{s.name}' ends at byte {s.end_bytes}, beyond the source disk "
                f"({src_size} bytes) in {mpath}."
            )
    table = _opt(raw, "partition_table", dict, mpath)
    warnings = _req(raw, "warnings", list, mpath) if "warnings" in raw else []
    if not all(isinstance(w, str) for w in warnings):
        raise ImageError(f"The field 'warnings' in {mpath} must be a list of strings.")
    return ImageManifest(
        version=version,
        created=_req(raw, "created", str, mpath),
        tool_version=_req(raw, "tool_version", str, mpath),
        source_disk=source_disk,
        partition_table=table,
        host=_req(raw, "host", dict, mpath),
        streams=streams,
        complete=complete,
        warnings=list(warnings),
        whole_disk=bool(_req(raw, "whole_disk", bool, mpath)) if "whole_disk" in raw else True,
        finished=_opt(raw, "finished", str, mpath),
        manifest_blake3=_req(raw, "manifest_blake3", str, mpath),
    )


def read_manifest_raw(image_dir: Path) -> dict[str, Any]:
    mpath = image_dir / MANIFEST_NAME
    try:
        size = mpath.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ImageError(f"{mpath} is {size} bytes, too large for a manifest.")
        with open(mpath, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise ImageError(
            f"{image_dir} holds no {MANIFEST_NAME}: it is not a rescueui image.",
            hint="Choose the folder that 'rescueui capture' wrote.",
        ) from exc
    except OSError as exc:
        raise ImageError(f"Cannot read {mpath}: {exc.strerror}.") from exc
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImageError(
            f"{mpath} is not valid JSON ({exc}).", hint="The image is damaged; do not use it."
        ) from exc
    if not isinstance(raw, dict):
        raise ImageError(f"{mpath} is not a JSON object.", hint="The image is damaged.")
    return raw


def is_incomplete_image(image_dir: str | Path) -> bool:
    """True for a folder left by a capture that did not finish (ours, marked incomplete)."""
    return (Path(image_dir) / INCOMPLETE_MARKER).exists()


class Image:
    """A validated, opened image folder. Nothing in it is trusted until :meth:`open` passes.

    ``open`` reads the manifest and every index (small) and checks them, and the sizes of
    the data files; it does not read chunk data. Chunk data is checked against the
    index hashes by whoever reads it (restore, :func:`rescueui.core.verify.verify_image`).
    """

    def __init__(self, image_dir: Path, manifest: ImageManifest, indexes: dict[str, bytes]) -> None:
        self.dir = image_dir
        self.manifest = manifest
        self._indexes = indexes  # stream name -> raw index records (after the header)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- opening --------------------------------------------------------------------
    @classmethod
    def open(cls, image_dir: str | Path) -> Image:
        image_dir = Path(image_dir)
        if not image_dir.is_dir():
            raise ImageError(
                f"{image_dir} is not a folder.",
                hint="An image made by 'rescueui capture' is a folder with a manifest.json.",
            )
        if (image_dir / INCOMPLETE_MARKER).exists():
            raise ImageError(
                f"{image_dir} is an incomplete image: its capture did not finish "
                "(cancelled, out of space, or interrupted).",
                hint="It cannot be restored. Capture the disk again (into this folder or a new one).",
            )
        raw = read_manifest_raw(image_dir)
        mpath = str(image_dir / MANIFEST_NAME)
        manifest = parse_manifest(raw, image_dir, mpath)
        expected = manifest_hash(raw)
        if manifest.manifest_blake3 != expected:
            raise CorruptImageError(
                f"The manifest hash of {mpath} does not match its contents "
                f"(recorded {manifest.manifest_blake3[:16]}…, computed {expected[:16]}…): "
                "the manifest was edited or damaged.",
                hint="Do not restore this image; use another copy of it.",
            )
        if not manifest.complete:
            raise ImageError(
                f"{image_dir} is an incomplete image (manifest says complete=false).",
                hint="It cannot be restored. Capture the disk again.",
            )
        if not manifest.streams:
            raise ImageError(f"{mpath} lists no streams: there is nothing to restore.")
        indexes = {s.name: _load_index(image_dir, s) for s in manifest.streams}
        return cls(image_dir, manifest, indexes)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- access ---------------------------------------------------------------------
    @property
    def streams(self) -> list[StreamEntry]:
        return self.manifest.streams

    @property
    def extent_bytes(self) -> int:
        """End of the last stream on the disk: the target must be at least this large."""
        return self.manifest.extent_bytes

    @property
    def total_bytes(self) -> int:
        """Raw bytes over all streams (what a restore writes)."""
        return sum(s.size_bytes for s in self.manifest.streams)

    def stream(self, name: str) -> StreamEntry:
        return self.manifest.stream(name)

    def data_path(self, stream: StreamEntry) -> Path:
        return self.dir / stream.data_file

    def index_path(self, stream: StreamEntry) -> Path:
        return self.dir / stream.index_file

    def iter_chunks(self, stream: StreamEntry) -> Iterator[ChunkRecord]:
        raw = self._indexes[stream.name]
        for i, (off, length, raw_len, flags, digest) in enumerate(INDEX_RECORD.iter_unpack(raw)):
            yield ChunkRecord(i, off, length, raw_len, digest.hex(), bool(flags & FLAG_ZERO))

    def chunks(self, stream: StreamEntry) -> list[ChunkRecord]:
        return list(self.iter_chunks(stream))

    def chunk(self, stream: StreamEntry, index: int) -> ChunkRecord:
        raw = self._indexes[stream.name]
        off, length, raw_len, flags, digest = INDEX_RECORD.unpack_from(
            raw, index * INDEX_RECORD.size
        )
        return ChunkRecord(index, off, length, raw_len, digest.hex(), bool(flags & FLAG_ZERO))

    def chunk_disk_offset(self, stream: StreamEntry, chunk: ChunkRecord | int) -> int:
        index = chunk if isinstance(chunk, int) else chunk.index
        return stream.start_bytes + index * stream.chunk_size

    def _fd(self, stream: StreamEntry) -> int:
        fd = self._fds.get(stream.name)
        if fd is None:
            with self._lock:
                fd = self._fds.get(stream.name)
                if fd is None:
                    try:
                        fd = os.open(self.data_path(stream), os.O_RDONLY | os.O_CLOEXEC)
                    except OSError as exc:
                        raise ImageError(
                            f"Cannot open {self.data_path(stream)}: {exc.strerror}.",
                            hint="Check the image medium (is it still attached?).",
                        ) from exc
                    self._fds[stream.name] = fd
        return fd

    def read_compressed(self, stream: StreamEntry, chunk: ChunkRecord) -> bytes:
        """The compressed zstd frame of one chunk (thread-safe, positional read)."""
        fd = self._fd(stream)
        try:
            data = os.pread(fd, chunk.length, chunk.offset)
        except OSError as exc:
            raise ImageError(
                f"Reading chunk {chunk.index} of stream '{stream.name}' from "
                f"{self.data_path(stream)} failed: {exc.strerror}.",
                hint="The image medium may be failing; try another copy of the image.",
            ) from exc
        if len(data) != chunk.length:
            raise CorruptImageError(
                f"{self.data_path(stream)} is truncated: chunk {chunk.index} of stream "
                f"'{stream.name}' ends beyond the end of the file.",
                hint="Use another copy of the image.",
            )
        return data

    def read_chunk(self, stream: StreamEntry, chunk: ChunkRecord) -> bytes:
        """The decompressed bytes of one chunk (not hash-checked: the caller checks)."""
        return decompress_chunk(self.read_compressed(stream, chunk), chunk, stream)


_dctx_local = threading.local()


def decompress_chunk(frame: bytes, chunk: ChunkRecord, stream: StreamEntry) -> bytes:
    """Decompress one frame; a frame that is not exactly ``raw_length`` bytes is corrupt."""
    d = getattr(_dctx_local, "d", None)
    if d is None:
        d = _dctx_local.d = zstandard.ZstdDecompressor()
    try:
        out = d.decompress(frame, max_output_size=chunk.raw_length)
    except zstandard.ZstdError as exc:
        raise CorruptImageError(
            f"Chunk {chunk.index} of stream '{stream.name}' (disk offset "
            f"{stream.start_bytes + chunk.index * stream.chunk_size}) does not decompress: {exc}.",
            hint="The image is damaged; use another copy of it.",
        ) from exc
    if len(out) != chunk.raw_length:
        raise CorruptImageError(
            f"Chunk {chunk.index} of stream '{stream.name}' decompresses to {len(out)} bytes, "
            f"expected {chunk.raw_length}.",
            hint="The image is damaged; use another copy of it.",
        )
    return out


def _load_index(image_dir: Path, s: StreamEntry) -> bytes:
    """Read and check one stream's index against the manifest and its data file size."""
    ipath = image_dir / s.index_file
    dpath = image_dir / s.data_file
    expected_len = INDEX_HEADER.size + s.chunk_count * INDEX_RECORD.size
    try:
        with open(ipath, "rb") as f:
            data = f.read(expected_len + 1)
    except FileNotFoundError as exc:
        raise ImageError(
            f"The index file {ipath} of stream '{s.name}' is missing.",
            hint="The image is incomplete or damaged; use another copy of it.",
        ) from exc
    except OSError as exc:
        raise ImageError(f"Cannot read {ipath}: {exc.strerror}.") from exc
    if len(data) != expected_len:
        raise CorruptImageError(
            f"The index file {ipath} has {len(data)} bytes, expected {expected_len} "
            f"for {s.chunk_count} chunks.",
            hint="The image is damaged; use another copy of it.",
        )
    actual = blake3.blake3(data).hexdigest()
    if actual != s.index_blake3:
        raise CorruptImageError(
            f"The index file {ipath} does not match the hash recorded in the manifest "
            f"(recorded {s.index_blake3[:16]}…, computed {actual[:16]}…).",
            hint="The image was edited or damaged; use another copy of it.",
        )
    magic, iver, chunk_size, size, count = INDEX_HEADER.unpack_from(data, 0)
    if magic != INDEX_MAGIC or iver != INDEX_VERSION:
        raise UnsupportedImageError(f"{ipath} is not a version-{INDEX_VERSION} rescueui index.")
    if (chunk_size, size, count) != (s.chunk_size, s.size_bytes, s.chunk_count):
        raise CorruptImageError(f"The header of {ipath} disagrees with the manifest.")
    records = data[INDEX_HEADER.size :]
    try:
        file_size = dpath.stat().st_size
    except FileNotFoundError as exc:
        raise ImageError(
            f"The data file {dpath} of stream '{s.name}' is missing.",
            hint="The image is incomplete or damaged; use another copy of it.",
        ) from exc
    pos = 0
    digests = bytearray()
    zeros = 0
    last = count - 1
    for i, (off, length, raw_len, flags, digest) in enumerate(INDEX_RECORD.iter_unpack(records)):
        want_raw = s.chunk_size if i < last else s.size_bytes - last * s.chunk_size
        if off != pos or raw_len != want_raw or not 0 < length <= raw_len + MAX_FRAME_OVERHEAD:
            raise CorruptImageError(
                f"Chunk {i} of stream '{s.name}' in {ipath} has an impossible place or size "
                f"(offset {off}, length {length}, raw {raw_len}).",
                hint="The image is damaged; use another copy of it.",
            )
        if flags & ~FLAG_ZERO:
            raise CorruptImageError(f"Chunk {i} of stream '{s.name}' has unknown flags {flags}.")
        if flags & FLAG_ZERO:
            zeros += 1
            if digest != zero_digest(raw_len):
                raise CorruptImageError(
                    f"Chunk {i} of stream '{s.name}' is marked all-zero but its hash is not "
                    "the hash of zeros.",
                    hint="The image is damaged; use another copy of it.",
                )
        pos = off + length
        digests += digest
    if pos > file_size:
        raise CorruptImageError(
            f"The data file {dpath} is truncated: it has {file_size} bytes but its index "
            f"needs {pos}.",
            hint="The copy of the image is incomplete; copy it again from the original.",
        )
    if pos != file_size:
        raise CorruptImageError(
            f"The data file {dpath} has {file_size - pos} extra bytes after the last chunk.",
            hint="The image is damaged; use another copy of it.",
        )
    root = root_of(bytes(digests))
    if root != s.root_blake3:
        raise CorruptImageError(
            f"The chunk hashes of stream '{s.name}' do not add up to its root hash "
            f"(recorded {s.root_blake3[:16]}…, computed {root[:16]}…).",
            hint="The image was edited or damaged; use another copy of it.",
        )
    return records
