"""Small bootable Debian 12 disks for the hardware-adaptation tests, and a QEMU boot check.

Both disks hold the same minimal Debian 12 (bookworm, amd64) system, built once with
``debootstrap --variant=minbase`` (linux-image-amd64, systemd-sysv, initramfs-tools, udev,
kmod, zstd) and kept in the cache as a directory:

* initramfs-tools set up host-only for a virtio guest: ``MODULES=list`` with only
  ``virtio_pci``, ``virtio_blk`` and ``ext4`` in ``/etc/initramfs-tools/modules``
  (``COMPRESS=zstd``). The initramfs holds no nvme and no ahci driver (checked with the
  system's own ``lsinitramfs`` at build time), so the system boots on virtio but not on
  NVMe or SATA until it is adapted.
* the kernel command line is ``console=ttyS0,115200n8 panic=10`` (GRUB on the serial port,
  no menu). When the initramfs cannot find the root device it prints ``Gave up waiting for
  root file system device`` and ``ALERT! ... does not exist``; with ``panic=10`` it then
  reboots after 10 s instead of sitting in a shell, and QEMU's ``-no-reboot`` ends the VM.
  Bookworm's initramfs waits max(30, rootdelay) seconds for the root device, and
  ``rootdelay=N`` adds an unconditional N-second sleep before that wait: so no ``rootdelay``
  is set (it could only make a failing boot slower); a disk that cannot boot gives up ~30 s
  after the initramfs starts. :func:`boot` stops as soon as it sees that.
* ``rescueui-marker.service`` (after local-fs.target) writes
  ``RESCUEUI-BOOT-MARKER kernel=<uname -r> root=<source of />`` to ``/dev/ttyS0`` and powers
  off: the marker line proves the system came up from its own root filesystem.
* hostname ``rescueui-testsys``; ``/etc/udev/rules.d/70-persistent-net.rules`` pins the source
  machine's NIC (MAC 52:54:00:12:34:56) to ``eth0`` and ``/etc/network/interfaces`` names
  ``eth0`` (ifupdown is not installed: these are files for the adapt code to find).
* apt's package cache and lists are emptied, to keep the disks small.

Disk ``"bios"``: 1.5 GiB sparse raw file, DOS (MBR) label, p1 ext4 "testroot" from 1 MiB to
the end (bootable flag), GRUB for BIOS (package ``grub-pc``) in the MBR and the gap after it,
``/etc/fstab`` naming the root by kernel name (``/dev/vda1``: the adapt code must rewrite it).

Disk ``"uefi"``: 1.5 GiB sparse raw file, GPT (first usable LBA 34, sectors 34..2047 left
free for a BIOS boot partition), p1 ESP 64 MiB FAT32 "ESP", p2 ext4 "testroot" the rest.
GRUB for UEFI (``grub-efi-amd64``; no ``grub-pc``/``grub-pc-bin``, so no
``/usr/lib/grub/i386-pc``) installed to the removable path ``EFI/BOOT/BOOTX64.EFI`` with no
NVRAM entry, ``/etc/fstab`` by ``UUID=`` for ``/`` and ``/boot/efi``.

In both, ``grub.cfg`` finds its partition with ``search --fs-uuid`` and boots
``root=UUID=...``: the build runs ``update-grub`` in a chroot with a private ``/dev`` that
has the ``/dev/disk/by-uuid`` link grub-mkconfig looks for (without it, it would write
``root=/dev/loopNp1``), so the build does not depend on udev running.

Build details that matter: the initramfs is built per disk after fstab is written and
before ``update-grub`` (with no initrd, grub-mkconfig writes ``root=/dev/<device>``); for
the "bios" disk the private ``/dev`` also has a ``vda1`` node (the loop partition), so
initramfs-tools' fsck hook resolves the root fstab names and includes fsck.ext4 as on the
source machine. The ESP is written by grub-install through fusefat, which names every entry
with a long name and the short name "~1" and dates it a month early; the ``EFI`` tree is then
written again with mtools (plain 8.3 entries).

Cache: ``/var/cache/rescueui-tests/bootsystem/<key>/`` (``RESCUEUI_BOOTSYSTEM_CACHE``
overrides the parent), key = hash of this file, the mirror and the suite, so a changed recipe
rebuilds. Each artefact (the debootstrapped and configured root directory ``base``,
``bios.raw``, ``uefi.raw``, with a ``.json`` summary per disk) is built in a ``tmp-*``
directory and renamed into place when complete; builds hold a ``flock`` on the key
directory's ``.lock``, and the leftovers of an interrupted build (``tmp-*``: mounts, loop
devices, files) are removed by the next build. Old keys are not pruned. The images are
read-only (0444): callers copy them (:func:`copy_disk`) and boot the copy. Timings here
(2 cores, deb.debian.org): debootstrap 70-125 s, each disk 12-16 s; a TCG boot to the
marker 47-75 s; a disk without its driver in the initramfs gives up after 50-60 s.

Needs root, debootstrap, sfdisk, partx, losetup, blkid, fstrim, mkfs.ext4, e2fsck, mkfs.vfat,
fusefat (fusermount), mtools and the Debian mirror (``RESCUEUI_TEST_MIRROR``, default
deb.debian.org) for the first build; qemu-system-x86 and ovmf for :func:`boot` (TCG:
``-accel tcg -cpu qemu64``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MARKER = "RESCUEUI-BOOT-MARKER"
HOSTNAME = "rescueui-testsys"
SOURCE_MAC = "52:54:00:12:34:56"
NVME_SERIAL = "RESCUENVME1"
SUITE = "bookworm"
MIRROR = os.environ.get("RESCUEUI_TEST_MIRROR", "http://deb.debian.org/debian")
CACHE_ROOT = Path(
    os.environ.get("RESCUEUI_BOOTSYSTEM_CACHE", "/var/cache/rescueui-tests/bootsystem")
)
KINDS = ("bios", "uefi")
FIRMWARES = ("bios", "uefi")
BUSES = ("virtio", "nvme", "sata")

MiB = 1024 * 1024
DISK_BYTES = 1536 * MiB
ESP_BYTES = 64 * MiB
SECTOR = 512
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

BASE_PACKAGES = ("linux-image-amd64", "systemd-sysv", "initramfs-tools", "udev", "kmod", "zstd")
GRUB_PACKAGE = {"bios": "grub-pc", "uefi": "grub-efi-amd64"}
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4")
KERNEL_CMDLINE = "console=ttyS0,115200n8 panic=10"

OVMF_PAIRS = (
    (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")),
    (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")),
)
OVMF_COMBINED = Path("/usr/share/ovmf/OVMF.fd")

ANSI = re.compile(
    r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78MDEHc])"
)
MARKER_LINE = re.compile(rf"{re.escape(MARKER)} kernel=\S+ root=\S+")
# Output that means this boot will not reach the marker (initramfs without the disk
# driver, a kernel panic, GRUB or the firmware finding nothing, systemd's emergency mode).
GAVE_UP = (
    "Gave up waiting for",
    "ALERT!",
    "Kernel panic",
    "Rebooting automatically due to panic=",
    "(initramfs)",
    "grub rescue>",
    "No bootable device",
    "No bootable option or device was found",
    "You are in emergency mode",
    "Cannot open access to console, the root account is locked",
)

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
}


def log(msg: str) -> None:
    print(f"[bootsystem {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(
    cmd: Sequence[str | Path],
    *,
    input: str | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output (the tail of it)."""
    args = [str(c) for c in cmd]
    r = subprocess.run(args, input=input, env=env, text=True, capture_output=True, check=False)
    if check and r.returncode != 0:
        out = (r.stdout + r.stderr).strip().splitlines()
        raise RuntimeError(
            f"{' '.join(args)} failed (exit {r.returncode}):\n" + "\n".join(out[-40:])
        )
    return r


