"""`rescueui inspect PATH [--json]`: what an image is (any kind), nothing written."""

from __future__ import annotations

import argparse

from rescueui.cli.output import echo_json, say


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "inspect",
        help="say what an image is: kind, layout, sizes, checksums it carries, source machine",
        description="Open an image of any kind (a rescueui folder, a VM disk: qcow2, vmdk, "
        "vhdx, vdi, vhd; a raw disk image, also gzip/xz/zstd/bzip2-compressed, with a .bmap) "
        "and describe it. Nothing is written.",
    )
    p.add_argument("path", metavar="PATH", help="image folder or image file")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def run(args: argparse.Namespace) -> int:
    from rescueui.core.images.inspect import inspect_image
    from rescueui.core.units import human_size

    info = inspect_image(args.path)
    if args.json:
        echo_json(info)
        return 0
    size = human_size(info["disk_bytes"]) + (" (estimated)" if info["size_is_estimate"] else "")
    say("Image:      {}", info["path"])
    say("Kind:       {}", info["description"])
    say("Disk:       {} ({} bytes), {}-byte sectors, table {}", size, info["disk_bytes"],
        info["sector_size"], info["partition_table"] or "none")  # fmt: skip
    for p in info["partitions"]:
        bits = [f"#{p['number']}", f"at {p['start_bytes']}", human_size(p["size_bytes"])]
        bits += [str(p[k]) for k in ("fs_type", "label") if p.get(k)]
        say("  {}", "  ".join(bits))
        if p.get("usage"):
            say("      {}", p["usage"])
    say("Checksums:  {}", info["integrity_words"])
    say("Resumable:  {}", "yes" if info["resumable"] else "no")
    machine = info["source_machine"]
    if machine:
        bits = []
        if machine.get("cpus"):
            bits.append(f"{machine['cpus']} CPUs")
        if isinstance(machine.get("memory_bytes"), int):
            bits.append(f"{human_size(machine['memory_bytes'])} memory")
        if machine.get("firmware"):
            bits.append(str(machine["firmware"]).upper())
        if machine.get("source"):
            bits.append(f"from {machine['source']}")
        shown = ", ".join(bits)
        say("Source:     {}", shown or "recorded")
    for w in info["warnings"]:
        say("Warning:    {}", w)
    return 0
