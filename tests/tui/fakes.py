"""A canned session for snapshot tests: fixed disks, images, findings and a frozen job."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from rescueui.core.disks import Disk, Partition
from rescueui.core.errors import UnsafeTargetError
from rescueui.core.progress import ChunkEvent, Progress
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
        description="rescueui image (format 1), 3 stream(s), 400.5 GiB of disk",
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


class CannedSession(Session):
    """Answers like the core would, from fixed data; jobs show a frozen mid-run state."""

    def __init__(self, *, corrupt: bool = False) -> None:
        super().__init__()
        self.extra = False
        self.corrupt = corrupt

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

    def preflight(self, image_dir: Any, disk: Any, **kw: Any) -> list[Any]:
        return [
            CheckLine("ok", "fits", "The image (400.5 GiB) fits on /dev/sda (480.0 GiB)."),
            CheckLine("ok", "firmware", "Both machines boot with UEFI."),
            CheckLine("warn", "memory", "This machine has 64.0 GiB of memory; the source had 128.0 GiB.", "Services sized for the old memory may need tuning."),
            CheckLine("info", "grow", "Partition 2 will be grown to fill the disk.", "The target is 79.5 GiB larger than the image: the GPT is written for the real disk size and the ext4 filesystem of partition 2 is grown with resize2fs after the verify."),
        ]  # fmt: skip

    def confirmation_code(self, disk: Any) -> str:
        return disk.serial[-4:]

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
    ) -> Any:
        assert progress is not None and cancel is not None
        assert set(accepted_codes) == {"memory"}, accepted_codes  # acknowledged on screen
        base = frozen_progress()
        from dataclasses import replace

        for i in range(60):  # a deterministic rate history for the graph
            progress(replace(base, rate_now=(400 + (i * 37) % 250) * 1e6))
        if self.corrupt:
            bad = ChunkEvent("p2", 41650, 174_696_169_472, 4 * MiB, HASH_B, ok=False)
            progress(replace(base, last_chunk=bad))
        progress(base if not self.corrupt else replace(base, last_chunk=bad))
        cancel.wait(30)
        return None
