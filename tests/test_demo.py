"""The demo environment: built without root from real tools, captured by the real engine."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from rescueui.core.demo import (
    DEMO_TARGETS,
    DemoEnvironment,
    build_demo,
    build_sample_disk,
    demo_cache_dir,
    paced,
)
from rescueui.core.errors import CorruptImageError
from rescueui.core.image import Image
from rescueui.core.progress import Progress
from rescueui.core.session import Session
from rescueui.core.units import MiB
from rescueui.core.verify import verify_image
from tests.imagefixtures import checked_ext_partition


def _table(path: Path) -> dict:
    out = subprocess.run(
        ["sfdisk", "--json", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)["partitiontable"]


def test_sample_disk_has_real_filesystems_with_files(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    work = tmp_path / "work"
    work.mkdir()
    build_sample_disk(disk, work)
    table = _table(disk)
    assert table["label"] == "gpt"
    p1, p2 = table["partitions"]
    assert p1["name"] == "EFI" and p2["name"] == "rootfs"
    # FAT: mtools reads it at its offset
    out = subprocess.run(
        ["mdir", "-i", f"{disk}@@{p1['start'] * 512}", "::/EFI/BOOT"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "BOOTX64" in out
    # ext4: extract the partition and check it, then read a file out of it with debugfs
    part = checked_ext_partition(disk, p2, tmp_path / "p2.img")
    cat = subprocess.run(
        ["debugfs", "-R", "cat /usr/lib/python3/json/__init__.py", str(part)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "JSON" in cat


def test_build_demo_once_and_rebuild_on_version_change(tmp_path: Path) -> None:
    t0 = time.monotonic()
    b = build_demo(tmp_path)
    assert time.monotonic() - t0 < 30
    image = Image.open(b.image_dir)
    assert image.manifest.complete
    assert {s.name for s in image.manifest.streams} >= {"p1", "p2"}
    assert verify_image(b.image_dir).outcome == "success"
    try:
        damaged_ok = verify_image(b.corrupt_image_dir).outcome == "success"
    except CorruptImageError:
        damaged_ok = False
    assert not damaged_ok
    # a second call reuses the cache
    mtime = (b.image_dir / "manifest.json").stat().st_mtime_ns
    assert build_demo(tmp_path).image_dir == b.image_dir
    assert (b.image_dir / "manifest.json").stat().st_mtime_ns == mtime
    # a different stamp rebuilds
    b.stamp.write_text("rescueui-demo 0\n")
    build_demo(tmp_path)
    assert (b.image_dir / "manifest.json").stat().st_mtime_ns != mtime


def test_demo_disks_and_fit(tmp_path: Path) -> None:
    env = DemoEnvironment(build=build_demo(tmp_path), pace=0)
    session = Session(env)
    disks = {d.name: d for d in session.scan_disks()}
    for t in DEMO_TARGETS:
        d = disks[t.name]
        assert d.bus == "file" and d.serial == t.serial and d.size_bytes == t.size_bytes
        assert d.targetable
    stick = disks["rescue-stick"]
    assert not stick.targetable and {"boot", "image"} <= stick.roles
    source = disks["sample-disk"]
    assert [p.fs_type for p in source.partitions] == ["vfat", "ext4"]
    assert [p.label for p in source.partitions] == ["EFI", "rootfs"]
    [img] = [i for i in session.find_images() if i.path == env.build.image_dir]
    assert img.ok and img.extent_bytes > 32 * MiB
    assert session.fit_problem(img, disks["demo-disk-A"]) is None
    assert "too small" in (session.fit_problem(img, disks["demo-small"]) or "")
    assert session.fit_problem(img, stick) is not None
    stops = [f for f in session.preflight(img.path, disks["demo-small"]) if f.level == "stop"]
    assert stops and not session.allows_restore(stops)
    # hotplug simulation: plug adds a disk, plug again removes it
    action, path = env.plug() or ("", Path())
    assert action == "add" and any(d.path == str(path) for d in session.scan_disks())
    assert (env.plug() or ("",))[0] == "remove"
    assert all(d.path != str(path) for d in session.scan_disks())


def test_pace_slows_a_job_to_the_simulated_speed() -> None:
    seen: list[int] = []
    hook = paced(lambda p: seen.append(p.bytes_done), 100e6)
    assert hook is not None
    t0 = time.monotonic()
    for i in range(1, 6):
        hook(
            Progress(job="restore", phase="write", bytes_done=i * 4_000_000, bytes_total=20_000_000)
        )
    assert time.monotonic() - t0 >= 0.15  # 20 MB at 100 MB/s = 0.2 s
    assert seen == [i * 4_000_000 for i in range(1, 6)]
    assert paced(None, 0) is None


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert demo_cache_dir() == tmp_path / "rescueui" / "demo"


def test_demo_builds_with_an_ordinary_users_path(tmp_path: Path) -> None:
    """A user's PATH on Debian has no /usr/sbin (where sfdisk, blkid and mkfs.* live): the
    README's first command runs the demo without root, so the engine must still find them."""
    import sys

    code = (
        "from pathlib import Path; from rescueui.core.demo import build_demo, DemoEnvironment\n"
        f"build_demo(Path({str(tmp_path)!r}))\n"
        f"env = DemoEnvironment.create(Path({str(tmp_path)!r}))\n"
        "src = [d for d in env.disks() if d.path.endswith('sample-disk.img')][0]\n"
        "print(sorted((p.fs_type, p.label) for p in src.partitions))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "('ext4', 'rootfs')" in r.stdout and "('vfat', 'EFI')" in r.stdout


def test_links_planted_in_the_demo_cache_are_never_followed(tmp_path: Path) -> None:
    """Someone who can write the cache links a virtual disk to another file: listing the
    disks replaces the link by a fresh file; the file it pointed to is untouched."""
    env = DemoEnvironment(build=build_demo(tmp_path), pace=0)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious, 21 bytes...")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    a = env.target_path(DEMO_TARGETS[0])
    b = env.target_path(DEMO_TARGETS[1])
    for link, to in ((a, victim), (b, fifo)):
        link.unlink(missing_ok=True)
        link.symlink_to(to)
    disks = {d.name: d for d in Session(env).scan_disks()}
    assert victim.read_bytes() == b"precious, 21 bytes..."
    for t, path in ((DEMO_TARGETS[0], a), (DEMO_TARGETS[1], b)):
        assert path.is_file() and not path.is_symlink()
        assert disks[t.name].size_bytes == t.size_bytes
