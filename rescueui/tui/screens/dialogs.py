"""Modal dialogs: type a path, see what a capture will store, choose the machine the fix-ups
are for, choose a new virtual machine, confirm the target by its identity, confirm a
cancel; pick the partition to browse, the folder to extract files into, and extracting onto
the image's own medium."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Static
from textual.worker import get_current_worker

from rescueui.core.errors import RescueError
from rescueui.core.units import MiB, human_size
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


@dataclass(frozen=True)
class CaptureChoice:
    """What the operator chose on the capture estimate: every byte or the used blocks, and
    the estimate they saw (None: it could not be made)."""

    all_blocks: bool
    read_bytes: int | None = None

    def size_words(self) -> str:
        if self.read_bytes is None:
            return ""
        return f"estimated image size: at most {human_size(self.read_bytes)} before compression"


ESTIMATING = "Finding the blocks each filesystem uses"
FILESYSTEM_KINDS = ("partition", "disk")


def estimate_text(disk: Any, plans: list[Any]) -> Text:
    """The core's plan of a capture: what of each partition it reads, the total, the image
    size it can reach at most, and the warnings (a filesystem not cleanly unmounted)."""
    text = Text()
    parts = [p for p in plans if p.kind in FILESYSTEM_KINDS]
    others = [p for p in plans if p.kind not in FILESYSTEM_KINDS]
    text.append("Per partition:" if any(p.kind == "partition" for p in parts) else "The disk:")
    for p in parts:
        text.append(f"\n  {esc(p.usage())}")
    if others:
        text.append(
            f"\n  boot code, gaps and table copies: {human_size(sum(p.read_bytes for p in others))}"
        )
    total = sum(p.read_bytes for p in plans)
    size = int(getattr(disk, "size_bytes", 0) or 0) or sum(p.size for p in plans)
    text.append(f"\nThe capture reads {human_size(total)} of the disk's {human_size(size)}.")
    text.append(
        f"\nEstimated image size: at most {human_size(total)} before compression", style="bold"
    )
    text.append(" (an upper bound: compression makes it smaller, by as much as the data allows).")
    for p in plans:
        if p.warning:
            text.append("\nWARNING:", style="bold reverse")
            text.append(f" {esc(p.warning)}", style="bold")
    return text


def mode_text(all_blocks: bool) -> Text:
    if all_blocks:
        return Text.assemble(
            ("Copy: EVERY BYTE of every partition", "bold reverse"),
            " (a: only the blocks each filesystem uses)",
        )
    return Text.assemble(
        ("Copy: only the blocks each filesystem uses", "bold"), " (a: every byte instead)"
    )


class CaptureEstimateDialog(ModalScreen[CaptureChoice | None]):
    """Before a capture: what it will read and store, per partition, from the core's estimate
    (read-only, a few seconds per filesystem, in a worker thread). ``a`` switches between the
    used blocks (default) and every byte, and estimates again; Enter goes on with that
    choice (then the image folder is asked); Esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "accept", "Choose the image folder...", id="accept"),
        Binding("a", "mode(True)", "Every byte", id="every-byte"),
        Binding("a", "mode(False)", "Used blocks only", id="used-only"),
        Binding("escape", "cancel", "Cancel", id="cancel"),
    ]

    def __init__(self, disk: Any, estimate: Callable[[bool, threading.Event], list[Any]]) -> None:
        super().__init__()
        self.disk = disk
        # (all_blocks, cancel) -> the core's planned streams; may raise (CancelledError
        # when cancel is set: the map tools are stopped)
        self.estimate = estimate
        self._cancel = threading.Event()
        self.all_blocks = False
        self.plans: list[Any] | None = None
        self.error: str | None = None
        self.busy = False
        self._generation = 0
        self._started = 0.0

    def compose(self) -> ComposeResult:
        d = self.disk
        with Vertical(classes="dialog", id="estimate-box"):
            yield Static(
                Text(
                    f"Capture {esc(d.path)} ({esc(d.model or d.name)}, "
                    f"{human_size(d.size_bytes)}) into an image folder."
                )
            )
            yield Static(mode_text(self.all_blocks), id="mode")
            with VerticalScroll(id="estimate-scroll"):
                yield Static("", id="estimate")
            yield Static("", id="estimate-status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#estimate-box").border_title = "Capture: what it will store"
        self.set_interval(0.5, self._tick)
        self._start()

    # -- the estimate (worker thread) ------------------------------------
    def _start(self) -> None:
        self._cancel.set()  # an estimate still running is not needed any more
        self._cancel = threading.Event()
        self._generation += 1
        self.busy = True
        self.plans, self.error = None, None
        self._started = time.monotonic()
        self.query_one("#mode", Static).update(mode_text(self.all_blocks))
        self.query_one("#estimate", Static).update("")
        self._tick()
        self.refresh_bindings()
        self.compute(self.all_blocks, self._generation, self._cancel)

    @work(thread=True, exclusive=True, exit_on_error=False, group="estimate")
    def compute(self, all_blocks: bool, generation: int, cancel: threading.Event) -> None:
        plans: list[Any] | None = None
        error: str | None = None
        try:
            plans = list(self.estimate(all_blocks, cancel))
        except RescueError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not leave the dialog at "Finding..."
            error = f"internal error in the estimate: {type(exc).__name__}: {exc}"
        if get_current_worker().is_cancelled:
            return  # the dialog is gone (Esc) or a newer estimate runs
        try:
            self.app.call_from_thread(self._show, generation, plans, error)
        except RuntimeError:  # the app is shutting down
            pass

    def _show(self, generation: int, plans: list[Any] | None, error: str | None) -> None:
        if generation != self._generation or not self.is_attached:
            return  # an older estimate (the operator switched the mode meanwhile)
        self.busy = False
        self.plans, self.error = plans, error
        out = self.query_one("#estimate", Static)
        if plans is not None:
            out.update(estimate_text(self.disk, plans))
        else:
            out.update(plain(f"The estimate failed: {error}", style="bold"))
        self._tick()
        self.refresh_bindings()

    def _tick(self) -> None:
        status = self.query_one("#estimate-status", Static)
        if self.busy:
            seconds = int(time.monotonic() - self._started)
            what = ESTIMATING if not self.all_blocks else "Reading the partition table"
            status.update(
                Text(f"{what}... {seconds} s (a few seconds per filesystem; Esc: cancel)")
            )
        elif self.error is not None:
            status.update(
                Text("Enter: capture anyway (the capture says what went wrong)   Esc: cancel")
            )
        else:
            other = "only the used blocks" if self.all_blocks else "every byte"
            status.update(Text(f"Enter: choose the image folder   a: {other}   Esc: cancel"))

    # -- keys ------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "mode":
            return bool(parameters) and parameters[0] != self.all_blocks
        if action == "accept":
            return None if self.busy else True  # dimmed while the estimate runs
        return True

    def action_mode(self, all_blocks: bool) -> None:
        if all_blocks != self.all_blocks:
            self.all_blocks = all_blocks
            self._start()

    def action_accept(self) -> None:
        if self.busy:
            self.app.bell()
            return
        total = sum(p.read_bytes for p in self.plans) if self.plans is not None else None
        self.dismiss(CaptureChoice(self.all_blocks, total))

    def action_cancel(self) -> None:
        self._cancel.set()  # stops the map tools of an estimate still running
        self.dismiss(None)


