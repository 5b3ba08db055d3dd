"""The target rule: whether a disk, a partition or a file may be written, and why not.

This module is the one place that decides it. The disk list (``disks.scan_disks`` calls
:func:`disk_verdict`), the engine (:func:`check_target` before planning a restore), the
TUI's target screen and the unattended mode (through both) and capture (its destination,
:func:`capture_destination_problem`) all ask here.

**Aliases are part of the identity.** The same storage can be reached by several paths: a
loop device and a second loop device on the same backing file, the backing file itself,
a hard link to it, a loop device over a partition, the disk that holds a backing file. So
every device and file is reduced to *storage keys* — ``("dev", major, minor)`` for a
block device, ``("file", st_dev, st_ino)`` for a file — and two things conflict when the
keys a write would touch meet the keys something protected rests on:

* what a write to W touches (:func:`touched_by_device`): W itself and, for a loop device,
  its backing file (or, for a loop over a block device, that device and what it touches);
* what a protected thing P rests on (:func:`rests_on_device`): P, its whole disk, and for
  loop devices the backing file and the disk holding that file, recursively.

Protected things: the boot medium (the running system), the medium holding the chosen
image (and the image's own files), every mounted filesystem and every active swap area.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rescueui.core import disks as dsk
from rescueui.core import mounts as mnt
from rescueui.core.disks import (
    REASON_BOOT,
    REASON_HOLDERS,
    REASON_IMAGE,
    REASON_OPTICAL,
    REASON_READ_ONLY,
    REASON_SWAP,
    REASON_VIRTUAL,
    DevNum,
    Disk,
    Partition,
)
from rescueui.core.errors import TargetTooSmallError
from rescueui.core.identity import DiskIdentity
from rescueui.core.units import human_size

Key = tuple[str, int, int]
MAX_DEPTH = 6  # loop over a file on a loop over a file ...: deeper than any real stack
MAX_IMAGE_FILES = 4096  # files of an image folder protected by inode

LOOP_GET_STATUS64 = 0x4C05
_LOOP_INFO64 = struct.Struct("=QQQQQIIII64s64s32sQQ")


def dev_key(devnum: DevNum) -> Key:
    return ("dev", devnum[0], devnum[1])


def file_key(st: os.stat_result) -> Key:
    return ("file", st.st_dev, st.st_ino)


# --------------------------------------------------------------------------- backing files


@dataclass(frozen=True)
class Backing:
    """What a loop device stores its data in."""

    key: Key
    path: str  # for the operator
    block_devnum: DevNum | None = None  # a loop over a block device
    fs_devnum: DevNum | None = None  # a loop over a file: the block device holding the file

    @property
    def label(self) -> str:
        return f"device {self.path}" if self.block_devnum else f"backing file {self.path}"


def _sysdir(devnum: DevNum) -> Path | None:
    return dsk._sys_dir(devnum)


def _loop_status(name: str, devnum: DevNum) -> tuple[int, int, int] | None:
    """(lo_device, lo_inode, lo_rdevice) from LOOP_GET_STATUS64, or None (not root, gone)."""
    try:
        fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISBLK(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != devnum:
            return None
        buf = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LOOP_INFO64.size))
        fields = _LOOP_INFO64.unpack(buf)
        return fields[0], fields[1], fields[2]
    except OSError:
        return None
    finally:
        os.close(fd)


def _fs_devnum_of(st_dev: int, path: str | None) -> DevNum | None:
    """The block device holding a file's filesystem (mount table for anonymous devices)."""
    dev: DevNum = (os.major(st_dev), os.minor(st_dev))
    if dev[0] != 0 and _sysdir(dev) is not None:
        return dev
    if path:
        return dsk._fs_devnum(path)
    return None


