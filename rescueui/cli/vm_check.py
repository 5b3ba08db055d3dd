"""`rescueui vm-check DEFINITION`: check a VM definition against the disk it names."""

from __future__ import annotations

import argparse

from rescueui.cli.output import echo, echo_json


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "vm-check",
        help="check a VM definition (libvirt .xml, .vmx, .ovf) and the disk it names",
        description="Read a VM definition (as `rescueui restore --to-vm` writes it), validate "
        "a libvirt domain against libvirt's schema (virt-xml-validate, where installed), and "
        "check that the disk it names is there, a regular file in the format it says. "
        "Exit status 0 only if everything checks out.",
    )
    p.add_argument("definition", metavar="DEFINITION", help="NAME.xml, NAME.vmx or NAME.ovf")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from rescueui.core.vm.check import check_definition

    result = check_definition(args.definition)
    if args.json:
        echo_json(result.to_dict())
    else:
        echo("{}: {}", "OK" if result.ok else "FAILED", result.summary())
        for note in result.notes:
            echo("  Note: {}", note)
    return 0 if result.ok else 1
