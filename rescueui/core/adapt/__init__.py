"""Adapting a restored Linux system to the machine it lands on.

* :mod:`.system` -- what is installed (read from its files);
* :mod:`.plan` -- the fix-ups it needs there, as pre-flight findings;
* :mod:`.chroot` -- the system mounted, its own commands run without network;
* :mod:`.apply` -- the fix-ups applied after the verified restore, on the record.

This module holds the two entry points the rest of the engine uses:
:func:`examine_disk` (capture records the system in the manifest) and
:func:`plan_for_image` (pre-flight and restore plan from the image, without a target).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rescueui.core.adapt.plan import AdaptPlan, DiskLayout, plan_adaptation
from rescueui.core.adapt.system import InstalledSystem
from rescueui.core.host import HostProfile


@dataclass
class AdaptOptions:
    """The operator's choice: which fix-ups (``None``: all needed) and for which machine
    (``host=None``: this one)."""

    selection: set[str] | None = None
    host: HostProfile | None = None
    enabled: bool = True

    @property
    def for_this_machine(self) -> bool:
        return self.host is None


def examine_disk(disk: str, table: dict[str, Any] | None) -> InstalledSystem:
    """The Linux system installed on ``disk`` (read-only: nothing on it is written), or
    ``found=False`` with the reason. Never raises."""
    if not table or not table.get("partitions"):
        return InstalledSystem(found=False, reason="no partition table")
    if os.geteuid() != 0:
        return InstalledSystem(found=False, reason="not examined: mounting needs root")
    from rescueui.core.adapt.apply import initramfs_lister
    from rescueui.core.adapt.chroot import mount_system
    from rescueui.core.adapt.system import NOT_INSTALLED, examine
    from rescueui.core.errors import RescueError

    try:
        with mount_system(disk, table, read_only=True) as ms:
            if ms is None:
                return InstalledSystem(found=False, reason=NOT_INSTALLED)
            system = examine(ms.view, list_initramfs=initramfs_lister(ms))
            system.root_partition = ms.root_partition
            return system
    except (RescueError, OSError) as exc:
        return InstalledSystem(found=False, reason=f"not examined: {exc}")


def layout_of_image(image: Any, target_bytes: int, *, rewritten: bool = False) -> DiskLayout:
    """The restored disk as the image will leave it on a target of ``target_bytes``
    (``rewritten``: its partitions laid out anew and their files copied)."""
    table = image.manifest.partition_table
    uuids = {
        s.partition_number: s.fs_uuid
        for s in image.streams
        if getattr(s, "partition_number", None) and getattr(s, "fs_uuid", None)
    }
    return DiskLayout(table, target_bytes, uuids, rewritten=rewritten)


def plan_for_image(
    image: Any,
    target_bytes: int,
    options: AdaptOptions,
    *,
    host: HostProfile,
    rewritten: bool = False,
) -> AdaptPlan:
    """The fix-ups for restoring ``image`` (a whole disk) onto a target of
    ``target_bytes`` for ``host``, from what the image recorded at capture. ``rewritten``:
    the restore lays the partitions out anew and copies their files (onto a smaller disk)."""
    from rescueui.core.adapt.apply import rescue_grub_platforms

    recorded = getattr(image.manifest, "system", None)
    system = InstalledSystem.from_dict(recorded) if recorded else None
    if system is None:
        system = InstalledSystem(
            found=False,
            reason="the image does not record it (an older rescueui or another tool made it)",
        )
    return plan_adaptation(
        system,
        host,
        layout_of_image(image, target_bytes, rewritten=rewritten),
        selection=options.selection if options.enabled else set(),
        for_this_machine=options.for_this_machine,
        rescue_grub_platforms=rescue_grub_platforms(),
    )


def fixup_lines(details: Any, *, commands: bool = True) -> list[str]:
    """The fix-up section of a report (``report.details["adapt"]``) as plain lines, the one
    rendering the text report, the console of an unattended restore and the front ends
    share. Untrusted (a report file may be read back): every field is turned to text."""
    if not isinstance(details, dict):
        return []
    out: list[str] = []
    if details.get("system"):
        out.append(f"System: {details['system']}")
    steps = details.get("steps") if isinstance(details.get("steps"), list) else []
    for s in steps:
        if not isinstance(s, dict):
            continue
        status = str(s.get("status", "?")).upper()
        out.append(f"[{status}] {s.get('fixup', '?')}: {s.get('title', '')}")
        for c in s.get("commands") or [] if commands else []:
            if isinstance(c, dict):
                out.append(f"    ran: {c.get('command', '')} (exit {c.get('exit_status', '?')})")
        for f in s.get("files") or []:
            if isinstance(f, dict):
                before = str(f.get("sha256_before") or "new")[:12]
                after = str(f.get("sha256_after") or "removed")[:12]
                backup = f", backup {f['backup']}" if f.get("backup") else ""
                out.append(
                    f"    changed: {f.get('path', '?')} (sha256 {before} -> {after}{backup})"
                )
        for c in s.get("checks") or []:
            out.append(f"    checked: {c}")
        if s.get("error"):
            out.append(f"    error: {s['error']}")
        if s.get("next_step"):
            out.append(f"    next step: {s['next_step']}")
    for n in details.get("notes") or []:
        out.append(f"Note: {n}")
    if details.get("backup_dir"):
        out.append(
            f"Backups of the changed files: {details['backup_dir']} (in the restored system)"
        )
    if details.get("result"):
        out.append(f"Result: {details['result']}")
    return out
