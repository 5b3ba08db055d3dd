"""What Linux system is installed on a disk: read from its files, never from its word.

:func:`examine` reads a mounted root (a :class:`~rescueui.core.adapt.rootview.RootView`):
the distribution (``/etc/os-release``), ``/etc/fstab``, the installed kernels and their
initramfs, the initramfs tool and its policy, the boot loader, how the network is
configured, LVM/RAID/LUKS in use, and every line that ties the system to the hardware
it ran on: device kernel names (``/dev/vda1``), MAC addresses, CPU lists, memory sizes.

The result, :class:`InstalledSystem`, is stored in the image manifest at capture (the
pre-flight reads it without a target) and made again from the restored disk before the
fix-ups (:mod:`rescueui.core.adapt.plan`). ``from_dict`` takes untrusted input.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from rescueui.core.adapt.rootview import RootView
from rescueui.core.host import module_name

# Modules whose names the manifest keeps per kernel: what a disk or a network card needs.
DRIVER_DIRS = (
    "kernel/drivers/ata",
    "kernel/drivers/nvme",
    "kernel/drivers/scsi",
    "kernel/drivers/block",
    "kernel/drivers/virtio",
    "kernel/drivers/net",
    "kernel/drivers/message",
    "kernel/drivers/mmc",
    "kernel/drivers/md",
    "kernel/drivers/usb/storage",
    "kernel/drivers/hv",
    "kernel/drivers/xen",
    "kernel/fs",
)

MAX_KERNELS = 16
MAX_ITEMS = 4096  # module names per kernel, lines per list

# A device named by the kernel: /dev/sda1 /dev/vdb2 /dev/xvda1 /dev/hda3 /dev/nvme0n1p2
# /dev/mmcblk0p1. Group 1: the disk, group 2: the partition number.
KERNEL_NAME_RE = re.compile(
    r"(?<![\w/])(/dev/(?:[shv]d[a-z]+|xvd[a-z]+|nvme\d+n\d+p|mmcblk\d+p)(?=\d))(\d+)\b"
)
MAC_RE = re.compile(r"\b([0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5})\b")

ESP_MOUNTPOINTS = ("/boot/efi", "/efi", "/boot")
GRUB_DIRS = ("/boot/grub", "/boot/grub2")
GRUB_PLATFORMS = ("i386-pc", "x86_64-efi", "i386-efi", "arm64-efi")

# Kernel command-line settings that assume the source's CPUs or memory.
CPU_PARAMS = ("isolcpus", "nohz_full", "rcu_nocbs", "irqaffinity", "maxcpus", "nr_cpus")
MEMORY_PARAMS = ("mem", "hugepages", "hugepagesz", "default_hugepagesz", "crashkernel")


@dataclass
class Kernel:
    """One installed kernel."""

    version: str
    initramfs: str | None = None  # its path inside the system
    initramfs_modules: list[str] | None = None  # module names inside it; None: not listed
    modules: list[str] = field(default_factory=list)  # driver modules this kernel has
    builtin: list[str] = field(default_factory=list)  # of those, the ones built in


@dataclass
class FileLine:
    """A line of a file of the system that matters (``value``: what in it matters)."""

    path: str
    line: int
    text: str
    value: str = ""
    kind: str = ""

    def where(self) -> str:
        return f"{self.path} line {self.line}"


@dataclass
class FstabEntry:
    path: str
    line: int
    spec: str
    mountpoint: str
    fstype: str
    options: str


@dataclass
class InstalledSystem:
    """A Linux system found on a disk (``found=False``: none, ``reason`` says why)."""

    found: bool
    reason: str = ""
    root_partition: int | None = None
    os_id: str = ""
    os_name: str = ""
    fstab: list[FstabEntry] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)
    initramfs_tool: str | None = None  # "initramfs-tools" | "dracut" | "mkinitcpio"
    initramfs_policy: str = ""  # e.g. "MODULES=dep", "hostonly=yes"
    boot_loader: str | None = None  # "grub-pc" | "grub-efi" | "grub" | "systemd-boot"
    grub_dir: str | None = None
    grub_platforms_installed: list[str] = field(default_factory=list)  # in grub_dir
    grub_platforms_available: list[str] = field(default_factory=list)  # /usr/lib/grub/*
    packages: list[str] = field(default_factory=list)  # boot-related packages installed
    network: list[str] = field(default_factory=list)  # "ifupdown", "netplan", ...
    interfaces: list[FileLine] = field(default_factory=list)  # interface names in configs
    kernel_names: list[FileLine] = field(default_factory=list)
    nic_rules: list[FileLine] = field(default_factory=list)
    hardware_settings: list[FileLine] = field(default_factory=list)
    storage_stack: list[str] = field(default_factory=list)  # "LVM", "RAID", "LUKS"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> InstalledSystem:
        """From ``to_dict()`` output of an untrusted manifest: types coerced, lists bounded."""
        if not isinstance(d, dict):
            return cls(found=False, reason="not recorded")

        def s(v: Any, limit: int = 512) -> str:
            return v[:limit] if isinstance(v, str) else ""

        def sl(v: Any) -> list[str]:
            return (
                [x[:256] for x in v[:MAX_ITEMS] if isinstance(x, str)]
                if isinstance(v, list)
                else []
            )

        def objs(v: Any, limit: int = MAX_ITEMS) -> list[dict[str, Any]]:
            return [x for x in v[:limit] if isinstance(x, dict)] if isinstance(v, list) else []

        def num(v: Any) -> int:
            return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 31 else 0

        def lines(v: Any) -> list[FileLine]:
            return [
                FileLine(
                    s(x.get("path")),
                    num(x.get("line")),
                    s(x.get("text")),
                    s(x.get("value")),
                    s(x.get("kind"), 32),
                )
                for x in objs(v)
            ]

        kernels = []
        for k in objs(d.get("kernels"), MAX_KERNELS):
            mods = k.get("initramfs_modules")
            kernels.append(
                Kernel(
                    version=s(k.get("version"), 128),
                    initramfs=s(k.get("initramfs")) or None,
                    initramfs_modules=sl(mods) if isinstance(mods, list) else None,
                    modules=sl(k.get("modules")),
                    builtin=sl(k.get("builtin")),
                )
            )
        rp = d.get("root_partition")
        return cls(
            found=d.get("found") is True,
            reason=s(d.get("reason")),
            root_partition=num(rp) if rp is not None else None,
            os_id=s(d.get("os_id"), 64),
            os_name=s(d.get("os_name"), 128),
            fstab=[
                FstabEntry(
                    s(x.get("path")),
                    num(x.get("line")),
                    s(x.get("spec")),
                    s(x.get("mountpoint")),
                    s(x.get("fstype"), 32),
                    s(x.get("options")),
                )
                for x in objs(d.get("fstab"), 256)
            ],
            kernels=kernels,
            initramfs_tool=s(d.get("initramfs_tool"), 32) or None,
            initramfs_policy=s(d.get("initramfs_policy"), 64),
            boot_loader=s(d.get("boot_loader"), 32) or None,
            grub_dir=s(d.get("grub_dir"), 64) or None,
            grub_platforms_installed=sl(d.get("grub_platforms_installed")),
            grub_platforms_available=sl(d.get("grub_platforms_available")),
            packages=sl(d.get("packages")),
            network=sl(d.get("network")),
            interfaces=lines(d.get("interfaces")),
            kernel_names=lines(d.get("kernel_names")),
            nic_rules=lines(d.get("nic_rules")),
            hardware_settings=lines(d.get("hardware_settings")),
            storage_stack=sl(d.get("storage_stack")),
        )

    # -- what the plan asks ------------------------------------------------------------
    def describe(self) -> str:
        """One line: "Debian GNU/Linux 12 (bookworm), kernel 6.1.0-18-amd64, grub-pc"."""
        if not self.found:
            return f"no Linux system found ({self.reason})" if self.reason else "no Linux system"
        parts = [self.os_name or self.os_id or "Linux"]
        if self.kernels:
            parts.append(
                ("kernels " if len(self.kernels) > 1 else "kernel ")
                + ", ".join(k.version for k in self.kernels)
            )
        if self.boot_loader:
            parts.append(self.boot_loader)
        if self.initramfs_tool:
            parts.append(
                self.initramfs_tool
                + (f" ({self.initramfs_policy})" if self.initramfs_policy else "")
            )
        return "; ".join(parts)

    def boots_by(self) -> set[str]:
        """Firmware kinds the installed boot loader serves: {"bios"}, {"uefi"}, both, none."""
        out: set[str] = set()
        if "i386-pc" in self.grub_platforms_installed:
            out.add("bios")
        if any(p.endswith("-efi") for p in self.grub_platforms_installed):
            out.add("uefi")
        if self.boot_loader == "systemd-boot":
            out.add("uefi")
        return out

    def mountpoint(self, where: str) -> FstabEntry | None:
        for e in self.fstab:
            if e.mountpoint == where:
                return e
        return None

    @property
    def esp(self) -> FstabEntry | None:
        for where in ESP_MOUNTPOINTS:
            e = self.mountpoint(where)
            if e is not None and e.fstype in ("vfat", "fat", "msdos", "umsdos"):
                return e
        return None


# --------------------------------------------------------------------------- examine

InitramfsLister = Callable[[Kernel, str | None], list[str] | None]


def examine(view: RootView, *, list_initramfs: InitramfsLister | None = None) -> InstalledSystem:
    """Everything this module knows how to read from the system mounted at ``view.root``
    (its ``/boot`` and ESP mounted too, when they are separate filesystems).

    ``list_initramfs(kernel, initramfs_tool)``: the module names inside a kernel's initramfs,
    listed by the system's own tool (``lsinitramfs``, ``lsinitrd``) in a chroot; ``None`` if it cannot.
    """
    if not looks_installed(view):
        return InstalledSystem(found=False, reason=NOT_INSTALLED)
    osr = _os_release(view) or {}
    system = InstalledSystem(
        found=True,
        os_id=osr.get("ID", ""),
        os_name=osr.get("PRETTY_NAME", "") or osr.get("NAME", ""),
    )
    system.fstab = read_fstab(view)
    system.kernels = _kernels(view)
    system.initramfs_tool, system.initramfs_policy = _initramfs_tool(view)
    if list_initramfs is not None:
        for k in system.kernels:
            if k.initramfs:
                k.initramfs_modules = list_initramfs(k, system.initramfs_tool)
    _boot_loader(view, system)
    _network(view, system)
    system.kernel_names = kernel_name_lines(view)
    system.nic_rules = nic_rules(view)
    system.hardware_settings = _hardware_settings(view)
    system.storage_stack = _storage_stack(view, system)
    return system


NOT_INSTALLED = (
    "no partition holds an installed Linux system, one with /etc/os-release and /etc/fstab"
)


def looks_installed(view: RootView) -> bool:
    """The root filesystem of an installed Linux system: it says what it is (os-release)
    and what it mounts (fstab). A data disk with an ``etc`` folder is not one."""
    release = view.is_file("/etc/os-release") or view.is_file("/usr/lib/os-release")
    return release and view.is_file("/etc/fstab")


def _os_release(view: RootView) -> dict[str, str] | None:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = view.read_text(path, 64 * 1024)
        if text is not None:
            return _shell_vars(text)
    return None


def _shell_vars(text: str) -> dict[str, str]:
    """``KEY=value`` lines of a shell-style config file (quotes removed, never run)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        try:
            words = shlex.split(value, comments=True)
        except ValueError:
            words = [value.strip().strip("\"'")]
        out[key] = " ".join(words)
    return out


