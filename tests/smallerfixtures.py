"""The source disk and image of the "restore onto a smaller disk" tests, and the helpers
that check such a restore (file trees, partition tables, filesystem identities).

The source disk: a 1 GiB raw file, GPT, every byte random before it was partitioned (a
disk that held other data; the MBR sector zero, so no BIOS boot code is seen):

* p1 EFI system partition, 64 MiB, FAT32 "EFI", GPT name "EFI system partition", a few
  files written with mtools (``EFI/BOOT/BOOTX64.EFI`` a dummy, ``EFI/BOOT/grub.cfg``,
  ``startup.nsh``);
* p2 Linux filesystem, 480 MiB, ext4 "root", GPT name "rootfs";
* p3 Linux filesystem, the rest (about 478 MiB), xfs "data", GPT name "srv-data".

Before their files were written, a random file filling most of each of the two Linux
filesystems was written and deleted: their free space holds old data, as servers' disks
do. Then each gets about 30 % used (:func:`populate`): many small text files, copies of a
few standard-library folders, large random (incompressible) and large text files, symlinks
(relative, absolute, dangling, to a folder), a group of hard links across folders, a
20 MiB sparse file, user xattrs and POSIX ACLs (written as the ``system.posix_acl_*``
xattrs directly, so neither ``setfacl`` nor ``setfattr`` is needed), a FIFO, a character
and a block device node, UTF-8 names with spaces, files and folders with their own owner,
mode (setuid, setgid, sticky) and times.

The disk is captured with ``rescueui capture`` into an image folder. Both are built once
and cached: ``/var/cache/rescueui-tests/smaller/<key>/fixture/`` (``RESCUEUI_SMALLER_CACHE``
overrides the parent; key = hash of this file) holding ``source.raw`` (read-only, 0444),
``image/`` and ``facts.json``; built in a ``tmp-*`` directory under a ``flock`` and renamed
into place when complete; an interrupted build's leftovers are removed by the next one,
and so are the fixtures of older recipes (other keys) nobody holds locked.
Tests restore from a copy of the image folder (a restore writes its reports into it).

Needs root, sfdisk, partx, losetup, mkfs.vfat, mtools, mkfs.ext4, mkfs.xfs, e2fsck,
xfs_repair, fsck.vfat.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bootsystem import _mounts_below, _remove_stale  # the same cache discipline
from tests.clirun import capture, loop
from tests.loopdisk import settle

MiB = 1024 * 1024
SECTOR = 512
DISK_MIB = 1024
ESP_MIB = 64
ROOT_MIB = 480
TARGET_MIB = 600  # the data fits: 64 MiB ESP + both filesystems' ~290 MiB used
TOO_SMALL_MIB = 200  # it does not: 64 MiB ESP + 136 MiB for ~290 MiB of files

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
TABLE = f"""label: gpt
start=2048, size={ESP_MIB * 2048}, type={ESP_TYPE}, name="EFI system partition"
size={ROOT_MIB * 2048}, type={LINUX_TYPE}, name="rootfs"
type={LINUX_TYPE}, name="srv-data"
"""
LABELS = {1: "EFI", 2: "root", 3: "data"}
FS_TYPES = {1: "vfat", 2: "ext4", 3: "xfs"}
GPT_NAMES = {1: "EFI system partition", 2: "rootfs", 3: "srv-data"}

CACHE_ROOT = Path(os.environ.get("RESCUEUI_SMALLER_CACHE", "/var/cache/rescueui-tests/smaller"))
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("sfdisk", "partx", "losetup", "blkid", "mkfs.vfat", "mcopy", "mmd", "mkfs.ext4",
         "mkfs.xfs", "e2fsck", "xfs_repair", "fsck.vfat")  # fmt: skip

STDLIB = Path("/usr/lib/python3.11")
FIXED_TIME_NS = 1_000_000_000 * 10**9 + 123_456_789  # 2001-09-09, with nanoseconds
OLD_TIME_NS = 1_500_000_000 * 10**9 + 987_654_321  # 2017-07-14


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SYSTEM_PATH)


def log(msg: str) -> None:
    print(f"[smallerfixtures {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(
    cmd: Sequence[str | Path], *, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a program found in the system directories; on failure raise with its output."""
    args = [str(c) for c in cmd]
    args[0] = which(args[0]) or args[0]
    r = subprocess.run(args, input=input, text=True, capture_output=True, check=False)
    if check and r.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed (exit {r.returncode}):\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
        )
    return r


