"""Disks and partitions appearing, changing and disappearing, as udev reports them.

:class:`DiskWatcher` listens to udev's netlink monitor (subsystem ``block``) and
calls ``callback(DiskEvent)`` for every disk or partition event. It runs in a
daemon thread (:meth:`DiskWatcher.start` / :meth:`DiskWatcher.stop`) or blocks
in the caller's thread (:meth:`DiskWatcher.run` with a cancel event); either way
it stops within about half a second of being asked.

The callback runs in the watcher's thread: a TUI posts a message from it, it
must not touch widgets directly.

Devices that always exist but may be empty (loop devices, card readers, optical
drives) send ``change`` when media arrives or leaves; the watcher tracks their
size and reports those as ``add`` and ``remove``, so a loop disk being attached
or detached reads like a USB stick being plugged in or pulled. Empty devices
(size 0), ``ram*`` and ``zram*`` are not reported, matching :func:`scan_disks`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyudev

DevNum = tuple[int, int]

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
_IGNORED_PREFIXES = ("ram", "zram")


@dataclass(frozen=True)
class DiskEvent:
    action: str  # "add" | "remove" | "change"
    kind: str  # "disk" | "partition"
    path: str  # /dev/sdb, /dev/sdb1
    devnum: DevNum
    size_bytes: int = 0  # 0 on remove

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def _size_bytes(sys_path: str) -> int:
    try:
        with open(Path(sys_path) / "size") as f:
            return int(f.read().strip()) * 512
    except (OSError, ValueError):
        return 0


class DiskWatcher:
    """Watches udev for block devices; ``callback`` gets a :class:`DiskEvent` per change."""

    def __init__(self, callback: Callable[[DiskEvent], None]) -> None:
        self.callback = callback
        self._context = pyudev.Context()
        self._monitor: pyudev.Monitor | None = None
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._present: set[str] = set()  # sys paths of disks/partitions seen with a size > 0

    # -- lifecycle ---------------------------------------------------------------------------

    def _open(self) -> pyudev.Monitor:
        """Start listening (before the first scan returns, so no event falls between)."""
        monitor = pyudev.Monitor.from_netlink(self._context)
        monitor.filter_by("block")
        monitor.start()
        self._present = {
            dev.sys_path
            for dev in self._context.list_devices(subsystem="block")
            if dev.device_type in ("disk", "partition") and _size_bytes(dev.sys_path) > 0
        }
        return monitor

    def start(self) -> None:
        """Listen in a daemon thread. Events after ``start()`` returns are never missed."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._cancel = threading.Event()
        self._monitor = self._open()
        self._thread = threading.Thread(
            target=self._loop, args=(self._monitor, self._cancel), name="disk-watcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop listening; returns once the thread has ended (within about POLL_SECONDS)."""
        self._cancel.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, cancel: threading.Event, *, listening: threading.Event | None = None) -> None:
        """Listen in the calling thread until ``cancel`` is set.

        ``listening`` is set once the monitor is open: events from then on are reported.
        """
        monitor = self._open()
        if listening is not None:
            listening.set()
        self._loop(monitor, cancel)

    def __enter__(self) -> DiskWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self, monitor: pyudev.Monitor, cancel: threading.Event) -> None:
        try:
            while not cancel.is_set():
                try:
                    device = monitor.poll(timeout=POLL_SECONDS)
                except OSError as exc:  # netlink socket trouble: report and keep going
                    log.warning("udev monitor: %s", exc)
                    cancel.wait(POLL_SECONDS)
                    continue
                if device is None:
                    continue
                event = self._translate(device)
                if event is None:
                    continue
                try:
                    self.callback(event)
                except Exception:  # a broken consumer must not kill the watcher
                    log.exception("disk watcher callback failed on %s", event)
        finally:
            # Closing the socket is the monitor's job when garbage collected; drop our reference.
            if monitor is self._monitor:
                self._monitor = None

    def _translate(self, device: pyudev.Device) -> DiskEvent | None:
        kind = device.device_type
        if kind not in ("disk", "partition"):
            return None
        name = device.sys_name
        if name.startswith(_IGNORED_PREFIXES):
            return None
        action = device.action or "change"
        sys_path = device.sys_path
        number = device.device_number
        devnum: DevNum = (os.major(number), os.minor(number))
        path = device.device_node or device.properties.get("DEVNAME") or f"/dev/{name}"
        was_present = sys_path in self._present
        if action == "remove":
            self._present.discard(sys_path)
            if not was_present:
                return None
            return DiskEvent("remove", kind, path, devnum, 0)
        size = _size_bytes(sys_path)
        if size > 0:
            self._present.add(sys_path)
            if action in ("add", "change") and not was_present:
                action = "add"
        else:
            self._present.discard(sys_path)
            if not was_present:
                return None  # still empty: nothing a technician can see changed
            action = "remove"  # media gone / loop detached
        if action not in ("add", "remove", "change"):
            action = "change"  # bind/unbind/move/online/offline: something changed
        return DiskEvent(action, kind, path, devnum, size if action != "remove" else 0)
