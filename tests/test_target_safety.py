"""Safety rules for restore targets, against real loop devices and this machine's boot disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rescueui.core.disks import scan_disks, whole_disk_devnum
from rescueui.core.errors import TargetChangedError, UnsafeTargetError
from rescueui.core.identity import confirm_target, identity_of
from rescueui.core.target import check_target_safety, open_target
from rescueui.core.targets.rule import RuleContext
from tests.loopdisk import LoopFactory, mkfs_ext4

MiB = 1024 * 1024


def boot_device() -> str:
    st = os.stat("/")
    uevent = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/uevent")
    try:
        for line in uevent.read_text().splitlines():
            if line.startswith("DEVNAME="):
                return "/dev/" + line.split("=", 1)[1]
    except OSError:
        pass
    return ""


@pytest.mark.root
def test_boot_disk_is_refused_without_opening_it_for_writing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dev = boot_device()
    if not dev.startswith("/dev/") or not os.path.exists(dev):
        pytest.skip("/ is not on a block device here")
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path, flags, *a, **kw):  # type: ignore[no-untyped-def]
        opened.append((os.fspath(path), flags))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    ident = identity_of(dev)
    with pytest.raises(UnsafeTargetError) as err:
        check_target_safety(ident)
    assert "boot medium" in str(err.value)
    # The disk list (the same rule) marks it as the boot medium too.
    assert ident.devnum is not None
    whole = whole_disk_devnum(ident.devnum)
    assert any(d.devnum == whole and "boot" in d.roles for d in scan_disks())
    write_flags = os.O_WRONLY | os.O_RDWR
    assert not [p for p, f in opened if f & write_flags and os.path.realpath(p) == dev]


@pytest.mark.root
def test_clean_loop_disk_is_accepted(loops: LoopFactory) -> None:
    disk = loops.create(16)
    check_target_safety(identity_of(disk.path))
    assert identity_of(disk.path).devnum not in {p.devnum for p in RuleContext.build().boot}


@pytest.mark.root
def test_mounted_partition_refused_and_kernel_refuses_exclusive_open(
    loops: LoopFactory, tmp_path: Path
) -> None:
    disk = loops.create(32, table="label: gpt\nsize=24MiB\n")
    mkfs_ext4(disk.part(1), "busy")
    where = disk.mount(1, tmp_path / "mnt")
    with pytest.raises(UnsafeTargetError, match="mounted") as err:
        check_target_safety(identity_of(disk.path))
    assert where in str(err.value)
    with pytest.raises(UnsafeTargetError, match="mounted"):
        check_target_safety(identity_of(disk.part(1)))
    # Even if the checks were bypassed, O_EXCL makes the kernel refuse the disk.
    confirmed = confirm_target(disk.path, disk.name)
    with pytest.raises(UnsafeTargetError, match="mounted or in use"):
        open_target(confirmed)


@pytest.mark.root
def test_read_only_loop_refused(loops: LoopFactory) -> None:
    disk = loops.create(16, read_only=True)
    with pytest.raises(UnsafeTargetError, match="read-only"):
        check_target_safety(identity_of(disk.path))
    with pytest.raises(UnsafeTargetError, match="read-only"):
        open_target(confirm_target(disk.path, disk.name))


@pytest.mark.root
def test_disk_holding_the_image_refused(loops: LoopFactory, tmp_path: Path) -> None:
    disk = loops.create(32)
    mkfs_ext4(disk.path, "images")
    where = Path(disk.mount(None, tmp_path / "images"))
    image_dir = where / "server1"
    image_dir.mkdir()
    disk.umount_all()  # not mounted any more: only the image role remains ...
    disk.mount(None, where)
    with pytest.raises(UnsafeTargetError) as err:
        check_target_safety(identity_of(disk.path), image_dir=image_dir)
    assert "image" in str(err.value)
    listed = [d for d in scan_disks(image_paths=[image_dir]) if d.path == disk.path]
    assert listed and "image" in listed[0].roles


@pytest.mark.root
def test_open_target_refuses_a_swapped_device(loops: LoopFactory) -> None:
    a = loops.create(16)
    confirmed = confirm_target(a.path, a.name)
    os.truncate(a.backing, 24 * MiB)
    os.system(f"losetup -c {a.path}")
    with pytest.raises(TargetChangedError, match="size"):
        open_target(confirmed)


@pytest.mark.root
def test_open_target_block_uses_excl_and_direct(loops: LoopFactory) -> None:
    disk = loops.create(16)
    with open_target(confirm_target(disk.path, disk.name)) as handle:
        assert handle.direct
        # A second exclusive open of the same disk is refused while we hold it.
        with pytest.raises(UnsafeTargetError, match="in use"):
            open_target(confirm_target(disk.path, disk.name))


def test_file_target_inside_image_folder_refused(tmp_path: Path) -> None:
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    f = image_dir / "disk.img"
    f.write_bytes(b"\0" * 4096)
    with pytest.raises(UnsafeTargetError, match="inside the image folder"):
        check_target_safety(identity_of(f), image_dir=image_dir)
    outside = tmp_path / "vm.img"
    outside.write_bytes(b"\0" * 4096)
    check_target_safety(identity_of(outside), image_dir=image_dir)


def test_file_target_opened_once(tmp_path: Path) -> None:
    f = tmp_path / "vm.img"
    f.write_bytes(b"\0" * 8192)
    with open_target(confirm_target(f, "vm.img")) as handle:
        handle.pwrite(memoryview(b"x" * 4096), 4096)
        handle.sync()
        with pytest.raises(UnsafeTargetError, match="in use"):
            open_target(confirm_target(f, "vm.img"))
    assert f.read_bytes()[4096:] == b"x" * 4096


def test_file_target_through_a_link_is_named_and_opened_as_the_real_file(tmp_path: Path) -> None:
    real = tmp_path / "real.img"
    real.write_bytes(b"\0" * 4096)
    link = tmp_path / "link.img"
    link.symlink_to(real)
    ident = identity_of(link)
    assert ident.path == str(real)  # the operator confirms the file that is written
    confirmed = confirm_target(link, ident.name)
    # a link planted at the real name meanwhile is never written through
    other = tmp_path / "other.img"
    other.write_bytes(b"x" * 4096)
    real.unlink()
    real.symlink_to(other)
    with pytest.raises(UnsafeTargetError):
        open_target(confirmed)
    assert other.read_bytes() == b"x" * 4096
