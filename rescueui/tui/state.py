"""What the operator has chosen so far in the guided restore (no decisions here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STEPS = ("Disks", "Image", "Target", "Pre-flight", "Confirm", "Restore", "Report")


@dataclass
class Flow:
    image: Any = None  # rescueui.core.session.ImageSummary
    target: Any = None  # rescueui.core.disks.Disk
    partition: int | None = None  # image partition number, for a partition restore
    target_part: Any = None  # rescueui.core.disks.Partition it goes onto
    findings: list[Any] = field(default_factory=list)
    confirmed: Any = None  # rescueui.core.identity.ConfirmedTarget
    exact: bool = False  # the operator asked the space no filesystem uses to be made zero too

    def reset(self) -> None:
        self.image = None
        self.target = None
        self.partition = None
        self.target_part = None
        self.findings = []
        self.confirmed = None
        self.exact = False
