"""The restore journal: how far a restore got, durably, so an interrupted one can resume.

A journal is a small JSON file bound to one image (the BLAKE3 of its ``manifest.json``)
and one target (its stable identity). The restore engine updates it only after an
``fdatasync`` of the target, so the recorded position is always durable: everything
before it is on the disk. Resume re-verifies that part by reading it back, then
continues. A successful restore removes its journal.

Where: next to the image (inside the image folder, ``restore-journal-<key>.json``) when
that folder is writable, else ``/var/lib/rescueui/journals/`` (``$RESCUEUI_JOURNAL_DIR``
overrides the fallback). Both places are searched on resume.

The image folder may sit on a hostile medium (issue 9), so:

* every write goes through :class:`~rescueui.core.safefile.SafeDir`: the folder is opened
  without following a symlink, the new content goes to a fresh ``O_EXCL | O_NOFOLLOW``
  temporary file and is renamed over the journal's name (a symlink planted there is
  replaced, never written through), and the folder must still be the very folder the
  journal started in (device and inode), so a journal is never written anywhere else.
  Write failures are :class:`JournalWriteError`, an ``OSError`` (the restore warns and
  goes on: a journal is a convenience, never a reason to stop a restore);
* a journal is read only if it is a regular file (no symlink, FIFO or device), without
  blocking, at most :data:`JOURNAL_LIMIT` bytes, and every field is checked (type and
  range). A journal that exists but cannot be used raises
  :class:`~rescueui.core.errors.JournalError` naming the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import blake3

from rescueui.core.errors import JournalError, RescueError
from rescueui.core.identity import DiskIdentity
from rescueui.core.safefile import SafeDir, UnsafeFileError, read_regular

JOURNAL_VERSION = 1
FALLBACK_DIR = Path("/var/lib/rescueui/journals")
PREFIX = "restore-journal-"
JOURNAL_LIMIT = 64 * 1024  # a journal is a few hundred bytes; anything larger is not one
MANIFEST_LIMIT = 64 * 1024 * 1024
MAX_COUNT = 1 << 62  # segments, bytes, chunk numbers: far beyond any disk, still an int64
MAX_TEXT = 4096  # image folder path, stream name, time stamps

RESUME_HINT = (
    "Restore from the beginning instead: everything is written and verified again, and "
    "the new restore replaces this file."
)

__all__ = [
    "FALLBACK_DIR",
    "JOURNAL_LIMIT",
    "JOURNAL_VERSION",
    "PREFIX",
    "Journal",
    "JournalError",
    "JournalWriteError",
    "fallback_dir",
    "find_journal",
    "journal_key",
    "manifest_hash",
    "parse_journal",
]


class JournalWriteError(OSError):
    """The journal could not be written safely. An ``OSError`` whose ``strerror`` is a
    plain sentence, so callers that warn on I/O errors show it as it is."""

    def __init__(self, sentence: str, filename: str | Path | None = None) -> None:
        super().__init__(errno.EPERM, sentence, os.fspath(filename) if filename else None)


def fallback_dir() -> Path:
    env = os.environ.get("RESCUEUI_JOURNAL_DIR")
    return Path(env) if env else FALLBACK_DIR


def manifest_hash(image_dir: str | Path) -> str:
    """BLAKE3 of the image's manifest.json bytes (binds the journal to this exact image)."""
    data = read_regular(Path(image_dir, "manifest.json"), MANIFEST_LIMIT, what="image manifest")
    return blake3.blake3(data).hexdigest()


def journal_key(manifest_blake3: str, ident: DiskIdentity, partition: int | None) -> str:
    blob = json.dumps(
        {"image": manifest_blake3, "target": ident.stable_key(), "partition": partition},
        sort_keys=True,
    )
    return blake3.blake3(blob.encode()).hexdigest()[:24]


def journal_name(manifest_blake3: str, ident: DiskIdentity, partition: int | None) -> str:
    return f"{PREFIX}{journal_key(manifest_blake3, ident, partition)}.json"


def _real_folder(path: str | Path) -> Path:
    """The folder itself, symlinks in its path resolved once (the image is read from there
    too); from then on it is only ever opened without following a symlink."""
    return Path(os.path.realpath(os.fspath(path)))


def _dir_writable(d: Path) -> bool:
    """Whether a file can be created in ``d`` (opened without following a symlink)."""
    try:
        with SafeDir.open(d) as folder:
            probe = f".rescueui-probe-{os.getpid()}-{time.monotonic_ns()}"
            folder.create(probe, b"", sync=False)
            folder.unlink(probe)
    except (OSError, RescueError):
        return False
    return True


