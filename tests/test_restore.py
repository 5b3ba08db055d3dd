"""End to end on real loop disks: capture (FORMAT's capture) → restore → the target equals the source.

Targets are pre-filled with random bytes, so every byte of the image extent (tables, gaps,
zero ranges) must have been written for `cmp` to pass.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.capture import capture
from rescueui.core.errors import (
    LockError,
    TargetChangedError,
    TargetTooSmallError,
    UnsafeTargetError,
)
from rescueui.core.identity import ConfirmedTarget, confirm_target, confirmation_code, identity_of
from rescueui.core.lock import WriterLock
from rescueui.core.progress import Progress
from rescueui.core.restore import RestorePlan, plan_restore, restore
from tests.loopdisk import LoopDisk, LoopFactory, loop_factory, mkfs_ext4, mkfs_vfat, run

MiB = 1024 * 1024
STDLIB = Path("/usr/lib/python3.11")
TREES = ("email", "json", "logging")

GPT_SCRIPT = """label: gpt
start=2048, size=16MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"
start=20MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
"""
DOS_SCRIPT = """label: dos
start=2048, size=40MiB, type=83
start=43MiB, size=12MiB, type=c
"""
# Partition numbers of (ext4, vfat) in each layout.
LAYOUTS = {"gpt": (GPT_SCRIPT, 2, 1), "dos": (DOS_SCRIPT, 1, 2)}


# ------------------------------------------------------------------ helpers shared with
# test_restore_faults.py and test_resume.py


def sha(path: str | Path, start: int = 0, length: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left is None or left > 0:
            block = f.read(4 * MiB if left is None else min(4 * MiB, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def fill_vfat(part: str, work: Path) -> Path:
    """Put a few real files onto a FAT partition with mtools; returns the local copy."""
    src = work / "vfat-files"
    src.mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "decoder.py", "encoder.py"):
        shutil.copy(STDLIB / "json" / name, src / name.upper().replace("_", "X"))
    run(["mcopy", "-i", part, "-s", *[str(p) for p in src.iterdir()], "::/"])
    return src


def make_source(loops: LoopFactory, label: str, work: Path, size_mib: int = 64) -> LoopDisk:
    """A loop disk with real ext4 + vfat filesystems, real files, and non-zero data in a gap."""
    script, ext_n, fat_n = LAYOUTS[label]
    disk = loops.create(size_mib, table=script)
    mkfs_ext4(disk.part(ext_n), "root")
    mkfs_vfat(disk.part(fat_n), "EFI")
    where = disk.mount(ext_n, work / f"src-{label}")
    for t in TREES:
        shutil.copytree(STDLIB / t, Path(where) / t)
    disk.umount_all()
    fill_vfat(disk.part(fat_n), work / f"fat-{label}")
    if label == "gpt":
        # Boot-loader-like junk between the partitions: it must come back bit for bit.
        with open(disk.path, "r+b") as f:
            f.seek(18 * MiB)
            f.write(os.urandom(300 * 1024))
            os.fsync(f.fileno())
    return disk


def capture_to(source: str | Path, image_dir: Path) -> Path:
    report = capture(source, image_dir)
    assert report.outcome == "success", report.error
    return image_dir


def confirmed(path: str | Path) -> ConfirmedTarget:
    return confirm_target(path, confirmation_code(identity_of(path)))


def fsck_clean(ext_part: str, fat_part: str | None) -> None:
    r = subprocess.run(["fsck.ext4", "-fn", ext_part], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    if fat_part:
        r = subprocess.run(["fsck.vfat", "-n", fat_part], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    stack = [cmp]
    while stack:
        c = stack.pop()
        assert not c.left_only and not c.right_only and not c.funny_files, (c.left, c.right)
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors, (c.left, mismatch, errors)
        stack.extend(c.subdirs.values())


def check_trees(
    disk: LoopDisk, ext_n: int, fat_n: int | None, work: Path, fat_src: Path | None
) -> None:
    mnt = Path(disk.mount(ext_n, work / f"check-{disk.name}", options="ro"))
    try:
        for t in TREES:
            same_tree(STDLIB / t, mnt / t)
    finally:
        disk.umount_all()
    if fat_n is not None and fat_src is not None:
        out = work / f"fat-out-{disk.name}"
        out.mkdir()
        run(["mcopy", "-i", disk.part(fat_n), "-s", "::/*", str(out)])
        same_tree(fat_src, out)


class Recorder:
    """Progress callback keeping every snapshot (tests only)."""

    def __init__(self) -> None:
        self.snaps: list[Progress] = []

    def __call__(self, p: Progress) -> None:
        self.snaps.append(p)

    @property
    def phases(self) -> list[str]:
        out: list[str] = []
        for s in self.snaps:
            if not out or out[-1] != s.phase:
                out.append(s.phase)
        return out


def run_restore(plan: RestorePlan, **kw: Any) -> Any:
    report = restore(plan, **kw)
    return report


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One GPT and one DOS source disk, captured once for the whole module."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates loop devices (runs in CI, which is root)")
    work = tmp_path_factory.mktemp("restore-src")
    with loop_factory(work / "loops") as lf:
        lf.workdir.mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {}
        for label in ("gpt", "dos"):
            disk = make_source(lf, label, work)
            out[label] = {
                "disk": disk,
                "image": capture_to(disk.path, work / f"image-{label}"),
                "fat_src": work / f"fat-{label}" / "vfat-files",
            }
        yield out


@pytest.fixture(autouse=True)
def private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own writer lock file, so parallel test runs do not block each other."""
    monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path / "rescueui.lock"))