def read_fstab(view: RootView, path: str = "/etc/fstab") -> list[FstabEntry]:
    out = []
    for no, line in view.lines(path):
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3:
            out.append(
                FstabEntry(
                    path,
                    no,
                    fields[0],
                    _unoctal(fields[1]),
                    fields[2],
                    fields[3] if len(fields) > 3 else "",
                )
            )
    return out[:256]


def _unoctal(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _kernels(view: RootView) -> list[Kernel]:
    versions = [v for v in view.listdir("/lib/modules") if view.is_dir(f"/lib/modules/{v}/kernel")]
    out = []
    for v in sorted(versions, key=_version_key, reverse=True)[:MAX_KERNELS]:
        k = Kernel(version=v)
        for name in (f"/boot/initrd.img-{v}", f"/boot/initramfs-{v}.img", f"/boot/initrd-{v}"):
            if view.is_file(name):
                k.initramfs = name
                break
        else:
            if view.is_file("/boot/initramfs-linux.img") and len(versions) == 1:
                k.initramfs = "/boot/initramfs-linux.img"
        k.modules, k.builtin = _driver_modules(view, v)
        out.append(k)
    return out


def _version_key(v: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", v)]


def _driver_modules(view: RootView, version: str) -> tuple[list[str], list[str]]:
    """Driver module names of a kernel (modules.dep and modules.builtin under DRIVER_DIRS)."""
    names: set[str] = set()
    builtin: set[str] = set()
    base = f"/lib/modules/{version}"
    for listing, into in (("modules.dep", names), ("modules.builtin", builtin)):
        for _, line in view.lines(f"{base}/{listing}"):
            path = line.split(":", 1)[0].strip()
            if path.startswith(DRIVER_DIRS):
                into.add(module_name(path.rsplit("/", 1)[-1].split(".ko", 1)[0]))
    return sorted(names | builtin)[:MAX_ITEMS], sorted(builtin)[:MAX_ITEMS]


def _initramfs_tool(view: RootView) -> tuple[str | None, str]:
    if view.is_file("/usr/sbin/update-initramfs") or view.is_file(
        "/etc/initramfs-tools/initramfs.conf"
    ):
        conf = _shell_vars(view.read_text("/etc/initramfs-tools/initramfs.conf", 256 * 1024) or "")
        for name in view.listdir("/etc/initramfs-tools/conf.d"):
            conf.update(
                _shell_vars(view.read_text(f"/etc/initramfs-tools/conf.d/{name}", 256 * 1024) or "")
            )
        return "initramfs-tools", f"MODULES={conf.get('MODULES', 'most')}"
    if view.is_file("/usr/bin/dracut") or view.is_dir("/etc/dracut.conf.d"):
        conf: dict[str, str] = {}
        for path in ["/etc/dracut.conf"] + [
            f"/etc/dracut.conf.d/{n}"
            for n in view.listdir("/etc/dracut.conf.d")
            if n.endswith(".conf")
        ]:
            conf.update(_shell_vars(view.read_text(path, 256 * 1024) or ""))
        return "dracut", f"hostonly={conf.get('hostonly', 'yes (default)')}"
    if view.is_file("/usr/bin/mkinitcpio") or view.is_file("/etc/mkinitcpio.conf"):
        return "mkinitcpio", ""
    return None, ""


def _boot_loader(view: RootView, system: InstalledSystem) -> None:
    for d in GRUB_DIRS:
        if view.is_dir(d):
            system.grub_dir = d
            system.grub_platforms_installed = [p for p in GRUB_PLATFORMS if view.is_dir(f"{d}/{p}")]
            break
    system.grub_platforms_available = [
        p for p in GRUB_PLATFORMS if view.is_dir(f"/usr/lib/grub/{p}")
    ]
    system.packages = _installed_packages(
        view,
        (
            "grub-pc",
            "grub-pc-bin",
            "grub-efi-amd64",
            "grub-efi-amd64-bin",
            "grub-efi-amd64-signed",
            "shim-signed",
            "grub2-common",
            "systemd-boot",
            "initramfs-tools",
            "dracut",
            "efibootmgr",
        ),
    )
    esp = system.esp
    if (
        view.is_file("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
        and esp is not None
        and view.is_dir(f"{esp.mountpoint}/loader")
    ):
        system.boot_loader = "systemd-boot"
    elif "grub-efi-amd64" in system.packages or "grub-efi-amd64-signed" in system.packages:
        system.boot_loader = "grub-efi"
    elif "grub-pc" in system.packages:
        system.boot_loader = "grub-pc"
    elif system.grub_dir:
        bios = "i386-pc" in system.grub_platforms_installed
        efi = any(p.endswith("-efi") for p in system.grub_platforms_installed)
        system.boot_loader = (
            "grub-pc" if bios and not efi else "grub-efi" if efi and not bios else "grub"
        )


def _installed_packages(view: RootView, wanted: tuple[str, ...]) -> list[str]:
    """Which of ``wanted`` dpkg lists as installed (other package managers: not read)."""
    text = view.read_text("/var/lib/dpkg/status", 64 << 20)
    if text is None:
        return []
    found = []
    for para in text.split("\n\n"):
        name = status = ""
        for line in para.splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Status: "):
                status = line[8:].strip()
        if name in wanted and status.endswith(" installed"):
            found.append(name)
    return sorted(found)


def _network(view: RootView, system: InstalledSystem) -> None:
    """How the network is configured, and the interface names the configs use."""
    kinds: list[str] = []
    names: list[FileLine] = []
    if view.is_file("/etc/network/interfaces"):
        kinds.append("ifupdown")
        files = ["/etc/network/interfaces"] + [
            f"/etc/network/interfaces.d/{n}" for n in view.listdir("/etc/network/interfaces.d")
        ]
        for path in files:
            for no, line in view.lines(path):
                m = re.match(r"\s*(?:auto|allow-hotplug|allow-auto|iface)\s+(\S+)", line)
                if m:
                    for name in (
                        [m.group(1)] if line.strip().startswith("iface") else line.split()[1:]
                    ):
                        if name != "lo":
                            names.append(FileLine(path, no, line.strip(), name, "ifupdown"))
    netplan = [n for n in view.listdir("/etc/netplan") if n.endswith((".yaml", ".yml"))]
    if netplan:
        kinds.append("netplan")
        for n in netplan:
            path = f"/etc/netplan/{n}"
            in_eth = False
            for no, line in view.lines(path):
                if re.match(r"\s*(ethernets|bonds|bridges|vlans):", line):
                    in_eth = line.strip().startswith("ethernets")
                    continue
                m = re.match(r"(\s{2,})([A-Za-z0-9_.\-]+):\s*$", line)
                if (
                    in_eth
                    and m
                    and len(m.group(1)) <= 6
                    and m.group(2) not in ("match", "set-name")
                ):
                    names.append(FileLine(path, no, line.strip(), m.group(2), "netplan"))
    nm = list(view.listdir("/etc/NetworkManager/system-connections"))
    if nm or view.is_file("/usr/sbin/NetworkManager"):
        kinds.append("NetworkManager")
        names += _grep(
            view,
            [f"/etc/NetworkManager/system-connections/{n}" for n in nm],
            r"\s*interface-name\s*=\s*(\S+)",
            "NetworkManager",
        )
    networkd = [n for n in view.listdir("/etc/systemd/network") if n.endswith(".network")]
    if networkd:
        kinds.append("systemd-networkd")
        names += _grep(
            view,
            [f"/etc/systemd/network/{n}" for n in networkd],
            r"\s*Name\s*=\s*(\S+)",
            "systemd-networkd",
        )
    ifcfg_dir = next(
        (d for d in ("/etc/sysconfig/network-scripts", "/etc/sysconfig/network") if view.is_dir(d)),
        None,
    )
    if ifcfg_dir:
        ifcfg = [n for n in view.listdir(ifcfg_dir) if n.startswith("ifcfg-") and n != "ifcfg-lo"]
        if ifcfg:
            kinds.append("ifcfg")
        names += _grep(
            view, [f"{ifcfg_dir}/{n}" for n in ifcfg], r"\s*DEVICE\s*=\s*\"?([^\"\s]+)", "ifcfg"
        )
    system.network = kinds
    system.interfaces = names[:MAX_ITEMS]


def _grep(view: RootView, paths: list[str], pattern: str, kind: str) -> list[FileLine]:
    """Lines of ``paths`` that match ``pattern`` (from their start); the value is group 1."""
    out = []
    for path in paths:
        for no, line in view.lines(path):
            m = re.match(pattern, line)
            if m:
                out.append(FileLine(path, no, line.strip(), m.group(1), kind))
    return out


def kernel_name_lines(view: RootView) -> list[FileLine]:
    """Lines that name a disk or partition by its kernel name (``/dev/vda1``): fstab,
    crypttab, the kernel command line of the boot loader's settings."""
    out: list[FileLine] = []
    for path in ("/etc/fstab", "/etc/crypttab", "/etc/default/grub", "/etc/kernel/cmdline"):
        for no, line in view.lines(path):
            if line.lstrip().startswith("#"):
                continue
            for m in KERNEL_NAME_RE.finditer(line):
                out.append(FileLine(path, no, line.strip(), m.group(1) + m.group(2), "kernel-name"))
    return out[:MAX_ITEMS]


def nic_rules(view: RootView) -> list[FileLine]:
    """Persistent network rules and ``HWADDR=`` lines: they pin a name to a source MAC."""
    out: list[FileLine] = []
    for n in view.listdir("/etc/udev/rules.d"):
        if "persistent-net" not in n or not n.endswith(".rules"):
            continue
        path = f"/etc/udev/rules.d/{n}"
        for no, line in view.lines(path):
            if line.lstrip().startswith("#"):
                continue
            m = MAC_RE.search(line)
            if m and "address" in line:
                out.append(FileLine(path, no, line.strip(), m.group(1).lower(), "udev-rule"))
    for d in ("/etc/sysconfig/network-scripts", "/etc/sysconfig/network"):
        paths = [f"{d}/{n}" for n in view.listdir(d) if n.startswith("ifcfg-")]
        for x in _grep(view, paths, r"\s*(?:HWADDR|MACADDR)\s*=\s*\"?([0-9A-Fa-f:]{17})", "hwaddr"):
            x.value = x.value.lower()
            out.append(x)
    return out[:MAX_ITEMS]


def _cmdline_files(view: RootView) -> list[tuple[str, int, str]]:
    """(file, line, kernel command line) from the boot loader settings the system keeps."""
    out = []
    for no, line in view.lines("/etc/default/grub"):
        m = re.match(r"\s*(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)\s*=\s*(.*)$", line)
        if m:
            out.append(("/etc/default/grub", no, _shell_vars(line).get(m.group(1), "")))
    for no, line in view.lines("/etc/kernel/cmdline"):
        out.append(("/etc/kernel/cmdline", no, line))
    return out


def _hardware_settings(view: RootView) -> list[FileLine]:
    """Settings that assume the source's CPUs or memory (kind "cpu" or "memory")."""
    out: list[FileLine] = []
    for path, no, cmdline in _cmdline_files(view):
        for word in cmdline.split():
            key, _, value = word.partition("=")
            if key in CPU_PARAMS and value:
                out.append(FileLine(path, no, word, value, "cpu"))
            elif key in MEMORY_PARAMS and value:
                out.append(FileLine(path, no, word, value, "memory"))
    conf = ["/etc/systemd/system.conf"] + [
        f"/etc/systemd/system.conf.d/{n}" for n in view.listdir("/etc/systemd/system.conf.d")
    ]
    out += _grep(view, conf, r"\s*CPUAffinity\s*=\s*(\S.*?)\s*$", "cpu")
    for path in ["/etc/sysctl.conf"] + [
        f"/etc/sysctl.d/{n}" for n in view.listdir("/etc/sysctl.d") if n.endswith(".conf")
    ]:
        for no, line in view.lines(path):
            m = re.match(r"\s*vm[./]nr_hugepages\s*=\s*(\d+)", line)
            if m:
                out.append(FileLine(path, no, line.strip(), f"hugepages={m.group(1)}", "memory"))
    return out[:MAX_ITEMS]


def _storage_stack(view: RootView, system: InstalledSystem) -> list[str]:
    out = []
    specs = " ".join(e.spec for e in system.fstab)
    if "/dev/mapper/" in specs or re.search(r"/dev/[a-z0-9_-]+/[a-z0-9_-]+", specs):
        out.append("LVM or device-mapper")
    if "/dev/md" in specs or any(
        line.startswith("ARRAY") for _, line in view.lines("/etc/mdadm/mdadm.conf")
    ):
        out.append("RAID (mdadm)")
    if any(
        not line.lstrip().startswith("#") and line.strip()
        for _, line in view.lines("/etc/crypttab")
    ):
        out.append("LUKS (crypttab)")
    return out
