"""Target-side faults (issue 9), each reproduced on real loop devices.

1. The confirmed target is detached mid-job and its /dev/loopN name given to another
   file: nothing may be written to that file and the restore must not report success.
2. Aliases of storage the job must not write: a second loop on the backing file of the
   disk holding the image, that backing file itself (or a hard link to it) as a file
   target, a loop alias of a mounted filesystem.
3. Capture and restore of the same disk at once; a capture whose destination is on an
   alias of the disk being captured.
4. Two jobs at once, every combination: one writer per machine (the shared lock), verify
   only reads, an image still being captured is incomplete.
5. A target that fills up mid-write (file on a full filesystem, loop over such a file).
6. Resume finds a region that was durable changed on the target.

Only loop devices and files made here are written. The first job of a pair is held
inside its progress callback (a gate) while the second one runs, so the overlap is
certain and no test depends on timing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.capture import capture
from rescueui.core.disks import scan_disks
from rescueui.core.errors import (
    CancelledError,
    ImageError,
    LockError,
    RescueError,
    RestoreError,
    TargetChangedError,
    UnsafeTargetError,
)
from rescueui.core.image import INCOMPLETE_MARKER, MANIFEST_NAME
from rescueui.core.progress import Progress
from rescueui.core.restore import plan_restore, restore
from rescueui.core.target import TargetHandle
from rescueui.core.verify import verify_image
from tests.loopdisk import (
    LoopDisk,
    LoopFactory,
    attach,
    detach,
    loop_factory,
    mkfs_ext4,
    run,
    settle,
)
from tests.test_restore import capture_to, confirmed, sha

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
STDLIB = Path("/usr/lib/python3.11")
GATE_TIMEOUT = 60.0  # seconds a first job waits in its callback for the second to finish

SMALL_GPT = """label: gpt
start=2048, size=8MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="boot"
start=10MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
"""


@pytest.fixture(autouse=True)
def private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One private writer lock per test; both jobs of a pair share it (same env)."""
    monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path / "rescueui.lock"))


# ------------------------------------------------------------------ helpers


def random_file(path: Path, size_mib: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    return path


def loop_backing(dev: str) -> str | None:
    """The file behind a loop device (None when the name is not bound to any file)."""
    try:
        text = Path(f"/sys/block/{os.path.basename(dev)}/loop/backing_file").read_text()
    except OSError:
        return None
    return text.strip().removesuffix(" (deleted)") or None


def detach_if_ours(dev: str | None, backing: Path) -> None:
    """Detach ``dev`` only while it is still bound to our ``backing`` file (a name freed
    by a test may belong to someone else's loop a moment later)."""
    if not dev:
        return
    bound = loop_backing(dev)
    if bound is not None and os.path.realpath(bound) == os.path.realpath(backing):
        detach(dev)


def alias_of(loops: LoopFactory, disk: LoopDisk, *, partitions: bool = False) -> LoopDisk:
    """A second loop device on ``disk``'s backing file, torn down with the factory."""
    alias = LoopDisk(path=attach(disk.backing), backing=disk.backing)
    loops.disks.append(alias)
    if partitions:
        alias.rescan()
    else:
        settle()
    return alias


def no_complete_image(dest: Path) -> bool:
    """No usable image in ``dest``: no manifest, or one still marked incomplete."""
    return not (dest / MANIFEST_NAME).exists() or (dest / INCOMPLETE_MARKER).exists()


def failed_report(exc: BaseException) -> Any:
    report = getattr(exc, "report", None)
    assert report is not None, f"no report attached to {type(exc).__name__}: {exc}"
    assert report.outcome == "failed", (report.outcome, report.error)
    assert report.report_files and all(Path(p).exists() for p in report.report_files)
    return report


def make_small_gpt(loops: LoopFactory, work: Path, size_mib: int = 32) -> LoopDisk:
    """A GPT loop disk with two ext4 partitions and real files on the second."""
    disk = loops.create(size_mib, table=SMALL_GPT)
    mkfs_ext4(disk.part(1), "boot")
    mkfs_ext4(disk.part(2), "root")
    where = Path(disk.mount(2, work / f"fill-{disk.name}"))
    shutil.copytree(STDLIB / "json", where / "json")
    shutil.copytree(STDLIB / "email", where / "email")
    disk.umount_all()
    return disk


def make_random_disk_file(path: Path, size_mib: int) -> Path:
    """A disk image file with a GPT and random (incompressible) bytes in its partition."""
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    run(["sfdisk", "--quiet", str(path)], input="label: gpt\nstart=2048, type=L\n")
    with open(path, "r+b") as f:
        f.seek(MiB)
        for _ in range(size_mib - 2):
            f.write(os.urandom(MiB))
    return path


# ------------------------------------------------------------------ first job held open


class Gate:
    """Progress callback holding the job at its first chunk of ``phases`` until released."""

    def __init__(self, *phases: str) -> None:
        self.phases = phases
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, p: Progress) -> None:
        if self.running.is_set() or p.phase not in self.phases or p.bytes_done <= 0:
            return
        self.running.set()
        self.release.wait(GATE_TIMEOUT)


