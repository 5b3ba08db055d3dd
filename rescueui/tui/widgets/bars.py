"""A progress bar by bytes drawn with full blocks (or ASCII), no thin line pieces."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from rescueui.tui.widgets.glyphs import CONSOLE, Glyphs


def render_bar(fraction: float, width: int, glyphs: Glyphs = CONSOLE) -> str:
    """``width`` cells: filled part in full blocks, the rest in light shade (or ``#``/``-``)."""
    if width <= 0:
        return ""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(fraction * width + 1e-9)
    return glyphs.full * filled + glyphs.empty * (width - filled)


class BlockBar(Widget):
    """``[#####-----]  42.0%`` on one line; the percentage is always written as text."""

    DEFAULT_CSS = """
    BlockBar { height: 1; width: 1fr; }
    """

    fraction: reactive[float] = reactive(0.0)
    label: reactive[str] = reactive("")

    def __init__(self, glyphs: Glyphs = CONSOLE, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.glyphs = glyphs

    def render(self) -> Text:
        pct = f" {self.fraction * 100:5.1f}%"
        label = f" {self.label}" if self.label else ""
        width = max(self.size.width - len(pct) - len(label), 1)
        text = Text()
        text.append(render_bar(self.fraction, width, self.glyphs), style="bold")
        text.append(pct, style="bold")
        text.append(label)
        return text
