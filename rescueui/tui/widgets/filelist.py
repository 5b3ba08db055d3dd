"""A list of very many one-line rows, drawn lazily: only the lines on screen are rendered.

A ``DataTable`` measures every cell of every row it is given: 10 000 rows cost about 3 s
on this machine (measured, ``bench/files_screen.py``). This list asks its owner for the
text of a line only when that line is drawn, so a folder of 10 000 entries costs what a
screenful does. The owner gives the number of rows, a function for a row's text at a given
width and one saying whether a row is marked; the list keeps the cursor and scrolls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.segment import Segment
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

LineText = Callable[[int, int], str]  # (row, width) -> exactly ``width`` cells of text
IsMarked = Callable[[int], bool]


class FileList(ScrollView, can_focus=True):
    """Rows ``0 .. row_count - 1``, one line each; ``cursor`` is the highlighted row."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"filelist--cursor", "filelist--marked"}
    DEFAULT_CSS = """
    FileList {
        background: $surface;
        color: $foreground;
        overflow-x: hidden;
        overflow-y: auto;
    }
    FileList > .filelist--cursor {
        background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground;
        text-style: $block-cursor-blurred-text-style;
    }
    FileList:focus > .filelist--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    FileList > .filelist--marked {
        text-style: bold;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True)

    def __init__(
        self,
        line_text: LineText,
        is_marked: IsMarked,
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.line_text = line_text
        self.is_marked = is_marked
        self.row_count = 0

    # -- the owner's side --------------------------------------------------
    def set_rows(self, count: int, cursor: int = 0) -> None:
        """Show ``count`` rows (their text is asked for when drawn), the cursor on ``cursor``."""
        self.row_count = count
        self.virtual_size = Size(self.scrollable_content_region.width, count)
        self.scroll_to(y=0, animate=False, immediate=True)
        self.cursor = max(0, min(cursor, count - 1)) if count else 0
        self.refresh()

    def refresh_row(self, row: int) -> None:
        """Draw ``row`` again (its text or its mark changed)."""
        self.refresh_line(row)

    # -- drawing -------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        row = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        base = self.rich_style
        if row >= self.row_count or width <= 0:
            return Strip.blank(width, base)
        style = base
        if self.is_marked(row):
            style += self.get_component_rich_style("filelist--marked", partial=True)
        if row == self.cursor:
            style += self.get_component_rich_style("filelist--cursor")
        return Strip([Segment(self.line_text(row, width), style)], width)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, self.row_count)
        self._show_cursor()

    # -- the cursor ----------------------------------------------------------
    def watch_cursor(self, old: int, new: int) -> None:
        if old != new:
            self.refresh_line(old)
        self.refresh_line(new)
        self._show_cursor()

    def _show_cursor(self) -> None:
        height = self.scrollable_content_region.height
        top = round(self.scroll_offset.y)
        if height <= 0:
            return
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def _go(self, row: int) -> None:
        if self.row_count:
            self.cursor = max(0, min(row, self.row_count - 1))

    def action_move(self, step: int) -> None:
        self._go(self.cursor + step)

    def action_page(self, pages: int) -> None:
        self._go(self.cursor + pages * max(1, self.scrollable_content_region.height - 1))

    def action_jump(self, row: int) -> None:
        self._go(row if row >= 0 else self.row_count - 1)
