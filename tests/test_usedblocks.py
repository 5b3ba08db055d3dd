"""Used-block maps from partclone's domain mode, checked on real filesystems.

A map is complete when a copy holding only the mapped bytes (every other byte random)
passes the filesystem's own check and holds the same files.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rescueui.core import usedblocks
from rescueui.core.errors import CancelledError, CaptureError
from rescueui.core.usedblocks import (
    AllBlocks,
    MapError,
    UsedMap,
    parse_map,
    partition_device,
    read_used_map,
    used_map_tool,
)
from tests import fsfixtures as fx
from tests.fsfixtures import FsImage, MiB

SIZE = 160 * MiB


def need_tools(fs: str) -> None:
    for name in (used_map_tool(fx.BLKID_TYPE.get(fs, fs)) or "partclone", *fx.TOOLS[fs]):
        if fx.which(name) is None:
            pytest.skip(f"{name} is not installed (see .ci/packages.txt)")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("usedblocks")


@pytest.fixture(scope="module")
def noise(work: Path) -> tuple[Path, Path]:
    """Two different random files: old data under the filesystems, and under the copies."""
    return fx.noise_file(work / "noise-a", SIZE), fx.noise_file(work / "noise-b", SIZE)


@pytest.fixture(scope="module")
def content(work: Path) -> Path:
    if not fx.STDLIB.is_dir():
        pytest.skip(f"{fx.STDLIB} (the files copied in) is missing")
    return fx.content_tree(work / "content")


@pytest.fixture(scope="module")
def images(
    work: Path, noise: tuple[Path, Path], content: Path
) -> Iterator[Callable[[str], FsImage]]:
    """Builds each filesystem image once per module, on first use."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts filesystems on loop devices")
    built: dict[str, FsImage] = {}

    def get(fs: str) -> FsImage:
        need_tools(fs)
        if fs not in built:
            built[fs] = fx.make_image(fs, work / f"{fs}.img", SIZE, content, noise[0])
        return built[fs]

    yield get


def assert_complete(
    image: Path, fs: str, m: UsedMap, expected: dict[str, str], noise: Path, tmp: Path
) -> None:
    """Only the mapped bytes, the rest random: the filesystem checks clean, same files."""
    copy = tmp / f"{fs}-mapped-only.img"
    fx.restore_used(image, copy, m.runs, m.size, noise)
    fx.check_clean(copy, fs)
    assert fx.tree_of(copy, fs, tmp) == expected
    copy.unlink()


# --------------------------------------------------------------------------- clean filesystems


@pytest.mark.root
@pytest.mark.parametrize("fs", fx.FILESYSTEMS)
def test_map_covers_everything_the_filesystem_needs(
    fs: str, images: Callable[[str], FsImage], noise: tuple[Path, Path], tmp_path: Path
) -> None:
    img = images(fs)
    started = time.monotonic()
    m = read_used_map(str(img.path), img.fs_type, img.size)
    took = time.monotonic() - started
    assert isinstance(m, UsedMap), m
    assert (m.fs_type, m.tool, m.size, m.clean, m.note) == (
        img.fs_type,
        used_map_tool(img.fs_type),
        img.size,
        True,
        "",
    )
    content_bytes = 2 * MiB
    assert content_bytes < m.used_bytes < img.size // 4
    assert m.used_bytes < img.junk
    assert took < 30
    assert_complete(img.path, fs, m, img.tree, noise[1], tmp_path)


