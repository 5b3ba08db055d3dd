"""Used-block capture on every filesystem it maps, on one real GPT disk (issue 11, tests):
xfs, btrfs, exFAT, NTFS and ext2 whose free space holds deleted random data on a disk that
held random data before; the image is compared with ``partclone.<fs> -c | zstd -3`` of the
same partition, and the restore onto a random-filled disk with fsck, blkid and the files.
Also: a LUKS partition is captured whole, and a dirty ext4 (journal needing replay) gives
the warning, is captured whole when asked, and restores to an ext4 e2fsck replays.

ext4, vfat and swap are covered by tests/test_usedblock_capture.py."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescueui.core.capture import capture
from rescueui.core.image import Image
from tests import fsfixtures as fx
from tests.loopdisk import LoopFactory, have_root, udev_running

pytestmark = pytest.mark.skipif(
    not (have_root() and udev_running()),
    reason="needs root and a running udev (loop devices, partitions, mounts)",
)

MiB = 1024 * 1024

# name: (partition number, size in MiB, label, mkfs command without label and device)
FILESYSTEMS: dict[str, tuple[int, int, str, list[str]]] = {
    "xfs": (1, 300, "xfsdata", ["mkfs.xfs", "-q", "-f", "-K", "-L"]),
    "btrfs": (2, 160, "btrfs data", ["mkfs.btrfs", "-q", "-f", "-K", "-L"]),
    "exfat": (3, 128, "EXFATDATA", ["mkfs.exfat", "-L"]),
    "ntfs": (4, 128, "Données", ["mkfs.ntfs", "-Q", "-F", "-L"]),
    "ext2": (5, 128, "ext2 data", ["mkfs.ext2", "-q", "-F", "-E", "nodiscard", "-L"]),
}
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MSDATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
TABLE = "label: gpt\n" + "".join(
    ("start=2048, " if n == 1 else "")
    + f'size={mib * 2048}, type={MSDATA if fs in ("exfat", "ntfs") else LINUX}, name="{fs}"\n'
    for fs, (n, mib, _label, _mkfs) in FILESYSTEMS.items()
)
DISK_MIB = 2 + sum(mib for _n, mib, _l, _m in FILESYSTEMS.values())

FSCK = {
    "xfs": ["xfs_repair", "-n"],
    "btrfs": ["btrfs", "check", "--readonly"],
    "exfat": ["fsck.exfat", "-n"],
    "ntfs": ["ntfsfix", "-n"],
    "ext2": ["e2fsck", "-fn"],
}
"""A read-only check of a partition: exit status 0 means clean."""


def _missing(fs: str) -> str | None:
    mkfs = FILESYSTEMS[fs][3][0]
    mount = {"exfat": "mount.exfat-fuse", "ntfs": "ntfs-3g"}.get(fs, "mount")
    for name in (mkfs, FSCK[fs][0], mount, f"partclone.{fs}", "zstd", "blkid"):
        if fx.which(name) is None:
            return name
    return None


# --------------------------------------------------------------------------- helpers


def _wait_no_process_with(marker: str) -> None:
    """A FUSE daemon (exfat-fuse, ntfs-3g) may still hold the device just after umount."""
    for _ in range(100):
        if not fx.processes_with(marker):
            return
        time.sleep(0.05)
    raise AssertionError(f"a process still uses {marker}: {fx.processes_with(marker)}")


@contextlib.contextmanager
def _mounted(dev: str, fs: str, where: Path, *, read_only: bool) -> Iterator[Path]:
    """``dev`` mounted at ``where`` (exFAT and NTFS with FUSE), unmounted on exit; checks
    that the mount really is of ``dev`` (two btrfs with one fsid can be confused)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = ["-o", "ro"] if read_only else []
    if fs == "exfat":
        fx.run(["mount.exfat-fuse", *opts, dev, where])
    elif fs == "ntfs":
        fx.run(["ntfs-3g", *opts, dev, where])
    else:
        fx.run(["mount", "-t", fs, *opts, dev, where])
    try:
        source = fx.run(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", where]).stdout.strip()
        assert source == dev, f"{where} is a mount of {source}, not of {dev}"
        yield where
    finally:
        fx.umount(where)
        if fs in ("exfat", "ntfs"):
            _wait_no_process_with(dev)


def _partition_sha256(dev: str) -> str:
    h = hashlib.sha256()
    with open(dev, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def _zstd_dc_sha256(path: Path) -> tuple[str, int]:
    """sha256 and length of what ``zstd -dc`` yields for ``path``."""
    proc = subprocess.Popen(["zstd", "-q", "-dc", str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    h, n = hashlib.sha256(), 0
    while block := proc.stdout.read(8 * MiB):
        h.update(block)
        n += len(block)
    assert proc.wait() == 0
    return h.hexdigest(), n


def _content(dest: Path) -> Path:
    """Real files (part of the Python standard library), an incompressible file, and names
    with spaces and UTF-8."""
    fx.content_tree(dest)
    odd = dest / "dossier avec espaces"
    odd.mkdir()
    (odd / "Übersicht – été ✓.txt").write_text("naïve café, 日本語のテキスト\n" * 200)
    (odd / "日本語 ファイル.bin").write_bytes(os.urandom(64 * 1024))
    (dest / "no ext").write_bytes(b"\x00\x01 plain bytes " * 1000)
    return dest


def _dirty_free_space(where: Path, size: int) -> None:
    """Random data written into the filesystem (out to the disk) and deleted again."""
    junk = where / "junk.bin"
    with open(junk, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
    fx.run(["sync", "-f", where])
    junk.unlink()
    fx.run(["sync", "-f", where])


def _copy_in(content: Path, where: Path) -> None:
    for p in sorted(content.iterdir()):
        if p.is_dir():
            shutil.copytree(p, where / p.name)
        else:
            shutil.copyfile(p, where / p.name)
    fx.run(["sync", "-f", where])


@pytest.fixture(scope="module")
def private_lock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The module's jobs use their own writer lock (the autouse one is per test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESCUEUI_LOCK", str(tmp_path_factory.mktemp("lock") / "rescueui.lock"))
        yield


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopFactory]:
    f = LoopFactory(tmp_path_factory.mktemp("fsdisks"))
    try:
        yield f
    finally:
        f.cleanup()


# --------------------------------------------------------------------------- every filesystem


@pytest.fixture(scope="module")
def disks(
    factory: LoopFactory, private_lock: None, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """One GPT disk that held random data, a partition per filesystem: each made, its free
    space dirtied (a random file written and deleted), real files copied in. Captured once
    (used blocks), restored once onto a random-filled disk of the same size."""
    if not fx.STDLIB.is_dir():
        pytest.skip(f"{fx.STDLIB} (the files copied in) is missing")
    tmp = tmp_path_factory.mktemp("fs")
    content = _content(tmp / "content")
    expected = fx.file_hashes(content)
    disk = factory.create(DISK_MIB, table=TABLE, fill="random")
    built: dict[str, dict] = {}
    for fs, (n, mib, label, mkfs) in FILESYSTEMS.items():
        if _missing(fs):
            continue
        dev = disk.part(n)
        fx.run([*mkfs, label, dev])
        junk = mib * MiB * 2 // 5  # a small btrfs has about half of its size for data
        with _mounted(dev, fs, tmp / f"mnt-{fs}", read_only=False) as where:
            _dirty_free_space(where, junk)
            _copy_in(content, where)
        with _mounted(dev, fs, tmp / f"ro-{fs}", read_only=True) as where:
            tree = fx.file_hashes(where)
        assert tree == expected, f"{fs}: the files copied in do not read back"
        built[fs] = {
            "n": n,
            "dev": dev,
            "size": mib * MiB,
            "junk": junk,
            "ids": fx.blkid_ids(dev),
            "tree": tree,
            "partclone": fx.partclone_zstd_size(dev, fs, tmp / f"pc-{fs}.zst"),
        }
    image = tmp / "image"
    started = time.monotonic()
    cap = capture(disk.path, image)
    capture_s = time.monotonic() - started
    started = time.monotonic()
    target, rep = fx.restore_onto(factory, image, DISK_MIB)
    restore_s = time.monotonic() - started
    return {
        "disk": disk,
        "target": target,
        "image": image,
        "capture": cap,
        "restore": rep,
        "fs": built,
        "tmp": tmp,
        "seconds": (capture_s, restore_s),
    }


def _fs(disks: dict, fs: str) -> dict:
    if fs not in disks["fs"]:
        pytest.skip(f"{_missing(fs)} is not installed (see .ci/packages.txt)")
    return disks["fs"][fs]


def test_the_disk_is_captured_and_restored(disks: dict) -> None:
    cap, rep = disks["capture"], disks["restore"]
    assert cap.outcome == "success" and cap.warnings == []
    assert rep.outcome == "success", rep.error
    # every stream was read back after it was written
    assert [s["status"] for s in rep.streams] == ["written and verified"] * len(rep.streams)
    assert len(rep.streams) >= len(disks["fs"]) and "verify" in rep.phases
    unused = rep.details["unused_space"]
    assert unused["zeroed"] is False and unused["left_bytes"] > 0
    # more than half of each filesystem is free (and held deleted random data): left alone
    assert unused["left_bytes"] > DISK_MIB * MiB // 2
    # progress counted the bytes read: the used ones, not the disk (nor the deleted data)
    assert cap.bytes_done < DISK_MIB * MiB // 4


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_image_holds_only_the_used_data(disks: dict, fs: str) -> None:
    src = _fs(disks, fs)
    s = Image.open(disks["image"]).manifest.partition_stream(src["n"])
    assert s is not None
    assert s.fs_type == src["ids"]["TYPE"] and s.fs_uuid == src["ids"]["UUID"]
    assert s.used_map == f"partclone.{fs}" and s.all_blocks is None
    # the deleted random file is neither read nor stored
    assert s.used_bytes is not None and s.used_bytes < src["junk"]
    assert s.unused_chunks > 0
    assert s.compressed_bytes < src["junk"] // 2
    # about what Clonezilla stores for it
    assert s.compressed_bytes <= 1.10 * src["partclone"], (s.compressed_bytes, src["partclone"])
    notes = "\n".join(disks["capture"].notes)
    assert f"p{src['n']} {src['ids']['TYPE']}:" in notes


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_restored_filesystem_is_clean_and_the_same(disks: dict, fs: str) -> None:
    src = _fs(disks, fs)
    dev = disks["target"].part(src["n"])
    fx.run([*FSCK[fs], dev])
    ids = fx.blkid_ids(dev)
    assert set(ids) == {"TYPE", "UUID", "LABEL"}, ids
    assert ids == src["ids"]
    with _mounted(dev, fs, disks["tmp"] / f"restored-{fs}", read_only=True) as where:
        assert fx.file_hashes(where) == src["tree"]


# --------------------------------------------------------------------------- LUKS


LUKS_TABLE = f'label: gpt\nstart=2048, size={32 * 2048}, type={LINUX}, name="crypt"\n'


def test_a_luks_partition_is_captured_whole(
    loops: LoopFactory, tmp_path: Path, private_lock: None
) -> None:
    if fx.which("cryptsetup") is None:
        pytest.skip("cryptsetup is not installed (cryptsetup-bin, see .ci/packages.txt)")
    disk = loops.create(36, table=LUKS_TABLE, fill="random")
    fx.run(
        [
            "cryptsetup",
            "luksFormat",
            "--type",
            "luks2",
            "-q",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file=-",
            disk.part(1),
        ],
        input="not a secret",
    )
    assert fx.blkid_ids(disk.part(1))["TYPE"] == "crypto_LUKS"
    report = capture(disk.path, tmp_path / "image")
    s = Image.open(tmp_path / "image").manifest.partition_stream(1)
    assert s is not None
    assert s.used_bytes is None and s.used_map is None
    assert s.all_blocks is not None and "LUKS" in s.all_blocks
    assert s.unused_chunks == 0
    assert any(n.startswith("p1 crypto_LUKS:") for n in report.notes), report.notes
    # every byte of it: the LUKS header and the (random) encrypted area
    digest, length = _zstd_dc_sha256(tmp_path / "image" / s.data_file)
    assert length == 32 * MiB
    assert digest == _partition_sha256(disk.part(1))


# --------------------------------------------------------------------------- dirty ext4


DIRTY_MIB = 64
DIRTY_TABLE = f'label: gpt\nstart=2048, size={DIRTY_MIB * 2048}, type={LINUX}, name="root"\n'


@pytest.fixture(scope="module")
def dirty_ext4(
    factory: LoopFactory, private_lock: None, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """A disk whose ext4 was copied while mounted (a crash): files fsync'd after the mount
    are in its journal only, which needs a replay."""
    tmp_path = tmp_path_factory.mktemp("dirty")
    for name in ("mkfs.ext4", "e2fsck", "dumpe2fs", "partclone.ext4", "zstd"):
        if fx.which(name) is None:
            pytest.skip(f"{name} is not installed")
    if not fx.STDLIB.is_dir():
        pytest.skip(f"{fx.STDLIB} (the files copied in) is missing")
    content = _content(tmp_path / "content")
    noise = fx.noise_file(tmp_path / "noise", DIRTY_MIB * MiB)
    img = fx.make_image(
        "ext4", tmp_path / "ext4.img", DIRTY_MIB * MiB, content, noise, junk=16 * MiB
    )
    crashed = tmp_path / "crashed.img"
    fx.snapshot_while_mounted("ext4", img.path, crashed, content / "json")
    assert "needs_recovery" in fx.run(["dumpe2fs", "-h", crashed]).stdout
    disk = factory.create(DIRTY_MIB + 2, table=DIRTY_TABLE, fill="random")
    with open(crashed, "rb") as fin, open(disk.part(1), "r+b") as fout:
        shutil.copyfileobj(fin, fout, 8 * MiB)
        fout.flush()
        os.fsync(fout.fileno())
    late = {f"late/{k}": v for k, v in fx.file_hashes(content / "json").items()}
    assert late
    return {"disk": disk, "expected": {**img.tree, **late}, "late": late}


def test_a_dirty_ext4_gives_the_warning_and_restores_to_a_replayable_ext4(
    dirty_ext4: dict, loops: LoopFactory, tmp_path: Path
) -> None:
    disk = dirty_ext4["disk"]
    image = tmp_path / "used"
    report = capture(disk.path, image)
    assert report.outcome == "success"
    lines = [w for w in report.warnings if "p1" in w and "not cleanly unmounted" in w]
    assert len(lines) == 1, report.warnings
    assert "journal needs recovery" in lines[0]
    m = Image.open(image).manifest
    assert [w for w in m.warnings if "p1" in w and "not cleanly unmounted" in w] == lines
    s = m.partition_stream(1)
    assert s is not None and s.used_bytes is not None and s.used_map is not None
    assert s.used_bytes < DIRTY_MIB * MiB // 2  # the current state's used blocks, no fsck

    # the restore writes the filesystem as it was: its journal still needs the replay
    target, rep = fx.restore_onto(loops, image, DIRTY_MIB + 2)
    assert rep.outcome == "success", rep.error
    dev = target.part(1)
    assert "needs_recovery" in fx.run(["dumpe2fs", "-h", dev]).stdout
    r = subprocess.run(["e2fsck", "-fy", dev], capture_output=True, text=True, check=False)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    fx.run(["e2fsck", "-fn", dev])
    with _mounted(dev, "ext4", tmp_path / "restored", read_only=True) as where:
        tree = fx.file_hashes(where)
    assert tree == dirty_ext4["expected"]


def test_a_dirty_ext4_captured_with_every_byte(dirty_ext4: dict, tmp_path: Path) -> None:
    disk = dirty_ext4["disk"]
    image = tmp_path / "all"
    report = capture(disk.path, image, all_blocks=True)
    assert report.outcome == "success"
    s = Image.open(image).manifest.partition_stream(1)
    assert s is not None
    assert s.used_bytes is None and s.unused_chunks == 0
    assert s.all_blocks is not None and "asked" in s.all_blocks
    digest, length = _zstd_dc_sha256(image / s.data_file)
    assert length == DIRTY_MIB * MiB
    assert digest == _partition_sha256(disk.part(1))
