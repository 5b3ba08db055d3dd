"""Pre-flight: will this image work on this machine and this disk? Said before any write.

:func:`run_preflight` compares an image (its manifest: source disk, partition table,
source host profile, streams; and the first bytes of its head stream for boot code)
with the target and with this machine's :class:`~rescueui.core.host.HostProfile`, and
returns a list of :class:`Finding` s, each ``ok`` / ``info`` / ``warn`` / ``stop``.

Rules of use (the restore and both front ends follow them):

* a ``stop`` cannot be confirmed past: nothing is written;
* every ``warn`` must be acknowledged explicitly (one by one in the TUI,
  ``--accept-warnings`` in the CLI accepts all); :func:`gate` enforces this;
* ``ok`` and ``info`` need nothing; ``ok`` findings show what was checked.

The checks themselves (:func:`check`) are pure logic over :class:`ImageFacts`,
:class:`TargetInfo` and :class:`HostProfile`, so they are unit-testable with dicts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescueui.core.errors import PreflightError
from rescueui.core.host import HostProfile, read_host_profile
from rescueui.core.units import human_size

if TYPE_CHECKING:
    from rescueui.core.adapt import AdaptOptions
    from rescueui.core.image import Image

LEVELS = ("ok", "info", "warn", "stop")

# GPT partition type GUIDs / DOS type ids that matter for booting.
ESP_TYPES = frozenset({"c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "ef"})
BIOS_BOOT_TYPES = frozenset({"21686148-6449-6e6f-744e-656564454649"})  # GRUB's bios_grub

GPT_ENTRY_SIZE = 128
GPT_DEFAULT_ENTRIES = 128

# Memory is compared with a tolerance: MemTotal of the same machine moves by a few
# MiB between kernels (reserved memory, firmware tables).
MEMORY_TOLERANCE = 0.03

_BUS_NAMES = {
    "nvme": "NVMe",
    "ata": "SATA/ATA",
    "sata": "SATA",
    "scsi": "SCSI/SAS",
    "virtio": "virtio",
    "usb": "USB",
    "mmc": "SD/eMMC",
    "loop": "loop device",
    "file": "image file",
    "xen": "Xen virtual disk",
}

_BUS_DRIVERS = {
    "nvme": "nvme",
    "ata": "ahci / libata",
    "sata": "ahci",
    "scsi": "the SAS/RAID controller's driver (e.g. megaraid_sas, mpt3sas, vmw_pvscsi)",
    "virtio": "virtio_blk / virtio_scsi",
    "usb": "usb-storage / uas",
    "mmc": "sdhci / mmc_block",
    "xen": "xen-blkfront",
}


# --------------------------------------------------------------------------- findings


@dataclass
class Finding:
    """One checked fact. ``message`` is one line a technician understands; ``detail`` the why."""

    level: str  # "ok" | "info" | "warn" | "stop"
    code: str  # stable id, e.g. "fit", "firmware", "cpus"; unique within one run
    message: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown finding level {self.level!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        return cls(
            level=str(d.get("level", "info")),
            code=str(d.get("code", "")),
            message=str(d.get("message", "")),
            detail=str(d.get("detail", "")),
        )


@dataclass
class Acknowledgement:
    """An operator's explicit acceptance of one warning (goes into the report)."""

    code: str
    message: str
    by: str  # who acknowledged, in the front end's words ("operator (TUI)", a CLI option...)
    at: str  # ISO time, UTC

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def stops(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "stop"]


def warnings(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "warn"]


def unacknowledged(findings: Iterable[Finding], accepted_codes: Iterable[str]) -> list[Finding]:
    """Warnings whose code the operator has not accepted (stops are never acceptable)."""
    accepted = set(accepted_codes)
    return [f for f in findings if f.level == "warn" and f.code not in accepted]


