"""Partition tables: read with sfdisk --json, write back, tell the kernel (real sfdisk/partx)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rescueui.core import parttable
from tests.loopdisk import LoopFactory, write_table

MiB = 1024 * 1024

GPT = """label: gpt
start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI", attrs="LegacyBIOSBootable"
start=12288, size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
"""
DOS = """label: dos
start=2048, size=8192, type=83, bootable
start=12288, size=8192, type=5
start=14336, size=4096, type=83
"""


def _image(tmp_path: Path, name: str, size_mib: int, script: str | None) -> Path:
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size_mib * MiB)
    if script:
        write_table(p, script)
    return p


def _strip_nodes(table: dict) -> dict:
    out = {k: v for k, v in table.items() if k != "device"}
    out["partitions"] = [
        {**{k: v for k, v in p.items() if k != "node"}, "number": parttable.partition_number(p)}
        for p in table["partitions"]
    ]
    return out


def test_no_table_is_none(tmp_path: Path) -> None:
    assert parttable.read_table(_image(tmp_path, "blank.img", 4, None)) is None


def test_gpt_round_trip_keeps_ids_names_attrs(tmp_path: Path) -> None:
    src = _image(tmp_path, "src.img", 32, GPT)
    table = parttable.read_table(src)
    assert table is not None and table["label"] == "gpt"
    table["partitions"][1]["name"] = 'odd "name" \\ here'
    dst = _image(tmp_path, "dst.img", 32, None)
    parttable.write_table(dst, table)
    again = parttable.read_table(dst)
    assert again is not None
    assert _strip_nodes(again) == _strip_nodes(table)
    assert again["partitions"][0]["attrs"] == "LegacyBIOSBootable"
    assert again["partitions"][1]["name"] == 'odd "name" \\ here'


def test_gpt_partition_numbers_with_holes(tmp_path: Path) -> None:
    src = _image(tmp_path, "src.img", 32, GPT)
    table = parttable.read_table(src)
    assert table is not None
    table["partitions"][1]["node"] = "whatever7"
    dst = _image(tmp_path, "dst.img", 32, None)
    parttable.write_table(dst, table)
    again = parttable.read_table(dst)
    assert again is not None
    assert [parttable.partition_number(p) for p in again["partitions"]] == [1, 7]


def test_dos_round_trip_with_logical_partition(tmp_path: Path) -> None:
    src = _image(tmp_path, "src.img", 16, DOS)
    table = parttable.read_table(src)
    assert table is not None and table["label"] == "dos"
    numbers = [parttable.partition_number(p) for p in table["partitions"]]
    assert numbers == [1, 2, 5]
    assert [parttable.is_extended(table, p) for p in table["partitions"]] == [False, True, False]
    dst = _image(tmp_path, "dst.img", 16, None)
    parttable.write_table(dst, table)
    again = parttable.read_table(dst)
    assert again is not None
    assert _strip_nodes(again) == _strip_nodes(table)
    assert again["partitions"][0].get("bootable") is True


def test_write_table_that_does_not_fit_fails_clearly(tmp_path: Path) -> None:
    table = parttable.read_table(_image(tmp_path, "src.img", 32, GPT))
    assert table is not None
    small = _image(tmp_path, "small.img", 4, None)
    with pytest.raises(parttable.DiskError, match=r"small\.img"):
        parttable.write_table(small, table)


def test_tell_kernel_on_file_is_noop(tmp_path: Path) -> None:
    parttable.tell_kernel(_image(tmp_path, "f.img", 4, None))


@pytest.mark.root
@pytest.mark.udev
def test_write_table_on_loop_and_tell_kernel(loops: LoopFactory, tmp_path: Path) -> None:
    table = parttable.read_table(_image(tmp_path, "src.img", 32, GPT))
    assert table is not None
    disk = loops.create(32)
    assert not os.path.exists(disk.part(1))
    parttable.write_table(disk.path, table)
    parttable.tell_kernel(disk.path)
    assert os.path.exists(disk.part(1)) and os.path.exists(disk.part(2))
    again = parttable.read_table(disk.path)
    assert again is not None
    assert again["partitions"][1]["node"] == disk.part(2)
    assert _strip_nodes(again) == _strip_nodes(table)
