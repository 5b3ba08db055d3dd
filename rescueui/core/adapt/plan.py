"""The fix-ups a restored system needs on the machine it lands on, decided before any write.

:func:`plan_adaptation` compares an :class:`~rescueui.core.adapt.system.InstalledSystem`
(recorded in the image at capture, or examined on the restored disk) with the
:class:`~rescueui.core.host.HostProfile` of the machine the disk is for (this one, or
another one's profile) and the disk layout. Each difference that needs a fix-up becomes
a :class:`FixUp` (what it changes and why) and a pre-flight finding ``adapt.<name>``;
settings that cannot be fixed safely become warnings that name the file and the line.

The fix-ups, by name (the operator chooses among them; nothing else is ever changed):

* ``drivers`` -- rebuild the initramfs of every installed kernel with the modules this
  machine's disk controllers and network cards use;
* ``boot-loader`` -- install GRUB for this machine's firmware (BIOS or UEFI), with the
  partition it needs (a BIOS boot partition on GPT, an EFI system partition);
* ``names`` -- fstab, crypttab and kernel command lines that name devices by kernel
  name (``/dev/vda1``) rewritten to ``UUID=``;
* ``nic-rules`` -- persistent network rules and ``HWADDR=`` lines pinning the source's
  MAC addresses removed; interface names in the network configuration mapped to this
  machine's network card when there is one of each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rescueui.core.adapt.system import InstalledSystem
from rescueui.core.host import HostProfile
from rescueui.core.preflight import BIOS_BOOT_TYPES, ESP_TYPES, Finding
from rescueui.core.units import MiB, human_size

FIXUPS = ("drivers", "boot-loader", "names", "nic-rules")

ESP_BYTES = 128 * MiB  # a new EFI system partition (FAT32 needs at least ~33 MiB)
BIOS_BOOT_MIN_BYTES = 256 * 1024  # room GRUB's core image needs before the first partition
ESP_TYPE_GPT = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT_TYPE_GPT = "21686148-6449-6E6F-744E-656564454649"

# Drivers an initramfs never needs for finding its root disk (the boot medium's USB).
_NOT_FOR_ROOT = re.compile(r"^(usb_storage|uas|[xeou]hci_(hcd|pci)|usbhid|sr_mod|cdrom)$")


@dataclass
class FixUp:
    """One planned change of the restored system."""

    name: str  # one of FIXUPS
    title: str  # what it does, one line
    changes: list[str]  # each file, partition or command it changes
    why: str
    selected: bool = True
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "changes": list(self.changes),
            "why": self.why,
            "selected": self.selected,
        }


@dataclass
class DiskLayout:
    """The restored disk as the fix-ups see it: its table and the target's size."""

    table: dict[str, Any] | None
    target_bytes: int
    fs_uuids: dict[int, str] = field(default_factory=dict)  # partition number -> fs UUID
    # the partitions were laid out anew and their files copied (a restore onto a smaller
    # disk): the boot loader is installed again even where it already suits the firmware
    rewritten: bool = False

    @property
    def label(self) -> str:
        return str((self.table or {}).get("label") or "")

    @property
    def sector_size(self) -> int:
        return int((self.table or {}).get("sectorsize") or 512)

    def partitions(self) -> list[dict[str, Any]]:
        return list((self.table or {}).get("partitions") or [])

    def has_type(self, types: frozenset[str]) -> int | None:
        from rescueui.core.parttable import partition_number

        for p in self.partitions():
            if str(p.get("type", "")).lower() in types:
                return partition_number(p)
        return None

    def free_before_first(self) -> tuple[int, int]:
        """(first free sector, sectors) before the first partition."""
        parts = self.partitions()
        if not parts:
            return 0, 0
        first = min(int(p["start"]) for p in parts)
        start = int((self.table or {}).get("firstlba") or (34 if self.label == "gpt" else 1))
        if self.label == "dos":
            start = 1
        return start, max(0, first - start)

    def end_of_partitions(self) -> int:
        """First byte after the last partition."""
        ss = self.sector_size
        return (
            max((int(p["start"]) + int(p["size"])) * ss for p in self.partitions())
            if self.partitions()
            else 0
        )

    def room_at_end(self) -> int:
        """Bytes between the last partition and the end of the target (GPT backup excluded)."""
        tail = 33 * 512 if self.label == "gpt" else 0
        return max(0, self.target_bytes - tail - self.end_of_partitions())

    def free_number(self) -> int | None:
        """A partition number a new partition can take (DOS: a free primary slot)."""
        from rescueui.core.parttable import is_extended, partition_number

        used = {partition_number(p) for p in self.partitions()}
        if self.label == "dos":
            if any(is_extended(self.table or {}, p) for p in self.partitions()):
                return None  # a new primary would have to go after the extended one: not done
            return next((n for n in range(1, 5) if n not in used), None)
        limit = int((self.table or {}).get("table-length") or 128)
        return next((n for n in range(1, limit + 1) if n not in used), None)


