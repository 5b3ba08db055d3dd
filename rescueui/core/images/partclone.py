"""partclone's image format 0002 — what Clonezilla stores for each partition.

An image is a header (110 bytes), a bitmap of the filesystem's blocks (one bit per block:
used or not) with its CRC32, and then the used blocks in order, a checksum after every
``blocks_per_checksum`` of them (CRC32, XXH64 or XXH128, or none) and one after the last
few. The format is described in partclone's ``IMAGE_FORMATS.md``; this reader is shown
byte-identical to ``partclone.restore`` by the tests.

This reader checks every strip of blocks against its checksum *before* it hands any of
those blocks out, so nothing unchecked reaches a disk: a damaged stream fails the restore
at the strip, naming the partition's image and the block.

Images of format 0001 (partclone before 0.3.0) and big-endian images are refused with a
clear message.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from rescueui.core.errors import CorruptImageError, UnsupportedImageError
from rescueui.core.text import safe_text
from rescueui.core.units import MiB, human_size

MAGIC = b"partclone-image\0"
HEADER_SIZE = 110
MAX_DEVICE = 1 << 56  # 64 PiB: anything larger is a forged header
MAX_BITMAP = 256 * MiB  # one bit per block: 8 TiB at 4 KiB blocks, 1 TiB of FAT sectors
MAX_STRIP = 256 * MiB
MAX_BLOCK = (
    4 * MiB
)  # the engine's pieces are 4 MiB: a block never spans two of them  # blocks_per_checksum * block_size: held in memory until checked

CSM_NONE, CSM_CRC32, CSM_XXH64, CSM_XXH128 = 0x00, 0x20, 0x30, 0x31
_CHECKSUMS = {CSM_NONE: ("none", 0), CSM_CRC32: ("CRC32", 4), CSM_XXH64: ("XXH64", 8)}
_CHECKSUMS[CSM_XXH128] = ("XXH128", 16)
BM_NONE, BM_BIT, BM_BYTE = 0x00, 0x01, 0x08

_RETRY = "Copy the image folder again from its source and check it with a verify before restoring."


class ByteSource(Protocol):
    """The decompressed stream of one partition image."""

    def readinto(self, view: memoryview) -> int: ...


@dataclass(frozen=True)
class PartcloneHeader:
    """The header of a partclone image (format 0002)."""

    writer: str  # the partclone version that wrote it, e.g. "0.3.23"
    fs: str  # partclone's filesystem name: EXTFS, FAT, XFS, NTFS, BTRFS, raw, ...
    device_size: int
    total_blocks: int
    used_blocks: int  # as the filesystem's superblock counts them
    used_in_bitmap: int
    block_size: int
    checksum_mode: int
    checksum_size: int
    blocks_per_checksum: int
    reseed: bool
    bitmap_mode: int

    @property
    def checksum_name(self) -> str:
        return _CHECKSUMS[self.checksum_mode][0]

    @property
    def bitmap_bytes(self) -> int:
        """Bytes of the bitmap section in the stream (without its CRC)."""
        if self.bitmap_mode == BM_BIT:
            return (self.total_blocks + 7) // 8
        if self.bitmap_mode == BM_BYTE:
            return self.total_blocks
        return 0

    @property
    def used_bytes(self) -> int:
        return self.used_in_bitmap * self.block_size

    @property
    def stream_bytes(self) -> int:
        """The length of the whole image: header, bitmap and its CRC, blocks, checksums."""
        n = HEADER_SIZE + self.used_bytes
        if self.bitmap_mode != BM_NONE:
            n += self.bitmap_bytes + 4
        if self.checksum_mode != CSM_NONE:
            strips = -(-self.used_in_bitmap // self.blocks_per_checksum)
            n += strips * self.checksum_size
        return n


def partclone_crc32(data: Any, crc: int = 0xFFFFFFFF) -> int:
    """partclone's CRC32: the reflected 0xEDB88320 table, seed 0xFFFFFFFF, no final XOR
    (zlib's CRC32 is the same with the inversions: ``~zlib.crc32(data, ~crc)``)."""
    return ~zlib.crc32(data, ~crc & 0xFFFFFFFF) & 0xFFFFFFFF


def parse_header(data: bytes, where: str) -> PartcloneHeader:
    """Check and decode the first :data:`HEADER_SIZE` bytes of a partclone image."""
    if len(data) < 36 or not data.startswith(MAGIC[:15]):
        raise CorruptImageError(
            f"{where} is not a partclone image: it does not start with partclone's signature.",
            hint=_RETRY,
        )
    version = data[30:34]
    if version == b"0001":
        raise UnsupportedImageError(
            f"{where} is a partclone image of format 0001 (made by partclone before 0.3.0); "
            "this rescueui reads format 0002 only.",
            hint="Restore it with Clonezilla or partclone.restore.",
        )
    if version != b"0002":
        raise UnsupportedImageError(
            f"{where} is a partclone image of an unknown format "
            f"'{safe_text(version.decode('latin-1'))}'.",
            hint="Restore it with the Clonezilla or partclone version that made it.",
        )
    if len(data) < HEADER_SIZE:
        raise CorruptImageError(f"{where} ends inside its partclone header.", hint=_RETRY)
    (endian,) = struct.unpack_from("<H", data, 34)
    if endian != 0xC0DE:
        raise UnsupportedImageError(
            f"{where} was written by partclone on a big-endian machine; not supported.",
            hint="Restore it with partclone on a machine of the same kind.",
        )
    (crc,) = struct.unpack_from("<I", data, 106)
    if partclone_crc32(data[:106]) != crc:
        raise CorruptImageError(
            f"The partclone header of {where} is damaged (its CRC32 does not match).",
            hint=_RETRY,
        )
    device_size, total, used, used_bm, bs = struct.unpack_from("<QQQQI", data, 52)
    _fsz, _iv, _bits, cs_mode, cs_size, bpc, reseed, bm_mode = struct.unpack_from(
        "<IHHHHIBB", data, 88
    )
    writer = data[16:30].split(b"\0", 1)[0].decode("ascii", "replace")
    fs = data[36:52].split(b"\0", 1)[0].decode("ascii", "replace")

    def bad(why: str) -> CorruptImageError:
        return CorruptImageError(f"The partclone header of {where} {why}.", hint=_RETRY)

    if not 0 < device_size <= MAX_DEVICE:
        raise bad(f"gives an impossible device size ({device_size} bytes)")
    if bs < 256 or bs > 64 * MiB or bs & (bs - 1):
        raise bad(f"gives an impossible block size ({bs} bytes)")
    if bs > MAX_BLOCK:
        raise UnsupportedImageError(
            f"{where} holds a filesystem with {human_size(bs)} blocks; this reader takes blocks "
            f"of up to {human_size(MAX_BLOCK)}.",
            hint="Restore it with Clonezilla or partclone.restore.",
        )
    if total < 1 or total * bs > device_size + bs - 1 + bs:
        raise bad(f"counts {total} blocks of {bs} bytes, more than its device's {device_size}")
    if used_bm > total:
        raise bad(f"counts {used_bm} used blocks of only {total}")
    if cs_mode not in _CHECKSUMS:
        raise UnsupportedImageError(
            f"{where} uses a checksum this rescueui does not know (mode {cs_mode:#x}).",
            hint="Restore it with the Clonezilla or partclone version that made it.",
        )
    if cs_size != _CHECKSUMS[cs_mode][1]:
        raise bad(f"gives a {cs_size}-byte checksum for {_CHECKSUMS[cs_mode][0]}")
    if cs_mode != CSM_NONE and not 0 < bpc * bs <= MAX_STRIP:
        raise bad(f"checks every {bpc} blocks of {bs} bytes, which this reader cannot hold")
    if bm_mode not in (BM_NONE, BM_BIT, BM_BYTE):
        raise bad(f"has an unknown bitmap mode {bm_mode}")
    if bm_mode == BM_NONE and used_bm != total:
        raise bad("has no bitmap, yet not every block is used")
    header = PartcloneHeader(
        writer=safe_text(writer),
        fs=safe_text(fs),
        device_size=device_size,
        total_blocks=total,
        used_blocks=used,
        used_in_bitmap=used_bm,
        block_size=bs,
        checksum_mode=cs_mode,
        checksum_size=cs_size,
        blocks_per_checksum=bpc if cs_mode != CSM_NONE else 0,
        reseed=bool(reseed),
        bitmap_mode=bm_mode,
    )
    if header.bitmap_bytes > MAX_BITMAP:
        raise UnsupportedImageError(
            f"{where}: its block bitmap ({human_size(header.bitmap_bytes)}) is larger than this "
            f"reader holds ({human_size(MAX_BITMAP)}).",
            hint="Restore it with Clonezilla or partclone.restore.",
        )
    return header


def read_exact(src: ByteSource, view: memoryview, where: str, what: str) -> None:
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])
        if not n:
            raise CorruptImageError(
                f"{where} ends early: {what} is cut short ({got} of {len(view)} bytes).",
                hint=_RETRY,
            )
        got += n


