"""A running engine job (restore, capture, verify image, extract files) with live panels.

The engine runs in a worker thread. Its progress callback only stores the latest snapshot and
appends to a bounded list of rate samples; a timer repaints four times a second, so the screen
never slows the copy.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static

from rescueui.core.errors import CancelledError, CorruptImageError, RescueError, VerifyError
from rescueui.core.progress import Progress
from rescueui.core.units import human_duration, human_size
from rescueui.tui.screens.base import StepScreen
from rescueui.tui.text import esc, plain
from rescueui.tui.widgets.bars import BlockBar
from rescueui.tui.widgets.bignum import BigNumber
from rescueui.tui.widgets.checksums import checks_title, checksum_text
from rescueui.tui.widgets.graph import ThroughputGraph
from rescueui.tui.widgets.steps import StepsBar

MAX_SAMPLES = 600

# The engine's phase names in words (others are shown as the engine names them).
PHASE_WORDS = {
    "map": "Used-block maps",
    "capture": "Reading, hashing and compressing",
    "write": "Writing (each chunk checked before it is written)",
    "verify": "Read-back verify of the target",
    "adapt": "Adapting the restored system to the machine (fix-ups)",
    "convert": "Writing the VM disk in its format (qemu-img convert)",
    "compare": "Reading the VM disk back and comparing it with the restored disk",
    "extract": "Copying the files out of the image (a SHA-256 of each file)",
    "table": "Writing the new partition table (onto a smaller disk)",
    "copy": "Copying partitions block for block, or files into filesystems made again",
    "check": "Checking the new filesystem (its own fsck, changing nothing)",
}
# The phase bar's label: the phase's name, cut to 6 letters where it has no label here.
PHASE_LABELS = {"convert": "convert", "compare": "compare", "extract": "files"}
# Phases of steps rather than bytes: the engine's message (the step being done now) gets a
# line of its own; no bytes move (no phase bar, no stream, no rate now).
STEP_PHASES = ("adapt", "table", "check")

JobFn = Callable[..., Any]  # (progress=, cancel=) -> JobReport


@dataclass
class ImageFacts:
    """What the job screen shows about the image: read from the image itself (any kind)."""

    roots: dict[str, str] = field(default_factory=dict)  # our folders: stream -> root BLAKE3
    integrity_code: str = ""  # the kind's Integrity: "chunk-blake3", "range-sha256", "none"
    integrity_words: str = ""
    description: str = ""
    size_is_estimate: bool = False


def image_facts(image_dir: Any) -> ImageFacts:
    """Open the image (any kind, measured: the size a restore's progress counts towards) and
    read what the panels show. An image that cannot be opened gives no facts: the job itself
    then fails with the reason."""
    from rescueui.core.images import open_image

    try:
        image = open_image(image_dir)
    except Exception:  # RescueError or worse: the job reports it in its own words
        return ImageFacts()
    try:
        roots = {}
        if image.kind == "rescueui":
            roots = {s.name: s.root_blake3 for s in image.manifest.streams}
        return ImageFacts(
            roots=roots,
            integrity_code=image.integrity.code,
            integrity_words=image.integrity.words,
            description=image.describe(),
            size_is_estimate=bool(getattr(image, "size_is_estimate", False)),
        )
    except Exception:
        return ImageFacts()
    finally:
        image.close()


class JobScreen(StepScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x", "cancel", "Cancel job", id="cancel"),
        Binding("escape", "cancel", "Cancel job", show=False),
        Binding("enter", "report", "Show report", priority=True, id="report"),
    ]

    def __init__(
        self, kind: str, title: str, job: JobFn, *, image_dir: Any, context: dict[str, Any]
    ) -> None:
        super().__init__()
        self.kind = kind
        self.STEP = "Restore" if kind == "restore" else ""
        self.title_text = title
        self.job = job
        self.image_dir = image_dir
        self.context = context
        self.cancel_event = threading.Event()
        self.latest: Progress | None = None
        self.samples: deque[float] = deque(maxlen=MAX_SAMPLES)
        self._last_sample = 0.0
        self.mismatch: Any = None
        self.report: Any = None
        self.error: BaseException | None = None
        self.finished = False
        self.facts = ImageFacts()

    # -- factories (the job functions come from the session: the core) --
    @classmethod
    def restore(
        cls,
        image: Any,
        confirmed: Any,
        disk: Any,
        *,
        resume: bool = False,
        partition: int | None = None,
        part: Any = None,
        accepted_codes: tuple[str, ...] = (),
        exact: bool = False,
        adapt: Any = None,
    ) -> JobScreen:
        """``accepted_codes``: the pre-flight warnings the operator acknowledged one by one
        (the core refuses the restore if any other warning comes up). ``exact``: the space no
        filesystem uses is made zero on any target (the core decides where it is otherwise).
        ``adapt``: the fix-ups of the restored system the pre-flight showed (the core's
        AdaptOptions; None for a partition restore)."""

        def job(*, session: Any, progress: Any, cancel: threading.Event) -> Any:
            return session.restore(
                image.path,
                confirmed,
                progress=progress,
                cancel=cancel,
                resume=resume,
                partition=partition,
                accepted_codes=accepted_codes,
                exact=exact,
                adapt=adapt,
            )

        name = image.name
        label = getattr(image, "kind_label", "")
        if label and label != "rescueui":
            name = f"{name} ({label})"  # the kind, where it is not our own folder
        what = f"partition {partition} of {name}" if partition else name
        where = part.path if part is not None else disk.path
        mode = " (exact: unused space made zero)" if exact else ""
        return cls(
            "restore",
            f"{'Resume' if resume else 'Restore'} {what} -> {where}{mode}",
            job,
            image_dir=image.path,
            context={
                "image": image,
                "disk": disk,
                "confirmed": confirmed,
                "partition": partition,
                "part": part,
                "accepted_codes": accepted_codes,
                "exact": exact,
                "adapt": adapt,
            },
        )

    @classmethod
    def restore_vm(
        cls,
        image: Any,
        request: Any,
        *,
        name: str | None = None,
        accepted_codes: tuple[str, ...] = (),
        adapt: Any = None,
    ) -> JobScreen:
        """A restore into a new virtual machine's disk (``request``: the core's VmRequest;
        ``name``: the VM's name as its pre-flight planned it, for the title)."""

        def job(*, session: Any, progress: Any, cancel: threading.Event) -> Any:
            return session.restore_to_vm(
                image.path,
                request,
                progress=progress,
                cancel=cancel,
                accepted_codes=accepted_codes,
                adapt=adapt,
            )

        label = getattr(image, "kind_label", "")
        shown = f"{image.name} ({label})" if label and label != "rescueui" else image.name
        vm = f"new VM {name}" if name else "a new VM"
        return cls(
            "restore",
            f"Restore {shown} -> {vm} in {request.folder}",
            job,
            image_dir=image.path,
            context={
                "image": image,
                "vm": request,
                "accepted_codes": accepted_codes,
                "adapt": adapt,
            },
        )

    @classmethod
    def capture(cls, disk: Any, image_dir: str, *, all_blocks: bool = False) -> JobScreen:
        """``all_blocks``: read every byte of every partition (default: only the blocks
        each filesystem uses)."""

        def job(*, session: Any, progress: Any, cancel: threading.Event) -> Any:
            return session.capture(
                disk.path, image_dir, progress=progress, cancel=cancel, all_blocks=all_blocks
            )

        mode = " (every byte)" if all_blocks else ""
        return cls(
            "capture",
            f"Capture {disk.path} -> {image_dir}{mode}",
            job,
            image_dir=image_dir,
            context={"disk": disk, "all_blocks": all_blocks},
        )

    @classmethod
    def verify(cls, image: Any) -> JobScreen:
        def job(*, session: Any, progress: Any, cancel: threading.Event) -> Any:
            return session.verify(image.path, progress=progress, cancel=cancel)

        return cls(
            "verify",
            f"Verify image {image.path}",
            job,
            image_dir=image.path,
            context={"image": image},
        )

    @classmethod
    def extract(
        cls,
        image: Any,
        partition: int,
        paths: list[str],
        dest: str,
        *,
        allow_image_medium: bool = False,
    ) -> JobScreen:
        """Files and folders (``paths`` inside image partition ``partition``) copied into
        the folder ``dest``; ``allow_image_medium``: the operator chose the image's own
        medium explicitly."""

        def job(*, session: Any, progress: Any, cancel: threading.Event) -> Any:
            return session.extract(
                image.path,
                partition,
                paths,
                dest,
                allow_image_medium=allow_image_medium,
                progress=progress,
                cancel=cancel,
            )

        what = paths[0] if len(paths) == 1 else f"{len(paths)} items"
        return cls(
            "extract",
            f"Extract {what} from partition {partition} of {image.name} -> {dest}",
            job,
            image_dir=image.path,
            context={
                "image": image,
                "partition": partition,
                "paths": list(paths),
                "dest": dest,
                "allow_image_medium": allow_image_medium,
            },
        )

    def compose(self) -> ComposeResult:
        g = self.glyphs
        yield StepsBar(self.STEP, demo=self.session.is_demo)
        # the title names the image and the target (outside text): shown escaped
        yield Static(plain(self.title_text, style="bold"), id="job-title")
        yield Static("Starting...", id="phase")
        yield BlockBar(g, id="bar-total")
        yield BlockBar(g, id="bar-phase")
        yield Static("", id="numbers")
        with Horizontal(id="rates"):
            yield BigNumber("Now", "MB/s", g, id="rate-now")
            yield BigNumber("Average", "MB/s", g, id="rate-avg")
        yield ThroughputGraph(g, id="graph")
        with Vertical(id="checksums-box"):
            yield Static("", id="checksums")
        yield Static("", id="alarm")
        yield Static("", id="outcome")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#checksums-box").border_title = "BLAKE3 checks"
        # an extraction reads through the partition's view, which checks each chunk of our
        # images before serving it: no chunks to show here, its files are hashed instead
        self.query_one("#checksums-box").display = self.kind != "extract"
        self.query_one("#alarm").display = False
        if self.kind != "capture":
            image = self.context.get("image")
            opening = "Opening the image..."
            if getattr(image, "size_is_estimate", False):
                opening = (
                    "Opening the image: its compressed stream records no size, so it is "
                    "decompressed once to measure it..."
                )
            if self.kind == "extract":
                opening = (
                    f"Opening partition {self.context.get('partition')} read-only and counting "
                    "the bytes to copy..."
                )
            self.query_one("#phase", Static).update(opening)
        self.set_interval(self.rescue.repaint_interval, self.repaint)
        self.run_job()

    def use_facts(self, facts: ImageFacts) -> None:
        self.facts = facts
        if facts.integrity_code:
            self.query_one("#checksums-box").border_title = checks_title(facts.integrity_code)
        if facts.description and self.latest is None:
            self.query_one("#phase", Static).update(Text(f"Starting: {esc(facts.description)}"))

    # -- engine side (worker thread) -------------------------------------
    def on_progress(self, p: Progress) -> None:
        """Called by the engine thread for every chunk: store, sample, nothing else."""
        self.latest = p
        if p.last_chunk is not None and not p.last_chunk.ok and self.mismatch is None:
            self.mismatch = p.last_chunk
        now = time.monotonic()
        # the first second's "rate now" is start-up noise (empty pipeline, tiny window)
        if (
            p.elapsed >= self.rescue.graph_warmup
            and now - self._last_sample >= self.rescue.sample_every
        ):
            self._last_sample = now
            self.samples.append(p.rate_now)
        if self.rescue.job_throttle:
            time.sleep(self.rescue.job_throttle)

    @work(thread=True, exclusive=True, exit_on_error=False, group="job")
    def run_job(self) -> None:
        report: Any = None
        error: BaseException | None = None
        if self.kind not in ("capture", "extract"):  # an extraction counts its files instead
            # measured, as the restore counts it; a size measured here is remembered, so the
            # restore does not decompress the stream a second time to count it
            self.app.call_from_thread(self.use_facts, image_facts(self.image_dir))
        try:
            report = self.job(
                session=self.session, progress=self.on_progress, cancel=self.cancel_event
            )
        except RescueError as exc:
            error = exc
            report = getattr(exc, "report", None)
        except Exception as exc:  # an engine bug: show it, do not crash the console
            error = exc
        self.app.call_from_thread(self.job_done, report, error)

    # -- UI side ---------------------------------------------------------
    def job_done(self, report: Any, error: BaseException | None) -> None:
        self.finished = True
        self.report = report
        self.error = error
        outcome = getattr(report, "outcome", None) or ("failed" if error else "success")
        if isinstance(error, CancelledError):
            outcome = "cancelled"
        self.outcome = outcome
        if error is not None and isinstance(error, CorruptImageError | VerifyError):
            self.mismatch = self.mismatch or error
        report_error = getattr(report, "error", None)
        if (
            self.mismatch is None
            and outcome == "failed"
            and report_error
            and "mismatch" in str(report_error).lower()
        ):
            self.mismatch = report_error
        self.repaint()
        line = self.query_one("#outcome", Static)
        label = {"success": "FINISHED: SUCCESS", "cancelled": "CANCELLED", "failed": "FAILED"}.get(
            outcome, outcome.upper()
        )
        msg = str(error) if error else (report_error or "")
        line.update(
            Text(
                f" {label} {('- ' + esc(msg)) if msg else ''}  Enter: report ",
                style="bold reverse",
            )
        )
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return not self.finished
        if action == "report":
            return self.finished
        return True

    def repaint(self) -> None:
        p = self.latest
        if self.mismatch is not None:
            alarm = self.query_one("#alarm", Static)
            alarm.display = True
            alarm.update(self._alarm_text())
        if p is None:
            return
        phase = PHASE_WORDS.get(p.phase, p.phase)
        steps = p.phase in STEP_PHASES
        stream = f"  stream {esc(p.stream)}" if p.stream and not steps else ""
        if steps and p.message:
            line = Text(f"Phase: {esc(phase)}\n")
            line.append("Now: ", style="bold")
            line.append(esc(p.message))
        else:
            msg = f"  {esc(p.message)}" if p.message else ""
            line = Text(f"Phase: {esc(phase)}{stream}{msg}")
        self.query_one("#phase", Static).update(line)
        total = self.query_one("#bar-total", BlockBar)
        total.fraction = p.fraction
        total.label = "job"
        ph = self.query_one("#bar-phase", BlockBar)
        ph.display = not steps and self.kind != "extract"  # one phase: the job's own bar
        ph.fraction = p.phase_bytes_done / p.phase_bytes_total if p.phase_bytes_total else 0.0
        ph.label = PHASE_LABELS.get(p.phase, p.phase[:6])
        of = human_size(p.bytes_total)
        if self.facts.size_is_estimate:  # not for a measured image (a restore measures it)
            of = f"about {of} (estimated)"
        if not p.bytes_total and p.phase in ("start", "map"):
            # a capture counts the bytes it reads once each filesystem's map is known
            numbers = f"elapsed {human_duration(p.elapsed)}   bytes to read: not known yet"
        else:
            eta = human_duration(p.eta) if not self.finished else "00:00"
            numbers = (
                f"{human_size(p.bytes_done)} of {of}   "
                f"elapsed {human_duration(p.elapsed)}   ETA {eta}"
            )
        self.query_one("#numbers", Static).update(numbers)
        self.query_one("#rate-now", BigNumber).value = f"{0 if steps else p.rate_now / 1e6:.1f}"
        self.query_one("#rate-avg", BigNumber).value = f"{p.rate_avg / 1e6:.1f}"
        self.query_one(ThroughputGraph).set_samples(self.samples)
        if self.kind == "extract":
            return
        width = self.query_one("#checksums-box").size.width - 2
        self.query_one("#checksums", Static).update(
            checksum_text(
                p, self.facts.roots, self.mismatch, width, integrity=self.facts.integrity_code
            )
        )

    def _alarm_text(self) -> Text:
        m = self.mismatch
        if isinstance(m, BaseException) or isinstance(m, str):
            detail = esc(m)
        else:
            detail = (
                f"stream {esc(m.stream)}, chunk {m.index}, offset {m.offset}: BLAKE3 "
                f"{esc(m.blake3[:16])}... does not match the image index"
            )
        if self.kind == "extract":
            return Text(
                f"!!! THE IMAGE IS DAMAGED - EXTRACTION STOPPED !!!\n{detail}\n"
                "What was extracted before is listed in the report. Use another copy of the "
                "image.",
                style="bold reverse",
            )
        return Text(
            f"!!! CHECKSUM MISMATCH - THE IMAGE IS DAMAGED - RESTORE STOPPED !!!\n{detail}\n"
            "Do not use this target. Use another copy of the image.",
            style="bold reverse",
        )

    def on_unmount(self) -> None:
        self.cancel_event.set()  # leaving the app mid-job stops the engine cleanly

    def action_cancel(self) -> None:
        from rescueui.tui.screens.dialogs import CancelJobDialog

        if self.finished:
            return

        def answer(yes: bool | None) -> None:
            if yes and not self.finished:
                self.cancel_event.set()
                self.query_one("#outcome", Static).update(
                    Text(" Stopping... ", style="bold reverse")
                )

        detail = None
        if self.kind == "extract":
            detail = (
                "What was extracted so far stays in the folder and is listed in the report; "
                "the file being copied is left incomplete."
            )
        if self.context.get("vm") is not None:
            detail = (
                "The new VM's files made so far are removed again; nothing else was written. "
                "Its restore cannot be resumed: start it again."
            )
        self.app.push_screen(CancelJobDialog(self.kind, detail), answer)

    def action_report(self) -> None:
        from rescueui.tui.screens.report import ReportScreen

        if not self.finished:
            return
        self.app.push_screen(ReportScreen(self))
