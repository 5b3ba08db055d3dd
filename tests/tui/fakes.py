"""A canned session for snapshot tests: fixed disks, images, findings and a frozen job."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rescueui.core.adapt.plan import FIXUPS
from rescueui.core.disks import Disk, Partition
from rescueui.core.errors import CancelledError, RescueError, UnsafeTargetError
from rescueui.core.files import FileEntry
from rescueui.core.images.usage import usage_line
from rescueui.core.progress import ChunkEvent, Progress
from rescueui.core.report import JobReport
from rescueui.core.session import CheckLine, ImageSummary, Session, StreamSummary
from rescueui.core.units import GiB, MiB

HASH_A = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
HASH_B = "5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9"


def _part(
    disk: str,
    n: int,
    start: int,
    size: int,
    fs: str | None,
    label: str | None,
    mounts: list[str] | None = None,
) -> Partition:
    return Partition(
        path=f"{disk}{n}", name=f"{Path(disk).name}{n}", number=n, devnum=(8, n), start_bytes=start,
        size_bytes=size, fs_type=fs, label=label, uuid=None, part_label=None, part_type=None,
        part_uuid=None, mountpoints=mounts or [], swap=False, holders=[], read_only=False,
    )  # fmt: skip


def _disk(
    path: str,
    size: int,
    model: str,
    serial: str,
    bus: str,
    parts: list[Partition],
    reasons: list[str] | None = None,
    roles: set[str] | None = None,
) -> Disk:
    return Disk(
        path=path, name=Path(path).name, devnum=(8, 0), size_bytes=size, model=model, vendor=None,
        serial=serial, wwn=None, bus=bus, removable=bus == "usb", read_only=False, rotational=False,
        logical_sector_size=512, physical_sector_size=4096, table_type="gpt" if parts else None,
        partitions=parts, roles=roles or set(), reasons=reasons or [],
    )  # fmt: skip


def canned_disks(extra: bool = False) -> list[Disk]:
    disks = [
        _disk("/dev/sda", 480 * GiB, "SAMSUNG MZ7LH480", "S45PNA0M812345", "ata",
              [_part("/dev/sda", 1, MiB, 512 * MiB, "vfat", "EFI"), _part("/dev/sda", 2, 513 * MiB, 400 * GiB, "ext4", "rootfs")]),
        _disk("/dev/sdb", 29 * GiB, "Kingston DataTraveler", "E0D55EA5741F", "usb",
              [_part("/dev/sdb", 1, MiB, 28 * GiB, "ext4", "RESCUE", ["/run/live/medium"])],
              reasons=["boot medium (the running system lives here)", "holds the selected image"], roles={"boot", "image"}),
        _disk("/dev/sdc", 8 * GiB, "SanDisk Cruzer", "4C530001", "usb", [], reasons=[]),
    ]  # fmt: skip
    if extra:
        disks.append(_disk("/dev/sdd", 960 * GiB, "INTEL SSDSC2KB96", "PHYF9876", "ata", []))
    return disks


def canned_image() -> ImageSummary:
    return ImageSummary(
        path=Path("/run/live/medium/images/web01-2026-11-20"),
        ok=True,
        kind="rescueui",
        description="rescueui image (format 2), 3 stream(s), 400.5 GiB of disk",
        integrity="chunk-blake3",
        integrity_words="a BLAKE3 for every chunk in the image's index: each chunk is checked "
        "against it before it is written",
        source="SAMSUNG MZ7LH480 serial S45PNA0M800001",
        source_size=480 * GiB,
        extent_bytes=int(400.5 * GiB),
        stored_bytes=31 * GiB,
        created="2026-11-20T03:12:44+00:00",
        machine="Dell Inc. PowerEdge R640 (UEFI, 32 CPUs, 128.0 GiB)",
        complete=True,
        table_type="gpt",
        streams=[
            StreamSummary("head", "head", None, 0, MiB, None, None),
            StreamSummary("p1", "partition", 1, MiB, 512 * MiB, "vfat", "EFI"),
            StreamSummary("p2", "partition", 2, 513 * MiB, 400 * GiB, "ext4", "rootfs"),
        ],
    )


def canned_foreign_image() -> ImageSummary:
    """A compressed raw image whose stream records no size: listed with an estimate."""
    return ImageSummary(
        path=Path("/run/live/medium/images/db02-sda.img.zst"),
        ok=True,
        kind="raw",
        format="zstd",
        description="raw disk image, zstd-compressed, about 240.0 GiB (estimated from the GPT "
        "header; not exact)",
        integrity="none",
        integrity_words="the image carries no checksums: nothing could be checked against the "
        "source; the BLAKE3 of every piece was computed as it was read and the read-back "
        "verify compares the disk with that",
        size_is_estimate=True,
        source_size=240 * GiB,
        extent_bytes=240 * GiB,
        stored_bytes=61 * GiB,
        created="2026-10-02T11:40:00+00:00",
        machine="QEMU (UEFI, 4 CPUs, 8.0 GiB, from db02.xml)",
        complete=True,
        table_type="gpt",
        streams=[
            StreamSummary("p1", "partition", 1, MiB, 512 * MiB, None, None),
            StreamSummary("p2", "partition", 2, 513 * MiB, 239 * GiB, None, None),
        ],
    )


def frozen_progress(phase: str = "write") -> Progress:
    return Progress(
        job="restore", phase=phase, bytes_done=int(163.2 * GiB), bytes_total=int(801 * GiB),
        phase_bytes_done=int(163.2 * GiB), phase_bytes_total=int(400.5 * GiB), rate_now=612.4e6,
        rate_avg=587.9e6, elapsed=298.0, eta=1086.0, chunks_done=41779, chunks_total=102528,
        stream="p2", stream_chunks_done=41650, stream_chunks_total=102400,
        last_chunk=ChunkEvent("p2", 41649, 174_691_975_168, 4 * MiB, HASH_A, ok=True),
    )  # fmt: skip


CANNED_USAGE = [
    "p1 vfat: 120.0 MiB used of 512.0 MiB - 392.0 MiB not copied",
    "p2 ext4: 58.1 GiB used of 400.0 GiB - 341.9 GiB not copied",
]

DIRTY = (
    "p2 (ext4) was not cleanly unmounted (needs_recovery): its used blocks were captured as "
    "they are on the disk, without a journal replay or check; the restored filesystem replays "
    "or needs a check at its first mount. Capture every byte instead to keep the disk exactly "
    "as it is."
)


# The fix-ups the canned image's system needs on this machine: name -> (title, why, change).
CANNED_NEEDED = {
    "drivers": (
        "rebuild the initramfs with the disk and network drivers of {where}",
        "the initramfs of 6.1.0-28-amd64 lacks megaraid_sas, the disk controller of {where}",
        "/boot/initrd.img-6.1.0-28-amd64 (update-initramfs)",
    ),
    "names": (
        "name devices by UUID instead of kernel name",
        "kernel names change with the disk's bus and order",
        "/etc/fstab line 3: /dev/sda2 -> UUID=0a3c6e9e-5d1f-4f43-9d55-7b0c1e2f3a4b",
    ),
}
# ... and on a machine that starts in BIOS mode (the source started in UEFI mode)
CANNED_BIOS_BOOT = (
    "install GRUB for BIOS (i386-pc)",
    "the installed GRUB boots by UEFI only and {where} starts in BIOS mode",
    "new BIOS boot partition 3 at sectors 34-2047 (free space before the first partition)",
)


def canned_fixup_findings(adapt: Any) -> list[CheckLine]:
    """What the core's fix-up planner says for the canned image, for ``adapt`` (the
    operator's choice and machine)."""
    host = adapt.host
    where = "this machine" if host is None else f"the target machine ({host.machine})"
    if not adapt.enabled:
        chosen: set[str] = set()
    else:
        chosen = set(FIXUPS) if adapt.selection is None else set(adapt.selection)
    needed = dict(CANNED_NEEDED)
    if host is not None and host.firmware == "bios":
        needed["boot-loader"] = CANNED_BIOS_BOOT
    out = [
        CheckLine(
            "info",
            "adapt.system",
            "Installed system: Debian GNU/Linux 12 (bookworm), kernels 6.1.0-28-amd64, GRUB "
            f"(UEFI), initramfs-tools. Fix-ups are planned for {where}.",
            "Storage: plain partitions. Network configured by: ifupdown.",
        )
    ]
    for name in FIXUPS:
        if name not in needed:
            if name == "boot-loader":
                out.append(
                    CheckLine(
                        "ok",
                        "adapt.boot-loader",
                        f"The boot loader (GRUB) boots by UEFI, as {where} starts.",
                    )
                )
            else:
                out.append(
                    CheckLine(
                        "ok", f"adapt.{name}", "No network setting pins the source's network cards."
                    )
                )
            continue
        title, why, change = (x.format(where=where) for x in needed[name])
        if name in chosen:
            out.append(
                CheckLine(
                    "info",
                    f"adapt.{name}",
                    f"Fix-up {name}: {title}.",
                    f"Why: {why} Changes: {change}.",
                )
            )
        else:
            out.append(
                CheckLine(
                    "warn",
                    f"adapt.{name}",
                    f"Fix-up {name} not chosen: {why}",
                    f"It would: {title}. The restored system is left as it is.",
                )
            )
    out.append(
        CheckLine(
            "warn",
            "adapt.hardware.0",
            f"/etc/default/grub line 6: isolcpus=8-15 names CPU 15; {where} has CPUs 0-7.",
            "Not changed by rescueui: check it after the restore (settings sized for the "
            "source's CPUs and memory).",
        )
    )
    return out


