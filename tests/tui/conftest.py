from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rescueui.core.demo import DemoBuild, DemoEnvironment, build_demo


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> DemoBuild:
    """The demo cache, built once per test run (real sfdisk, mkfs, capture)."""
    return build_demo(tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture
def demo_env(demo_build: DemoBuild) -> Iterator[DemoEnvironment]:
    """Fresh, blank virtual targets for each test; no pacing unless a test asks."""
    env = DemoEnvironment(build=demo_build, pace=0.0)
    env.reset_targets()
    yield env
    env.reset_targets()


def read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)
