"""The checksum panel: chunks verified, the current chunk's BLAKE3, the stream's expected root.

Its words follow what the image carries to check against (the kind's ``Integrity.code``):
our folders a BLAKE3 per chunk, a raw image with a bmap a SHA-256 per range, a VM disk or a
raw image without one nothing (each piece's BLAKE3 is computed as it is read, for the
read-back verify)."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from rescueui.tui.text import esc


def checks_title(integrity: str) -> str:
    """The panel's title for an image whose integrity code is ``integrity``."""
    if integrity.startswith("range-"):
        algo = integrity.removeprefix("range-").upper().replace("SHA", "SHA-")
        return f"{algo} checks (bmap ranges), BLAKE3 as read"
    if integrity == "none":
        return "BLAKE3 as read (the image has no checksums)"
    return "BLAKE3 checks"


def _all_matched(integrity: str) -> str:
    if integrity.startswith("range-"):
        algo = integrity.removeprefix("range-").upper().replace("SHA", "SHA-")
        return f"every bmap range so far matches its {algo}"
    if integrity in ("", "chunk-blake3"):
        return "every chunk so far matches its recorded BLAKE3"
    return "every piece so far passed the image's own checks"


def checksum_text(
    p: Any, expected_roots: dict[str, str], mismatch: Any, width: int, *, integrity: str = ""
) -> Text:
    """Lines for the checksum panel from a Progress snapshot (None before the first one).
    ``integrity``: the image's ``Integrity.code`` ("" when unknown: our own words)."""
    text = Text()
    if p is None:
        text.append("Waiting for the first chunk...")
        return text
    hexw = max(width - 16, 16)
    label = "Chunks verified " if integrity in ("", "chunk-blake3") else "Pieces          "
    text.append(label, style="bold")
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
        text.append(_all_matched(integrity))
    else:
        text.append("waiting")
    return text
