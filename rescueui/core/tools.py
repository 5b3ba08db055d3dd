"""Finding the external programs the engine runs (sfdisk, blkid, mkfs.*, resize2fs, ...).

Debian keeps most of them in /usr/sbin, which is not on an ordinary user's PATH; the demo
runs without root, so every lookup also searches the system directories.
"""

from __future__ import annotations

import shutil

from rescueui.core.errors import ToolMissingError

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_tool(name: str) -> str | None:
    """Full path of ``name`` from PATH, else from the system directories; None if absent."""
    return shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)


def require_tool(name: str, *, message: str | None = None, hint: str | None = None) -> str:
    """Full path of ``name``, or :class:`ToolMissingError` with an operator's message."""
    path = find_tool(name)
    if path is None:
        raise ToolMissingError(
            message or f"The program '{name}' is not installed.",
            hint=hint or "Install it (the live image has it), then try again.",
        )
    return path
