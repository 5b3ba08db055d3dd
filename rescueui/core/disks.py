"""Which disks does this machine have, and which may be written to?

Disks and partitions come from udev (pyudev) and sysfs; mounts and swap from
``/proc`` (see :mod:`rescueui.core.mounts`), matched by device number. Each disk
gets the reasons a technician reads for why it is *not* a target; a disk with no
reasons is targetable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyudev

from rescueui.core import mounts as mnt
from rescueui.core.errors import DiskError
from rescueui.core.units import human_size

DevNum = tuple[int, int]

DEFAULT_LIVE_MOUNTS: tuple[str, ...] = ("/", "/run/live/medium", "/lib/live/mount/medium")

SECTOR = 512  # sysfs sizes and starts are always in 512-byte units

REASON_BOOT = "boot medium (the running system lives here)"
REASON_IMAGE = "holds the selected image"
REASON_READ_ONLY = "read-only"
REASON_SWAP = "in use by swap"
REASON_MOUNTED = "mounted"  # "mounted: /mnt/x" or "mounted: /mnt/x (sdb1)"
REASON_HOLDERS = "in use by md/dm"  # "in use by md/dm: dm-0"
REASON_VIRTUAL = "virtual device (md/dm): restore to the disks beneath it"
REASON_OPTICAL = "optical drive (read-only medium)"

NEVER_TARGET_ROLES = frozenset({"boot", "image"})
"""Roles that no action of the technician (unmounting, swapoff...) can clear."""

# Block devices that are never disks of the server: RAM disks, compressed swap in RAM, and
# floppy drives (QEMU's default ``fd0`` is a 4 KiB drive with no medium). Not listed at all.
_SKIP_PREFIXES = ("ram", "zram")
_FLOPPY = re.compile(r"fd\d+")
_OPTICAL = re.compile(r"sr\d+")  # CD/DVD drives: listed (the boot or image disc), never a target


@dataclass
class Partition:
    path: str
    name: str
    number: int
    devnum: DevNum
    start_bytes: int
    size_bytes: int
    fs_type: str | None
    label: str | None
    uuid: str | None
    part_label: str | None
    part_type: str | None
    part_uuid: str | None
    mountpoints: list[str] = field(default_factory=list)
    swap: bool = False
    holders: list[str] = field(default_factory=list)
    read_only: bool = False

    @property
    def end_bytes(self) -> int:
        return self.start_bytes + self.size_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devnum"] = list(self.devnum)
        return d


@dataclass
class Disk:
    path: str
    name: str
    devnum: DevNum
    size_bytes: int
    model: str | None
    vendor: str | None
    serial: str | None
    wwn: str | None
    bus: str  # "usb" "ata" "nvme" "virtio" "scsi" "loop" "mmc" "md" "dm" "file"(demo) ...
    removable: bool
    read_only: bool
    rotational: bool
    logical_sector_size: int
    physical_sector_size: int
    table_type: str | None  # "gpt" | "dos" | None
    partitions: list[Partition] = field(default_factory=list)
    mountpoints: list[str] = field(default_factory=list)  # of the whole disk itself
    swap: bool = False
    holders: list[str] = field(default_factory=list)
    roles: set[str] = field(default_factory=set)  # {"boot", "image"}
    reasons: list[str] = field(default_factory=list)  # why it is not a target
    # Extras beyond the contract: a filesystem directly on the whole disk, and a loop's backing file.
    fs_type: str | None = None
    label: str | None = None
    uuid: str | None = None
    backing_file: str | None = None
    diskseq: int | None = None  # the kernel's disk sequence number (new for each medium)

    @property
    def targetable(self) -> bool:
        return not self.reasons

    @property
    def never_target(self) -> bool:
        """Boot or image medium, or an optical drive: not a target whatever the technician does."""
        return bool(self.roles & NEVER_TARGET_ROLES) or REASON_OPTICAL in self.reasons

    @property
    def title(self) -> str:
        """One line a technician recognises: ``sdb  Kingston DataTraveler  29.3 GiB  usb``."""
        what = self.model or (f"loop on {self.backing_file}" if self.backing_file else "")
        parts = [self.name, what, human_size(self.size_bytes), self.bus]
        return "  ".join(p for p in parts if p)

    def partition(self, number: int) -> Partition | None:
        for p in self.partitions:
            if p.number == number:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devnum"] = list(self.devnum)
        d["roles"] = sorted(self.roles)
        d["partitions"] = [p.to_dict() for p in self.partitions]
        d["targetable"] = self.targetable
        return d


# --------------------------------------------------------------------------- sysfs helpers


def _read(path: str | Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str | Path, default: int = 0) -> int:
    text = _read(path)
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _sys_dir(devnum: DevNum) -> Path | None:
    p = Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}")
    try:
        return p.resolve(strict=True)
    except OSError:
        return None


def _devnum_of_sysdir(sysdir: Path) -> DevNum | None:
    text = _read(sysdir / "dev")
    if not text or ":" not in text:
        return None
    major, minor = text.split(":", 1)
    return (int(major), int(minor))


def whole_disk_devnum(devnum: DevNum) -> DevNum | None:
    """The whole disk of a block device: a partition's parent, or the device itself."""
    sysdir = _sys_dir(devnum)
    if sysdir is None:
        return None
    if (sysdir / "partition").exists():
        return _devnum_of_sysdir(sysdir.parent)
    return devnum


