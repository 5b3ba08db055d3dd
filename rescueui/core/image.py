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

from rescueui.core import chunkcodec
from rescueui.core.chunkcodec import ChunkPlace
from rescueui.core.errors import CorruptImageError, ImageError, UnsupportedImageError
from rescueui.core.safefile import SafeDir, UnsafeFileError, open_regular
from rescueui.core.text import safe_text

MiB = 1024 * 1024

FORMAT_NAME = "rescueui-image"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
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
INDEX_VERSION = 2  # version 1: a format-1 image's index (no FLAG_UNUSED)
INDEX_VERSIONS = {1: 1, 2: 2}  # manifest version -> the index version its streams carry
FLAG_ZERO = 0x01
# The whole chunk lies in space the filesystem does not use: it was not read, its frame is the
# constant frame of zeros and its hash the hash of zeros (so FLAG_ZERO is set too). A restore
# may leave such a chunk as it is on the target instead of making it zero.
FLAG_UNUSED = 0x02
_FLAGS_AT = 16  # offset of the flags byte in an index record
_UNUSED_RUN_RE = re.compile(rb"[\x03]+")  # flag bytes of consecutive unused chunks


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
    unused: bool = False  # not used by the filesystem (not read at capture; zero too)

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.blake3)

    @classmethod
    def unpacked(
        cls, index: int, offset: int, length: int, raw_length: int, flags: int, digest: bytes
    ) -> ChunkRecord:
        """A record from the fields of one :data:`INDEX_RECORD`."""
        return cls(
            index,
            offset,
            length,
            raw_length,
            digest.hex(),
            bool(flags & FLAG_ZERO),
            bool(flags & FLAG_UNUSED),
        )


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
    # Format 2: what the filesystem uses. ``used_bytes`` None: every byte was captured
    # (``all_blocks`` says why, for a partition); else the bytes the filesystem uses, as
    # the map of ``used_map`` (the tool that gave it) says; ``unused_chunks`` of the chunks lie
    # wholly outside them.
    fs_uuid: str | None = None
    used_bytes: int | None = None
    used_map: str | None = None
    all_blocks: str | None = None
    unused_chunks: int = 0

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
    # The Linux system installed on the source disk (adapt.system.InstalledSystem.to_dict());
    # format 2, optional, untrusted: read through InstalledSystem.from_dict.
    system: dict[str, Any] | None = None

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
        if d.get("system") is None:
            d.pop("system", None)  # absent rather than null: older readers know every key
        d = {"format": FORMAT_NAME, **d}
        return d