@dataclass
class AdaptPlan:
    """What will be changed in the restored system, and the findings that show it."""

    system: InstalledSystem
    host: HostProfile
    for_this_machine: bool
    fixups: list[FixUp]
    findings: list[Finding]
    chosen: set[str] = field(default_factory=lambda: set(FIXUPS))  # the operator's choice

    def selected(self) -> list[FixUp]:
        return [f for f in self.fixups if f.selected]

    def get(self, name: str) -> FixUp | None:
        return next((f for f in self.fixups if f.name == name), None)

    @property
    def reserve_end_bytes(self) -> int:
        """Bytes the grow of the last partition must leave free (a new ESP goes there)."""
        fix = self.get("boot-loader")
        if fix is not None and fix.selected and fix.params.get("new_partition") == "end":
            return ESP_BYTES + MiB
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system.describe(),
            "for": "this machine"
            if self.for_this_machine
            else f"another machine: {self.host.machine}",
            "fixups": [f.to_dict() for f in self.fixups],
        }


def parse_selection(text: str) -> set[str]:
    """``"drivers,names"`` -> {"drivers", "names"}; ``"all"``/``""``: all; ``"none"``: none.

    Raises ValueError naming an unknown fix-up."""
    words = {w.strip().lower() for w in text.split(",") if w.strip()}
    if not words or words == {"all"}:
        return set(FIXUPS)
    if words == {"none"}:
        return set()
    unknown = words - set(FIXUPS)
    if unknown:
        raise ValueError(
            f"unknown fix-up(s) {', '.join(sorted(unknown))}; choose from {', '.join(FIXUPS)}"
        )
    return words


def plan_adaptation(
    system: InstalledSystem,
    host: HostProfile,
    layout: DiskLayout,
    *,
    selection: set[str] | None = None,
    for_this_machine: bool = True,
    rescue_grub_platforms: tuple[str, ...] = (),
) -> AdaptPlan:
    """The fix-ups ``system`` needs on ``host`` (``selection``: the ones the operator keeps;
    ``None``: all). ``rescue_grub_platforms``: GRUB platforms the rescue medium can supply."""
    chosen = set(FIXUPS) if selection is None else set(selection)
    where = "this machine" if for_this_machine else f"the target machine ({host.machine})"
    findings: list[Finding] = []
    if not system.found:
        findings.append(
            Finding(
                "info",
                "adapt.system",
                f"No installed Linux system known in the image ({system.reason or 'not recorded'}): "
                "the restored disk is examined after the restore, and only the chosen fix-ups "
                f"({', '.join(sorted(chosen)) or 'none'}) are applied where needed.",
            )
        )
        return AdaptPlan(system, host, for_this_machine, [], findings, chosen)
    findings.append(
        Finding(
            "info",
            "adapt.system",
            f"Installed system: {system.describe()}. Fix-ups are planned for {where}.",
            "Storage: "
            + (", ".join(system.storage_stack) or "plain partitions")
            + ". Network configured by: "
            + (", ".join(system.network) or "nothing found")
            + ".",
        )
    )
    fixups: list[FixUp] = []
    for planner in (_plan_drivers, _plan_boot_loader, _plan_names, _plan_nic_rules):
        fix, found = planner(system, host, layout, where, rescue_grub_platforms)
        if fix is not None:
            fix.selected = fix.name in chosen
            fixups.append(fix)
            if fix.selected:
                findings.append(
                    Finding(
                        found.level if found else "info",
                        f"adapt.{fix.name}",
                        (
                            found.message
                            if found and found.level == "stop"
                            else f"Fix-up {fix.name}: {fix.title}."
                        ),
                        (found.detail + " " if found and found.detail else "")
                        + f"Why: {fix.why} Changes: "
                        + "; ".join(fix.changes)
                        + ".",
                    )
                )
            else:
                findings.append(
                    Finding(
                        "warn",
                        f"adapt.{fix.name}",
                        f"Fix-up {fix.name} not chosen: {fix.why}",
                        f"It would: {fix.title}. The restored system is left as it is.",
                    )
                )
        elif found is not None:
            findings.append(found)
    findings += _check_hardware_settings(system, host, where)
    return AdaptPlan(system, host, for_this_machine, fixups, findings, chosen)