@dataclass(frozen=True)
class MachineChoice:
    """The machine the fix-ups are for: ``profile=None`` is this machine, else another
    machine's profile (a core HostProfile) read from ``path``."""

    profile: Any = None
    path: str | None = None


MACHINE_PROMPT = (
    "Which machine will the restored disk start in? Leave the field empty for this machine. "
    "For another machine, type the path of its machine profile: the JSON file rescueui's host "
    "command wrote on that machine."
)


class MachineDialog(ModalScreen[MachineChoice | None]):
    """Ask for the machine the fix-ups are planned for: empty is this machine, a path is
    another machine's profile file, read (and checked) by ``load`` at once; what is wrong
    with it is shown here and the dialog stays."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel (keep the machine)", id="cancel")
    ]

    def __init__(
        self,
        load: Callable[[str], Any],
        current: str | None = None,
        *,
        prompt: str = MACHINE_PROMPT,
        title: str = "Fix-ups: for which machine",
    ) -> None:
        super().__init__()
        self.load = load  # path -> the machine's profile; raises RescueError
        self.current = current or ""
        self.prompt = prompt
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="machine-box"):
            yield Static(Text(self.prompt))
            yield Input(value=self.current, placeholder="empty: this machine", id="machine-path")
            yield Static("", id="error")
            yield Static("Enter: use it   Esc: cancel", classes="dim")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#machine-box").border_title = self.title_text
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        path = event.value.strip()
        if not path:
            self.dismiss(MachineChoice())
            return
        try:
            profile = self.load(path)
        except RescueError as exc:
            problem = str(exc)
        except OSError as exc:
            problem = f"Cannot read {path}: {exc.strerror or exc}."
        else:
            self.dismiss(MachineChoice(profile, path))
            return
        self.query_one("#error", Static).update(
            plain(f"Cannot use it: {problem}", style="bold reverse")
        )
        self.app.bell()

    def action_cancel(self) -> None:
        self.dismiss(None)


VM_HOST_PROMPT = (
    "Which host will run the new virtual machine? Leave the field empty for this machine. "
    "For another host, type the path of its machine profile: the JSON file rescueui's host "
    "command wrote on that host. The VM's vCPUs and memory are fitted to it."
)

VM_PROMPT = (
    "A new virtual machine: its disk and definition are new files in an existing folder; "
    "nothing is overwritten, so no code is asked."
)
VM_KEYS = "Tab: next field  Space: next choice  Enter: pre-flight  Esc: cancel"

# what the firmware and definition lines show -> the core's value (None: decided by the core)
VM_FIRMWARES: dict[str, str | None] = {"as the image boots": None, "BIOS": "bios", "UEFI": "uefi"}
VM_DEFINITIONS: dict[str, str | None] = {
    "libvirt": None,
    "libvirt + VMware .vmx": "vmx",
    "libvirt + OVF": "ovf",
}


@dataclass
class VmChoice:
    """What the VM dialog was filled with, as typed (the core reads and checks it)."""

    folder: str
    name: str | None = None
    disk_format: str = "qcow2"
    vcpus: str = ""  # empty: the source's, fitted to the host
    memory: str = ""
    disk_size: str = ""  # empty: the source disk's
    firmware: str | None = None
    definition: str | None = None


class VmDialog(ModalScreen[Any]):
    """Ask for a new virtual machine: the folder its files go into, its name, its disk
    format, and, where the operator wants other values than the source machine's fitted to
    the host, its vCPUs, memory, firmware and a VMware/OVF definition. Enter has ``make``
    (the session) check the choice at once: what is wrong (a folder that does not exist, a
    name that cannot be a file name, a size that cannot be read) is shown here and the
    dialog stays; a good choice is returned (the core's VmRequest)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "accept", "Pre-flight", priority=True, id="accept"),
        Binding("tab", "app.focus_next", "Next field", id="next-field"),
        Binding("escape", "cancel", "Cancel", id="cancel"),
    ]

    def __init__(
        self,
        make: Callable[[VmChoice], Any],
        choice: VmChoice,
        formats: tuple[str, ...] = ("qcow2",),
    ) -> None:
        super().__init__()
        self.make = make  # VmChoice -> VmRequest; raises RescueError
        self.choice = choice
        self.formats = formats

    def compose(self) -> ComposeResult:
        from rescueui.tui.widgets.choice import ChoiceLine

        c = self.choice
        with Vertical(classes="dialog", id="vm-box"):
            yield Static(Text(VM_PROMPT))
            folder = Input(value=c.folder, placeholder="an existing folder", id="vm-folder")
            folder.border_title = "Folder for the VM's files"
            yield folder
            name = Input(
                value=c.name or "", placeholder="empty: named after the image", id="vm-name"
            )
            name.border_title = "Name of the VM (its files are named after it)"
            yield name
            yield ChoiceLine("Disk format", self.formats, c.disk_format, id="vm-format")
            with Horizontal(id="vm-sizes"):
                vcpus = Input(value=c.vcpus, placeholder="empty: source's", id="vm-vcpus")
                vcpus.border_title = "vCPUs"
                yield vcpus
                memory = Input(
                    value=c.memory,
                    placeholder="empty: source's",
                    id="vm-memory",
                )
                memory.border_title = "Memory (e.g. 4G)"
                yield memory
                disk = Input(value=c.disk_size, placeholder="empty: source's", id="vm-disk-size")
                disk.border_title = "Disk size"
                yield disk
            yield ChoiceLine(
                "Firmware",
                tuple(VM_FIRMWARES),
                _shown(VM_FIRMWARES, c.firmware),
                id="vm-firmware",
            )
            yield ChoiceLine(
                "Definition",
                tuple(VM_DEFINITIONS),
                _shown(VM_DEFINITIONS, c.definition),
                id="vm-definition",
            )
            yield Static("", id="error")
            yield Static(VM_KEYS, classes="dim")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#vm-box").border_title = "Restore into a new virtual machine"
        self.query_one("#vm-folder", Input).focus()

    def action_accept(self) -> None:
        from rescueui.tui.widgets.choice import ChoiceLine

        def line(widget_id: str) -> str:
            return self.query_one(f"#{widget_id}", ChoiceLine).value

        choice = VmChoice(
            folder=self.query_one("#vm-folder", Input).value.strip(),
            name=self.query_one("#vm-name", Input).value.strip() or None,
            disk_format=line("vm-format"),
            vcpus=self.query_one("#vm-vcpus", Input).value.strip(),
            memory=self.query_one("#vm-memory", Input).value.strip(),
            disk_size=self.query_one("#vm-disk-size", Input).value.strip(),
            firmware=VM_FIRMWARES[line("vm-firmware")],
            definition=VM_DEFINITIONS[line("vm-definition")],
        )
        try:
            request = self.make(choice)
        except RescueError as exc:
            self.query_one("#error", Static).update(
                plain(f"Cannot use it: {exc}", style="bold reverse")
            )
            self.app.bell()
            return
        self.dismiss(request)

    def action_cancel(self) -> None:
        self.dismiss(None)


