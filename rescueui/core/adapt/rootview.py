"""Reading an installed system's files from outside it, without trusting it.

A restored (or captured) system is untrusted input: its ``/etc/os-release`` may be a
symlink to ``/usr/lib/os-release`` (fine) or to ``/dev/zero`` or ``../../../etc/shadow`` of
the rescue system (not fine). :class:`RootView` resolves every path *inside* the system's
root: absolute link targets are re-rooted, ``..`` never climbs above the root, at most
:data:`MAX_LINKS` links are followed, and only regular files of bounded size are read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rescueui.core.errors import RescueError
from rescueui.core.safefile import read_regular

MAX_LINKS = 40
MAX_FILE_BYTES = 4 << 20  # a config file; more is not a config file


@dataclass(frozen=True)
class RootView:
    """The files of an installed system mounted at ``root`` (read only through here)."""

    root: Path

    def resolve(self, path: str) -> Path | None:
        """The host path of ``path`` (absolute inside the system), links followed inside the
        root; ``None`` when a link loops, runs too long, or a component is missing."""
        parts = list(PurePosixPath("/", path).parts[1:])
        done: list[str] = []
        links = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            host = self.root.joinpath(*done, part)
            try:
                st = os.lstat(host)
            except OSError:
                return None
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_LINKS:
                    return None
                try:
                    target = os.readlink(host)
                except OSError:
                    return None
                if target.startswith("/"):
                    done = []
                parts = list(PurePosixPath(target).parts) + parts
                if parts and parts[0] == "/":
                    parts.pop(0)
                continue
            done.append(part)
        return self.root.joinpath(*done)

    def _mode(self, path: str) -> int:
        host = self.resolve(path)
        try:
            return os.lstat(host).st_mode if host is not None else 0
        except OSError:
            return 0

    def is_file(self, path: str) -> bool:
        return stat.S_ISREG(self._mode(path))

    def is_dir(self, path: str) -> bool:
        return stat.S_ISDIR(self._mode(path))

    def read_bytes(self, path: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
        """A regular file's bytes (``None``: missing, not a regular file, or too large)."""
        host = self.resolve(path)
        if host is None:
            return None
        try:
            return read_regular(host, limit, what="file of the restored system")
        except (RescueError, OSError):
            return None

    def read_text(self, path: str, limit: int = MAX_FILE_BYTES) -> str | None:
        data = self.read_bytes(path, limit)
        return None if data is None else data.decode("utf-8", errors="replace")

    def lines(self, path: str) -> Iterator[tuple[int, str]]:
        """(line number from 1, line without its newline) of a text file; nothing if absent."""
        text = self.read_text(path)
        if text is not None:
            yield from enumerate(text.splitlines(), start=1)

    def listdir(self, path: str, limit: int = 4096) -> list[str]:
        """Entry names of a directory, sorted (at most ``limit``; none if not a directory)."""
        host = self.resolve(path)
        if host is None:
            return []
        try:
            fd = os.open(host, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return []
        try:
            names = sorted(os.listdir(fd))
        except OSError:
            return []
        finally:
            os.close(fd)
        return names[:limit]

    def host_path(self, path: str) -> Path:
        """Where ``path`` lies on the host, without following anything (for writing a file
        the caller has resolved and checked)."""
        return self.root.joinpath(*PurePosixPath("/", path).parts[1:])