class FirstJob:
    """Runs ``job(gate)`` in a thread; :meth:`start` returns once it is inside its work."""

    def __init__(self, job: Callable[[Gate], Any], *phases: str) -> None:
        self.gate = Gate(*phases)
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(job,), daemon=True)

    def _run(self, job: Callable[[Gate], Any]) -> None:
        try:
            self.result = job(self.gate)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.gate.running.set()  # never leave the test waiting

    def start(self) -> FirstJob:
        self.thread.start()
        assert self.gate.running.wait(GATE_TIMEOUT), "the first job never got going"
        if self.error is not None:
            raise AssertionError(f"the first job failed before the second started: {self.error}")
        return self

    def finish(self) -> Any:
        """Let the first job go on; return its report (or raise what it raised)."""
        self.gate.release.set()
        self.thread.join(300)
        assert not self.thread.is_alive(), "the first job did not finish"
        if self.error is not None:
            raise self.error
        return self.result


@contextlib.contextmanager
def first_job(job: Callable[[Gate], Any], *phases: str) -> Iterator[FirstJob]:
    fj = FirstJob(job, *phases)
    try:
        yield fj.start()
    finally:
        fj.gate.release.set()
        fj.thread.join(300)


@dataclass
class Outcome:
    """What the second job of a pair did."""

    error: RescueError | None = None
    report: Any = None
    stage: str = ""  # "plan" (refused before restore() ran) or "run"

    def describe(self) -> str:
        if self.error is None:
            outcome = getattr(self.report, "outcome", None)
            return f"it was NOT refused (outcome {outcome!r})"
        return f"{type(self.error).__name__} at {self.stage}: {self.error}"


def try_restore(image: Path, target: str | Path, **kw: Any) -> Outcome:
    try:
        plan = plan_restore(image, confirmed(target), accept_warnings=True, **kw)
    except RescueError as exc:
        return Outcome(exc, None, "plan")
    try:
        return Outcome(None, restore(plan), "run")
    except RescueError as exc:
        return Outcome(exc, getattr(exc, "report", None), "run")


def try_capture(source: str | Path, dest: Path, **kw: Any) -> Outcome:
    try:
        return Outcome(None, capture(source, dest, **kw), "run")
    except RescueError as exc:
        return Outcome(exc, getattr(exc, "report", None), "run")


def try_verify(image: Path) -> Outcome:
    try:
        return Outcome(None, verify_image(image), "run")
    except RescueError as exc:
        return Outcome(exc, getattr(exc, "report", None), "run")


def restore_job(image: Path, target: str | Path) -> Callable[[Gate], Any]:
    plan = plan_restore(image, confirmed(target), accept_warnings=True)
    return lambda gate: restore(plan, progress=gate)


def capture_job(source: str | Path, dest: Path) -> Callable[[Gate], Any]:
    return lambda gate: capture(source, dest, progress=gate)


def verify_job(image: Path) -> Callable[[Gate], Any]:
    return lambda gate: verify_image(image, progress=gate)


def assert_lock_refusal(out: Outcome, first: str, first_dev: str | None = None) -> None:
    """Refused by the writer lock, naming the job that holds it, with a failed report."""
    assert isinstance(out.error, LockError), (
        f"the second job should be refused by the writer lock held by the running {first}: "
        + out.describe()
    )
    msg = str(out.error)
    assert f"process {os.getpid()}" in msg, msg
    assert first in msg, msg
    if first_dev is not None:
        assert first_dev in msg, msg
    if out.stage == "run":
        failed_report(out.error)


