from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loopdisk import LoopFactory, have_root, udev_running

NEEDS_ROOT = "needs root: creates loop devices (runs in CI, which is root)"
NEEDS_UDEV = "needs a running udev (systemd-udevd); .ci/run starts one"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = have_root()
    udev = udev_running()
    for item in items:
        if "root" in item.keywords and not root:
            item.add_marker(pytest.mark.skip(reason=NEEDS_ROOT))
        elif "udev" in item.keywords and not udev:
            item.add_marker(pytest.mark.skip(reason=NEEDS_UDEV))


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[LoopFactory]:
    """Factory of real loop disks; every disk is unmounted, detached and deleted afterwards."""
    if not have_root():
        pytest.skip(NEEDS_ROOT)
    factory = LoopFactory(tmp_path / "loops")
    factory.workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(autouse=True)
def private_writer_lock(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test has its own machine-wide writer lock (RESCUEUI_LOCK), so a test never waits
    for, nor is refused by, a job of another test process or a real job on this machine.
    Tests about two jobs at once give both jobs the same lock path themselves."""
    if "RESCUEUI_LOCK" not in os.environ:
        monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path_factory.mktemp("lock") / "rescueui.lock"))