def size_text(size: int | None) -> str:
    """A size as the dialog's field shows it again (``4096M``; empty: not chosen)."""
    if not size:
        return ""
    return f"{size // MiB}M" if size % MiB == 0 else f"{size}B"


def _shown(choices: dict[str, str | None], value: str | None) -> str:
    """The label a choice line shows for the core's ``value``."""
    return next((label for label, v in choices.items() if v == value), next(iter(choices)))


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


class PartitionChoiceDialog(ModalScreen[int | None]):
    """An image partition chosen by its number key, or by the arrows and Enter."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="cancel")]
    BOX_ID = "pick-box"
    BOX_TITLE = ""
    HINT: str | None = None
    EMPTY = ""  # what an option shows when a partition has neither filesystem nor label

    streams: list[Any]

    def question(self) -> Text:
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        from textual.widgets import OptionList
        from textual.widgets.option_list import Option

        with Vertical(classes="dialog", id=self.BOX_ID):
            yield Static(self.question())
            yield OptionList(
                *[
                    Option(
                        Text(
                            f"{s.partition_number}: {esc(s.name):<6} "
                            f"{human_size(s.size_bytes):>10}  "
                            f"{' '.join(esc(x) for x in (s.fs_type, s.label) if x) or self.EMPTY}"
                        ),
                        id=str(s.partition_number),
                    )
                    for s in self.streams
                ],
                id="streams",
            )
            if self.HINT:
                yield Static(self.HINT, classes="dim")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(f"#{self.BOX_ID}").border_title = self.BOX_TITLE
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


class PartitionPickDialog(PartitionChoiceDialog):
    """Which image partition goes onto the chosen target partition (number keys or arrows)."""

    BOX_ID = "pick-box"
    BOX_TITLE = "Partition restore"

    def __init__(self, part: Any, streams: list[Any]) -> None:
        super().__init__()
        self.part = part
        self.streams = [s for s in streams if s.partition_number]

    def question(self) -> Text:
        return Text(
            f"Restore which image partition onto {esc(self.part.path)} "
            f"({human_size(self.part.size_bytes)} {part_text(self.part)})?"
        )


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

    def __init__(
        self, disk: Any, code: str, confirm: Any, part: Any = None, *, exact: bool = False
    ) -> None:
        super().__init__()
        self.disk = disk
        self.part = part  # a partition restore: only this partition is overwritten
        self.code = code
        self.confirm = confirm  # callable(disk, typed) -> ConfirmedTarget, raises RescueError
        self.exact = exact  # shown: the operator asked for an exact restore

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog danger", id="confirm-box"):
            what = (
                destroyed_partition_text(self.disk, self.part)
                if self.part is not None
                else destroyed_text(self.disk)
            )
            yield Static(what, id="destroyed")
            if self.exact:
                yield Static(Text("Exact restore: the space no filesystem uses is made zero too."))
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

    def __init__(self, what: str, detail: str | None = None) -> None:
        super().__init__()
        self.what = what
        self.detail = detail  # what stopping leaves behind, where the kind does not say it

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog danger", id="cancel-box"):
            yield Static(Text(f"Stop the {self.what} now?", style="bold"))
            yield Static(self._explain())
            yield Static("y: yes, stop   n: no, continue", classes="dim")
        yield Footer()

    def _explain(self) -> str:
        if self.detail:
            return self.detail
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


def browsable_streams(streams: list[Any]) -> list[Any]:
    """The image's partitions (streams with a partition number): what can be browsed."""
    return [s for s in streams if s.partition_number and s.kind == "partition"]