# The pre-flight warnings a chosen fix-up answers: (finding code, fix-up).
_ANSWERED_BY = (("firmware", "boot-loader"), ("bus", "drivers"))


def settle_findings(findings: list[Finding], plan: AdaptPlan) -> list[Finding]:
    """Pre-flight warnings a chosen fix-up resolves become information that says so."""
    out = []
    for f in findings:
        for code, name in _ANSWERED_BY:
            if f.code != code or f.level != "warn":
                continue
            fix = plan.get(name)
            if fix is not None and fix.selected and not fix.params.get("impossible"):
                f = Finding(
                    "info", f.code, f"{f.message} The fix-up {name} answers this.", f.detail
                )
            elif any(x.code == f"adapt.{name}" and x.level == "ok" for x in plan.findings):
                f = Finding(
                    "info",
                    f.code,
                    f"{f.message} Checked: the restored system has what it needs.",
                    f.detail,
                )
        out.append(f)
    return out


# --------------------------------------------------------------------------- drivers


def initramfs_missing(
    system: InstalledSystem, modules: list[str], *, newest_only: bool = False
) -> tuple[dict[str, list[str]], list[str]]:
    """Which of ``modules`` each kernel's initramfs lacks (built-in ones count as there):
    ({kernel version: missing modules}, [versions whose initramfs was not listed]).
    ``newest_only``: only the kernel that boots by default."""
    lacking: dict[str, list[str]] = {}
    unknown: list[str] = []
    for k in system.kernels[:1] if newest_only else system.kernels:
        if k.initramfs is None:
            continue
        if k.initramfs_modules is None:
            unknown.append(k.version)
            continue
        have = set(k.initramfs_modules) | set(k.builtin)
        miss = [m for m in modules if m not in have]
        if miss:
            lacking[k.version] = miss
    return lacking, unknown


def needed_drivers(host: HostProfile) -> tuple[list[str], list[str]]:
    """(storage modules, network modules) the initramfs needs on ``host``."""
    storage = sorted(d for d in host.storage_drivers if not _NOT_FOR_ROOT.match(d))
    return storage, host.nic_drivers


