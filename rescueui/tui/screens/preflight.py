"""Step 4: the pre-flight report from the core: go / warn / stop, each line explained.

Every warning must be acknowledged by the operator, one by one: the cursor (Up/Down) on the
warning and ``a`` (or Space) toggles it; the row then says ``[ACK]``. Enter (confirm the
target) is refused, with the reason on screen, until every warning is acknowledged; a stop
cannot be confirmed past at all. Going back (Esc) and returning starts with nothing
acknowledged. The acknowledged codes go to the restore, which records them in the report.

The per-partition lines of what the image holds (info findings ``usage.pN``) are shown as
one row after the other findings, so they never push a warning out of sight. ``e`` asks for
an exact restore: the space no filesystem uses is made zero on the target too (otherwise the
core makes it zero only where the target does that fast).

A whole-disk restore also adapts the restored Linux system to the machine (the core's
fix-ups, findings ``adapt.*``). ``f`` on a fix-up line switches that fix-up off or on again,
``m`` asks for the machine the fix-ups are for (this one, or another machine's profile
file); either runs the pre-flight again with the new choice, and the acknowledgements of
warnings that did not change are kept. A line under the findings names the machine and the
fix-ups that are on. The footer shows the keys of the line under the cursor: on the fix-up
lines ``f`` and ``m`` take the places of ``Down`` and ``e`` (which still work there), so the
footer fits 80 columns.

Instead of a target disk the operator may have chosen a new virtual machine (the Flow's
``vm``): the findings are then the core's pre-flight of that VM (``vm.*`` and the usual
ones), the header names the VM as planned (vCPUs, memory, firmware, its disk file and
format), the line under the findings names the files it makes and the host that will run
it (``m`` chooses another host's profile: the VM's vCPUs and memory are fitted to it).
Warnings are acknowledged as for a disk; Enter then starts the job without a confirmation
code (only new files are written) and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Footer, Static

from rescueui.core.adapt.plan import FIXUPS
from rescueui.core.units import human_size
from rescueui.tui.screens.base import StepScreen
from rescueui.tui.text import esc, plain
from rescueui.tui.widgets.findings import LEVEL_TAGS, FindingRow, level_tag
from rescueui.tui.widgets.steps import StepsBar

__all__ = ["LEVEL_TAGS", "PreflightScreen"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class FindingsBox(VerticalScroll, can_focus=False):
    """The list of findings; the screen's keys move its cursor (it never takes the focus)."""


USAGE_PREFIX = "usage."  # the core's info findings: one usage line per partition


@dataclass(frozen=True)
class UsageGroup:
    """The pre-flight's usage lines (``usage.pN``) as one row: what the image holds of each
    partition."""

    lines: tuple[str, ...]
    level: str = "info"
    code: str = "usage"
    message: str = "What the image holds, per partition:"
    detail_style: str = ""  # the lines are the point of this row: not dimmed

    @property
    def detail(self) -> str:
        return "\n".join(self.lines)


def shown_findings(findings: list[Any]) -> list[Any]:
    """The rows of the screen: the findings in the core's order, the usage lines grouped in
    one row after them."""
    usage = [f for f in findings if f.level == "info" and f.code.startswith(USAGE_PREFIX)]
    if not usage:
        return list(findings)
    ids = {id(f) for f in usage}
    rest = [f for f in findings if id(f) not in ids]
    return [*rest, UsageGroup(tuple(str(f.message) for f in usage))]


ADAPT_PREFIX = "adapt."  # the core's fix-up findings


def fixup_name(finding: Any) -> str | None:
    """The fix-up a finding is about (``adapt.drivers`` -> ``drivers``), else None."""
    code = str(getattr(finding, "code", ""))
    name = code[len(ADAPT_PREFIX) :] if code.startswith(ADAPT_PREFIX) else ""
    return name if name in FIXUPS else None


def has_fixups(findings: list[Any]) -> bool:
    """True when the pre-flight planned the fix-ups of the restored system."""
    return any(str(getattr(f, "code", "")).startswith(ADAPT_PREFIX) for f in findings)


def machine_words(machine: Any, path: str | None) -> str:
    """The machine the fix-ups are for, in words (another machine's name is outside text:
    the caller escapes it)."""
    if machine is None:
        return "this machine"
    return f"{machine.machine} (profile file {path})"


