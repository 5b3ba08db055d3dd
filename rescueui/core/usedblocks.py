"""Which bytes of a filesystem are in use: the map a capture reads instead of every byte.

The map comes from partclone's domain mode (``partclone.<fs> -D``: a ddrescue mapfile of
used and unused ranges), never from our own on-disk parsers. Whatever cannot be mapped
safely is captured whole (:class:`AllBlocks`, with the reason in the operator's words).

A filesystem that was not cleanly unmounted is mapped only where the map is still safe:

* ext2/3/4 not clean (a journal to replay, or a crash without one): partclone refuses it
  (stale free-block counts, even with ``-I``), so the map is taken from a metadata copy
  (``e2image -r``) after ``e2fsck -fy`` replayed and repaired it there; the source is
  never written.
* xfs with a dirty log, btrfs with a log tree: their on-disk allocation state misses what
  the log still has to replay (measured: a restore from such a map loses file data), so
  they are captured whole.
* NTFS marked dirty: partclone refuses; the map is read with ``-I`` (``clean=False``).
* FAT with its dirty bit set: partclone.fat refuses even with ``-I``: captured whole.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from rescueui.core import blockdev
from rescueui.core.errors import CancelledError, CaptureError, DiskError
from rescueui.core.tools import find_tool

MiB = 1024 * 1024

TOOLS = {
    "ext2": "partclone.ext2",
    "ext3": "partclone.ext3",
    "ext4": "partclone.ext4",
    "xfs": "partclone.xfs",
    "btrfs": "partclone.btrfs",
    "vfat": "partclone.fat",
    "exfat": "partclone.exfat",
    "ntfs": "partclone.ntfs",
}
"""The partclone program for each blkid TYPE it can map."""

WHOLE = {
    "crypto_LUKS": "a LUKS container: captured whole, never decrypted",
    "LVM2_member": "an LVM physical volume: captured whole",
}

RECHECK = frozenset({"ext2", "ext3", "ext4", "ntfs"})
"""Where partclone's ``-I`` (skip the filesystem check) reads a filesystem it refused as
not checked. Not vfat: partclone.fat 0.3.23 checks the dirty bit again, ignoring ``-I``."""
_CHECK_REFUSAL = re.compile(
    r"not cleanly unmounted|file system with errors|without being checked|scheduled for a check"
)

MAX_RUNS = 1 << 20
"""Above this many runs, runs closer than a growing gap are joined (more is read, never less)."""
MAX_MAP_FILE = 1 << 30
MAX_LINE = 256
NTFS_TAIL = 2 * MiB
"""NTFS keeps its backup boot sector after its last cluster, outside partclone's map; the
largest NTFS cluster is 2 MiB, so this much after the map's end is always captured."""

_NUM = r"(0x[0-9A-Fa-f]{1,16}|0|[1-9][0-9]{0,19})"
_BLOCK_LINE = re.compile(rf"{_NUM}\s+{_NUM}\s+([?*/\-+])")
_STATUS_LINE = re.compile(rf"{_NUM}\s+([?*/\-FG+])(\s+[0-9]+)?")
_SOURCE_PREFIX = re.compile(r"^[\w.-]+\.c(, \d+)?: ")
_BOILERPLATE = ("partclone v", "starting to map", "partclone fail", "error exit", "output file")


@dataclass(frozen=True)
class UsedMap:
    """The used byte ranges of one filesystem, from the partition's first byte."""

    fs_type: str
    tool: str
    size: int
    runs: tuple[tuple[int, int], ...]
    clean: bool
    note: str = ""

    def __post_init__(self) -> None:
        end = 0
        for i, (off, length) in enumerate(self.runs):
            if length <= 0 or off < end or (i and off == end) or off + length > self.size:
                raise ValueError(f"run {i} ({off}, {length}) is not sorted, merged and in range")
            end = off + length

    @cached_property
    def used_bytes(self) -> int:
        return sum(length for _, length in self.runs)

    def used_in(self, start: int, end: int) -> list[tuple[int, int]]:
        """The used runs clipped to ``[start, end)`` (O(log n + k))."""
        runs = self.runs
        i = max(bisect.bisect_right(runs, start, key=lambda r: r[0]) - 1, 0)
        out: list[tuple[int, int]] = []
        while i < len(runs) and runs[i][0] < end:
            s = max(runs[i][0], start)
            e = min(runs[i][0] + runs[i][1], end)
            if e > s:
                out.append((s, e - s))
            i += 1
        return out