# ---- manifest hashing and saving ------------------------------------------------------
def canonical_manifest_bytes(d: dict[str, Any]) -> bytes:
    """The bytes the manifest hash is computed over: the manifest minus its own hash."""
    body = {k: v for k, v in d.items() if k != "manifest_blake3"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_hash(d: dict[str, Any]) -> str:
    return blake3.blake3(canonical_manifest_bytes(d)).hexdigest()


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync, rename over ``path``, fsync the folder — inside the
    folder only, never through a symbolic link (:class:`~rescueui.core.safefile.SafeDir`)."""
    with SafeDir.open(path.parent) as folder:
        folder.replace(path.name, data, tmp=f".{path.name}.tmp")


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
def encode_index(
    chunk_size: int, size_bytes: int, records: list[ChunkRecord], version: int = INDEX_VERSION
) -> bytes:
    parts = [INDEX_HEADER.pack(INDEX_MAGIC, version, chunk_size, size_bytes, len(records))]
    for r in records:
        flags = (FLAG_ZERO if r.zero else 0) | (FLAG_UNUSED if r.unused else 0)
        parts.append(INDEX_RECORD.pack(r.offset, r.length, r.raw_length, flags, r.digest))
    return b"".join(parts)


class IndexBuilder:
    """Accumulates index records of one stream while it is being written (compact bytes)."""

    def __init__(self, chunk_size: int, version: int = INDEX_VERSION) -> None:
        self.chunk_size = chunk_size
        self.version = version
        self._records = bytearray()
        self._digests = bytearray()
        self.count = 0
        self.offset = 0
        self.zero_chunks = 0
        self.unused_chunks = 0

    def add(
        self, length: int, raw_length: int, digest: bytes, zero: bool, unused: bool = False
    ) -> int:
        """Record the next chunk (written at the current end of the data file); returns its
        offset. An ``unused`` chunk is a zero chunk outside the filesystem's used blocks."""
        if unused and (not zero or self.version < 2):
            raise ValueError("an unused chunk is a zero chunk of a version-2 index")
        off = self.offset
        flags = (FLAG_ZERO if zero else 0) | (FLAG_UNUSED if unused else 0)
        self._records += INDEX_RECORD.pack(off, length, raw_length, flags, digest)
        self._digests += digest
        self.offset += length
        self.count += 1
        self.zero_chunks += int(zero)
        self.unused_chunks += int(unused)
        return off

    def root(self) -> str:
        return root_of(bytes(self._digests))

    def encode(self, size_bytes: int) -> bytes:
        header = INDEX_HEADER.pack(
            INDEX_MAGIC, self.version, self.chunk_size, size_bytes, self.count
        )
        return header + bytes(self._records)


# ---- opening the files of an image (the one place) -------------------------------------
_DAMAGED_HINT = "The image is incomplete or damaged; use another copy of it."
_FORGED_HINT = "The manifest is damaged or forged; do not use this image."


def _link_message(path: Path, what: str) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    where = Path(os.path.abspath(path.parent / target))
    outside = where.parent != Path(os.path.abspath(path.parent))
    return (
        f"The {what} {path} is a symbolic link to {safe_text(target)}"
        + (", outside the image folder" if outside else "")
        + "; links are not followed: every file of an image must be a real file inside the "
        "image folder."
    )


def open_image_file(path: str | Path, *, what: str, of: str = "") -> int:
    """Open one file of an image folder for reading: **the** way image files are opened.

    The file must be a regular file reached without following a symlink in its last
    component (the folder itself may be reached through one: the operator named it), and
    it is opened without blocking, so a FIFO or device in its place is refused at once.
    ``what`` names the file in messages ("index file"), ``of`` says whose ("stream 'p1'").
    Raises :class:`ImageError` naming the file. The caller closes the descriptor.
    """
    p = Path(path)
    owner = f" of {of}" if of else ""
    try:
        return open_regular(p, what=what)
    except FileNotFoundError as exc:
        raise ImageError(f"The {what} {p}{owner} is missing.", hint=_DAMAGED_HINT) from exc
    except UnsafeFileError as exc:
        if os.path.islink(p):
            raise ImageError(
                _link_message(p, what),
                hint="Copy the image folder with the files themselves, not links to them, or "
                "use another copy of the image.",
            ) from exc
        raise ImageError(
            exc.message,
            hint="Every file of an image must be a regular file; use another copy of the image.",
        ) from exc


def _read_fd(fd: int, path: Path, limit: int, what: str) -> bytes:
    """Up to ``limit + 1`` bytes from ``fd`` (one more tells a file larger than allowed)."""
    parts: list[bytes] = []
    total = 0
    try:
        while total <= limit:
            data = os.read(fd, min(1 << 20, limit + 1 - total))
            if not data:
                break
            parts.append(data)
            total += len(data)
    except OSError as exc:
        raise ImageError(
            f"Cannot read the {what} {path}: {exc.strerror}.",
            hint="The image medium may be failing; try another copy of the image.",
        ) from exc
    return b"".join(parts)


def _file_size(fd: int) -> int:
    return os.fstat(fd).st_size


# ---- reading and validation -----------------------------------------------------------
MAX_JSON_DEPTH = 32  # sfdisk's table is 4 deep; anything far deeper is forged
MAX_TEXT = 4096  # one free-text value (model, path, created, ...)
MAX_WARNING_TEXT = 16384
MAX_WARNINGS = 1000
MAX_LIST = 1024  # partitions, NICs, disks, controllers
MAX_PARTITION_NAME = 256
MAX_SECTORS = MAX_STREAM_BYTES  # bound for LBAs and sector counts
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Characters refused in the table fields that go into an sfdisk script inside quotes.
_QUOTED_BAD_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\"'`\\]")
_TABLE_TOKEN_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,63}$")  # type, uuid, label-id
_TABLE_LABEL_RE = re.compile(r"^[a-z0-9]{1,16}$")  # gpt, dos, sun, sgi, ...
_TABLE_UNIT_RE = re.compile(r"^[a-z]{1,16}$")
_TABLE_ATTRS_RE = re.compile(r"^[0-9A-Za-z_:, ]{0,256}$")
_NODE_NUMBER_RE = re.compile(r"(\d+)$")
FS_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


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
            f"The field '{key}' in {where} has the wrong type ({_type_name(value)}).",
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


