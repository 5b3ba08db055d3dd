"""A restore into a new virtual machine from the TUI (Pilot): the dialog of the Target
screen's ``v`` (its keys, its refusals), the pre-flight of the VM (its header, the ``vm.*``
findings, a vCPU warning acknowledged, the host that runs it), the job's VM phases and the
report's VM section; with the canned session, and once for real on the demo (qemu-img)."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from textual.pilot import Pilot

from rescueui.core.adapt.plan import FIXUPS
from rescueui.core.demo import DemoEnvironment
from rescueui.core.errors import RescueError
from rescueui.core.session import Session
from rescueui.tui.app import RescueApp
from rescueui.tui.screens.dialogs import ConfirmTargetDialog, MachineDialog, VmDialog
from rescueui.tui.screens.job import JobScreen
from rescueui.tui.screens.preflight import PreflightScreen
from rescueui.tui.screens.report import VM_TITLE, ReportScreen
from rescueui.tui.screens.target import TargetScreen
from rescueui.tui.widgets.choice import ChoiceLine
from tests.tui.fakes import CannedSession, canned_vm_report
from tests.tui.test_fixups import acknowledge_all, canned_app, cursor_to, settled, to_target
from tests.tui.test_flow import go_to_target, screen_text, wait_for

NAME = "web01-2026-11-20"  # the canned image's folder: the core's default VM name


def words(app: RescueApp) -> str:
    """The screen's text with the lines joined (a sentence may wrap anywhere)."""
    return " ".join(screen_text(app).split())


def dialog_error(dialog: VmDialog) -> str:
    return " ".join(str(dialog.query_one("#error").render()).split())


async def refused(pilot: Pilot, dialog: VmDialog, fields: dict[str, str], expected: str) -> None:
    """The dialog filled with ``fields`` (widget id -> text) and Enter: it stays, and shows
    the core's reason."""
    for widget_id, text in fields.items():
        dialog.query_one(f"#{widget_id}").value = text
    await pilot.press("enter")
    await pilot.pause()
    assert pilot.app.screen is dialog, f"{fields} was taken"
    assert expected in dialog_error(dialog), dialog_error(dialog)


async def open_dialog(pilot: Pilot, *, on_target: bool = False) -> VmDialog:
    app = pilot.app
    if not on_target:
        await to_target(pilot)
    await pilot.press("v")
    await wait_for(pilot, lambda: isinstance(app.screen, VmDialog), what="the VM dialog")
    await pilot.pause()
    return app.screen


async def vm_preflight(pilot: Pilot, folder: Path) -> PreflightScreen:
    """The dialog filled with ``folder`` and accepted: the VM's pre-flight on screen."""
    app = pilot.app
    dialog = await open_dialog(pilot)
    dialog.query_one("#vm-folder").value = str(folder)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, PreflightScreen), what="pre-flight")
    screen = app.screen
    await wait_for(pilot, lambda: not screen.busy and screen.findings is not None)
    await pilot.pause(0.1)
    return screen


async def test_the_dialog_shows_its_keys_and_refuses_what_cannot_be_used(tmp_path: Path) -> None:
    session = CannedSession()
    app = canned_app(session)
    async with app.run_test(size=(80, 24)) as pilot:
        await to_target(pilot)
        assert "v New VM..." in screen_text(app)  # the Target screen's footer
        dialog = await open_dialog(pilot, on_target=True)
        text = screen_text(app)
        for key in ("Enter Pre-flight", "Tab Next field", "Esc Cancel"):
            assert key in text, key
        assert "Disk format: [qcow2]  vmdk   vhdx   raw" in text
        assert dialog.query_one("#vm-folder").value == "/run/live/medium/vms"
        assert dialog.query_one("#vm-name").value == NAME  # the core's default name

        # the default folder does not exist here: refused, and not created
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is dialog
        shown = dialog_error(dialog)
        assert shown.startswith("Cannot use it: The folder /run/live/medium/vms"), shown
        assert "No such file or directory" in shown and "Create the folder first" in shown

        missing = tmp_path / "vms"
        afile = tmp_path / "a-file"
        afile.write_text("not a folder")
        for folder, name, expected in (
            (str(missing), NAME, "No such file or directory"),
            (str(afile), NAME, "is not a folder"),
            ("", NAME, "No folder given"),
            (str(tmp_path), "web 01/../x", "cannot be used as a file name"),
        ):
            await refused(pilot, dialog, {"vm-folder": folder, "vm-name": name}, expected)
        assert not missing.exists()
        assert session.vm_preflights == []

        # Tab to the format line: its key is in the footer; Space takes the next format
        dialog.query_one("#vm-name").value = "web01"
        dialog.query_one("#vm-folder").value = str(tmp_path)
        dialog.query_one("#vm-folder").focus()
        await pilot.press("tab", "tab")
        await pilot.pause()
        assert isinstance(app.focused, ChoiceLine)
        assert "Space Next choice" in screen_text(app)
        await pilot.press("space")
        await pilot.pause()
        text = screen_text(app)
        assert "> Disk format:  qcow2  [vmdk]  vhdx   raw" in text
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PreflightScreen), what="pre-flight")
        request = app.flow.vm
        assert request.folder == str(tmp_path) and request.name == "web01"
        assert request.disk_format == "vmdk" and request.runs_on is None
        assert app.flow.target is None