def loop_backing(devnum: DevNum) -> Backing | None:
    """The backing file or device of a loop device (None for any other device)."""
    sysdir = _sysdir(devnum)
    if sysdir is None or not (sysdir / "loop").is_dir():
        return None
    path = dsk._read(sysdir / "loop" / "backing_file") or ""
    status = _loop_status(sysdir.name, devnum)
    if status is not None:
        lo_device, lo_inode, lo_rdevice = status
        if lo_rdevice:
            bdev = (os.major(lo_rdevice), os.minor(lo_rdevice))
            return Backing(dev_key(bdev), path or f"/dev/block/{bdev[0]}:{bdev[1]}", bdev)
        return Backing(
            ("file", lo_device, lo_inode), path or "?", fs_devnum=_fs_devnum_of(lo_device, path)
        )
    # Without the ioctl (not root): the path sysfs shows, if it still names a file.
    if not path or path.endswith(" (deleted)"):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        bdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        return Backing(dev_key(bdev), path, bdev)
    return Backing(file_key(st), path, fs_devnum=_fs_devnum_of(st.st_dev, path))


def _whole(devnum: DevNum) -> DevNum:
    return dsk.whole_disk_devnum(devnum) or devnum


def rests_on_device(
    devnum: DevNum,
    label: str | None = None,
    depth: int = 0,
    out: dict[Key, str | None] | None = None,
) -> dict[Key, str | None]:
    """Every key whose overwriting destroys this device's data, with how it is reached
    (None: the device itself or its whole disk; else e.g. "backing file /srv/x.img")."""
    out = {} if out is None else out
    whole = _whole(devnum)
    out.setdefault(dev_key(devnum), label)
    out.setdefault(dev_key(whole), label)
    if depth >= MAX_DEPTH:
        return out
    backing = loop_backing(whole)
    if backing is not None:
        if backing.block_devnum is not None:
            rests_on_device(backing.block_devnum, backing.label, depth + 1, out)
        else:
            out.setdefault(backing.key, backing.label)
            if backing.fs_devnum is not None:
                rests_on_device(
                    backing.fs_devnum, f"the disk holding {backing.path}", depth + 1, out
                )
    return out


def rests_on_path(path: str | Path) -> dict[Key, str | None]:
    """What a file or folder rests on: its own inode (files) and the device(s) below it."""
    out: dict[Key, str | None] = {}
    try:
        st = os.stat(path)
    except OSError:
        return out
    if stat.S_ISREG(st.st_mode):
        out[file_key(st)] = None
    fs = _fs_devnum_of(st.st_dev, os.fspath(path))
    if fs is not None:
        rests_on_device(fs, None, 0, out)
    return out


def touched_by_device(devnum: DevNum, depth: int = 0) -> set[Key]:
    """The keys a write to this device changes: itself and what backs its disk."""
    keys = {dev_key(devnum)}
    if depth >= MAX_DEPTH:
        return keys
    backing = loop_backing(_whole(devnum))
    if backing is not None:
        if backing.block_devnum is not None:
            keys |= touched_by_device(backing.block_devnum, depth + 1)
        else:
            keys.add(backing.key)
    return keys


# --------------------------------------------------------------------------- the context


@dataclass
class Protected:
    """Something that must not be overwritten, and every key it rests on."""

    role: str  # "boot" | "image" | "mounted" | "swap"
    name: str  # the device or file, e.g. "loop3p2" or "/swapfile"
    keys: dict[Key, str | None]
    devnum: DevNum | None = None
    disk: DevNum | None = None  # its whole disk
    mountpoints: list[str] = field(default_factory=list)


