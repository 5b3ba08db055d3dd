"""A rich progress display on stderr for long CLI jobs (capture, verify, restore).

Fed by the engine's :class:`~rescueui.core.progress.Progress` snapshots through
:meth:`ProgressDisplay.callback` (cheap: it only stores numbers; rich repaints a few
times a second). Without a terminal on stderr it prints a plain line every 10 %.
Everything goes through :mod:`rescueui.cli.output`: the bar's columns read no markup and
every text in them is escaped; on a terminal the only control sequences are rich's own
(colours, cursor movement to repaint the bar).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rescueui.cli.output import console as safe_console
from rescueui.cli.output import echo, echo_block, echo_json, say
from rescueui.core import report as report_mod
from rescueui.core.errors import CancelledError, RescueError
from rescueui.core.progress import Progress as Snapshot
from rescueui.core.progress import ProgressCallback
from rescueui.core.report import JobReport
from rescueui.core.text import safe_text
from rescueui.core.units import human_duration, human_rate, human_size

if TYPE_CHECKING:  # Rich is imported when a live display is drawn (not for --quiet)
    from rich.console import Console
    from rich.progress import TaskID


class ProgressDisplay:
    """Progress on stderr: a live Rich bar on a terminal, else a plain line every 10 %.
    Rich is imported only for the live bar (a job's start-up time counts)."""

    def __init__(self, title: str, *, console: Console | None = None) -> None:
        self.title = title
        self.live = console.is_terminal if console is not None else os.isatty(2)
        self._last_tenth: object = -1
        self._started = False
        self._task: TaskID | None = None
        self._progress: Any = None
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(bar_width=None),
                TextColumn("{task.percentage:>5.1f}%", markup=False),
                TextColumn("{task.fields[done]} / {task.fields[size]}", markup=False),
                TextColumn("{task.fields[rate]}", markup=False),
                TextColumn("ETA {task.fields[eta]}", markup=False),
                TextColumn("{task.fields[chunk]}", markup=False),
                console=console or safe_console(stderr=True),
                refresh_per_second=4,
                transient=False,
            )

    def __enter__(self) -> ProgressDisplay:
        self._started = True
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(
                self.title, total=1, done="0 B", size="", rate="", eta="--:--", chunk=""
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update_bar(self, snap: Snapshot, description: str, rate: str) -> None:
        """The live bar (a terminal only)."""
        if self._progress is None or self._task is None:
            return
        self._progress.update(
            self._task,
            description=description,
            completed=snap.bytes_done,
            total=max(snap.bytes_total, 1),
            done=human_size(snap.bytes_done),
            size=human_size(snap.bytes_total),
            rate=rate,
            eta=human_duration(snap.eta),
            chunk=chunk_text(snap),
        )

    def callback(self, snap: Snapshot) -> None:
        if not self._started:
            return
        desc = safe_text(f"{self.title} {snap.stream or ''}".strip())
        self.update_bar(snap, desc, human_rate(snap.rate_now or snap.rate_avg))
        if not self.live and snap.bytes_total:
            tenth = int(snap.bytes_done * 10 // snap.bytes_total)
            if tenth != self._last_tenth:
                self._last_tenth = tenth
                say(
                    "{}: {} {} of {} {} ETA {}",
                    self.title,
                    f"{snap.bytes_done * 100 / snap.bytes_total:5.1f}%",
                    human_size(snap.bytes_done),
                    human_size(snap.bytes_total),
                    human_rate(snap.rate_avg),
                    human_duration(snap.eta),
                )


def chunk_text(snap: Snapshot) -> str:
    """The last chunk checked, e.g. ``p2#17 3f9a0c1b2d4e zero`` (escaped: it names a stream)."""
    c = snap.last_chunk
    if c is None:
        return ""
    return safe_text(f"{c.stream}#{c.index} {c.blake3[:12]}" + (" zero" if c.zero else ""))


@contextmanager
def cancel_on_interrupt() -> Iterator[threading.Event]:
    """An event set by Ctrl-C / SIGTERM, so the engine stops cleanly and writes its report."""
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if event.is_set():  # second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        event.set()
        say("\nrescueui: stopping (Ctrl-C again to abort at once)…")

    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


# The outcome of a job refused before it started; report.py may not know it yet.
REFUSED = "refused"


def refusal_report(
    job: str,
    exc: BaseException,
    *,
    folder: str | Path | None,
    **fields: Any,
) -> JobReport:
    """Write the report of a job refused before it started (nothing written) into ``folder``
    (the image's ``reports`` folder), or the fallback folder if that cannot be written."""
    report = JobReport(job=job, **fields)
    report.notes.append("Refused before the job started: nothing was written.")
    report.finish(REFUSED, exc)
    report.write(folder)
    return report


def report_where(report: JobReport | None) -> str:
    """``Report: <path>`` naming a report file that exists (the text one if there is one)."""
    files = [Path(f) for f in (report.report_files if report is not None else [])]
    existing = [f for f in files if f.is_file()]
    if not existing:
        return (
            f"No report file could be written (not even in {report_mod.FALLBACK_DIR}); "
            "this message is all there is."
        )
    texts = [f for f in existing if f.suffix == ".txt"]
    return f"Report: {(texts or existing)[-1]}"


def job_failed(
    job: str,
    exc: RescueError,
    *,
    as_json: bool,
    report_dir: str | Path | None = None,
    fields: dict[str, Any] | None = None,
    after: Callable[[RescueError], str | None] | None = None,
) -> int:
    """One paragraph on stderr for a failed, cancelled or refused job: cause, next step and
    the path of a report file that exists; the report as JSON on stdout with ``--json``.

    A job the engine refused before it started has no report yet: one is written here (in
    ``report_dir``, with ``fields`` for :class:`JobReport`). ``after`` may add a sentence
    (what was done about a file the run created). Returns the exit status."""
    report: JobReport | None = getattr(exc, "report", None)
    # The engine attaches its report once the job has started, and a refusal report when it
    # refused the job while planning it.
    refused = report is None or report.outcome == "refused"
    if report is None:
        report = refusal_report(job, exc, folder=report_dir, **(fields or {}))
    if as_json:
        echo_json(report.to_dict())
    if isinstance(exc, CancelledError) or report.outcome == "cancelled":
        state = "cancelled"
    else:
        state = "refused" if refused else "FAILED"
    msg = report.error or exc.message or "unknown error"
    parts = [msg, report.hint or exc.hint or "", action_words(exc)]
    if after is not None:
        parts.append(after(exc) or "")
    parts.append(report_where(report))
    say("rescueui {} {}: {}", job, state, " ".join(p for p in parts if p))
    return int(exc.exit_code or 1)


CLI_ACTIONS = {
    "resume": "(run the same command again with --resume)",
    "accept-warnings": "(--accept-warning CODE for each, or --accept-warnings for all)",
    "restore-partition": "(--partition N TARGET_PARTITION)",
    "whole-disk": "(leave out --partition)",
    "allow-mounted": "(--allow-mounted)",
    "new-name": "(another --name, or another file name)",
    "onto-image-medium": "(--onto-image-medium)",
}
"""How the command line offers the engine's next steps (``RescueError.action``)."""


def action_words(exc: RescueError) -> str:
    """The command-line form of the error's next step, or an empty string."""
    return CLI_ACTIONS.get(getattr(exc, "action", None) or "", "")


def run_job(
    job: str,
    call: Callable[[ProgressCallback | None, threading.Event], JobReport],
    *,
    quiet: bool,
    as_json: bool,
    display: ProgressDisplay | None = None,
    after: Callable[[RescueError], str | None] | None = None,
) -> int:
    """Run an engine job (capture, verify, restore) the way every CLI command does: Ctrl-C
    cancels cleanly, progress on stderr unless ``quiet``, the report (text or JSON) on
    stdout, one paragraph on stderr on failure (``after``: see :func:`job_failed`).
    Returns the exit status."""
    with cancel_on_interrupt() as cancel:
        try:
            if quiet:
                report = call(None, cancel)
            else:
                shown = display or ProgressDisplay(job)
                with shown:
                    report = call(shown.callback, cancel)
        except RescueError as exc:
            return job_failed(job, exc, as_json=as_json, after=after)
    if as_json:
        echo_json(report.to_dict())
    else:
        echo_block(report.text)
        for path in report.report_files:
            if os.path.isfile(path):
                echo("Report: {}", path)
    return 0