async def test_the_operator_sets_vcpus_memory_disk_size_firmware_and_a_vmx(tmp_path: Path) -> None:
    """The values the pre-flight would fit are the operator's to set: what cannot be read or
    cannot be a VM's is refused in the dialog with the core's words; a good choice reaches
    the request, and is offered again when the operator comes back from the pre-flight."""
    session = CannedSession()
    app = canned_app(session)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await open_dialog(pilot)
        text = screen_text(app)
        assert "Firmware: [as the image boots]  BIOS   UEFI" in text
        assert "Definition: [libvirt]  libvirt + VMware .vmx   libvirt + OVF" in text
        assert "Tab: next field  Space: next choice  Enter: pre-flight  Esc: cancel" in text
        dialog.query_one("#vm-folder").value = str(tmp_path)
        for vcpus, memory, expected in (
            ("two", "", "vCPUs 'two': not a number."),
            ("\u0663", "", "not a number"),  # an Arabic-Indic digit: int() would read it
            ("0", "", "0 vCPUs is not a number a VM can have. Give 1 to 1024."),
            ("9" * 5000, "", "not a number"),  # no int() of 5000 digits
            ("", "4X", "Memory '4X': cannot read this size. Type a number with M or G"),
            ("", "100M", "100.0 MiB of memory is not a size a VM can have."),
        ):
            await refused(pilot, dialog, {"vm-vcpus": vcpus, "vm-memory": memory}, expected)
        dialog.query_one("#vm-memory").value = ""
        for size, expected in (
            ("big", "Disk size 'big': cannot read this size. Type a number with G or T"),
            ("0", "A VM disk of 0 B cannot be made."),
        ):
            await refused(pilot, dialog, {"vm-disk-size": size}, expected)
        dialog.query_one("#vm-disk-size").value = "1T"
        # a .vmx wants a vmdk disk: the core's rule, shown here
        dialog.query_one("#vm-vcpus").value = "3"
        dialog.query_one("#vm-memory").value = "1536"  # no unit: MiB
        dialog.query_one("#vm-disk-size").focus()
        await pilot.press("tab", "space", "space", "tab", "space")  # UEFI, + .vmx
        await pilot.pause()
        assert "> Definition:  libvirt  [libvirt + VMware .vmx]" in screen_text(app)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is dialog
        assert "A VMware .vmx or an OVF descriptor needs the disk as vmdk" in dialog_error(dialog)
        dialog.query_one("#vm-format").index = dialog.query_one("#vm-format").values.index("vmdk")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PreflightScreen), what="pre-flight")
        request = app.flow.vm
        assert (request.vcpus, request.memory_bytes) == (3, 1536 << 20)
        assert request.disk_bytes == 1 << 40
        assert request.firmware == "uefi" and request.definitions == ("libvirt", "vmx")
        assert session.vm_preflights[-1]["request"] is request

        # back, and v again: the dialog holds the choice made
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), what="target")
        dialog = await open_dialog(pilot, on_target=True)
        assert dialog.query_one("#vm-vcpus").value == "3"
        assert dialog.query_one("#vm-memory").value == "1536M"
        assert dialog.query_one("#vm-disk-size").value == "1048576M"
        assert "Firmware:  as the image boots   BIOS  [UEFI]" in screen_text(app)
        assert "Definition:  libvirt  [libvirt + VMware .vmx]" in screen_text(app)
        assert "Disk format:  qcow2  [vmdk]" in screen_text(app)


