"""Larger targets: partition tables adapted with real sfdisk, filesystems grown on loop disks."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rescueui.core import parttable
from rescueui.core.errors import TargetTooSmallError
from rescueui.core.grow import _kernel_sees, adapt_table, grow_filesystem, grown_partition
from rescueui.core.units import MiB
from tests.loopdisk import LoopFactory, loop_factory, mkfs_ext4, run
from tests.test_preflight import make_captured

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
    # udev may still hold the partition open after the umount; partx -u retries
    part = parttable.node_name(disk, 1)
    assert _kernel_sees(part, new["partitions"][0]["size"] * 512, disk, 1)


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
    run(["umount", str(mnt)])  # not lazy: the partition must be free before partx updates it
    disk.mounts.clear()

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


# --------------------------------------------------------------------------- through the restore


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates loop devices")
    base = tmp_path_factory.mktemp("grow-real")
    (base / "loops").mkdir()
    with loop_factory(base / "loops") as lf:
        yield make_captured(base, lf)


def _restore(image_dir: Path, target: str, *, grow: bool) -> Any:
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore

    confirmed = confirm_target(target, confirmation_code(identity_of(target)))
    plan = plan_restore(image_dir, confirmed, grow=grow)
    report = restore(plan)
    assert report.outcome == "success", (report.error, report.warnings)
    return report


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _fs_size(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return st.f_blocks * st.f_frsize


@pytest.mark.root
@pytest.mark.udev
@pytest.mark.slow
def test_restore_onto_larger_disk_grows_last_partition(
    captured: dict, loops: LoopFactory, tmp_path: Path
) -> None:
    src_table = captured["table"]
    src_p2 = src_table["partitions"][1]
    # the source filesystem's size, from a same-size restore
    same = loops.create(256, fill="random")
    _restore(captured["dir"], same.path, grow=True)
    same.mount(2, tmp_path / "same", options="ro")
    src_fs = _fs_size(tmp_path / "same")
    same.umount_all()

    big = loops.create(512, fill="random")
    report = _restore(captured["dir"], big.path, grow=True)
    assert any("Partition 2 grown" in n for n in report.notes), report.notes
    assert any("ext4 filesystem" in n and "grown from" in n for n in report.notes), report.notes
    table = parttable.read_table(big.path)
    assert table is not None
    p2 = table["partitions"][1]
    assert (p2["start"] + p2["size"]) * 512 == 511 * MiB
    assert table["lastlba"] == 512 * MiB // 512 - 34
    assert table["partitions"][0] == {**src_table["partitions"][0], "node": big.part(1)}
    assert p2["uuid"] == src_p2["uuid"] and table["id"] == src_table["id"]
    v = subprocess.run(["sfdisk", "--verify", big.path], capture_output=True, text=True)
    assert "No errors detected" in v.stdout, v.stdout + v.stderr
    with open(big.backing, "rb") as f:
        f.seek(512 * MiB - 512)
        assert f.read(8) == b"EFI PART"  # backup GPT header at the real end
    for n in (1, 2):
        r = subprocess.run(["e2fsck", "-fn", big.part(n)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    mnt = big.mount(2, tmp_path / "big", options="ro")
    assert _fs_size(Path(mnt)) > src_fs + 200 * MiB
    assert _tree(Path(mnt) / "json") == _tree(captured["files"])


@pytest.mark.root
@pytest.mark.udev
@pytest.mark.slow
def test_restore_no_grow_keeps_sizes(captured: dict, loops: LoopFactory, tmp_path: Path) -> None:
    src_table = captured["table"]
    big = loops.create(512, fill="random")
    report = _restore(captured["dir"], big.path, grow=False)
    assert not any("grown" in n for n in report.notes), report.notes
    table = parttable.read_table(big.path)
    assert table is not None
    assert [p["size"] for p in table["partitions"]] == [p["size"] for p in src_table["partitions"]]
    assert table["lastlba"] == 512 * MiB // 512 - 34  # the GPT still fits the real disk
    v = subprocess.run(["sfdisk", "--verify", big.path], capture_output=True, text=True)
    assert "No errors detected" in v.stdout, v.stdout + v.stderr
    r = subprocess.run(["e2fsck", "-fn", big.part(2)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    mnt = big.mount(2, tmp_path / "nogrow", options="ro")
    assert _fs_size(Path(mnt)) <= src_table["partitions"][1]["size"] * 512  # not grown
    assert _tree(Path(mnt) / "json") == _tree(captured["files"])


@pytest.mark.root
@pytest.mark.udev
def test_restore_onto_too_small_disk_refused_unwritten(captured: dict, loops: LoopFactory) -> None:
    from rescueui.core.errors import RescueError
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore

    small = loops.create(8, fill="random")  # too small even for its files
    before = small.backing.read_bytes()
    confirmed = confirm_target(small.path, confirmation_code(identity_of(small.path)))
    with pytest.raises(RescueError, match="too small"):
        plan_restore(captured["dir"], confirmed, accept_warnings=True)
    assert small.backing.read_bytes() == before


@pytest.mark.root
@pytest.mark.slow
def test_restore_onto_larger_image_file_grows_through_a_temporary_loop(
    captured: dict, tmp_path: Path
) -> None:
    target = tmp_path / "vm-disk.img"
    target.touch()
    os.truncate(target, 512 * MiB)
    report = _restore(captured["dir"], str(target), grow=True)
    assert any(f"partition 2 of {target}" in n and "grown from" in n for n in report.notes), (
        report.notes
    )
    table = parttable.read_table(target)
    assert table is not None
    p2 = table["partitions"][1]
    assert (p2["start"] + p2["size"]) * 512 == 511 * MiB
    dev = run(
        ["losetup", "-f", "--show", "-r", "--offset", str(p2["start"] * 512), "--sizelimit",
         str(p2["size"] * 512), str(target)]
    ).stdout.strip()  # fmt: skip
    try:
        r = subprocess.run(["e2fsck", "-fn", dev], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        info = run(["dumpe2fs", "-h", dev]).stdout
        blocks = int(next(x for x in info.splitlines() if x.startswith("Block count:")).split()[-1])
        bsize = int(next(x for x in info.splitlines() if x.startswith("Block size:")).split()[-1])
        assert blocks * bsize > 400 * MiB
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    # the temporary loop device of the grow step is gone
    assert str(target) not in run(["losetup", "-a"]).stdout
