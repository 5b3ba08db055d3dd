"""One writer per machine.

The live image runs the app on tty1 and on the serial console at the same time; a
system-wide lock (``flock`` on ``/run/rescueui.lock``) keeps two instances from writing
disks at once. The lock file holds who has it (pid, tty, target, job, since), so the
second instance can tell the operator where the other one runs.

The kernel drops the lock when the holder dies (also on SIGKILL or power loss), so a
stale file never blocks: only a living holder does.

Restore and capture both take it (``job="restore"`` / ``job="capture"``). The lock file is
opened without following a symlink and must be a regular file (a link planted at its name
could otherwise make us truncate another file); the holder information is read from it
bounded and non-blocking, each field checked, and shown escaped
(:func:`~rescueui.core.text.safe_text`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rescueui.core.errors import LockError, RescueError
from rescueui.core.safefile import kind_of, read_regular
from rescueui.core.text import safe_text

DEFAULT_LOCK_PATH = Path("/run/rescueui.lock")
FALLBACK_LOCK_PATH = Path("/tmp/rescueui.lock")
HOLDER_LIMIT = 4096  # the holder line is ~150 bytes
FIELD_LIMIT = 512
# How the holder's job reads before its target: "running capture of /dev/sdb".
_JOB_PREPOSITION = {"capture": "of", "restore": "on"}


def default_lock_path() -> Path:
    """``$RESCUEUI_LOCK`` if set, else /run/rescueui.lock (or /tmp/... where /run is not writable)."""
    env = os.environ.get("RESCUEUI_LOCK")
    if env:
        return Path(env)
    if os.access(DEFAULT_LOCK_PATH.parent, os.W_OK):
        return DEFAULT_LOCK_PATH
    return FALLBACK_LOCK_PATH


def _tty() -> str | None:
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None and stream.isatty():
                return os.ttyname(stream.fileno())
    return None  # a service or script: the describe() line then names no terminal


@dataclass
class LockHolder:
    pid: int | None
    tty: str | None
    target: str | None
    job: str | None
    since: str | None

    def describe(self) -> str:
        """Who holds the lock, for the operator: "process 42 on /dev/ttyS0, running capture
        of /dev/sdb since 2024-05-01 10:00:00". Every part from the file is escaped."""
        head = []
        if self.pid:
            head.append(f"process {self.pid}")
        if self.tty:
            head.append(f"on {safe_text(self.tty)}")
        parts = [" ".join(head)] if head else []
        if self.job or self.target:
            job = safe_text(self.job) if self.job else "a job"
            prep = _JOB_PREPOSITION.get(self.job or "", "on")
            doing = f"running {job} {prep} {safe_text(self.target) if self.target else 'a disk'}"
            if self.since:
                doing += f" since {safe_text(self.since)}"
            parts.append(doing)
        elif self.since:
            parts.append(f"since {safe_text(self.since)}")
        return ", ".join(parts) or "another rescueui"


def _field_text(data: dict[str, Any], name: str) -> str | None:
    v = data.get(name)
    if isinstance(v, str) and v and len(v) <= FIELD_LIMIT:
        return v
    return None


def read_holder(path: str | Path | None = None) -> LockHolder | None:
    """Who holds (or last held) the lock, from the lock file; None if unknown.

    Only a regular file (no symlink followed, never blocks on a FIFO) of at most
    :data:`HOLDER_LIMIT` bytes is read; a field of the wrong type is left out.
    """
    p = Path(path) if path else default_lock_path()
    try:
        raw = read_regular(p, HOLDER_LIMIT, what="writer lock file")
        data = json.loads(raw or b"{}")
    except (OSError, RescueError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not data:
        return None
    pid = data.get("pid")
    return LockHolder(
        pid=pid if type(pid) is int and pid > 0 else None,
        tty=_field_text(data, "tty"),
        target=_field_text(data, "target"),
        job=_field_text(data, "job"),
        since=_field_text(data, "since"),
    )


def _open_lock_file(path: Path) -> int:
    """Open (or create) the lock file: never through a symlink, never blocking, and only if
    it is a regular file."""
    hint = (
        "Remove it (it is not a lock file rescueui made), or set RESCUEUI_LOCK to another "
        "path, then start again."
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            path,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
            0o644,
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(
                f"The writer lock {path} is a symbolic link; it is not followed, so no "
                "restore or capture can start.",
                hint=hint,
            ) from exc
        raise LockError(
            f"Cannot create the writer lock {path}: {exc.strerror}.",
            hint="Run as root, or set RESCUEUI_LOCK to a writable path.",
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LockError(
                f"The writer lock {path} is {kind_of(st.st_mode)}, not a regular file; no "
                "restore or capture can start.",
                hint=hint,
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class WriterLock:
    """The machine-wide writer lock. Use as a context manager or acquire()/release()."""

    def __init__(
        self, target: str = "", *, job: str = "restore", path: str | Path | None = None
    ) -> None:
        self.path = Path(path) if path else default_lock_path()
        self.target = target
        self.job = job
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> WriterLock:
        if self._fd is not None:
            return self
        fd = _open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            holder = read_holder(self.path)
            who = holder.describe() if holder else "another rescueui"
            raise LockError(
                f"Another rescueui is already restoring or capturing on this machine: {who} "
                f"(it holds the writer lock {self.path}).",
                hint="Wait for it to finish or stop it there; only one restore or capture "
                "may run at a time.",
            ) from exc
        except OSError as exc:
            os.close(fd)
            raise LockError(
                f"Cannot take the writer lock {self.path}: {exc.strerror}.",
                hint="Set RESCUEUI_LOCK to a path on a local filesystem (such as /run), "
                "then start again.",
            ) from exc
        info = {
            "pid": os.getpid(),
            "tty": _tty(),
            "target": self.target,
            "job": self.job,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        # Who holds it is for the other instance's message only: the flock is what counts,
        # so a full /run does not stop the job.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
