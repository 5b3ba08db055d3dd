"""Larger targets: partition tables adapted with real sfdisk, filesystems grown on loop disks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rescueui.core import parttable
from rescueui.core.errors import TargetTooSmallError
from rescueui.core.grow import adapt_table, grow_filesystem, grown_partition
from rescueui.core.units import MiB
from tests.loopdisk import LoopFactory, mkfs_ext4, run

GPT = """label: gpt
start=2048, size=64MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
"""
DOS = """label: dos
start=2048, size=64MiB, type=83
type=83
"""
DOS_LOGICAL = """label: dos
start=2048, size=32MiB, type=83
type=5
size=32MiB, type=83
type=83
"""


def disk_file(tmp: Path, mib: int, script: str | None = None) -> Path:
    f = tmp / f"disk-{mib}-{len(list(tmp.iterdir()))}.img"
    f.touch()
    os.truncate(f, mib * MiB)
    if script:
        run(["sfdisk", "--quiet", str(f)], input=script)
    return f


def verify(path: Path) -> str:
    proc = subprocess.run(["sfdisk", "--verify", str(path)], capture_output=True, text=True)
    return proc.stdout + proc.stderr


def test_gpt_adapted_to_larger_file_with_backup_at_the_end(tmp_path: Path) -> None:
    src = disk_file(tmp_path, 256, GPT)
    table = parttable.read_table(src)
    assert table is not None
    new, notes = adapt_table(table, 512 * MiB, grow=True)
    assert table["lastlba"] != new["lastlba"]  # input unchanged, output adapted
    total = 512 * MiB // 512
    assert new["lastlba"] == total - 34
    p2 = new["partitions"][1]
    end = (p2["start"] + p2["size"]) * 512
    assert end == 511 * MiB  # grown to the last whole MiB before the backup GPT
    assert grown_partition(table, new) == 2
    assert any("grown" in n for n in notes) and any("GPT" in n for n in notes)
    dst = disk_file(tmp_path, 512)
    parttable.write_table(dst, new)
    back = parttable.read_table(dst)
    assert back is not None
    assert back["lastlba"] == total - 34
    assert back["partitions"][1]["size"] == p2["size"]
    assert back["partitions"][0] == {
        **table["partitions"][0],
        "node": back["partitions"][0]["node"],
    }
    assert back["id"] == table["id"]
    assert "No errors detected" in verify(dst)
    # the backup GPT header really is in the last sector
    with open(dst, "rb") as f:
        f.seek(512 * MiB - 512)
        assert f.read(8) == b"EFI PART"


def test_gpt_no_grow_keeps_sizes_but_moves_backup(tmp_path: Path) -> None:
    src = disk_file(tmp_path, 256, GPT)
    table = parttable.read_table(src)
    assert table is not None
    new, notes = adapt_table(table, 512 * MiB, grow=False)
    assert [p["size"] for p in new["partitions"]] == [p["size"] for p in table["partitions"]]
    assert new["lastlba"] == 512 * MiB // 512 - 34
    assert grown_partition(table, new) is None
    assert any("unused" in n for n in notes)
    dst = disk_file(tmp_path, 512)
    parttable.write_table(dst, new)
    assert "No errors detected" in verify(dst)


def test_gpt_onto_smaller_disk_that_fits(tmp_path: Path) -> None:
    src = disk_file(tmp_path, 256, GPT.replace('name="root"', 'size=100MiB, name="root"'))
    table = parttable.read_table(src)
    assert table is not None
    new, _ = adapt_table(table, 200 * MiB, grow=False)
    assert new["lastlba"] == 200 * MiB // 512 - 34
    dst = disk_file(tmp_path, 200)
    parttable.write_table(dst, new)
    assert "No errors detected" in verify(dst)
    with pytest.raises(TargetTooSmallError, match="beyond the usable end"):
        adapt_table(table, 150 * MiB, grow=True)


def test_dos_last_partition_grown(tmp_path: Path) -> None:
    src = disk_file(tmp_path, 256, DOS)
    table = parttable.read_table(src)
    assert table is not None
    new, _ = adapt_table(table, 1024 * MiB, grow=True)
    p2 = new["partitions"][1]
    assert (p2["start"] + p2["size"]) * 512 == 1024 * MiB
    dst = disk_file(tmp_path, 1024)
    parttable.write_table(dst, new)
    assert parttable.read_table(dst)["partitions"][1]["size"] == p2["size"]  # type: ignore[index]


def test_dos_logical_partition_grows_with_its_extended(tmp_path: Path) -> None:
    src = disk_file(tmp_path, 256, DOS_LOGICAL)
    table = parttable.read_table(src)
    assert table is not None
    new, _ = adapt_table(table, 512 * MiB, grow=True)
    by_num = {parttable.partition_number(p): p for p in new["partitions"]}
    assert (by_num[2]["start"] + by_num[2]["size"]) * 512 == 512 * MiB  # extended
    assert (by_num[6]["start"] + by_num[6]["size"]) * 512 == 512 * MiB  # last logical
    assert grown_partition(table, new) == 6
    dst = disk_file(tmp_path, 512)
    parttable.write_table(dst, new)
    back = {parttable.partition_number(p): p for p in parttable.read_table(dst)["partitions"]}  # type: ignore[index]
    assert back[6]["size"] == by_num[6]["size"]


def test_same_size_changes_nothing(tmp_path: Path) -> None:
    table = parttable.read_table(disk_file(tmp_path, 256, GPT))
    assert table is not None
    new, notes = adapt_table(table, 256 * MiB, grow=True)
    assert new == table and notes == []


def test_vfat_and_unknown_left_alone() -> None:
    assert "left at its size" in grow_filesystem("/dev/null-not-used", "vfat")
    assert "left at its size" in grow_filesystem("/dev/null-not-used", None)


def _grow_partition_of(disk: str, backing: Path, new_mib: int) -> None:
    """Enlarge the loop disk's backing file and partition 1 to the new end (like a restore)."""
    table = parttable.read_table(disk)
    assert table is not None
    os.truncate(backing, new_mib * MiB)
    run(["losetup", "-c", disk])
    new, _ = adapt_table(table, new_mib * MiB, grow=True)
    parttable.write_table(disk, new)
    parttable.tell_kernel(disk)


