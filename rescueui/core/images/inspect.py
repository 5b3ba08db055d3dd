"""What an image is, without restoring it: kind, layout, sizes, integrity, source machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rescueui.core.images.source import open_image
from rescueui.core.images.usage import stream_usage


def inspect_image(path: str | Path) -> dict[str, Any]:
    """A plain description of the image at ``path`` (any kind), for the front ends.

    Opens and closes the image; raises the image's own errors (ImageError and kin).
    """
    image = open_image(path)
    try:
        m = image.manifest
        table = m.partition_table or {}
        info: dict[str, Any] = {
            "path": str(image.path),
            "kind": image.kind,
            "format": getattr(image, "fmt", None) or getattr(image, "compression", None),
            "description": image.describe(),
            "disk_bytes": int(image.extent_bytes),
            "size_is_estimate": bool(getattr(image, "size_is_estimate", False)),
            "sector_size": int(m.source_disk.get("logical_sector_size") or 512),
            "partition_table": table.get("label"),
            "partitions": [
                {
                    "number": s.partition_number,
                    "start_bytes": s.start_bytes,
                    "size_bytes": s.size_bytes,
                    "fs_type": s.fs_type,
                    "label": s.label,
                    "used_bytes": s.used_bytes,
                    "usage": stream_usage(s),
                }
                for s in m.streams
                if s.kind == "partition"
            ],
            "integrity": image.integrity.code,
            "integrity_words": image.integrity.words,
            "sequential": bool(image.sequential),
            "resumable": bool(image.supports_resume),
            "source_machine": dict(m.host or {}),
            "source_disk": dict(m.source_disk or {}),
            "warnings": list(m.warnings or []),
            "identity": m.manifest_blake3,
        }
        if image.kind == "rescueui":
            info["created"] = m.created
            info["stored_bytes"] = image.stored_bytes
        return info
    finally:
        image.close()
