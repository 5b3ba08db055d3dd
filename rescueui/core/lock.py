"""One writer per machine.

The live image runs the app on tty1 and on the serial console at the same time; a
system-wide lock (``flock`` on ``/run/rescueui.lock``) keeps two instances from writing
disks at once. The lock file holds who has it (pid, tty, target, job, since), so the
second instance can tell the operator where the other one runs.

The kernel drops the lock when the holder dies (also on SIGKILL or power loss), so a
stale file never blocks: only a living holder does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rescueui.core.errors import LockError

DEFAULT_LOCK_PATH = Path("/run/rescueui.lock")
FALLBACK_LOCK_PATH = Path("/tmp/rescueui.lock")


def default_lock_path() -> Path:
    """``$RESCUEUI_LOCK`` if set, else /run/rescueui.lock (or /tmp/... where /run is not writable)."""
    env = os.environ.get("RESCUEUI_LOCK")
    if env:
        return Path(env)
    if os.access(DEFAULT_LOCK_PATH.parent, os.W_OK):
        return DEFAULT_LOCK_PATH
    return FALLBACK_LOCK_PATH


def _tty() -> str:
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None and stream.isatty():
                return os.ttyname(stream.fileno())
    return "no terminal"


@dataclass
class LockHolder:
    pid: int | None
    tty: str | None
    target: str | None
    job: str | None
    since: str | None

    def describe(self) -> str:
        bits = []
        if self.pid:
            bits.append(f"process {self.pid}")
        if self.tty:
            bits.append(f"on {self.tty}")
        if self.job or self.target:
            bits.append(f"running {self.job or 'a job'} on {self.target or 'a disk'}")
        if self.since:
            bits.append(f"since {self.since}")
        return " ".join(bits) or "another rescueui"


def read_holder(path: str | Path | None = None) -> LockHolder | None:
    """Who holds (or last held) the lock, from the lock file; None if unknown."""
    p = Path(path) if path else default_lock_path()
    try:
        data: dict[str, Any] = json.loads(p.read_text() or "{}")
    except (OSError, ValueError):
        return None
    if not data:
        return None
    return LockHolder(
        pid=data.get("pid"),
        tty=data.get("tty"),
        target=data.get("target"),
        job=data.get("job"),
        since=data.get("since"),
    )


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LockError(
                f"Cannot create the writer lock {self.path}: {exc.strerror}.",
                hint="Run as root, or set RESCUEUI_LOCK to a writable path.",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            holder = read_holder(self.path)
            who = holder.describe() if holder else "another rescueui"
            raise LockError(
                f"Another rescueui is already writing on this machine: {who}.",
                hint="Wait for it to finish or stop it there; only one restore or capture "
                "may run at a time.",
            ) from exc
        info = {
            "pid": os.getpid(),
            "tty": _tty(),
            "target": self.target,
            "job": self.job,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
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
