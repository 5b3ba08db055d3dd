"""Files inside an image: list a folder, extract files and folders with all they carry.

::

    with partition_view(image, 2) as view:                     # rescueui.core.images.view
        entries = list_folder(view.root, "/etc")
    report = extract(image, 2, ["/etc/nginx", "/srv/db.dump"], "/media/usb/out",
                     progress=callback, cancel=event)

A path inside the image is resolved inside the partition's root (links followed inside it,
``..`` never above it); the last component of a path to extract is taken as it is (a link
is extracted as a link). What is extracted keeps its mode, owner and group (numbers: the
image's users are not this machine's), times, extended attributes (so ACLs and
capabilities), symbolic links, hard links among the extracted files, device nodes and FIFOs
(sockets are skipped), and holes of sparse files. Each regular file's SHA-256 is computed
from the bytes written and listed in the report. Nothing existing at the destination is
overwritten; the destination may not be on the medium that holds the image unless the
operator chose it explicitly.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from rescueui.core.adapt.rootview import RootView
from rescueui.core.errors import CancelledError, CorruptImageError, RescueError
from rescueui.core.progress import ProgressCallback, ProgressMeter
from rescueui.core.report import JobReport
from rescueui.core.units import MiB, human_size

BLOCK = 4 * MiB
MAX_LISTED = 1_000_000  # entries of one folder listed at most


@dataclass
class FileEntry:
    """One entry of a folder inside an image."""

    name: str
    kind: str  # "file" "folder" "link" "device" "fifo" "socket"
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    link_target: str | None = None
    hard_links: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "socket"


def inside(root: Path, path: str) -> Path:
    """The host path of ``path`` in the partition mounted at ``root``: its folders resolved
    inside the root, its last component as it is. :class:`RescueError` names what is not
    there."""
    pure = PurePosixPath("/", path)
    parent = RootView(root).resolve(str(pure.parent))
    if parent is None or not parent.is_dir():
        raise RescueError(f"{pure.parent} is not a folder in the image.")
    if pure.name in ("", ".", ".."):
        return parent
    host = parent / pure.name
    if not os.path.lexists(host):
        raise RescueError(f"{pure} is not in the image.", hint="List the folder to see its names.")
    return host


def list_folder(root: Path, path: str = "/") -> list[FileEntry]:
    """The entries of the folder ``path`` (links to folders followed inside the root),
    sorted by name."""
    folder = RootView(root).resolve(path)
    if folder is None or not folder.is_dir():
        raise RescueError(f"{path} is not a folder in the image.")
    out: list[FileEntry] = []
    with os.scandir(folder) as it:
        for i, e in enumerate(it):
            if i >= MAX_LISTED:
                break
            st = e.stat(follow_symlinks=False)
            target = None
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(e.path)
                except OSError:
                    target = "?"
            out.append(
                FileEntry(
                    e.name, _kind(st.st_mode), st.st_size, stat.S_IMODE(st.st_mode),
                    st.st_uid, st.st_gid, st.st_mtime_ns, target, st.st_nlink,
                )
            )  # fmt: skip
    out.sort(key=lambda f: f.name)
    return out


# --------------------------------------------------------------------------- extract


@dataclass
class Extracted:
    path: str  # inside the image
    kind: str
    size: int = 0
    sha256: str | None = None
    note: str = ""


@dataclass
class _Walk:
    items: list[tuple[Path, str]] = field(default_factory=list)  # (host path, image path)
    bytes_total: int = 0


def _walk(root: Path, paths: Iterable[str]) -> _Walk:
    w = _Walk()
    for p in paths:
        host = inside(root, p)
        image_path = str(PurePosixPath("/", p))
        w.items.append((host, image_path))
        st = os.lstat(host)
        if stat.S_ISDIR(st.st_mode):
            for d, dirs, files in os.walk(host):
                dirs.sort()
                for f in files:
                    try:
                        fst = os.lstat(os.path.join(d, f))
                    except OSError:
                        continue
                    if stat.S_ISREG(fst.st_mode):
                        w.bytes_total += fst.st_size
        elif stat.S_ISREG(st.st_mode):
            w.bytes_total += st.st_size
    return w


def check_destination(
    dest: str | Path, image_path: str | Path, *, allow_image_medium: bool
) -> Path:
    """The folder files are extracted into: an existing real folder, not on the medium that
    holds the image unless ``allow_image_medium``."""
    d = Path(os.path.abspath(dest))
    try:
        st = os.lstat(d)
    except OSError as exc:
        raise RescueError(
            f"The destination {d} cannot be used: {exc.strerror}.",
            hint="Create the folder first, on a medium with room for the files.",
        ) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise RescueError(f"The destination {d} is not a folder (or is a symbolic link).")
    img = os.stat(image_path)
    if img.st_dev == st.st_dev and not allow_image_medium:
        raise RescueError(
            f"{d} is on the medium that holds the image; files are not extracted there unless "
            "chosen so explicitly.",
            hint="Choose a folder on another disk, or confirm this medium on purpose.",
            action="onto-image-medium",
        )
    return d


class _Extractor:
    def __init__(
        self,
        meter: ProgressMeter,
        cancel: threading.Event | None,
        *,
        hashes: bool = True,
        reader: Any = None,
    ) -> None:
        self.hashes = hashes  # a SHA-256 of each file (the extraction's report lists them)
        # the partition's bytes read in this process (view.PartitionReader): a large file
        # whose extents the filesystem gives is read from the image by them
        self.reader = reader
        self.by_extents = 0  # files read so
        self.meter = meter
        self.cancel = cancel
        self.links: dict[tuple[int, int], tuple[Path, str | None]] = {}
        self.done: list[Extracted] = []
        self.warnings: list[str] = []
        self.dirs: list[tuple[Path, os.stat_result, Path]] = []  # metadata after children

    def copy(self, src: Path, dst: Path, image_path: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("Extraction cancelled by the operator.")
        st = os.lstat(src)
        mode = st.st_mode
        if os.path.lexists(dst):
            raise RescueError(
                f"{dst} already exists; nothing is overwritten.",
                hint="Choose an empty destination folder.",
            )
        if stat.S_ISDIR(mode):
            os.mkdir(dst, 0o700)
            self.done.append(Extracted(image_path, "folder"))
            with os.scandir(src) as it:
                names = sorted(e.name for e in it)
            for name in names:
                self.copy(src / name, dst / name, f"{image_path.rstrip('/')}/{name}")
            self.dirs.append((src, st, dst))
            return
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            first, digest = self.links[key]
            os.link(first, dst, follow_symlinks=False)
            size = st.st_size if digest else 0
            self.done.append(Extracted(image_path, "hard link", size, digest, f"to {first}"))
            return
        digest = None
        if stat.S_ISREG(mode):
            digest = self._file(src, dst, st)
            self.done.append(Extracted(image_path, "file", st.st_size, digest))
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
            self.done.append(Extracted(image_path, "link", note=os.readlink(src)))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(dst, mode, st.st_rdev)
            self.done.append(Extracted(image_path, _kind(mode)))
        else:
            self.warnings.append(f"{image_path}: a socket, not extracted.")
            return
        if st.st_nlink > 1:
            self.links[key] = (dst, digest)
        self._metadata(src, st, dst)

    def _file(self, src: Path, dst: Path, st: os.stat_result) -> str:
        """Copy one regular file, its holes kept; its SHA-256 (holes hashed as zeros)."""
        fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fout = os.open(dst, flags, 0o600)
            try:
                extents = None
                if st.st_size > PIPELINE_MIN and self.reader is not None:
                    from rescueui.core.images.extents import file_extents

                    extents = file_extents(fin, st.st_size)
                if extents is not None:
                    digest = self._copy_by_extents(extents, fout, st.st_size)
                    self.by_extents += 1
                elif st.st_size > PIPELINE_MIN:
                    digest = self._copy_through_view(src, fin, fout, st.st_size)
                else:
                    digest = self._copy_serial(src, fin, fout, st.st_size)
                os.ftruncate(fout, st.st_size)
            finally:
                os.close(fout)
        finally:
            os.close(fin)
        return digest

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("Extraction cancelled by the operator.")

    def _copy_serial(self, src: Path, fin: int, fout: int, size: int) -> str:
        """A small file: read, hash and write one block after the other."""
        h = hashlib.sha256() if self.hashes else _NoHash()
        done = 0  # bytes of the file hashed (and counted in the progress)
        for start, end in _data_ranges(fin, size):
            if start > done:  # a hole: zeros in the hash, nothing written
                _hash_zeros(h, start - done)
                self.meter.advance(start - done)
                done = start
            while done < end:
                self._check_cancel()
                data = os.pread(fin, min(BLOCK, end - done), done)
                if not data:
                    raise RescueError(f"{src} ended early at byte {done} while read.")
                h.update(data)
                _write_all(fout, memoryview(data), done)
                done += len(data)
                self.meter.advance(len(data))
        if size > done:
            _hash_zeros(h, size - done)
            self.meter.advance(size - done)
        return h.hexdigest()

    def _copy_by_extents(self, extents: list[Any], fout: int, size: int) -> str:
        """A large file read from the image by its extents (each chunk decoded and checked
        by the reader, ahead by its own threads); unwritten extents stay holes."""
        reader = self.reader
        piece = reader.piece  # a read within one chunk: its cached bytes, no copy

        def read(_buf: memoryview, at: int, want: int, origin: int) -> memoryview:
            where = at + origin
            n = min(want, piece - where % piece)
            data = reader.read_at(where, n)
            if len(data) != n:
                raise RescueError(
                    f"The image's partition ended at byte {where} inside a file's extent.",
                    hint="The image is damaged or incomplete; use another copy of it.",
                )
            return memoryview(data)

        ranges = [
            (e.logical, e.logical + e.length, e.physical - e.logical)
            for e in extents
            if not e.unwritten
        ]
        return self._pipelined(fout, size, ranges, read)

    def _copy_through_view(self, src: Path, fin: int, fout: int, size: int) -> str:
        """A large file read through the mounted view (with direct I/O where it can be)."""
        direct = _open_direct(src)

        def read(buf: memoryview, at: int, want: int, _origin: int) -> memoryview:
            n = _read_block(fin, direct, buf, want, at)
            if not n:
                raise RescueError(f"{src} ended early at byte {at} while read.")
            return buf[:n]

        try:
            ranges = [(start, end, 0) for start, end in _data_ranges(fin, size)]
            return self._pipelined(fout, size, ranges, read)
        finally:
            if direct is not None:
                os.close(direct)

    def _pipelined(
        self,
        fout: int,
        size: int,
        ranges: list[tuple[int, int, int]],
        read: Callable[[memoryview, int, int, int], memoryview],
    ) -> str:
        """Copy the data ``ranges`` (start, end, the reader's origin; file order; the rest
        are holes) of a file of ``size`` bytes into ``fout``: this thread reads block after
        block (``read(buffer, at, at most, origin)``: the bytes at file offset ``at``, in the
        buffer or its own) while one thread hashes the blocks read before and another writes
        them (hashlib and the system calls release the GIL, so the three overlap). The hash
        sees the blocks in order, holes as zeros; a buffer is read into again only when its
        block was both hashed and written. Returns the SHA-256 ("" without hashes)."""
        h = hashlib.sha256() if self.hashes else _NoHash()
        hasher = _Worker("hash")
        writer = _Worker("write")
        slots: list[tuple[memoryview, list[Any]]] = [
            (memoryview(mmap.mmap(-1, BLOCK)), []) for _ in range(PIPELINE_BUFFERS)
        ]
        turn = 0
        done = 0
        try:
            for start, end, origin in ranges:
                if start >= size:
                    break
                end = min(end, size)
                if start > done:  # a hole: zeros in the hash, nothing written
                    hasher.put(_hash_zeros, h, start - done)
                    self.meter.advance(start - done)
                    done = start
                while done < end:
                    self._check_cancel()
                    buf, waits = slots[turn]
                    turn = (turn + 1) % len(slots)
                    for w in waits:
                        w.wait()
                    hasher.check()
                    writer.check()
                    data = read(buf, done, min(BLOCK, end - done), origin)
                    waits[:] = [
                        hasher.put(h.update, data),
                        writer.put(_write_all, fout, data, done),
                    ]
                    done += len(data)
                    self.meter.advance(len(data))
            if size > done:
                hasher.put(_hash_zeros, h, size - done)
                self.meter.advance(size - done)
        finally:
            hasher.close()
            writer.close()
        hasher.check()
        writer.check()
        return h.hexdigest()

    def _metadata(self, src: Path, st: os.stat_result, dst: Path) -> None:
        link = stat.S_ISLNK(st.st_mode)
        try:
            os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
        except OSError as exc:
            self.warnings.append(f"{dst}: owner not kept ({exc.strerror}).")
        for name in _xattrs(src):
            try:
                value = os.getxattr(src, name, follow_symlinks=False)
                os.setxattr(dst, name, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENODATA,):
                    self.warnings.append(
                        f"{dst}: extended attribute {name} not kept ({exc.strerror})."
                    )
        if not link:
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def finish(self) -> None:
        for src, st, dst in reversed(self.dirs):  # children first: their times are final
            self._metadata(src, st, dst)


def _xattrs(path: Path) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []


_ZEROS = bytes(BLOCK)


class _NoHash:
    """Where no file's hash is wanted (a copy verified another way)."""

    def update(self, _data: Any) -> None:
        return None

    def hexdigest(self) -> str:
        return ""