class _Fields:
    """Checks of the free-form parts of a manifest (source disk, table, host), one message
    style: the field by its dotted name (``partition_table.partitions[0].name``) and the file.

    With ``null_ok=False`` a field that is present must not be null either (the partition
    table: its readers take a present key for a value, as sfdisk writes it)."""

    def __init__(self, mpath: str, *, null_ok: bool = True) -> None:
        self.mpath = mpath
        self.null_ok = null_ok

    def _absent(self, d: dict[str, Any], key: str, name: str, want: str, required: bool) -> bool:
        """True when ``key`` has no value; refuses a missing required one and a null one
        where null is not allowed."""
        if d.get(key) is not None:
            return False
        if required and key not in d:
            raise ImageError(f"The field '{name}' is missing in {self.mpath}.", hint=_FORGED_HINT)
        if required or (key in d and not self.null_ok):
            raise self.wrong(name, None, want)
        return True

    def wrong(self, field_name: str, value: Any, want: str) -> ImageError:
        return ImageError(
            f"The field '{field_name}' in {self.mpath} has the wrong type "
            f"({_type_name(value)}): it must be {want}.",
            hint=_FORGED_HINT,
        )

    def bad(self, field_name: str, why: str) -> CorruptImageError:
        return CorruptImageError(
            f"The field '{field_name}' in {self.mpath} {why}.", hint=_FORGED_HINT
        )

    def obj(self, value: Any, field_name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.wrong(field_name, value, "an object")
        return value

    def integer(
        self, d: dict[str, Any], key: str, prefix: str, lo: int, hi: int, *, required: bool = False
    ) -> int | None:
        name = f"{prefix}.{key}"
        if self._absent(d, key, name, "a whole number", required):
            return None
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.wrong(name, v, "a whole number")
        if not lo <= v <= hi:
            raise self.bad(name, f"is out of range ({v}; allowed {lo} to {hi})")
        return v

    def sector_size(self, d: dict[str, Any], key: str, prefix: str, *, zero: bool) -> None:
        v = self.integer(d, key, prefix, 0, 1 << 16)
        if v is None or (zero and v == 0):
            return
        if v < 512 or v & (v - 1):
            raise self.bad(
                f"{prefix}.{key}", f"is {v}, not a sector size (512 to 65536, a power of two)"
            )

    def text(
        self,
        d: dict[str, Any],
        key: str,
        prefix: str,
        *,
        limit: int = MAX_TEXT,
        bad_chars: re.Pattern[str] | None = None,
        pattern: re.Pattern[str] | None = None,
        required: bool = False,
    ) -> str | None:
        name = f"{prefix}.{key}" if prefix else key
        if self._absent(d, key, name, "text", required):
            return None
        v = d[key]
        if not isinstance(v, str):
            raise self.wrong(name, v, "text")
        if len(v) > limit:
            raise self.bad(name, f"is {len(v)} characters long (at most {limit})")
        if bad_chars is not None and bad_chars.search(v):
            raise self.bad(
                name,
                f"holds control characters, quotes or backslashes ('{safe_text(v[:80])}'); "
                "they are refused in values that are written back to a disk",
            )
        if pattern is not None and not pattern.match(v):
            raise self.bad(name, f"holds an impossible value ('{safe_text(v[:80])}')")
        return v

    def flag(self, d: dict[str, Any], key: str, prefix: str) -> None:
        name = f"{prefix}.{key}"
        if not self._absent(d, key, name, "true or false", False) and not isinstance(d[key], bool):
            raise self.wrong(name, d[key], "true or false")

    def items(self, d: dict[str, Any], key: str, prefix: str) -> list[Any]:
        name = f"{prefix}.{key}"
        if self._absent(d, key, name, "a list", False):
            return []
        v = d[key]
        if not isinstance(v, list):
            raise self.wrong(name, v, "a list")
        if len(v) > MAX_LIST:
            raise self.bad(name, f"lists {len(v)} entries (at most {MAX_LIST})")
        return v

    def no_control(self, value: Any, field_name: str) -> None:
        """Every string inside ``value`` (any depth) free of control characters."""
        stack: list[tuple[Any, str]] = [(value, field_name)]
        while stack:
            v, name = stack.pop()
            if isinstance(v, str):
                if _CONTROL_RE.search(v):
                    raise self.bad(
                        name,
                        f"holds control characters ('{safe_text(v[:80])}'); they are refused "
                        "in a partition table",
                    )
            elif isinstance(v, dict):
                stack.extend((x, f"{name}.{k}") for k, x in v.items())
            elif isinstance(v, list):
                stack.extend((x, f"{name}[{i}]") for i, x in enumerate(v))


def _check_depth(raw: Any, mpath: str) -> None:
    """Refuse JSON nested deeper than :data:`MAX_JSON_DEPTH` (no recursion: it is untrusted)."""
    stack: list[tuple[Any, int]] = [(raw, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise CorruptImageError(
                f"{mpath} is nested more than {MAX_JSON_DEPTH} levels deep: it is not a "
                "manifest rescueui writes.",
                hint=_FORGED_HINT,
            )
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values() if isinstance(x, dict | list))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v if isinstance(x, dict | list))


def check_source_disk(source_disk: Any, mpath: str) -> dict[str, Any]:
    """The ``source_disk`` object: types of every field the program reads."""
    f = _Fields(mpath)
    d = f.obj(source_disk, "source_disk")
    f.integer(d, "size_bytes", "source_disk", 0, MAX_STREAM_BYTES, required=True)
    f.sector_size(d, "logical_sector_size", "source_disk", zero=True)
    f.sector_size(d, "physical_sector_size", "source_disk", zero=True)
    for key in ("path", "kind", "model", "vendor", "serial", "wwn", "bus", "name"):
        f.text(d, key, "source_disk")
    return d


def check_partition_table(table: Any, mpath: str) -> dict[str, Any]:
    """The ``partition_table`` (sfdisk's JSON): every value :mod:`parttable`, pre-flight and
    the grow step read, with the right type and within bounds, and nothing in it that could
    change the meaning of the sfdisk script the grow step writes from it."""
    f = _Fields(mpath, null_ok=False)
    t = f.obj(table, "partition_table")
    p = "partition_table"
    f.no_control(t, p)
    f.text(t, "label", p, pattern=_TABLE_LABEL_RE, required=True)
    f.text(t, "id", p, pattern=_TABLE_TOKEN_RE)
    f.text(t, "unit", p, pattern=_TABLE_UNIT_RE)
    f.text(t, "device", p)
    f.sector_size(t, "sectorsize", p, zero=False)
    f.integer(t, "firstlba", p, 0, MAX_SECTORS)
    f.integer(t, "lastlba", p, 0, MAX_SECTORS)
    f.integer(t, "table-length", p, 1, 1 << 16)
    numbers: set[int] = set()
    for i, part in enumerate(f.items(t, "partitions", p)):
        q = f"{p}.partitions[{i}]"
        f.obj(part, q)
        node = f.text(part, "node", q, bad_chars=_QUOTED_BAD_RE, required=True)
        m = _NODE_NUMBER_RE.search(node or "")
        number = int(m.group(1)) if m and len(m.group(1)) <= 4 else 0
        if not 1 <= number <= 9999:
            raise f.bad(f"{q}.node", "does not end in a partition number (1 to 9999)")
        if number in numbers:
            raise f.bad(f"{q}.node", f"repeats partition number {number}")
        numbers.add(number)
        f.integer(part, "start", q, 0, MAX_SECTORS, required=True)
        f.integer(part, "size", q, 0, MAX_SECTORS, required=True)
        f.text(part, "type", q, pattern=_TABLE_TOKEN_RE)
        f.text(part, "uuid", q, pattern=_TABLE_TOKEN_RE)
        f.text(part, "name", q, limit=MAX_PARTITION_NAME, bad_chars=_QUOTED_BAD_RE)
        f.text(part, "attrs", q, pattern=_TABLE_ATTRS_RE)
        f.flag(part, "bootable", q)
    return t


def check_host(host: Any, mpath: str) -> dict[str, Any]:
    """The source ``host`` profile: the fields pre-flight and the front ends read."""
    f = _Fields(mpath)
    h = f.obj(host, "host")
    f.integer(h, "cpus", "host", 0, 1 << 20)
    f.integer(h, "memory_bytes", "host", 0, 1 << 62)
    for key in (
        "firmware",
        "dmi_vendor",
        "dmi_product",
        "dmi_version",
        "board_vendor",
        "board_name",
        "virtual",
    ):
        f.text(h, key, "host")
    for i, c in enumerate(f.items(h, "storage_controllers", "host")):
        if not isinstance(c, str):
            raise f.wrong(f"host.storage_controllers[{i}]", c, "text")
        if len(c) > MAX_TEXT:
            raise f.bad(f"host.storage_controllers[{i}]", "is too long")
    for i, name in enumerate(f.items(h, "storage_drivers", "host")):
        if not isinstance(name, str) or len(name) > MAX_TEXT:
            raise f.wrong(f"host.storage_drivers[{i}]", name, "a short text")
    for i, disk in enumerate(f.items(h, "disks", "host")):
        q = f"host.disks[{i}]"
        f.obj(disk, q)
        for key in ("name", "path", "bus", "model"):
            f.text(disk, key, q)
        f.integer(disk, "size_bytes", q, 0, 1 << 62)
        f.sector_size(disk, "logical_sector_size", q, zero=True)
        f.sector_size(disk, "physical_sector_size", q, zero=True)
        f.flag(disk, "rotational", q)
    for i, nic in enumerate(f.items(h, "nics", "host")):
        q = f"host.nics[{i}]"
        f.obj(nic, q)
        for key in ("name", "mac", "driver"):
            f.text(nic, key, q)
        f.flag(nic, "physical", q)
    return h


def _safe_file(image_dir: Path, name: str, where: str) -> Path:
    """A plain file name inside the image folder (whether it is a real file, not a link or a
    FIFO, is checked when it is opened: :func:`open_image_file`)."""
    if not FILE_NAME_RE.match(name) or ".." in name or name in (MANIFEST_NAME, INCOMPLETE_MARKER):
        raise ImageError(
            f"Refusing the file name '{safe_text(name)}' in {where}: only plain names inside "
            "the image folder are allowed.",
            hint=_FORGED_HINT,
        )
    return image_dir / name


_NAME_KINDS = {"head": "head", "tail": "tail", "disk": "disk"}


def _opt_token(
    d: dict[str, Any], key: str, where: str, pattern: re.Pattern[str], what: str
) -> str | None:
    """An optional text field that must match ``pattern`` (refused as forged otherwise)."""
    value = _opt(d, key, str, where)
    if value is not None and not pattern.match(value):
        raise CorruptImageError(
            f"The field '{key}' in {where} is not {what} ('{safe_text(value[:80])}').",
            hint=_FORGED_HINT,
        )
    return value


def parse_stream(d: Any, n: int, image_dir: Path, mpath: str) -> StreamEntry:
    where = f"stream #{n} of {mpath}"
    name = _req(d, "name", str, where)
    if not STREAM_NAME_RE.match(name):
        raise ImageError(
            f"Refusing the stream name '{safe_text(name)}' in {mpath}: stream names are head, "
            "tail, disk, p<N> or gap-<offset>.",
            hint=_FORGED_HINT,
        )
    where = f"stream '{name}' of {mpath}"
    kind = _req(d, "kind", str, where)
    if kind not in STREAM_KINDS:
        raise ImageError(f"Unknown stream kind '{safe_text(kind)}' in {where}.")
    expected_kind = _NAME_KINDS.get(name, "gap" if name.startswith("gap-") else "partition")
    if kind != expected_kind:
        raise ImageError(
            f"The field 'kind' in {where} is {kind!r}; a stream named {name!r} is a "
            f"{expected_kind} stream.",
            hint=_FORGED_HINT,
        )
    pnum = _opt(d, "partition_number", int, where)
    if kind == "partition" and (pnum is None or not 1 <= pnum <= 9999 or name != f"p{pnum}"):
        raise ImageError(f"Partition stream {where} has a bad partition_number ({pnum}).")
    if kind != "partition" and pnum is not None:
        raise ImageError(
            f"The field 'partition_number' in {where} must be null: it is not a partition."
        )
    chunk_size = _req(d, "chunk_size", int, where)
    if chunk_size not in ALLOWED_CHUNK_SIZES:
        raise ImageError(
            f"Chunk size {chunk_size} in {where} is not one of the allowed sizes "
            f"({', '.join(str(c // MiB) + ' MiB' for c in sorted(ALLOWED_CHUNK_SIZES))})."
        )
    size = _int_in(d, "size_bytes", where, 1, MAX_STREAM_BYTES)
    start = _int_in(d, "start_bytes", where, 0, MAX_STREAM_BYTES)
    if kind == "gap" and name != f"gap-{start}":
        raise ImageError(
            f"The stream {name!r} of {mpath} starts at byte {start}; a gap stream is named "
            "by its start.",
            hint=_FORGED_HINT,
        )
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
    fs_type = _opt_token(d, "fs_type", where, FS_TYPE_RE, "a filesystem name")
    label = _opt(d, "label", str, where)
    if label is not None and len(label) > MAX_TEXT:
        raise ImageError(f"The field 'label' in {where} is too long ({len(label)} characters).")
    fs_uuid = _opt_token(d, "fs_uuid", where, _TABLE_TOKEN_RE, "a filesystem UUID")
    used_bytes = _opt(d, "used_bytes", int, where)
    if used_bytes is not None and not 0 <= used_bytes <= size:
        raise CorruptImageError(
            f"The field 'used_bytes' in {where} ({used_bytes}) is not within the stream's "
            f"{size} bytes.",
            hint=_FORGED_HINT,
        )
    texts = _Fields(mpath)
    used_map = texts.text(d, "used_map", f"streams.{name}")
    all_blocks = texts.text(d, "all_blocks", f"streams.{name}")
    unused_chunks = _int_in(d, "unused_chunks", where, 0, count) if "unused_chunks" in d else 0
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
        fs_type=fs_type,
        label=label,
        chunk_count=count,
        index_blake3=idx_hash,
        compressed_bytes=_int_in(d, "compressed_bytes", where, 0, MAX_STREAM_BYTES * 2)
        if "compressed_bytes" in d
        else 0,
        zero_chunks=_int_in(d, "zero_chunks", where, 0, count) if "zero_chunks" in d else 0,
        fs_uuid=fs_uuid,
        used_bytes=used_bytes,
        used_map=used_map,
        all_blocks=all_blocks,
        unused_chunks=unused_chunks,
    )


