"""The bootable Debian test disks (tests/bootsystem.py) build and boot as described there."""

from __future__ import annotations

import pytest

from tests import bootsystem
from tests.marks import needs

TOOLS = ("debootstrap", "sfdisk", "partx", "losetup", "mkfs.ext4", "mkfs.vfat", "fusefat",
         "fusermount", "mcopy", "qemu-system-x86_64")  # fmt: skip
pytestmark = needs(*TOOLS, slow=True)


@pytest.mark.timeout(1800)  # a first build: debootstrap and two disks
def test_disks_build_sparse_and_cached() -> None:
    """The disks build (or come from the cache). That they boot, and where they do not, is
    shown by tests/test_adapt_boot.py (each QEMU boot costs a minute under TCG, so the
    fixture is not booted on its own here)."""
    bios = bootsystem.debian_disk("bios")
    uefi = bootsystem.debian_disk("uefi")
    for image in (bios, uefi):
        assert image.is_file()
        assert image.stat().st_size == bootsystem.DISK_BYTES
        assert image.stat().st_blocks * 512 < image.stat().st_size  # sparse
        assert image.stat().st_mode & 0o222 == 0  # read-only: callers boot copies
    assert bootsystem.debian_disk("bios") == bios  # the cache answers the second time