@dataclass
class RuleContext:
    """What this machine protects right now; build once per scan or check."""

    boot: list[Protected] = field(default_factory=list)
    image: list[Protected] = field(default_factory=list)
    in_use: list[Protected] = field(default_factory=list)  # mounted filesystems and swap
    image_dirs: list[Path] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        *,
        image_paths: Iterable[str | Path] = (),
        live_mounts: Iterable[str] | None = None,
        entries: list[mnt.MountEntry] | None = None,
    ) -> RuleContext:
        entries = mnt.read_mountinfo() if entries is None else entries
        live = dsk.DEFAULT_LIVE_MOUNTS if live_mounts is None else tuple(live_mounts)
        ctx = cls()
        for dev in sorted(dsk._boot_devnums(live, entries)):
            ctx.boot.append(Protected("boot", _name(dev), rests_on_device(dev), dev, dev))
        for p in image_paths:
            path = Path(p)
            ctx.image_dirs.append(path)
            keys = rests_on_path(path)
            for f in _image_files(path):
                keys.setdefault(f, None)
            fs = dsk._fs_devnum(path, entries)
            ctx.image.append(Protected("image", str(path), keys, fs, _whole(fs) if fs else None))
        for dev, mounted in mnt.mounts_by_devnum(entries).items():
            ctx.in_use.append(
                Protected(
                    "mounted",
                    _name(dev),
                    rests_on_device(dev),
                    dev,
                    _whole(dev),
                    [e.mountpoint for e in mounted],
                )
            )
        for swap in mnt.read_swaps():
            dev = swap.devnum if swap.kind == "partition" else None
            if dev is not None:
                ctx.in_use.append(
                    Protected("swap", _name(dev), rests_on_device(dev), dev, _whole(dev))
                )
                continue
            with contextlib.suppress(OSError):
                st = os.stat(swap.filename)
                if stat.S_ISREG(st.st_mode):
                    ctx.in_use.append(Protected("swap", swap.filename, {file_key(st): None}))
        return ctx

    @classmethod
    def from_devnums(
        cls, *, boot: Iterable[DevNum] = (), image: Iterable[DevNum] = ()
    ) -> RuleContext:
        """A context from known whole-disk numbers only (tests, canned disk lists)."""
        ctx = cls()
        ctx.boot = [Protected("boot", _name(d), {dev_key(d): None}, d, d) for d in boot]
        ctx.image = [Protected("image", _name(d), {dev_key(d): None}, d, d) for d in image]
        return ctx


def _name(devnum: DevNum) -> str:
    sysdir = _sysdir(devnum)
    return sysdir.name if sysdir is not None else f"{devnum[0]}:{devnum[1]}"


def _image_files(path: Path) -> set[Key]:
    """Inodes of the image's own files (a hard link to one of them is not a target)."""
    out: set[Key] = set()
    try:
        st = os.stat(path)
    except OSError:
        return out
    if stat.S_ISREG(st.st_mode):
        return {file_key(st)}
    if not stat.S_ISDIR(st.st_mode):
        return out
    with contextlib.suppress(OSError), os.scandir(path) as it:
        for n, entry in enumerate(it):
            if n >= MAX_IMAGE_FILES:
                break
            with contextlib.suppress(OSError):
                est = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(est.st_mode):
                    out.add(file_key(est))
    return out


# --------------------------------------------------------------------------- verdicts


def _alias(label: str | None) -> str:
    return f" (the same storage, through {label})" if label else ""


def _match(keys: set[Key], protected: Protected) -> tuple[bool, str | None]:
    """Whether ``keys`` meet what ``protected`` rests on, and through what (None: directly,
    which is preferred when both hold)."""
    labels = [protected.keys[k] for k in keys if k in protected.keys]
    if not labels:
        return False, None
    if None in labels:
        return True, None
    return True, sorted(str(x) for x in labels)[0]


def _mounted_reason(points: list[str], who: str | None) -> str:
    return dsk._mounted_reason(points, who)


def _media(devnum: DevNum, ctx: RuleContext) -> list[tuple[str, str | None]]:
    """Boot and image media this device is on: (role, alias label or None). Never a target,
    also not one partition of them."""
    keys = touched_by_device(devnum) | touched_by_device(_whole(devnum))
    found: list[tuple[str, str | None]] = []
    for role, group in (("boot", ctx.boot), ("image", ctx.image)):
        for p in group:
            hit, label = _match(keys, p)
            if hit:
                found.append((role, label))
                break
    return found


def _in_use_reasons(
    devnum: DevNum, own_disk: DevNum, keys: set[Key], ctx: RuleContext, *, whole_disk: bool
) -> list[str]:
    """Mounted filesystems and swap areas that a write to ``keys`` would destroy.

    For a whole-disk target everything resting on it counts, its own partitions included.
    For a partition target the disk's *other* partitions do not (they are other ranges of
    the same disk or backing file); only the partition itself and foreign devices do.
    """
    reasons: list[str] = []
    for p in ctx.in_use:
        hit, label = _match(keys, p)
        if not hit:
            continue
        own = p.devnum is not None and (p.devnum == devnum or p.disk == own_disk)
        if not whole_disk and own and p.devnum != devnum:
            continue  # another partition of the same disk
        if own:
            who = None if p.devnum == devnum else p.name
            if p.role == "mounted":
                reasons.append(_mounted_reason(p.mountpoints, who))
            else:
                reasons.append(REASON_SWAP + (f" ({who})" if who else ""))
            continue
        if p.role == "mounted":
            where = ", ".join(p.mountpoints[:3])
            reasons.append(
                f"mounted through another device: /dev/{p.name} on {where}{_alias(label)}"
            )
        else:
            what = f"/dev/{p.name}" if p.devnum is not None else p.name
            reasons.append(f"{REASON_SWAP} through {what}{_alias(label)}")
    return reasons