def canned_adapt_report(failed: bool = False) -> JobReport:
    """A restore report whose details carry the fix-ups as the core records them."""
    steps: list[dict[str, Any]] = [
        {
            "fixup": "drivers",
            "title": "rebuild the initramfs with this machine's drivers",
            "status": "done",
            "commands": [{"command": "update-initramfs -u -k all", "exit_status": 0}],
            "files": [
                {
                    "path": "/boot/initrd.img-6.1.0-28-amd64",
                    "sha256_before": "1f2e3d4c5b6a79880123456789abcdef",
                    "sha256_after": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
                    "backup": "/var/backups/rescueui-20261121-101500/boot/initrd.img-6.1.0-28-amd64",
                }
            ],
            "checks": ["the initramfs of 6.1.0-28-amd64 lists megaraid_sas"],
            "error": "",
            "next_step": "",
        },
        {
            "fixup": "names",
            "title": "name devices by UUID instead of kernel name",
            "status": "failed" if failed else "done",
            "commands": [],
            "files": [
                {
                    "path": "/etc/fstab",
                    "sha256_before": "9988776655443322110000aabbccddee",
                    "sha256_after": "9988776655443322110000aabbccddee"
                    if failed  # not written
                    else "00112233445566778899aabbccddeeff",
                    "backup": None,
                }
            ],
            "checks": [] if failed else ["/etc/fstab names no device by kernel name"],
            "error": "/etc/fstab could not be written: Read-only file system." if failed else "",
            "next_step": "Edit /etc/fstab of the restored system by hand: UUID=0a3c6e9e for /dev/sda2."
            if failed
            else "",
        },
    ]
    report = JobReport(
        job="restore",
        outcome="failed" if failed else "success",
        started="2026-11-21T10:02:11+00:00",
        finished="2026-11-21T10:15:40+00:00",
        duration_s=809.0,
        target="/dev/sda",
        image_dir=str(canned_image().path),
    )
    report.details["adapt"] = {
        "plan": {},
        "system": "Debian GNU/Linux 12 (bookworm)",
        "steps": steps,
        "notes": [],
        "backup_dir": "/var/backups/rescueui-20261121-101500",
        "result": "a fix-up failed: the system may not boot" if failed else "adapted",
    }
    return report