def _holders(sysdir: Path) -> list[str]:
    try:
        return sorted(os.listdir(sysdir / "holders"))
    except OSError:
        return []


def _loop_backing_file(sysdir: Path) -> str | None:
    return _read(sysdir / "loop" / "backing_file") or None


def clean_udev_text(value: str | None) -> str | None:
    """udev ``*_ENC`` values carry ``\\x20``-style escapes; plain ones use ``_`` for spaces."""
    if value is None:
        return None
    if "\\x" in value:
        try:
            value = (
                value.encode("latin-1")
                .decode("unicode_escape")
                .encode("latin-1")
                .decode("utf-8", "replace")
            )
        except (UnicodeDecodeError, UnicodeEncodeError):
            pass
    value = " ".join(value.split())
    return value or None


def _prop(dev: pyudev.Device, *names: str) -> str | None:
    for n in names:
        v = dev.properties.get(n)
        if v:
            return v
    return None


# --------------------------------------------------------------------------- path -> disk


def devnum_of(path: str | Path) -> DevNum | None:
    """Device number of a block device node, or None if ``path`` is not one."""
    return mnt.block_devnum(path)


def _fs_devnum(path: str | Path, entries: list[mnt.MountEntry] | None = None) -> DevNum | None:
    """The block device whose filesystem holds ``path`` (a file or folder)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev: DevNum = (os.major(st.st_dev), os.minor(st.st_dev))
    if dev[0] != 0 and _sys_dir(dev) is not None:
        return dev
    # Anonymous device number (btrfs, overlay, tmpfs...): ask the mount table.
    entries = entries if entries is not None else mnt.read_mountinfo()
    entry = mnt.mount_containing(entries, os.path.realpath(path))
    if entry is None:
        return None
    return mnt.mount_devnum(entry)


def disk_of_path(path: str | Path) -> DevNum | None:
    """Device number of the whole disk whose filesystem holds this file or folder (the image medium).

    For a file inside a loop-mounted partition this is the loop disk. None for
    files on virtual filesystems (tmpfs, proc...).
    """
    dev = _fs_devnum(path)
    return whole_disk_devnum(dev) if dev is not None else None


# --------------------------------------------------------------------------- boot medium


def _boot_devnums(live_mounts: Iterable[str], entries: list[mnt.MountEntry]) -> set[DevNum]:
    """Whole disks the running system lives on.

    Each live mount point is resolved to its block device. Overlays (live
    systems) are followed to their lower/upper directories, and loop devices to
    the disk holding their backing file (the squashfs on the USB stick).
    """
    found: set[DevNum] = set()
    pending: list[tuple[DevNum, int]] = []

    def add_path(path: str, depth: int) -> None:
        dev = _fs_devnum(path, entries)
        if dev is not None:
            pending.append((dev, depth))

    for mp in live_mounts:
        entry = mnt.mount_at(entries, mp)
        if entry is None:
            continue
        dev = mnt.mount_devnum(entry)
        if dev is not None:
            pending.append((dev, 0))
        elif entry.fs_type == "overlay":
            for opt in entry.super_options.split(","):
                key, _, value = opt.partition("=")
                if key.rstrip("+") in ("lowerdir", "upperdir", "datadir"):
                    for d in value.split(":"):
                        if d:
                            add_path(mnt.unescape(d), 0)
    while pending:
        dev, depth = pending.pop()
        whole = whole_disk_devnum(dev)
        if whole is None or whole in found:
            continue
        found.add(whole)
        sysdir = _sys_dir(whole)
        backing = _loop_backing_file(sysdir) if sysdir else None
        if backing and depth < 4:
            add_path(backing, depth + 1)
    return found


# --------------------------------------------------------------------------- scanning


def bus_of(name: str, props: Mapping[str, str], sysdir: Path) -> str:
    """Bus/transport a technician recognises, from the name, udev properties and sysfs."""
    if name.startswith("loop"):
        return "loop"
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("mmcblk"):
        return "mmc"
    if name.startswith("md"):
        return "md"
    if name.startswith("dm-"):
        return "dm"
    id_bus = props.get("ID_BUS") or None
    id_path = props.get("ID_PATH") or ""
    if id_bus == "usb" or "-usb-" in id_path or id_path.startswith("usb-") or "/usb" in str(sysdir):
        return "usb"
    if id_bus:
        return id_bus
    if "-nvme-" in id_path:
        return "nvme"
    if "-ata-" in id_path:
        return "ata"
    driver = ""
    try:
        driver = os.path.basename(os.readlink(sysdir / "device" / "driver"))
    except OSError:
        pass
    if driver.startswith("virtio") or "virtio-pci" in id_path or "/virtio" in str(sysdir):
        return "virtio"
    if "/ata" in str(sysdir):  # libata: .../ata1/host0/target0:0:0/...
        return "ata"
    if "-scsi-" in id_path or driver == "sd":
        return "scsi"
    if name.startswith("xvd"):
        return "xen"
    return "unknown"


def _partition(
    dev: pyudev.Device,
    mounts: dict[DevNum, list[mnt.MountEntry]],
    swaps: set[DevNum],
) -> Partition:
    sysdir = Path(dev.sys_path)
    devnum: DevNum = (os.major(dev.device_number), os.minor(dev.device_number))
    number_text = _prop(dev, "ID_PART_ENTRY_NUMBER", "PARTN") or _read(sysdir / "partition")
    try:
        number = int(number_text or 0)
    except ValueError:
        number = 0
    entries = mounts.get(devnum, [])
    fs_type = _prop(dev, "ID_FS_TYPE") or (entries[0].fs_type if entries else None)
    return Partition(
        path=dev.device_node or f"/dev/{dev.sys_name}",
        name=dev.sys_name,
        number=number,
        devnum=devnum,
        start_bytes=_read_int(sysdir / "start") * SECTOR,
        size_bytes=_read_int(sysdir / "size") * SECTOR,
        fs_type=fs_type,
        label=clean_udev_text(_prop(dev, "ID_FS_LABEL_ENC", "ID_FS_LABEL")),
        uuid=_prop(dev, "ID_FS_UUID"),
        part_label=clean_udev_text(_prop(dev, "ID_PART_ENTRY_NAME")),
        part_type=_prop(dev, "ID_PART_ENTRY_TYPE"),
        part_uuid=_prop(dev, "ID_PART_ENTRY_UUID"),
        mountpoints=[e.mountpoint for e in entries],
        swap=devnum in swaps,
        holders=_holders(sysdir),
        read_only=_read(sysdir / "ro") == "1",
    )


def _disk(
    dev: pyudev.Device,
    mounts: dict[DevNum, list[mnt.MountEntry]],
    swaps: set[DevNum],
) -> Disk:
    sysdir = Path(dev.sys_path)
    name = dev.sys_name
    devnum: DevNum = (os.major(dev.device_number), os.minor(dev.device_number))
    devdir = sysdir / "device"
    entries = mounts.get(devnum, [])
    model = clean_udev_text(_prop(dev, "ID_MODEL_ENC", "ID_MODEL")) or clean_udev_text(
        _read(devdir / "model")
    )
    vendor = clean_udev_text(_prop(dev, "ID_VENDOR_ENC", "ID_VENDOR")) or clean_udev_text(
        _read(devdir / "vendor")
    )
    if vendor and vendor.startswith("0x"):  # a PCI vendor id (virtio), not a name
        vendor = None
    serial = (
        clean_udev_text(_prop(dev, "ID_SERIAL_SHORT"))
        or clean_udev_text(_read(devdir / "serial"))
        or clean_udev_text(_read(sysdir / "serial"))
    )
    wwn = (
        _prop(dev, "ID_WWN_WITH_EXTENSION", "ID_WWN")
        or clean_udev_text(_read(sysdir / "wwid"))
        or clean_udev_text(_read(devdir / "wwid"))
    )
    queue = sysdir / "queue"
    return Disk(
        path=dev.device_node or f"/dev/{name}",
        name=name,
        devnum=devnum,
        size_bytes=_read_int(sysdir / "size") * SECTOR,
        model=model,
        vendor=vendor,
        serial=serial,
        wwn=wwn,
        bus=bus_of(name, dev.properties, sysdir),
        removable=_read(sysdir / "removable") == "1",
        read_only=_read(sysdir / "ro") == "1",
        rotational=_read(queue / "rotational") == "1",
        logical_sector_size=_read_int(queue / "logical_block_size", SECTOR),
        physical_sector_size=_read_int(queue / "physical_block_size", SECTOR),
        table_type=_prop(dev, "ID_PART_TABLE_TYPE"),
        mountpoints=[e.mountpoint for e in entries],
        swap=devnum in swaps,
        holders=_holders(sysdir),
        fs_type=_prop(dev, "ID_FS_TYPE") or (entries[0].fs_type if entries else None),
        label=clean_udev_text(_prop(dev, "ID_FS_LABEL_ENC", "ID_FS_LABEL")),
        uuid=_prop(dev, "ID_FS_UUID"),
        backing_file=_loop_backing_file(sysdir),
        diskseq=_read_int(sysdir / "diskseq", 0) or None,
    )


def _mounted_reason(points: list[str], who: str | None) -> str:
    shown = points[:3]
    text = f"{REASON_MOUNTED}: {', '.join(shown)}"
    if len(points) > len(shown):
        text += f" (+{len(points) - len(shown)} more)"
    if who:
        text += f" ({who})"
    return text


def classify(
    disk: Disk,
    *,
    boot: Iterable[DevNum] = (),
    image: Iterable[DevNum] = (),
    ctx: Any = None,
) -> None:
    """Fill ``disk.roles`` and ``disk.reasons`` from the target rule
    (:mod:`rescueui.core.targets.rule`, the one place that decides what may be written).

    ``ctx``: a ``RuleContext`` of this machine (what :func:`scan_disks` builds); without
    one, only ``boot``/``image`` (whole-disk device numbers) and the record's own facts count.
    """
    from rescueui.core.targets import rule

    if ctx is None:
        ctx = rule.RuleContext.from_devnums(boot=boot, image=image)
    disk.roles, disk.reasons = rule.disk_verdict(disk, ctx)


def udev_running() -> bool:
    """True if the udev daemon runs; without it labels, serials and models are mostly missing."""
    return os.path.exists("/run/udev/control")


def is_optical(name: str) -> bool:
    """A CD/DVD drive (``sr0``): its disc is read-only, so it is listed but never a target."""
    return _OPTICAL.fullmatch(name) is not None


def is_listed(name: str, size_bytes: int) -> bool:
    """Whether a whole block device belongs in the disk list.

    Not listed: RAM disks (``ram*``), compressed RAM swap (``zram*``), floppy drives
    (``fd*``) and devices without a medium (size 0, e.g. an empty card reader or CD drive).
    """
    if name.startswith(_SKIP_PREFIXES) or _FLOPPY.fullmatch(name):
        return False
    return size_bytes > 0


def scan_disks(
    *,
    image_paths: Iterable[str | Path] = (),
    live_mounts: Iterable[str] | None = None,
    rule_context: Any = None,
) -> list[Disk]:
    """Every disk of this machine with its partitions, roles and reasons, sorted by name.

    ``image_paths``: files or folders of the selected image(s); the disks holding
    them are marked ``"image"`` ("holds the selected image").
    ``live_mounts``: mount points of the running system; their disks are marked
    ``"boot"``. Defaults to :data:`DEFAULT_LIVE_MOUNTS`.
    ``rule_context``: a ready ``targets.rule.RuleContext`` (then the two above are unused).
    """
    from rescueui.core.targets.rule import RuleContext

    entries = mnt.read_mountinfo()
    mounts = mnt.mounts_by_devnum(entries)
    swaps = mnt.swap_devnums(mnt.read_swaps())
    ctx = rule_context or RuleContext.build(
        image_paths=image_paths, live_mounts=live_mounts, entries=entries
    )

    try:
        context = pyudev.Context()
    except ImportError as exc:  # libudev.so.1 missing
        raise DiskError(
            f"Cannot list disks: udev library not available ({exc}).",
            hint="Install the libudev1 package.",
        ) from exc
    disks: dict[str, Disk] = {}
    for dev in context.list_devices(subsystem="block", DEVTYPE="disk"):
        if dev.device_number == 0:
            continue
        size = _read_int(Path(dev.sys_path) / "size") * SECTOR
        if not is_listed(dev.sys_name, size):
            continue
        disks[dev.sys_path] = _disk(dev, mounts, swaps)
    for dev in context.list_devices(subsystem="block", DEVTYPE="partition"):
        parent = disks.get(str(Path(dev.sys_path).parent))
        if parent is not None:
            parent.partitions.append(_partition(dev, mounts, swaps))
    result = sorted(disks.values(), key=lambda d: _natural_key(d.name))
    for disk in result:
        disk.partitions.sort(key=lambda p: (p.number, p.start_bytes))
        classify(disk, ctx=ctx)
    return result


def _natural_key(name: str) -> tuple[object, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def find_disk(path: str | Path, disks: list[Disk] | None = None, **scan_kwargs: Any) -> Disk | None:
    """The disk at ``path``, matched by device number; a partition path returns its parent disk.

    A path that is not a block device (a demo disk file) is matched by its path.
    """
    if disks is None:
        disks = scan_disks(**scan_kwargs)
    dev = devnum_of(path)
    if dev is None:
        want = os.path.realpath(path)
        for d in disks:
            if os.path.realpath(d.path) == want:
                return d
        return None
    for d in disks:
        if d.devnum == dev or any(p.devnum == dev for p in d.partitions):
            return d
    return None