def _folder_id(folder: SafeDir) -> tuple[int, int]:
    st = os.fstat(folder.fd)
    return (st.st_dev, st.st_ino)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class Journal:
    """Durable position of one restore of one image onto one target."""

    path: Path
    image_dir: str
    manifest_blake3: str
    target: dict[str, Any]  # DiskIdentity.to_dict() at the start
    target_key: dict[str, Any]  # DiskIdentity.stable_key()
    partition: int | None
    segments_total: int
    durable_segments: int = 0  # segments 0 .. durable_segments-1 are on the disk (fdatasync'd)
    durable_bytes: int = 0
    stream: str | None = None  # the stream of the next segment, for the operator
    chunk: int | None = None
    table_written: bool = False
    started: str = field(default_factory=_now)
    updated: str = ""
    version: int = JOURNAL_VERSION
    # (st_dev, st_ino) of the folder the journal lives in, taken when it was first written
    # or read: every later write must land in that same folder.
    folder_id: tuple[int, int] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        image_dir: str | Path,
        manifest_blake3: str,
        ident: DiskIdentity,
        partition: int | None,
        segments_total: int,
    ) -> Journal:
        """Start the journal of a restore: in the image folder if it is writable, else in
        the fallback folder. Raises :class:`JournalWriteError` (an OSError) when neither
        can hold it."""
        name = journal_name(manifest_blake3, ident, partition)
        image_path = _real_folder(image_dir)
        j = cls(
            path=image_path / name,
            image_dir=str(image_path),
            manifest_blake3=manifest_blake3,
            target=ident.to_dict(),
            target_key=ident.stable_key(),
            partition=partition,
            segments_total=segments_total,
        )
        problems: list[str] = []
        if _dir_writable(image_path):
            try:
                j.save()
                return j
            except OSError as exc:
                problems.append(f"{image_path}: {exc.strerror or exc}")
        fallback = fallback_dir()
        try:
            fallback.parent.mkdir(parents=True, exist_ok=True)
            with SafeDir.open(fallback, create=True, mode=0o700):
                pass
        except UnsafeFileError as exc:
            problems.append(exc.message)
            raise JournalWriteError("; ".join(problems), fallback) from exc
        except OSError as exc:
            problems.append(f"{fallback}: {exc.strerror or exc}")
            raise JournalWriteError("; ".join(problems), fallback) from exc
        j.path = Path(os.path.abspath(fallback)) / name  # opened no-follow on each write
        j.folder_id = None
        try:
            j.save()
        except OSError as exc:
            problems.append(f"{fallback}: {exc.strerror or exc}")
            raise JournalWriteError("; ".join(problems), fallback) from exc
        return j

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d.pop("folder_id")
        return d

    def _open_folder(self) -> SafeDir:
        """The journal's folder, opened without following a symlink, and checked to be the
        folder the journal started in."""
        folder_path = self.path.parent
        try:
            folder = SafeDir.open(folder_path)
        except UnsafeFileError as exc:
            raise JournalWriteError(exc.message, folder_path) from exc
        try:
            fid = _folder_id(folder)
            if self.folder_id is None:
                self.folder_id = fid
            elif fid != self.folder_id:
                raise JournalWriteError(
                    f"the folder {folder_path} is no longer the folder the restore journal "
                    "was started in (it was replaced); the journal is not written elsewhere",
                    folder_path,
                )
        except BaseException:
            folder.close()
            raise
        return folder

    def save(self) -> None:
        """Atomically replace the journal file: a new temporary file (O_EXCL, no symlink
        followed) in the journal's own folder, fsync, rename, fsync the folder."""
        self.updated = _now()
        # ensure_ascii: an undecodable folder name (surrogates) is stored escaped.
        data = (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()
        with self._open_folder() as folder:
            folder.replace(self.path.name, data)

    def record(
        self, durable_segments: int, durable_bytes: int, stream: str | None, chunk: int | None
    ) -> None:
        self.durable_segments = durable_segments
        self.durable_bytes = durable_bytes
        self.stream = stream
        self.chunk = chunk
        self.save()

    def remove(self) -> None:
        """Delete the journal (a finished restore). Never raises: a journal left behind
        only means a later resume re-checks a complete disk."""
        with contextlib.suppress(OSError, RescueError), self._open_folder() as folder:
            folder.unlink(self.path.name)

    @classmethod
    def load(cls, path: str | Path) -> Journal:
        """Read and check the journal at ``path``; raises :class:`JournalError` if it does
        not exist, is not a regular file, is too large or is not a valid journal."""
        p = Path(path)
        try:
            data = read_regular(p, JOURNAL_LIMIT, what="restore journal")
        except FileNotFoundError as exc:
            raise _unusable(p, "it does not exist") from exc
        except UnsafeFileError as exc:
            raise JournalError(
                f"{exc.message} Resuming from it is not possible.", hint=RESUME_HINT
            ) from exc
        return parse_journal(data, p)


# ---------------------------------------------------------------------- parsing


class _Invalid(Exception):
    """One field of a journal is wrong (turned into a JournalError by parse_journal)."""


def _unusable(path: Path, reason: str) -> JournalError:
    return JournalError(
        f"The restore journal {path} cannot be used: {reason}. Resuming from it is not possible.",
        hint=RESUME_HINT,
    )


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(d: dict[str, Any], name: str, *, low: int, high: int, default: int | None = None) -> int:
    if name not in d:
        if default is None:
            raise _Invalid(f"the field {name} is missing")
        return default
    v = d[name]
    if type(v) is not int:
        raise _Invalid(f"the field {name} is {_describe(v)}, not a whole number")
    if not low <= v <= high:
        raise _Invalid(f"the field {name} is {v}, outside the possible range {low} to {high}")
    return v


def _text(d: dict[str, Any], name: str, *, required: bool, optional: bool = False) -> str | None:
    if name not in d:
        if required:
            raise _Invalid(f"the field {name} is missing")
        return None if optional else ""
    v = d[name]
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise _Invalid(f"the field {name} is {_describe(v)}, not a text")
    if len(v) > MAX_TEXT:
        raise _Invalid(f"the field {name} is {len(v)} characters long, more than {MAX_TEXT}")
    return v


def _mapping(d: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in d:
        raise _Invalid(f"the field {name} is missing")
    v = d[name]
    if not isinstance(v, dict):
        raise _Invalid(f"the field {name} is {_describe(v)}, not a set of named values")
    return v


def _fields(d: dict[str, Any], path: Path) -> Journal:
    if "version" not in d:
        raise _Invalid("the field version is missing")
    version = d["version"]
    if type(version) is not int or version != JOURNAL_VERSION:
        raise _Invalid(
            f"the field version is {_describe(version)}; this program reads journal version "
            f"{JOURNAL_VERSION} only (it was written by another version of the program)"
        )
    image_dir = _text(d, "image_dir", required=True)
    manifest = _text(d, "manifest_blake3", required=True)
    if not manifest:
        raise _Invalid("the field manifest_blake3 is empty")
    target = _mapping(d, "target")
    target_key = _mapping(d, "target_key")
    partition: int | None = None
    if d.get("partition") is not None:
        partition = _whole(d, "partition", low=1, high=1 << 20)
    total = _whole(d, "segments_total", low=0, high=MAX_COUNT)
    durable = _whole(d, "durable_segments", low=0, high=total, default=0)
    durable_bytes = _whole(d, "durable_bytes", low=0, high=MAX_COUNT, default=0)
    stream = _text(d, "stream", required=False, optional=True)
    chunk: int | None = None
    if d.get("chunk") is not None:
        chunk = _whole(d, "chunk", low=0, high=MAX_COUNT)
    table_written = d.get("table_written", False)
    if not isinstance(table_written, bool):
        raise _Invalid(f"the field table_written is {_describe(table_written)}, not true or false")
    return Journal(
        path=path,
        image_dir=image_dir or "",
        manifest_blake3=manifest,
        target=target,
        target_key=target_key,
        partition=partition,
        segments_total=total,
        durable_segments=durable,
        durable_bytes=durable_bytes,
        stream=stream,
        chunk=chunk,
        table_written=table_written,
        started=_text(d, "started", required=False) or "",
        updated=_text(d, "updated", required=False) or "",
    )


def parse_journal(data: bytes, path: Path) -> Journal:
    """A :class:`Journal` from the bytes of the file ``path``; :class:`JournalError` naming
    the file and the first thing wrong with it otherwise. Never raises anything else."""
    if len(data) > JOURNAL_LIMIT:
        raise _unusable(path, f"it is {len(data)} bytes, more than a journal can be")
    if not data.strip():
        raise _unusable(path, "it is empty")
    try:
        d = json.loads(data)
    except RecursionError as exc:
        raise _unusable(path, "it is nested too deeply to be a journal") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not readable text"
        raise _unusable(path, f"it is not a valid JSON file ({reason})") from exc
    if not isinstance(d, dict):
        raise _unusable(path, "it does not hold a set of named values (a JSON object)")
    try:
        return _fields(d, path)
    except _Invalid as exc:
        raise _unusable(path, str(exc)) from None


def find_journal(
    image_dir: str | Path, manifest_blake3: str, ident: DiskIdentity, partition: int | None
) -> Journal | None:
    """The journal of this image on this target, if an earlier restore left one.

    None when there is none (in the image folder nor in the fallback folder). Raises
    :class:`JournalError` when one is there but cannot be used (not a regular file, too
    large, malformed, or its content belongs to another image, target or partition),
    unless a usable one is found in the other place.
    """
    name = journal_name(manifest_blake3, ident, partition)
    first_error: JournalError | None = None
    for folder in (_real_folder(image_dir), Path(os.path.abspath(fallback_dir()))):
        path = folder / name
        try:
            os.lstat(path)
        except OSError:
            continue  # nothing there (or the folder cannot be looked into): no journal
        try:
            j = _load_in(folder, path)
            if j.manifest_blake3 != manifest_blake3:
                raise _unusable(path, "it is the journal of another image")
            if j.target_key != ident.stable_key():
                raise _unusable(path, "it is the journal of a restore onto another target")
            if j.partition != partition:
                raise _unusable(path, "it is the journal of a restore of another partition")
        except JournalError as exc:
            first_error = first_error or exc
            continue
        return j
    if first_error is not None:
        raise first_error
    return None


def _load_in(folder: Path, path: Path) -> Journal:
    """Load ``path`` and remember the identity of its folder, so that updates of the
    journal can only ever land in that same folder."""
    j = Journal.load(path)
    with contextlib.suppress(OSError, RescueError), SafeDir.open(folder) as d:
        j.folder_id = _folder_id(d)
    return j