def _plan_drivers(
    system: InstalledSystem, host: HostProfile, layout: DiskLayout, where: str, _: tuple[str, ...]
) -> tuple[FixUp | None, Finding | None]:
    storage, network = needed_drivers(host)
    if not storage and not network:
        return None, Finding(
            "info", "adapt.drivers", f"The disk and network drivers of {where} are not known."
        )
    if not system.kernels:
        return None, Finding(
            "warn", "adapt.drivers", "No installed kernel found in the system (/lib/modules)."
        )
    newest = system.kernels[0]
    absent = [m for m in storage if newest.modules and m not in newest.modules]
    if absent and newest.modules:
        stop = Finding(
            "stop",
            "adapt.drivers",
            f"The restored kernel {newest.version} has no driver for the disks of {where}: "
            f"{', '.join(absent)}.",
            f"Not in /lib/modules/{newest.version} (neither a module nor built in). The system "
            "cannot find its disk there; restore onto a disk on a controller it knows, or "
            "install a newer kernel into it first.",
        )
        fix = FixUp(
            "drivers",
            "rebuild the initramfs with this machine's drivers",
            [f"none possible: {', '.join(absent)} missing in kernel {newest.version}"],
            "the kernel lacks the disk driver",
            params={"modules": storage + network, "impossible": True},
        )
        return fix, stop
    nic_absent = [m for m in network if newest.modules and m not in newest.modules]
    modules = [m for m in storage + network if m not in nic_absent]
    lacking, unknown = initramfs_missing(system, modules)
    hostonly = system.initramfs_policy in (
        "MODULES=dep",
        "MODULES=list",
    ) or system.initramfs_policy.startswith("hostonly=yes")
    if not lacking and not (unknown and hostonly):
        detail = f"Checked in the initramfs of {len(system.kernels)} kernel(s)."
        if nic_absent:
            return None, Finding(
                "warn",
                "adapt.drivers",
                f"The restored kernel has no driver for the network card(s) of {where}: "
                f"{', '.join(nic_absent)}.",
                detail,
            )
        return None, Finding(
            "ok",
            "adapt.drivers",
            f"The initramfs has the drivers {where} needs ({', '.join(modules)}).",
            detail,
        )
    tool = system.initramfs_tool
    if tool is None:
        return None, Finding(
            "warn",
            "adapt.drivers",
            f"The initramfs lacks drivers {where} needs ({', '.join(sorted({m for v in lacking.values() for m in v}))}), "
            "and no initramfs tool (initramfs-tools, dracut, mkinitcpio) was found to rebuild it.",
        )
    what = "; ".join(f"{v}: {', '.join(m)}" for v, m in lacking.items())
    if unknown:
        what += (
            "; " if what else ""
        ) + f"{', '.join(unknown)}: not listed ({system.initramfs_policy})"
    config, command = {
        "initramfs-tools": ("/etc/initramfs-tools/modules", "update-initramfs -u -k all"),
        "dracut": ("/etc/dracut.conf.d/90-rescueui-drivers.conf", "dracut -f --regenerate-all"),
        "mkinitcpio": ("/etc/mkinitcpio.conf", "mkinitcpio -P"),
    }[tool]
    fix = FixUp(
        "drivers",
        f"rebuild the initramfs of {len(system.kernels)} kernel(s) with the drivers of {where} "
        f"({', '.join(modules)})",
        [f"{config}: adds {', '.join(modules)}", f"every /boot initramfs, by `{command}`"],
        f"the initramfs ({system.initramfs_policy or tool}) lacks drivers {where} needs ({what})",
        params={"modules": modules, "tool": tool, "config": config},
    )
    extra = None
    if nic_absent:
        extra = Finding(
            "warn",
            "adapt.drivers",
            f"No driver for the network card(s) of {where} in kernel {newest.version}: "
            f"{', '.join(nic_absent)} (the disk drivers are there).",
        )
    return fix, extra


# --------------------------------------------------------------------------- boot loader


