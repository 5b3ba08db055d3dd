"""Image sources: every kind of image behind one seam (see :mod:`.source`)."""

from rescueui.core.images.source import (
    Extent,
    ForeignImage,
    Integrity,
    detect_kind,
    open_image,
)

__all__ = ["Extent", "ForeignImage", "Integrity", "detect_kind", "open_image"]