def disk_verdict(disk: Disk, ctx: RuleContext) -> tuple[set[str], list[str]]:
    """Roles and reasons (in the order a technician should read them) for a whole disk."""
    media = _media(disk.devnum, ctx)
    roles = {role for role, _ in media}
    reasons = [
        (REASON_BOOT if role == "boot" else REASON_IMAGE) + _alias(label) for role, label in media
    ]
    # Canned disk lists (tests) carry facts the machine does not have: their mounts too.
    optical = dsk.is_optical(disk.name)
    if optical:
        reasons.append(REASON_OPTICAL)
    if disk.bus in ("md", "dm"):
        reasons.append(REASON_VIRTUAL)
    in_use = _in_use_reasons(
        disk.devnum, disk.devnum, touched_by_device(disk.devnum), ctx, whole_disk=True
    )
    # The disk record's own mounts and swap (also for canned records with no sysfs behind them).
    direct: list[str] = []
    if disk.mountpoints:
        direct.append(_mounted_reason(disk.mountpoints, None))
    for p in disk.partitions:
        if p.mountpoints:
            direct.append(_mounted_reason(p.mountpoints, p.name))
    if disk.swap:
        direct.append(REASON_SWAP)
    for p in disk.partitions:
        if p.swap:
            direct.append(f"{REASON_SWAP} ({p.name})")
    reasons += direct + [r for r in in_use if r not in direct]
    if disk.holders:
        reasons.append(f"{REASON_HOLDERS}: {', '.join(disk.holders)}")
    for p in disk.partitions:
        if p.holders:
            reasons.append(f"{REASON_HOLDERS}: {', '.join(p.holders)} ({p.name})")
    if disk.read_only and not optical:
        reasons.append(REASON_READ_ONLY)
    return roles, list(dict.fromkeys(reasons))


def partition_verdict(disk: Disk, part: Partition, ctx: RuleContext) -> list[str]:
    """Why one existing partition may not receive an image partition (empty: it may)."""
    reasons: list[str] = []
    if disk.bus == "file":
        return [
            "partitions of a disk image file have no device of their own; restore the whole disk"
        ]
    media = _media(part.devnum, ctx)
    # Canned disk records (the demo) carry their roles themselves.
    media += [(role, None) for role in sorted(disk.roles) if role not in {r for r, _ in media}]
    reasons += [
        ("it is on the boot medium" if role == "boot" else "it is on the disk that holds the image")
        + _alias(label)
        for role, label in media
        if role in ("boot", "image")
    ]
    if part.read_only or disk.read_only:
        reasons.append(REASON_READ_ONLY)
    direct: list[str] = []
    if part.mountpoints:
        direct.append(f"mounted: {', '.join(part.mountpoints)}")
    if part.swap:
        direct.append("in use as swap")
    keys = {dev_key(part.devnum)} | (touched_by_device(disk.devnum) - {dev_key(disk.devnum)})
    in_use = _in_use_reasons(part.devnum, disk.devnum, keys, ctx, whole_disk=False)
    if direct:
        in_use = [r for r in in_use if not r.startswith((dsk.REASON_MOUNTED, REASON_SWAP))]
    reasons += direct + in_use
    if part.holders:
        reasons.append(f"in use by {', '.join(part.holders)}")
    return list(dict.fromkeys(reasons))


