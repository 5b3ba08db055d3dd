"""Run the rescueui command line from tests, and capture a disk image file with it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.loopdisk import attach, detach


def rescueui(
    *args: str | Path, check: bool = True, timeout: float = 1200
) -> subprocess.CompletedProcess[str]:
    """``python -m rescueui ARGS``; with ``check`` a non-zero exit fails the test, showing
    its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "rescueui", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rescueui {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def loop(backing: Path, *, read_only: bool = False) -> Iterator[str]:
    """A loop device over ``backing``, its partitions forgotten and detached afterwards."""
    dev = attach(backing, read_only=read_only)
    try:
        yield dev
    finally:
        subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
        detach(dev)


def capture(source: Path, dest: Path) -> Path:
    """``rescueui capture`` of the disk image file ``source`` (through a read-only loop
    device, as a disk) into the image folder ``dest``."""
    with loop(source, read_only=True) as dev:
        rescueui("capture", dev, dest, "--quiet")
    return dest
