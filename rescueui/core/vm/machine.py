"""The virtual machine an image becomes: what it gets and why (no writes here).

:func:`plan_vm` decides, from the image and the host that will run the VM:

* **firmware** -- what the image's disk boots by (an EFI partition, BIOS boot code), else
  the source machine's mode; the operator's choice wins (the boot-loader fix-up then
  answers a mismatch);
* **disk bus and NIC model** -- virtio only when the restored system can find its disk on
  it: the image records its installed system and the initramfs of the kernel that boots
  has ``virtio_blk`` and ``virtio_pci``, or the drivers fix-up adds them; otherwise SATA
  (AHCI) and an e1000 card, which a generic initramfs has. A source VM that was on virtio
  (its configuration says so) keeps virtio when the system is not recorded;
* **vCPUs and memory** -- the source machine's (the manifest's host profile, the VM
  configuration next to a VM disk, Clonezilla's ``Info-*.txt``), or the operator's, fitted
  to the host that will run the VM: more than it has becomes a warning that shows the
  value the definition gets instead.

Each decision is a pre-flight finding (``vm.*``) with its reason. The VM is also described
as a :class:`~rescueui.core.host.HostProfile` (:func:`vm_profile`), the machine the
fix-ups adapt the restored system to.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from rescueui.core.errors import RescueError
from rescueui.core.host import HostProfile
from rescueui.core.image import MAX_STREAM_BYTES
from rescueui.core.preflight import Finding, ImageFacts, analyse_boot
from rescueui.core.units import GiB, MiB, human_size

FORMATS = ("qcow2", "vmdk", "vhdx", "raw")
DEFINITIONS = ("libvirt", "vmx", "ovf")
SUFFIX = {"qcow2": ".qcow2", "vmdk": ".vmdk", "vhdx": ".vhdx", "raw": ".img"}

VIRTIO_DISK = ["virtio_blk", "virtio_pci"]
SATA_DISK = ["ahci", "sd_mod"]
NIC_DRIVER = {"virtio": "virtio_net", "e1000": "e1000"}

DEFAULT_VCPUS = 2
DEFAULT_MEMORY = 2 * GiB
MIN_MEMORY = 256 * MiB
MEMORY_STEP = 128 * MiB
MAX_VCPUS = 1024
MAX_MEMORY = 16 * 1024 * GiB
MAX_DISK = MAX_STREAM_BYTES  # what an image can describe (1 PiB); more is a typo

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,62}$", re.ASCII)


@dataclass
class VmRequest:
    """The operator's choices (``None``: decide from the image and the host)."""

    folder: str
    name: str | None = None
    disk_format: str = "qcow2"
    definitions: tuple[str, ...] = ("libvirt",)
    vcpus: int | None = None
    memory_bytes: int | None = None
    firmware: str | None = None  # "bios" | "uefi"
    disk_bytes: int | None = None  # the VM disk's size (None: the source disk's)
    runs_on: HostProfile | None = None  # the profile of the host that will run the VM
    host_cpus: int | None = None
    host_memory_bytes: int | None = None

    def check(self) -> None:
        """RescueError for a choice that cannot be made (names the value)."""
        if self.disk_format not in FORMATS:
            raise RescueError(
                f"Unknown virtual disk format {self.disk_format!r}.",
                hint=f"Choose one of {', '.join(FORMATS)}.",
            )
        bad = [d for d in self.definitions if d not in DEFINITIONS]
        if bad:
            raise RescueError(
                f"Unknown VM definition kind {bad[0]!r}.",
                hint=f"Choose from {', '.join(DEFINITIONS)}.",
            )
        if {"vmx", "ovf"} & set(self.definitions) and self.disk_format != "vmdk":
            raise RescueError(
                "A VMware .vmx or an OVF descriptor needs the disk as vmdk, not "
                f"{self.disk_format}.",
                hint="Choose the vmdk disk format for them, or only the libvirt definition.",
            )
        if {"vmx", "ovf"} <= set(self.definitions):
            raise RescueError(
                "A .vmx and an OVF descriptor want different vmdk kinds (monolithic sparse "
                "to run, stream-optimized to import).",
                hint="Ask for one of them.",
            )
        if self.name is not None and not NAME_RE.match(self.name):
            raise RescueError(
                f"The VM name {self.name!r} cannot be used as a file name here.",
                hint="Use letters, digits, '.', '_', '+' and '-' (at most 63, starting with a "
                "letter or digit).",
            )
        if self.vcpus is not None and not 1 <= self.vcpus <= MAX_VCPUS:
            raise RescueError(
                f"{self.vcpus} vCPUs is not a number a VM can have.",
                hint=f"Give 1 to {MAX_VCPUS}.",
            )
        if self.memory_bytes is not None and not MIN_MEMORY <= self.memory_bytes <= MAX_MEMORY:
            raise RescueError(
                f"{human_size(self.memory_bytes)} of memory is not a size a VM can have.",
                hint=f"Give {human_size(MIN_MEMORY)} to {human_size(MAX_MEMORY)}.",
            )
        if self.disk_bytes is not None and not 0 < self.disk_bytes <= MAX_DISK:
            raise RescueError(
                f"A VM disk of {human_size(self.disk_bytes)} cannot be made.",
                hint=f"Give a size up to {human_size(MAX_DISK)}, or none for the source disk's.",
            )
        if self.firmware not in (None, "bios", "uefi"):
            raise RescueError(f"Unknown firmware {self.firmware!r}.", hint="Choose bios or uefi.")