@dataclass(frozen=True)
class AllBlocks:
    """No used-block map: every byte is captured, for ``reason`` (operator's words).
    ``unclean``: because the filesystem was not cleanly unmounted (the caller warns)."""

    reason: str
    unclean: bool = False


class MapError(ValueError):
    """A mapfile that is not a ddrescue mapfile as partclone writes it."""


class _Failed(Exception):
    """A step failed; the message is the reason shown with :class:`AllBlocks`."""


class _Refused(_Failed):
    """partclone exited with an error; ``words`` are its own."""

    def __init__(self, name: str, words: str) -> None:
        super().__init__(f"{name} could not read the filesystem: {words}")
        self.words = words


def used_map_tool(fs_type: str | None) -> str | None:
    """The partclone program that maps a blkid TYPE, else None."""
    return TOOLS.get(fs_type or "")


def read_used_map(
    device: str,
    fs_type: str | None,
    size: int,
    *,
    cancel: threading.Event | None = None,
    timeout: float = 600,
    scratch_dir: str | None = None,
) -> UsedMap | AllBlocks:
    """The used-block map of the filesystem on ``device`` (byte 0 = the partition's first
    byte, ``size`` bytes), or :class:`AllBlocks` with the reason it cannot be mapped.

    Raises :class:`CancelledError` when ``cancel`` is set (the running tool is killed).
    ``scratch_dir`` holds the map file and, for an unclean ext filesystem, its metadata
    copy (sparse, about the size of its metadata); default: the system temp directory.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, not {size}")
    if fs_type is None:
        return AllBlocks("no filesystem recognised")
    if fs_type in WHOLE:
        return AllBlocks(WHOLE[fs_type])
    name = used_map_tool(fs_type)
    if name is None:
        return AllBlocks(f"no used-block map for '{fs_type}' filesystems")
    tool = find_tool(name)
    if tool is None:
        return AllBlocks(f"{name} is not installed")
    runner = _Runner(cancel, timeout)
    with tempfile.TemporaryDirectory(prefix="rescueui-usedmap-", dir=scratch_dir) as tmp:
        try:
            if fs_type in ("ext2", "ext3", "ext4"):
                dirty = _ext_dirty(runner, device, fs_type)
                if dirty:
                    return _ext_replayed(runner, Path(tmp), tool, device, fs_type, size, dirty)
            elif fs_type in _UNREPLAYED:
                log, unreplayed = _UNREPLAYED[fs_type]
                if unreplayed(runner, device):
                    return AllBlocks(
                        f"the {log} was not replayed (not cleanly unmounted); a map of the "
                        "blocks before the replay would miss data: captured whole",
                        unclean=True,
                    )
            return _partclone_map(runner, Path(tmp), tool, name, device, fs_type, size)
        except _Failed as exc:
            return AllBlocks(str(exc))


def _partclone_map(
    runner: _Runner, tmp: Path, tool: str, name: str, device: str, fs_type: str, size: int
) -> UsedMap | AllBlocks:
    """partclone's map; a filesystem it refuses as not checked is read again with ``-I``."""
    try:
        runs = _partclone_runs(runner, tmp, tool, name, device, fs_type, size, ignore_check=False)
        return UsedMap(fs_type, name, size, runs, clean=True)
    except _Refused as first:
        if fs_type not in RECHECK or not _CHECK_REFUSAL.search(first.words):
            return AllBlocks(str(first), unclean=bool(_CHECK_REFUSAL.search(first.words)))
        try:
            runs = _partclone_runs(
                runner, tmp, tool, name, device, fs_type, size, ignore_check=True
            )
        except _Failed:
            return AllBlocks(str(first))
        # a mount count past the check interval is a reminder, not damage
        clean = "without being checked" in first.words
        return UsedMap(
            fs_type, name, size, runs, clean=clean, note=f"{name} reports: {first.words}"
        )