def acknowledge(
    findings: Iterable[Finding], accepted_codes: Iterable[str] | None, *, by: str
) -> list[Acknowledgement]:
    """Acknowledgements for the accepted warnings (``accepted_codes=None``: all warnings)."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    accepted = None if accepted_codes is None else set(accepted_codes)
    return [
        Acknowledgement(code=f.code, message=f.message, by=by, at=now)
        for f in findings
        if f.level == "warn" and (accepted is None or f.code in accepted)
    ]


def gate(
    findings: list[Finding],
    *,
    accepted_codes: Iterable[str] = (),
    accept_all_warnings: bool = False,
    by: str = "the operator",
) -> list[Acknowledgement]:
    """Refuse (``PreflightError``) on any stop or unacknowledged warning; else the acks.

    Call it before anything is written; put the findings and the returned
    acknowledgements into the report.
    """
    blocking = stops(findings)
    if blocking:
        raise PreflightError(
            "Pre-flight check stopped the restore: "
            + "; ".join(f.message.rstrip(".") for f in blocking)
            + ".",
            hint="Nothing was written. The pre-flight findings say why; choose another target "
            "or image.",
        )
    codes = None if accept_all_warnings else list(accepted_codes)
    open_warnings = [] if codes is None else unacknowledged(findings, codes)
    if open_warnings:
        raise PreflightError(
            f"{len(open_warnings)} pre-flight warning(s) need the operator's acknowledgement: "
            + "; ".join(f.message.rstrip(".") for f in open_warnings)
            + ".",
            hint="Nothing was written. Read them, then acknowledge them if the restore should "
            "go ahead anyway.",
            action="accept-warnings",
        )
    return acknowledge(findings, codes, by=by)


def preflight_report(
    findings: Iterable[Finding], acknowledgements: Iterable[Acknowledgement] = ()
) -> dict[str, Any]:
    """The JSON-able block a job report stores."""
    fl = list(findings)
    return {
        "findings": [f.to_dict() for f in fl],
        "acknowledgements": [a.to_dict() for a in acknowledgements],
        "stops": len(stops(fl)),
        "warnings": len(warnings(fl)),
    }


# --------------------------------------------------------------------------- target


@dataclass
class TargetInfo:
    """What pre-flight needs of a target. Same fields as ``rescueui.core.target.TargetInfo``
    (the restore's), plus ``reasons`` (why DISKS refuses it); either works with :func:`check`.

    ``size_bytes`` is the size of ``path`` itself (the partition, for a partition target).
    ``partitions``: what is on it now, dicts with path/number/start_bytes/size_bytes/
    fs_type/label/part_label (``Partition.to_dict()`` of the DISKS module).
    """

    path: str
    size_bytes: int
    logical_sector_size: int
    physical_sector_size: int
    bus: str
    kind: str  # "block" | "file"
    partitions: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    serial: str | None = None
    is_partition: bool = False
    reasons: list[str] = field(default_factory=list)
    disk_path: str | None = None  # the whole disk, for a partition target

    @classmethod
    def from_path(cls, path: str | Path, *, image_paths: Iterable[str | Path] = ()) -> TargetInfo:
        """Describe a block device (via ``disks.find_disk``) or a regular disk-image file.

        Reads only: sysfs/udev for devices, ``sfdisk --json`` for an image file's table.
        """
        p = os.fspath(path)
        try:
            st = os.stat(p)
        except OSError as exc:
            raise PreflightError(
                f"Cannot look at the target {p}: {exc.strerror}.",
                hint="Check the device name (`rescueui disks` lists them).",
            ) from exc
        if stat.S_ISREG(st.st_mode):
            parts: list[dict[str, Any]] = []
            try:
                from rescueui.core import parttable

                table = parttable.read_table(p) if st.st_size > 0 else None
            except Exception:  # an unreadable table is no table, for this purpose
                table = None
            if table:
                ss = int(table.get("sectorsize", 512))
                for part in table.get("partitions", []):
                    parts.append(
                        {
                            "path": part.get("node"),
                            "number": parttable.partition_number(part),
                            "start_bytes": int(part.get("start", 0)) * ss,
                            "size_bytes": int(part.get("size", 0)) * ss,
                            "fs_type": None,
                            "label": None,
                            "part_label": part.get("name"),
                        }
                    )
            return cls(
                path=p,
                size_bytes=st.st_size,
                logical_sector_size=512,
                physical_sector_size=512,
                bus="file",
                kind="file",
                partitions=parts,
            )
        if not stat.S_ISBLK(st.st_mode):
            raise PreflightError(
                f"The target {p} is neither a disk, a partition nor a disk image file.",
                hint="Give a device such as /dev/sdb (see `rescueui disks`) or a file.",
            )
        from rescueui.core.disks import find_disk, scan_disks
        from rescueui.core.targets import rule

        ctx = rule.RuleContext.build(image_paths=list(image_paths))
        disk = find_disk(p, scan_disks(rule_context=ctx))
        if disk is None:
            raise PreflightError(
                f"The target {p} was not found among this machine's disks.",
                hint="Check the device name (`rescueui disks` lists them).",
            )
        dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        part = next((x for x in disk.partitions if tuple(x.devnum) == dev), None)
        if part is not None:
            return cls(
                path=p,
                size_bytes=part.size_bytes,
                logical_sector_size=disk.logical_sector_size,
                physical_sector_size=disk.physical_sector_size,
                bus=disk.bus,
                kind="block",
                partitions=[part.to_dict()],
                model=disk.model,
                serial=disk.serial,
                is_partition=True,
                reasons=rule.partition_verdict(disk, part, ctx),
                disk_path=disk.path,
            )
        return cls(
            path=p,
            size_bytes=disk.size_bytes,
            logical_sector_size=disk.logical_sector_size,
            physical_sector_size=disk.physical_sector_size,
            bus=disk.bus,
            kind="block",
            partitions=[x.to_dict() for x in disk.partitions],
            model=disk.model,
            serial=disk.serial,
            reasons=list(disk.reasons),
            disk_path=disk.path,
        )


# --------------------------------------------------------------------------- image facts


@dataclass
class StreamFacts:
    name: str
    kind: str  # "partition" | "head" | "gap" | "disk"
    partition_number: int | None
    start_bytes: int
    size_bytes: int
    fs_type: str | None = None
    label: str | None = None
    used_bytes: int | None = None  # what the filesystem uses (format 2); None: unknown/all
    all_blocks: str | None = None  # why every byte was captured

    @property
    def end_bytes(self) -> int:
        return self.start_bytes + self.size_bytes


@dataclass
class ImageFacts:
    """What pre-flight reads from an image: the manifest and the first sector of the disk."""

    source_disk: dict[str, Any]
    partition_table: dict[str, Any] | None
    host: dict[str, Any]
    streams: list[StreamFacts]
    extent_bytes: int
    complete: bool = True
    warnings: list[str] = field(default_factory=list)
    whole_disk: bool = True  # False: only selected partitions were captured
    mbr: bytes | None = None  # first 512 bytes of the source disk, None when not in the image
    mbr_note: str = ""  # why mbr is None

    @classmethod
    def from_manifest(cls, m: Any, *, mbr: bytes | None = None, mbr_note: str = "") -> ImageFacts:
        """From an ``ImageManifest`` or its dict form (unit tests use dicts)."""

        def get(name: str, default: Any = None) -> Any:
            if isinstance(m, dict):
                return m.get(name, default)
            return getattr(m, name, default)

        streams: list[StreamFacts] = []
        for s in get("streams", []) or []:

            def sg(key: str, s: Any = s) -> Any:
                return s.get(key) if isinstance(s, dict) else getattr(s, key, None)

            streams.append(
                StreamFacts(
                    name=str(sg("name")),
                    kind=str(sg("kind")),
                    partition_number=sg("partition_number"),
                    start_bytes=int(sg("start_bytes") or 0),
                    size_bytes=int(sg("size_bytes") or 0),
                    fs_type=sg("fs_type"),
                    label=sg("label"),
                    used_bytes=sg("used_bytes"),
                    all_blocks=sg("all_blocks"),
                )
            )
        extent = max((s.end_bytes for s in streams), default=0)
        return cls(
            source_disk=dict(get("source_disk") or {}),
            partition_table=dict(get("partition_table")) if get("partition_table") else None,
            host=dict(get("host") or {}),
            streams=streams,
            extent_bytes=extent,
            complete=bool(get("complete", True)),
            warnings=[str(w) for w in get("warnings", []) or []],
            whole_disk=bool(get("whole_disk", True)),
            mbr=mbr,
            mbr_note=mbr_note,
        )

    @classmethod
    def from_image(cls, image: Image) -> ImageFacts:
        mbr, note = read_first_sector(image)
        facts = cls.from_manifest(image.manifest, mbr=mbr, mbr_note=note)
        try:
            facts.extent_bytes = int(image.extent_bytes)
        except Exception:  # keep the value computed from the streams
            pass
        return facts

    @property
    def sector_size(self) -> int:
        v = self.source_disk.get("logical_sector_size")
        if not v and self.partition_table:
            v = self.partition_table.get("sectorsize")
        try:
            return int(v) if v else 512
        except (TypeError, ValueError):
            return 512

    def stream_of_partition(self, number: int) -> StreamFacts | None:
        for s in self.streams:
            if s.kind == "partition" and s.partition_number == number:
                return s
        return None


def read_first_sector(image: Image) -> tuple[bytes | None, str]:
    """The first 512 bytes of the source disk from the stream that starts at byte 0.

    Cheap: one chunk, decompressed only up to 512 bytes. Never raises; on trouble the
    reason comes back instead (pre-flight then says the boot code was not checked).
    """
    first_sector = getattr(image, "first_sector", None)
    if callable(first_sector):  # a foreign image kind reads its own (rescueui.core.images)
        try:
            return first_sector(), ""
        except Exception as exc:
            return None, f"could not read the image's first sector: {exc}"
    try:
        stream = next(
            (s for s in image.manifest.streams if int(s.start_bytes) == 0 and s.size_bytes > 0),
            None,
        )
        if stream is None:
            return None, "the image does not contain the start of the disk (no head stream)"
        one = getattr(image, "chunk", None)  # one index record, not the whole list
        if callable(one) and getattr(stream, "chunk_count", 1):
            first = one(stream, 0)
        else:
            chunks = image.chunks(stream)
            if not chunks:
                return None, f"stream {stream.name} has no chunks"
            first = chunks[0]
        if first.zero:
            return bytes(512), ""
        head = image.read_chunk_prefix(stream, first, 512)  # the one bounded decoder
        if len(head) < 512:
            head = head + bytes(512 - len(head))
        return bytes(head[:512]), ""
    except Exception as exc:
        return None, f"could not read the image's first sector: {exc}"


# --------------------------------------------------------------------------- boot analysis


@dataclass
class BootFacts:
    esp: list[int]  # partition numbers of EFI system partitions
    bios_boot_partition: list[int]  # GPT "BIOS boot" partitions (GRUB core on GPT)
    mbr_boot_code: bool | None  # non-zero bytes in the MBR's 440-byte code area
    mode: str  # "uefi" | "bios" | "both" | "none" | "unknown"

    def describe(self) -> str:
        parts = []
        parts.append(
            f"EFI system partition {', '.join(f'p{n}' for n in self.esp)}"
            if self.esp
            else "no EFI system partition"
        )
        if self.mbr_boot_code is None:
            parts.append("MBR boot code not checked")
        else:
            parts.append("BIOS boot code in the MBR" if self.mbr_boot_code else "no MBR boot code")
        if self.bios_boot_partition:
            parts.append(f"BIOS boot partition p{self.bios_boot_partition[0]}")
        return ", ".join(parts)


def analyse_boot(table: dict[str, Any] | None, mbr: bytes | None) -> BootFacts:
    esp: list[int] = []
    bios_part: list[int] = []
    for i, part in enumerate((table or {}).get("partitions", []) or [], start=1):
        ptype = str(part.get("type", "")).lower()
        number = _part_number(part, i)
        if ptype in ESP_TYPES:
            esp.append(number)
        if ptype in BIOS_BOOT_TYPES:
            bios_part.append(number)
    code: bool | None = None
    if mbr is not None and len(mbr) >= 440:
        code = any(mbr[:440])
    bios = bool(bios_part) or bool(code)
    if esp and bios:
        mode = "both"
    elif esp:
        mode = "uefi"  # an ESP, no BIOS boot partition and no MBR code seen
    elif bios:
        mode = "bios"
    elif code is None:
        mode = "unknown"
    else:
        mode = "none"
    return BootFacts(esp=esp, bios_boot_partition=bios_part, mbr_boot_code=code, mode=mode)


def _part_number(part: dict[str, Any], default: int) -> int:
    node = str(part.get("node", ""))
    digits = ""
    for ch in reversed(node):
        if not ch.isdigit():
            break
        digits = ch + digits
    return int(digits) if digits else default


def gpt_backup_bytes(table: dict[str, Any] | None) -> int:
    """Bytes a GPT needs after its last usable sector (backup entries + backup header)."""
    if not table or table.get("label") != "gpt":
        return 0
    ss = int(table.get("sectorsize", 512))
    entries = int(table.get("table-length", GPT_DEFAULT_ENTRIES))
    entry_sectors = -(-entries * GPT_ENTRY_SIZE // ss)
    return (entry_sectors + 1) * ss


def partitions_end_bytes(table: dict[str, Any] | None) -> int:
    if not table:
        return 0
    ss = int(table.get("sectorsize", 512))
    return max(
        (
            (int(p.get("start", 0)) + int(p.get("size", 0))) * ss
            for p in table.get("partitions", []) or []
        ),
        default=0,
    )


def required_bytes(facts: ImageFacts) -> tuple[int, str]:
    """Smallest whole-disk target that holds the image, and how that was worked out.

    The restore writes every stream at its source position, a GPT's ``tail`` (the
    source's backup table at the end of the source disk) included, so the image's
    extent is needed; with a partition table, at least the end of the last partition
    plus, for GPT, room for the backup table.
    """
    table = facts.partition_table
    extent = facts.extent_bytes
    if not table or not table.get("partitions"):
        return extent, "the end of the image's data"
    need = partitions_end_bytes(table) + gpt_backup_bytes(table)
    if extent >= need:
        tail = [s for s in facts.streams if s.kind == "tail"]
        if tail and tail[0].end_bytes == extent:
            return extent, "the source disk's size: the image ends with its backup GPT"
        return extent, "the end of the image's data"
    how = "the end of the last partition"
    if table.get("label") == "gpt":
        how += " plus the GPT backup table"
    return need, how


# --------------------------------------------------------------------------- the checks


def run_preflight(
    image: Image,
    target: Any,
    *,
    host: HostProfile | None = None,
    partition: int | None = None,
    grow: bool = True,
    adapt: AdaptOptions | None = None,
    vm: Any = None,
    smaller: Any = None,
) -> list[Finding]:
    """All findings for restoring ``image`` onto ``target`` on this machine.

    ``target``: a :class:`TargetInfo` (or the restore's TargetInfo, or a path, which is
    turned into one). ``partition``: restore only that image partition onto a target
    partition. ``host`` defaults to :func:`read_host_profile`; ``adapt``: the fix-ups the
    operator chose and the machine they are for (its profile replaces ``host``). ``vm``:
    the target is the disk of a new virtual machine (:class:`rescueui.core.vm.machine.
    VmMachine`): its ``vm.*`` findings replace the CPU, memory and bus comparisons.
    ``smaller``: the plan for a whole-disk target smaller than the image's disk
    (:mod:`rescueui.core.smaller`; made here when needed and not given): its findings
    replace the block-for-block fit, and the boot loader is planned to be installed again.
    """
    if isinstance(target, str | Path):
        target = TargetInfo.from_path(target, image_paths=[image.dir])
    if adapt is not None and adapt.host is not None:
        host = adapt.host
        target = on_other_machine(target, host)
    host = host if host is not None else read_host_profile()
    facts = ImageFacts.from_image(image)
    findings = check(facts, target, host=host, partition=partition, grow=grow)
    if adapt is not None and adapt.host is not None:
        findings = [_for_other_machine(f) for f in findings]
    findings += _check_unused_space(facts, target, partition)
    size = int(_get(target, "size_bytes", 0) or 0)
    # a VM disk is made new, never smaller than the source disk (vm.size): no file-level plan
    if smaller is None and vm is None and (partition is not None or facts.whole_disk):
        from rescueui.core import smaller as smaller_mod

        if smaller_mod.needed(image, size, partition):
            smaller = (
                smaller_mod.plan_smaller(image, size)
                if partition is None
                else smaller_mod.plan_smaller_partition(image, partition, size)
            )
    if smaller is not None:
        from rescueui.core import smaller as smaller_mod

        findings = [f for f in findings if f.code not in _SMALLER_DECIDES] + smaller.findings()
        if partition is None:
            adapt = smaller_mod.adapt_options(adapt)
    if vm is not None:
        findings = list(vm.findings) + [f for f in findings if f.code not in _VM_DECIDES]
    if adapt is not None and partition is None and facts.whole_disk:
        from rescueui.core.adapt import plan_for_image
        from rescueui.core.adapt.plan import settle_findings

        plan = plan_for_image(image, size, adapt, host=host, rewritten=smaller is not None)
        findings = settle_findings(findings + plan.findings, plan)
    return findings


def on_other_machine(target: Any, host: HostProfile) -> Any:
    """The target as it will be on another machine: on the bus that machine's disks use
    (when its profile names one kind), not on the bus of the dock it is written in here."""
    if not isinstance(target, TargetInfo) or target.kind == "file":
        return target
    buses = {str(d.get("bus")).lower() for d in host.disks if d.get("bus")}
    return replace(target, bus=buses.pop() if len(buses) == 1 else "unknown")


# Comparisons a new virtual machine's own findings (vm.cpus, vm.memory, vm.disk, vm.size)
# replace: the VM is made to fit, so the plan says what it gets instead.
_VM_DECIDES = ("cpus", "memory", "bus", "fit")

# Findings a restore onto a smaller disk replaces with its plan (smaller.plan / smaller.fit).
_SMALLER_DECIDES = ("fit", "fit.larger", "unused-space")

# Findings that compare the source machine with the machine the disk is for.
_HOST_CODES = ("firmware", "cpus", "memory", "virtual", "model", "nics")


def _for_other_machine(f: Finding) -> Finding:
    """A host comparison made for another machine's profile names that machine so."""
    if f.code not in _HOST_CODES:
        return f
    return Finding(
        f.level,
        f.code,
        f.message.replace("this machine", "the target machine").replace(
            "This machine", "The target machine"
        ),
        f.detail.replace("this machine", "the target machine").replace(
            "This machine", "The target machine"
        ),
    )


def _check_unused_space(facts: ImageFacts, target: Any, partition: int | None) -> list[Finding]:
    """What the restore will do with the space no filesystem uses, on this target."""
    from rescueui.core.targets.unused import unused_space_of

    unused = sum(
        s.size_bytes - s.used_bytes
        for s in facts.streams
        if s.used_bytes is not None and (partition is None or s.partition_number == partition)
    )
    path = _get(target, "path")
    if not unused or not path:
        return []
    space = unused_space_of(str(path))
    if space.zero:
        message = f"Space no filesystem uses ({human_size(unused)}): made zero, fast."
    else:
        message = (
            f"Space no filesystem uses ({human_size(unused)}): left as it is on the target, "
            "not written (an exact restore makes it zero)."
        )
    return [
        Finding("info", "unused-space", message, space.reason[0].upper() + space.reason[1:] + ".")
    ]


def check(
    facts: ImageFacts,
    target: Any,
    *,
    host: HostProfile,
    partition: int | None = None,
    grow: bool = True,
) -> list[Finding]:
    """The pure comparison behind :func:`run_preflight`."""
    source = HostProfile.from_dict(facts.host) if facts.host else None
    out: list[Finding] = []
    out += _check_image(facts)
    out += _check_target_safety(target)
    if partition is None and not facts.whole_disk:
        out.append(
            Finding(
                "stop",
                "fit",
                "The image holds only selected partitions, not a whole disk.",
                "Restore its partitions one by one onto existing partitions.",
            )
        )
    elif partition is None:
        out += _check_fit_disk(facts, target, grow=grow)
    else:
        out += _check_fit_partition(facts, target, partition, grow=grow)
    out += _check_sector_size(facts, target, partition)
    out += _check_firmware(facts, source, host, partition)
    out += _check_cpus_memory(source, host)
    out += _check_bus(facts, target, partition)
    out += _check_virtual(source, host)
    out += _check_model(source, host)
    out += _check_nics(source, host)
    out += _check_target_data(target)
    out += _check_usage(facts, partition)
    return out


def _check_usage(facts: ImageFacts, partition: int | None) -> list[Finding]:
    """Per partition: what its filesystem uses and what the image therefore holds."""
    from rescueui.core.images.usage import stream_usage

    out = []
    for s in facts.streams:
        if s.kind not in ("partition", "disk"):
            continue
        if partition is not None and s.partition_number != partition:
            continue
        line = stream_usage(s)
        if line is not None:
            out.append(Finding("info", f"usage.{s.name}", line))
    return out


def _bus_name(bus: str | None) -> str:
    if not bus:
        return "unknown"
    return _BUS_NAMES.get(bus.lower(), bus)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _check_image(facts: ImageFacts) -> list[Finding]:
    out: list[Finding] = []
    if not facts.complete:
        out.append(
            Finding(
                "stop",
                "image.incomplete",
                "The image is marked incomplete (its capture did not finish).",
                "An incomplete image is never restored. Capture the disk again.",
            )
        )
    if facts.warnings:
        out.append(
            Finding(
                "warn",
                "image.warnings",
                f"The image was captured with {len(facts.warnings)} warning(s): "
                + facts.warnings[0],
                "\n".join(facts.warnings),
            )
        )
    return out


def _check_target_safety(target: Any) -> list[Finding]:
    reasons = list(_get(target, "reasons", []) or [])
    if not reasons:
        return []
    return [
        Finding(
            "stop",
            "target.refused",
            f"{_get(target, 'path')} cannot be a target: {'; '.join(reasons)}.",
            "The boot medium, the disk holding the image, and disks or partitions in use "
            "(mounted, swap, RAID/LVM member) or read-only are never written. Unmount or "
            "choose another disk.",
        )
    ]


def _check_fit_disk(facts: ImageFacts, target: Any, *, grow: bool) -> list[Finding]:
    out: list[Finding] = []
    need, how = required_bytes(facts)
    have = int(_get(target, "size_bytes", 0))
    src_size = int(facts.source_disk.get("size_bytes") or 0)
    if have < need:
        short = need - have
        out.append(
            Finding(
                "stop",
                "fit",
                f"Target too small by {human_size(short)} ({short:,} bytes): the image needs "
                f"{human_size(need)}, {_get(target, 'path')} has {human_size(have)}.",
                f"Needed: {need:,} bytes ({how}); target: {have:,} bytes; shortfall: "
                f"{short:,} bytes. Choose a disk of at least {human_size(need)}, or restore "
                "single partitions onto existing ones.",
            )
        )
        return out
    spare = have - need
    out.append(
        Finding(
            "ok",
            "fit",
            f"Fits: the image needs {human_size(need)} of {human_size(have)}; "
            f"{human_size(spare)} free after it.",
            f"Needed: {need:,} bytes ({how}); target: {have:,} bytes.",
        )
    )
    if src_size and have > src_size:
        extra = have - src_size
        table = facts.partition_table or {}
        parts = table.get("partitions") or []
        if grow and parts:
            last = max(parts, key=lambda p: int(p.get("start", 0)))
            num = _part_number(last, len(parts))
            stream = facts.stream_of_partition(num)
            fs = stream.fs_type if stream else None
            what = f"partition {num}" + (f" ({fs})" if fs else "")
            message = (
                f"Target is {human_size(extra)} larger than the source disk: {what} "
                "will be grown to fill it."
            )
            detail = (
                "The partition table is written for the real disk size and the last "
                "partition extended to the end; ext2/3/4, xfs and btrfs are grown, other "
                "filesystems keep their size, unless growing is turned off."
            )
        else:
            message = (
                f"Target is {human_size(extra)} larger than the source disk: "
                "the extra space stays unused" + (" (growing turned off)." if not grow else ".")
            )
            detail = (
                "The partition table is written for the real disk size (GPT backup at the end)."
            )
        out.append(Finding("info", "fit.larger", message, detail))
    return out


def _check_fit_partition(
    facts: ImageFacts, target: Any, number: int, *, grow: bool = True
) -> list[Finding]:
    stream = facts.stream_of_partition(number)
    path = _get(target, "path")
    if stream is None:
        have = sorted(s.partition_number for s in facts.streams if s.partition_number is not None)
        return [
            Finding(
                "stop",
                "fit",
                f"The image has no partition {number}.",
                f"Partitions in the image: {', '.join(map(str, have)) or 'none'}.",
            )
        ]
    have = int(_get(target, "size_bytes", 0))
    need = stream.size_bytes
    what = f"image partition {number}" + (f" ({stream.fs_type})" if stream.fs_type else "")
    if have < need:
        short = need - have
        return [
            Finding(
                "stop",
                "fit",
                f"Target partition too small by {human_size(short)} ({short:,} bytes): "
                f"{what} is {human_size(need)}, {path} is {human_size(have)}.",
                f"Needed: {need:,} bytes; target partition: {have:,} bytes; shortfall: "
                f"{short:,} bytes. Filesystems are restored at their size and not shrunk.",
            )
        ]
    out = [
        Finding(
            "ok",
            "fit",
            f"Fits: {what} is {human_size(need)}, {path} is {human_size(have)}.",
            f"Needed: {need:,} bytes; target partition: {have:,} bytes.",
        )
    ]
    if have > need:
        extra = human_size(have - need)
        fs = (stream.fs_type or "").lower()
        growable = fs in ("ext2", "ext3", "ext4", "xfs", "btrfs")
        if grow and growable:
            message = (
                f"The target partition is {extra} larger: the {fs} filesystem will be grown "
                "to fill it."
            )
        elif grow:
            message = (
                f"The target partition is {extra} larger: the "
                f"{stream.fs_type or 'unknown'} filesystem keeps its size (no grower for it)."
            )
        else:
            message = (
                f"The target partition is {extra} larger: the filesystem keeps its size "
                "(growing turned off)."
            )
        out.append(
            Finding(
                "info",
                "fit.larger",
                message,
                "ext2/3/4 are grown with resize2fs, xfs and btrfs by their own tools on a "
                "temporary mount; FAT and others keep their size.",
            )
        )
    return out


def _check_sector_size(facts: ImageFacts, target: Any, partition: int | None) -> list[Finding]:
    img = facts.sector_size
    tgt = int(_get(target, "logical_sector_size", 512) or 512)
    if img == tgt:
        out = [
            Finding(
                "ok",
                "sector_size",
                f"Sector size matches: {tgt} bytes.",
                "Logical sector size of the source disk and of the target.",
            )
        ]
    elif partition is None:
        out = [
            Finding(
                "stop",
                "sector_size",
                f"Sector size differs: the image was made on {img}-byte sectors, the target "
                f"uses {tgt}-byte sectors.",
                "The partition table counts in sectors and the engine cannot convert it "
                "(nor boot loaders that record sector addresses). Use a target with "
                f"{img}-byte logical sectors, or restore single partitions onto partitions "
                "created on this disk.",
            )
        ]
    else:
        out = [
            Finding(
                "warn",
                "sector_size",
                f"Sector size differs: image {img} bytes, target {tgt} bytes.",
                "A filesystem copied between sector sizes usually works for ext4/xfs/btrfs "
                "with 4 KiB blocks, but FAT and some boot loaders record the sector size; "
                "check the partition after the restore.",
            )
        ]
    src_phys = facts.source_disk.get("physical_sector_size")
    tgt_phys = _get(target, "physical_sector_size")
    if src_phys and tgt_phys and int(src_phys) != int(tgt_phys) and img == tgt:
        out.append(
            Finding(
                "info",
                "sector_size.physical",
                f"Physical sector size differs: source {src_phys} bytes, target {tgt_phys} "
                "bytes (works; may be slower if partitions are not aligned).",
            )
        )
    return out


def _check_firmware(
    facts: ImageFacts, source: HostProfile | None, host: HostProfile, partition: int | None
) -> list[Finding]:
    here = host.firmware
    src = source.firmware if source else "unknown"
    src_txt = f"The source machine booted in {src.upper()} mode." if src != "unknown" else ""
    if partition is not None:
        if src in ("uefi", "bios") and src != here:
            return [
                Finding(
                    "info",
                    "firmware",
                    f"The source machine booted in {src.upper()} mode, this one in "
                    f"{here.upper()} mode (only a partition is restored).",
                )
            ]
        return []
    boot = analyse_boot(facts.partition_table, facts.mbr)
    checked = boot.describe() + (f" ({facts.mbr_note})" if facts.mbr_note else "")
    if boot.mode == "uefi" and here == "bios":
        return [
            Finding(
                "warn",
                "firmware",
                "The image boots by UEFI only, but this machine was started in BIOS (legacy) mode.",
                f"Image: {checked}. {src_txt} After the restore the machine boots only if its "
                "firmware is set to UEFI boot (and Secure Boot matches the source). If it has "
                "no UEFI, install a BIOS boot loader (e.g. grub-pc) on the restored system. "
                "To check, boot this stick in UEFI mode: `rescueui host` then says UEFI.",
            )
        ]
    if boot.mode == "bios" and here == "uefi":
        return [
            Finding(
                "warn",
                "firmware",
                "The image boots by BIOS only (MBR boot code, no EFI partition), but this "
                "machine was started in UEFI mode.",
                f"Image: {checked}. {src_txt} Enable legacy/CSM boot in the firmware setup, "
                "or convert the restored system to UEFI (EFI partition + grub-efi).",
            )
        ]
    if boot.mode in ("uefi", "bios", "both"):
        how = {"uefi": "UEFI", "bios": "BIOS", "both": "both UEFI and BIOS"}[boot.mode]
        return [
            Finding(
                "ok",
                "firmware",
                f"Boot mode: the image boots by {how}; this machine runs in {here.upper()} mode.",
                f"Image: {checked}. {src_txt}",
            )
        ]
    # No boot loader recognised (or not checkable): fall back to the source's firmware mode.
    if src in ("uefi", "bios") and src != here:
        return [
            Finding(
                "warn",
                "firmware",
                f"The source machine booted in {src.upper()} mode, this one in {here.upper()} "
                "mode.",
                f"Image: {checked}. The restored system expects {src.upper()} boot: set the "
                f"firmware to {src.upper()} boot"
                + (" (legacy/CSM)" if src == "bios" else "")
                + " or convert its boot loader.",
            )
        ]
    if boot.mode == "none":
        return [
            Finding(
                "info",
                "firmware",
                "No boot loader found in the image (no EFI partition, no MBR boot code): a data "
                "disk, or it boots some other way.",
                f"Image: {checked}. {src_txt} This machine runs in {here.upper()} mode.",
            )
        ]
    return [
        Finding(
            "info",
            "firmware",
            f"Boot mode not checked: {facts.mbr_note or 'no partition table'}.",
            f"Image: {checked}. {src_txt} This machine runs in {here.upper()} mode.",
        )
    ]


def _check_cpus_memory(source: HostProfile | None, host: HostProfile) -> list[Finding]:
    out: list[Finding] = []
    if source is None or source.cpus <= 0:
        out.append(
            Finding("info", "cpus", f"Source CPU count unknown; this machine has {host.cpus}.")
        )
    elif host.cpus < source.cpus:
        out.append(
            Finding(
                "warn",
                "cpus",
                f"Fewer CPUs: the source had {source.cpus} logical CPUs, this machine has "
                f"{host.cpus}.",
                "The system will boot, but services sized for the source (databases, thread "
                "pools, VM hosts, CPU pinning) may run slowly or refuse to start.",
            )
        )
    else:
        out.append(
            Finding(
                "ok",
                "cpus",
                f"CPUs: {host.cpus} logical here, {source.cpus} on the source.",
            )
        )
    if source is None or source.memory_bytes <= 0:
        out.append(
            Finding(
                "info",
                "memory",
                f"Source memory unknown; this machine has {human_size(host.memory_bytes)}.",
            )
        )
    elif host.memory_bytes < source.memory_bytes * (1 - MEMORY_TOLERANCE):
        out.append(
            Finding(
                "warn",
                "memory",
                f"Less memory: the source had {human_size(source.memory_bytes)}, this machine "
                f"has {human_size(host.memory_bytes)}.",
                f"Source {source.memory_bytes:,} bytes, here {host.memory_bytes:,} bytes. "
                "Services sized for the source (database buffers, hugepages, JVM heaps, "
                "tmpfs) may fail or swap; check their settings after the restore.",
            )
        )
    else:
        out.append(
            Finding(
                "ok",
                "memory",
                f"Memory: {human_size(host.memory_bytes)} here, "
                f"{human_size(source.memory_bytes)} on the source.",
                f"Compared with a {MEMORY_TOLERANCE:.0%} tolerance (MemTotal moves a little "
                "between kernels).",
            )
        )
    return out


def _check_bus(facts: ImageFacts, target: Any, partition: int | None) -> list[Finding]:
    src = str(facts.source_disk.get("bus") or "").lower() or None
    tgt = str(_get(target, "bus", "") or "").lower() or None
    if (_get(target, "kind") == "file" or tgt == "file") and src == "file":
        return [Finding("ok", "bus", "Source and target are both disk image files.")]
    if _get(target, "kind") == "file" or tgt == "file":
        return [
            Finding(
                "info",
                "bus",
                f"The target is a disk image file; the source disk was on {_bus_name(src)}.",
                "The virtual machine that uses the file decides the bus: give it the same kind "
                f"({_bus_name(src)}) or make sure the system's initramfs has the driver.",
            )
        ]
    if not src or not tgt or src == "unknown" or tgt == "unknown":
        return [
            Finding(
                "info",
                "bus",
                f"Disk bus not compared (source: {_bus_name(src)}, target: {_bus_name(tgt)}).",
            )
        ]
    if src == tgt:
        return [Finding("ok", "bus", f"Same disk bus as the source: {_bus_name(tgt)}.")]
    driver = _BUS_DRIVERS.get(tgt, f"the {_bus_name(tgt)} driver")
    level = "info" if partition is not None else "warn"
    return [
        Finding(
            level,
            "bus",
            f"Disk bus changes: {_bus_name(src)} on the source, {_bus_name(tgt)} here; the "
            "restored system may not find its disk.",
            f"Its initramfs may lack {driver}. If it stops in an initramfs shell: boot this "
            "stick, chroot into the restored system and rebuild the initramfs with the driver "
            "(Debian/Ubuntu: update-initramfs -u -k all, with MODULES=most; RHEL/SUSE: "
            "dracut -f --regenerate-all --no-hostonly). Windows needs the driver enabled "
            "before capture. Also check fstab/boot entries that name /dev/... instead of UUIDs.",
        )
    ]


def _check_virtual(source: HostProfile | None, host: HostProfile) -> list[Finding]:
    if source is None:
        return [Finding("info", "virtual", "Source machine type (virtual or physical) unknown.")]
    src, here = source.virtual, host.virtual
    if src == here:
        what = f"virtual machines ({here})" if here else "physical machines"
        return [Finding("ok", "virtual", f"Both source and this machine are {what}.")]
    if src and not here:
        return [
            Finding(
                "warn",
                "virtual",
                f"The image comes from a virtual machine ({src}); this is a physical machine.",
                "Usually needed: drivers for the real disk controller and network cards in the "
                "initramfs (ahci, nvme, megaraid_sas, NIC drivers), fstab and boot entries by "
                "UUID rather than /dev/vda, console settings (serial console off), guest "
                "agents (qemu-guest-agent, open-vm-tools) removed; Windows may need "
                "reactivation.",
            )
        ]
    if here and not src:
        return [
            Finding(
                "warn",
                "virtual",
                f"The image comes from a physical machine; this is a virtual machine ({here}).",
                "Usually needed: the hypervisor's drivers in the initramfs (virtio_blk, "
                "virtio_scsi, virtio_net for KVM; vmw_pvscsi, vmxnet3 for VMware; hv_storvsc, "
                "hv_netvsc for Hyper-V), or give the VM an emulated SATA disk and e1000 NIC; "
                "hardware agents (RAID tools, IPMI) will fail; Windows may need reactivation.",
            )
        ]
    return [
        Finding(
            "warn",
            "virtual",
            f"Different hypervisor: the image comes from {src}, this machine runs on {here}.",
            "The virtual disk and network devices differ: the restored system needs this "
            "hypervisor's drivers in its initramfs (or emulated SATA/e1000 devices), and its "
            "guest tools should be swapped.",
        )
    ]


def _check_model(source: HostProfile | None, host: HostProfile) -> list[Finding]:
    here = host.machine if (host.dmi_vendor or host.dmi_product) else "no DMI data"
    if source is None or not (source.dmi_vendor or source.dmi_product):
        return [
            Finding(
                "info",
                "model",
                f"Machine model not compared: the source's is unknown (this machine: {here}).",
            )
        ]
    if (source.dmi_vendor, source.dmi_product) == (host.dmi_vendor, host.dmi_product):
        return [Finding("ok", "model", f"Same machine model: {host.machine}.")]
    return [
        Finding(
            "info",
            "model",
            f"Different machine model: source {source.machine}, this is {host.machine}.",
            "Firmware settings, RAID controllers and vendor agents may differ.",
        )
    ]


def _check_nics(source: HostProfile | None, host: HostProfile) -> list[Finding]:
    if source is None or not source.nics:
        return [Finding("info", "nics", "Source network cards unknown; not compared.")]
    src = {(n.get("mac") or "").lower(): n for n in source.physical_nics if n.get("mac")}
    here = {(n.get("mac") or "").lower(): n for n in host.physical_nics if n.get("mac")}

    def show(d: dict[str, dict[str, Any]]) -> str:
        return ", ".join(f"{n.get('name')} {mac}" for mac, n in sorted(d.items())) or "none"

    if set(src) == set(here):
        return [Finding("ok", "nics", f"Same network cards (MAC addresses): {show(here)}.")]
    return [
        Finding(
            "info",
            "nics",
            "Network cards differ: interface names and MAC-bound settings will change.",
            f"Source: {show(src)}. This machine: {show(here)}. Check udev persistent-net "
            "rules, netplan/ifcfg files with MAC addresses (HWADDR, match: macaddress), and "
            "licences bound to a MAC.",
        )
    ]


def _check_target_data(target: Any) -> list[Finding]:
    parts = list(_get(target, "partitions", []) or [])
    path = _get(target, "path")
    if not parts:
        return [Finding("ok", "target.data", f"{path} holds no partitions.")]
    lines = []
    for p in parts:
        g = p.get if isinstance(p, dict) else (lambda k, p=p: getattr(p, k, None))
        bits = [str(g("path") or f"partition {g('number')}")]
        bits.append(str(g("fs_type") or "no filesystem known"))
        label = g("label") or g("part_label")
        if label:
            bits.append(f"'{label}'")
        bits.append(human_size(int(g("size_bytes") or 0)))
        lines.append(" ".join(bits))
    is_part = bool(_get(target, "is_partition", False))
    what = "The target partition holds" if is_part else f"{path} holds {len(parts)} partition(s)"
    return [
        Finding(
            "info",
            "target.data",
            f"{what}, all overwritten: " + "; ".join(lines) + ".",
            "\n".join(lines),
        )
    ]


__all__ = [
    "LEVELS",
    "Acknowledgement",
    "BootFacts",
    "Finding",
    "ImageFacts",
    "TargetInfo",
    "acknowledge",
    "analyse_boot",
    "check",
    "gate",
    "gpt_backup_bytes",
    "preflight_report",
    "required_bytes",
    "run_preflight",
    "stops",
    "unacknowledged",
    "warnings",
]
