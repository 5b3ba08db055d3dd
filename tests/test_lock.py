"""One writer per machine: the second instance is refused and told who holds the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rescueui.core.errors import LockError
from rescueui.core.lock import WriterLock, read_holder


def test_second_lock_in_same_process_refused(tmp_path: Path) -> None:
    path = tmp_path / "rescueui.lock"
    with WriterLock("/dev/sdb", path=path) as first:
        assert first.held
        holder = read_holder(path)
        assert holder is not None and holder.pid == os.getpid() and holder.target == "/dev/sdb"
        with pytest.raises(LockError) as err:
            WriterLock("/dev/sdc", path=path).acquire()
        msg = str(err.value)
        assert f"process {os.getpid()}" in msg
        assert "running restore on /dev/sdb" in msg and str(path) in msg
    # Released: the next one gets it.
    with WriterLock("/dev/sdc", path=path):
        assert read_holder(path).target == "/dev/sdc"  # type: ignore[union-attr]
    assert read_holder(path) is None


def test_lock_held_by_another_process_then_freed_when_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "rescueui.lock"
    code = (
        "import sys, time\n"
        "from rescueui.core.lock import WriterLock\n"
        f"lock = WriterLock('/dev/loop9', job='capture', path={str(path)!r}).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LockError) as err:
            WriterLock("/dev/loop8", path=path).acquire()
        assert f"process {proc.pid}" in str(err.value)
        assert "running capture of /dev/loop9" in str(err.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # SIGKILL left the file behind, but the kernel dropped the lock.
    deadline = time.monotonic() + 5
    while True:
        try:
            lock = WriterLock("/dev/loop8", path=path).acquire()
            break
        except LockError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    lock.release()


def test_env_overrides_lock_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path / "x.lock"))
    lock = WriterLock("t")
    assert lock.path == tmp_path / "x.lock"