# ------------------------------------------------------------------ whole disk


@pytest.mark.root
@pytest.mark.parametrize("label", ["gpt", "dos"])
def test_whole_disk_onto_same_size_random_disk(
    sources: dict[str, Any], loops: LoopFactory, tmp_path: Path, label: str
) -> None:
    src = sources[label]
    _, ext_n, fat_n = LAYOUTS[label]
    target = loops.create(64, fill="random")
    plan = plan_restore(src["image"], confirmed(target.path), accept_warnings=True, exact=True)
    extent = plan.image.extent_bytes
    rec = Recorder()
    report = run_restore(plan, progress=rec)
    assert report.outcome == "success", report.error

    # Bit for bit over the image's whole extent: tables, gaps, zero ranges included (an
    # exact restore: the space no filesystem uses is zero on the source and made zero here).
    assert sha(target.path, 0, extent) == sha(src["disk"].path, 0, extent)
    r = subprocess.run(["cmp", "-n", str(extent), src["disk"].path, target.path])
    assert r.returncode == 0
    target.rescan()
    fsck_clean(target.part(ext_n), target.part(fat_n))
    check_trees(target, ext_n, fat_n, tmp_path, src["fat_src"])

    # Progress: by bytes over write + verify, the documented phases, chunk events.
    last = rec.snaps[-1]
    assert last.phase == "done"
    assert last.bytes_done == last.bytes_total == 2 * extent  # write + read-back verify
    assert rec.phases == ["partition-table", "write", "verify", "done"]
    done = [s.bytes_done for s in rec.snaps]
    assert done == sorted(done)
    events = [s.last_chunk for s in rec.snaps if s.phase == "verify" and s.last_chunk]
    assert events and all(e.ok for e in events)
    assert {e.stream for e in events} >= {"head", "p1"}

    # Report next to the image, journal gone.
    assert report.report_files and all(Path(p).exists() for p in report.report_files)
    assert Path(report.report_files[0]).parent == Path(src["image"]) / "reports"
    assert not list(Path(src["image"]).glob("restore-journal-*.json"))
    assert report.details["zero_methods"] == ["blkzeroout"]
    # Adjacent zero chunks are cleared with one call per run, not one per chunk.
    zero_runs = report.details["zero_range_calls"]
    zero_chunks = sum(1 for e in events if e.zero)
    assert 0 < zero_runs < zero_chunks
    assert report.details["direct_io"] is True


