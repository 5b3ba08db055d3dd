"""The characters the app draws with.

The Linux console font is roughly CP437: it has full/half blocks and shades and single/double
box lines, but no rounded corners, eighth blocks, thin bar pieces or emoji. Every glyph the
app draws itself comes from one of these two sets; ``ASCII`` is for serial lines and poor fonts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Glyphs:
    name: str
    full: str  # a filled cell
    half: str  # lower half of a cell (graphs)
    empty: str  # unfilled part of a bar
    upper: str  # upper half of a cell (big digits)
    ascii: bool

    @property
    def border(self) -> str:
        return "ascii" if self.ascii else "solid"


CONSOLE = Glyphs(
    name="console", full="\u2588", half="\u2584", empty="\u2591", upper="\u2580", ascii=False
)
ASCII = Glyphs(name="ascii", full="#", half=".", empty="-", upper="#", ascii=True)
