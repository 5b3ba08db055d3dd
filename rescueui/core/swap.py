"""A swap area's header made anew by ``mkswap`` (the one place that does it).

Swap holds nothing worth keeping across a restore: neither a capture nor a Clonezilla folder
copies its pages. What the restored system needs is a valid header with the same UUID and
label (``/etc/fstab`` may name the swap by either); ``mkswap`` makes it, on an empty
in-memory file the size of the partition, and the header is written like any data.
"""

from __future__ import annotations

import os
import subprocess

from rescueui.core.errors import RescueError
from rescueui.core.text import safe_text
from rescueui.core.tools import find_tool

HEADER_BYTES = 64 * 1024  # mkswap writes the first page (up to 64 KiB pages); nothing after
MIN_SWAP_BYTES = 64 * 1024


def swap_header(size: int, uuid: str | None, label: str | None) -> bytes:
    """The first bytes of a swap area of ``size`` bytes with this UUID and label (zeros
    after the header). Raises RescueError when ``mkswap`` is missing or refuses."""
    mkswap = find_tool("mkswap")
    if mkswap is None:
        raise RescueError("mkswap is not available to make the swap header.")
    if size < MIN_SWAP_BYTES:
        raise RescueError(f"A swap area of {size} bytes is too small for mkswap.")
    fd = os.memfd_create("rescueui-swap", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        cmd = [mkswap, "-q"]
        if uuid:
            cmd += ["-U", uuid]
        if label:
            cmd += ["-L", label]
        try:
            proc = subprocess.run(
                [*cmd, f"/dev/fd/{fd}"],
                capture_output=True,
                text=True,
                pass_fds=(fd,),
                timeout=60,
                env={**os.environ, "LC_ALL": "C"},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RescueError(f"mkswap could not be run: {exc}.") from exc
        if proc.returncode != 0:
            raise RescueError(f"mkswap failed: {safe_text(proc.stderr.strip()[:160])}.")
        return os.pread(fd, min(HEADER_BYTES, size), 0)
    finally:
        os.close(fd)