# ------------------------------------------------------------------ module images


@pytest.fixture(scope="module")
def gpt_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 32 MiB GPT disk (two ext4 partitions, real files), captured once."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates loop devices (runs in CI, which is root)")
    work = tmp_path_factory.mktemp("fault-target-gpt")
    with loop_factory(work / "loops") as lf:
        lf.workdir.mkdir(parents=True, exist_ok=True)
        src = make_small_gpt(lf, work)
        image = capture_to(src.path, work / "image")
    yield image


@pytest.fixture(scope="module")
def random_image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 48 MiB disk image file of random bytes (incompressible), captured (no root)."""
    work = tmp_path_factory.mktemp("fault-target-random")
    source = make_random_disk_file(work / "source.img", 48)
    return {"source": source, "image": capture_to(source, work / "image")}


# ================================================================== 1. target detached


GONE = re.compile(
    r"detach|went away|vanish|gone|disappear|removed|no longer|not the device you confirmed"
    r"|changed",
    re.I,
)


@pytest.mark.root
@pytest.mark.parametrize(
    ("hook_phase", "verify"),
    [("verify", True), ("grow", False), ("grow", True)],
    ids=["at-verify", "at-grow-no-verify", "at-grow-verify"],
)
def test_target_detached_mid_job_nothing_written_to_the_next_loop(
    gpt_image: Path, loops: LoopFactory, tmp_path: Path, hook_phase: str, verify: bool
) -> None:
    """Issue 9.1: `losetup -d` of the target mid-job, a bystander attached right after.

    Before the fix, the bystander got the same /dev/loopN and the post-restore steps
    (fit the GPT to the larger disk, tell the kernel, grow) wrote onto it, and the
    restore said success. After it, the target is held open for the whole job (so the
    detach is only scheduled and the bystander gets another name) and the job fails,
    saying the confirmed target went away.
    """
    target = loops.create(48, fill="random")  # larger than the 32 MiB source: grow runs
    # Once detached, /dev/loopN is no longer ours: keep the factory from detaching that name.
    loops.disks.remove(target)
    bystander_file = random_file(tmp_path / "bystander.img", 48)
    guard_file = random_file(tmp_path / "guard.img", 48)
    bystander_before, guard_before = sha(bystander_file), sha(guard_file)
    state: dict[str, Any] = {}

    def hook(p: Progress) -> None:
        if p.phase != hook_phase or "hooked" in state:
            return
        state["hooked"] = True
        r = subprocess.run(["losetup", "-d", target.path], capture_output=True, text=True)
        state["detach"] = (r.returncode, r.stderr.strip())
        # udev may hold the device open for a moment (its probe after our writer closed it):
        # then the detach is deferred. Give it a second to happen; a restore that holds the
        # target open keeps it bound all along.
        deadline = time.monotonic() + 1.0
        while loop_backing(target.path) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        state["still_bound_after_detach"] = loop_backing(target.path) is not None
        state["bystander"] = attach(bystander_file)
        if state["bystander"] != target.path and loop_backing(target.path) is None:
            # The name is free but another number was picked: occupy the freed name with a
            # guard of ours, so that a write to it can only hit our own file.
            g = subprocess.run(["losetup", target.path, str(guard_file)], capture_output=True)
            if g.returncode == 0:
                state["guard"] = target.path

    plan = plan_restore(gpt_image, confirmed(target.path), verify=verify, accept_warnings=True)
    error: RescueError | None = None
    report: Any = None
    try:
        try:
            report = restore(plan, progress=hook)
        except RescueError as exc:
            error = exc
        assert state.get("hooked"), f"the restore never reached the {hook_phase!r} phase"
        # flush and release the bystander and guard before reading their files
        detach_if_ours(state.get("bystander"), bystander_file)
        detach_if_ours(state.get("guard"), guard_file)
        same_name = state["bystander"] == target.path
        assert sha(bystander_file) == bystander_before, (
            f"the restore wrote onto the bystander {state['bystander']} "
            f"({'the same name as' if same_name else 'another name than'} the detached target "
            f"{target.path}); restore outcome: "
            + (f"{report.outcome!r}, notes {report.notes}" if report else repr(error))
        )
        if "guard" in state:
            assert sha(guard_file) == guard_before, f"the restore wrote onto {state['guard']}"
        assert error is not None, (
            f"the restore reported {report.outcome!r} although its target {target.path} was "
            f"detached at the {hook_phase!r} phase (bystander on {state['bystander']}); "
            f"notes: {report.notes}; warnings: {report.warnings}"
        )
        assert isinstance(error, (UnsafeTargetError, RestoreError)), (
            f"expected TargetChangedError/UnsafeTargetError/RestoreError, got "
            f"{type(error).__name__}: {error}"
        )
        assert GONE.search(str(error)), f"the message does not say the target went away: {error}"
        rep = failed_report(error)
        assert rep.outcome != "success"
    finally:
        detach_if_ours(state.get("bystander"), bystander_file)
        detach_if_ours(state.get("guard"), guard_file)
        detach_if_ours(target.path, target.backing)
        with contextlib.suppress(FileNotFoundError):
            target.backing.unlink()


# ================================================================== 2. aliases as targets


@dataclass
class ImageOnLoop:
    x: LoopDisk  # loop disk X: ext4 on the whole device, mounted, holds the image
    mnt: Path
    image: Path


@pytest.fixture
def image_on_loop(loops: LoopFactory, tmp_path: Path) -> ImageOnLoop:
    x = loops.create(64)
    mkfs_ext4(x.path, "images")
    mnt = Path(x.mount(None, tmp_path / "images"))
    src = loops.create(16, table="label: gpt\nstart=2048, type=L\n")
    mkfs_ext4(src.part(1), "small")
    image = capture_to(src.path, mnt / "server1")
    loops.remove(src)
    return ImageOnLoop(x=x, mnt=mnt, image=image)


def refused_plan(image: Path, target: str | Path) -> UnsafeTargetError:
    """plan_restore must refuse ``target`` as unsafe; never gets as far as writing."""
    try:
        plan = plan_restore(image, confirmed(target), accept_warnings=True)
    except UnsafeTargetError as exc:
        return exc
    plan.image.close()
    pytest.fail(f"plan_restore accepted {target} as a target (it must be refused as unsafe)")


def image_disk_intact(ctx: ImageOnLoop) -> None:
    """The image still verifies and X's filesystem is clean."""
    assert verify_image(ctx.image).outcome == "success"
    ctx.x.umount_all()
    r = subprocess.run(["fsck.ext4", "-fn", ctx.x.path], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.root
@pytest.mark.udev
def test_second_loop_on_the_image_disk_file_is_not_a_target(
    image_on_loop: ImageOnLoop, loops: LoopFactory
) -> None:
    """Issue 9.2a: Y is another loop over the file of X, which holds the image."""
    ctx = image_on_loop
    y = alias_of(loops, ctx.x)

    disks = {d.path: d for d in scan_disks(image_paths=[ctx.image])}
    assert not disks[ctx.x.path].targetable  # the plain case, already handled
    ydisk = disks[y.path]
    assert not ydisk.targetable, (
        f"{y.path} (same backing file as {ctx.x.path}, which holds the image) is offered "
        "as a target"
    )
    assert any(re.search(r"image|backing|same file", r, re.I) for r in ydisk.reasons), ydisk.reasons

    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="250")
    cmd = [sys.executable, "-m", "rescueui", "disks", "--image", str(ctx.image)]
    js = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, cwd=REPO)
    assert js.returncode == 0, js.stderr
    listed = {d["path"]: d for d in json.loads(js.stdout)}
    assert listed[y.path]["targetable"] is False, listed[y.path]["reasons"]
    table = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert table.returncode == 0, table.stderr
    for line in table.stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line)]
        if y.path in cells:
            assert "yes" not in cells, line

    err = refused_plan(ctx.image, y.path)
    assert re.search(r"image|backing|same file", str(err), re.I), str(err)
    image_disk_intact(ctx)


