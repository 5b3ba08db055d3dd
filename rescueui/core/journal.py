"""The restore journal: how far a restore got, durably, so an interrupted one can resume.

A journal is a small JSON file bound to one image (the BLAKE3 of its ``manifest.json``)
and one target (its stable identity). The restore engine updates it only after an
``fdatasync`` of the target, so the recorded position is always durable: everything
before it is on the disk. Resume re-verifies that part by reading it back, then
continues. A successful restore removes its journal.

Where: next to the image (inside the image folder, ``restore-journal-<key>.json``) when
that folder is writable, else ``/var/lib/rescueui/journals/`` (``$RESCUEUI_JOURNAL_DIR``
overrides the fallback). Both places are searched on resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import blake3

from rescueui.core.identity import DiskIdentity

JOURNAL_VERSION = 1
FALLBACK_DIR = Path("/var/lib/rescueui/journals")
PREFIX = "restore-journal-"


def fallback_dir() -> Path:
    env = os.environ.get("RESCUEUI_JOURNAL_DIR")
    return Path(env) if env else FALLBACK_DIR


def manifest_hash(image_dir: str | Path) -> str:
    """BLAKE3 of the image's manifest.json bytes (binds the journal to this exact image)."""
    return blake3.blake3(Path(image_dir, "manifest.json").read_bytes()).hexdigest()


def journal_key(manifest_blake3: str, ident: DiskIdentity, partition: int | None) -> str:
    blob = json.dumps(
        {"image": manifest_blake3, "target": ident.stable_key(), "partition": partition},
        sort_keys=True,
    )
    return blake3.blake3(blob.encode()).hexdigest()[:24]


def _dir_writable(d: Path) -> bool:
    if not os.access(d, os.W_OK):
        return False
    try:
        fd, name = tempfile.mkstemp(prefix=".rescueui-probe-", dir=d)
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return True


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
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    updated: str = ""
    version: int = JOURNAL_VERSION

    @classmethod
    def create(
        cls,
        image_dir: str | Path,
        manifest_blake3: str,
        ident: DiskIdentity,
        partition: int | None,
        segments_total: int,
    ) -> Journal:
        key = journal_key(manifest_blake3, ident, partition)
        d = Path(image_dir)
        if not _dir_writable(d):
            d = fallback_dir()
            d.mkdir(parents=True, exist_ok=True)
        j = cls(
            path=d / f"{PREFIX}{key}.json",
            image_dir=str(Path(image_dir).resolve()),
            manifest_blake3=manifest_blake3,
            target=ident.to_dict(),
            target_key=ident.stable_key(),
            partition=partition,
            segments_total=segments_total,
        )
        j.save()
        return j

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        return d

    def save(self) -> None:
        """Atomically replace the journal file (write, fsync, rename, fsync dir)."""
        self.updated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        data = (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def record(
        self, durable_segments: int, durable_bytes: int, stream: str | None, chunk: int | None
    ) -> None:
        self.durable_segments = durable_segments
        self.durable_bytes = durable_bytes
        self.stream = stream
        self.chunk = chunk
        self.save()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(d, dict) or d.get("version") != JOURNAL_VERSION:
            return None
        try:
            return cls(
                path=path,
                image_dir=str(d["image_dir"]),
                manifest_blake3=str(d["manifest_blake3"]),
                target=dict(d["target"]),
                target_key=dict(d["target_key"]),
                partition=d.get("partition"),
                segments_total=int(d["segments_total"]),
                durable_segments=int(d.get("durable_segments", 0)),
                durable_bytes=int(d.get("durable_bytes", 0)),
                stream=d.get("stream"),
                chunk=d.get("chunk"),
                table_written=bool(d.get("table_written", False)),
                started=str(d.get("started", "")),
                updated=str(d.get("updated", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def find_journal(
    image_dir: str | Path, manifest_blake3: str, ident: DiskIdentity, partition: int | None
) -> Journal | None:
    """The journal of this image on this target, if an earlier restore left one."""
    key = journal_key(manifest_blake3, ident, partition)
    for d in (Path(image_dir), fallback_dir()):
        p = d / f"{PREFIX}{key}.json"
        if p.exists():
            j = Journal.load(p)
            if (
                j is not None
                and j.manifest_blake3 == manifest_blake3
                and j.target_key == ident.stable_key()
                and j.partition == partition
            ):
                return j
    return None
