"""Images on unmounted filesystems are found by mounting them read-only (root, loop disks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rescueui.core.demo import build_demo
from rescueui.core.session import Session, mounted_filesystems
from tests.loopdisk import LoopFactory, mkfs_ext4

GPT = "label: gpt\nstart=2048, size=100000, type=L, name=images\nstart=104448, type=L, name=empty\n"


@pytest.mark.root
@pytest.mark.udev
def test_images_on_unmounted_partitions_are_found_read_only(
    loops: LoopFactory, tmp_path: Path
) -> None:
    demo = build_demo(tmp_path / "demo")
    disk = loops.create(96, table=GPT)
    mkfs_ext4(disk.part(1), "IMAGES")
    mkfs_ext4(disk.part(2), "NOTHING")
    mnt = disk.mount(1, tmp_path / "fill")
    shutil.copytree(demo.image_dir, Path(mnt) / "backups" / "server-a")
    disk.umount_all()
    media = tmp_path / "media"
    # only our loop disk: other disks on this machine are not ours to mount
    session = Session(mount_media=True, media_root=media, media_disks=lambda d: d.path == disk.path)
    try:
        found = session.find_images()
        ours = [i for i in found if str(i.path).startswith(str(media))]
        assert [i.path for i in ours] == [media / Path(disk.part(1)).name / "backups" / "server-a"]
        assert ours[0].ok
        mounts = {m: t for _d, m, t in mounted_filesystems()}
        assert str(media / Path(disk.part(1)).name) in mounts
        assert str(media / Path(disk.part(2)).name) not in mounts  # no image there: unmounted again
        opts = Path("/proc/self/mounts").read_text()
        line = next(x for x in opts.splitlines() if str(media) in x)
        assert " ro," in line or line.split()[3].startswith("ro")
    finally:
        session.release_media()
    assert not any(str(media) in m for _d, m, _t in mounted_filesystems())


@pytest.mark.root
@pytest.mark.udev
def test_image_files_on_unmounted_partitions_are_found_with_their_kind(
    loops: LoopFactory, tmp_path: Path
) -> None:
    """A filesystem holding only image files (no image folder) is kept mounted and its
    files are listed by content: a qcow2 and a raw disk image; a symlink is not followed."""
    from tests.test_image_discovery import raw_disk, run

    raw = raw_disk(tmp_path / "disk.raw")
    disk = loops.create(96, table=GPT)
    mkfs_ext4(disk.part(1), "IMGFILES")
    mkfs_ext4(disk.part(2), "NOTHING")
    mnt = Path(disk.mount(1, tmp_path / "fill"))
    (mnt / "vms").mkdir()
    run("qemu-img", "convert", "-O", "qcow2", raw, mnt / "vms" / "web01.qcow2")
    run("cp", "--sparse=always", raw, mnt / "sda.img")
    (mnt / "link.img").symlink_to("sda.img")
    disk.umount_all()
    media = tmp_path / "media"
    session = Session(mount_media=True, media_root=media, media_disks=lambda d: d.path == disk.path)
    try:
        found = session.find_images()
        where = media / Path(disk.part(1)).name
        ours = {i.path: i for i in found if where in i.path.parents}
        assert set(ours) == {where / "sda.img", where / "vms" / "web01.qcow2"}
        assert ours[where / "sda.img"].kind == "raw" and ours[where / "sda.img"].ok
        vm = ours[where / "vms" / "web01.qcow2"]
        assert vm.ok and vm.kind_label == "qcow2" and "qcow2 VM disk" in vm.description
        mounts = {m for _d, m, _t in mounted_filesystems()}
        assert str(where) in mounts
        assert str(media / Path(disk.part(2)).name) not in mounts
    finally:
        session.release_media()
    assert not any(str(media) in m for _d, m, _t in mounted_filesystems())