@pytest.mark.root
@pytest.mark.udev
@pytest.mark.parametrize("fs", ["ext4", "xfs", "btrfs"])
def test_grow_filesystem_for_real(loops: LoopFactory, tmp_path: Path, fs: str) -> None:
    disk = loops.create(320, table="label: gpt\nstart=2048, size=300MiB, type=linux\n")
    part = disk.part(1)
    if fs == "ext4":
        mkfs_ext4(part, "growme")
    elif fs == "xfs":
        run(["mkfs.xfs", "-q", "-f", "-L", "growme", part])
    else:
        run(["mkfs.btrfs", "-q", "-f", "-L", "growme", part])
    mnt = tmp_path / "mnt"
    disk.mount(1, mnt)
    payload = os.urandom(3 * MiB)
    (mnt / "file.bin").write_bytes(payload)
    before = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
    disk.umount_all()

    _grow_partition_of(disk.path, disk.backing, 640)
    note = grow_filesystem(part, fs)
    assert "grown" in note and part in note

    disk.mount(1, mnt)
    after = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
    assert after > before + 250 * MiB
    assert (mnt / "file.bin").read_bytes() == payload
    disk.umount_all()
    if fs == "ext4":
        r = subprocess.run(["e2fsck", "-fn", part], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    elif fs == "xfs":
        r = subprocess.run(["xfs_repair", "-n", part], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        r = subprocess.run(["btrfs", "check", part], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(json.dumps(note)) == note