@pytest.mark.root
def test_gpt_onto_larger_disk_keeps_partitions(
    sources: dict[str, Any], loops: LoopFactory, tmp_path: Path
) -> None:
    """--no-grow: partitions and data exactly as in the image; only the GPT backup moves."""
    src = sources["gpt"]
    target = loops.create(96, fill="random")
    plan = plan_restore(
        src["image"], confirmed(target.path), grow=False, accept_warnings=True, exact=True
    )
    report = run_restore(plan)
    assert report.outcome == "success", report.error
    extent = plan.image.extent_bytes
    # Everything from the end of the primary GPT to the start of the source's backup GPT.
    start, end = 34 * 512, extent - 33 * 512
    assert sha(target.path, start, end - start) == sha(src["disk"].path, start, end - start)
    v = subprocess.run(["sfdisk", "--verify", target.path], capture_output=True, text=True)
    assert v.returncode == 0 and "No errors detected" in v.stdout, v.stdout + v.stderr
    target.rescan()
    fsck_clean(target.part(2), target.part(1))
    check_trees(target, 2, 1, tmp_path, src["fat_src"])
    assert os.path.getsize(target.backing) == 96 * MiB


@pytest.mark.root
def test_gpt_onto_larger_disk_grows_last_partition(
    sources: dict[str, Any], loops: LoopFactory, tmp_path: Path
) -> None:
    src = sources["gpt"]
    target = loops.create(96, fill="random")
    plan = plan_restore(src["image"], confirmed(target.path), accept_warnings=True, exact=True)
    report = run_restore(plan)
    assert report.outcome == "success", report.error
    target.rescan()
    size_p2 = int(run(["blockdev", "--getsize64", target.part(2)]).stdout)
    assert size_p2 > plan.image.manifest.partition_stream(2).size_bytes  # type: ignore[union-attr]
    fsck_clean(target.part(2), target.part(1))
    check_trees(target, 2, 1, tmp_path, src["fat_src"])


# ------------------------------------------------------------------ partition mode


@pytest.mark.root
def test_partition_restore_onto_existing_partition(
    sources: dict[str, Any], loops: LoopFactory, tmp_path: Path
) -> None:
    src = sources["gpt"]
    stream = Path(src["image"])
    target = loops.create(
        96,
        table="label: gpt\nstart=2048, size=10MiB\nstart=12MiB, size=60MiB\n",
        fill="random",
    )
    p1_before = sha(target.part(1))
    p2_size = int(run(["blockdev", "--getsize64", target.part(2)]).stdout)
    tail_before = sha(target.part(2), 44 * MiB, p2_size - 44 * MiB)
    plan = plan_restore(
        stream,
        confirmed(target.part(2)),
        partition=2,
        grow=False,
        accept_warnings=True,
        exact=True,
    )
    n = plan.stream.size_bytes  # type: ignore[union-attr]
    report = run_restore(plan)
    assert report.outcome == "success", report.error
    src_p2 = src["disk"].part(2)
    assert sha(target.part(2), 0, n) == sha(src_p2, 0, n)
    assert sha(target.part(1)) == p1_before  # the neighbour is untouched
    if n <= 44 * MiB:
        assert sha(target.part(2), 44 * MiB, p2_size - 44 * MiB) == tail_before
    fsck_clean(target.part(2), None)
    check_trees(target, 2, None, tmp_path, None)
    assert any("growing was turned off" in n for n in report.notes)

    # Default: the filesystem is grown to fill the larger partition.
    plan = plan_restore(stream, confirmed(target.part(2)), partition=2, accept_warnings=True)
    report = run_restore(plan)
    assert report.outcome == "success", report.error
    assert any("grown" in n for n in report.notes), report.notes
    fsck_clean(target.part(2), None)
    check_trees(target, 2, None, tmp_path, None)
    blocks = run(["dumpe2fs", "-h", target.part(2)]).stdout
    count = int(next(x for x in blocks.splitlines() if x.startswith("Block count:")).split()[-1])
    size = int(next(x for x in blocks.splitlines() if x.startswith("Block size:")).split()[-1])
    assert count * size > n