def file_verdict(path: str | Path, ctx: RuleContext) -> list[str]:
    """Why a regular file may not be a target (empty: it may)."""
    reasons: list[str] = []
    p = Path(os.path.abspath(os.fspath(path)))
    real = p.resolve()
    for d in ctx.image_dirs:
        dr = d.resolve()
        if real == dr or dr in real.parents:
            reasons.append(f"it is inside the image folder {d}")
    try:
        st = os.stat(p)
    except OSError:
        return reasons
    keys = {file_key(st)}
    if any(_match(keys, prot)[0] for prot in ctx.boot):
        reasons.append("it holds the running system (the boot medium's storage)")
    if any(_match(keys, prot)[0] for prot in ctx.image):
        reasons.append(
            "it is a file of the selected image, or the storage of the medium holding it"
        )
    for prot in ctx.in_use:
        if not _match(keys, prot)[0]:
            continue
        if prot.role == "mounted":
            where = ", ".join(prot.mountpoints[:3])
            reasons.append(f"it stores a mounted filesystem: /dev/{prot.name} on {where}")
        elif prot.devnum is None:
            reasons.append("it is an active swap file")
        else:
            reasons.append(f"it stores an active swap area (/dev/{prot.name})")
    return list(dict.fromkeys(reasons))


# --------------------------------------------------------------------------- fit


def check_fit(ident: DiskIdentity, needed: int, what: str) -> None:
    """TargetTooSmallError if the target ``ident`` cannot hold ``needed`` bytes."""
    if ident.size_bytes < needed:
        short = needed - ident.size_bytes
        raise TargetTooSmallError(
            f"{ident.path} ({human_size(ident.size_bytes)}, {ident.size_bytes} bytes) is "
            f"{short} bytes ({human_size(short)}) too small for {what}: it needs at least "
            f"{needed} bytes ({human_size(needed)}).",
            hint=f"Nothing was written. Choose a target of at least {human_size(needed)}.",
        )


def fit_problem(needed: int, have: int, target: str, what: str = "the image") -> str | None:
    """Why ``have`` bytes cannot hold ``needed`` (None if they can)."""
    if needed <= have:
        return None
    return (
        f"too small: {what} needs {human_size(needed)}, {target} has {human_size(have)} "
        f"({human_size(needed - have)} short)"
    )


# --------------------------------------------------------------------------- capture


def capture_destination_problem(source: str | Path, destination: str | Path) -> str | None:
    """Why an image of ``source`` may not be written to the folder ``destination``.

    The destination must not rest on anything the source's storage is: not on the disk
    being captured, nor on a partition of it, nor through another loop device on the same
    backing file.
    """
    try:
        st = os.stat(source)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        src_keys = touched_by_device(dev) | {dev_key(_whole(dev))}
        src_keys |= {dev_key(p) for p in _partitions_of(_whole(dev))}
    elif stat.S_ISREG(st.st_mode):
        src_keys = {file_key(st)}
    else:
        return None
    probe = Path(os.path.abspath(os.fspath(destination)))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    dest_keys = rests_on_path(probe)
    for k in src_keys:
        if k in dest_keys:
            label = dest_keys[k]
            return (
                f"the destination {destination} is on the disk being captured ({source})"
                + _alias(label)
            )
    return None


def _partitions_of(disk: DevNum) -> list[DevNum]:
    out: list[DevNum] = []
    sysdir = _sysdir(disk)
    if sysdir is None:
        return out
    with contextlib.suppress(OSError):
        for child in sysdir.iterdir():
            if (child / "partition").exists():
                dn = dsk._devnum_of_sysdir(child)
                if dn is not None:
                    out.append(dn)
    return out


def loop_aliases(path: str | Path) -> list[tuple[DevNum, str]]:
    """Other loop devices that reach the storage of the disk or file at ``path`` (a second
    loop on the same backing file, a loop over the disk or one of its partitions, a loop over
    the file): ``(device number, kernel name)``."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    if stat.S_ISBLK(st.st_mode):
        dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        whole = _whole(dev)
        keys = touched_by_device(dev) | touched_by_device(whole)
        keys |= {dev_key(p) for p in _partitions_of(whole)}
        own = {whole, dev}
    elif stat.S_ISREG(st.st_mode):
        keys, own = {file_key(st)}, set()
    else:
        return []
    out: list[tuple[DevNum, str]] = []
    for sysdir in sorted(Path("/sys/block").glob("loop*")):
        if not (sysdir / "loop").is_dir():
            continue  # not bound to a file
        loop = dsk._devnum_of_sysdir(sysdir)
        if loop is None or loop in own:
            continue
        if touched_by_device(loop) & keys:
            out.append((loop, sysdir.name))
    return out