# --------------------------------------------------------------------------- cache


def recipe_key() -> str:
    """Hash of the build recipe: this file, the mirror and the suite."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"\0{MIRROR}\0{SUITE}".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return CACHE_ROOT / recipe_key()


def debian_disk(kind: str) -> Path:
    """Path of the cached, pristine raw disk image ``kind`` ("bios" or "uefi"), built first if
    needed (a few minutes; needs root and the Debian mirror). Never modify it: copy it
    (:func:`copy_disk`) and boot the copy."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    final = cache_dir() / f"{kind}.raw"
    if final.is_file():
        return final
    if os.geteuid() != 0:
        raise PermissionError("building the test disks needs root (debootstrap, loop devices)")
    key_dir = cache_dir()
    key_dir.mkdir(parents=True, exist_ok=True)
    with _locked(key_dir / ".lock"):
        if final.is_file():  # another process built it while we waited
            return final
        _remove_stale(key_dir)
        started = time.monotonic()
        base = _base_root(key_dir)
        _build_disk(kind, base, key_dir)
        log(f"{kind}: ready in {time.monotonic() - started:.0f} s total: {final}")
    return final


def copy_disk(kind: str, dest: Path) -> Path:
    """A writable sparse copy of the cached disk ``kind`` at ``dest``."""
    src = debian_disk(kind)
    dest = Path(dest)
    dest.unlink(missing_ok=True)
    run(["cp", "--sparse=always", "--reflink=auto", src, dest])
    dest.chmod(0o644)
    return dest


SATA_MODULES = ("ahci", "libahci", "sd_mod", "ext4")


