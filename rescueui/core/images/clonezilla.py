"""Clonezilla image folders (``ocs-sr savedisk`` / ``saveparts``), restored as one disk.

A Clonezilla folder holds, for a disk ``sda``: ``disk`` and ``parts`` (what was saved),
``sda-pt.sf`` (``sfdisk -d``), ``sda-pt.parted`` (the disk's size), ``sda-mbr`` (its first
sector), ``sda-hidden-data-after-mbr`` (MBR disks: the sectors before the first
partition), ``sda-gpt-1st`` / ``sda-gpt-2nd`` (GPT disks: both tables as ``dd`` saw them),
one stream per partition — ``sda1.ext4-ptcl-img.zst.aa``, ``.ab`` … (a partclone image,
compressed, split into volumes) or ``sda1.dd-img.aa`` (the raw partition) — ``swappt-sda2
.info`` (a swap partition's UUID and label: Clonezilla recreates swap, it does not save
it) and ``Info-dmi.txt``, ``Info-lshw.txt``, ``Info-lspci.txt`` (the source machine).

This module presents such a folder as one disk (the seam's :class:`ForeignImage`): the
areas outside the partitions come from the table files — the table written by ``sfdisk``
from the ``-pt.sf`` dump onto a sparse in-memory disk (it also gives the logical
partitions' EBRs), the saved GPTs over it, the boot code of ``-mbr``, the hidden data
after the MBR, swap headers made by ``mkswap`` with the saved UUID and label — and each
partition's blocks come from its stream: a partclone stream's used blocks (its bitmap
gives the extents; its block checksums are checked, :mod:`.partclone`), a ``dd`` stream's
bytes. Any source device name works (an image of ``sda`` onto an NVMe disk): names are
only used to pair the files of the folder with each other.

Not supported yet, refused with a message: LVM, LUKS, encrypted (``-enc``) and
multi-disk images, partclone format 0001, ntfsclone and partimage streams.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from rescueui.core import parttable
from rescueui.core.errors import (
    CorruptImageError,
    DiskError,
    ImageError,
    RescueError,
    UnsupportedImageError,
)
from rescueui.core.image import check_partition_table
from rescueui.core.images import partclone
from rescueui.core.images.source import (
    Extent,
    ForeignImage,
    ForeignManifest,
    Integrity,
    foreign_manifest,
)
from rescueui.core.safefile import open_regular, read_regular
from rescueui.core.swap import swap_header
from rescueui.core.text import safe_text
from rescueui.core.tools import find_tool
from rescueui.core.units import MiB, human_size

SECTOR = 512
MAX_ENTRIES = 20_000  # files in a folder
TEXT_LIMIT = 4 * MiB  # a table dump or an Info file
HIDDEN_LIMIT = 64 * MiB  # hidden data after the MBR kept (Clonezilla's own limit: 1 GiB)
MERGE_GAP = 1 * MiB  # unused runs shorter than this inside data are written as zeros
MAX_EXTENTS = 500_000
READ_CHUNK = 1 * MiB
AHEAD_PIECE = 4 * MiB  # a restore decompresses this far ahead, in a thread of its own
AHEAD_BUFFERS = 4

_COMPRESSION_NAMES = {
    "gz": "gzip",
    "bz2": "bzip2",
    "xz": "xz",
    "zst": "zstd",
    "lz4": "lz4",
    "lzip": "lzip",
    "lzo": "lzo",
    "lzma": "lzma",
    "lrz": "lrzip",
    "uncomp": "none",
}
_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"LZIP", "lzip"),
    (b"\x89LZO", "lzo"),
)
_PIPE_TOOLS = {"lz4": "lz4", "lzip": "lzip"}  # decompressed by the tool itself

_DEV = r"[A-Za-z0-9][A-Za-z0-9_+-]{0,63}"
_PTCL_RE = re.compile(
    rf"^(?P<part>{_DEV})\.(?P<fs>[A-Za-z0-9+_]{{1,16}})-ptcl-img\."
    r"(?P<comp>gz|bz2|xz|zst|lz4|lzip|lzo|lzma|lrz|uncomp)(?:\.(?P<vol>[a-z]{2,8}))?$"
)
_DD_RE = re.compile(rf"^(?P<part>{_DEV})\.dd-img(?:\.(?P<vol>[a-z]{{2,8}}))?$")
_OLD_RE = re.compile(rf"^(?P<part>{_DEV})\.(?P<what>[a-z0-9]+-img|aa|000)(?:\..*)?$")

_RETRY = "Copy the image folder again from its source, then restore again."


def _where(folder: Path, name: str) -> str:
    return f"{folder / name}"


# --------------------------------------------------------------------------- volumes


class _Volumes:
    """The volumes of one split stream (``.aa``, ``.ab`` …) as one file to read in order."""

    def __init__(self, folder: Path, names: list[str], sizes: list[int]) -> None:
        self.folder = folder
        self.names = names
        self.sizes = sizes
        self.total = sum(sizes)
        self.pos = 0
        self.closed = False
        self._i = 0
        self._fd = -1
        self._off = 0
        self._pread_fds: dict[int, int] = {}

    def readable(self) -> bool:
        return True

    def where(self) -> str:
        i, off = 0, self.pos
        while i < len(self.sizes) - 1 and off >= self.sizes[i]:
            off -= self.sizes[i]
            i += 1
        return f"{self.names[i]} at byte {off}"

    def _next_fd(self) -> int:
        while self._i < len(self.names):
            if self._fd < 0:
                path = self.folder / self.names[self._i]
                self._fd = open_regular(path, what="Clonezilla image volume")
                size = os.fstat(self._fd).st_size
                if size != self.sizes[self._i]:
                    raise CorruptImageError(
                        f"The image volume {path} changed size since the folder was opened "
                        f"({self.sizes[self._i]} then, {size} now).",
                        hint="Make sure nothing else writes to the image folder.",
                    )
                self._off = 0
            if self._off < self.sizes[self._i]:
                return self._fd
            os.close(self._fd)
            self._fd = -1
            self._i += 1
        return -1

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        fd = self._next_fd()
        if fd < 0 or not len(view):
            return 0
        n = os.preadv(fd, [view[: self.sizes[self._i] - self._off]], self._off)
        if n <= 0:
            raise CorruptImageError(
                f"The image volume {self.folder / self.names[self._i]} could not be read at "
                f"byte {self._off}.",
                hint=_RETRY,
            )
        self._off += n
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.total - self.pos
        buf = bytearray(max(0, min(n, READ_CHUNK * 4)))
        got = self.readinto(buf)
        return bytes(buf[:got])

    def tell(self) -> int:
        return self.pos

    def pread(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` of the joined volumes (short only at the end)."""
        out = []
        i, off = 0, offset
        while i < len(self.sizes) and off >= self.sizes[i]:
            off -= self.sizes[i]
            i += 1
        while n > 0 and i < len(self.names):
            fd = self._pread_fds.get(i)
            if fd is None:  # kept open: a walk over a stream reads every volume many times
                fd = self._pread_fds[i] = open_regular(
                    self.folder / self.names[i], what="Clonezilla image volume"
                )
            b = os.pread(fd, min(n, self.sizes[i] - off), off)
            if not b:
                break
            out.append(b)
            n -= len(b)
            i, off = i + 1, 0
        return b"".join(out)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for fd in self._pread_fds.values():
            os.close(fd)
        self._pread_fds.clear()
        self.closed = True