@dataclass
class RunsOn:
    """The host that will run the VM: its CPUs and memory, and where they were read."""

    cpus: int
    memory_bytes: int
    source: str  # "this machine", "the profile of web-host (Dell R640)", "given values"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VmMachine:
    """The planned VM. ``why``: one reason per decided value (for the report)."""

    name: str
    firmware: str  # "bios" | "uefi"
    disk_bus: str  # "virtio" | "sata"
    nic_model: str  # "virtio" | "e1000"
    vcpus: int
    memory_bytes: int
    disk_bytes: int
    disk_format: str
    definitions: tuple[str, ...]
    mac: str
    runs_on: RunsOn
    source: str  # the source machine in words
    virtio_by_fixup: bool = False  # virtio only because the drivers fix-up adds it
    why: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    machine_type: str = "q35"

    @property
    def disk_file(self) -> str:
        return self.name + SUFFIX[self.disk_format]

    @property
    def storage_drivers(self) -> list[str]:
        return list(VIRTIO_DISK if self.disk_bus == "virtio" else SATA_DISK)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["findings"] = [f.to_dict() for f in self.findings]
        d["definitions"] = list(self.definitions)
        d["disk_file"] = self.disk_file
        return d


def vm_profile(vm: VmMachine) -> HostProfile:
    """The VM as the machine the restored system lands on (for the fix-ups and pre-flight)."""
    nic_driver = NIC_DRIVER[vm.nic_model]
    return HostProfile(
        cpus=vm.vcpus,
        memory_bytes=vm.memory_bytes,
        firmware=vm.firmware,
        dmi_vendor="QEMU",
        dmi_product=f"virtual machine {vm.name}",
        virtual="kvm",
        storage_controllers=["virtio-blk" if vm.disk_bus == "virtio" else "AHCI SATA"],
        disks=[{"name": "vda" if vm.disk_bus == "virtio" else "sda", "bus": _disk_word(vm)}],
        nics=[{"name": "enp1s0", "mac": vm.mac, "driver": nic_driver, "physical": True}],
        storage_drivers=vm.storage_drivers,
    )


def _disk_word(vm: VmMachine) -> str:
    return "virtio" if vm.disk_bus == "virtio" else "ata"  # disks.py's bus words


def new_mac() -> str:
    """A locally administered MAC in QEMU's range (52:54:00), random: the VM must not take
    the source's address while the source may come back."""
    b = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{x:02x}" for x in b)