async def test_escape_leaves_the_dialog_without_a_choice(tmp_path: Path) -> None:
    session = CannedSession()
    app = canned_app(session)
    async with app.run_test(size=(80, 24)) as pilot:
        dialog = await open_dialog(pilot)
        dialog.query_one("#vm-folder").value = str(tmp_path)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), what="target")
        await pilot.pause(0.1)
        assert app.flow.vm is None and session.vm_preflights == []


async def test_the_preflight_shows_the_vm_and_a_cpu_warning_is_acknowledged(
    tmp_path: Path,
) -> None:
    session = CannedSession(fixups=True)
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await vm_preflight(pilot, tmp_path)
        assert session.preflights == []  # no disk pre-flight
        asked = session.vm_preflights[0]
        assert asked["request"] is app.flow.vm
        # the fix-ups as chosen; the machine they are for is the VM (the core's choice)
        assert asked["adapt"].selection == set(FIXUPS) and asked["adapt"].host is None

        text = words(app)
        assert (
            f"New VM {NAME}: 8 vCPU(s), 128.0 GiB, UEFI, disk {NAME}.qcow2 (qcow2, "
            f"virtio, 480.0 GiB) in {tmp_path}"
        ) in text
        for code in ("vm.firmware", "vm.disk", "vm.cpus", "vm.memory", "vm.space"):
            assert code in [r.finding.code for r in screen.rows], code
        assert "[WARN] The source machine had 32 vCPUs; the host has 8" in text
        assert "the definition gets 8." in text
        assert (
            f"From {NAME}: new files only: {NAME}.qcow2 (the disk), {NAME}.xml (libvirt); "
            "nothing existing is overwritten."
        ) in text
        assert "VM runs on: this machine (vCPUs and memory fitted to it). m: another host" in text
        assert "Fix-ups on: drivers, boot-loader, names, nic-rules. f on one: on/off" in text
        assert "Enter Make the VM" in text
        assert "Confirm target" not in text and "e Exact" not in text

        # Enter is refused while the vCPU warning is open
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen and session.vm_restores == []
        assert "acknowledge each warning first" in words(app)
        await cursor_to(pilot, screen, "vm.cpus")
        await pilot.press("a")
        await pilot.pause()
        assert "vm.cpus" in screen.acknowledged
        await acknowledge_all(pilot, screen)  # the fix-ups' own warning
        assert "Enter: make the VM (no code to type: only new files are written)" in words(app)

        # no confirmation code: the job starts at once, with the acknowledgements
        await pilot.press("enter")
        await wait_for(pilot, lambda: session.vm_restores, what="the restore into the VM")
        assert not any(isinstance(s, ConfirmTargetDialog) for s in app.screen_stack)
        assert isinstance(app.screen, JobScreen)
        restore = session.vm_restores[0]
        assert restore["request"] is app.flow.vm
        assert restore["accepted_codes"] == {"vm.cpus", "adapt.hardware.0"}
        assert restore["adapt"].selection == set(FIXUPS) and restore["adapt"].host is None
        assert session.restores == []  # not a disk restore


async def test_the_host_that_runs_the_vm_is_chosen_by_its_profile(tmp_path: Path) -> None:
    profile = tmp_path / "kvm7.json"
    profile.write_text(
        json.dumps(
            {
                "cpus": 48,
                "memory_bytes": 256 << 30,
                "firmware": "uefi",
                "dmi_vendor": "ACME",
                "dmi_product": "KVM 7",
            }
        )
    )
    session = CannedSession()
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await vm_preflight(pilot, tmp_path)
        assert "m VM host..." in screen_text(app)
        assert "m Machine..." not in screen_text(app)
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MachineDialog), what="dialog")
        assert "Which host will run the new virtual machine?" in words(app)
        app.screen.query_one("Input").value = str(profile)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen, what="back on the pre-flight")
        await settled(pilot, screen)
        await wait_for(pilot, lambda: len(session.vm_preflights) == 2)
        await settled(pilot, screen)
        runs_on = session.vm_preflights[1]["request"].runs_on
        assert runs_on is not None and runs_on.cpus == 48
        assert app.flow.vm_host_file == str(profile)
        text = words(app)
        assert f"VM runs on: ACME KVM 7 (profile file {profile})" in text
        assert f"New VM {NAME}: 32 vCPU(s)" in text
        assert not screen._open()  # the host has the CPUs: no warning now
        assert screen.rows[screen.cursor].finding.code == "vm.cpus"
        await pilot.press("enter")
        await wait_for(pilot, lambda: session.vm_restores, what="the restore into the VM")
        assert session.vm_restores[0]["request"].runs_on.cpus == 48


