"""The bootable Debian test disks (tests/bootsystem.py) build and boot as described there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import bootsystem

TOOLS = ("debootstrap", "sfdisk", "partx", "losetup", "mkfs.ext4", "mkfs.vfat", "fusefat",
         "fusermount", "mcopy", "qemu-system-x86_64")  # fmt: skip
MISSING = [t for t in TOOLS if shutil.which(t) is None]

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING), reason=f"missing tools: {', '.join(MISSING)} (.ci/packages.txt)"
    ),
]


@pytest.mark.timeout(1800)  # a first build: debootstrap and two disks, then a TCG boot
def test_disks_build_and_the_bios_disk_boots_on_virtio(tmp_path: Path) -> None:
    bios = bootsystem.debian_disk("bios")
    uefi = bootsystem.debian_disk("uefi")
    for image in (bios, uefi):
        assert image.is_file()
        assert image.stat().st_size == bootsystem.DISK_BYTES
        assert image.stat().st_blocks * 512 < image.stat().st_size  # sparse

    copy = bootsystem.copy_disk("bios", tmp_path / "bios.raw")
    result = bootsystem.boot(copy, firmware="bios", bus="virtio", log=tmp_path / "serial.log")
    assert result.marker, f"{result.reason} after {result.seconds} s:\n{result.tail()}"
    assert result.marker_line is not None
    assert "root=/dev/vda1" in result.marker_line
