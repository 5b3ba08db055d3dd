"""Make a filesystem again, with the identity of another: same type, UUID, label and
features, at another size (a restore onto a smaller disk).

::

    ident = identity_of("/dev/loop5", "ext4")      # read-only: the source's superblock
    make_like(ident, "/dev/sdb2")                   # mkfs with its UUID, label, features

The filesystems' own tools read the source (``dumpe2fs -h``, ``xfs_info``, ``blkid``) and
make the copy (``mkfs.ext4 -U -L -O -b -I``, ``mkfs.xfs -m uuid= -L`` …). Only the types in
:data:`MAKEABLE` can be made again; the rest keep their size and are copied block for
block by the caller.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Any

from rescueui.core.errors import RescueError
from rescueui.core.fsmount import EXT_TYPES
from rescueui.core.tools import find_tool
from rescueui.core.units import MiB

MAKEABLE = (*sorted(EXT_TYPES), "xfs")

# The smallest filesystem each type's mkfs makes (xfsprogs 5.19+: "must be larger than
# 300MB", which it counts in MiB).
MIN_BYTES = {"ext2": 16 * MiB, "ext3": 16 * MiB, "ext4": 16 * MiB, "xfs": 301 * MiB}
# Room a new filesystem's own structures take whatever it holds, where its used bytes as
# statvfs counts them leave it out: xfs's internal log (mkfs.xfs 6.1 makes it 64 MiB for
# filesystems of 310 MiB to 50 GiB, measured here).
OVERHEAD_BYTES = {"xfs": 64 * MiB}

# ext features that describe a state, not a choice: mke2fs cannot set them
_EXT_STATE = {"needs_recovery", "orphan_present", "recover", "journal_dev", "snapshot_bitmap"}


class FsMakeError(RescueError):
    """A filesystem could not be read or made again."""


@dataclass
class FsIdentity:
    """What a filesystem is, beyond its contents: enough to make it again."""

    fs_type: str
    uuid: str | None
    label: str | None
    block_size: int | None = None
    features: list[str] = field(default_factory=list)  # ext: the feature names
    options: dict[str, str] = field(default_factory=dict)  # ext: inode size, reserve; xfs: -m/-i…
    inodes_used: int | None = None  # ext: so the copy gets enough inodes

    def to_dict(self) -> dict[str, Any]:
        return {
            "fs_type": self.fs_type,
            "uuid": self.uuid,
            "label": self.label,
            "block_size": self.block_size,
            "features": list(self.features),
            "options": dict(self.options),
        }


def _run(cmd: list[str], what: str, timeout: float = 600) -> str:
    tool = find_tool(cmd[0])
    if tool is None:
        raise FsMakeError(
            f"The program {cmd[0]!r} is not installed; {what} needs it.",
            hint="It is part of the live image; on another system install the filesystem's tools.",
        )
    try:
        proc = subprocess.run(
            [tool, *cmd[1:]],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
            env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except subprocess.TimeoutExpired as exc:
        raise FsMakeError(f"{what}: {cmd[0]} did not finish within {timeout:.0f} s.") from exc
    if proc.returncode != 0:
        text = proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
        out = " ".join(text.splitlines()[:3])[:400]  # the error; a usage text may follow
        raise FsMakeError(f"{what} failed: {out}")
    return proc.stdout


def _blkid(device: str) -> dict[str, str]:
    out = _run(["blkid", "-p", "-o", "export", device], f"Reading the filesystem on {device}")
    tags: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            tags[key.strip()] = value.strip()
    return tags


def identity_of(device: str, fs_type: str) -> FsIdentity:
    """The identity of the filesystem on ``device`` (read only; nothing is written)."""
    fs = fs_type.lower()
    if fs not in MAKEABLE:
        raise FsMakeError(f"A {fs_type} filesystem cannot be made again by rescueui.")
    tags = _blkid(device)
    ident = FsIdentity(fs, tags.get("UUID") or None, tags.get("LABEL") or None)
    if fs in EXT_TYPES:
        _ext_identity(device, ident)
    else:
        _xfs_identity(device, ident)
    return ident


def _ext_identity(device: str, ident: FsIdentity) -> None:
    out = _run(["dumpe2fs", "-h", device], f"Reading the ext superblock of {device}")
    sb: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            sb[key.strip()] = value.strip()
    ident.features = [f for f in sb.get("Filesystem features", "").split() if f not in _EXT_STATE]
    if sb.get("Block size", "").isdigit():
        ident.block_size = int(sb["Block size"])
    if sb.get("Inode size", "").isdigit():
        ident.options["inode_size"] = sb["Inode size"]
    blocks, reserved = sb.get("Block count", ""), sb.get("Reserved block count", "")
    if blocks.isdigit() and reserved.isdigit() and int(blocks):
        pct = round(100 * int(reserved) / int(blocks), 1)
        ident.options["reserved_percent"] = f"{pct:g}"
    inodes, free = sb.get("Inode count", ""), sb.get("Free inodes", "")
    if inodes.isdigit() and free.isdigit():
        ident.inodes_used = int(inodes) - int(free)
    if sb.get("Directory Hash Seed"):
        ident.options["hash_seed"] = sb["Directory Hash Seed"]


_XFS_KEYS = {
    "crc": "m",
    "finobt": "m",
    "rmapbt": "m",
    "reflink": "m",
    "bigtime": "m",
    "inobtcount": "m",
    "isize": "i",
    "sparse": "i",
    "nrext64": "i",
    "ftype": "n",
    "sectsz": "s",
}


def _xfs_identity(device: str, ident: FsIdentity) -> None:
    out = _run(["xfs_info", device], f"Reading the xfs superblock of {device}")
    section = ""
    for line in out.splitlines():
        head = re.match(r"^(\w+)\s*=", line)
        if head:
            section = head.group(1)
        for key, value in re.findall(r"([a-z0-9_-]+)=(\S+?),?(?=\s|$)", line):
            if key in _XFS_KEYS and key not in ident.options:
                ident.options[key] = value
            if key == "bsize" and section == "data" and value.isdigit():
                ident.block_size = int(value)


def make_like(ident: FsIdentity, device: str, size_bytes: int) -> list[str]:
    """Make a filesystem like ``ident`` on ``device`` (its whole size, ``size_bytes``);
    returns the command run. An ext copy gets the usual inode density, or more where the
    source's files need it in the smaller size."""
    if ident.fs_type in EXT_TYPES:
        cmd = ["mke2fs", "-F", "-q", "-t", ident.fs_type]
        if ident.uuid:
            cmd += ["-U", ident.uuid]
        if ident.label:
            cmd += ["-L", ident.label]
        if ident.block_size:
            cmd += ["-b", str(ident.block_size)]
        if ident.options.get("inode_size"):
            cmd += ["-I", ident.options["inode_size"]]
        if ident.options.get("reserved_percent"):
            cmd += ["-m", ident.options["reserved_percent"]]
        if ident.features:
            cmd += ["-O", "none," + ",".join(ident.features)]
        if ident.inodes_used is not None:
            needed = ident.inodes_used + ident.inodes_used // 4 + 1024
            least = ident.block_size or 1024  # mke2fs: not below the block size
            cmd += ["-i", str(max(least, min(16384, size_bytes // needed)))]
        if ident.options.get("hash_seed"):
            cmd += ["-E", f"hash_seed={ident.options['hash_seed']}"]
    elif ident.fs_type == "xfs":
        cmd = ["mkfs.xfs", "-f", "-q"]
        meta = [f"{k}={v}" for k, v in ident.options.items() if _XFS_KEYS.get(k) == "m"]
        if ident.uuid:
            meta.append(f"uuid={ident.uuid}")
        if meta:
            cmd += ["-m", ",".join(meta)]
        inode = [
            f"{'size' if k == 'isize' else k}={v}"
            for k, v in ident.options.items()
            if _XFS_KEYS.get(k) == "i"
        ]
        if inode:
            cmd += ["-i", ",".join(inode)]
        if ident.options.get("ftype"):
            cmd += ["-n", f"ftype={ident.options['ftype']}"]
        if ident.options.get("sectsz"):
            cmd += ["-s", f"size={ident.options['sectsz']}"]
        if ident.block_size:
            cmd += ["-b", f"size={ident.block_size}"]
        if ident.label:
            cmd += ["-L", ident.label]
    else:
        raise FsMakeError(f"A {ident.fs_type} filesystem cannot be made again by rescueui.")
    cmd.append(device)
    _run(cmd, f"Making the {ident.fs_type} filesystem on {device}")
    made = identity_of(device, ident.fs_type)
    if (made.uuid or "").lower() != (ident.uuid or "").lower() or (made.label or "") != (
        ident.label or ""
    ):
        raise FsMakeError(
            f"The {ident.fs_type} filesystem made on {device} has UUID {made.uuid} and label "
            f"{made.label!r}, not {ident.uuid} and {ident.label!r} as the image's.",
        )
    return cmd


def check_clean(device: str, fs_type: str) -> str:
    """Check the (unmounted) filesystem on ``device`` without changing it; returns the
    tool's verdict, raises :class:`FsMakeError` when it finds a problem."""
    fs = fs_type.lower()
    if fs in EXT_TYPES:
        _run(["e2fsck", "-f", "-n", device], f"Checking the filesystem on {device}")
        return "e2fsck -f -n: clean"
    if fs == "xfs":
        _run(["xfs_repair", "-n", device], f"Checking the filesystem on {device}")
        return "xfs_repair -n: clean"
    raise FsMakeError(f"rescueui has no check for a {fs_type} filesystem.")


def swap_identity(device: str) -> FsIdentity:
    tags = _blkid(device)
    return FsIdentity("swap", tags.get("UUID") or None, tags.get("LABEL") or None)


def make_swap_like(ident: FsIdentity, device: str) -> list[str]:
    cmd = ["mkswap", "-f"]
    if ident.uuid:
        cmd += ["-U", ident.uuid]
    if ident.label:
        cmd += ["-L", ident.label]
    cmd.append(device)
    _run(cmd, f"Making the swap area on {device}")
    return cmd
