"""Job reports: what ran, on what, how it ended — as JSON and as a short text.

Every capture, restore and verify run fills a :class:`JobReport` and writes it with
:meth:`JobReport.write`, also when the job failed or was cancelled. Writing never
raises: when the chosen folder is not writable (full image medium, read-only stick)
the report goes to ``/tmp/rescueui-reports`` instead, and when even that fails the
text is kept in memory (``report.text``) for the screen.
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rescueui.core.units import human_duration, human_rate, human_size

FALLBACK_DIR = Path("/tmp/rescueui-reports")
TEXT_WIDTH = 80  # the text report fits an 80-column console
LABEL_WIDTH = 13  # "Destination: "

OUTCOMES = ("running", "success", "failed", "cancelled")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
        word longer than that, e.g. a very long path, which is never broken)."""
        title = {
            "success": "SUCCESS",
            "failed": "FAILED",
            "cancelled": "CANCELLED",
            "running": "RUNNING",
        }[self.outcome]
        lines = [f"rescueui {self.job}: {title}"]

        def add(label: str, value: str) -> None:
            lines.extend(_wrap(value, width, f"{label:{LABEL_WIDTH}}", " " * LABEL_WIDTH))

        for label, value in (
            ("Source:", self.source),
            ("Image:", self.image_dir),
            ("Destination:", self.destination if self.destination != self.image_dir else None),
            ("Target:", self.target),
        ):
            if value:
                add(label, value)
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
                head = f"  {s.get('name', '?'):10} {human_size(int(s.get('size_bytes', 0))):>10}"
                if "start_bytes" in s:
                    head += f"  at byte {s.get('start_bytes', 0)}"
                if s.get("status"):
                    head += f"  [{s['status']}]"
                lines.append(head)
                if s.get("root_blake3"):
                    lines.append(f"      BLAKE3 {s['root_blake3']}")
        if self.findings:
            lines.append("Pre-flight:")
            for f in self.findings:
                fd = _jsonable(f)
                if isinstance(fd, dict):
                    tag = f"[{str(fd.get('level', '')).upper()}]"
                    lines.extend(
                        _wrap(
                            f"{fd.get('code', '')}: {fd.get('message', '')}",
                            width,
                            f"  {tag:7}",
                            " " * 9,
                        )
                    )
                else:
                    lines.extend(_wrap(str(fd), width, "  ", "  "))
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
                lines.extend(_wrap(text, width, "  [ACK]  ", " " * 9))
        for n in self.notes:
            add("Note:", n)
        for w in self.warnings:
            add("WARNING:", w)
        if self.error:
            add("Error:", self.error)
        if self.hint:
            add("Next step:", self.hint)
        return "\n".join(lines) + "\n"

    # -- writing --------------------------------------------------------------------
    def write(self, directory: str | Path | None) -> tuple[Path, Path]:
        """Write ``<job>-<timestamp>.json`` and ``.txt``; never raises.

        Falls back to ``/tmp/rescueui-reports`` when ``directory`` is None or not
        writable. Returns the two paths (of the fallback if used). The paths are
        also appended to ``report_files``.
        """
        self.text = self.to_text()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        candidates = [Path(directory)] if directory is not None else []
        candidates.append(FALLBACK_DIR)
        last_paths = (
            FALLBACK_DIR / f"{self.job}-{stamp}.json",
            FALLBACK_DIR / f"{self.job}-{stamp}.txt",
        )
        for folder in candidates:
            base = f"{self.job}-{stamp}"
            try:
                folder.mkdir(parents=True, exist_ok=True)
                n = 1
                while (folder / f"{base}.json").exists() or (folder / f"{base}.txt").exists():
                    n += 1
                    base = f"{self.job}-{stamp}-{n}"
                jpath, tpath = folder / f"{base}.json", folder / f"{base}.txt"
                if folder != candidates[0] and directory is not None:
                    self.notes.append(
                        f"Report could not be written to {directory}; kept in {folder}."
                    )
                    self.text = self.to_text()
                data = self.to_dict()
                data["report_files"] = [*self.report_files, str(jpath), str(tpath)]
                _write(jpath, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
                _write(tpath, self.text)
                self.report_files += [str(jpath), str(tpath)]
                return jpath, tpath
            except Exception:
                for p in (folder / f"{base}.json", folder / f"{base}.txt"):
                    try:
                        p.unlink(missing_ok=True)
                    except OSError:
                        pass
                continue
        return last_paths


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


def _write(path: Path, text: str) -> None:
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
