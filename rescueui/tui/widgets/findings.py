"""One pre-flight finding per row: a level word, the message, the detail under it.

Each row is a two-column grid (the level word | the message with its detail), so a long
message or detail wraps under the message, never back to column 0. A warning row also
says, in words, whether the operator has acknowledged it (``[ACK]``) or not yet; the row
under the cursor is marked with ``>`` as well as a highlight (never colour alone). Only
ASCII characters are drawn here (safe on the Linux console and a serial line).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from rescueui.tui.text import esc

LEVEL_TAGS = {"ok": "[ OK ]", "info": "[INFO]", "warn": "[WARN]", "stop": "[STOP]"}
LEVEL_STYLES = {"stop": "bold reverse", "warn": "bold", "info": "", "ok": ""}
ACK_WORD = "[ACK]"
ACKED_TEXT = "acknowledged by the operator"
OPEN_TEXT = "NOT ACKNOWLEDGED - read it, then press a"


def level_tag(level: str) -> str:
    return LEVEL_TAGS.get(level, f"[{level.upper()}]")


def finding_renderable(
    finding: Any, *, cursor: bool = False, needs_ack: bool = False, acked: bool = False
) -> Table:
    """The grid of one finding (see the module doc)."""
    grid = Table.grid(expand=True, padding=(0, 1, 0, 0))
    grid.add_column(width=1, no_wrap=True)  # the cursor mark
    grid.add_column(width=6, no_wrap=True)  # the level word
    grid.add_column(ratio=1)  # message, detail, acknowledgement
    # message and detail quote the image (models, labels, warnings): shown escaped, each
    # line of the detail on a line of its own
    body = Text(esc(finding.message))
    detail = str(getattr(finding, "detail", "") or "")
    if detail:
        body.append("\n")
        style = getattr(finding, "detail_style", "dim")
        body.append("\n".join(esc(line) for line in detail.split("\n")), style=style)
    if needs_ack:
        body.append("\n")
        if acked:
            body.append(ACK_WORD, style="bold reverse")
            body.append(f" {ACKED_TEXT}")
        else:
            body.append(OPEN_TEXT, style="bold")
    grid.add_row(
        Text(">" if cursor else " ", style="bold"),
        Text(level_tag(finding.level), style=LEVEL_STYLES.get(finding.level, "")),
        body,
    )
    return grid


class FindingRow(Static):
    """A finding on the pre-flight screen; the screen moves the cursor and acknowledges."""

    DEFAULT_CSS = """
    FindingRow {
        height: auto;
    }
    FindingRow.-cursor {
        background: $boost;
        text-style: bold;
    }
    """

    def __init__(self, finding: Any, *, needs_ack: bool, index: int) -> None:
        super().__init__(id=f"finding-{index}", classes="finding")
        self.finding = finding
        self.needs_ack = needs_ack
        self.acked = False
        self.cursor = False

    def on_mount(self) -> None:
        self.redraw()

    def set_state(self, *, cursor: bool, acked: bool) -> None:
        if (cursor, acked) != (self.cursor, self.acked):
            self.cursor, self.acked = cursor, acked
            self.set_class(cursor, "-cursor")
            self.redraw()

    def redraw(self) -> None:
        self.update(
            finding_renderable(
                self.finding, cursor=self.cursor, needs_ack=self.needs_ack, acked=self.acked
            )
        )