CANNED_HOST_CPUS = 8  # this machine, as the canned VM pre-flight sees it
CANNED_SOURCE_CPUS = 32  # the canned image's source machine (the PowerEdge R640)


def canned_vm(request: Any, image: ImageSummary) -> Any:
    """The VM the core would plan for the canned image: the source's 32 CPUs fitted to the
    host that runs it (this machine: 8), its 128 GiB of memory kept, UEFI, virtio."""
    from rescueui.core.vm.machine import RunsOn, VmMachine

    host = request.runs_on
    cpus = host.cpus if host is not None else CANNED_HOST_CPUS
    where = (
        RunsOn(cpus, 192 * GiB, f"the profile of the host ({host.machine})")
        if host is not None
        else RunsOn(cpus, 192 * GiB, "this machine (the host that runs it)")
    )
    return VmMachine(
        name=request.name or image.path.name,
        firmware="uefi",
        disk_bus="virtio",
        nic_model="virtio",
        vcpus=min(cpus, CANNED_SOURCE_CPUS),
        memory_bytes=128 * GiB,
        disk_bytes=request.disk_bytes or 480 * GiB,
        disk_format=request.disk_format,
        definitions=tuple(request.definitions),
        mac="52:54:00:12:34:56",
        runs_on=where,
        source="Dell Inc. PowerEdge R640",
    )