def adapt_text(chosen: set[str], machine: Any, path: str | None) -> Text:
    """The lines naming the machine the fix-ups are for and the fix-ups that are on."""
    # another machine's profile stands for the machine in every check, not only the fix-ups
    text = Text("Fix-ups for: " if machine is None else "Checks and fix-ups for: ")
    text.append(esc(machine_words(machine, path)), style="" if machine is None else "bold")
    text.append(". m: choose the machine; f on a fix-up line: on/off")
    _fixups_on_off(text, chosen)
    return text


def _fixups_on_off(text: Text, chosen: set[str]) -> None:
    """Append the line naming the fix-ups that are on and those switched off."""
    on = [n for n in FIXUPS if n in chosen]
    off = [n for n in FIXUPS if n not in chosen]
    text.append("\nFix-ups on: ")
    text.append(", ".join(on) if on else "none - the restored system is left as it is")
    if on and off:
        text.append("; off: ")
        text.append(", ".join(off), style="bold")


def kept_acknowledgements(before: list[Any], acknowledged: set[str], after: list[Any]) -> set[str]:
    """The acknowledged warnings the pre-flight, run again, gave word for word again."""

    def key(f: Any) -> tuple[str, str, str, str]:
        return (f.code, f.level, str(f.message), str(getattr(f, "detail", "") or ""))

    same = {key(f) for f in before if f.code in acknowledged}
    return {f.code for f in after if key(f) in same}


def vm_words(vm: Any, folder: str) -> str:
    """The planned VM in one line (the name and folder are outside text: escaped here)."""
    return (
        f"New VM {esc(vm.name)}: {vm.vcpus} vCPU(s), {human_size(vm.memory_bytes)}, "
        f"{esc(vm.firmware).upper()}, disk {esc(vm.disk_file)} ({esc(vm.disk_format)}, "
        f"{esc(vm.disk_bus)}, {human_size(vm.disk_bytes)}) in {esc(folder)}"
    )


def vm_files_text(image: Any, vm: Any, folder: str) -> Text:
    """What a restore into a new VM writes: new files only, named (the header names the
    folder)."""
    from pathlib import Path

    from rescueui.core.vm.job import vm_files

    text = Text(f"From {esc(image.name)}: ")
    if vm is None:
        text.append(f"new files only, in {esc(folder)}; nothing existing is overwritten.")
        return text
    files = vm_files(vm, Path(folder))
    names = [
        f"{esc(p.name)} ({'the disk' if k == 'disk' else k})"
        for k, p in files.items()
        if k != "work"  # the restored disk before its conversion: removed again
    ]
    text.append(f"new files only: {', '.join(names)}; nothing existing is overwritten.")
    return text


def vm_adapt_text(host: Any, path: str | None, chosen: set[str] | None) -> Text:
    """The host that will run the VM, and the fix-ups that are on (``chosen``; None: the
    pre-flight planned none)."""
    text = Text("VM runs on: ")
    if host is None:
        text.append("this machine")
    else:
        text.append(esc(f"{host.machine} (profile file {path})"), style="bold")
    text.append(" (vCPUs and memory fitted to it). m: another host")
    if chosen is None:
        return text
    _fixups_on_off(text, chosen)
    text.append(". f on one: on/off")
    return text


def exact_text(exact: bool) -> Text:
    """The line saying what the restore does with the space no filesystem uses."""
    if exact:
        return Text(
            " EXACT: the space no filesystem uses is made zero on the target too. e: undo ",
            style="bold reverse",
        )
    return Text(
        "Space no filesystem uses: made zero where the target does it fast, else left as it "
        "is. e: exact restore (all of it zero)"
    )