PIPELINE_MIN = 2 * BLOCK  # files larger than this are copied by _pipelined (threads)
PIPELINE_BUFFERS = 4  # blocks read ahead of the hashing and writing threads
DIRECT_ALIGN = 4096


def _write_all(fd: int, data: memoryview, at: int) -> None:
    """Write all of ``data`` at byte ``at`` of ``fd``."""
    while data:
        n = os.pwrite(fd, data, at)
        data, at = data[n:], at + n


def _open_direct(src: Path) -> int | None:
    """``src`` opened again with O_DIRECT, or None where that is refused."""
    try:
        return os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECT)
    except OSError:
        return None


def _read_block(fin: int, direct: int | None, buf: memoryview, want: int, at: int) -> int:
    """Read ``want`` bytes at ``at`` into ``buf`` (page-aligned): with direct I/O where the
    range allows it (whole 4 KiB blocks, or the end of the file), else through the cache."""
    if direct is not None and at % DIRECT_ALIGN == 0:
        span = -(-want // DIRECT_ALIGN) * DIRECT_ALIGN
        with contextlib.suppress(OSError):
            n = os.preadv(direct, [buf[:span]], at)
            if n >= want or n % DIRECT_ALIGN:
                return min(n, want)
    return os.preadv(fin, [buf[:want]], at)


class _Worker:
    """One thread running calls in the order they are put; the first error is kept (and
    raised by :meth:`check`) and the calls after it are skipped."""

    def __init__(self, name: str) -> None:
        import queue

        self.jobs: queue.SimpleQueue[
            tuple[threading.Event, Callable[..., Any], tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"extract-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            done, fn, args = job
            try:
                if self.error is None:
                    fn(*args)
            except BaseException as exc:  # raised in the copying thread (check)
                self.error = exc
            finally:
                done.set()

    def put(self, fn: Callable[..., Any], *args: Any) -> threading.Event:
        done = threading.Event()
        self.jobs.put((done, fn, args))
        return done

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Run what was put, then end the thread."""
        self.jobs.put(None)
        self.thread.join()


def _hash_zeros(h: Any, n: int) -> None:
    """Feed ``n`` zero bytes to ``h`` (a hole of a sparse file hashes as its zeros)."""
    view = memoryview(_ZEROS)
    while n > 0:
        take = min(n, BLOCK)
        h.update(view[:take])
        n -= take


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The ranges of ``fd`` that hold data (holes skipped), by SEEK_DATA / SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole to the end
                return
            if exc.errno == errno.EINVAL:  # no SEEK_DATA here: all of it
                yield pos, size
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        pos = end


def extract(
    image_dir: str | Path,
    partition: int,
    paths: list[str],
    dest: str | Path,
    *,
    allow_image_medium: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> JobReport:
    """Extract ``paths`` (inside image partition ``partition``) into the folder ``dest``; the
    report (written next to the image) lists each with its SHA-256. Raises RescueError with
    the report attached (``exc.report``) when it fails, is cancelled or refused."""
    from rescueui.core.images.view import partition_view

    report = JobReport(
        job="extract", source=str(image_dir), image_dir=str(image_dir), target=str(dest)
    )
    report.details.update(partition=partition, paths=list(paths))
    meter = ProgressMeter("extract", 0, progress or (lambda _p: None))
    work: _Extractor | None = None
    try:
        if not paths:
            raise RescueError("Nothing to extract: no path given.")
        folder = check_destination(dest, image_dir, allow_image_medium=allow_image_medium)
        staging = _staging_progress(progress, partition)
        with contextlib.ExitStack() as stack:
            view = stack.enter_context(
                partition_view(image_dir, partition, progress=staging, cancel=cancel)
            )
            report.details["mounted"] = view.how
            walk = _walk(view.root, paths)
            meter.bytes_total = walk.bytes_total
            report.bytes_total = walk.bytes_total
            meter.update(bytes_total=walk.bytes_total, phase="extract")
            work = _Extractor(meter, cancel, reader=_direct_reader(stack, image_dir, view))
            try:
                for host, image_path in walk.items:
                    name = PurePosixPath(image_path).name or f"partition{partition}"
                    work.copy(host, folder / name, image_path)
                work.finish()
            except OSError as exc:
                damage = view.problem()  # a read error inside the view: the image's damage
                if damage is None:
                    raise
                raise CorruptImageError(
                    f"{exc.filename or 'A file'} could not be read from the image: {damage}",
                    hint="The image is damaged; use another copy of it. What was extracted "
                    "before is listed in the report.",
                ) from exc
            _sync(folder)
        report.details["files"] = [asdict(e) for e in work.done]
        report.details["read_by_extents"] = work.by_extents
        report.warnings += work.warnings
        report.bytes_done = meter.last.bytes_done
        report.finish("success")
    except CancelledError as exc:
        _fail(report, work, meter, "cancelled", exc, image_dir)
        raise
    except RescueError as exc:
        _fail(report, work, meter, "failed", exc, image_dir)
        raise
    except OSError as exc:
        err = RescueError(f"Extraction failed: {exc}.", hint="Check the destination medium.")
        _fail(report, work, meter, "failed", err, image_dir)
        raise err from exc
    report.write(_reports(image_dir))
    return report


def _direct_reader(stack: contextlib.ExitStack, image_dir: str | Path, view: Any) -> Any:
    """The partition's bytes read in this process, for files read by their extents: our
    format's images (every chunk decoded and its BLAKE3 checked here, as the view's helper
    does), on filesystems whose extents are device offsets; else None (read through the
    view)."""
    from rescueui.core.images import open_image
    from rescueui.core.images.extents import FS_TYPES
    from rescueui.core.images.view import PartitionReader

    if view.fs_type not in FS_TYPES:
        return None
    image = stack.enter_context(open_image(image_dir))
    if not hasattr(image, "read_chunk"):
        return None
    reader = PartitionReader(image, view.partition)
    stack.callback(reader.close)
    return reader


def _staging_progress(
    progress: ProgressCallback | None, partition: int
) -> Callable[[int, int], None] | None:
    """The progress of reading an image read only in order into its staging file (before
    anything is extracted): phase "stage", its own byte counts."""
    if progress is None:
        return None
    meter = ProgressMeter("extract", 0, progress)

    def staged(done: int, total: int) -> None:
        if meter.bytes_total != total:
            meter.bytes_total = total
            meter.update(
                bytes_total=total, phase="stage", stream=f"(reading partition {partition})"
            )
        meter.advance(done - meter.last.bytes_done)

    return staged


def copy_tree(
    source: Path, target: Path, meter: ProgressMeter, cancel: threading.Event | None = None
) -> tuple[int, list[str]]:
    """Copy everything below the folder ``source`` into the (new, empty) filesystem root
    ``target``, keeping what :func:`extract` keeps, and the root's own mode, owner, times
    and attributes; a ``lost+found`` the new filesystem already has is used as it is.
    Returns (entries copied, warnings)."""
    work = _Extractor(meter, cancel, hashes=False)  # the caller compares the trees
    for name in sorted(os.listdir(source)):
        src, dst = source / name, target / name
        st = os.lstat(src)
        if (
            name == "lost+found"
            and stat.S_ISDIR(st.st_mode)
            and dst.is_dir()
            and not dst.is_symlink()
        ):
            for child in sorted(os.listdir(src)):
                work.copy(src / child, dst / child, f"/{name}/{child}")
            work.dirs.append((src, st, dst))
            continue
        work.copy(src, dst, f"/{name}")
    work.dirs.append((source, os.lstat(source), target))
    work.finish()
    return len(work.done), work.warnings


def _fail(
    report: JobReport, work: _Extractor | None, meter: ProgressMeter, outcome: str,
    exc: RescueError, image_dir: str | Path,
) -> None:  # fmt: skip
    if work is not None:
        report.details["files"] = [asdict(e) for e in work.done]
        report.warnings += work.warnings
        report.notes.append("What was extracted before the failure is listed and left in place.")
    report.bytes_done = meter.last.bytes_done
    report.finish(outcome, exc)
    report.write(_reports(image_dir))
    exc.report = report  # type: ignore[attr-defined]


def _sync(folder: Path) -> None:
    """Everything extracted on its medium before the job says it is done (one syncfs of
    the destination's filesystem instead of a flush per file)."""
    import ctypes
    import ctypes.util

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.syncfs(fd) != 0:
            os.fsync(fd)
    finally:
        os.close(fd)


def _reports(image_dir: str | Path) -> Path | None:
    m = Path(image_dir) / "manifest.json"
    return Path(image_dir) / "reports" if m.is_file() and not m.is_symlink() else None


MAX_REPORTED = 2000  # extracted entries shown in a report's text (the JSON has them all)


def extracted_lines(files: Any) -> list[str]:
    """What an extraction copied (``details["files"]`` of its report), a line per entry,
    each file's SHA-256 on the line under it."""
    lines: list[str] = []
    if not isinstance(files, list):
        return lines
    for item in files[:MAX_REPORTED]:
        if not isinstance(item, dict):
            continue
        path, kind = str(item.get("path", "?")), str(item.get("kind", "?"))
        size, note, digest = item.get("size") or 0, item.get("note") or "", item.get("sha256")
        if kind == "folder":
            lines.append(f"{path}/")
        elif kind == "link":
            lines.append(f"{path} -> {note}")
        else:
            what = human_size(int(size)) if kind == "file" else kind
            if kind == "hard link":
                what = f"hard link {note}"
            lines.append(f"{path}  ({what})")
        if digest:
            lines.append(f"  sha256 {digest}")
    if len(files) > MAX_REPORTED:
        lines.append(f"... and {len(files) - MAX_REPORTED} more: the JSON report lists them all.")
    return lines