def canned_vm_findings(vm: Any, folder: str) -> list[CheckLine]:
    """The pre-flight of the canned VM: the vm.* lines first, as the core gives them."""
    where = vm.runs_on
    if vm.vcpus < CANNED_SOURCE_CPUS:
        cpus = CheckLine(
            "warn",
            "vm.cpus",
            f"The source machine had {CANNED_SOURCE_CPUS} vCPUs; the host has {where.cpus} "
            f"({where.source}): the definition gets {vm.vcpus}.",
            "Accept this value or set another one. Services sized for the source (databases, "
            "thread pools, hugepages) may need their settings changed.",
        )
    else:
        cpus = CheckLine(
            "ok", "vm.cpus", f"The VM gets {vm.vcpus} vCPUs, as the source machine had."
        )
    return [
        CheckLine("info", "vm.firmware", "Firmware: UEFI (the image's disk boots by UEFI (EFI system partition p1))."),
        CheckLine("ok", "vm.disk", "Disk bus virtio, network card virtio: the initramfs of kernel 6.1.0-28-amd64 has the virtio disk drivers (virtio_blk, virtio_pci).", "Network card: virtio like the disk."),
        cpus,
        CheckLine("ok", "vm.memory", "The VM gets 128.0 GiB of memory, as the source machine had."),
        CheckLine("ok", "vm.space", f"Room in {folder}: 1.2 TiB free, at most 116.2 GiB needed (the restored disk, then its copy as {vm.disk_format})."),
        CheckLine("ok", "fit", "Fits: the image needs 400.5 GiB of 480.0 GiB."),
        CheckLine("info", "usage.p1", CANNED_USAGE[0]),
        CheckLine("info", "usage.p2", CANNED_USAGE[1]),
    ]  # fmt: skip


def canned_vm_report(folder: str, name: str = "web01-2026-11-20") -> JobReport:
    """A restore-into-a-VM report whose details carry the VM as the core records it."""
    report = JobReport(
        job="restore",
        outcome="success",
        started="2026-11-21T10:02:11+00:00",
        finished="2026-11-21T10:31:40+00:00",
        duration_s=1769.0,
        target=f"{folder}/{name}.rescueui-work.img",
        image_dir=str(canned_image().path),
    )
    report.details["vm"] = {
        "name": name,
        "firmware": "uefi",
        "disk_bus": "virtio",
        "nic_model": "virtio",
        "vcpus": 8,
        "memory_bytes": 128 * GiB,
        "disk_bytes": 480 * GiB,
        "disk_format": "qcow2",
        "files": {"disk": f"{folder}/{name}.qcow2", "libvirt": f"{folder}/{name}.xml"},
        "checks": [
            f"qemu-img compare: {name}.qcow2 holds exactly the restored and verified disk.",
            f"libvirt: {name}.xml names the disk {folder}/{name}.qcow2 (qcow2, 480.0 GiB); "
            "valid by virt-xml-validate (libvirt's domain schema).",
        ],
    }
    report.notes.append(f"Virtual machine {name}: 8 vCPU(s), 128.0 GiB, UEFI.")
    return report


