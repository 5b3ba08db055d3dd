"""Disk discovery and safety roles, against real udev and real loop disks."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from rescueui.core.disks import (
    REASON_BOOT,
    REASON_IMAGE,
    REASON_OPTICAL,
    REASON_READ_ONLY,
    REASON_SWAP,
    Disk,
    Partition,
    bus_of,
    classify,
    clean_udev_text,
    devnum_of,
    disk_of_path,
    find_disk,
    is_listed,
    is_optical,
    scan_disks,
    whole_disk_devnum,
)
from tests.loopdisk import (
    LoopDisk,
    LoopFactory,
    MiB,
    attach,
    detach,
    mkfs_ext4,
    mkfs_vfat,
    run,
    settle,
)


def real(test: Callable[..., None]) -> Callable[..., None]:
    """Needs root (loop devices) and a running udev."""
    return pytest.mark.root(pytest.mark.udev(test))


ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
LINUX_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"

GPT = f"""label: gpt
start=2048, size=32768, type={ESP_GUID}, name="EFI system"
start=34816, size=49152, type={LINUX_GUID}, name="rootfs"
"""  # p1: 16 MiB at 1 MiB, p2: 24 MiB at 17 MiB

DOS = """label: dos
start=2048, size=20480, type=83
start=22528, type=83
"""  # p1: 10 MiB at 1 MiB, p2: the rest from 11 MiB


def _gpt_disk(loops: LoopFactory) -> LoopDisk:
    disk = loops.create(64, table=GPT)
    mkfs_vfat(disk.part(1), "ESPLABEL")
    mkfs_ext4(disk.part(2), "ROOTLABEL")
    settle()
    return disk


def _scan_one(disk: LoopDisk, **kw: object) -> Disk:
    found = find_disk(disk.path, scan_disks(**kw))  # type: ignore[arg-type]
    assert found is not None, f"{disk.path} not found by scan_disks"
    return found


@real
def test_gpt_loop_disk_and_partitions_found(loops: LoopFactory) -> None:
    loop = _gpt_disk(loops)
    disk = _scan_one(loop)
    assert disk.path == loop.path and disk.name == loop.name
    assert disk.devnum == devnum_of(loop.path)
    assert disk.size_bytes == 64 * MiB == os.path.getsize(loop.backing)
    assert disk.bus == "loop"
    assert disk.table_type == "gpt"
    assert disk.logical_sector_size == 512
    assert disk.physical_sector_size >= 512
    assert not disk.read_only
    assert disk.backing_file == str(loop.backing)
    assert [p.number for p in disk.partitions] == [1, 2]
    esp, root = disk.partitions
    assert (esp.path, esp.start_bytes, esp.size_bytes) == (loop.part(1), 1 * MiB, 16 * MiB)
    assert (root.path, root.start_bytes, root.size_bytes) == (loop.part(2), 17 * MiB, 24 * MiB)
    assert (esp.fs_type, esp.label, esp.part_label) == ("vfat", "ESPLABEL", "EFI system")
    assert (root.fs_type, root.label, root.part_label) == ("ext4", "ROOTLABEL", "rootfs")
    assert esp.part_type == ESP_GUID and root.part_type == LINUX_GUID
    assert esp.uuid and root.uuid and esp.part_uuid and root.part_uuid
    assert root.devnum == devnum_of(loop.part(2))
    assert esp.mountpoints == [] and not esp.swap and esp.holders == []
    # Nothing uses it: it is a possible target.
    assert disk.reasons == [] and disk.targetable and disk.roles == set()


@real
def test_dos_table_partitions(loops: LoopFactory) -> None:
    loop = loops.create(40, table=DOS)
    mkfs_ext4(loop.part(2), "DOSDATA")
    settle()
    disk = _scan_one(loop)
    assert disk.table_type == "dos"
    assert [(p.number, p.start_bytes, p.size_bytes) for p in disk.partitions] == [
        (1, 1 * MiB, 10 * MiB),
        (2, 11 * MiB, 29 * MiB),
    ]
    assert disk.partitions[0].fs_type is None  # never formatted
    assert (disk.partitions[1].fs_type, disk.partitions[1].label) == ("ext4", "DOSDATA")
    assert disk.partitions[1].part_label is None  # MBR has no partition names
    assert disk.partitions[1].part_type == "0x83"
    assert disk.targetable


@real
def test_find_disk_by_partition_and_to_dict(loops: LoopFactory) -> None:
    loop = _gpt_disk(loops)
    disks = scan_disks()
    disk = find_disk(loop.part(2), disks)
    assert disk is not None and disk.path == loop.path  # partition -> its parent disk
    assert find_disk(loop.path, disks) is disk
    assert find_disk(loop.backing, disks) is None  # a regular file is not a scanned disk
    d = json.loads(json.dumps(disk.to_dict()))  # JSON-able
    assert d["targetable"] is True and d["reasons"] == []
    assert d["partitions"][1]["label"] == "ROOTLABEL"
    assert d["partitions"][1]["start_bytes"] == 17 * MiB


@real
def test_mounted_partition_makes_disk_not_targetable(loops: LoopFactory, tmp_path: Path) -> None:
    loop = _gpt_disk(loops)
    where = loop.mount(2, tmp_path / "mnt x")  # a space, escaped as \040 in mountinfo
    disk = _scan_one(loop)
    assert not disk.targetable
    assert f"mounted: {where} ({loop.name}p2)" in disk.reasons
    assert disk.partitions[1].mountpoints == [where]
    assert disk.partitions[0].mountpoints == []
    assert disk.mountpoints == []  # the whole disk itself is not mounted
    subprocess.run(["umount", where], check=True)
    loop.mounts.clear()
    assert _scan_one(loop).targetable  # unmounted: a target again


@real
def test_mounted_whole_disk_filesystem(loops: LoopFactory, tmp_path: Path) -> None:
    loop = loops.create(32)
    mkfs_ext4(loop.path, "WHOLE")
    settle()
    where = loop.mount(None, tmp_path / "whole")
    disk = _scan_one(loop)
    assert disk.partitions == [] and disk.table_type is None
    assert (disk.fs_type, disk.label) == ("ext4", "WHOLE")
    assert disk.mountpoints == [where]
    assert disk.reasons == [f"mounted: {where}"]


@real
def test_read_only_loop_is_not_a_target(loops: LoopFactory) -> None:
    loop = loops.create(32, table=DOS, read_only=True)
    disk = _scan_one(loop)
    assert disk.read_only
    assert disk.reasons == [REASON_READ_ONLY]
    assert not disk.targetable
    assert all(p.read_only for p in disk.partitions)


@real
def test_boot_medium_from_live_mounts(loops: LoopFactory, tmp_path: Path) -> None:
    boot_loop = _gpt_disk(loops)
    other = loops.create(32, table=DOS)
    live = boot_loop.mount(2, tmp_path / "live medium")
    disks = scan_disks(live_mounts=[live])
    boot = find_disk(boot_loop.path, disks)
    assert boot is not None
    assert boot.roles == {"boot"}
    assert boot.reasons[0] == REASON_BOOT  # the first thing a technician reads
    assert not boot.targetable
    spare = find_disk(other.path, disks)
    assert spare is not None and spare.roles == set() and spare.targetable
    # With the default live mounts the loop is merely mounted, not the boot medium.
    default = _scan_one(boot_loop)
    assert "boot" not in default.roles and REASON_BOOT not in default.reasons


@real
def test_image_medium_marked(loops: LoopFactory, tmp_path: Path) -> None:
    medium = _gpt_disk(loops)
    other = loops.create(32, table=DOS)
    where = Path(medium.mount(2, tmp_path / "images"))
    image_dir = where / "server-2026"
    image_dir.mkdir()
    (image_dir / "manifest.json").write_text("{}")
    assert disk_of_path(image_dir / "manifest.json") == devnum_of(medium.path)
    assert disk_of_path(image_dir) == devnum_of(medium.path)
    disks = scan_disks(image_paths=[image_dir])
    disk = find_disk(medium.path, disks)
    assert disk is not None
    assert disk.roles == {"image"}
    assert disk.reasons[0] == REASON_IMAGE
    assert f"mounted: {where} ({medium.name}p2)" in disk.reasons
    spare = find_disk(other.path, disks)
    assert spare is not None and "image" not in spare.roles and spare.targetable


@real
def test_swap_partition_in_use(loops: LoopFactory) -> None:
    loop = loops.create(40, table=DOS)
    subprocess.run(["mkswap", loop.part(1)], check=True, capture_output=True)
    r = subprocess.run(["swapon", loop.part(1)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"swapon not allowed here: {r.stderr.strip()}")
    try:
        disk = _scan_one(loop)
        assert disk.partitions[0].swap and not disk.partitions[1].swap
        assert f"{REASON_SWAP} ({loop.name}p1)" in disk.reasons
        assert not disk.targetable
    finally:
        subprocess.run(["swapoff", loop.part(1)], check=True)
    assert _scan_one(loop).targetable


@real
def test_empty_and_ram_devices_not_listed(loops: LoopFactory) -> None:
    loop = loops.create(16)
    assert _scan_one(loop).size_bytes == 16 * MiB
    loops.remove(loop)  # the loop device node stays, now empty (size 0)
    sysfs = Path("/sys/class/block")
    empty = {p.name for p in sysfs.iterdir() if (p / "size").read_text().strip() == "0"}
    assert empty, "expected at least one empty block device (a detached loop)"
    listed = {d.name for d in scan_disks()}
    assert not listed & empty
    assert not any(n.startswith(("ram", "zram")) for n in listed)
    assert all(is_listed(n, 1) for n in listed)  # no floppy drive (fd0) either


@real
def test_whole_disk_devnum_of_partition(loops: LoopFactory) -> None:
    loop = loops.create(32, table=DOS)
    part = devnum_of(loop.part(2))
    assert part is not None and part != devnum_of(loop.path)
    assert whole_disk_devnum(part) == devnum_of(loop.path)
    assert devnum_of(loop.backing) is None  # a regular file has no device number of its own


@pytest.mark.udev
def test_root_disk_is_boot_medium_and_never_targetable() -> None:
    """Read-only check of this machine: the disk holding / is the boot medium; /dev/vda never a target."""
    disks = scan_disks()
    root = disk_of_path("/")
    if root is not None:
        holder = next(d for d in disks if d.devnum == root)
        assert "boot" in holder.roles and not holder.targetable
        assert REASON_BOOT in holder.reasons
    if os.path.exists("/dev/vda"):
        vda = find_disk("/dev/vda", disks)
        assert vda is not None and not vda.targetable


# --------------------------------------------------------------------------- pure classification


def _part(name: str, n: int, **kw: object) -> Partition:
    base: dict[str, object] = dict(
        path=f"/dev/{name}",
        name=name,
        number=n,
        devnum=(8, 16 + n),
        start_bytes=n * MiB,
        size_bytes=MiB,
        fs_type=None,
        label=None,
        uuid=None,
        part_label=None,
        part_type=None,
        part_uuid=None,
    )
    base.update(kw)
    return Partition(**base)  # type: ignore[arg-type]


def _disk(**kw: object) -> Disk:
    base: dict[str, object] = dict(
        path="/dev/sdb",
        name="sdb",
        devnum=(8, 16),
        size_bytes=8 * MiB,
        model="Disk",
        vendor=None,
        serial="S1",
        wwn=None,
        bus="ata",
        removable=False,
        read_only=False,
        rotational=False,
        logical_sector_size=512,
        physical_sector_size=4096,
        table_type="gpt",
    )
    base.update(kw)
    return Disk(**base)  # type: ignore[arg-type]


def test_classify_reasons_in_reading_order() -> None:
    disk = _disk(
        read_only=True,
        holders=["md127"],
        partitions=[
            _part("sdb1", 1, mountpoints=["/boot/efi"]),
            _part("sdb2", 2, swap=True),
            _part("sdb3", 3, holders=["dm-0"]),
        ],
    )
    classify(disk, boot={(8, 16)}, image={(8, 16)})
    assert disk.roles == {"boot", "image"}
    assert disk.reasons == [
        REASON_BOOT,
        REASON_IMAGE,
        "mounted: /boot/efi (sdb1)",
        "in use by swap (sdb2)",
        "in use by md/dm: md127",
        "in use by md/dm: dm-0 (sdb3)",
        "read-only",
    ]
    assert not disk.targetable and disk.to_dict()["targetable"] is False


def test_classify_clean_disk_is_target() -> None:
    disk = _disk(partitions=[_part("sdb1", 1)])
    classify(disk, boot={(8, 0)}, image=set())
    assert disk.reasons == [] and disk.targetable and disk.roles == set()


@pytest.mark.parametrize(
    ("name", "size", "listed"),
    [
        ("fd0", 4096, False),  # QEMU's default floppy drive was shown as "target ok"
        ("fd1", 1474560, False),
        ("ram0", 16 * MiB, False),
        ("zram0", 4096 * MiB, False),
        ("sda", 0, False),  # no medium
        ("sr0", 0, False),  # empty CD drive
        ("sr0", 700 * MiB, True),  # a disc: listed, with a reason
        ("sda", 8 * MiB, True),
        ("vda", 8 * MiB, True),
        ("nvme0n1", 8 * MiB, True),
        ("loop3", 8 * MiB, True),
    ],
)
def test_is_listed(name: str, size: int, listed: bool) -> None:
    assert is_listed(name, size) is listed


def test_optical_drive_listed_but_never_a_target() -> None:
    assert is_optical("sr0") and is_optical("sr12")
    assert not is_optical("sda") and not is_optical("srv") and not is_optical("fd0")
    disk = _disk(path="/dev/sr0", name="sr0", devnum=(11, 0), read_only=True)
    classify(disk, boot=set(), image=set())
    assert disk.reasons == [REASON_OPTICAL]  # "read-only" is implied, not repeated
    assert not disk.targetable and disk.never_target and disk.roles == set()
    boot_disc = _disk(path="/dev/sr0", name="sr0", devnum=(11, 0), read_only=True)
    classify(boot_disc, boot={(11, 0)}, image=set())
    assert boot_disc.reasons == [REASON_BOOT, REASON_OPTICAL]


def test_never_target_only_for_boot_image_and_optical() -> None:
    """A mounted or read-only disk can be freed by the technician; boot/image media cannot."""
    mounted = _disk(mountpoints=["/mnt"], read_only=True)
    classify(mounted, boot=set(), image=set())
    assert not mounted.targetable and not mounted.never_target
    image = _disk()
    classify(image, boot=set(), image={(8, 16)})
    assert image.never_target
    boot = _disk()
    classify(boot, boot={(8, 16)}, image=set())
    assert boot.never_target
    clean = _disk()
    classify(clean, boot=set(), image=set())
    assert clean.targetable and not clean.never_target


def test_classify_many_mounts_and_virtual() -> None:
    disk = _disk(name="dm-0", bus="dm", mountpoints=["/a", "/b", "/c", "/d"])
    classify(disk, boot=set(), image=set())
    assert disk.reasons[0].startswith("virtual device")
    assert disk.reasons[1] == "mounted: /a, /b, /c (+1 more)"


@real
def test_live_system_overlay_followed_to_the_usb_stick(loops: LoopFactory, tmp_path: Path) -> None:
    """Like live-boot: / is an overlay over a squashfs loop whose file lives on the stick."""
    stick = _gpt_disk(loops)
    medium = Path(stick.mount(2, tmp_path / "run live" / "medium"))
    content = tmp_path / "rootfs content"
    (content / "etc").mkdir(parents=True)
    (content / "etc" / "hostname").write_text("live\n")
    squash = medium / "live" / "filesystem.squashfs"
    squash.parent.mkdir()
    run(["mksquashfs", str(content), str(squash), "-quiet", "-noappend"])
    squash_loop = attach(squash, read_only=True)
    rootfs = tmp_path / "rootfs ro"
    rw = tmp_path / "rw"
    merged = tmp_path / "merged root"
    mounted: list[Path] = []
    try:
        for d in (rootfs, rw, merged):
            d.mkdir()
        run(["mount", "-t", "squashfs", "-o", "ro", squash_loop, str(rootfs)])
        mounted.append(rootfs)
        run(["mount", "-t", "tmpfs", "tmpfs", str(rw)])
        mounted.append(rw)
        (rw / "upper").mkdir()
        (rw / "work").mkdir()
        opts = f"lowerdir={rootfs},upperdir={rw / 'upper'},workdir={rw / 'work'}"
        run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)])
        mounted.append(merged)
        # Only the overlay is named: the stick must be found through squashfs -> loop -> file.
        disks = scan_disks(live_mounts=[str(merged)])
        usb = find_disk(stick.path, disks)
        assert usb is not None and "boot" in usb.roles and usb.reasons[0] == REASON_BOOT
        sq = find_disk(squash_loop, disks)
        assert sq is not None and "boot" in sq.roles and sq.read_only
        assert sq.fs_type == "squashfs" and str(rootfs) in sq.mountpoints
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", str(m)], check=False)
        detach(squash_loop)


# --------------------------------------------------------------------------- bus and udev text


@pytest.mark.parametrize(
    ("name", "props", "sysdir", "bus"),
    [
        ("loop3", {}, "/sys/devices/virtual/block/loop3", "loop"),
        (
            "nvme0n1",
            {},
            "/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1",
            "nvme",
        ),
        ("mmcblk0", {}, "/sys/devices/platform/mmc0/block/mmcblk0", "mmc"),
        ("sda", {"ID_BUS": "ata", "ID_PATH": "pci-0000:00:17.0-ata-1"}, "/sys/x/ata1/sda", "ata"),
        (
            "sdb",
            {"ID_BUS": "usb", "ID_PATH": "pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0"},
            "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-2/block/sdb",
            "usb",
        ),
        ("sdc", {}, "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-2/2-2:1.0/block/sdc", "usb"),
        ("sdd", {"ID_PATH": "pci-0000:00:17.0-ata-2"}, "/nonexistent", "ata"),
        (
            "vdb",
            {"ID_PATH": "pci-0000:00:05.0"},
            "/sys/devices/pci0000:00/0000:00:05.0/virtio3/block/vdb",
            "virtio",
        ),
        (
            "sde",
            {"ID_BUS": "scsi", "ID_PATH": "pci-0000:00:06.0-scsi-0:0:0:1"},
            "/nonexistent",
            "scsi",
        ),
        ("md127", {}, "/sys/devices/virtual/block/md127", "md"),
        ("dm-0", {}, "/sys/devices/virtual/block/dm-0", "dm"),
    ],
)
def test_bus_of(name: str, props: dict[str, str], sysdir: str, bus: str) -> None:
    assert bus_of(name, props, Path(sysdir)) == bus


@pytest.mark.udev
def test_bus_of_this_machines_virtio_disk() -> None:
    if not os.path.exists("/sys/class/block/vda"):
        pytest.skip("no /dev/vda here")
    disk = find_disk("/dev/vda")
    assert disk is not None and disk.bus == "virtio"


def test_udev_encoded_text_decoded() -> None:
    assert clean_udev_text(r"Samsung\x20SSD\x20860\x20EVO\x20\x20") == "Samsung SSD 860 EVO"
    assert clean_udev_text("  ATA     ") == "ATA"
    assert clean_udev_text("") is None and clean_udev_text(None) is None
