"""The title line: program, demo marker and where we are in the guided restore."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from rescueui.tui.state import STEPS


def steps_text(current: str, *, demo: bool) -> Text:
    text = Text()
    text.append("rescueui", style="bold")
    if demo:
        text.append(" DEMO", style="bold reverse")
    text.append(" ")
    for i, step in enumerate(STEPS):
        if i:
            text.append(" > ", style="dim")
        if step == current:
            text.append(step, style="bold reverse")
        else:
            text.append(step, style="dim")
    return text


class StepsBar(Static):
    DEFAULT_CSS = """
    StepsBar { height: 1; width: 1fr; }
    """

    def __init__(self, current: str, *, demo: bool) -> None:
        super().__init__(steps_text(current, demo=demo))
