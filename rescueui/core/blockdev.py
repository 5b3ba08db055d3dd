"""Block-device primitives: size, sector sizes, zeroing, discard, aligned buffers.

Everything here works on a block device *or* a regular file (disk image files
used by the demo and by tests without root): files report their ``st_size`` and
512-byte sectors, and zeroing falls back to punching holes or writing zeros.

These are thin wrappers over ioctls; callers own the file descriptors and the
safety rules (only a confirmed target is ever opened for writing).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from rescueui.core.errors import DiskError
from rescueui.core.tools import find_tool

# <linux/fs.h>
BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t)
BLKSSZGET = 0x1268  # _IO(0x12, 104): logical sector size (int)
BLKPBSZGET = 0x127B  # _IO(0x12, 123): physical sector size (unsigned int)
BLKDISCARD = 0x1277  # _IO(0x12, 119): uint64[2] {start, length}
BLKZEROOUT = 0x127F  # _IO(0x12, 127): uint64[2] {start, length}
BLKFLSBUF = 0x1261  # _IO(0x12, 97)

# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

PAGE_SIZE = mmap.PAGESIZE
ZERO_WRITE_SIZE = 4 * 1024 * 1024

_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        _libc.fallocate.restype = ctypes.c_int
    return _libc


FdOrPath = int | str | Path


class _Opened:
    """Context manager giving an fd for ``fd_or_path`` (opened read-only if it is a path)."""

    def __init__(self, fd_or_path: FdOrPath) -> None:
        self.src = fd_or_path
        self.fd = -1
        self.owned = False

    def __enter__(self) -> int:
        if isinstance(self.src, int):
            self.fd = self.src
        else:
            try:
                self.fd = os.open(os.fspath(self.src), os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise DiskError(
                    f"Cannot open {self.src}: {exc.strerror}.",
                    hint="Check that the device or file exists and that you are root.",
                ) from exc
            self.owned = True
        return self.fd

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            os.close(self.fd)


def is_block_device(fd_or_path: FdOrPath) -> bool:
    st = os.fstat(fd_or_path) if isinstance(fd_or_path, int) else os.stat(fd_or_path)
    return stat.S_ISBLK(st.st_mode)


def device_size(fd_or_path: FdOrPath) -> int:
    """Size in bytes of a block device (BLKGETSIZE64) or a regular file (st_size)."""
    with _Opened(fd_or_path) as fd:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
            return int(struct.unpack("Q", buf)[0])
        if stat.S_ISREG(st.st_mode):
            return st.st_size
        raise DiskError(
            f"{fd_or_path} is neither a block device nor a regular file.",
            hint="Choose a disk (e.g. /dev/sda) or a disk image file.",
        )


def _int_ioctl(fd: int, request: int) -> int:
    buf = fcntl.ioctl(fd, request, b"\0" * 4)
    return int(struct.unpack("I", buf)[0])


def logical_sector_size(fd_or_path: FdOrPath) -> int:
    """Logical sector size (BLKSSZGET); 512 for regular files."""
    with _Opened(fd_or_path) as fd:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            return 512
        return _int_ioctl(fd, BLKSSZGET)


def physical_sector_size(fd_or_path: FdOrPath) -> int:
    """Physical sector size (BLKPBSZGET); 512 for regular files."""
    with _Opened(fd_or_path) as fd:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            return 512
        return _int_ioctl(fd, BLKPBSZGET)


def aligned_buffer(size: int) -> mmap.mmap:
    """A zero-filled, page-aligned, writable buffer (anonymous mmap), usable with O_DIRECT.

    ``size`` is rounded up to a whole number of pages. Use ``memoryview(buf)[:n]``
    for partial views; ``os.preadv(fd, [buf], off)`` reads straight into it.
    """
    if size <= 0:
        raise ValueError("buffer size must be positive")
    rounded = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    return mmap.mmap(-1, rounded, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    libc = _get_libc()
    if libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


_zero_buf: mmap.mmap | None = None


def _write_zeros(fd: int, offset: int, length: int) -> None:
    """Write zeros with pwrite from a page-aligned zero buffer (works with O_DIRECT fds)."""
    global _zero_buf
    if _zero_buf is None:
        _zero_buf = aligned_buffer(ZERO_WRITE_SIZE)
    view = memoryview(_zero_buf)
    pos, end = offset, offset + length
    while pos < end:
        n = min(ZERO_WRITE_SIZE, end - pos)
        written = os.pwritev(fd, [view[:n]], pos)
        if written <= 0:
            raise OSError(errno.EIO, f"short write at offset {pos}")
        pos += written


def zero_range(fd: int, offset: int, length: int) -> str:
    """Make ``length`` bytes at ``offset`` read back as zeros, as cheaply as the target allows.

    Block device: BLKZEROOUT (the kernel uses WRITE ZEROES / discard-zeroing where
    the device supports it, writes otherwise); if the ioctl is refused, plain writes.
    Regular file: punch a hole (keeping the size), or FALLOC_FL_ZERO_RANGE, else writes;
    a range beyond the end of the file extends the file (the new bytes are zeros).
    Returns the method used: "blkzeroout", "punch-hole", "zero-range", "extend" or "write".
    """
    if length <= 0:
        return "none"
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        try:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", offset, length))
            return "blkzeroout"
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
                raise
        _write_zeros(fd, offset, length)
        return "write"
    size = st.st_size
    end = offset + length
    method = "extend"
    if offset < size:
        inside = min(end, size) - offset
        for mode, name in (
            (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "punch-hole"),
            (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "zero-range"),
        ):
            try:
                _fallocate(fd, mode, offset, inside)
                method = name
                break
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        else:
            _write_zeros(fd, offset, inside)
            method = "write"
    if end > size:
        os.ftruncate(fd, end)
    return method


def discard(fd: int, offset: int, length: int) -> bool:
    """Tell the device the range is unused (BLKDISCARD; punch hole on files).

    Returns False when the device does not support it. Discarded blocks need not
    read back as zeros: use :func:`zero_range` when zeros are required.
    """
    if length <= 0:
        return True
    if is_block_device(fd):
        try:
            fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", offset, length))
            return True
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
                return False
            raise
    try:
        _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise


def flush_buffers(fd: int) -> None:
    """Drop the page cache of a block device (BLKFLSBUF); a no-op on files."""
    if is_block_device(fd):
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
        except OSError:
            pass


def open_direct_read(path: str | Path, *, exclusive: bool = False) -> tuple[int, bool]:
    """Open ``path`` read-only, with O_DIRECT where the kernel accepts it.

    Returns ``(fd, direct)``. Regular files on tmpfs refuse O_DIRECT; then the
    fd is a normal buffered one. ``exclusive``: a block device is claimed with ``O_EXCL``
    (nobody may mount it or open it exclusively meanwhile; EBUSY if it is in use).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_EXCL if exclusive else 0)
    try:
        return os.open(os.fspath(path), flags | os.O_DIRECT), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return os.open(os.fspath(path), flags), False


