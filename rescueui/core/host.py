"""The hardware profile of the machine we are running on, read without network.

Everything comes from ``/proc`` and ``/sys`` (no external programs), so it works on
the live stick of a dead server. Any file that is missing or unreadable gives
``None`` (or an empty list) for its field, never an exception: a profile is
always produced. The image manifest stores ``read_host_profile().to_dict()`` of
the capturing machine; the pre-flight check compares it with the machine a
restore runs on.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SYS = Path("/sys")
PROC = Path("/proc")

DMI_FIELDS = ("sys_vendor", "product_name", "product_version", "board_vendor", "board_name")

# Substrings of DMI vendor/product strings -> hypervisor name (lower-case match).
_DMI_HYPERVISORS: tuple[tuple[str, str], ...] = (
    ("qemu", "qemu"),
    ("kvm", "kvm"),
    ("vmware", "vmware"),
    ("virtualbox", "virtualbox"),
    ("innotek", "virtualbox"),
    ("oracle corporation", "virtualbox"),
    ("microsoft corporation", "hyper-v"),
    ("virtual machine", "hyper-v"),
    ("xen", "xen"),
    ("bochs", "qemu"),
    ("amazon ec2", "kvm"),
    ("google compute engine", "kvm"),
    ("openstack", "kvm"),
)

# PCI vendor ids of paravirtual devices -> hypervisor name.
_PCI_HYPERVISORS = {
    "0x1af4": "kvm",  # Red Hat / virtio (QEMU/KVM, Firecracker, cloud-hypervisor)
    "0x15ad": "vmware",
    "0x80ee": "virtualbox",
    "0x5853": "xen",
    "0x1414": "hyper-v",
}

# Block devices that are not disks of the machine.
_VIRTUAL_BLOCK_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "nbd", "sr", "fd")

# PCI base class 0x01 = mass storage controller; sub-classes by name.
_PCI_STORAGE_SUBCLASS = {
    "00": "SCSI",
    "01": "IDE",
    "04": "RAID",
    "05": "ATA",
    "06": "SATA",
    "07": "SAS",
    "08": "NVMe",
    "80": "storage",
}


@dataclass
class HostProfile:
    """What a restored system may care about in the machine it lands on."""

    cpus: int
    memory_bytes: int
    firmware: str  # "uefi" | "bios"
    dmi_vendor: str | None
    dmi_product: str | None
    virtual: (
        str | None
    )  # "qemu" "kvm" "vmware" "virtualbox" "hyper-v" "xen" "virtual"; None = bare metal
    storage_controllers: list[str] = field(default_factory=list)
    disks: list[dict[str, Any]] = field(default_factory=list)
    # {"name","path","bus","size_bytes","logical_sector_size","physical_sector_size","model","rotational"}
    nics: list[dict[str, Any]] = field(default_factory=list)  # {"name","mac","driver","physical"}
    dmi_version: str | None = None
    board_vendor: str | None = None
    board_name: str | None = None
    # Kernel module names of the drivers between each disk and the CPU, and of the storage
    # controllers (e.g. "nvme", "ahci", "sd_mod", "virtio_blk", "virtio_pci"): what an
    # initramfs needs to find a disk here.
    storage_drivers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HostProfile:
        """Rebuild from ``to_dict()`` output; unknown keys are ignored, missing ones defaulted.

        The dict may come from an untrusted manifest: types are coerced, never trusted.
        """
        if not isinstance(d, dict):
            d = {}

        def opt_str(key: str) -> str | None:
            v = d.get(key)
            return str(v) if v is not None and v != "" else None

        def as_int(key: str) -> int:
            try:
                return max(0, int(d.get(key) or 0))
            except (TypeError, ValueError):
                return 0

        def dict_list(key: str) -> list[dict[str, Any]]:
            v = d.get(key)
            return [dict(x) for x in v if isinstance(x, dict)] if isinstance(v, list) else []

        controllers = d.get("storage_controllers")
        firmware = str(d.get("firmware") or "").lower()
        return cls(
            cpus=as_int("cpus"),
            memory_bytes=as_int("memory_bytes"),
            firmware=firmware if firmware in ("uefi", "bios") else "unknown",
            dmi_vendor=opt_str("dmi_vendor"),
            dmi_product=opt_str("dmi_product"),
            virtual=opt_str("virtual"),
            storage_controllers=[str(c) for c in controllers]
            if isinstance(controllers, list)
            else [],
            disks=dict_list("disks"),
            nics=dict_list("nics"),
            dmi_version=opt_str("dmi_version"),
            board_vendor=opt_str("board_vendor"),
            board_name=opt_str("board_name"),
            storage_drivers=_str_list(d.get("storage_drivers")),
        )

    @property
    def machine(self) -> str:
        """ "Vendor Product" for one line on screen, or "unknown machine"."""
        parts = [p for p in (self.dmi_vendor, self.dmi_product) if p]
        return " ".join(parts) if parts else "unknown machine"

    @property
    def physical_nics(self) -> list[dict[str, Any]]:
        return [n for n in self.nics if n.get("physical")]

    @property
    def nic_drivers(self) -> list[str]:
        """Module names of the physical network cards' drivers."""
        return sorted(
            {module_name(str(n["driver"])) for n in self.physical_nics if n.get("driver")}
        )


