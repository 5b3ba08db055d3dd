"""Applying the planned fix-ups to a restored, verified disk, step by step, on the record.

:func:`apply_adaptation` runs after the read-back verify (and after the partition table
was fitted to the target). It mounts the restored system read-write, examines it again
(the files on the disk decide the details, the pre-flight plan decides *which* fix-ups
run: nothing the plan did not show is changed), and applies each chosen fix-up:

* every file is first copied into the restored system, under
  ``/var/backups/rescueui-<time>/`` with its path, and listed with its SHA-256 before
  and after;
* every command runs in the restored system (chroot, no network) and is recorded with
  its exit status and the tail of its output;
* each fix-up is then checked on the spot (the rebuilt initramfs lists the drivers, the
  boot code or fallback loader is in place, the NVRAM entry is read back).

A failed step never undoes the restore: the data stays restored and verified, the step is
reported with the next thing to do, the other fix-ups still run, and the result says the
system may not boot.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rescueui.core import blockdev, parttable
from rescueui.core.adapt.chroot import (
    CommandResult,
    MountedSystem,
    match_spec,
    mount_system,
    run_host,
)
from rescueui.core.adapt.plan import (
    BIOS_BOOT_TYPE_GPT,
    ESP_BYTES,
    ESP_TYPE_GPT,
    AdaptPlan,
    DiskLayout,
    FixUp,
    plan_adaptation,
)
from rescueui.core.adapt.system import InstalledSystem, Kernel, examine, nic_rules
from rescueui.core.errors import RescueError, TargetChangedError
from rescueui.core.host import module_name
from rescueui.core.text import safe_text
from rescueui.core.tools import require_tool
from rescueui.core.units import MiB

MODULE_FILE_RE = re.compile(r"([A-Za-z0-9_\-]+)\.ko(?:\.(?:xz|zst|gz))?$")
RESCUE_GRUB = Path("/usr/lib/grub")
STAGING = Path("/run/rescueui/adapt")

Progress = Callable[[str], None]


@dataclass
class FileChange:
    path: str  # inside the restored system
    before: str | None  # SHA-256, None: did not exist
    after: str | None = None
    backup: str | None = None  # where the copy lies, inside the restored system

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256_before": self.before,
            "sha256_after": self.after,
            "backup": self.backup,
        }


@dataclass
class AdaptStep:
    """One fix-up as it was applied: its commands, files, checks and outcome."""

    fixup: str
    title: str
    status: str = "running"  # "done" | "failed"
    commands: list[CommandResult] = field(default_factory=list)
    files: list[FileChange] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    error: str = ""
    next_step: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "fixup": self.fixup,
            "title": self.title,
            "status": self.status,
            "commands": [c.to_dict() for c in self.commands],
            "files": [f.to_dict() for f in self.files],
            "checks": list(self.checks),
            "error": self.error,
            "next_step": self.next_step,
        }


@dataclass
class AdaptResult:
    steps: list[AdaptStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    backup_dir: str | None = None
    system: str = ""

    @property
    def failed(self) -> list[AdaptStep]:
        return [s for s in self.steps if s.status != "done"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
            "backup_dir": self.backup_dir,
            "result": "failed" if self.failed else "applied" if self.steps else "nothing to do",
        }


class StepFailed(RescueError):
    """A fix-up step failed (the message names the step; ``hint`` is the next step)."""


# --------------------------------------------------------------------------- helpers


def sha256_of(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        h = hashlib.sha256()
        while data := os.read(fd, 1 << 20):
            h.update(data)
        return h.hexdigest()
    finally:
        os.close(fd)


class Files:
    """Changing files of the restored system: backed up first, hashed before and after."""

    def __init__(self, system: MountedSystem, stamp: str) -> None:
        self.system = system
        self.backup_rel = f"/var/backups/rescueui-{stamp}"
        self._backup_dir: Path | None = None

    @property
    def used(self) -> bool:
        return self._backup_dir is not None

    def _backups(self) -> Path:
        if self._backup_dir is None:
            base = self.system.view.resolve("/var/backups")
            if base is None or not base.is_dir():
                base = self.system.view.resolve("/var")
                if base is None or not base.is_dir():
                    raise StepFailed("The restored system has no /var directory for the backups.")
                base = base / "backups"
                base.mkdir(mode=0o755, exist_ok=True)
            target = base / self.backup_rel.rsplit("/", 1)[1]
            target.mkdir(mode=0o700)
            self._backup_dir = target
        return self._backup_dir

    def host_path(self, path: str, *, new: bool = False) -> Path:
        """Where ``path`` of the restored system lies here: a regular file (or, ``new``,
        a name in an existing directory), resolved inside the system's root."""
        host = self.system.view.resolve(path)
        if host is None and new:
            parent = self.system.view.resolve(path.rsplit("/", 1)[0] or "/")
            if parent is not None and parent.is_dir():
                host = parent / path.rsplit("/", 1)[1]
        if host is None:
            raise StepFailed(f"{path} cannot be reached inside the restored system.")
        if host.exists() and (host.is_symlink() or not host.is_file()):
            raise StepFailed(f"{path} in the restored system is not a regular file; not changed.")
        return host

    def read(self, path: str) -> str:
        text = self.system.view.read_text(path)
        return "" if text is None else text

    def write(self, step: AdaptStep, path: str, text: str) -> None:
        """Replace ``path`` (backed up first) with ``text``, keeping its owner and mode."""
        host = self.host_path(path, new=True)
        change = FileChange(path, sha256_of(host) if host.exists() else None)
        st = os.lstat(host) if host.exists() else None
        if st is not None:
            dest = self._backups() / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host, dest, follow_symlinks=False)
            change.backup = f"{self.backup_rel}{path}"
        fd, tmp = tempfile.mkstemp(prefix=".rescueui-", dir=host.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if st is not None:
                os.chmod(tmp, stat.S_IMODE(st.st_mode))
                os.chown(tmp, st.st_uid, st.st_gid)
            else:
                os.chmod(tmp, 0o644)
            os.replace(tmp, host)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        change.after = sha256_of(host)
        step.files.append(change)

    def watch(self, step: AdaptStep, path: str) -> Callable[[], None]:
        """Record a file a command will change: hash now; call the result after the command."""
        host = self.system.view.resolve(path)
        before = sha256_of(host) if host is not None else None

        def done() -> None:
            now = self.system.view.resolve(path)
            after = sha256_of(now) if now is not None else None
            if after != before:
                step.files.append(FileChange(path, before, after))

        return done


def run_checked(step: AdaptStep, result: CommandResult, what: str, hint: str) -> CommandResult:
    step.commands.append(result)
    if not result.ok:
        tail = result.output.strip().splitlines()[-3:]
        raise StepFailed(
            f"{what} failed: `{' '.join(result.argv)}` exited with status {result.status}"
            + (f" ({safe_text(' / '.join(tail))[:300]})" if tail else "")
            + ".",
            hint=hint,
        )
    return result


def initramfs_lister(system: MountedSystem) -> Callable[[Kernel, str | None], list[str] | None]:
    """List the modules in a kernel's initramfs with the system's own tool, in its chroot."""

    def lister(kernel: Kernel, tool: str | None) -> list[str] | None:
        command = {
            "initramfs-tools": "lsinitramfs",
            "dracut": "lsinitrd",
            "mkinitcpio": "lsinitcpio",
        }.get(tool or "")
        if not command or not kernel.initramfs:
            return None
        result = system.run([command, kernel.initramfs], timeout=300)
        if not result.ok:
            return None
        names = set()
        for line in result.full_output.splitlines():  # all of it, not the report's tail
            m = MODULE_FILE_RE.search(line.strip())
            if m:
                names.add(module_name(m.group(1)))
        return sorted(names)

    return lister


# --------------------------------------------------------------------------- the job


def apply_adaptation(
    disk: str,
    plan: AdaptPlan,
    *,
    layout: DiskLayout,
    progress: Progress | None = None,
    ensure: Callable[[str], None] | None = None,
) -> AdaptResult:
    """Apply ``plan``'s chosen fix-ups to the restored ``disk`` (a block device whose
    partitions the kernel knows). Never raises for a failed step: see the result."""
    say = progress or (lambda _m: None)
    check = ensure or (lambda _s: None)
    result = AdaptResult()
    chosen = {f.name for f in plan.selected()} if plan.system.found else set(plan.chosen)
    if not chosen:
        result.notes.append("No fix-up chosen: the restored system was not changed.")
        return result
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    table = layout.table or {}
    # 1. a partition the boot loader needs, before anything is mounted
    boot = plan.get("boot-loader")
    if boot is not None and boot.selected and boot.params.get("new_partition"):
        step = AdaptStep("boot-loader", "a partition for the boot loader")
        result.steps.append(step)
        try:
            check("adding a partition for the boot loader")
            say("adding a partition for the boot loader")
            table = _add_boot_partition(disk, table, boot, step)
            step.status = "done"
        except TargetChangedError:
            raise
        except (RescueError, OSError) as exc:
            _fail(step, exc)
            chosen.discard("boot-loader")
    check("mounting the restored system")
    say("mounting the restored system")
    efivars = plan.for_this_machine and plan.host.firmware == "uefi"
    mounted: MountedSystem | None = None
    try:
        with mount_system(
            disk, table, read_only=False, root_partition=plan.system.root_partition, efivars=efivars
        ) as ms:
            mounted = ms
            if ms is None:
                if plan.system.found:
                    step = AdaptStep("all", "find the restored system")
                    _fail(
                        step,
                        StepFailed(
                            "The Linux system the image recorded was not found on the restored "
                            "disk (no partition with /etc/os-release and /etc/fstab)."
                        ),
                    )
                    result.steps.append(step)
                else:
                    result.notes.append(
                        "No Linux system found on the restored disk: nothing to adapt."
                    )
                return result
            result.notes += ms.notes
            say("examining the restored system")
            system = examine(ms.view, list_initramfs=initramfs_lister(ms))
            system.root_partition = ms.root_partition
            result.system = system.describe()
            layout_now = DiskLayout(
                table,
                layout.target_bytes,
                {n: p.uuid for n, p in ms.partitions.items() if p.uuid},
                rewritten=layout.rewritten,
            )
            now = plan_adaptation(
                system,
                plan.host,
                layout_now,
                selection=chosen,
                for_this_machine=plan.for_this_machine,
                rescue_grub_platforms=rescue_grub_platforms(),
            )
            files = Files(ms, stamp)
            appliers: dict[
                str, Callable[[MountedSystem, Files, FixUp, InstalledSystem, AdaptStep], None]
            ] = {
                "names": _apply_names,
                "nic-rules": _apply_nic_rules,
                "drivers": _apply_drivers,
                "boot-loader": _apply_boot_loader,
            }
            for name in ("names", "nic-rules", "drivers", "boot-loader"):
                fix = now.get(name)
                if name not in chosen or fix is None or not fix.selected:
                    if name in chosen and fix is None and plan.get(name) is not None:
                        result.notes.append(
                            f"Fix-up {name}: not needed on the restored disk after all."
                        )
                    continue
                step = AdaptStep(name, fix.title)
                result.steps.append(step)
                try:
                    check(f"the fix-up {name}")
                    say(f"fix-up {name}: {fix.title}")
                    if fix.params.get("impossible"):
                        raise StepFailed(f"Fix-up {name} is impossible: {'; '.join(fix.changes)}.")
                    appliers[name](ms, files, fix, system, step)
                    step.status = "done"
                except TargetChangedError:
                    raise
                except (RescueError, OSError) as exc:
                    _fail(step, exc)
            if files.used:
                result.backup_dir = files.backup_rel
        if mounted is not None:  # unmount warnings come last
            result.notes += [n for n in mounted.notes if n not in result.notes]
    except TargetChangedError:
        raise
    except (RescueError, OSError) as exc:
        step = AdaptStep("all", "mount the restored system")
        _fail(step, exc)
        result.steps.append(step)
    return result


def _fail(step: AdaptStep, exc: RescueError | OSError) -> None:
    """A step that failed: its error and the next step, in the operator's words."""
    step.status = "failed"
    if isinstance(exc, RescueError):
        step.error, hint = exc.message, exc.hint
    else:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        step.error, hint = f"{exc.strerror or exc}{where}.", None
    step.next_step = hint or (
        "The restored data is verified and intact. Boot this medium, mount the restored "
        "system, and repeat the step by hand; the report lists the commands."
    )


def rescue_grub_platforms() -> tuple[str, ...]:
    """GRUB platforms this rescue medium carries (``/usr/lib/grub/<platform>``)."""
    return tuple(p for p in ("i386-pc", "x86_64-efi") if (RESCUE_GRUB / p / "modinfo.sh").is_file())


# --------------------------------------------------------------------------- partitions


def _add_boot_partition(
    disk: str, table: dict[str, Any], fix: FixUp, step: AdaptStep
) -> dict[str, Any]:
    """Add the BIOS boot partition or the ESP the plan showed; the new table is returned."""
    current = parttable.read_table(disk) or table
    new = dict(current)
    parts = [dict(p) for p in current.get("partitions") or []]
    number = int(fix.params["number"])
    ss = parttable.sector_size(current)
    node = parttable.node_name(disk, number)
    if fix.params["new_partition"] == "before":
        part = {
            "node": node,
            "start": int(fix.params["start"]),
            "size": int(fix.params["sectors"]),
            "type": BIOS_BOOT_TYPE_GPT,
            "name": "BIOS boot",
        }
        what = f"BIOS boot partition {number}"
    else:
        ends = [int(p["start"]) + int(p["size"]) for p in parts]
        align = MiB // ss
        start = -(-max(ends) // align) * align
        size = ESP_BYTES // ss
        limit = (
            (int(current.get("lastlba") or 0) + 1)
            if current.get("label") == "gpt"
            else blockdev.device_size(disk) // ss
        )
        if start + size > limit:
            raise StepFailed(
                f"No room for an EFI system partition after the last partition ({(limit - start) * ss} bytes).",
                hint="The restored data is intact. Make room by shrinking the last partition, "
                "or start the machine in BIOS mode.",
            )
        part = {
            "node": node,
            "start": start,
            "size": size,
            "type": ESP_TYPE_GPT if current.get("label") == "gpt" else "ef",
        }
        if current.get("label") == "gpt":
            part["name"] = "EFI system partition"
        what = f"EFI system partition {number}"
    parts.append(part)
    parts.sort(key=parttable.partition_number)
    new["partitions"] = parts
    parttable.write_table(disk, new)  # sfdisk, the one table writer
    parttable.tell_kernel(disk)
    if not os.path.exists(node):
        raise StepFailed(
            f"The kernel did not show the new partition {node}.",
            hint=f"Run partx -a {disk}, then repeat.",
        )
    if fix.params["new_partition"] == "end":
        # Not labelled "EFI": fusefat (used where the kernel has no vfat) mistakes a volume
        # label for the directory of the same name.
        run_checked(
            step,
            run_host([require_tool("mkfs.vfat"), "-F", "32", "-n", "EFISYSTEM", node]),
            "Making the FAT filesystem of the EFI system partition",
            "The restored data is intact; make the filesystem by hand (mkfs.vfat -F 32).",
        )
    step.checks.append(
        f"{what} (start sector {part['start']}, {part['size']} sectors) is in the partition "
        f"table ({node})."
    )
    return parttable.read_table(disk) or new


# --------------------------------------------------------------------------- names


def _apply_names(
    ms: MountedSystem, files: Files, fix: FixUp, system: InstalledSystem, step: AdaptStep
) -> None:
    by_file: dict[str, dict[int, list[str]]] = {}
    for line in system.kernel_names:
        by_file.setdefault(line.path, {}).setdefault(line.line, []).append(line.value)
    grub_changed = False
    for path, lines in by_file.items():
        text = files.read(path)
        out = text.splitlines(keepends=True)
        for no, devices in lines.items():
            for dev in devices:
                fstype = ""
                if path == "/etc/fstab":
                    fields = out[no - 1].split()
                    fstype = fields[2] if len(fields) > 2 else ""
                p = match_spec(dev, fstype, ms.partitions)
                if p is None or not p.uuid:
                    raise StepFailed(
                        f"{path} line {no} names {dev}, which is not a partition of the restored "
                        "disk with that filesystem; not changed.",
                        hint=f"Edit {path} by hand (use UUID=).",
                    )
                out[no - 1] = re.sub(re.escape(dev) + r"(?!\d)", f"UUID={p.uuid}", out[no - 1])
        new = "".join(out)
        if new != text:
            files.write(step, path, new)
            grub_changed |= path == "/etc/default/grub"
    if grub_changed:
        _update_grub(ms, system, step, files)
    step.checks.append(
        "No device is named by kernel name any more: " + ", ".join(sorted(by_file)) + "."
    )


# --------------------------------------------------------------------------- network


def _apply_nic_rules(
    ms: MountedSystem, files: Files, fix: FixUp, system: InstalledSystem, step: AdaptStep
) -> None:
    stale = set(fix.params.get("stale_macs") or [])
    mapping: dict[str, str] = fix.params.get("mapping") or {}
    edits: dict[str, dict[int, str | None]] = {}
    for r in system.nic_rules:
        if r.value in stale:
            edits.setdefault(r.path, {})[r.line] = None
    for i in system.interfaces:
        if i.value in mapping:
            edits.setdefault(i.path, {}).setdefault(i.line, mapping[i.value])
    for path, lines in edits.items():
        text = files.read(path)
        out = text.splitlines(keepends=True)
        for no in sorted(lines, reverse=True):
            new_name = lines[no]
            if new_name is None:
                del out[no - 1]
            else:
                old = next(i.value for i in system.interfaces if i.path == path and i.line == no)
                out[no - 1] = re.sub(
                    rf"(?<![\w.-]){re.escape(old)}(?![\w.-])", new_name, out[no - 1]
                )
        files.write(step, path, "".join(out))
    left = [r.value for r in nic_rules(ms.view) if r.value in stale]
    if left:
        raise StepFailed(f"The source's MAC(s) {', '.join(left)} are still pinned after the edit.")
    step.checks.append(
        "No rule pins the source's network cards any more"
        + (
            f"; interfaces renamed: {', '.join(f'{a} -> {b}' for a, b in mapping.items())}."
            if mapping
            else "."
        )
    )


# --------------------------------------------------------------------------- drivers


def _apply_drivers(
    ms: MountedSystem, files: Files, fix: FixUp, system: InstalledSystem, step: AdaptStep
) -> None:
    modules: list[str] = list(fix.params["modules"])
    tool = fix.params["tool"]
    config = fix.params["config"]
    header = f"# Added by rescueui {datetime.now().strftime('%Y-%m-%d %H:%M')}: drivers of the machine this disk was restored for"
    hint = (
        "The restored data is intact. Boot this medium, chroot into the restored system and "
        "rebuild its initramfs with these drivers by hand."
    )
    watched = [files.watch(step, k.initramfs) for k in system.kernels if k.initramfs]
    if tool == "initramfs-tools":
        text = files.read(config)
        listed = {
            ln.split("#", 1)[0].split()[0]
            for ln in text.splitlines()
            if ln.split("#", 1)[0].split()
        }
        add = [m for m in modules if m not in listed]
        if add:
            files.write(
                step,
                config,
                text
                + ("" if text.endswith("\n") or not text else "\n")
                + header
                + "\n"
                + "".join(f"{m}\n" for m in add),
            )
        run_checked(
            step, ms.run(["update-initramfs", "-u", "-k", "all"]), "Rebuilding the initramfs", hint
        )
    elif tool == "dracut":
        files.write(step, config, header + "\n" + f'add_drivers+=" {" ".join(modules)} "\n')
        run_checked(
            step, ms.run(["dracut", "-f", "--regenerate-all"]), "Rebuilding the initramfs", hint
        )
    elif tool == "mkinitcpio":
        text = files.read(config)
        m = re.search(r"^MODULES=\((.*?)\)", text, re.M)
        if m is None:
            raise StepFailed(
                f"{config} has no MODULES=(...) line to add the drivers to.", hint=hint
            )
        have = m.group(1).split()
        new = "MODULES=(" + " ".join(have + [x for x in modules if x not in have]) + ")"
        files.write(step, config, text[: m.start()] + new + text[m.end() :])
        run_checked(step, ms.run(["mkinitcpio", "-P"]), "Rebuilding the initramfs", hint)
    else:
        raise StepFailed(f"No way to rebuild an initramfs made by {tool}.", hint=hint)
    for done in watched:
        done()
    lister = initramfs_lister(ms)
    for k in system.kernels:
        if not k.initramfs:
            continue
        have = lister(Kernel(k.version, k.initramfs), tool)
        if have is None:
            raise StepFailed(f"The rebuilt initramfs {k.initramfs} could not be listed.", hint=hint)
        missing = [x for x in modules if x not in have and x not in k.builtin]
        if missing:
            raise StepFailed(
                f"The rebuilt initramfs {k.initramfs} still lacks {', '.join(missing)}.", hint=hint
            )
        step.checks.append(f"{k.initramfs} holds {', '.join(modules)} (listed by its own tool).")


# --------------------------------------------------------------------------- boot loader


def _grub_directory(ms: MountedSystem, platform: str, system: InstalledSystem) -> list[str]:
    """``--directory`` for grub-install when the system lacks the platform's files: a copy
    of the rescue medium's, placed where the chroot sees it (its /run is this /run)."""
    if platform in system.grub_platforms_available:
        return []
    src = RESCUE_GRUB / platform
    STAGING.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest = STAGING / platform
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True)
    return [f"--directory={dest}"]


def _ensure_uuid_links(ms: MountedSystem, step: AdaptStep) -> None:
    """grub-mkconfig names the root ``root=UUID=`` only if ``/dev/disk/by-uuid/<uuid>``
    exists (else it writes the rescue system's device name, e.g. ``/dev/sdb2``): wait for
    udev, and make the links it did not make."""
    subprocess.run(["udevadm", "settle", "--timeout=10"], capture_output=True, check=False)
    links = Path("/dev/disk/by-uuid")
    for p in ms.partitions.values():
        if not p.uuid or "/" in p.uuid or p.uuid.startswith("."):
            continue
        link = links / p.uuid
        if os.path.lexists(link):
            continue
        links.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(p.device, links), link)
        step.checks.append(f"Made the link {link} (udev had not).")


