"""A rich progress display on stderr for long CLI jobs (capture, verify, restore).

Fed by the engine's :class:`~rescueui.core.progress.Progress` snapshots through
:meth:`ProgressDisplay.callback` (cheap: it only stores numbers; rich repaints a few
times a second). Without a terminal on stderr it prints a plain line every 10 %.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from rescueui.core.errors import CancelledError, RescueError
from rescueui.core.progress import Progress as Snapshot
from rescueui.core.progress import ProgressCallback
from rescueui.core.report import JobReport
from rescueui.core.units import human_duration, human_rate, human_size


class ProgressDisplay:
    def __init__(self, title: str, *, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.title = title
        self.live = self.console.is_terminal
        self._last_tenth = -1
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[done]} / {task.fields[size]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[chunk]}"),
            console=self.console,
            refresh_per_second=4,
            transient=False,
            disable=not self.live,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        self._task = self._progress.add_task(
            self.title, total=1, done="0 B", size="", rate="", eta="--:--", chunk=""
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def callback(self, snap: Snapshot) -> None:
        if self._task is None:
            return
        chunk = ""
        if snap.last_chunk is not None:
            c = snap.last_chunk
            chunk = f"{c.stream}#{c.index} {c.blake3[:12]}" + (" zero" if c.zero else "")
        desc = f"{self.title} {snap.stream or ''}".strip()
        self._progress.update(
            self._task,
            description=desc,
            completed=snap.bytes_done,
            total=max(snap.bytes_total, 1),
            done=human_size(snap.bytes_done),
            size=human_size(snap.bytes_total),
            rate=human_rate(snap.rate_now or snap.rate_avg),
            eta=human_duration(snap.eta),
            chunk=chunk,
        )
        if not self.live and snap.bytes_total:
            tenth = int(snap.bytes_done * 10 // snap.bytes_total)
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                print(
                    f"{self.title}: {snap.bytes_done * 100 / snap.bytes_total:5.1f}% "
                    f"{human_size(snap.bytes_done)} of {human_size(snap.bytes_total)} "
                    f"{human_rate(snap.rate_avg)} ETA {human_duration(snap.eta)}",
                    file=sys.stderr,
                    flush=True,
                )


@contextmanager
def cancel_on_interrupt() -> Iterator[threading.Event]:
    """An event set by Ctrl-C / SIGTERM, so the engine stops cleanly and writes its report."""
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():  # second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        event.set()
        print("\nrescueui: stopping (Ctrl-C again to abort at once)…", file=sys.stderr)

    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def job_failed(job: str, exc: RescueError, *, as_json: bool) -> int:
    """One paragraph on stderr for a failed or cancelled job (cause, next step, report path);
    the report as JSON on stdout with ``--json``. Returns the exit status."""
    report = getattr(exc, "report", None)
    if report is not None and as_json:
        print(json.dumps(report.to_dict(), indent=2))
    files = report.report_files if report is not None else []
    where = f" Report: {files[0]}" if files else ""
    cancelled = isinstance(exc, CancelledError) or (
        report is not None and report.outcome == "cancelled"
    )
    state = "cancelled" if cancelled else "FAILED"
    msg = (report.error if report is not None else None) or exc.message or "unknown error"
    hint_text = (report.hint if report is not None else None) or exc.hint
    hint = f" {hint_text}" if hint_text else ""
    print(f"rescueui {job} {state}: {msg}{hint}{where}", file=sys.stderr, flush=True)
    return int(exc.exit_code or 1)


def run_job(
    job: str,
    call: Callable[[ProgressCallback | None, threading.Event], JobReport],
    *,
    quiet: bool,
    as_json: bool,
    display: ProgressDisplay | None = None,
) -> int:
    """Run an engine job (capture, verify, restore) the way every CLI command does: Ctrl-C
    cancels cleanly, progress on stderr unless ``quiet``, the report (text or JSON) on
    stdout, one paragraph on stderr on failure. Returns the exit status."""
    with cancel_on_interrupt() as cancel:
        try:
            if quiet:
                report = call(None, cancel)
            else:
                shown = display or ProgressDisplay(job)
                with shown:
                    report = call(shown.callback, cancel)
        except RescueError as exc:
            return job_failed(job, exc, as_json=as_json)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.text, end="")
        for path in report.report_files:
            print(f"Report: {path}")
    return 0
