"""Restore targets: is this target safe to overwrite, and opening it for writing.

Two layers of safety before any write:

1. :func:`check_target_safety` refuses the boot medium, the medium holding the image,
   mounted / swap / held / read-only devices (the DISKS module's classification when it
   is available, plus independent checks here from sysfs and /proc, so a bug in one
   layer does not open the boot disk).
2. :func:`open_target` re-checks the confirmed identity just before opening, then opens
   with ``O_EXCL`` (the kernel refuses a mounted or in-use block device) and ``O_DIRECT``
   where the target accepts it.

Nothing in this module writes; the restore engine writes through :class:`TargetHandle`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from rescueui.core import blockdev, mounts
from rescueui.core.disks import DEFAULT_LIVE_MOUNTS, Disk, find_disk, whole_disk_devnum
from rescueui.core.errors import DiskError, RestoreError, UnsafeTargetError
from rescueui.core.identity import ConfirmedTarget, DiskIdentity, recheck

LIVE_MOUNTS: tuple[str, ...] = DEFAULT_LIVE_MOUNTS


# ---------------------------------------------------------------- sysfs helpers


def _sys(devnum: tuple[int, int]) -> Path:
    return Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _disk_members(disk: tuple[int, int]) -> list[tuple[int, int]]:
    """The disk and all its partitions, as device numbers."""
    out = [disk]
    sysdir = _sys(disk).resolve()
    with contextlib.suppress(OSError):
        for child in sysdir.iterdir():
            if (child / "partition").exists():
                dev = _read(child / "dev")
                if dev:
                    a, b = dev.split(":")
                    out.append((int(a), int(b)))
    return out


def _devnum_of_fs(path: str | Path) -> tuple[int, int] | None:
    """Device number of the block device holding ``path``'s filesystem, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.major(st.st_dev), os.minor(st.st_dev)


def _mounted_devnums() -> dict[tuple[int, int], list[str]]:
    """Device number -> mountpoints, from /proc/self/mountinfo."""
    return {
        dev: [e.mountpoint for e in entries]
        for dev, entries in mounts.mounts_by_devnum(mounts.read_mountinfo()).items()
    }


def _swap_devnums() -> set[tuple[int, int]]:
    """Block devices (not the filesystems of swap files) in use as swap."""
    return mounts.swap_devnums(e for e in mounts.read_swaps() if e.kind == "partition")


def _swap_files() -> set[tuple[int, int]]:
    """(st_dev, st_ino) of the active swap files."""
    out: set[tuple[int, int]] = set()
    for entry in mounts.read_swaps():
        with contextlib.suppress(OSError):
            st = os.stat(entry.filename)
            if stat.S_ISREG(st.st_mode):
                out.add((st.st_dev, st.st_ino))
    return out


def boot_disks(live_mounts: tuple[str, ...] = LIVE_MOUNTS) -> set[tuple[int, int]]:
    """Whole disks holding the running system (``/`` and the live medium)."""
    out: set[tuple[int, int]] = set()
    for mp in live_mounts:
        dn = _devnum_of_fs(mp)
        if dn and dn[0] != 0 and _sys(dn).exists():
            out.add(whole_disk_devnum(dn) or dn)
    return out


# ---------------------------------------------------------------- safety


def _own_block_reasons(
    ident: DiskIdentity, image_dir: Path | None, live_mounts: tuple[str, ...]
) -> list[str]:
    """Independent checks from sysfs and /proc (a second layer under disks.scan_disks)."""
    assert ident.devnum is not None
    reasons: list[str] = []
    disk = whole_disk_devnum(ident.devnum) or ident.devnum
    if disk in boot_disks(live_mounts):
        reasons.append("it is the boot medium (the running system lives on it)")
    if image_dir is not None:
        img = _devnum_of_fs(image_dir)
        if img and img[0] != 0 and _sys(img).exists() and whole_disk_devnum(img) == disk:
            reasons.append(f"it holds the image {image_dir}")
    # For a whole disk, everything on it counts; for a partition, only the partition.
    members = [ident.devnum] if ident.partition else _disk_members(disk)
    mounted = _mounted_devnums()
    swaps = _swap_devnums()
    for dn in members:
        name = _sys(dn).resolve().name
        for mp in mounted.get(dn, []):
            reasons.append(f"mounted: /dev/{name} on {mp}")
        if dn in swaps:
            reasons.append(f"in use as swap: /dev/{name}")
        with contextlib.suppress(OSError):
            holders = [h.name for h in (_sys(dn) / "holders").iterdir()]
            if holders:
                reasons.append(f"in use by {', '.join(holders)} (/dev/{name} has holders)")
    if _read(_sys(ident.devnum) / "ro") == "1" or _read(_sys(disk) / "ro") == "1":
        reasons.append("read-only")
    return reasons