def _plan_boot_loader(
    system: InstalledSystem,
    host: HostProfile,
    layout: DiskLayout,
    where: str,
    rescue_platforms: tuple[str, ...],
) -> tuple[FixUp | None, Finding | None]:
    firmware = host.firmware
    boots = system.boots_by()
    code = "adapt.boot-loader"
    if firmware not in ("bios", "uefi"):
        return None, Finding("info", code, f"The firmware of {where} is not known.")
    if not boots:
        return None, Finding(
            "info",
            code,
            "No GRUB or systemd-boot found in the system: its boot loader is not changed.",
        )
    if firmware in boots and not layout.rewritten:
        return None, Finding(
            "ok",
            code,
            f"The boot loader ({system.boot_loader}) boots by {firmware.upper()}, as {where} starts.",
        )
    if firmware in boots and (system.boot_loader == "systemd-boot" or not system.grub_dir):
        return None, Finding(
            "ok",
            code,
            f"The boot loader ({system.boot_loader}) boots by {firmware.upper()} from the EFI "
            "system partition, which is copied block for block: it is kept as it is.",
        )
    if system.boot_loader == "systemd-boot" or not system.grub_dir:
        return None, Finding(
            "stop",
            code,
            f"The system boots with {system.boot_loader} (UEFI only); {where} starts in BIOS mode.",
            "Set the firmware to UEFI boot, or install GRUB into the system by hand.",
        )
    platform = "x86_64-efi" if firmware == "uefi" else "i386-pc"
    source = "restored system"
    if platform not in system.grub_platforms_available:
        if platform not in rescue_platforms:
            return None, Finding(
                "stop",
                code,
                f"GRUB for {firmware.upper()} ({platform}) is neither in the restored system nor "
                "on this rescue medium.",
                "Without it the boot loader cannot be installed.",
            )
        source = "rescue medium"
    # Debian's names: the -bin package keeps the platform's files current and coexists with
    # the installed boot loader's; the other re-installs GRUB on updates but replaces it.
    package = (
        "grub-efi-amd64-bin (or grub-efi-amd64, which also re-installs GRUB on updates and "
        "replaces grub-pc)"
        if platform == "x86_64-efi"
        else "grub-pc-bin (or grub-pc, which also re-installs GRUB on updates and replaces "
        "grub-efi-amd64)"
    )
    changes: list[str] = []
    params: dict[str, Any] = {"platform": platform, "files_from": source, "package": package}
    ss = layout.sector_size
    if platform == "i386-pc":
        if layout.label == "gpt":
            have = layout.has_type(BIOS_BOOT_TYPES)
            if have is not None:
                changes.append(f"GRUB's core image into the BIOS boot partition {have}")
            else:
                start, sectors = layout.free_before_first()
                number = layout.free_number()
                if sectors * ss < BIOS_BOOT_MIN_BYTES or number is None:
                    return None, Finding(
                        "stop",
                        code,
                        "The GPT disk needs a BIOS boot partition for GRUB, and there is no room "
                        f"before the first partition ({human_size(sectors * ss)} free).",
                        "Restore onto a disk started in UEFI mode, or make room by hand.",
                    )
                changes.append(
                    f"new BIOS boot partition {number} at sectors {start}-{start + sectors - 1} "
                    "(free space before the first partition)"
                )
                params["new_partition"] = "before"
                params["number"] = number
                params["start"] = start
                params["sectors"] = sectors
        changes.append("the boot code in the disk's first sector (MBR)")
    else:
        esp = layout.has_type(ESP_TYPES)
        if esp is not None:
            changes.append(f"GRUB into the EFI system partition {esp}")
            params["esp"] = esp
        else:
            number = layout.free_number()
            room = layout.room_at_end()
            if number is None or room < ESP_BYTES + MiB:
                why = (
                    "no free partition slot"
                    if number is None
                    else f"only {human_size(room)} free after the last partition"
                )
                return None, Finding(
                    "stop",
                    code,
                    f"UEFI boot needs an EFI system partition; the image has none and the target "
                    f"has no room for one ({why}; {human_size(ESP_BYTES)} needed).",
                    "Restore onto a larger disk, or start this machine in BIOS (legacy/CSM) mode.",
                )
            changes.append(
                f"new EFI system partition {number} ({human_size(ESP_BYTES)}, FAT32) at the end "
                "of the disk (the last partition grows less by that much)"
            )
            params["new_partition"] = "end"
            params["number"] = number
        changes.append("\\EFI\\BOOT\\BOOTX64.EFI (the firmware's fallback loader)")
        changes.append(
            "an NVRAM boot entry (efibootmgr)"
            if (where == "this machine")
            else "no NVRAM entry (another machine's firmware)"
        )
    changes.append(
        f"{system.grub_dir}/{platform}/ (GRUB's modules) and {system.grub_dir}/grub.cfg (update-grub)"
    )
    title = f"install GRUB for {firmware.upper()} ({platform})"
    if firmware in boots:
        title = f"install GRUB for {firmware.upper()} ({platform}) again"
        why = (
            "the partitions are laid out anew and their files copied (a restore onto a "
            "smaller disk): GRUB is installed again so that it finds them, and checked"
        )
    else:
        why = (
            f"the installed GRUB boots by {', '.join(b.upper() for b in sorted(boots))} only "
            f"and {where} starts in {firmware.upper()} mode"
        )
    if source == "rescue medium":
        why += f"; GRUB's {platform} files come from this rescue medium (the restored system lacks them)"
    return FixUp("boot-loader", title, changes, why, params=params), None


# --------------------------------------------------------------------------- names


def _plan_names(
    system: InstalledSystem, host: HostProfile, layout: DiskLayout, where: str, _: tuple[str, ...]
) -> tuple[FixUp | None, Finding | None]:
    if not system.kernel_names:
        return None, Finding(
            "ok",
            "adapt.names",
            "fstab, crypttab and the kernel command line name no device by kernel name.",
        )
    changes = []
    for line in system.kernel_names:
        number = int(re.sub(r"^.*?(\d+)$", r"\1", line.value))
        uuid = layout.fs_uuids.get(number)
        target = f"UUID={uuid}" if uuid else f"the UUID of partition {number}"
        changes.append(f"{line.where()}: {line.value} -> {target}")
    return (
        FixUp(
            "names",
            "name devices by UUID instead of kernel name",
            changes,
            f"kernel names change with the disk's bus and order ({system.kernel_names[0].value} "
            f"on the source may be /dev/sda1 or /dev/nvme0n1p1 on {where})",
        ),
        None,
    )


# --------------------------------------------------------------------------- network names


