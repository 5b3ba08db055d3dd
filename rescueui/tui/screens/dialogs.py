"""Modal dialogs: type a path, confirm the target by its identity, confirm a cancel."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Static

from rescueui.core.errors import RescueError
from rescueui.core.units import human_size
from rescueui.tui.text import esc, plain
from rescueui.tui.widgets.disktable import part_text


class PathDialog(ModalScreen[str | None]):
    """Ask for a folder or file path."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="cancel")]

    def __init__(self, prompt: str, default: str = "") -> None:
        super().__init__()
        self.prompt = prompt
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(plain(self.prompt))  # names a disk (its model): never markup
            yield Input(value=self.default, id="path")
            yield Static("Enter: OK   Esc: cancel", classes="dim")
        yield Footer()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


def destroyed_text(disk: Any) -> Text:
    """What a whole-disk restore onto ``disk`` overwrites, from the core's description of it."""
    text = Text()
    text.append("Target: ", style="bold")
    text.append(f"{esc(disk.path)}  {esc(disk.model or '')}  serial {esc(disk.serial or '-')}  ")
    text.append(human_size(disk.size_bytes))
    if getattr(disk, "backing_file", None):  # two loop devices differ only by this
        text.append(f"\n  backed by {esc(disk.backing_file)}")
    text.append("\nEVERYTHING ON THIS DISK WILL BE OVERWRITTEN:", style="bold")
    if not disk.partitions:
        text.append(
            f"\n  no partitions found (table: {esc(disk.table_type or 'none')}); "
            "all data on it is lost"
        )
    for p in disk.partitions:
        text.append(
            f"\n  {esc(p.name):<14} {human_size(p.size_bytes):>10}  "
            f"{part_text(p) or 'unknown contents'}"
        )
    return text


class PartitionPickDialog(ModalScreen[int | None]):
    """Which image partition goes onto the chosen target partition (number keys or arrows)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="cancel")]

    def __init__(self, part: Any, streams: list[Any]) -> None:
        super().__init__()
        self.part = part
        self.streams = [s for s in streams if s.partition_number]

    def compose(self) -> ComposeResult:
        from textual.widgets import OptionList
        from textual.widgets.option_list import Option

        with Vertical(classes="dialog", id="pick-box"):
            yield Static(
                Text(
                    f"Restore which image partition onto {esc(self.part.path)} "
                    f"({human_size(self.part.size_bytes)} {part_text(self.part)})?"
                )
            )
            yield OptionList(
                *[
                    Option(
                        Text(
                            f"{s.partition_number}: {esc(s.name):<6} "
                            f"{human_size(s.size_bytes):>10}  "
                            f"{' '.join(esc(x) for x in (s.fs_type, s.label) if x)}"
                        ),
                        id=str(s.partition_number),
                    )
                    for s in self.streams
                ],
                id="streams",
            )
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#pick-box").border_title = "Partition restore"
        self.query_one("#streams").focus()

    def on_option_list_option_selected(self, event: Any) -> None:
        self.dismiss(int(event.option.id))

    def on_key(self, event: Any) -> None:
        # ASCII digits only: '²'.isdigit() is True, and int('²') raises
        if event.character and event.character in "0123456789":
            n = int(event.character)
            if any(s.partition_number == n for s in self.streams):
                event.stop()
                self.dismiss(n)

    def action_cancel(self) -> None:
        self.dismiss(None)


def destroyed_partition_text(disk: Any, part: Any) -> Text:
    text = Text()
    text.append("Target partition: ", style="bold")
    text.append(
        f"{esc(part.path)}  {human_size(part.size_bytes)}  on {esc(disk.path)} "
        f"{esc(disk.model or '')} serial {esc(disk.serial or '-')}"
    )
    text.append("\nEVERYTHING ON THIS PARTITION WILL BE OVERWRITTEN:", style="bold")
    text.append(
        f"\n  {esc(part.name):<14} {human_size(part.size_bytes):>10}  "
        f"{part_text(part) or 'unknown contents'}"
    )
    text.append("\n(the partition table and the other partitions are not touched)")
    return text


class ConfirmTargetDialog(ModalScreen[Any]):
    """The operator types a short part of the target's identity; the core checks it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel (nothing is written)", id="cancel")
    ]

    def __init__(self, disk: Any, code: str, confirm: Any, part: Any = None) -> None:
        super().__init__()
        self.disk = disk
        self.part = part  # a partition restore: only this partition is overwritten
        self.code = code
        self.confirm = confirm  # callable(disk, typed) -> ConfirmedTarget, raises RescueError

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog danger", id="confirm-box"):
            what = (
                destroyed_partition_text(self.disk, self.part)
                if self.part is not None
                else destroyed_text(self.disk)
            )
            yield Static(what, id="destroyed")
            prompt = Text("\nTo confirm, type the code ")
            prompt.append(f" {esc(self.code)} ", style="bold reverse")
            prompt.append(" (the end of the disk's identity above) and press Enter:")
            yield Static(prompt)
            yield Input(placeholder="confirmation code", id="code")
            yield Static("", id="error")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#confirm-box").border_title = "Confirm the target"
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        try:
            confirmed = self.confirm(self.part or self.disk, event.value.strip())
        except RescueError as exc:
            self.query_one("#error", Static).update(plain(f"REFUSED: {exc}", style="bold reverse"))
            self.query_one(Input).value = ""
            self.app.bell()
            return
        self.dismiss(confirmed)

    def action_cancel(self) -> None:
        self.dismiss(None)


class CancelJobDialog(ModalScreen[bool]):
    """Ask before stopping a running job."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "yes", "Yes, stop it", id="yes"),
        Binding("n", "no", "No, continue", id="no"),
        Binding("escape", "no", "Continue", show=False),
    ]

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog danger", id="cancel-box"):
            yield Static(Text(f"Stop the {self.what} now?", style="bold"))
            yield Static(self._explain())
            yield Static("y: yes, stop   n: no, continue", classes="dim")
        yield Footer()

    def _explain(self) -> str:
        if self.what == "restore":
            return (
                "The target will be incomplete and must not be used. What was written so far is "
                "recorded in the journal: the restore can be resumed later."
            )
        if self.what == "capture":
            return "The image folder will be left marked incomplete and cannot be restored."
        return "The image will not have been fully verified."

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)