def tell_kernel_partitions(path: str | Path) -> None:
    """Make the kernel re-read ``path``'s partitions (BLKPG via partx, then udev settle)."""
    from rescueui.core.parttable import tell_kernel

    tell_kernel(path)


MIN_HOLE = 64 * 1024  # smaller holes of a sparse file are read as data (bounds the list)
MAX_DATA_RANGES = 200_000


def file_data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """The ranges ``[start, end)`` of a regular file that hold data (SEEK_DATA/SEEK_HOLE);
    the rest are holes, which read as zeros without being stored. Holes smaller than
    :data:`MIN_HOLE` count as data, and the threshold grows until the list is bounded.
    A filesystem without SEEK_HOLE: one range, all data."""
    min_hole = MIN_HOLE
    while True:
        data = _data_ranges(fd, size, min_hole)
        if len(data) <= MAX_DATA_RANGES:
            return data
        min_hole *= 4


def _data_ranges(fd: int, size: int, min_hole: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            a = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos; EINVAL: no support -> all data
            if pos == 0 and not ranges:
                try:
                    os.lseek(fd, 0, os.SEEK_HOLE)
                except OSError:
                    return [(0, size)]
            break
        if a >= size:
            break
        try:
            b = min(os.lseek(fd, a, os.SEEK_HOLE), size)
        except OSError:
            b = size
        if ranges and a - ranges[-1][1] < min_hole:
            ranges[-1] = (ranges[-1][0], b)
        else:
            ranges.append((a, b))
        if len(ranges) > MAX_DATA_RANGES and min_hole < size:
            return ranges  # the caller retries with a larger threshold
        pos = b
    return ranges


@contextlib.contextmanager
def range_device(source: str, start: int, size: int, *, read_only: bool) -> Iterator[str]:
    """A loop device over bytes ``[start, start + size)`` of ``source`` (a block device or
    a file): how a tool that wants a device of its own reaches one partition here, where
    the kernel has no partition parsers. Detached on exit; :class:`DiskError` if it cannot
    be attached."""
    if start < 0 or size <= 0:
        raise ValueError(f"bad range: start {start}, size {size}")
    losetup = find_tool("losetup")
    if losetup is None:
        raise DiskError(
            "The program 'losetup' is not installed.",
            hint="It is part of util-linux; install it (it is in the live image).",
        )
    cmd = [losetup, "--find", "--show", *(["--read-only"] if read_only else [])]
    cmd += ["--offset", str(start), "--sizelimit", str(size), source]
    env = dict(os.environ, LC_ALL="C")
    err = ""
    dev = ""
    for _ in range(5):  # --find can race with another program attaching a loop device
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, errors="replace", timeout=60, env=env
            )
        except subprocess.TimeoutExpired:
            err = "losetup did not answer in 60 s"
            break
        dev = proc.stdout.strip()
        if proc.returncode == 0 and dev.startswith("/dev/"):
            break
        err = proc.stderr.strip() or f"losetup failed (exit status {proc.returncode})"
        dev = ""
        if not Path(source).exists():
            break
        time.sleep(0.2)
    if not dev:
        raise DiskError(
            f"Cannot make a {'read-only ' if read_only else ''}device for bytes "
            f"{start}-{start + size} of {source}: {err}.",
            hint="Check that it is readable and that loop devices are available.",
        )
    try:
        yield dev
    finally:
        detach_loop(dev)


def detach_loop(dev: str, *, wait: float = 10.0) -> bool:
    """Detach loop device ``dev`` and wait until the kernel has let it go. ``losetup -d``
    of a device that is still open (udev probing it, a last reader) only marks it to be
    cleared on the last close, so the device stays attached for a moment after it
    returns. True when it is gone within ``wait`` seconds."""
    losetup = find_tool("losetup") or "losetup"
    name = os.path.basename(dev)
    attached = Path("/sys/block") / name / "loop"
    deadline = time.monotonic() + wait
    while True:
        subprocess.run(
            [losetup, "-d", dev], capture_output=True, check=False, env=dict(os.environ, LC_ALL="C")
        )
        if not attached.exists():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
