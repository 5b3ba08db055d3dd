"""Restore a whole-disk image onto a disk smaller than the source, when the data fits.

::

    plan = plan_smaller(image, target_bytes)      # writes nothing; plan.fits, plan.findings()
    # plan_restore() makes this plan itself when the target is smaller than the image's
    # disk, shows it in the pre-flight, and restore() runs it (run_smaller) instead of the
    # block-for-block restore.

The plan:

* partitions of a fixed size keep it: the EFI system partition, a BIOS boot partition, swap,
  ``/boot`` (as the recorded system's fstab names it) and any partition whose filesystem
  rescueui cannot make again (:data:`rescueui.core.fsmake.MAKEABLE`);
* the other partitions (ext2/3/4, xfs) get at least what they hold plus room for the new
  filesystem's own structures (and never less than the smallest filesystem of their type);
  the space left is shared in proportion to what each holds, no partition larger than it was;
* the partitions keep their numbers, order, types, GPT names, partition UUIDs and the disk's
  GUID; they start on MiB boundaries after one another.

When the data does not fit, the plan says by how much (a STOP in the pre-flight); nothing is
written.

The restore (:func:`run_smaller`): the first MiB is cleared (old tables) and the image's boot
code put back, the new table written (``sfdisk``) and the kernel told; each kept partition is
copied block for block from the image's read-only view (:mod:`rescueui.core.images.view`:
every byte checked as the image kind allows), written, flushed and read back with
``O_DIRECT`` and compared; swap is made again with its UUID and label; each other filesystem
is made again with its type, UUID, label and features (:mod:`rescueui.core.fsmake`), its
files copied from the view with all they carry (:func:`rescueui.core.files.copy_tree`),
checked by its own ``fsck`` and compared with the image's tree after a fresh mount
(:mod:`rescueui.core.treesum`). Then the boot loader is installed again and checked (the
fix-up ``boot-loader`` of :mod:`rescueui.core.adapt`) with the other chosen fix-ups.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import blake3

from rescueui.core import fsmake, fsmount, parttable
from rescueui.core.errors import (
    CancelledError,
    CorruptImageError,
    RescueError,
    RestoreError,
)
from rescueui.core.preflight import BIOS_BOOT_TYPES, ESP_TYPES, Finding, gpt_backup_bytes
from rescueui.core.progress import ProgressCallback, ProgressMeter
from rescueui.core.report import JobReport
from rescueui.core.units import MiB, human_size

SWAP_TYPES = frozenset({"0657fd6d-a4ab-43c4-84e5-0933c84b4f4f", "82"})
ALIGN = MiB
BLOCK = 4 * MiB
# Room a new filesystem needs beyond the bytes its source uses. Those already count the
# source's own structures (journal or log, inode tables, at the larger size), so a margin
# of 1/16 and 16 MiB is kept for the new allocation's spread; a copy that still runs out of
# room fails with a clear error.
EXTRA_DEN = 16
EXTRA_FIXED = 16 * MiB


@dataclass
class PlannedPartition:
    """One partition of the image on the smaller disk."""

    number: int
    role: str  # "EFI system", "BIOS boot", "swap", "/boot", "data", "other"
    fs_type: str | None
    label: str | None
    how: str  # "block" (copied block for block) | "swap" (made again) | "files"
    old_bytes: int
    new_bytes: int = 0
    used_bytes: int | None = None
    need_bytes: int = 0
    start_sector: int = 0  # on the target

    def line(self) -> str:
        what = self.fs_type or "no filesystem known"
        if self.label:
            what += f' "{self.label}"'
        name = f"partition {self.number} ({what}{', ' + self.role if self.role != 'data' else ''})"
        if self.how == "files":
            used = f"{human_size(self.used_bytes or 0)} used, "
            return (
                f"{name}: {used}{human_size(self.old_bytes)} -> {human_size(self.new_bytes)}, "
                "filesystem made again, files copied"
            )
        how = "made again" if self.how == "swap" else "copied block for block"
        return f"{name}: {human_size(self.old_bytes)} kept, {how}"


@dataclass
class SmallerPlan:
    """How an image's partitions go onto a smaller disk, or why they do not."""

    image_bytes: int  # what a block-for-block restore needs
    target_bytes: int
    partitions: list[PlannedPartition] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)  # the new table (sfdisk JSON)
    shortfall: int = 0  # > 0: the data does not fit by that much
    problem: str = ""  # why the image cannot be restored file by file at all
    partition: int | None = None  # one image partition onto a smaller existing partition

    @property
    def fits(self) -> bool:
        return not self.problem and self.shortfall <= 0

    def why_not(self) -> str:
        """Why the image cannot go onto the smaller disk ("" when it can)."""
        if self.problem:
            return f"the image cannot be restored file by file: {self.problem}"
        if self.shortfall > 0:
            return (
                f"the data does not fit: {human_size(self.shortfall)} ({self.shortfall:,} "
                "bytes) short"
            )
        return ""

    def lines(self) -> list[str]:
        return [p.line() for p in self.partitions]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_bytes": self.image_bytes,
            "target_bytes": self.target_bytes,
            "fits": self.fits,
            "shortfall_bytes": self.shortfall,
            "problem": self.problem,
            "partition": self.partition,
            "partitions": [asdict(p) for p in self.partitions],
        }

    def findings(self) -> list[Finding]:
        """The pre-flight's word on the fit (replacing its block-for-block "fit")."""
        source = (
            "the image's disk" if self.partition is None else f"image partition {self.partition}"
        )
        smaller = (
            f"The target ({human_size(self.target_bytes)}) is smaller than {source} "
            f"({human_size(self.image_bytes)})"
        )
        if self.problem:
            return [
                Finding(
                    "stop",
                    "smaller.fit",
                    f"{smaller}, and {self.why_not()}.",
                    f"Choose a disk of at least {human_size(self.image_bytes)}.",
                )
            ]
        listing = "; ".join(self.lines())
        if self.shortfall > 0:
            least = self.target_bytes + self.shortfall
            return [
                Finding(
                    "stop",
                    "smaller.fit",
                    f"{smaller}, and {self.why_not()}.",
                    f"Needed at least: {listing}. Choose a disk of at least "
                    f"{human_size(least)}. Nothing was written.",
                )
            ]
        if self.partition is not None:
            return [
                Finding(
                    "warn",
                    "smaller.plan",
                    f"{smaller}: its data fits, so the filesystem is made again on the target "
                    "and its files copied.",
                    f"{listing}. The filesystem keeps its type, UUID, label and features; the "
                    "copied files are compared with the image's.",
                )
            ]
        files = [p for p in self.partitions if p.how == "files"]
        kept = len(self.partitions) - len(files)
        return [
            Finding(
                "warn",
                "smaller.plan",
                f"{smaller}: the data fits, so the partitions are laid out anew and the files "
                f"copied ({len(files)} made smaller, {kept} kept).",
                f"{listing}. Each filesystem keeps its type, UUID, label and features; the "
                "copied files are compared with the image's; the boot loader is installed "
                "again. The disk's free space is not restored block for block.",
            )
        ]