@pytest.mark.root
def test_partition_mode_needs_a_partition_and_whole_disk_mode_a_disk(
    sources: dict[str, Any], loops: LoopFactory
) -> None:
    src = sources["gpt"]
    target = loops.create(96, table="label: gpt\nstart=2048, size=60MiB\n")
    with pytest.raises(UnsafeTargetError, match="whole disk"):
        plan_restore(src["image"], confirmed(target.path), partition=2, accept_warnings=True)
    with pytest.raises(UnsafeTargetError, match="is a partition"):
        plan_restore(src["image"], confirmed(target.part(1)), accept_warnings=True)
    with pytest.raises(Exception, match="no partition 7"):
        plan_restore(src["image"], confirmed(target.part(1)), partition=7)


# ------------------------------------------------------------------ refusals, nothing written


@pytest.mark.root
def test_boot_disk_refused_without_opening_it_for_writing(
    sources: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not os.path.exists("/dev/vda"):
        pytest.skip("no /dev/vda here")
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path, flags, *a, **kw):  # type: ignore[no-untyped-def]
        opened.append((os.fspath(path), flags))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    with pytest.raises(UnsafeTargetError, match="boot medium"):
        plan_restore(sources["gpt"]["image"], confirmed("/dev/vda"), accept_warnings=True)
    writes = [p for p, f in opened if f & (os.O_WRONLY | os.O_RDWR) and "vda" in p]
    assert writes == []


@pytest.mark.root
def test_too_small_target_refused_with_the_missing_bytes(
    sources: dict[str, Any], loops: LoopFactory
) -> None:
    target = loops.create(8, fill="random")  # too small even for its files
    before = sha(target.backing)
    with pytest.raises(TargetTooSmallError) as err:
        plan_restore(sources["gpt"]["image"], confirmed(target.path), accept_warnings=True)
    msg = str(err.value)
    assert f"{56 * MiB} bytes" in msg and f"{64 * MiB} bytes" in msg
    assert "does not help: the data does not fit" in msg
    assert sha(target.backing) == before


@pytest.mark.root
def test_mounted_and_read_only_targets_refused(
    sources: dict[str, Any], loops: LoopFactory, tmp_path: Path
) -> None:
    busy = loops.create(64, table="label: gpt\nsize=32MiB\n")
    mkfs_ext4(busy.part(1), "busy")
    busy.mount(1, tmp_path / "busy")
    # The mounted filesystem changes its own blocks; what a restore would write first is the
    # head (tables) and the space outside the partition.
    outside = (sha(busy.backing, 0, MiB), sha(busy.backing, 33 * MiB, None))
    with pytest.raises(UnsafeTargetError, match="mounted"):
        plan_restore(sources["gpt"]["image"], confirmed(busy.path), accept_warnings=True)
    ro = loops.create(64, read_only=True, fill="random")
    ro_before = sha(ro.backing)
    with pytest.raises(UnsafeTargetError, match="read-only"):
        plan_restore(sources["gpt"]["image"], confirmed(ro.path), accept_warnings=True)
    busy.umount_all()
    assert (sha(busy.backing, 0, MiB), sha(busy.backing, 33 * MiB, None)) == outside
    assert sha(ro.backing) == ro_before


