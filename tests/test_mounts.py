"""Parsing /proc/self/mountinfo and /proc/swaps, and matching mounts by device number."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rescueui.core import mounts as mnt
from tests.loopdisk import LoopFactory, run, settle

MOUNTINFO = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n"
    r"90 27 259:3 / /mnt/my\040disk\011tab rw,nosuid master:7 unbindable - ext4 /dev/sdb1 rw"
    "\n"
    r"91 27 259:3 /sub\134dir /srv/bind rw - ext4 /dev/sdb1 rw"
    "\n"
    "92 27 0:45 / /mnt/pool rw - btrfs /dev/sdc2 rw,space_cache=v2,subvol=/\n"
    "this line is garbage\n"
    "93 27 0:46 / /run/live/rootfs rw - overlay overlay rw,lowerdir=/a:/b,upperdir=/c\n"
)


def test_parse_mountinfo_fields_and_escapes() -> None:
    entries = mnt.parse_mountinfo(MOUNTINFO)
    assert [e.mount_id for e in entries] == [22, 27, 90, 91, 92, 93]  # garbage line skipped
    root = entries[1]
    assert root.devnum == (254, 0)
    assert root.mountpoint == "/"
    assert (root.fs_type, root.source, root.super_options) == ("ext4", "/dev/vda", "rw,discard")
    spaced = entries[2]
    assert spaced.mountpoint == "/mnt/my disk\ttab"  # \040 and \011 decoded
    assert spaced.devnum == (259, 3)
    assert spaced.fs_type == "ext4"  # optional fields (master:7 unbindable) skipped
    assert spaced.options == "rw,nosuid"
    bind = entries[3]
    assert bind.root == "/sub\\dir"  # \134 is a backslash
    assert bind.is_bind_of_subdir and not spaced.is_bind_of_subdir


def test_unescape_leaves_plain_text_alone() -> None:
    assert mnt.unescape("/plain/path") == "/plain/path"
    assert mnt.unescape(r"/a\040b\012c") == "/a b\nc"


def test_mount_at_and_mount_containing() -> None:
    entries = mnt.parse_mountinfo(MOUNTINFO)
    assert mnt.mount_at(entries, "/mnt/pool/").mount_id == 92  # trailing slash normalised
    assert mnt.mount_at(entries, "/mnt") is None
    assert mnt.mount_containing(entries, "/mnt/pool/images/a.img").mount_id == 92
    assert mnt.mount_containing(entries, "/mnt/poolside").mount_id == 27  # not a path prefix
    assert mnt.mount_containing(entries, "/etc/hosts").mount_id == 27


def test_mounts_grouped_by_the_real_device_number_of_root() -> None:
    """The root filesystem's device number (as stat sees it) maps to its mount point."""
    st = os.stat("/")
    root_dev = (os.major(st.st_dev), os.minor(st.st_dev))
    if root_dev[0] == 0:
        pytest.skip("/ is not on a block device here (overlay/tmpfs/btrfs)")
    text = (
        f"27 1 {root_dev[0]}:{root_dev[1]} / / rw - ext4 /dev/whatever-name rw\n"
        f"28 27 {root_dev[0]}:{root_dev[1]} /x /bound rw - ext4 /dev/other-name rw\n"
        "29 27 0:99 / /tmp rw - tmpfs tmpfs rw\n"
    )
    grouped = mnt.mounts_by_devnum(mnt.parse_mountinfo(text))
    # Matched by number although the source names differ and lie; tmpfs has no block device.
    assert list(grouped) == [root_dev]
    assert [e.mountpoint for e in grouped[root_dev]] == ["/", "/bound"]  # whole mount first


def test_read_mountinfo_sees_root() -> None:
    entries = mnt.read_mountinfo()
    assert mnt.mount_at(entries, "/") is not None


def test_parse_swaps() -> None:
    text = (
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/sdb2                               partition\t2097148\t\t0\t\t-2\n"
        r"/swap\040file"
        "                        file\t\t1048572\t\t512\t\t-3\n"
        "/old.swap(deleted)                      file\t\t1024\t\t0\t\t-4\n"
    )
    swaps = mnt.parse_swaps(text)
    assert [(s.filename, s.kind) for s in swaps] == [
        ("/dev/sdb2", "partition"),
        ("/swap file", "file"),
        ("/old.swap", "file"),
    ]
    assert swaps[0].size_kib == 2097148 and swaps[1].used_kib == 512 and swaps[2].priority == -4


def test_parse_swaps_empty() -> None:
    assert mnt.parse_swaps("Filename\tType\tSize\tUsed\tPriority\n") == []


@pytest.mark.root
@pytest.mark.udev
def test_btrfs_mount_matched_to_its_loop_device(loops: LoopFactory, tmp_path: Path) -> None:
    """btrfs reports an anonymous device number (0:N); the mount still maps to the loop device."""
    disk = loops.create(128)
    run(["mkfs.btrfs", "-q", "-f", "-L", "POOL", disk.path])
    settle()
    where = disk.mount(None, tmp_path / "pool mnt")
    entries = mnt.read_mountinfo()
    entry = mnt.mount_at(entries, where)
    assert entry is not None and entry.fs_type == "btrfs"
    assert entry.devnum[0] == 0  # the anonymous number the kernel reports
    loop_dev = mnt.block_devnum(disk.path)
    assert mnt.mount_devnum(entry) == loop_dev
    assert where in [e.mountpoint for e in mnt.mounts_by_devnum(entries)[loop_dev]]


@pytest.mark.root
@pytest.mark.udev
def test_real_mount_with_space_resolves_to_loop_partition(
    loops: LoopFactory, tmp_path: Path
) -> None:
    disk = loops.create(32, table="label: dos\nstart=2048, type=83\n")
    run(["mkfs.ext4", "-q", "-F", "-L", "SPACE", disk.part(1)])
    where = disk.mount(1, tmp_path / "with space")
    grouped = mnt.mounts_by_devnum(mnt.read_mountinfo())
    part_dev = mnt.block_devnum(disk.part(1))
    assert part_dev is not None
    assert where in [e.mountpoint for e in grouped[part_dev]]
    subprocess.run(["umount", where], check=True)
    disk.mounts.clear()
    grouped = mnt.mounts_by_devnum(mnt.read_mountinfo())
    assert where not in [e.mountpoint for e in grouped.get(part_dev, [])]
