"""Interrupted restores: the journal, cancel + resume, damage found on re-verify, SIGKILL + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rescueui.core import journal as journal_mod
from rescueui.core.errors import CancelledError
from rescueui.core.identity import confirm_target, identity_of
from rescueui.core.journal import Journal, find_journal
from rescueui.core.progress import Progress
from rescueui.core.restore import plan_restore, restore
from rescueui.core.target import TargetHandle
from tests.loopdisk import LoopFactory, run
from tests.test_restore import capture_to, sha

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path / "rescueui.lock"))


# ------------------------------------------------------------------ the journal itself


def test_journal_is_bound_to_image_and_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    t1, t2 = tmp_path / "a.img", tmp_path / "b.img"
    t1.write_bytes(b"\0" * 4096)
    t2.write_bytes(b"\0" * 4096)
    a, b = identity_of(t1), identity_of(t2)
    j = Journal.create(image_dir, "m" * 64, a, None, segments_total=10)
    assert j.path.parent == image_dir
    j.record(4, 16 * MiB, "p1", 3)
    found = find_journal(image_dir, "m" * 64, a, None)
    assert found is not None and found.durable_segments == 4 and found.stream == "p1"
    assert json.loads(j.path.read_text())["durable_bytes"] == 16 * MiB
    assert find_journal(image_dir, "x" * 64, a, None) is None  # another image
    assert find_journal(image_dir, "m" * 64, b, None) is None  # another target
    assert find_journal(image_dir, "m" * 64, a, 2) is None  # a partition restore
    j.remove()
    assert find_journal(image_dir, "m" * 64, a, None) is None

    # A read-only image medium: the journal goes to the fallback folder, and is found there.
    monkeypatch.setattr(journal_mod, "_dir_writable", lambda d: False)
    monkeypatch.setenv("RESCUEUI_JOURNAL_DIR", str(tmp_path / "journals"))
    j2 = Journal.create(image_dir, "m" * 64, a, None, segments_total=10)
    assert j2.path.parent == tmp_path / "journals"
    assert find_journal(image_dir, "m" * 64, a, None) is not None


# ------------------------------------------------------------------ cancel, then resume


def make_random_disk_file(path: Path, size_mib: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    run(["sfdisk", "--quiet", str(path)], input="label: gpt\nstart=2048, type=L\n")
    with open(path, "r+b") as f:
        f.seek(MiB)
        for _ in range(size_mib - 2):
            f.write(os.urandom(MiB))


class CancelAt:
    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.event = threading.Event()

    def __call__(self, p: Progress) -> None:
        if p.phase == "write" and p.bytes_done >= self.fraction * p.bytes_total:
            self.event.set()


@pytest.fixture(scope="module")
def random_image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("resume")
    source = work / "source.img"
    make_random_disk_file(source, 48)
    return {"source": source, "image": capture_to(source, work / "image")}


def cancelled_restore(random_image: dict[str, Path], target: Path) -> Any:
    plan = plan_restore(
        random_image["image"], confirm_target(target, target.name), accept_warnings=True
    )
    plan.checkpoint_bytes = 4 * MiB
    stopper = CancelAt(0.2)  # 40 % of the write phase (the job is write + verify)
    with pytest.raises(CancelledError) as excinfo:
        restore(plan, progress=stopper, cancel=stopper.event)
    report = excinfo.value.report
    assert report.outcome == "cancelled", report.error
    assert report.report_files
    assert excinfo.value.action == "resume"  # the front end names its own way to resume
    assert "Resume" in (report.hint or "")
    return report


def resume_restore(
    random_image: dict[str, Path], target: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, list[int]]:
    offsets: list[int] = []
    real = TargetHandle.pwrite

    def spy(self: TargetHandle, view: memoryview, offset: int) -> None:
        offsets.append(offset)
        real(self, view, offset)

    monkeypatch.setattr(TargetHandle, "pwrite", spy)
    plan = plan_restore(
        random_image["image"],
        confirm_target(target, target.name),
        resume=True,
        accept_warnings=True,
    )
    report = restore(plan)
    return report, offsets


def test_cancel_then_resume_continues_where_it_stopped(
    random_image: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(48 * MiB))
    cancelled_restore(random_image, target)
    journals = list(random_image["image"].glob("restore-journal-*.json"))
    assert len(journals) == 1
    j = json.loads(journals[0].read_text())
    assert 0 < j["durable_segments"] < j["segments_total"]
    durable = j["durable_bytes"]
    assert durable >= 4 * MiB
    assert target.read_bytes()[:durable] == random_image["source"].read_bytes()[:durable]

    report, offsets = resume_restore(random_image, target, monkeypatch)
    assert report.outcome == "success", report.error
    assert any("Resumed an interrupted restore" in n for n in report.notes)
    assert offsets and min(offsets) >= durable  # nothing durable was written again
    assert target.read_bytes() == random_image["source"].read_bytes()
    assert not list(random_image["image"].glob("restore-journal-*.json"))


def test_resume_rewrites_what_reads_back_wrong(
    random_image: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(48 * MiB))
    cancelled_restore(random_image, target)
    # Damage a byte the journal says is durable (as a flaky write cache would).
    with open(target, "r+b") as f:
        f.seek(2 * MiB + 123)
        b = f.read(1)
        f.seek(2 * MiB + 123)
        f.write(bytes([b[0] ^ 0xFF]))
    report, offsets = resume_restore(random_image, target, monkeypatch)
    assert report.outcome == "success", report.error
    # The journal called that region durable: it is reported as changed, not "not yet durable".
    assert any("changed" in w and "written again" in w for w in report.warnings)
    assert not any("not yet durable" in n for n in report.notes + report.warnings)
    assert min(offsets) <= 2 * MiB + 123
    assert target.read_bytes() == random_image["source"].read_bytes()


def test_resume_without_journal_starts_from_the_beginning(
    random_image: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(48 * MiB))
    plan = plan_restore(
        random_image["image"],
        confirm_target(target, target.name),
        resume=True,
        accept_warnings=True,
    )
    report = restore(plan)
    assert report.outcome == "success"
    assert any("No journal" in w for w in report.warnings)
    assert target.read_bytes() == random_image["source"].read_bytes()


# ------------------------------------------------------------------ SIGKILL the CLI, then resume


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rescueui", "restore", *args]


@pytest.mark.root
@pytest.mark.slow
def test_sigkill_mid_restore_then_resume(loops: LoopFactory, tmp_path: Path) -> None:
    size_mib = 512
    src = loops.create(size_mib, table="label: gpt\nstart=2048, type=L\n")
    run(
        [
            "dd",
            "if=/dev/urandom",
            f"of={src.part(1)}",
            "bs=4M",
            f"count={(size_mib - 4) // 4}",
            "oflag=direct",
            "status=none",
        ]
    )
    image = capture_to(src.path, tmp_path / "image")
    target = loops.create(size_mib, fill="zero")
    env = dict(os.environ, RESCUEUI_LOCK=str(tmp_path / "lock"), PYTHONPATH=os.getcwd())
    proc = interrupt_cli(image, target.path, env, signal.SIGKILL, 0.4 * size_mib * MiB)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()  # type: ignore[union-attr]
    journals = list(image.glob("restore-journal-*.json"))
    assert len(journals) == 1
    assert sha(target.path) != sha(src.path)  # really interrupted: not complete

    r = subprocess.run(
        cli(str(image), target.path, "--yes", "--accept-warnings", "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Resumed an interrupted restore" in r.stdout
    assert sha(target.path) == sha(src.path)
    assert not list(image.glob("restore-journal-*.json"))

    # Ctrl-C (SIGINT) cancels cleanly: exit 130, one paragraph naming --resume, journal kept.
    proc = interrupt_cli(image, target.path, env, signal.SIGINT, 0.4 * size_mib * MiB)
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert proc.returncode == 130, err
    assert "cancelled" in err and "--resume" in err
    assert len(list(image.glob("restore-journal-*.json"))) == 1
    r = subprocess.run(
        cli(str(image), target.path, "--yes", "--accept-warnings", "--resume", "--quiet"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert sha(target.path) == sha(src.path)


def interrupt_cli(
    image: Path, target: str, env: dict[str, str], sig: int, at_bytes: float
) -> subprocess.Popen[bytes]:
    """Start a CLI restore; send ``sig`` once the journal says ``at_bytes`` are durable."""
    proc = subprocess.Popen(
        cli(str(image), target, "--yes", "--accept-warnings", "--quiet"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    durable = 0
    deadline = time.monotonic() + 120
    sent = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for jf in image.glob("restore-journal-*.json"):
                try:
                    durable = json.loads(jf.read_text())["durable_bytes"]
                except (OSError, ValueError, KeyError):
                    continue
            if durable >= at_bytes:
                proc.send_signal(sig)
                sent = True
                break
            time.sleep(0.005)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not sent:
        pytest.fail(f"the restore was not interrupted mid-way (rc={proc.returncode})")
    return proc


def test_resume_with_a_damaged_journal_starts_again_and_says_why(
    random_image: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(48 * MiB))
    cancelled_restore(random_image, target)
    journals = list(random_image["image"].glob("restore-journal-*.json"))
    assert len(journals) == 1
    data = json.loads(journals[0].read_text())
    data["durable_segments"] = -5  # once an internal IndexError
    journals[0].write_text(json.dumps(data))
    report, offsets = resume_restore(random_image, target, monkeypatch)
    assert report.outcome == "success", report.error
    assert any(str(journals[0].name) in w and "beginning" in w for w in report.warnings)
    assert min(offsets) == 0  # everything written again
    assert target.read_bytes() == random_image["source"].read_bytes()


# ------------------------------------------------------------------ other kinds of image


@pytest.mark.parametrize("kind", ["qcow2", "raw.zst"])
def test_a_foreign_image_resumes_too(
    kind: str, random_image: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VM disk (random access) and a compressed raw image (read in order): the pieces
    before the checkpoint are read from the image again for their BLAKE3, the target is
    compared with them, and the writes go on from the checkpoint."""
    folder = tmp_path / "vm"
    folder.mkdir()
    src = random_image["source"]
    if kind == "qcow2":
        image = folder / "disk.qcow2"
        run(["qemu-img", "convert", "-O", "qcow2", str(src), str(image)])
    else:
        image = folder / "disk.img.zst"
        run(["zstd", "-q", "-3", "-o", str(image), str(src)])
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(48 * MiB))
    plan = plan_restore(image, confirm_target(target, target.name), accept_warnings=True)
    plan.checkpoint_bytes = 4 * MiB
    stopper = CancelAt(0.2)
    with pytest.raises(CancelledError):
        restore(plan, progress=stopper, cancel=stopper.event)
    journals = list(folder.glob("restore-journal-*.json"))
    assert len(journals) == 1
    durable = json.loads(journals[0].read_text())["durable_bytes"]
    assert 4 * MiB <= durable < 48 * MiB
    # what the interrupted run wrote is damaged in one place: it is found and written again
    with open(target, "r+b") as f:
        f.seek(durable - MiB)
        f.write(b"\xff" * 4096)

    offsets: list[int] = []
    real = TargetHandle.pwrite

    def spy(self: TargetHandle, view: memoryview, offset: int) -> None:
        offsets.append(offset)
        real(self, view, offset)

    monkeypatch.setattr(TargetHandle, "pwrite", spy)
    plan = plan_restore(
        image, confirm_target(target, target.name), resume=True, accept_warnings=True
    )
    report = restore(plan)
    assert report.outcome == "success", report.error
    assert any("Resumed an interrupted restore" in n for n in report.notes)
    assert any("changed" in w for w in report.warnings)  # the damaged piece
    assert offsets and durable - 4 * MiB <= min(offsets) < durable  # from the damaged piece
    assert report.phases["resume-read"]["bytes"] > 0
    assert target.read_bytes() == src.read_bytes()
    assert not list(folder.glob("restore-journal-*.json"))
