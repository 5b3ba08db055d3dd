"""The virtual machine's own configuration, found next to its disk (issue 10, item 5).

A VM disk often lies next to the file that describes the machine it belonged to: a libvirt
domain XML, a VMware ``.vmx``, an OVF descriptor (or an ``.ova`` holding one), a
VirtualBox ``.vbox``. :func:`find_vm_config` reads the one that names this disk and gives
its vCPUs, memory, firmware, the disk's bus and the NIC models in the words of
:class:`~rescueui.core.host.HostProfile` (``cpus``, ``memory_bytes``, ``firmware``,
``virtual``, ``storage_controllers``, ``disks``, ``nics``) and of the manifest's
``source_disk["bus"]`` (the bus words ``disks.py`` uses: virtio, scsi, ata, nvme), so
pre-flight compares them with this machine like the host profile of our own images.

All of it is untrusted input: only regular files in the image's own folder, never through
a symlink, at most :data:`CONFIG_LIMIT` bytes, XML parsed by expat with document type and
entity declarations refused. A file that cannot be read, or describes another disk, is
ignored with a warning; nothing here raises.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescueui.core.errors import RescueError
from rescueui.core.safefile import open_regular, read_regular
from rescueui.core.safexml import parse_untrusted_xml
from rescueui.core.units import MiB

CONFIG_LIMIT = 4 * MiB
MAX_CANDIDATES = 32  # configuration files looked at in one folder
MAX_DIR_ENTRIES = 10_000  # folder entries looked at (a huge folder is not listed whole)
MAX_XML_ELEMENTS = 200_000
MAX_XML_DEPTH = 64

SUFFIXES = (".xml", ".vmx", ".ovf", ".ova", ".vbox")

# The guest's bus (as the configuration spells it) -> the word disks.py / pre-flight use.
_BUS = {
    "virtio": "virtio",
    "scsi": "scsi",
    "sata": "ata",
    "ide": "ata",
    "nvme": "nvme",
    "xen": "xen",
    "usb": "usb",
    "sd": "mmc",
}

# NIC model (any spelling of the four formats) -> the Linux driver the guest needs.
_NIC_DRIVERS = {
    "virtio": "virtio_net",
    "virtio-net": "virtio_net",
    "e1000": "e1000",
    "82540em": "e1000",
    "82543gc": "e1000",
    "82545em": "e1000",
    "e1000e": "e1000e",
    "vmxnet3": "vmxnet3",
    "vmxnet": "vmxnet",
    "vmxnet2": "vmxnet",
    "rtl8139": "8139cp",
    "vlance": "pcnet32",
    "pcnet32": "pcnet32",
    "am79c970a": "pcnet32",
    "am79c973": "pcnet32",
    "am79c960": "pcnet32",
    "ne2k_pci": "ne2k-pci",
    "netvsc": "hv_netvsc",
}


class _Refused(Exception):
    """The file is not used (the text says why)."""


@dataclass
class VmConfig:
    """What the VM configuration says about the machine this disk belonged to."""

    source: str  # "libvirt domain web01.xml"
    path: Path
    cpus: int | None = None
    memory_bytes: int | None = None
    firmware: str | None = None  # "uefi" | "bios" (pre-flight's words)
    bus: str | None = None  # this disk's bus: virtio | scsi | ata | nvme (disks.py's words)
    controller: str | None = None  # the controller as the configuration names it
    disk_name: str | None = None  # the guest's name for the disk (vda, scsi0:0, ...)
    nics: list[dict[str, Any]] = field(default_factory=list)
    virtual: str | None = None  # "kvm" "qemu" "vmware" "virtualbox" "virtual"

    def host(self) -> dict[str, Any]:
        """The source machine in :meth:`HostProfile.to_dict` keys (plus ``source``)."""
        out: dict[str, Any] = {"source": self.source, "virtual": self.virtual or "virtual"}
        if self.cpus:
            out["cpus"] = self.cpus
        if self.memory_bytes:
            out["memory_bytes"] = self.memory_bytes
        if self.firmware in ("uefi", "bios"):
            out["firmware"] = self.firmware
        if self.controller:
            out["storage_controllers"] = [self.controller]
        if self.bus:
            out["disks"] = [
                {"name": self.disk_name or "disk", "bus": self.bus, "model": self.controller}
            ]
        out["nics"] = [dict(n) for n in self.nics]
        return out

    def source_disk(self) -> dict[str, Any]:
        """What the manifest's ``source_disk`` gains (the bus pre-flight compares)."""
        return {"bus": self.bus} if self.bus else {}