class BrowsePartitionDialog(PartitionChoiceDialog):
    """Which partition of the image to browse (number keys, or arrows and Enter)."""

    BOX_ID = "browse-box"
    BOX_TITLE = "Browse files"
    HINT = "Enter or its number: browse it   Esc: cancel"
    EMPTY = "-"

    def __init__(self, image: Any) -> None:
        super().__init__()
        self.image = image
        self.streams = browsable_streams(list(image.streams))

    def question(self) -> Text:
        return Text(
            f"Browse the files of which partition of {esc(self.image.name)}? It is "
            "mounted read-only from the image: nothing is written to it."
        )


@dataclass(frozen=True)
class ExtractChoice:
    """Where the marked files go: the folder as the session checked (and made) it, and
    whether the operator chose the image's own medium on purpose."""

    folder: Any  # Path
    allow_image_medium: bool = False


EXTRACT_PROMPT = (
    "They are copied with their modes, owners, times, extended attributes and links; nothing "
    "existing is overwritten. A folder that does not exist yet is made (its parent must "
    "exist). The report lists every file with its SHA-256."
)


class ExtractDialog(ModalScreen[ExtractChoice | None]):
    """Ask the folder to extract into. Enter has ``check`` (the session) check it at once:
    what is wrong is shown here and the dialog stays; a folder on the image's own medium
    (``action == "onto-image-medium"``) is asked about once more, explicitly."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="cancel")]

    def __init__(self, check: Callable[[str, bool], Any], default: str, *, what: str) -> None:
        super().__init__()
        self.check = check  # (folder, allow_image_medium) -> Path; raises RescueError
        self.default = default
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="extract-box"):
            yield Static(plain(f"Extract {self.what} into the folder:", style="bold"))
            yield Input(value=self.default, id="dest")
            yield Static(Text(EXTRACT_PROMPT))
            yield Static("", id="error")
            yield Static("Enter: extract   Esc: cancel", classes="dim")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#extract-box").border_title = "Extract files"
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._try(event.value.strip(), allow=False)

    def _try(self, dest: str, *, allow: bool) -> None:
        try:
            folder = self.check(dest, allow)
        except RescueError as exc:
            if exc.action == "onto-image-medium" and not allow:
                self.app.push_screen(ImageMediumDialog(str(exc)), self._medium_answer(dest))
                return
            self.query_one("#error", Static).update(
                plain(f"Cannot use it: {exc}", style="bold reverse")
            )
            self.app.bell()
            return
        self.dismiss(ExtractChoice(folder, allow))

    def _medium_answer(self, dest: str) -> Callable[[bool | None], None]:
        def answer(yes: bool | None) -> None:
            if yes:
                self._try(dest, allow=True)
            else:
                self.query_one("#error", Static).update(
                    Text("Choose a folder on another medium.", style="bold")
                )

        return answer

    def action_cancel(self) -> None:
        self.dismiss(None)


class ImageMediumDialog(ModalScreen[bool]):
    """The second, explicit confirmation to extract onto the medium that holds the image."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "yes", "Yes, extract onto it", id="yes"),
        Binding("n", "no", "No, choose another", id="no"),
        Binding("escape", "no", "No", show=False),
    ]

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message  # the core's refusal

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog danger", id="medium-box"):
            yield Static(plain(self.message))
            yield Static(
                Text(
                    "Extract onto the medium that holds the image anyway? The files take its "
                    "room, and writing to a failing medium can damage the image.",
                    style="bold",
                )
            )
            yield Static("y: yes, extract onto it   n: no, choose another folder", classes="dim")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#medium-box").border_title = "The image's own medium"

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)
