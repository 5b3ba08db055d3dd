"""Job reports: what ran, on what, how it ended — as JSON and as a short text.

Every capture, restore and verify run fills a :class:`JobReport` and writes it with
:meth:`JobReport.write`, also when the job failed or was cancelled. Writing never
raises: when the chosen folder is not writable (full image medium, read-only stick)
the report goes to ``/tmp/rescueui-reports`` instead, and when even that fails the
text is kept in memory (``report.text``) for the screen.

The image folder may sit on a hostile medium (issue 9). So the report folder (``reports``
inside the image folder) is opened without following a symlink, each report file is
created new (``O_EXCL | O_NOFOLLOW``, never written through a planted symlink, never
overwriting another report), and the fallback folder is refused when it is a symlink,
belongs to another user or others may write in it; then a fresh private folder
(``tempfile.mkdtemp``) takes the report. Text from outside (paths, manifest fields, model
names, messages) is shown escaped in the text form (:func:`~rescueui.core.text.safe_text`),
and the JSON form escapes every control, bidi and undecodable character, so neither can
drive the terminal it is shown on; an undecodable path is kept exactly (``\\udcXX``).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import stat
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rescueui.core.errors import RescueError
from rescueui.core.safefile import SafeDir, UnsafeFileError
from rescueui.core.text import safe_text
from rescueui.core.units import human_duration, human_rate, human_size

FALLBACK_DIR = Path("/tmp/rescueui-reports")
TEXT_WIDTH = 80  # the text report fits an 80-column console
LABEL_WIDTH = 13  # "Destination: "

OUTCOMES = ("running", "success", "failed", "cancelled", "refused")  # refused: nothing written
NOTE_PREFIX = "Report could not be written"  # unattended drops these notes when it re-writes
MAX_NAME_TRIES = 1000

# Characters json.dumps(ensure_ascii=False) leaves raw that a terminal or editor acts on:
# DEL and the C1 controls (0x9b is a CSI), bidi marks, embeddings, overrides and isolates,
# line/paragraph separators, and lone surrogates (undecodable file names).
_JSON_UNSAFE = re.compile(
    r"[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _stamp() -> str:
    """The time part of report file names."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _safe(value: object) -> str:
    """Text from outside, for the text report: controls escaped, newlines kept."""
    return safe_text(value, newlines=True)