MAX_PROFILE_BYTES = 1 << 20


def load_profile(path: str) -> HostProfile:
    """Another machine's profile, from the JSON ``rescueui host --json`` printed there.

    Untrusted: a regular file of at most 1 MiB (no symlink, no device), JSON, fields
    coerced by :meth:`HostProfile.from_dict`. :class:`RescueError` names the file."""
    import json

    from rescueui.core.errors import RescueError
    from rescueui.core.safefile import read_regular

    try:
        data = read_regular(path, MAX_PROFILE_BYTES, what="machine profile")
    except FileNotFoundError as exc:
        raise RescueError(
            f"The machine profile {path} does not exist.",
            hint="Give the path of the file the host command's JSON output was saved to.",
        ) from exc
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RescueError(
            f"The machine profile {path} is not JSON ({exc}).",
            hint="Make it on that machine with the host command's JSON output and copy it over.",
        ) from exc
    if not isinstance(raw, dict) or raw.get("firmware") not in ("uefi", "bios"):
        raise RescueError(
            f"The machine profile {path} does not say how that machine boots (firmware "
            "'uefi' or 'bios').",
            hint="Make it on that machine with the host command's JSON output and copy it over.",
        )
    return HostProfile.from_dict(raw)


def module_name(driver: str) -> str:
    """The kernel's spelling of a module name (``virtio-pci`` -> ``virtio_pci``)."""
    return driver.strip().replace("-", "_")


def _str_list(value: Any, limit: int = 256) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(v)[:256] for v in value[:limit] if isinstance(v, str | int)]


# --- small, never-raising readers -------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return text or None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def _link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


# --- the individual facts ---------------------------------------------------------------


