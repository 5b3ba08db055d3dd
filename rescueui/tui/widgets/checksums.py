"""The checksum panel: chunks verified, the current chunk's BLAKE3, the stream's expected root."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from rescueui.tui.text import esc


def checksum_text(p: Any, expected_roots: dict[str, str], mismatch: Any, width: int) -> Text:
    """Lines for the checksum panel from a Progress snapshot (None before the first one)."""
    text = Text()
    if p is None:
        text.append("Waiting for the first chunk...")
        return text
    hexw = max(width - 16, 16)
    text.append("Chunks verified ", style="bold")
    text.append(f"{p.chunks_done} / {p.chunks_total}")
    if p.stream:
        text.append(f"   stream {esc(p.stream)}: {p.stream_chunks_done} / {p.stream_chunks_total}")
    chunk = p.last_chunk
    text.append("\nChunk BLAKE3    ", style="bold")
    if chunk is not None:
        text.append(chunk.blake3[:hexw])
        text.append(
            f"\n  {esc(chunk.stream)} #{chunk.index} at {chunk.offset}"
            f"{' (zero chunk)' if chunk.zero else ''} "
        )
        if not getattr(chunk, "checked", True):
            text.append("read (the image has no checksum for it)")
        else:
            text.append(
                "OK" if chunk.ok else "MISMATCH", style="bold" if chunk.ok else "bold reverse"
            )
    else:
        text.append("-")
    root = expected_roots.get(p.stream or "", "")
    text.append("\nStream root     ", style="bold")
    text.append((root or "-")[:hexw])
    text.append("\nStatus          ", style="bold")
    if mismatch is not None:
        text.append(" MISMATCH - nothing after this chunk was written ", style="bold reverse")
    elif p.chunks_done and chunk is not None and not getattr(chunk, "checked", True):
        text.append("no checksums in this image: BLAKE3 computed as read, checked by the read-back")
    elif p.chunks_done:
        text.append("every chunk so far matches its recorded BLAKE3")
    else:
        text.append("waiting")
    return text