def _update_grub(ms: MountedSystem, system: InstalledSystem, step: AdaptStep, files: Files) -> None:
    grub_dir = system.grub_dir or "/boot/grub"
    _ensure_uuid_links(ms, step)
    done = files.watch(step, f"{grub_dir}/grub.cfg")
    if ms.view.is_file("/usr/sbin/update-grub"):
        argv = ["update-grub"]
    elif ms.view.is_file("/usr/sbin/grub2-mkconfig"):
        argv = ["grub2-mkconfig", "-o", f"{grub_dir}/grub.cfg"]
    else:
        argv = ["grub-mkconfig", "-o", f"{grub_dir}/grub.cfg"]
    run_checked(
        step,
        ms.run(argv),
        "Writing GRUB's configuration",
        "The restored data is intact; run update-grub in the restored system.",
    )
    done()


def _apply_boot_loader(
    ms: MountedSystem, files: Files, fix: FixUp, system: InstalledSystem, step: AdaptStep
) -> None:
    platform = fix.params["platform"]
    hint = (
        "The restored data is intact. Boot this medium, chroot into the restored system and "
        f"run grub-install --target={platform} by hand."
    )
    extra = _grub_directory(ms, platform, system)
    if platform == "i386-pc":
        run_checked(
            step,
            ms.run(["grub-install", "--target=i386-pc", *extra, ms.disk]),
            "Installing GRUB for BIOS",
            hint,
        )
        with open(ms.disk, "rb") as f:
            mbr = f.read(512)
        if b"GRUB" not in mbr:
            raise StepFailed(
                f"The first sector of {ms.disk} holds no GRUB boot code after grub-install.",
                hint=hint,
            )
        step.checks.append(f"GRUB's boot code is in the first sector of {ms.disk}.")
    else:
        esp_dir = _mount_esp(ms, fix, step)
        bootloader_id = re.sub(r"[^A-Za-z0-9_-]", "", system.os_id) or "linux"
        run_checked(
            step,
            ms.run(
                [
                    "grub-install",
                    "--target=x86_64-efi",
                    f"--efi-directory={esp_dir}",
                    "--removable",
                    "--no-nvram",
                    *extra,
                ]
            ),
            "Installing GRUB for UEFI (the fallback loader)",
            hint,
        )
        fallback = ms.view.resolve(f"{esp_dir}/EFI/BOOT/BOOTX64.EFI")
        if fallback is None or not fallback.is_file():
            raise StepFailed(
                r"\EFI\BOOT\BOOTX64.EFI is missing on the EFI system partition after grub-install.",
                hint=hint,
            )
        step.checks.append(r"\EFI\BOOT\BOOTX64.EFI is on the EFI system partition.")
        if (
            ms.view.is_dir("/sys/firmware/efi/efivars")
            and fix.params.get("nvram", True)
            and _efivars_mounted(ms)
        ):
            result = ms.run(
                [
                    "grub-install",
                    "--target=x86_64-efi",
                    f"--efi-directory={esp_dir}",
                    f"--bootloader-id={bootloader_id}",
                    *extra,
                ]
            )
            step.commands.append(result)
            listing = ms.run(["efibootmgr"])
            step.commands.append(listing)
            if result.ok and listing.ok and bootloader_id.lower() in listing.output.lower():
                step.checks.append(
                    f"The firmware lists the boot entry '{bootloader_id}' (efibootmgr)."
                )
            else:
                step.checks.append(
                    f"The firmware did not keep an NVRAM boot entry '{bootloader_id}'; the machine "
                    r"boots through the fallback loader \EFI\BOOT\BOOTX64.EFI."
                )
        else:
            step.checks.append(
                "No NVRAM boot entry made (the disk is for another machine, or this one did not "
                r"start by UEFI): the firmware finds \EFI\BOOT\BOOTX64.EFI by itself."
            )
    _update_grub(ms, system, step, files)
    cfg = ms.view.read_text(f"{system.grub_dir or '/boot/grub'}/grub.cfg") or ""
    if "linux" not in cfg:
        raise StepFailed("GRUB's configuration has no kernel entry after update-grub.", hint=hint)
    step.checks.append(f"{system.grub_dir}/grub.cfg was written and has kernel entries.")
    if fix.params.get("files_from") == "rescue medium":
        step.checks.append(
            f"GRUB's {platform} files came from this rescue medium: install "
            f"{fix.params.get('package')} in the restored system so updates keep them current."
        )


