"""Raw disk images: plain, sparse, gzip/xz/zstd/bzip2-compressed, with a bmaptool ``.bmap``.

What each form gives the seam (:class:`~rescueui.core.images.source.ForeignImage`):

* **plain raw** (``.img``, ``.raw``, ``.dd`` — any file that is nothing else): random access
  (``os.pread``), its size is the file size, and the holes of a sparse file
  (``SEEK_DATA``/``SEEK_HOLE``) are zero extents that cost nothing. All-zero blocks inside
  the data ranges are not searched for here (that costs a full read): the seam's decoder
  (:class:`~rescueui.core.images.source.ForeignDecoder`) finds the pieces that read as
  zeros as it reads them, and the writer makes them zero with one call per run.
* **compressed raw** (gzip, xz, zstd, bzip2): read as a stream, in order, by one thread
  (``sequential``); memory stays bounded (a reused buffer, a bounded decompressor window).
  The size comes from the format where it is recorded — the xz index, the zstd frame
  headers — otherwise from the bmap, otherwise it is measured by decompressing the file once
  (remembered for the rest of the program's run). The stream must end exactly at that size:
  shorter or longer is a :class:`CorruptImageError` naming the file and the offset.
* **bmap** (bmaptool's XML, versions 1.x and 2.0), next to the image or given: parsed as
  untrusted input (bounded size, no DTD, no entities), its own checksum verified, its ranges
  checked (in order, not overlapping, inside the image). Mapped ranges are data extents,
  unmapped ones zero extents (made zero on the target, so a restore is byte-identical to the
  image, where bmaptool would leave them as they were). Each mapped range's checksum is
  checked by :class:`RangeCheckingDecoder` as the range is read, before its last piece is
  handed to the writer.
"""

from __future__ import annotations

import bisect
import bz2
import contextlib
import hashlib
import json
import lzma
import os
import re
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import zstandard

from rescueui.core import blockdev, parttable
from rescueui.core.errors import (
    CorruptImageError,
    ImageError,
    RescueError,
    UnsupportedImageError,
)
from rescueui.core.image import check_partition_table
from rescueui.core.images.source import (
    NO_SOURCE_CHECKS,
    Extent,
    ExtentTable,
    ForeignDecoder,
    ForeignImage,
    ForeignManifest,
    Integrity,
    foreign_manifest,
    read_every_data_segment,
)
from rescueui.core.images.vmconfig import find_vm_config
from rescueui.core.pipeline import Segment
from rescueui.core.safefile import open_regular
from rescueui.core.safexml import parse_untrusted_xml
from rescueui.core.text import safe_text
from rescueui.core.tools import find_tool
from rescueui.core.units import MiB, human_duration, human_size

COMPRESSIONS = ("gzip", "xz", "zstd", "bzip2")
COMPRESSION_SUFFIXES = {
    "gzip": (".gz", ".gzip"),
    "xz": (".xz",),
    "zstd": (".zst", ".zstd"),
    "bzip2": (".bz2", ".bzip2"),
}
SECTOR = 512
HEAD_BYTES = 1 * MiB  # the part of a compressed image the partition table is read from
IDENTITY_HEAD = 64 * 1024
READ_CHUNK = 1 * MiB  # compressed bytes read at a time
SCRATCH = 4 * MiB  # output buffer for skipping and for the counting pass
BMAP_LIMIT = 32 * MiB
MAX_IMAGE_SIZE = 1 << 56  # 64 PiB: anything larger is a forged header
ZSTD_BLOCK_MAX = 128 * 1024
XZ_INDEX_LIMIT = 64 * MiB

_RETRY_HINT = (
    "Use an intact copy of the image (compare its checksum with the source's), then try again."
)


# --------------------------------------------------------------------------- helpers


def _strip_compression_suffix(name: str, compression: str | None) -> str | None:
    if compression is None:
        return None
    for suffix in COMPRESSION_SUFFIXES.get(compression, ()):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def bmap_candidates(path: Path, compression: str | None) -> list[Path]:
    """Where a bmap for ``path`` may lie: ``NAME.bmap``, then (compressed) the name without
    its compression suffix + ``.bmap`` (``disk.img.zst`` -> ``disk.img.bmap``)."""
    out = [path.with_name(path.name + ".bmap")]
    stripped = _strip_compression_suffix(path.name, compression)
    if stripped:
        out.append(path.with_name(stripped + ".bmap"))
    return out


