"""Target identity, confirmation codes and the re-check before opening."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rescueui.core.errors import TargetChangedError, UnsafeTargetError
from rescueui.core.identity import (
    DiskIdentity,
    confirm_target,
    confirmation_code,
    identity_of,
    recheck,
)
from tests.loopdisk import LoopFactory

MiB = 1024 * 1024


def make_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_regular_file_identity(tmp_path: Path) -> None:
    f = make_file(tmp_path / "vm-disk.img", 8 * MiB)
    ident = identity_of(f)
    st = os.stat(f)
    assert ident.kind == "file"
    assert ident.inode == (st.st_dev, st.st_ino)
    assert ident.size_bytes == 8 * MiB
    assert ident.devnum is None
    assert confirmation_code(ident) == "vm-disk.img"
    assert DiskIdentity.from_dict(ident.to_dict()) == ident


def test_confirm_is_case_insensitive_and_wrong_code_says_what_to_type(tmp_path: Path) -> None:
    f = make_file(tmp_path / "Disk.IMG", MiB)
    confirmed = confirm_target(f, "  disk.img ")
    assert confirmed.identity.path == str(f)
    with pytest.raises(UnsafeTargetError) as err:
        confirm_target(f, "loop0")
    msg = str(err.value)
    assert "you typed 'loop0'" in msg
    assert "type 'Disk.IMG'" in msg


def test_code_prefers_serial_then_wwn() -> None:
    base = dict(path="/dev/sdz", kind="block", devnum=(8, 0), inode=None, size_bytes=1)
    ident = DiskIdentity(**base, serial="WD-WX31A2B3C4D5", wwn="0x50014ee2b1c2d3e4", model="WDC")  # type: ignore[arg-type]
    assert confirmation_code(ident) == "B3C4D5"
    ident2 = DiskIdentity(**base, serial=None, wwn="0x50014ee2b1c2d3e4", model=None)  # type: ignore[arg-type]
    assert confirmation_code(ident2) == "c2d3e4"
    ident3 = DiskIdentity(**base, serial=None, wwn=None, model=None)  # type: ignore[arg-type]
    assert confirmation_code(ident3) == "sdz"


def test_recheck_notices_replaced_and_resized_file(tmp_path: Path) -> None:
    f = make_file(tmp_path / "t.img", 4 * MiB)
    confirmed = confirm_target(f, "t.img")
    assert recheck(confirmed) == confirmed.identity
    os.truncate(f, 5 * MiB)
    with pytest.raises(TargetChangedError, match="size: was 4194304, now 5242880"):
        recheck(confirmed)
    os.truncate(f, 4 * MiB)
    make_file(tmp_path / "other.img", 4 * MiB).rename(f)  # a new inode under the same name
    with pytest.raises(TargetChangedError, match="file \\(device and inode\\)"):
        recheck(confirmed)
    f.unlink()
    with pytest.raises(TargetChangedError, match="no longer there"):
        recheck(confirmed)


def test_directory_is_not_a_target(tmp_path: Path) -> None:
    with pytest.raises(UnsafeTargetError, match="neither a block device nor a regular file"):
        identity_of(tmp_path)


@pytest.mark.root
def test_loop_device_identity(loops: LoopFactory) -> None:
    disk = loops.create(16)
    ident = identity_of(disk.path)
    st = os.stat(disk.path)
    assert ident.kind == "block"
    assert ident.devnum == (os.major(st.st_rdev), os.minor(st.st_rdev))
    assert ident.size_bytes == 16 * MiB
    assert ident.backing_file == str(disk.backing)
    assert ident.diskseq is not None
    assert not ident.partition
    assert confirmation_code(ident) == disk.name
    confirmed = confirm_target(disk.path, disk.name.upper())
    assert recheck(confirmed).devnum == ident.devnum


@pytest.mark.root
def test_loop_partition_identity(loops: LoopFactory) -> None:
    disk = loops.create(16, table="label: gpt\nsize=8MiB\n")
    ident = identity_of(disk.part(1))
    assert ident.partition
    assert ident.size_bytes == 8 * MiB
    assert ident.backing_file == str(disk.backing)  # the parent disk's backing file


@pytest.mark.root
def test_recheck_notices_loop_resize_and_reattach(loops: LoopFactory) -> None:
    disk = loops.create(16)
    confirmed = confirm_target(disk.path, disk.name)
    os.truncate(disk.backing, 20 * MiB)
    subprocess.run(["losetup", "-c", disk.path], check=True)
    with pytest.raises(TargetChangedError, match="size: was 16777216, now 20971520"):
        recheck(confirmed)

    # Same /dev/loopN, another backing file: a different disk behind the same name.
    confirmed = confirm_target(disk.path, disk.name)
    other = loops.workdir / "other.img"
    other.write_bytes(b"")
    os.truncate(other, 20 * MiB)
    subprocess.run(["losetup", "-d", disk.path], check=True)
    r = subprocess.run(["losetup", disk.path, str(other)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"{disk.path} was taken by another process before re-attach: {r.stderr}")
    disk.backing.unlink()
    disk.backing = other
    with pytest.raises(TargetChangedError) as err:
        recheck(confirmed)
    assert "loop backing file" in str(err.value)
    assert "disk sequence number" in str(err.value)
