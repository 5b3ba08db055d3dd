"""An installed system on a disk, mounted and ready to run its own commands.

:func:`mount_system` finds the partition that holds the root filesystem (the one with
``/etc/os-release`` or ``/etc/fstab``), mounts it, then the filesystems its ``/etc/fstab``
puts on the same disk (``/boot``, ``/boot/efi``, ``/usr``...) and, for running commands,
``/dev``, ``/proc``, ``/sys`` and ``/run`` (and ``efivarfs`` when asked). Read-only for
examining (capture, pre-flight), read-write for the fix-ups.

:meth:`MountedSystem.run` runs a command of the installed system in a chroot inside a
new, empty network namespace (``unshare --net``): a fix-up never reaches a network.
Every mount is released when the block ends, in reverse order, also on errors.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescueui.core import blockdev, fsmount, parttable
from rescueui.core.adapt.rootview import RootView
from rescueui.core.adapt.system import KERNEL_NAME_RE, FstabEntry, looks_installed, read_fstab
from rescueui.core.errors import DiskError, RescueError
from rescueui.core.tools import SYSTEM_PATH, require_tool

LINUX_ROOT_TYPES = ("ext2", "ext3", "ext4", "xfs", "btrfs")
SKIP_FSTYPES = ("swap", "none", "tmpfs", "proc", "sysfs", "devpts", "nfs", "nfs4", "cifs", "bind")
OUTPUT_TAIL = 4000  # characters of a command's output kept for the report
COMMAND_TIMEOUT = 1800.0


@dataclass
class PartitionInfo:
    number: int
    device: str
    fs_type: str = ""
    uuid: str = ""
    label: str = ""
    partuuid: str = ""
    partlabel: str = ""


@dataclass
class CommandResult:
    """One command run in the installed system."""

    argv: list[str]
    status: int
    output: str  # its last :data:`OUTPUT_TAIL` characters (stdout and stderr together)
    seconds: float
    full_output: str = field(default="", repr=False)  # all of it (not put in reports)

    @property
    def ok(self) -> bool:
        return self.status == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": " ".join(self.argv),
            "exit_status": self.status,
            "output_tail": self.output,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class MountedSystem:
    disk: str
    root: Path
    root_partition: int
    partitions: dict[int, PartitionInfo]
    read_only: bool
    mounts: list[tuple[Path, str]] = field(default_factory=list)  # (where, what), in order
    notes: list[str] = field(default_factory=list)

    @property
    def view(self) -> RootView:
        return RootView(self.root)

    def partition_of(self, spec: str, fstype: str = "") -> PartitionInfo | None:
        """The partition of this disk an fstab/crypttab spec names, if it is on this disk."""
        return match_spec(spec, fstype, self.partitions)

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = COMMAND_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> CommandResult:
        """Run ``argv`` inside the installed system (chroot, no network)."""
        cmd = [require_tool("unshare"), "--net", "--", require_tool("chroot"), os.fspath(self.root)]
        return _execute(cmd, list(argv), timeout=timeout, env=env)


def run_host(argv: list[str], *, timeout: float = COMMAND_TIMEOUT) -> CommandResult:
    """Run one of the rescue system's own commands (mkfs on a new partition), recorded
    the same way as the restored system's."""
    return _execute([], list(argv), timeout=timeout, env=None)


def _execute(
    prefix: list[str], argv: list[str], *, timeout: float, env: dict[str, str] | None
) -> CommandResult:
    full_env = {
        "PATH": SYSTEM_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
        "TMPDIR": "/tmp",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
        **(env or {}),
    }
    start = time.monotonic()
    try:
        proc = subprocess.run(
            prefix + argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            timeout=timeout,
            check=False,
        )
        status, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        status, out = 124, (exc.stdout or b"") + f"\n(stopped after {timeout:.0f} s)".encode()
    except OSError as exc:
        status, out = 127, str(exc).encode()
    text = out.decode("utf-8", errors="replace")
    return CommandResult(argv, status, text[-OUTPUT_TAIL:], time.monotonic() - start, text)