# --------------------------------------------------------------------------- finding


def find_vm_config(image_path: str | Path, warnings: list[str] | None = None) -> VmConfig | None:
    """The configuration next to ``image_path`` that names this disk, or None.

    Files that cannot be read or parsed, or that describe another disk, add a sentence to
    ``warnings`` (for the manifest) and are otherwise ignored. Never raises.
    """
    notes: list[str] = [] if warnings is None else warnings
    try:
        p = Path(image_path)
        st = os.stat(p)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # a device or a pipe: there is no folder of its own
    folder = p.parent
    names = _candidates(folder, p.name)
    for name in names:
        cfg_path = folder / name
        try:
            cfg = _read_config(cfg_path, p.name)
        except _Refused as exc:
            notes.append(f"{name} next to the image is not used: {exc}")
            continue
        except (RescueError, OSError, tarfile.TarError, ValueError) as exc:
            why = exc.message if isinstance(exc, RescueError) else str(exc)
            notes.append(f"{name} next to the image could not be read: {why}")
            continue
        if cfg is not None:
            return cfg
    return None


def _candidates(folder: Path, image_name: str) -> list[str]:
    stem = image_name.split(".")[0]
    found: list[tuple[int, str]] = []
    try:
        with os.scandir(folder) as it:
            for i, entry in enumerate(it):
                if i >= MAX_DIR_ENTRIES:
                    break
                if entry.name == image_name or not entry.name.lower().endswith(SUFFIXES):
                    continue
                found.append((0 if entry.name.split(".")[0] == stem else 1, entry.name))
    except OSError:
        return []
    found.sort()
    return [n for _, n in found[:MAX_CANDIDATES]]


def _read_config(path: Path, image_name: str) -> VmConfig | None:
    """Parse one candidate; None when it is not a VM configuration at all."""
    suffix = path.suffix.lower()
    if suffix == ".ova":
        data = _ovf_from_ova(path)
    else:
        data = read_regular(path, CONFIG_LIMIT, what="VM configuration")
    if suffix == ".vmx":
        return _parse_vmx(data, path, image_name)
    if suffix in (".ovf", ".ova"):
        return _parse_ovf(_parse_xml(data), path, image_name)
    if suffix == ".vbox":
        return _parse_vbox(_parse_xml(data), path, image_name)
    if not _looks_like(data, b"<domain"):
        return None  # some other XML file (a bmap, a report...): not ours to judge
    return _parse_libvirt(_parse_xml(data), path, image_name)


def _looks_like(data: bytes, marker: bytes) -> bool:
    return marker in data[:4096]


def _ovf_from_ova(path: Path) -> bytes:
    """The OVF descriptor of an OVA: its first member (the OVF specification puts it first)."""
    fd = open_regular(path, what="OVA archive")
    with os.fdopen(fd, "rb") as f:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            member = tar.next()
            if member is None or not member.name.lower().endswith(".ovf"):
                raise _Refused("its first member is not an OVF descriptor")
            if not member.isreg():
                raise _Refused("its OVF descriptor is not a regular file")
            if member.size > CONFIG_LIMIT:
                raise _Refused(f"its OVF descriptor is larger than {CONFIG_LIMIT} bytes")
            src = tar.extractfile(member)
            if src is None:
                raise _Refused("its OVF descriptor cannot be read")
            data = src.read(CONFIG_LIMIT + 1)
    if len(data) > CONFIG_LIMIT:
        raise _Refused(f"its OVF descriptor is larger than {CONFIG_LIMIT} bytes")
    return data


# --------------------------------------------------------------------------- safe XML


@dataclass
class _El:
    tag: str  # local name (namespace prefix dropped)
    attrs: dict[str, str]  # by local name (a later prefixed duplicate does not override)
    children: list[_El] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> _El | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[_El]:
        return [c for c in self.children if c.tag == tag]

    def iter(self, tag: str | None = None) -> list[_El]:
        out: list[_El] = []
        stack = [self]
        while stack:
            el = stack.pop()
            if tag is None or el.tag == tag:
                out.append(el)
            stack.extend(reversed(el.children))
        return out

    def child_text(self, tag: str) -> str:
        c = self.find(tag)
        return c.text.strip() if c is not None else ""