def _efivars_mounted(ms: MountedSystem) -> bool:
    host = ms.view.resolve("/sys/firmware/efi/efivars")
    return host is not None and any(str(where) == str(host) for where, _ in ms.mounts)


def _mount_esp(ms: MountedSystem, fix: FixUp, step: AdaptStep) -> str:
    """The ESP's directory inside the system (mounted by its fstab, or mounted now)."""
    from rescueui.core import fsmount

    for where, device in ms.mounts:
        for n, p in ms.partitions.items():
            if (
                p.device == device
                and p.fs_type == "vfat"
                and n == fix.params.get("esp", fix.params.get("number"))
            ):
                return "/" + str(where.relative_to(ms.root))
    number = fix.params.get("esp", fix.params.get("number"))
    if number is None:
        raise StepFailed("The EFI system partition is not known.")
    node = parttable.node_name(ms.disk, int(number))
    from rescueui.core.adapt.chroot import probe_partitions

    ms.partitions.update(probe_partitions({int(number): node}))
    where = ms.view.resolve("/boot/efi")
    if where is None:
        boot = ms.view.resolve("/boot")
        if boot is None or not boot.is_dir():
            raise StepFailed("The restored system has no /boot directory.")
        where = boot / "efi"
        where.mkdir(mode=0o700)
        step.checks.append("Created the directory /boot/efi in the restored system.")
    fsmount.mount(node, where, "vfat", read_only=False)
    ms.mounts.append((where, node))
    return "/boot/efi"


@contextlib.contextmanager
def whole_disk_device(path: str) -> Iterator[str]:
    """A block device for ``path``: itself, or a loop device over a disk-image file whose
    partitions the kernel is told about (detached afterwards)."""
    if stat.S_ISBLK(os.stat(path).st_mode):
        yield path
        return
    size = os.stat(path).st_size
    with blockdev.range_device(path, 0, size, read_only=False) as dev:
        parttable.tell_kernel(dev)
        try:
            yield dev
        finally:
            subprocess.run([require_tool("partx"), "-d", dev], capture_output=True, check=False)
