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