def runs_on(request: VmRequest, this_host: HostProfile) -> RunsOn:
    """The host that will run the VM: given values, else its profile, else this machine."""
    if request.host_cpus is not None or request.host_memory_bytes is not None:
        base = request.runs_on or this_host
        return RunsOn(
            cpus=request.host_cpus or base.cpus,
            memory_bytes=request.host_memory_bytes or base.memory_bytes,
            source="the values given for the host",
        )
    if request.runs_on is not None:
        return RunsOn(
            request.runs_on.cpus,
            request.runs_on.memory_bytes,
            f"the profile of the host, {request.runs_on.machine}",
        )
    return RunsOn(this_host.cpus, this_host.memory_bytes, "this machine, the host that runs it")


def fitted_memory(host_memory: int) -> int:
    """The most memory a VM gets on a host of ``host_memory``: the host keeps an eighth, at
    least 1 GiB, for itself; in steps of 128 MiB; never below 256 MiB."""
    room = host_memory - max(GiB, host_memory // 8)
    return max(MIN_MEMORY, room // MEMORY_STEP * MEMORY_STEP)


def _system(image: Any) -> Any:
    from rescueui.core.adapt.system import InstalledSystem

    recorded = getattr(image.manifest, "system", None)
    return InstalledSystem.from_dict(recorded) if recorded else None


def _drivers_allowed(adapt: Any) -> bool:
    if adapt is None or not adapt.enabled:
        return False
    return adapt.selection is None or "drivers" in adapt.selection


def _choose_bus(
    system: Any, source_bus: str | None, drivers_fixup: bool, virtio_possible: bool
) -> tuple[str, bool, str, str]:
    """(disk bus, virtio only by the fix-up, why, level of the finding)."""
    from rescueui.core.adapt.plan import initramfs_missing

    if not virtio_possible:
        why = "VMware and OVF machines have no virtio disk: SATA (AHCI) and an e1000 card"
        if system is None or not system.found or not system.kernels:
            return "sata", False, why, "info"
        newest = system.kernels[0]
        ahci, _ = initramfs_missing(system, SATA_DISK, newest_only=True)
        if not ahci:
            return "sata", False, why, "info"
        lacks = ", ".join(ahci[newest.version])
        if drivers_fixup:
            return "sata", False, f"{why}; the fix-up drivers adds {lacks} to the initramfs", "info"
        return (
            "sata",
            False,
            f"{why}, but the initramfs of kernel {newest.version} lacks {lacks} and the fix-up "
            "drivers is off: the system may not find its disk",
            "warn",
        )
    if system is not None and system.found and system.kernels:
        newest = system.kernels[0]
        lacking, unknown = initramfs_missing(system, VIRTIO_DISK, newest_only=True)
        if not lacking and not unknown and newest.initramfs is not None:
            return (
                "virtio",
                False,
                f"the initramfs of kernel {newest.version} has the virtio disk drivers "
                f"({', '.join(VIRTIO_DISK)})",
                "ok",
            )
        known = set(newest.modules) | set(newest.builtin)
        if newest.modules and not set(VIRTIO_DISK) <= known:
            return (
                "sata",
                False,
                f"kernel {newest.version} has no virtio disk driver; SATA (AHCI) instead",
                "info",
            )
        missing = ", ".join(lacking.get(newest.version, VIRTIO_DISK))
        if drivers_fixup:
            return (
                "virtio",
                True,
                f"the initramfs of kernel {newest.version} lacks {missing}; the fix-up drivers "
                "adds them, so the VM gets virtio",
                "info",
            )
        ahci, _ = initramfs_missing(system, SATA_DISK, newest_only=True)
        level = "warn" if ahci else "info"
        also = (
            f" It lacks {', '.join(ahci[newest.version])} too: the system may not find its "
            "disk; switch the drivers fix-up on."
            if ahci
            else ""
        )
        return (
            "sata",
            False,
            f"the initramfs of kernel {newest.version} lacks {missing} and the fix-up drivers "
            f"is off: SATA (AHCI) and an e1000 card instead.{also}",
            level,
        )
    if source_bus == "virtio":
        return "virtio", False, "the source VM's disk was on virtio", "info"
    return (
        "sata",
        False,
        "the image does not record its installed system, so whether it has virtio drivers is "
        "not known; SATA (AHCI) and an e1000 card are what a generic initramfs has",
        "info",
    )


def _choose_firmware(
    facts: ImageFacts, source: HostProfile | None, asked: str | None
) -> tuple[str, str]:
    boot = analyse_boot(facts.partition_table, facts.mbr)
    if asked:
        return asked, f"as chosen; the image's disk boots by {boot.mode.upper()}"
    src = source.firmware if source and source.firmware in ("bios", "uefi") else None
    if boot.mode in ("bios", "uefi"):
        return boot.mode, f"the image's disk boots by {boot.mode.upper()}: {boot.describe()}"
    if boot.mode == "both":
        chosen = src or "uefi"
        return (
            chosen,
            f"the image's disk boots by both; {'the source machine used ' + chosen.upper() if src else 'UEFI chosen'}",
        )
    if src:
        return src, f"the source machine booted by {src.upper()}"
    return "bios", "no boot loader recognised in the image; BIOS (SeaBIOS) chosen"


def _fit(
    what: str,
    code: str,
    source_value: int | None,
    asked: int | None,
    host_limit: int,
    fitted_limit: int,
    where: RunsOn,
    show: Any,
    default: int,
) -> tuple[int, Finding]:
    """The value of vCPUs or memory and its finding (``host_limit`` 0: not known)."""
    if host_limit <= 0:
        value = asked or source_value or default
        return value, Finding(
            "info",
            code,
            f"The VM gets {show(value)} {what}; the host's are not known ({where.source}), "
            "so nothing was fitted.",
        )
    if asked is not None:
        if asked > host_limit:
            return asked, Finding(
                "warn",
                code,
                f"The VM gets {show(asked)} {what} as asked, more than the host has "
                f"({show(host_limit)}, {where.source}).",
                "It starts, but competes with the host for them; set a smaller value.",
            )
        return asked, Finding("ok", code, f"The VM gets {show(asked)} {what} (as asked).")
    if source_value:
        if source_value > fitted_limit:
            return fitted_limit, Finding(
                "warn",
                code,
                f"The source machine had {show(source_value)} {what}; the host has "
                f"{show(host_limit)} ({where.source}): the definition gets {show(fitted_limit)}.",
                "Accept this value or set another one. Services sized for the source "
                "(databases, thread pools, hugepages) may need their settings changed.",
            )
        return source_value, Finding(
            "ok", code, f"The VM gets {show(source_value)} {what}, as the source machine had."
        )
    value = min(default, fitted_limit)
    return value, Finding(
        "info",
        code,
        f"The source machine's {what} are not known: the VM gets {show(value)}.",
        f"The host has {show(host_limit)} ({where.source}).",
    )


def _size_finding(size: int, source_size: int, *, asked: bool) -> Finding:
    """``vm.size``: the VM disk's size against the source disk's."""
    if size < source_size:
        return Finding(
            "stop",
            "vm.size",
            f"A VM disk of {human_size(size)} ({size} bytes) is smaller than the source disk, "
            f"{human_size(source_size)} ({source_size} bytes); it is restored block for block.",
            f"Give at least {human_size(source_size)}, or no size for the source disk's.",
        )
    if size > source_size:
        return Finding(
            "info",
            "vm.size",
            f"VM disk {human_size(size)} as asked, {human_size(size - source_size)} larger "
            f"than the source disk ({human_size(source_size)}).",
        )
    how = "as asked, the source disk's size" if asked else "the source disk's size"
    return Finding("info", "vm.size", f"VM disk {human_size(size)}, {how}.")


def plan_vm(
    image: Any,
    request: VmRequest,
    *,
    this_host: HostProfile,
    adapt: Any = None,
    disk_bytes: int | None = None,
) -> VmMachine:
    """The VM for ``image`` (a whole-disk image), with its ``vm.*`` findings."""
    request.check()
    facts = ImageFacts.from_image(image)
    source = HostProfile.from_dict(facts.host) if facts.host else None
    where = runs_on(request, this_host)
    findings: list[Finding] = []
    why: dict[str, str] = {}

    firmware, why["firmware"] = _choose_firmware(facts, source, request.firmware)
    findings.append(
        Finding("info", "vm.firmware", f"Firmware: {firmware.upper()}; {why['firmware']}.")
    )

    system = _system(image)
    source_bus = str(facts.source_disk.get("bus") or "").lower() or None
    bus, by_fixup, why["disk_bus"], level = _choose_bus(
        system,
        source_bus,
        _drivers_allowed(adapt),
        virtio_possible=not {"vmx", "ovf"} & set(request.definitions),
    )
    nic = "virtio" if bus == "virtio" else "e1000"
    if system is not None and system.found and system.kernels and bus == "virtio":
        newest = system.kernels[0]
        if newest.modules and "virtio_net" not in set(newest.modules) | set(newest.builtin):
            nic = "e1000"
    why["nic_model"] = (
        "virtio like the disk"
        if nic == "virtio"
        else (
            "an e1000 card: the kernel has no virtio_net"
            if bus == "virtio"
            else "an e1000 card, with the SATA disk"
        )
    )
    bus_words = "virtio" if bus == "virtio" else "SATA (AHCI)"
    findings.append(
        Finding(
            level,
            "vm.disk",
            f"Disk bus {bus_words}, network card {nic}: {why['disk_bus']}.",
            f"Network card: {why['nic_model']}.",
        )
    )

    vcpus, f_cpu = _fit(
        "vCPUs",
        "vm.cpus",
        source.cpus if source and source.cpus > 0 else None,
        request.vcpus,
        max(0, where.cpus),
        max(0, where.cpus),
        where,
        str,
        DEFAULT_VCPUS,
    )
    memory, f_mem = _fit(
        "of memory",
        "vm.memory",
        source.memory_bytes if source and source.memory_bytes > 0 else None,
        request.memory_bytes,
        max(MIN_MEMORY, where.memory_bytes) if where.memory_bytes > 0 else 0,
        fitted_memory(where.memory_bytes),
        where,
        human_size,
        DEFAULT_MEMORY,
    )
    memory = max(MIN_MEMORY, memory // MiB * MiB)
    findings += [f_cpu, f_mem]
    why["vcpus"], why["memory"] = f_cpu.message, f_mem.message

    source_size = int(facts.source_disk.get("size_bytes") or facts.extent_bytes)
    source_size = max(source_size, int(facts.extent_bytes))
    size = int(disk_bytes or request.disk_bytes or source_size)
    findings.append(_size_finding(size, source_size, asked=bool(disk_bytes or request.disk_bytes)))
    name = request.name or default_name(str(getattr(image, "path", "") or "vm"))
    return VmMachine(
        name=name,
        firmware=firmware,
        disk_bus=bus,
        nic_model=nic,
        vcpus=vcpus,
        memory_bytes=memory,
        disk_bytes=size,
        disk_format=request.disk_format,
        definitions=tuple(request.definitions),
        mac=new_mac(),
        runs_on=where,
        source=source.machine if source else "unknown machine",
        virtio_by_fixup=by_fixup,
        why=why,
        findings=findings,
    )


def default_name(image_path: str) -> str:
    """A file-safe VM name from the image's file or folder name."""
    raw = str(image_path).rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".qcow2", ".vmdk", ".vhdx", ".vdi", ".vhd", ".img", ".raw"):
        raw = raw.removesuffix(suffix)
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", raw).strip("-._+")[:63]
    return cleaned if cleaned and NAME_RE.match(cleaned) else "restored-vm"
