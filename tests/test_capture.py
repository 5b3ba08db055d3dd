"""Capture: real disks (loop devices) and disk image files, failures that leave no good-looking image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rescueui.core.capture import capture, plan_streams
from rescueui.core.errors import CancelledError, CaptureError, ImageError
from rescueui.core.image import Image
from rescueui.core.progress import Progress
from tests.imagefixtures import STDLIB, make_disk, reassemble, run
from tests.loopdisk import LoopFactory, mkfs_ext4, mkfs_vfat

MiB = 1024 * 1024
GPT = """label: gpt
start=2048, size=24576, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"
start=28672, size=73728, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
"""


def _read_dev(path: str, size: int | None = None) -> bytes:
    with open(path, "rb") as f:
        return f.read() if size is None else f.read(size)


def _zstd_dc(path: Path) -> bytes:
    return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout


def _random_file(path: Path, mib: int, extra: int = 0) -> Path:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
        f.write(os.urandom(extra))
    return path


# ---- disk image files (no root) -------------------------------------------------------
def test_capture_gpt_file_reassembles_bit_identical(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "src")
    events: list[Progress] = []
    report = capture(disk.path, tmp_path / "img", progress=events.append)
    # progress counts the bytes read: with the filesystems' used-block maps (root: they
    # need a loop device) fewer than the disk
    assert report.outcome == "success" and report.bytes_done == report.bytes_total
    assert report.bytes_total <= disk.size
    assert report.bytes_stored < disk.size
    assert [s["name"] for s in report.streams] == ["head", "p1", f"gap-{13 * MiB}", "p2", "tail"]
    assert all(len(s["root_blake3"]) == 64 for s in report.streams)
    # progress by bytes, monotonic, ending at the total, with chunk events
    done = [e.bytes_done for e in events if e.last_chunk is not None]
    assert done == sorted(done) and done[-1] == report.bytes_total
    assert events[-1].bytes_total == report.bytes_total
    assert any(e.last_chunk.zero for e in events if e.last_chunk)
    # report files written next to the image
    jpath, tpath = (Path(p) for p in report.report_files)
    assert jpath.parent == tmp_path / "img" / "reports"
    assert json.loads(jpath.read_text())["outcome"] == "success"
    assert "SUCCESS" in tpath.read_text()
    out = tmp_path / "rebuilt"
    reassemble(tmp_path / "img", out, disk.size)
    assert out.read_bytes() == disk.path.read_bytes()


def test_capture_dos_with_logical_partition(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "src", label="dos")
    capture(disk.path, tmp_path / "img")
    with Image.open(tmp_path / "img") as im:
        names = [s.name for s in im.streams]
        # the extended partition is no stream; its EBR lies in the gap before p5
        assert names == ["head", "p1", f"gap-{13 * MiB}", "p5"]
        assert im.manifest.partition_table["label"] == "dos"
        assert im.extent_bytes == disk.parts[5][0] + disk.parts[5][1]
    assert _zstd_dc(tmp_path / "img" / "p5.zst") == disk.part_bytes(5)
    out = tmp_path / "rebuilt"
    reassemble(tmp_path / "img", out, disk.size)
    assert out.read_bytes() == disk.path.read_bytes()


def test_capture_disk_without_table_and_short_last_chunk(tmp_path: Path) -> None:
    src = _random_file(tmp_path / "raw.img", 9, extra=512)
    capture(src, tmp_path / "img", level=1)
    with Image.open(tmp_path / "img") as im:
        assert [s.name for s in im.streams] == ["disk"]
        s = im.streams[0]
        assert s.size_bytes == 9 * MiB + 512 and s.chunk_count == 3
        assert im.chunks(s)[-1].raw_length == MiB + 512
        assert im.manifest.partition_table is None
    assert _zstd_dc(tmp_path / "img" / "disk.zst") == src.read_bytes()


def test_capture_selected_partition_only(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "src", gap_junk=False)
    capture(disk.path, tmp_path / "img", partitions=[2])
    with Image.open(tmp_path / "img") as im:
        assert [s.name for s in im.streams] == ["p2"]
        assert not im.manifest.whole_disk
    with pytest.raises(CaptureError, match=r"no partition 7 \(it has: 1, 2\)"):
        capture(disk.path, tmp_path / "img7", partitions=[7])
    assert not (tmp_path / "img7").exists()


def test_plan_refuses_damaged_tables() -> None:
    table = {
        "label": "dos",
        "sectorsize": 512,
        "partitions": [
            {"node": "x1", "start": 2048, "size": 4096, "type": "83"},
            {"node": "x2", "start": 4096, "size": 4096, "type": "83"},
        ],
    }
    with pytest.raises(CaptureError, match="overlap"):
        plan_streams(table, 8 * MiB)
    with pytest.raises(CaptureError, match="beyond the end"):
        plan_streams(table, 3 * MiB)


def test_refuses_non_empty_folder_and_existing_image(tmp_path: Path) -> None:
    src = _random_file(tmp_path / "raw.img", 1)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(CaptureError, match="not empty") as exc:
        capture(src, busy)
    assert (busy / "notes.txt").read_text() == "keep me"
    assert exc.value.report.outcome == "failed"  # type: ignore[attr-defined]
    assert all(Path(p).exists() for p in exc.value.report.report_files)  # type: ignore[attr-defined]
    capture(src, tmp_path / "good")
    with pytest.raises(CaptureError, match="holds an image"):
        capture(src, tmp_path / "good")
    Image.open(tmp_path / "good").close()


def test_cancel_mid_capture_leaves_incomplete_folder_then_reuse(tmp_path: Path) -> None:
    src = _random_file(tmp_path / "raw.img", 48)
    cancel = threading.Event()
    seen: list[int] = []

    def progress(p: Progress) -> None:
        if p.last_chunk is not None:
            seen.append(p.last_chunk.index)
            if len(seen) == 3:
                cancel.set()

    dest = tmp_path / "img"
    with pytest.raises(CancelledError, match="cancelled") as exc:
        capture(src, dest, progress=progress, cancel=cancel)
    assert exc.value.report.outcome == "cancelled"  # type: ignore[attr-defined]
    assert 3 <= len(seen) < 12
    assert (dest / "INCOMPLETE").exists()
    with pytest.raises(ImageError, match="incomplete image"):
        Image.open(dest)
    # capturing again into the incomplete folder replaces it
    capture(src, dest)
    with Image.open(dest) as im:
        assert im.streams[0].size_bytes == 48 * MiB
    assert not (dest / "INCOMPLETE").exists()


def test_cli_capture_and_verify(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "src", gap_junk=False)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "rescueui"]
    r = subprocess.run(
        [*cmd, "capture", str(disk.path), str(tmp_path / "img"), "--level", "1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "SUCCESS" in r.stdout
    r = subprocess.run(
        [*cmd, "verify", str(tmp_path / "img")], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*cmd, "capture", str(disk.path), str(tmp_path / "img")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 1
    assert "holds an image" in r.stderr and "Choose a new or empty folder" in r.stderr


def test_memory_stays_bounded_on_a_large_sparse_disk(tmp_path: Path) -> None:
    src = tmp_path / "sparse.img"
    with open(src, "wb") as f:
        f.truncate(2048 * MiB)
        f.seek(1000 * MiB)
        f.write(os.urandom(64 * MiB))
    code = (
        "import resource,sys; from rescueui.core.capture import capture; "
        f"capture({str(src)!r}, {str(tmp_path / 'img')!r}); "
        # VmHWM, this process's own peak: ru_maxrss would carry over the parent's (pytest's)
        "print(next(int(x.split()[1]) for x in open('/proc/self/status') "
        "if x.startswith('VmHWM')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_kib = int(r.stdout.strip())
    assert peak_kib < 256 * 1024, f"peak RSS {peak_kib} KiB"


# ---- real loop disks (root) -----------------------------------------------------------
def _populated_loop(loops: LoopFactory, tmp_path: Path):  # type: ignore[no-untyped-def]
    disk = loops.create(64, table=GPT)
    mkfs_vfat(disk.part(1), "EFI")
    mkfs_ext4(disk.part(2), "root")
    run("mcopy", "-s", "-i", disk.part(1), STDLIB / "json", "::/")
    mnt = disk.mount(2, tmp_path / "mnt")
    for sub in ("email", "json", "logging"):
        run("cp", "-a", STDLIB / sub, mnt)
    run("umount", mnt)
    disk.mounts.remove(mnt)
    return disk


@pytest.mark.root
@pytest.mark.udev
def test_capture_loop_disk_gpt_ext4_vfat(loops: LoopFactory, tmp_path: Path) -> None:
    disk = _populated_loop(loops, tmp_path)
    report = capture(disk.path, tmp_path / "img")
    assert report.details["direct_io"] is True
    with Image.open(tmp_path / "img") as im:
        assert [s.name for s in im.streams] == ["head", "p1", "p2", "tail"]
        assert (im.stream("p1").fs_type, im.stream("p1").label) == ("vfat", "EFI")
        assert (im.stream("p2").fs_type, im.stream("p2").label) == ("ext4", "root")
        assert im.manifest.source_disk["path"] == disk.path
        assert im.manifest.source_disk["size_bytes"] == 64 * MiB
        assert im.manifest.source_disk["logical_sector_size"] == 512
        p2 = im.stream("p2")
        assert any(c.zero for c in im.chunks(p2)) and not all(c.zero for c in im.chunks(p2))
    assert _zstd_dc(tmp_path / "img" / "p1.zst") == _read_dev(disk.part(1))
    assert _zstd_dc(tmp_path / "img" / "p2.zst") == _read_dev(disk.part(2))
    out = tmp_path / "rebuilt"
    reassemble(tmp_path / "img", out, 64 * MiB)
    assert out.read_bytes() == _read_dev(disk.path)


@pytest.mark.root
@pytest.mark.udev
def test_mounted_read_write_source_refused_unless_allowed(
    loops: LoopFactory, tmp_path: Path
) -> None:
    disk = _populated_loop(loops, tmp_path)
    disk.mount(2, tmp_path / "rw")
    with pytest.raises(CaptureError, match="mounted read-write") as exc:
        capture(disk.path, tmp_path / "img")
    assert exc.value.action == "allow-mounted"  # the CLI renders it as --allow-mounted
    assert not (tmp_path / "img").exists()
    report = capture(disk.path, tmp_path / "img", allow_mounted_rw=True)
    assert report.warnings and "inconsistent" in report.warnings[0]
    with Image.open(tmp_path / "img") as im:
        assert im.manifest.warnings == report.warnings
        # in use while read: which blocks it uses may change, so every byte is captured
        for s in im.streams:
            if s.kind == "partition":
                assert s.used_bytes is None and "in use" in (s.all_blocks or ""), s
    assert "WARNING" in Path(report.report_files[1]).read_text()


@pytest.mark.root
@pytest.mark.udev
def test_mounted_read_only_source_is_fine(loops: LoopFactory, tmp_path: Path) -> None:
    disk = _populated_loop(loops, tmp_path)
    disk.mount(2, tmp_path / "ro", options="ro")
    report = capture(disk.path, tmp_path / "img")
    assert report.ok and not report.warnings


@pytest.mark.root
@pytest.mark.udev
def test_destination_on_the_source_disk_is_refused(loops: LoopFactory, tmp_path: Path) -> None:
    disk = _populated_loop(loops, tmp_path)
    mnt = disk.mount(2, tmp_path / "rw")
    with pytest.raises(CaptureError, match="on the disk being captured"):
        capture(disk.path, Path(mnt) / "img", allow_mounted_rw=True)
    assert not (Path(mnt) / "img").exists()


@pytest.mark.root
def test_full_destination_fails_cleanly(loops: LoopFactory, tmp_path: Path) -> None:
    src = _random_file(tmp_path / "raw.img", 24)
    small = loops.create(8)
    mkfs_ext4(small.path, "tiny")
    mnt = Path(small.mount(None, tmp_path / "tiny"))
    dest = mnt / "img"
    with pytest.raises(CaptureError, match="is full") as exc:
        capture(src, dest)
    msg = str(exc.value)
    assert str(dest) in msg and "incomplete" in msg and "larger medium" in msg
    assert (dest / "INCOMPLETE").exists()
    with pytest.raises(ImageError, match="incomplete image"):
        Image.open(dest)
    report = exc.value.report  # type: ignore[attr-defined]
    assert report.outcome == "failed" and report.report_files
    assert all(Path(p).exists() for p in report.report_files)


DOS = """label: dos
start=2048, size=24576, type=c, bootable
start=32768, size=90112, type=5
start=34816, size=40960, type=83
start=77824, size=40960, type=83
"""


@pytest.mark.root
@pytest.mark.udev
def test_capture_loop_disk_dos_with_logical_partitions(loops: LoopFactory, tmp_path: Path) -> None:
    disk = loops.create(64, table=DOS, fill="random")
    mkfs_vfat(disk.part(1), "BOOT")
    mkfs_ext4(disk.part(5), "data")
    mkfs_ext4(disk.part(6), "more")
    run("mcopy", "-s", "-i", disk.part(1), STDLIB / "json", "::/")
    # every byte (the filesystems' free space is random here): the layout is what is tested
    report = capture(disk.path, tmp_path / "img", all_blocks=True)
    with Image.open(tmp_path / "img") as im:
        names = [s.name for s in im.streams]
        # random bytes everywhere: every gap (EBRs included) is captured, so is the free tail
        assert names == [
            "head",
            "p1",
            f"gap-{(2048 + 24576) * 512}",
            "p5",
            f"gap-{(34816 + 40960) * 512}",
            "p6",
            f"gap-{(77824 + 40960) * 512}",
        ]
        assert im.extent_bytes == 64 * MiB
        assert (im.stream("p5").fs_type, im.stream("p6").label) == ("ext4", "more")
    for n in (1, 5, 6):
        assert _zstd_dc(tmp_path / "img" / f"p{n}.zst") == _read_dev(disk.part(n))
    out = tmp_path / "rebuilt"
    reassemble(tmp_path / "img", out, 64 * MiB)
    assert out.read_bytes() == _read_dev(disk.path)
    assert report.details["gaps_skipped_all_zero"] == []


def test_file_too_large_for_destination_is_explained(tmp_path: Path) -> None:
    """A FAT stick holds 4 GiB per file; simulated with RLIMIT_FSIZE (same EFBIG error)."""
    src = _random_file(tmp_path / "raw.img", 12)
    code = (
        "import resource, signal, sys\n"
        "from rescueui.core.capture import capture\n"
        "from rescueui.core.errors import CaptureError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (6 * 1024 * 1024, resource.RLIM_INFINITY))\n"
        "try:\n"
        f"    capture({str(src)!r}, {str(tmp_path / 'img')!r})\n"
        "except CaptureError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "FAT holds at most 4 GiB per file" in r.stdout and "exFAT" in r.stdout
    assert (tmp_path / "img" / "INCOMPLETE").exists()


def test_holes_of_a_sparse_source_file_are_not_read(tmp_path: Path) -> None:
    """A disk image file with holes: its hole chunks are zeros known without reading them
    (SEEK_HOLE), and the image is still the file byte for byte."""
    src = tmp_path / "sparse.img"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(10 * MiB)
        f.write(os.urandom(MiB))
    report = capture(src, tmp_path / "img")
    assert report.details["hole_chunks"] == 15  # 16 chunks of 4 MiB, one holds data
    assert report.details["zero_chunks"] == 15
    assert _zstd_dc(tmp_path / "img" / "disk.zst") == src.read_bytes()