def _partclone_runs(
    runner: _Runner,
    tmp: Path,
    tool: str,
    name: str,
    device: str,
    fs_type: str,
    size: int,
    *,
    ignore_check: bool,
) -> tuple[tuple[int, int], ...]:
    """Run ``partclone -D`` and parse its map; :class:`_Refused` if partclone fails,
    :class:`_Failed` if its map is garbage or it did not finish."""
    mapfile = tmp / "used.map"
    mapfile.unlink(missing_ok=True)
    # -f 0: no progress pause (partclone waits out its refresh interval, 2 s, at the end)
    cmd = [tool, "-D", "-q", "-f", "0", "-s", device, "-o", str(mapfile), "-L", str(tmp / "log")]
    if ignore_check:
        cmd.append("-I")
    rc, err = runner.run(cmd, tmp, name)
    if rc != 0 or not mapfile.is_file():
        raise _Refused(name, _partclone_reason(err) or f"exit status {rc}")
    try:
        runs, extent = parse_map(mapfile, size)
    except MapError as exc:
        raise _Failed(f"{name} wrote a map that cannot be read: {exc}") from exc
    if fs_type == "ntfs" and extent < size:
        runs = _union(runs, [(extent, min(size, extent + NTFS_TAIL) - extent)])
    return runs


def _partclone_reason(err: str) -> str:
    """partclone's own words from its stderr: its last two lines that are not boilerplate."""
    lines = []
    for line in err.splitlines():
        line = line.strip()
        if "Please wait..." in line:
            line = line.split("Please wait...", 1)[1].strip()
        if not line or line.lower().startswith(_BOILERPLATE):
            continue
        lines.append(_SOURCE_PREFIX.sub("", line))
    return " ".join(lines[-2:])[:300]


# --------------------------------------------------------------------------- unclean fs


def _ext_dirty(runner: _Runner, device: str, fs_type: str) -> str:
    """Why an ext filesystem is not clean (``dumpe2fs -h``), or "" if it is clean;
    :class:`_Failed` if that cannot be told."""
    dumpe2fs = _checker("dumpe2fs", "e2fsprogs")
    rc, out, err = runner.output([dumpe2fs, "-h", device], "dumpe2fs")
    if rc != 0:
        raise _Failed(f"dumpe2fs could not read the filesystem: {_last_line(err, 'dumpe2fs')}")
    features = state = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key == "Filesystem features":
            features = value
        elif key == "Filesystem state":
            state = value.strip()
    if "needs_recovery" in features.split():
        return f"the {fs_type} journal needs recovery"
    if not state:
        raise _Failed("dumpe2fs did not say whether the filesystem is clean")
    if state != "clean":
        return f"the {fs_type} filesystem is marked '{state}'"
    return ""


def _ext_replayed(
    runner: _Runner, tmp: Path, tool: str, device: str, fs_type: str, size: int, dirty: str
) -> UsedMap | AllBlocks:
    """The map of an unclean ext filesystem after ``e2fsck`` replayed and repaired a metadata
    copy of it: the blocks the filesystem uses once its journal is replayed. (partclone
    refuses the device itself: its free-block counts are stale until the replay.)"""
    name = used_map_tool(fs_type) or "partclone"
    e2image, e2fsck = find_tool("e2image"), find_tool("e2fsck")
    if e2image is None or e2fsck is None:
        return AllBlocks(f"{dirty}, and e2image/e2fsck (e2fsprogs) are not installed", unclean=True)
    meta = tmp / "metadata.img"
    rc, err = runner.run([e2image, "-r", device, str(meta)], tmp, "e2image")
    if rc != 0:
        return AllBlocks(
            f"{dirty}; e2image could not copy its metadata: {_last_line(err, 'e2image')}",
            unclean=True,
        )
    # 0-2: clean or repaired; 4: errors left; 8 and above: e2fsck itself failed
    rc, err = runner.run([e2fsck, "-fy", str(meta)], tmp, "e2fsck")
    if rc not in (0, 1, 2):
        return AllBlocks(
            f"{dirty}; e2fsck could not repair a copy of it: {_last_line(err, 'e2fsck')}",
            unclean=True,
        )
    try:
        after = _partclone_runs(
            runner, tmp, tool, name, str(meta), fs_type, size, ignore_check=True
        )
    except _Refused as exc:
        return AllBlocks(
            f"{dirty}; {name} could not read it after e2fsck: {exc.words}", unclean=True
        )
    return UsedMap(
        fs_type,
        f"e2image+e2fsck+{name}",
        size,
        after,
        clean=False,
        note=f"{dirty}; the map is of the filesystem after e2fsck on a metadata copy",
    )