@pytest.mark.root
def test_backing_file_of_the_image_disk_as_file_target_refused(
    image_on_loop: ImageOnLoop,
) -> None:
    """Issue 9.2b: the file behind X (which holds the image) given as a file target."""
    ctx = image_on_loop
    refused_plan(ctx.image, ctx.x.backing)
    image_disk_intact(ctx)


@pytest.mark.root
def test_hard_link_to_the_image_disk_file_as_file_target_refused(
    image_on_loop: ImageOnLoop, tmp_path: Path
) -> None:
    """Issue 9.2c: a hard link to X's backing file: another name, the same inode."""
    ctx = image_on_loop
    link = tmp_path / "loops" / "innocent-looking-vm.img"
    os.link(ctx.x.backing, link)
    try:
        refused_plan(ctx.image, link)
        image_disk_intact(ctx)
    finally:
        link.unlink()


@pytest.mark.root
def test_loop_alias_of_a_mounted_filesystem_refused(
    gpt_image: Path, loops: LoopFactory, tmp_path: Path
) -> None:
    """Issue 9.2d: W is a loop over the file of Z, whose filesystem is mounted (via Z)."""
    z = loops.create(48)
    mkfs_ext4(z.path, "busy")
    z.mount(None, tmp_path / "busy")
    w = alias_of(loops, z)
    err = refused_plan(gpt_image, w.path)
    assert "mounted" in str(err), str(err)
    z.umount_all()
    r = subprocess.run(["fsck.ext4", "-fn", z.path], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ================================================================== 3. capture/restore mixing


@pytest.mark.root
def test_capture_of_a_disk_being_restored_refused(
    gpt_image: Path, loops: LoopFactory, tmp_path: Path
) -> None:
    """Issue 9.3a: capture(source=T) while a restore writes T."""
    t = loops.create(32)
    dest = tmp_path / "capture-of-t"
    with first_job(restore_job(gpt_image, t.path), "write") as first:
        out = try_capture(t.path, dest)
        report = first.finish()
    assert isinstance(out.error, (LockError, UnsafeTargetError)), (
        f"a capture of {t.path} while a restore writes it must be refused: " + out.describe()
    )
    if isinstance(out.error, UnsafeTargetError):
        assert "in use" in str(out.error), str(out.error)
    failed_report(out.error)
    assert no_complete_image(dest), "a complete image was made of a disk being written"
    assert report.outcome == "success", report.error


@pytest.mark.root
def test_restore_onto_a_disk_being_captured_refused(
    gpt_image: Path, loops: LoopFactory, tmp_path: Path
) -> None:
    """Issue 9.3b: a restore onto S while a capture reads S."""
    s = loops.create(32, fill="random")
    before = sha(s.backing)
    dest = tmp_path / "capture-of-s"
    with first_job(capture_job(s.path, dest), "capture") as first:
        out = try_restore(gpt_image, s.path)
        cap_error: BaseException | None = None
        try:
            first.finish()
        except RescueError as exc:
            cap_error = exc
    assert isinstance(out.error, (LockError, UnsafeTargetError)), (
        f"a restore onto {s.path} while it is being captured must be refused: " + out.describe()
    )
    if out.stage == "run":
        failed_report(out.error)
    assert sha(s.backing) == before, f"{s.path} was written while it was being captured"
    assert cap_error is None, f"the capture itself failed: {cap_error}"


@pytest.mark.root
def test_capture_destination_on_an_alias_of_the_source_refused(
    loops: LoopFactory, tmp_path: Path
) -> None:
    """Issue 9.3c: the destination is on S's second partition, mounted through another
    loop device (A) on the same backing file."""
    s = loops.create(64, table=SMALL_GPT)
    mkfs_ext4(s.part(2), "data")
    a = alias_of(loops, s, partitions=True)
    mnt = Path(a.mount(2, tmp_path / "alias-mnt"))
    dest = mnt / "image"
    seen: list[Progress] = []
    out = try_capture(s.path, dest, progress=seen.append)
    read = max((p.bytes_done for p in seen), default=0)
    assert out.error is not None, (
        f"capturing {s.path} into {dest} (on {a.part(2)}, a loop over the same file) was not "
        f"refused; {read} bytes were read and the image was written into the disk being "
        "captured"
    )
    assert re.search(r"being captured|same disk|same backing|read-write", str(out.error), re.I), (
        str(out.error)
    )
    assert read == 0, f"refused only after reading {read} bytes"
    failed_report(out.error)
    assert no_complete_image(dest)


# ================================================================== 4. two jobs at once


@pytest.mark.root
@pytest.mark.parametrize("same", [False, True], ids=["other-disk", "same-disk"])
def test_restore_then_restore_refused(gpt_image: Path, loops: LoopFactory, same: bool) -> None:
    a = loops.create(32, fill="random")
    b = a if same else loops.create(32, fill="random")
    b_before = sha(b.backing) if not same else None
    with first_job(restore_job(gpt_image, a.path), "write") as first:
        out = try_restore(gpt_image, b.path)
        report = first.finish()
    if same:
        assert isinstance(out.error, (LockError, UnsafeTargetError)), out.describe()
    else:
        assert_lock_refusal(out, "restore", a.path)
        assert sha(b.backing) == b_before
    assert report.outcome == "success", report.error


@pytest.mark.root
def test_restore_then_capture_of_another_disk_refused(
    gpt_image: Path, loops: LoopFactory, tmp_path: Path
) -> None:
    a = loops.create(32, fill="random")
    c = loops.create(32, fill="random")
    dest = tmp_path / "capture-of-c"
    with first_job(restore_job(gpt_image, a.path), "write") as first:
        out = try_capture(c.path, dest)
        report = first.finish()
    assert_lock_refusal(out, "restore", a.path)
    assert no_complete_image(dest)
    assert report.outcome == "success", report.error


@pytest.mark.root
def test_capture_then_restore_onto_another_disk_refused(
    gpt_image: Path, loops: LoopFactory, tmp_path: Path
) -> None:
    c = loops.create(32, fill="random")
    b = loops.create(32, fill="random")
    before = sha(b.backing)
    with first_job(capture_job(c.path, tmp_path / "capture-of-c"), "capture") as first:
        out = try_restore(gpt_image, b.path)
        report = first.finish()
    assert_lock_refusal(out, "capture")
    assert sha(b.backing) == before, f"{b.path} was written while a capture ran"
    assert report.outcome == "success", report.error


@pytest.mark.root
@pytest.mark.parametrize("same", [False, True], ids=["other-disk", "same-disk"])
def test_capture_then_capture_refused(loops: LoopFactory, tmp_path: Path, same: bool) -> None:
    c = loops.create(32, fill="random")
    d = c if same else loops.create(32, fill="random")
    dest = tmp_path / "second-capture"
    with first_job(capture_job(c.path, tmp_path / "first-capture"), "capture") as first:
        out = try_capture(d.path, dest)
        report = first.finish()
    assert_lock_refusal(out, "capture")
    assert no_complete_image(dest)
    assert report.outcome == "success", report.error


@pytest.mark.root
@pytest.mark.parametrize("verify_first", [True, False], ids=["verify-first", "restore-first"])
def test_verify_and_restore_of_the_same_image_both_succeed(
    gpt_image: Path, loops: LoopFactory, verify_first: bool
) -> None:
    t = loops.create(32, fill="random")
    if verify_first:
        with first_job(verify_job(gpt_image), "verify") as first:
            out = try_restore(gpt_image, t.path)
            first_report = first.finish()
    else:
        with first_job(restore_job(gpt_image, t.path), "write") as first:
            out = try_verify(gpt_image)
            first_report = first.finish()
    assert out.error is None, out.describe()
    assert out.report.outcome == "success"
    assert first_report.outcome == "success", first_report.error


@pytest.mark.root
@pytest.mark.parametrize("second", ["verify", "restore"])
def test_image_still_being_captured_is_refused_as_incomplete(
    loops: LoopFactory, tmp_path: Path, second: str
) -> None:
    c = loops.create(32, fill="random")
    dest = tmp_path / "being-captured"
    t = loops.create(48, fill="random")
    before = sha(t.backing)
    with first_job(capture_job(c.path, dest), "capture") as first:
        out = try_verify(dest) if second == "verify" else try_restore(dest, t.path)
        report = first.finish()
    assert isinstance(out.error, ImageError), out.describe()
    assert "incomplete" in str(out.error), str(out.error)
    assert sha(t.backing) == before
    assert report.outcome == "success", report.error


# ================================================================== 5. target fills up


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs")
    where = tmp_path / "small-fs"
    where.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)])
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


