"""The one chunk decoder: how a stored zstd frame becomes the bytes of one image chunk.

Every reader of image data (restore's pipeline, ``rescueui verify``, ``Image.read_chunk``,
pre-flight's boot-code peek) decodes chunks here and nowhere else. A frame is untrusted, so
before a byte is decompressed its layout is checked against what the index says the chunk is:

* exactly one zstd frame (magic number, valid header, no dictionary), and nothing after it
  (no second frame, no skippable frame, no trailing bytes): the block headers are walked to
  find where the frame ends;
* a declared content size, when the header has one, equal to the chunk's raw length (the
  bare ``ZstdDecompressor.decompress(max_output_size=...)`` trusts a declared size and would
  allocate whatever a forged header asks for);
* a decoding window no larger than the chunk needs (a power of two covering its raw
  length), and the decompressor itself refuses windows above :data:`MAX_WINDOW_BYTES`;
* then the frame is decompressed *into a buffer of exactly the raw length* (the caller's
  page-aligned pooled buffer in a restore), so it can never produce more than that, with
  one byte more read to tell a frame that would overflow.

A refusal is a :class:`BadFrameError` (a :class:`CorruptImageError`) naming the stream, the
chunk, its offset on the disk and in the data file, and what is wrong.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import zstandard

from rescueui.core.errors import CorruptImageError

MiB = 1024 * 1024
# The largest chunk an image may have (image.ALLOWED_CHUNK_SIZES): no frame of ours needs a
# larger window, whatever its header says.
MAX_CHUNK_BYTES = 16 * MiB
MAX_WINDOW_BYTES = MAX_CHUNK_BYTES
MIN_WINDOW_BYTES = 1 << 10  # zstd's smallest window
BLOCK_MAX_BYTES = 128 * 1024  # zstd's largest block
# libzstd cuts a chunk into 128 KiB blocks, and its block splitter into at most a few hundred
# per 128 KiB (each of hundreds of sequences); a frame of many more, tinier blocks is forged
# and would only cost time to walk.
MIN_AVERAGE_BLOCK_BYTES = 128
EXTRA_BLOCKS = 64
ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MAGIC_FIRST = 0x184D2A50
SKIPPABLE_MAGIC_LAST = 0x184D2A5F

DEFAULT_HINT = "The image is damaged or was altered; use another copy of it."


@dataclass(frozen=True)
class ChunkPlace:
    """Where a chunk lives: for messages only."""

    stream: str
    index: int
    disk_offset: int
    data_file: str
    file_offset: int

    def where(self) -> str:
        """The wording shared by restore and verify: ``stream 'p1', chunk 3 (disk offset N)``."""
        return f"stream '{self.stream}', chunk {self.index} (disk offset {self.disk_offset})"

    def stored(self) -> str:
        return f"stored at byte {self.file_offset} of {self.data_file}"


class BadFrameError(CorruptImageError):
    """A chunk's stored frame is refused (forged, damaged, or not what the index says)."""

    def __init__(self, place: ChunkPlace, problem: str, *, hint: str = DEFAULT_HINT) -> None:
        self.place = place
        self.problem = problem
        #: "stream 'p1', chunk 3 (disk offset N), stored at byte M of F: what is wrong"
        self.detail = f"{place.where()}, {place.stored()}: {problem}"
        super().__init__(f"Image chunk refused: {self.detail}.", hint=hint)


def window_limit(raw_length: int) -> int:
    """The largest decoding window a frame of ``raw_length`` bytes may ask for."""
    need = 1 << max(raw_length - 1, 1).bit_length()
    return min(max(need, MIN_WINDOW_BYTES), MAX_WINDOW_BYTES)


