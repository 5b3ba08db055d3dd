"""A throughput graph over time, one column per sample, in full/half blocks (or ASCII).

:func:`render_graph` is a pure function so it is tested by rendering lines directly.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from rescueui.tui.widgets.glyphs import CONSOLE, Glyphs


def render_graph(
    samples: Sequence[float],
    width: int,
    height: int,
    glyphs: Glyphs = CONSOLE,
    *,
    top: float | None = None,
) -> list[str]:
    """``height`` lines of ``width`` cells; the newest sample is the rightmost column.

    Each column is filled from the bottom to ``sample / top`` of the height, at half-cell
    resolution (a half block on top of full blocks). ``top`` defaults to the largest sample.
    """
    if width <= 0 or height <= 0:
        return []
    shown = list(samples)[-width:]
    peak = top if top is not None else max(shown, default=0.0)
    columns: list[int] = []  # filled half-cells per column
    for value in shown:
        if peak <= 0 or value <= 0:
            columns.append(0)
        else:
            halves = round(min(value / peak, 1.0) * height * 2)
            columns.append(max(halves, 1))
    pad = width - len(columns)
    lines = []
    for row in range(height):  # row 0 is the top line
        level = height - row - 1  # cells below this one
        line = [" "] * pad
        for halves in columns:
            full_cells, half = divmod(halves, 2)
            if level < full_cells:
                line.append(glyphs.full)
            elif level == full_cells and half:
                line.append(glyphs.half)
            else:
                line.append(" ")
        lines.append("".join(line))
    return lines


class ThroughputGraph(Widget):
    """MB/s over time; the scale (peak) is written on the left."""

    DEFAULT_CSS = """
    ThroughputGraph { height: 6; width: 1fr; }
    """

    LABEL_WIDTH = 10

    def __init__(self, glyphs: Glyphs = CONSOLE, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.glyphs = glyphs
        self.samples: list[float] = []

    def set_samples(self, samples: Sequence[float]) -> None:
        self.samples = list(samples)
        self.refresh()

    def render(self) -> Text:
        width = max(self.size.width - self.LABEL_WIDTH, 1)
        height = max(self.size.height, 1)
        peak = max(self.samples[-width:], default=0.0)
        lines = render_graph(self.samples, width, height, self.glyphs, top=peak or None)
        text = Text()
        for i, line in enumerate(lines):
            if i == 0:
                label = f"{peak / 1e6:6.0f} MB/s"[: self.LABEL_WIDTH - 1].rjust(
                    self.LABEL_WIDTH - 1
                )
            elif i == len(lines) - 1:
                label = "0".rjust(self.LABEL_WIDTH - 1)
            else:
                label = ""
            text.append(label.ljust(self.LABEL_WIDTH - 1) + "|", style="dim")
            text.append(line, style="bold")
            if i < len(lines) - 1:
                text.append("\n")
        return text