def json_text(data: Any) -> str:
    """``data`` as indented JSON, non-ASCII text kept readable, but every control, bidi
    and surrogate character \\u-escaped (json.dumps leaves C1 and bidi characters raw)."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    # Outside strings json.dumps writes ASCII only, so this touches string contents alone.
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _jsonable(value.to_dict())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@dataclass
class JobReport:
    job: str  # "capture" | "restore" | "verify-image" | ...
    outcome: str = "running"  # "success" | "failed" | "cancelled"
    started: str = field(default_factory=now_iso)
    finished: str = ""
    duration_s: float = 0.0
    source: str | None = None  # disk or image read from
    destination: str | None = None  # image folder written (capture)
    target: str | None = None  # disk or partition written (restore)
    image_dir: str | None = None
    bytes_total: int = 0  # logical bytes the job covers (raw disk bytes)
    bytes_done: int = 0
    bytes_stored: int = 0  # compressed bytes written to the image (capture)
    # logical bytes per second over the whole job: bytes_done / duration_s, the figure the
    # progress display calls "average". For a restore bytes_done counts the bytes written
    # plus the bytes read back by the verify (and a resume's re-check); the write phase's
    # own rate is in ``phases["write"]["rate"]``.
    rate_avg: float = 0.0
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> seconds/bytes/rate
    streams: list[dict[str, Any]] = field(default_factory=list)  # name, start, size, root_blake3...
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    hint: str | None = None
    error_type: str | None = None
    findings: list[Any] = field(default_factory=list)  # pre-flight findings (restore)
    # the warnings the operator accepted: code, message (what), by (who), at (when, UTC)
    acknowledgements: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "partition 2 grown to 40 GiB"
    details: dict[str, Any] = field(default_factory=dict)
    report_files: list[str] = field(default_factory=list)
    text: str = ""
    _t0: float = field(default_factory=time.monotonic, repr=False)

    # -- lifecycle ------------------------------------------------------------------
    @property
    def ok(self) -> bool:
        return self.outcome == "success"

    def finish(self, outcome: str, error: BaseException | str | None = None) -> JobReport:
        """Set the outcome, end time, duration and average rate (call once, at the end)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self.outcome = outcome
        self.finished = now_iso()
        self.duration_s = round(time.monotonic() - self._t0, 3)
        if self.duration_s > 0:
            self.rate_avg = self.bytes_done / self.duration_s
        if error is not None:
            if isinstance(error, BaseException):
                self.error = getattr(error, "message", None) or str(error)
                self.hint = getattr(error, "hint", None)
                self.error_type = type(error).__name__
            else:
                self.error = error
        return self

    # -- rendering ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not f.name.startswith("_") and f.name != "text"
        }
        return _jsonable(d)

    def to_text(self, width: int = TEXT_WIDTH) -> str:
        """The report as plain text; every line fits ``width`` columns (except a single
        word longer than that, e.g. a very long path, which is never broken). Every text
        from outside is shown through :func:`~rescueui.core.text.safe_text`."""
        title = {
            "success": "SUCCESS",
            "failed": "FAILED",
            "cancelled": "CANCELLED",
            "running": "RUNNING",
            "refused": "REFUSED (nothing was written)",
        }.get(self.outcome, _safe(self.outcome).upper())
        lines = [f"rescueui {_safe(self.job)}: {title}"]

        def add(label: str, value: object) -> None:
            lines.extend(_wrap(_safe(value), width, f"{label:{LABEL_WIDTH}}", " " * LABEL_WIDTH))

        for label, value in (
            ("Source:", self.source),
            ("Image:", self.image_dir),
            ("Destination:", self.destination if self.destination != self.image_dir else None),
            ("Target:", self.target),
        ):
            if value:
                add(label, value)
        if self.details.get("image_description"):
            add("Kind:", self.details["image_description"])
        if self.details.get("source_checks"):
            add("Checks:", self.details["source_checks"])
        add("Started:", self.started)
        if self.finished:
            add(
                "Finished:",
                f"{self.finished} ({human_duration(self.duration_s)}, {self.duration_s:.1f} s)",
            )
        add(
            "Bytes:",
            f"{human_size(self.bytes_done)} of {human_size(self.bytes_total)}"
            f" ({self.bytes_done} of {self.bytes_total})",
        )
        if self.bytes_stored:
            ratio = self.bytes_done / self.bytes_stored if self.bytes_stored else 0
            add("Stored:", f"{human_size(self.bytes_stored)} compressed ({ratio:.1f}:1)")
        if self.rate_avg:
            basis = " (written + read back)" if self.job == "restore" else ""
            add("Rate:", f"{human_rate(self.rate_avg)} average over the whole job{basis}")
        for name, ph in self.phases.items():
            add(
                "Phase:",
                f"{name}: {ph.get('seconds', 0):.1f} s, {human_rate(float(ph.get('rate', 0.0)))}",
            )
        if self.streams:
            lines.append("Streams:")
            for s in self.streams:
                name = safe_text(s.get("name", "?"))
                head = f"  {name:10} {human_size(int(s.get('size_bytes', 0))):>10}"
                if "start_bytes" in s:
                    head += f"  at byte {safe_text(s.get('start_bytes', 0))}"
                if s.get("status"):
                    head += f"  [{safe_text(s['status'])}]"
                lines.append(head)
                if s.get("root_blake3"):
                    lines.append(f"      BLAKE3 {safe_text(s['root_blake3'])}")
        if self.findings:
            lines.append("Pre-flight:")
            for f in self.findings:
                fd = _jsonable(f)
                if isinstance(fd, dict):
                    tag = f"[{safe_text(fd.get('level', '')).upper()}]"
                    lines.extend(
                        _wrap(
                            _safe(f"{fd.get('code', '')}: {fd.get('message', '')}"),
                            width,
                            f"  {tag:7}",
                            " " * 9,
                        )
                    )
                else:
                    lines.extend(_wrap(_safe(fd), width, "  ", "  "))
        if self.acknowledgements:
            lines.append("Warnings acknowledged:")
            for a in self.acknowledgements:
                ad = _jsonable(a)
                if isinstance(ad, dict):
                    text = (
                        f"{ad.get('code', '')}: {ad.get('message', '')} "
                        f"(by {ad.get('by', '?')} at {ad.get('at', '?')})"
                    )
                else:
                    text = str(ad)
                lines.extend(_wrap(_safe(text), width, "  [ACK]  ", " " * 9))
        adapt = self.details.get("adapt")
        if isinstance(adapt, dict) and adapt.get("steps") is not None:
            from rescueui.core.adapt import fixup_lines

            lines.append("Fix-ups of the restored system:")
            for line in fixup_lines(adapt):
                lines.extend(_wrap(_safe(line), width, "  ", "      "))
        extracted = self.details.get("files") if self.job == "extract" else None
        if isinstance(extracted, list) and extracted:
            from rescueui.core.files import extracted_lines

            lines.append(f"Extracted ({len(extracted)} entries):")
            for line in extracted_lines(extracted):
                lines.extend(_wrap(_safe(line), width, "  ", "      "))
        smaller = self.details.get("smaller")
        if isinstance(smaller, dict):
            from rescueui.core.smaller import smaller_lines

            lines.append("Onto a smaller target (files copied):")
            for line in smaller_lines(smaller):
                lines.extend(_wrap(_safe(line), width, "  ", "      "))
        vm = self.details.get("vm")
        if isinstance(vm, dict):
            from rescueui.core.vm import vm_lines

            vm_text = vm_lines(vm)
            if vm_text:
                lines.append("Virtual machine:")
            for line in vm_text:
                lines.extend(_wrap(_safe(line), width, "  ", "      "))
        for n in self.notes:
            add("Note:", n)
        for w in self.warnings:
            add("WARNING:", w)
        if self.error:
            add("Error:", self.error)
        if self.hint:
            add("Next step:", self.hint)
        # Every piece was escaped above; once more over the whole, so nothing added later
        # without it can reach the terminal raw.
        return _safe("\n".join(lines) + "\n")

    # -- writing --------------------------------------------------------------------
    def write(self, directory: str | Path | None) -> tuple[Path, Path]:
        """Write ``<job>-<timestamp>.json`` and ``.txt``; never raises.

        ``directory`` is the report folder inside the image folder (``<image>/reports``):
        the image folder is opened as given, the report folder inside it without following
        a symlink. When ``directory`` is None, cannot be written or is not a real folder,
        the report goes to ``/tmp/rescueui-reports`` (refused if it is a symlink, belongs to
        another user or others may write in it; then a new private ``mkdtemp`` folder),
        with a note saying why. File names never collide: ``-2``, ``-3``... are added.

        Returns the two paths written; they are also appended to ``report_files``. If
        nothing could be written anywhere, the paths returned do not exist and
        ``report_files`` is unchanged; ``text`` still holds the report for the screen.
        """
        try:
            return self._write(directory)
        except Exception:
            base = f"{_file_stem(self.job)}-{_stamp()}"
            return FALLBACK_DIR / f"{base}.json", FALLBACK_DIR / f"{base}.txt"

    def _render(self) -> None:
        try:
            self.text = self.to_text()
        except Exception as exc:  # a malformed field must not cost the report
            self.text = _safe(
                f"rescueui {self.job}: {self.outcome.upper()}\n"
                f"(the text form could not be made: {type(exc).__name__}; see the JSON report)\n"
            )

    def _write(self, directory: str | Path | None) -> tuple[Path, Path]:
        base = f"{_file_stem(self.job)}-{_stamp()}"
        self._render()
        failed_at: list[tuple[str, str]] = []  # (folder, why) of each folder that failed
        if directory is not None:
            folder = Path(directory)
            try:
                with _open_report_dir(folder) as d:
                    return self._write_into(d, base)
            except Exception as exc:
                failed_at.append((str(folder), _why(folder, exc)))
        for opener in (_open_fallback, _open_private):
            try:
                d = opener()
            except Exception as exc:
                if opener is _open_fallback:
                    failed_at.append((str(FALLBACK_DIR), _why(FALLBACK_DIR, exc)))
                continue
            with d:
                added = [
                    f"{NOTE_PREFIX} to {where} ({why}); kept in {d.path}."
                    for where, why in failed_at
                ]
                self.notes.extend(added)
                self._render()
                try:
                    return self._write_into(d, base)
                except Exception as exc:
                    failed_at.append((str(d.path), _why(d.path, exc)))
                    for note in added:
                        self.notes.remove(note)
                    self._render()
        raise OSError(errno.EIO, "no folder could take the report")

    def _write_into(self, folder: SafeDir, base: str) -> tuple[Path, Path]:
        """Create the two report files, new (O_EXCL, no symlink followed), under the
        first free name ``base``, ``base-2``, ... in ``folder``."""
        text = self.text.encode("utf-8")
        for n in range(1, MAX_NAME_TRIES + 1):
            stem = base if n == 1 else f"{base}-{n}"
            jname, tname = f"{stem}.json", f"{stem}.txt"
            if folder.exists(jname) or folder.exists(tname):
                continue
            jpath, tpath = folder.path / jname, folder.path / tname
            data = self.to_dict()
            data["report_files"] = [*self.report_files, str(jpath), str(tpath)]
            blob = json_text(data).encode("utf-8")
            try:
                folder.create(tname, text)
            except FileExistsError:
                continue
            try:
                folder.create(jname, blob)
            except FileExistsError:
                folder.unlink(tname)
                continue
            except BaseException:
                folder.unlink(tname)
                raise
            self.report_files += [str(jpath), str(tpath)]
            return jpath, tpath
        raise OSError(errno.EEXIST, f"no free report file name in {folder.path}")


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    """``text`` wrapped to ``width`` columns after the prefix ``first`` (then ``rest``);
    paths, hashes and other long words are never broken."""
    out: list[str] = []
    for i, para in enumerate(str(text).splitlines() or [""]):
        out += textwrap.wrap(
            para,
            width=max(width, len(first) + 20),
            initial_indent=first if i == 0 else rest,
            subsequent_indent=rest,
            break_long_words=False,
            break_on_hyphens=False,
        ) or [(first if i == 0 else rest).rstrip()]
    return out


