"""Text from outside (images, manifests, file names, udev) made safe for a terminal.

An image is untrusted: its manifest may carry ESC/OSC sequences, carriage returns or
bidirectional overrides that would repaint or hide what the operator reads. Every front end
and the reports' text form pass such text through :func:`safe_text`, which shows control
characters escaped (``\\x1b``) instead of sending them to the terminal.
"""

from __future__ import annotations

import re

# C0 controls (but tab and newline, handled by ``keep``), DEL, C1 controls, and the Unicode
# format characters that reorder or hide text (bidi embeddings/overrides/isolates, line and
# paragraph separators).
_UNSAFE = re.compile(
    r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_UNSAFE_NO_NEWLINE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def safe_text(value: object, *, newlines: bool = False) -> str:
    """``str(value)`` with every control character shown escaped.

    ``newlines=True`` keeps line feeds (for multi-line texts such as a report); tabs are
    always kept. Surrogates from undecodable file names are shown as ``\\udcXX``.
    """
    text = value if isinstance(value, str) else str(value)
    pattern = _UNSAFE_NO_NEWLINE if newlines else _UNSAFE
    text = pattern.sub(_escape, text)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        text = "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text