def frame_problem(frame: bytes | bytearray | memoryview, raw_length: int) -> str | None:
    """What is wrong with ``frame`` as the stored form of a ``raw_length``-byte chunk, or None.

    Checks the header (before anything is decompressed) and walks the block headers to the
    end of the frame; costs a few microseconds for a real frame (one block per 128 KiB).
    """
    n = len(frame)
    if n < 4:
        return f"its stored frame is only {n} bytes long, too short for a zstd frame"
    magic = int.from_bytes(frame[:4], "little")
    if SKIPPABLE_MAGIC_FIRST <= magic <= SKIPPABLE_MAGIC_LAST:
        return "it is stored as a zstd skippable frame, which holds no data"
    if magic != ZSTD_MAGIC:
        return "it does not start with a zstd frame (wrong magic number)"
    try:
        params = zstandard.get_frame_parameters(frame)
        header = zstandard.frame_header_size(frame)
    except zstandard.ZstdError as exc:
        return f"its zstd frame header is invalid ({exc})"
    declared = params.content_size
    if declared != zstandard.CONTENTSIZE_UNKNOWN and declared != raw_length:
        return f"its zstd frame declares {declared} bytes, the chunk holds {raw_length}"
    if params.dict_id:
        return f"its zstd frame needs dictionary {params.dict_id}; rescueui images use none"
    limit = window_limit(raw_length)
    if params.window_size > limit:
        return (
            f"its zstd frame asks for a {params.window_size}-byte decoding window, more than "
            f"the {limit} bytes a {raw_length}-byte chunk needs"
        )
    block_max = min(max(params.window_size, MIN_WINDOW_BYTES), BLOCK_MAX_BYTES)
    pos = header
    known = 0  # bytes regenerated by raw and RLE blocks (exact)
    blocks_left = raw_length // MIN_AVERAGE_BLOCK_BYTES + EXTRA_BLOCKS
    while True:
        blocks_left -= 1
        if blocks_left < 0:
            return (
                "its zstd frame is cut into far more blocks than a "
                f"{raw_length}-byte chunk is stored in"
            )
        if pos + 3 > n:
            return "its zstd frame is cut short (a block header is missing)"
        bh = frame[pos] | frame[pos + 1] << 8 | frame[pos + 2] << 16
        pos += 3
        kind = (bh >> 1) & 3
        size = bh >> 3
        if kind == 3:
            return "its zstd frame holds a block of the reserved type"
        if size > block_max:
            return f"its zstd frame holds a {size}-byte block (at most {block_max})"
        if kind == 1:  # RLE: one byte repeated ``size`` times
            pos += 1
            known += size
        else:
            pos += size
            if kind == 0:
                known += size
        if known > raw_length:
            return f"its zstd frame holds more than the {raw_length} bytes of the chunk"
        if pos > n:
            return "its zstd frame is cut short (a block ends beyond the stored frame)"
        if bh & 1:  # last block
            break
    if params.has_checksum:
        pos += 4
        if pos > n:
            return "its zstd frame is cut short (the checksum is missing)"
    if pos != n:
        return (
            f"{n - pos} bytes follow its zstd frame (a second frame or other data); a chunk "
            "is stored as exactly one frame"
        )
    return None


_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
    return d


def decode_into(
    frame: bytes | bytearray | memoryview,
    out: memoryview,
    place: ChunkPlace,
    *,
    hint: str = DEFAULT_HINT,
) -> memoryview:
    """Decode ``frame`` into ``out`` (exactly the chunk's raw length); returns ``out``.

    Never writes beyond ``out`` and never allocates more than the decoder's bounded window.
    Raises :class:`BadFrameError`. The caller checks the BLAKE3 of the bytes.
    """
    raw_length = len(out)
    problem = frame_problem(frame, raw_length)
    if problem is not None:
        raise BadFrameError(place, problem, hint=hint)
    got = 0
    try:
        reader = _dctx().stream_reader(frame, read_across_frames=False)
        while got < raw_length:
            k = reader.readinto(out[got:])
            if not k:
                break
            got += k
        extra = reader.read(1) if got == raw_length else b""
    except zstandard.ZstdError as exc:
        raise BadFrameError(
            place, f"its zstd frame does not decompress ({exc})", hint=hint
        ) from exc
    if extra:
        raise BadFrameError(
            place,
            f"its zstd frame decompresses to more than the {raw_length} bytes of the chunk",
            hint=hint,
        )
    if got != raw_length:
        raise BadFrameError(
            place,
            f"its zstd frame decompresses to {got} bytes, the chunk holds {raw_length}",
            hint=hint,
        )
    return out


def decode(
    frame: bytes | bytearray | memoryview,
    raw_length: int,
    place: ChunkPlace,
    *,
    hint: str = DEFAULT_HINT,
) -> bytes:
    """The chunk's bytes as a new ``bytes`` object (see :func:`decode_into`)."""
    if not 0 < raw_length <= MAX_CHUNK_BYTES:
        raise BadFrameError(place, f"a chunk of {raw_length} bytes is impossible", hint=hint)
    buf = bytearray(raw_length)
    decode_into(frame, memoryview(buf), place, hint=hint)
    return bytes(buf)


def decode_prefix(
    frame: bytes | bytearray | memoryview,
    raw_length: int,
    length: int,
    place: ChunkPlace,
    *,
    hint: str = DEFAULT_HINT,
) -> bytes:
    """The first ``length`` bytes of the chunk (the whole frame is checked, only that much
    is decompressed)."""
    problem = frame_problem(frame, raw_length)
    if problem is not None:
        raise BadFrameError(place, problem, hint=hint)
    want = min(length, raw_length)
    buf = bytearray(want)
    view = memoryview(buf)
    got = 0
    try:
        reader = _dctx().stream_reader(frame, read_across_frames=False)
        while got < want:
            k = reader.readinto(view[got:])
            if not k:
                break
            got += k
    except zstandard.ZstdError as exc:
        raise BadFrameError(
            place, f"its zstd frame does not decompress ({exc})", hint=hint
        ) from exc
    if got != want:
        raise BadFrameError(
            place,
            f"its zstd frame decompresses to {got} bytes, the chunk holds {raw_length}",
            hint=hint,
        )
    return bytes(buf)


__all__ = [
    "BadFrameError",
    "ChunkPlace",
    "decode",
    "decode_into",
    "decode_prefix",
    "frame_problem",
    "window_limit",
]