class PreflightScreen(StepScreen):
    STEP = "Pre-flight"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "confirm", "Confirm target...", priority=True, id="confirm"),
        Binding("enter", "make_vm", "Make the VM", priority=True, id="make-vm"),
        Binding("a,space", "acknowledge", "Acknowledge warning", id="acknowledge"),
        Binding("down", "next", "Next", key_display="Down", id="down"),
        Binding("down", "quiet('next')", show=False),
        Binding("up", "cursor(-1)", "Previous line", show=False, id="up"),
        Binding("pagedown", "cursor(5)", "", show=False),
        Binding("pageup", "cursor(-5)", "", show=False),
        Binding("e", "exact", "Exact", id="exact"),
        Binding("e", "quiet('exact')", show=False),
        Binding("f", "fixup", "Fix-up on/off", id="fixup"),
        Binding("f", "quiet('fixup')", show=False),
        Binding("m", "machine", "Machine...", id="machine"),
        Binding("m", "quiet('machine')", show=False),
        Binding("m", "vm_host", "VM host...", id="vm-host"),
        Binding("m", "quiet('vm_host')", show=False),
        Binding("escape", "back", "Back", id="back"),
    ]
    # keys the footer shows only for some lines (each has a twin that is not shown, so the
    # key works on the other lines too): see ``_shown``
    CONTEXT_KEYS = ("next", "exact", "fixup", "machine", "vm_host")

    def __init__(self) -> None:
        super().__init__()
        self.findings: list[Any] | None = None
        self.error: str | None = None
        self.acknowledged: set[str] = set()  # codes of the warnings the operator accepted
        self.cursor = 0
        self.rows: list[FindingRow] = []
        self.busy = True  # the pre-flight runs (first, or again after a fix-up choice)
        self._generation = 0
        self._focus: str | None = None  # the code to put the cursor on when it is back
        self.vm: Any = None  # a new VM: the core's VmMachine, as the last pre-flight planned it

    def compose(self) -> ComposeResult:
        img, disk, part = self.flow.image, self.flow.target, self.flow.target_part
        yield StepsBar(self.STEP, demo=self.session.is_demo)
        if self.flow.vm is not None:
            what = f"New VM in {esc(self.flow.vm.folder)} (planning it...)"
        elif part is not None:
            what = (
                f"Partition {self.flow.partition} of {esc(img.name)} -> {esc(part.path)} "
                f"({human_size(part.size_bytes)}) on {esc(disk.model or disk.name)}"
            )
        else:
            what = (
                f"{esc(img.name)} ({human_size(img.extent_bytes)}) -> {esc(disk.path)} "
                f"({esc(disk.model or disk.name)}, {human_size(disk.size_bytes)})"
            )
        yield Static(Text(what), id="hint")
        with FindingsBox(id="findings-box"):
            checking = "Checking..."
            if getattr(img, "size_is_estimate", False):  # the pre-flight compares exact sizes
                checking = (
                    "Checking... (first measuring the image: its compressed stream records no "
                    "size, so it is decompressed once)"
                )
            yield Static(checking, id="findings")
        adapt = Static("", id="adapt")
        adapt.display = False
        yield adapt
        if self.flow.vm is not None:  # a new file: there is no old content to make zero
            yield Static(vm_files_text(img, None, self.flow.vm.folder), id="exact")
        else:
            yield Static(exact_text(self.flow.exact), id="exact")
        yield Static("", id="verdict")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#findings-box").border_title = "Pre-flight checks"
        self.check(self._generation, self.flow.adapt_options())

    @work(thread=True, exclusive=True, exit_on_error=False, group="preflight")
    def check(self, generation: int, adapt: Any) -> None:
        from rescueui.core.errors import RescueError

        vm = None
        try:
            part = self.flow.target_part
            if self.flow.vm is not None:
                vm, findings = self.session.preflight_vm(
                    self.flow.image.path, self.flow.vm, adapt=adapt
                )
            else:
                findings = self.session.preflight(
                    self.flow.image.path,
                    self.flow.target,
                    partition=self.flow.partition,
                    target_path=part.path if part is not None else None,
                    adapt=adapt,
                )
            error = None
        except RescueError as exc:
            findings, error = [], str(exc)
        except Exception as exc:  # a bug must not leave the screen at "Checking..."
            findings, error = [], f"internal error in the pre-flight: {type(exc).__name__}: {exc}"
        try:
            self.app.call_from_thread(self._show, findings, error, generation, vm)
        except RuntimeError:  # the app is shutting down
            pass

    def _check_again(self, focus: str | None) -> None:
        """Run the pre-flight again with the Flow's fix-up choice; the cursor comes back to
        the line ``focus`` (a finding's code) when it is there."""
        self.busy = True
        self._focus = focus
        self._generation += 1
        self._update_adapt()
        self._update_verdict()
        self.refresh_bindings()
        self.check(self._generation, self.flow.adapt_options())

    # -- the findings and the cursor -------------------------------------
    async def _show(
        self, findings: list[Any], error: str | None, generation: int = 0, vm: Any = None
    ) -> None:
        if generation != self._generation or not self.is_attached:
            return  # an older run (the choice changed meanwhile), or the screen is gone
        if self.flow.vm is not None:
            self._show_vm(vm)
        before, acknowledged = self.findings or [], self.acknowledged
        if self.rows:
            await self.query_one("#findings-box").remove_children(self.rows)
            self.rows = []
        self.busy = False
        self.findings = findings
        self.error = error
        self.flow.findings = findings
        # a run again keeps what the operator acknowledged where the warning is unchanged
        self.acknowledged = kept_acknowledgements(before, acknowledged, findings)
        box = self.query_one("#findings", Static)
        if error:
            box.display = True
            box.update(Text(f"[STOP] {esc(error)}", style="bold"))
        else:
            box.display = False
            # on a stop nothing can be acknowledged past: the rows do not ask for it
            go = self.session.allows_restore(findings)
            self.rows = [
                FindingRow(
                    f,
                    needs_ack=go
                    and not isinstance(f, UsageGroup)
                    and self.session.needs_acknowledgement(f),
                    index=i,
                )
                for i, f in enumerate(shown_findings(findings))
            ]
            self.query_one("#findings-box").mount_all(self.rows)
            open_ = self._open()
            back = [i for i, r in enumerate(self.rows) if r.finding.code == self._focus]
            if back:
                self.cursor = back[0]
            else:
                self.cursor = self._row_of(open_[0]) if open_ else 0
            self._redraw_rows()
            if back:  # the rows are laid out after this refresh: all of the line in view
                self.call_after_refresh(self._redraw_rows)
        self._focus = None
        self._update_adapt()
        self._update_verdict()
        self.refresh_bindings()

    def _show_vm(self, vm: Any) -> None:
        """The header and the files line for the VM as planned (None: it could not be)."""
        self.vm = vm
        img, folder = self.flow.image, self.flow.vm.folder
        head = f"New VM in {esc(folder)}" if vm is None else vm_words(vm, folder)
        self.query_one("#hint", Static).update(Text(head))
        self.query_one("#exact", Static).update(vm_files_text(img, vm, folder))

    def _fixup_mode(self) -> bool:
        """The fix-ups are shown and can be chosen: a whole-disk restore whose pre-flight
        planned them (or for which another machine was chosen)."""
        if self.flow.vm is not None:
            return has_fixups(self.findings or [])
        return self.flow.partition is None and (
            has_fixups(self.findings or []) or self.flow.machine is not None
        )

    def _update_adapt(self) -> None:
        line = self.query_one("#adapt", Static)
        if self.flow.vm is not None:  # the host that runs the VM: always shown
            line.display = True
            # the demo plans no fix-ups (the session's choice): none are on
            chosen = set() if self.session.is_demo else self.flow.fixups
            line.update(
                vm_adapt_text(
                    self.flow.vm.runs_on,
                    self.flow.vm_host_file,
                    chosen if self._fixup_mode() else None,
                )
            )
            return
        line.display = self._fixup_mode()
        if line.display:
            line.update(adapt_text(self.flow.fixups, self.flow.machine, self.flow.machine_file))

    def _open(self) -> list[Any]:
        """The warnings not yet acknowledged (the core decides what needs acknowledging)."""
        return self.session.open_warnings(self.findings or [], self.acknowledged)

    def _row_of(self, finding: Any) -> int:
        """The row showing ``finding`` (the usage lines share one row)."""
        for i, row in enumerate(self.rows):
            if row.finding is finding:
                return i
        return 0

    def _redraw_rows(self, scroll: bool = True) -> None:
        for i, row in enumerate(self.rows):
            row.set_state(cursor=i == self.cursor, acked=row.finding.code in self.acknowledged)
        if scroll and self.rows:
            self.query_one("#findings-box").scroll_to_widget(
                self.rows[self.cursor], animate=False, immediate=True
            )

    def _warnings(self) -> list[Any]:
        return [f for f in self.findings or [] if self.session.needs_acknowledgement(f)]

    def _update_verdict(self, refusal: str | None = None) -> None:
        verdict = self.query_one("#verdict", Static)
        if self.busy and self.findings is not None:
            verdict.update(Text(" Checking again with the new fix-up choice... ", style="bold"))
            return
        if self.error:
            where = "make this VM" if self.flow.vm is not None else "restore onto this disk"
            verdict.update(Text(f" STOP: cannot {where}. Esc: back ", style="bold reverse"))
            return
        findings = self.findings or []
        if not self.session.allows_restore(findings):
            verdict.update(
                Text(" STOP: a check above forbids this restore. Esc: back ", style="bold reverse")
            )
            return
        if refusal is not None:
            verdict.update(Text(f" REFUSED: {refusal} ", style="bold reverse"))
            return
        warns, open_ = self._warnings(), self._open()
        if open_:
            verdict.update(
                Text(
                    f" {_plural(len(open_), 'warning')} not acknowledged "
                    f"({len(warns) - len(open_)} of {len(warns)} done): read each [WARN] "
                    "line, press a. ",
                    style="bold",
                )
            )
        elif warns:
            verdict.update(
                Text(
                    f" GO - every warning acknowledged ({len(warns)}) - Enter: {self._go_words()} ",
                    style="bold reverse",
                )
            )
        else:
            verdict.update(Text(f" GO - Enter: {self._go_words()} ", style="bold reverse"))

    def _go_words(self) -> str:
        """What Enter does once nothing stands in the way."""
        if self.flow.vm is not None:
            return "make the VM (no code to type: only new files are written)"
        return "confirm the target"

    def action_cursor(self, step: int) -> None:
        if not self.rows:
            return
        self.cursor = max(0, min(len(self.rows) - 1, self.cursor + step))
        self._redraw_rows()
        self.refresh_bindings()  # the footer shows the keys of the line under the cursor

    def action_next(self) -> None:
        self.action_cursor(1)

    def action_quiet(self, action: str) -> None:
        """A key the footer does not show on this line (see ``CONTEXT_KEYS``)."""
        if action in self.CONTEXT_KEYS:
            getattr(self, f"action_{action}")()

    def _line(self) -> Any:
        return self.rows[self.cursor].finding if self.rows else None

    def _shown(self, action: str) -> bool:
        """Whether the footer shows ``action``'s key for the line under the cursor: the
        fix-up lines show ``f`` (on a fix-up) or ``m`` (the others) instead of ``Down`` and
        ``e``."""
        line = self._line()
        on_adapt = line is not None and str(line.code).startswith(ADAPT_PREFIX)
        if action in ("next", "exact"):
            return not on_adapt
        if action == "fixup":
            return fixup_name(line) is not None
        if action == "machine":
            return on_adapt and fixup_name(line) is None
        if action == "vm_host":  # a new VM: on every line but a fix-up's (f is there)
            return fixup_name(line) is None
        return True

    def _key_works(self, action: str) -> bool:
        """Whether ``action`` (one of ``CONTEXT_KEYS``) works now."""
        vm = self.flow.vm is not None
        if action == "next":
            return bool(self.rows)
        if action == "exact":  # a new VM's disk is a new file: nothing old to make zero
            return self._loaded() and not vm
        if action == "fixup":
            return not self.busy and self._fixup_mode() and bool(self.rows)
        if action == "machine":
            return not self.busy and self.findings is not None and self._fixup_mode() and not vm
        if action == "vm_host":
            return not self.busy and self.findings is not None and vm
        return False

    def action_acknowledge(self) -> None:
        if not self.rows:
            return
        row = self.rows[self.cursor]
        f = row.finding
        if not row.needs_ack:
            self.app.bell()
            self._update_verdict(
                f"only warnings are acknowledged; this line is {level_tag(f.level)}. "
                "Move to a [WARN] line (Up/Down)."
            )
            return
        if f.code in self.acknowledged:
            self.acknowledged.discard(f.code)  # toggled back: needs acknowledging again
        else:
            self.acknowledged.add(f.code)
            open_ = self._open()
            if open_:  # on to the next warning still open
                self.cursor = self._row_of(open_[0])
        self._redraw_rows()
        self._update_verdict()
        self.refresh_bindings()

    # -- confirming ------------------------------------------------------
    def _loaded(self) -> bool:
        return (
            not self.busy
            and self.findings is not None
            and self.error is None
            and self.session.allows_restore(self.findings)
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("confirm", "make_vm"):
            if (action == "make_vm") != (self.flow.vm is not None):
                return False  # the other one's key
            # shown (and Enter explains the refusal) while warnings are open; dimmed on a stop
            return True if self._loaded() else None
        if action == "acknowledge":
            return self._loaded() and bool(self._warnings())
        if action == "cursor":
            return bool(self.rows)
        if action in self.CONTEXT_KEYS:
            return self._key_works(action) and self._shown(action)
        if action == "quiet":
            name = str(parameters[0]) if parameters else ""
            return self._key_works(name) and not self._shown(name)
        return super().check_action(action, parameters)

    def action_exact(self) -> None:
        """Toggle the exact restore (kept for this restore until the operator starts over)."""
        if not self._loaded():
            return
        self.flow.exact = not self.flow.exact
        self.query_one("#exact", Static).update(exact_text(self.flow.exact))

    # -- the fix-ups of the restored system --------------------------------
    def action_fixup(self) -> None:
        """Switch the fix-up on the line under the cursor off or on, and check again."""
        if not self._key_works("fixup"):
            return
        name = fixup_name(self._line())
        if name is None:
            self.app.bell()
            self._update_verdict("f switches a fix-up on or off: move to a fix-up line (Up/Down).")
            return
        self.flow.fixups = set(self.flow.fixups) ^ {name}
        self._check_again(f"{ADAPT_PREFIX}{name}")

    def action_machine(self) -> None:
        """Ask for the machine the fix-ups are for; a new choice checks again."""
        from rescueui.core.host import load_profile
        from rescueui.tui.screens.dialogs import MachineChoice, MachineDialog

        if not self._key_works("machine"):
            return

        def chosen(choice: MachineChoice | None) -> None:
            if choice is None or (choice.profile is None and self.flow.machine is None):
                return  # cancelled, or this machine again
            self.flow.machine, self.flow.machine_file = choice.profile, choice.path
            self._check_again(f"{ADAPT_PREFIX}system")

        self.app.push_screen(MachineDialog(load_profile, self.flow.machine_file), chosen)

    def action_vm_host(self) -> None:
        """A new VM: ask for the host that will run it; a new choice checks again."""
        from dataclasses import replace

        from rescueui.core.host import load_profile
        from rescueui.tui.screens.dialogs import VM_HOST_PROMPT, MachineChoice, MachineDialog

        if not self._key_works("vm_host"):
            return

        def chosen(choice: MachineChoice | None) -> None:
            if choice is None or (choice.profile is None and self.flow.vm.runs_on is None):
                return  # cancelled, or this machine again
            self.flow.vm = replace(self.flow.vm, runs_on=choice.profile)
            self.flow.vm_host_file = choice.path
            self._check_again("vm.cpus")

        self.app.push_screen(
            MachineDialog(
                load_profile,
                self.flow.vm_host_file,
                prompt=VM_HOST_PROMPT,
                title="New VM: the host that runs it",
            ),
            chosen,
        )

    def action_make_vm(self) -> None:
        self.action_confirm()

    def action_confirm(self) -> None:
        from rescueui.tui.screens.dialogs import ConfirmTargetDialog
        from rescueui.tui.screens.job import JobScreen

        if not self._loaded():
            self.app.bell()
            return
        open_ = self._open()
        if open_:
            self.app.bell()
            self.cursor = self._row_of(open_[0])
            self._redraw_rows()
            self._update_verdict(
                f"acknowledge each warning first ({len(open_)} open, at >): read it, press a."
            )
            return
        if self.flow.vm is not None:
            self._start_vm()
            return
        disk, part, number = self.flow.target, self.flow.target_part, self.flow.partition
        try:
            code = self.session.confirmation_code(part or disk)
        except Exception as exc:  # identity cannot be read: the core says why
            self.query_one("#verdict", Static).update(plain(f" {exc} ", style="bold reverse"))
            return
        accepted = tuple(f.code for f in self._warnings() if f.code in self.acknowledged)
        exact = self.flow.exact
        adapt = self.flow.adapt_options()  # the choice this pre-flight was run with

        def confirmed(result: Any) -> None:
            if result is not None:
                self.flow.confirmed = result
                self.app.push_screen(
                    JobScreen.restore(
                        self.flow.image,
                        result,
                        disk,
                        partition=number,
                        part=part,
                        accepted_codes=accepted,
                        exact=exact,
                        adapt=adapt,
                    )
                )

        self.app.push_screen(
            ConfirmTargetDialog(disk, code, self.session.confirm, part, exact=exact), confirmed
        )

    def _start_vm(self) -> None:
        """A new VM: no confirmation code (nothing existing is overwritten); the job starts
        with the warnings acknowledged here and the fix-up choice this pre-flight had."""
        from rescueui.tui.screens.job import JobScreen

        accepted = tuple(f.code for f in self._warnings() if f.code in self.acknowledged)
        name = self.vm.name if self.vm is not None else self.flow.vm.name
        self.app.push_screen(
            JobScreen.restore_vm(
                self.flow.image,
                self.flow.vm,
                name=name,
                accepted_codes=accepted,
                adapt=self.flow.adapt_options(),
            )
        )