def _memory_limit() -> int:
    """The largest decompressor window allowed: half the memory available, 128 MiB to 2 GiB."""
    avail = 0
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    return max(128 * MiB, min(2048 * MiB, avail // 2))


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        b = os.pread(fd, n - got, offset + got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _fd_path(fd: int) -> str:
    return f"/dev/fd/{fd}"


class _PreadFile:
    """A read-only file object over a descriptor, with its own position (``os.pread``): every
    pass over a compressed image is independent of the others."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.pos = 0
        self.closed = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size - self.pos)
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        n = os.preadv(self.fd, [b], self.pos)
        self.pos += n
        return n

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.closed = True


# --------------------------------------------------------------------------- size from the format


class _Short(Exception):
    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


class _Cursor:
    """Small reads at increasing positions of a file, through a small window."""

    WINDOW = 4096

    def __init__(
        self,
        fd: int,
        size: int,
        pos: int = 0,
        pread: Callable[[int, int], bytes] | None = None,
    ) -> None:
        self.fd = fd
        self.size = size
        self.pos = pos
        self._buf = b""
        self._at = 0
        self._pread = pread or (lambda n, off: _pread_exact(self.fd, n, off))

    def take(self, n: int) -> bytes:
        if self.pos + n > self.size:
            raise _Short(self.pos)
        off = self.pos - self._at
        if not (0 <= off and off + n <= len(self._buf)):
            self._buf = self._pread(max(n, self.WINDOW), self.pos)
            self._at = self.pos
            off = 0
            if len(self._buf) < n:
                raise _Short(self.pos)
        self.pos += n
        return self._buf[off : off + n]

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Short(self.pos)
        self.pos += n


@dataclass
class _ZstdLayout:
    frames: int = 0
    content_size: int | None = 0  # None: some frame does not record its size
    window: int = 0


def zstd_layout(
    fd: int,
    size: int,
    path: Path,
    window_limit: int,
    pread: Callable[[int, int], bytes] | None = None,
) -> _ZstdLayout:
    """Walk the frames and block headers of a zstd file (as ``zstd -l`` does): the sum of the
    frames' content sizes (None if a frame has none), and proof that the file is complete
    (a truncated file ends inside a block). Raises CorruptImageError / UnsupportedImageError.
    ``pread(n, offset)`` reads instead of ``fd`` (the volumes of a split stream)."""
    cur = _Cursor(fd, size, pread=pread)
    out = _ZstdLayout()
    try:
        while cur.pos < size:
            start = cur.pos
            (magic,) = struct.unpack("<I", cur.take(4))
            if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame
                (length,) = struct.unpack("<I", cur.take(4))
                cur.skip(length)
                continue
            if magic != 0xFD2FB528:
                raise CorruptImageError(
                    f"The zstd image {path} holds data that is not a zstd frame at byte {start}"
                    f" (after {out.frames} frame(s)).",
                    hint=_RETRY_HINT,
                )
            fhd = cur.take(1)[0]
            fcs_flag, single, reserved = fhd >> 6, (fhd >> 5) & 1, (fhd >> 3) & 1
            has_checksum, did_flag = (fhd >> 2) & 1, fhd & 3
            if reserved:
                raise CorruptImageError(
                    f"The zstd image {path} has a damaged frame header at byte {start}.",
                    hint=_RETRY_HINT,
                )
            window = 0
            if not single:
                wd = cur.take(1)[0]
                base = 1 << (10 + (wd >> 3))
                window = base + (base >> 3) * (wd & 7)
            cur.skip((0, 1, 2, 4)[did_flag])
            fcs_len = (1 if single else 0, 2, 4, 8)[fcs_flag]
            fcs: int | None = None
            if fcs_len:
                fcs = int.from_bytes(cur.take(fcs_len), "little") + (256 if fcs_len == 2 else 0)
            if single:
                window = fcs or 0
            if window > window_limit:
                raise UnsupportedImageError(
                    f"The zstd image {path} needs a decompression window of "
                    f"{human_size(window)} (frame at byte {start}; made with 'zstd --long' "
                    f"or a very high level); this machine allows {human_size(window_limit)}.",
                    hint="Recompress it with a smaller window, or restore it on a machine with "
                    "more memory.",
                )
            out.window = max(out.window, window)
            if fcs is None:
                out.content_size = None
            elif out.content_size is not None:
                out.content_size += fcs
            regenerated = 0
            while True:
                hdr = int.from_bytes(cur.take(3), "little")
                last, btype, bsize = hdr & 1, (hdr >> 1) & 3, hdr >> 3
                if btype == 3 or bsize > ZSTD_BLOCK_MAX:
                    raise CorruptImageError(
                        f"The zstd image {path} has a damaged block at byte {cur.pos - 3}.",
                        hint=_RETRY_HINT,
                    )
                if btype != 2:
                    regenerated += bsize
                cur.skip(1 if btype == 1 else bsize)
                if last:
                    break
            if has_checksum:
                cur.skip(4)
            if fcs is not None and fcs < regenerated:
                raise CorruptImageError(
                    f"The zstd image {path} has a frame at byte {start} whose header says "
                    f"{fcs} bytes, fewer than its blocks hold.",
                    hint=_RETRY_HINT,
                )
            out.frames += 1
    except _Short as short:
        raise CorruptImageError(
            f"The zstd image {path} is truncated: it ends inside a frame (the file has "
            f"{size} bytes; the frame being read at byte {short.pos} goes beyond).",
            hint=_RETRY_HINT,
        ) from None
    if out.frames == 0:
        raise CorruptImageError(f"The zstd image {path} holds no zstd frame.", hint=_RETRY_HINT)
    return out


def _xz_varint(buf: bytes, i: int) -> tuple[int, int]:
    value = 0
    for n in range(9):
        if i >= len(buf):
            raise ValueError("index ends inside a number")
        b = buf[i]
        i += 1
        if n and b == 0:
            raise ValueError("badly encoded number")
        value |= (b & 0x7F) << (7 * n)
        if not b & 0x80:
            return value, i
    raise ValueError("number too long")


def xz_size(fd: int, size: int, path: Path) -> int:
    """The uncompressed size of an xz file, from the index of each of its streams (read from
    the end, as ``xz --list`` does), with every index's CRC32 checked."""
    pos = size
    total = 0
    streams = 0

    def bad(why: str) -> CorruptImageError:
        return CorruptImageError(
            f"The xz image {path} is damaged or truncated: {why}.", hint=_RETRY_HINT
        )

    while pos > 0:
        # stream padding: zero bytes, a multiple of four
        zeros = 0
        while pos > 0:
            n = min(pos, 65536)
            block = _pread_exact(fd, n, pos - n)
            stripped = block.rstrip(b"\0")
            zeros += len(block) - len(stripped)
            pos -= len(block) - len(stripped)
            if stripped:
                break
        if zeros % 4:
            raise bad(
                f"{zeros} zero bytes of padding before byte {pos + zeros}, not a multiple of 4"
            )
        if pos == 0:
            break
        if pos < 32:
            raise bad(f"no complete stream ends at byte {pos}")
        footer = _pread_exact(fd, 12, pos - 12)
        if footer[10:12] != b"YZ" or zlib.crc32(footer[4:10]) != struct.unpack("<I", footer[:4])[0]:
            raise bad(f"no valid stream footer ends at byte {pos} (the file may be cut short)")
        backward = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
        flags = footer[8:10]
        if backward > XZ_INDEX_LIMIT or backward > pos - 24:
            raise bad(f"the index before byte {pos - 12} claims {backward} bytes")
        index_start = pos - 12 - backward
        index = _pread_exact(fd, backward, index_start)
        if len(index) != backward or index[0] != 0:
            raise bad(f"no index at byte {index_start}")
        if zlib.crc32(index[:-4]) != struct.unpack("<I", index[-4:])[0]:
            raise bad(f"the index at byte {index_start} fails its CRC32")
        try:
            count, i = _xz_varint(index, 1)
            if count > backward:
                raise ValueError("more records than the index can hold")
            blocks = 0
            uncompressed = 0
            for _ in range(count):
                unpadded, i = _xz_varint(index, i)
                usize, i = _xz_varint(index, i)
                if unpadded < 5:
                    raise ValueError("a block smaller than its header")
                blocks += (unpadded + 3) & ~3
                uncompressed += usize
            if any(index[i:-4]) or (len(index) - 4 - i) >= 4 or (len(index) - 4) % 4:
                raise ValueError("bad index padding")
        except ValueError as exc:
            raise bad(f"the index at byte {index_start}: {exc}") from None
        start = index_start - blocks - 12
        if start < 0:
            raise bad(f"the index at byte {index_start} lists more data than precedes it")
        header = _pread_exact(fd, 12, start)
        if (
            header[:6] != b"\xfd7zXZ\x00"
            or header[6:8] != flags
            or zlib.crc32(header[6:8]) != struct.unpack("<I", header[8:12])[0]
        ):
            raise bad(f"the stream that should start at byte {start} does not")
        total += uncompressed
        streams += 1
        pos = start
    if streams == 0:
        raise bad("it holds no xz stream")
    return total


def gzip_isize(fd: int, size: int) -> int | None:
    """The last gzip member's ISIZE field: the size modulo 4 GiB (a hint, not a size)."""
    if size < 18:
        return None
    return int(struct.unpack("<I", _pread_exact(fd, 4, size - 4))[0])


def gpt_disk_size(head: bytes) -> tuple[int, int] | None:
    """(disk size, sector size) from a primary GPT header in ``head`` (its backup header's
    LBA + 1 sectors), or None. The header's CRC32 is checked."""
    for ss in (512, 4096):
        hdr = head[ss : ss + 92]
        if len(hdr) < 92 or hdr[:8] != b"EFI PART":
            continue
        (hsize,) = struct.unpack_from("<I", hdr, 12)
        if not 92 <= hsize <= ss or len(head) < ss + hsize:
            continue
        raw = bytearray(head[ss : ss + hsize])
        (crc,) = struct.unpack_from("<I", raw, 16)
        raw[16:20] = b"\0\0\0\0"
        if zlib.crc32(raw) != crc:
            continue
        (alt,) = struct.unpack_from("<Q", hdr, 32)
        if 0 < alt < MAX_IMAGE_SIZE // ss:
            return (alt + 1) * ss, ss
    return None


# --------------------------------------------------------------------------- streaming


_MAGIC = {"gzip": b"\x1f\x8b", "xz": b"\xfd7zXZ\x00", "bzip2": b"BZh"}


class _Inflater:
    """One pass over a compressed file: ``readinto`` fills a buffer with the next
    uncompressed bytes; a short count means the stream has ended (cleanly: a truncated or
    damaged stream raises CorruptImageError naming the file and the offsets).

    Concatenated members/streams are followed (``pigz``, ``pbzip2``, ``xz -T``, ``pzstd``);
    gzip's zero padding and xz's stream padding are accepted; anything else after the end
    of a stream is damage, never silently ignored (a stream that "ends" at damage would
    make a short image look complete).
    """

    def __init__(
        self,
        fd: int,
        file_size: int,
        path: Path,
        compression: str,
        window_limit: int,
        source: Any = None,
    ) -> None:
        """``source``: a file object with ``read``, ``readinto`` and a ``pos`` attribute to
        read the compressed bytes from instead of ``fd`` (the volumes of a split stream)."""
        self.fd = fd
        self.file_size = file_size
        self.path = path
        self.compression = compression
        self.window_limit = window_limit
        self.pos = 0  # uncompressed bytes produced
        self._file = source if source is not None else _PreadFile(fd, file_size)
        self._pending = b""
        self._d: Any = None
        self._members = 0
        self._ended = False
        self._zreader: Any = None
        if compression == "zstd":
            dctx = zstandard.ZstdDecompressor(max_window_size=window_limit)
            self._zreader = dctx.stream_reader(
                self._file, read_size=READ_CHUNK, read_across_frames=True, closefd=False
            )
        elif compression not in ("gzip", "xz", "bzip2"):
            raise UnsupportedImageError(f"{path}: unknown compression {compression}.")

    @property
    def consumed(self) -> int:
        """Compressed bytes consumed so far (approximately: what the decompressor buffers)."""
        return max(0, self._file.pos - len(self._pending))

    def _where(self) -> str:
        return (
            f"at uncompressed byte {self.pos} (around compressed byte {self.consumed} of "
            f"{self.file_size})"
        )

    def _damaged(self, what: str) -> CorruptImageError:
        return CorruptImageError(
            f"The {self.compression} image {self.path} is damaged {self._where()}: {what}.",
            hint=_RETRY_HINT,
        )

    def _truncated(self) -> CorruptImageError:
        return CorruptImageError(
            f"The {self.compression} image {self.path} is truncated: its compressed data ends "
            f"inside a stream {self._where()}.",
            hint=_RETRY_HINT,
        )

    def readinto(self, view: memoryview) -> int:
        if self._ended or not len(view):
            return 0
        try:
            if self._zreader is not None:
                n = self._read_zstd(view)
            else:
                n = self._read_other(view)
        except RescueError:
            raise
        except (
            EOFError,
            OSError,
            ValueError,
            lzma.LZMAError,
            zlib.error,
            zstandard.ZstdError,
        ) as exc:
            if isinstance(exc, lzma.LZMAError) and "memory usage limit" in str(exc).lower():
                raise UnsupportedImageError(
                    f"The xz image {self.path} needs more memory to decompress than this "
                    f"machine allows ({human_size(self.window_limit)}): it was made with a "
                    "very large dictionary.",
                    hint="Recompress it with a smaller preset, or restore it on a machine "
                    "with more memory.",
                ) from None
            raise self._damaged(safe_text(str(exc)) or type(exc).__name__) from None
        self.pos += n
        return n

    def _read_zstd(self, view: memoryview) -> int:
        filled = 0
        while filled < len(view):
            n = self._zreader.readinto(view[filled:])
            if not n:
                self._ended = True
                break
            filled += n
        return filled

    def _more(self) -> bytes:
        return self._file.read(READ_CHUNK)

    def _new_decompressor(self) -> Any:
        if self.compression == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.compression == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=self.window_limit)
        return bz2.BZ2Decompressor()

    def _fill(self, n: int) -> None:
        while len(self._pending) < n:
            more = self._more()
            if not more:
                break
            self._pending += more

    def _next_member(self) -> bool:
        """Between members: start the next one (True) or find the clean end (False)."""
        magic = _MAGIC[self.compression]
        self._fill(len(magic))
        if not self._pending:
            if self._members:
                return False
            raise self._damaged("the file holds no compressed data")
        if self._members and self.compression in ("gzip", "xz") and self._pending[0] == 0:
            # zero padding after a stream (gzip accepts it; xz: a multiple of 4 bytes)
            zeros = 0
            while True:
                stripped = self._pending.lstrip(b"\0")
                zeros += len(self._pending) - len(stripped)
                self._pending = stripped
                if stripped:
                    break
                more = self._more()
                if not more:
                    break
                self._pending = more
            if self.compression == "xz" and zeros % 4:
                raise self._damaged("stream padding that is not a multiple of 4 bytes")
            if not self._pending:
                return False
            self._fill(len(magic))
        if self._pending.startswith(magic):
            self._d = self._new_decompressor()
            return True
        if not self._members:
            raise self._damaged(f"it does not start with a {self.compression} header")
        raise self._damaged("data after the end of a compressed stream that is not another one")

    def _read_other(self, view: memoryview) -> int:
        filled = 0
        idle = 0
        while filled < len(view):
            idle += 1
            if idle > 1000:
                raise self._damaged("the decompressor makes no progress")
            d = self._d
            if d is None:
                if not self._next_member():
                    self._ended = True
                    break
                d = self._d
            want = len(view) - filled
            if self.compression == "gzip":
                data, self._pending = self._pending, b""
                out = d.decompress(data, want)
                self._pending = d.unconsumed_tail
            else:
                if d.needs_input:
                    data, self._pending = self._pending, b""
                else:
                    data = b""
                out = d.decompress(data, want)
            if out:
                view[filled : filled + len(out)] = out
                filled += len(out)
                idle = 0
            if d.eof:
                # zlib keeps the rest of what it was given in unused_data (and, after an
                # output limit, also still in unconsumed_tail: not twice); lzma and bz2 hold
                # in unused_data what they were given beyond the end, _pending was not given
                if self.compression == "gzip":
                    self._pending = d.unused_data
                else:
                    self._pending = d.unused_data + self._pending
                self._d = None
                self._members += 1
                continue
            if not out:
                stalled = self.compression == "gzip" or d.needs_input
                if stalled and not self._pending:
                    more = self._more()
                    if not more:
                        raise self._truncated()
                    self._pending = more
                    idle = 0
        return filled


def measure_size(
    fd: int,
    file_size: int,
    path: Path,
    compression: str,
    window_limit: int,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Decompress the whole file once, counting bytes (the size of a stream that records
    none). ``progress(compressed bytes read, compressed size)`` is called now and then; it
    may raise to cancel."""
    inf = _Inflater(fd, file_size, path, compression, window_limit)
    buf = memoryview(bytearray(SCRATCH))
    last = 0
    while True:
        n = inf.readinto(buf)
        if n < len(buf):
            break
        if progress is not None and inf.consumed - last >= 64 * MiB:
            last = inf.consumed
            progress(last, file_size)
        if inf.pos > MAX_IMAGE_SIZE:
            raise CorruptImageError(f"The image {path} decompresses to more than 64 PiB.")
    if progress is not None:
        progress(file_size, file_size)
    return inf.pos


_MEASURED: dict[tuple[int, int, int, int, str], int] = {}
_MEASURED_LOCK = threading.Lock()


# --------------------------------------------------------------------------- bmap


@dataclass(frozen=True)
class BmapRange:
    first: int  # block numbers, inclusive
    last: int
    start: int  # byte offsets [start, end)
    end: int
    digest: str | None  # hex, lowercase


@dataclass
class Bmap:
    path: Path
    version: str
    image_size: int
    block_size: int
    blocks: int
    mapped_blocks: int
    checksum_type: str | None  # "sha256", "sha1", ... or None (bmap 1.0-1.2, --no-checksum)
    ranges: list[BmapRange]
    file_hash: str  # SHA-256 of the bmap file itself (for the identity)

    @property
    def mapped_bytes(self) -> int:
        return sum(r.end - r.start for r in self.ranges)

    @property
    def checked_ranges(self) -> int:
        return sum(1 for r in self.ranges if r.digest)

    def range_at(self, offset: int) -> BmapRange | None:
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and self.ranges[i].start <= offset < self.ranges[i].end:
            return self.ranges[i]
        return None

    def __post_init__(self) -> None:
        self._starts = [r.start for r in self.ranges]


_HASH_LENGTHS = {"md5": 32, "sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128}
_DIGITS = re.compile(r"[0-9]{1,20}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_VERSION = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})")


class _BmapRefused(Exception):
    pass


def parse_bmap(data: bytes, path: Path) -> Bmap:
    """Parse and check a bmaptool bmap (untrusted input). Raises ImageError naming ``path``."""
    try:
        return _parse_bmap(data, path)
    except _BmapRefused as exc:
        raise ImageError(
            f"The bmap file {path} is refused: {exc}.",
            hint="It is damaged or belongs to another image: remove it (the image is then "
            "restored whole), or use the bmap made with this image.",
        ) from None


def _parse_bmap(data: bytes, path: Path) -> Bmap:
    fields: dict[str, str] = {}
    ranges_raw: list[tuple[str, dict[str, str]]] = []
    stack: list[str] = []
    text: list[str] = []
    root: dict[str, str] = {}

    def start(name: str, attrs: dict[str, str]) -> None:
        if len(stack) > 4:
            raise _BmapRefused("it is nested deeper than a bmap")
        if not stack:
            if name != "bmap":
                raise _BmapRefused(f"its root element is <{safe_text(name[:40])}>, not <bmap>")
            root.update(attrs)
        stack.append(name)
        text.clear()

    def end(name: str) -> None:
        value = "".join(text).strip()
        text.clear()
        path_ = "/".join(stack)
        stack.pop()
        if path_ == "bmap/BlockMap/Range":
            if len(ranges_raw) >= 10_000_000:
                raise _BmapRefused("it lists too many ranges")
            ranges_raw.append((value, dict(_current_attrs.pop())))
        elif len(stack) == 1 and name != "BlockMap":
            if name in fields:
                raise _BmapRefused(f"it has <{safe_text(name[:40])}> twice")
            fields[name] = value

    _current_attrs: list[dict[str, str]] = []

    def start_el(name: str, attrs: dict[str, str]) -> None:
        start(name, attrs)
        if "/".join(stack) == "bmap/BlockMap/Range":
            _current_attrs.append(attrs)

    def chars(s: str) -> None:
        if sum(len(t) for t in text) + len(s) > 4096:
            raise _BmapRefused("it holds an element with more text than a bmap has")
        text.append(s)

    parse_untrusted_xml(
        data, start=start_el, end=end, chars=chars, refuse=_BmapRefused, what="a bmap"
    )
    if not root and not fields:
        raise _BmapRefused("it holds no <bmap> element")

    m = _VERSION.fullmatch(root.get("version", "").strip())
    if not m:
        raise _BmapRefused("its version attribute is missing or not a version number")
    major, minor = int(m.group(1)), int(m.group(2))
    version = f"{major}.{minor}"
    if major not in (1, 2):
        raise _BmapRefused(f"it is bmap format version {version}; versions 1.x and 2.x are read")

    def number(name: str, *, required: bool = True) -> int:
        v = fields.get(name)
        if v is None:
            if required:
                raise _BmapRefused(f"<{name}> is missing")
            return -1
        if not _DIGITS.fullmatch(v):
            raise _BmapRefused(f"<{name}> is not a whole number ('{safe_text(v[:40])}')")
        return int(v)

    image_size = number("ImageSize")
    block_size = number("BlockSize")
    blocks = number("BlocksCount")
    mapped = number("MappedBlocksCount", required=False)
    if not 0 < image_size <= MAX_IMAGE_SIZE:
        raise _BmapRefused(f"its image size {image_size} is impossible")
    if not 0 < block_size <= 1 << 30:
        raise _BmapRefused(f"its block size {block_size} is impossible")
    if blocks != -(-image_size // block_size):
        raise _BmapRefused(
            f"its block count {blocks} does not match {image_size} bytes in blocks of "
            f"{block_size} bytes"
        )

    # checksum type and the bmap's own checksum
    cs_type: str | None = None
    own_tag: str | None = None
    attr = ""
    if (major, minor) >= (1, 4):
        cs_type = (fields.get("ChecksumType") or "").lower()
        if cs_type not in _HASH_LENGTHS:
            raise _BmapRefused(
                f"its checksum type '{safe_text(cs_type[:40])}' is not one this program "
                "checks (sha256, sha1, sha512, ...)"
            )
        own_tag, attr = "BmapFileChecksum", "chksum"
    elif (major, minor) == (1, 3):
        cs_type, own_tag, attr = "sha1", "BmapFileSHA1", "sha1"
    if own_tag is not None and cs_type is not None:
        _check_own_checksum(data, fields, own_tag, cs_type)

    # ranges
    ranges: list[BmapRange] = []
    prev_last = -1
    mapped_count = 0
    any_digest = False
    hex_len = _HASH_LENGTHS.get(cs_type or "", 0)
    for value, attrs in ranges_raw:
        parts = [x.strip() for x in value.split("-", 1)]
        if not all(_DIGITS.fullmatch(x) for x in parts):
            raise _BmapRefused(f"a range reads '{safe_text(value[:60])}', not 'first-last'")
        first = int(parts[0])
        last = int(parts[1]) if len(parts) > 1 else first
        if first > last:
            raise _BmapRefused(f"the range {first}-{last} runs backwards")
        if first <= prev_last:
            raise _BmapRefused(
                f"the range {first}-{last} overlaps or comes before the range ending at block "
                f"{prev_last} (ranges must be in order and must not overlap)"
            )
        if last >= blocks:
            raise _BmapRefused(
                f"the range {first}-{last} lies beyond the image's end (it has {blocks} "
                f"blocks of {block_size} bytes)"
            )
        digest = attrs.get(attr) if attr else None
        if digest is not None:
            digest = digest.strip().lower()
            if len(digest) != hex_len or not _HEX.fullmatch(digest):
                raise _BmapRefused(
                    f"the range {first}-{last} has a checksum that is not a {cs_type} digest"
                )
            any_digest = True
        prev_last = last
        mapped_count += last - first + 1
        ranges.append(
            BmapRange(
                first,
                last,
                first * block_size,
                min((last + 1) * block_size, image_size),
                digest,
            )
        )
    if mapped >= 0 and mapped != mapped_count:
        raise _BmapRefused(f"it says {mapped} mapped blocks but its ranges cover {mapped_count}")
    return Bmap(
        path=path,
        version=version,
        image_size=image_size,
        block_size=block_size,
        blocks=blocks,
        mapped_blocks=mapped_count,
        checksum_type=cs_type if any_digest else None,
        ranges=ranges,
        file_hash=hashlib.sha256(data).hexdigest(),
    )


def _check_own_checksum(data: bytes, fields: dict[str, str], tag: str, cs_type: str) -> None:
    """bmaptool's rule: the checksum of the file with its own checksum replaced by zeros."""
    want = (fields.get(tag) or "").strip().lower()
    if not want:
        raise _BmapRefused(f"<{tag}>, its own checksum, is missing")
    if len(want) != _HASH_LENGTHS[cs_type] or not _HEX.fullmatch(want):
        raise _BmapRefused(f"<{tag}> is not a {cs_type} digest")
    matches = list(re.finditer(rb"<" + tag.encode() + rb">\s*([0-9a-fA-F]+)\s*</", data))
    if len(matches) != 1:
        raise _BmapRefused(f"<{tag}> appears {len(matches)} times")
    a, b = matches[0].span(1)
    zeroed = data[:a] + b"0" * (b - a) + data[b:]
    got = hashlib.new(cs_type, zeroed).hexdigest()
    if got != want:
        raise _BmapRefused(
            f"its own {cs_type} checksum does not match (it says {want}, its content has "
            f"{got}): it was changed or damaged after it was made"
        )


def read_bmap(path: Path) -> Bmap:
    """Read (bounded, regular file, no symlink) and parse a bmap file."""
    try:
        fd = open_regular(path, what="bmap file")
    except FileNotFoundError:
        raise ImageError(
            f"The bmap file {path} does not exist.",
            hint="Give the bmap made with this image, or none (the image is then restored whole).",
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_size > BMAP_LIMIT:
            raise ImageError(
                f"The bmap file {path} is {human_size(st.st_size)}, more than a bmap can be "
                f"({human_size(BMAP_LIMIT)}); it is not read.",
                hint="It is damaged or not a bmap: remove it (the image is then restored "
                "whole), or use the bmap made with this image.",
            )
        data = _pread_exact(fd, BMAP_LIMIT + 1, 0)
    except OSError as exc:
        raise ImageError(
            f"Cannot read the bmap file {path}: {exc.strerror}.",
            hint="Check the medium; it may be failing.",
        ) from exc
    finally:
        os.close(fd)
    if len(data) > BMAP_LIMIT:
        raise ImageError(f"The bmap file {path} grew while it was read; it is not used.")
    return parse_bmap(data, path)


# --------------------------------------------------------------------------- the decoder


class _Pass:
    """One pass over a compressed image, in order: skipping forward decompresses and
    discards; the stream must end exactly at the image's size."""

    def __init__(self, image: RawImage) -> None:
        self.image = image
        self.stream = _Inflater(
            image._fd, image.file_size, image.path, str(image.compression), image.window_limit
        )
        self._scratch: memoryview | None = None

    def read(self, offset: int, view: memoryview) -> None:
        img, s = self.image, self.stream
        if offset < s.pos:
            raise ImageError(
                f"The compressed image {img.path} was asked for byte {offset} after byte "
                f"{s.pos}: a compressed stream is read in order only. This is a bug in the "
                "caller (or a misuse of the image), not damage to the image.",
            )
        if offset > s.pos:
            if self._scratch is None:
                self._scratch = memoryview(bytearray(SCRATCH))
            while s.pos < offset:
                want = min(len(self._scratch), offset - s.pos)
                if s.readinto(self._scratch[:want]) < want:
                    raise self._ends_early()
        if s.readinto(view) < len(view):
            raise self._ends_early()
        if s.pos == img.extent_bytes and not img.size_is_estimate:
            probe = memoryview(bytearray(1))
            if s.readinto(probe):
                raise CorruptImageError(
                    f"The {img.compression} image {img.path} is longer than its size: it "
                    f"goes on after byte {img.extent_bytes} ({img.size_source}).",
                    hint=_RETRY_HINT,
                )

    def _ends_early(self) -> CorruptImageError:
        img = self.image
        return CorruptImageError(
            f"The {img.compression} image {img.path} ends early: its data stops at byte "
            f"{self.stream.pos}, but its size is {img.extent_bytes} bytes ({img.size_source}).",
            hint=_RETRY_HINT,
        )


class RawDecoder(ForeignDecoder):
    """Reads a raw image's segments: ``pread`` for a plain file; for a compressed one a
    pass over the stream of its own (so a peek at the image before the job, or a second
    job on the same image, never disturbs this one's position)."""

    def __init__(self, image: RawImage, table: ExtentTable) -> None:
        super().__init__(image, table)
        self.raw = image
        self._pass: _Pass | None = None

    def read(self, offset: int, view: memoryview) -> None:
        img = self.raw
        img._check_range(offset, len(view))
        if img.compression is None:
            img._pread_into(offset, view)
            return
        if self._pass is None:
            self._pass = _Pass(img)
        self._pass.read(offset, view)

    def close(self) -> None:
        self._pass = None


class RangeCheckingDecoder(RawDecoder):
    """Reads segments (in order: the image is ``sequential``) and checks each bmap range's
    checksum when its last segment has been read — before that segment is returned to the
    writer, so a range that fails never has its last piece written (its earlier pieces may
    already be on the target: the error says which bytes)."""

    def __init__(self, image: RawImage, table: ExtentTable, bmap: Bmap) -> None:
        super().__init__(image, table)
        self.bmap = bmap
        self._range: BmapRange | None = None
        self._hash: Any = None
        self._pos = 0
        self.checked = 0  # ranges whose checksum matched
        self.unchecked = 0  # ranges read only in part (a partition restore cuts them)

    def check(self, seg: Segment, view: memoryview) -> None:
        """Feed the segment to its range's checksum (all-zero pieces too: the seam tests
        for zeros after this) and compare it at the range's last piece."""
        if seg.zero or self.bmap.checksum_type is None:
            return
        start = seg.disk_offset + self.table.base
        end = start + seg.length
        r = self.bmap.range_at(start)
        if r is None or r.digest is None or end > r.end:
            return
        if r is self._range and self._hash is not None and start == self._pos:
            self._hash.update(view)
        elif start == r.start:
            if self._hash is not None:
                self.unchecked += 1
            self._range = r
            self._hash = hashlib.new(self.bmap.checksum_type, view)
        else:
            # entered in the middle of the range (a partition restore starts inside it), or
            # a segment was skipped: this range cannot be checked
            if self._hash is not None or self._range is not r:
                self.unchecked += 1
            self._range, self._hash = r, None
            return
        self._pos = end
        if end == r.end:
            got = self._hash.hexdigest()
            self._hash = None
            if got != r.digest:
                raise self._mismatch(r, start, end, got)
            self.checked += 1

    def summary(self) -> str:
        """What this decoder checked, in words for the report (after the job)."""
        kind = (self.bmap.checksum_type or "").upper().replace("SHA", "SHA-")
        text = f"{self.checked} bmap range(s) matched their {kind}"
        if self.unchecked:
            text += f"; {self.unchecked} range(s) cut by the partition's edges could not be checked"
        return text

    def _mismatch(self, r: BmapRange, start: int, end: int, got: str) -> CorruptImageError:
        kind = (self.bmap.checksum_type or "").upper().replace("SHA", "SHA-")
        if start > r.start:
            written = (
                f"The last piece of this range (bytes {start} to {end - 1}) was not written; "
                f"its earlier pieces (bytes {r.start} to {start - 1}) may already be on the "
                "target."
            )
        else:
            written = "Nothing of this range was written."
        return CorruptImageError(
            f"The image {self.raw.path} does not match its bmap {self.bmap.path}: blocks "
            f"{r.first}-{r.last} (bytes {r.start} to {r.end - 1}) have {kind} {got}, the bmap "
            f"says {r.digest}. {written}",
            hint="The image or the bmap is damaged, or they do not belong together: use an "
            "intact copy (compare it with its source), then restore again. The target now "
            "holds a partial image and will not boot as it is.",
        )


# --------------------------------------------------------------------------- the image


@dataclass
class _Facts:
    size: int
    size_source: str  # words for describe()
    size_is_estimate: bool = False
    warnings: list[str] = field(default_factory=list)


class RawImage(ForeignImage):
    """A raw disk image file, plain or compressed, with or without a bmap."""

    kind = "raw"

    def __init__(
        self,
        path: Path,
        manifest: ForeignManifest,
        *,
        fd: int,
        file_size: int,
        compression: str | None,
        bmap: Bmap | None,
        size_source: str,
        window_limit: int,
        extents: list[Extent],
    ) -> None:
        super().__init__(path, manifest)
        self._fd = fd
        self.file_size = file_size
        self.compression = compression
        self.bmap = bmap
        self.size_source = size_source
        self.window_limit = window_limit
        self._extents = extents
        self._lock = threading.Lock()
        self._pass: _Pass | None = None
        self._head = b""  # the first bytes of the disk, read while opening
        self.sequential = compression is not None or bmap is not None
        if bmap is not None and bmap.checksum_type is not None:
            kind = bmap.checksum_type.upper().replace("SHA", "SHA-")
            self.integrity = Integrity(
                f"range-{bmap.checksum_type}",
                f"the bmap {bmap.path.name} lists a {kind} for each of its "
                f"{bmap.checked_ranges} mapped ranges: a range's {kind} is checked as it is "
                "read, before its last piece is written (a range that fails stops the "
                "restore; a range cut by a partition's edges cannot be checked); unmapped "
                "ranges are made zero; the BLAKE3 of every piece read is kept for the "
                "read-back verify",
            )
        else:
            self.integrity = NO_SOURCE_CHECKS

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        compression: str | None = None,
        bmap: str | Path | None = None,
        measure: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> RawImage:
        """Open a raw image. ``compression``: None, "gzip", "xz", "zstd" or "bzip2" (as
        :func:`~rescueui.core.images.source.detect_kind` found it). ``bmap``: a bmap file;
        by default one next to the image is used when there is one.

        A compressed stream that records no size (gzip, bzip2, zstd without content size)
        and has no bmap is decompressed once to count its bytes (``progress(done, total)``
        in compressed bytes; it may raise to cancel), unless ``measure`` is False: then the
        size is an estimate (``size_is_estimate``), fine for listing, not for a restore.
        """
        p = Path(path)
        if compression is not None and compression not in COMPRESSIONS:
            raise UnsupportedImageError(
                f"{p}: the compression '{safe_text(str(compression))}' is not supported."
            )
        try:
            fd = open_regular(p, what="image file")
        except FileNotFoundError:
            raise ImageError(
                f"The image file {p} does not exist.", hint="Choose the image again."
            ) from None
        try:
            return cls._open(p, fd, compression, bmap, measure, progress)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _open(
        cls,
        p: Path,
        fd: int,
        compression: str | None,
        bmap_arg: str | Path | None,
        measure: bool,
        progress: Callable[[int, int], None] | None,
    ) -> RawImage:
        st = os.fstat(fd)
        file_size = st.st_size
        if file_size == 0:
            raise ImageError(f"The image file {p} is empty.", hint="Choose another image.")
        window_limit = _memory_limit()

        # the bmap: given, or next to the image
        bmap: Bmap | None = None
        if bmap_arg is not None:
            bmap = read_bmap(Path(bmap_arg))
        else:
            for cand in bmap_candidates(p, compression):
                if os.path.lexists(cand):
                    bmap = read_bmap(cand)
                    break

        # the size
        facts = cls._size(p, fd, file_size, compression, window_limit, bmap)
        head = _read_head(p, fd, file_size, compression, window_limit, facts.size)
        if facts.size < 0:  # unknown: remembered, the GPT (bzip2), measured, or estimated
            key = (st.st_dev, st.st_ino, file_size, st.st_mtime_ns, str(compression))
            with _MEASURED_LOCK:
                known = _MEASURED.get(key)
            gpt = gpt_disk_size(head)
            if known is not None:
                facts = _Facts(known, "measured by decompressing it once")
            elif compression == "bzip2" and gpt is not None and measure:
                # bzip2 decompresses at 10-20 MB/s: counting first would double a restore's
                # time. A GPT names the disk's last sector (its backup header); the stream
                # must end exactly there, which every pass checks.
                facts = _Facts(
                    gpt[0],
                    "from the GPT header; checked when the stream ends",
                    warnings=[
                        "The bzip2 stream records no size; the size is taken from the GPT's "
                        "backup header location. If the stream ends elsewhere, the restore "
                        "stops there with an error naming the byte."
                    ],
                )
            elif measure:
                t0 = time.monotonic()
                size = measure_size(fd, file_size, p, str(compression), window_limit, progress)
                took = time.monotonic() - t0
                with _MEASURED_LOCK:
                    _MEASURED[key] = size
                facts = _Facts(
                    size,
                    "measured by decompressing it once in "
                    + (f"{took:.1f} s" if took < 60 else human_duration(took)),
                )
            else:
                facts = _estimate(p, fd, file_size, compression, head)
        size = facts.size
        if size == 0:
            raise ImageError(f"The image {p} holds no data (it decompresses to 0 bytes).")
        if bmap is not None and bmap.image_size != size and not facts.size_is_estimate:
            raise ImageError(
                f"The bmap file {bmap.path} describes an image of {bmap.image_size} bytes, but "
                f"{p} is {size} bytes ({facts.size_source}): it belongs to another image.",
                hint="Remove it (the image is then restored whole), or use the bmap made with "
                "this image.",
            )
        if len(head) > size:
            head = head[:size]

        # facts: partition table, filesystems
        warnings = list(facts.warnings)
        table, sector_size = _partition_table(p, fd, compression, head, size, warnings)
        fs_types: dict[int, tuple[str | None, str | None]] = {}
        if table is not None and compression is None:
            fs_types = _probe_filesystems(fd, table, size)

        # extents
        if bmap is not None:
            extents = _bmap_extents(bmap, size)
        elif compression is None:
            extents = _sparse_extents(fd, size)
        else:
            extents = [Extent(0, size, "data")]

        identity = _identity(fd, compression, size, st, bmap)
        vm = find_vm_config(p, warnings)  # the VM's own configuration, if next to it
        manifest = foreign_manifest(
            virtual_size=size,
            sector_size=sector_size,
            partition_table=table,
            identity=identity,
            source_disk=vm.source_disk() if vm else None,
            host=vm.host() if vm else None,
            warnings=warnings,
            fs_types=fs_types,
        )
        img = cls(
            p,
            manifest,
            fd=fd,
            file_size=file_size,
            compression=compression,
            bmap=bmap,
            size_source=facts.size_source,
            window_limit=window_limit,
            extents=extents,
        )
        img.size_is_estimate = facts.size_is_estimate
        img._head = head
        return img

    @staticmethod
    def _size(
        p: Path,
        fd: int,
        file_size: int,
        compression: str | None,
        window_limit: int,
        bmap: Bmap | None,
    ) -> _Facts:
        """The size where the format records it; -1 when it does not (bmap: its size)."""
        if compression is None:
            return _Facts(file_size, "the file size")
        if compression == "xz":
            return _Facts(xz_size(fd, file_size, p), "from the xz index")
        if compression == "zstd":
            layout = zstd_layout(fd, file_size, p, window_limit)
            if layout.content_size is not None:
                return _Facts(layout.content_size, "from the zstd frame headers")
        if bmap is not None:
            return _Facts(
                bmap.image_size,
                "from the bmap",
                warnings=[
                    "The compressed stream records no size; the size is taken from the bmap. "
                    "Its unmapped end is not read, so a stream cut short there would not be "
                    "noticed (nothing of it is restored either)."
                ],
            )
        return _Facts(-1, "unknown")

    # -- the seam ---------------------------------------------------------------------
    def describe(self) -> str:
        words = ["raw disk image"]
        if self.compression:
            words.append(f"{self.compression}-compressed")
        size = human_size(self.extent_bytes)
        if self.size_is_estimate:
            words.append(f"about {size} ({self.size_source}; not exact)")
        else:
            words.append(f"{size} ({self.size_source})")
        if self.compression is None and self.bmap is None:
            holes = sum(e.length for e in self._extents if e.kind == "zero")
            if holes:
                words.append(f"sparse: {holes * 100 // max(1, self.extent_bytes)} % holes")
        if self.bmap is not None:
            pct = self.bmap.mapped_bytes * 100 // max(1, self.bmap.image_size)
            b = f"bmap {self.bmap.path.name}: {pct} % mapped"
            if self.bmap.checksum_type:
                b += f", {self.bmap.checksum_type.upper().replace('SHA', 'SHA-')} per range"
            else:
                b += ", no checksums"
            words.append(b)
        return ", ".join(words)

    def extents(self) -> list[Extent]:
        return list(self._extents)

    def decoder(self, table: ExtentTable) -> ForeignDecoder:
        """A decoder with a pass of its own; with a bmap that has checksums, one that checks
        each range (:class:`RangeCheckingDecoder`)."""
        if self.bmap is not None and self.bmap.checksum_type is not None:
            return RangeCheckingDecoder(self, table, self.bmap)
        return RawDecoder(self, table)

    def first_sector(self) -> bytes:
        """The disk's first 512 bytes, from what was read while opening (no stream pass)."""
        return self._head[:512].ljust(512, b"\0")

    def read_into(self, offset: int, view: memoryview) -> None:
        """The image's bytes at ``offset``. Compressed: from the head read while opening
        when it lies there, else from this image's own pass over the stream, forward only
        (every decoder has a pass of its own)."""
        self._check_range(offset, len(view))
        if self.compression is None:
            self._pread_into(offset, view)
        elif offset + len(view) <= len(self._head):
            view[:] = self._head[offset : offset + len(view)]
        else:
            with self._lock:
                if self._pass is None:
                    self._pass = _Pass(self)
                self._pass.read(offset, view)

    def _check_range(self, offset: int, n: int) -> None:
        if offset < 0 or offset + n > self.extent_bytes:
            raise ImageError(
                f"Reading {n} bytes at byte {offset} of {self.path} is outside the image "
                f"({self.extent_bytes} bytes); this is a bug."
            )

    def _pread_into(self, offset: int, view: memoryview) -> None:
        got = 0
        while got < len(view):
            try:
                k = os.preadv(self._fd, [view[got:]], offset + got)
            except OSError as exc:
                raise ImageError(
                    f"Cannot read the image file {self.path} at byte {offset + got}: "
                    f"{exc.strerror}.",
                    hint="Check the medium holding the image; it may be failing.",
                ) from exc
            if k == 0:
                raise CorruptImageError(
                    f"The image file {self.path} ends at byte {offset + got}, before the "
                    f"{self.extent_bytes} bytes it had when it was opened: it was truncated "
                    "or replaced meanwhile.",
                    hint="Make sure nothing else changes the image file, then restore again.",
                )
            got += k

    def check_source(
        self,
        progress: Callable[[int, int], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> str:
        """Read every data extent in order through the decoder (the bmap's range checks, the
        stream's own checks and its size): a verify of the image without a target. Returns
        what was checked, in words; raises CorruptImageError at the first damage."""
        table = self.segment_table()
        dec = self.decoder(table)
        done = read_every_data_segment(self, progress, cancelled, table=table, decoder=dec)
        parts = [f"read {human_size(done)} of {self.path.name}"]
        if self.compression:
            parts.append(f"its {self.compression} stream decoded without error")
        if isinstance(dec, RangeCheckingDecoder):
            parts.append(f"{dec.checked} bmap ranges matched their checksums")
        return "; ".join(parts)

    def close(self) -> None:
        self._pass = None
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# --------------------------------------------------------------------------- facts


def _read_head(
    p: Path, fd: int, file_size: int, compression: str | None, window_limit: int, size: int
) -> bytes:
    """The first :data:`HEAD_BYTES` of the disk (less if the image is smaller)."""
    if compression is None:
        return _pread_exact(fd, HEAD_BYTES, 0)
    inf = _Inflater(fd, file_size, p, compression, window_limit)
    want = HEAD_BYTES if size < 0 else min(HEAD_BYTES, size)
    buf = bytearray(want)
    n = inf.readinto(memoryview(buf))
    return bytes(buf[:n])


def _estimate(p: Path, fd: int, file_size: int, compression: str | None, head: bytes) -> _Facts:
    """A size without decompressing everything: the GPT's backup header, else the gzip ISIZE
    or what the head holds."""
    gpt = gpt_disk_size(head)
    if gpt is not None:
        return _Facts(gpt[0], "estimated from the GPT header", size_is_estimate=True)
    guess = len(head)
    isize = gzip_isize(fd, file_size) if compression == "gzip" else None
    if isize:
        guess = max(guess, isize)
    return _Facts(guess, "estimated", size_is_estimate=True)


def _run(cmd: list[str], pass_fds: tuple[int, ...]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
            check=False,
            pass_fds=pass_fds,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _partition_table(
    p: Path,
    fd: int,
    compression: str | None,
    head: bytes,
    size: int,
    warnings: list[str],
) -> tuple[dict[str, Any] | None, int]:
    """The image's partition table (:func:`parttable.read_table`; compressed: of a sparse
    copy of its head at full size)."""
    sector = SECTOR
    gpt = gpt_disk_size(head)
    if gpt is not None:
        sector = gpt[1]
    try:
        if compression is None and (gpt is None or gpt[0] <= size):
            found = parttable.read_table(_fd_path(fd), sector_size=sector, pass_fds=(fd,))
        else:
            # sfdisk needs a file as large as the disk (a GPT's backup header is at its end,
            # and a GPT on a shorter file is taken for its protective MBR): a sparse copy of
            # the head at full size, in memory
            mfd = os.memfd_create("rescueui-head", os.MFD_CLOEXEC)
            try:
                os.ftruncate(mfd, max(size, gpt[0] if gpt else 0, len(head)))
                os.pwrite(mfd, head, 0)
                found = parttable.read_table(_fd_path(mfd), sector_size=sector, pass_fds=(mfd,))
            finally:
                os.close(mfd)
    except RescueError as exc:
        warnings.append(
            f"The image's partition table was not read ({exc.message}); it is restored as a "
            "whole disk."
        )
        return None, sector
    if found is None:
        return None, sector
    try:
        table = dict(found)
        table.pop("device", None)
        _fix_nodes(table)
        check_partition_table(table, f"{p} (its partition table)")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        warnings.append(
            f"sfdisk printed an unexpected table for the image ({exc}); it is not used."
        )
        return None, sector
    except ImageError as exc:
        warnings.append(
            f"The image's partition table holds values this program does not take over "
            f"({exc.message}); the image is restored byte for byte, but its table is not "
            "shown nor adapted."
        )
        return None, sector
    parts = table.get("partitions", [])
    if table.get("label") == "dos" and any(str(x.get("type", "")).lower() == "ee" for x in parts):
        warnings.append(
            "The image starts with a protective MBR (a GPT disk), but its GPT could not be "
            "read (damaged, or another sector size); its partitions are not listed. The image "
            "is restored byte for byte all the same."
        )
        return None, sector
    ss = int(table.get("sectorsize") or sector)
    for part in parts:
        end = (int(part.get("start", 0)) + int(part.get("size", 0))) * ss
        if end > size:
            warnings.append(
                f"Partition {str(part.get('node', '?')).removeprefix('disk')} ends at byte "
                f"{end}, beyond the image's end ({size} bytes): the image is cut short "
                "(an interrupted copy?); only what it holds can be restored."
            )
    if compression is not None:
        if table.get("label") == "gpt":
            warnings.append(
                "The partition table was read from the start of the compressed image; its "
                "backup GPT at the end of the disk was not checked."
            )
        if any(
            str(part.get("type", "")).lower() in ("5", "f", "85")
            for part in table.get("partitions", [])
        ):
            warnings.append(
                "The image has an extended partition: its logical partitions are not listed "
                "(their table entries lie inside the compressed stream); a whole-disk restore "
                "writes them all the same."
            )
    return table, sector


_NODE_RE = re.compile(r"(\d+)$")


def _fix_nodes(table: dict[str, Any]) -> None:
    """Node names of the form ``disk<N>``: sfdisk names them after the path it was given
    (``/dev/fd/3`` -> ``/dev/fd/3p1``); only the trailing number means anything."""
    for part in table.get("partitions", []):
        node = str(part.get("node", ""))
        m = re.search(r"p(\d+)$", node) or _NODE_RE.search(node)
        if m:
            part["node"] = f"disk{m.group(1)}"


def _probe_filesystems(
    fd: int, table: dict[str, Any], size: int
) -> dict[int, tuple[str | None, str | None]]:
    """(fs type, label) per partition, ``blkid -p`` at the partition's offset (best effort)."""
    from rescueui.core import parttable

    blkid = find_tool("blkid")
    out: dict[int, tuple[str | None, str | None]] = {}
    if blkid is None:
        return out
    ss = int(table.get("sectorsize") or SECTOR)
    for part in table.get("partitions", [])[:128]:
        try:
            number = parttable.partition_number(part)
        except Exception:
            continue
        start, length = int(part.get("start", 0)) * ss, int(part.get("size", 0)) * ss
        if length <= 0 or start + length > size:
            continue
        proc = _run(
            [blkid, "-p", "-o", "export", "-O", str(start), "-S", str(length), _fd_path(fd)],
            (fd,),
        )
        if proc is None or proc.returncode != 0:
            continue
        props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        fs, label = props.get("TYPE"), props.get("LABEL")
        out[number] = (
            safe_text(fs)[:64] if fs else None,
            safe_text(label)[:128] if label else None,
        )
    return out


def _sparse_extents(fd: int, size: int) -> list[Extent]:
    """Data and hole ranges of a plain file (:func:`blockdev.file_data_ranges`)."""
    out: list[Extent] = []
    pos = 0
    for a, b in blockdev.file_data_ranges(fd, size):
        if a > pos:
            out.append(Extent(pos, a - pos, "zero"))
        out.append(Extent(a, b - a, "data"))
        pos = b
    if pos < size:
        out.append(Extent(pos, size - pos, "zero"))
    return out


def _bmap_extents(bmap: Bmap, size: int) -> list[Extent]:
    out: list[Extent] = []
    pos = 0
    for r in bmap.ranges:
        if r.start > pos:
            out.append(Extent(pos, r.start - pos, "unused"))
        out.append(Extent(r.start, r.end - r.start, "data", r.digest))
        pos = r.end
    if pos < size:
        out.append(Extent(pos, size - pos, "unused"))
    return out


def _identity(
    fd: int, compression: str | None, size: int, st: os.stat_result, bmap: Bmap | None
) -> str:
    h = blake3.blake3()
    h.update(
        json.dumps(
            {
                "kind": "raw",
                "compression": compression,
                "size": size,
                "file_size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "inode": st.st_ino,
                "bmap": bmap.file_hash if bmap else "",
            },
            sort_keys=True,
        ).encode()
    )
    h.update(_pread_exact(fd, IDENTITY_HEAD, 0))
    return h.hexdigest()