def match_spec(spec: str, fstype: str, parts: dict[int, PartitionInfo]) -> PartitionInfo | None:
    """Which partition ``spec`` (``UUID=``, ``LABEL=``, ``PARTUUID=``, ``/dev/disk/by-*``,
    a kernel name) names; a kernel name counts only when the filesystem type agrees."""
    key, _, value = spec.partition("=")
    by = {
        "UUID": "uuid",
        "LABEL": "label",
        "PARTUUID": "partuuid",
        "PARTLABEL": "partlabel",
    }
    if value and key.upper() in by:
        attr = by[key.upper()]
        value = value.strip('"')
    elif spec.startswith("/dev/disk/by-"):
        kind, _, value = spec[len("/dev/disk/by-") :].partition("/")
        attr = {
            "uuid": "uuid",
            "label": "label",
            "partuuid": "partuuid",
            "partlabel": "partlabel",
        }.get(kind, "")
        value = udev_unescape(value)
    else:
        m = KERNEL_NAME_RE.fullmatch(spec) if spec.startswith("/dev/") else None
        if m is None:
            return None
        p = parts.get(int(m.group(2)))
        if p is None or (fstype and fstype not in ("auto", p.fs_type) and p.fs_type):
            return None
        return p
    if not attr or not value:
        return None
    for p in parts.values():
        have = getattr(p, attr)
        if have and (
            have == value or (attr in ("uuid", "partuuid") and have.lower() == value.lower())
        ):
            return p
    return None


def udev_unescape(name: str) -> str:
    """``/dev/disk/by-label/My\\x20Disk`` -> ``My Disk`` (udev's escaping)."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def probe_partitions(devices: dict[int, str]) -> dict[int, PartitionInfo]:
    """blkid's TYPE, UUID, LABEL, PARTUUID, PARTLABEL of each partition device."""
    blkid = require_tool("blkid")
    out: dict[int, PartitionInfo] = {}
    for number, dev in devices.items():
        info = PartitionInfo(number, dev)
        proc = subprocess.run(
            [blkid, "-p", "-o", "export", dev], capture_output=True, text=True, check=False
        )
        for line in proc.stdout.splitlines():
            k, _, v = line.partition("=")
            if k == "TYPE":
                info.fs_type = v
            elif k == "UUID":
                info.uuid = v
            elif k == "LABEL":
                info.label = v
            elif k == "PART_ENTRY_UUID":
                info.partuuid = v
            elif k == "PART_ENTRY_NAME":
                info.partlabel = v
        out[number] = info
    return out


@contextlib.contextmanager
def partition_devices(
    disk: str, table: dict[str, Any], *, read_only: bool
) -> Iterator[dict[int, str]]:
    """A device for each partition of ``table`` on ``disk`` (extended containers left out)."""
    with contextlib.ExitStack() as stack:
        devices: dict[int, str] = {}
        for part in table.get("partitions") or []:
            if parttable.is_extended(table, part):
                continue
            n = parttable.partition_number(part)
            node = parttable.node_name(disk, n)
            if read_only or not os.path.exists(node):
                # a read-only loop over the partition's bytes: never a write, and no need
                # for the kernel to know the disk's partitions
                ss = parttable.sector_size(table)
                start, size = int(part["start"]) * ss, int(part["size"]) * ss
                devices[n] = stack.enter_context(
                    blockdev.range_device(disk, start, size, read_only=read_only)
                )
            else:
                devices[n] = stack.enter_context(
                    parttable.partition_device(disk, n, table, read_only=read_only)
                )
        yield devices


def _mountpoint_depth(e: FstabEntry) -> int:
    return 0 if e.mountpoint == "/" else e.mountpoint.rstrip("/").count("/")


