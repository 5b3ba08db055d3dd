"""`rescueui host [--json]`: this machine's hardware profile (what pre-flight compares)."""

from __future__ import annotations

import argparse

from rescueui.cli.output import echo_block, echo_json
from rescueui.core.host import HostProfile, read_host_profile
from rescueui.core.units import human_size


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "host",
        help="show this machine's hardware profile (CPUs, memory, firmware, disks, NICs)",
        description="Show the hardware profile of this machine, as stored in captured images "
        "and compared by the pre-flight check.",
    )
    p.add_argument("--json", action="store_true", help="print the profile as JSON")


def format_profile(profile: HostProfile) -> str:
    virtual = profile.virtual or "no (bare metal)"
    lines = [
        f"Machine:      {profile.machine}"
        + (f" (version {profile.dmi_version})" if profile.dmi_version else ""),
        f"Virtual:      {virtual}",
        f"Firmware:     {profile.firmware.upper()} (how this system was booted)",
        f"CPUs:         {profile.cpus} logical",
        f"Memory:       {human_size(profile.memory_bytes)} ({profile.memory_bytes} bytes)",
    ]
    if profile.board_vendor or profile.board_name:
        lines.append(f"Board:        {profile.board_vendor or '?'} {profile.board_name or '?'}")
    lines.append("Storage controllers:")
    lines += [f"  {c}" for c in profile.storage_controllers] or ["  (none found)"]
    lines.append("Disk drivers: " + (", ".join(profile.storage_drivers) or "(none found)"))
    lines.append("Disks:")
    for d in profile.disks:
        lines.append(
            f"  {d.get('path')}  {d.get('bus')}  {human_size(int(d.get('size_bytes') or 0))}"
            f"  sectors {d.get('logical_sector_size')}/{d.get('physical_sector_size')}"
            + (f"  {d['model']}" if d.get("model") else "")
        )
    if not profile.disks:
        lines.append("  (none found)")
    lines.append("Network interfaces:")
    for n in profile.nics:
        kind = "" if n.get("physical") else "  (virtual)"
        lines.append(f"  {n.get('name')}  {n.get('mac') or '-'}  {n.get('driver') or ''}{kind}")
    if not profile.nics:
        lines.append("  (none found)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    profile = read_host_profile()
    if args.json:
        echo_json(profile.to_dict())
    else:
        # DMI strings and NIC names come from firmware and drivers: shown escaped.
        echo_block(format_profile(profile), end="\n")
    return 0
