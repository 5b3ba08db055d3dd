"""A read-only view of one partition of any image: its filesystem mounted, nothing written.

::

    with partition_view("/media/usb/web01-img", 2) as view:      # ImageError if it cannot
        for entry in list_folder(view.root, "/etc"): ...           # rescueui.core.files

How (this kernel has FUSE and loop devices, no NBD, ublk or device-mapper):

1. a helper process (``python -m rescueui.core.images.view``) opens the image and serves the
   partition's bytes as one read-only FUSE file (:mod:`.fusefile`), reading them through the
   image's own reader: our format chunk by chunk through the one chunk decoder, each chunk's
   BLAKE3 checked before a byte of it is served (chunks the filesystem does not use read as
   zeros); VM disks through QEMU's block layer; raw images from the file.
   Kinds that can only be read in order (compressed raw images, Clonezilla folders: the image
   is ``sequential``) have no helper: the partition is *staged* instead (:mod:`.staging`),
   read once from its start to its end through the seam's decoder with every check the kind
   carries (partclone's block checksums, a bmap's, the compression's, the stream's length;
   a compressed raw image is read on to its end, where its checksum is) and written into a
   sparse file holding only its data. That takes a while (``progress(done, total)``); the
   staging folder's free space is checked first (the view's folder, or ``staging_dir``);
2. a read-only loop device goes over that file (the FUSE file or the staging file);
3. the filesystem is mounted from it by the one mount rule (:mod:`rescueui.core.fsmount`:
   ext4 ``ro,noload``, xfs ``ro,norecovery``, btrfs ``ro,rescue=nologreplay``, FAT/NTFS/exFAT
   through their FUSE drivers where the kernel lacks them).

Everything lives under ``/run/rescueui/view/<pid>-<n>/`` (a staging file too, unless
``staging_dir`` puts it elsewhere: then the folder notes where) and is released when the
block ends, also on an error. A process that was killed leaves it behind: :func:`sweep_stale`
(called before every new view) unmounts, detaches and removes what a dead process left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from rescueui.core import chunkcodec, fsmount
from rescueui.core.errors import CorruptImageError, ImageError, RescueError
from rescueui.core.images import staging
from rescueui.core.images.staging import StageProgress

VIEW_ROOT = Path("/run/rescueui/view")
STAGING_NOTE = "staging"  # in a view's folder: the path of its staging file kept elsewhere
STAGED_PREFIX = "rescueui-view-"  # a staging file elsewhere: rescueui-view-<pid>-<n>.img
READY_TIMEOUT = 60.0
CACHE_CHUNKS = 16  # decoded chunks kept (a 4 MiB chunk is read in many smaller requests)
DECODE_AHEAD = 2  # chunks decoded ahead (by as many threads) while a partition is read in order


@dataclass
class PartitionView:
    """A mounted, read-only partition of an image."""

    image: str
    partition: int
    fs_type: str
    size_bytes: int
    device: str  # the read-only loop device
    root: Path  # where its filesystem is mounted
    how: str  # "kernel ext4 ro,noload", "FUSE fusefat"
    log: Path | None = None  # what the serving helper could not read (the image's damage)

    def problem(self) -> str | None:
        """The first part of the image that could not be served (a damaged chunk), if any:
        a read error inside the view comes from there."""
        return _first_problem(self.log)


def _first_problem(log: Path | None) -> str | None:
    if log is None:
        return None
    try:
        with open(log, "rb") as f:
            first = f.readline(2000).decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    return first.removeprefix("rescueui view: ") or None


# --------------------------------------------------------------------------- reading


class PartitionReader:
    """Random reads of one partition's bytes, from any image kind that allows them."""

    def __init__(self, image: Any, partition: int) -> None:
        self.image = image
        stream = _partition_stream(image, partition)
        self.stream = stream
        self.size = int(stream.size_bytes)
        self.fs_type = str(getattr(stream, "fs_type", "") or "")
        self._ours = hasattr(image, "read_chunk")
        # reads within one piece are answered without a copy (our format: a chunk)
        self.piece = int(getattr(stream, "chunk_size", 0) or 0) if self._ours else 1 << 62
        if not self._ours and getattr(image, "sequential", False):
            raise ImageError(  # served_partition stages these first (.staging)
                f"The image {image.path} ({image.describe()}) can only be read from its start "
                "to its end, not at any place: it is read through a staging file.",
            )
        self._cache: OrderedDict[int, memoryview] = OrderedDict()
        self._pending: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._last = -2  # the chunk asked for last: the next one means reading in order
        self._ahead: list[int] = []  # chunks to decode ahead, for the decode-ahead threads
        self._wake = threading.Condition(self._lock)
        self._started = False
        self._closed = False

    def close(self) -> None:
        """End the decode-ahead threads (a reader used inside a longer-lived process)."""
        with self._lock:
            self._closed = True
            self._cache.clear()
            self._wake.notify_all()

    def read_at(self, offset: int, length: int) -> bytes | memoryview:
        """``length`` bytes from ``offset`` (fewer only at the end of the partition)."""
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        if not self._ours:
            buf = bytearray(length)
            self.image.read_into(int(self.stream.start_bytes) + offset, memoryview(buf))
            return buf
        piece = int(self.stream.chunk_size)
        first = offset // piece
        start = offset - first * piece
        data = self._chunk(first)
        if start + length <= len(data):  # the usual case: one chunk, no copy
            return data[start : start + length]
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            index = pos // piece
            data = self._chunk(index)
            at = pos - index * piece
            take = min(end - pos, len(data) - at)
            if take <= 0:
                break
            out += data[at : at + take]
            pos += take
        return out

    def _chunk(self, index: int) -> memoryview:
        """Chunk ``index`` decoded and checked: from the cache, by this thread, or by the
        thread already decoding it. Read in order (this chunk follows the one asked for
        before), the next :data:`DECODE_AHEAD` chunks are decoded meanwhile by threads of
        their own: the kernel asks for one chunk at a time (its read-ahead is one chunk), so
        the serving threads alone would decode one chunk at a time."""
        while True:
            with self._lock:
                if index != self._last:
                    if index == self._last + 1 and self._ours:
                        self._decode_ahead(index)
                    self._last = index
                hit = self._cache.get(index)
                if hit is not None:
                    self._cache.move_to_end(index)
                    return hit
                waiting = self._pending.get(index)
                if waiting is None:
                    self._pending[index] = threading.Event()
                    break
            waiting.wait()
        try:
            data = self._decode(index)
            with self._lock:
                self._cache[index] = data
                while len(self._cache) > CACHE_CHUNKS:
                    self._cache.popitem(last=False)
        finally:
            with self._lock:
                self._pending.pop(index).set()
        return data

    def _decode_ahead(self, index: int) -> None:
        """Queue the chunks after ``index`` for the decode-ahead threads (lock held)."""
        if not self._started and not self._closed:
            self._started = True
            for _ in range(DECODE_AHEAD):
                threading.Thread(target=self._ahead_loop, daemon=True).start()
        last = -(-self.size // int(self.stream.chunk_size)) - 1
        self._ahead = [
            i
            for i in range(index + 1, min(index + DECODE_AHEAD, last) + 1)
            if i not in self._cache and i not in self._pending
        ]
        self._wake.notify_all()

    def _ahead_loop(self) -> None:
        """A decode-ahead thread: decodes (and checks) the queued chunks into the cache. A
        chunk that fails here is left out: the serving thread that asks for it decodes it
        again and answers the error."""
        while True:
            with self._lock:
                while not self._ahead and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                index = self._ahead.pop(0)
                if index in self._cache or index in self._pending:
                    continue
                done = self._pending[index] = threading.Event()
            data = None
            try:
                data = self._decode(index)
            except Exception:  # reported when the chunk is asked for (decoded again)
                data = None
            finally:
                with self._lock:
                    if data is not None:
                        self._cache[index] = data
                        while len(self._cache) > CACHE_CHUNKS:
                            self._cache.popitem(last=False)
                    self._pending.pop(index)
                    done.set()

    def _decode(self, index: int) -> memoryview:
        rec = self.image.chunk(self.stream, index)
        if rec.zero or rec.unused:  # zero data, or blocks no file uses: zeros
            return _zeros(rec.raw_length)
        place = self.image.chunk_place(self.stream, rec)
        buf = memoryview(bytearray(rec.raw_length))
        chunkcodec.decode_into(self.image.read_compressed(self.stream, rec), buf, place)
        if blake3.blake3(buf).hexdigest() != rec.blake3:
            raise CorruptImageError(
                f"{place.where()}: its BLAKE3 does not match the image's index; it is not shown.",
                hint="The image is damaged; use another copy of it.",
            )
        return buf


_ZEROS: dict[int, memoryview] = {}


def _zeros(length: int) -> memoryview:
    z = _ZEROS.get(length)
    if z is None:
        z = _ZEROS[length] = memoryview(bytes(length))
    return z


def _partition_stream(image: Any, partition: int) -> Any:
    for s in image.streams:
        if getattr(s, "partition_number", None) == partition and s.kind in ("partition",):
            return s
    have = ", ".join(
        str(s.partition_number) for s in image.streams if getattr(s, "partition_number", None)
    )
    raise ImageError(
        f"The image {image.path} has no partition {partition}"
        + (f" (it has {have})." if have else "."),
        hint="Choose one of its partitions.",
    )


# --------------------------------------------------------------------------- the view


_counter = 0
_counter_lock = threading.Lock()


def _new_dir() -> Path:
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    VIEW_ROOT.mkdir(parents=True, exist_ok=True, mode=0o700)
    d = VIEW_ROOT / f"{os.getpid()}-{n}"
    d.mkdir(mode=0o700)
    return d


@dataclass
class ServedPartition:
    """One partition of an image as a read-only block device (nothing mounted)."""

    image: str
    partition: int
    fs_type: str | None  # as the image records it; None: not recorded (probe the device)
    size_bytes: int
    device: str  # the read-only loop device
    log: Path  # what the serving helper could not read (the image's damage)

    def problem(self) -> str | None:
        """The first part of the image that could not be served (a damaged chunk), if any."""
        return _first_problem(self.log)


@contextlib.contextmanager
def served_partition(
    image_dir: str | Path,
    partition: int,
    *,
    staging_dir: str | Path | None = None,
    progress: StageProgress | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[ServedPartition]:
    """Partition ``partition`` of the image at ``image_dir`` as a read-only loop device for
    the block (steps 1 and 2 of the module doc): what reads it block by block, or mounts it
    (:func:`partition_view`). Every byte read from it was checked as the image's kind allows.
    :class:`RescueError` says what failed; nothing is left behind.

    An image read only in order is staged first (:mod:`.staging`): into the view's folder,
    or into ``staging_dir`` when given; ``progress(done, total)`` follows that reading and
    ``cancel`` stops it (CancelledError). Other kinds ignore the three."""
    from rescueui.core.blockdev import range_device
    from rescueui.core.images import open_image

    if os.geteuid() != 0:
        raise RescueError(
            "Reading an image partition as a device (to browse or copy it) needs root.",
            hint="Run rescueui as root (the live system does).",
        )
    sweep_stale()
    with contextlib.ExitStack() as stack:
        with open_image(image_dir) as image:  # checked here: a refusal comes before any mount
            staged = staging.needs_staging(image)
            if staged:
                stream = _partition_stream(image, partition)
                size, fs_type = int(stream.size_bytes), str(getattr(stream, "fs_type", "") or "")
            else:
                reader = PartitionReader(image, partition)
                size, fs_type = reader.size, reader.fs_type
            folder = _new_dir()
            stack.callback(_remove_dir, folder)
            log = folder / "helper.log"
            log.touch(mode=0o600)
            if staged:
                served = _stage(image, partition, folder, staging_dir, progress, cancel, stack)
        if not staged:
            served = folder / "partition.img"
            served.touch(mode=0o400)
            child = _serve(image_dir, partition, served, size, log)
            stack.callback(_stop, child, served)
            st = os.stat(served)
            _read_ahead_kb(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
        device = stack.enter_context(range_device(str(served), 0, size, read_only=True))
        if not staged:
            _direct_io(device)
        _read_ahead_kb(f"/sys/block/{Path(device).name}/queue")
        yield ServedPartition(str(image_dir), partition, fs_type or None, size, device, log)


def _stage(
    image: Any,
    partition: int,
    folder: Path,
    staging_dir: str | Path | None,
    progress: StageProgress | None,
    cancel: threading.Event | None,
    stack: contextlib.ExitStack,
) -> Path:
    """Stage the partition (:mod:`.staging`) into the view's folder or ``staging_dir``;
    the file is removed with the view (and by :func:`sweep_stale` after a crash)."""
    if staging_dir is None:
        target = folder / "partition.img"
    else:
        place = Path(staging_dir)
        if not place.is_dir():
            raise RescueError(
                f"The staging folder {place} does not exist or is not a folder.",
                hint="Choose an existing folder on a medium with enough free space.",
            )
        target = place.resolve() / f"{STAGED_PREFIX}{folder.name}.img"
        (folder / STAGING_NOTE).write_text(f"{target}\n")  # for sweep_stale, before it exists
        stack.callback(_unlink, target)
    need = staging.data_bytes(image, partition)
    staging.check_space(
        target.parent,
        need,
        f"Partition {partition} of {image.path}",
        chosen=staging_dir is not None,
    )
    staging.stage_partition(image, partition, target, progress=progress, cancel=cancel)
    os.chmod(target, 0o400)
    return target


@contextlib.contextmanager
def partition_view(
    image_dir: str | Path,
    partition: int,
    *,
    staging_dir: str | Path | None = None,
    progress: StageProgress | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[PartitionView]:
    """Partition ``partition`` of the image at ``image_dir`` mounted read-only for the block
    (see the module doc). :class:`RescueError` (ImageError, a mount error) says what failed;
    nothing is left behind. ``staging_dir``, ``progress``, ``cancel``: as for
    :func:`served_partition` (images read only in order)."""
    with contextlib.ExitStack() as stack:
        served = stack.enter_context(
            served_partition(
                image_dir, partition, staging_dir=staging_dir, progress=progress, cancel=cancel
            )
        )
        device, log = served.device, served.log
        fs_type = served.fs_type or _probe(device)
        root = fsmount.mount_dir("view")
        stack.callback(_rmdir, root)
        try:
            how = fsmount.mount(device, root, fs_type, read_only=True)
        except RescueError as exc:
            damage = _first_problem(log)
            if damage:
                raise CorruptImageError(
                    f"Partition {partition} of {image_dir} cannot be mounted: {damage}",
                    hint="The image is damaged; use another copy of it.",
                ) from exc
            raise
        stack.callback(fsmount.unmount, root)
        yield PartitionView(
            str(image_dir), partition, fs_type, served.size_bytes, device, root, how, log
        )


def _serve(
    image_dir: str | Path, partition: int, served: Path, size: int, log: Path
) -> subprocess.Popen[bytes]:
    """Mount the FUSE file and start the helper that answers it; returns once the kernel
    and the helper have agreed (the file has its size)."""
    from rescueui.core.images import fusefile

    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    err = open(log, "wb")  # the helper's stderr: a file, where a pipe could fill up
    try:
        fusefile.mount(str(served), fd)
        child = subprocess.Popen(
            [sys.executable, "-m", "rescueui.core.images.view", str(fd), os.fspath(image_dir),
             str(partition), str(served)],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )  # fmt: skip
    except BaseException:
        fusefile.unmount(str(served))
        raise
    finally:
        os.close(fd)
        err.close()
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if child.poll() is not None:
            fusefile.unmount(str(served))
            raise ImageError(
                f"The image {image_dir} could not be served for browsing: "
                + (_first_problem(log) or "the helper ended")[:400]
            )
        try:
            if os.stat(served).st_size == size:
                return child
        except OSError:
            pass
        if time.monotonic() > deadline:
            _stop(child, served)
            raise ImageError(f"The image {image_dir} did not answer within {READY_TIMEOUT:.0f} s.")
        time.sleep(0.05)


def _stop(child: subprocess.Popen[bytes], served: Path) -> None:
    from rescueui.core.images import fusefile

    fusefile.unmount(str(served))
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


READ_AHEAD_KB = 4096  # the kernel's default 128 KiB makes 128 KiB requests: 1 MiB ones are
# served several times faster (measured: about 0.9 against 2 GB/s from memory)


def _read_ahead_kb(sysdir: str) -> None:
    """Let the kernel read ahead further on the FUSE file and the loop device (best effort:
    only the speed depends on it)."""
    with contextlib.suppress(OSError):
        Path(sysdir, "read_ahead_kb").write_text(f"{READ_AHEAD_KB}\n")


LOOP_SET_DIRECT_IO = 0x4C08


def _direct_io(device: str) -> None:
    """Let the loop device read the FUSE file with direct I/O (best effort: only the speed
    depends on it): its reads go to the helper as they are, several at once (the helper
    grants FUSE_ASYNC_DIO), into the pages of whoever reads the device, instead of through
    the FUSE file's own page cache and one more copy."""
    import fcntl

    with contextlib.suppress(OSError):
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, LOOP_SET_DIRECT_IO, 1)
        finally:
            os.close(fd)


def _probe(device: str) -> str:
    from rescueui.core.tools import find_tool

    blkid = find_tool("blkid") or "blkid"
    proc = subprocess.run(
        [blkid, "-p", "-o", "value", "-s", "TYPE", device],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    fs = proc.stdout.strip()
    if not fs:
        raise ImageError(
            "The partition holds no filesystem that can be recognised; there is nothing to browse."
        )
    return fs


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _remove_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


# --------------------------------------------------------------------------- after a crash


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mounts() -> list[tuple[str, str]]:
    out = []
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((parts[0], parts[1].replace("\\040", " ")))
    return out


def _staged_elsewhere(folder: Path) -> Path | None:
    """The staging file a view kept outside its folder (its note names it; only a file
    named after the folder is believed)."""
    try:
        text = (folder / STAGING_NOTE).read_text(errors="replace").strip()
    except OSError:
        return None
    path = Path(text)
    if not path.is_absolute() or path.name != f"{STAGED_PREFIX}{folder.name}.img":
        return None
    return path


def sweep_stale() -> list[str]:
    """Release what killed rescueui processes left of their views: filesystems mounted from
    a view's loop device, the loop devices, the FUSE files, staging files (in the view's
    folder or the staging folder its note names) and the folders. Returns what
    was released (for a log line)."""
    from rescueui.core import blockdev
    from rescueui.core.images import fusefile
    from rescueui.core.tools import find_tool

    done: list[str] = []
    if not VIEW_ROOT.is_dir():
        return done
    losetup = find_tool("losetup") or "losetup"
    for folder in sorted(VIEW_ROOT.iterdir()):
        try:
            pid = int(folder.name.split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        served = folder / "partition.img"
        elsewhere = _staged_elsewhere(folder)
        for backing in [served] + ([elsewhere] if elsewhere else []):
            loops = subprocess.run(
                [losetup, "-j", str(backing)], capture_output=True, text=True, check=False
            ).stdout
            for line in loops.splitlines():
                dev = line.split(":", 1)[0].strip()
                if not dev.startswith("/dev/loop"):
                    continue
                for source, where in _mounts():
                    if source == dev:
                        fsmount.unmount(where)
                        _rmdir(Path(where))
                        done.append(f"unmounted {where}")
                if blockdev.detach_loop(dev):
                    done.append(f"detached {dev}")
        if fusefile.unmount(str(served)):
            done.append(f"unmounted {served}")
        if elsewhere is not None and elsewhere.exists():
            _unlink(elsewhere)
            done.append(f"removed {elsewhere}")
        _remove_dir(folder)
    return done


# --------------------------------------------------------------------------- the helper


def _helper(argv: list[str]) -> int:
    """``python -m rescueui.core.images.view FD IMAGE PARTITION FILE``: serve the partition
    on the FUSE connection FD until FILE is unmounted."""
    from rescueui.core.images import fusefile, open_image

    fd, image_dir, partition, _served = int(argv[0]), argv[1], int(argv[2]), argv[3]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends it by unmounting
    try:
        with open_image(image_dir) as image:
            reader = PartitionReader(image, partition)
            fusefile.serve(fd, reader.size, reader.read_at)
    except RescueError as exc:
        print(f"rescueui view: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_helper(sys.argv[1:]))