def _file_stem(job: str) -> str:
    return _NAME_UNSAFE.sub("_", job)[:64] or "job"


def _open_report_dir(directory: Path) -> SafeDir:
    """``directory`` (``<image>/reports``): its parent, the image folder, is opened as the
    caller names it (made if missing, as a capture that failed early needs); the report
    folder inside it is made or opened without following a symlink."""
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    with SafeDir(Path(os.path.abspath(parent)), fd) as image_folder:
        return image_folder.subdir(directory.name, create=True)


def _open_fallback() -> SafeDir:
    """The shared fallback folder, refused when someone else could have prepared it."""
    d = SafeDir.open(FALLBACK_DIR, create=True, mode=0o755)
    try:
        st = os.fstat(d.fd)
        if st.st_uid != os.geteuid():
            raise UnsafeFileError(f"{FALLBACK_DIR} belongs to another user")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeFileError(f"others may write in {FALLBACK_DIR}")
    except BaseException:
        d.close()
        raise
    return d


def _open_private() -> SafeDir:
    """A new folder only this user can use (the last resort)."""
    return SafeDir.open(tempfile.mkdtemp(prefix="rescueui-reports-"))


def _why(path: Path, exc: BaseException) -> str:
    """Why a report folder could not be used, in words for the note."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link, which is not followed"
    if st is not None and not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if st is None and isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{path.parent} is not a folder"
    if isinstance(exc, RescueError):
        return exc.message.rstrip(".")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