def _fill(readinto: Any, view: memoryview) -> int:
    """Call ``readinto`` until ``view`` is full or the source ends; the bytes read."""
    got = 0
    while got < len(view):
        n = readinto(view[got:])
        if not n:
            break
        got += n
    return got


class _Plain:
    """An uncompressed stream: the volumes themselves."""

    def __init__(self, vols: _Volumes) -> None:
        self.vols = vols

    def readinto(self, view: memoryview) -> int:
        return _fill(self.vols.readinto, view)

    def close(self) -> None:
        self.vols.close()


class _Inflated:
    """gzip, xz, zstd, bzip2: the raw-image module's stream reader over the volumes."""

    def __init__(self, vols: _Volumes, compression: str) -> None:
        from rescueui.core.images.raw import _Inflater, _memory_limit

        self.vols = vols
        self.inf = _Inflater(
            -1,
            vols.total,
            vols.folder / vols.names[0],
            compression,
            _memory_limit(),
            source=vols,
        )

    def readinto(self, view: memoryview) -> int:
        return int(self.inf.readinto(view))  # it fills the view unless the stream ends

    def close(self) -> None:
        self.vols.close()


class _Piped:
    """lz4, lzip: decompressed by the tool itself, fed the volumes by a thread."""

    def __init__(self, vols: _Volumes, compression: str) -> None:
        tool = find_tool(_PIPE_TOOLS[compression])
        if tool is None:
            raise UnsupportedImageError(
                f"The stream {vols.names[0]} is {compression}-compressed and the program "
                f"'{_PIPE_TOOLS[compression]}' is not installed.",
                hint=f"Install {_PIPE_TOOLS[compression]}, or restore it with Clonezilla.",
            )
        self.vols = vols
        self.compression = compression
        self.proc = subprocess.Popen(
            [tool, "-dc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, daemon=True, name="clonezilla-feed")
        self._feeder.start()

    def _feed(self) -> None:
        assert self.proc.stdin is not None
        buf = bytearray(READ_CHUNK)
        try:
            while True:
                n = self.vols.readinto(buf)
                if not n:
                    break
                self.proc.stdin.write(memoryview(buf)[:n])
        except BrokenPipeError:
            pass
        except BaseException as exc:  # handed to the reader
            self._error = exc
        finally:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def readinto(self, view: memoryview) -> int:
        assert self.proc.stdout is not None
        got = _fill(self.proc.stdout.readinto, view)
        if got < len(view):
            self._feeder.join()
            if self._error is not None:
                raise self._error
            rc = self.proc.wait()
            if rc != 0:
                err = self.proc.stderr.read(2000) if self.proc.stderr else b""
                raise CorruptImageError(
                    f"The {self.compression} stream {self.vols.folder / self.vols.names[0]} "
                    f"is damaged: {safe_text(err.decode('utf-8', 'replace').strip())}.",
                    hint=_RETRY,
                )
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        self._feeder.join(timeout=5)
        self.vols.close()


# --------------------------------------------------------------------------- streams


@dataclass
class PartitionStream:
    """One partition's stream in the folder."""

    name: str  # the source's partition name, e.g. "sda1"
    number: int
    fs: str  # from the file name: ext4, vfat, xfs, dd ...
    kind: str  # "partclone" | "dd"
    compression: str  # gzip xz zstd bzip2 lz4 lzip none
    volumes: list[str]
    sizes: list[int]
    start: int = 0  # bytes on the disk
    size: int = 0
    header: partclone.PartcloneHeader | None = None
    bits: bytes | None = None

    @property
    def label(self) -> str:
        first = self.volumes[0]
        return first if len(self.volumes) == 1 else f"{first} (+{len(self.volumes) - 1} volumes)"

    @property
    def stored_bytes(self) -> int:
        return sum(self.sizes)

    def open_bytes(self, folder: Path, *, read_ahead: bool = False) -> Any:
        """The decompressed stream; ``read_ahead``: decompressed by a thread of its own
        while the caller checks and hashes what came before (a restore: two stages in
        parallel, as ``zstd -dc | partclone.restore`` has two processes)."""
        vols = _Volumes(folder, self.volumes, self.sizes)
        if self.compression == "none":
            return _Plain(vols)
        if self.compression in ("gzip", "xz", "zstd", "bzip2"):
            src = _Inflated(vols, self.compression)
            return _ReadAhead(src) if read_ahead else src
        return _Piped(vols, self.compression)


class _ReadAhead:
    """Reads a byte source ahead in a thread (bounded: :data:`AHEAD_BUFFERS` pieces of
    :data:`AHEAD_PIECE` bytes); errors reach the reader at the place they happened."""

    def __init__(self, src: Any) -> None:
        import queue

        self.src = src
        self._q: queue.Queue[tuple[bytearray, int] | BaseException | None] = queue.Queue(
            AHEAD_BUFFERS
        )
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(AHEAD_BUFFERS + 1):
            self._free.put(bytearray(AHEAD_PIECE))
        self._stop = threading.Event()
        self._cur: memoryview | None = None
        self._cur_buf: bytearray | None = None
        self._pos = 0
        self._ended = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="clonezilla-read")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                buf = self._free.get()
                n = self.src.readinto(memoryview(buf))
                if not n:
                    self._q.put(None)
                    return
                self._q.put((buf, n))
        except BaseException as exc:  # handed to the reader, in order
            self._q.put(exc)

    def readinto(self, view: memoryview) -> int:
        got = 0
        while got < len(view):
            if self._cur is None or self._pos >= len(self._cur):
                if self._cur_buf is not None:
                    self._free.put(self._cur_buf)
                    self._cur = self._cur_buf = None
                if self._ended:
                    break
                item = self._q.get()
                if item is None:
                    self._ended = True
                    break
                if isinstance(item, BaseException):
                    self._ended = True
                    raise item
                self._cur_buf, n = item
                self._cur = memoryview(self._cur_buf)[:n]
                self._pos = 0
            k = min(len(view) - got, len(self._cur) - self._pos)
            view[got : got + k] = self._cur[self._pos : self._pos + k]
            self._pos += k
            got += k
        return got

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # let a blocked producer finish its put
            with contextlib.suppress(Exception):
                while True:
                    self._q.get_nowait()
            if self._free.empty():  # a producer waiting for a buffer: an empty one ends it
                self._free.put(bytearray(0))
            self._thread.join(timeout=0.05)
        self.src.close()


class _StreamReader:
    """Reads one partition's stream once, in order, for :meth:`ClonezillaImage.read_into`."""

    def __init__(self, folder: Path, ps: PartitionStream) -> None:
        self.ps = ps
        self.where = f"the partition image {folder / ps.label}"
        self.src = ps.open_bytes(folder, read_ahead=True)
        self.blocks: partclone.BlockReader | None = None
        self.pos = 0  # dd: bytes of the partition read so far
        try:
            if ps.kind == "partclone":
                assert ps.header is not None and ps.bits is not None
                head = bytearray(partclone.HEADER_SIZE)
                partclone.read_exact(self.src, memoryview(head), self.where, "the header")
                if partclone.parse_header(bytes(head), self.where) != ps.header:
                    raise CorruptImageError(f"{self.where} changed since it was opened.")
                bits = partclone.read_bitmap(self.src, ps.header, self.where)
                if bits != ps.bits:
                    raise CorruptImageError(f"{self.where} changed since it was opened.")
                self.blocks = partclone.BlockReader(self.src, ps.header, bits, self.where)
        except BaseException:
            self.close()
            raise

    def read(self, rel: int, view: memoryview) -> None:
        """Fill ``view`` with the partition's bytes at ``rel`` (in increasing order)."""
        if self.blocks is not None:
            bs = self.blocks.h.block_size
            first, skew = divmod(rel, bs)
            if skew == 0 and len(view) % bs == 0:
                self.blocks.read_blocks(first, view)
                return
            # a piece that does not end on a block (a partition cut inside its last block)
            span = -(-(skew + len(view)) // bs) * bs
            tmp = memoryview(bytearray(span))
            self.blocks.read_blocks(first, tmp)
            view[:] = tmp[skew : skew + len(view)]
            return
        if rel < self.pos:
            raise CorruptImageError(f"{self.where}: read out of order ({rel} < {self.pos}).")
        if rel > self.pos:
            skip = memoryview(bytearray(min(4 * MiB, rel - self.pos)))
            while self.pos < rel:
                n = min(len(skip), rel - self.pos)
                partclone.read_exact(self.src, skip[:n], self.where, f"byte {self.pos}")
                self.pos += n
        partclone.read_exact(self.src, view, self.where, f"byte {rel}")
        self.pos += len(view)

    def finish(self) -> None:
        """All of it was read: check that the stream holds exactly that (nothing missing,
        nothing left over)."""
        if self.blocks is not None:
            self.blocks.finish()
        extra = bytearray(1)
        if self.src.readinto(memoryview(extra)):
            raise CorruptImageError(
                f"{self.where} holds more data than the partition it was made of "
                f"({human_size(self.ps.size)}): it does not belong to this table.",
                hint=_RETRY,
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.src.close()


# --------------------------------------------------------------------------- the folder


@dataclass
class _Area:
    """A piece of the disk and where its bytes come from."""

    start: int
    end: int
    kind: str  # "data" | "zero" | "unused" (blocks the partclone bitmap marks free)
    source: str  # "table" (the in-memory disk) | "partition"
    stream: PartitionStream | None = None


@dataclass
class _Folder:
    path: Path
    files: dict[str, os.stat_result] = field(default_factory=dict)

    def text(self, name: str, limit: int = TEXT_LIMIT) -> str | None:
        if name not in self.files:
            return None
        data = read_regular(self.path / name, limit, what="Clonezilla image file")
        return data.decode("utf-8", "replace")

    def data(self, name: str, limit: int) -> bytes | None:
        if name not in self.files:
            return None
        return read_regular(self.path / name, limit, what="Clonezilla image file")


def _list_folder(p: Path) -> _Folder:
    folder = _Folder(p)
    try:
        with os.scandir(p) as it:
            for i, e in enumerate(it):
                if i >= MAX_ENTRIES:
                    raise ImageError(
                        f"{p} holds more than {MAX_ENTRIES} entries; it is not read as an "
                        "image folder.",
                        hint="Choose the Clonezilla image folder itself.",
                    )
                st = e.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    folder.files[e.name] = st
    except OSError as exc:
        raise ImageError(f"Cannot read the folder {p}: {exc.strerror}.") from exc
    return folder


def _words(text: str | None) -> list[str]:
    return (text or "").split()


def _refuse_unsupported(folder: _Folder) -> None:
    p = folder.path
    names = set(folder.files)
    if {"ecryptfs.info", "gocryptfs.info"} & names:
        raise UnsupportedImageError(
            f"{p} is an encrypted Clonezilla image; restoring those is not supported yet.",
            hint="Restore it with Clonezilla (it asks for the passphrase).",
        )
    if any(n.startswith("lvm_") for n in names):
        raise UnsupportedImageError(
            f"{p} is a Clonezilla image of LVM volumes ({', '.join(sorted(n for n in names if n.startswith('lvm_'))[:3])}); "
            "restoring LVM is not supported yet.",
            hint="Restore it with Clonezilla.",
        )
    if any("luks" in n.lower() for n in names):
        raise UnsupportedImageError(
            f"{p} holds LUKS-encrypted partitions; restoring those from a Clonezilla image is "
            "not supported yet.",
            hint="Restore it with Clonezilla.",
        )


def _disk_name(folder: _Folder) -> tuple[str, list[str]]:
    """The source disk and the partitions saved."""
    p = folder.path
    disks = _words(folder.text("disk", 64 * 1024))
    parts = _words(folder.text("parts", 64 * 1024))
    for n in (*disks, *parts):
        if not re.fullmatch(_DEV, n):
            raise CorruptImageError(
                f"The 'disk'/'parts' file of {p} names '{safe_text(n[:40])}', not a device.",
                hint=_RETRY,
            )
    if len(disks) > 1:
        raise UnsupportedImageError(
            f"{p} holds {len(disks)} disks ({', '.join(disks)}); restoring multi-disk "
            "Clonezilla images is not supported yet.",
            hint="Restore it with Clonezilla, one disk at a time.",
        )
    tables = sorted(n[: -len("-pt.sf")] for n in folder.files if n.endswith("-pt.sf"))
    if disks:
        disk = disks[0]
    elif len(tables) == 1:
        disk = tables[0]
    elif not tables:
        raise UnsupportedImageError(
            f"{p} is a Clonezilla image of partitions without their disk's partition table "
            "(no '-pt.sf' file); it can only be restored onto existing partitions, which this "
            "rescueui does not do for Clonezilla images yet.",
            hint="Restore it with Clonezilla.",
        )
    else:
        raise UnsupportedImageError(
            f"{p} holds partitions of several disks ({', '.join(tables)}); not supported yet.",
            hint="Restore it with Clonezilla.",
        )
    if f"{disk}-pt.sf" not in folder.files:
        raise CorruptImageError(
            f"{p} is a Clonezilla image of {disk}, but its partition table {disk}-pt.sf is "
            "missing.",
            hint=_RETRY,
        )
    if not parts:
        raise CorruptImageError(
            f"{p} names no saved partition (its 'parts' file is missing or empty).",
            hint=_RETRY,
        )
    return disk, parts


def _partition_number(disk: str, part: str, where: Path) -> int:
    m = re.fullmatch(re.escape(disk) + r"p?([0-9]{1,3})", part)
    if not m:
        raise CorruptImageError(
            f"{where}: the partition name {part} does not belong to the disk {disk}.",
            hint=_RETRY,
        )
    return int(m.group(1))


def _volume_order(names: list[str], suffixes: list[str | None], where: Path) -> list[str]:
    if len(names) == 1 and suffixes[0] is None:
        return names
    if any(s is None for s in suffixes):
        raise CorruptImageError(
            f"{where}: the stream {names[0]} is there both whole and split into volumes.",
            hint=_RETRY,
        )
    pairs = sorted(zip(suffixes, names, strict=True))
    order = [n for _, n in pairs]
    same = {len(s or "") for s, _ in pairs}
    if len(same) == 1:  # aa, ab, ... : consecutive, from the first
        width = same.pop()

        def value(s: str) -> int:
            v = 0
            for ch in s:
                v = v * 26 + ord(ch) - 97
            return v

        for i, (s, n) in enumerate(pairs):
            if value(s or "") != i:
                expected = "".join(
                    chr(97 + (i // 26 ** (width - 1 - k)) % 26) for k in range(width)
                )
                raise CorruptImageError(
                    f"{where}: the volume '.{expected}' of the stream {order[0]} is missing "
                    f"(found '{n}').",
                    hint=_RETRY,
                )
    return order


def _find_streams(folder: _Folder, disk: str, parts: list[str]) -> list[PartitionStream]:
    p = folder.path
    found: dict[str, dict[tuple[str, str, str], list[tuple[str | None, str]]]] = {}
    for name in folder.files:
        m = _PTCL_RE.match(name)
        if m:
            fs = m.group("fs").lower()
            key = ("dd" if fs == "dd" else "partclone", fs, m.group("comp"))
        else:
            m = _DD_RE.match(name)
            if not m:
                continue
            key = ("dd", "dd", "")
        found.setdefault(m.group("part"), {}).setdefault(key, []).append((m.group("vol"), name))
    streams = []
    for part in parts:
        kinds = found.get(part, {})
        if not kinds:
            old = [n for n in folder.files if (m := _OLD_RE.match(n)) and m.group("part") == part]
            if old:
                raise UnsupportedImageError(
                    f"{p}: the partition {part} was saved in an older Clonezilla format "
                    f"({safe_text(old[0])}: ntfsclone or partimage); not supported.",
                    hint="Restore it with Clonezilla.",
                )
            raise CorruptImageError(
                f"{p}: the image of partition {part} is missing (no '{part}.*-ptcl-img.*' "
                f"or '{part}.dd-img' file), though the 'parts' file lists it.",
                hint=_RETRY,
            )
        if len(kinds) > 1:
            raise CorruptImageError(
                f"{p}: partition {part} has more than one image "
                f"({', '.join(sorted(v[0][1] for v in kinds.values()))}).",
                hint="Remove the stray files, or copy the folder again.",
            )
        (kind, fs, comp), vols = next(iter(kinds.items()))
        names = _volume_order([n for _, n in vols], [s for s, _ in vols], p)
        sizes = [folder.files[n].st_size for n in names]
        streams.append(
            PartitionStream(
                name=part,
                number=_partition_number(disk, part, p),
                fs=fs.lower(),
                kind=kind,
                compression=_COMPRESSION_NAMES.get(comp, ""),
                volumes=names,
                sizes=sizes,
            )
        )
    return streams


def _sniff_compression(folder: Path, ps: PartitionStream) -> None:
    """The compression by content; the name's suffix is only a hint."""
    if not ps.sizes[0]:
        raise CorruptImageError(f"The image volume {folder / ps.volumes[0]} is empty.")
    fd = open_regular(folder / ps.volumes[0], what="Clonezilla image volume")
    try:
        head = os.pread(fd, 16, 0)
    finally:
        os.close(fd)
    found = next((name for magic, name in _MAGICS if head.startswith(magic)), "none")
    if found in ("lzo",) or ps.compression in ("lzma", "lrzip", "lzo"):
        raise UnsupportedImageError(
            f"The partition image {folder / ps.volumes[0]} is "
            f"{found if found != 'none' else ps.compression}-compressed; this rescueui reads "
            "gzip, zstd, xz, bzip2, lz4, lzip and uncompressed streams.",
            hint="Restore it with Clonezilla.",
        )
    ps.compression = found


def _check_complete(folder: Path, ps: PartitionStream) -> None:
    """Before anything is written: a stream whose length is known without decompressing it
    must have that length. Uncompressed partclone images: header, bitmap, blocks and
    checksums add up; zstd: every frame and block header is walked across the volumes (a
    truncated stream ends inside a block) and, where the frames record their sizes, the
    total must be the image's. Other compressions are checked as they are read."""
    where = folder / ps.label
    expected = ps.header.stream_bytes if ps.header is not None else ps.size or None
    if ps.compression == "none":
        if expected is not None and ps.stored_bytes != expected:
            raise CorruptImageError(
                f"The partition image {where} holds {ps.stored_bytes} bytes; its header "
                f"makes {expected}: it is {'truncated' if ps.stored_bytes < expected else 'longer'}"
                " (a volume missing or cut short?).",
                hint=_RETRY,
            )
        return
    if ps.compression != "zstd":
        return
    from rescueui.core.images.raw import _memory_limit, zstd_layout

    vols = _Volumes(folder, ps.volumes, ps.sizes)
    try:
        layout = zstd_layout(-1, vols.total, where, _memory_limit(), pread=vols.pread)
    finally:
        vols.close()
    if layout.content_size is not None and expected is not None:
        if layout.content_size != expected:
            raise CorruptImageError(
                f"The partition image {where} decompresses to {layout.content_size} bytes; "
                f"its partclone header makes {expected}.",
                hint=_RETRY,
            )


def _read_stream_head(folder: Path, ps: PartitionStream) -> None:
    where = f"the partition image {folder / ps.label}"
    src = ps.open_bytes(folder)
    try:
        head = bytearray(partclone.HEADER_SIZE)
        got = src.readinto(memoryview(head))
        if ps.kind == "dd":
            if got and bytes(head).startswith(partclone.MAGIC[:15]):
                ps.kind = "partclone"  # named dd, holds a partclone image
            else:
                return
        if got < partclone.HEADER_SIZE:
            raise CorruptImageError(f"{where} ends inside its partclone header.", hint=_RETRY)
        ps.header = partclone.parse_header(bytes(head), where)
        ps.bits = partclone.read_bitmap(src, ps.header, where)
    finally:
        src.close()


# --------------------------------------------------------------------------- the table


def _run(cmd: list[str], fd: int, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, pass_fds=(fd,), timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageError(f"{cmd[0]} could not be run: {exc}.") from exc


def _disk_size(folder: _Folder, disk: str, dump: str) -> tuple[int, int]:
    """(disk size in bytes, logical sector size) from ``-pt.parted``, else from the dump."""
    parted = folder.text(f"{disk}-pt.parted", 256 * 1024) or ""
    sector = SECTOR
    m = re.search(r"^Sector size \(logical/physical\): ([0-9]{3,5})B/", parted, re.M)
    if m:
        sector = int(m.group(1))
    m = re.search(r"^sector-size: *([0-9]{3,5})\s*$", dump, re.M)
    if m:
        sector = int(m.group(1))
    if sector not in (512, 1024, 2048, 4096):
        raise CorruptImageError(f"{folder.path}: impossible sector size {sector}.", hint=_RETRY)
    m = re.search(r"^Disk /dev/\S+: ([0-9]{1,19})s\s*$", parted, re.M)
    if m:
        return int(m.group(1)) * sector, sector
    m = re.search(r"^last-lba: *([0-9]{1,19})\s*$", dump, re.M)
    if m:  # GPT: the backup table's 33 sectors after the last usable one
        return (int(m.group(1)) + 34) * sector, sector
    end = 0
    for s, z in re.findall(r"start=\s*([0-9]{1,19}),\s*size=\s*([0-9]{1,19})", dump):
        end = max(end, int(s) + int(z))
    if not end:
        raise CorruptImageError(
            f"{folder.path / (disk + '-pt.sf')} gives no partition and no disk size.",
            hint=_RETRY,
        )
    return -(-end * sector // MiB) * MiB, sector


def _sfdisk_json(fd: int, sector: int, where: Path) -> dict[str, Any]:
    """The table of the in-memory disk ``fd``, as the image's (node names ``disk<N>``)."""
    try:
        table = parttable.read_table(f"/dev/fd/{fd}", sector_size=sector, pass_fds=(fd,))
    except DiskError as exc:
        raise CorruptImageError(
            f"The partition table of {where} cannot be read back ({exc.message})", hint=_RETRY
        ) from exc
    if table is None:
        raise CorruptImageError(f"The partition table of {where} is empty.", hint=_RETRY)
    table.pop("device", None)
    from rescueui.core.images.raw import _fix_nodes

    _fix_nodes(table)
    return table


def _layout(table: dict[str, Any]) -> list[tuple[int, int, str]]:
    ss = int(table.get("sectorsize") or SECTOR)
    return [
        (int(p.get("start", 0)) * ss, int(p.get("size", 0)) * ss, str(p.get("type", "")).lower())
        for p in table.get("partitions", [])
    ]


_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _swap_info(folder: _Folder, part: str) -> tuple[str | None, str | None] | None:
    text = folder.text(f"swappt-{part}.info", 64 * 1024)
    if text is None:
        return None
    uuid = re.search(r'^UUID="([^"]*)"', text, re.M)
    label = re.search(r'^LABEL="([^"]*)"', text, re.M)
    u = uuid.group(1) if uuid and _UUID.fullmatch(uuid.group(1)) else None
    lab = (
        label.group(1)
        if label and re.fullmatch(r"[A-Za-z0-9 _.+-]{1,16}", label.group(1))
        else None
    )
    return u, lab


def _blkid_list(folder: _Folder, disk: str) -> dict[int, tuple[str | None, str | None]]:
    """Filesystem type and label of each partition of ``disk`` from ``blkid.list`` (what
    ``blkid`` printed on the source machine while it was saved)."""
    out: dict[int, tuple[str | None, str | None]] = {}
    text = folder.text("blkid.list", 1 * MiB) or ""
    for line in text.splitlines():
        m = re.match(r"^/dev/(\S+?): (.*)$", line)
        if not m:
            continue
        n = re.fullmatch(re.escape(disk) + r"p?([0-9]{1,3})", m.group(1))
        if not n:
            continue
        attrs = dict(re.findall(r'\b([A-Z_]+)="([^"]*)"', m.group(2)))
        fs = attrs.get("TYPE")
        label = attrs.get("LABEL")
        out[int(n.group(1))] = (
            safe_text(fs)[:16] if fs and re.fullmatch(r"[a-z0-9_]{1,16}", fs) else None,
            safe_text(label)[:64] if label else None,
        )
    return out


# --------------------------------------------------------------------------- source machine


def _host(folder: _Folder, warnings: list[str]) -> dict[str, Any]:
    """The source machine from ``Info-dmi.txt``, ``Info-lshw.txt``, ``Info-lspci.txt``."""
    host: dict[str, Any] = {}
    sources = []
    dmi = folder.text("Info-dmi.txt")
    if dmi:
        sources.append("Info-dmi.txt")
        blocks = re.split(r"\n(?=Handle 0x)", dmi)
        threads = 0
        mem = 0
        for b in blocks:
            if "\nSystem Information" in b:
                v = re.search(r"^\s*Manufacturer: (.+)$", b, re.M)
                pr = re.search(r"^\s*Product Name: (.+)$", b, re.M)
                if v:
                    host["dmi_vendor"] = safe_text(v.group(1).strip())[:80]
                if pr:
                    host["dmi_product"] = safe_text(pr.group(1).strip())[:80]
            elif "\nProcessor Information" in b:
                t = re.search(r"^\s*Thread Count: ([0-9]{1,5})", b, re.M)
                c = re.search(r"^\s*Core Count: ([0-9]{1,5})", b, re.M)
                if t or c:
                    threads += int((t or c).group(1))  # type: ignore[union-attr]
            elif "\nMemory Device" in b:
                s = re.search(r"^\s*Size: ([0-9]{1,7}) (MB|GB|TB)\s*$", b, re.M)
                if s:
                    mem += (
                        int(s.group(1)) * {"MB": MiB, "GB": 1024 * MiB, "TB": 1 << 40}[s.group(2)]
                    )
        if threads:
            host["cpus"] = threads
        if mem:
            host["memory_bytes"] = mem
    lshw = folder.text("Info-lshw.txt")
    if lshw:
        sources.append("Info-lshw.txt")
        if "memory_bytes" not in host:
            m = re.search(r"\*-memory\s*\n(?:\s+\S.*\n)*?\s+size: ([0-9]{1,7})(GiB|MiB)", lshw)
            if m:
                host["memory_bytes"] = int(m.group(1)) * (
                    MiB if m.group(2) == "MiB" else 1024 * MiB
                )
        if "cpus" not in host:
            m = re.search(r"configuration:.*\bthreads=([0-9]{1,5})", lshw)
            if m:
                host["cpus"] = int(m.group(1))
    lspci = folder.text("Info-lspci.txt")
    if lspci:
        sources.append("Info-lspci.txt")
        nics, ctrls = [], []
        for line in lspci.splitlines():
            m = re.match(r"^[0-9a-f]{2,4}:[0-9a-f]{2}\.[0-9a-f] ([^:]+): (.+)$", line.strip())
            if not m:
                continue
            cls, what = m.group(1).lower(), safe_text(m.group(2).strip())[:100]
            if "ethernet" in cls or "network" in cls:
                nics.append(
                    {
                        "name": f"net{len(nics)}",
                        "mac": None,
                        "model": what,
                        "driver": None,
                        "physical": True,
                    }
                )
            elif any(k in cls for k in ("sata", "raid", "scsi", "non-volatile", "ide", "sas")):
                ctrls.append(f"{m.group(1)}: {what}")
        if nics:
            host["nics"] = nics
        if ctrls:
            host["storage_controllers"] = ctrls
    if "efi-nvram.dat" in folder.files:
        host["firmware"] = "uefi"
    if sources:
        host["source"] = f"Clonezilla {', '.join(sources)}"
    return host  # none of them: the pre-flight says what it could not compare


# --------------------------------------------------------------------------- the image


class ClonezillaImage(ForeignImage):
    """A Clonezilla image folder, restored as one disk."""

    kind = "clonezilla"
    sequential = True  # partition streams are read once, in order

    def __init__(
        self,
        path: Path,
        manifest: ForeignManifest,
        memfd: int,
        areas: list[_Area],
        streams: list[PartitionStream],
        disk: str,
        mode: str,
    ) -> None:
        super().__init__(path, manifest)
        self.dir = path  # reports go into the image folder, as for our own folders
        self._memfd = memfd
        self._areas = areas
        self._starts = [a.start for a in areas]
        self.partition_streams = streams
        self.source_disk_name = disk
        self.mode = mode  # "savedisk" | "saveparts"
        self.notes: list[str] = []  # what the restore adds that the folder does not hold
        self._readers: dict[int, _StreamReader] = {}
        self._finished: set[int] = set()
        self._last_data = {
            id(s): max((a.end for a in areas if a.stream is s and a.kind == "data"), default=0)
            for s in streams
        }
        self._lock = threading.Lock()
        modes = sorted(
            {s.header.checksum_name for s in streams if s.header and s.header.checksum_mode}
        )
        checked = [s for s in streams if s.header and s.header.checksum_mode]
        if checked and len(checked) == len(streams):
            self.integrity = Integrity(
                "block-checksums",
                f"partclone's {'/'.join(modes)} of every strip of blocks is checked before "
                "those blocks are written; the BLAKE3 of every piece read is kept for the "
                "read-back verify",
            )
        elif checked:
            unchecked = [s.name for s in streams if s not in checked]
            self.integrity = Integrity(
                "block-checksums",
                f"partclone's {'/'.join(modes)} block checksums are checked for "
                f"{', '.join(s.name for s in checked)}; {', '.join(unchecked)} "
                f"{'carries' if len(unchecked) == 1 else 'carry'} none "
                "(only the compression's own check); the BLAKE3 of every piece read is kept "
                "for the read-back verify",
            )

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> ClonezillaImage:
        p = Path(path)
        folder = _list_folder(p)
        _refuse_unsupported(folder)
        disk, parts = _disk_name(folder)
        warnings: list[str] = []
        streams = _find_streams(folder, disk, parts)
        for ps in streams:
            _sniff_compression(p, ps)
            _read_stream_head(p, ps)
        sfdisk = find_tool("sfdisk")
        if sfdisk is None:
            raise UnsupportedImageError(
                "The program 'sfdisk' is not installed: a Clonezilla image's partition table "
                "cannot be read without it.",
                hint="Install fdisk.",
            )
        dump = folder.text(f"{disk}-pt.sf") or ""
        size, sector = _disk_size(folder, disk, dump)
        memfd = os.memfd_create("rescueui-clonezilla", os.MFD_CLOEXEC)
        try:
            table = cls._build_table(folder, disk, dump, size, sector, memfd, sfdisk, warnings)
            notes: list[str] = []
            areas = cls._areas_for(folder, p, disk, table, streams, size, memfd, warnings, notes)
            for ps in streams:
                _check_complete(p, ps)
            host = _host(folder, warnings)
            identity = cls._identity(folder)
            fs_types = _blkid_list(folder, disk)
            for s in streams:  # the stream's name says what partclone read it as
                if s.fs != "dd":
                    fs_types[s.number] = (s.fs, fs_types.get(s.number, (None, None))[1])
            saved = folder.files.get("clonezilla-img") or folder.files.get("parts")
            created = (
                datetime.datetime.fromtimestamp(saved.st_mtime, datetime.UTC).isoformat(
                    timespec="seconds"
                )
                if saved is not None
                else ""
            )
            manifest = foreign_manifest(
                created=created,
                virtual_size=size,
                sector_size=sector,
                partition_table=table,
                identity=identity,
                source_disk={"path": f"/dev/{disk}", "model": f"Clonezilla image of {disk}"},
                host=host,
                warnings=warnings,
                fs_types=fs_types,
            )
            for ps in streams:  # what each filesystem uses, from its partclone bitmap
                entry = manifest.partition_stream(ps.number)
                if entry is None:
                    continue
                if ps.header is not None:
                    used = sum(
                        min(a.end, ps.start + ps.size) - a.start
                        for a in areas
                        if a.stream is ps and a.kind == "data"
                    )
                    entry.used_bytes = min(used, entry.size_bytes)
                    entry.used_map = "the partclone bitmap"
                elif ps.kind == "dd":
                    entry.all_blocks = "saved by Clonezilla as a raw partition (dd)"
            mode = "savedisk" if "disk" in folder.files else "saveparts"
            image = cls(p, manifest, memfd, areas, streams, disk, mode)
            image.notes = notes
            return image
        except BaseException:
            os.close(memfd)
            raise

    @staticmethod
    def _build_table(
        folder: _Folder,
        disk: str,
        dump: str,
        size: int,
        sector: int,
        memfd: int,
        sfdisk: str,
        warnings: list[str],
    ) -> dict[str, Any]:
        """Write the table onto the in-memory disk: ``sfdisk`` from the dump, then the saved
        GPTs (when they agree with it), the boot code and the hidden data after the MBR."""
        p = folder.path
        os.ftruncate(memfd, size)
        cmd = [sfdisk, "--no-reread", "--no-tell-kernel", "-q", f"/dev/fd/{memfd}"]
        if sector != SECTOR:
            cmd[1:1] = ["--sector-size", str(sector)]
        proc = _run(cmd, memfd, stdin=dump)
        if proc.returncode != 0:
            raise CorruptImageError(
                f"The partition table {p / (disk + '-pt.sf')} cannot be applied: "
                f"{safe_text(proc.stderr.strip()[:300])}.",
                hint=_RETRY,
            )
        table = _sfdisk_json(memfd, sector, p)
        label = table.get("label")
        if label == "gpt" and sector == SECTOR:
            first = folder.data(f"{disk}-gpt-1st", 34 * SECTOR + 1)
            second = folder.data(f"{disk}-gpt-2nd", 33 * SECTOR + 1)
            if first and second and len(first) == 34 * SECTOR and len(second) == 33 * SECTOR:
                saved = [
                    os.pread(memfd, 34 * SECTOR, 0),
                    os.pread(memfd, 33 * SECTOR, size - 33 * SECTOR),
                ]
                os.pwrite(memfd, first, 0)
                os.pwrite(memfd, second, size - 33 * SECTOR)
                again = _sfdisk_json(memfd, sector, p)
                if _layout(again) != _layout(table) or again.get("id") != table.get("id"):
                    os.pwrite(memfd, saved[0], 0)
                    os.pwrite(memfd, saved[1], size - 33 * SECTOR)
                    warnings.append(
                        f"{disk}-gpt-1st/-gpt-2nd do not match {disk}-pt.sf: the table is "
                        "written from the sfdisk dump."
                    )
                else:
                    table = again
        mbr = folder.data(f"{disk}-mbr", SECTOR + 1)
        if mbr is not None:
            if len(mbr) != SECTOR:
                warnings.append(f"{disk}-mbr is not one sector long: its boot code is not used.")
            else:
                os.pwrite(memfd, mbr[:446], 0)
        hidden_name = f"{disk}-hidden-data-after-mbr"
        if label == "dos" and hidden_name in folder.files:
            hsize = folder.files[hidden_name].st_size
            first_start = min((s for s, _, _ in _layout(table)), default=size)
            if hsize > HIDDEN_LIMIT:
                warnings.append(
                    f"{hidden_name} ({human_size(hsize)}) is larger than this rescueui restores "
                    f"({human_size(HIDDEN_LIMIT)}); the area before the first partition is "
                    "left empty."
                )
            elif SECTOR + hsize > first_start:
                warnings.append(
                    f"{hidden_name} is longer than the gap before the first partition; not used."
                )
            else:
                data = folder.data(hidden_name, HIDDEN_LIMIT) or b""
                os.pwrite(memfd, data, SECTOR)
        check_partition_table(table, f"{p / (disk + '-pt.sf')}")
        return table

    @staticmethod
    def _areas_for(
        folder: _Folder,
        p: Path,
        disk: str,
        table: dict[str, Any],
        streams: list[PartitionStream],
        size: int,
        memfd: int,
        warnings: list[str],
        notes: list[str],
    ) -> list[_Area]:
        ss = int(table.get("sectorsize") or SECTOR)
        parts = {}
        for part in table.get("partitions", []):
            n = parttable.partition_number(part)
            parts[n] = (int(part.get("start", 0)) * ss, int(part.get("size", 0)) * ss, part)
        by_number = {s.number: s for s in streams}
        for s in streams:
            if s.number not in parts:
                raise CorruptImageError(
                    f"{p}: the partition {s.name} has an image but no entry in {disk}-pt.sf.",
                    hint=_RETRY,
                )
            s.start, s.size = parts[s.number][0], parts[s.number][1]
            if s.header is not None and s.header.device_size > s.size:
                raise CorruptImageError(
                    f"The partition image {p / s.label} is of a {human_size(s.header.device_size)}"
                    f" filesystem, larger than partition {s.number} of the table "
                    f"({human_size(s.size)}).",
                    hint=_RETRY,
                )
        for n, (start, length, part) in sorted(parts.items()):
            if n in by_number:
                continue
            ptype = str(part.get("type", "")).lower()
            if ptype in ("5", "f", "85"):
                continue  # extended: its EBRs are in the in-memory table
            name = f"{disk}{'p' if disk[-1].isdigit() else ''}{n}"
            swap = _swap_info(folder, name)
            if swap is not None:
                ClonezillaImage._make_swap(memfd, start, length, swap, warnings, notes, name)
                continue
            warnings.append(
                f"Partition {n} ({name}) has no image in this folder: it is restored empty (zeros)."
            )
        # the areas, in disk order
        areas: list[_Area] = []
        pos = 0
        for s in sorted(streams, key=lambda x: x.start):
            if s.start > pos:
                areas += _table_areas(memfd, pos, s.start)
            areas += _stream_areas(s)
            pos = s.start + s.size
        if size > pos:
            areas += _table_areas(memfd, pos, size)
        if len(areas) > MAX_EXTENTS:
            raise UnsupportedImageError(
                f"{p}: its filesystems are fragmented into {len(areas)} pieces, more than this "
                f"reader keeps ({MAX_EXTENTS}).",
                hint="Restore it with Clonezilla.",
            )
        return areas

    @staticmethod
    def _make_swap(
        memfd: int,
        start: int,
        length: int,
        swap: tuple[str | None, str | None],
        warnings: list[str],
        notes: list[str],
        name: str,
    ) -> None:
        """A swap header with the saved UUID and label, made by ``mkswap`` (as Clonezilla
        recreates swap), copied into the table's disk."""
        try:
            head = swap_header(length, swap[0], swap[1])
        except RescueError as exc:
            warnings.append(f"Swap partition {name} is restored empty: {exc.message}")
            return
        os.pwrite(memfd, head, start)
        notes.append(f"swap {name} made anew by mkswap (UUID {swap[0] or 'new'})")

    @staticmethod
    def _identity(folder: _Folder) -> str:
        """What the folder is: the names, sizes and dates of its files — not of the files
        rescueui itself leaves there (a restore's journal), or the journal would change
        the identity it is bound to."""
        from rescueui.core.journal import PREFIX as JOURNAL_PREFIX

        h = blake3.blake3(b"rescueui clonezilla folder v1\0")
        for name in sorted(n for n in folder.files if not n.startswith(JOURNAL_PREFIX)):
            st = folder.files[name]
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", "replace"))
        return h.hexdigest()

    # -- the seam --------------------------------------------------------------------------
    def describe(self) -> str:
        table = (self.manifest.partition_table or {}).get("label", "no")
        label = {"gpt": "GPT", "dos": "MBR"}.get(str(table), str(table))
        parts = ", ".join(
            f"{s.name} {s.fs}" + (f" {s.compression}" if s.compression != "none" else "")
            for s in self.partition_streams
        )
        used = sum(a.end - a.start for a in self._areas if a.kind == "data")
        stored = sum(s.stored_bytes for s in self.partition_streams)
        return (
            f"Clonezilla image ({self.mode} of {self.source_disk_name}, {label}, "
            f"{len(self.partition_streams)} partition images: {parts}; "
            f"{human_size(used)} to write of {human_size(self.extent_bytes)}, "
            f"{human_size(stored)} stored" + "".join(f"; {n}" for n in self.notes) + ")"
        )

    def extents(self) -> list[Extent]:
        return [Extent(a.start, a.end - a.start, a.kind) for a in self._areas]

    def first_sector(self) -> bytes:
        return os.pread(self._memfd, SECTOR, 0)

    def read_into(self, offset: int, view: memoryview) -> None:
        i = self._index(offset)
        area = self._areas[i]
        if offset + len(view) > area.end:
            raise ImageError(
                f"{self.path}: a read at {offset} of {len(view)} bytes crosses a piece edge."
            )
        if area.kind != "data":  # zero, or blocks the filesystem does not use
            view[:] = bytes(len(view))
            return
        if area.source == "table":
            got = 0
            while got < len(view):
                n = os.preadv(self._memfd, [view[got:]], offset + got)
                if n <= 0:
                    view[got:] = bytes(len(view) - got)
                    break
                got += n
            return
        s = area.stream
        assert s is not None
        with self._lock:
            reader = self._reader(s)
            reader.read(offset - s.start, view)
            if offset + len(view) >= self._last_data[id(s)]:
                reader.finish()
                reader.close()
                self._finished.add(id(s))
                del self._readers[id(s)]

    def _index(self, offset: int) -> int:
        import bisect

        i = bisect.bisect_right(self._starts, offset) - 1
        if i < 0 or offset >= self._areas[i].end:
            raise ImageError(f"{self.path}: offset {offset} lies outside the disk.")
        return i

    def _reader(self, s: PartitionStream) -> _StreamReader:
        if id(s) in self._finished:
            raise ImageError(f"{self.path}: {s.label} was already read to its end.")
        r = self._readers.get(id(s))
        if r is None:
            r = self._readers[id(s)] = _StreamReader(self.path, s)
        return r

    def check_source(
        self,
        progress: Any = None,
        cancelled: threading.Event | None = None,
    ) -> str:
        """Read every partition stream to its end with its checks (partclone's block
        checksums, the compression's own): a verify of the folder without a target."""
        from rescueui.core.images.source import read_every_data_segment

        done = read_every_data_segment(self, progress=progress, cancelled=cancelled)
        checks = sorted({s.header.checksum_name for s in self.partition_streams if s.header})
        strips = [c for c in checks if c != "none"]
        words = (
            f"read {human_size(done)} from {len(self.partition_streams)} partition images "
            f"of {self.path.name}"
        )
        if strips:
            words += f"; partclone's {'/'.join(strips)} block checksums all matched"
        return words + "; the table files were read by sfdisk"

    def rewind(self) -> None:
        """The partition streams are read from their beginning again (a resume)."""
        with self._lock:
            for r in list(self._readers.values()):
                r.close()
            self._readers.clear()
            self._finished.clear()

    def close(self) -> None:
        for r in list(self._readers.values()):
            r.close()
        self._readers.clear()
        if self._memfd >= 0:
            os.close(self._memfd)
            self._memfd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _table_areas(memfd: int, start: int, end: int) -> list[_Area]:
    """The in-memory table disk between ``start`` and ``end``: data where it was written."""
    out: list[_Area] = []
    pos = start
    while pos < end:
        try:
            d = os.lseek(memfd, pos, os.SEEK_DATA)
        except OSError:
            d = end
        d = min(d, end)
        if d > pos:
            out.append(_Area(pos, d, "zero", "table"))
        if d >= end:
            break
        h = min(os.lseek(memfd, d, os.SEEK_HOLE), end)
        out.append(_Area(d, h, "data", "table"))
        pos = h
    return out


def _stream_areas(s: PartitionStream) -> list[_Area]:
    end = s.start + s.size
    if s.header is None or s.bits is None:  # dd: the whole partition is data
        return [_Area(s.start, end, "data", "partition", s)] if s.size else []
    bs = s.header.block_size
    out: list[_Area] = []
    pos = s.start
    merge = max(1, MERGE_GAP // bs)
    for a, b in partclone.data_ranges(s.bits, s.header.total_blocks, merge):
        da, db = s.start + a * bs, min(s.start + b * bs, end)
        if da > pos:
            out.append(_Area(pos, da, "unused", "partition", s))
        if db > da:
            out.append(_Area(da, db, "data", "partition", s))
        pos = max(pos, db)
    if end > pos:
        out.append(_Area(pos, end, "unused", "partition", s))
    return out
