"""Restore an image into the disk of a new virtual machine, with its definition.

::

    plan = plan_vm_restore(image_dir, VmRequest(folder="/media/usb/vms"), adapt=AdaptOptions())
    report = restore(plan)        # rescueui.core.restore: the same job, with a final step

The restore is the ordinary one onto a new sparse disk image file in the folder, with the
same rules: every chunk checked before it counts, the file read back (O_DIRECT) and the
fix-ups adapting the system to the VM (:func:`~rescueui.core.vm.machine.vm_profile`). Its
final step (:class:`VmExport`) then

1. writes the disk in the chosen format with ``qemu-img convert`` (sparse; skipped for raw,
   where the restored file is the disk),
2. reads both back with ``qemu-img compare``: the VM disk must hold exactly what was
   restored and verified,
3. removes the restored working file and writes the definitions (libvirt, and ``.vmx`` or
   ``.ovf`` where asked) naming the disk.

A refused, failed or cancelled job leaves nothing of itself in the folder (every file is
removed while it is still the one this run made); the report says so.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from rescueui.core.errors import (
    CancelledError,
    RescueError,
    TargetTooSmallError,
    UnsafeTargetError,
)
from rescueui.core.host import HostProfile, read_host_profile
from rescueui.core.preflight import Finding
from rescueui.core.targets.newfile import NewFile, create_new_file
from rescueui.core.text import safe_text
from rescueui.core.tools import find_tool, require_tool
from rescueui.core.units import human_size
from rescueui.core.vm.machine import RunsOn, VmMachine, VmRequest, vm_profile
from rescueui.core.vm.machine import plan_vm as _plan_vm

WORK_SUFFIX = ".rescueui-work.img"
SUBFORMAT = {"vmx": "monolithicSparse", "ovf": "streamOptimized"}
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def vm_folder(path: str) -> Path:
    """The folder the VM's files go to: an existing real folder (not a link) this machine
    can write, named without control characters (it is written into the definitions).
    Nothing is created; :class:`RescueError` says what is wrong."""
    if safe_text(path) != path:
        raise RescueError(
            f"The folder name {safe_text(path)} holds control characters.",
            hint="Choose a folder with a plain name.",
        )
    p = Path(os.path.abspath(path))
    try:
        st = os.lstat(p)
    except OSError as exc:
        raise RescueError(
            f"The folder {p} for the virtual machine cannot be used: {exc.strerror}.",
            hint="Create the folder first, on a medium with room for the VM's disk.",
        ) from exc
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RescueError(
            f"{p} is not a folder (or is a symbolic link); the VM's files go into a folder.",
            hint="Give the real folder.",
        )
    if not os.access(p, os.W_OK | os.X_OK):
        raise RescueError(
            f"The folder {p} cannot be written (a read-only medium, or no permission).",
            hint="Choose a folder on a medium this machine can write to.",
        )
    return p


def vm_files(vm: VmMachine, folder: Path) -> dict[str, Path]:
    """Every file the job makes: the disk, the working file, the definitions."""
    files = {"disk": folder / vm.disk_file}
    if vm.disk_format != "raw":
        files["work"] = folder / (vm.name + WORK_SUFFIX)
    for kind in vm.definitions:
        files[kind] = folder / (vm.name + {"libvirt": ".xml", "vmx": ".vmx", "ovf": ".ovf"}[kind])
    return files


def _taken(files: dict[str, Path]) -> list[str]:
    out = []
    for f in files.values():
        try:
            os.lstat(f)
        except FileNotFoundError:
            continue
        except OSError:
            pass
        out.append(str(f))
    return out


def _data_bytes(image: Any) -> int:
    """The bytes the restored disk file holds (its data; the rest stays sparse)."""
    table = image.segment_table(None, leave_unused=True)
    return sum(s.length for s in table if not s.zero)


def unused_name(
    base: str, folder: Path, disk_format: str = "qcow2", definitions: tuple[str, ...] = ("libvirt",)
) -> str:
    """``base``, or ``base-2``, ``base-3``... : the first name none of whose VM files is in
    ``folder`` yet (a default name must not refuse the job)."""
    from dataclasses import replace as _replace

    probe = VmMachine(
        name=base, firmware="bios", disk_bus="virtio", nic_model="virtio", vcpus=1,
        memory_bytes=0, disk_bytes=0, disk_format=disk_format, definitions=definitions,
        mac="", runs_on=RunsOn(0, 0, ""), source="",
    )  # fmt: skip
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        if not _taken(vm_files(_replace(probe, name=name), folder)):
            return name
    return base


def _free_name(vm: VmMachine, folder: Path, request: VmRequest) -> dict[str, Path]:
    """The VM's files; a default name that is taken gets a number (a name the operator gave
    is kept: the job is then refused)."""
    if request.name is None:
        vm.name = unused_name(vm.name, folder, vm.disk_format, vm.definitions)
    return vm_files(vm, folder)


def _tool_finding() -> Finding | None:
    if find_tool("qemu-img") is None:
        return Finding(
            "stop",
            "vm.tools",
            "qemu-img is not installed here: the VM disk cannot be written or checked.",
            "Use a rescue medium with qemu-utils.",
        )
    return None


def _space_finding(vm: VmMachine, folder: Path, data: int) -> Finding:
    need = data * (2 if vm.disk_format != "raw" else 1)
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    how = (
        "the restored disk, then its copy as " + vm.disk_format
        if vm.disk_format != "raw"
        else "the restored disk"
    )
    if free < need:
        return Finding(
            "stop",
            "vm.space",
            f"Not enough room in {folder}: {human_size(need)} needed ({how}), "
            f"{human_size(free)} free; {human_size(need - free)} short.",
            "Choose a folder on a larger medium, or free space there.",
        )
    return Finding(
        "ok",
        "vm.space",
        f"Room in {folder}: {human_size(free)} free, at most {human_size(need)} needed ({how}).",
    )


def plan_vm(
    image: Any, request: VmRequest, *, this_host: HostProfile | None = None, adapt: Any = None
) -> VmMachine:
    """The VM for ``image`` on the host that will run it (``this_host``: this machine's
    profile when None)."""
    return _plan_vm(image, request, this_host=this_host or read_host_profile(), adapt=adapt)


def preflight_vm(
    image_dir: str | Path,
    request: VmRequest,
    *,
    adapt: Any = None,
    this_host: HostProfile | None = None,
) -> tuple[VmMachine, list[Finding]]:
    """The pre-flight of a restore into a new VM, without making a file: the VM planned and
    all findings (the target is described as the disk file it will be)."""
    from rescueui.core.images import open_image
    from rescueui.core.preflight import TargetInfo, run_preflight

    with open_image(image_dir) as image:
        vm, files, taken = _prepare(image, request, this_host=this_host, adapt=adapt)
        if taken:
            vm.findings.append(
                Finding(
                    "stop",
                    "vm.files",
                    f"{taken[0]} already exists; the VM's files are only made new.",
                    "Choose another name or folder.",
                )
            )
        target = TargetInfo(
            path=str(files["disk"]),
            size_bytes=vm.disk_bytes,
            logical_sector_size=512,
            physical_sector_size=512,
            bus="file",
            kind="file",
        )
        options = _adapt_for(vm, adapt)
        findings = run_preflight(image, target, adapt=options, vm=vm)
    return vm, findings


def _prepare(
    image: Any, request: VmRequest, *, this_host: HostProfile | None, adapt: Any
) -> tuple[VmMachine, dict[str, Path], list[str]]:
    """The VM planned for the open ``image``, its files (a default name made free) and
    those of them that exist; its findings gain the tool and the room checks."""
    folder = vm_folder(request.folder)
    vm = plan_vm(image, request, this_host=this_host, adapt=adapt)
    files = _free_name(vm, folder, request)
    vm.findings += [f for f in (_tool_finding(),) if f is not None]
    vm.findings.append(_space_finding(vm, folder, _data_bytes(image)))
    return vm, files, _taken(files)


def _adapt_for(vm: VmMachine, adapt: Any) -> Any:
    """The fix-ups' options with the VM as the machine (disabled ones stay disabled: the VM
    is still the machine the pre-flight compares with)."""
    from rescueui.core.adapt import AdaptOptions

    if adapt is None:
        return AdaptOptions(host=vm_profile(vm))
    return AdaptOptions(selection=adapt.selection, host=vm_profile(vm), enabled=adapt.enabled)


def plan_vm_restore(
    image_dir: str | Path,
    request: VmRequest,
    *,
    adapt: Any = None,
    accept_warnings: bool = False,
    accepted_codes: tuple[str, ...] | list[str] = (),
    acknowledged_by: str | None = None,
    this_host: HostProfile | None = None,
) -> Any:
    """Plan the restore into a new VM and make its (empty, sparse) disk file; returns the
    :class:`~rescueui.core.restore.RestorePlan` to run with ``restore()``. Raises like
    ``plan_restore`` on a refusal (the file is then removed again)."""
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.images import open_image
    from rescueui.core.restore import plan_restore

    with open_image(image_dir) as image:
        vm, files, taken = _prepare(image, request, this_host=this_host, adapt=adapt)
    too_small = next((f for f in vm.findings if f.code == "vm.size" and f.level == "stop"), None)
    if too_small is not None:
        raise TargetTooSmallError(too_small.message, hint=too_small.detail)
    if taken:
        raise UnsafeTargetError(
            f"{taken[0]} already exists; the VM's files are only made new, never overwritten.",
            hint="Choose another name or folder, or delete the old files if they are not needed.",
            action="new-name",
        )
    work_path = files.get("work", files["disk"])
    work = create_new_file(str(work_path), vm.disk_bytes)
    try:
        ident = identity_of(work.path)
        confirmed = confirm_target(work.path, confirmation_code(ident))
        plan = plan_restore(
            image_dir,
            confirmed,
            adapt=_adapt_for(vm, adapt),
            vm=vm,
            accept_warnings=accept_warnings,
            accepted_codes=tuple(accepted_codes),
            acknowledged_by=acknowledged_by,
        )
    except BaseException:
        work.remove()  # the refusal report (written by plan_restore) says so
        raise
    folder = files["disk"].parent
    plan.final_step = VmExport(vm=vm, folder=folder, files=files, work=work, image=str(image_dir))
    return plan


def _direct_io(path: Path) -> bool:
    """Whether ``path`` can be read with O_DIRECT (tmpfs and some FUSE filesystems cannot)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


