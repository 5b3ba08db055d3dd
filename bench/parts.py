#!/usr/bin/env python3
"""The parts of a capture and of a restore, each timed on its own (CPU seconds of this
thread, user + sys), with the same Python libraries rescueui uses: ``bench/run.py`` prints
their sum next to the CPU a ``rescueui capture`` / ``restore`` of the same data took.

    parts.py capture DISK MAP [MAP ...]   read the used ranges of DISK (partclone ``-D``
                                          domain logs made with --offset_domain, so their
                                          positions are bytes of DISK) in 4 MiB pieces with
                                          os.preadv, BLAKE3 and zstd level 3 of each piece,
                                          and append the frames to a scratch file
    parts.py restore IMAGE_DIR TARGET     for every stored chunk of the image: read its
                                          frame, zstd-decompress it into a page-aligned
                                          buffer, BLAKE3, pwrite with O_DIRECT to TARGET at
                                          the chunk's place (run as root on a scratch device)

One thread, one piece at a time; prints one JSON object: bytes handled and the seconds of
each part. Run it with the page cache dropped, as the commands it is compared with are.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import blake3
import zstandard

CHUNK = 4 * 1024 * 1024
T = TypeVar("T")


class Clock:
    """CPU seconds (user + sys of this thread) per part."""

    def __init__(self, *parts: str) -> None:
        self.seconds = dict.fromkeys(parts, 0.0)

    def run(self, part: str, fn: Callable[[], T]) -> T:
        t0 = time.thread_time()
        try:
            return fn()
        finally:
            self.seconds[part] += time.thread_time() - t0


def used_ranges(map_file: Path) -> Iterator[tuple[int, int]]:
    """(position, size) of the '+' lines of a ddrescue domain log written by partclone -D."""
    for line in map_file.read_text().splitlines():
        fields = line.split()
        if len(fields) == 3 and not line.startswith("#") and fields[2] == "+":
            yield int(fields[0], 0), int(fields[1], 0)


def pieces(ranges: Iterator[tuple[int, int]]) -> Iterator[list[tuple[int, int, int]]]:
    """The used ranges packed into pieces of CHUNK bytes: [(disk offset, buffer offset, n)]."""
    piece: list[tuple[int, int, int]] = []
    fill = 0
    for pos, size in ranges:
        while size:
            n = min(size, CHUNK - fill)
            piece.append((pos, fill, n))
            fill += n
            pos += n
            size -= n
            if fill == CHUNK:
                yield piece
                piece, fill = [], 0
    if piece:
        yield piece


def capture(disk: Path, maps: list[Path], scratch: Path) -> dict:
    clock = Clock("read", "blake3", "zstd", "write image")
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False)
    buf = mmap.mmap(-1, CHUNK)
    view = memoryview(buf)
    total = 0
    fd = os.open(disk, os.O_RDONLY)
    out = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for m in maps:
            for piece in pieces(used_ranges(m)):

                def read(piece: list[tuple[int, int, int]] = piece) -> int:
                    got = 0
                    for pos, at, n in piece:
                        got += os.preadv(fd, [view[at : at + n]], pos)
                    return got

                n = clock.run("read", read)
                data = view[:n]
                clock.run("blake3", lambda d=data: blake3.blake3(d).digest())
                frame = clock.run("zstd", lambda d=data: cctx.compress(d))
                clock.run("write image", lambda f=frame: os.write(out, f))
                data.release()
                total += n
        clock.run("write image", lambda: os.fsync(out))
    finally:
        os.close(fd)
        os.close(out)
        scratch.unlink(missing_ok=True)
    return {"bytes": total, "seconds": clock.seconds}


IDX_HEADER = struct.Struct("<8sIIQQ")
IDX_RECORD = struct.Struct("<QIIB32s3x")


def stored_chunks(image: Path) -> Iterator[tuple[Path, int, int, int, int]]:
    """(data file, frame offset, frame length, raw length, target offset) of every stored,
    non-zero chunk of a rescueui image (index layout of docs/image-format.md)."""
    manifest = json.loads((image / "manifest.json").read_text())
    for st in manifest["streams"]:
        idx = (image / st["index_file"]).read_bytes()
        magic, _ver, chunk_size, _size, count = IDX_HEADER.unpack_from(idx, 0)
        if not magic.startswith(b"RUIIDX"):
            raise SystemExit(f"parts.py: {st['index_file']}: unknown index magic {magic!r}")
        base = int(st["start_bytes"])
        for i, (off, length, raw, flags, _digest) in enumerate(
            IDX_RECORD.iter_unpack(idx[IDX_HEADER.size : IDX_HEADER.size + count * 52])
        ):
            if flags & 1:  # all zeros: its hash is known, nothing to decompress
                continue
            yield image / st["data_file"], off, length, raw, base + i * chunk_size


def restore(image: Path, target: str) -> dict:
    clock = Clock("read image", "zstd -d", "blake3", "O_DIRECT write")
    dctx = zstandard.ZstdDecompressor()
    buf = mmap.mmap(-1, CHUNK)
    view = memoryview(buf)
    files: dict[Path, int] = {}
    total = 0
    tfd = os.open(target, os.O_WRONLY | os.O_DIRECT)
    try:
        for data_file, off, length, raw, where in stored_chunks(image):
            fd = files.get(data_file)
            if fd is None:
                fd = files[data_file] = os.open(data_file, os.O_RDONLY)
            frame = clock.run("read image", lambda f=fd, n=length, o=off: os.pread(f, n, o))
            out = view[:raw]

            def decode(frame: bytes = frame, out: memoryview = out) -> None:
                reader = dctx.stream_reader(frame, read_across_frames=False)
                got = 0
                while got < len(out):
                    k = reader.readinto(out[got:])
                    if not k:
                        raise SystemExit("parts.py: a frame decompressed short")
                    got += k

            clock.run("zstd -d", decode)
            clock.run("blake3", lambda o=out: blake3.blake3(o).digest())
            # O_DIRECT wants whole sectors: a short last chunk is written rounded up to
            # 512 bytes (the target is a scratch device)
            span = view[: (raw + 511) // 512 * 512]
            clock.run("O_DIRECT write", lambda s=span, w=where: os.pwrite(tfd, s, w))
            span.release()
            out.release()
            total += raw
        clock.run("O_DIRECT write", lambda: os.fdatasync(tfd))
    finally:
        os.close(tfd)
        for fd in files.values():
            os.close(fd)
    return {"bytes": total, "seconds": clock.seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("capture")
    c.add_argument("disk", type=Path)
    c.add_argument("maps", type=Path, nargs="+")
    c.add_argument("--scratch", type=Path, help="where the frames go (default: next to DISK)")
    r = sub.add_parser("restore")
    r.add_argument("image", type=Path)
    r.add_argument("target")
    args = ap.parse_args()
    if args.what == "capture":
        scratch = args.scratch or args.disk.with_name(args.disk.name + ".parts.zst")
        out = capture(args.disk, args.maps, scratch)
    else:
        out = restore(args.image, args.target)
    out["total"] = sum(out["seconds"].values())
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