def logical_cpus() -> int:
    """CPUs this process may run on: the same number ``nproc`` prints."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes(proc: Path = PROC) -> int:
    """``MemTotal`` from ``/proc/meminfo``, in bytes (0 when unreadable)."""
    text = _read(proc / "meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            try:
                value = int(parts[1])
            except (IndexError, ValueError):
                return 0
            unit = parts[2].lower() if len(parts) > 2 else "kb"
            return value * 1024 if unit == "kb" else value
    return 0


def firmware_mode(sys: Path = SYS) -> str:
    """``"uefi"`` when the running system was booted by UEFI firmware, else ``"bios"``."""
    return "uefi" if (sys / "firmware" / "efi").exists() else "bios"


def read_dmi(sys: Path = SYS) -> dict[str, str | None]:
    """The DMI identity strings (``None`` for each one that is missing or unreadable)."""
    base = sys / "class" / "dmi" / "id"
    return {name: _read(base / name) for name in DMI_FIELDS}


def detect_virtual(dmi: dict[str, str | None], sys: Path = SYS, proc: Path = PROC) -> str | None:
    """Which hypervisor we run under, or ``None`` on bare metal.

    Order: DMI strings (most specific), ``/sys/hypervisor/type`` (Xen), then the
    CPU's ``hypervisor`` flag, named by the paravirtual PCI devices present
    (virtio -> "kvm"); a hypervisor flag with nothing to name it gives "virtual".
    """
    haystack = " ".join(v for v in dmi.values() if v).lower()
    for needle, name in _DMI_HYPERVISORS:
        if needle in haystack:
            return name
    hv_type = _read(sys / "hypervisor" / "type")
    if hv_type:
        return "xen" if hv_type.lower() == "xen" else hv_type.lower()
    if not _cpu_has_hypervisor_flag(proc):
        return None
    pci = sys / "bus" / "pci" / "devices"
    try:
        devices = sorted(pci.iterdir())
    except OSError:
        devices = []
    for dev in devices:
        vendor = (_read(dev / "vendor") or "").lower()
        if vendor in _PCI_HYPERVISORS:
            return _PCI_HYPERVISORS[vendor]
    return "virtual"


def _cpu_has_hypervisor_flag(proc: Path = PROC) -> bool:
    text = _read(proc / "cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return "hypervisor" in line.split(":", 1)[1].split()
    return False


def _is_machine_disk(name: str, sys: Path) -> bool:
    if name.startswith(_VIRTUAL_BLOCK_PREFIXES):
        return False
    entry = sys / "class" / "block" / name
    if (entry / "partition").exists():
        return False
    try:
        real = os.path.realpath(entry)
    except OSError:
        return False
    return "/devices/virtual/" not in real


def _bus_of(real_path: str, name: str) -> str:
    """Bus of a block device from its sysfs path (the same words disks.py uses)."""
    p = real_path.lower()
    if name.startswith("nvme") or "/nvme" in p:
        return "nvme"
    if "/usb" in p:
        return "usb"
    if name.startswith("mmcblk") or "/mmc" in p:
        return "mmc"
    if name.startswith("vd") or "/virtio" in p:
        return "virtio"
    if "/ata" in p:
        return "ata"
    if name.startswith("xvd"):
        return "xen"
    if "/host" in p or "/target" in p:
        return "scsi"
    return "unknown"


def read_disks(sys: Path = SYS) -> list[dict[str, Any]]:
    """Each disk of the machine (not loop/ram/zram/dm): bus, size and sector sizes."""
    out: list[dict[str, Any]] = []
    base = sys / "class" / "block"
    for name in _machine_disks(sys):
        entry = base / name
        real = os.path.realpath(entry)
        sectors = _read_int(entry / "size") or 0
        rotational = _read_int(entry / "queue" / "rotational")
        model = _read(entry / "device" / "model")
        out.append(
            {
                "name": name,
                "path": f"/dev/{name}",
                "bus": _bus_of(real, name),
                "size_bytes": sectors * 512,  # sysfs counts 512-byte units
                "logical_sector_size": _read_int(entry / "queue" / "logical_block_size") or 512,
                "physical_sector_size": _read_int(entry / "queue" / "physical_block_size") or 512,
                "model": model,
                "rotational": bool(rotational) if rotational is not None else None,
            }
        )
    return out


def _driver_chain(device: Path) -> tuple[str | None, Path | None]:
    """Nearest driver walking up from a block device's ``device`` link, and its PCI device."""
    try:
        cur = Path(os.path.realpath(device))
    except OSError:
        return None, None
    driver: str | None = None
    pci: Path | None = None
    for _ in range(12):
        if driver is None:
            driver = _link_name(cur / "driver")
        if pci is None and (cur / "class").exists() and (cur / "vendor").exists():
            pci = cur
        if cur.parent == cur or str(cur) in ("/sys/devices", "/sys"):
            break
        cur = cur.parent
    return driver, pci


def _pci_storage(sys: Path) -> list[tuple[Path, str]]:
    """PCI devices of base class 0x01 (mass storage), with their sub-class (2 hex digits)."""
    try:
        devices = sorted((sys / "bus" / "pci" / "devices").iterdir())
    except OSError:
        return []
    out = []
    for dev in devices:
        cls = (_read(dev / "class") or "").lower().removeprefix("0x")
        if len(cls) >= 4 and cls[:2] == "01":
            out.append((dev, cls[2:4]))
    return out


def _machine_disks(sys: Path) -> list[str]:
    """Names of the machine's disks in ``/sys/class/block`` (see :func:`_is_machine_disk`)."""
    try:
        names = sorted(p.name for p in (sys / "class" / "block").iterdir())
    except OSError:
        return []
    return [n for n in names if _is_machine_disk(n, sys)]