def sata_server_disk(dest: Path) -> Path:
    """A copy of the BIOS disk made to look like a physical server's: its initramfs has the
    SATA (AHCI) drivers and no virtio one (rebuilt by the system's own update-initramfs,
    checked by its lsinitramfs), and its fstab names the root by UUID. Raises if the rebuilt
    initramfs still has virtio_blk or lacks ahci."""
    disk = copy_disk("bios", dest)
    with _loop(disk, 1) as (_dev, parts):
        root = dest.parent / f"{dest.name}.root"
        with _mounted(parts[0], root):
            version = _kernel_version(root)
            (root / "etc/initramfs-tools/modules").write_text(
                "# rescueui test system: a physical server's SATA disk, no virtio\n"
                + "".join(f"{m}\n" for m in SATA_MODULES)
            )
            uuid = _blkid(parts[0], "UUID")
            (root / "etc/fstab").write_text(f"UUID={uuid} / ext4 errors=remount-ro 0 1\n")
            with _chroot(root, devices=(parts[0],)):
                _in_root(root, "update-initramfs", "-u", "-k", version)
                listing = _in_root(root, "lsinitramfs", f"/boot/initrd.img-{version}")
        root.rmdir()
    modules = {Path(p).name.split(".ko")[0] for p in listing.splitlines() if ".ko" in p}
    if "virtio_blk" in modules or "ahci" not in modules:
        raise RuntimeError(f"the rebuilt initramfs is not SATA-only: {sorted(modules)}")
    return disk


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build to finish ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def _remove_tree(path: Path) -> None:
    """Remove a build directory; never through a mount (left for the next build then)."""
    if not path.exists():
        return
    left = _mounts_below(path)
    if left:
        log(f"warning: still mounted below {path}, left for the next build: {left}")
        return
    run(["rm", "-rf", "--one-file-system", path])


def _remove_stale(key_dir: Path) -> None:
    """Leftovers of an interrupted build (we hold the lock, so no build is running): its
    mounts, its loop devices, its directory."""
    for tmp in sorted(key_dir.glob("tmp-*")):
        log(f"removing the leftovers of an interrupted build: {tmp}")
        for point in _mounts_below(tmp):
            if run(["umount", point], check=False).returncode != 0:
                run(["umount", "-l", point], check=False)
        for img in tmp.glob("*.raw"):
            for line in run(["losetup", "-j", img], check=False).stdout.splitlines():
                _detach(line.split(":", 1)[0])
        _remove_tree(tmp)


def _new_tmp(key_dir: Path, what: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"tmp-{what}-", dir=key_dir))


# --------------------------------------------------------------------------- devices


@contextlib.contextmanager
def _loop(image: Path, parts: int) -> Iterator[tuple[str, list[str]]]:
    """Attach ``image`` as a loop device and make its ``parts`` partitions appear."""
    dev = run(["losetup", "--find", "--show", "--partscan", image]).stdout.strip()
    try:
        names = [f"{dev}p{n}" for n in range(1, parts + 1)]
        for attempt in range(20):
            if all(Path(n).exists() for n in names):
                break
            run(["partx", "-u" if attempt % 2 == 0 else "-a", dev], check=False)
            time.sleep(0.25)
        else:
            raise RuntimeError(f"partitions of {dev} did not appear: {names}")
        yield dev, names
    finally:
        _detach(dev)


def _detach(dev: str) -> None:
    run(["partx", "-d", dev], check=False)
    for _ in range(20):
        if run(["losetup", "-d", dev], check=False).returncode == 0:
            return
        time.sleep(0.25)
    log(f"warning: could not detach {dev}")


@contextlib.contextmanager
def _mounted(dev: str, where: Path, *, fstype: str | None = None) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", *(["-t", fstype] if fstype else []), dev, where])
    try:
        yield where
    finally:
        _umount(where)


def _umount(where: Path) -> None:
    for _ in range(10):
        if run(["umount", where], check=False).returncode == 0:
            return
        time.sleep(0.5)
    run(["umount", "-l", where], check=False)


@contextlib.contextmanager
def _fusefat(dev: str, where: Path) -> Iterator[Path]:
    """Mount a FAT filesystem read-write through fusefat (the kernel here has no vfat); the
    device as fsname, so grub-probe finds the device behind the mount."""
    where.mkdir(parents=True, exist_ok=True)
    run(["fusefat", "-o", f"rw+,fsname={dev}", dev, where])
    try:
        yield where
    finally:
        for _ in range(10):
            if run(["fusermount", "-u", where], check=False).returncode == 0:
                break
            time.sleep(0.5)
        else:
            run(["fusermount", "-u", "-z", where], check=False)


