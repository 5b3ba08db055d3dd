"""The command line's one way to the terminal: outside text is always shown escaped.

Text from an image (manifest fields: model, vendor, host name, warnings, labels...), from file
names and from udev is untrusted: it may hold ESC/OSC/CSI sequences, carriage returns, C1
controls or bidi overrides that would repaint or hide what the technician reads, or Rich
markup (``[bold]``) that would change how it looks. Every CLI module writes through here:

- :func:`say` (stderr) and :func:`echo` (stdout) take a template of ours and the outside
  values separately: ``say("Image: {}", image.dir)``. Each value is shown on one line
  (:func:`~rescueui.core.text.safe_text`, a newline in it is escaped too, so it cannot fake a
  line of ours), and the whole line goes through ``safe_text`` once more (keeping our own
  newlines), so even outside text that slipped into a template never reaches the terminal raw.
- :func:`echo_block` for a multi-line text of ours that quotes outside text (a report).
- :func:`echo_json` for ``--json`` (JSON escapes every control character itself).
- :func:`console` for Rich output (Rich is imported on first use) (tables, coloured findings): a Rich console that never reads
  markup or emoji codes in strings and escapes control characters in every string it renders
  (tables' cells too). Styled text is built with :func:`plain`, never with markup strings.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import TYPE_CHECKING, Any, TextIO

from rescueui.core.text import safe_text

if TYPE_CHECKING:  # Rich is imported when first drawn with: a job's start-up time counts
    from rich.console import Console
    from rich.style import Style
    from rich.text import Text

__all__ = ["console", "echo", "echo_block", "echo_json", "line", "plain", "say"]


def line(template: str = "", *values: object) -> str:
    """``template`` filled with ``values`` shown escaped on one line, the whole escaped again
    (our own newlines kept). Without values the template is used as is (no ``{}`` needed)."""
    text = template.format(*(safe_text(v) for v in values)) if values else template
    return safe_text(text, newlines=True)


def _write(stream: TextIO, text: str, end: str, flush: bool) -> None:
    stream.write(text + end)
    if flush:
        stream.flush()


def say(template: str = "", *values: object, end: str = "\n", flush: bool = True) -> None:
    """A line for the operator on stderr (plans, prompts, progress lines, failures)."""
    _write(sys.stderr, line(template, *values), end, flush)


def echo(template: str = "", *values: object, end: str = "\n", flush: bool = False) -> None:
    """A line of the command's result on stdout."""
    _write(sys.stdout, line(template, *values), end, flush)


def echo_block(text: str, *, end: str = "") -> None:
    """A multi-line text (a report's text form) on stdout, control characters escaped."""
    _write(sys.stdout, safe_text(text, newlines=True), end, False)


def echo_json(data: Any) -> None:
    """``--json`` output. ``ensure_ascii`` escapes every control and non-ASCII character."""
    _write(sys.stdout, json.dumps(data, indent=2, ensure_ascii=True), "\n", False)


def plain(value: object, style: str | Style = "", *, newlines: bool = False) -> Text:
    """A Rich ``Text`` of an outside value: no markup read, control characters escaped (a
    line feed too, unless ``newlines``)."""
    from rich.text import Text

    return Text(safe_text(value, newlines=newlines), style=style)


@cache
def _safe_console_class() -> type[Console]:
    from rich.console import Console

    class SafeConsole(Console):
        """A Rich console for outside text: markup, emoji codes and highlighting off by
        default, and every string it renders (``print("...")``, table cells) escaped with
        ``safe_text``. ``Text`` objects are taken as they are: build them with
        :func:`plain`."""

        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("markup", False)
            kwargs.setdefault("emoji", False)
            kwargs.setdefault("highlight", False)
            super().__init__(**kwargs)

        def render_str(self, text: str, **kwargs: Any) -> Text:
            return super().render_str(safe_text(text, newlines=True), **kwargs)

    return SafeConsole


def console(*, stderr: bool = False, **kwargs: Any) -> Console:
    """A Rich console that escapes every string it renders (see the module doc)."""
    return _safe_console_class()(stderr=stderr, **kwargs)


def partition_number(text: str) -> int:
    """``--partition N``: a partition number, ASCII digits only (``int`` would also read
    Arabic-Indic or other Unicode digits), 1 to 9999."""
    import argparse

    value = text.strip()
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 9999:
        raise argparse.ArgumentTypeError(
            f"{safe_text(repr(text))} is not a partition number; give 1 to 9999 in digits 0-9"
        )
    return int(value)
