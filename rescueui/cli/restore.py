"""`rescueui restore IMAGE_DIR TARGET` — restore an image onto a disk, a partition or a file.

::

    rescueui restore IMAGE_DIR TARGET_DISK --yes [--resume] [--no-verify] [--no-grow]
                     [--accept-warnings | --accept-warning CODE ...]
    rescueui restore IMAGE_DIR --partition N TARGET_PARTITION --yes
    rescueui restore IMAGE_DIR vm-disk.img --create image --yes     # new disk image file

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
import contextlib
import dataclasses
import os
import re
import sys
from typing import Any

from rescueui.cli.progress_display import ProgressDisplay
from rescueui.core.errors import (
    RescueError,
    TargetChangedError,
    UnsafeTargetError,
)
from rescueui.core.units import human_duration, human_rate, human_size

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "restore",
        help="restore an image onto a disk, a partition or a disk image file",
        description="Restore IMAGE_DIR onto TARGET (a whole disk such as /dev/sdb, or with "
        "--partition N one image partition onto an existing partition, or a disk image "
        "file). Every chunk is checked against its BLAKE3 before it is written, and the "
        "target is read back afterwards. Exit status 0 only on success.",
    )
    p.add_argument("image_dir", metavar="IMAGE_DIR", help="image folder (made by rescueui capture)")
    p.add_argument("target", metavar="TARGET", help="target disk, partition or disk image file")
    p.add_argument(
        "--partition",
        type=int,
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
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def parse_size(text: str) -> int:
    m = _SIZE_RE.match(text)
    if not m:
        raise RescueError(
            f"Cannot read the size '{text}'.",
            hint="Give bytes, or a number with K, M, G or T (e.g. 20G), or 'image'.",
        )
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(m.group(1)) * factor


def create_file_target(path: str, size_text: str, image_dir: str) -> None:
    if size_text.strip().lower() == "image":
        from rescueui.core.image import Image

        with Image.open(image_dir) as image:
            size = int(image.manifest.source_disk.get("size_bytes") or image.extent_bytes)
    else:
        size = parse_size(size_text)
    if size <= 0:
        raise RescueError("--create needs a size larger than 0.")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError as exc:
        raise UnsafeTargetError(
            f"{path} already exists; --create only makes new files.",
            hint="Leave out --create to restore onto the existing file, or choose a new name.",
        ) from exc
    except OSError as exc:
        raise RescueError(f"Cannot create {path}: {exc.strerror}.") from exc
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise RescueError(f"Cannot make {path} {human_size(size)} large: {exc.strerror}.") from exc
    os.close(fd)
    print(f"Created {path} ({human_size(size)}, {size} bytes).", file=sys.stderr)


def _say(text: str = "") -> None:
    print(text, file=sys.stderr)


def show_plan(plan: Any, code: str) -> None:
    ident = plan.identity
    image = plan.image
    src = image.manifest.source_disk
    what = (
        f"partition {plan.partition} of the image"
        if plan.partition is not None
        else "the whole disk image"
    )
    _say(f"Image:   {image.dir}")
    _say(
        f"         from {src.get('path', '?')} {src.get('model') or ''} "
        f"({human_size(int(src.get('size_bytes') or 0))}), captured {image.manifest.created}"
    )
    _say(f"Target:  {ident.describe()}")
    _say(f"Writes:  {what}, {human_size(plan.needed_bytes)}")
    _say("This DESTROYS everything on the target:")
    for line in plan.destroys():
        _say(f"  {line}")
    shown = [f for f in plan.findings if getattr(f, "level", "ok") in ("info", "warn", "stop")]
    if shown:
        _say("Pre-flight:")
        for f in shown:
            _say(f"  [{f.level.upper()}] {f.message}")
    for a in plan.acknowledgements:
        _say(f"  [ACK] {a.code}: acknowledged by {a.by}")
    _say(f"Confirmation code: {code}")


def ask_code(code: str, path: str) -> str:
    if not sys.stdin.isatty():
        raise UnsafeTargetError(
            f"Not restoring onto {path}: no --yes given and no terminal to ask for the "
            "confirmation code.",
            hint="Run it on a terminal, or pass --yes in scripts once you are sure of the target.",
        )
    try:
        return input(f"Type '{code}' to overwrite {path}: ")
    except EOFError:
        return ""


def run(args: argparse.Namespace) -> int:
    from rescueui.cli.progress_display import run_job
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore

    created = False
    try:
        if args.create:
            create_file_target(args.target, args.create, args.image_dir)
            created = True
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
            accept_warnings=args.accept_warnings,
            accepted_codes=args.accept_warning,
            acknowledged_by="--accept-warnings" if args.accept_warnings else "--accept-warning",
        )
        if not args.quiet or not args.yes:
            show_plan(plan, code)
        if not args.yes:
            typed = ask_code(code, ident.path)
            final = confirm_target(args.target, typed)
            if final.identity != plan.identity:
                raise TargetChangedError(
                    f"{ident.path} changed while you were confirming.",
                    hint="Nothing was written. Start again.",
                )
            plan = dataclasses.replace(plan, target=final)
    except RescueError as exc:
        if created:  # nothing was written to it: do not leave an empty file behind
            with contextlib.suppress(OSError):
                os.unlink(args.target)
        _say(f"rescueui restore: {exc}")
        return exc.exit_code

    return run_job(
        "restore",
        lambda progress, cancel: restore(plan, progress=progress, cancel=cancel),
        quiet=args.quiet,
        as_json=args.json,
        display=RestoreDisplay("restore"),
    )


class RestoreDisplay(ProgressDisplay):
    """The shared progress display, plus the phase and both rates (now / average)."""

    def callback(self, snap: Any) -> None:
        if self._task is None:
            return
        chunk = ""
        if snap.last_chunk is not None:
            c = snap.last_chunk
            chunk = f"{c.stream}#{c.index} {c.blake3[:12]}" + (" zero" if c.zero else "")
        self._progress.update(
            self._task,
            description=f"{snap.phase:15}",
            completed=snap.bytes_done,
            total=max(snap.bytes_total, 1),
            done=human_size(snap.bytes_done),
            size=human_size(snap.bytes_total),
            rate=f"{human_rate(snap.rate_now)} now, {human_rate(snap.rate_avg)} avg",
            eta=human_duration(snap.eta),
            chunk=chunk,
        )
        if not self.live and snap.bytes_total:
            step = int(snap.bytes_done * 20 // snap.bytes_total)  # a line every 5 %
            key = (step, snap.phase)
            if key != self._last_tenth:
                self._last_tenth = key
                print(
                    f"restore {snap.phase}: {snap.bytes_done * 100 / snap.bytes_total:5.1f}% "
                    f"{human_size(snap.bytes_done)} of {human_size(snap.bytes_total)} "
                    f"{human_rate(snap.rate_now)} now {human_rate(snap.rate_avg)} avg "
                    f"ETA {human_duration(snap.eta)}",
                    file=sys.stderr,
                    flush=True,
                )
