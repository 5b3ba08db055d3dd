"""Step 1: every disk of the machine, live (hotplug), with what the core says about it."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Static

from rescueui.tui.messages import DiskHotplug
from rescueui.tui.screens.base import StepScreen
from rescueui.tui.text import esc
from rescueui.tui.widgets.disktable import DiskTable, disk_details
from rescueui.tui.widgets.steps import StepsBar


class DisksScreen(StepScreen):
    STEP = "Disks"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "next", "Choose image", priority=True, id="next"),
        Binding("c", "capture", "Capture disk", id="capture"),
        Binding("r", "rescan", "Rescan", id="rescan"),
        Binding("p", "plug", "Plug demo disk", id="plug"),
        Binding("q", "app.quit", "Quit", id="quit"),
    ]

    def compose(self) -> ComposeResult:
        yield StepsBar(self.STEP, demo=self.session.is_demo)
        yield Static("Disks on this machine. Marked disks are never written to.", id="hint")
        yield DiskTable(id="disks")
        with VerticalScroll(id="details-box", classes="disk-details"):
            yield Static(id="details")
        yield Static("", id="status")
        yield Footer()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "plug":
            return self.session.is_demo
        return super().check_action(action, parameters)

    def on_mount(self) -> None:
        self.query_one("#details-box").border_title = "Selected disk"
        self.query_one(DiskTable).focus()
        self.rescan()

    @property
    def table(self) -> DiskTable:
        return self.query_one(DiskTable)

    @work(thread=True, exclusive=True, exit_on_error=False, group="scan")
    def rescan(self) -> None:
        disks = self.session.scan_disks()
        self.app.call_from_thread(self._show, disks)

    def _show(self, disks: list[Any]) -> None:
        self.table.show(disks)
        self._update_details()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._update_details()

    def _update_details(self) -> None:
        disk = self.table.selected_disk()
        self.query_one("#details", Static).update(disk_details(disk) if disk else "No disks found.")

    def refresh_disks(self, event: Any) -> None:
        what = {"add": "appeared", "remove": "disappeared", "change": "changed"}.get(
            event.action, event.action
        )
        self.query_one("#status", Static).update(Text(f"{esc(event.path)} {esc(what)}"))
        self.rescan()

    def on_disk_hotplug(self, message: DiskHotplug) -> None:
        self.refresh_disks(message.event)

    def action_rescan(self) -> None:
        self.rescan()

    def action_plug(self) -> None:
        event = self.session.demo_plug()
        if event is not None:
            self.app.post_message(DiskHotplug(event))

    def action_next(self) -> None:
        from rescueui.tui.screens.images import ImageScreen

        self.app.push_screen(ImageScreen())

    def action_capture(self) -> None:
        """What the capture will store (the core's estimate, used blocks or every byte),
        then the image folder, then the capture job."""
        from rescueui.tui.screens.dialogs import CaptureChoice, CaptureEstimateDialog, PathDialog
        from rescueui.tui.screens.job import JobScreen

        disk = self.table.selected_disk()
        if disk is None:
            return
        default = self.session.default_capture_dir(disk)

        def estimate(all_blocks: bool, cancel: threading.Event) -> list[Any]:
            return list(
                self.session.estimate_capture(disk.path, all_blocks=all_blocks, cancel=cancel)
            )

        def chosen(choice: CaptureChoice | None) -> None:
            if choice is None:
                return

            def start(path: str | None) -> None:
                if path:
                    self.app.push_screen(
                        JobScreen.capture(disk, path, all_blocks=choice.all_blocks)
                    )

            mode = "every byte" if choice.all_blocks else "the blocks each filesystem uses"
            size = choice.size_words()
            self.app.push_screen(
                PathDialog(
                    f"Capture {disk.path} ({disk.model or disk.name}), {mode}"
                    f"{'; ' + size if size else ''}. Into the image folder:",
                    str(default),
                ),
                start,
            )

        self.app.push_screen(CaptureEstimateDialog(disk, estimate), chosen)