async def test_back_to_a_disk_after_a_vm(tmp_path: Path) -> None:
    session = CannedSession()
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        await vm_preflight(pilot, tmp_path)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), what="target")
        # v again offers the choice made before
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, VmDialog), what="the VM dialog")
        assert app.screen.query_one("#vm-folder").value == str(tmp_path)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), what="target")
        await pilot.press("enter")  # /dev/sda
        await wait_for(pilot, lambda: isinstance(app.screen, PreflightScreen), what="pre-flight")
        await settled(pilot, app.screen, 1)
        assert app.flow.vm is None and app.flow.target.path == "/dev/sda"
        assert "Confirm target" in screen_text(app) and "New VM" not in screen_text(app)


async def test_the_job_shows_the_vm_phases_and_the_report_its_files(tmp_path: Path) -> None:
    session = CannedSession()
    session.vm_phases = ("write", "verify", "convert")
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await vm_preflight(pilot, tmp_path)
        await acknowledge_all(pilot, screen)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job")
        job = app.screen
        await wait_for(pilot, lambda: job.latest is not None and job.latest.phase == "convert")
        await pilot.pause(0.2)
        text = words(app)
        assert f"-> new VM {NAME} in {tmp_path}" in text
        assert "Phase: Writing the VM disk in its format (qemu-img convert)" in text
        # a cancel says what stopping leaves (no resume of a new VM)
        await pilot.press("x")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CancelJobDialog")
        assert "The new VM's files made so far are removed again" in words(app)
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is job)

    session = CannedSession()
    session.finish = canned_vm_report(str(tmp_path))
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await vm_preflight(pilot, tmp_path)
        await acknowledge_all(pilot, screen)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job")
        job = app.screen
        await wait_for(pilot, lambda: job.finished, what="the job to end")
        await pilot.pause(0.1)
        text = words(app)
        assert "Phase: Reading the VM disk back and comparing it with the restored disk" in text
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen), what="report")
        await pilot.pause(0.1)
        report = " ".join(str(app.screen.query_one("#report").render()).split())
        assert VM_TITLE in report
        assert (
            f"VM {NAME}: 8 vCPU(s), 128.0 GiB, UEFI, disk 480.0 GiB on virtio, network card virtio"
        ) in report
        assert f"Files made: disk: {tmp_path}/{NAME}.qcow2 libvirt definition: " in report
        assert f"Checks: qemu-img compare: {NAME}.qcow2 holds exactly the restored" in report
        assert "valid by virt-xml-validate" in report
        text = screen_text(app)
        assert "SUCCESS: the new VM's disk is written, verified and compared" in text
        assert app.screen.check_action("resume", ()) is False


async def test_a_refused_vm_job_shows_the_core_s_reason(tmp_path: Path) -> None:
    from rescueui.core.errors import UnsafeTargetError

    session = CannedSession()
    session.finish = UnsafeTargetError(
        f"{tmp_path}/{NAME}.qcow2 already exists; the VM's files are only made new, never "
        "overwritten."
    )
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await vm_preflight(pilot, tmp_path)
        await acknowledge_all(pilot, screen)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job")
        job = app.screen
        await wait_for(pilot, lambda: job.finished, what="the job to end")
        await pilot.pause(0.1)
        assert "FAILED - " in screen_text(app) and "already exists" in words(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen), what="report")
        assert app.screen.check_action("resume", ()) is False


# ---- the session's part (the core's rules, through the door the TUI uses) ----------------


