"""Mounting one filesystem of a disk for a while, the one way the engine does it.

Read-only mounts use the options that never write, not even a journal replay:
ext2/3/4 ``ro,noload``, xfs ``ro,norecovery,nouuid``, btrfs ``ro,rescue=nologreplay``. Where
the kernel has no driver (this may lack vfat, exFAT or NTFS), the FUSE drivers do it:
``fusefat`` (with ``fsname`` set to the device, so that tools probing the mount, such
as ``grub-install``, find the device behind it), ``ntfs-3g``, ``mount.exfat-fuse``.

:func:`mounted` releases the mount when the block ends, also on errors: a busy mount
is detached lazily rather than left behind.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rescueui.core.errors import DiskError
from rescueui.core.tools import find_tool, require_tool

EXT_TYPES = frozenset({"ext2", "ext3", "ext4"})
FAT_TYPES = frozenset({"vfat", "fat", "fat12", "fat16", "fat32", "msdos"})

# The options that never write, per filesystem, for a read-only mount.
_READ_ONLY = {
    "ext2": "ro,noload",
    "ext3": "ro,noload",
    "ext4": "ro,noload",
    "xfs": "ro,norecovery,nouuid",
    "btrfs": "ro,rescue=nologreplay",
}

# FUSE drivers for filesystems the kernel may lack: argv before (options, device, dir).
_FUSE = {
    "vfat": "fusefat",
    "exfat": "mount.exfat-fuse",
    "ntfs": "ntfs-3g",
}

MOUNT_ROOT = Path("/run/rescueui/mnt")


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, errors="replace", timeout=300, check=False
    )
    if proc.returncode != 0:
        out = proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
        raise DiskError(f"{what} failed: {out[-400:]}.")


def mount(device: str, where: str | Path, fs_type: str, *, read_only: bool) -> str:
    """Mount ``device`` (a filesystem of ``fs_type``, as blkid names it) at ``where``.

    Returns how it was mounted ("kernel ext4 ro,noload", "FUSE fusefat"); raises
    :class:`DiskError` when it cannot be."""
    fs = fs_type.lower()
    kind = "ext4" if fs in EXT_TYPES else "vfat" if fs in FAT_TYPES else fs
    # xfs refuses a second filesystem with the same UUID (a restored copy of a source that
    # is mounted here): nouuid lets the copy mount
    opts = _READ_ONLY.get(fs, "ro") if read_only else ("rw,nouuid" if fs == "xfs" else "rw")
    try:
        _run(
            [require_tool("mount"), "-t", kind, "-o", opts, device, os.fspath(where)],
            f"Mounting {device} ({fs_type}, {opts})",
        )
        return f"kernel {kind} {opts}"
    except DiskError:
        if kind not in _FUSE or find_tool(_FUSE[kind]) is None:
            raise
    # the kernel lacks the driver (this one has no vfat): the FUSE one
    tool = require_tool(_FUSE[kind])
    fuse_opts = ["ro"] if read_only else (["rw+"] if kind == "vfat" else ["rw"])
    fuse_opts.append(f"fsname={device}")
    _run([tool, "-o", ",".join(fuse_opts), device, os.fspath(where)], f"Mounting {device}")
    return f"FUSE {os.path.basename(tool)}" + (" read-only" if read_only else "")


def unmount(where: str | Path) -> str | None:
    """Release a mount; a busy one is detached lazily. Returns a warning, or None."""
    umount = find_tool("umount") or "umount"
    path = os.fspath(where)
    proc = subprocess.run([umount, path], capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    lazy = subprocess.run([umount, "-l", path], capture_output=True, text=True, check=False)
    if lazy.returncode == 0:
        return f"{path} was busy and was detached lazily ({proc.stderr.strip()})."
    return f"{path} could not be unmounted: {lazy.stderr.strip() or proc.stderr.strip()}."


def mount_dir(purpose: str) -> Path:
    """A new empty directory to mount on, under :data:`MOUNT_ROOT`."""
    MOUNT_ROOT.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=f"{purpose}-", dir=MOUNT_ROOT))


@contextlib.contextmanager
def mounted(device: str, fs_type: str, *, read_only: bool, purpose: str = "fs") -> Iterator[Path]:
    """``device`` mounted on a new directory for the block; released and removed after."""
    where = mount_dir(purpose)
    try:
        mount(device, where, fs_type, read_only=read_only)
        try:
            yield where
        finally:
            unmount(where)
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()