# --------------------------------------------------------------------------- the fixture


@dataclass(frozen=True)
class Source:
    disk: Path  # the source disk file (read-only; never write it)
    image: Path  # its rescueui image folder (in the cache: restore from a copy)
    facts: dict[str, Any]


def recipe_key() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def source() -> Source:
    """The cached source disk and image, built first if needed (needs root)."""
    key_dir = CACHE_ROOT / recipe_key()
    final = key_dir / "fixture"
    if not (final / "facts.json").is_file():
        if os.geteuid() != 0:
            raise PermissionError("building the smaller-disk fixture needs root")
        key_dir.mkdir(parents=True, exist_ok=True)
        with _locked(key_dir / ".lock"):
            if not (final / "facts.json").is_file():
                _remove_stale(key_dir)
                tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=key_dir))
                _build(tmp)
                os.rename(tmp, final)
            _prune_old_keys(key_dir)
    facts = json.loads((final / "facts.json").read_text())
    return Source(disk=final / "source.raw", image=final / "image", facts=facts)


def copy_image(src: Path, dest: Path) -> Path:
    """A private copy of the image folder ``src`` (a restore writes reports into it)."""
    run(["cp", "-a", "--reflink=auto", src, dest])
    return dest


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prune_old_keys(keep: Path) -> None:
    """Remove the fixtures of older recipes (1.2 GiB each) that no build holds locked and
    that have nothing mounted."""
    for other in keep.parent.iterdir():
        if other == keep or not other.is_dir():
            continue
        with open(other / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            if not _mounts_below(other) and not any(
                run(["losetup", "-j", img], check=False).stdout for img in other.glob("*/*.raw")
            ):
                log(f"removing the fixture of an older recipe: {other}")
                shutil.rmtree(other, ignore_errors=True)


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def _build(tmp: Path) -> None:
    started = time.monotonic()
    disk = tmp / "source.raw"
    log(f"building the source disk in {tmp}")
    _random_file(disk, DISK_MIB * MiB)  # a disk that held other data
    with open(disk, "r+b") as f:  # but no boot code in the MBR (the ESP is the boot loader)
        f.write(bytes(SECTOR))
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk], input=TABLE)
    used: dict[str, int] = {}
    with partitions(disk) as parts:
        run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", LABELS[1], parts[1]])
        run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-L", LABELS[2], parts[2]])
        run(["mkfs.xfs", "-q", "-f", "-K", "-L", LABELS[3], parts[3]])
        _fill_esp(parts[1], tmp)
        for n, seed, big in ((2, 2, (56, 32, 8)), (3, 3, (56, 16, 4))):
            where = tmp / f"mnt-{n}"
            with mounted(parts[n], where, read_only=False) as top:
                _old_data(top)
                populate(top, seed=seed, random_mib=big, text_mib=30)
                run(["sync", "-f", top])
                vfs = os.statvfs(top)
                used[str(n)] = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
            where.rmdir()
        run(["fsck.vfat", "-n", parts[1]])
        run(["e2fsck", "-f", "-n", parts[2]])
        run(["xfs_repair", "-n", parts[3]])
        ids = {str(n): blkid(parts[n]) for n in (1, 2, 3)}
    disk.chmod(0o444)
    built = time.monotonic() - started
    log(f"source disk built in {built:.0f} s; capturing it")
    capture(disk, tmp / "image")
    facts = {
        "table": {k: v for k, v in gpt(disk).items() if k != "partitions"}
        | {
            "partitions": [
                {k: v for k, v in p.items() if k != "node"} for p in gpt(disk)["partitions"]
            ]
        },
        "filesystems": ids,
        "used_bytes": used,
        "disk_seconds": round(built, 1),
        "total_seconds": round(time.monotonic() - started, 1),
    }
    (tmp / "facts.json").write_text(json.dumps(facts, indent=2))
    log(f"fixture ready in {facts['total_seconds']:.0f} s: used {used}")