@dataclass
class CannedPlan:
    """What the core's PlannedStream offers the capture estimate."""

    name: str
    kind: str
    size: int
    fs_type: str | None = None
    used_bytes: int | None = None  # None: every byte is read
    all_blocks: str | None = None
    warning: str | None = None

    @property
    def read_bytes(self) -> int:
        return self.size if self.used_bytes is None else self.used_bytes

    def usage(self) -> str:
        return usage_line(self.name, self.fs_type, self.size, self.used_bytes, self.all_blocks)


def canned_plans(all_blocks: bool) -> list[CannedPlan]:
    why = "every byte was asked for" if all_blocks else None
    return [
        CannedPlan("head", "head", MiB),
        CannedPlan("p1", "partition", 512 * MiB, "vfat", None if all_blocks else 120 * MiB, why),
        CannedPlan(
            "p2",
            "partition",
            400 * GiB,
            "ext4",
            None if all_blocks else int(58.1 * GiB),
            why,
            None if all_blocks else DIRTY,
        ),
        CannedPlan("p3", "partition", 16 * GiB, "crypto_LUKS", None, "a LUKS container"),
        CannedPlan("tail", "tail", 17 * 1024 * 32),
    ]


# ---- the files of the canned image's partition 2 (the Files screen) ----------------------

CANNED_MTIME = 1_763_608_364_000_000_000  # 2025-11-20 03:12:44 UTC


def _entry(
    name: str,
    kind: str,
    size: int,
    mode: int,
    uid: int = 0,
    gid: int = 0,
    link: str | None = None,
    days: int = 0,
) -> FileEntry:
    return FileEntry(name, kind, size, mode, uid, gid, CANNED_MTIME - days * 86_400 * 10**9,
                     link, 1)  # fmt: skip


CANNED_TREE: dict[str, list[FileEntry]] = {
    "/": [
        _entry("bin", "link", 7, 0o777, link="usr/bin", days=400),
        _entry("boot", "folder", 4096, 0o755, days=30),
        _entry("etc", "folder", 4096, 0o755, days=1),
        _entry("home", "folder", 4096, 0o755, days=200),
        _entry("lost+found", "folder", 16384, 0o700, days=700),
        _entry("srv", "folder", 4096, 0o755, days=2),
        _entry("var", "folder", 4096, 0o755, days=1),
        _entry("vmlinuz", "link", 30, 0o777, link="boot/vmlinuz-6.1.0-28-amd64", days=30),
        _entry("Grüße aus Köln – notes.txt", "file", 2_311, 0o644, 1000, 1000, days=12),
        _entry("swapfile", "file", 2 * GiB, 0o600, days=700),
    ],
    "/srv": [
        _entry("db", "folder", 4096, 0o750, 105, 110, days=2),
        _entry("www", "folder", 4096, 0o755, 33, 33, days=90),
    ],
    "/srv/db": [
        _entry("dump-2025-11-19.sql.zst", "file", int(2.3 * GiB), 0o640, 105, 110, days=1),
        _entry("dump-2025-11-18.sql.zst", "file", int(2.2 * GiB), 0o640, 105, 110, days=2),
        _entry("pg_hba.conf", "file", 4_812, 0o640, 105, 110, days=300),
        _entry("socket", "socket", 0, 0o777, 105, 110, days=1),
    ],
    "/srv/www": [_entry("index.html", "file", 12_044, 0o644, 33, 33, days=90)],
    "/etc": [
        _entry("fstab", "file", 664, 0o644, days=300),
        _entry("hostname", "file", 6, 0o644, days=700),
        _entry("nginx", "folder", 4096, 0o755, days=90),
        _entry("shadow", "file", 1_204, 0o640, 0, 42, days=40),
    ],
    "/etc/nginx": [_entry("nginx.conf", "file", 1_447, 0o644, days=90)],
}