def _bits_from_bytes(flags: bytes, total: int) -> bytes:
    """A BM_BYTE bitmap (one byte per block) as a bit bitmap (LSB first)."""
    out = bytearray((total + 7) // 8)
    for i in range(0, total, 8):
        b = 0
        for j, v in enumerate(flags[i : i + 8]):
            if v:
                b |= 1 << j
        out[i >> 3] = b
    return bytes(out)


def read_bitmap(src: ByteSource, header: PartcloneHeader, where: str) -> bytes:
    """Read and check the bitmap that follows the header; returns it as bits (LSB first)."""
    total = header.total_blocks
    if header.bitmap_mode == BM_NONE:
        full = bytearray(b"\xff" * ((total + 7) // 8))
        if total % 8:
            full[-1] = (1 << (total % 8)) - 1
        return bytes(full)
    raw = bytearray(header.bitmap_bytes + 4)
    read_exact(src, memoryview(raw), where, "the block bitmap")
    if header.bitmap_mode == BM_BYTE:
        bits = _bits_from_bytes(bytes(raw[:total]), total)
    else:
        bits = bytes(raw[: header.bitmap_bytes])
    (crc,) = struct.unpack_from("<I", raw, header.bitmap_bytes)
    if partclone_crc32(bits) != crc:
        raise CorruptImageError(
            f"The block bitmap of {where} is damaged (its CRC32 does not match): which blocks "
            "the image holds cannot be known.",
            hint=_RETRY,
        )
    if total % 8:
        bits = bits[:-1] + bytes([bits[-1] & ((1 << (total % 8)) - 1)])
    count = int.from_bytes(bits, "little").bit_count()
    if count != header.used_in_bitmap:
        raise CorruptImageError(
            f"The block bitmap of {where} marks {count} blocks used, its header "
            f"{header.used_in_bitmap}.",
            hint=_RETRY,
        )
    return bits


_TOKENS = re.compile(rb"\x00+|\xff+|[\x01-\xfe]", re.DOTALL)


def used_runs(bits: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Maximal runs ``[a, b)`` of used blocks within ``[start, end)``."""
    if end <= start:
        return
    run = -1
    for m in _TOKENS.finditer(bits, start >> 3, (end + 7) >> 3):
        s = m.start() * 8
        c = bits[m.start()]
        if c == 0:
            if run >= 0:
                yield max(run, start), min(s, end)
                run = -1
        elif c == 0xFF:
            if run < 0:
                run = s
        else:
            for j in range(8):
                if c >> j & 1:
                    if run < 0:
                        run = s + j
                elif run >= 0:
                    if s + j > start and run < end:
                        yield max(run, start), min(s + j, end)
                    run = -1
    if run >= 0:
        b = min(((end + 7) >> 3) * 8, end)
        if b > max(run, start):
            yield max(run, start), b


def data_ranges(bits: bytes, total: int, merge_blocks: int) -> list[tuple[int, int]]:
    """Block ranges ``[a, b)`` that hold the used blocks, runs closer than ``merge_blocks``
    joined (their unused blocks read as zeros): bounded work for a fragmented filesystem."""
    gap_bytes = max(1, merge_blocks // 8)
    out: list[tuple[int, int]] = []
    pos = 0  # byte index where the current data region may start
    nbytes = (total + 7) // 8
    for m in re.finditer(rb"\x00{%d,}" % gap_bytes, bits):
        if m.start() > pos:
            out.append((pos, m.start()))
        pos = m.end()
    if nbytes > pos:
        out.append((pos, nbytes))
    ranges = []
    for bs_, be in out:
        # refine the edges to the first and the last used block
        first = bits[bs_]
        last = bits[be - 1]
        if not first or not last:  # a region that is only short zero runs: skip it
            inner = bits[bs_:be].strip(b"\0")
            if not inner:
                continue
            lead = len(bits[bs_:be]) - len(bits[bs_:be].lstrip(b"\0"))
            trail = len(bits[bs_:be]) - len(bits[bs_:be].rstrip(b"\0"))
            bs_, be = bs_ + lead, be - trail
            first, last = bits[bs_], bits[be - 1]
        a = bs_ * 8 + ((first & -first).bit_length() - 1)
        b = (be - 1) * 8 + last.bit_length()
        ranges.append((a, min(b, total)))
    return ranges


class BlockReader:
    """The used blocks of one partclone image, in order, each strip checked before use.

    :meth:`read_blocks` fills a buffer for a block range: used blocks from the stream,
    unused ones as zeros. Ranges must come in increasing order; used blocks skipped between
    two calls are read (and checked) and dropped.
    """

    def __init__(self, src: ByteSource, header: PartcloneHeader, bits: bytes, where: str):
        self.src = src
        self.h = header
        self.bits = bits
        self.where = where
        self.next_block = 0  # every used block before it was consumed
        self.blocks_out = 0  # used blocks handed out or skipped
        self.strips_checked = 0
        bs = header.block_size
        self._strip = (
            memoryview(bytearray(header.blocks_per_checksum * bs))
            if header.checksum_mode != CSM_NONE
            else None
        )
        self._strip_len = 0  # bytes of checked data in the strip buffer
        self._strip_pos = 0  # bytes of it handed out
        self._state: Any = None
        self._reset()

    # -- checksums ---------------------------------------------------------------------
    def _reset(self) -> None:
        mode = self.h.checksum_mode
        if mode == CSM_CRC32:
            self._state = 0xFFFFFFFF
        elif mode in (CSM_XXH64, CSM_XXH128):
            import xxhash

            self._state = xxhash.xxh64(seed=0) if mode == CSM_XXH64 else xxhash.xxh3_128()

    def _update(self, data: memoryview) -> None:
        if self.h.checksum_mode == CSM_CRC32:
            self._state = partclone_crc32(data, self._state)
        else:
            self._state.update(data)

    def _digest(self) -> bytes:
        mode = self.h.checksum_mode
        if mode == CSM_CRC32:
            return struct.pack("<I", self._state)
        return int(self._state.intdigest()).to_bytes(self.h.checksum_size, "little")

    def _fill_strip(self) -> None:
        """Read the next strip (up to blocks_per_checksum used blocks) and its checksum."""
        assert self._strip is not None
        bs = self.h.block_size
        left = self.h.used_in_bitmap - self.blocks_out - self._strip_len // bs
        count = min(self.h.blocks_per_checksum, left)
        if count <= 0:
            raise CorruptImageError(f"{self.where}: more blocks asked for than the image holds.")
        view = self._strip[: count * bs]
        first = self.blocks_out + self._strip_len // bs
        read_exact(self.src, view, self.where, f"the data of used block {first}")
        self._update(view)
        stored = bytearray(self.h.checksum_size)
        read_exact(self.src, memoryview(stored), self.where, "a block checksum")
        if bytes(stored) != self._digest():
            raise CorruptImageError(
                f"{self.where} is damaged: the {self.h.checksum_name} of used blocks {first} to "
                f"{first + count - 1} (strip {self.strips_checked + 1}) does not match; nothing of "
                "those blocks or after them was handed out to be written.",
                hint=_RETRY,
            )
        self.strips_checked += 1
        if self.h.reseed:
            self._reset()
        self._strip_len, self._strip_pos = count * bs, 0

    def _take(self, view: memoryview) -> None:
        """Fill ``view`` with the next used blocks' bytes (checked strips only)."""
        if self._strip is None:
            read_exact(self.src, view, self.where, f"the data of used block {self.blocks_out}")
            self.blocks_out += len(view) // self.h.block_size
            return
        pos = 0
        while pos < len(view):
            if self._strip_pos == self._strip_len:
                self._strip_len = self._strip_pos = 0
                self._fill_strip()
            n = min(len(view) - pos, self._strip_len - self._strip_pos)
            view[pos : pos + n] = self._strip[self._strip_pos : self._strip_pos + n]
            self._strip_pos += n
            pos += n
            self.blocks_out += n // self.h.block_size

    # -- reading -------------------------------------------------------------------------
    def read_blocks(self, first: int, view: memoryview) -> None:
        """Fill ``view`` (a whole number of blocks) with blocks ``first`` onwards."""
        bs = self.h.block_size
        count = len(view) // bs
        if len(view) % bs or first < self.next_block:
            raise CorruptImageError(
                f"{self.where}: blocks asked for out of order ({first} after "
                f"{self.next_block}); a partclone stream is read once, in order."
            )
        if first > self.next_block:
            self._skip(self.next_block, first)
        end = first + count
        pos = first
        for a, b in used_runs(self.bits, first, min(end, self.h.total_blocks)):
            if a > pos:
                view[(pos - first) * bs : (a - first) * bs] = bytes((a - pos) * bs)
            self._take(view[(a - first) * bs : (b - first) * bs])
            pos = b
        if end > pos:
            view[(pos - first) * bs :] = bytes((end - pos) * bs)
        self.next_block = end

    def _skip(self, start: int, end: int) -> None:
        scratch = memoryview(bytearray(min(16 * MiB, max(self.h.block_size, 1 * MiB))))
        per = len(scratch) // self.h.block_size
        for a, b in used_runs(self.bits, start, min(end, self.h.total_blocks)):
            while a < b:
                n = min(per, b - a)
                self._take(scratch[: n * self.h.block_size])
                a += n
        self.next_block = end

    def finish(self) -> None:
        """After the last used block: read every block left (checked) and the stream's end."""
        if self.next_block < self.h.total_blocks:
            self._skip(self.next_block, self.h.total_blocks)
        if self.blocks_out != self.h.used_in_bitmap:
            raise CorruptImageError(
                f"{self.where}: {self.blocks_out} used blocks read, its bitmap counts "
                f"{self.h.used_in_bitmap}.",
                hint=_RETRY,
            )

    @property
    def done(self) -> bool:
        return self.blocks_out >= self.h.used_in_bitmap
