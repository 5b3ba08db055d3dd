"""The virtual-machine options of restore and preflight: --to-vm DIR and its choices."""

from __future__ import annotations

import argparse
from typing import Any

from rescueui.core.errors import RescueError
from rescueui.core.units import MiB, parse_size


def add_vm_arguments(p: argparse.ArgumentParser) -> None:
    from rescueui.core.vm.machine import DEFINITIONS, FORMATS

    g = p.add_argument_group("a new virtual machine instead of a disk")
    g.add_argument(
        "--to-vm",
        metavar="DIR",
        help="restore into the disk of a new virtual machine in the folder DIR, with its "
        "definition (DIR/NAME.xml, libvirt); no TARGET then",
    )
    g.add_argument(
        "--format",
        dest="vm_format",
        choices=FORMATS,
        default="qcow2",
        help="the VM disk's format (default qcow2)",
    )
    g.add_argument("--name", dest="vm_name", metavar="NAME", help="the VM's name (file names)")
    g.add_argument("--vcpus", type=int, metavar="N", help="vCPUs (default: the source's, fitted)")
    g.add_argument(
        "--memory", metavar="SIZE", help="memory, e.g. 4G (default: the source's, fitted)"
    )
    g.add_argument(
        "--disk-size",
        dest="vm_disk_size",
        metavar="SIZE",
        help="the VM disk's size, e.g. 100G, at least the source disk's: the last partition "
        "and its filesystem are grown (default: the source disk's size)",
    )
    g.add_argument(
        "--firmware",
        dest="vm_firmware",
        choices=("bios", "uefi"),
        help="the VM's firmware (default: what the image boots by)",
    )
    g.add_argument(
        "--definition",
        dest="vm_definitions",
        action="append",
        choices=[d for d in DEFINITIONS if d != "libvirt"],
        default=[],
        help="also write NAME.vmx or NAME.ovf (needs --format vmdk)",
    )
    g.add_argument(
        "--host-cpus",
        type=int,
        metavar="N",
        help="CPUs of the host that will run the VM (default: its --for-host profile, or "
        "this machine)",
    )
    g.add_argument("--host-memory", metavar="SIZE", help="memory of the host that will run it")


def parse_memory(option: str, text: str) -> int:
    """SIZE of --memory / --host-memory: a number with K, M, G or T (plain numbers: MiB)."""
    size = parse_size(text, plain=MiB)
    if size is None:
        raise RescueError(
            f"{option} {text[:40]!r}: cannot read this size.",
            hint="Give a number with M or G, e.g. 4G or 512M.",
        )
    return size


def disk_size(text: str) -> int:
    """SIZE of --disk-size: bytes, or a number with K, M, G or T."""
    size = parse_size(text)
    if size is None:
        raise RescueError(
            f"--disk-size {text[:40]!r}: cannot read this size.",
            hint="Give a number with G or T, e.g. 100G, or bytes.",
        )
    return size


def vm_request(args: argparse.Namespace) -> Any:
    """The --to-vm choices as the core's VmRequest (--for-host is the host that runs it)."""
    from rescueui.core.host import load_profile
    from rescueui.core.vm.machine import VmRequest

    request = VmRequest(
        folder=args.to_vm,
        name=args.vm_name,
        disk_format=args.vm_format,
        definitions=("libvirt", *dict.fromkeys(args.vm_definitions)),
        vcpus=args.vcpus,
        memory_bytes=parse_memory("--memory", args.memory) if args.memory else None,
        firmware=args.vm_firmware,
        disk_bytes=disk_size(args.vm_disk_size) if args.vm_disk_size else None,
        runs_on=load_profile(args.for_host) if args.for_host else None,
        host_cpus=args.host_cpus,
        host_memory_bytes=parse_memory("--host-memory", args.host_memory)
        if args.host_memory
        else None,
    )
    if request.host_cpus is not None and request.host_cpus < 1:
        raise RescueError(f"--host-cpus {request.host_cpus}: a host has at least 1 CPU.")
    request.check()
    return request


def vm_adapt_options(args: argparse.Namespace) -> Any:
    """The fix-up choice for a VM: --for-host names the host that runs the VM, not the
    machine the system lands on (that is the VM itself)."""
    from rescueui.cli.adapt_options import adapt_options

    saved, args.for_host = args.for_host, None
    try:
        return adapt_options(args)
    finally:
        args.for_host = saved


def vm_only_options(args: argparse.Namespace) -> list[str]:
    """VM options given without --to-vm (an error: they would be ignored)."""
    given = []
    for opt, attr, default in (
        ("--name", "vm_name", None),
        ("--vcpus", "vcpus", None),
        ("--memory", "memory", None),
        ("--firmware", "vm_firmware", None),
        ("--disk-size", "vm_disk_size", None),
        ("--host-cpus", "host_cpus", None),
        ("--host-memory", "host_memory", None),
        ("--format", "vm_format", "qcow2"),
    ):
        if getattr(args, attr, default) != default:
            given.append(opt)
    if getattr(args, "vm_definitions", []):
        given.append("--definition")
    return given
