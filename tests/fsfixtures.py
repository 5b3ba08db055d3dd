"""Filesystem image files for the used-block map tests: real mkfs, real mounts (needs root).

An image is first filled with random bytes (a disk that held other data), then a random
file is written and deleted in it, then real files are copied in. ext2/3/4, xfs and btrfs
are mounted by the kernel, exFAT and NTFS with FUSE (exfat-fuse, ntfs-3g), FAT is written
and read with mtools (it does not mount here). Loop devices come only from
``losetup --find --show`` and are always detached.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rescueui.core.identity import confirm_target, confirmation_code, identity_of
from rescueui.core.report import JobReport
from rescueui.core.restore import plan_restore, restore
from tests.loopdisk import LoopDisk, LoopFactory

MiB = 1024 * 1024
STDLIB = Path("/usr/lib/python3.11")
CONTENT_DIRS = ("email", "json", "xml", "logging", "unittest", "http")

FILESYSTEMS = ("ext4", "ext2", "xfs", "btrfs", "vfat", "fat32", "exfat", "ntfs")
"""Test names; ``fat32`` is blkid's ``vfat`` made with a 32-bit FAT."""

BLKID_TYPE = {"fat32": "vfat"}

MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "nodiscard"],
    "ext2": ["mkfs.ext2", "-q", "-F", "-E", "nodiscard"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-K"],
    "btrfs": ["mkfs.btrfs", "-q", "-f", "-K"],
    "vfat": ["mkfs.vfat"],
    "fat32": ["mkfs.vfat", "-F", "32", "-s", "1"],
    "exfat": ["mkfs.exfat"],
    "ntfs": ["mkfs.ntfs", "-Q", "-F"],
}

CHECK = {
    "ext4": ["e2fsck", "-fn"],
    "ext2": ["e2fsck", "-fn"],
    "xfs": ["xfs_repair", "-n", "-f"],
    "btrfs": ["btrfs", "check", "--readonly"],
    "vfat": ["fsck.vfat", "-n"],
    "fat32": ["fsck.vfat", "-n"],
    "exfat": ["fsck.exfat", "-n"],
    "ntfs": ["ntfsfix", "-n"],
}
"""A read-only check of an image file per filesystem: exit status 0 means clean."""

TOOLS = {
    "ext4": ("mkfs.ext4", "e2fsck"),
    "ext2": ("mkfs.ext2", "e2fsck"),
    "xfs": ("mkfs.xfs", "xfs_repair", "xfs_io"),
    "btrfs": ("mkfs.btrfs", "btrfs"),
    "vfat": ("mkfs.vfat", "fsck.vfat", "mcopy"),
    "fat32": ("mkfs.vfat", "fsck.vfat", "mcopy"),
    "exfat": ("mkfs.exfat", "fsck.exfat", "mount.exfat-fuse"),
    "ntfs": ("mkfs.ntfs", "ntfsfix", "ntfs-3g"),
}
"""The programs the tests need per filesystem (besides the partclone program)."""

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)


