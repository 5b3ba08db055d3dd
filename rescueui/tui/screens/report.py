"""Step 7: the outcome and the report the engine wrote (kept on screen).

After a whole-disk restore the fix-ups of the restored system come first: each step with
its status, the files it changed, its checks and, when it failed, the error and the next
step (a failed fix-up leaves the data restored and verified; the system may not boot).
After a restore into a new virtual machine, the VM comes first: what it got, the files made
and the checks of its disk and definition.
"""

from __future__ import annotations

import textwrap
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Footer, Static

from rescueui.core.adapt import fixup_lines
from rescueui.core.errors import AdaptError
from rescueui.core.files import extracted_lines
from rescueui.core.vm import vm_lines
from rescueui.tui.screens.base import StepScreen
from rescueui.tui.text import esc, plain
from rescueui.tui.widgets.steps import StepsBar

BANNERS = {
    "success": " SUCCESS: every chunk matched its BLAKE3 ",
    "cancelled": " CANCELLED by the operator ",
    "failed": " FAILED ",
}
ADAPT_FAILED = " FIX-UP FAILED: data restored and verified, the system may not boot "
FIXUPS_TITLE = "Fix-ups of the restored system (each step; the full report follows):"
VM_TITLE = "The new virtual machine (its files and checks; the full report follows):"
EXTRACTED_TITLE = "Extracted ({count}; the SHA-256 of each file):"
EXTRACT_SUCCESS = " SUCCESS: files extracted, the SHA-256 of each listed "


def _section(title: str, lines: list[str], width: int, *, loud: bool = False) -> Text:
    """A titled section of plain lines (outside text: escaped), wrapped for ``width``
    columns under their own indent. ``loud``: failed steps, errors and next steps in bold."""
    text = Text()
    if not lines:
        return text
    text.append(f"{title}\n", style="bold")
    for line in lines:
        shown = esc(line)
        lead = " " * (len(shown) - len(shown.lstrip(" ")) + 2)
        wrapped = textwrap.wrap(
            shown,
            max(width, 20),
            initial_indent="  ",
            subsequent_indent=lead + "  ",
            break_long_words=True,  # a long path: cut, but under its own line
            break_on_hyphens=False,
        ) or [""]
        failed = loud and (
            shown.startswith("[FAILED]") or shown.lstrip().startswith(("error:", "next step:"))
        )
        text.append("\n".join(wrapped) + "\n", style="bold" if failed else "")
    return text


def vm_text(details: Any, width: int = 80) -> Text:
    """The VM section of a report (``details["vm"]``): what the VM got, the files made and
    the checks; empty when there is none."""
    return _section(VM_TITLE, vm_lines(details), width)


def fixup_text(details: Any, width: int = 80) -> Text:
    """The fix-up section of a report (``details["adapt"]``), laid out for ``width``
    columns; empty when there is none. The commands run are left to the report's text."""
    return _section(FIXUPS_TITLE, fixup_lines(details, commands=False), width, loud=True)


def extracted_text(details: Any, width: int = 80) -> Text:
    """The files section of an extraction's report; empty when there is none."""
    files = details.get("files") if isinstance(details, dict) else None
    if not isinstance(files, list) or not files:
        return Text()
    count = f"{len(files)} entr{'y' if len(files) == 1 else 'ies'}"
    return _section(EXTRACTED_TITLE.format(count=count), extracted_lines(files), width)


def report_body(report: Any, error: BaseException | None, width: int = 80) -> Text:
    """The report's text, laid out for ``width`` columns (the report box's inside). It quotes
    the image and the disks: control characters are shown escaped (line breaks kept)."""
    text = Text()
    if report is not None and hasattr(report, "to_text"):
        files = getattr(report, "report_files", None) or []
        if files:
            text.append("Report written to:\n", style="bold")
            for f in files:
                text.append(f"  {esc(f)}\n")
        else:
            text.append("No report file could be written.\n", style="bold")
        text.append("\n")
        details = getattr(report, "details", None) or {}
        fixups = fixup_text(details.get("adapt") if isinstance(details, dict) else None, width)
        vm = vm_text(details.get("vm") if isinstance(details, dict) else None, width)
        if vm:
            text.append_text(vm)
            text.append("\n")
        files = extracted_text(details, width)
        if files:
            text.append_text(files)
            text.append("\n")
        if fixups:
            text.append_text(fixups)
            text.append("\n")
        text.append_text(plain(report.to_text(width=width), newlines=True))
    elif error is not None:
        text.append(f"Error: {esc(error)}\n")
    return text


class ReportScreen(StepScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "start_over", "Start over", priority=True, id="start-over"),
        Binding("enter", "files", "Back to the files", priority=True, id="files"),
        Binding("u", "resume", "Resume restore", id="resume"),
        Binding("escape", "back", "Back", id="back"),
        Binding("q", "app.quit", "Quit", id="quit"),
    ]

    def __init__(self, job: Any) -> None:
        super().__init__()
        self.job = job  # the finished JobScreen
        self.STEP = "Report" if job.kind == "restore" else ""

    def compose(self) -> ComposeResult:
        outcome = self.job.outcome
        yield StepsBar(self.STEP, demo=self.session.is_demo)
        banner = BANNERS.get(outcome, f" {outcome.upper()} ")
        if outcome == "success" and self.job.kind == "capture":
            banner = " SUCCESS: image captured and hashed "
        if outcome == "success" and self.job.kind == "extract":
            banner = EXTRACT_SUCCESS
        if outcome == "success" and self.job.context.get("vm") is not None:
            banner = " SUCCESS: the new VM's disk is written, verified and compared "
        if isinstance(self.job.error, AdaptError):
            banner = ADAPT_FAILED
        if self.job.mismatch is not None:
            banner = " FAILED: CHECKSUM MISMATCH - THE IMAGE IS DAMAGED "
        yield Static(Text(f"{self.job.kind.upper()}: {banner}", style="bold reverse"), id="banner")
        with VerticalScroll(id="report-box"):
            # inside the box: its border (2) and a vertical scroll bar (2)
            width = max(self.app.size.width - 4, 40)
            yield Static(report_body(self.job.report, self.job.error, width), id="report")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#report-box").border_title = "Report"
        self.query_one("#report-box").focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "files":  # an extraction goes back to its Files screen
            return self.job.kind == "extract"
        if action == "start_over":
            return self.job.kind != "extract"
        if action == "resume":
            # a failed fix-up comes after the verified restore: nothing is left to resume
            # nor in a new VM: a job that did not finish removed its files again
            return (
                self.job.kind == "restore"
                and self.job.context.get("vm") is None
                and self.job.outcome in ("cancelled", "failed")
                and self.job.mismatch is None
                and not isinstance(self.job.error, AdaptError)
            )
        return True

    def action_start_over(self) -> None:
        self.flow.reset()
        while len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_files(self) -> None:
        from rescueui.tui.screens.files import FilesScreen

        while len(self.app.screen_stack) > 1 and not isinstance(self.app.screen, FilesScreen):
            self.app.pop_screen()

    def action_resume(self) -> None:
        from rescueui.tui.screens.job import JobScreen

        ctx = self.job.context
        self.app.push_screen(
            JobScreen.restore(
                ctx["image"],
                ctx["confirmed"],
                ctx["disk"],
                resume=True,
                partition=ctx.get("partition"),
                part=ctx.get("part"),
                accepted_codes=ctx.get("accepted_codes", ()),
                exact=ctx.get("exact", False),
                adapt=ctx.get("adapt"),
            )
        )