def _disks_module_reasons(
    ident: DiskIdentity, image_dir: Path | None, live_mounts: tuple[str, ...]
) -> tuple[list[str], Disk | None]:
    """Reasons from the disk classification (:mod:`rescueui.core.disks`), and its Disk record."""
    found = find_disk(
        ident.path,
        live_mounts=list(live_mounts),
        image_paths=[str(image_dir)] if image_dir is not None else [],
    )
    if found is None:
        return [], None
    if not ident.partition:
        return list(found.reasons), found
    # A partition restore: the parent disk's other partitions being mounted is fine; what
    # matters is the partition itself and the disk's roles.
    reasons: list[str] = []
    if "boot" in found.roles:
        reasons.append("it is on the boot medium")
    if "image" in found.roles:
        reasons.append("it is on the disk that holds the image")
    for part in found.partitions:
        if tuple(part.devnum) == ident.devnum:
            reasons += [f"mounted on {mp}" for mp in part.mountpoints]
            if part.swap:
                reasons.append("in use as swap")
            if part.holders:
                reasons.append(f"in use by {', '.join(part.holders)}")
            if part.read_only:
                reasons.append("read-only")
    if found.read_only:
        reasons.append("read-only")
    return reasons, found


def check_target_safety(
    ident: DiskIdentity,
    *,
    image_dir: str | Path | None = None,
    live_mounts: tuple[str, ...] = LIVE_MOUNTS,
) -> Disk | None:
    """Refuse (UnsafeTargetError) a target that must not be overwritten; never opens it.

    Returns the DISKS module's ``Disk`` record of the target's disk when available
    (for showing what will be destroyed), else None.
    """
    image_path = Path(image_dir).resolve() if image_dir is not None else None
    if ident.kind == "file":
        target = Path(ident.path).resolve()
        if image_path is not None and (target == image_path or image_path in target.parents):
            raise UnsafeTargetError(
                f"{ident.path} is inside the image folder {image_path}; it cannot be the target.",
                hint="Choose a file or disk outside the image folder.",
            )
        if ident.inode in _swap_files():
            raise UnsafeTargetError(
                f"{ident.path} is an active swap file; it cannot be the target.",
                hint="Choose another file or disk.",
            )
        return None
    if ident.devnum is None:
        raise UnsafeTargetError(f"{ident.path}: device number unknown; refusing.")
    reasons, found = _disks_module_reasons(ident, image_path, live_mounts)
    if not reasons:
        # Second layer: our own reading of sysfs and /proc, in case the classification
        # above missed something (or the DISKS module is not available).
        reasons = _own_block_reasons(ident, image_path, live_mounts)
    if reasons:
        what = "partition" if ident.partition else "disk"
        raise UnsafeTargetError(
            f"Refusing to overwrite {ident.describe()}: this {what} is not a safe target — "
            + "; ".join(dict.fromkeys(reasons))
            + ".",
            hint="Nothing was written. Choose another target (`rescueui disks` shows which "
            "disks can be targets), or unmount what is in use first.",
        )
    return found


# ---------------------------------------------------------------- opening


