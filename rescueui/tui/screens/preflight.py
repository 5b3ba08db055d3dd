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
        Binding("a,space", "acknowledge", "Acknowledge warning", id="acknowledge"),
        Binding("down", "cursor(1)", "Next", key_display="Down", id="down"),
        Binding("up", "cursor(-1)", "Previous line", show=False, id="up"),
        Binding("pagedown", "cursor(5)", "", show=False),
        Binding("pageup", "cursor(-5)", "", show=False),
        Binding("e", "exact", "Exact", id="exact"),
        Binding("escape", "back", "Back", id="back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.findings: list[Any] | None = None
        self.error: str | None = None
        self.acknowledged: set[str] = set()  # codes of the warnings the operator accepted
        self.cursor = 0
        self.rows: list[FindingRow] = []

    def compose(self) -> ComposeResult:
        img, disk, part = self.flow.image, self.flow.target, self.flow.target_part
        yield StepsBar(self.STEP, demo=self.session.is_demo)
        if part is not None:
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
        yield Static(exact_text(self.flow.exact), id="exact")
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

    # -- the findings and the cursor -------------------------------------
    def _show(self, findings: list[Any], error: str | None) -> None:
        self.findings = findings
        self.error = error
        self.flow.findings = findings
        self.acknowledged = set()
        box = self.query_one("#findings", Static)
        if error:
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
            self.cursor = self._row_of(open_[0]) if open_ else 0
            self._redraw_rows()
        self._update_verdict()
        self.refresh_bindings()

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
        if self.error:
            verdict.update(
                Text(" STOP: cannot restore onto this disk. Esc: back ", style="bold reverse")
            )
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
                    f" GO - every warning acknowledged ({len(warns)}) - Enter: confirm the target ",
                    style="bold reverse",
                )
            )
        else:
            verdict.update(Text(" GO - Enter: confirm the target ", style="bold reverse"))

    def action_cursor(self, step: int) -> None:
        if not self.rows:
            return
        self.cursor = max(0, min(len(self.rows) - 1, self.cursor + step))
        self._redraw_rows()

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
            self.findings is not None
            and self.error is None
            and self.session.allows_restore(self.findings)
        )

    def _allowed(self) -> bool:
        return self._loaded() and not self._open()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "confirm":
            # shown (and Enter explains the refusal) while warnings are open; dimmed on a stop
            return True if self._loaded() else None
        if action == "acknowledge":
            return self._loaded() and bool(self._warnings())
        if action == "cursor":
            return bool(self.rows)
        if action == "exact":
            return self._loaded()
        return super().check_action(action, parameters)

    def action_exact(self) -> None:
        """Toggle the exact restore (kept for this restore until the operator starts over)."""
        if not self._loaded():
            return
        self.flow.exact = not self.flow.exact
        self.query_one("#exact", Static).update(exact_text(self.flow.exact))

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
        disk, part, number = self.flow.target, self.flow.target_part, self.flow.partition
        try:
            code = self.session.confirmation_code(part or disk)
        except Exception as exc:  # identity cannot be read: the core says why
            self.query_one("#verdict", Static).update(plain(f" {exc} ", style="bold reverse"))
            return
        accepted = tuple(f.code for f in self._warnings() if f.code in self.acknowledged)
        exact = self.flow.exact

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
                    )
                )

        self.app.push_screen(
            ConfirmTargetDialog(disk, code, self.session.confirm, part, exact=exact), confirmed
        )
