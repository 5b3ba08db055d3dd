"""`rescueui restore IMAGE TARGET` — restore an image onto a disk, a partition or a file.

::

    rescueui restore IMAGE TARGET_DISK --yes [--resume] [--no-verify] [--no-grow]
                     [--accept-warnings | --accept-warning CODE ...]
    rescueui restore IMAGE --partition N TARGET_PARTITION --yes
    rescueui restore IMAGE vm-disk.img --create image --yes     # new disk image file

Without ``--yes`` it shows what will be destroyed and the pre-flight findings, then asks
for the confirmation code (the last characters of the target's serial/WWN, or its device
name / file name) on the terminal; with no terminal it refuses. Exit status 0 only when
the restore (and, unless ``--no-verify``, the read-back verify) succeeded.

A pre-flight stop always refuses. Each pre-flight warning must be acknowledged: all of them
with ``--accept-warnings``, or one by one with ``--accept-warning CODE``; the findings and
the acknowledgements (code, message, by, at) go into the report.

``--create SIZE`` creates TARGET as a new regular file first (it must not exist): SIZE
in bytes or with a K/M/G/T suffix (powers of 1024), or ``image`` for the size of the
source disk the image was captured from. Without ``--create`` a file target must exist
and be large enough.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from rescueui.cli.adapt_options import adapt_options, add_adapt_arguments
from rescueui.cli.output import partition_number, say
from rescueui.cli.progress_display import ProgressDisplay
from rescueui.cli.vm_options import add_vm_arguments, vm_only_options
from rescueui.core import units
from rescueui.core.errors import (
    CancelledError,
    RescueError,
    UnsafeTargetError,
)
from rescueui.core.image import MAX_STREAM_BYTES
from rescueui.core.targets.newfile import NewFile, create_new_file
from rescueui.core.units import human_duration, human_rate, human_size

MAX_CREATE_BYTES = MAX_STREAM_BYTES  # what an image can describe (1 PiB); more is a typo
SIZE_HINT = "Give bytes, or a number with K, M, G or T (e.g. 20G), or 'image' for the size of the source disk."


IMAGE_HELP = (
    "the image, any kind (recognised by its content): a rescueui image folder, a VM disk "
    "(qcow2, vmdk, vhdx, vdi, vhd), a raw disk image (also .gz .xz .zst .bz2, with a .bmap "
    "next to it), or a Clonezilla image folder"
)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "restore",
        help="restore an image onto a disk, a partition or a disk image file",
        description="Restore IMAGE onto TARGET (a whole disk such as /dev/sdb, or with "
        "--partition N one image partition onto an existing partition, or a disk image "
        "file). Each piece is checked against what the image carries (a rescueui image's "
        "BLAKE3 per chunk, a bmap's SHA-256 per range, partclone's block checksums) before "
        "it is written, and the target is read back afterwards. Exit status 0 only on "
        "success.",
    )
    p.add_argument("image_dir", metavar="IMAGE", help=IMAGE_HELP)
    p.add_argument(
        "target",
        metavar="TARGET",
        nargs="?",
        help="target disk, partition or disk image file (none with --to-vm)",
    )
    p.add_argument(
        "--partition",
        type=partition_number,
        metavar="N",
        help="restore only image partition N onto TARGET, an existing partition",
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="do not ask for the confirmation code (scripts); the target is still checked",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted restore of this image onto this target (re-verifies "
        "what was written, then continues)",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip the read-back verify of the target"
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="make the space no filesystem uses zero on any target too (default: only where "
        "the target zeroes fast; a spinning disk keeps its old bytes there)",
    )
    p.add_argument(
        "--no-grow",
        action="store_true",
        help="on a larger disk keep the partitions at their image sizes",
    )
    p.add_argument(
        "--accept-warnings",
        action="store_true",
        help="acknowledge every pre-flight warning and go ahead (a stop still refuses)",
    )
    p.add_argument(
        "--accept-warning",
        action="append",
        default=[],
        metavar="CODE",
        help="acknowledge one pre-flight warning by its code (as `rescueui preflight --json` "
        "shows it, e.g. cpus); repeat for each; any other warning still refuses",
    )
    p.add_argument(
        "--create",
        metavar="SIZE",
        help="create TARGET as a new disk image file of SIZE (e.g. 20G, or 'image' for the "
        "source disk's size)",
    )
    add_adapt_arguments(p)
    add_vm_arguments(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def parse_size(text: str) -> int:
    """``--create`` SIZE: bytes or K/M/G/T (powers of 1024), ASCII digits only, 1 byte to
    :data:`MAX_CREATE_BYTES`. Raises RescueError naming the option and the value."""
    size = units.parse_size(text)
    if size is None:
        raise RescueError(f"--create {text[:40]!r}: cannot read this size.", hint=SIZE_HINT)
    return check_size(size, text)


def check_size(size: int, text: str) -> int:
    if size <= 0:
        raise RescueError(
            f"--create {text!r}: the size must be larger than 0 bytes.", hint=SIZE_HINT
        )
    if size > MAX_CREATE_BYTES:
        raise RescueError(
            f"--create {text!r}: {size} bytes is larger than any disk image this tool makes "
            f"(at most {human_size(MAX_CREATE_BYTES)}, {MAX_CREATE_BYTES} bytes).",
            hint=SIZE_HINT,
        )
    return size


CreatedFile = NewFile  # a file this run made with --create


def create_file_target(path: str, size_text: str, image_dir: str) -> CreatedFile:
    """Create ``path`` as a new file of ``size_text`` (``--create``). Nothing is left behind
    when this fails."""
    if not size_text.strip():
        raise RescueError("--create needs a size; it was given an empty one.", hint=SIZE_HINT)
    if size_text.strip().lower() == "image":
        from rescueui.core.images import open_image

        with open_image(image_dir) as image:
            size = int(image.manifest.source_disk.get("size_bytes") or image.extent_bytes)
        check_size(size, size_text)
    else:
        size = parse_size(size_text)
    created = create_new_file(path, size)
    say("Created {} ({}, {} bytes).", path, human_size(size), size)
    return created


def show_findings(plan: Any) -> None:
    """The pre-flight findings worth reading and the acknowledgements, one line each."""
    shown = [f for f in plan.findings if getattr(f, "level", "ok") in ("info", "warn", "stop")]
    if shown:
        say("Pre-flight:")
        for f in shown:
            say("  [{}] {}", f.level.upper(), f.message)
    for a in plan.acknowledgements:
        say("  [ACK] {}: acknowledged by {}", a.code, a.by)


def show_plan(plan: Any, code: str) -> None:
    """What the restore will do. Whatever comes from the image (its source, warnings,
    pre-flight findings quoting it) comes first; what will be destroyed comes last, right
    before the confirmation prompt, so nothing from the image can be printed after it."""
    ident = plan.identity
    image = plan.image
    src = image.manifest.source_disk
    say("Image:   {}", image.dir)
    say(
        "         from {} {} ({}), captured {}",
        src.get("path", "?"),
        src.get("model") or "",
        human_size(int(src.get("size_bytes") or 0)),
        image.manifest.created,
    )
    show_findings(plan)
    say("Target:  {}", ident.describe())
    say("Writes:  {}", plan.writes)
    say("This DESTROYS everything on the target:")
    for line in plan.destroys():
        say("  {}", line)
    say("Confirmation code: {}", code)


def ask_code(code: str, path: str) -> str:
    if not sys.stdin.isatty():
        raise UnsafeTargetError(
            f"Not restoring onto {path}: no --yes given and no terminal to ask for the "
            "confirmation code.",
            hint="Run it on a terminal, or pass --yes in scripts once you are sure of the target.",
        )
    say("Type '{}' to overwrite {}: ", code, path, end="")
    try:
        return input()
    except EOFError:
        return ""


def _image_reports(image_dir: str) -> Path | None:
    """The image's report folder, only if ``image_dir`` really is an image folder (a typo
    must not create folders); None: the report goes to the fallback folder."""
    folder = Path(image_dir)
    return folder / "reports" if (folder / "manifest.json").is_file() else None


def _created_note(created: CreatedFile | None, exc: RescueError | None, image_dir: str) -> str:
    """What happened to the ``--create`` file after a refusal or failure, in one sentence."""
    if created is None:
        return ""
    report = getattr(exc, "report", None)
    phases = getattr(report, "phases", None) or {}
    if isinstance(exc, CancelledError):
        return (
            f"{created.path} (made by --create) is kept so that the restore can continue: "
            f"rescueui restore {image_dir} {created.path} --resume (without --create); "
            "delete it if you do not want to continue."
        )
    if "grow" in phases:  # written and verified; only a step after the restore failed
        return (
            f"{created.path} (made by --create) is kept: the image was written to it and "
            "verified; only the step after the restore failed."
        )
    refused = report is None or getattr(report, "outcome", None) == "refused"
    if refused and created.remove():  # refused before the job started
        return (
            f"{created.path} was removed again: this run created it (--create) and nothing "
            "was written to it."
        )
    if created.remove():
        return (
            f"{created.path} was removed again: this run created it (--create) and the "
            "restore did not finish, so it held nothing usable; start again with --create "
            "(there is nothing to --resume)."
        )
    if created.still_ours():
        return f"{created.path} (made by --create) could not be removed; delete it by hand."
    return ""


def _check_target_args(args: argparse.Namespace) -> None:
    if args.to_vm is not None:
        clash = [
            opt
            for opt, given in (
                ("TARGET", args.target is not None),
                ("--partition", args.partition is not None),
                ("--create", args.create is not None),
                ("--resume", args.resume),
                ("--no-verify", args.no_verify),  # a VM disk is always read back
            )
            if given
        ]
        if clash:
            raise RescueError(
                f"--to-vm makes a new VM disk; {', '.join(clash)} cannot go with it.",
                hint="Leave them out, or restore onto a disk without --to-vm.",
            )
        return
    if args.target is None:
        raise RescueError(
            "No TARGET given.", hint="Name the target disk, partition or file, or use --to-vm DIR."
        )
    stray = vm_only_options(args)
    if stray:
        raise RescueError(
            f"{', '.join(stray)} only apply with --to-vm.",
            hint="Add --to-vm DIR, or leave them out.",
        )


def run(args: argparse.Namespace) -> int:
    try:
        _check_target_args(args)
    except RescueError as exc:
        from rescueui.cli.output import say as _say

        _say("rescueui restore: {}", exc)
        return 2
    if args.to_vm is not None:
        return run_to_vm(args)
    from rescueui.cli.progress_display import job_failed, run_job
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore

    created: CreatedFile | None = None
    plan: Any = None
    try:
        if args.create is not None:
            created = create_file_target(args.target, args.create, args.image_dir)
        ident = identity_of(args.target)
        code = confirmation_code(ident)
        # The operator sees the plan (what is destroyed, pre-flight) for the identity seen
        # now; the confirmation below must be for that same identity.
        provisional = confirm_target(args.target, code)
        plan = plan_restore(
            args.image_dir,
            provisional,
            partition=args.partition,
            verify=not args.no_verify,
            resume=args.resume,
            grow=not args.no_grow,
            exact=args.exact,
            adapt=adapt_options(args) if args.partition is None else None,
            accept_warnings=args.accept_warnings,
            accepted_codes=args.accept_warning,
            acknowledged_by="--accept-warnings" if args.accept_warnings else "--accept-warning",
        )
        if not args.quiet or not args.yes:
            show_plan(plan, code)
        if not args.yes:
            typed = ask_code(code, ident.path)
            # the device now at the name must be the one planned and shown (the core checks)
            final = confirm_target(args.target, typed, expected=plan.identity)
            plan = dataclasses.replace(plan, target=final)
    except RescueError as exc:
        # Refused before anything was written: a refusal report, and no file left behind.
        if plan is not None:
            plan.image.close()
        note = _created_note(created, exc, args.image_dir)
        return job_failed(
            "restore",
            exc,
            as_json=args.json,
            report_dir=_image_reports(args.image_dir),
            fields={"source": args.image_dir, "image_dir": args.image_dir, "target": args.target},
            after=lambda _exc: note,
        )
    except BaseException:  # Ctrl-C at the prompt, a bug: still no file left behind
        if plan is not None:
            plan.image.close()
        if created is not None:
            created.remove()
        raise

    return run_job(
        "restore",
        lambda progress, cancel: restore(plan, progress=progress, cancel=cancel),
        quiet=args.quiet,
        as_json=args.json,
        display=None if args.quiet else RestoreDisplay("restore"),
        after=lambda exc: _created_note(created, exc, args.image_dir),
    )


def run_to_vm(args: argparse.Namespace) -> int:
    """``--to-vm DIR``: the restore into a new VM's disk, and its definition."""
    from rescueui.cli.progress_display import job_failed, run_job
    from rescueui.cli.vm_options import vm_adapt_options, vm_request
    from rescueui.core.restore import restore
    from rescueui.core.vm.job import plan_vm_restore

    try:
        request = vm_request(args)
        plan = plan_vm_restore(
            args.image_dir,
            request,
            adapt=vm_adapt_options(args),
            accept_warnings=args.accept_warnings,
            accepted_codes=args.accept_warning,
            acknowledged_by="--accept-warnings" if args.accept_warnings else "--accept-warning",
        )
    except RescueError as exc:
        return job_failed(
            "restore",
            exc,
            as_json=args.json,
            report_dir=_image_reports(args.image_dir),
            fields={"source": args.image_dir, "image_dir": args.image_dir, "target": args.to_vm},
        )
    if not args.quiet:
        show_vm_plan(plan)
    return run_job(
        "restore",
        lambda progress, cancel: restore(plan, progress=progress, cancel=cancel),
        quiet=args.quiet,
        as_json=args.json,
        display=None if args.quiet else RestoreDisplay("restore"),
    )


