"""Outside text on the screen: never read as markup, never a control sequence.

Model names, serials and labels (udev), file names and everything in an image's manifest
(source disk, machine, warnings, partition labels) are untrusted. A Textual ``Static`` or
``DataTable`` cell given a ``str`` parses it as markup (``[bold]``, ``[@click=...]``), and a
raw ESC, OSC, carriage return or bidi override in it would reach the terminal. So every screen
shows outside values through :func:`esc` (inside a ``rich.text.Text`` it builds with
``append``, which reads no markup) or :func:`plain` (a ``Text`` of its own), both built on
:func:`rescueui.core.text.safe_text`.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text

from rescueui.core.text import safe_text


def esc(value: object) -> str:
    """An outside value for a line of ours: control characters, line breaks too, escaped.
    Only put the result into a ``Text`` (``Text(...)``, ``.append``), never into a markup
    string."""
    return safe_text(value)


def plain(value: object, style: str | Style = "", *, newlines: bool = False) -> Text:
    """A ``Text`` showing ``value`` as it is: no markup read, control characters escaped
    (line breaks kept only with ``newlines``, for multi-line texts such as a report)."""
    return Text(safe_text(value, newlines=newlines), style=style)
