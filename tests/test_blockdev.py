"""Block-device primitives on real files and real loop devices."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from rescueui.core import blockdev
from rescueui.core.errors import DiskError
from tests.loopdisk import LoopFactory

MiB = 1024 * 1024


def _fill(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_file_geometry(tmp_path: Path) -> None:
    f = tmp_path / "disk.img"
    _fill(f, 3 * MiB + 512)
    assert blockdev.device_size(f) == 3 * MiB + 512
    fd = os.open(f, os.O_RDONLY)
    try:
        assert blockdev.device_size(fd) == 3 * MiB + 512
        assert blockdev.logical_sector_size(fd) == 512
        assert blockdev.physical_sector_size(fd) == 512
        assert not blockdev.is_block_device(fd)
    finally:
        os.close(fd)


def test_device_size_refuses_directory_and_missing(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="neither a block device"):
        blockdev.device_size(tmp_path)
    with pytest.raises(DiskError, match="Cannot open"):
        blockdev.device_size(tmp_path / "nope")


def test_aligned_buffer_is_page_aligned_and_zero() -> None:
    buf = blockdev.aligned_buffer(4 * MiB + 1)
    assert len(buf) == 4 * MiB + blockdev.PAGE_SIZE
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert addr % blockdev.PAGE_SIZE == 0
    assert buf[:] == bytes(len(buf))
    with pytest.raises(ValueError):
        blockdev.aligned_buffer(0)


def test_zero_range_on_file_inside_and_beyond_end(tmp_path: Path) -> None:
    f = tmp_path / "disk.img"
    data = _fill(f, 2 * MiB)
    fd = os.open(f, os.O_RDWR)
    try:
        method = blockdev.zero_range(fd, 4096, 8192)
        assert method in ("punch-hole", "zero-range", "write")
        blockdev.zero_range(fd, 2 * MiB - 4096, 2 * 4096)  # crosses the end: extends
    finally:
        os.close(fd)
    out = f.read_bytes()
    assert len(out) == 2 * MiB + 4096
    assert out[:4096] == data[:4096]
    assert out[4096 : 4096 + 8192] == bytes(8192)
    assert out[4096 + 8192 : 2 * MiB - 4096] == data[4096 + 8192 : 2 * MiB - 4096]
    assert out[2 * MiB - 4096 :] == bytes(2 * 4096)


def test_write_zeros_fallback(tmp_path: Path) -> None:
    f = tmp_path / "disk.img"
    data = _fill(f, 9 * MiB)
    fd = os.open(f, os.O_RDWR)
    try:
        blockdev._write_zeros(fd, 512, 9 * MiB - 1024)
    finally:
        os.close(fd)
    out = f.read_bytes()
    assert out[:512] == data[:512] and out[-512:] == data[-512:]
    assert out[512:-512] == bytes(9 * MiB - 1024)


@pytest.mark.root
def test_loop_device_geometry_and_zeroout(loops: LoopFactory) -> None:
    disk = loops.create(16, fill="random")
    assert blockdev.device_size(disk.path) == 16 * MiB
    assert blockdev.is_block_device(disk.path)
    assert blockdev.logical_sector_size(disk.path) == 512
    assert blockdev.physical_sector_size(disk.path) >= 512
    before = disk.backing.read_bytes()
    fd = os.open(disk.path, os.O_RDWR | os.O_DIRECT | os.O_EXCL)
    try:
        method = blockdev.zero_range(fd, MiB, 5 * MiB)
        assert method in ("blkzeroout", "write")
        os.fsync(fd)
        # read back with O_DIRECT into an aligned buffer
        buf = blockdev.aligned_buffer(16 * MiB)
        n = os.preadv(fd, [buf], 0)
        assert n == 16 * MiB
        got = bytes(buf[: 16 * MiB])
        assert isinstance(blockdev.discard(fd, 14 * MiB, MiB), bool)
    finally:
        os.close(fd)
    assert got[:MiB] == before[:MiB]
    assert got[MiB : 6 * MiB] == bytes(5 * MiB)
    assert got[6 * MiB : 14 * MiB] == before[6 * MiB : 14 * MiB]