@pytest.mark.root
def test_file_target_on_a_full_filesystem(random_image: dict[str, Path], small_tmpfs: Path) -> None:
    """Issue 9.5a: a sparse 48 MiB file target on a 16 MiB filesystem."""
    target = small_tmpfs / "vm-disk.img"
    with open(target, "wb") as f:
        f.truncate(48 * MiB)  # sparse: fits the 16 MiB filesystem until it is written
    out = try_restore(random_image["image"], target)
    assert out.error is not None, out.describe()
    msg = str(out.error)
    assert re.search(r"full|space", msg, re.I), msg
    assert "Internal error" not in msg, msg
    if out.stage == "run":
        assert isinstance(out.error, RescueError)
        failed_report(out.error)


@pytest.mark.root
def test_loop_target_over_a_file_on_a_full_filesystem(
    random_image: dict[str, Path], small_tmpfs: Path, loops: LoopFactory
) -> None:
    """Issue 9.5b: the loop target's sparse backing file cannot grow past 16 MiB."""
    disk = loops.create(48, backing_dir=small_tmpfs)
    try:
        out = try_restore(random_image["image"], disk.path)
        assert out.error is not None, out.describe()
        msg = str(out.error)
        assert out.stage == "run", f"refused before writing: {msg}"
        assert disk.path in msg, msg
        assert re.search(r"(byte|offset) \d+", msg), msg
        assert "Internal error" not in msg, msg
        report = failed_report(out.error)
        assert report.outcome != "success"
    finally:
        loops.remove(disk)  # before the tmpfs goes