def show_vm_plan(plan: Any) -> None:
    """The VM to be made and the pre-flight findings (nothing existing is overwritten, so
    no confirmation code is asked)."""
    vm = plan.final_step.vm
    say("Image:   {}", plan.image.dir)
    show_findings(plan)
    say(
        "VM:      {} -- {} vCPU(s), {}, {}, disk {} ({}, {}, {}), network card {}",
        vm.name,
        vm.vcpus,
        human_size(vm.memory_bytes),
        vm.firmware.upper(),
        vm.disk_file,
        vm.disk_format,
        vm.disk_bus,
        human_size(vm.disk_bytes),
        vm.nic_model,
    )
    say("Writes:  new files in {} (nothing existing is overwritten)", plan.final_step.folder)


class RestoreDisplay(ProgressDisplay):
    """The shared progress display, plus the phase and both rates (now / average)."""

    def callback(self, snap: Any) -> None:
        if not self._started:
            return
        self.update_bar(
            snap,
            f"{snap.phase:15}",
            f"{human_rate(snap.rate_now)} now, {human_rate(snap.rate_avg)} avg",
        )
        if not self.live and snap.bytes_total:
            step = int(snap.bytes_done * 20 // snap.bytes_total)  # a line every 5 %
            key = (step, snap.phase)
            if key != self._last_tenth:
                self._last_tenth = key
                say(
                    "restore {}: {} {} of {} {} now {} avg ETA {}",
                    snap.phase,
                    f"{snap.bytes_done * 100 / snap.bytes_total:5.1f}%",
                    human_size(snap.bytes_done),
                    human_size(snap.bytes_total),
                    human_rate(snap.rate_now),
                    human_rate(snap.rate_avg),
                    human_duration(snap.eta),
                )
