"""Messages between the engine side (threads) and the screens."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class DiskHotplug(Message):
    """A disk or partition appeared, changed or disappeared (posted by the udev watcher thread)."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event  # rescueui.core.hotplug.DiskEvent
