"""Clonezilla image folders made with the commands ``ocs-sr savedisk`` runs.

``ocs-sr`` itself probes and re-reads the partition tables of every disk on the machine,
so it is never run here. Its steps are: ``sfdisk -d`` (``<disk>-pt.sf``), ``parted -s
unit s print`` (``<disk>-pt.parted``), ``dd`` of the first sector (``<disk>-mbr``), of the
sectors before the first partition on an MBR disk (``<disk>-hidden-data-after-mbr``) or of
both GPTs (``<disk>-gpt-1st``/``-gpt-2nd``), and per partition ``partclone.<fs> -c -s
<part> --output - | <compressor> | split -b <size> - <part>.<fs>-ptcl-img.<suffix>.``
(``partclone.dd`` for a filesystem partclone does not know: ``<part>.dd-ptcl-img…``);
a swap partition is not saved, its UUID and label go to ``swappt-<part>.info``.

Everything runs on files (partclone reads a partition from a file just as from a device),
no loop device and no root needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.imagefixtures import MiB, content_tree, make_vfat, make_xfs, run

COMPRESSORS = {
    "zst": ["zstd", "-q", "-c", "-T0", "-3"],
    "gz": ["gzip", "-c", "-1"],
    "xz": ["xz", "-c", "-0", "-T0"],
    "bz2": ["bzip2", "-c", "-1"],
    "lz4": ["lz4", "-q", "-c"],
    "lzip": ["lzip", "-c", "-0"],
    "uncomp": ["cat"],
}


@dataclass
class SourceDisk:
    path: Path
    size: int
    label: str
    parts: dict[int, tuple[int, int, str]] = field(default_factory=dict)  # n -> start, size, fs

    def read(self, start: int, size: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(size)


def make_source_disk(tmp: Path, *, label: str = "gpt", name: str = "src.img") -> SourceDisk:
    """GPT: p1 vfat ESP 16 MiB, p2 ext4 40 MiB (real files), p3 xfs 300 MiB, p4 swap 8 MiB.
    DOS: p1 vfat, extended p2 with logical p5 ext4 and p6 swap; hidden data after the MBR.
    Random boot code in the first 440 bytes; free space of the disk holds random data."""
    tmp.mkdir(parents=True, exist_ok=True)
    disk = tmp / name
    size = 420 * MiB
    with open(disk, "wb") as f:
        f.truncate(size)
    s = 512
    if label == "gpt":
        layout = {
            1: (1 * MiB, 16 * MiB, "vfat"),
            2: (17 * MiB, 40 * MiB, "ext4"),
            3: (57 * MiB, 300 * MiB, "xfs"),
            4: (357 * MiB, 8 * MiB, "swap"),
        }
        script = (
            "label: gpt\n"
            f'start={1 * MiB // s}, size={16 * MiB // s}, type=uefi, name="EFI system"\n'
            f"start={17 * MiB // s}, size={40 * MiB // s}, type=linux, name=root\n"
            f"start={57 * MiB // s}, size={300 * MiB // s}, type=linux, name=data\n"
            f"start={357 * MiB // s}, size={8 * MiB // s}, type=swap\n"
        )
    else:
        layout = {
            1: (1 * MiB, 16 * MiB, "vfat"),
            5: (18 * MiB, 40 * MiB, "ext4"),
            6: (59 * MiB, 8 * MiB, "swap"),
        }
        script = (
            "label: dos\n"
            f"start={1 * MiB // s}, size={16 * MiB // s}, type=c, bootable\n"
            f"start={17 * MiB // s}, size={60 * MiB // s}, type=5\n"
            f"start={18 * MiB // s}, size={40 * MiB // s}, type=83\n"
            f"start={59 * MiB // s}, size={8 * MiB // s}, type=82\n"
        )
    run("sfdisk", "--quiet", disk, input=script)
    content = tmp / "content"
    if not content.exists():
        content = content_tree(tmp)
    with open(disk, "r+b") as f:
        f.write(os.urandom(440))  # boot code
        if label == "dos":
            f.seek(512)
            f.write(os.urandom(63 * 512))  # a boot loader's data after the MBR
    for n, (start, length, fs) in layout.items():
        part = tmp / f"{name}.p{n}"
        if fs == "vfat":
            make_vfat(part, length, [content / "json"], label="ESP")
        elif fs == "ext4":
            # old data in the free space first, then the filesystem with real files
            with open(part, "wb") as f:
                f.write(os.urandom(length))
            run("mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-L", "rootfs", "-d", content, part)
        elif fs == "xfs":
            make_xfs(part, length, content, label="data")
        else:
            with open(part, "wb") as f:
                f.truncate(length)
            run("mkswap", "-q", "-L", "swap0", part)
        with open(part, "rb") as fin, open(disk, "r+b") as fout:
            fout.seek(start)
            shutil.copyfileobj(fin, fout, 4 * MiB)
        part.unlink()
    return SourceDisk(disk, size, label, layout)


def _sh(cmd: str, cwd: Path | None = None) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, cwd=cwd, capture_output=True)


def save_disk(
    src: SourceDisk,
    folder: Path,
    *,
    dev: str = "sda",
    comp: str = "zst",
    split_bytes: int | None = None,
    dd_parts: tuple[int, ...] = (),
    comp_for: dict[int, str] | None = None,
    checksum: str = "1",
) -> Path:
    """A Clonezilla ``savedisk`` folder of ``src`` as ``/dev/<dev>``."""
    folder.mkdir(parents=True)
    disk = src.path
    sep = "p" if dev[-1].isdigit() else ""
    dump = run("sfdisk", "-d", disk).replace(str(disk), f"/dev/{dev}")
    (folder / f"{dev}-pt.sf").write_text(dump)
    parted = run("parted", "-s", disk, "unit", "s", "print").replace(str(disk), f"/dev/{dev}")
    (folder / f"{dev}-pt.parted").write_text(parted)
    _sh(f"dd if={disk} of={folder}/{dev}-mbr bs=512 count=1 status=none")
    if src.label == "gpt":
        _sh(f"dd if={disk} of={folder}/{dev}-gpt-1st bs=512 count=34 status=none")
        last = src.size // 512
        _sh(f"dd if={disk} of={folder}/{dev}-gpt-2nd skip={last - 33} bs=512 count=33 status=none")
    else:
        first = min(start for start, _, _ in src.parts.values()) // 512
        _sh(
            f"dd if={disk} of={folder}/{dev}-hidden-data-after-mbr skip=1 bs=512 "
            f"count={first - 1} status=none"
        )
    saved = []
    blkid = []
    for n, (start, length, fs) in sorted(src.parts.items()):
        name = f"{dev}{sep}{n}"
        found = run("blkid", "-p", "-o", "export", "-O", str(start), disk)
        attrs = dict(x.split("=", 1) for x in found.splitlines() if "=" in x)
        blkid.append(
            f"/dev/{name}: "
            + " ".join(f'{k}="{attrs[k]}"' for k in ("LABEL", "UUID", "TYPE") if k in attrs)
        )
        if fs == "swap":
            uuid = run("blkid", "-p", "-o", "value", "-s", "UUID", "-O", str(start), disk).strip()
            (folder / f"swappt-{name}.info").write_text(f'UUID="{uuid}"\nLABEL="swap0"\n')
            continue
        saved.append(name)
        part = folder.parent / f".{name}.part"
        _sh(f"dd if={disk} of={part} bs=1M skip={start // MiB} count={length // MiB} status=none")
        c = (comp_for or {}).get(n, comp)
        compressor = " ".join(COMPRESSORS[c])
        if n in dd_parts:
            prefix = f"{name}.dd-ptcl-img.{c}"
            clone = f"partclone.dd -q -s {part} --output -"
        else:
            tool = {"vfat": "vfat", "ext4": "ext4", "xfs": "xfs"}[fs]
            prefix = f"{name}.{fs}-ptcl-img.{c}"
            clone = f"partclone.{tool} -q -c -a {checksum} -s {part} --output -"
        if split_bytes:
            _sh(f"{clone} | {compressor} | split -a 2 -b {split_bytes} - {prefix}.", cwd=folder)
        else:
            _sh(f"{clone} | {compressor} > {prefix}", cwd=folder)
        part.unlink()
    (folder / "blkid.list").write_text("\n".join(blkid) + "\n")  # ocs-sr: blkid | sort -V
    (folder / "disk").write_text(f"{dev}\n")
    (folder / "parts").write_text(" ".join(saved) + "\n")
    (folder / "clonezilla-img").write_text("This is a Clonezilla image.\n")
    (folder / "Info-dmi.txt").write_text(DMI_SAMPLE)
    (folder / "Info-lspci.txt").write_text(LSPCI_SAMPLE)
    return folder


DMI_SAMPLE = """This image was saved from this machine with DMI info at 2026-11-30 10:00:00:
# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 3.0.0 present.