def parse_manifest(raw: dict[str, Any], image_dir: Path, mpath: str) -> ImageManifest:
    """Turn untrusted manifest JSON into an :class:`ImageManifest`.

    The one schema check: the type and bounds of every field the rest of the program reads
    (streams, source disk, partition table, host profile, texts), naming the field.
    """
    if not isinstance(raw, dict):
        raise ImageError(f"{mpath} is not a JSON object.", hint="The image is damaged.")
    _check_depth(raw, mpath)
    fmt = raw.get("format")
    if fmt != FORMAT_NAME:
        raise UnsupportedImageError(
            f"{mpath} is not a rescueui image manifest (format '{safe_text(fmt)}').",
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
    check_source_disk(source_disk, mpath)
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
    if table is not None:
        check_partition_table(table, mpath)
    host = _req(raw, "host", dict, mpath)
    check_host(host, mpath)
    system = _opt(raw, "system", dict, mpath)
    warnings = _req(raw, "warnings", list, mpath) if "warnings" in raw else []
    if len(warnings) > MAX_WARNINGS or not all(
        isinstance(w, str) and len(w) <= MAX_WARNING_TEXT for w in warnings
    ):
        raise ImageError(
            f"The field 'warnings' in {mpath} must be a list of at most {MAX_WARNINGS} texts "
            f"of at most {MAX_WARNING_TEXT} characters.",
            hint=_FORGED_HINT,
        )
    texts = _Fields(mpath)
    created = texts.text(raw, "created", "", required=True)
    tool_version = texts.text(raw, "tool_version", "", required=True)
    finished = texts.text(raw, "finished", "")
    manifest_blake3 = _req(raw, "manifest_blake3", str, mpath)
    if not HEX64_RE.match(manifest_blake3):
        raise ImageError(f"The field 'manifest_blake3' in {mpath} is not a BLAKE3 hex digest.")
    return ImageManifest(
        version=version,
        created=created or "",
        tool_version=tool_version or "",
        source_disk=source_disk,
        partition_table=table,
        host=host,
        streams=streams,
        complete=complete,
        warnings=list(warnings),
        whole_disk=bool(_req(raw, "whole_disk", bool, mpath)) if "whole_disk" in raw else True,
        finished=finished,
        manifest_blake3=manifest_blake3,
        system=system,
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_manifest_bytes(image_dir: Path) -> bytes:
    """The bytes of ``manifest.json`` (a regular file of at most 16 MiB, never waited on)."""
    mpath = image_dir / MANIFEST_NAME
    if not os.path.lexists(mpath):
        raise ImageError(
            f"{image_dir} holds no {MANIFEST_NAME}: it is not a rescueui image.",
            hint="Choose the folder that 'rescueui capture' wrote.",
        )
    fd = open_image_file(mpath, what="image manifest")
    try:
        size = _file_size(fd)
        if size > MAX_MANIFEST_BYTES:
            raise ImageError(
                f"{mpath} is {size} bytes, too large for a manifest (at most "
                f"{MAX_MANIFEST_BYTES}).",
                hint="The image is damaged; do not use it.",
            )
        data = _read_fd(fd, mpath, MAX_MANIFEST_BYTES, "image manifest")
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ImageError(f"{mpath} grew beyond {MAX_MANIFEST_BYTES} bytes while it was read.")
    return data


def _bounded_int(text: str) -> int:
    """JSON integers of at most 40 digits (a manifest needs 20); Python's own limit would
    otherwise speak of interpreter settings."""
    if len(text.lstrip("-")) > 40:
        raise ValueError(f"a number with {len(text.lstrip('-'))} digits, more than any field holds")
    return int(text)


def parse_manifest_json(data: bytes, mpath: str) -> dict[str, Any]:
    """Untrusted manifest bytes to a JSON object (no NaN/Infinity, bounded nesting)."""
    try:
        raw = json.loads(
            data.decode("utf-8"), parse_constant=_refuse_constant, parse_int=_bounded_int
        )
    except RecursionError as exc:
        raise CorruptImageError(
            f"{mpath} is nested too deeply to be a manifest rescueui writes.",
            hint=_FORGED_HINT,
        ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImageError(
            f"{mpath} is not valid JSON ({exc}).", hint="The image is damaged; do not use it."
        ) from exc
    if not isinstance(raw, dict):
        raise ImageError(f"{mpath} is not a JSON object.", hint="The image is damaged.")
    _check_depth(raw, mpath)
    return raw


def read_manifest_raw(image_dir: Path) -> dict[str, Any]:
    return parse_manifest_json(read_manifest_bytes(image_dir), str(image_dir / MANIFEST_NAME))


def is_incomplete_image(image_dir: str | Path) -> bool:
    """True for a folder left by a capture that did not finish (ours, marked incomplete)."""
    return os.path.lexists(Path(image_dir) / INCOMPLETE_MARKER)


class Image:
    """A validated, opened image folder. Nothing in it is trusted until :meth:`open` passes.

    ``open`` reads the manifest and every index (small) and checks them, and the sizes of
    the data files; it does not read chunk data. Chunk data is decoded by
    :mod:`rescueui.core.chunkcodec` (bounded) and checked against the index hashes by
    whoever reads it (restore, :func:`rescueui.core.verify.verify_image`).
    """

    def __init__(
        self,
        image_dir: Path,
        manifest: ImageManifest,
        indexes: dict[str, bytes],
        data_sizes: dict[str, int] | None = None,
        manifest_file_blake3: str = "",
    ) -> None:
        self.dir = image_dir
        self.manifest = manifest
        self._indexes = indexes  # stream name -> raw index records (after the header)
        self._data_sizes = data_sizes or {}  # stream name -> size of its data file
        #: BLAKE3 of the manifest.json bytes as read by :meth:`open` (binds a journal).
        self.manifest_file_blake3 = manifest_file_blake3
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
        if is_incomplete_image(image_dir):
            raise ImageError(
                f"{image_dir} is an incomplete image: its capture did not finish "
                "(cancelled, out of space, or interrupted).",
                hint="It cannot be restored. Capture the disk again (into this folder or a new one).",
            )
        data = read_manifest_bytes(image_dir)
        mpath = str(image_dir / MANIFEST_NAME)
        raw = parse_manifest_json(data, mpath)
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
        indexes: dict[str, bytes] = {}
        sizes: dict[str, int] = {}
        for s in manifest.streams:
            indexes[s.name], sizes[s.name] = _load_index(image_dir, s, manifest.version)
        return cls(image_dir, manifest, indexes, sizes, blake3.blake3(data).hexdigest())

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

    # -- the image-source seam (rescueui.core.images.source) ---------------------------
    kind = "rescueui"
    sequential = False  # chunks are independent: decoded in parallel, in any order
    supports_resume = True  # every chunk's BLAKE3 is in the index

    @property
    def path(self) -> Path:
        return self.dir

    @property
    def integrity(self) -> Any:
        from rescueui.core.images.source import Integrity

        return Integrity(
            "chunk-blake3",
            "a BLAKE3 for every chunk in the image's index: each chunk is checked against it "
            "before it is written",
        )

    def describe(self) -> str:
        from rescueui.core.units import human_size

        return (
            f"rescueui image (format {self.manifest.version}), {len(self.streams)} stream(s), "
            f"{human_size(self.extent_bytes)} of disk"
        )

    def segment_table(self, partition: int | None = None, *, leave_unused: bool = False) -> Any:
        """The restore's work in disk order (whole disk, or one partition at offset 0);
        with ``leave_unused`` without the chunks no filesystem uses."""
        from rescueui.core import pipeline

        if partition is None:
            return pipeline.whole_disk_segments(self, leave_unused=leave_unused)
        stream = self.manifest.partition_stream(partition)
        if stream is None:
            raise ImageError(f"The image {self.dir} has no partition {partition}.")
        return pipeline.partition_segments(self, stream, leave_unused=leave_unused)

    def decoder(self, table: Any) -> Any:
        """Reads, decodes (the one bounded chunk decoder) and BLAKE3-checks chunks."""
        from rescueui.core import pipeline

        return pipeline.Decoder(table.max_chunk() + MAX_FRAME_OVERHEAD)

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

    @property
    def stored_bytes(self) -> int:
        """Bytes of all data files (as checked by :meth:`open`)."""
        return sum(self._data_sizes.values())

    def stream(self, name: str) -> StreamEntry:
        return self.manifest.stream(name)

    def data_path(self, stream: StreamEntry) -> Path:
        return self.dir / stream.data_file

    def index_path(self, stream: StreamEntry) -> Path:
        return self.dir / stream.index_file

    def iter_chunks(self, stream: StreamEntry) -> Iterator[ChunkRecord]:
        raw = self._indexes[stream.name]
        for i, fields in enumerate(INDEX_RECORD.iter_unpack(raw)):
            yield ChunkRecord.unpacked(i, *fields)

    def chunks(self, stream: StreamEntry) -> list[ChunkRecord]:
        return list(self.iter_chunks(stream))

    def chunk(self, stream: StreamEntry, index: int) -> ChunkRecord:
        raw = self._indexes[stream.name]
        return ChunkRecord.unpacked(
            index, *INDEX_RECORD.unpack_from(raw, index * INDEX_RECORD.size)
        )

    def unused_runs(self, stream: StreamEntry) -> list[tuple[int, int]]:
        """Runs of consecutive chunks the filesystem does not use, as (first, count): from
        the index's flag bytes, without a loop per chunk (a 1 TB stream has 250 000)."""
        if not stream.unused_chunks:
            return []
        flags = self._indexes[stream.name][_FLAGS_AT :: INDEX_RECORD.size]
        return [(m.start(), m.end() - m.start()) for m in _UNUSED_RUN_RE.finditer(flags)]

    def chunk_disk_offset(self, stream: StreamEntry, chunk: ChunkRecord | int) -> int:
        index = chunk if isinstance(chunk, int) else chunk.index
        return stream.start_bytes + index * stream.chunk_size

    def chunk_place(self, stream: StreamEntry, chunk: ChunkRecord) -> ChunkPlace:
        """Where a chunk lives, for the decoder's messages."""
        return ChunkPlace(
            stream.name,
            chunk.index,
            self.chunk_disk_offset(stream, chunk),
            str(self.data_path(stream)),
            chunk.offset,
        )

    def open_data(self, stream: StreamEntry) -> int:
        """The (shared, cached) descriptor of ``stream``'s data file, opened through
        :func:`open_image_file` and still of the size :meth:`open` checked."""
        fd = self._fds.get(stream.name)
        if fd is None:
            with self._lock:
                fd = self._fds.get(stream.name)
                if fd is None:
                    path = self.data_path(stream)
                    fd = open_image_file(path, what="data file", of=f"stream '{stream.name}'")
                    want = self._data_sizes.get(stream.name)
                    size = _file_size(fd)
                    if want is not None and size != want:
                        os.close(fd)
                        raise CorruptImageError(
                            f"The data file {path} of stream '{stream.name}' changed since the "
                            f"image was opened ({size} bytes, it had {want}).",
                            hint="Make sure nothing writes to the image, then start again.",
                        )
                    self._fds[stream.name] = fd
        return fd

    def read_compressed(self, stream: StreamEntry, chunk: ChunkRecord) -> bytes:
        """The compressed zstd frame of one chunk (thread-safe, positional read)."""
        fd = self.open_data(stream)
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
        return decompress_chunk(self.read_compressed(stream, chunk), chunk, stream, self)

    def read_chunk_prefix(self, stream: StreamEntry, chunk: ChunkRecord, length: int) -> bytes:
        """The first ``length`` bytes of one chunk (its whole frame checked, only that much
        decompressed; not hash-checked)."""
        return chunkcodec.decode_prefix(
            self.read_compressed(stream, chunk),
            chunk.raw_length,
            length,
            self.chunk_place(stream, chunk),
        )


def decompress_chunk(
    frame: bytes, chunk: ChunkRecord, stream: StreamEntry, image: Image | None = None
) -> bytes:
    """Decode one frame with the one bounded decoder (:func:`chunkcodec.decode`)."""
    place = (
        image.chunk_place(stream, chunk)
        if image is not None
        else ChunkPlace(
            stream.name,
            chunk.index,
            stream.start_bytes + chunk.index * stream.chunk_size,
            stream.data_file,
            chunk.offset,
        )
    )
    return chunkcodec.decode(frame, chunk.raw_length, place)


def _load_index(image_dir: Path, s: StreamEntry, version: int) -> tuple[bytes, int]:
    """Read and check one stream's index against the manifest (format ``version``) and its
    data file size.

    Returns the index records and the size of the data file."""
    ipath = image_dir / s.index_file
    dpath = image_dir / s.data_file
    expected_len = INDEX_HEADER.size + s.chunk_count * INDEX_RECORD.size
    fd = open_image_file(ipath, what="index file", of=f"stream '{s.name}'")
    try:
        size = _file_size(fd)
        if size != expected_len:
            raise CorruptImageError(
                f"The index file {ipath} has {size} bytes, expected {expected_len} "
                f"for {s.chunk_count} chunks.",
                hint="The image is damaged; use another copy of it.",
            )
        data = _read_fd(fd, ipath, expected_len, "index file")
    finally:
        os.close(fd)
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
    want = INDEX_VERSIONS[version]
    if magic != INDEX_MAGIC or iver != want:
        raise UnsupportedImageError(
            f"{ipath} is not a version-{want} rescueui index (a format-{version} image has those).",
            hint=_DAMAGED_HINT,
        )
    allowed = FLAG_ZERO | (FLAG_UNUSED if want >= 2 else 0)
    if (chunk_size, size, count) != (s.chunk_size, s.size_bytes, s.chunk_count):
        raise CorruptImageError(f"The header of {ipath} disagrees with the manifest.")
    records = data[INDEX_HEADER.size :]
    dfd = open_image_file(dpath, what="data file", of=f"stream '{s.name}'")
    try:
        file_size = _file_size(dfd)
    finally:
        os.close(dfd)
    pos = 0
    digests = bytearray()
    zeros = unused = 0
    last = count - 1
    for i, (off, length, raw_len, flags, digest) in enumerate(INDEX_RECORD.iter_unpack(records)):
        want_raw = s.chunk_size if i < last else s.size_bytes - last * s.chunk_size
        if off != pos or raw_len != want_raw or not 0 < length <= raw_len + MAX_FRAME_OVERHEAD:
            raise CorruptImageError(
                f"Chunk {i} of stream '{s.name}' in {ipath} has an impossible place or size "
                f"(offset {off}, length {length}, raw {raw_len}).",
                hint="The image is damaged; use another copy of it.",
            )
        if flags & ~allowed or (flags & FLAG_UNUSED and not flags & FLAG_ZERO):
            raise CorruptImageError(
                f"Chunk {i} of stream '{s.name}' in {ipath} has impossible flags {flags}.",
                hint=_DAMAGED_HINT,
            )
        unused += bool(flags & FLAG_UNUSED)
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
    if unused != s.unused_chunks:
        raise CorruptImageError(
            f"The index {ipath} marks {unused} chunks of stream '{s.name}' as unused by the "
            f"filesystem; the manifest says {s.unused_chunks}.",
            hint=_DAMAGED_HINT,
        )
    root = root_of(bytes(digests))
    if root != s.root_blake3:
        raise CorruptImageError(
            f"The chunk hashes of stream '{s.name}' do not add up to its root hash "
            f"(recorded {s.root_blake3[:16]}…, computed {root[:16]}…).",
            hint="The image was edited or damaged; use another copy of it.",
        )
    return records, file_size