class CannedView:
    """What Session.open_view gives the Files screen: a partition 'mounted' nowhere."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.root = Path("/nonexistent/canned-view")
        self.fs_type = "ext4"
        self.how = "kernel ext4 ro,noload"
        self.size_bytes = 400 * GiB
        self.closed = False

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        self.closed = True


def canned_tree_size(path: str) -> tuple[int, int]:
    """(bytes, files) under ``path`` in :data:`CANNED_TREE`."""
    parent, _, name = path.rpartition("/")
    entry = next((e for e in CANNED_TREE.get(parent or "/", []) if e.name == name), None)
    if entry is None or entry.kind != "folder":
        return (entry.size, 1) if entry is not None and entry.kind == "file" else (0, 0)
    size = files = 0
    for child in CANNED_TREE.get(path, []):
        s, f = canned_tree_size(f"{path}/{child.name}")
        size, files = size + s, files + f
    return size, files


def canned_extract_report(paths: list[str], dest: str) -> JobReport:
    """An extraction's report as the core writes it (``details["files"]``)."""
    report = JobReport(
        job="extract", outcome="success", source=str(canned_image().path),
        image_dir=str(canned_image().path), target=dest, started="2026-11-21T10:02:11+00:00",
        finished="2026-11-21T10:02:40+00:00", duration_s=29.0,
    )  # fmt: skip
    files: list[dict[str, Any]] = []
    for path in paths:
        parent, _, name = path.rpartition("/")
        entry = next(e for e in CANNED_TREE[parent or "/"] if e.name == name)
        if entry.kind == "folder":
            files.append({"path": path, "kind": "folder", "size": 0, "sha256": None, "note": ""})
            for child in CANNED_TREE.get(path, []):
                if child.kind == "file":
                    files.append({"path": f"{path}/{child.name}", "kind": "file",
                                  "size": child.size, "sha256": HASH_A, "note": ""})  # fmt: skip
        else:
            files.append({"path": path, "kind": entry.kind, "size": entry.size,
                          "sha256": HASH_B, "note": ""})  # fmt: skip
    report.details.update(partition=2, paths=paths, files=files)
    report.bytes_total = report.bytes_done = sum(f["size"] for f in files)
    reports = f"{canned_image().path}/reports/extract-20261121T100240Z"
    report.report_files = [f"{reports}.json", f"{reports}.txt"]
    return report