@contextlib.contextmanager
def _chroot(
    root: Path,
    *,
    devices: Sequence[str] = (),
    aliases: dict[str, str] | None = None,
    uuid_links: dict[str, str] | None = None,
) -> Iterator[None]:
    """proc, sys and a private /dev (tmpfs with the basic nodes, the given block devices,
    ``aliases``: extra nodes name -> same device as another, /dev/disk/by-uuid links and its
    own devpts) in ``root``; services never start."""
    mounted: list[Path] = []
    policy = root / "usr/sbin/policy-rc.d"
    try:
        for fstype, sub, opts in (
            ("proc", "proc", "nosuid,nodev,noexec"),
            ("sysfs", "sys", "nosuid,nodev,noexec,ro"),
            ("tmpfs", "dev", "mode=0755,size=16m,nosuid"),
        ):
            run(["mount", "-t", fstype, "-o", opts, fstype, root / sub])
            mounted.append(root / sub)
        dev = root / "dev"
        for name in ("null", "zero", "full", "random", "urandom", "tty", *devices):
            src = Path(name if name.startswith("/") else f"/dev/{name}")
            st = os.stat(src)
            kind = stat.S_IFBLK if stat.S_ISBLK(st.st_mode) else stat.S_IFCHR
            node = dev / src.relative_to("/dev")
            os.mknod(node, kind | 0o600, st.st_rdev)
            node.chmod(0o666 if kind == stat.S_IFCHR else 0o660)
        for name, same_as in (aliases or {}).items():
            os.mknod(dev / name, stat.S_IFBLK | 0o660, os.stat(same_as).st_rdev)
        for name, target in (uuid_links or {}).items():
            (dev / "disk/by-uuid").mkdir(parents=True, exist_ok=True)
            os.symlink(f"../../{Path(target).name}", dev / "disk/by-uuid" / name)
        for sub in ("pts", "shm"):
            (dev / sub).mkdir()
        os.symlink("pts/ptmx", dev / "ptmx")
        os.symlink("/proc/self/fd", dev / "fd")
        run(["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", dev / "pts"])  # fmt: skip
        mounted.append(dev / "pts")
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        yield
    finally:
        policy.unlink(missing_ok=True)
        for where in reversed(mounted):
            _umount(where)


def _in_root(root: Path, *cmd: str, input: str | None = None) -> str:
    return run(["chroot", root, *cmd], input=input, env=CHROOT_ENV).stdout


# --------------------------------------------------------------------------- the base system


def _base_root(key_dir: Path) -> Path:
    """The shared root filesystem (one debootstrap), configured: the directory ``base``."""
    final = key_dir / "base"
    if final.is_dir():
        return final
    tmp = _new_tmp(key_dir, "base")
    try:
        root = tmp / "root"
        t0 = time.monotonic()
        for attempt in (1, 2):
            log(f"debootstrap {SUITE} from {MIRROR} (attempt {attempt})")
            r = run(
                [
                    "debootstrap", "--variant=minbase", "--components=main",
                    f"--include={','.join(BASE_PACKAGES)}", SUITE, root, MIRROR,
                ],
                # no initramfs here: each disk builds its own, host-only, after its fstab
                env={**os.environ, "INITRD": "No", "DEBIAN_FRONTEND": "noninteractive"},
                check=attempt == 2,
            )  # fmt: skip
            if r.returncode == 0:
                break
            log(f"debootstrap failed (a mirror hiccup?): {r.stderr.strip()[-500:]}")
            run(["rm", "-rf", "--one-file-system", root])
        log(f"debootstrap done in {time.monotonic() - t0:.0f} s")
        t1 = time.monotonic()
        _configure_base(root)
        with _chroot(root):
            _in_root(root, "apt-get", "clean")
            # the boot loaders' packages, downloaded now so each disk installs offline
            for pkg in GRUB_PACKAGE.values():
                _in_root(root, "apt-get", "install", "-y", "-q", "-d", "--no-install-recommends", pkg)  # fmt: skip
        log(f"base configured in {time.monotonic() - t1:.0f} s")
        os.replace(root, final)
    finally:
        _remove_tree(tmp)
    return final


MARKER_SCRIPT = f"""#!/bin/sh
# rescueui test system: say on the serial console that the system is up, then power off.
echo "{MARKER} kernel=$(uname -r) root=$(findmnt -no SOURCE /)" >/dev/ttyS0
systemctl poweroff --no-block
"""

MARKER_UNIT = """[Unit]
Description=rescueui test system boot marker
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/rescueui-marker

[Install]
WantedBy=multi-user.target
"""

GRUB_DEFAULTS = f"""# rescueui test system
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="{KERNEL_CMDLINE}"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
"""

PERSISTENT_NET = (
    'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", '
    f'ATTR{{address}}=="{SOURCE_MAC}", ATTR{{dev_id}}=="0x0", ATTR{{type}}=="1", '
    'KERNEL=="eth*", NAME="eth0"\n'
)

