"""The marks a test module that needs root and system tools carries."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

SBIN = "/usr/local/sbin:/usr/sbin:/sbin"  # where root's tools are, also off a user's PATH


def needs(*tools: str, slow: bool = False, udev: bool = False) -> list[Any]:
    """``pytestmark`` for a module that needs root and ``tools`` (skipped, naming the missing
    ones, where a tool is not installed); ``slow``/``udev`` add those marks."""
    missing = [t for t in tools if shutil.which(t) is None and shutil.which(t, path=SBIN) is None]
    marks: list[Any] = [pytest.mark.root]
    if slow:
        marks.append(pytest.mark.slow)
    if udev:
        marks.append(pytest.mark.udev)
    marks.append(
        pytest.mark.skipif(
            bool(missing), reason=f"missing tools: {', '.join(missing)} (.ci/packages.txt)"
        )
    )
    return marks
