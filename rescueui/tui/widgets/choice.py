"""One of a few values on one line, chosen by keys (no mouse, no drop-down glyphs).

The line is focusable (Tab reaches it); Space or Right takes the next value, Left the one
before. The chosen value stands in brackets and in reverse, so it reads without colour on
the Linux console and in the ASCII mode; a focused line starts with ``>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widget import Widget


class ChoiceLine(Widget, can_focus=True):
    DEFAULT_CSS = """
    ChoiceLine {
        height: 1;
        width: 1fr;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space,right", "step(1)", "Next choice", key_display="Space", id="next-choice"),
        Binding("left", "step(-1)", "Previous choice", show=False, id="previous-choice"),
    ]

    def __init__(
        self,
        label: str,
        values: Sequence[str],
        value: str | None = None,
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        if not values:
            raise ValueError("a choice needs at least one value")
        self.label = label
        self.values = tuple(values)
        self.index = self.values.index(value) if value in self.values else 0

    @property
    def value(self) -> str:
        return self.values[self.index]

    def action_step(self, step: int) -> None:
        self.index = (self.index + step) % len(self.values)
        self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def render(self) -> Text:
        text = Text("> " if self.has_focus else "  ", style="bold")
        text.append(f"{self.label}: ", style="bold" if self.has_focus else "")
        for i, v in enumerate(self.values):
            if i == self.index:
                text.append(f"[{v}]", style="bold reverse")
            else:
                text.append(f" {v} ")
            text.append(" ")
        return text
