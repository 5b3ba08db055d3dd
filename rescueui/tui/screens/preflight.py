"""Step 4: the pre-flight report from the core: go / warn / stop, each line explained."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Footer, Static

from rescueui.core.units import human_size
from rescueui.tui.screens.base import StepScreen
from rescueui.tui.widgets.steps import StepsBar

LEVEL_TAGS = {"ok": "[ OK ]", "info": "[INFO]", "warn": "[WARN]", "stop": "[STOP]"}


def findings_text(findings: list[Any]) -> Text:
    text = Text()
    for i, f in enumerate(findings):
        if i:
            text.append("\n")
        tag = LEVEL_TAGS.get(f.level, f"[{f.level.upper()}]")
        style = "bold reverse" if f.level == "stop" else ("bold" if f.level == "warn" else "")
        text.append(tag, style=style)
        text.append(f" {f.message}")
        if getattr(f, "detail", ""):
            text.append(f"\n       {f.detail}", style="dim")
    return text


class PreflightScreen(StepScreen):
    STEP = "Pre-flight"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "confirm", "Confirm target...", priority=True, id="confirm"),
        Binding("escape", "back", "Back", id="back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.findings: list[Any] | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        img, disk, part = self.flow.image, self.flow.target, self.flow.target_part
        yield StepsBar(self.STEP, demo=self.session.is_demo)
        if part is not None:
            what = (
                f"Partition {self.flow.partition} of {img.name} -> {part.path} "
                f"({human_size(part.size_bytes)}) on {disk.model or disk.name}"
            )
        else:
            what = (
                f"{img.name} ({human_size(img.extent_bytes)}) -> {disk.path} "
                f"({disk.model or disk.name}, {human_size(disk.size_bytes)})"
            )
        yield Static(what, id="hint")
        with VerticalScroll(id="findings-box"):
            yield Static("Checking...", id="findings")
        yield Static("", id="verdict")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#findings-box").border_title = "Pre-flight checks"
        self.check()

    @work(thread=True, exclusive=True, exit_on_error=False, group="preflight")
    def check(self) -> None:
        from rescueui.core.errors import RescueError

        try:
            part = self.flow.target_part
            findings = self.session.preflight(
                self.flow.image.path,
                self.flow.target,
                partition=self.flow.partition,
                target_path=part.path if part is not None else None,
            )
            error = None
        except RescueError as exc:
            findings, error = [], str(exc)
        except Exception as exc:  # a bug must not leave the screen at "Checking..."
            findings, error = [], f"internal error in the pre-flight: {type(exc).__name__}: {exc}"
        self.app.call_from_thread(self._show, findings, error)

    def _show(self, findings: list[Any], error: str | None) -> None:
        self.findings = findings
        self.error = error
        self.flow.findings = findings
        box = self.query_one("#findings", Static)
        verdict = self.query_one("#verdict", Static)
        if error:
            box.update(Text(f"[STOP] {error}", style="bold"))
            verdict.update(
                Text(" STOP: cannot restore onto this disk. Esc: back ", style="bold reverse")
            )
        else:
            box.update(findings_text(findings))
            if self.session.allows_restore(findings):
                warn = any(f.level == "warn" for f in findings)
                verdict.update(
                    Text(
                        " GO (read the warnings above) - Enter: confirm the target "
                        if warn
                        else " GO - Enter: confirm the target ",
                        style="bold reverse",
                    )
                )
            else:
                verdict.update(
                    Text(
                        " STOP: a check above forbids this restore. Esc: back ",
                        style="bold reverse",
                    )
                )
        self.refresh_bindings()

    def _allowed(self) -> bool:
        return (
            self.findings is not None
            and self.error is None
            and self.session.allows_restore(self.findings)
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "confirm":
            return True if self._allowed() else None
        return True

    def action_confirm(self) -> None:
        from rescueui.tui.screens.dialogs import ConfirmTargetDialog
        from rescueui.tui.screens.job import JobScreen

        if not self._allowed():
            self.app.bell()
            return
        disk, part, number = self.flow.target, self.flow.target_part, self.flow.partition
        try:
            code = self.session.confirmation_code(part or disk)
        except Exception as exc:  # identity cannot be read: the core says why
            self.query_one("#verdict", Static).update(Text(f" {exc} ", style="bold reverse"))
            return

        def confirmed(result: Any) -> None:
            if result is not None:
                self.flow.confirmed = result
                self.app.push_screen(
                    JobScreen.restore(self.flow.image, result, disk, partition=number, part=part)
                )

        self.app.push_screen(ConfirmTargetDialog(disk, code, self.session.confirm, part), confirmed)
