"""Unattended restore, driven by the kernel command line of the live image.

For fleets and for the boot test: the technician (or a PXE/IPMI script) boots the live
image with options that name the image and pin the target, and the restore runs with
no questions. Options (all on the kernel command line, ``/proc/cmdline``):

``rescueui.unattended=1``
    Required. Without it nothing here runs.
``rescueui.image=LABEL:/path/to/image``
    The image, by the label of the filesystem holding it and the path inside that
    filesystem (``UUID=<fs uuid>:/path`` also works): an image folder (ours, or a
    Clonezilla folder) or an image file (a VM disk: qcow2, vmdk, vhdx, vdi, vhd; a raw disk
    image, also gzip/xz/zstd/bzip2-compressed). The filesystem is mounted read-only unless
    it is already mounted; the path must stay inside it.
``rescueui.target=KEY:VALUE[,KEY:VALUE...]``
    The target disk, pinned by identity; every key given must match. Keys: ``serial``,
    ``wwn``, ``path`` (e.g. ``/dev/vdc`` or ``/dev/disk/by-id/...``), ``size`` (bytes).
    ``path`` alone identifies nothing stable, so it needs ``size`` too. Examples:
    ``serial:S3Z9NB0K123456``, ``wwn:0x5002538e40a1b2c3,size:500107862016``,
    ``path:/dev/vdc,size:1073741824``.
``rescueui.verify=0``
    Skip the read-back verification of the target (default: verify).
``rescueui.grow=0``
    Keep the partition sizes of the image (default: grow the last partition to the disk).
``rescueui.exact=1``
    Make the space no filesystem uses zero on any target (default: only where the target
    zeroes fast; a spinning disk keeps its old bytes there).
``rescueui.adapt=LIST``
    Which fix-ups fit the restored Linux system to this machine after the verified
    restore: a comma-separated choice of ``drivers``, ``boot-loader``, ``names``,
    ``nic-rules``; ``all`` (the default: every one the pre-flight finds needed) or
    ``none``. The pre-flight lines and the report list them.
``rescueui.strict=1``
    Also abort on pre-flight warnings (default: only on stops; warnings are printed and
    written to the report).
``rescueui.poweroff=1``
    Power off after a successful restore; ``rescueui.poweroff=always`` also after a failure.
``rescueui.wait=SECONDS``
    How long to wait for the image's filesystem and the target to appear (default 90;
    USB disks show up late). Waiting never leads to a write: a missing or differing target
    always aborts.

Safety: the target must be found by its pinned identity, be a whole disk that
:mod:`rescueui.core.disks` offers as a target (not the boot medium, not the image medium,
not mounted or in use), and the identity the restore confirms must still match the pin.
Any mismatch aborts before anything is written, with the reason on the consoles and in
the report. There is no default target and no countdown that ends in a write.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescueui.core import units
from rescueui.core.errors import RescueError
from rescueui.core.progress import Progress
from rescueui.core.units import human_duration, human_rate, human_size

PREFIX = "rescueui."
MEDIA_ROOT = Path("/run/rescueui/media")
FALLBACK_REPORT_DIR = Path("/run/rescueui/reports")
DEFAULT_WAIT_SECONDS = 90
MAX_WAIT_SECONDS = 24 * 3600  # more is a typo, not a slow USB disk

Say = Callable[[str], None]


class UnattendedError(RescueError):
    """The unattended restore cannot start: bad option, image or target not found or differing."""


class NotFoundYetError(UnattendedError):
    """The image filesystem or the target is not (yet) there: worth waiting for a while.
    Everything else (a differing identity, several matches, an unsafe target) aborts at once."""


# ------------------------------------------------------------------------ options


@dataclass(frozen=True)
class TargetPin:
    """The identity a target must have. Every field that is set must match."""

    serial: str | None = None
    wwn: str | None = None
    path: str | None = None
    size_bytes: int | None = None

    def describe(self) -> str:
        bits = []
        if self.serial:
            bits.append(f"serial {self.serial}")
        if self.wwn:
            bits.append(f"WWN {self.wwn}")
        if self.path:
            bits.append(f"path {self.path}")
        if self.size_bytes is not None:
            bits.append(f"size {self.size_bytes} bytes ({human_size(self.size_bytes)})")
        return ", ".join(bits)


@dataclass(frozen=True)
class UnattendedOptions:
    unattended: bool = False
    image_fs: str | None = None  # filesystem label, or "UUID=<uuid>"
    image_path: str | None = None  # absolute path inside that filesystem
    target: TargetPin | None = None
    verify: bool = True
    grow: bool = True
    exact: bool = False
    adapt: frozenset[str] | None = None  # None: every fix-up needed
    strict: bool = False
    poweroff: str = "no"  # "no" | "success" | "always"
    wait_seconds: int = DEFAULT_WAIT_SECONDS
    unknown: tuple[str, ...] = ()  # rescueui.* options this version does not know

    def describe(self) -> list[str]:
        return [
            f"image:  {self.image_fs}:{self.image_path}",
            f"target: {self.target.describe() if self.target else '(none)'}",
            f"verify: {'yes' if self.verify else 'no'}, grow last partition: "
            f"{'yes' if self.grow else 'no'}, exact: {'yes' if self.exact else 'no'}, "
            f"fix-ups: {'all needed' if self.adapt is None else ', '.join(sorted(self.adapt)) or 'none'}, "
            f"abort on warnings: {'yes' if self.strict else 'no'}, "
            f"power off: {self.poweroff}",
        ]


def split_cmdline(text: str) -> list[str]:
    """Split a kernel command line like the kernel does: blanks separate, double quotes group
    (``"rescueui.image=MY DISK:/a b"``); the quotes themselves are dropped."""
    words: list[str] = []
    cur: list[str] = []
    in_quote = False
    started = False
    for ch in text:
        if ch == '"':
            in_quote = not in_quote
            started = True
        elif ch.isspace() and not in_quote:
            if started:
                words.append("".join(cur))
            cur, started = [], False
        else:
            cur.append(ch)
            started = True
    if started:
        words.append("".join(cur))
    return words


_TRUE = {"1", "yes", "y", "true", "on"}
_FALSE = {"0", "no", "n", "false", "off"}


def _flag(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise UnattendedError(
        f"Kernel option {PREFIX}{name}={value}: expected 1 or 0.",
        hint=f"Write {PREFIX}{name}=1 or {PREFIX}{name}=0.",
    )


def ascii_digits(text: str) -> bool:
    """True for a non-empty run of 0-9 only. ``str.isdigit`` also accepts '²' or Arabic-Indic
    digits, which ``int`` then refuses or reads as another number."""
    return bool(text) and text.isascii() and text.isdigit()


def parse_size(text: str) -> int:
    """Bytes, as a plain integer (``1073741824``); binary suffixes K/M/G/T(iB) are accepted."""
    size = units.parse_size(text)
    if size is None:
        raise UnattendedError(
            f"Kernel option {PREFIX}target: size '{text}' is not a number of bytes "
            "(digits 0-9, optionally followed by K, M, G or T).",
            hint="Give the exact size in bytes, as the disk list shows it in JSON form "
            "(size_bytes).",
        )
    return size


def parse_target(value: str) -> TargetPin:
    """``serial:XYZ`` / ``wwn:0x..`` / ``path:/dev/vdc,size:1073741824`` -> TargetPin."""
    fields: dict[str, str] = {}
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, val = part.partition(":")
        key = key.strip().lower()
        if not sep or not val.strip():
            raise UnattendedError(
                f"Kernel option {PREFIX}target={value}: '{part}' is not KEY:VALUE.",
                hint="Example: rescueui.target=serial:S3Z9NB0K123456 or "
                "rescueui.target=path:/dev/vdc,size:1073741824",
            )
        if key not in ("serial", "wwn", "path", "size"):
            raise UnattendedError(
                f"Kernel option {PREFIX}target={value}: unknown key '{key}'.",
                hint="Keys: serial, wwn, path, size.",
            )
        if key in fields:
            raise UnattendedError(f"Kernel option {PREFIX}target={value}: '{key}' given twice.")
        fields[key] = val.strip()
    if not fields:
        raise UnattendedError(f"Kernel option {PREFIX}target is empty.")
    size = parse_size(fields["size"]) if "size" in fields else None
    path = fields.get("path")
    if path is not None and not path.startswith("/dev/"):
        raise UnattendedError(
            f"Kernel option {PREFIX}target: path '{path}' is not under /dev/.",
            hint="Example: path:/dev/vdc,size:1073741824",
        )
    if not ({"serial", "wwn", "path"} & fields.keys()):
        raise UnattendedError(
            f"Kernel option {PREFIX}target={value} names no disk: the size alone can match "
            "several.",
            hint="Pin the target by serial or wwn, or by path and size "
            "(path:/dev/vdc,size:1073741824).",
        )
    if not ({"serial", "wwn"} & fields.keys()) and size is None:
        raise UnattendedError(
            f"Kernel option {PREFIX}target={value} pins the target by path only; a device name "
            "can point at another disk after a reboot.",
            hint="Add the size in bytes (path:/dev/vdc,size:1073741824), or pin by serial or wwn.",
        )
    return TargetPin(serial=fields.get("serial"), wwn=fields.get("wwn"), path=path, size_bytes=size)


def parse_image(value: str) -> tuple[str, str]:
    """``LABEL:/path/in/fs`` -> (label, path). The label is everything before the first ':/'."""
    idx = value.find(":/")
    if idx <= 0:
        raise UnattendedError(
            f"Kernel option {PREFIX}image={value}: expected LABEL:/path/to/image.",
            hint="Example: rescueui.image=RESCUEIMG:/images/web01",
        )
    label, path = value[:idx], value[idx + 1 :]
    parts = [p for p in path.split("/") if p]
    if ".." in parts:
        raise UnattendedError(
            f"Kernel option {PREFIX}image={value}: '..' is not allowed in the path."
        )
    return label, "/" + "/".join(parts)


def parse_cmdline(text: str) -> UnattendedOptions:
    """Parse the rescueui.* options of a kernel command line. The last occurrence wins.

    Raises UnattendedError for malformed values and when unattended=1 lacks image/target.
    """
    raw: dict[str, str] = {}
    for word in split_cmdline(text):
        if word.startswith(PREFIX) and "=" in word:
            key, _, value = word[len(PREFIX) :].partition("=")
            raw[key.strip().lower()] = value
    known = {
        "unattended",
        "image",
        "target",
        "verify",
        "grow",
        "exact",
        "adapt",
        "strict",
        "poweroff",
        "wait",
    }
    # options the live image's console launcher reads
    launcher = {"serial_size", "serial_ascii"}
    unknown = tuple(sorted(f"{PREFIX}{k}" for k in raw if k not in known | launcher))
    unattended = _flag("unattended", raw["unattended"]) if "unattended" in raw else False
    image_fs = image_path = None
    if "image" in raw:
        image_fs, image_path = parse_image(raw["image"])
    target = parse_target(raw["target"]) if "target" in raw else None
    poweroff = raw.get("poweroff", "0").strip().lower()
    if poweroff == "always":
        power = "always"
    else:
        power = "success" if _flag("poweroff", poweroff) else "no"
    wait = raw.get("wait", str(DEFAULT_WAIT_SECONDS)).strip()
    if not ascii_digits(wait) or int(wait) > MAX_WAIT_SECONDS:
        raise UnattendedError(
            f"Kernel option {PREFIX}wait={wait}: expected seconds, digits 0-9 only, at most "
            f"{MAX_WAIT_SECONDS} (e.g. {PREFIX}wait=90).",
            hint=f"Write {PREFIX}wait=90, or leave it out for the default "
            f"({DEFAULT_WAIT_SECONDS} s).",
        )
    adapt: frozenset[str] | None = None
    if "adapt" in raw:
        from rescueui.core.adapt.plan import FIXUPS, parse_selection

        try:
            chosen = parse_selection(raw["adapt"])
        except ValueError as exc:
            raise UnattendedError(
                f"Kernel option {PREFIX}adapt={raw['adapt']}: {exc}.",
                hint=f"Write {PREFIX}adapt=all, {PREFIX}adapt=none or a list such as "
                f"{PREFIX}adapt=drivers,boot-loader.",
            ) from exc
        adapt = None if chosen == set(FIXUPS) else frozenset(chosen)
    opts = UnattendedOptions(
        unattended=unattended,
        image_fs=image_fs,
        image_path=image_path,
        target=target,
        verify=_flag("verify", raw["verify"]) if "verify" in raw else True,
        grow=_flag("grow", raw["grow"]) if "grow" in raw else True,
        exact=_flag("exact", raw["exact"]) if "exact" in raw else False,
        adapt=adapt,
        strict=_flag("strict", raw["strict"]) if "strict" in raw else False,
        poweroff=power,
        wait_seconds=int(wait),
        unknown=unknown,
    )
    if unattended:
        missing = [n for n, v in (("image", image_fs), ("target", target)) if v is None]
        if missing:
            raise UnattendedError(
                f"{PREFIX}unattended=1 needs {' and '.join(PREFIX + m for m in missing)} on the "
                "kernel command line; nothing was written.",
                hint="Example: rescueui.image=RESCUEIMG:/images/web01 "
                "rescueui.target=serial:S3Z9NB0K123456 rescueui.unattended=1",
            )
    return opts


def read_cmdline(path: str | Path = "/proc/cmdline") -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace")


# ------------------------------------------------------------------------ target pinning


def _norm_wwn(value: str | None) -> str | None:
    if not value:
        return None
    v = value.strip().lower()
    for prefix in ("0x", "naa.", "eui.", "wwn-"):
        v = v.removeprefix(prefix)
    return v


def _norm_serial(value: str | None) -> str | None:
    return value.strip() if value else None


def pin_differences(
    pin: TargetPin,
    *,
    path: str,
    size_bytes: int,
    serial: str | None,
    wwn: str | None,
    devnum: tuple[int, int] | None,
) -> list[str]:
    """What differs between the pin and a disk (empty: it is the pinned disk)."""
    diffs: list[str] = []
    if pin.serial is not None and _norm_serial(serial) != _norm_serial(pin.serial):
        diffs.append(f"serial is {serial or 'none'}, pinned {pin.serial}")
    if pin.wwn is not None and _norm_wwn(wwn) != _norm_wwn(pin.wwn):
        diffs.append(f"WWN is {wwn or 'none'}, pinned {pin.wwn}")
    if pin.size_bytes is not None and size_bytes != pin.size_bytes:
        diffs.append(
            f"size is {size_bytes} bytes ({human_size(size_bytes)}), pinned {pin.size_bytes} bytes"
        )
    if pin.path is not None:
        want = _devnum_of(pin.path)
        if want is None or devnum != want:
            diffs.append(f"it is {path}, pinned {pin.path}")
    return diffs


def _devnum_of(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    import stat as stat_mod

    if not stat_mod.S_ISBLK(st.st_mode):
        return None
    return (os.major(st.st_rdev), os.minor(st.st_rdev))


def _disk_line(d: Any) -> str:
    bits = [d.path, f"{d.size_bytes} bytes ({human_size(d.size_bytes)})", d.bus]
    if d.model:
        bits.append(d.model)
    bits.append(f"serial {d.serial}" if d.serial else "no serial")
    if d.wwn:
        bits.append(f"WWN {d.wwn}")
    return ", ".join(bits)


def select_target(pin: TargetPin, disks: list[Any]) -> Any:
    """The one disk of ``disks`` (rescueui.core.disks.Disk) that matches the pin.

    Raises UnattendedError when none or several match, or when the match may not be written
    (boot medium, image medium, mounted, in use, read-only: its ``reasons``).
    """
    seen = "; ".join(_disk_line(d) for d in disks) or "no disks at all"
    # The primary key finds the candidate, the other keys must then match.
    if pin.serial is not None:
        cands = [d for d in disks if _norm_serial(d.serial) == _norm_serial(pin.serial)]
        key = f"serial {pin.serial}"
    elif pin.wwn is not None:
        cands = [d for d in disks if _norm_wwn(d.wwn) == _norm_wwn(pin.wwn)]
        key = f"WWN {pin.wwn}"
    else:
        assert pin.path is not None
        want = _devnum_of(pin.path)
        cands = [d for d in disks if want is not None and d.devnum == want]
        if (
            want is not None
            and not cands
            and any(p.devnum == want for d in disks for p in d.partitions)
        ):
            raise UnattendedError(
                f"Target {pin.path} is a partition; the unattended restore writes whole disks.",
                hint="Pin the whole disk (e.g. /dev/vdc, not /dev/vdc1). Nothing was written.",
            )
        key = f"path {pin.path}"
    if not cands:
        raise NotFoundYetError(
            f"Target not found: no disk with {key}. Disks seen: {seen}.",
            hint="Check rescueui.target on the kernel command line against `rescueui disks`. "
            "Nothing was written.",
        )
    if len(cands) > 1:
        raise UnattendedError(
            f"Target ambiguous: {len(cands)} disks have {key}: "
            + "; ".join(_disk_line(d) for d in cands)
            + ".",
            hint="Pin the target by more keys (wwn, size). Nothing was written.",
        )
    disk = cands[0]
    diffs = pin_differences(
        pin,
        path=disk.path,
        size_bytes=disk.size_bytes,
        serial=disk.serial,
        wwn=disk.wwn,
        devnum=disk.devnum,
    )
    if diffs:
        raise UnattendedError(
            f"Target identity differs: the disk with {key} ({disk.path}): "
            + "; ".join(diffs)
            + ".",
            hint="The pinned identity must match exactly. Nothing was written.",
        )
    if not disk.targetable:
        raise UnattendedError(
            f"Target {disk.path} ({key}) may not be written: " + "; ".join(disk.reasons) + ".",
            hint="Nothing was written.",
        )
    return disk


# ------------------------------------------------------------------------ the image medium


def _settle() -> None:
    subprocess.run(["udevadm", "settle", "--timeout=10"], check=False, capture_output=True)


def find_filesystem(fs: str, disks: list[Any]) -> tuple[str, list[str]]:
    """(device path, mount points) of the one filesystem with this label (or ``UUID=...``)."""
    by_uuid = fs.upper().startswith("UUID=")
    want = fs[5:].lower() if by_uuid else fs
    found: list[tuple[str, list[str]]] = []
    for d in disks:
        for obj in [d, *d.partitions]:
            value = getattr(obj, "uuid" if by_uuid else "label", None)
            if value is None:
                continue
            if (value.lower() == want) if by_uuid else (value == want):
                found.append((obj.path, list(obj.mountpoints)))
    if len(found) > 1:
        raise UnattendedError(
            f"Image filesystem ambiguous: {len(found)} filesystems are labelled {fs}: "
            + ", ".join(p for p, _ in found)
            + ".",
            hint="Relabel one of them (e2label, fatlabel) or use UUID=<uuid>:/path. "
            "Nothing was written.",
        )
    if not found:
        raise NotFoundYetError(
            f"Image filesystem not found: no filesystem labelled {fs}.",
            hint="Attach the disk with the images, or check rescueui.image. Nothing was written.",
        )
    return found[0]


def wait_for(what: str, probe: Callable[[], Any], seconds: float, say: Say) -> Any:
    """Call ``probe`` until it finds what it looks for, for at most ``seconds``; any other
    error (mismatch, ambiguity, unsafe target) ends the wait at once."""
    deadline = time.monotonic() + seconds
    announced = False
    while True:
        _settle()
        try:
            return probe()
        except NotFoundYetError:
            if time.monotonic() >= deadline:
                raise
            if not announced:
                say(f"waiting up to {int(seconds)} s for {what} to appear ...")
                announced = True
            time.sleep(2)


@dataclass
class ImageMedium:
    device: str
    mountpoint: Path
    mounted_here: bool
    read_only: bool = True
    notes: list[str] = field(default_factory=list)

    def make_writable(self) -> bool:
        """Remount read-write (only a mount made here) for the report; False if it cannot be."""
        if not self.mounted_here:
            return os.access(self.mountpoint, os.W_OK)
        if not self.read_only:
            return True
        r = subprocess.run(
            ["mount", "-o", "remount,rw", str(self.mountpoint)], capture_output=True, text=True
        )
        if r.returncode == 0:
            self.read_only = False
            return True
        self.notes.append(f"cannot remount {self.device} read-write: {r.stderr.strip()}")
        return False

    def release(self) -> None:
        if self.mounted_here:
            os.sync()
            subprocess.run(["umount", str(self.mountpoint)], capture_output=True)


def mount_image_medium(device: str, mountpoints: list[str], name: str) -> ImageMedium:
    """Use the filesystem where it is mounted, or mount it read-only under /run/rescueui/media."""
    if mountpoints:
        return ImageMedium(
            device=device,
            mountpoint=Path(mountpoints[0]),
            mounted_here=False,
            read_only=not os.access(mountpoints[0], os.W_OK),
        )
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "image"
    where = MEDIA_ROOT / safe
    where.mkdir(parents=True, exist_ok=True)
    # The same options as the app's media scan: read-only and no journal replay (a dirty
    # journal replayed would write to the image disk).
    from rescueui.core.session import RO_MOUNT_OPTIONS

    probe = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", device],
        capture_output=True,
        text=True,
        check=False,
    )
    options = RO_MOUNT_OPTIONS.get(probe.stdout.strip(), "ro")
    r = subprocess.run(["mount", "-o", options, device, str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        raise UnattendedError(
            f"Cannot mount the image filesystem {device} read-only: {r.stderr.strip()}.",
            hint="Check the filesystem (fsck) on another machine. Nothing was written.",
        )
    return ImageMedium(device=device, mountpoint=where, mounted_here=True)


def image_dir_in(medium: ImageMedium, path: str) -> Path:
    """The image ``path`` names on the medium: an image folder (ours, Clonezilla) or an image
    file, after symlinks are resolved still inside the medium. Anything else is refused
    with what the medium holds."""
    from rescueui.core.errors import ImageError
    from rescueui.core.images import detect_kind

    try:
        root = medium.mountpoint.resolve()
        image = (medium.mountpoint / path.lstrip("/")).resolve()
        if root not in (image, *image.parents):
            raise UnattendedError(
                f"Image path {path} leads outside {medium.device}.",
                hint="Name an image on that filesystem. Nothing was written.",
            )
        exists = image.exists()
    except OSError as exc:  # e.g. a name longer than the filesystem allows
        raise UnattendedError(
            f"Image {path} cannot be looked up on {medium.device}: {exc.strerror}.",
            hint="Check the rescueui.image option. Nothing was written.",
        ) from exc
    if not exists:
        raise UnattendedError(
            f"Image {path} not found on {medium.device}.",
            hint=f"{_what_is_there(medium)} Nothing was written.",
        )
    try:
        detect_kind(image)  # an image folder, or a regular file (its kind by content)
    except ImageError as exc:
        raise UnattendedError(
            f"{path} on {medium.device} is not an image: {exc.message}",
            hint=f"{_what_is_there(medium)} Nothing was written.",
        ) from exc
    return image


def _what_is_there(medium: ImageMedium, limit: int = 20) -> str:
    """The images found on the medium (path inside it and kind), else its top folder."""
    from rescueui.core.session import MAX_SEARCH_DEPTH, _walk_candidates

    found: list[str] = []
    try:
        for cand in _walk_candidates(medium.mountpoint, MAX_SEARCH_DEPTH):
            found.append(f"/{cand.path.relative_to(medium.mountpoint)} ({cand.kind})")
            if len(found) > limit:
                break
    except (OSError, ValueError):
        found = []
    if found:
        more = ", ..." if len(found) > limit else ""
        return f"Images on it: {', '.join(found[:limit])}{more}."
    try:
        names = sorted(os.listdir(medium.mountpoint))[:limit]
    except OSError:
        names = []
    return f"No image found on it; the filesystem holds: {', '.join(names) or 'nothing'}."


def image_home(image: Path) -> Path:
    """The folder the engine's reports go to: the image folder, or the folder of an image
    file (``<folder>/reports``)."""
    return image if image.is_dir() else image.parent


def image_kind_words(image: Path) -> str:
    """What kind of image ``image`` is, by content, for the console ("qcow2", "raw, zstd")."""
    from rescueui.core.images import detect_kind

    try:
        found = detect_kind(image)
    except RescueError:
        return "unknown kind"
    return f"{found.kind}, {found.compression}-compressed" if found.compression else found.kind


# ------------------------------------------------------------------------ the run


@dataclass
class UnattendedResult:
    outcome: str  # "success" | "failed" | "aborted" (nothing written)
    message: str
    report_paths: list[Path] = field(default_factory=list)
    written: bool = False


class ProgressPrinter:
    """Progress lines for a console or a log: one every ``interval`` seconds or phase change."""

    def __init__(
        self, say: Say, interval: float = 5.0, clock: Callable[[], float] = time.monotonic
    ):
        self.say = say
        self.interval = interval
        self.clock = clock
        self._last_time = -1e9
        self._last_phase: str | None = None
        self._lock = threading.Lock()

    # Phases that move no bytes: their line is what is being done now.
    STEP_PHASES = ("adapt",)

    def line(self, p: Progress) -> str:
        if p.phase in self.STEP_PHASES:
            return f"{p.phase:<8}  {p.message}"
        pct = 100.0 * p.fraction
        bits = [
            f"{p.phase:<8}",
            f"{pct:5.1f}%",
            f"{human_size(p.bytes_done)} of {human_size(p.bytes_total)}",
            f"now {human_rate(p.rate_now)}",
            f"avg {human_rate(p.rate_avg)}",
            f"ETA {human_duration(p.eta)}",
        ]
        if p.stream:
            bits.append(f"stream {p.stream} chunk {p.stream_chunks_done}/{p.stream_chunks_total}")
        if p.last_chunk is not None and not p.last_chunk.ok:
            bits.append(f"CHUNK {p.last_chunk.index} HASH MISMATCH")
        return "  ".join(bits)

    def __call__(self, p: Progress) -> None:
        now = self.clock()
        key = f"{p.phase}: {p.message}" if p.phase in self.STEP_PHASES else p.phase
        with self._lock:
            if key == self._last_phase and now - self._last_time < self.interval:
                return
            self._last_phase = key
            self._last_time = now
        self.say(self.line(p))


def _report_dir(image_dir: Path, medium: ImageMedium | None, say: Say) -> Path:
    """Where the report goes: ``<image>/reports`` (the engine's place) if the image medium can
    be made writable, else /run/rescueui/reports (lost at power-off: the console says so)."""
    if medium is not None and medium.make_writable():
        return image_home(image_dir) / "reports"
    for note in medium.notes if medium is not None else []:
        say(note)
    return FALLBACK_REPORT_DIR


def write_abort_report(
    report_dir: Path,
    opts: UnattendedOptions | None,
    image_dir: Path | None,
    exc: BaseException,
    *,
    cmdline: str | None = None,
    written: bool | None = False,
) -> list[Path]:
    """The report of an aborted run (nothing written), in the engine's report format; the
    paths of the files that exist (empty if none could be written anywhere). ``written=None``:
    the run broke off where it cannot tell whether the target was written."""
    from rescueui.core.report import JobReport

    where = str(image_dir) if image_dir is not None else None
    report = JobReport(job="restore", source=where, image_dir=where)
    options: dict[str, Any] | None = None
    if opts is not None:
        options = {
            "image": f"{opts.image_fs}:{opts.image_path}",
            "target": opts.target.describe() if opts.target else None,
            "verify": opts.verify,
            "grow": opts.grow,
            "exact": opts.exact,
            "strict": opts.strict,
        }
    report.details.update(mode="unattended", written=written, options=options)
    if cmdline is not None:
        report.details["cmdline"] = cmdline
    if written is False:
        report.notes.append("Unattended restore aborted before any write: nothing was written.")
        report.finish("refused", exc)
    else:
        report.notes.append(
            "The unattended run broke off; the target may be partly written: do not use it "
            "before a restore of it succeeds."
        )
        report.finish("failed", exc)
    try:
        report.write(report_dir)
    except Exception:  # never raises by contract; if it does, the console still says why
        return []
    with contextlib.suppress(OSError):
        os.sync()
    return [Path(p) for p in report.report_files if Path(p).exists()]


def unexpected_error(exc: BaseException, image_dir: Path | None) -> UnattendedError:
    """A specific message for an error the code did not expect (a bug, or an image whose
    manifest holds values of a type nobody checked: a forged or damaged image)."""
    image = f" with the image {image_dir}" if image_dir is not None else ""
    return UnattendedError(
        f"Unexpected error before anything was written{image}: {type(exc).__name__}: {exc}.",
        hint="The image's manifest may hold a value this version cannot "
        "use (a damaged or forged image): check it with `rescueui verify` and `rescueui "
        "preflight` on another machine, or use another copy. Report this with the report file.",
    )


@contextlib.contextmanager
def _medium_for(opts: UnattendedOptions, say: Say) -> Iterator[tuple[ImageMedium, Path]]:
    from rescueui.core.disks import scan_disks

    assert opts.image_fs is not None and opts.image_path is not None
    device, mps = wait_for(
        f"the filesystem {opts.image_fs}",
        lambda: find_filesystem(opts.image_fs or "", scan_disks()),
        opts.wait_seconds,
        say,
    )
    medium = mount_image_medium(device, mps, opts.image_fs)
    say(
        f"image filesystem {opts.image_fs}: {device} at {medium.mountpoint}"
        + (" (mounted read-only)" if medium.mounted_here else "")
    )
    try:
        yield medium, image_dir_in(medium, opts.image_path)
    finally:
        medium.release()


def run_unattended(
    opts: UnattendedOptions,
    say: Say,
    *,
    cancel: threading.Event | None = None,
    progress_interval: float = 5.0,
) -> UnattendedResult:
    """Run the restore the options describe; every step and every reason goes through ``say``.

    Returns the outcome; never raises for an expected failure (it is in the result and the
    report). Nothing is written unless the target matches the pin at every check.
    """
    from rescueui.core import identity as ident_mod
    from rescueui.core.disks import scan_disks

    if not opts.unattended:
        return UnattendedResult("aborted", f"{PREFIX}unattended=1 is not set; nothing to do.")
    for line in opts.describe():
        say(line)
    for name in opts.unknown:
        say(f"warning: unknown kernel option {name} (ignored)")
    assert opts.target is not None
    pin = opts.target
    medium: ImageMedium | None = None
    image_dir = Path(opts.image_path or "/")
    try:
        with _medium_for(opts, say) as (medium, image_dir):
            say(f"image: {image_dir} ({image_kind_words(image_dir)})")
            try:
                disk = wait_for(
                    f"the target ({pin.describe()})",
                    lambda: select_target(pin, scan_disks(image_paths=[image_dir])),
                    opts.wait_seconds,
                    say,
                )
                say(f"target found: {_disk_line(disk)}")
                # The identity the engine confirms and re-checks before opening must still be
                # the pinned one (a replug between the scan and here would change it).
                identity = ident_mod.identity_of(disk.path)
                diffs = pin_differences(
                    pin,
                    path=identity.path,
                    size_bytes=identity.size_bytes,
                    serial=identity.serial if pin.serial is not None else disk.serial,
                    wwn=identity.wwn if pin.wwn is not None else disk.wwn,
                    devnum=identity.devnum,
                )
                if diffs:
                    raise UnattendedError(
                        f"Target identity differs at confirmation: {identity.describe()}: "
                        + "; ".join(diffs)
                        + ".",
                        hint="Nothing was written.",
                    )
                code = ident_mod.confirmation_code(identity)
                confirmed = ident_mod.confirm_target(disk.path, code)
                say(f"target confirmed by its identity: {identity.describe()} (code {code})")
                result = _plan_and_restore(
                    opts, image_dir, confirmed, medium, say, cancel, progress_interval
                )
            except Exception as exc:  # refused or failed before the restore started
                error = exc if isinstance(exc, RescueError) else unexpected_error(exc, image_dir)
                return _aborted(error, _report_dir(image_dir, medium, say), opts, image_dir, say)
            return result
    except Exception as exc:  # image medium problems: no report next to the image possible
        error = exc if isinstance(exc, RescueError) else unexpected_error(exc, None)
        return _aborted(error, FALLBACK_REPORT_DIR, opts, image_dir, say)


def _aborted(
    exc: RescueError, report_dir: Path, opts: UnattendedOptions, image_dir: Path, say: Say
) -> UnattendedResult:
    """Nothing was written: say why, write the report, name it (or say it could not be)."""
    reason = _error_text(exc)
    say(f"ABORTED, nothing written: {reason}")
    paths = write_abort_report(report_dir, opts, image_dir, exc)
    _say_reports(paths, say)
    return UnattendedResult("aborted", reason, paths)


def _say_reports(paths: list[Path], say: Say) -> None:
    for p in paths:
        say(f"report: {p}")
    if not paths:
        say("no report file could be written anywhere (image medium, /run, /tmp): this log is all")


def _error_text(exc: RescueError) -> str:
    hint = getattr(exc, "hint", None)
    msg = getattr(exc, "message", None) or str(exc)
    return f"{msg} {hint}" if hint and hint not in msg else msg


def _plan_and_restore(
    opts: UnattendedOptions,
    image_dir: Path,
    confirmed: Any,
    medium: ImageMedium,
    say: Say,
    cancel: threading.Event | None,
    progress_interval: float,
) -> UnattendedResult:
    from rescueui.core import restore as restore_mod
    from rescueui.core.adapt import AdaptOptions

    kind = image_kind_words(image_dir)
    if kind.endswith("-compressed") and "xz" not in kind:  # xz records its size
        say("pre-flight ... (a compressed stream without a recorded size is measured first)")
    else:
        say("pre-flight ...")
    plan = restore_mod.plan_restore(
        image_dir,
        confirmed,
        verify=opts.verify,
        grow=opts.grow,
        exact=opts.exact,
        adapt=AdaptOptions(
            selection=None if opts.adapt is None else set(opts.adapt),
            enabled=opts.adapt is None or bool(opts.adapt),
        ),
        accept_warnings=not opts.strict,
        # who accepted the warnings, for the report
        acknowledged_by="rescueui unattended (kernel command line; rescueui.strict=1 refuses warnings)",
    )

    findings = list(getattr(plan, "findings", []) or [])
    for f in findings:
        # one console line per finding: a line break in the detail (or in image text quoted
        # by it) must not start a line of its own
        detail = str(getattr(f, "detail", "") or "").replace("\n", " / ")
        detail = f" ({detail})" if detail else ""
        say(f"pre-flight {f.level.upper():4} {f.code}: {f.message}{detail}")
    stops = [f for f in findings if f.level == "stop"]
    warns = [f for f in findings if f.level == "warn"]
    if stops:
        plan.image.close()
        raise UnattendedError(
            f"Pre-flight stop: {'; '.join(f.message for f in stops)}.", hint="Nothing was written."
        )
    if warns and opts.strict:
        plan.image.close()
        raise UnattendedError(
            f"Pre-flight warnings and {PREFIX}strict=1: {'; '.join(f.message for f in warns)}.",
            hint="Nothing was written.",
        )
    say(
        f"restoring {image_dir} ({plan.image.describe()}) to {confirmed.identity.describe()} "
        f"(verify {'on' if opts.verify else 'off'})"
    )
    if not plan.image.integrity.checked_at_source:
        say(f"source checks: {plan.image.integrity.words}")
    printer = ProgressPrinter(say, progress_interval)
    started = time.monotonic()
    try:
        report = restore_mod.restore(plan, progress=printer, cancel=cancel)
    except RescueError as exc:
        # The engine raises a failed or cancelled restore with its written report attached;
        # that is a FAILED restore (the target may be partly written), not an abort. Without
        # a report it failed before the job started: the caller reports "nothing written".
        report = getattr(exc, "report", None)
        if report is None:
            raise
    elapsed = time.monotonic() - started
    try:
        return _restore_result(opts, image_dir, medium, report, elapsed, say, kind=kind)
    except Exception as exc:  # the restore ran: never "nothing written" from here on
        msg = (
            f"restore {getattr(report, 'outcome', 'failed')}, but reporting it failed: "
            f"{type(exc).__name__}: {exc}; the engine's report: "
            + (", ".join(getattr(report, "report_files", []) or []) or "none written")
        )
        say(msg)
        outcome = "success" if getattr(report, "outcome", "") == "success" else "failed"
        return UnattendedResult(outcome, msg, [], written=True)


def _restore_result(
    opts: UnattendedOptions,
    image_dir: Path,
    medium: ImageMedium,
    report: Any,
    elapsed: float,
    say: Say,
    *,
    kind: str = "",
) -> UnattendedResult:
    """Say how the restore ended (and from which kind of image), put its report next to the
    image, name the report files."""
    outcome = getattr(report, "outcome", "failed")
    error = getattr(report, "error", None)
    from rescueui.core.adapt import fixup_lines

    for line in fixup_lines((getattr(report, "details", None) or {}).get("adapt")):
        say(f"fix-up {line}")
    for w in getattr(report, "warnings", []) or []:
        say(f"warning: {w}")
    # The engine writes its report to <image>/reports; the image medium is mounted read-only
    # during the restore, so that went to a fallback folder: write it next to the image now.
    written = [Path(p) for p in getattr(report, "report_files", []) or []]
    if not any(image_home(image_dir) in p.parents for p in written):
        report_dir = _report_dir(image_dir, medium, say)
        report.notes = [n for n in report.notes if not n.startswith("Report could not be written")]
        written = [Path(p) for p in report.write(report_dir)]
        os.sync()
    existing = [p for p in written if p.exists()][-2:]
    _say_reports(existing, say)
    of_kind = f" (image kind: {kind})" if kind else ""
    if outcome == "success":
        msg = (
            f"restore finished and {'verified' if opts.verify else 'NOT verified'} in "
            f"{human_duration(elapsed)}{of_kind}"
        )
        say(msg)
        return UnattendedResult("success", msg, existing, written=True)
    msg = f"restore {outcome}: {error or 'see the report'}{of_kind}"
    say(msg)
    return UnattendedResult(
        outcome if outcome in ("failed", "cancelled") else "failed", msg, existing, written=True
    )