def run(cmd: Sequence[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run with the program found in the system directories; raise on failure."""
    args = [str(c) for c in cmd]
    args[0] = which(args[0]) or args[0]
    proc = subprocess.run(args, text=True, capture_output=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}): {proc.stdout[-2000:]}"
            f"{proc.stderr[-2000:]}"
        )
    return proc


def copy_bytes(src: Path, dst: Path, size: int, *, offset: int = 0) -> None:
    """Write ``size`` bytes of ``src`` from ``offset`` to a new file ``dst``."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fin.seek(offset)
        left = size
        while left:
            block = fin.read(min(left, 8 * MiB))
            assert block, f"{src} is too short"
            fout.write(block)
            left -= len(block)


def noise_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(0, size, 16 * MiB):
            f.write(os.urandom(16 * MiB))
    return path


def content_tree(dest: Path) -> Path:
    """Real files (part of the Python standard library) and one incompressible file."""
    for name in CONTENT_DIRS:
        shutil.copytree(
            STDLIB / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    (dest / "random.bin").write_bytes(os.urandom(2 * MiB))
    return dest


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root``, by relative path."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------- loop, mount


def loop_devices_of(backing: Path) -> list[str]:
    out = run(["losetup", "-j", str(backing)]).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


@contextlib.contextmanager
def loop(backing: Path, *, read_only: bool = False) -> Iterator[str]:
    """A loop device over ``backing``; detached (and waited for) on exit."""
    cmd = ["losetup", "--find", "--show"] + (["--read-only"] if read_only else []) + [backing]
    dev = ""
    for _ in range(5):  # --find can race with another test attaching at the same time
        try:
            dev = run(cmd).stdout.strip()
            break
        except AssertionError:
            time.sleep(0.2)
    assert dev, f"could not attach {backing}"
    try:
        yield dev
    finally:
        detach(dev, backing)


def detach(dev: str, backing: Path) -> None:
    for _ in range(50):
        subprocess.run([which("losetup") or "losetup", "-d", dev], capture_output=True)
        if dev not in loop_devices_of(backing):
            return
        time.sleep(0.1)
    raise AssertionError(f"{dev} ({backing}) could not be detached")


def umount(where: Path) -> None:
    for _ in range(50):
        r = subprocess.run([which("umount") or "umount", str(where)], capture_output=True)
        if r.returncode == 0 or not os.path.ismount(where):
            return
        time.sleep(0.1)
    subprocess.run([which("umount") or "umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def mounted(image: Path, fs: str, where: Path, *, read_only: bool = True) -> Iterator[Path]:
    """``image`` mounted at ``where`` (not FAT: use mtools)."""
    assert fs not in ("vfat", "fat32"), "FAT does not mount here: use mtools"
    where.mkdir(parents=True, exist_ok=True)
    with loop(image, read_only=read_only) as dev:
        opts = ["-o", "ro"] if read_only else []
        if fs == "exfat":
            run(["mount.exfat-fuse", *opts, dev, where])
        elif fs == "ntfs":
            run(["ntfs-3g", *opts, dev, where])
        else:
            run(["mount", "-t", fs, *opts, dev, where])
        try:
            yield where
        finally:
            umount(where)


def tree_of(image: Path, fs: str, work: Path) -> dict[str, str]:
    """The file hashes of the filesystem in ``image``, read without writing it."""
    if fs in ("vfat", "fat32"):
        dest = work / "fat-tree"
        dest.mkdir(parents=True)
        run(["mcopy", "-s", "-n", "-i", image, "::/*", dest])
        tree = file_hashes(dest)
        shutil.rmtree(dest)
        return tree
    with mounted(image, fs, work / "tree-mnt") as where:
        return file_hashes(where)


def check_clean(image: Path, fs: str) -> None:
    run([*CHECK[fs], image])


# --------------------------------------------------------------------------- images


@dataclass
class FsImage:
    fs: str  # test name (FILESYSTEMS)
    path: Path
    size: int
    junk: int  # bytes of the random file written and deleted
    tree: dict[str, str]  # the files copied in

    @property
    def fs_type(self) -> str:
        return BLKID_TYPE.get(self.fs, self.fs)


def mkfs(fs: str, image: Path) -> None:
    env = None
    if fs == "xfs":  # a small xfs (under 300 MiB) is made only for tests, as fstests does
        env = dict(os.environ, TEST_DIR="1", TEST_DEV="1", QA_CHECK_FS="1")
    run([*MKFS[fs], image], env=env)


def make_image(
    fs: str, image: Path, size: int, content: Path, noise: Path, *, junk: int = 48 * MiB
) -> FsImage:
    """A filesystem over old random data, with a deleted random file and ``content``."""
    copy_bytes(noise, image, size)
    mkfs(fs, image)
    if fs in ("vfat", "fat32"):
        junk_file = image.with_suffix(".junk")
        copy_bytes(noise, junk_file, junk, offset=size - junk)
        run(["mcopy", "-i", image, junk_file, "::/junk.bin"])
        run(["mdel", "-i", image, "::/junk.bin"])
        junk_file.unlink()
        run(["mcopy", "-s", "-i", image, *sorted(content.iterdir()), "::/"])
    else:
        with mounted(image, fs, image.with_suffix(".mnt"), read_only=False) as where:
            copy_bytes(noise, where / "junk.bin", junk, offset=size - junk)
            run(["sync", "-f", where])  # written out (allocated) before it is deleted
            (where / "junk.bin").unlink()
            run(["sync", "-f", where])
            for p in sorted(content.iterdir()):
                if p.is_dir():
                    shutil.copytree(p, where / p.name)
                else:
                    shutil.copyfile(p, where / p.name)
    return FsImage(fs, image, size, junk, file_hashes(content))


def restore_used(
    image: Path, out: Path, runs: Sequence[tuple[int, int]], size: int, noise: Path
) -> None:
    """A copy of ``image`` holding only ``runs``; every other byte comes from ``noise``."""
    copy_bytes(noise, out, size)
    with open(image, "rb") as fin, open(out, "r+b") as fout:
        for off, length in runs:
            fin.seek(off)
            fout.seek(off)
            fout.write(fin.read(length))


def snapshot_while_mounted(fs: str, image: Path, snapshot: Path, late: Path) -> None:
    """Mount ``image``, add ``late`` (each file fsync'd) and copy the image file while it is
    still mounted: the state a crash leaves behind."""
    with mounted(image, fs, image.with_suffix(".dirty-mnt"), read_only=False) as where:
        shutil.copytree(late, where / "late")
        for p in sorted((where / "late").rglob("*")):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        shutil.copyfile(image, snapshot)


def btrfs_log_root(image: Path) -> int:
    out = run(["btrfs", "inspect-internal", "dump-super", image]).stdout
    for line in out.splitlines():
        if line.startswith("log_root") and line.split()[0] == "log_root":
            return int(line.split()[1])
    raise AssertionError(f"no log_root in the btrfs superblock of {image}")


def set_fat_dirty(image: Path) -> None:
    """Clear the 'clean' bit in FAT[1] of every FAT (FAT16: 0x8000, FAT32: 0x08000000)."""
    with open(image, "r+b") as f:
        boot = f.read(512)
        reserved = int.from_bytes(boot[14:16], "little")
        fats = boot[16]
        per_fat = int.from_bytes(boot[22:24], "little") or int.from_bytes(boot[36:40], "little")
        fat32 = int.from_bytes(boot[22:24], "little") == 0
        width, bit = (4, 0x08000000) if fat32 else (2, 0x8000)
        for i in range(fats):
            off = (reserved + i * per_fat) * 512 + width
            f.seek(off)
            value = int.from_bytes(f.read(width), "little")
            f.seek(off)
            f.write((value & ~bit).to_bytes(width, "little"))


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry))
    return pids


# --------------------------------------------------------------------------- used-block tests


def blkid_ids(dev: str) -> dict[str, str]:
    """TYPE, UUID and LABEL of the filesystem on ``dev`` (low-level probe)."""
    proc = subprocess.run(
        ["blkid", "-p", "-o", "export", dev], capture_output=True, text=True, check=False
    )
    props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return {k: props[k] for k in ("TYPE", "UUID", "LABEL") if k in props}


def partclone_zstd_size(dev: str, fs: str, out: Path) -> int:
    """The size of ``partclone.<fs> -c | zstd -3`` of ``dev`` (what Clonezilla stores)."""
    subprocess.run(
        f"set -o pipefail; partclone.{fs} -q -c -s {dev} -o - | zstd -q -3 > {out}",
        shell=True,
        executable="/bin/bash",
        check=True,
        capture_output=True,
    )
    size = out.stat().st_size
    out.unlink()
    return size


def restore_onto(
    factory: LoopFactory, image: Path, size_mib: int, *, rotational: str = "1", exact: bool = False
) -> tuple[LoopDisk, JobReport]:
    """A random-filled loop disk of ``size_mib`` whose queue says ``rotational`` (``"1"``:
    it spins, the space no filesystem uses is left), restored from ``image``."""
    target = factory.create(size_mib, fill="random")
    Path(f"/sys/block/{target.name}/queue/rotational").write_text(rotational)
    ident = identity_of(target.path)
    plan = plan_restore(
        image,
        confirm_target(target.path, confirmation_code(ident)),
        accept_warnings=True,
        exact=exact,
    )
    report = restore(plan)
    target.rescan()
    return target, report