def _local(name: str) -> str:
    return name.rsplit(":", 1)[-1]


def _parse_xml(data: bytes) -> _El:
    """A small element tree from untrusted XML: no DTD, no entities, bounded depth/size."""
    stack: list[_El] = []
    root: list[_El] = []
    count = [0]
    texts: list[list[str]] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        count[0] += 1
        if count[0] > MAX_XML_ELEMENTS or len(stack) >= MAX_XML_DEPTH:
            raise _Refused("it is larger or deeper than a VM configuration")
        local: dict[str, str] = {}
        for k, v in attrs.items():
            local.setdefault(_local(k), v)
        el = _El(_local(name), local)
        if stack:
            stack[-1].children.append(el)
        else:
            root.append(el)
        stack.append(el)
        texts.append([])

    def end(_name: str) -> None:
        el = stack.pop()
        el.text = "".join(texts.pop())[:65536]

    def chars(s: str) -> None:
        if texts and sum(map(len, texts[-1])) < 65536:
            texts[-1].append(s)

    parse_untrusted_xml(
        data, start=start, end=end, chars=chars, refuse=_Refused, what="a VM configuration"
    )
    if not root:
        raise _Refused("it holds no XML element")
    return root[0]


# --------------------------------------------------------------------------- helpers


def _basename(ref: str) -> str:
    """The file name of a path as any of the formats writes it (also Windows paths)."""
    return ref.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _int(text: Any) -> int | None:
    try:
        v = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return v if 0 < v < 1 << 62 else None


def _nic(i: int, model: str | None, mac: str | None) -> dict[str, Any]:
    m = (model or "").strip() or None
    return {
        "name": f"net{i}",
        "mac": (mac or "").strip().lower() or None,
        "model": m,
        "driver": _NIC_DRIVERS.get(m.lower(), m) if m else None,
        "physical": True,  # the guest saw it as a device of its own
    }


def _other_disk(kind: str, refs: list[str]) -> _Refused:
    shown = ", ".join(sorted(set(refs))[:4]) or "no disk file"
    return _Refused(f"this {kind} describes another disk ({shown})")


# --------------------------------------------------------------------------- libvirt

_LIBVIRT_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
}


def _parse_libvirt(root: _El, path: Path, image_name: str) -> VmConfig | None:
    if root.tag != "domain":
        return None
    kind = "libvirt domain"
    devices = root.find("devices") or _El("devices", {})
    refs: list[str] = []
    mine: _El | None = None
    for disk in devices.findall("disk"):
        if disk.attrs.get("device", "disk") != "disk":
            continue
        src = disk.find("source")
        ref = ""
        if src is not None:
            ref = src.attrs.get("file") or src.attrs.get("dev") or src.attrs.get("name") or ""
        refs.append(_basename(ref))
        if mine is None and ref and _basename(ref) == image_name:
            mine = disk
    if mine is None:
        raise _other_disk(kind, refs)
    cfg = VmConfig(source=f"{kind} {path.name}", path=path)
    vtype = root.attrs.get("type", "").lower()
    cfg.virtual = vtype if vtype in ("kvm", "qemu", "xen", "hyperv", "vmware") else "virtual"
    vcpu = root.find("vcpu")
    if vcpu is not None:
        cfg.cpus = _int(vcpu.attrs.get("current")) or _int(vcpu.text)
    mem = root.find("memory")
    if mem is not None:
        unit = _LIBVIRT_UNITS.get(mem.attrs.get("unit", "KiB").lower())
        n = _int(mem.text)
        if unit and n:
            cfg.memory_bytes = n * unit
    os_el = root.find("os")
    if os_el is not None:
        loader = os_el.find("loader")
        fw = os_el.attrs.get("firmware", "").lower()
        loader_text = (loader.text if loader is not None else "").lower()
        if fw == "efi" or (
            loader is not None
            and (
                loader.attrs.get("type") == "pflash"
                or any(w in loader_text for w in ("ovmf", "edk2", "efi", "aavmf"))
            )
        ):
            cfg.firmware = "uefi"
        else:
            cfg.firmware = "bios"  # libvirt's default on x86: SeaBIOS
    target = mine.find("target")
    bus = (target.attrs.get("bus", "") if target is not None else "").lower()
    if not bus and target is not None:
        dev = target.attrs.get("dev", "")
        bus = {"vd": "virtio", "sd": "scsi", "hd": "ide", "nv": "nvme", "xv": "xen"}.get(
            dev[:2], ""
        )
    cfg.disk_name = target.attrs.get("dev") if target is not None else None
    cfg.bus = _BUS.get(bus)
    cfg.controller = bus or None
    if bus == "scsi":
        for ctl in devices.findall("controller"):
            if ctl.attrs.get("type") == "scsi" and ctl.attrs.get("model"):
                cfg.controller = ctl.attrs["model"]
                break
    for i, iface in enumerate(devices.findall("interface")):
        model = iface.find("model")
        mac = iface.find("mac")
        cfg.nics.append(
            _nic(
                i,
                model.attrs.get("type") if model is not None else None,
                mac.attrs.get("address") if mac is not None else None,
            )
        )
    return cfg


