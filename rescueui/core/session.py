"""What a front end drives: one object that answers every question a screen asks.

The TUI holds a :class:`Session` and never decides anything itself: which disks exist and
which may be written (``rescueui.core.disks``), which images are on attached media, whether an
image fits a target and what the pre-flight says (``rescueui.core.preflight``), the code the
operator must type (``rescueui.core.identity``) and the jobs themselves (capture, restore,
verify). A demo session (:class:`rescueui.core.demo.DemoEnvironment`) answers the same
questions with file-backed virtual disks.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rescueui.core.demo import DemoEnvironment, paced
from rescueui.core.errors import ImageError, RescueError
from rescueui.core.fsmake import MAKEABLE
from rescueui.core.progress import ProgressCallback
from rescueui.core.units import MiB, human_size, parse_size

if TYPE_CHECKING:
    from rescueui.core.adapt import AdaptOptions
    from rescueui.core.vm.machine import VmMachine, VmRequest

MAX_SEARCH_DEPTH = 3
TUI_OPERATOR = "operator (TUI, one by one)"  # who acknowledged a warning, in the report
_SKIP_MOUNT_TYPES = {
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "cgroup", "cgroup2", "securityfs", "pstore",
    "debugfs", "tracefs", "configfs", "fusectl", "mqueue", "hugetlbfs", "bpf", "autofs",
    "binfmt_misc", "efivarfs", "overlay", "squashfs", "nsfs", "rpc_pipefs", "ramfs",
}  # fmt: skip


@dataclass
class StreamSummary:
    name: str
    kind: str
    partition_number: int | None
    start_bytes: int
    size_bytes: int
    fs_type: str | None
    label: str | None


@dataclass
class ImageSummary:
    """One image as the Image screen lists it (any kind: our folders, VM disks, raw and
    compressed raw images, Clonezilla folders)."""

    path: Path
    ok: bool
    error: str | None = None
    kind: str = ""  # the seam's kind: "rescueui" | "vm-disk" | "raw" | "clonezilla" | ...
    format: str | None = None  # "qcow2", "zstd" (a compressed raw image), ...
    description: str = ""  # the image's own describe(): what it is, in one line
    integrity: str = ""  # Integrity.code: "chunk-blake3" | "range-sha256" | ... | "none"
    integrity_words: str = ""  # what the kind carries to check its data against
    size_is_estimate: bool = False  # extent_bytes is an estimate (not measured while listing)
    source: str = ""
    source_size: int = 0
    extent_bytes: int = 0
    stored_bytes: int = 0
    created: str = ""
    machine: str = ""  # the source machine, where the image records it ("" when unknown)
    complete: bool = False
    table_type: str | None = None
    streams: list[StreamSummary] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind_label(self) -> str:
        """A short name of the kind for a table column ("rescueui", "qcow2", "raw.zst")."""
        if self.kind == "raw" and self.format:
            return f"raw.{_COMPRESSION_SUFFIX.get(self.format, self.format)}"
        if self.kind == "vm-disk" and self.format:
            return self.format
        return self.kind or "?"


_COMPRESSION_SUFFIX = {"gzip": "gz", "xz": "xz", "zstd": "zst", "bzip2": "bz2"}


def machine_words(host: dict[str, Any] | None) -> str:
    """The source machine in one line ("" when the image records none): vendor and product,
    firmware, CPUs, memory, and the VM configuration it was read from."""
    host = host or {}
    machine = " ".join(str(x) for x in (host.get("dmi_vendor"), host.get("dmi_product")) if x)
    extras = []
    if host.get("firmware"):
        extras.append(str(host["firmware"]).upper())
    if host.get("cpus"):
        extras.append(f"{host['cpus']} CPUs")
    if isinstance(host.get("memory_bytes"), int) and host["memory_bytes"] > 0:
        extras.append(human_size(int(host["memory_bytes"])))
    if host.get("source"):  # a VM disk's configuration next to it (libvirt XML, .vmx, ...)
        extras.append(f"from {host['source']}")
    if extras:
        machine = f"{machine} ({', '.join(extras)})" if machine else ", ".join(extras)
    return machine


def summarize_image(path: str | Path, *, measure: bool = True) -> ImageSummary:
    """Open an image of any kind (untrusted: errors become a summary with ``ok=False``).

    ``measure=False`` (listing): a compressed raw image that records no size is not
    decompressed to count its bytes; its size is then an estimate (``size_is_estimate``).
    """
    from rescueui.core.images import open_image

    p = Path(path)
    try:
        image = open_image(p, measure=measure)
    except RescueError as exc:
        return ImageSummary(path=p, ok=False, error=str(exc), kind=_kind_of(p))
    except Exception as exc:  # a damaged image must not end the listing of the others
        return ImageSummary(
            path=p,
            ok=False,
            error=f"{p} cannot be read as an image: {type(exc).__name__}: {exc}.",
            kind=_kind_of(p),
        )
    try:
        return _summary_of(p, image)
    except Exception as exc:  # facts of an unexpected shape (a forged or damaged image)
        return ImageSummary(
            path=p,
            ok=False,
            error=f"{p}: its facts cannot be shown: {type(exc).__name__}: {exc}.",
            kind=str(getattr(image, "kind", "")),
        )
    finally:
        with contextlib.suppress(Exception):
            image.close()


def _kind_of(p: Path) -> str:
    """The kind by content, for a summary of an image that could not be opened."""
    from rescueui.core.images import detect_kind

    try:
        return detect_kind(p).kind
    except RescueError:
        return ""


def _summary_of(p: Path, image: Any) -> ImageSummary:
    m = image.manifest
    src = m.source_disk or {}
    kind = str(image.kind)
    if kind == "rescueui":
        stored = int(image.stored_bytes)  # sizes of the data files as Image.open checked them
        serial = f"serial {src['serial']}" if src.get("serial") else None
        source = " ".join(str(x) for x in (src.get("model"), serial) if x)
        source = source or str(src.get("path", "?"))
        created = m.created
    else:
        stored = int(getattr(image, "stored_bytes", 0) or 0) or _stored_bytes(p)
        source = " ".join(str(x) for x in (src.get("model"), src.get("serial")) if x)
        created = m.created or _modified(p)
    return ImageSummary(
        path=p,
        ok=True,
        kind=kind,
        format=getattr(image, "fmt", None) or getattr(image, "compression", None),
        description=image.describe(),
        integrity=image.integrity.code,
        integrity_words=image.integrity.words,
        size_is_estimate=bool(getattr(image, "size_is_estimate", False)),
        source=source,
        source_size=int(src.get("size_bytes") or 0),
        extent_bytes=int(image.extent_bytes),
        stored_bytes=stored,
        created=created,
        machine=machine_words(m.host),
        complete=bool(m.complete),
        table_type=(m.partition_table or {}).get("label"),
        streams=[
            StreamSummary(
                s.name, s.kind, s.partition_number, s.start_bytes, s.size_bytes, s.fs_type, s.label
            )
            for s in m.streams
        ],
        warnings=list(m.warnings),
    )


def _stored_bytes(p: Path) -> int:
    """Bytes the image takes on its medium: the file, or the files of a folder (one level)."""
    try:
        if p.is_dir():
            with os.scandir(p) as it:
                return sum(e.stat(follow_symlinks=False).st_size for e in it if e.is_file())
        return p.stat().st_size
    except OSError:
        return 0


def _modified(p: Path) -> str:
    """When the image file was last written (a foreign image records no creation time)."""
    from datetime import datetime

    try:
        return datetime.fromtimestamp(p.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    except (OSError, ValueError, OverflowError):
        return ""


# ------------------------------------------------------------------------ discovery

SKIP_DIRS = ("proc", "sys", "dev", "run", "usr", "lib", "bin")
MIN_IMAGE_FILE = 1024 * 1024  # smaller files are not disk images (VM disks aside)
RAW_SUFFIXES = (".img", ".raw", ".dd")
COMPRESSED_SUFFIXES = (".gz", ".xz", ".zst", ".zstd", ".bz2")
NOT_IMAGE_SUFFIXES = (".bmap", ".xml", ".vmx", ".ovf", ".vbox", ".vbox-prev", ".json", ".txt")


@dataclass(frozen=True)
class Candidate:
    """Something the walk found that looks like an image; ``needs_table``: a compressed raw
    image, listed only when its head holds a partition table (checked when it is opened)."""

    path: Path
    kind: str
    needs_table: bool = False


def image_like_name(name: str) -> bool:
    """``disk.img``, ``sda.raw``, ``sda.dd`` and those compressed (``disk.img.zst``)."""
    low = name.lower()
    for comp in ("", *COMPRESSED_SUFFIXES):
        if low.endswith(comp) and low[: len(low) - len(comp)].endswith(RAW_SUFFIXES):
            return True
    return False


def _image_folder_kind(folder: Path) -> str | None:
    """Our own folder ("rescueui": a manifest.json), a Clonezilla folder ("clonezilla": a
    ``parts`` or ``disk`` file), or None."""
    if (folder / "manifest.json").is_file():
        return "rescueui"
    if (folder / "parts").is_file() or (folder / "disk").is_file():
        return "clonezilla"
    return None


def _looks_like_disk(head: bytes) -> bool:
    """A partition table in the first sectors: a GPT header at 512, or an MBR signature
    whose four entries have valid status bytes and at least one entry in use."""
    if head[512:520] == b"EFI PART":
        return True
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return False
    entries = [head[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    return all(e[0] in (0x00, 0x80) for e in entries) and any(e[4] != 0 for e in entries)


def _file_candidate(entry: os.DirEntry[str]) -> Candidate | None:
    """A regular file (never through a symlink) that is an image by content: a VM disk, a
    raw disk image named like one whose first sectors hold a partition table, or a
    compressed one named like one. Reads at most a few KiB of it."""
    from rescueui.core.images import detect_kind

    name = entry.name
    if name.startswith(".") or name.lower().endswith(NOT_IMAGE_SUFFIXES):
        return None
    try:
        if not entry.is_file(follow_symlinks=False):
            return None
        size = entry.stat(follow_symlinks=False).st_size
    except OSError:
        return None
    path = Path(entry.path)
    named = image_like_name(name)
    if size < MIN_IMAGE_FILE and not name.lower().endswith(
        (".qcow2", ".qcow", ".vmdk", ".vhdx", ".vhd", ".vdi")
    ):
        # tiny: not a disk image; a VM disk may be (a vmdk descriptor, an empty qcow2)
        return None
    try:
        found = detect_kind(path)
    except RescueError:
        return None
    if found.kind not in ("raw", "rescueui", "clonezilla"):
        return Candidate(path, found.kind)  # a VM disk: its header says so
    if found.kind != "raw" or not named or size < MIN_IMAGE_FILE:
        return None
    if found.compression is not None:
        return Candidate(path, "raw", needs_table=True)
    try:
        with open(path, "rb", buffering=0) as f:
            head = f.read(1024)
    except OSError:
        return None
    return Candidate(path, "raw") if _looks_like_disk(head) else None


def _walk_for_images(root: Path, depth: int) -> Iterable[Path]:
    """The paths of what looks like an image under ``root`` (see :func:`_walk_candidates`)."""
    for cand in _walk_candidates(root, depth):
        yield cand.path


def _walk_candidates(root: Path, depth: int) -> Iterable[Candidate]:
    """Image folders (ours, Clonezilla: not descended into) and image files under ``root``,
    ``depth`` folder levels deep, in name order. Symlinks are not followed; system folders
    and hidden names are skipped; each file costs at most a few KiB read."""
    try:
        if not root.is_dir():
            return
        kind = _image_folder_kind(root)
        if kind is not None:
            yield Candidate(root, kind)
            return
        if depth <= 0:
            return
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        name = entry.name
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if is_dir:
            if name.startswith(".") or name in SKIP_DIRS:
                continue
            yield from _walk_candidates(root / name, depth - 1)
            continue
        cand = _file_candidate(entry)
        if cand is not None:
            yield cand


def mounted_filesystems() -> list[tuple[str, str, str]]:
    """(device, mount point, fs type) of the mounted filesystems that may hold images."""
    out = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or parts[2] in _SKIP_MOUNT_TYPES:
            continue
        mnt = parts[1].replace("\\040", " ")
        out.append((parts[0], mnt, parts[2]))
    return out


def find_images(
    roots: Iterable[str | Path], *, depth: int = MAX_SEARCH_DEPTH
) -> list[ImageSummary]:
    """Every image under the given roots, a few levels deep: our folders (``manifest.json``),
    Clonezilla folders, VM disks, raw and compressed raw disk images (found by content).

    Listing stays cheap: a compressed image is not decompressed beyond its head (its size
    may be an estimate, ``size_is_estimate``), and one that holds no partition table there is
    not listed (a compressed file, but no disk image). Unreadable images are listed with
    ``ok=False`` and the reason.
    """
    seen: set[Path] = set()
    found = []
    for root in roots:
        for cand in _walk_candidates(Path(root), depth):
            real = cand.path.resolve()
            if real in seen:
                continue
            seen.add(real)
            summary = summarize_image(cand.path, measure=False)
            if cand.needs_table and summary.ok and summary.table_type is None:
                continue  # compressed, but not a disk image
            found.append(summary)
    return found


RO_MOUNT_OPTIONS: dict[str, str] = {
    # read-only and without replaying journals: looking for images must not change a disk
    "ext4": "ro,noload",
    "ext3": "ro,noload",
    "ext2": "ro",
    "xfs": "ro,norecovery",
    "btrfs": "ro,rescue=nologreplay",
    "vfat": "ro",
    "exfat": "ro",
    "ntfs3": "ro",
    "iso9660": "ro",
    "udf": "ro",
}
MEDIA_ROOT = Path("/run/rescueui/media")


def _unmounted_filesystems(disks: Iterable[Any]) -> list[tuple[str, str, str]]:
    """(device path, name, fs type) of filesystems that are not mounted and not in use."""
    out = []
    for disk in disks:
        candidates = list(disk.partitions) or [disk]
        for part in candidates:
            fs = getattr(part, "fs_type", None)
            if fs not in RO_MOUNT_OPTIONS or part.mountpoints or part.swap or part.holders:
                continue
            out.append((part.path, Path(part.path).name, fs))
    return out


def mount_media_read_only(disks: Iterable[Any], media_root: Path) -> list[Path]:
    """Mount (read-only, no journal replay) the unmounted filesystems that hold images.

    Filesystems without an image are unmounted again at once. Returns the mount points kept.
    Needs root; without it, or if a mount fails, that filesystem is simply not searched.
    """
    import subprocess

    kept: list[Path] = []
    for dev, name, fs in _unmounted_filesystems(disks):
        where = media_root / name
        try:
            where.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                ["mount", "-t", fs, "-o", RO_MOUNT_OPTIONS[fs], dev, str(where)],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode != 0:
            with contextlib.suppress(OSError):
                where.rmdir()
            continue
        if any(True for _ in _walk_for_images(where, MAX_SEARCH_DEPTH)):
            kept.append(where)
        else:
            unmount_media([where])
    return kept


def unmount_media(points: Iterable[Path]) -> None:
    import subprocess

    for where in points:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["umount", str(where)], capture_output=True, timeout=30, check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


@dataclass
class CheckLine:
    """A pre-flight line when the pre-flight module is not available (same fields as Finding)."""

    level: str
    code: str
    message: str
    detail: str = ""


def findings_allow_restore(findings: Sequence[Any]) -> bool:
    """A restore may be confirmed only when no finding says stop."""
    return not any(f.level == "stop" for f in findings)


def needs_acknowledgement(finding: Any) -> bool:
    """Warnings need the operator's explicit acknowledgement, one by one; stops can never be
    acknowledged (they refuse the restore); ok and info lines need nothing."""
    return getattr(finding, "level", "") == "warn"


def open_warnings(findings: Sequence[Any], acknowledged: Iterable[str]) -> list[Any]:
    """The warnings not yet acknowledged (by code): the restore is refused while any remain."""
    done = set(acknowledged)
    return [f for f in findings if needs_acknowledgement(f) and f.code not in done]


class OpenView:
    """One partition of an image held open read-only for a front end (the core's
    :class:`~rescueui.core.images.view.PartitionView`, mounted until :meth:`close`).

    The session that opened it closes it too when it ends (:meth:`Session.close`), so a
    screen that forgets it, or an app that exits, leaves nothing mounted."""

    def __init__(
        self,
        image_path: Path,
        partition: int,
        view: Any,
        stack: contextlib.ExitStack,
        on_close: Callable[[OpenView], None],
    ) -> None:
        self.image_path = image_path
        self.partition = partition
        self.view = view  # PartitionView
        self._stack = stack
        self._on_close = on_close
        self._lock = threading.Lock()
        self.closed = False

    @property
    def root(self) -> Path:
        """Where the partition's filesystem is mounted (read-only)."""
        return Path(self.view.root)

    @property
    def fs_type(self) -> str:
        return str(self.view.fs_type)

    @property
    def how(self) -> str:
        """How it is mounted ("kernel ext4 ro,noload", "FUSE fusefat read-only")."""
        return str(self.view.how)

    @property
    def size_bytes(self) -> int:
        return int(self.view.size_bytes)

    def problem(self) -> str | None:
        """The first part of the image that could not be read (a damaged chunk), if any."""
        problem = self.view.problem()
        return str(problem) if problem else None

    def close(self) -> None:
        """Unmount and release everything of the view (again: nothing happens)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            self._stack.close()
        finally:
            self._on_close(self)


class Session:
    """The front end's single door into the core."""

    def __init__(
        self,
        demo: DemoEnvironment | None = None,
        *,
        mount_media: bool | None = None,
        media_root: Path = MEDIA_ROOT,
        media_disks: Callable[[Any], bool] | None = None,
    ) -> None:
        self.demo = demo
        self._watcher: Any = None
        # look inside unmounted filesystems (read-only) for images: real runs as root only
        self.mount_media = (
            (demo is None and os.geteuid() == 0) if mount_media is None else mount_media
        )
        self.media_root = media_root
        self.media_mounts: list[Path] = []
        self.media_disks = media_disks  # which disks to look into (default: all)
        # target path -> the identity the operator was shown (pre-flight, confirmation)
        self._shown: dict[str, Any] = {}
        self._views: list[OpenView] = []  # partitions held open for browsing
        self._views_lock = threading.Lock()
        self._ended = False  # close() ran: a view still being mounted is released at once

    @property
    def is_demo(self) -> bool:
        return self.demo is not None

    # -- disks ----------------------------------------------------------
    def scan_disks(self, image_dir: str | Path | None = None) -> list[Any]:
        if self.demo is not None:
            return self.demo.disks()
        from rescueui.core.disks import scan_disks

        return scan_disks(image_paths=[image_dir] if image_dir else ())

    def start_watcher(self, callback: Callable[[Any], None]) -> None:
        """Report disks appearing/disappearing (real udev events; none in the demo)."""
        if self.demo is not None:
            return
        try:
            from rescueui.core.hotplug import DiskWatcher

            self._watcher = DiskWatcher(callback)
            self._watcher.start()
        except Exception:  # no udev: the list still works, it just does not refresh by itself
            self._watcher = None

    def stop_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def demo_plug(self) -> Any:
        """Demo only: plug/unplug a virtual USB disk; returns the DiskEvent to post."""
        if self.demo is None:
            return None
        from rescueui.core.hotplug import DiskEvent

        res = self.demo.plug()
        if res is None:
            return None
        action, path = res
        return DiskEvent(action=action, kind="disk", path=str(path), devnum=(0, 0))

    # -- images ---------------------------------------------------------
    def image_roots(self) -> list[Path]:
        if self.demo is not None:
            return []
        if self.mount_media:
            try:
                disks = [
                    d for d in self.scan_disks() if self.media_disks is None or self.media_disks(d)
                ]
            except RescueError:
                disks = []
            self.media_mounts += mount_media_read_only(disks, self.media_root)
        return [Path(m) for _dev, m, _t in mounted_filesystems()]

    def release_media(self, keep: Iterable[str | Path] = ()) -> None:
        """Unmount the filesystems this session mounted (except those holding ``keep``)."""
        keep_real = [Path(k).resolve() for k in keep]
        still = []
        for where in self.media_mounts:
            if any(k == where or where in k.parents for k in keep_real):
                still.append(where)
            else:
                unmount_media([where])
        self.media_mounts = still

    def close(self) -> None:
        """Everything this session holds, released: the disk watcher, the partitions open
        for browsing, the media mounted to look for images. The front end calls it when it
        ends."""
        with self._views_lock:
            self._ended = True
        self.stop_watcher()
        self.close_views()
        self.release_media()

    def find_images(self, extra: Sequence[str | Path] = ()) -> list[ImageSummary]:
        if self.demo is not None:
            found = [summarize_image(p) for p in self.demo.image_dirs()]
        else:
            found = find_images(self.image_roots())
        have = {s.path.resolve() for s in found}
        for p in extra:
            # a path the operator typed: an image folder, a folder holding images, or an
            # image file (shown whatever its name, with the reason if it is none)
            typed = Path(p)
            listed = find_images([typed], depth=1) if typed.is_dir() else [summarize_image(typed)]
            for s in listed:
                if s.path.resolve() not in have:
                    found.append(s)
                    have.add(s.path.resolve())
        return found

    # -- fit, pre-flight, confirmation --------------------------------
    def fit_problem(self, image: ImageSummary, disk: Any) -> str | None:
        """Why the image cannot go onto this disk at all (None if it can be considered).
        The target rule decides (:mod:`rescueui.core.targets.rule`)."""
        from rescueui.core.targets import rule

        if not disk.targetable:
            return "; ".join(disk.reasons)
        if self.onto_smaller(image, disk):
            return None
        return rule.fit_problem(image.extent_bytes, disk.size_bytes, disk.path)

    def onto_smaller(self, image: ImageSummary, disk: Any) -> bool:
        """The disk is smaller than the image's disk, but the image is a whole disk with a
        partition table: its files may go onto it, laid out anew (the pre-flight shows the
        plan, or by how much the data does not fit; :mod:`rescueui.core.smaller`)."""
        return (
            self.demo is None
            and disk.size_bytes < image.extent_bytes
            and image.table_type in ("gpt", "dos")
        )

    def partition_problem(
        self, image: ImageSummary, disk: Any, part: Any, number: int
    ) -> str | None:
        """Why image partition ``number`` cannot go onto the existing partition ``part``."""
        from rescueui.core.targets import rule

        if self.demo is None:
            reasons = rule.partition_verdict(
                disk, part, rule.RuleContext.build(image_paths=[image.path])
            )
        else:  # canned demo disks: their own records are all there is
            reasons = rule.partition_verdict(disk, part, rule.RuleContext())
        if reasons:
            return "; ".join(reasons)
        stream = next((st for st in image.streams if st.partition_number == number), None)
        if stream is None:
            return f"the image has no partition {number}"
        if self.demo is None and stream.fs_type in MAKEABLE:
            return None  # a smaller partition: its files may fit (the pre-flight says)
        return rule.fit_problem(
            stream.size_bytes, part.size_bytes, part.path, f"image partition {number}"
        )

    def preflight(
        self,
        image_dir: str | Path,
        disk: Any,
        *,
        partition: int | None = None,
        target_path: str | None = None,
        adapt: AdaptOptions | None = None,
    ) -> list[Any]:
        """The pre-flight findings. ``adapt``: the fix-ups the operator keeps and the machine
        they are for (whole-disk restores; a partition restore plans none, nor does the
        demo: see :meth:`_adapt_for`)."""
        from rescueui.core.identity import identity_of
        from rescueui.core.images import open_image

        # The operator chose this target now: what the pre-flight checks and the
        # confirmation later binds to is the device at its name now, checked against the
        # disk list's record.
        path = str(target_path or disk.path)
        self._shown.pop(path, None)
        if target_path is None:
            self.shown_identity(disk)
        else:
            self._shown[path] = identity_of(target_path)
        image = open_image(image_dir)  # measured: the pre-flight compares exact sizes
        try:
            try:
                from rescueui.core.preflight import run_preflight
            except ImportError:
                return self._basic_checks(image, disk)
            return run_preflight(
                image,
                target_path or disk.path,
                partition=partition,
                adapt=self._adapt_for(partition, adapt),
            )
        finally:
            image.close()  # a VM disk's helper process, a raw image's descriptor

    def _basic_checks(self, image: Any, disk: Any) -> list[Any]:
        lines: list[Any] = []
        if not disk.targetable:
            lines.append(CheckLine("stop", "unsafe-target", "; ".join(disk.reasons)))
        need, have = image.extent_bytes, disk.size_bytes
        if need > have:
            lines.append(
                CheckLine(
                    "stop",
                    "too-small",
                    f"The image needs {human_size(need)}; {disk.path} has only {human_size(have)}.",
                    "Choose a bigger target disk.",
                )
            )
        else:
            lines.append(
                CheckLine(
                    "ok",
                    "fits",
                    f"The image ({human_size(need)}) fits on {disk.path} ({human_size(have)}).",
                )
            )
        return lines

    def allows_restore(self, findings: Sequence[Any]) -> bool:
        return findings_allow_restore(findings)

    def needs_acknowledgement(self, finding: Any) -> bool:
        """True for a finding the operator must acknowledge before the restore (a warning)."""
        return needs_acknowledgement(finding)

    def open_warnings(self, findings: Sequence[Any], acknowledged: Iterable[str]) -> list[Any]:
        """The warnings among ``findings`` whose code is not in ``acknowledged`` (in order)."""
        return open_warnings(findings, acknowledged)

    def shown_identity(self, target: Any) -> Any:
        """The identity of ``target`` (a Disk or Partition record the operator chose), read
        now and checked against the record: a device that took the listed one's name (same
        name, another medium) is refused, and what the operator confirms later must be this
        one (:meth:`confirm`)."""
        from rescueui.core.errors import TargetChangedError
        from rescueui.core.identity import identity_of

        ident = identity_of(target.path)
        seen = self._shown.get(str(target.path))
        problems: list[str] = []
        if seen is not None:
            from rescueui.core.identity import differences

            problems = differences(seen, ident)
        else:
            record = {
                "device number": (getattr(target, "devnum", None), ident.devnum),
                "disk sequence number": (getattr(target, "diskseq", None), ident.diskseq),
                "loop backing file": (getattr(target, "backing_file", None), ident.backing_file),
                "serial number": (getattr(target, "serial", None), ident.serial),
            }
            problems = [
                f"{what}: listed {a}, now {b}"
                for what, (a, b) in record.items()
                if a is not None and b is not None and _norm(a) != _norm(b)
            ]
        if problems:
            raise TargetChangedError(
                f"{target.path} is not the disk you chose: " + "; ".join(problems) + ".",
                hint="Nothing was written. Go back, select the target again and check it.",
            )
        self._shown[str(target.path)] = ident
        return ident

    def confirmation_code(self, target: Any) -> str:
        """``target``: a Disk, or a Partition for a partition restore."""
        from rescueui.core.identity import confirmation_code

        return confirmation_code(self.shown_identity(target))

    def confirm(self, target: Any, typed: str) -> Any:
        """Raises UnsafeTargetError when the typed code does not match, and
        TargetChangedError when the device at the target's name is not the one shown."""
        from rescueui.core.identity import confirm_target

        return confirm_target(target.path, typed, expected=self._shown.get(str(target.path)))

    # -- jobs -----------------------------------------------------------
    def restore(
        self,
        image_dir: str | Path,
        confirmed: Any,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        resume: bool = False,
        partition: int | None = None,
        accepted_codes: Iterable[str] = (),
        acknowledged_by: str = TUI_OPERATOR,
        exact: bool = False,
        adapt: AdaptOptions | None = None,
    ) -> Any:
        """Plan and run a restore. The pre-flight runs again here: any stop refuses it, and
        so does any warning whose code the operator did not acknowledge (``accepted_codes``,
        one by one on the pre-flight screen); the acknowledgements go into the report.
        ``adapt``: the fix-ups of the restored system, as the pre-flight showed them (the same
        options, so the same warnings come up; whole-disk restores only).

        Returns the report on success; a failed or cancelled restore raises its
        ``RescueError`` with the written report as ``exc.report`` (like :meth:`capture`
        and :meth:`verify`; see :mod:`rescueui.core.restore`)."""
        from rescueui.core.restore import plan_restore, restore

        plan = plan_restore(
            image_dir,
            confirmed,
            partition=partition,
            resume=resume,
            accepted_codes=accepted_codes,
            acknowledged_by=acknowledged_by,
            exact=exact,
            adapt=self._adapt_for(partition, adapt),
        )
        if self.demo is not None:
            # demo restores write only files in the demo cache: their own writer lock, so a
            # demo never blocks (or is blocked by) a real restore on this machine
            plan.lock_path = str(self.demo.build.root / "writer.lock")
        return restore(plan, progress=self._pace(progress), cancel=cancel)

    def _adapt_for(self, partition: int | None, adapt: AdaptOptions | None) -> AdaptOptions | None:
        """The fix-ups to plan: none for a partition restore, and none in the demo (its
        sample disk holds files, not a system that boots: there is nothing to adapt)."""
        return adapt if partition is None and self.demo is None else None

    def _pace(self, progress: ProgressCallback | None) -> ProgressCallback | None:
        return paced(progress, self.demo.pace) if self.demo is not None else progress

    def capture(
        self,
        source: str | Path,
        image_dir: str | Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        all_blocks: bool = False,
    ) -> Any:
        from rescueui.core.capture import capture

        lock = str(self.demo.build.root / "writer.lock") if self.demo is not None else None
        return capture(
            source,
            image_dir,
            progress=self._pace(progress),
            cancel=cancel,
            lock_path=lock,
            all_blocks=all_blocks,
        )

    def estimate_capture(
        self,
        source: str | Path,
        *,
        all_blocks: bool = False,
        cancel: threading.Event | None = None,
    ) -> Any:
        """What a capture of ``source`` would store (read-only; runs the filesystems'
        used-block maps): a list of planned streams with ``usage()`` and ``read_bytes``.
        ``cancel`` stops the map tools (CancelledError)."""
        from rescueui.core.capture import estimate_capture

        return estimate_capture(str(source), all_blocks=all_blocks, cancel=cancel)

    def verify(
        self,
        image_dir: str | Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        from rescueui.core.verify import verify_image

        return verify_image(image_dir, progress=self._pace(progress), cancel=cancel)

    # -- browsing and extracting files -------------------------------------
    def open_view(
        self,
        image_path: str | Path,
        partition: int,
        *,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> OpenView:
        """Partition ``partition`` of the image mounted read-only until the returned view's
        ``close()`` (or this session's :meth:`close`). Raises RescueError saying why it
        cannot be (no filesystem, not enough room to stage it, not root...). ``progress``
        (bytes done, total) follows the staging of an image read only in order (compressed
        raw, Clonezilla), which is read once before it can be browsed; ``cancel`` stops it."""
        from rescueui.core.images.view import partition_view

        if self.demo is not None and os.geteuid() != 0:
            raise RescueError(
                "Browsing files mounts the image's partition read-only, which needs root; "
                "this demo runs without root.",
                hint="Start the demo as root to browse its image.",
            )
        stack = contextlib.ExitStack()
        try:
            view = stack.enter_context(
                partition_view(image_path, partition, progress=progress, cancel=cancel)
            )
        except BaseException:
            stack.close()
            raise
        opened = OpenView(Path(image_path), partition, view, stack, self._forget_view)
        with self._views_lock:
            ended = self._ended
            if not ended:
                self._views.append(opened)
        if ended:  # the front end ended while the partition was being mounted
            opened.close()
            raise RescueError("The program is ending: the partition was released again.")
        return opened

    def _forget_view(self, view: OpenView) -> None:
        with self._views_lock, contextlib.suppress(ValueError):
            self._views.remove(view)

    def close_views(self) -> None:
        """Release every partition this session still holds open for browsing."""
        with self._views_lock:
            views = list(self._views)
        for view in views:
            with contextlib.suppress(Exception):  # one that fails must not keep the others
                view.close()

    @property
    def open_views(self) -> list[OpenView]:
        with self._views_lock:
            return list(self._views)

    def list_folder(self, view: OpenView, path: str) -> list[Any]:
        """The entries of the folder ``path`` in the open partition (the core's FileEntry
        records, sorted by name). Raises RescueError: not a folder, or the image is
        damaged where the folder is stored."""
        from rescueui.core.files import list_folder

        if view.closed:
            raise RescueError("The partition is no longer open.", hint="Open it again.")
        try:
            return list_folder(view.root, path)
        except OSError as exc:
            raise _view_error(view, path, exc) from exc

    def tree_size(
        self, view: OpenView, path: str, cancel: threading.Event | None = None
    ) -> tuple[int, int]:
        """(bytes, files) of the regular files at ``path`` in the open partition: the file
        itself, or everything under a folder (links not followed). Stops early, with what
        was counted, when ``cancel`` is set."""
        import stat

        from rescueui.core.files import inside

        try:
            top = inside(view.root, path)
            st = os.lstat(top)
        except OSError as exc:
            raise _view_error(view, path, exc) from exc
        if stat.S_ISREG(st.st_mode):
            return st.st_size, 1
        if not stat.S_ISDIR(st.st_mode):
            return 0, 0
        total = files = 0
        for folder, _dirs, names in os.walk(top):
            if cancel is not None and cancel.is_set():
                break
            for name in names:
                try:
                    fst = os.lstat(os.path.join(folder, name))
                except OSError:
                    continue
                if stat.S_ISREG(fst.st_mode):
                    total += fst.st_size
                    files += 1
        return total, files

    def default_extract_folder(self, image_path: str | Path, partition: int) -> Path:
        """Where extracted files go unless the operator says otherwise: a new folder named
        after the image, the partition and the time, on a writable medium other than the
        image's own (attached media under /media, /mnt and /run/media first); on the
        image's medium when there is no other (extracting there must then be chosen
        explicitly). Nothing is created here (the demo: a folder of its own cache)."""
        from datetime import datetime

        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{Path(os.path.abspath(image_path)).name}-p{partition}-files-{stamp}"
        if self.demo is not None:
            folder = self.demo.build.root / "extracted"
            folder.mkdir(exist_ok=True)
            return folder / name
        media = self._writable_media(image_path)
        return (media[0] if media else Path(os.path.abspath(image_path)).parent) / name

    def _writable_media(self, image_path: str | Path) -> list[Path]:
        """Mounted filesystems that can be written, not the image's medium nor one mounted
        read-only to look for images; attached media first."""
        try:
            image_dev = os.stat(image_path).st_dev
        except OSError:
            image_dev = None
        ours = {Path(m) for m in self.media_mounts}
        found: list[tuple[int, Path]] = []
        for _dev, mnt, _fs in mounted_filesystems():
            where = Path(mnt)
            if where in ours or any(p == Path("/run/rescueui") for p in where.parents):
                continue
            if where.parts[1:2] in (("proc",), ("sys",), ("dev",), ("boot",)):
                continue
            try:
                st = os.stat(where)
                vfs = os.statvfs(where)
            except OSError:
                continue
            if st.st_dev == image_dev or vfs.f_flag & os.ST_RDONLY or not os.access(where, os.W_OK):
                continue
            attached = where.parts[1:2] in (("media",), ("mnt",)) or str(where).startswith(
                "/run/media/"
            )
            found.append((0 if attached else 2 if where == Path("/") else 1, where))
        return [w for _rank, w in sorted(found, key=lambda x: (x[0], str(x[1])))]

    def extract_destination(
        self, dest: str | Path, image_path: str | Path, *, allow_image_medium: bool = False
    ) -> Path:
        """The folder to extract into, checked by the core's rule (an existing real folder,
        not on the image's medium unless ``allow_image_medium``; RescueError with
        ``action == "onto-image-medium"`` when that is all that is wrong). A folder that does
        not exist yet is made, one level, once its parent passes the same checks."""
        from rescueui.core.files import check_destination

        text = str(dest).strip()
        if not text:
            raise RescueError(
                "No destination folder given.", hint="Type the folder the files go into."
            )
        where = Path(os.path.abspath(text))
        if any(m == where or m in where.parents for m in self.media_mounts):
            raise RescueError(
                f"The folder {where} cannot be written: its medium was mounted read-only to "
                "look for images.",
                hint="Choose a folder on a medium this machine can write to.",
            )
        if not os.path.lexists(where):
            check_destination(where.parent, image_path, allow_image_medium=allow_image_medium)
            try:
                os.mkdir(where, 0o755)
            except OSError as exc:
                raise RescueError(
                    f"The folder {where} cannot be made: {exc.strerror}.",
                    hint="Choose a folder on a medium this machine can write to.",
                ) from exc
        return check_destination(where, image_path, allow_image_medium=allow_image_medium)

    def extract(
        self,
        image_path: str | Path,
        partition: int,
        paths: Sequence[str],
        dest: str | Path,
        *,
        allow_image_medium: bool = False,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """Extract ``paths`` (inside the partition) into the folder ``dest`` (see
        :func:`rescueui.core.files.extract`): the report lists each file with its SHA-256;
        a failed, cancelled or refused job raises its RescueError with the report as
        ``exc.report``."""
        from rescueui.core.files import extract

        return extract(
            image_path,
            partition,
            list(paths),
            dest,
            allow_image_medium=allow_image_medium,
            progress=self._pace(progress),
            cancel=cancel,
        )

    def default_capture_dir(self, disk: Any) -> Path:
        from datetime import datetime

        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{disk.name}-{stamp}"
        if self.demo is not None:
            return self.demo.build.root / "captures" / name
        return Path.cwd() / name

    # -- a new virtual machine ----------------------------------------------
    def default_vm_folder(self, image_path: str | Path) -> Path:
        """Where a new VM's files go unless the operator says otherwise: the ``vms`` folder
        on the medium that holds the image when it has one, else the folder holding the
        image. Nothing is created here (the demo: the ``vms`` folder of its own cache)."""
        if self.demo is not None:
            folder = self.demo.build.root / "vms"
            folder.mkdir(exist_ok=True)
            return folder
        holder = Path(os.path.abspath(image_path)).parent
        vms = _mount_point(holder) / "vms"
        if vms.is_dir() and not vms.is_symlink():
            return vms
        return holder

    def default_vm_name(self, image_path: str | Path, folder: str | Path | None = None) -> str:
        """The name the core gives a VM made of this image when none is asked for (with a
        number when ``folder`` already holds a VM of that name)."""
        from rescueui.core.vm.job import unused_name
        from rescueui.core.vm.machine import default_name

        name = default_name(str(image_path))
        return unused_name(name, Path(folder)) if folder is not None else name

    def vm_request(
        self,
        folder: str,
        *,
        name: str | None = None,
        disk_format: str = "qcow2",
        runs_on: Any = None,
        vcpus: str = "",
        memory: str = "",
        disk_size: str = "",
        firmware: str | None = None,
        definition: str | None = None,
    ) -> VmRequest:
        """The operator's choice of a new VM, checked now: a name the core can use, a known
        disk format and a folder that exists and can be written to (nothing is created).
        ``runs_on``: the profile of the host that will run the VM (None: this machine).
        ``vcpus`` and ``memory`` as typed (empty: the source's, fitted to the host; a number
        of memory without a unit is MiB); ``disk_size`` as typed (empty: the source disk's;
        a plain number is bytes); ``firmware`` "bios"/"uefi" (None: what the image
        boots by); ``definition`` "vmx"/"ovf" besides the libvirt one (None: only that).
        Raises RescueError saying what is wrong."""
        from rescueui.core.vm.job import vm_folder  # the core's rule for the VM's folder
        from rescueui.core.vm.machine import VmRequest

        if not folder.strip():
            raise RescueError(
                "No folder given for the virtual machine's files.",
                hint="Type the folder the VM's disk and definition go into.",
            )
        vcpu_count = None
        if vcpus.strip():
            if not (vcpus.strip().isascii() and vcpus.strip().isdigit()) or len(vcpus) > 9:
                raise RescueError(
                    f"vCPUs {vcpus.strip()[:20]!r}: not a number.",
                    hint="Type a whole number of vCPUs, or leave the field empty for the "
                    "source's, fitted to the host.",
                )
            vcpu_count = int(vcpus)
        memory_bytes = None
        if memory.strip():
            memory_bytes = parse_size(memory, plain=MiB)
            if memory_bytes is None:
                raise RescueError(
                    f"Memory {memory.strip()[:20]!r}: cannot read this size.",
                    hint="Type a number with M or G (e.g. 4G or 512M), or leave the field "
                    "empty for the source's, fitted to the host.",
                )
        disk_bytes = None
        if disk_size.strip():
            disk_bytes = parse_size(disk_size)
            if disk_bytes is None:
                raise RescueError(
                    f"Disk size {disk_size.strip()[:20]!r}: cannot read this size.",
                    hint="Type a number with G or T (e.g. 100G), or leave the field empty for "
                    "the source disk's size.",
                )
        request = VmRequest(
            folder=folder,
            name=name or None,
            disk_format=disk_format,
            definitions=("libvirt", definition) if definition else ("libvirt",),
            vcpus=vcpu_count,
            memory_bytes=memory_bytes,
            disk_bytes=disk_bytes,
            firmware=firmware,
            runs_on=runs_on,
        )
        request.check()
        where = Path(os.path.abspath(folder))
        if any(m == where or m in where.parents for m in self.media_mounts):
            raise RescueError(
                f"The folder {where} cannot be written: its medium was mounted read-only to "
                "look for images.",
                hint="Choose a folder on a medium this machine can write to.",
            )
        request.folder = str(vm_folder(folder))
        return request

    def preflight_vm(
        self, image_dir: str | Path, request: VmRequest, *, adapt: AdaptOptions | None = None
    ) -> tuple[VmMachine, list[Any]]:
        """The pre-flight of a restore into a new VM (nothing is written): the VM as planned
        and the findings. ``adapt``: the fix-ups the operator keeps (None: all needed; the
        machine they are for is the VM itself; none in the demo, see :meth:`_vm_adapt`)."""
        from rescueui.core.vm.job import preflight_vm

        return preflight_vm(image_dir, request, adapt=self._vm_adapt(adapt))

    def restore_to_vm(
        self,
        image_dir: str | Path,
        request: VmRequest,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        accepted_codes: Iterable[str] = (),
        acknowledged_by: str = TUI_OPERATOR,
        adapt: AdaptOptions | None = None,
    ) -> Any:
        """Plan and run a restore into a new VM's disk, and write its definition. Like
        :meth:`restore`: the pre-flight runs again, a stop or a warning the operator did not
        acknowledge refuses it, and a failed, cancelled or refused job raises its
        ``RescueError`` with the written report as ``exc.report``. Nothing existing is
        overwritten: the VM's files are made new (and removed again if the job fails)."""
        from rescueui.core.restore import restore
        from rescueui.core.vm.job import plan_vm_restore

        plan = plan_vm_restore(
            image_dir,
            request,
            adapt=self._vm_adapt(adapt),
            accepted_codes=tuple(accepted_codes),
            acknowledged_by=acknowledged_by,
        )
        if self.demo is not None:  # the demo's own writer lock (see restore)
            plan.lock_path = str(self.demo.build.root / "writer.lock")
        return restore(plan, progress=self._pace(progress), cancel=cancel)

    def _vm_adapt(self, adapt: AdaptOptions | None) -> AdaptOptions | None:
        """The fix-ups for a new VM: the operator's choice; none in the demo (its sample
        disk holds no system that boots; the core would otherwise plan all that are needed)."""
        if self.demo is None:
            return adapt
        from rescueui.core.adapt import AdaptOptions

        return AdaptOptions(selection=set(), enabled=False)


def _mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding ``path`` (the nearest existing folder up)."""
    p = path
    while not os.path.ismount(p) and p.parent != p:
        p = p.parent
    return p


def _view_error(view: OpenView, path: str, exc: OSError) -> RescueError:
    """A read error inside an open partition, in words: the image's damage when the view
    knows of some, else the system's reason."""
    damage = view.problem()
    if damage:
        return RescueError(
            f"{path} could not be read from the image: {damage}",
            hint="The image is damaged; use another copy of it.",
        )
    return RescueError(f"{path} could not be read from the image: {exc.strerror or exc}.")


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def open_session(demo: bool) -> Session:
    """The session a front end starts with. What a killed earlier run left of its partition
    views (mounts, loop devices, FUSE files) is released first."""
    sweep_stale_views()
    if demo:
        return Session(DemoEnvironment.create())
    return Session()


def sweep_stale_views() -> list[str]:
    """Release what killed rescueui processes left of their browsing views (root only: no
    one else could have made them); what was released, for a log line."""
    if os.geteuid() != 0:
        return []
    from rescueui.core.images.view import sweep_stale

    try:
        return sweep_stale()
    except (OSError, RescueError):
        return []


__all__ = [
    "Candidate",
    "CheckLine",
    "ImageError",
    "ImageSummary",
    "OpenView",
    "Session",
    "StreamSummary",
    "find_images",
    "image_like_name",
    "machine_words",
    "open_session",
    "summarize_image",
    "sweep_stale_views",
]