class CannedSession(Session):
    """Answers like the core would, from fixed data; jobs show a frozen mid-run state."""

    def __init__(self, *, corrupt: bool = False, fixups: bool = False) -> None:
        super().__init__()
        self.extra = False
        self.corrupt = corrupt
        self.fixups = fixups  # the pre-flight plans fix-ups of the restored system
        self.preflights: list[dict[str, Any]] = []  # what each pre-flight was asked
        self.findings: list[Any] = []  # what the last pre-flight said
        self.adapt_message: str | None = None  # the restore ends in the adapt phase, saying this
        self.finish: Any = None  # the restore ends with this (an exception is raised), not a wait
        self.estimates: list[bool] = []  # all_blocks of each estimate asked for
        self.estimate_delay = 0.0  # seconds an estimate takes (the partclone maps)
        self.estimates_cancelled = 0  # estimates stopped through their cancel event
        self.captures: list[dict[str, Any]] = []
        self.capture_gate = threading.Event()  # set: the canned capture finishes
        self.restores: list[dict[str, Any]] = []
        self.vm_folder = "/run/live/medium/vms"  # the default folder of a new VM (none there)
        self.vm_preflights: list[dict[str, Any]] = []  # what each VM pre-flight was asked
        self.vm_restores: list[dict[str, Any]] = []
        self.vm_phases: tuple[str, ...] = ("write", "verify", "convert", "compare")
        self.views: list[CannedView] = []  # every partition opened for browsing
        self.view_error: str | None = None  # open_view refuses with this
        self.stage_bytes = 0  # > 0: open_view stages that much first (an image read in order)
        self.staged = threading.Event()  # set by the test: the staging may end
        self.extracts: list[dict[str, Any]] = []
        self.extract_folder = "/media/usb-stick"  # where a default extraction goes
        self.image_medium = "/run/live/medium"  # folders under it: the image's own medium

    @property
    def is_demo(self) -> bool:
        return False

    def scan_disks(self, image_dir: Any = None) -> list[Any]:
        return canned_disks(self.extra)

    def start_watcher(self, callback: Any) -> None:
        return None

    def find_images(self, extra: Any = ()) -> list[ImageSummary]:
        bad = ImageSummary(
            path=Path("/mnt/usb/old-image"),
            ok=False,
            error="manifest.json: unknown format version 9; this rescueui reads version 1.",
        )
        return [canned_image(), bad, canned_foreign_image()]

    def preflight(
        self,
        image_dir: Any,
        disk: Any,
        *,
        partition: int | None = None,
        target_path: str | None = None,
        adapt: Any = None,
    ) -> list[Any]:
        self.preflights.append({"partition": partition, "adapt": adapt})
        findings = self._canned_findings()
        if self.fixups and adapt is not None and partition is None:
            findings += canned_fixup_findings(adapt)
        self.findings = findings
        return findings

    def _canned_findings(self) -> list[Any]:
        return [
            CheckLine("ok", "fits", "The image (400.5 GiB) fits on /dev/sda (480.0 GiB)."),
            CheckLine("ok", "firmware", "Both machines boot with UEFI."),
            CheckLine("warn", "memory", "This machine has 64.0 GiB of memory; the source had 128.0 GiB.", "Services sized for the old memory may need tuning."),
            CheckLine("info", "usage.p1", CANNED_USAGE[0]),
            CheckLine("info", "grow", "Partition 2 will be grown to fill the disk.", "The target is 79.5 GiB larger than the image: the GPT is written for the real disk size and the ext4 filesystem of partition 2 is grown with resize2fs after the verify."),
            CheckLine("info", "usage.p2", CANNED_USAGE[1]),
        ]  # fmt: skip

    def default_vm_folder(self, image_path: Any) -> Path:
        return Path(self.vm_folder)

    def preflight_vm(self, image_dir: Any, request: Any, *, adapt: Any = None) -> Any:
        self.vm_preflights.append({"request": request, "adapt": adapt})
        vm = canned_vm(request, canned_image())
        findings: list[Any] = canned_vm_findings(vm, request.folder)
        if self.fixups and adapt is not None:
            findings += canned_fixup_findings(adapt)
        self.findings = findings
        return vm, findings

    def restore_to_vm(
        self,
        image_dir: Any,
        request: Any,
        *,
        progress: Any = None,
        cancel: threading.Event | None = None,
        accepted_codes: Any = (),
        adapt: Any = None,
    ) -> Any:
        """The phases of a restore into a VM (``vm_phases``), then ``finish`` (or a wait
        until the job is cancelled)."""
        assert progress is not None and cancel is not None
        warns = {f.code for f in self.findings if f.level == "warn"}
        assert set(accepted_codes) == warns, (accepted_codes, warns)
        self.vm_restores.append(
            {"request": request, "adapt": adapt, "accepted_codes": set(accepted_codes)}
        )
        from dataclasses import replace

        base = frozen_progress()
        for phase in self.vm_phases:
            progress(
                replace(base, phase=phase, stream=None if phase in ("convert", "compare") else "p2")
            )
        if isinstance(self.finish, BaseException):
            raise self.finish
        if self.finish is not None:
            return self.finish
        cancel.wait(30)
        return None

    def confirmation_code(self, disk: Any) -> str:
        return (getattr(disk, "serial", None) or disk.name)[-4:]  # a partition: its name

    def confirm(self, disk: Any, typed: str) -> Any:
        if typed != self.confirmation_code(disk):
            raise UnsafeTargetError(
                f"'{typed}' is not the code of {disk.path}.", hint="Nothing was written."
            )
        return object()

    def restore(
        self,
        image_dir: Any,
        confirmed: Any,
        *,
        progress: Any = None,
        cancel: threading.Event | None = None,
        resume: bool = False,
        partition: int | None = None,
        accepted_codes: Any = (),
        exact: bool = False,
        adapt: Any = None,
    ) -> Any:
        assert progress is not None and cancel is not None
        # every warning of the pre-flight was acknowledged on screen
        warns = {f.code for f in self.findings if f.level == "warn"}
        assert set(accepted_codes) == warns, (accepted_codes, warns)
        self.restores.append(
            {
                "image_dir": image_dir,
                "exact": exact,
                "resume": resume,
                "adapt": adapt,
                "accepted_codes": set(accepted_codes),
            }
        )
        base = frozen_progress()
        from dataclasses import replace

        for i in range(60):  # a deterministic rate history for the graph
            progress(replace(base, rate_now=(400 + (i * 37) % 250) * 1e6))
        if self.corrupt:
            bad = ChunkEvent("p2", 41650, 174_696_169_472, 4 * MiB, HASH_B, ok=False)
            progress(replace(base, last_chunk=bad))
        progress(base if not self.corrupt else replace(base, last_chunk=bad))
        if self.adapt_message:
            progress(replace(base, phase="adapt", message=self.adapt_message))
        if isinstance(self.finish, BaseException):
            raise self.finish
        if self.finish is not None:
            return self.finish
        cancel.wait(30)
        return None

    def estimate_capture(
        self, source: Any, *, all_blocks: bool = False, cancel: threading.Event | None = None
    ) -> list[Any]:
        self.estimates.append(all_blocks)
        if self.estimate_delay:
            if cancel is None:
                time.sleep(self.estimate_delay)
            elif cancel.wait(self.estimate_delay):
                self.estimates_cancelled += 1
                raise CancelledError("estimate cancelled")
        return canned_plans(all_blocks)

    def capture(
        self,
        source: Any,
        image_dir: Any,
        *,
        progress: Any = None,
        cancel: threading.Event | None = None,
        all_blocks: bool = False,
    ) -> Any:
        """The first phase of a capture (the used-block maps), until the test lets it end."""
        assert progress is not None and cancel is not None
        self.captures.append({"source": source, "image_dir": image_dir, "all_blocks": all_blocks})
        progress(
            Progress(
                job="capture", phase="map", bytes_done=0, bytes_total=0, elapsed=2.0,
                message="finding the blocks the filesystem on p2 uses",
            )
        )  # fmt: skip
        while not (self.capture_gate.is_set() or cancel.is_set()):
            time.sleep(0.02)
        return None

    # -- browsing and extracting (canned: CANNED_TREE) ------------------------
    def open_view(
        self, image_path: Any, partition: int, *, progress: Any = None, cancel: Any = None
    ) -> Any:
        if self.stage_bytes and progress is not None:  # an image read only in order
            for done in range(0, self.stage_bytes + 1, self.stage_bytes // 4):
                progress(done, self.stage_bytes)
            self.staged.wait(timeout=10)
        if self.view_error is not None:
            raise RescueError(self.view_error)
        view = CannedView(partition)
        self.views.append(view)
        return view

    def list_folder(self, view: Any, path: str) -> list[Any]:
        if path not in CANNED_TREE:
            raise RescueError(f"{path} is not a folder in the image.")
        return sorted(CANNED_TREE[path], key=lambda e: e.name)

    def tree_size(self, view: Any, path: str, cancel: Any = None) -> tuple[int, int]:
        return canned_tree_size(path)

    def default_extract_folder(self, image_path: Any, partition: int) -> Path:
        return Path(self.extract_folder) / f"web01-p{partition}-files"

    def extract_destination(
        self, dest: Any, image_path: Any, *, allow_image_medium: bool = False
    ) -> Path:
        where = Path(str(dest).strip())
        if not str(where).startswith("/"):
            raise RescueError(f"The destination {where} cannot be used: not a full path.")
        if str(where).startswith(self.image_medium) and not allow_image_medium:
            raise RescueError(
                f"{where} is on the medium that holds the image; files are not extracted there "
                "unless chosen so explicitly.",
                hint="Choose a folder on another disk, or confirm this medium on purpose.",
                action="onto-image-medium",
            )
        return where

    def extract(
        self,
        image_path: Any,
        partition: int,
        paths: Any,
        dest: Any,
        *,
        allow_image_medium: bool = False,
        progress: Any = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        assert progress is not None and cancel is not None
        self.extracts.append(
            {"partition": partition, "paths": list(paths), "dest": str(dest),
             "allow_image_medium": allow_image_medium}
        )  # fmt: skip
        total = sum(canned_tree_size(p)[0] for p in paths)
        progress(
            Progress(job="extract", phase="extract", bytes_done=total // 3, bytes_total=total,
                     rate_now=212e6, rate_avg=198e6, elapsed=9.0, eta=18.0)
        )  # fmt: skip
        if isinstance(self.finish, BaseException):
            raise self.finish
        if self.finish is not None:
            return canned_extract_report(list(paths), str(dest))
        cancel.wait(30)
        return None