def _xfs_log_dirty(runner: _Runner, device: str) -> bool:
    """True if ``xfs_logprint`` says the log is not clean; :class:`_Failed` if it cannot.

    ``xfs_logprint`` does not check the superblock: on bytes that are no xfs it can
    report a "totally zeroed log ... <CLEAN>". ``xfs_db`` checks it first."""
    xfs_db = _checker("xfs_db", "xfsprogs")
    rc, _out, err = runner.output(
        [xfs_db, "-r", "-c", "sb 0", "-c", "print magicnum", device], "xfs_db"
    )
    if rc != 0:
        raise _Failed(f"xfs_db could not read the filesystem: {_last_line(err, 'xfs_db')}")
    logprint = _checker("xfs_logprint", "xfsprogs")
    state = runner.first_match([logprint, "-t", device], re.compile(r"state:\s*<(\w+)>"))
    if state is None:
        raise _Failed("xfs_logprint could not tell whether the xfs log is clean")
    return state != "CLEAN"


def _btrfs_log_root(runner: _Runner, device: str) -> bool:
    """True if the btrfs superblock points to a log tree (fsync'd data not yet committed);
    :class:`_Failed` if that cannot be told."""
    btrfs = _checker("btrfs", "btrfs-progs")
    rc, out, err = runner.output([btrfs, "inspect-internal", "dump-super", device], "btrfs")
    m = re.search(r"^log_root\s+(\d+)\s*$", out, re.MULTILINE)
    if rc != 0 or m is None:
        raise _Failed(f"btrfs could not read the superblock: {_last_line(err)}")
    return int(m.group(1)) != 0


def _checker(name: str, package: str) -> str:
    """A program that tells whether a filesystem is clean; without it nothing is mapped."""
    path = find_tool(name)
    if path is None:
        raise _Failed(
            f"{name} ({package}) is not installed, so it is unknown whether the filesystem is clean"
        )
    return path


_UNREPLAYED = {"xfs": ("xfs log", _xfs_log_dirty), "btrfs": ("btrfs log tree", _btrfs_log_root)}
"""Filesystems whose map is wrong until their log is replayed: how to tell that it is not."""


def _last_line(text: str, name: str = "") -> str:
    """A tool's message: its line starting with ``name:`` (without it), else its last."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    own = [line[len(name) + 1 :].strip() for line in lines if name and line.startswith(name + ":")]
    return (own or lines or ["no message"])[-1][:300]


# --------------------------------------------------------------------------- mapfile


def parse_map(path: str | Path, size: int) -> tuple[tuple[tuple[int, int], ...], int]:
    """The used runs of a ddrescue mapfile clipped to ``[0, size)``, and the map's extent
    (the end of its last block line). :class:`MapError` on anything malformed."""
    if os.path.getsize(path) > MAX_MAP_FILE:
        raise MapError(f"larger than {MAX_MAP_FILE // MiB} MiB")
    runs: list[list[int]] = []
    gap = 0
    status_seen = False
    pos = 0
    with open(path, encoding="ascii", errors="replace") as f:
        for n, raw in enumerate(f, 1):
            if len(raw) > MAX_LINE:
                raise MapError(f"line {n} is too long")
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not status_seen:
                if not _STATUS_LINE.fullmatch(line):
                    raise MapError(f"line {n} is not a status line: {line[:60]!r}")
                status_seen = True
                continue
            m = _BLOCK_LINE.fullmatch(line)
            if m is None:
                raise MapError(f"line {n} is not a block line: {line[:60]!r}")
            off, length = int(m.group(1), 0), int(m.group(2), 0)
            if off < pos:
                raise MapError(f"line {n} overlaps or goes back (0x{off:X} < 0x{pos:X})")
            pos = off + length
            if m.group(3) != "+" or length == 0 or off >= size:
                continue
            end = min(pos, size)
            if runs and off - runs[-1][1] <= gap:
                runs[-1][1] = end
            else:
                runs.append([off, end])
            if len(runs) > MAX_RUNS:
                gap = max(2 * gap, 4096)
                runs = _join_close(runs, gap)
    if not status_seen:
        raise MapError("no status line")
    return tuple((s, e - s) for s, e in runs), pos


def _join_close(runs: list[list[int]], gap: int) -> list[list[int]]:
    out: list[list[int]] = []
    for s, e in runs:
        if out and s - out[-1][1] <= gap:
            out[-1][1] = e
        else:
            out.append([s, e])
    return out


def _union(*maps: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, merged union of run lists."""
    out: list[list[int]] = []
    for s, length in sorted(r for m in maps for r in m):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], s + length)
        else:
            out.append([s, s + length])
    return tuple((s, e - s) for s, e in out)


