"""Fill a DataTable with columns sized from the data itself.

DataTable measures auto-width columns against the app console on idle; if that happens before the
terminal size is known (seen on a slow first start under TERM=linux) every column collapses to
its header width. Explicit widths computed from the cell text avoid that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.widgets import DataTable


def _width(cell: Any) -> int:
    if isinstance(cell, Text):
        return cell.cell_len
    return len(str(cell))


def fill_table(
    table: DataTable[Any],
    columns: Sequence[tuple[str, str]],
    rows: Sequence[tuple[str, Sequence[Any]]],
) -> None:
    """Replace the columns ``(key, label)`` and rows ``(row key, cells)`` of ``table``."""
    widths = [len(label) for _key, label in columns]
    for _key, cells in rows:
        for i, cell in enumerate(cells):
            widths[i] = max(widths[i], _width(cell))
    table.clear(columns=True)
    for (key, label), width in zip(columns, widths, strict=True):
        table.add_column(label, key=key, width=width)
    for key, cells in rows:
        table.add_row(*cells, key=key)