def test_the_default_folder_is_the_vms_folder_of_the_image_s_medium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    medium = tmp_path / "medium"
    image = medium / "images" / "web01"
    image.mkdir(parents=True)
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == medium or real(p))
    session = Session(mount_media=False)
    assert session.default_vm_folder(image) == medium / "images"  # no vms folder there
    (medium / "vms").mkdir()
    assert session.default_vm_folder(image) == medium / "vms"
    assert session.default_vm_folder(medium / "images" / "web01.qcow2") == medium / "vms"
    assert session.default_vm_name(image) == "web01"
    assert session.default_vm_name(medium / "db02.qcow2") == "db02"


def test_the_session_checks_a_vm_choice(tmp_path: Path) -> None:
    session = Session(mount_media=False)
    request = session.vm_request(str(tmp_path), name="web01", disk_format="vhdx")
    assert (request.folder, request.name, request.disk_format) == (str(tmp_path), "web01", "vhdx")
    assert session.vm_request(str(tmp_path)).name is None  # the core's default later
    with pytest.raises(RescueError, match="Unknown virtual disk format"):
        session.vm_request(str(tmp_path), disk_format="vdi")
    with pytest.raises(RescueError, match="No such file or directory"):
        session.vm_request(str(tmp_path / "missing"))
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(RescueError, match="symbolic link"):
        session.vm_request(str(link))


def test_the_session_refuses_a_folder_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only medium (root writes anywhere else): what os.access says decides, and a
    medium the session mounted read-only itself is named as such."""
    session = Session(mount_media=False)
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode)
    )
    with pytest.raises(RescueError, match=r"cannot be written \(a read-only medium"):
        session.vm_request(str(tmp_path))
    session.media_mounts = [tmp_path]
    with pytest.raises(RescueError, match="mounted read-only to look for images"):
        session.vm_request(str(tmp_path))


# ---- for real: the demo's image into a VM disk (qemu-img, virt-xml-validate if there) ----


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
async def test_the_demo_restores_into_a_new_vm(demo_env: DemoEnvironment) -> None:
    session = Session(demo_env)
    app = RescueApp(session, console=True, repaint_interval=0.05, watch_disks=False)
    vms = demo_env.build.root / "vms"
    shutil.rmtree(vms, ignore_errors=True)
    async with app.run_test(size=(100, 34)) as pilot:
        await go_to_target(pilot)
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, VmDialog), what="the VM dialog")
        dialog = app.screen
        assert dialog.query_one("#vm-folder").value == str(vms)  # the demo's own folder
        assert dialog.query_one("#vm-name").value == "demo-server-image"
        dialog.query_one("#vm-vcpus").value = "1"
        dialog.query_one("#vm-memory").value = "768M"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PreflightScreen), what="pre-flight")
        screen = app.screen
        await wait_for(pilot, lambda: not screen.busy and screen.findings is not None)
        await pilot.pause(0.1)
        assert screen.error is None, screen.error
        codes = {f.code for f in screen.findings}
        assert {"vm.firmware", "vm.disk", "vm.cpus", "vm.memory", "vm.space"} <= codes
        assert "New VM demo-server-image: 1 vCPU(s), 768.0 MiB," in words(app)
        # the demo plans no fix-ups (nothing in its sample disk boots)
        assert "Fix-ups on: none - the restored system is left as it is" in words(app)
        await acknowledge_all(pilot, screen)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job")
        job = app.screen
        await wait_for(pilot, lambda: job.finished, timeout=120, what="the job to end")
        assert job.error is None, job.error
        phases = set(job.report.phases)
        assert {"write", "verify", "convert", "compare"} <= phases, phases
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen), what="report")
        await pilot.pause(0.1)
        report = " ".join(str(app.screen.query_one("#report").render()).split())
    disk = vms / "demo-server-image.qcow2"
    assert disk.is_file() and (vms / "demo-server-image.xml").is_file()
    assert not list(vms.glob("*.rescueui-work.img"))  # the working file is gone
    assert f"disk: {disk}" in report and "qemu-img compare:" in report
    assert "adapt" not in job.report.details  # no fix-ups in the demo
    domain = ET.parse(vms / "demo-server-image.xml").getroot()  # the operator's values
    assert domain.findtext("vcpu") == "1"
    assert domain.find("memory").get("unit") == "KiB"
    assert domain.findtext("memory") == str(768 * 1024)