# --------------------------------------------------------------------------- processes


class _Runner:
    """Runs the tools of one map: LC_ALL=C, output captured, one deadline, cancellable."""

    def __init__(self, cancel: threading.Event | None, timeout: float) -> None:
        self.cancel = cancel
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.env = dict(os.environ, LC_ALL="C")

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("Reading the used-block map was cancelled.")

    def _wait(self, proc: subprocess.Popen[bytes], name: str) -> int:
        """Wait for ``proc``; kill it on cancel (:class:`CancelledError`) or at the deadline."""
        try:
            while True:
                self._check_cancel()
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise _Failed(f"{name} did not finish within {self.timeout:g} s")
                try:
                    return proc.wait(timeout=min(0.1, left))
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def run(self, cmd: list[str], tmp: Path, name: str) -> tuple[int, str]:
        """Exit status and the tail of stderr (stdout and stderr go to files in ``tmp``)."""
        self._check_cancel()
        out_path, err_path = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env
                )
            except OSError as exc:
                raise _Failed(f"{name} could not be started: {exc}") from exc
            rc = self._wait(proc, name)
        return rc, _tail(err_path) + "\n" + _tail(out_path)

    def output(self, cmd: list[str], name: str) -> tuple[int, str, str]:
        """Exit status, stdout and stderr of a quick tool (at most 60 s)."""
        self._check_cancel()
        left = max(0.1, min(60.0, self.deadline - time.monotonic()))
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                check=False,
                timeout=left,
                env=self.env,
            )
        except subprocess.TimeoutExpired as exc:
            raise _Failed(f"{name} did not finish within {self.timeout:g} s") from exc
        except OSError as exc:
            raise _Failed(f"{name} could not be started: {exc}") from exc
        return proc.returncode, proc.stdout[: 1 << 20], proc.stderr[-16384:]

    def first_match(self, cmd: list[str], pattern: re.Pattern[str]) -> str | None:
        """Group 1 of ``pattern`` in the first 64 KiB of the tool's stdout (it is then
        stopped), or None."""
        self._check_cancel()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=self.env,
            )
        except OSError:
            return None
        assert proc.stdout is not None
        data = b""
        deadline = min(self.deadline, time.monotonic() + 60)
        try:
            while len(data) < 65536:
                self._check_cancel()
                if time.monotonic() > deadline:
                    break
                ready, _, _ = select.select([proc.stdout], [], [], 0.1)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                data += chunk
                m = pattern.search(data.decode("ascii", "replace"))
                if m:
                    return m.group(1)
            return None
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()


def _tail(path: Path, limit: int = 16384) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - limit))
        return f.read().decode("utf-8", "replace")


# --------------------------------------------------------------------------- loop device


@contextlib.contextmanager
def partition_device(source: str, start: int, size: int) -> Iterator[str]:
    """A read-only loop device over bytes ``[start, start + size)`` of ``source`` (a block
    device or a file), detached on exit (:func:`blockdev.range_device`).
    :class:`CaptureError` if it cannot be attached."""
    with contextlib.ExitStack() as stack:
        try:
            dev = stack.enter_context(blockdev.range_device(source, start, size, read_only=True))
        except DiskError as exc:
            raise CaptureError(exc.message, hint=exc.hint) from exc
        yield dev
