"""The hand-drawn widgets, rendered directly (no app): graph, big numbers, bars, glyph sets."""

from __future__ import annotations

import pytest

from rescueui.tui.widgets.bars import render_bar
from rescueui.tui.widgets.bignum import render_big
from rescueui.tui.widgets.glyphs import ASCII, CONSOLE
from rescueui.tui.widgets.graph import render_graph


def _cp437(lines: list[str]) -> None:
    for line in lines:
        line.encode("cp437")  # raises on a glyph the console font lacks


def test_graph_columns_follow_the_samples() -> None:
    lines = render_graph([0, 5, 10], width=5, height=2)
    assert lines == [
        "     "[:2] + " " + " " + CONSOLE.full,  # top row: only the peak is full
        "  " + " " + CONSOLE.full + CONSOLE.full,
    ]
    _cp437(lines)


def test_graph_half_cells_and_newest_on_the_right() -> None:
    # height 2 = 4 half cells; 3/4 of the peak is a full cell plus a half block above it
    lines = render_graph([4, 3], width=2, height=2)
    assert lines[0] == CONSOLE.full + CONSOLE.half
    assert lines[1] == CONSOLE.full + CONSOLE.full


def test_graph_keeps_only_the_last_width_samples_and_scales_to_top() -> None:
    samples = [100.0] * 50 + [1.0, 2.0]
    lines = render_graph(samples, width=4, height=3, top=100.0)
    assert len(lines) == 3 and all(len(line) == 4 for line in lines)
    # the two newest (tiny) samples still show as the smallest visible mark
    assert lines[-1][-2:] == CONSOLE.half * 2
    assert lines[0][:2] == CONSOLE.full * 2


def test_graph_zero_and_empty() -> None:
    assert render_graph([], width=3, height=2) == ["   ", "   "]
    assert render_graph([0, 0], width=3, height=1) == ["   "]
    assert render_graph([1], width=0, height=3) == []


def test_graph_ascii_only_ascii() -> None:
    lines = render_graph([1, 2, 3, 4, 5, 6], width=8, height=3, glyphs=ASCII)
    assert all(line.isascii() for line in lines)
    assert "#" in "".join(lines)


@pytest.mark.parametrize("text", ["0123456789", "123.4", " -"])
def test_big_numbers_are_three_rows_of_console_glyphs(text: str) -> None:
    rows = render_big(text)
    assert len(rows) == 3
    assert len({len(r) for r in rows}) == 1
    _cp437(rows)


def test_big_number_shapes_differ() -> None:
    shapes = {tuple(render_big(d)) for d in "0123456789"}
    assert len(shapes) == 10


def test_big_numbers_ascii_mode_is_plain_text() -> None:
    assert render_big("42.0", ASCII) == ["42.0"]


@pytest.mark.parametrize(
    ("fraction", "filled"), [(0.0, 0), (0.5, 5), (1.0, 10), (1.7, 10), (-1, 0)]
)
def test_bar(fraction: float, filled: int) -> None:
    bar = render_bar(fraction, 10)
    assert bar == CONSOLE.full * filled + CONSOLE.empty * (10 - filled)
    _cp437([bar])
    assert render_bar(fraction, 10, ASCII) == "#" * filled + "-" * (10 - filled)


def test_glyph_sets() -> None:
    for g in (CONSOLE.full, CONSOLE.half, CONSOLE.empty, CONSOLE.upper):
        g.encode("cp437")
    assert all(c.isascii() for c in (ASCII.full, ASCII.half, ASCII.empty, ASCII.upper))
