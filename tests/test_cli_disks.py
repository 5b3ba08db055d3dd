"""`rescueui disks [--json]` run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.loopdisk import LoopFactory, MiB, mkfs_ext4, settle

GPT = """label: gpt
start=2048, size=16384, name="first"
start=18432, name="second"
"""  # p1: 8 MiB at 1 MiB, p2: the rest from 9 MiB

DISK_KEYS = {
    "path",
    "size_bytes",
    "model",
    "serial",
    "bus",
    "read_only",
    "removable",
    "targetable",
    "reasons",
    "partitions",
}
PART_KEYS = {
    "path",
    "number",
    "start_bytes",
    "size_bytes",
    "fs_type",
    "label",
    "uuid",
    "mountpoints",
}


def rescueui(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rescueui", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def disks_json(*args: str) -> list[dict[str, Any]]:
    r = rescueui("disks", "--json", *args)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert isinstance(data, list)
    return data


def by_path(data: list[dict[str, Any]], path: str) -> dict[str, Any]:
    for d in data:
        if d["path"] == path:
            return d
    raise AssertionError(f"{path} not in rescueui disks --json: {[d['path'] for d in data]}")


@pytest.mark.root
@pytest.mark.udev
def test_json_lists_loop_disk_with_keys(loops: LoopFactory) -> None:
    loop = loops.create(32, table=GPT)
    mkfs_ext4(loop.part(2), "CLIDATA")
    settle()
    d = by_path(disks_json(), loop.path)
    assert DISK_KEYS <= d.keys()
    assert d["size_bytes"] == 32 * MiB and d["bus"] == "loop"
    assert d["targetable"] is True and d["reasons"] == []
    assert d["read_only"] is False and d["removable"] is False
    assert len(d["partitions"]) == 2
    for p in d["partitions"]:
        assert PART_KEYS <= p.keys()
    p1, p2 = d["partitions"]
    assert (p1["path"], p1["number"], p1["start_bytes"], p1["size_bytes"]) == (
        loop.part(1),
        1,
        1 * MiB,
        8 * MiB,
    )
    assert (p2["number"], p2["start_bytes"], p2["fs_type"], p2["label"]) == (
        2,
        9 * MiB,
        "ext4",
        "CLIDATA",
    )
    assert p2["uuid"] and p2["mountpoints"] == []


@pytest.mark.root
@pytest.mark.udev
def test_json_image_and_live_mount_options(loops: LoopFactory, tmp_path: Path) -> None:
    medium = loops.create(32, table=GPT)
    mkfs_ext4(medium.part(2), "IMAGES")
    booted = loops.create(32, table=GPT)
    mkfs_ext4(booted.part(2), "LIVE")
    settle()
    images = Path(medium.mount(2, tmp_path / "images"))
    (images / "img").mkdir()
    live = booted.mount(2, tmp_path / "live")
    data = disks_json("--image", str(images / "img"), "--live-mount", live)
    m = by_path(data, medium.path)
    assert m["roles"] == ["image"] and m["targetable"] is False
    assert "holds the selected image" in m["reasons"]
    assert f"mounted: {images} ({medium.name}p2)" in m["reasons"]
    assert m["partitions"][1]["mountpoints"] == [str(images)]
    b = by_path(data, booted.path)
    assert b["roles"] == ["boot"]
    assert b["reasons"][0] == "boot medium (the running system lives here)"


@pytest.mark.root
@pytest.mark.udev
def test_table_shows_disks_partitions_and_reasons(loops: LoopFactory, tmp_path: Path) -> None:
    free = loops.create(32, table=GPT)
    used = loops.create(32, table=GPT)
    mkfs_ext4(used.part(2), "BUSY")
    settle()
    where = used.mount(2, tmp_path / "busy")
    r = rescueui("disks", env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    rows = table_rows(r.stdout)

    def row_of(device: str) -> list[str]:
        for row in rows:
            if row[0].lstrip("├└─ ") == device:
                return row
        raise AssertionError(f"{device} not in:\n{r.stdout}")

    # columns: Device, Size, Model / serial, Bus, Table / filesystem, Mounted on, Target, Why not
    assert row_of(free.path)[6] == "yes" and row_of(free.path)[7] == ""
    assert row_of(free.path)[4] == "gpt"
    used_row = row_of(used.path)
    assert used_row[6] == "NO"
    assert squeeze(f"mounted: {where} ({used.name}p2)") in squeeze(used_row[7])
    p2 = row_of(used.part(2))
    assert p2[4] == "ext4 'BUSY'" and squeeze(p2[5]) == squeeze(where)
    assert row_of(used.part(1))[1] == "8.0 MiB"
    assert "may be restored to" in r.stdout


def squeeze(text: str) -> str:
    """Text without whitespace: the table may wrap long cells anywhere."""
    return "".join(text.split())


def table_rows(out: str) -> list[list[str]]:
    """Rows of the rich table; wrapped continuation lines (empty Device cell) merged in."""
    rows: list[list[str]] = []
    for line in out.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if cells[0] == "Device":
            continue
        if cells[0] or not rows:
            rows.append(cells)
        else:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
    return rows


@pytest.mark.udev
def test_root_disk_never_targetable_in_json() -> None:
    """On this machine the disk under / (/dev/vda) is listed and refused (read-only check)."""
    data = disks_json()
    st = os.stat("/")
    root = [os.major(st.st_dev), os.minor(st.st_dev)]
    for d in data:
        if (
            d["path"] == "/dev/vda"
            or d["devnum"] == root
            or any(p["devnum"] == root for p in d["partitions"])
        ):
            assert d["targetable"] is False
            assert "boot medium (the running system lives here)" in d["reasons"]