@pytest.mark.root
def test_target_changed_between_plan_and_restore_writes_nothing(
    sources: dict[str, Any], loops: LoopFactory
) -> None:
    a = loops.create(64, fill="random")
    b = loops.create(64, fill="random")
    plan = plan_restore(sources["gpt"]["image"], confirmed(a.path), accept_warnings=True)
    # The confirmed /dev/loopA now shows another medium (its backing file is swapped).
    before_a, before_b = sha(a.backing), sha(b.backing)
    subprocess.run(["losetup", "-d", a.path], check=True)
    r = subprocess.run(["losetup", a.path, str(b.backing)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"{a.path} was taken by another process: {r.stderr}")
    try:
        with pytest.raises(TargetChangedError, match="not the device you confirmed") as excinfo:
            run_restore(plan)
        report = excinfo.value.report
        assert report.outcome == "failed"
        assert "not the device you confirmed" in report.error
        assert report.report_files  # a refused job still writes its report
    finally:
        subprocess.run(["losetup", "-d", a.path], check=False)
        subprocess.run(["losetup", a.path, str(a.backing)], check=False)
    assert sha(a.backing) == before_a and sha(b.backing) == before_b


@pytest.mark.root
def test_second_writer_refused_by_the_lock(
    sources: dict[str, Any], loops: LoopFactory, tmp_path: Path
) -> None:
    target = loops.create(64, fill="random")
    before = sha(target.backing)
    plan = plan_restore(sources["gpt"]["image"], confirmed(target.path), accept_warnings=True)
    with (
        WriterLock("/dev/other", job="capture"),
        pytest.raises(LockError, match=f"process {os.getpid()}") as excinfo,
    ):
        run_restore(plan)
    report = excinfo.value.report
    assert report.outcome == "failed"
    assert f"process {os.getpid()}" in report.error
    assert report.report_files
    assert sha(target.backing) == before


# ------------------------------------------------------------------ regular files, no root


def make_file_disk(path: Path, size: int) -> None:
    """A disk image file with a GPT and random data in its partitions (no root needed)."""
    with open(path, "wb") as f:
        f.truncate(size)
    run(
        ["sfdisk", "--quiet", str(path)],
        input="label: gpt\nstart=2048, size=3MiB\nstart=10240, size=2MiB\n",
    )
    with open(path, "r+b") as f:
        f.seek(1 * MiB)
        f.write(os.urandom(3 * MiB))  # p1: incompressible
        f.seek(4 * MiB + 4096)
        f.write(os.urandom(8192))  # something in the gap
        f.seek(5 * MiB + MiB)
        f.write(b"text " * 100_000)  # p2: zeros, then compressible


def test_regular_file_target_without_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path / "lock"))
    source = tmp_path / "source.img"
    make_file_disk(source, 8 * MiB)
    image = capture_to(source, tmp_path / "image")
    target = tmp_path / "vm-disk.img"
    target.write_bytes(os.urandom(8 * MiB))
    plan = plan_restore(image, confirm_target(target, "VM-DISK.IMG"), accept_warnings=True)
    report = restore(plan)
    assert report.outcome == "success", report.error
    assert target.read_bytes() == source.read_bytes()
    small = tmp_path / "small.img"  # too small for its partitions laid out anew, too
    small.write_bytes(b"\x55" * (5 * MiB))
    with pytest.raises(TargetTooSmallError, match=f"{3 * MiB} bytes"):
        plan_restore(image, confirm_target(small, "small.img"), accept_warnings=True)
    assert small.read_bytes() == b"\x55" * (5 * MiB)


# ------------------------------------------------------------------ the command line


