"""Who a restore target is: the identity the operator confirms, re-checked before any write.

A target is a block device (identified by device number, size, serial/WWN/model from
udev or sysfs, and for loop devices the kernel's disk sequence number and backing file)
or a regular file (identified by the filesystem device and inode it lives on, and its
size; VM disk images and the demo use files).

The operator confirms a target by typing its :func:`confirmation_code`. The resulting
:class:`ConfirmedTarget` is bound to the identity seen at that moment; right before the
target is opened for writing, :func:`recheck` compares it with the device now at that
path and raises :class:`TargetChangedError` naming what changed.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rescueui.core.errors import DiskError, TargetChangedError, UnsafeTargetError

BLKGETSIZE64 = 0x80081272

# Fields compared by recheck(), with the words the operator sees.
_CHANGE_WORDS = {
    "kind": "kind (block device / file)",
    "devnum": "device number",
    "inode": "file (device and inode)",
    "size_bytes": "size",
    "serial": "serial number",
    "wwn": "WWN",
    "model": "model",
    "diskseq": "disk sequence number (the medium was replaced or re-attached)",
    "backing_file": "loop backing file",
}


@dataclass(frozen=True)
class DiskIdentity:
    """What makes a target this target and not another one."""

    path: str
    kind: str  # "block" | "file"
    devnum: tuple[int, int] | None
    inode: tuple[int, int] | None  # (st_dev, st_ino) of a regular file
    size_bytes: int
    serial: str | None
    wwn: str | None
    model: str | None
    diskseq: int | None = None  # kernel disk sequence number (changes on re-attach/media change)
    backing_file: str | None = None  # loop devices: the file behind them
    partition: bool = False  # a partition of a disk rather than a whole disk

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def describe(self) -> str:
        """One line for the operator: path, size and whatever identifies it."""
        from rescueui.core.units import human_size

        bits = [self.path, human_size(self.size_bytes)]
        if self.model:
            bits.append(self.model)
        if self.serial:
            bits.append(f"serial {self.serial}")
        elif self.wwn:
            bits.append(f"WWN {self.wwn}")
        if self.backing_file:
            bits.append(f"backed by {self.backing_file}")
        if self.kind == "file":
            bits.append("regular file")
        return ", ".join(bits)

    def stable_key(self) -> dict[str, Any]:
        """The parts of the identity that survive a reboot/replug (used by the resume journal)."""
        key: dict[str, Any] = {"kind": self.kind, "size_bytes": self.size_bytes}
        if self.kind == "file":
            key["inode"] = list(self.inode) if self.inode else None
        elif self.serial or self.wwn:
            key.update(serial=self.serial, wwn=self.wwn, model=self.model)
            key["partition"] = self.partition
            if self.partition and self.devnum:
                key["devnum"] = list(self.devnum)
        else:
            key["devnum"] = list(self.devnum) if self.devnum else None
            key["backing_file"] = self.backing_file
        return key

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devnum"] = list(self.devnum) if self.devnum else None
        d["inode"] = list(self.inode) if self.inode else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiskIdentity:
        return cls(
            path=str(d["path"]),
            kind=str(d["kind"]),
            devnum=tuple(d["devnum"]) if d.get("devnum") else None,  # type: ignore[arg-type]
            inode=tuple(d["inode"]) if d.get("inode") else None,  # type: ignore[arg-type]
            size_bytes=int(d["size_bytes"]),
            serial=d.get("serial"),
            wwn=d.get("wwn"),
            model=d.get("model"),
            diskseq=d.get("diskseq"),
            backing_file=d.get("backing_file"),
            partition=bool(d.get("partition", False)),
        )


@dataclass(frozen=True)
class ConfirmedTarget:
    """A target the operator confirmed in this run, bound to its identity at that moment."""

    identity: DiskIdentity
    confirmed_at: float

    @property
    def path(self) -> str:
        return self.identity.path


def _sysfs_dir(devnum: tuple[int, int]) -> Path:
    return Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}")


def _read_sysfs(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def block_device_size(path: str | Path) -> int:
    """Size in bytes of a block device (BLKGETSIZE64), opened read-only."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return int(struct.unpack("Q", buf)[0])
    finally:
        os.close(fd)


def _udev_properties(devnum: tuple[int, int]) -> dict[str, str]:
    try:
        import pyudev

        ctx = pyudev.Context()
        dev = pyudev.Devices.from_device_number(ctx, "block", os.makedev(*devnum))
        return {k: str(v) for k, v in dev.properties.items()}
    except Exception:  # no udev database (minimal systems): fall back to sysfs
        return {}