def _plan_nic_rules(
    system: InstalledSystem, host: HostProfile, layout: DiskLayout, where: str, _: tuple[str, ...]
) -> tuple[FixUp | None, Finding | None]:
    here_macs = {str(n.get("mac") or "").lower() for n in host.nics}
    stale = [r for r in system.nic_rules if r.value not in here_macs]
    changes = [f"{r.where()}: removed (pins {r.value})" for r in stale]
    params: dict[str, Any] = {}
    here = [str(n.get("name")) for n in host.physical_nics if n.get("name")]
    names = sorted({i.value for i in system.interfaces})
    missing = [n for n in names if n not in here]
    mapping: dict[str, str] = {}
    extra: Finding | None = None
    if missing and len(names) == 1 and len(here) == 1:
        mapping = {names[0]: here[0]}
        changes += [
            f"{i.where()}: {i.value} -> {here[0]}" for i in system.interfaces if i.value == names[0]
        ]
    elif missing and here:
        extra = Finding(
            "warn",
            "adapt.nic-names",
            f"The network configuration names {', '.join(names)}; {where} has "
            f"{', '.join(here)}. Not mapped automatically (more than one of either).",
            "; ".join(f"{i.where()}: {i.value}" for i in system.interfaces)
            + ". Edit the configuration after the restore.",
        )
    if not changes:
        if extra is not None:
            return None, extra
        return None, Finding(
            "ok", "adapt.nic-rules", "No network setting pins the source's network cards."
        )
    params["mapping"] = mapping
    params["stale_macs"] = sorted({r.value for r in stale})
    why = "they name the source's network cards, which this machine does not have"
    if mapping:
        why += "; interface table (source -> here): " + ", ".join(
            f"{a} -> {b}" for a, b in mapping.items()
        )
    return FixUp(
        "nic-rules", "forget the source's network cards", changes, why, params=params
    ), extra


# --------------------------------------------------------------------------- CPUs, memory


def _cpu_list_max(value: str) -> int | None:
    """Highest CPU number in a list like ``2-7,12`` or ``0-3 8-11`` (flags skipped)."""
    nums = [int(x) for x in re.findall(r"\d+", re.sub(r"[a-z_]+,", "", value))]
    return max(nums) if nums else None


def _bytes_of(value: str) -> int | None:
    m = re.fullmatch(r"(\d+)([KMGTkmgt]?)", value.split("@", 1)[0].split(",", 1)[0])
    if not m:
        return None
    return (
        int(m.group(1))
        * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    )


def _check_hardware_settings(
    system: InstalledSystem, host: HostProfile, where: str
) -> list[Finding]:
    out: list[Finding] = []
    for i, s in enumerate(system.hardware_settings):
        key = s.text.split("=", 1)[0].strip()
        problem = ""
        if s.kind == "cpu" and host.cpus:
            if key in ("maxcpus", "nr_cpus"):
                n = _bytes_of(s.value)
                if n is not None and n > host.cpus:
                    problem = f"asks for {n} CPUs; {where} has {host.cpus}"
            else:
                top = _cpu_list_max(s.value)
                if top is not None and top >= host.cpus:
                    problem = f"names CPU {top}; {where} has CPUs 0-{host.cpus - 1}"
        elif s.kind == "memory" and host.memory_bytes:
            if key == "hugepages" or s.value.startswith("hugepages="):
                pages = (
                    int(s.value.removeprefix("hugepages=") or 0)
                    if s.value.removeprefix("hugepages=").isdigit()
                    else 0
                )
                size = pages * 2 * MiB
                if size > host.memory_bytes // 2:
                    problem = (
                        f"reserves {pages} hugepages ({human_size(size)} at 2 MiB each); {where} has "
                        f"{human_size(host.memory_bytes)}"
                    )
            elif key == "mem":
                n = _bytes_of(s.value)
                if n is not None and n > host.memory_bytes:
                    problem = f"limits memory to {human_size(n)}; {where} has {human_size(host.memory_bytes)}"
        level = "warn" if problem else "info"
        message = f"{s.where()}: {s.text}" + (
            f" {problem}." if problem else " (assumes the source's hardware)."
        )
        out.append(
            Finding(
                level,
                f"adapt.hardware.{i}",
                message,
                "Not changed by rescueui: check it after the restore (settings sized for the "
                "source's CPUs and memory).",
            )
        )
    return out
