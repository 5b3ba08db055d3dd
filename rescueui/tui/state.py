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
    # instead of a target disk: a new virtual machine (rescueui.core.vm.machine.VmRequest;
    # its ``runs_on`` is the host that will run it, read from the profile file ``vm_host_file``)
    vm: Any = None
    vm_host_file: str | None = None

    def adapt_options(self) -> Any:
        """The core's AdaptOptions for this choice; None for a partition restore (no
        fix-ups there). For a new VM the machine is the VM itself (the core's choice)."""
        if self.partition is not None:
            return None
        from rescueui.core.adapt import AdaptOptions

        chosen = set(self.fixups)
        host = None if self.vm is not None else self.machine
        return AdaptOptions(selection=chosen, host=host, enabled=bool(chosen))

    def choose_disk(self, disk: Any, partition: int | None = None, part: Any = None) -> None:
        """A target disk (or one of its partitions, for image partition ``partition``)."""
        self.target, self.partition, self.target_part = disk, partition, part
        self.vm = None
        self.vm_host_file = None

    def choose_vm(self, request: Any) -> None:
        """A new virtual machine instead of a target disk (the VmRequest)."""
        self.target, self.partition, self.target_part = None, None, None
        self.vm = request

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
        self.vm = None
        self.vm_host_file = None
