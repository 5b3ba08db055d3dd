"""What of a partition an image holds, in one line for every screen and report:
``p2 ext4: 58.1 GiB used of 200 GiB - 141.9 GiB not copied``."""

from __future__ import annotations

from typing import Any

from rescueui.core.text import safe_text
from rescueui.core.units import human_size


def usage_line(
    name: str,
    fs_type: str | None,
    size: int,
    used_bytes: int | None,
    all_blocks: str | None,
    *,
    swap: bool = False,
) -> str:
    """``used_bytes`` None: every byte is (or was) copied, ``all_blocks`` says why."""
    what = f"{name} {safe_text(fs_type)}" if fs_type else name
    if swap or (fs_type == "swap" and used_bytes is not None):
        return f"{what}: {human_size(size)}, not copied (a fresh swap header, same UUID and label)"
    if used_bytes is None:
        why = f" ({safe_text(all_blocks)})" if all_blocks else ""
        return f"{what}: every byte of {human_size(size)} copied{why}"
    return (
        f"{what}: {human_size(used_bytes)} used of {human_size(size)} - "
        f"{human_size(size - used_bytes)} not copied"
    )


def stream_usage(stream: Any) -> str | None:
    """The line for an image's partition stream, or None when the image does not say
    (format 1 images, foreign kinds without a used-block map)."""
    if getattr(stream, "used_bytes", None) is None and not getattr(stream, "all_blocks", None):
        return None
    return usage_line(
        stream.name, stream.fs_type, stream.size_bytes, stream.used_bytes, stream.all_blocks
    )


def image_usage(image: Any) -> list[str]:
    """One line per partition stream of ``image`` that knows what its filesystem uses."""
    lines = []
    for s in image.streams:
        if s.kind in ("partition", "disk"):
            line = stream_usage(s)
            if line is not None:
                lines.append(line)
    return lines