@dataclass
class VmExport:
    """The final step: the VM disk in its format, compared, and the definitions."""

    vm: VmMachine
    folder: Path
    files: dict[str, Path]
    work: NewFile
    image: str
    made: list[NewFile] = field(default_factory=list)  # files written after the restore
    timeout: float = 24 * 3600

    @property
    def bytes_total(self) -> int:
        return 2 * self.vm.disk_bytes if self.vm.disk_format != "raw" else 0

    def run(self, ctx: Any) -> None:
        vm = self.vm
        disk = self.files["disk"]
        details: dict[str, Any] = {**vm.to_dict(), "files": {}, "checks": []}
        ctx.report.details["vm"] = details
        if vm.disk_format != "raw":
            if _taken({"disk": disk}):
                raise UnsafeTargetError(
                    f"{disk} appeared while the restore ran; it is not overwritten.",
                    hint="Move it away and run the job again.",
                )
            self._convert(ctx, disk)
            self._compare(ctx, disk)
            details["checks"].append(
                f"qemu-img compare: {disk.name}, flushed and read back from the medium, holds "
                "exactly the restored and verified disk."
            )
            self.work.remove()
        details["files"]["disk"] = str(disk)
        details["disk_file_bytes"] = os.stat(disk).st_size
        written = self._definitions(disk)
        details["files"].update({k: str(v) for k, v in written.items()})
        from rescueui.core.vm.check import check_definition

        for kind, path in written.items():
            result = check_definition(path)
            details["checks"].append(f"{kind}: {result.summary()}")
            if result.problems:
                raise RescueError(
                    f"The VM definition {path} does not check out: {result.problems[0]}",
                    hint="Report this bug with the report file; the disk itself is written "
                    "and verified.",
                )
        with contextlib.suppress(OSError):  # the new names durable too, not only the data
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        ctx.report.notes.append(
            f"Virtual machine {vm.name}: {vm.vcpus} vCPU(s), {human_size(vm.memory_bytes)}, "
            f"{vm.firmware.upper()}, disk {disk.name} ({vm.disk_format}, {vm.disk_bus}), "
            f"network card {vm.nic_model}; definitions: "
            + ", ".join(p.name for p in written.values())
            + ". Copy these files to the host that runs it; if the disk lands in another "
            "folder there, change the disk's path in the definition."
        )

    def _run_tool(
        self, ctx: Any, phase: str, cmd: list[str], what: str
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``qemu-img`` with ``-p``: its percentages become the phase's progress."""
        total = self.vm.disk_bytes
        ctx.set_phase(phase, total, what)
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        assert proc.stdout is not None and proc.stderr is not None
        done = 0
        buf = b""
        started = time.monotonic()
        os.set_blocking(proc.stdout.fileno(), False)
        try:
            while True:
                if ctx.cancelled():
                    proc.kill()
                    proc.wait()
                    raise CancelledError(f"Cancelled while {what}.")
                if time.monotonic() - started > self.timeout:
                    proc.kill()
                    proc.wait()
                    raise RescueError(f"qemu-img took too long {what}.")
                try:
                    chunk = proc.stdout.read(4096)
                except BlockingIOError:
                    chunk = None
                if chunk:
                    buf = (buf + chunk)[-4096:]
                    found = _PERCENT.findall(buf)
                    if found:
                        now = int(float(found[-1]) / 100 * total)
                        if now > done:
                            ctx.advance(now - done)
                            done = now
                elif chunk == b"" and proc.poll() is not None:
                    break
                else:
                    time.sleep(0.1)
            err = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        if done < total and proc.returncode in (0, 1):
            ctx.advance(total - done)
        return subprocess.CompletedProcess(cmd, proc.returncode, b"", err)

    def _convert(self, ctx: Any, disk: Path) -> None:
        qemu_img = require_tool("qemu-img")
        opts: list[str] = []
        kind = next((d for d in self.vm.definitions if d in SUBFORMAT), None)
        if self.vm.disk_format == "vmdk" and kind:
            opts = ["-o", f"subformat={SUBFORMAT[kind]}"]
        cmd = [qemu_img, "convert", "-p", "-f", "raw", "-O", self.vm.disk_format, *opts]
        cmd += [str(self.work.path), str(disk)]
        res = self._run_tool(ctx, "convert", cmd, f"writing {disk.name}")
        if res.returncode == 0 and os.path.exists(disk):
            st = os.lstat(disk)
            self.made.append(NewFile(str(disk), st.st_dev, st.st_ino))
        if res.returncode != 0:
            from rescueui.core.images.qemu import tool_message

            raise RescueError(
                f"Writing the VM disk {disk} failed: {tool_message(res.stderr)}",
                hint="The restore itself was verified; check the room on the medium and run "
                "the job again.",
            )
        # qemu-img convert writes without flushing (its cache mode "unsafe"): the disk is
        # made durable here, before it is read back and before the job says it is written.
        try:
            fd = os.open(disk, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise RescueError(
                f"The VM disk {disk} could not be flushed to its medium: {exc.strerror}.",
                hint="Check the medium the VM disk is on (it may be failing) and run the "
                "job again.",
            ) from exc

    def _compare(self, ctx: Any, disk: Path) -> None:
        qemu_img = require_tool("qemu-img")
        # Read from the medium (O_DIRECT, cache mode "none"), not from the page cache that
        # still holds what was just written; a filesystem without direct I/O reads cached.
        direct = _direct_io(disk)
        cmd = [qemu_img, "compare", "-p", *(["-T", "none"] if direct else [])]
        cmd += ["-f", "raw", "-F", self.vm.disk_format, str(self.work.path), str(disk)]
        res = self._run_tool(ctx, "compare", cmd, f"reading {disk.name} back")
        if not direct:
            ctx.report.warnings.append(
                f"The filesystem of {disk.parent} has no direct I/O: the VM disk was read back "
                "through the page cache, which may hold what was written rather than what "
                "reached the medium."
            )
        if res.returncode != 0:
            from rescueui.core.images.qemu import tool_message

            what = (
                "differs from the restored disk" if res.returncode == 1 else "could not be compared"
            )
            raise RescueError(
                f"The VM disk {disk} {what}: {tool_message(res.stderr)}",
                hint="Check the medium the VM disk is on (it may be failing) and run the "
                "job again.",
            )

    def _definitions(self, disk: Path) -> dict[str, Path]:
        from datetime import datetime

        from rescueui.core.vm.definition import libvirt_xml, ovf_text, vmx_text, write_new

        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out: dict[str, Path] = {}
        for kind in self.vm.definitions:
            path = self.files[kind]
            if kind == "libvirt":
                text = libvirt_xml(self.vm, disk, image=self.image, created=created)
            elif kind == "vmx":
                text = vmx_text(self.vm, disk)
            else:
                text = ovf_text(self.vm, disk)
            write_new(path, text)
            st = os.lstat(path)
            self.made.append(NewFile(str(path), st.st_dev, st.st_ino))
            out[kind] = path
        return out

    def failed(self, report: Any, outcome: str) -> None:
        removed = [f.path for f in [self.work, *self.made] if f.remove()]
        if removed:
            report.notes.append(
                "Removed again (made by this job, which did not finish): "
                + ", ".join(removed)
                + "."
            )
        report.details.setdefault("vm", self.vm.to_dict())
