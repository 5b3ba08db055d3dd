"""Sizes and rates as a technician reads them."""

from __future__ import annotations

import re

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB


# digits (ASCII only: str.isdigit takes '²' and int() reads Arabic-Indic digits; at most 30,
# so that no typed text makes a number too long for int()), an optional binary unit, an
# optional "iB"/"B"; underscores may group the digits (1_073_741_824)
_SIZE_RE = re.compile(r"^\s*(\d[\d_]{0,29})\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE | re.ASCII)
_UNITS = {"K": KiB, "M": MiB, "G": GiB, "T": TiB}


def parse_size(text: str, *, plain: int = 1) -> int | None:
    """The bytes a size typed by the operator means (``4G``, ``512MiB``, ``1073741824``;
    K/M/G/T are powers of 1024), or None when it cannot be read. ``plain``: the unit of a
    number without one (bytes, or MiB for memory); a number with "B" alone is bytes. The
    caller says what was wrong, in the words of the field it came from."""
    m = _SIZE_RE.match(text or "")
    if not m or m.group(1).endswith("_"):
        return None
    unit = m.group(2).upper()
    factor = _UNITS[unit] if unit else 1 if m.group(3) else plain  # "512B": bytes
    return int(m.group(1).replace("_", "")) * factor


def human_size(n: int | float, *, binary: bool = True) -> str:
    """``human_size(1536)`` -> ``'1.5 KiB'``. Exact byte counts stay available elsewhere."""
    step = 1024.0 if binary else 1000.0
    units = (
        ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] if binary else ["B", "kB", "MB", "GB", "TB", "PB"]
    )
    value = float(n)
    for unit in units:
        if abs(value) < step or unit == units[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}"
        value /= step
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float) -> str:
    """Rates in decimal MB/s, as disk vendors and dd print them."""
    return f"{bytes_per_second / 1e6:.1f} MB/s"


def human_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