@contextlib.contextmanager
def mount_system(
    disk: str,
    table: dict[str, Any],
    *,
    read_only: bool,
    root_partition: int | None = None,
    runnable: bool = True,
    efivars: bool = False,
) -> Iterator[MountedSystem | None]:
    """The installed system on ``disk`` mounted, or ``None`` if no partition holds one.

    ``runnable``: also mount ``/dev``, ``/proc``, ``/sys`` and ``/run`` (read-only mode:
    fresh ``/tmp`` and ``/run`` in memory) so that :meth:`MountedSystem.run` works.
    """
    with contextlib.ExitStack() as stack:
        devices = stack.enter_context(partition_devices(disk, table, read_only=read_only))
        parts = probe_partitions(devices)
        order = sorted(parts)
        if root_partition is not None and root_partition in parts:
            order.remove(root_partition)
            order.insert(0, root_partition)
        root_dir = fsmount.mount_dir("system")
        stack.callback(_rmdir, root_dir)
        found: MountedSystem | None = None
        for n in order:
            p = parts[n]
            if p.fs_type not in LINUX_ROOT_TYPES:
                continue
            # Looked at read-only first: a data partition is never mounted for writing (a
            # mount writes its superblock), only the one that holds the system.
            try:
                fsmount.mount(p.device, root_dir, p.fs_type, read_only=True)
            except RescueError:
                continue
            installed = looks_installed(RootView(root_dir))
            if installed and not read_only:
                fsmount.unmount(root_dir)
                fsmount.mount(p.device, root_dir, p.fs_type, read_only=False)  # raises: said
            if installed:
                found = MountedSystem(disk, root_dir, n, parts, read_only)
                found.mounts.append((root_dir, p.device))
                stack.callback(_release, found)
                break
            fsmount.unmount(root_dir)
        if found is None:
            yield None
            return
        _mount_fstab(found)
        if runnable:
            _mount_api(found, efivars=efivars)
        yield found


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _release(system: MountedSystem) -> None:
    for where, _ in reversed(system.mounts):
        warning = fsmount.unmount(where)
        if warning:
            system.notes.append(warning)
    system.mounts.clear()


def _target_dir(system: MountedSystem, path: str) -> Path | None:
    """The host directory for ``path`` inside the system, resolved inside its root."""
    host = system.view.resolve(path)
    if host is None or not host.is_dir() or host.is_symlink():
        return None
    return host


def _mount_fstab(system: MountedSystem) -> None:
    """Mount what the system's fstab puts on this disk below ``/`` (``/boot``, the ESP...)."""
    for e in sorted(read_fstab(system.view), key=_mountpoint_depth):
        if e.mountpoint == "/" or not e.mountpoint.startswith("/") or e.fstype in SKIP_FSTYPES:
            continue
        if "bind" in e.options.split(","):
            continue
        p = system.partition_of(e.spec, e.fstype)
        if p is None:
            system.notes.append(
                f"{e.mountpoint} ({e.spec}) is not on this disk; not mounted for the fix-ups."
            )
            continue
        where = _target_dir(system, e.mountpoint)
        if where is None:
            system.notes.append(f"{e.mountpoint} has no directory in the restored system.")
            continue
        try:
            how = fsmount.mount(p.device, where, p.fs_type or e.fstype, read_only=system.read_only)
        except DiskError as exc:
            system.notes.append(f"{e.mountpoint} ({p.device}) could not be mounted: {exc.message}")
            continue
        system.mounts.append((where, p.device))
        system.notes.append(f"{e.mountpoint}: partition {p.number} ({p.fs_type}, {how}).")


def _mount_api(system: MountedSystem, *, efivars: bool) -> None:
    mount = require_tool("mount")

    def do(args: list[str], path: str) -> None:
        where = _target_dir(system, path)
        if where is None:
            raise DiskError(
                f"The restored system has no directory {path}; its commands cannot run.",
                hint="The fix-ups were not applied; the restored data is not affected.",
            )
        proc = subprocess.run([mount, *args, os.fspath(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DiskError(
                f"Mounting {path} in the restored system failed: {proc.stderr.strip()}."
            )
        system.mounts.append((where, args[-1]))

    do(["--bind", "/dev"], "/dev")
    if os.path.isdir("/dev/pts"):
        do(["--bind", "/dev/pts"], "/dev/pts")
    do(["-t", "proc", "proc"], "/proc")
    do(["-t", "sysfs", "sysfs"], "/sys")
    if system.read_only:
        do(["-t", "tmpfs", "-o", "mode=1777,size=512m", "tmpfs"], "/tmp")
        do(["-t", "tmpfs", "-o", "mode=755,size=64m", "tmpfs"], "/run")
    else:
        do(["--bind", "/run"], "/run")
    if efivars and os.path.isdir("/sys/firmware/efi/efivars"):
        do(["-t", "efivarfs", "efivarfs"], "/sys/firmware/efi/efivars")