def smaller_lines(details: Any) -> list[str]:
    """The section of a report (``report.details["smaller"]``) as plain lines: each
    partition's plan and what was done and checked. The one rendering the text report and
    the front ends share. Untrusted (a report may be read back): every field becomes text."""
    if not isinstance(details, dict):
        return []
    out: list[str] = []
    for p in details.get("partitions") or []:
        if not isinstance(p, dict):
            continue
        try:
            part = PlannedPartition(
                int(p["number"]), str(p.get("role", "")), p.get("fs_type") and str(p["fs_type"]),
                p.get("label") and str(p["label"]), str(p.get("how", "")),
                int(p.get("old_bytes") or 0), int(p.get("new_bytes") or 0),
                int(p["used_bytes"]) if p.get("used_bytes") is not None else None,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            continue
        out.append(part.line())
    for r in details.get("results") or []:
        if not isinstance(r, dict):
            continue
        bits = [f"partition {r.get('partition', '?')}: {r.get('how', '?')}"]
        if r.get("fsck"):
            bits.append(str(r["fsck"]))
        tree = r.get("tree")
        if isinstance(tree, dict):
            bits.append(
                f"files compared with the image's: {tree.get('entries', '?')} entries equal "
                f"(BLAKE3 {str(tree.get('blake3', ''))[:16]})"
            )
        if r.get("blake3"):
            back = "read back and equal" if r.get("read_back") else "not read back"
            bits.append(f"BLAKE3 {str(r['blake3'])[:16]}, {back}")
        out.append("; ".join(bits))
    return out


# --------------------------------------------------------------------------- planning


def needed(image: Any, target_bytes: int, partition: int | None = None) -> bool:
    """Whether restoring ``image`` (or its partition ``partition``) onto ``target_bytes``
    needs this plan: the target is smaller than what a block-for-block restore writes."""
    if partition is not None:
        stream = _stream(image, partition)
        return stream is not None and target_bytes < int(stream.size_bytes)
    return bool(image.manifest.whole_disk) and target_bytes < int(image.extent_bytes)


def adapt_options(adapt: Any) -> Any:
    """The fix-ups of a restore onto a smaller disk: the operator's, and always the boot
    loader (installed again: the partitions moved and the space before them was cleared)."""
    from dataclasses import replace

    from rescueui.core.adapt import AdaptOptions

    if adapt is None or not adapt.enabled:
        return AdaptOptions(selection={"boot-loader"}, host=getattr(adapt, "host", None))
    if adapt.selection is None:
        return adapt
    return replace(adapt, selection=set(adapt.selection) | {"boot-loader"})


def _role(part: dict[str, Any], fs_type: str | None, boot: bool) -> str:
    ptype = str(part.get("type", "")).lower()
    if ptype in ESP_TYPES:
        return "EFI system"
    if ptype in BIOS_BOOT_TYPES:
        return "BIOS boot"
    if ptype in SWAP_TYPES or fs_type == "swap":
        return "swap"
    if boot:
        return "/boot"
    return "data" if fs_type in fsmake.MAKEABLE else "other"


def _boot_partitions(image: Any) -> set[str]:
    """Filesystem UUIDs, labels and partition UUIDs the recorded system mounts at /boot."""
    from rescueui.core.adapt.system import InstalledSystem

    recorded = getattr(image.manifest, "system", None)
    system = InstalledSystem.from_dict(recorded) if recorded else None
    out: set[str] = set()
    for entry in system.fstab if system is not None else []:
        if entry.mountpoint == "/boot":
            out.add(entry.spec.split("=", 1)[-1].strip('"').lower())
    return out


def _stream(image: Any, number: int) -> Any:
    return next(
        (
            s
            for s in image.streams
            if s.kind == "partition" and getattr(s, "partition_number", None) == number
        ),
        None,
    )


def _measure(image: Any, number: int) -> tuple[str | None, int]:
    """(filesystem type, used bytes) of an image partition, from its mounted view."""
    from rescueui.core.images.view import partition_view

    with partition_view(image.path, number) as view:
        st = os.statvfs(view.root)
        return view.fs_type, (st.f_blocks - st.f_bfree) * st.f_frsize


def plan_smaller(image: Any, target_bytes: int) -> SmallerPlan:
    """The plan for ``image`` (a whole disk) on a target of ``target_bytes``; writes
    nothing. Partitions whose use the image does not record are measured through the
    image's read-only view (root)."""
    plan = SmallerPlan(int(image.extent_bytes), target_bytes)
    if os.geteuid() != 0:
        plan.problem = "that mounts its filesystems, which needs root"
        return plan
    table = image.manifest.partition_table
    if not table or not table.get("partitions"):
        plan.problem = "it has no partition table"
        return plan
    label = table.get("label")
    if label not in ("gpt", "dos"):
        plan.problem = f"its partition table ({label}) is neither GPT nor DOS/MBR"
        return plan
    parts = sorted(table["partitions"], key=lambda p: int(p["start"]))
    if any(parttable.is_extended(table, p) for p in parts):
        plan.problem = "it has an extended partition (logical partitions are not laid out anew)"
        return plan
    ss = parttable.sector_size(table)
    boot_ids = _boot_partitions(image)
    for p in parts:
        number = parttable.partition_number(p)
        stream = _stream(image, number)
        fs_type = getattr(stream, "fs_type", None)
        used = getattr(stream, "used_bytes", None)
        ids = {
            str(x).lower()
            for x in (
                getattr(stream, "fs_uuid", None),
                getattr(stream, "label", None),
                p.get("uuid"),
            )
            if x
        }
        role = _role(p, fs_type, bool(ids & boot_ids))
        if role in ("data", "other") and (used is None or not fs_type):
            try:
                fs_type, used = _measure(image, number)
            except RescueError as exc:
                if role == "data":
                    plan.problem = f"partition {number} cannot be read: {exc.message}"
                    return plan
            role = _role(p, fs_type, bool(ids & boot_ids))
        how = "files" if role == "data" else "swap" if role == "swap" else "block"
        plan.partitions.append(
            PlannedPartition(
                number,
                role,
                fs_type,
                getattr(stream, "label", None),
                how,
                int(p["size"]) * ss,
                used_bytes=used,
            )
        )
    _lay_out(plan, table, parts, ss)
    return plan


def plan_smaller_partition(image: Any, number: int, target_bytes: int) -> SmallerPlan:
    """The plan for image partition ``number`` onto an existing partition of
    ``target_bytes`` that is smaller than it; writes nothing."""
    stream = _stream(image, number)
    size = int(stream.size_bytes) if stream is not None else 0
    plan = SmallerPlan(size, target_bytes, partition=number)
    if os.geteuid() != 0:
        plan.problem = "that mounts its filesystem, which needs root"
        return plan
    fs_type = getattr(stream, "fs_type", None)
    used = getattr(stream, "used_bytes", None)
    if used is None or not fs_type:
        try:
            fs_type, used = _measure(image, number)
        except RescueError as exc:
            plan.problem = f"partition {number} cannot be read: {exc.message}"
            return plan
    if fs_type not in fsmake.MAKEABLE:
        plan.problem = (
            f"its filesystem ({fs_type or 'none known'}) cannot be made again by rescueui "
            f"(only {', '.join(fsmake.MAKEABLE)})"
        )
        return plan
    part = PlannedPartition(
        number, "data", fs_type, getattr(stream, "label", None), "files", size, used_bytes=used
    )
    part.need_bytes = _need(part)
    part.new_bytes = target_bytes
    plan.partitions.append(part)
    plan.shortfall = max(0, part.need_bytes - target_bytes)
    return plan


def _need(p: PlannedPartition) -> int:
    """The least size the copy of partition ``p``'s filesystem is planned with."""
    used = p.used_bytes or 0
    fs = p.fs_type or ""
    least = fsmake.MIN_BYTES.get(fs, 16 * MiB)
    want = used + used // EXTRA_DEN + EXTRA_FIXED + fsmake.OVERHEAD_BYTES.get(fs, 0)
    return min(p.old_bytes, _align_up(max(least, want), ALIGN))


def _align_up(n: int, a: int) -> int:
    return -(-n // a) * a


def _lay_out(
    plan: SmallerPlan, table: dict[str, Any], parts: list[dict[str, Any]], ss: int
) -> None:
    align = max(1, ALIGN // ss)
    total = plan.target_bytes // ss
    end = total - (gpt_backup_bytes(table) // ss if table.get("label") == "gpt" else 0)
    end = end // align * align  # partitions end on a MiB boundary
    first = int(parts[0]["start"])
    shrink = [p for p in plan.partitions if p.how == "files"]
    for p in plan.partitions:
        if p.how != "files":
            p.need_bytes = p.new_bytes = p.old_bytes
            continue
        p.need_bytes = p.new_bytes = _need(p)
    # sectors the layout takes besides the partitions: each start rounded up to a MiB
    sectors = 0
    cursor = first
    for p in plan.partitions:
        cursor = _align_up(cursor, align) + p.new_bytes // ss
        sectors = cursor
    if sectors > end:
        plan.shortfall = (sectors - end) * ss
        return
    extra = (end - sectors) * ss
    # share what is left in proportion to what each holds, none above its old size
    open_ = [p for p in shrink if p.new_bytes < p.old_bytes]
    while extra >= ALIGN and open_:
        weight = sum(max(p.used_bytes or 0, 1) for p in open_)
        given = 0
        for p in open_:
            share = extra * max(p.used_bytes or 0, 1) // weight // ALIGN * ALIGN
            add = min(share, p.old_bytes - p.new_bytes)
            p.new_bytes += add
            given += add
        extra -= given
        open_ = [p for p in open_ if p.new_bytes < p.old_bytes]
        if given == 0:
            break
    new = {k: v for k, v in table.items() if k not in ("partitions", "device", "lastlba")}
    if table.get("label") == "gpt":
        new["lastlba"] = total - gpt_backup_bytes(table) // ss - 1
    by_number = {parttable.partition_number(p): p for p in parts}
    cursor = first
    rows = []
    for p in plan.partitions:
        p.start_sector = _align_up(cursor, align)
        cursor = p.start_sector + p.new_bytes // ss
        row = {k: v for k, v in by_number[p.number].items() if k not in ("start", "size")}
        row.update(start=p.start_sector, size=p.new_bytes // ss)
        rows.append(row)
    if cursor > end:  # cannot happen: the sharing never gives more than was left
        raise RestoreError(f"Internal error: the smaller layout ends at sector {cursor} > {end}.")
    new["partitions"] = rows
    plan.table = new


# --------------------------------------------------------------------------- restoring


class SmallerJob:
    """The file-level restore of a :class:`SmallerPlan` onto the held target."""

    def __init__(self, plan: Any, report: JobReport, meter: ProgressMeter, phases: Any,
                 cancel: threading.Event | None) -> None:  # fmt: skip
        self.plan = plan
        self.layout: SmallerPlan = plan.smaller
        self.report = report
        self.meter = meter
        self.phases = phases
        self.cancel = cancel
        self.results: list[dict[str, Any]] = []
        self._mark = 0  # bytes done when the phase running began
        report.details["smaller"] = {**self.layout.to_dict(), "results": self.results}

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _phase(self, name: str, message: str) -> None:
        """Start phase ``name`` (again); the bytes done since the last one count there."""
        self._phase_done()
        self.phases.start(name)
        self.meter.update(phase=name, message=message)

    def _phase_done(self) -> None:
        """The bytes done since the phase running began count in it."""
        self.phases.add(self.meter.last.bytes_done - self._mark)
        self._mark = self.meter.last.bytes_done

    def _check_cancel(self) -> None:
        if self.cancelled():
            raise CancelledError(
                "The restore was cancelled. The target holds a partly written disk; restore "
                "again before using it."
            )

    def run(self, handle: Any) -> None:
        """Write everything onto the held target ``handle`` (a TargetHandle, exclusive)."""
        layout = self.layout
        ident = handle.identity
        if layout.partition is not None:  # onto an existing partition: no table
            handle.close_writer()  # mkfs opens it itself
            handle.ensure(f"making the filesystem on {ident.path}")
            self._files(layout.partitions[0], ident.path)
            self._phase_done()
            return
        self._phase("table", "clearing the old tables, writing the new one")
        self._head(handle)
        handle.sync()
        handle.close_writer()  # sfdisk, partx and mkfs open the disk themselves
        handle.ensure("writing the partition table")
        parttable.write_table(ident.path, layout.table)
        parttable.tell_kernel(ident.path)
        self._check_table(ident.path)
        for part in layout.partitions:
            self._check_cancel()
            with parttable.partition_device(
                ident.path, part.number, layout.table, read_only=False
            ) as node:
                handle.ensure_partition(node, part.number, f"writing partition {part.number}")
                if part.how == "block":
                    self._block(part, node)
                elif part.how == "swap":
                    self._swap(part, node)
                else:
                    self._files(part, node)
        self._phase_done()
        self.report.notes.append(
            "Restored onto a smaller disk: the disk's GUID, the partitions' types, names and "
            "UUIDs and the filesystems' UUIDs and labels are the image's."
        )

    # -- steps ---------------------------------------------------------------------------
    def _head(self, handle: Any) -> None:
        """Clear the space before the first partition (old tables, old boot code) and put
        back the image's boot code (the first 440 bytes of its first sector)."""
        first = min(p.start_sector for p in self.layout.partitions)
        ss = parttable.sector_size(self.layout.table)
        size = min(first * ss, ALIGN)
        buf = mmap.mmap(-1, _align_up(size, 4096))
        try:
            from rescueui.core.preflight import read_first_sector

            code = (read_first_sector(self.plan.image)[0] or b"")[:440]
            buf[: len(code)] = code
            handle.pwrite(memoryview(buf)[:size], 0)
        finally:
            buf.close()

    def _check_table(self, disk: str) -> None:
        """The table on the disk is the planned one (what sfdisk wrote, read back)."""
        now = parttable.read_table(disk) or {}
        want = self.layout.table
        problems = []
        if str(now.get("id", "")).lower() != str(want.get("id", "")).lower():
            problems.append(f"disk id {now.get('id')} instead of {want.get('id')}")
        have = {parttable.partition_number(p): p for p in now.get("partitions") or []}
        for p in want["partitions"]:
            n = parttable.partition_number(p)
            q = have.get(n)
            if q is None:
                problems.append(f"partition {n} missing")
                continue
            for key in ("start", "size", "type", "uuid", "name"):
                if str(p.get(key, "")).lower() != str(q.get(key, "")).lower():
                    problems.append(f"partition {n}: {key} {q.get(key)} instead of {p.get(key)}")
        if problems:
            raise RestoreError(
                f"The partition table written to {disk} is not the planned one: "
                + "; ".join(problems[:5])
                + ".",
                hint="Check the disk (it may be failing), then restore again.",
            )

    def _block(self, part: PlannedPartition, node: str) -> None:
        """Copy an image partition of unchanged size block for block; read it back."""
        from rescueui.core.images.view import served_partition

        what = f"partition {part.number}"
        self._phase("copy", f"{what}: copying block for block")
        source = blake3.blake3()
        with served_partition(self.plan.image.path, part.number) as served:
            src = os.open(served.device, os.O_RDONLY | os.O_CLOEXEC)
            dst = os.open(node, os.O_WRONLY | os.O_CLOEXEC)
            try:
                done = 0
                while done < part.old_bytes:
                    self._check_cancel()
                    try:
                        data = os.pread(src, min(BLOCK, part.old_bytes - done), done)
                    except OSError as exc:
                        raise CorruptImageError(
                            f"Partition {part.number} could not be read from the image at byte "
                            f"{done:,}: {served.problem() or exc.strerror}",
                            hint="The image is damaged; use another copy of it.",
                        ) from exc
                    if not data:
                        raise CorruptImageError(
                            f"Partition {part.number} of the image ended at byte {done:,}."
                        )
                    source.update(data)
                    view = memoryview(data)
                    while view:
                        view = view[os.pwrite(dst, view, done + len(data) - len(view)) :]
                    done += len(data)
                    self.meter.advance(len(data))
                os.fsync(dst)
            finally:
                os.close(dst)
                os.close(src)
        digest = source.hexdigest()
        if self.plan.verify:
            self._phase("verify", f"{what}: reading it back")
            back = _read_back(node, part.old_bytes, self.meter, self._check_cancel)
            if back != digest:
                raise RestoreError(
                    f"{what} read back from the target differs from the image's "
                    f"(BLAKE3 {back[:16]}... instead of {digest[:16]}...).",
                    hint="The target disk may be failing; restore onto another disk.",
                )
        self.results.append(
            {"partition": part.number, "how": "copied block for block", "blake3": digest,
             "read_back": self.plan.verify}
        )  # fmt: skip

    def _swap(self, part: PlannedPartition, node: str) -> None:
        from rescueui.core.images.view import served_partition

        self._phase("copy", f"partition {part.number}: making swap again")
        with served_partition(self.plan.image.path, part.number) as served:
            ident = fsmake.swap_identity(served.device)
        cmd = fsmake.make_swap_like(ident, node)
        self.results.append(
            {"partition": part.number, "how": "swap made again", "command": " ".join(cmd),
             "uuid": ident.uuid, "label": ident.label}
        )  # fmt: skip

    def _files(self, part: PlannedPartition, node: str) -> None:
        """Make the filesystem again, copy its files, check it, compare the trees."""
        from rescueui.core.files import copy_tree
        from rescueui.core.images.view import partition_view
        from rescueui.core.treesum import compare_trees

        what = f"partition {part.number}"
        fs = part.fs_type or ""
        with partition_view(self.plan.image.path, part.number) as view:
            self._phase("copy", f"{what}: making the {fs} filesystem again")
            ident = fsmake.identity_of(view.device, fs)
            cmd = fsmake.make_like(ident, node, part.new_bytes)
            self.meter.update(message=f"{what}: copying the files")
            before = self.meter.last.bytes_done
            with fsmount.mounted(node, fs, read_only=False, purpose="smaller") as target:
                try:
                    entries, warnings = copy_tree(view.root, target, self.meter, self.cancel)
                except OSError as exc:
                    damage = view.problem()
                    if damage is not None:
                        raise CorruptImageError(
                            f"{exc.filename or 'A file'} could not be read from the image: "
                            f"{damage}",
                            hint="The image is damaged; use another copy of it.",
                        ) from exc
                    if exc.errno == 28:  # ENOSPC
                        raise RestoreError(
                            f"{what} ({human_size(part.new_bytes)}) is full: its files need "
                            "more room than planned.",
                            hint="Restore onto a larger disk.",
                        ) from exc
                    raise
                _syncfs(target)
            # the progress planned the used blocks; it counts the files' bytes (copied, then
            # compared): the total follows what was copied
            copied = self.meter.last.bytes_done - before
            self.meter.bytes_total += (copied - (part.used_bytes or 0)) * (
                2 if self.plan.verify else 1
            )
            self.meter.update(bytes_total=self.meter.bytes_total)
            self.report.warnings += [f"{what}: {w}" for w in warnings]
            self._phase("check", f"{what}: checking the new filesystem")
            verdict = fsmake.check_clean(node, fs)
            result: dict[str, Any] = {
                "partition": part.number,
                "how": "filesystem made again, files copied",
                "command": " ".join(cmd),
                "uuid": ident.uuid,
                "label": ident.label,
                "entries": entries,
                "fsck": verdict,
            }
            if self.plan.verify:
                self._phase("verify", f"{what}: comparing the files")
                with fsmount.mounted(node, fs, read_only=True, purpose="smaller") as target:
                    tree = compare_trees(
                        view.root, target, progress=self.meter.advance, cancel=self.cancel
                    )
                result["tree"] = tree.to_dict()
        self.results.append(result)


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        with contextlib.suppress(AttributeError, OSError):
            os.syncfs(fd)  # type: ignore[attr-defined]
    finally:
        os.close(fd)


def _read_back(node: str, size: int, meter: ProgressMeter, check: Any) -> str:
    """BLAKE3 of ``size`` bytes of ``node`` read from the medium (O_DIRECT)."""
    h = blake3.blake3()
    buf = mmap.mmap(-1, BLOCK)
    flags = os.O_RDONLY | os.O_CLOEXEC
    try:
        fd = os.open(node, flags | os.O_DIRECT)
    except OSError:
        fd = os.open(node, flags)
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    try:
        done = 0
        while done < size:
            check()
            want = min(BLOCK, size - done)
            n = os.preadv(fd, [memoryview(buf)[: _align_up(want, 4096)]], done)
            n = min(n, want)
            if n <= 0:
                raise RestoreError(f"{node} ended at byte {done:,} while it was read back.")
            h.update(memoryview(buf)[:n])
            done += n
            meter.advance(n)
    finally:
        os.close(fd)
        buf.close()
    return h.hexdigest()


def work_bytes(plan: SmallerPlan, verify: bool) -> int:
    """The bytes the job's progress counts: copied (and read back or compared)."""
    total = 0
    for p in plan.partitions:
        if p.how == "block":
            total += p.old_bytes
        elif p.how == "files":
            total += p.used_bytes or 0
    return total * (2 if verify else 1)


def run_smaller(
    plan: Any, *, progress: ProgressCallback | None = None, cancel: threading.Event | None = None
) -> JobReport:
    """The restore of ``plan`` (a RestorePlan with ``smaller``): see the module doc. Returns
    the written report; raises :class:`RescueError` with it as ``exc.report`` otherwise."""
    from rescueui.core.identity import recheck
    from rescueui.core.lock import WriterLock
    from rescueui.core.restore import Phases, restore_report, run_fixups, run_job
    from rescueui.core.target import check_target_safety, open_target

    image = plan.image
    layout: SmallerPlan = plan.smaller
    total = work_bytes(layout, plan.verify)
    report = restore_report(plan, total)
    report.details.update(files_copied=True)
    if not plan.verify:
        report.warnings.append(
            "Verification was turned off: the copied files were not compared with the image's "
            "and the partitions copied block for block were not read back."
        )
    meter = ProgressMeter("restore", total, progress or (lambda _p: None))
    phases = Phases()
    job = SmallerJob(plan, report, meter, phases, cancel)

    def body() -> None:
        with WriterLock(plan.identity.path, job="restore", path=plan.lock_path):
            check_target_safety(recheck(plan.target), image_dir=image.path)
            handle = open_target(plan.target)
            report.details["direct_io"] = handle.direct
            try:
                job.run(handle)
                if plan.adapt is not None:
                    phases.start("adapt")
                    run_fixups(plan, handle, report, meter)
            finally:
                handle.close()
        phases.stop()
        meter.update(phase="done", message="restore complete")

    return run_job(plan, report, meter, phases, body)
