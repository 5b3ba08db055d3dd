"""One read-only file served through FUSE, from a function that reads its bytes.

The kernel here has FUSE and loop devices but no NBD, ublk or device-mapper: to mount a
filesystem that lies inside an image (a partition of our format, decompressed chunk by chunk
on demand), its bytes are served as a regular file by this process (the FUSE protocol spoken
on ``/dev/fuse``, no library), a read-only loop device goes over that file, and the
filesystem is mounted from the loop device.

The mount point is itself a regular file (the root of the FUSE filesystem is the file), like
``qemu-storage-daemon --export type=fuse``. Only what a read-only file needs is answered
(INIT, GETATTR, OPEN, READ, RELEASE, FLUSH, STATFS, FORGET, INTERRUPT, DESTROY); every other
request gets ENOSYS or EROFS. The serving loop ends when the file is unmounted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Callable

from rescueui.core.errors import RescueError

FUSE_GETATTR = 3
FUSE_FORGET = 2
FUSE_SETATTR = 4
FUSE_OPEN = 14
FUSE_READ = 15
FUSE_WRITE = 16
FUSE_STATFS = 17
FUSE_RELEASE = 18
FUSE_FSYNC = 20
FUSE_FLUSH = 25
FUSE_INIT = 26
FUSE_ACCESS = 34
FUSE_INTERRUPT = 36
FUSE_DESTROY = 38
FUSE_BATCH_FORGET = 42

NO_REPLY = (FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT)

FUSE_ASYNC_READ = 1 << 0
FUSE_BIG_WRITES = 1 << 5
FUSE_ASYNC_DIO = 1 << 15
FUSE_MAX_PAGES = 1 << 22

MAX_PAGES = 256  # 1 MiB per READ request
BUFFER = (MAX_PAGES + 1) * 4096 + 4096  # the kernel wants room for a full request

IN_HEADER = struct.Struct("<IIQQIIII")  # len opcode unique nodeid uid gid pid padding
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr (88 bytes)
ATTR_OUT_HEAD = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy
OPEN_OUT = struct.Struct("<QII")  # fh open_flags padding
READ_IN = struct.Struct("<QQII")  # fh offset size read_flags (then lock_owner, flags)
STATFS_OUT = struct.Struct("<QQQQQIIII6I")

FOPEN_KEEP_CACHE = 1 << 1


class FuseError(RescueError):
    """The FUSE file could not be set up."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(mountpoint: str, fd: int, *, size_hint: str = "rescueui-view") -> None:
    """Mount the FUSE connection ``fd`` (an open ``/dev/fuse``) on the regular file
    ``mountpoint``, read-only, only for root."""
    libc = _libc()
    opts = f"fd={fd},rootmode=100444,user_id=0,group_id=0,default_permissions"
    ms_rdonly, ms_nosuid, ms_nodev = 1, 2, 4
    rc = libc.mount(
        size_hint.encode(),
        mountpoint.encode(),
        b"fuse.rescueui",
        ctypes.c_ulong(ms_rdonly | ms_nosuid | ms_nodev),
        opts.encode(),
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise FuseError(
            f"Cannot mount the image view on {mountpoint}: {os.strerror(err)}.",
            hint="The image view needs FUSE (/dev/fuse) and root.",
        )


def unmount(mountpoint: str) -> bool:
    """Detach the FUSE file (lazily: a loop device still open on it keeps it until it is
    detached). True if it was mounted."""
    libc = _libc()
    mnt_detach = 2
    return libc.umount2(mountpoint.encode(), mnt_detach) == 0


def serve(
    fd: int,
    size: int,
    read_at: Callable[[int, int], bytes],
    *,
    mtime: int = 0,
    threads: int = 2,
) -> None:
    """Answer the kernel's requests on ``fd`` until the file is unmounted: a read-only
    regular file of ``size`` bytes whose content ``read_at(offset, length)`` gives (it may
    return fewer bytes only at the end of the file; an OSError or RescueError it raises is
    sent as EIO). ``threads`` answer at once (decompression and hashing release the GIL)."""
    import threading

    workers = [
        threading.Thread(target=_loop, args=(fd, size, read_at, mtime), daemon=True)
        for _ in range(max(1, threads) - 1)
    ]
    for w in workers:
        w.start()
    _loop(fd, size, read_at, mtime)
    for w in workers:
        w.join(timeout=5)


def _loop(fd: int, size: int, read_at: Callable[[int, int], bytes], mtime: int) -> None:
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    while True:
        try:
            n = os.readv(fd, [view])
        except OSError as exc:
            if exc.errno == errno.ENODEV:  # unmounted
                return
            if exc.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                continue  # ENOENT: the request was interrupted meanwhile
            raise
        if n < IN_HEADER.size:
            continue
        length, opcode, unique, _node, _uid, _gid, _pid, _pad = IN_HEADER.unpack_from(buf, 0)
        body = view[IN_HEADER.size : length]
        if opcode in NO_REPLY:
            continue
        try:
            payload = _answer(opcode, body, size, mtime, read_at)
            error = 0
        except _Errno as e:
            payload, error = b"", -e.code
        except (OSError, RescueError) as exc:
            payload, error = b"", -errno.EIO
            _report(exc)
        head = OUT_HEADER.pack(OUT_HEADER.size + len(payload), error, unique)
        try:
            os.writev(fd, [head, payload])
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return
            if exc.errno != errno.ENOENT:  # ENOENT: the request was interrupted
                raise
        if opcode == FUSE_DESTROY:
            return


_REPORTED = [0]
MAX_REPORTED = 20


def _report(exc: BaseException) -> None:
    """A read that failed (sent to the kernel as an I/O error): said on stderr, where the
    parent finds the first one; only the first few (a damaged chunk is read many times)."""
    import sys

    _REPORTED[0] += 1
    if _REPORTED[0] <= MAX_REPORTED:
        print(f"rescueui view: {exc}", file=sys.stderr, flush=True)


class _Errno(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _attr(size: int, mtime: int) -> bytes:
    blocks = (size + 511) // 512
    mode = 0o100444
    return ATTR.pack(1, size, blocks, mtime, mtime, mtime, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)


def _answer(
    opcode: int, body: memoryview, size: int, mtime: int, read_at: Callable[[int, int], bytes]
) -> bytes:
    if opcode == FUSE_INIT:
        major, minor, max_readahead, flags = INIT_IN.unpack_from(body, 0)
        if major != 7:
            raise _Errno(errno.EPROTO)
        want = flags & (FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_ASYNC_DIO)
        return INIT_OUT.pack(
            7, min(minor, 31), max_readahead, want, 16, 12, MAX_PAGES * 4096, 1, MAX_PAGES,
            0, 0, *([0] * 7),
        )  # fmt: skip
    if opcode == FUSE_GETATTR:
        return ATTR_OUT_HEAD.pack(3600, 0, 0) + _attr(size, mtime)
    if opcode == FUSE_OPEN:
        flags = struct.unpack_from("<I", body, 0)[0]
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise _Errno(errno.EROFS)
        return OPEN_OUT.pack(1, FOPEN_KEEP_CACHE, 0)
    if opcode == FUSE_READ:
        _fh, offset, length, _rf = READ_IN.unpack_from(body, 0)
        if offset >= size:
            return b""
        return read_at(offset, min(length, size - offset))
    if opcode in (FUSE_RELEASE, FUSE_FLUSH, FUSE_FSYNC, FUSE_DESTROY):
        return b""
    if opcode == FUSE_ACCESS:
        mask = struct.unpack_from("<I", body, 0)[0]
        if mask & 2:  # W_OK
            raise _Errno(errno.EROFS)
        return b""
    if opcode == FUSE_STATFS:
        return STATFS_OUT.pack((size + 4095) // 4096, 0, 0, 1, 0, 4096, 255, 4096, 0, *([0] * 6))
    if opcode in (FUSE_SETATTR, FUSE_WRITE):
        raise _Errno(errno.EROFS)
    raise _Errno(errno.ENOSYS)
