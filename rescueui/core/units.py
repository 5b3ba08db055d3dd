"""Sizes and rates as a technician reads them."""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB


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
