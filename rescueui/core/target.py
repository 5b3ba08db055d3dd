"""Restore targets: may this target be overwritten, and holding it for the whole job.

1. :func:`check_target_safety` asks the target rule (:mod:`rescueui.core.targets.rule`,
   the one place that decides it: boot medium, the medium holding the image, mounted /
   swap / held / read-only devices, and every alias of them — loop devices on the same
   backing file, the backing file itself, hard links) and refuses with its reasons.
2. :func:`open_target` re-checks the confirmed identity just before opening, then opens
   with ``O_EXCL`` (the kernel refuses a mounted or in-use block device) and ``O_DIRECT``
   where the target accepts it, plus a read-only *guard* descriptor that is held until the
   job ends. While it is held the kernel keeps the device (a detached loop device stays
   bound, a pulled disk's name is not given to the next disk), and every later step that
   writes calls :meth:`TargetHandle.ensure` first: the path must still name the confirmed
   device, with the same disk sequence number, size and backing file, not scheduled for
   detaching.

Nothing in this module writes; the restore engine writes through :class:`TargetHandle`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from rescueui.core import blockdev
from rescueui.core.disks import DEFAULT_LIVE_MOUNTS, Disk, scan_disks, whole_disk_devnum
from rescueui.core.errors import DiskError, RestoreError, TargetChangedError, UnsafeTargetError
from rescueui.core.identity import ConfirmedTarget, DiskIdentity, recheck
from rescueui.core.targets import rule

LIVE_MOUNTS: tuple[str, ...] = DEFAULT_LIVE_MOUNTS


# ---------------------------------------------------------------- safety


def _refuse(ident: DiskIdentity, reasons: list[str]) -> UnsafeTargetError:
    what = "partition" if ident.partition else ("file" if ident.kind == "file" else "disk")
    return UnsafeTargetError(
        f"Refusing to overwrite {ident.describe()}: this {what} is not a safe target — "
        + "; ".join(dict.fromkeys(reasons))
        + ".",
        hint="Nothing was written. Choose another target (the disk list shows which disks "
        "can be targets), or unmount what is in use first.",
    )


def check_target_safety(
    ident: DiskIdentity,
    *,
    image_dir: str | Path | None = None,
    live_mounts: tuple[str, ...] = LIVE_MOUNTS,
) -> Disk | None:
    """Refuse (UnsafeTargetError) a target the target rule does not allow; never opens it.

    Returns the ``Disk`` record of the target's disk (for showing what will be destroyed),
    or None for a file target. A block device that the disk scan does not find is refused
    (the rule cannot vouch for what it does not see).
    """
    images = [Path(image_dir)] if image_dir is not None else []
    ctx = rule.RuleContext.build(image_paths=images, live_mounts=live_mounts)
    if ident.kind == "file":
        reasons = rule.file_verdict(ident.path, ctx)
        if reasons:
            raise _refuse(ident, reasons)
        return None
    if ident.devnum is None:
        raise UnsafeTargetError(f"{ident.path}: device number unknown; refusing.")
    disk_dev = whole_disk_devnum(ident.devnum) or ident.devnum
    found = next(
        (d for d in scan_disks(rule_context=ctx, live_mounts=live_mounts) if d.devnum == disk_dev),
        None,
    )
    if found is None:
        raise _refuse(ident, ["it is not among the disks this machine lists"])
    if not ident.partition:
        if found.reasons:
            raise _refuse(ident, list(found.reasons))
        return found
    part = next((p for p in found.partitions if p.devnum == ident.devnum), None)
    if part is None:
        raise _refuse(ident, [f"it is not among the partitions listed for {found.path}"])
    reasons = rule.partition_verdict(found, part, ctx)
    if reasons:
        raise _refuse(ident, reasons)
    return found


# ---------------------------------------------------------------- opening


def _loop_autoclear(devnum: tuple[int, int] | None) -> str | None:
    if devnum is None:
        return None
    disk = whole_disk_devnum(devnum) or devnum
    try:
        return Path(f"/sys/dev/block/{disk[0]}:{disk[1]}/loop/autoclear").read_text().strip()
    except OSError:
        return None


class TargetHandle:
    """An open, confirmed target, held until :meth:`close`.

    Writes go through :meth:`pwrite` and :meth:`zero` (the ``O_EXCL`` descriptor). After the
    data is on the disk, :meth:`close_writer` gives up exclusivity (the steps after the
    restore mount and check its partitions) but the read-only guard descriptor stays open
    until :meth:`close`. Every step that acts on the target calls :meth:`ensure` first.
    """

    def __init__(
        self, identity: DiskIdentity, fd: int, direct: bool, guard_fd: int | None = None
    ) -> None:
        self.identity = identity
        self.path = identity.path
        self.fd = fd
        self.direct = direct
        self.align = 512
        if identity.kind == "block":
            with contextlib.suppress(OSError, DiskError):
                self.align = blockdev.logical_sector_size(fd)
        self._buffered_fd: int | None = None
        if guard_fd is None:
            # The same open file, read-only: /proc/self/fd/N reopens exactly this device/file.
            guard_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        self.guard_fd = guard_fd
        self._autoclear = _loop_autoclear(identity.devnum) if identity.kind == "block" else None

    def _buffered(self) -> int:
        if self._buffered_fd is None:
            if self.fd < 0:
                raise OSError(errno.EBADF, "the target is no longer open for writing")
            # The same open device, without O_DIRECT: /proc/self/fd/N, never the path again.
            self._buffered_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_WRONLY | os.O_CLOEXEC)
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

    # -- holding the confirmed target --------------------------------------------
    def changes(self) -> list[str]:
        """What no longer matches the confirmed target (empty: it is still the same one)."""
        ident = self.identity
        out: list[str] = []
        try:
            held = os.fstat(self.guard_fd)
        except OSError as exc:
            return [f"it can no longer be read ({exc.strerror})"]
        if ident.kind == "file":
            if held.st_nlink == 0:
                out.append("the file was deleted")
            try:
                now = os.stat(ident.path, follow_symlinks=False)
            except OSError:
                out.append("no file has its name any more")
            else:
                if (now.st_dev, now.st_ino) != ident.inode:
                    out.append("another file now has its name")
            return out
        devnum = ident.devnum
        if (os.major(held.st_rdev), os.minor(held.st_rdev)) != devnum:
            out.append("the open device is another one")
        try:
            now = os.stat(ident.path)
        except OSError:
            out.append(f"{ident.path} no longer exists")
        else:
            if (
                not stat.S_ISBLK(now.st_mode)
                or (
                    os.major(now.st_rdev),
                    os.minor(now.st_rdev),
                )
                != devnum
            ):
                out.append(f"{ident.path} now names another device")
        assert devnum is not None
        sysdir = Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}")
        if not sysdir.exists():
            out.append("the kernel removed the device (unplugged or detached)")
            return out
        disk = whole_disk_devnum(devnum) or devnum
        diskdir = Path(f"/sys/dev/block/{disk[0]}:{disk[1]}")
        if ident.diskseq is not None:
            seq = _read_text(diskdir / "diskseq")
            if seq != str(ident.diskseq):
                out.append(
                    f"its disk sequence number changed ({ident.diskseq} -> {seq or 'none'}): "
                    "the medium was replaced or re-attached"
                )
        if ident.backing_file is not None:
            backing = _read_text(diskdir / "loop" / "backing_file")
            if backing != ident.backing_file:
                out.append(f"its backing file is now {backing or 'none'}")
        autoclear = _loop_autoclear(devnum)
        if self._autoclear == "0" and autoclear == "1":
            out.append("it was detached (the loop device is released as soon as rescueui lets go)")
        try:
            size = blockdev.device_size(self.guard_fd)
        except (OSError, DiskError):
            size = -1
        if size != ident.size_bytes:
            out.append(f"its size is now {size} bytes, not {ident.size_bytes}")
        return out

    def ensure(self, step: str) -> None:
        """Raise TargetChangedError unless the target is still the confirmed one.

        ``step``: what is about to happen, for the message ("the read-back verify").
        """
        problems = self.changes()
        if problems:
            raise TargetChangedError(
                f"The confirmed target {self.identity.describe()} went away or changed before "
                f"{step}: " + "; ".join(problems) + ". Nothing more is written to it or to "
                "whatever now has its name.",
                hint="Check the cabling and the disk list, then select and confirm the target "
                "again; the restore can be resumed on the same target.",
            )

    def ensure_partition(self, node: str, number: int, step: str) -> None:
        """:meth:`ensure`, and ``node`` must be partition ``number`` of the held disk."""
        self.ensure(step)
        if self.identity.kind != "block":
            return
        try:
            st = os.stat(node)
        except OSError as exc:
            raise TargetChangedError(
                f"Partition {number} of {self.path} ({node}) is not there before {step}.",
                hint="The restored data is intact; re-read the partition table (or reboot) "
                "and finish by hand.",
            ) from exc
        dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        held = whole_disk_devnum(self.identity.devnum or dev) or self.identity.devnum
        sysdir = Path(f"/sys/dev/block/{dev[0]}:{dev[1]}")
        if (
            not stat.S_ISBLK(st.st_mode)
            or whole_disk_devnum(dev) != held
            or _read_text(sysdir / "partition") != str(number)
        ):
            raise TargetChangedError(
                f"{node} is not partition {number} of the confirmed target {self.path}; "
                f"{step} was not done.",
                hint="The restored data is intact; check the disk list and finish by hand.",
            )

    def close_writer(self) -> None:
        """Give up the exclusive write descriptor; the guard stays until :meth:`close`."""
        for fd in (self._buffered_fd, self.fd):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._buffered_fd = None
        self.fd = -1

    def close(self) -> None:
        self.close_writer()
        if self.guard_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.guard_fd)
        self.guard_fd = -1

    def __enter__(self) -> TargetHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


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
    else:
        flags |= os.O_NOFOLLOW  # the real file, never through a link planted meanwhile
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
        raise TargetChangedError(
            f"{ident.path} changed while it was being opened.",
            hint="Nothing was written. Select and confirm the target again.",
        )
    return TargetHandle(ident, fd, used_direct)
