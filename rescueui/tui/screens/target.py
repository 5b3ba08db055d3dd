"""Step 3: pick the target disk; what the core refuses (unsafe, too small) is shown and refused."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Static

from rescueui.core.units import human_size
from rescueui.tui.messages import DiskHotplug
from rescueui.tui.screens.base import StepScreen
from rescueui.tui.text import esc, plain
from rescueui.tui.widgets.disktable import DiskTable, disk_details
from rescueui.tui.widgets.steps import StepsBar


class TargetScreen(StepScreen):
    STEP = "Target"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "choose", "Restore onto this disk/partition", priority=True, id="choose"),
        Binding("v", "new_vm", "New VM...", id="new-vm"),
        Binding("r", "rescan", "Rescan", id="rescan"),
        Binding("escape", "back", "Back", id="back"),
    ]

    def compose(self) -> ComposeResult:
        img = self.flow.image
        yield StepsBar(self.STEP, demo=self.session.is_demo)
        yield Static(
            Text(
                f"Image {esc(img.name)} needs {human_size(img.extent_bytes)}. Choose the disk "
                "to restore onto (or a partition, for one image partition), or v: into a new "
                "virtual machine."
            ),
            id="hint",
        )
        yield DiskTable(id="targets", extra=("Fit", self._fit))
        with VerticalScroll(id="details-box", classes="disk-details"):
            yield Static(id="details")
        yield Static("", id="status")
        yield Footer()

    def _fit(self, disk: Any) -> Text:
        problem = self.session.fit_problem(self.flow.image, disk)
        if problem is None and self.session.onto_smaller(self.flow.image, disk):
            return Text("smaller", style="bold")
        if problem is None:
            return Text("fits", style="bold")
        return Text("REFUSED", style="bold reverse")

    def on_mount(self) -> None:
        self.query_one("#details-box").border_title = "Target disk"
        self.query_one(DiskTable).focus()
        self.rescan()

    @work(thread=True, exclusive=True, exit_on_error=False, group="scan")
    def rescan(self) -> None:
        disks = self.session.scan_disks(self.flow.image.path)
        self.app.call_from_thread(self._show, disks)

    def _show(self, disks: list[Any]) -> None:
        self.query_one(DiskTable).show(disks)
        self._details()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._details()

    def _details(self) -> None:
        disk = self.query_one(DiskTable).selected_disk()
        if disk is None:
            self.query_one("#details", Static).update("No disks found.")
            return
        problem = self.session.fit_problem(self.flow.image, disk)
        text = Text()
        if problem is None and self.session.onto_smaller(self.flow.image, disk):
            text.append(
                "Fit: smaller than the image's disk. If the data fits, the partitions are laid "
                "out anew and their files copied; the pre-flight shows the plan.\n",
                style="bold",
            )
        elif problem is None:
            text.append("Fit: the image fits on this disk.\n", style="bold")
        else:
            text.append(f"REFUSED: {esc(problem)}\n", style="bold reverse")
        text.append_text(disk_details(disk))
        self.query_one("#details", Static).update(text)

    def refresh_disks(self, event: Any) -> None:
        self.rescan()

    def on_disk_hotplug(self, message: DiskHotplug) -> None:
        self.refresh_disks(message.event)

    def action_rescan(self) -> None:
        self.rescan()

    def action_choose(self) -> None:
        from rescueui.tui.screens.preflight import PreflightScreen

        table = self.query_one(DiskTable)
        disk = table.selected_disk()
        if disk is None:
            return
        part = table.selected_partition()
        if part is not None:
            self._choose_partition(disk, part)
            return
        problem = self.session.fit_problem(self.flow.image, disk)
        if problem is not None:
            self.query_one("#status", Static).update(
                Text(f"Refused: {esc(disk.name)}: {esc(problem)}", style="bold reverse")
            )
            self.app.bell()
            return
        self.flow.choose_disk(disk)
        self.app.push_screen(PreflightScreen())

    def _choose_partition(self, disk: Any, part: Any) -> None:
        from rescueui.tui.screens.dialogs import PartitionPickDialog
        from rescueui.tui.screens.preflight import PreflightScreen

        def picked(number: int | None) -> None:
            if number is None:
                return
            problem = self.session.partition_problem(self.flow.image, disk, part, number)
            if problem is not None:
                self.query_one("#status", Static).update(
                    Text(
                        f"Refused: partition {number} onto {esc(part.path)}: {esc(problem)}",
                        style="bold reverse",
                    )
                )
                self.app.bell()
                return
            self.flow.choose_disk(disk, number, part)
            self.app.push_screen(PreflightScreen())

        self.app.push_screen(PartitionPickDialog(part, self.flow.image.streams), picked)

    def action_new_vm(self) -> None:
        """Ask for a new virtual machine (folder, name, disk format); a good choice goes on
        to its pre-flight."""
        from rescueui.core.errors import RescueError
        from rescueui.core.vm.machine import FORMATS
        from rescueui.tui.screens.dialogs import VmChoice, VmDialog, size_text
        from rescueui.tui.screens.preflight import PreflightScreen

        img = self.flow.image
        previous = self.flow.vm  # back from its pre-flight: the same choice again
        try:
            folder = str(previous.folder if previous else self.session.default_vm_folder(img.path))
            name = (previous.name if previous else None) or self.session.default_vm_name(
                img.path, folder
            )
        except (RescueError, OSError) as exc:
            self.query_one("#status", Static).update(
                plain(f"No new VM: {exc}", style="bold reverse")
            )
            self.app.bell()
            return
        runs_on = previous.runs_on if previous else None
        choice = VmChoice(folder=folder, name=name)
        if previous:
            choice.disk_format = previous.disk_format
            choice.vcpus = str(previous.vcpus) if previous.vcpus else ""
            choice.memory = size_text(previous.memory_bytes)
            choice.disk_size = size_text(previous.disk_bytes)
            choice.firmware = previous.firmware
            choice.definition = next((d for d in previous.definitions if d != "libvirt"), None)

        def make(choice: VmChoice) -> Any:
            return self.session.vm_request(
                choice.folder,
                name=choice.name,
                disk_format=choice.disk_format,
                runs_on=runs_on,
                vcpus=choice.vcpus,
                memory=choice.memory,
                disk_size=choice.disk_size,
                firmware=choice.firmware,
                definition=choice.definition,
            )

        def chosen(request: Any) -> None:
            if request is None:
                return
            self.flow.choose_vm(request)
            self.app.push_screen(PreflightScreen())

        self.app.push_screen(VmDialog(make, choice, FORMATS), chosen)
