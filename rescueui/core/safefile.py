"""Files the program reads from untrusted places and files it writes next to an image.

One place for the rules (issue: hostile input):

* a file that is *read* (manifest, chunk index, journal, configuration) must be a regular
  file, reached without following a symlink in its last component, opened without
  blocking (a FIFO or device in its place never hangs the program), and read with a size
  limit: :func:`read_regular`, :func:`open_regular`;
* a file that is *written* (journal, report, temporary file) is created inside a folder
  opened without following symlinks, with ``O_EXCL | O_NOFOLLOW``, and put in place by a
  rename inside that folder, so it can never land outside the folder it belongs to nor
  write through a planted symlink: :class:`SafeDir`.

Errors are :class:`UnsafeFileError` (a :class:`RescueError`) naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from rescueui.core.errors import RescueError


class UnsafeFileError(RescueError):
    """A file is not what it must be (symlink, FIFO, device, too large, unreadable)."""


_KIND_WORDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symbolic link",
}


def kind_of(mode: int) -> str:
    """What a file is, in words (for messages)."""
    return _KIND_WORDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: str | Path, *, what: str = "file") -> int:
    """Open ``path`` read-only; the descriptor is guaranteed to be a regular file.

    Never blocks (``O_NONBLOCK``: a FIFO in its place is refused, not waited on) and never
    follows a symlink in the last component. Raises :class:`UnsafeFileError` or
    :class:`FileNotFoundError` (left to the caller, which knows what a missing file means).
    """
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(
                f"The {what} {p} is a symbolic link; it is not followed.",
                hint="Replace the link by the real file, or point to the real file.",
            ) from exc
        raise UnsafeFileError(
            f"Cannot open the {what} {p}: {exc.strerror}.",
            hint="Check the file and its permissions.",
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(
                f"The {what} {p} is {kind_of(st.st_mode)}, not a regular file; it is not read.",
                hint="Replace it by the real file.",
            )
        # Reading must block normally from here on (a regular file never really blocks).
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | Path, limit: int, *, what: str = "file") -> bytes:
    """The whole content of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    fd = open_regular(path, what=what)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UnsafeFileError(
                f"The {what} {path} is {size} bytes, more than the {limit} bytes such a file "
                "can be; it is not read.",
                hint="It is damaged or not what its name says; use an intact copy.",
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            # One byte beyond the limit tells a file that grew while it was read.
            data = os.read(fd, min(1 << 20, limit + 1 - total))
            if not data:
                break
            chunks.append(data)
            total += len(data)
            if total > limit:
                raise UnsafeFileError(
                    f"The {what} {path} grew beyond {limit} bytes while it was read.",
                    hint="Make sure nothing else writes to it, then try again.",
                )
        return b"".join(chunks)
    except OSError as exc:
        raise UnsafeFileError(
            f"Cannot read the {what} {path}: {exc.strerror}.",
            hint="Check the medium; it may be failing.",
        ) from exc
    finally:
        os.close(fd)


class SafeDir:
    """A folder opened without following symlinks; files are created inside it only.

    ``SafeDir.open(path)`` refuses a path whose last component is a symlink. With
    ``create=True`` the folder is made first (its parent must exist). Use as a context
    manager, or :meth:`close`.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: str | Path, *, create: bool = False, mode: int = 0o755) -> SafeDir:
        p = Path(os.path.abspath(os.fspath(path)))
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(p, mode)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                with contextlib.suppress(OSError):
                    if os.path.islink(p):
                        raise UnsafeFileError(
                            f"{p} is a symbolic link; nothing is written through it.",
                            hint="Remove the link; the folder it stands for must be a real folder.",
                        ) from exc
            raise
        return cls(p, fd)

    def subdir(self, name: str, *, create: bool = True, mode: int = 0o755) -> SafeDir:
        """A folder directly inside this one (never through a symlink)."""
        _check_name(name)
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=self.fd)
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd
            )
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeFileError(
                    f"{self.path / name} is not a real folder (a symbolic link or a file); "
                    "nothing is written through it.",
                    hint="Remove it or rename it, then try again.",
                ) from exc
            raise
        return SafeDir(self.path / name, fd)

    def exists(self, name: str) -> bool:
        """Whether a directory entry ``name`` exists (a symlink counts, and is not followed)."""
        _check_name(name)
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def create(self, name: str, data: bytes, *, mode: int = 0o644, sync: bool = True) -> Path:
        """Create a new file ``name`` holding ``data``; FileExistsError if anything is there."""
        _check_name(name)
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode,
            dir_fd=self.fd,
        )
        try:
            _write_all(fd, data)
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.fd)
            raise
        os.close(fd)
        return self.path / name

    def replace(self, name: str, data: bytes, *, mode: int = 0o644, tmp: str | None = None) -> Path:
        """Atomically put ``data`` at ``name``: a new temporary file (O_EXCL) in this folder,
        fsync, rename over ``name``, fsync the folder. A symlink at ``name`` is replaced,
        never written through. ``tmp``: a fixed temporary name (whatever is there is removed
        first, a link included, never followed); default a fresh random one."""
        _check_name(name)
        if tmp is None:
            tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        else:
            self.unlink(tmp)
        self.create(tmp, data, mode=mode)
        try:
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        self.sync()
        return self.path / name

    def read(self, name: str, limit: int, *, what: str = "file") -> bytes:
        """Read a regular file directly inside this folder (see :func:`read_regular`)."""
        _check_name(name)
        return read_regular(f"/proc/self/fd/{self.fd}/{name}", limit, what=what)

    def unlink(self, name: str) -> None:
        _check_name(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def sync(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a plain file name: {name!r}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