def read_storage_controllers(sys: Path = SYS) -> list[str]:
    """Storage controllers, one line each, e.g. ``"NVMe controller nvme (0000:01:00.0, 144d:a808)"``.

    From PCI devices of base class 0x01 (mass storage) and from the drivers behind
    each disk (catches USB and virtio disks whose PCI class is not 0x01).
    """
    kinds: dict[str, str] = {}  # PCI slot -> kind
    pci_devs: dict[str, Path] = {}
    disk_drivers: dict[str, list[str]] = {}  # PCI slot -> drivers of the disks behind it
    other: dict[str, str] = {}  # controllers without a PCI device (e.g. platform MMC)
    for dev, sub in _pci_storage(sys):
        kinds[dev.name] = _PCI_STORAGE_SUBCLASS.get(sub, "storage")
        pci_devs[dev.name] = dev
    base = sys / "class" / "block"
    for name in _machine_disks(sys):
        driver, pci = _driver_chain(base / name / "device")
        if pci is not None:
            kinds.setdefault(pci.name, "storage")
            pci_devs.setdefault(pci.name, pci)
            if driver and driver not in disk_drivers.setdefault(pci.name, []):
                disk_drivers[pci.name].append(driver)
        elif driver:
            other.setdefault(driver, f"{driver} (disk {name})")
    found = {
        slot: _describe_pci(pci_devs[slot], kinds[slot], disk_drivers.get(slot, []))
        for slot in kinds
    }
    found.update({f"~{k}": v for k, v in other.items()})
    return [found[k] for k in sorted(found)]


def _module_of(driver_link: Path) -> str | None:
    """The module behind a ``driver`` link (its ``module`` link), else the driver's name."""
    name = _link_name(driver_link / "module") or _link_name(driver_link)
    return module_name(name) if name else None


def read_storage_drivers(sys: Path = SYS) -> list[str]:
    """Module names of every driver from each disk up to the CPU, and of the PCI storage
    controllers: ``["ahci", "sd_mod"]``, ``["nvme"]``, ``["virtio_blk", "virtio_pci"]``."""
    found: set[str] = set()
    for dev, _ in _pci_storage(sys):
        name = _module_of(dev / "driver") if (dev / "driver").exists() else None
        if name:
            found.add(name)
    base = sys / "class" / "block"
    for name in _machine_disks(sys):
        try:
            cur = Path(os.path.realpath(base / name / "device"))
        except OSError:
            continue
        for _ in range(12):
            if (cur / "driver").exists():
                mod = _module_of(cur / "driver")
                if mod:
                    found.add(mod)
            if cur.parent == cur or str(cur) in ("/sys/devices", "/sys"):
                break
            cur = cur.parent
    return sorted(found)


def _describe_pci(dev: Path, kind: str, disk_drivers: list[str]) -> str:
    driver = _link_name(dev / "driver") or "no driver"
    drivers = [driver] + [d for d in disk_drivers if d != driver]
    vendor = (_read(dev / "vendor") or "?").removeprefix("0x")
    device = (_read(dev / "device") or "?").removeprefix("0x")
    return f"{kind} controller {'/'.join(drivers)} ({dev.name}, {vendor}:{device})"


def read_nics(sys: Path = SYS) -> list[dict[str, Any]]:
    """Network interfaces except ``lo``: name, MAC, driver, and whether it is real hardware."""
    out: list[dict[str, Any]] = []
    base = sys / "class" / "net"
    try:
        names = sorted(p.name for p in base.iterdir())
    except OSError:
        return out
    for name in names:
        if name == "lo":
            continue
        entry = base / name
        out.append(
            {
                "name": name,
                "mac": _read(entry / "address"),
                "driver": _link_name(entry / "device" / "driver"),
                "physical": (entry / "device").exists(),
            }
        )
    return out


def read_host_profile() -> HostProfile:
    """This machine's profile. Never raises: missing facts become ``None``/empty."""
    dmi = read_dmi()
    return HostProfile(
        cpus=logical_cpus(),
        memory_bytes=memory_bytes(),
        firmware=firmware_mode(),
        dmi_vendor=dmi.get("sys_vendor"),
        dmi_product=dmi.get("product_name"),
        virtual=detect_virtual(dmi),
        storage_controllers=read_storage_controllers(),
        disks=read_disks(),
        nics=read_nics(),
        dmi_version=dmi.get("product_version"),
        board_vendor=dmi.get("board_vendor"),
        board_name=dmi.get("board_name"),
        storage_drivers=read_storage_drivers(),
    )