INTERFACES = """# interfaces(5) file used by ifup(8) and ifdown(8)
auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
"""


def _configure_base(root: Path) -> None:
    (root / "etc/hostname").write_text(f"{HOSTNAME}\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
    conf = root / "etc/initramfs-tools/initramfs.conf"
    text = re.sub(r"(?m)^MODULES=.*$", "MODULES=list", conf.read_text())
    text = re.sub(r"(?m)^#?\s*COMPRESS=.*$", "COMPRESS=zstd", text)
    conf.write_text(text)
    (root / "etc/initramfs-tools/modules").write_text(
        "# rescueui test system: host-only initramfs for a virtio guest\n"
        + "".join(f"{m}\n" for m in INITRAMFS_MODULES)
    )
    (root / "etc/udev/rules.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/udev/rules.d/70-persistent-net.rules").write_text(
        "# network device of the source machine (written by the rescueui test builder)\n"
        + PERSISTENT_NET
    )
    (root / "etc/network").mkdir(parents=True, exist_ok=True)
    (root / "etc/network/interfaces").write_text(INTERFACES)
    script = root / "usr/local/sbin/rescueui-marker"
    script.write_text(MARKER_SCRIPT)
    script.chmod(0o755)
    (root / "etc/systemd/system/rescueui-marker.service").write_text(MARKER_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "rescueui-marker.service").symlink_to("/etc/systemd/system/rescueui-marker.service")
    (root / "etc/fstab").write_text("# filled in per disk\n")


def _kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "lib/modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise RuntimeError(f"expected one kernel in {root}/lib/modules, found {versions}")
    return versions[0]


def _check_initramfs(root: Path, version: str) -> list[str]:
    """The kernel modules in the system's initramfs (by its own lsinitramfs); raises unless it
    is the host-only virtio one (virtio_blk, no nvme/ahci) with fsck.ext4."""
    listing = _in_root(root, "lsinitramfs", f"/boot/initrd.img-{version}").splitlines()
    modules = sorted(Path(p).name for p in listing if re.search(r"\.ko(\.\w+)?$", p))
    bad = [m for m in modules if re.match(r"(nvme|ahci|libahci)", m)]
    if bad:
        raise RuntimeError(f"the initramfs should have no nvme/ahci driver, has {bad}")
    if not any(m.startswith("virtio_blk.ko") for m in modules):
        raise RuntimeError(f"the initramfs has no virtio_blk: {modules}")
    if not any(p.endswith("/fsck.ext4") for p in listing):
        raise RuntimeError("the initramfs has no fsck.ext4 (initramfs-tools' fsck hook)")
    return modules


# --------------------------------------------------------------------------- the disks


def _table(kind: str) -> str:
    if kind == "bios":
        return "label: dos\nunit: sectors\n\nstart=2048, type=83, bootable\n"
    esp = ESP_BYTES // SECTOR
    return (
        "label: gpt\nunit: sectors\nfirst-lba: 34\n\n"
        f'start=2048, size={esp}, type={ESP_TYPE}, name="EFI System Partition"\n'
        f'start={2048 + esp}, type={LINUX_TYPE}, name="testroot"\n'
    )


def _blkid(dev: str, tag: str) -> str:
    return run(["blkid", "-p", "-o", "value", "-s", tag, dev]).stdout.strip()


def _build_disk(kind: str, base: Path, key_dir: Path) -> Path:
    final = key_dir / f"{kind}.raw"
    tmp = _new_tmp(key_dir, kind)
    t0 = time.monotonic()
    try:
        image = tmp / f"{kind}.raw"
        with open(image, "wb") as f:
            f.truncate(DISK_BYTES)
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image], input=_table(kind))
        nparts = 1 if kind == "bios" else 2
        with _loop(image, nparts) as (disk, parts):
            root_dev = parts[-1]
            run(["mkfs.ext4", "-q", "-F", "-L", "testroot", root_dev])
            if kind == "uefi":
                run(["mkfs.vfat", "-F", "32", "-n", "ESP", parts[0]])
            mnt = tmp / "mnt"
            with _mounted(root_dev, mnt):
                run(["cp", "-a", f"{base}/.", mnt])  # owners, modes, links, xattrs (caps)
                log(f"{kind}: base copied in {time.monotonic() - t0:.0f} s")
                info = _install_system(kind, mnt, disk, parts)
                run(["fstrim", mnt], check=False)  # deleted files' blocks back to holes
            if kind == "uefi":
                listing = run(["mdir", "-b", "-i", parts[0], "::/EFI/BOOT"]).stdout
                if "::/EFI/BOOT/BOOTX64.EFI" not in listing.split():
                    raise RuntimeError(f"no BOOTX64.EFI on the ESP:\n{listing}")
            run(["e2fsck", "-f", "-n", root_dev])
        image.chmod(0o444)
        info["build_seconds"] = round(time.monotonic() - t0, 1)
        (tmp / f"{kind}.json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp / f"{kind}.json", key_dir / f"{kind}.json")
        os.replace(image, final)
        log(f"{kind}: built in {time.monotonic() - t0:.0f} s")
    finally:
        _remove_tree(tmp)
    return final


def _install_system(kind: str, mnt: Path, disk: str, parts: list[str]) -> dict[str, object]:
    """Per-disk part, in the mounted root: fstab, the boot loader, grub.cfg; checks it."""
    root_dev = parts[-1]
    root_uuid = _blkid(root_dev, "UUID")
    info: dict[str, object] = {"kind": kind, "root_uuid": root_uuid}
    if kind == "bios":
        fstab = "# <file system> <mount point> <type> <options> <dump> <pass>\n"
        fstab += "/dev/vda1 / ext4 errors=remount-ro 0 1\n"
    else:
        esp_uuid = _blkid(parts[0], "UUID")
        info["esp_uuid"] = esp_uuid
        fstab = "# <file system> <mount point> <type> <options> <dump> <pass>\n"
        fstab += f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n"
        fstab += f"UUID={esp_uuid} /boot/efi vfat umask=0077 0 1\n"
    (mnt / "etc/fstab").write_text(fstab)
    # /dev/vda1 as on the source machine, so initramfs-tools' fsck hook finds the root that
    # fstab names and puts fsck.ext4 in (grub-probe still sees the loop device in mountinfo)
    aliases = {"vda1": root_dev} if kind == "bios" else {}
    links = {root_uuid: root_dev}
    with _chroot(mnt, devices=[disk, *parts], aliases=aliases, uuid_links=links):
        if kind == "bios":
            _in_root(
                mnt, "debconf-set-selections",
                input="grub-pc grub-pc/install_devices multiselect\n"
                "grub-pc grub-pc/install_devices_empty boolean true\n",
            )  # fmt: skip
        _in_root(mnt, "apt-get", "install", "-y", "-q", "--no-install-recommends", GRUB_PACKAGE[kind])  # fmt: skip
        (mnt / "etc/default/grub").write_text(GRUB_DEFAULTS)
        if kind == "bios":
            _in_root(mnt, "grub-install", "--target=i386-pc", disk)
        else:
            if (mnt / "usr/lib/grub/i386-pc").exists():
                raise RuntimeError("the uefi system must not have /usr/lib/grub/i386-pc")
            (mnt / "boot/efi").mkdir(parents=True, exist_ok=True)
            with _fusefat(parts[0], mnt / "boot/efi"):
                _in_root(
                    mnt, "grub-install", "--target=x86_64-efi", "--efi-directory=/boot/efi",
                    "--removable", "--no-nvram",
                )  # fmt: skip
            _rewrite_fat_tree(parts[0], "EFI", mnt.parent / "esp-copy")
        # the host-only initramfs, built now that fstab names the root (initramfs-tools'
        # fsck hook puts fsck.ext4 in for it), and before update-grub: without an initrd
        # grub-mkconfig writes root=/dev/<device> instead of root=UUID=
        version = _kernel_version(mnt)
        _in_root(mnt, "update-initramfs", "-c", "-k", version)
        info["kernel"] = version
        info["initramfs_modules"] = _check_initramfs(mnt, version)
        _in_root(mnt, "update-grub")
        _in_root(mnt, "apt-get", "clean")
    for p in (mnt / "var/lib/apt/lists").glob("*"):
        if p.is_file():
            p.unlink()
    grub_cfg = (mnt / "boot/grub/grub.cfg").read_text()
    info["grub_linux"] = _check_grub_cfg(grub_cfg, root_uuid)
    return info


def _rewrite_fat_tree(dev: str, top: str, scratch: Path) -> None:
    """Write ``::/<top>`` of the FAT filesystem on ``dev`` again with mtools: fusefat gives
    every entry a long name with the short name "~1" and dates a month early; mtools writes
    plain 8.3 entries (EFI, BOOT, BOOTX64.EFI), as the kernel's vfat would."""
    scratch.mkdir()
    try:
        run(["mcopy", "-s", "-n", "-i", dev, f"::/{top}", scratch])
        run(["mdeltree", "-i", dev, f"::/{top}"])
        run(["mcopy", "-s", "-i", dev, scratch / top, "::/"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_grub_cfg(text: str, root_uuid: str) -> str:
    """The first ``linux`` line of grub.cfg; raises unless it boots root=UUID=<root_uuid>
    with our command line and the config finds its partition by UUID."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("linux")]
    if not lines:
        raise RuntimeError("grub.cfg has no linux line")
    first = lines[0]
    if f"root=UUID={root_uuid}" not in first or "loop" in first or KERNEL_CMDLINE not in first:
        raise RuntimeError(f"grub.cfg boots with the wrong command line: {first}")
    if f"--fs-uuid --set=root {root_uuid}" not in text:
        raise RuntimeError("grub.cfg does not search its partition by UUID")
    return first


# --------------------------------------------------------------------------- booting


@dataclass
class BootResult:
    marker: bool
    seconds: float  # until the marker, the give-up sign, QEMU's exit or the timeout
    output: str  # serial console text, ANSI sequences and carriage returns stripped
    reason: str = ""  # why the boot was stopped: "marker", "gave up: ...", "timeout", ...

    @property
    def marker_line(self) -> str | None:
        m = MARKER_LINE.search(self.output)
        return m.group(0) if m else None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


def clean_output(raw: bytes) -> str:
    text = ANSI.sub("", raw.decode("utf-8", "replace"))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _firmware_args(firmware: str, tmp: Path) -> list[str]:
    if firmware == "bios":
        return []
    for code, template in OVMF_PAIRS:
        if code.is_file() and template.is_file():
            nvram = tmp / "OVMF_VARS.fd"  # a fresh copy: no NVRAM entry survives a boot
            shutil.copyfile(template, nvram)
            return [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={nvram}",
            ]  # fmt: skip
    if OVMF_COMBINED.is_file():
        return ["-bios", str(OVMF_COMBINED)]
    raise FileNotFoundError("no UEFI firmware (OVMF): apt-get install ovmf")


def _disk_args(disk: Path, bus: str) -> list[str]:
    drive = f"file={disk},format=raw,cache=unsafe"
    if bus == "virtio":
        return ["-drive", f"if=virtio,{drive}"]
    if bus == "nvme":
        return ["-drive", f"if=none,id=d0,{drive}", "-device", f"nvme,drive=d0,serial={NVME_SERIAL}"]  # fmt: skip
    return [
        "-drive", f"if=none,id=d0,{drive}",
        "-device", "ahci,id=ahci0", "-device", "ide-hd,drive=d0,bus=ahci0.0",
    ]  # fmt: skip


def qemu_command(
    disk: Path, *, firmware: str, bus: str, tmp: Path, nic_mac: str | None = None
) -> list[str]:
    nic = ["-nic", f"user,model=e1000,mac={nic_mac}"] if nic_mac else ["-nic", "none"]
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "1024",
        "-nodefaults", "-display", "none", "-vga", "none", "-monitor", "none",
        "-serial", "stdio", "-no-reboot",
        *_firmware_args(firmware, tmp), *_disk_args(disk, bus), *nic,
    ]  # fmt: skip


def qemu_command_from_libvirt(xml_path: Path, *, tmp: Path) -> list[str]:
    """The QEMU command line for the libvirt domain ``xml_path``, from its own values:
    machine type, firmware (``<os firmware="efi">``: OVMF), vCPUs, memory, the disk (file,
    format, bus) and the network card (model, MAC). Only what ``rescueui restore --to-vm``
    writes is understood; anything else raises, so a test cannot boot something other than
    what the definition says. The CPU model stays ``qemu64`` (TCG here)."""
    import xml.etree.ElementTree as ET

    root = ET.parse(xml_path).getroot()
    os_el = root.find("os")
    assert os_el is not None
    type_el = os_el.find("type")
    machine = type_el.get("machine") if type_el is not None else None
    if machine not in ("q35", "pc"):
        raise ValueError(f"machine type {machine!r} not understood")
    firmware = "uefi" if os_el.get("firmware") == "efi" else "bios"
    vcpus = int(root.findtext("vcpu") or "0")
    mem = root.find("memory")
    assert mem is not None and mem.get("unit") == "KiB", "memory in KiB expected"
    memory_mib = int(mem.text or "0") // 1024
    disks = [d for d in root.iter("disk") if d.get("device") == "disk"]
    if len(disks) != 1:
        raise ValueError(f"expected one disk, found {len(disks)}")
    d = disks[0]
    src, drv, tgt = d.find("source"), d.find("driver"), d.find("target")
    assert src is not None and drv is not None and tgt is not None
    drive = f"if=none,id=d0,file={src.get('file')},format={drv.get('type')},cache=unsafe"
    bus = tgt.get("bus")
    if bus == "virtio":
        disk_args = ["-drive", drive, "-device", "virtio-blk-pci,drive=d0"]
    elif bus == "sata" and machine == "q35":
        disk_args = ["-drive", drive, "-device", "ide-hd,drive=d0,bus=ide.0"]  # ICH9 AHCI
    else:
        raise ValueError(f"disk bus {bus!r} on {machine} not understood")
    nics = list(root.iter("interface"))
    nic_args = ["-nic", "none"]
    if nics:
        model = nics[0].find("model")
        mac = nics[0].find("mac")
        qemu_model = {"virtio": "virtio-net-pci", "e1000": "e1000"}[
            model.get("type") if model is not None else ""
        ]
        nic_args = [
            "-nic",
            f"user,model={qemu_model},mac={mac.get('address') if mac is not None else ''}",
        ]
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64", "-machine", machine,
        "-smp", str(vcpus), "-m", str(memory_mib),
        "-nodefaults", "-display", "none", "-vga", "none", "-monitor", "none",
        "-serial", "stdio", "-no-reboot",
        *_firmware_args(firmware, tmp), *disk_args, *nic_args,
    ]  # fmt: skip


def boot_libvirt_xml(
    xml_path: Path, *, timeout: float = 300, log: Path | None = None
) -> BootResult:
    """Boot the VM a libvirt domain describes (:func:`qemu_command_from_libvirt`) like
    :func:`boot`; the disk it names must not be a cached pristine one."""
    with tempfile.TemporaryDirectory(prefix="rescueui-boot-") as tmpname:
        cmd = qemu_command_from_libvirt(xml_path, tmp=Path(tmpname))
        disk = Path(cmd[cmd.index("-drive") + 1].split("file=")[1].split(",")[0])
        if disk.resolve().is_relative_to(CACHE_ROOT.resolve()):
            raise ValueError(f"{disk} is a cached pristine disk: boot a copy")
        return _run_qemu(cmd, timeout=timeout, log=log)


def boot(
    disk: Path,
    *,
    firmware: str,
    bus: str,
    timeout: float = 240,
    log: Path | None = None,
    nic_mac: str | None = None,
) -> BootResult:
    """Boot ``disk`` (a raw image; a copy, never the cached one) in QEMU (TCG) with
    ``firmware`` "bios" (SeaBIOS) or "uefi" (OVMF, fresh NVRAM) on ``bus`` "virtio", "nvme"
    or "sata", until the marker line (then a short wait for the power-off), a sign that the
    boot gave up (initramfs without the root disk, panic, no boot loader), QEMU's exit or
    ``timeout`` seconds. QEMU is always killed. ``log``: the console output is written there
    (raw while running, cleaned at the end)."""
    if firmware not in FIRMWARES:
        raise ValueError(f"firmware must be one of {FIRMWARES}, not {firmware!r}")
    if bus not in BUSES:
        raise ValueError(f"bus must be one of {BUSES}, not {bus!r}")
    disk = Path(disk).resolve()
    if not disk.is_file():
        raise FileNotFoundError(disk)
    if disk.is_relative_to(CACHE_ROOT.resolve()):
        raise ValueError(f"{disk} is a cached pristine disk: boot a copy (copy_disk)")
    with tempfile.TemporaryDirectory(prefix="rescueui-boot-") as tmpname:
        cmd = qemu_command(disk, firmware=firmware, bus=bus, tmp=Path(tmpname), nic_mac=nic_mac)
        return _run_qemu(cmd, timeout=timeout, log=log)


def _run_qemu(cmd: list[str], *, timeout: float, log: Path | None) -> BootResult:
    chunks: list[bytes] = []
    lock = threading.Lock()
    logf = open(log, "wb") if log else None  # closed below
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()

    def reader() -> None:
        while True:
            try:
                data = os.read(out_fd, 65536)
            except OSError:
                return
            if not data:
                return
            with lock:
                chunks.append(data)
            if logf:
                logf.write(data)
                logf.flush()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()

    def text() -> str:
        with lock:
            return clean_output(b"".join(chunks))

    marker = False
    reason = "timeout"
    seconds = timeout
    try:
        while True:
            now = time.monotonic() - started
            out = text()
            if MARKER_LINE.search(out):
                marker, reason, seconds = True, "marker", now
                _wait_exit(proc, 20)  # the guest powers off by itself
                break
            sign = next((s for s in GAVE_UP if s in out), None)
            if sign:
                reason, seconds = f"gave up: {sign}", now
                _wait_exit(proc, 3)  # a moment for the rest of its message
                break
            if proc.poll() is not None:
                reason, seconds = f"qemu exited ({proc.returncode})", now
                break
            if now >= timeout:
                break
            time.sleep(0.2)
    finally:
        _kill(proc)
        thread.join(timeout=5)
        proc.stdout.close()
        if logf:
            logf.close()
    output = text()
    if log:
        log.write_text(output)
    return BootResult(marker=marker, seconds=round(seconds, 1), output=output, reason=reason)


def _wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=seconds)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