# --------------------------------------------------------------------------- VMware .vmx

_VMX_LINE = re.compile(r'^\s*([A-Za-z0-9_.:\-]+)\s*=\s*"?(.*?)"?\s*$')
_VMX_DISK = re.compile(r"^(scsi|sata|nvme|ide)(\d+):(\d+)\.filename$")


def _parse_vmx(data: bytes, path: Path, image_name: str) -> VmConfig | None:
    text = data.decode("utf-8", errors="replace")
    kv: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _VMX_LINE.match(line)
        if m:
            kv[m.group(1).lower()] = m.group(2)
    if not any(k.startswith(("virtualhw.", "config.version", "displayname")) for k in kv) and not (
        any(_VMX_DISK.match(k) for k in kv)
    ):
        raise _Refused("it is not a VMware configuration (no key = value settings it uses)")

    def present(prefix: str) -> bool:
        return kv.get(f"{prefix}.present", "true").lower() != "false"

    refs: list[str] = []
    mine: tuple[str, str, str] | None = None
    for key, value in sorted(kv.items()):
        m = _VMX_DISK.match(key)
        if not m:
            continue
        dev = key[: -len(".filename")]
        refs.append(_basename(value))
        if (
            mine is None
            and _basename(value) == image_name
            and present(dev)
            and present(f"{m.group(1)}{m.group(2)}")
            and kv.get(f"{dev}.devicetype", "disk").lower() not in ("cdrom-image", "cdrom-raw")
        ):
            mine = (m.group(1), m.group(1) + m.group(2), dev)
    if mine is None:
        raise _other_disk("VMware configuration", refs)
    kind, ctl, dev = mine
    cfg = VmConfig(source=f"VMware configuration {path.name}", path=path, virtual="vmware")
    cfg.cpus = _int(kv.get("numvcpus")) or 1
    mem = _int(kv.get("memsize"))
    cfg.memory_bytes = mem * MiB if mem else None
    cfg.firmware = "uefi" if kv.get("firmware", "bios").lower() == "efi" else "bios"
    cfg.bus = _BUS[kind]
    cfg.disk_name = dev
    if kind == "scsi":
        cfg.controller = kv.get(f"{ctl}.virtualdev") or "buslogic"
    elif kind == "sata":
        cfg.controller = "ahci"
    else:
        cfg.controller = kind
    n = 0
    for i in range(64):
        eth = f"ethernet{i}"
        if f"{eth}.present" not in kv or not present(eth):
            continue
        model = kv.get(f"{eth}.virtualdev") or "vlance"
        mac = kv.get(f"{eth}.address") or kv.get(f"{eth}.generatedaddress")
        cfg.nics.append(_nic(n, model, mac))
        n += 1
    return cfg


# --------------------------------------------------------------------------- OVF / OVA

_OVF_UNIT = re.compile(r"^\s*byte\s*(?:\*\s*(\d+)\s*\^\s*(\d+))?\s*$", re.I)
_OVF_NAMED_UNITS = {
    "kilobytes": 2**10,
    "kb": 2**10,
    "megabytes": 2**20,
    "mb": 2**20,
    "gigabytes": 2**30,
    "gb": 2**30,
}


