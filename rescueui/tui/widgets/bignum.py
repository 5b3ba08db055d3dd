"""Large numbers for rates, drawn with full and half blocks (the console font has no Digits pieces).

Three rows per character. In ASCII mode the number is written as plain bold text instead.
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from rescueui.tui.widgets.glyphs import CONSOLE, Glyphs

F, U, L = "\u2588", "\u2580", "\u2584"  # full, upper half, lower half (all in CP437)

_FONT: dict[str, tuple[str, str, str]] = {
    "0": (F + U + F, F + " " + F, U + U + U),
    "1": (U + F + " ", " " + F + " ", U + U + U),
    "2": (U + U + F, F + U + U, U + U + U),
    "3": (U + U + F, " " + U + F, U + U + U),
    "4": (F + " " + F, U + U + F, "  " + U),
    "5": (F + U + U, U + U + F, U + U + U),
    "6": (F + U + U, F + U + F, U + U + U),
    "7": (U + U + F, "  " + F, "  " + U),
    "8": (F + U + F, F + U + F, U + U + U),
    "9": (F + U + F, U + U + F, U + U + U),
    ".": (" ", " ", U),
    " ": (" ", " ", " "),
    "-": ("  ", U + U, "  "),
}
ROWS = 3


def render_big(text: str, glyphs: Glyphs = CONSOLE) -> list[str]:
    """The rows of ``text`` in the block font; unknown characters become blanks."""
    if glyphs.ascii:
        return [text]
    rows = ["", "", ""]
    for i, ch in enumerate(text):
        shape = _FONT.get(ch, _FONT[" "])
        for r in range(ROWS):
            rows[r] += ("" if i == 0 else " ") + shape[r]
    return rows


class BigNumber(Widget):
    """A caption, then a number in block characters, then its unit."""

    DEFAULT_CSS = """
    BigNumber { height: 4; width: 1fr; }
    """

    value: reactive[str] = reactive("0.0")

    def __init__(
        self, caption: str, unit: str, glyphs: Glyphs = CONSOLE, *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.caption = caption
        self.unit = unit
        self.glyphs = glyphs

    def render(self) -> Text:
        rows = render_big(self.value, self.glyphs)
        text = Text(self.caption, style="bold")
        if self.glyphs.ascii:
            text.append("\n")
            text.append(f"{self.value} {self.unit}", style="bold reverse")
            return text
        for i, row in enumerate(rows):
            text.append("\n")
            text.append(row, style="bold")
            if i == ROWS - 1:
                text.append(f" {self.unit}", style="bold")
        return text