class TargetHandle:
    """An open, confirmed target. Writes go through :meth:`pwrite` and :meth:`zero`."""

    def __init__(self, identity: DiskIdentity, fd: int, direct: bool) -> None:
        self.identity = identity
        self.path = identity.path
        self.fd = fd
        self.direct = direct
        self.align = 512
        if identity.kind == "block":
            with contextlib.suppress(OSError, DiskError):
                self.align = blockdev.logical_sector_size(fd)
        self._buffered_fd: int | None = None

    def _buffered(self) -> int:
        if self._buffered_fd is None:
            # Same device, same exclusivity: this process already holds O_EXCL.
            self._buffered_fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        return self._buffered_fd

    def pwrite(self, view: memoryview, offset: int) -> None:
        """Write all of ``view`` at ``offset`` (O_DIRECT when aligned, buffered otherwise)."""
        n = len(view)
        fd = self.fd
        if self.direct and (n % self.align or offset % self.align):
            fd = self._buffered()
        done = 0
        while done < n:
            try:
                w = os.pwrite(fd, view[done:], offset + done)
            except OSError as exc:
                # O_DIRECT also wants an aligned memory address; buffers not from the
                # aligned pool go through the buffered descriptor.
                if exc.errno != errno.EINVAL or fd != self.fd or not self.direct:
                    raise
                fd = self._buffered()
                continue
            if w <= 0:
                raise OSError(errno.EIO, f"short write at offset {offset + done}")
            done += w

    def zero(self, offset: int, length: int) -> str:
        return blockdev.zero_range(self.fd, offset, length)

    def sync(self) -> None:
        if self._buffered_fd is not None:
            os.fdatasync(self._buffered_fd)
        os.fdatasync(self.fd)

    def close(self) -> None:
        for fd in (self._buffered_fd, self.fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._buffered_fd = None
        self.fd = -1

    def __enter__(self) -> TargetHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BLKROGET = 0x125E  # _IO(0x12, 94)


def _read_only(fd: int) -> bool:
    """BLKROGET: the kernel's read-only flag of an open block device."""
    try:
        buf = fcntl.ioctl(fd, BLKROGET, b"\0" * 4)
    except OSError:
        return False
    return int.from_bytes(buf, "little") != 0


def open_target(confirmed: ConfirmedTarget, *, direct: bool = True) -> TargetHandle:
    """Re-check the confirmed identity, then open the target for writing with O_EXCL.

    Raises TargetChangedError if the device at the path is not the confirmed one, and
    UnsafeTargetError if the kernel says it is mounted or in use (EBUSY) or read-only.
    """
    ident = recheck(confirmed)
    flags = os.O_WRONLY | os.O_CLOEXEC
    if ident.kind == "block":
        flags |= os.O_EXCL
    fd = -1
    used_direct = False
    try:
        if direct:
            try:
                fd = os.open(ident.path, flags | os.O_DIRECT)
                used_direct = True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        if fd < 0:
            fd = os.open(ident.path, flags)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise UnsafeTargetError(
                f"{ident.path} is mounted or in use (the kernel refused exclusive access).",
                hint="Nothing was written. Unmount its filesystems, stop swap/RAID/LVM on it, "
                "or choose another target.",
            ) from exc
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise UnsafeTargetError(
                f"{ident.path} cannot be opened for writing: {exc.strerror} (read-only?).",
                hint="Nothing was written. Check the write-protect switch or choose another target.",
            ) from exc
        raise RestoreError(
            f"Cannot open {ident.path} for writing: {exc.strerror}.",
            hint="Nothing was written. Check the device and try again.",
        ) from exc
    if ident.kind == "block" and _read_only(fd):
        os.close(fd)
        raise UnsafeTargetError(
            f"{ident.path} is read-only (write-protected); it cannot be overwritten.",
            hint="Nothing was written. Check the write-protect switch or choose another target.",
        )
    if ident.kind == "file":
        # One writer per target file, also against a second rescueui on the same file.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise UnsafeTargetError(
                f"{ident.path} is in use by another program (it holds a lock on it).",
                hint="Nothing was written. Stop the other program or choose another target.",
            ) from exc
    # The path might have been swapped between the recheck and the open: compare the fd.
    st = os.fstat(fd)
    same = (
        (os.major(st.st_rdev), os.minor(st.st_rdev)) == ident.devnum
        if ident.kind == "block"
        else (st.st_dev, st.st_ino) == ident.inode
    )
    if not same:
        os.close(fd)
        from rescueui.core.errors import TargetChangedError

        raise TargetChangedError(
            f"{ident.path} changed while it was being opened.",
            hint="Nothing was written. Select and confirm the target again.",
        )
    return TargetHandle(ident, fd, used_direct)
