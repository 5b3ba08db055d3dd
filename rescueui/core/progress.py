"""Progress by bytes over a whole job, with current/average rate and ETA.

The engine owns a :class:`ProgressMeter` and calls :meth:`ProgressMeter.advance`
as chunks pass; every call produces a :class:`Progress` snapshot handed to the
front end's callback. Callbacks must be cheap (store the latest snapshot); the
front end samples it a few times a second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ChunkEvent:
    """One chunk that just passed its BLAKE3 check (or failed it)."""

    stream: str
    index: int
    offset: int
    length: int
    blake3: str
    ok: bool
    zero: bool = False
    # False: nothing to check it against (an image kind without checksums, write phase):
    # its BLAKE3 was computed as it was read, for the read-back verify.
    checked: bool = True


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running job. Byte counts are over the whole job."""

    job: str  # "restore", "capture", "verify-image"
    phase: str  # e.g. "partition-table", "write", "verify", "capture", "grow", "done"
    bytes_done: int
    bytes_total: int
    phase_bytes_done: int = 0
    phase_bytes_total: int = 0
    rate_now: float = 0.0  # bytes/s over the last few seconds
    rate_avg: float = 0.0  # bytes/s since the start of the job
    elapsed: float = 0.0
    eta: float | None = None  # seconds
    chunks_done: int = 0
    chunks_total: int = 0
    stream: str | None = None
    stream_chunks_done: int = 0
    stream_chunks_total: int = 0
    last_chunk: ChunkEvent | None = None
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 0.0


ProgressCallback = Callable[[Progress], None]


def _ignore(_: Progress) -> None:
    return None


@dataclass
class ProgressMeter:
    """Thread-safe accumulator that turns byte counts into :class:`Progress` snapshots."""

    job: str
    bytes_total: int
    callback: ProgressCallback = _ignore
    window: float = 3.0
    clock: Callable[[], float] = time.monotonic
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _start: float = field(default=0.0, repr=False)
    _samples: deque[tuple[float, int]] = field(default_factory=deque, repr=False)
    _last: Progress | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._start = self.clock()
        self._samples.append((self._start, 0))
        self._last = Progress(
            job=self.job, phase="start", bytes_done=0, bytes_total=self.bytes_total
        )

    @property
    def last(self) -> Progress:
        assert self._last is not None
        return self._last

    def update(self, **changes: object) -> Progress:
        """Change fields other than byte counts (phase, stream, message...) and notify."""
        with self._lock:
            snap = replace(self.last, **changes)  # type: ignore[arg-type]
            self._last = snap
        self.callback(snap)
        return snap

    def advance(
        self, nbytes: int, *, phase_bytes: int | None = None, **changes: object
    ) -> Progress:
        """Add ``nbytes`` done and notify. ``changes`` sets other fields of the snapshot."""
        with self._lock:
            now = self.clock()
            prev = self.last
            done = prev.bytes_done + nbytes
            self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
                self._samples.popleft()
            t0, b0 = self._samples[0]
            rate_now = (done - b0) / (now - t0) if now > t0 else prev.rate_now
            elapsed = now - self._start
            rate_avg = done / elapsed if elapsed > 0 else 0.0
            rate_for_eta = rate_now or rate_avg
            remaining = max(self.bytes_total - done, 0)
            eta = remaining / rate_for_eta if rate_for_eta > 0 else None
            phase_done = prev.phase_bytes_done + nbytes if phase_bytes is None else phase_bytes
            snap = replace(
                prev,
                bytes_done=done,
                phase_bytes_done=phase_done,
                rate_now=rate_now,
                rate_avg=rate_avg,
                elapsed=elapsed,
                eta=eta,
                **changes,  # type: ignore[arg-type]
            )
            self._last = snap
        self.callback(snap)
        return snap