def rescueui(*args: str, tmp: Path, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
    env = dict(os.environ, RESCUEUI_LOCK=str(tmp / "cli.lock"), PYTHONPATH=os.getcwd())
    return subprocess.Popen(
        [sys.executable, "-m", "rescueui", "restore", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture(scope="module")
def file_source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("cli")
    source = work / "source.img"
    make_file_disk(source, 8 * MiB)
    return {"source": source, "image": capture_to(source, work / "image")}


def typed_on_a_terminal(args: list[str], typed: str, tmp: Path) -> tuple[int, str, str]:
    """Run the CLI with a pseudo-terminal as stdin and type ``typed`` at the prompt."""
    master, slave = os.openpty()
    try:
        proc = rescueui(*args, tmp=tmp, stdin=slave)
        os.write(master, (typed + "\n").encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, out, err


def test_cli_asks_for_the_confirmation_code_on_a_terminal(
    file_source: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "server-disk.img"
    target.write_bytes(b"\x33" * (8 * MiB))
    args = [str(file_source["image"]), str(target), "--accept-warnings"]
    rc, out, err = typed_on_a_terminal(args, "loop0", tmp_path)
    assert rc == 1
    assert "This DESTROYS everything on the target" in err
    assert "you typed 'loop0'" in err and "type 'server-disk.img'" in err
    assert target.read_bytes() == b"\x33" * (8 * MiB)

    rc, out, err = typed_on_a_terminal(args, "SERVER-DISK.IMG", tmp_path)
    assert rc == 0, err
    assert "rescueui restore: SUCCESS" in out
    assert target.read_bytes() == file_source["source"].read_bytes()


def test_cli_without_terminal_needs_yes(file_source: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "t.img"
    target.write_bytes(b"\x44" * (8 * MiB))
    proc = rescueui(str(file_source["image"]), str(target), "--accept-warnings", tmp=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "no terminal" in err and "--yes" in err
    assert target.read_bytes() == b"\x44" * (8 * MiB)


def test_cli_create_file_target(file_source: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "new-vm.img"
    proc = rescueui(
        str(file_source["image"]),
        str(target),
        "--create",
        "image",
        "--yes",
        "--accept-warnings",
        "--json",
        tmp=tmp_path,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["outcome"] == "success"
    assert target.read_bytes() == file_source["source"].read_bytes()
    again = rescueui(
        str(file_source["image"]), str(target), "--create", "8M", "--yes", tmp=tmp_path
    )
    _, err = again.communicate(timeout=120)
    assert again.returncode == 1 and "already exists" in err


def test_cli_failure_is_one_paragraph_with_cause_and_next_step(
    file_source: dict[str, Path], tmp_path: Path
) -> None:
    image = tmp_path / "image"
    shutil.copytree(file_source["image"], image, ignore=shutil.ignore_patterns("reports"))
    data = image / "p1.zst"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    target = tmp_path / "t.img"
    target.write_bytes(b"\x55" * (8 * MiB))
    proc = rescueui(str(image), str(target), "--yes", "--accept-warnings", "--quiet", tmp=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "FAILED" in lines[0] and "stream 'p1', chunk 0" in lines[0]
    assert "another copy" in lines[0] and "Report:" in lines[0]


# ------------------------------------------------------------------ acknowledgements, report


def warned_variant(image: Path, dest: Path) -> Path:
    """A copy of ``image`` whose manifest (rewritten through the image API, hash valid) says
    the source had 64 CPUs and 1 TiB of memory: two pre-flight warnings on any test machine."""
    from rescueui.core.image import Image, save_manifest

    shutil.copytree(image, dest, ignore=shutil.ignore_patterns("reports"))
    with Image.open(dest) as im:
        manifest = im.manifest
    manifest.host.update(cpus=64, memory_bytes=1024**4)
    save_manifest(dest, manifest)
    return dest


def test_warnings_acknowledged_one_by_one_go_into_the_report(
    file_source: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rescueui.core.errors import PreflightError

    monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path / "lock"))
    image = warned_variant(file_source["image"], tmp_path / "image-64cpus")
    target = tmp_path / "t.img"
    target.write_bytes(b"\x66" * (8 * MiB))
    with pytest.raises(PreflightError, match="2 pre-flight warning"):
        plan_restore(image, confirmed(target))
    # one acknowledged, the other still open: refused, naming the open one only
    with pytest.raises(PreflightError, match="1 pre-flight warning") as exc:
        plan_restore(image, confirmed(target), accepted_codes=["cpus"])
    assert "memory" in str(exc.value) and "64 logical CPUs" not in str(exc.value)
    assert target.read_bytes() == b"\x66" * (8 * MiB)  # planning writes nothing

    progress: list[Progress] = []
    plan = plan_restore(
        image,
        confirmed(target),
        accepted_codes=["memory", "cpus"],
        acknowledged_by="operator (test)",
    )
    report = restore(plan, progress=progress.append)
    assert report.outcome == "success", report.error
    assert target.read_bytes() == file_source["source"].read_bytes()

    data = json.loads(Path(report.report_files[0]).read_text())
    warn_codes = sorted(f["code"] for f in data["findings"] if f["level"] == "warn")
    assert warn_codes == ["cpus", "memory"]
    acks = data["acknowledgements"]
    assert sorted(a["code"] for a in acks) == warn_codes
    for a in acks:
        assert a["by"] == "operator (test)" and a["at"].startswith("20") and a["message"]
    text = Path(report.report_files[1]).read_text()
    assert text.count("[ACK]") == 2 and "operator (test)" in text

    # the average rate is filled: bytes done (written + read back) over the whole job
    assert data["bytes_done"] == 2 * plan_bytes(progress)
    assert data["duration_s"] > 0
    assert data["rate_avg"] == pytest.approx(data["bytes_done"] / data["duration_s"], rel=0.01)
    assert f"{'Rate:':13}" in text

    # the text report fits 80 columns (only a single over-long word, e.g. a path, may not)
    for line in text.splitlines():
        assert len(line) <= 80 or len(line.split()) <= 2, line
    for s in data["streams"]:
        assert f"      BLAKE3 {s['root_blake3']}" in text.splitlines()


def plan_bytes(progress: list[Progress]) -> int:
    """Bytes of the write phases (partition table + data) as the progress reported them."""
    return sum(
        p.phase_bytes_total
        for p in {p.phase: p for p in progress if p.phase in ("partition-table", "write")}.values()
    )


def test_chunk_counters_agree_in_every_phase(file_source: dict[str, Path], tmp_path: Path) -> None:
    """The checksum panel's total and per-stream counters describe the same chunk, in the
    write phase and in the read-back verify alike."""
    from rescueui.core.image import Image

    with Image.open(file_source["image"]) as im:
        chunks = {s.name: s.chunk_count for s in im.streams}
    target = tmp_path / "t.img"
    target.write_bytes(b"\x77" * (8 * MiB))
    seen: list[Progress] = []
    plan = plan_restore(file_source["image"], confirmed(target), accept_warnings=True)
    plan.lock_path = str(tmp_path / "lock")
    report = restore(plan, progress=seen.append)
    assert report.outcome == "success", report.error
    by_phase: dict[str, list[Progress]] = {}
    for p in seen:
        if p.last_chunk is not None and p.phase in ("partition-table", "write", "verify"):
            by_phase.setdefault(p.phase, []).append(p)
    assert set(by_phase) >= {"write", "verify"}
    for phase, snaps in by_phase.items():
        prev = 0
        for p in snaps:
            c = p.last_chunk
            assert c is not None
            assert p.stream == c.stream, (phase, p)
            assert p.stream_chunks_done == c.index + 1, (phase, p)
            if c.stream != "fill":
                assert p.stream_chunks_total == chunks[c.stream], (phase, p)
            assert p.stream_chunks_done <= p.stream_chunks_total
            assert prev < p.chunks_done <= p.chunks_total, (phase, p)
            prev = p.chunks_done
    verify = by_phase["verify"]
    assert verify[-1].chunks_done == verify[-1].chunks_total  # every chunk read back
    # the verify phase starts from zero, not from the write phase's last counters
    first = next(p for p in seen if p.phase == "verify")
    assert first.chunks_done == 0 and first.stream_chunks_done == 0


def test_cli_accept_warning_one_code_at_a_time(
    file_source: dict[str, Path], tmp_path: Path
) -> None:
    image = warned_variant(file_source["image"], tmp_path / "image-64cpus")
    target = tmp_path / "t.img"
    target.write_bytes(b"\x11" * (8 * MiB))
    base = [str(image), str(target), "--yes", "--quiet", "--json"]
    proc = rescueui(*base, "--accept-warning", "cpus", tmp=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "1 pre-flight warning" in err and "memory" in err.lower()
    assert target.read_bytes() == b"\x11" * (8 * MiB)
    proc = rescueui(*base, "--accept-warning", "cpus", "--accept-warning", "memory", tmp=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rep = json.loads(out)
    assert rep["outcome"] == "success" and rep["rate_avg"] > 0
    assert sorted((a["code"], a["by"]) for a in rep["acknowledgements"]) == [
        ("cpus", "--accept-warning"),
        ("memory", "--accept-warning"),
    ]
    assert target.read_bytes() == file_source["source"].read_bytes()