def _ovf_unit(text: str) -> int | None:
    t = text.strip()
    if not t:
        return MiB  # VMware and VirtualBox write memory in MiB when they leave it out
    m = _OVF_UNIT.match(t)
    if m:
        if m.group(1) is None:
            return 1
        base, exp = int(m.group(1)), int(m.group(2))
        return base**exp if base <= 1024 and exp <= 40 else None
    return _OVF_NAMED_UNITS.get(t.lower())


def _parse_ovf(root: _El, path: Path, image_name: str) -> VmConfig | None:
    if root.tag != "Envelope":
        raise _Refused(f"its root element is <{root.tag[:40]}>, not an OVF <Envelope>")
    kind = "OVF descriptor"
    files = {
        f.attrs.get("id", ""): _basename(f.attrs.get("href", ""))
        for f in root.iter("File")
        if f.attrs.get("href")
    }
    mine_files = {fid for fid, name in files.items() if name == image_name}
    mine_disks = {
        d.attrs.get("diskId", "")
        for d in root.iter("Disk")
        if d.attrs.get("fileRef") in mine_files and d.attrs.get("diskId")
    }
    refs = {f"/disk/{d}" for d in mine_disks} | {f"/file/{f}" for f in mine_files}
    for system in root.iter("VirtualSystem"):
        hw = system.find("VirtualHardwareSection") or next(
            iter(system.iter("VirtualHardwareSection")), None
        )
        if hw is None:
            continue
        items = [it for it in hw.children if it.tag in ("Item", "StorageItem", "EthernetPortItem")]
        by_id = {it.child_text("InstanceID"): it for it in items}
        disk_item = next(
            (
                it
                for it in items
                if it.child_text("ResourceType") == "17"
                and any(it.child_text("HostResource").endswith(r) for r in refs)
            ),
            None,
        )
        if disk_item is None:
            continue
        cfg = VmConfig(source=f"{kind} {path.name}", path=path)
        vtype = ""
        sysel = hw.find("System")
        if sysel is not None:
            vtype = sysel.child_text("VirtualSystemType").lower()
        cfg.virtual = (
            "vmware"
            if "vmx" in vtype
            else "virtualbox"
            if "virtualbox" in vtype
            else "kvm"
            if "kvm" in vtype or "qemu" in vtype
            else "virtual"
        )
        nic_n = 0
        for it in items:
            rtype = it.child_text("ResourceType")
            if rtype == "3":
                cfg.cpus = _int(it.child_text("VirtualQuantity"))
            elif rtype == "4":
                n = _int(it.child_text("VirtualQuantity"))
                unit = _ovf_unit(it.child_text("AllocationUnits"))
                if n and unit:
                    cfg.memory_bytes = n * unit
            elif rtype == "10":
                cfg.nics.append(
                    _nic(nic_n, it.child_text("ResourceSubType"), it.child_text("Address"))
                )
                nic_n += 1
        parent = by_id.get(disk_item.child_text("Parent"))
        if parent is not None:
            ptype = parent.child_text("ResourceType")
            sub = parent.child_text("ResourceSubType")
            low = sub.lower()
            if ptype == "6":
                cfg.bus = "virtio" if low == "virtio" else "scsi"
            elif ptype == "5":
                cfg.bus = "ata"
            elif ptype == "20":
                cfg.bus = "nvme" if "nvme" in low else "virtio" if "virtio" in low else "ata"
            cfg.controller = sub or {"5": "ide", "6": "scsi", "20": "sata"}.get(ptype)
        cfg.disk_name = disk_item.child_text("ElementName") or None
        cfg.firmware = _ovf_firmware(system, hw)
        return cfg
    raise _other_disk(kind, list(files.values()))


def _ovf_firmware(system: _El, hw: _El) -> str:
    for el in (system, hw, *system.iter()):
        fw = el.attrs.get("firmware", "").lower()
        if el.tag == "Config" and el.attrs.get("key", "").lower() == "firmware":
            fw = el.attrs.get("value", "").lower()
        if el.tag == "Firmware" and el.attrs.get("type"):  # VirtualBox's <vbox:Machine>
            fw = el.attrs["type"].lower()
        if fw:
            return "uefi" if fw.startswith("efi") or fw == "uefi" else "bios"
    return "bios"  # both VMware and VirtualBox default to BIOS


# --------------------------------------------------------------------------- VirtualBox

