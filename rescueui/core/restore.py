"""Restore an image onto a confirmed target: plan (no write), then restore.

::

    confirmed = confirm_target("/dev/sdb", typed_code)          # identity.py
    plan = plan_restore(image_dir, confirmed)                     # fit + safety + pre-flight
    try:
        report = restore(plan, progress=callback, cancel=event)   # writes, verifies, reports
    except RescueError as exc:                                    # failed or cancelled:
        report = exc.report                                       # written all the same

:func:`plan_restore` writes nothing; it raises on anything that refuses the job (image
damaged, target unsafe or too small, pre-flight stop or unacknowledged warnings).

:func:`restore` takes the machine-wide writer lock, re-checks the target's identity and
opens it with ``O_EXCL``, writes (whole disk: the partition tables first — they are in the
``head`` and GPT ``tail`` streams, bit for bit —, then every stream at its place and the
uncovered ranges of the image extent as zeros; partition mode: one stream into the
partition), ``fdatasync`` s, reads everything back with ``O_DIRECT`` and compares the
hashes, then tells the kernel about the new partitions. Like
:func:`rescueui.core.capture.capture` and :func:`rescueui.core.verify.verify_image`, it
returns the :class:`~rescueui.core.report.JobReport` (also written next to the image, in
``IMAGE_DIR/reports``) only on success (``report.outcome == "success"``). On failure or
cancel it writes the report first (outcome ``"failed"`` / ``"cancelled"``), then raises a
:class:`~rescueui.core.errors.RescueError` (``CancelledError``, ``RestoreError``,
``CorruptImageError``, ``TargetChangedError``, ``LockError``, ...) with that report
attached as ``exc.report``. An unexpected exception (a bug) is wrapped into a
``RescueError`` saying so, also with ``exc.report``; the original is its ``__cause__``.

An interrupted restore leaves a journal (see :mod:`rescueui.core.journal`); with
``resume=True`` the restore re-verifies what the journal says is on the disk and
continues after it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rescueui.core import parttable
from rescueui.core import preflight as preflight_mod
from rescueui.core import smaller as smaller_mod
from rescueui.core.errors import (
    CancelledError,
    ImageError,
    JournalError,
    RescueError,
    RestoreError,
    TargetChangedError,
    TargetTooSmallError,
    UnsafeTargetError,
)
from rescueui.core.identity import ConfirmedTarget, DiskIdentity, recheck
from rescueui.core.image import Image, StreamEntry
from rescueui.core.images import ForeignImage, open_image
from rescueui.core.journal import Journal, find_journal
from rescueui.core.lock import WriterLock
from rescueui.core.pipeline import (
    BufferPool,
    Segment,
    SegmentTable,
    device_error,
    verify_segments,
    write_segments,
)
from rescueui.core.progress import ChunkEvent, ProgressCallback, ProgressMeter
from rescueui.core.report import JobReport
from rescueui.core.target import TargetHandle, check_target_safety, open_target
from rescueui.core.targets.rule import check_fit
from rescueui.core.targets.unused import (
    UnusedSpace,
    describe_left,
    probe_zeroing,
    unused_space,
)
from rescueui.core.units import MiB, human_size

DEFAULT_WORKERS = 2
# A checkpoint flushes the target and writes the journal on the image medium (about 20 ms
# here); a resume re-checks at most this much written after the last one.
DEFAULT_CHECKPOINT_BYTES = 256 * MiB
POOL_EXTRA = 4  # buffers beyond one per decoder: the write queue holds some, and decoders
# must find one free when they finish, or they idle until the coordinator wakes up


@dataclass
class RestorePlan:
    """Everything decided before the first write. Built by :func:`plan_restore`."""

    image: Image | ForeignImage
    target: ConfirmedTarget
    partition: int | None = None
    verify: bool = True
    resume: bool = False
    grow: bool = True
    accept_warnings: bool = False
    accepted_codes: tuple[str, ...] = ()  # warnings the operator acknowledged one by one
    findings: list[Any] = field(default_factory=list)
    acknowledgements: list[Any] = field(default_factory=list)
    target_info: preflight_mod.TargetInfo | None = None
    disk: Any = None  # disks.Disk of the target's disk (None for files / unknown)
    needed_bytes: int = 0
    stream: StreamEntry | None = None  # partition mode: the image partition restored
    workers: int = DEFAULT_WORKERS
    checkpoint_bytes: int = DEFAULT_CHECKPOINT_BYTES
    lock_path: str | None = None  # None: rescueui.core.lock.default_lock_path()
    zero_ranges: bool = True  # False: write zero chunks as plain writes (benchmarks)
    exact: bool = False  # True: make the space no filesystem uses zero too, on any target
    adapt: Any = None  # adapt.plan.AdaptPlan: the fix-ups after the restore (None: none)
    final_step: FinalStep | None = None  # e.g. the virtual machine made of the restored disk
    smaller: Any = None  # smaller.SmallerPlan: onto a smaller disk, files copied (None: blocks)
    unused: UnusedSpace = field(
        default_factory=lambda: UnusedSpace(True, "not decided")  # set by plan_restore
    )

    @property
    def identity(self) -> DiskIdentity:
        return self.target.identity

    @property
    def mode(self) -> str:
        return "partition" if self.partition is not None else "disk"

    @property
    def writes(self) -> str:
        """What the restore writes, in a few words (for the confirmation screen)."""
        if self.partition is not None and self.smaller is not None:
            return (
                f"partition {self.partition} of the image: its filesystem made again on the "
                "smaller partition, its files copied"
            )
        if self.partition is not None:
            return f"partition {self.partition} of the image, {human_size(self.needed_bytes)}"
        if self.smaller is not None:
            return (
                f"the image's {len(self.smaller.partitions)} partitions laid out anew for the "
                f"smaller disk ({human_size(self.needed_bytes)}), their files copied"
            )
        return f"the whole disk image, {human_size(self.needed_bytes)}"

    def destroys(self) -> list[str]:
        """What is on the target now and will be overwritten (for the confirmation screen)."""
        if self.disk is None and self.target_info is not None:
            parts = self.target_info.partitions
            if parts:
                lines = [f"{self.identity.path}: {human_size(self.identity.size_bytes)}"]
                for p in parts:
                    bits = [
                        str(p.get("path") or p.get("number")),
                        human_size(p.get("size_bytes") or 0),
                    ]
                    bits += [str(p[k]) for k in ("fs_type", "label", "part_label") if p.get(k)]
                    lines.append("  " + ", ".join(bits))
                return lines
        return describe_destroyed(self.identity, self.disk)


# ------------------------------------------------------------------ planning


def describe_destroyed(ident: DiskIdentity, disk: Any) -> list[str]:
    """Human lines naming what the target holds now (partitions, labels, filesystems, sizes)."""
    lines: list[str] = []
    if disk is None:
        lines.append(f"{ident.path}: {human_size(ident.size_bytes)} (contents unknown)")
        return lines
    parts = list(getattr(disk, "partitions", []) or [])
    if ident.partition:
        parts = [p for p in parts if tuple(p.devnum) == ident.devnum]
    else:
        table = getattr(disk, "table_type", None)
        lines.append(
            f"{disk.path}: {human_size(disk.size_bytes)}, "
            + (f"{table.upper()} partition table" if table else "no partition table")
            + (f", {disk.fs_type} filesystem" if getattr(disk, "fs_type", None) else "")
        )
    for p in parts:
        bits = [p.path, human_size(p.size_bytes)]
        if p.fs_type:
            bits.append(p.fs_type)
        if p.label:
            bits.append(f"label '{p.label}'")
        if p.part_label:
            bits.append(f"name '{p.part_label}'")
        lines.append("  " + ", ".join(bits))
    return lines


def _partition_stream(image: Image | ForeignImage, number: int) -> StreamEntry:
    s = image.manifest.partition_stream(number)
    if s is None:
        have = [
            str(x.partition_number)
            for x in image.streams
            if x.kind == "partition" and x.partition_number is not None
        ]
        raise ImageError(
            f"The image {image.path} has no partition {number}.",
            hint=f"It holds partition(s) {', '.join(have) or 'none'}; choose one of those.",
        )
    return s


def run_preflight_hook(
    image: Image | ForeignImage,
    ident: DiskIdentity,
    *,
    partition: int | None,
    grow: bool,
    accept_warnings: bool,
    accepted_codes: Iterable[str] = (),
    acknowledged_by: str | None = None,
    adapt: Any = None,
    vm: Any = None,
    smaller: Any = None,
) -> tuple[list[Any], list[Any], preflight_mod.TargetInfo]:
    """Run the pre-flight checks; returns (findings, acknowledgements, target info).

    A "stop" finding raises PreflightError; a "warn" finding raises it too unless
    ``accept_warnings`` (all of them) or its code is in ``accepted_codes`` (acknowledged one
    by one). ``acknowledged_by`` names who acknowledged them in the report (default
    ``"all warnings accepted at once"`` or ``"operator"``). Kept in one place so the front
    ends can wire it their way.
    """
    by = acknowledged_by or ("all warnings accepted at once" if accept_warnings else "operator")
    info = preflight_mod.TargetInfo.from_path(ident.path, image_paths=[image.path])
    findings = preflight_mod.run_preflight(
        image, info, partition=partition, grow=grow, adapt=adapt, vm=vm, smaller=smaller
    )
    try:
        acks = preflight_mod.gate(
            findings,
            accepted_codes=list(accepted_codes),
            accept_all_warnings=accept_warnings,
            by=by,
        )
    except RescueError as exc:
        exc.findings = findings  # type: ignore[attr-defined]  # for the refusal report
        raise
    return findings, list(acks), info


def plan_restore(
    image_dir: str | Path,
    target: ConfirmedTarget,
    *,
    partition: int | None = None,
    verify: bool = True,
    resume: bool = False,
    grow: bool = True,
    accept_warnings: bool = False,
    accepted_codes: Iterable[str] = (),
    acknowledged_by: str | None = None,
    preflight: bool = True,
    exact: bool = False,
    adapt: Any = None,
    vm: Any = None,
) -> RestorePlan:
    """Check everything that can be checked without writing; raise if the job is refused.

    Order: the image (opened and validated), the target's identity (still the confirmed
    one), its safety (boot medium, image medium, mounted, read-only, in use), the kind of
    target (whole disk vs partition), the fit, then pre-flight.

    Pre-flight warnings must be acknowledged: all at once with ``accept_warnings`` (the
    command line's option), or one by one by passing their codes in
    ``accepted_codes`` (the TUI). A warning whose code is not acknowledged refuses the
    job, as does any stop finding. ``acknowledged_by`` is recorded with each
    acknowledgement (who), with the warning (what) and the time (when), in
    ``plan.acknowledgements`` and in the report. ``vm``: the target file is the disk of a
    new virtual machine (its findings join the pre-flight's; see :mod:`rescueui.core.vm`).
    """
    try:
        return _plan_restore(
            image_dir,
            target,
            partition=partition,
            verify=verify,
            resume=resume,
            grow=grow,
            accept_warnings=accept_warnings,
            accepted_codes=tuple(accepted_codes),
            acknowledged_by=acknowledged_by,
            preflight=preflight,
            exact=exact,
            adapt=adapt,
            vm=vm,
        )
    except RescueError as exc:
        _refusal_report(image_dir, target, partition, exc, vm=vm)
        raise


def _refusal_report(
    image_dir: str | Path,
    target: ConfirmedTarget,
    partition: int | None,
    exc: RescueError,
    *,
    vm: Any = None,
) -> JobReport:
    """The report of a restore refused while planning (nothing was written); attached to the
    error as ``exc.report``. Written next to the image when its folder can take it."""
    report = JobReport(
        job="restore", source=str(image_dir), image_dir=str(image_dir), target=target.path
    )
    report.details.update(
        mode="partition" if partition is not None else "disk",
        partition=partition,
        refused_before_writing=True,
        target_identity=target.identity.to_dict(),
    )
    findings = getattr(exc, "findings", None)
    if findings:
        report.findings = list(findings)
    report.notes.append("The restore was refused while it was planned; nothing was written.")
    if vm is not None:
        report.details["vm"] = vm.to_dict()
        report.notes.append(
            f"The disk file {target.path} made for the new virtual machine is removed again."
        )
    report.finish("refused", exc)
    # Next to the image only when the folder is one (holds a manifest); else the fallback folder.
    folder = Path(image_dir)
    is_image = (folder / "manifest.json").is_file() and not (folder / "manifest.json").is_symlink()
    report.write(folder / "reports" if is_image else None)
    exc.report = report  # type: ignore[attr-defined]
    return report


def _plan_restore(
    image_dir: str | Path,
    target: ConfirmedTarget,
    *,
    partition: int | None,
    verify: bool,
    resume: bool,
    grow: bool,
    accept_warnings: bool,
    accepted_codes: tuple[str, ...],
    acknowledged_by: str | None,
    preflight: bool,
    exact: bool,
    adapt: Any,
    vm: Any,
) -> RestorePlan:
    accepted = accepted_codes
    layout: smaller_mod.SmallerPlan | None = None
    image = open_image(image_dir)  # any kind: our folders, VM disks, raw images
    try:
        ident = recheck(target)
        disk = check_target_safety(ident, image_dir=image.path)
        stream: StreamEntry | None = None
        if partition is None:
            if ident.partition:
                raise UnsafeTargetError(
                    f"{ident.path} is a partition, but a whole-disk restore writes a partition "
                    "table and needs a whole disk.",
                    hint="Give the disk (e.g. /dev/sdb), or restore one image partition onto "
                    "this partition.",
                    action="restore-partition",
                )
            if not image.manifest.whole_disk:
                have = ", ".join(str(s.partition_number) for s in image.streams)
                raise ImageError(
                    f"The image {image.path} holds only selected partitions ({have}), not a "
                    "whole disk.",
                    hint="Restore them one by one onto existing partitions.",
                    action="restore-partition",
                )
            needed = image.extent_bytes
            if vm is None and smaller_mod.needed(image, ident.size_bytes):
                layout = smaller_mod.plan_smaller(image, ident.size_bytes)
                adapt = smaller_mod.adapt_options(adapt)
                needed = sum(p.new_bytes for p in layout.partitions)
            else:
                check_fit(ident, needed, f"the image {image.path.name}")
        else:
            stream = _partition_stream(image, partition)
            if ident.kind == "block" and not ident.partition:
                raise UnsafeTargetError(
                    f"{ident.path} is a whole disk; restoring image partition {partition} writes "
                    "one partition "
                    "and needs a partition as target (e.g. /dev/sdb2).",
                    hint="Give the target partition, or restore the whole disk instead.",
                    action="whole-disk",
                )
            needed = stream.size_bytes
            if smaller_mod.needed(image, ident.size_bytes, partition):
                layout = smaller_mod.plan_smaller_partition(image, partition, ident.size_bytes)
                needed = ident.size_bytes
            else:
                check_fit(ident, needed, f"partition {partition} of the image")
        if layout is not None:
            if resume:
                raise RestoreError(
                    "A restore onto a smaller disk or partition copies files; it cannot be "
                    "resumed.",
                    hint="Start the restore again from the beginning.",
                )
            if not layout.fits:
                try:
                    what = (
                        f"the image {image.path.name}"
                        if partition is None
                        else f"partition {partition} of the image"
                    )
                    check_fit(ident, layout.image_bytes, what)
                except TargetTooSmallError as exc:
                    stop = layout.findings()[0]
                    err = TargetTooSmallError(
                        f"{exc.message} Copying its files onto the smaller "
                        f"{'disk' if partition is None else 'partition'} does not help: "
                        f"{layout.why_not()}.",
                        hint=stop.detail,
                    )
                    err.findings = [stop]  # type: ignore[attr-defined]
                    raise err from None
        findings: list[Any] = []
        acks: list[Any] = []
        info: preflight_mod.TargetInfo | None = None
        if preflight:
            findings, acks, info = run_preflight_hook(
                image,
                ident,
                partition=partition,
                grow=grow,
                accept_warnings=accept_warnings,
                accepted_codes=accepted,
                acknowledged_by=acknowledged_by,
                adapt=adapt,
                vm=vm,
                smaller=layout,
            )
        adapt_plan = None
        if adapt is not None and adapt.enabled and partition is None:
            from rescueui.core.adapt import plan_for_image
            from rescueui.core.host import read_host_profile

            host = adapt.host if adapt.host is not None else read_host_profile()
            adapt_plan = plan_for_image(
                image, ident.size_bytes, adapt, host=host, rewritten=layout is not None
            )
    except BaseException:
        image.close()
        raise
    return RestorePlan(
        image=image,
        target=target,
        partition=partition,
        verify=verify,
        resume=resume,
        grow=grow,
        accept_warnings=accept_warnings,
        accepted_codes=accepted,
        findings=findings,
        acknowledgements=acks,
        target_info=info,
        disk=disk,
        needed_bytes=needed,
        stream=stream,
        exact=exact,
        unused=unused_space(ident.kind, ident.devnum, exact=exact),
        adapt=adapt_plan,
        smaller=layout,
    )


# ------------------------------------------------------------------ restoring


class StepContext(Protocol):
    """What a :class:`FinalStep` may use of the running restore."""

    report: JobReport

    def set_phase(self, phase: str, phase_total: int, message: str = "") -> None: ...
    def advance(self, n: int, message: str = "") -> None: ...
    def cancelled(self) -> bool: ...


class FinalStep(Protocol):
    """A last step of the job, after the verify and the fix-ups (e.g. turning the restored
    disk file into a virtual machine). ``bytes_total`` counts in the job's progress."""

    bytes_total: int

    def run(self, ctx: StepContext) -> None: ...

    def failed(self, report: JobReport, outcome: str) -> None:
        """The job did not succeed (``outcome`` failed / cancelled): clean up what the
        step owns and say so in ``report`` (before it is written)."""


class Phases:
    """Seconds and bytes per phase, for the report."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, float]] = {}
        self._name: str | None = None
        self._t = 0.0
        self._bytes = 0

    def start(self, name: str) -> None:
        self.stop()
        self._name, self._t, self._bytes = name, time.monotonic(), 0

    def add(self, n: int) -> None:
        self._bytes += n

    def stop(self) -> None:
        if self._name is None:
            return
        secs = time.monotonic() - self._t
        entry = self.data.setdefault(self._name, {"seconds": 0.0, "bytes": 0.0, "rate": 0.0})
        entry["seconds"] = round(entry["seconds"] + secs, 3)
        entry["bytes"] += self._bytes
        entry["rate"] = entry["bytes"] / entry["seconds"] if entry["seconds"] > 0 else 0.0
        self._name = None


def _segments(plan: RestorePlan) -> SegmentTable:
    """The work, in disk order, from the image's own kind (the seam); without the space no
    filesystem uses where the target leaves it (:mod:`rescueui.core.targets.unused`)."""
    return plan.image.segment_table(plan.partition, leave_unused=plan.unused.leave)


def report_dir(image: Any) -> Path:
    return image.dir / "reports"


def restore(
    plan: RestorePlan,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> JobReport:
    """Run the planned restore; return the (written) report on success.

    On failure or cancel the report is written too, then the :class:`RescueError` is raised
    with it as ``exc.report`` (see the module doc).
    """
    if plan.smaller is not None:
        return smaller_mod.run_smaller(plan, progress=progress, cancel=cancel)
    image = plan.image
    segments = _segments(plan)
    report = restore_report(plan, segments.total_bytes)
    report.details.update(
        image_manifest_blake3=image.manifest.manifest_blake3,
        resume=plan.resume,
        grow=plan.grow,
    )
    checked = image.integrity.checked_at_source
    streams = [plan.stream] if plan.stream is not None else image.streams
    report.streams = [
        {
            "name": s.name,
            "kind": s.kind,
            "start_bytes": s.start_bytes if plan.partition is None else 0,
            "size_bytes": s.size_bytes,
            "root_blake3": s.root_blake3,
            "status": "pending",
        }
        for s in streams
        if s is not None
    ]
    if not plan.verify:
        report.warnings.append(
            "Read-back verification was turned off: the disk was not read back"
            + (
                "; each piece was checked against the image before it was written."
                if checked
                else ", and this image carries no checksums: nothing was verified at all."
            )
        )
    if not checked:
        report.notes.append(f"Source checks: {image.integrity.words}.")
    job = _RestoreJob(plan, segments, report, progress, cancel)

    def body() -> None:
        job.run()
        job._mark_streams_done()

    return run_job(plan, report, job.meter, job.phases, body)


def restore_report(plan: RestorePlan, bytes_total: int) -> JobReport:
    """The report a restore of ``plan`` starts with: the plan's findings and
    acknowledgements, the target and the image."""
    image = plan.image
    report = JobReport(
        job="restore",
        source=str(image.path),
        image_dir=str(image.path),
        target=plan.identity.path,
        bytes_total=bytes_total,
    )
    report.findings = list(plan.findings)
    report.acknowledgements = list(plan.acknowledgements)
    report.details.update(
        mode=plan.mode,
        partition=plan.partition,
        target_identity=plan.identity.to_dict(),
        image_extent_bytes=image.extent_bytes,
        verify=plan.verify,
        image_kind=image.kind,
        image_description=image.describe(),
        source_checks=image.integrity.words,
    )
    return report


def run_job(
    plan: RestorePlan,
    report: JobReport,
    meter: ProgressMeter,
    phases: Phases,
    body: Callable[[], None],
) -> JobReport:
    """Run ``body`` (the writing of a restore), then write the report whatever happened:
    returned on success; on failure or cancel attached to the raised :class:`RescueError`
    (a bug becomes one saying so, its cause kept)."""
    image = plan.image
    outcome: str = "success"
    error: RescueError | None = None
    cause: BaseException | None = None
    try:
        body()
    except CancelledError as exc:
        outcome, error = "cancelled", exc
    except RescueError as exc:
        outcome, error = "failed", exc
    except Exception as exc:  # a bug: still a report and a clear outcome, never "success"
        outcome, cause = "failed", exc
        error = RescueError(
            f"Internal error during the restore: {type(exc).__name__}: {exc}.",
            hint="The target may be partly written. Report this bug with the report file; "
            "run the restore again.",
        )
    finally:
        phases.stop()
        report.phases = phases.data
        # before finish(): it computes rate_avg from bytes_done and the job's duration
        report.bytes_done = meter.last.bytes_done
        report.bytes_total = meter.bytes_total
        with contextlib.suppress(Exception):
            image.close()
        if error is not None and plan.final_step is not None:
            try:
                plan.final_step.failed(report, outcome)
            except Exception as exc:  # the report is written all the same
                report.warnings.append(f"Cleaning up after the failure failed: {exc}")
    report.finish(outcome, error)
    report.write(report_dir(image))
    if error is not None:
        error.report = report  # type: ignore[attr-defined]
        if cause is not None:
            raise error from cause
        raise error
    return report


def run_fixups(
    plan: RestorePlan, handle: TargetHandle, report: JobReport, meter: ProgressMeter
) -> None:
    """Apply the plan's fix-ups (``plan.adapt``) to the restored system on the held target;
    their results go into ``report.details["adapt"]``. :class:`AdaptError` if one failed."""
    from rescueui.core.adapt import layout_of_image
    from rescueui.core.adapt.apply import apply_adaptation, whole_disk_device
    from rescueui.core.errors import AdaptError

    ident = handle.identity
    meter.update(phase="adapt", message="adapting the restored system to its machine")
    details: dict[str, Any] = {"plan": plan.adapt.to_dict()}
    report.details["adapt"] = details
    if os.geteuid() != 0:
        details["result"] = "not run: needs root"
        report.notes.append(
            "The restored system was not adapted to the machine: that needs root (it "
            "mounts the restored filesystems)."
        )
        return
    with whole_disk_device(ident.path) as disk:
        handle.ensure("adapting the restored system")
        from rescueui.core import blockdev

        layout = layout_of_image(
            plan.image, blockdev.device_size(disk), rewritten=plan.smaller is not None
        )
        layout.table = parttable.read_table(disk) or layout.table
        result = apply_adaptation(
            disk,
            plan.adapt,
            layout=layout,
            progress=lambda m: meter.update(phase="adapt", message=m),
            ensure=handle.ensure,
        )
    details.update(result.to_dict())
    if result.failed:
        names = ", ".join(s.fixup for s in result.failed)
        first = result.failed[0]
        raise AdaptError(
            f"The restore is written and verified, but fix-up(s) {names} failed: "
            f"{first.error} The restored system may not boot on this machine.",
            hint=first.next_step,
        )


class _RestoreJob:
    def __init__(
        self,
        plan: RestorePlan,
        segments: SegmentTable,
        report: JobReport,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> None:
        self.plan = plan
        self.segments = segments
        self.report = report
        self.cancel = cancel
        # Readers of sequential images (compressed streams) take segments in order, one
        # thread; the read-back verify reads the target and may use them all.
        self.workers = 1 if plan.image.sequential else plan.workers
        self.phases = Phases()
        total = self._total(segments)
        self.meter = ProgressMeter("restore", total, progress or (lambda _p: None))
        self._use_segments(segments)
        self.chunks_done = 0
        self.journal: Journal | None = None
        self.journal_warned = False

    def _use_segments(self, segments: SegmentTable) -> None:
        """The work of this restore (again, when the unused space is left after all)."""
        self.segments = segments
        self.write_total = segments.total_bytes
        total = self._total(segments)
        if total != self.meter.bytes_total:
            self._set_total(total)
        # chunks per stream ("fill": the zero ranges no stream covers), for the counters
        self.stream_chunks: dict[str, int] = {}
        for run in segments.runs:
            name = run.stream.name if run.stream is not None else "fill"
            self.stream_chunks[name] = self.stream_chunks.get(name, 0) + run.count
        self.report.details["unused_space"] = {
            **self.plan.unused.to_dict(),
            "left_bytes": segments.left_bytes,
            "left_ranges": len(segments.left),
        }

    def _total(self, segments: SegmentTable) -> int:
        """The bytes of the whole job: written, read back, and the final step's."""
        step = self.plan.final_step.bytes_total if self.plan.final_step is not None else 0
        return segments.total_bytes * (2 if self.plan.verify else 1) + step

    def _probe_zeroing(self, handle: TargetHandle) -> None:
        """The target said it zeroes fast: check it on the first unused range before the
        writes; if it does not, leave the unused space as it is (a new segment table)."""
        plan = self.plan
        if not plan.unused.zero or plan.unused.asked or handle.identity.kind != "block":
            return
        table = plan.image.segment_table(plan.partition, leave_unused=True)
        if not table.left:
            return
        try:
            revised = probe_zeroing(plan.unused, handle.identity.devnum, table.left, handle.zero)
        except OSError as exc:
            raise device_error(exc, handle.path, table.left[0][0], "zeroing") from exc
        if revised is not plan.unused:
            plan.unused = revised
            self._use_segments(table)

    def _grow_partition(self, handle: TargetHandle) -> None:
        """Partition mode on a larger partition: grow the filesystem to fill it."""
        ident = handle.identity
        stream = self.plan.stream
        if stream is None or ident.size_bytes <= stream.size_bytes:
            return
        if not self.plan.grow:
            self.report.notes.append(
                f"{ident.path} is {human_size(ident.size_bytes - stream.size_bytes)} larger than "
                "the image partition; growing was turned off, so the filesystem keeps its image size."
            )
            return
        if ident.kind != "block":
            return
        self.phases.start("grow")
        self.meter.update(phase="grow", message=f"growing the filesystem on {ident.path}")
        handle.ensure(f"growing the filesystem on {ident.path}")
        try:
            from rescueui.core.grow import grow_filesystem

            self.report.notes.append(grow_filesystem(ident.path, stream.fs_type))
        except ImportError:
            return
        except RescueError as exc:
            self.report.warnings.append(
                f"The restored data is verified, but growing the filesystem failed: {exc}"
            )

    # -- helpers ------------------------------------------------------------------
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _set_total(self, total: int) -> None:
        self.meter.bytes_total = total
        self.meter.update(bytes_total=total)

    def set_phase(self, phase: str, phase_total: int, message: str = "") -> None:
        self.phases.start(phase)
        self.meter.update(
            phase=phase,
            phase_bytes_done=0,
            phase_bytes_total=phase_total,
            chunks_done=0,
            chunks_total=len(self.segments),
            stream=None,  # a new phase: no chunk of it checked yet
            stream_chunks_done=0,
            stream_chunks_total=0,
            last_chunk=None,
            message=message,
        )

    def _chunk_fields(self, seg: Segment, idx: int) -> dict[str, Any]:
        """The chunk counters of a progress event: ``idx`` (position in the segment table)
        gives the total, the segment's own index the per-stream count, both of the phase
        that is running (write, read-back verify or resume re-check)."""
        return {
            "stream": seg.stream,
            "chunks_done": idx + 1,
            "stream_chunks_done": seg.index + 1,
            "stream_chunks_total": self.stream_chunks.get(seg.stream, 0),
        }

    def _event(
        self, seg: Segment, ok: bool, actual: str | None = None, *, checked: bool = True
    ) -> ChunkEvent:
        return ChunkEvent(
            stream=seg.stream,
            index=seg.index,
            offset=seg.disk_offset,
            length=seg.length,
            blake3=actual or seg.blake3,
            ok=ok,
            zero=seg.zero,
            checked=checked,
        )

    # -- the job -------------------------------------------------------------------
    def run(self) -> None:
        plan = self.plan
        ident = plan.identity
        with WriterLock(ident.path, job="restore", path=plan.lock_path):
            # The rule again, right before the open: what was planned may be stale (a
            # filesystem mounted meanwhile through another loop device on the same file).
            check_target_safety(recheck(plan.target), image_dir=plan.image.path)
            # Re-check identity, O_EXCL, O_DIRECT; the handle (its guard descriptor) is held
            # until the job ends, and every step re-checks it before acting.
            handle = open_target(plan.target)
            self.report.details["direct_io"] = handle.direct
            pool = BufferPool(self.workers + POOL_EXTRA, self.segments.max_chunk())
            try:
                self._probe_zeroing(handle)
                start = self._start_position(pool)
                self._write(handle, pool, start)
                if plan.verify:
                    handle.ensure("the read-back verify")
                    self._verify(pool)
                handle.ensure("the steps after the restore")
                # The steps after the restore mount and check partitions: they need the
                # exclusive claim released. The guard stays open until the end.
                handle.close_writer()
                self._after(handle)
                if self.journal is not None:
                    self.journal.remove()
                self._mark_streams_done()
                if plan.adapt is not None:
                    self._adapt(handle)
            finally:
                pool.close()
                handle.close()
            if plan.final_step is not None:
                plan.final_step.run(self)
            self.phases.stop()
            self.meter.update(phase="done", message="restore complete")

    def advance(self, n: int, message: str = "") -> None:
        """A final step's progress: ``n`` more bytes of its phase done."""
        self.phases.add(n)
        if message:
            self.meter.advance(n, message=message)
        else:
            self.meter.advance(n)

    def _start_position(self, pool: BufferPool) -> int:
        plan = self.plan
        image = plan.image
        mhash = image.manifest.manifest_blake3
        start = 0
        if not image.supports_resume:
            if plan.resume:
                self.report.warnings.append(
                    f"This kind of image ({image.kind}) cannot be resumed: what an interrupted "
                    "restore wrote cannot be re-checked against it. Restoring from the beginning."
                )
            self.report.details["resumed_at_segment"] = 0
            return 0
        unusable: JournalError | None = None
        try:
            journal = (
                find_journal(image.dir, mhash, plan.identity, plan.partition)
                if plan.resume
                else None
            )
        except JournalError as exc:
            # A damaged or foreign journal: nothing it says is trusted; start again.
            journal, unusable = None, exc
            self.report.warnings.append(f"{exc.message} Restoring from the beginning instead.")
        if plan.resume and journal is None and unusable is None:
            self.report.warnings.append(
                "No journal of an earlier restore of this image onto this target was found; "
                "restoring from the beginning."
            )
        if journal is not None and journal.segments_total == len(self.segments):
            durable = min(journal.durable_segments, len(self.segments))
            check_bytes = self.segments.bytes_before(durable)
            if hasattr(self.segments, "record"):
                # a foreign image keeps no hash of its pieces: read them again first
                self._hash_source(pool, durable)
            self._set_total(self.meter.bytes_total + check_bytes)
            self.set_phase(
                "resume-verify", check_bytes, "re-reading what the interrupted restore wrote"
            )

            def on_ok(seg: Segment, idx: int, actual: str) -> None:
                self.phases.add(seg.length)
                self.meter.advance(
                    seg.length,
                    **self._chunk_fields(seg, idx),
                    last_chunk=self._event(seg, True, actual),
                )

            mismatch = verify_segments(
                plan.identity.path,
                self.segments,
                0,
                durable,
                pool=pool,
                workers=self.workers,
                on_progress=on_ok,
                cancelled=self.cancelled,
                first_mismatch_only=True,
            )
            if self.cancelled():
                raise CancelledError(
                    "Restore cancelled while re-checking the interrupted restore.",
                    hint="Nothing new was written. Resume the restore to go on.",
                    action="resume",
                )
            start = mismatch.index if mismatch is not None else durable
            # The bytes from ``start`` are written again: count them in the job total once.
            self._set_total(self.meter.bytes_total - self.segments.bytes_before(start))
            first = self.segments[start] if start < len(self.segments) else None
            where = first.where() if first is not None else "the end (all data was on the disk)"
            self.report.notes.append(
                f"Resumed an interrupted restore: {human_size(self.segments.bytes_before(start))} "
                f"already on the target re-verified by reading back; continued at {where}."
            )
            if mismatch is not None:
                self.report.warnings.append(
                    f"Re-verify found {mismatch.segment.where()} changed: the journal recorded "
                    "it as written and flushed to the disk, but it now reads back different "
                    "from the image (something wrote to the target after the interruption, or "
                    "the disk did not keep the data). It and everything after it were written "
                    "again and verified."
                )
            journal.durable_segments = start
            self.journal = journal
        elif journal is not None:
            self.report.warnings.append(
                "The journal found does not match this restore's layout; restoring from the beginning."
            )
        self.report.details["resumed_at_segment"] = start
        if self.journal is None:
            try:
                self.journal = Journal.create(
                    image.dir, mhash, plan.identity, plan.partition, len(self.segments)
                )
            except OSError as exc:
                self.report.warnings.append(
                    f"No restore journal could be written ({exc.strerror}): an interrupted "
                    "restore will have to start again from the beginning."
                )
        if self.journal is not None:
            self.report.details["journal"] = str(self.journal.path)
        return start

    def _hash_source(self, pool: BufferPool, end: int) -> None:
        """Read the image's data pieces before ``end`` once more, recording their BLAKE3 in
        the segment table (the decoder does that), so the resume's re-verify can compare
        the target with the image; then the image is rewound for the writes."""
        image = self.plan.image
        segs = self.segments
        total = sum(segs[i].length for i in range(end) if not segs[i].zero)
        self._set_total(self.meter.bytes_total + total)
        self.set_phase(
            "resume-read", total, "reading the image up to where the interrupted restore stopped"
        )
        decoder = image.decoder(segs)
        buf = pool.take()
        if buf is None:
            raise RestoreError("No buffer free to re-read the image (internal).")
        try:
            for i in range(end):
                seg = segs[i]
                if seg.zero:
                    continue
                if self.cancelled():
                    raise CancelledError(
                        "Restore cancelled while re-reading the image.",
                        hint="Nothing new was written. Resume the restore to go on.",
                        action="resume",
                    )
                decoder.decode(seg, buf)
                self.phases.add(seg.length)
                self.meter.advance(seg.length, **self._chunk_fields(seg, i))
        finally:
            pool.give(buf)
            decoder.close()
        image.rewind()

    def _write(self, handle: Any, pool: BufferPool, start: int) -> None:
        plan = self.plan
        segs = self.segments
        first_phase = segs[start].phase if start < len(segs) else "write"
        self.set_phase(
            first_phase,
            segs.phase_bytes("partition-table", start)
            if first_phase == "partition-table"
            else segs.bytes_between(start, len(segs)),
        )
        state = {"phase": first_phase, "bytes_before": segs.bytes_before(start)}
        decoder = plan.image.decoder(segs)

        def on_progress(seg: Segment, idx: int) -> None:
            if seg.phase != state["phase"]:
                state["phase"] = seg.phase
                rest = segs.bytes_between(idx, len(segs))
                self.set_phase(seg.phase, rest)
            self.phases.add(seg.length)
            self.chunks_done += 1
            self.meter.advance(
                seg.length,
                **self._chunk_fields(seg, idx),
                last_chunk=self._event(
                    seg, True, checked=seg.zero or plan.image.integrity.checked_at_source
                ),
            )

        def on_checkpoint(next_index: int, written: int) -> None:
            if self.journal is None:
                return
            nxt = segs[next_index] if next_index < len(segs) else None
            try:
                self.journal.record(
                    next_index,
                    int(state["bytes_before"]) + written,
                    nxt.stream if nxt else None,
                    nxt.index if nxt else None,
                )
            except OSError as exc:
                if not self.journal_warned:
                    self.journal_warned = True
                    self.report.warnings.append(
                        f"The restore journal {self.journal.path} could not be updated "
                        f"({exc.strerror}); an interrupted restore could not resume."
                    )

        try:
            result = write_segments(
                handle,
                segs,
                start,
                pool=pool,
                decoder=decoder,
                workers=self.workers,
                on_progress=on_progress,
                on_checkpoint=on_checkpoint,
                cancelled=self.cancelled,
                checkpoint_bytes=plan.checkpoint_bytes,
                zero_ranges=plan.zero_ranges,
            )
        except RestoreError as exc:
            # A write error on a target that changed under us (shrunk, detached, replaced)
            # is that change, not a full or failing disk: say so.
            if handle.changes():
                handle.ensure("the rest of the data")
            raise exc
        finally:
            decoder.close()
        self.report.details["zero_range_calls"] = result.zero_calls
        self.report.details["zero_methods"] = sorted(result.zero_methods)
        self.report.details["data_bytes_written"] = result.data_bytes
        unused = self.report.details["unused_space"]
        unused["zeroed_bytes"] = result.unused_zeroed_bytes
        if segs.left_bytes or result.unused_zeroed_bytes:
            self.report.notes.append(
                describe_left(segs.left_bytes, result.unused_zeroed_bytes, plan.unused)
            )
        if isinstance(plan.image, ForeignImage):
            # data pieces that read as all zeros went into the zero calls, not written
            self.report.details["zero_found_bytes"] = result.zero_found_bytes
            self.report.details["zero_found_segments"] = result.zero_found_segments
        if result.next_index < len(segs):
            nxt = segs[result.next_index]
            raise CancelledError(
                f"Restore cancelled by the operator before {nxt.where()}; "
                f"{human_size(int(state['bytes_before']) + result.bytes_written)} of "
                f"{human_size(self.write_total)} are on {handle.path}.",
                hint="The target holds a partial image and will not boot as it is. Resume the "
                "same restore to continue where it stopped.",
                action="resume",
            )

    def _verify(self, pool: BufferPool) -> None:
        plan = self.plan
        self.set_phase("verify", self.write_total, "reading the target back")

        def on_ok(seg: Segment, idx: int, actual: str) -> None:
            self.phases.add(seg.length)
            self.meter.advance(
                seg.length,
                **self._chunk_fields(seg, idx),
                last_chunk=self._event(seg, True, actual),
            )

        verify_segments(
            plan.identity.path,
            self.segments,
            0,
            len(self.segments),
            pool=pool,
            workers=plan.workers,
            on_progress=on_ok,
            cancelled=self.cancelled,
        )
        if self.cancelled():
            raise CancelledError(
                "Read-back verify cancelled by the operator: all data was written but not checked.",
                action="resume",
                hint="Resume the same restore to verify it (nothing is rewritten if it matches).",
            )

    def _mark_streams_done(self) -> None:
        checked = self.plan.image.integrity.checked_at_source
        done = "written and verified" if checked else "written and read back"
        for s in self.report.streams:
            s["status"] = done if self.plan.verify else "written (not read back)"

    def _adapt(self, handle: TargetHandle) -> None:
        """The chosen fix-ups on the restored system (after the verify: the data is safe)."""
        self.phases.start("adapt")
        run_fixups(self.plan, handle, self.report, self.meter)

    def _after(self, handle: TargetHandle) -> None:
        """Partition table housekeeping after a verified whole-disk restore (every step
        re-checks the held target first)."""
        plan = self.plan
        ident = handle.identity
        if plan.partition is not None:
            self._grow_partition(handle)
            return
        table = plan.image.manifest.partition_table
        source_size = int(plan.image.manifest.source_disk.get("size_bytes") or 0)
        if table and source_size and ident.size_bytes != source_size:
            self.phases.start("grow")
            self.meter.update(
                phase="grow",
                message="fitting the partition table to the larger target"
                + (" and growing the last partition" if plan.grow else ""),
            )
            try:
                from rescueui.core.grow import finish_larger_disk

                self.report.notes += finish_larger_disk(
                    ident.path,
                    plan.image,
                    plan.grow,
                    held=handle,
                    reserve_end_bytes=plan.adapt.reserve_end_bytes if plan.adapt else 0,
                )
            except ImportError:
                self.report.warnings.append(
                    "The partition table was kept exactly as in the image although the target is "
                    "larger; a GPT backup header is then not at the end of the disk. Fix with "
                    f"`sfdisk --relocate gpt-bak-std {ident.path}`."
                )
            except TargetChangedError:
                raise
            except RescueError as exc:
                self.report.warnings.append(
                    f"The restored data is verified, but fitting the partition table to the "
                    f"larger target failed: {exc}"
                )
        if ident.kind == "block" and table is not None:
            handle.ensure("telling the kernel about the new partitions")
            try:
                parttable.tell_kernel(ident.path)
                self.report.notes.append(
                    f"The kernel was told about the new partitions of {ident.path}."
                )
            except RescueError as exc:
                self.report.warnings.append(
                    f"The kernel could not re-read the new partition table: {exc}. Run "
                    f"`partx -u {ident.path}` or reboot before using the partitions."
                )
