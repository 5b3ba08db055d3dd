"""Disk image files with real filesystems, built without root (for the image-format tests).

ext4 is populated with ``mkfs.ext4 -d`` and vfat with ``mcopy``, both on separate files
that are then copied into the disk image at the partition offsets; the table is written
with real sfdisk. Nothing here needs a loop device.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
STDLIB = Path("/usr/lib/python3.11")


def run(*cmd: str | Path, input: str | None = None) -> str:
    return subprocess.run(
        [str(c) for c in cmd], check=True, capture_output=True, text=True, input=input
    ).stdout


@dataclass
class DiskFile:
    path: Path
    size: int
    parts: dict[int, tuple[int, int]]  # number -> (start bytes, size bytes)

    def read(self, start: int, size: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(size)

    def part_bytes(self, n: int) -> bytes:
        return self.read(*self.parts[n])


def _put(disk: Path, src: Path, offset: int) -> None:
    with open(src, "rb") as fin, open(disk, "r+b") as fout:
        fout.seek(offset)
        shutil.copyfileobj(fin, fout, 4 * MiB)


def make_ext4(path: Path, size: int, content: Path, label: str = "root") -> None:
    with open(path, "wb") as f:
        f.truncate(size)
    run("mkfs.ext4", "-q", "-F", "-L", label, "-d", content, path)


def make_vfat(path: Path, size: int, sources: list[Path], label: str = "EFI") -> None:
    with open(path, "wb") as f:
        f.truncate(size)
    run("mkfs.vfat", "-n", label, path)
    for s in sources:
        run("mcopy", "-s", "-i", path, s, "::/")


def content_tree(tmp: Path, random_mib: int = 5) -> Path:
    """Real files: part of the Python stdlib plus an incompressible file."""
    root = tmp / "content"
    shutil.copytree(STDLIB / "email", root / "email")
    shutil.copytree(STDLIB / "json", root / "json")
    (root / "random.bin").write_bytes(os.urandom(random_mib * MiB))
    return root


def make_disk(
    tmp: Path,
    *,
    label: str = "gpt",
    size_mib: int = 64,
    gap_junk: bool = True,
    name: str = "disk.img",
) -> DiskFile:
    """A disk image: p1 vfat (12 MiB at 1 MiB), a 4 MiB gap, p2 ext4 (30 MiB), free space.

    With ``gap_junk`` a few random sectors are put into the gap between p1 and p2 so
    that it must be captured. DOS disks get p2 as a logical partition (an EBR in a gap).
    """
    tmp.mkdir(parents=True, exist_ok=True)
    disk = tmp / name
    with open(disk, "wb") as f:
        f.truncate(size_mib * MiB)
    p1 = (1 * MiB, 12 * MiB)
    p2 = (17 * MiB, 30 * MiB)
    s = 512
    if label == "gpt":
        script = (
            "label: gpt\n"
            f"start={p1[0] // s}, size={p1[1] // s}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, "
            'name="EFI"\n'
            f"start={p2[0] // s}, size={p2[1] // s}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, "
            'name="root"\n'
        )
        numbers = (1, 2)
    else:
        # p1 primary; extended partition from 16 MiB; logical p5 at 17 MiB
        script = (
            "label: dos\n"
            f"start={p1[0] // s}, size={p1[1] // s}, type=c, bootable\n"
            f"start={16 * MiB // s}, size={(p2[0] + p2[1] - 16 * MiB) // s}, type=5\n"
            f"start={p2[0] // s}, size={p2[1] // s}, type=83\n"
        )
        numbers = (1, 5)
    run("sfdisk", "--quiet", disk, input=script)
    content = tmp / "content"
    if not content.exists():
        content = content_tree(tmp)
    vfat = tmp / f"{name}.p1"
    ext4 = tmp / f"{name}.p2"
    make_vfat(vfat, p1[1], [content / "json"])
    make_ext4(ext4, p2[1], content)
    _put(disk, vfat, p1[0])
    _put(disk, ext4, p2[0])
    vfat.unlink()
    ext4.unlink()
    if gap_junk:
        with open(disk, "r+b") as f:
            f.seek(14 * MiB + 4096)
            f.write(os.urandom(1024))
    return DiskFile(disk, size_mib * MiB, {numbers[0]: p1, numbers[1]: p2})


def checked_ext_partition(disk: Path, entry: dict, dest: Path) -> Path:
    """The bytes of partition ``entry`` (sfdisk -J: start, size in sectors) of ``disk``
    copied to ``dest``, after ``e2fsck -fn`` found its ext filesystem clean."""
    with open(disk, "rb") as src, open(dest, "wb") as dst:
        src.seek(entry["start"] * 512)
        dst.write(src.read(entry["size"] * 512))
    fsck = subprocess.run(["e2fsck", "-fn", str(dest)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    return dest


def reassemble(image_dir: Path, out: Path, size: int) -> None:
    """Rebuild a disk from an image with plain zstd: each stream at its start, zeros elsewhere."""
    import json

    manifest = json.loads((image_dir / "manifest.json").read_text())
    with open(out, "wb") as f:
        f.truncate(size)
    for s in manifest["streams"]:
        data = subprocess.run(
            ["zstd", "-dc", str(image_dir / s["data_file"])], check=True, capture_output=True
        ).stdout
        assert len(data) == s["size_bytes"]
        with open(out, "r+b") as f:
            f.seek(s["start_bytes"])
            f.write(data)


def make_xfs(path: Path, size: int, content: Path, label: str = "data") -> None:
    """An xfs with the top-level files of ``content`` (``mkfs.xfs -p`` protofile)."""
    with open(path, "wb") as f:
        f.truncate(size)
    proto = path.with_suffix(".proto")
    lines = ["/dev/null", "0 0", "d--755 0 0"]
    for f in sorted(content.iterdir()):
        if f.is_file():
            lines.append(f"{f.name} ---644 0 0 {f}")
    lines.append("$")
    proto.write_text("\n".join(lines) + "\n")
    # a small xfs (under 300 MiB) is made only for tests, as fstests does
    env = dict(os.environ, TEST_DIR="1", TEST_DEV="1", QA_CHECK_FS="1")
    subprocess.run(
        [
            shutil.which("mkfs.xfs")
            or shutil.which("mkfs.xfs", path="/usr/sbin:/sbin")
            or "mkfs.xfs",
            *("-f", "-q", "-L", label, "-p", str(proto), str(path)),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    proto.unlink()