@pytest.mark.root
def test_map_through_a_read_only_partition_device(
    images: Callable[[str], FsImage], tmp_path: Path
) -> None:
    """A partition inside a disk file, mapped through partition_device; detached after."""
    img = images("ext4")
    start = 1 * MiB
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(start + img.size + MiB)
    fx.run(
        ["sfdisk", "--quiet", disk],
        input=f"label: gpt\nstart={start // 512}, size={img.size // 512}, type=linux\n",
    )
    with open(img.path, "rb") as fin, open(disk, "r+b") as fout:
        fout.seek(start)
        fout.write(fin.read())
    direct = read_used_map(str(img.path), "ext4", img.size)
    with partition_device(str(disk), start, img.size) as dev:
        assert stat.S_ISBLK(os.stat(dev).st_mode)
        assert fx.run(["blkid", "-o", "value", "-s", "TYPE", dev]).stdout.strip() == "ext4"
        assert fx.run(["blockdev", "--getro", dev]).stdout.strip() == "1"
        assert fx.run(["blockdev", "--getsize64", dev]).stdout.strip() == str(img.size)
        m = read_used_map(dev, "ext4", img.size)
        assert fx.loop_devices_of(disk) == [dev]
    assert isinstance(m, UsedMap) and isinstance(direct, UsedMap)
    assert m.runs == direct.runs
    assert fx.loop_devices_of(disk) == []


