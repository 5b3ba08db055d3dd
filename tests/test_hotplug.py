"""The hotplug watcher against real udev: loop disks attached and detached while it runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from rescueui.core.hotplug import DiskEvent, DiskWatcher
from tests.loopdisk import LoopFactory

pytestmark = [pytest.mark.root, pytest.mark.udev, pytest.mark.timeout(60)]

DOS = "label: dos\nstart=2048, size=10240, type=83\ntype=83\n"


class Recorder:
    def __init__(self) -> None:
        self.events: list[DiskEvent] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, event: DiskEvent) -> None:
        with self._cond:
            self.events.append(event)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[DiskEvent], bool], timeout: float = 5.0) -> DiskEvent:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event within {timeout}s; got {self.events}")
                self._cond.wait(left)


def test_attach_and_detach_loop_disk_reported(loops: LoopFactory) -> None:
    rec = Recorder()
    watcher = DiskWatcher(rec)
    watcher.start()
    try:
        t0 = time.monotonic()
        loop = loops.create(16, table=DOS)
        path, p1, p2 = loop.path, loop.part(1), loop.part(2)
        added = rec.wait_for(lambda e: e.action == "add" and e.path == path)
        assert added.kind == "disk" and added.size_bytes == 16 * 1024 * 1024
        for part in (p1, p2):
            e = rec.wait_for(lambda e, part=part: e.action == "add" and e.path == part)
            assert e.kind == "partition" and e.size_bytes > 0
        assert time.monotonic() - t0 < 5
        seen = len(rec.events)
        t1 = time.monotonic()
        loops.remove(loop)
        for part in (p1, p2):
            e = rec.wait_for(lambda e, part=part: e.action == "remove" and e.path == part)
            assert e.kind == "partition"
        gone = rec.wait_for(lambda e: e.action == "remove" and e.path == path)
        assert gone.kind == "disk" and gone.devnum == added.devnum
        assert rec.events.index(gone) >= seen
        assert time.monotonic() - t1 < 5
        assert rec.threads == {"disk-watcher"}  # callbacks come from the watcher's thread
    finally:
        t2 = time.monotonic()
        watcher.stop()
        stop_took = time.monotonic() - t2
    assert not watcher.running
    assert stop_took < 1.0


def test_run_blocks_until_cancel(loops: LoopFactory) -> None:
    rec = Recorder()
    watcher = DiskWatcher(rec)
    cancel = threading.Event()
    listening = threading.Event()
    thread = threading.Thread(
        target=watcher.run, args=(cancel,), kwargs={"listening": listening}, name="disk-watcher"
    )
    thread.start()
    try:
        assert listening.wait(5), "the watcher never started listening"
        loop = loops.create(8)
        rec.wait_for(lambda e: e.action == "add" and e.path == loop.path)
    finally:
        t0 = time.monotonic()
        cancel.set()
        thread.join(2)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 1.0


def test_failing_callback_does_not_kill_the_watcher(loops: LoopFactory) -> None:
    rec = Recorder()

    def callback(event: DiskEvent) -> None:
        rec(event)
        raise RuntimeError("consumer bug")

    with DiskWatcher(callback) as watcher:
        first = loops.create(8)
        rec.wait_for(lambda e: e.path == first.path and e.action == "add")
        second = loops.create(8)
        rec.wait_for(lambda e: e.path == second.path and e.action == "add")
        assert watcher.running
    assert not watcher.running
