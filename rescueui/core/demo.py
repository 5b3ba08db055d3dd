"""The demo environment: a sample image and file-backed virtual disks, no root, no real disk.

``rescueui --demo`` (and ``make run``) runs the whole guided restore on this. It is built
once into a cache folder (``$XDG_CACHE_HOME/rescueui/demo`` or ``~/.cache/rescueui/demo``)
and rebuilt when :data:`DEMO_VERSION` changes:

- ``sample-disk.img``: a 64 MiB GPT disk image *file* with a small FAT ("EFI") partition
  populated with ``mcopy`` and an ext4 ("rootfs") partition populated without root by
  ``mkfs.ext4 -d`` from a folder of real files (a copy of some Python standard library
  modules and a README);
- ``demo-server-image/``: that disk captured with the real engine (:func:`rescueui.core.capture.capture`);
- ``demo-server-image-DAMAGED/``: a copy of the image with one byte flipped inside one compressed chunk;
- ``targets/*.img``: virtual target disks (sparse files) the restore writes into with the same
  engine: ``demo-disk-A`` (64 MiB), ``demo-disk-B`` (128 MiB) and ``demo-small`` (32 MiB, too
  small for the image, so the pre-flight refuses it).

Everything is presented as :class:`rescueui.core.disks.Disk` objects (bus ``"file"``) so the
front end cannot tell them from real disks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescueui.core import parttable
from rescueui.core.errors import RescueError, ToolMissingError
from rescueui.core.tools import find_tool, require_tool
from rescueui.core.units import MiB

DEMO_VERSION = 2
"""Bump when the demo layout or the image format changes: the cache is rebuilt."""

SAMPLE_DISK_SIZE = 64 * MiB
EFI_SIZE = 12 * MiB
TOOLS = ("sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy")
DEBIAN_PACKAGES = ("fdisk", "e2fsprogs", "dosfstools", "mtools")

# stdlib packages copied into the sample root filesystem: real files, a few MiB.
_STDLIB_SAMPLES = ("json", "email", "http", "logging", "asyncio", "xml", "urllib")


@dataclass(frozen=True)
class DemoTarget:
    """A virtual target disk: a sparse file with a made-up identity."""

    name: str
    size_bytes: int
    serial: str


DEMO_TARGETS: tuple[DemoTarget, ...] = (
    DemoTarget("demo-disk-A", 64 * MiB, "DEMO-A-4821"),
    DemoTarget("demo-disk-B", 128 * MiB, "DEMO-B-7315"),
    DemoTarget("demo-small", 32 * MiB, "DEMO-S-0962"),
)
HOTPLUG_TARGET = DemoTarget("demo-usb-C", 96 * MiB, "DEMO-U-5540")

BOOT_REASON = "boot medium (the running system lives here)"
IMAGE_REASON = "holds the selected image"


def demo_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rescueui" / "demo"


def _need_tools() -> None:
    missing = [t for t in TOOLS if find_tool(t) is None]
    if missing:
        raise ToolMissingError(
            f"The demo needs {', '.join(missing)}, which is not installed.",
            hint=f"Install the Debian packages: apt-get install {' '.join(DEBIAN_PACKAGES)}.",
        )


def _tool(name: str) -> str:
    return require_tool(
        name,
        message=f"{name} is not installed.",
        hint=f"Install the Debian packages: apt-get install {' '.join(DEBIAN_PACKAGES)}.",
    )


def _run(*cmd: str, input: str | None = None) -> None:
    proc = subprocess.run(
        [_tool(cmd[0]), *cmd[1:]], input=input, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RescueError(
            f"Building the demo failed: {' '.join(cmd)} said: {proc.stderr.strip() or proc.stdout.strip()}",
            hint="Delete the demo cache folder and try again.",
        )


def _sample_files(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "README.txt").write_text(
        "This is the rescueui demo server's root filesystem.\n"
        "It holds real files (a copy of some Python standard library modules) so that the\n"
        "image, the restore and the read-back verify move real data.\n"
    )
    etc = dest / "etc"
    etc.mkdir()
    (etc / "hostname").write_text("demo-server\n")
    (etc / "fstab").write_text(
        "LABEL=rootfs / ext4 defaults 0 1\nLABEL=EFI /boot/efi vfat umask=0077 0 2\n"
    )
    lib = dest / "usr" / "lib" / "python3"
    stdlib = Path(os.__file__).parent
    for pkg in _STDLIB_SAMPLES:
        src = stdlib / pkg
        if src.is_dir():
            shutil.copytree(src, lib / pkg, ignore=shutil.ignore_patterns("__pycache__", "test*"))


def _efi_files(dest: Path) -> None:
    boot = dest / "EFI" / "BOOT"
    boot.mkdir(parents=True)
    (boot / "README.TXT").write_text("Demo EFI system partition (no real boot loader).\n")
    # some bytes that do not compress to nothing
    (boot / "BOOTX64.EFI").write_bytes(hashlib.shake_256(b"rescueui-demo").digest(256 * 1024))


def _copy_into(disk: Path, part_file: Path, offset: int) -> None:
    with open(disk, "r+b") as out, open(part_file, "rb") as src:
        out.seek(offset)
        shutil.copyfileobj(src, out, 4 * MiB)


def sized_file(path: Path, size: int, *, fresh: bool = False) -> None:
    """A regular file of ``size`` bytes at ``path`` in the demo cache (sparse).

    The cache is not trusted: whatever else is at that name (a symbolic link to another
    file or to a device, a FIFO) is removed, never followed or written through. ``fresh``:
    start from an empty file.
    """
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if fresh or not stat.S_ISREG(st.st_mode):
            os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


def build_sample_disk(path: Path, workdir: Path) -> None:
    """Write a 64 MiB GPT disk image file with a FAT and an ext4 partition full of real files."""
    _need_tools()
    sized_file(path, SAMPLE_DISK_SIZE, fresh=True)
    _run(
        "sfdisk",
        "--quiet",
        "--no-reread",
        "--no-tell-kernel",
        str(path),
        input=(
            "label: gpt\n"
            "unit: sectors\n"
            f"start=2048, size={EFI_SIZE // 512}, type=U, name=EFI\n"
            "type=L, name=rootfs\n"
        ),
    )
    table = parttable.read_table(path)
    assert table is not None, f"sfdisk wrote no table on {path}"
    sector = int(table.get("sectorsize", 512))
    p1, p2 = table["partitions"][:2]

    efi_dir = workdir / "efi"
    _efi_files(efi_dir)
    efi_img = workdir / "p1.img"
    with open(efi_img, "wb") as f:
        f.truncate(p1["size"] * sector)
    _run("mkfs.vfat", "-n", "EFI", str(efi_img))
    _run("mcopy", "-s", "-i", str(efi_img), str(efi_dir / "EFI"), "::/")

    root_dir = workdir / "root"
    _sample_files(root_dir)
    root_img = workdir / "p2.img"
    with open(root_img, "wb") as f:
        f.truncate(p2["size"] * sector)
    _run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(root_dir), str(root_img))

    _copy_into(path, efi_img, p1["start"] * sector)
    _copy_into(path, root_img, p2["start"] * sector)


def corrupt_copy(image_dir: Path, dest: Path) -> None:
    """Copy an image folder and flip one byte inside one compressed, non-zero chunk."""
    from rescueui.core.image import Image

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(image_dir, dest)
    image = Image.open(dest)
    for stream in image.manifest.streams:
        for chunk in image.chunks(stream):
            if not chunk.zero and chunk.length > 64:
                data_file = dest / stream.data_file
                with open(data_file, "r+b") as f:
                    pos = chunk.offset + chunk.length // 2
                    f.seek(pos)
                    byte = f.read(1)
                    f.seek(pos)
                    f.write(bytes([byte[0] ^ 0xFF]))
                return
    raise RescueError(f"The demo image {image_dir} has no data chunk to corrupt.")


@dataclass
class DemoBuild:
    """Paths of a built demo cache."""

    root: Path
    sample_disk: Path
    image_dir: Path
    corrupt_image_dir: Path
    targets_dir: Path

    @property
    def stamp(self) -> Path:
        return self.root / "VERSION"


def _paths(root: Path) -> DemoBuild:
    return DemoBuild(
        root=root,
        sample_disk=root / "sample-disk.img",
        image_dir=root / "demo-server-image",
        corrupt_image_dir=root / "demo-server-image-DAMAGED",
        targets_dir=root / "targets",
    )


def _stamp_text() -> str:
    return f"rescueui-demo {DEMO_VERSION}\n"


def build_demo(cache_dir: Path | None = None, *, force: bool = False) -> DemoBuild:
    """Build the demo once (a few seconds); later calls reuse the cache if its stamp matches."""
    root = Path(cache_dir) if cache_dir is not None else demo_cache_dir()
    paths = _paths(root)
    if not force and paths.stamp.exists() and paths.stamp.read_text() == _stamp_text():
        if paths.image_dir.joinpath("manifest.json").exists():
            paths.targets_dir.mkdir(parents=True, exist_ok=True)
            return paths
    from rescueui.core.capture import capture

    root.mkdir(parents=True, exist_ok=True)
    if paths.stamp.exists():
        paths.stamp.unlink()
    for d in (paths.image_dir, paths.corrupt_image_dir, paths.targets_dir):
        if d.exists():
            shutil.rmtree(d)
    with tempfile.TemporaryDirectory(prefix="rescueui-demo-", dir=root) as tmp:
        build_sample_disk(paths.sample_disk, Path(tmp))
    # The demo's own writer lock: building it never waits for (or blocks) a real job.
    capture(paths.sample_disk, paths.image_dir, lock_path=str(root / "writer.lock"))
    corrupt_copy(paths.image_dir, paths.corrupt_image_dir)
    paths.targets_dir.mkdir(parents=True, exist_ok=True)
    paths.stamp.write_text(_stamp_text())
    return paths


def _probe_fs(path: Path, offset: int, size: int) -> dict[str, str]:
    """Filesystem type/label/UUID of a byte range of a file (``blkid -p``; no root needed)."""
    try:
        out = subprocess.run(
            [_tool("blkid"), "-p", "-o", "export", "-O", str(offset), "-S", str(size), str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError, RescueError):
        return {}
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _file_partitions(path: Path) -> tuple[str | None, list]:
    """The partition table found in a target file (what a restore would destroy)."""
    from rescueui.core.disks import Partition

    try:
        table = parttable.read_table(path)
    except (OSError, RescueError):
        return None, []
    if table is None:
        return None, []
    sector = int(table.get("sectorsize", 512))
    parts = []
    for i, p in enumerate(table.get("partitions", []), start=1):
        node = p.get("node", f"{path}{i}")
        number = int("".join(ch for ch in node[len(str(path)) :] if ch.isdigit()) or i)
        start, size = int(p["start"]) * sector, int(p["size"]) * sector
        fs = _probe_fs(path, start, size)
        parts.append(
            Partition(
                path=node,
                name=f"part{number}",
                number=number,
                devnum=(0, 0),
                start_bytes=start,
                size_bytes=size,
                fs_type=fs.get("TYPE"),
                label=fs.get("LABEL"),
                uuid=fs.get("UUID"),
                part_label=p.get("name"),
                part_type=p.get("type"),
                part_uuid=p.get("uuid"),
                mountpoints=[],
                swap=False,
                holders=[],
                read_only=False,
            )
        )
    return table.get("label"), parts


def file_disk(
    path: Path,
    *,
    serial: str | None,
    model: str = "Virtual disk",
    reasons: list[str] | None = None,
    roles: set[str] | None = None,
    bus: str = "file",
) -> object:
    """A :class:`Disk` describing a regular file (the demo's virtual disks)."""
    from rescueui.core.disks import Disk

    st = path.stat()
    table_type, parts = _file_partitions(path)
    return Disk(
        path=str(path),
        name=path.stem,
        devnum=(0, 0),
        size_bytes=st.st_size,
        model=model,
        vendor="rescueui",
        serial=serial,
        wwn=None,
        bus=bus,
        removable=bus == "usb",
        read_only=False,
        rotational=False,
        logical_sector_size=512,
        physical_sector_size=512,
        table_type=table_type,
        partitions=parts,
        mountpoints=[],
        swap=False,
        holders=[],
        roles=set(roles or ()),
        reasons=list(reasons or ()),
    )


DEFAULT_PACE = 16e6
"""Simulated speed of the virtual disks in bytes/s, so the live panels have time to be seen
(the real engine on a small file finishes in a blink). ``RESCUEUI_DEMO_PACE=0`` turns it off."""


def demo_pace() -> float:
    try:
        return float(os.environ.get("RESCUEUI_DEMO_PACE", DEFAULT_PACE))
    except ValueError:
        return DEFAULT_PACE


def paced(callback: Callable[[Any], None] | None, pace: float) -> Callable[[Any], None] | None:
    """Wrap a progress callback so the job runs no faster than ``pace`` bytes/s (demo only)."""
    if pace <= 0:
        return callback
    start = time.monotonic()

    def hook(p: Any) -> None:
        ahead = p.bytes_done / pace - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(min(ahead, 1.0))
        if callback is not None:
            callback(p)

    return hook


@dataclass
class DemoEnvironment:
    """What ``rescueui --demo`` shows as disks and images: all files in the demo cache."""

    build: DemoBuild
    pace: float = field(default_factory=demo_pace)
    plugged: list[DemoTarget] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, cache_dir: Path | None = None) -> DemoEnvironment:
        return cls(build=build_demo(cache_dir))

    def target_path(self, target: DemoTarget) -> Path:
        return self.build.targets_dir / f"{target.name}.img"

    def _ensure(self, target: DemoTarget) -> Path:
        path = self.target_path(target)
        sized_file(path, target.size_bytes)
        return path

    def _stick(self) -> Path:
        path = self.build.root / "rescue-stick.img"
        sized_file(path, 16 * 1024 * MiB)
        return path

    def reset_targets(self) -> None:
        """Blank every virtual target (fresh, empty disks)."""
        for t in (*DEMO_TARGETS, HOTPLUG_TARGET):
            p = self.target_path(t)
            if p.exists():
                p.unlink()

    def disks(self, image_paths: list[str | Path] | tuple = ()) -> list:
        """The demo disks: the sample server disk (the source), the 'USB stick' holding the image
        (boot medium, never a target) and the virtual targets."""
        disks = [
            file_disk(
                self.build.sample_disk,
                serial="DEMO-SRV-0001",
                model="Demo server (source)",
                bus="file",
            ),
            file_disk(
                self._stick(),
                serial="DEMO-USB-BOOT",
                model="Rescue USB stick (demo)",
                bus="usb",
                roles={"boot", "image"},
                reasons=[BOOT_REASON, IMAGE_REASON],
            ),
        ]
        with self._lock:
            targets = [*DEMO_TARGETS, *self.plugged]
        for t in targets:
            disks.append(file_disk(self._ensure(t), serial=t.serial))
        return disks

    def image_dirs(self) -> list[Path]:
        return [self.build.image_dir, self.build.corrupt_image_dir]

    def plug(self) -> tuple[str, Path] | None:
        """Simulate plugging in a USB disk; returns (action, path) or None if already plugged."""
        with self._lock:
            if HOTPLUG_TARGET in self.plugged:
                self.plugged.remove(HOTPLUG_TARGET)
                return ("remove", self.target_path(HOTPLUG_TARGET))
            self.plugged.append(HOTPLUG_TARGET)
        return ("add", self._ensure(HOTPLUG_TARGET))


def main(argv: list[str] | None = None) -> int:
    """``python -m rescueui.core.demo [--force]``: build the demo cache and print where."""
    args = sys.argv[1:] if argv is None else argv
    b = build_demo(force="--force" in args)
    print(b.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