@pytest.mark.root
def test_partition_device_detaches_when_the_body_fails(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(8 * MiB)
    with pytest.raises(RuntimeError, match="boom"):
        with partition_device(str(disk), MiB, 4 * MiB):
            assert len(fx.loop_devices_of(disk)) == 1
            raise RuntimeError("boom")
    assert fx.loop_devices_of(disk) == []


def test_partition_device_of_a_missing_source(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.img"
    with pytest.raises(CaptureError, match="read-only device for bytes"):
        with partition_device(str(missing), 0, MiB):
            pass


# --------------------------------------------------------------------------- unclean filesystems


@pytest.mark.root
@pytest.mark.parametrize("fs", ["ext4", "ext2"])
def test_unclean_ext_is_mapped_after_e2fsck_on_a_metadata_copy(
    fs: str,
    images: Callable[[str], FsImage],
    noise: tuple[Path, Path],
    content: Path,
    tmp_path: Path,
) -> None:
    """A crash copy (taken while mounted, fsync'd files added): ext4 needs its journal
    replayed, ext2 is marked not clean. partclone alone refuses both (stale counts)."""
    img = images(fs)
    base = tmp_path / "base.img"
    fx.copy_bytes(img.path, base, img.size)
    crashed = tmp_path / "crashed.img"
    fx.snapshot_while_mounted(fs, base, crashed, content / "json")
    m = read_used_map(str(crashed), fs, img.size)
    assert isinstance(m, UsedMap), m
    assert not m.clean
    assert m.tool == f"e2image+e2fsck+partclone.{fs}"
    if fs == "ext4":
        assert m.note.startswith("the ext4 journal needs recovery")
    else:
        assert m.note.startswith("the ext2 filesystem is marked 'not clean'")
    assert m.used_bytes < img.size // 4
    # the truth: the crash copy itself, repaired (journal replayed) by e2fsck
    expected_img = tmp_path / "expected.img"
    fx.copy_bytes(crashed, expected_img, img.size)
    subprocess.run(["e2fsck", "-fy", str(expected_img)], capture_output=True, check=False)
    expected = fx.tree_of(expected_img, fs, tmp_path)
    assert {k for k in expected if k.startswith("late/")}, "the late files are missing"
    copy = tmp_path / "mapped-only.img"
    fx.restore_used(crashed, copy, m.runs, m.size, noise[1])
    r = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    fx.check_clean(copy, fs)
    assert fx.tree_of(copy, fs, tmp_path) == expected


@pytest.mark.root
@pytest.mark.parametrize("fs", ["xfs", "btrfs"])
def test_unreplayed_xfs_log_or_btrfs_log_tree_is_captured_whole(
    fs: str, images: Callable[[str], FsImage], content: Path, tmp_path: Path
) -> None:
    """partclone maps such a filesystem as it is on disk, which misses what the log still
    has to replay (a restore from it lost file data): every byte is captured."""
    img = images(fs)
    crashed = tmp_path / "crashed.img"
    for attempt in range(3):
        base = tmp_path / f"base-{attempt}.img"
        fx.copy_bytes(img.path, base, img.size)
        fx.snapshot_while_mounted(fs, base, crashed, content / "json")
        base.unlink()
        # a btrfs transaction commit (every 30 s, or a sync() elsewhere) drops the log tree
        if fs != "btrfs" or fx.btrfs_log_root(crashed):
            break
    else:
        pytest.skip("btrfs committed its transaction before the crash copy, three times")
    m = read_used_map(str(crashed), fs, img.size)
    assert isinstance(m, AllBlocks), m
    word = "xfs log" if fs == "xfs" else "btrfs log tree"
    assert m.reason.startswith(f"the {word} was not replayed"), m.reason
    assert m.reason.endswith("captured whole")
    assert m.unclean  # the capture warns


@pytest.mark.root
def test_dirty_ntfs_is_mapped_with_ignore_check(
    images: Callable[[str], FsImage], noise: tuple[Path, Path], tmp_path: Path
) -> None:
    img = images("ntfs")
    dirty = tmp_path / "dirty.img"
    fx.copy_bytes(img.path, dirty, img.size)
    fx.run(["ntfsfix", dirty])  # without -d it marks the volume for a check at next mount
    m = read_used_map(str(dirty), "ntfs", img.size)
    assert isinstance(m, UsedMap), m
    assert not m.clean
    assert m.tool == "partclone.ntfs"
    assert m.note.startswith("partclone.ntfs reports: NTFS Volume")
    assert "scheduled for a check" in m.note
    copy = tmp_path / "mapped-only.img"
    fx.restore_used(dirty, copy, m.runs, m.size, noise[1])
    assert fx.tree_of(copy, "ntfs", tmp_path) == img.tree
    fx.run(["ntfsfix", "-d", copy])
    fx.check_clean(copy, "ntfs")


@pytest.mark.root
def test_dirty_fat_is_captured_whole(images: Callable[[str], FsImage], tmp_path: Path) -> None:
    """partclone.fat 0.3.23 refuses a set dirty bit even with -I."""
    img = images("fat32")
    dirty = tmp_path / "dirty.img"
    fx.copy_bytes(img.path, dirty, img.size)
    fx.set_fat_dirty(dirty)
    m = read_used_map(str(dirty), "vfat", img.size)
    assert m == AllBlocks(
        "partclone.fat could not read the filesystem: Filesystem isn't in valid state. "
        "May be it is not cleanly unmounted.",
        unclean=True,  # the capture warns
    )


@pytest.mark.parametrize(
    ("fs_type", "reason"),
    [
        ("ext4", "dumpe2fs could not read the filesystem: Bad magic number in super-block"),
        ("xfs", "xfs_db could not read the filesystem"),
        ("btrfs", "btrfs could not read the superblock: ERROR: bad magic on superblock"),
    ],
)
def test_no_filesystem_where_blkid_said_one_is_captured_whole(
    fs_type: str, reason: str, tmp_path: Path
) -> None:
    need_tools(fs_type)
    junk = fx.noise_file(tmp_path / "junk.img", 16 * MiB)
    m = read_used_map(str(junk), fs_type, 16 * MiB)
    assert isinstance(m, AllBlocks), m
    assert m.reason.startswith(reason), m.reason


# --------------------------------------------------------------------------- what is not mapped


@pytest.mark.parametrize(
    ("fs_type", "reason"),
    [
        ("crypto_LUKS", "a LUKS container: captured whole, never decrypted"),
        ("LVM2_member", "an LVM physical volume: captured whole"),
        (None, "no filesystem recognised"),
        ("zfs_member", "no used-block map for 'zfs_member' filesystems"),
        ("swap", "no used-block map for 'swap' filesystems"),
    ],
)
def test_containers_and_unknown_types_are_captured_whole(fs_type: str | None, reason: str) -> None:
    assert read_used_map("/nonexistent", fs_type, MiB) == AllBlocks(reason)


@pytest.mark.skipif(not fx.which("cryptsetup"), reason="cryptsetup is not installed")
def test_a_real_luks_container_is_captured_whole(tmp_path: Path) -> None:
    luks = tmp_path / "luks.img"
    with open(luks, "wb") as f:
        f.truncate(32 * MiB)
    fx.run(
        ["cryptsetup", "luksFormat", "--batch-mode", "--pbkdf", "pbkdf2", luks, "-"],
        input="secret",
    )
    fs_type = fx.run(["blkid", "-p", "-o", "value", "-s", "TYPE", luks]).stdout.strip()
    assert fs_type == "crypto_LUKS"
    assert read_used_map(str(luks), fs_type, 32 * MiB) == AllBlocks(
        "a LUKS container: captured whole, never decrypted"
    )


def test_used_map_tool() -> None:
    assert used_map_tool("ext3") == "partclone.ext3"
    assert used_map_tool("vfat") == "partclone.fat"
    assert used_map_tool("ntfs") == "partclone.ntfs"
    assert used_map_tool("swap") is None
    assert used_map_tool(None) is None


def test_a_missing_partclone_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usedblocks, "find_tool", lambda name: None)
    assert read_used_map("/dev/null", "exfat", MiB) == AllBlocks("partclone.exfat is not installed")


# --------------------------------------------------------------------------- cancel, timeout


@pytest.mark.root
def test_cancel_set_before_the_map_is_read(images: Callable[[str], FsImage]) -> None:
    img = images("ext4")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        read_used_map(str(img.path), "ext4", img.size, cancel=cancel)
    assert fx.processes_with(str(img.path)) == []


@pytest.fixture
def slow_partclone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """partclone.exfat replaced by a program that sleeps: returns its unique argument."""
    marker = f"{time.time_ns() % 10**9}.5"
    script = tmp_path / "partclone.exfat"
    script.write_text(f"#!/bin/sh\nexec sleep {marker}\n")
    script.chmod(0o755)
    real = usedblocks.find_tool
    monkeypatch.setattr(
        usedblocks,
        "find_tool",
        lambda name: str(script) if name.startswith("partclone") else real(name),
    )
    return marker


def test_cancel_kills_the_running_tool(slow_partclone: str) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(CancelledError, match="cancelled"):
            read_used_map("/dev/null", "exfat", MiB, cancel=cancel)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5
    assert fx.processes_with(slow_partclone) == []


def test_timeout_kills_the_tool_and_captures_whole(slow_partclone: str) -> None:
    m = read_used_map("/dev/null", "exfat", MiB, timeout=0.5)
    assert m == AllBlocks("partclone.exfat did not finish within 0.5 s")
    assert fx.processes_with(slow_partclone) == []


# --------------------------------------------------------------------------- the mapfile


def write_map(path: Path, lines: list[str]) -> Path:
    path.write_text(
        "# Domain logfile created by partclone\n# current_pos  current_status\n"
        + "\n".join(lines)
        + "\n"
    )
    return path


def test_parse_map_keeps_used_runs_merged_and_clipped(tmp_path: Path) -> None:
    mapfile = write_map(
        tmp_path / "m",
        [
            "0x00003000     ?",
            "#      pos        size  status",
            "0x00000000  0x00000400  +",
            "0x00000400  0x00000400  +",  # adjacent: merged
            "0x00000800  0x00000800  ?",
            "0x00001000  0x00000000  +",  # empty: dropped
            "4096  0x00000800  +",  # decimal is allowed
            "0x00001800  0x00001000  -",
            "0x00002800  0x00000800  +",  # past size 0x2C00: clipped
        ],
    )
    runs, extent = parse_map(mapfile, 0x2C00)
    assert runs == ((0, 0x800), (0x1000, 0x800), (0x2800, 0x400))
    assert extent == 0x3000


@pytest.mark.parametrize(
    "lines",
    [
        ["0x1000 ?", "0x0 0x1000 +", "rm -rf /"],
        ["0x1000 ?", "0x0 0x1000 x"],
        ["0x1000 ?", "0x0 0x1000"],
        ["0x1000 ?", "0x800 0x800 +", "0x0 0x800 +"],  # goes back
        ["0x1000 ?", "0x0 0x1000 + extra"],
        ["0x1000 ?", "0x0 0x" + "f" * 17 + " +"],
        ["0x1000 ?", "0x0 " + "1" * 300 + " +"],
        ["0x0 0x1000 +"],  # no status line: this is taken as one, then fails
        [],
    ],
)
def test_parse_map_rejects_garbage(tmp_path: Path, lines: list[str]) -> None:
    with pytest.raises(MapError):
        parse_map(write_map(tmp_path / "m", lines), 0x1000)


def test_a_garbage_map_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "partclone.exfat"
    script.write_text(
        '#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && out="$2"; shift; done\n'
        'printf "0x100 ?\\n0x0 0x100 +\\nnot a map line\\n" > "$out"\n'
    )
    script.chmod(0o755)
    monkeypatch.setattr(usedblocks, "find_tool", lambda name: str(script))
    m = read_used_map("/dev/null", "exfat", MiB)
    assert m == AllBlocks(
        "partclone.exfat wrote a map that cannot be read: line 3 is not a block line: "
        "'not a map line'"
    )


def test_many_runs_are_joined_across_small_gaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usedblocks, "MAX_RUNS", 100)
    lines = ["0x100000 ?"]
    for i in range(256):
        lines += [f"0x{i * 4096:X} 0x800 +", f"0x{i * 4096 + 0x800:X} 0x800 ?"]
    runs, _ = parse_map(write_map(tmp_path / "m", lines), 0x100000)
    assert len(runs) <= 100
    covered = {b for off, n in runs for b in range(off // 0x800, (off + n) // 0x800)}
    assert all(2 * i in covered for i in range(256))  # every used block is still in


# --------------------------------------------------------------------------- used_in


def brute_used_in(runs: tuple[tuple[int, int], ...], start: int, end: int) -> list[tuple[int, int]]:
    out = []
    for off, n in runs:
        s, e = max(off, start), min(off + n, end)
        if e > s:
            out.append((s, e - s))
    return out


def test_used_in_clips_runs_to_the_window() -> None:
    runs = ((0, 10), (20, 5), (30, 20), (100, 1))
    m = UsedMap("ext4", "partclone.ext4", 200, runs, clean=True)
    assert m.used_bytes == 36
    for start in range(0, 110, 3):
        for end in range(start, 120, 7):
            assert m.used_in(start, end) == brute_used_in(runs, start, end), (start, end)
    assert m.used_in(10, 20) == []
    assert m.used_in(35, 40) == [(35, 5)]
    assert m.used_in(0, 200) == list(runs)


def test_used_in_is_fast_on_a_large_map() -> None:
    chunk = 4 * MiB
    runs = tuple((i * 8192, 4096) for i in range(200_000))
    size = 200_000 * 8192
    m = UsedMap("ext4", "partclone.ext4", size, runs, clean=True)
    started = time.monotonic()
    total = sum(n for c in range(0, size, chunk) for _, n in m.used_in(c, c + chunk))
    assert total == m.used_bytes
    assert time.monotonic() - started < 2
    assert m.used_in(8192 * 1000 + 100, 8192 * 1000 + 200) == [(8192 * 1000 + 100, 100)]


@pytest.mark.parametrize(
    "runs",
    [((10, 5), (0, 5)), ((0, 10), (5, 10)), ((0, 10), (10, 5)), ((0, 0),), ((90, 20),), ((-1, 5),)],
)
def test_used_map_rejects_runs_that_are_not_sorted_merged_and_in_range(
    runs: tuple[tuple[int, int], ...],
) -> None:
    with pytest.raises(ValueError):
        UsedMap("ext4", "partclone.ext4", 100, runs, clean=True)