def _block_identity(path: str, st: os.stat_result) -> DiskIdentity:
    devnum = (os.major(st.st_rdev), os.minor(st.st_rdev))
    sysdir = _sysfs_dir(devnum)
    is_partition = (sysdir / "partition").exists()
    diskdir = sysdir.resolve().parent if is_partition else sysdir.resolve()
    try:
        size = block_device_size(path)
    except PermissionError:
        # Some devices may not even be opened read-only here (e.g. a sandboxed boot disk):
        # sysfs knows the size in 512-byte units.
        sectors = _read_sysfs(sysdir / "size")
        if not sectors or not sectors.isdigit():
            raise DiskError(f"Cannot read the size of {path}: permission denied.") from None
        size = int(sectors) * 512
    except OSError as exc:
        raise DiskError(
            f"Cannot read the size of {path}: {exc.strerror}.",
            hint="Check that the disk is still attached (see `rescueui disks`).",
        ) from exc
    props = _udev_properties(devnum)
    serial = props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL")
    wwn = props.get("ID_WWN_WITH_EXTENSION") or props.get("ID_WWN")
    model = props.get("ID_MODEL")
    if not serial:
        serial = _read_sysfs(diskdir / "device" / "serial") or _read_sysfs(diskdir / "serial")
    if not wwn:
        wwn = _read_sysfs(diskdir / "device" / "wwid") or _read_sysfs(diskdir / "wwid")
    if not model:
        model = _read_sysfs(diskdir / "device" / "model")
    seq = _read_sysfs(diskdir / "diskseq")
    backing = _read_sysfs(diskdir / "loop" / "backing_file")
    return DiskIdentity(
        path=path,
        kind="block",
        devnum=devnum,
        inode=None,
        size_bytes=size,
        serial=serial,
        wwn=wwn,
        model=model,
        diskseq=int(seq) if seq and seq.isdigit() else None,
        backing_file=backing,
        partition=is_partition,
    )


def identity_of(path: str | Path) -> DiskIdentity:
    """Identity of a block device or regular file; raises DiskError / UnsafeTargetError."""
    p = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(p)
    except FileNotFoundError as exc:
        raise DiskError(
            f"{p} does not exist.",
            hint="Check the name; `rescueui disks` lists the disks of this machine.",
        ) from exc
    except OSError as exc:
        raise DiskError(f"Cannot examine {p}: {exc.strerror}.") from exc
    if stat.S_ISBLK(st.st_mode):
        return _block_identity(p, st)
    if stat.S_ISREG(st.st_mode):
        # A file reached through a symbolic link is named by its real path: the operator
        # sees (and confirms) the file that would be written, and it is opened without
        # following links.
        if os.path.islink(p):
            p = os.path.realpath(p)
        return DiskIdentity(
            path=p,
            kind="file",
            devnum=None,
            inode=(st.st_dev, st.st_ino),
            size_bytes=st.st_size,
            serial=None,
            wwn=None,
            model=None,
        )
    raise UnsafeTargetError(
        f"{p} is neither a block device nor a regular file; it cannot be a restore target.",
        hint="Pick a disk (e.g. /dev/sdb), a partition, or a disk image file.",
    )


def _tail(s: str, n: int = 6) -> str:
    alnum = re.sub(r"[^0-9A-Za-z]", "", s)
    return alnum[-n:]


def confirmation_code(ident: DiskIdentity) -> str:
    """What the operator types to confirm: the last 6 characters of the serial or WWN,
    else the device name (``loop3``) or, for a file, its file name."""
    for value in (ident.serial, ident.wwn):
        if value and len(_tail(value)) >= 4:
            return _tail(value)
    return ident.name


def confirm_target(
    path: str | Path, typed: str, *, expected: DiskIdentity | None = None
) -> ConfirmedTarget:
    """Bind the operator's confirmation to the identity now at ``path``.

    The comparison ignores case and surrounding blanks. A wrong code raises
    UnsafeTargetError telling what to type instead. ``expected``: the identity the operator
    was shown (what was planned and pre-flighted); if the device now at ``path`` is another
    one (same name, another medium), TargetChangedError — a code typed for one disk never
    confirms the disk that took its name.
    """
    ident = identity_of(path)
    if expected is not None:
        diffs = differences(expected, ident)
        if diffs:
            raise TargetChangedError(
                f"{ident.path} is not the target you were shown: " + "; ".join(diffs) + ".",
                hint="Nothing was written. Select the target again and check what it holds.",
            )
    code = confirmation_code(ident)
    if typed.strip().casefold() != code.casefold():
        shown = typed.strip() or "nothing"
        raise UnsafeTargetError(
            f"Confirmation for {ident.describe()} does not match: you typed '{shown}'.",
            hint=f"To overwrite this target, type '{code}'.",
        )
    return ConfirmedTarget(identity=ident, confirmed_at=time.time())


def differences(before: DiskIdentity, after: DiskIdentity) -> list[str]:
    """Human-readable list of what differs between two identities of the same path."""
    out: list[str] = []
    for field_name, words in _CHANGE_WORDS.items():
        a, b = getattr(before, field_name), getattr(after, field_name)
        if a != b:
            out.append(
                f"{words}: was {a if a is not None else 'none'}, now {b if b is not None else 'none'}"
            )
    return out


def recheck(confirmed: ConfirmedTarget) -> DiskIdentity:
    """Re-read the identity at the confirmed path; TargetChangedError if anything differs."""
    path = confirmed.identity.path
    try:
        now = identity_of(path)
    except (DiskError, UnsafeTargetError) as exc:
        raise TargetChangedError(
            f"The confirmed target {path} is no longer there: {exc.message}",
            hint="Nothing was written. Check the cabling, then select and confirm the target again.",
        ) from exc
    diffs = differences(confirmed.identity, now)
    if diffs:
        raise TargetChangedError(
            f"{path} is not the device you confirmed: " + "; ".join(diffs) + ".",
            hint="Nothing was written. Select and confirm the target again.",
        )
    return now