# ================================================================== 6. resume: durable region changed


class CancelAfterChunks:
    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.event = threading.Event()

    def __call__(self, p: Progress) -> None:
        if p.phase == "write" and p.last_chunk is not None:
            self.seen += 1
            if self.seen >= self.n:
                self.event.set()


def test_resume_finds_a_durable_region_changed(
    random_image: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9.6: bytes the journal says are durable were changed before the resume."""
    image = tmp_path / "image"
    shutil.copytree(
        random_image["image"], image, ignore=shutil.ignore_patterns("reports", "restore-journal-*")
    )
    target = random_file(tmp_path / "target.img", 48)
    plan = plan_restore(image, confirmed(target), accept_warnings=True)
    plan.checkpoint_bytes = 4 * MiB
    stopper = CancelAfterChunks(6)
    with pytest.raises(CancelledError):
        restore(plan, progress=stopper, cancel=stopper.event)
    journals = list(image.glob("restore-journal-*.json"))
    assert len(journals) == 1
    durable = json.loads(journals[0].read_text())["durable_bytes"]
    assert durable >= 8 * MiB, durable

    where = durable // 2 + 77  # well inside the durable region, in a data chunk
    with open(target, "r+b") as f:
        f.seek(where)
        old = f.read(16)
        f.seek(where)
        f.write(bytes(b ^ 0x5A for b in old))
        os.fsync(f.fileno())

    offsets: list[int] = []
    real = TargetHandle.pwrite

    def spy(self: TargetHandle, view: memoryview, offset: int) -> None:
        offsets.append(offset)
        real(self, view, offset)

    monkeypatch.setattr(TargetHandle, "pwrite", spy)
    plan = plan_restore(image, confirmed(target), resume=True, accept_warnings=True)
    report = restore(plan)
    assert report.outcome == "success", report.error
    texts = report.notes + report.warnings
    assert not [t for t in texts if "not yet durable" in t], texts
    assert [t for t in texts if re.search(r"changed|modified", t, re.I)], texts
    assert offsets and min(offsets) <= where, "the changed chunk was not written again"
    r = subprocess.run(["cmp", str(target), str(random_image["source"])])
    assert r.returncode == 0, "the target differs from the source after the resume"


# ================================================================== found by a hostile re-test


@pytest.mark.root
def test_capture_of_a_disk_being_restored_refused_even_with_another_lock(
    gpt_image: Path, loops: LoopFactory, tmp_path: Path
) -> None:
    """Two rescueui with different writer locks (another environment): the restore's
    exclusive hold on its target alone keeps a capture of it from mixing old and new data."""
    t = loops.create(32)
    dest = tmp_path / "capture-of-t"
    with first_job(restore_job(gpt_image, t.path), "write") as first:
        out = try_capture(t.path, dest, lock_path=str(tmp_path / "another.lock"))
        report = first.finish()
    assert isinstance(out.error, RescueError), out.describe()
    assert "held exclusively by another program" in str(out.error), str(out.error)
    failed_report(out.error)
    assert no_complete_image(dest)
    assert report.outcome == "success", report.error


@pytest.mark.root
def test_capture_of_a_loop_whose_alias_is_being_restored_refused(
    gpt_image: Path, loops: LoopFactory, tmp_path: Path
) -> None:
    """The restore writes loop Y; the capture reads loop X on the same backing file."""
    y = loops.create(32)
    x = alias_of(loops, y)
    dest = tmp_path / "capture-of-x"
    with first_job(restore_job(gpt_image, y.path), "write") as first:
        out = try_capture(x.path, dest, lock_path=str(tmp_path / "another.lock"))
        report = first.finish()
    assert isinstance(out.error, RescueError), out.describe()
    assert y.name in str(out.error) and "same storage" in str(out.error), str(out.error)
    assert no_complete_image(dest)
    assert report.outcome == "success", report.error


@pytest.mark.root
def test_restore_onto_an_alias_of_a_disk_being_captured_refused(
    gpt_image: Path, loops: LoopFactory, tmp_path: Path
) -> None:
    """The capture reads loop X and claims its alias Y: a restore onto Y (another lock) fails."""
    x = loops.create(32, fill="random")
    y = alias_of(loops, x)
    before = sha(x.backing)
    plan = plan_restore(gpt_image, confirmed(y.path), accept_warnings=True)
    plan.lock_path = str(tmp_path / "another.lock")
    with first_job(capture_job(x.path, tmp_path / "capture-of-x"), "capture") as first:
        try:
            restore(plan)
            error: RescueError | None = None
        except RescueError as exc:
            error = exc
        first.finish()
    assert isinstance(error, UnsafeTargetError) and "in use" in str(error), error
    assert sha(x.backing) == before


@pytest.mark.root
def test_target_shrunk_mid_write_is_named_as_a_changed_target(
    random_image: dict[str, Path], loops: LoopFactory
) -> None:
    """A target that gets smaller while it is written (losetup -c after truncate): the
    message says the target changed, not that a filesystem is full."""
    t = loops.create(64)
    plan = plan_restore(random_image["image"], confirmed(t.path), accept_warnings=True)
    shrunk = threading.Event()

    def shrink(p: Progress) -> None:
        if p.phase == "write" and p.bytes_done > 4 * MiB and not shrunk.is_set():
            shrunk.set()
            os.truncate(t.backing, 8 * MiB)
            subprocess.run(["losetup", "-c", t.path], check=True)

    with pytest.raises(RescueError) as exc:
        restore(plan, progress=shrink)
    assert shrunk.is_set()
    assert isinstance(exc.value, TargetChangedError), exc.value
    assert "size" in str(exc.value), str(exc.value)
    failed_report(exc.value)


@pytest.mark.root
@pytest.mark.udev
def test_confirming_a_device_that_took_the_chosen_disks_name_is_refused(
    loops: LoopFactory, tmp_path: Path
) -> None:
    """The TUI's path: the operator chose loopN (pre-flight, Confirm dialog); loopN is
    detached and another file attached under the same name; the code typed for the first
    disk must not confirm the second."""
    from rescueui.core.session import Session

    t = loops.create(32)
    bystander = random_file(tmp_path / "bystander.img", 32)
    before = sha(bystander)
    session = Session(mount_media=False)
    disk = next(d for d in scan_disks() if d.path == t.path)
    code = session.confirmation_code(disk)  # the dialog opens: identity shown
    subprocess.run(["losetup", "-d", t.path], check=True)
    swapped = subprocess.run(["losetup", t.path, str(bystander)], capture_output=True)
    try:
        if swapped.returncode != 0:
            pytest.skip(f"{t.path} was taken by another process meanwhile")
        with pytest.raises(TargetChangedError, match="not the target you were shown"):
            session.confirm(disk, code)
        # and a fresh look at the same record refuses the device too (its disk sequence
        # number is not the listed one)
        fresh = Session(mount_media=False)
        with pytest.raises(TargetChangedError, match="not the disk you chose"):
            fresh.confirmation_code(disk)
    finally:
        detach_if_ours(t.path, bystander)
    assert sha(bystander) == before
