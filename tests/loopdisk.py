"""Real, file-backed loop disks for tests: created with sfdisk/mkfs, always torn down.

Only files and loop devices created here are ever written. Partitions are made
known to the kernel with ``partx -a`` (this kernel has no partition-table
parsers, so ``losetup -P`` alone finds none), then ``udevadm settle``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


def run(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def settle() -> None:
    subprocess.run(["udevadm", "settle", "--timeout=20"], check=False)


def have_root() -> bool:
    return os.geteuid() == 0


def udev_running() -> bool:
    return Path("/run/udev/control").exists() and shutil.which("udevadm") is not None


@dataclass
class LoopDisk:
    path: str  # /dev/loopN
    backing: Path
    read_only: bool = False
    mounts: list[str] = field(default_factory=list)

    def part(self, n: int) -> str:
        return f"{self.path}p{n}"

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def mount(self, n: int | None, where: str | Path, *, options: str = "") -> str:
        dev = self.path if n is None else self.part(n)
        where = str(where)
        os.makedirs(where, exist_ok=True)
        cmd = ["mount"] + (["-o", options] if options else []) + [dev, where]
        run(cmd)
        self.mounts.append(where)
        return where

    def umount_all(self) -> None:
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", m], check=False, capture_output=True)
        self.mounts.clear()

    def rescan(self) -> None:
        """Tell the kernel about the partitions now in the table (BLKPG via partx)."""
        subprocess.run(["partx", "-d", self.path], check=False, capture_output=True)
        subprocess.run(["partx", "-a", self.path], check=False, capture_output=True)
        settle()


def attach(backing: Path, *, read_only: bool = False) -> str:
    cmd = ["losetup", "-f", "--show"] + (["-r"] if read_only else []) + [str(backing)]
    last: Exception | None = None
    for _ in range(5):  # losetup -f can race with another test run attaching at once
        try:
            return run(cmd).stdout.strip()
        except subprocess.CalledProcessError as exc:
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"losetup failed: {last}")


def detach(path: str) -> None:
    subprocess.run(["partx", "-d", path], check=False, capture_output=True)
    for _ in range(10):
        r = subprocess.run(["losetup", "-d", path], check=False, capture_output=True)
        if r.returncode == 0:
            break
        time.sleep(0.2)
    settle()


def write_table(path: str | Path, script: str) -> None:
    """Write a partition table with real sfdisk (``script`` in sfdisk's input format)."""
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)], input=script)


class LoopFactory:
    """Creates loop disks in a temp dir; :meth:`cleanup` detaches and deletes all of them."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="rescueui-test-"))
        self.disks: list[LoopDisk] = []

    def create(
        self,
        size_mib: int,
        *,
        table: str | None = None,
        read_only: bool = False,
        fill: str = "zero",
        backing_dir: Path | None = None,
    ) -> LoopDisk:
        """A new loop disk. ``table`` is an sfdisk script applied before attaching.

        ``fill``: "zero" (sparse file) or "random" (every byte random, to prove a
        restore overwrites everything it should).
        """
        d = Path(backing_dir or self.workdir)
        fd, name = tempfile.mkstemp(prefix="disk-", suffix=".img", dir=d)
        os.close(fd)
        backing = Path(name)
        if fill == "random":
            with open(backing, "wb") as f:
                for _ in range(size_mib):
                    f.write(os.urandom(MiB))
        else:
            os.truncate(backing, size_mib * MiB)
        if table:
            write_table(backing, table)
        path = attach(backing, read_only=read_only)
        disk = LoopDisk(path=path, backing=backing, read_only=read_only)
        self.disks.append(disk)
        if table:
            disk.rescan()
        else:
            settle()
        return disk

    def remove(self, disk: LoopDisk) -> None:
        disk.umount_all()
        detach(disk.path)
        with contextlib.suppress(FileNotFoundError):
            disk.backing.unlink()
        if disk in self.disks:
            self.disks.remove(disk)

    def cleanup(self) -> None:
        for disk in list(self.disks):
            try:
                self.remove(disk)
            except Exception:  # keep cleaning the others
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def loop_factory(workdir: Path | None = None) -> Iterator[LoopFactory]:
    factory = LoopFactory(workdir)
    try:
        yield factory
    finally:
        factory.cleanup()


def mkfs_ext4(dev: str, label: str) -> None:
    run(["mkfs.ext4", "-q", "-F", "-L", label, dev])


def mkfs_vfat(dev: str, label: str) -> None:
    run(["mkfs.vfat", "-n", label, dev])


GPT_TWO_PARTS = """label: gpt
start=2048, size={p1}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
"""
