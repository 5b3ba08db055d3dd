"""`rescueui preflight IMAGE TARGET [--partition N] [--no-grow] [--json]`.

Prints every pre-flight finding: the level as a word (OK / INFO / WARN / STOP) and as a
colour (never colour alone), the one-line message and, indented, the detail.
Nothing is written. Exit status: 0 when nothing stops the restore (warnings still need
``--accept-warnings`` on ``rescueui restore``), 3 when a STOP was found, 1 on an error
(image unreadable, target not found).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.text import Text

from rescueui.cli.adapt_options import adapt_options, add_adapt_arguments
from rescueui.cli.output import console as safe_console
from rescueui.cli.output import echo_json, partition_number, plain
from rescueui.cli.vm_options import add_vm_arguments, vm_only_options
from rescueui.core.errors import RescueError
from rescueui.core.images import open_image
from rescueui.core.preflight import Finding, TargetInfo, preflight_report, run_preflight, stops

EXIT_STOP = 3

LEVEL_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "stop": "bold red"}
LEVEL_WORD = {"ok": "OK", "info": "INFO", "warn": "WARN", "stop": "STOP"}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "preflight",
        help="check an image against a target disk and this machine (nothing is written)",
        description="Pre-flight check: does the image fit the target, does this machine match "
        "the one the image came from (firmware, CPUs, memory, disk bus, sector size, "
        "virtual/physical), and what is on the target now. Nothing is written. "
        f"Exit status 0 when nothing stops a restore, {EXIT_STOP} when something does.",
    )
    from rescueui.cli.restore import IMAGE_HELP

    p.add_argument("image_dir", metavar="IMAGE", help=IMAGE_HELP)
    p.add_argument(
        "target",
        metavar="TARGET",
        nargs="?",
        help="target disk (e.g. /dev/sdb), target partition with --partition, or a disk image "
        "file (none with --to-vm)",
    )
    p.add_argument(
        "--partition",
        type=partition_number,
        metavar="N",
        help="check restoring only image partition N onto the partition TARGET",
    )
    p.add_argument(
        "--no-grow",
        action="store_true",
        help="as for a restore that keeps the image's partition sizes on a larger disk",
    )
    add_adapt_arguments(p)
    add_vm_arguments(p)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")


def format_finding(f: Finding, *, colour: bool = True) -> Text:
    """One finding as Rich text: ``[STOP] message`` + indented detail. The message and the
    detail quote the image (models, labels, warnings): no markup is read in them and their
    control characters are shown escaped."""
    word = f"[{LEVEL_WORD[f.level]}]".ljust(6)
    text = Text()
    text.append(word, style=LEVEL_STYLE[f.level] if colour else "")
    text.append(" ")
    text.append_text(plain(f.message))
    if f.detail:
        for line in str(f.detail).split("\n"):
            text.append("\n       ")
            text.append_text(plain(line))
    return text


def summary(findings: list[Finding]) -> str:
    n_stop = len(stops(findings))
    n_warn = sum(1 for f in findings if f.level == "warn")
    if n_stop:
        return f"STOP: {n_stop} problem(s) prevent this restore. Nothing would be written."
    if n_warn:
        return (
            f"WARN: {n_warn} warning(s); a restore needs each acknowledged "
            "(rescueui restore ... --accept-warnings)."
        )
    return "OK: nothing stops this restore."


def _findings(args: argparse.Namespace) -> tuple[list[Finding], str, Any]:
    """(findings, what the target is called, the VM planned or None)."""
    if args.to_vm is not None:
        if args.target is not None or args.partition is not None:
            raise RescueError(
                "--to-vm checks a new VM disk; a TARGET or --partition cannot go with it."
            )
        from rescueui.cli.vm_options import vm_adapt_options, vm_request
        from rescueui.core.vm.job import preflight_vm

        vm, findings = preflight_vm(args.image_dir, vm_request(args), adapt=vm_adapt_options(args))
        return findings, f"new VM {vm.name} in {args.to_vm}", vm
    if args.target is None:
        raise RescueError(
            "No TARGET given.", hint="Name the target disk, partition or file, or use --to-vm DIR."
        )
    stray = vm_only_options(args)
    if stray:
        raise RescueError(f"{', '.join(stray)} only apply with --to-vm.")
    with open_image(args.image_dir) as image:
        target = TargetInfo.from_path(args.target, image_paths=[image.path])
        findings = run_preflight(
            image,
            target,
            partition=args.partition,
            grow=not args.no_grow,
            adapt=adapt_options(args) if args.partition is None else None,
        )
    return findings, target.path, None


def run(args: argparse.Namespace) -> int:
    findings, target_name, vm = _findings(args)
    code = EXIT_STOP if stops(findings) else 0
    if args.json:
        out = preflight_report(findings)
        out["image"] = str(args.image_dir)
        out["target"] = target_name
        out["partition"] = args.partition
        if vm is not None:
            out["vm"] = vm.to_dict()
        echo_json(out)
        return code
    console = safe_console(soft_wrap=True)
    head = Text("Pre-flight: ")
    head.append_text(plain(args.image_dir))
    head.append(" -> ")
    head.append_text(plain(target_name))
    if args.partition:
        head.append(f" (image partition {args.partition})")
    console.print(head)
    for f in findings:
        console.print(format_finding(f))
    last = summary(findings)
    style = "bold red" if code else ("yellow" if last.startswith("WARN") else "green")
    console.print(Text(last, style=style))
    sys.stdout.flush()
    return code
