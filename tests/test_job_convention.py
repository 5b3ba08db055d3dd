"""One failure convention for the engine's job functions (capture, verify_image, restore):
success returns the written JobReport; failure or cancel writes the report, then raises a
RescueError subclass with that report as ``exc.report``. No root needed (file disks)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.capture import capture
from rescueui.core.errors import CancelledError, CorruptImageError, RescueError
from rescueui.core.identity import confirm_target
from rescueui.core.report import JobReport
from rescueui.core.restore import plan_restore, restore
from rescueui.core.verify import verify_image
from tests.test_restore import capture_to, make_file_disk
from tests.test_restore_faults import corrupt_one_chunk, random_target

MiB = 1024 * 1024

Job = Callable[[Path, threading.Event], Any]


@pytest.fixture(autouse=True)
def private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path / "rescueui.lock"))


@pytest.fixture(scope="module")
def disk_and_image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("convention")
    source = work / "source.img"
    make_file_disk(source, 8 * MiB)
    return {"source": source, "image": capture_to(source, work / "image")}


def _image(src: dict[str, Path], tmp: Path, *, damaged: bool) -> Path:
    img = tmp / "img"
    shutil.copytree(src["image"], img, ignore=shutil.ignore_patterns("reports"))
    if damaged:
        corrupt_one_chunk(img, "p1", min_index=0)
    return img


def run_capture(src: dict[str, Path], tmp: Path, cancel: threading.Event) -> Any:
    return capture(src["source"], tmp / "captured", cancel=cancel)


def run_verify(src: dict[str, Path], tmp: Path, cancel: threading.Event, damaged: bool) -> Any:
    return verify_image(_image(src, tmp, damaged=damaged), cancel=cancel)


def run_restore(src: dict[str, Path], tmp: Path, cancel: threading.Event, damaged: bool) -> Any:
    target = random_target(tmp / "target.img")
    plan = plan_restore(
        _image(src, tmp, damaged=damaged), confirm_target(target, target.name), accept_warnings=True
    )
    return restore(plan, cancel=cancel)


JOBS: dict[str, Callable[..., Any]] = {
    "capture": lambda s, t, c, d: run_capture(s, t, c),
    "verify": run_verify,
    "restore": run_restore,
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_success_returns_the_written_report(
    job: str, disk_and_image: dict[str, Path], tmp_path: Path
) -> None:
    report = JOBS[job](disk_and_image, tmp_path, threading.Event(), False)
    assert isinstance(report, JobReport)
    assert report.outcome == "success", report.error
    assert report.report_files and all(Path(p).is_file() for p in report.report_files)


@pytest.mark.parametrize(
    ("job", "how", "exc_type", "outcome"),
    [
        ("capture", "cancel", CancelledError, "cancelled"),
        ("verify", "cancel", CancelledError, "cancelled"),
        ("verify", "damaged", CorruptImageError, "failed"),
        ("restore", "cancel", CancelledError, "cancelled"),
        ("restore", "damaged", CorruptImageError, "failed"),
    ],
)
def test_failure_raises_with_the_written_report(
    job: str,
    how: str,
    exc_type: type[RescueError],
    outcome: str,
    disk_and_image: dict[str, Path],
    tmp_path: Path,
) -> None:
    cancel = threading.Event()
    if how == "cancel":
        cancel.set()
    with pytest.raises(exc_type, match="cancelled" if how == "cancel" else "chunk") as excinfo:
        JOBS[job](disk_and_image, tmp_path, cancel, how == "damaged")
    exc = excinfo.value
    assert isinstance(exc, RescueError)
    report = exc.report  # type: ignore[attr-defined]
    assert isinstance(report, JobReport)
    assert report.outcome == outcome
    assert report.error and report.error in str(exc)
    assert report.report_files and all(Path(p).is_file() for p in report.report_files)