def _fill_esp(dev: str, tmp: Path) -> None:
    """A few files on the ESP (mtools: the kernel here cannot mount FAT), after a deleted
    one (old data)."""
    junk = tmp / "junk.bin"
    _random_file(junk, 24 * MiB)
    run(["mcopy", "-i", dev, junk, "::/junk.bin"])
    run(["mdel", "-i", dev, "::/junk.bin"])
    boot = tmp / "BOOTX64.EFI"
    boot.write_bytes(b"MZ" + os.urandom(256 * 1024))
    cfg = tmp / "grub.cfg"
    cfg.write_text("search --no-floppy --label root --set=root\nconfigfile /boot/grub/grub.cfg\n")
    nsh = tmp / "startup.nsh"
    nsh.write_text("FS0:\\EFI\\BOOT\\BOOTX64.EFI\r\n")
    run(["mmd", "-i", dev, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"])
    run(["mcopy", "-i", dev, boot, cfg, "::/EFI/BOOT/"])
    run(["mcopy", "-i", dev, cfg, "::/EFI/debian/grub.cfg"])
    run(["mcopy", "-i", dev, nsh, "::/startup.nsh"])
    for p in (junk, boot, cfg, nsh):
        p.unlink()


def _old_data(top: Path) -> None:
    """Write a random file over most of the free space, then delete it."""
    vfs = os.statvfs(top)
    size = int(vfs.f_bavail * vfs.f_frsize * 0.8) // MiB * MiB
    _random_file(top / "old-data.bin", size)
    run(["sync", "-f", top])
    (top / "old-data.bin").unlink()
    run(["sync", "-f", top])


WORDS = (
    "disk partition restore image server backup rescue kernel block sector inode journal "
    "extent bitmap superblock mount label volume cluster header table boot loader firmware "
    "grub initramfs module driver network address route host domain user group mode owner"
).split()


def _text(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def posix_acl(entries: Sequence[tuple[int, int, int]]) -> bytes:
    """The ``system.posix_acl_*`` xattr value (version 2; entries (tag, perm, id), sorted by
    tag then id; ids only for named users (2) and groups (8))."""
    out = struct.pack("<I", 2)
    for tag, perm, ident in sorted(entries):
        out += struct.pack("<HHI", tag, perm, ident if tag in (2, 8) else 0xFFFFFFFF)
    return out


ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 16, 32
FILE_ACL = posix_acl([(ACL_USER_OBJ, 6, 0), (ACL_USER, 6, 1001), (ACL_GROUP_OBJ, 4, 0),
                      (ACL_GROUP, 4, 2002), (ACL_MASK, 6, 0), (ACL_OTHER, 0, 0)])  # fmt: skip
DIR_ACL = posix_acl([(ACL_USER_OBJ, 7, 0), (ACL_USER, 5, 1001), (ACL_GROUP_OBJ, 5, 0),
                     (ACL_MASK, 5, 0), (ACL_OTHER, 0, 0)])  # fmt: skip


def populate(top: Path, *, seed: int, random_mib: Sequence[int], text_mib: int) -> None:
    """The files of one filesystem (see the module doc)."""
    rng = random.Random(seed)
    # many small files
    small = top / "small"
    for d in range(40):
        sub = small / f"d{d:02d}"
        sub.mkdir(parents=True)
        for i in range(40):
            (sub / f"f{i:04d}.txt").write_bytes(_text(rng, rng.randint(0, 12000)))
    # real files: parts of the standard library
    for name in ("email", "json", "xml", "logging", "http"):
        shutil.copytree(STDLIB / name, top / "stdlib" / name,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    # larger files: random (incompressible) and text
    big = top / "big"
    big.mkdir()
    for i, mib in enumerate(random_mib):
        _random_file(big / f"random-{i}.bin", mib * MiB + rng.randint(1, 4095))
    with open(big / "server.log", "wb") as f:
        chunk = _text(rng, MiB)
        for i in range(text_mib):
            f.write(f"--- part {i} ---\n".encode() + chunk[i:] + chunk[:i])
    # links
    links = top / "links"
    links.mkdir()
    os.symlink("../small/d00/f0001.txt", links / "relative")
    os.symlink("/etc/hostname", links / "absolute")
    os.symlink("nowhere/at/all", links / "dangling")
    os.symlink("../small/d01", links / "to-a-folder")
    (links / "hard-a").write_bytes(_text(rng, 5000))
    os.link(links / "hard-a", links / "hard-b")
    os.link(links / "hard-a", small / "d02" / "hard-c")
    (links / "pair-1").write_bytes(b"two names\n")
    os.link(links / "pair-1", links / "pair-2")
    # a sparse file: 20 MiB, data at the start, the middle and the end only
    sparse = top / "sparse"
    sparse.mkdir()
    with open(sparse / "sparse-20M.img", "wb") as f:
        f.truncate(20 * MiB)
        for off in (0, 10 * MiB, 20 * MiB - 4096):
            f.seek(off)
            f.write(os.urandom(4096))
    # special files
    special = top / "special"
    special.mkdir()
    os.mkfifo(special / "fifo")
    os.mknod(special / "null-like", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(special / "loop-like", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.chown(special / "loop-like", 0, 6)
    # names
    names = top / "names with spaces"
    names.mkdir()
    (names / "Grüße an alle — 日本語のファイル.txt").write_text("UTF-8 name\n")
    (names / " leading and trailing ").write_text("spaces\n")
    (names / "ünïcödé folder").mkdir()
    (names / "ünïcödé folder" / "ça va.txt").write_text("oui\n")
    # owners, modes, xattrs, ACLs
    meta = top / "meta"
    meta.mkdir()
    owned = meta / "owned-by-1234"
    owned.write_text("owner 1234:5678\n")
    os.chown(owned, 1234, 5678)
    suid = meta / "setuid-tool"
    suid.write_bytes(b"#!/bin/sh\nexit 0\n")
    os.chmod(suid, 0o4755)
    secret = meta / "secret"
    secret.write_text("mode 600\n")
    os.chmod(secret, 0o600)
    nothing = meta / "no-permissions"
    nothing.write_text("mode 000\n")
    os.chmod(nothing, 0o000)
    tmpdir = meta / "sticky"
    tmpdir.mkdir()
    os.chmod(tmpdir, 0o1777)
    tagged = meta / "tagged"
    tagged.write_text("has user xattrs\n")
    os.setxattr(tagged, "user.rescueui.comment", b"kept by the restore")
    os.setxattr(tagged, "user.rescueui.binary", bytes(range(256)))
    os.setxattr(meta, "user.rescueui.folder", b"a folder's xattr")
    acl = meta / "with-acl"
    acl.write_text("has an ACL\n")
    os.chmod(acl, 0o660)
    os.setxattr(acl, "system.posix_acl_access", FILE_ACL)
    shared = meta / "shared-folder"
    shared.mkdir()
    os.setxattr(shared, "system.posix_acl_default", DIR_ACL)
    (shared / "inherits").write_text("created under a default ACL\n")
    # a folder with its own mode, owner and times (set last, after its contents)
    own = top / "own folder"
    own.mkdir()
    (own / "inside").write_text("old file\n")
    os.utime(own / "inside", ns=(OLD_TIME_NS, OLD_TIME_NS))
    os.chown(own, 1000, 1000)
    os.chmod(own, 0o2750)
    os.utime(own, ns=(FIXED_TIME_NS, FIXED_TIME_NS))
    os.utime(suid, ns=(OLD_TIME_NS, OLD_TIME_NS))
    os.utime(links / "relative", ns=(OLD_TIME_NS, OLD_TIME_NS), follow_symlinks=False)
    os.utime(meta, ns=(FIXED_TIME_NS, FIXED_TIME_NS))


# --------------------------------------------------------------------------- devices


@contextlib.contextmanager
def partitions(disk: Path, *, read_only: bool = False) -> Iterator[dict[int, str]]:
    """A loop device over ``disk`` (made with ``losetup --find``) with its partitions known
    to the kernel (``partx``): {number: device}. Detached afterwards, also on failure."""
    with loop(disk, read_only=read_only) as dev:
        count = len(gpt(disk)["partitions"])
        names = {n: f"{dev}p{n}" for n in range(1, count + 1)}
        for attempt in range(20):
            run(["partx", "-a" if attempt % 2 == 0 else "-u", dev], check=False)
            settle()
            if all(Path(p).exists() for p in names.values()):
                break
            time.sleep(0.25)
        else:
            raise AssertionError(f"the partitions of {dev} did not appear: {names}")
        yield names


@contextlib.contextmanager
def mounted(dev: str, where: Path, *, read_only: bool = True) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", *(["-o", "ro"] if read_only else []), dev, where])
    try:
        yield where
    finally:
        for _ in range(20):
            if run(["umount", where], check=False).returncode == 0:
                break
            time.sleep(0.25)
        else:
            run(["umount", "-l", where], check=False)


def gpt(disk: Path | str) -> dict[str, Any]:
    """``sfdisk --json`` of ``disk``: label, id (the disk GUID), partitions (node, start,
    size, type, uuid, name)."""
    return json.loads(run(["sfdisk", "--json", disk]).stdout)["partitiontable"]


def blkid(dev: str) -> dict[str, str]:
    """TYPE, UUID, LABEL (and the rest) of the filesystem on ``dev``, by a low-level probe."""
    out = run(["blkid", "-p", "-o", "export", dev], check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def sha256_range(path: Path, offset: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left:
            block = f.read(min(left, 8 * MiB))
            assert block, f"{path} is shorter than {offset + size}"
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_range(path, 0, path.stat().st_size)


def fat32_differences(a: Path, a_offset: int, b: Path, b_offset: int) -> dict[str, int]:
    """Compare the FAT32 filesystem at ``a_offset`` in ``a`` with the one at ``b_offset`` in
    ``b``, laid out by ``a``'s boot sector: how many sectors of the metadata area (boot
    sector, reserved sectors, FATs) differ, and how many clusters the FAT marks used and
    free differ. A filesystem copied block for block has no difference in the first two;
    its free clusters hold whatever the restore left there (the source's old data, zeros)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(a_offset)
        boot = fa.read(SECTOR)
        bps = int.from_bytes(boot[11:13], "little")
        spc = boot[13]
        reserved = int.from_bytes(boot[14:16], "little")
        fats = boot[16]
        per_fat = int.from_bytes(boot[36:40], "little")
        total = int.from_bytes(boot[32:36], "little")
        assert int.from_bytes(boot[22:24], "little") == 0 and per_fat, "not FAT32"
        meta = (reserved + fats * per_fat) * bps
        fa.seek(a_offset)
        fb.seek(b_offset)
        ma, mb = fa.read(meta), fb.read(meta)
        out = {
            "metadata sectors": sum(
                1 for i in range(0, meta, bps) if ma[i : i + bps] != mb[i : i + bps]
            ),
            "used clusters": 0,
            "free clusters": 0,
        }
        fat = ma[reserved * bps : (reserved + per_fat) * bps]
        csize = spc * bps
        for c in range((total * bps - meta) // csize):
            fa.seek(a_offset + meta + c * csize)
            fb.seek(b_offset + meta + c * csize)
            if fa.read(csize) != fb.read(csize):
                used = int.from_bytes(fat[(c + 2) * 4 : (c + 3) * 4], "little") & 0x0FFFFFFF
                out["used clusters" if used else "free clusters"] += 1
    return out


def pattern_file(path: Path, mib: int) -> Path:
    """A file of ``mib`` MiB of a known pattern (old data on a target), every MiB different."""
    with open(path, "wb") as f:
        for i in range(mib):
            line = f"old data of the target, MiB {i:06d} ".encode()
            f.write((line * (MiB // len(line) + 1))[:MiB])
    return path


# --------------------------------------------------------------------------- file trees


@dataclass(frozen=True)
class Entry:
    kind: str  # file, dir, symlink, fifo, chr, blk, socket
    mode: int  # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    mtime_ns: int
    size: int | None = None  # regular files
    sha256: str | None = None  # regular files
    target: str | None = None  # symlinks
    rdev: int | None = None  # device nodes
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass
class Tree:
    entries: dict[str, Entry] = field(default_factory=dict)  # by path relative to the top
    links: set[frozenset[str]] = field(default_factory=set)  # hard-link groups


KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
         (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"),
         (stat.S_ISSOCK, "socket"))  # fmt: skip


def _xattrs(path: Path) -> tuple[tuple[str, bytes], ...]:
    names = os.listxattr(path, follow_symlinks=False)
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def snapshot(top: Path) -> Tree:
    """Every entry below ``top`` (``"."`` for ``top`` itself): type, mode, owner, mtime,
    size and SHA-256 of regular files, symlink target, device number, xattrs (ACLs
    included) and the hard-link groups."""
    tree = Tree()
    inodes: dict[tuple[int, int], set[str]] = {}
    for dirpath, dirs, files in os.walk(top):
        dirs.sort()
        for name in [".", *dirs, *files] if Path(dirpath) == top else [*dirs, *files]:
            path = Path(dirpath) / name if name != "." else top
            rel = str(path.relative_to(top)) if name != "." else "."
            st = os.lstat(path)
            kind = next(k for test, k in KINDS if test(st.st_mode))
            entry = Entry(
                kind=kind,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                mtime_ns=st.st_mtime_ns,
                size=st.st_size if kind == "file" else None,
                sha256=_sha256(path) if kind == "file" else None,
                target=os.readlink(path) if kind == "symlink" else None,
                rdev=st.st_rdev if kind in ("chr", "blk") else None,
                xattrs=_xattrs(path),
            )
            tree.entries[rel] = entry
            if kind != "dir" and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    tree.links = {frozenset(paths) for paths in inodes.values()}
    return tree


def differences(a: Tree, b: Tree, *, limit: int = 40) -> list[str]:
    """What differs between the trees ``a`` (source) and ``b`` (copy), one line each."""
    out: list[str] = []
    for rel in sorted(a.entries.keys() - b.entries.keys()):
        out.append(f"{rel!r}: missing in the copy")
    for rel in sorted(b.entries.keys() - a.entries.keys()):
        out.append(f"{rel!r}: only in the copy")
    for rel in sorted(a.entries.keys() & b.entries.keys()):
        ea, eb = a.entries[rel], b.entries[rel]
        for name in Entry.__dataclass_fields__:
            va, vb = getattr(ea, name), getattr(eb, name)
            if va != vb:
                if name == "mode":
                    va, vb = oct(va), oct(vb)
                out.append(f"{rel!r}: {name} {va!r} in the source, {vb!r} in the copy")
    for group in sorted(a.links - b.links, key=sorted):
        out.append(f"hard links {sorted(group)} are not one file in the copy")
    for group in sorted(b.links - a.links, key=sorted):
        out.append(f"hard links {sorted(group)} in the copy are not one file in the source")
    if len(out) > limit:
        out = [*out[:limit], f"... and {len(out) - limit} more"]
    return out


def summary(tree: Tree) -> dict[str, int]:
    """How many entries of each kind, and how many hard-link groups (for messages)."""
    counts: dict[str, int] = {}
    for e in tree.entries.values():
        counts[e.kind] = counts.get(e.kind, 0) + 1
    counts["hard-link groups"] = len(tree.links)
    counts["with xattrs"] = sum(1 for e in tree.entries.values() if e.xattrs)
    return counts
