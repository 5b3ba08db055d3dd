"""What the operator has chosen so far in the guided restore (no decisions here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STEPS = ("Disks", "Image", "Target", "Pre-flight", "Confirm", "Restore", "Report")


def all_fixups() -> set[str]:
    """Every fix-up the core knows (the default choice: all that are needed)."""
    from rescueui.core.adapt.plan import FIXUPS

    return set(FIXUPS)


@dataclass
class Flow:
    image: Any = None  # rescueui.core.session.ImageSummary
    target: Any = None  # rescueui.core.disks.Disk
    partition: int | None = None  # image partition number, for a partition restore
    target_part: Any = None  # rescueui.core.disks.Partition it goes onto
    findings: list[Any] = field(default_factory=list)
    confirmed: Any = None  # rescueui.core.identity.ConfirmedTarget
    exact: bool = False  # the operator asked the space no filesystem uses to be made zero too
    # the fix-ups of the restored system the operator keeps (whole-disk restores), and the
    # machine they are for: None = this one, else another machine's HostProfile (read from
    # the profile file ``machine_file``)
    fixups: set[str] = field(default_factory=all_fixups)
    machine: Any = None
    machine_file: str | None = None

    def adapt_options(self) -> Any:
        """The core's AdaptOptions for this choice; None for a partition restore (no
        fix-ups there)."""
        if self.partition is not None:
            return None
        from rescueui.core.adapt import AdaptOptions

        chosen = set(self.fixups)
        return AdaptOptions(selection=chosen, host=self.machine, enabled=bool(chosen))

    def reset(self) -> None:
        self.image = None
        self.target = None
        self.partition = None
        self.target_part = None
        self.findings = []
        self.confirmed = None
        self.exact = False
        self.fixups = all_fixups()
        self.machine = None
        self.machine_file = None