_VBOX_BUS = {
    "ahci": "ata",
    "piix3": "ata",
    "piix4": "ata",
    "ich6": "ata",
    "lsilogic": "scsi",
    "lsilogicsas": "scsi",
    "buslogic": "scsi",
    "virtioscsi": "scsi",
    "nvme": "nvme",
}


def _parse_vbox(root: _El, path: Path, image_name: str) -> VmConfig | None:
    if root.tag != "VirtualBox":
        raise _Refused(f"its root element is <{root.tag[:40]}>, not <VirtualBox>")
    machine = root.find("Machine")
    if machine is None:
        raise _Refused("it holds no <Machine>")
    kind = "VirtualBox machine"
    uuids: set[str] = set()
    refs: list[str] = []
    for hd in machine.iter("HardDisk"):
        loc = hd.attrs.get("location", "")
        refs.append(_basename(loc))
        if loc and _basename(loc) == image_name and hd.attrs.get("uuid"):
            uuids.add(hd.attrs["uuid"].strip("{}").lower())
    ctl_el: _El | None = None
    dev_el: _El | None = None
    for ctl in machine.iter("StorageController"):
        for dev in ctl.findall("AttachedDevice"):
            img = dev.find("Image")
            if (
                img is not None
                and dev.attrs.get("type", "HardDisk") == "HardDisk"
                and img.attrs.get("uuid", "").strip("{}").lower() in uuids
            ):
                ctl_el, dev_el = ctl, dev
                break
        if ctl_el is not None:
            break
    if ctl_el is None or dev_el is None:
        raise _other_disk(kind, refs)
    cfg = VmConfig(source=f"{kind} {path.name}", path=path, virtual="virtualbox")
    hw = machine.find("Hardware") or _El("Hardware", {})
    cpu = hw.find("CPU")
    cfg.cpus = (_int(cpu.attrs.get("count")) if cpu is not None else None) or 1
    mem = hw.find("Memory")
    ram = _int(mem.attrs.get("RAMSize")) if mem is not None else None
    cfg.memory_bytes = ram * MiB if ram else None
    fw = hw.find("Firmware")
    fw_type = fw.attrs.get("type", "BIOS").lower() if fw is not None else "bios"
    cfg.firmware = "uefi" if fw_type.startswith("efi") else "bios"
    ctype = ctl_el.attrs.get("type", "")
    cfg.controller = ctype or None
    cfg.bus = _VBOX_BUS.get(ctype.lower())
    cfg.disk_name = f"{ctl_el.attrs.get('name', 'controller')} port {dev_el.attrs.get('port', '0')}"
    n = 0
    for net in hw.iter("Adapter"):
        if net.attrs.get("enabled", "false").lower() != "true":
            continue
        mac = net.attrs.get("MACAddress", "")
        if len(mac) == 12:
            mac = ":".join(mac[i : i + 2] for i in range(0, 12, 2))
        cfg.nics.append(_nic(n, net.attrs.get("type") or "Am79C973", mac))
        n += 1
    return cfg


# --------------------------------------------------------------------------- public readers


def read_definition(path: str | Path, disk_name: str) -> VmConfig:
    """The VM definition ``path`` (libvirt, .vmx, .ovf, .ova, .vbox) as this module reads a
    configuration found next to a VM disk, for the disk named ``disk_name``. Untrusted like
    any configuration; :class:`RescueError` names the file and why it cannot be used."""
    p = Path(path)
    try:
        cfg = _read_config(p, disk_name)
    except _Refused as exc:
        raise RescueError(f"The VM definition {p} cannot be used: {exc}.") from None
    except RescueError:
        raise
    except (OSError, tarfile.TarError, UnicodeError) as exc:
        raise RescueError(f"The VM definition {p} cannot be read: {exc}.") from None
    if cfg is None:
        raise RescueError(f"{p} is not a VM definition (no libvirt <domain>).")
    return cfg


def parse_config_xml(data: bytes) -> Any:
    """A bounded element tree (``tag``, ``attrs``, ``children``, ``find``, ``iter``) of
    untrusted XML; :class:`RescueError` when it is not safe, well-formed XML."""
    try:
        return _parse_xml(data)
    except _Refused as exc:
        raise RescueError(f"Cannot read this XML: {exc}.") from None