Handle 0x0001, DMI type 1, 27 bytes
System Information
\tManufacturer: Dell Inc.
\tProduct Name: PowerEdge R640
\tVersion: Not Specified

Handle 0x0400, DMI type 4, 48 bytes
Processor Information
\tSocket Designation: CPU1
\tCore Count: 8
\tThread Count: 16

Handle 0x0401, DMI type 4, 48 bytes
Processor Information
\tSocket Designation: CPU2
\tCore Count: 8
\tThread Count: 16

Handle 0x1100, DMI type 17, 84 bytes
Memory Device
\tSize: 32 GB

Handle 0x1101, DMI type 17, 84 bytes
Memory Device
\tSize: 32 GB

Handle 0x1102, DMI type 17, 84 bytes
Memory Device
\tSize: No Module Installed
"""

LSPCI_SAMPLE = """This image was saved from this machine with PCI info at 2026-11-30 10:00:00:
'lspci' results:
00:11.5 SATA controller: Intel Corporation C620 Series Chipset Family SSATA Controller [AHCI mode]
18:00.0 RAID bus controller: Broadcom / LSI MegaRAID SAS-3 3108 [Invader] (rev 02)
19:00.0 Ethernet controller: Broadcom Inc. and subsidiaries NetXtreme BCM5720 Gigabit Ethernet PCIe
19:00.1 Ethernet controller: Broadcom Inc. and subsidiaries NetXtreme BCM5720 Gigabit Ethernet PCIe
"""
