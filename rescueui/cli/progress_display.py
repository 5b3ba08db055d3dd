"""A rich progress display on stderr for long CLI jobs (capture, verify, restore).

Fed by the engine's :class:`~rescueui.core.progress.Progress` snapshots through
:meth:`ProgressDisplay.callback` (cheap: it only stores numbers; rich repaints a few
times a second). Without a terminal on stderr it prints a plain line every 10 %.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from rescueui.core.progress import Progress as Snapshot
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
