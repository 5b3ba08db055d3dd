"""The fix-ups of the restored system in the TUI (Pilot, canned session): the pre-flight's
fix-up lines, switching a fix-up off and on (``f``), the machine they are for (``m``, a
profile file), what reaches the session's pre-flight and restore, the adapt phase on the job
screen and the fix-up steps on the report screen (also after a failed fix-up)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from rescueui.core.adapt.plan import FIXUPS
from rescueui.core.errors import AdaptError
from rescueui.tui.app import RescueApp
from rescueui.tui.screens.dialogs import ConfirmTargetDialog, MachineDialog
from rescueui.tui.screens.images import ImageScreen
from rescueui.tui.screens.job import JobScreen
from rescueui.tui.screens.preflight import PreflightScreen
from rescueui.tui.screens.report import FIXUPS_TITLE, ReportScreen
from rescueui.tui.screens.target import TargetScreen
from rescueui.tui.widgets.disktable import DiskTable
from tests.tui.fakes import CannedSession, canned_adapt_report
from tests.tui.test_flow import screen_text, wait_for

ALL = set(FIXUPS)


def canned_app(session: CannedSession) -> RescueApp:
    return RescueApp(
        session, console=True, repaint_interval=0.05, watch_disks=False, graph_warmup=0.0
    )


async def to_target(pilot: Pilot) -> None:
    app = pilot.app
    await pilot.pause()
    await pilot.press("enter")  # disks -> image
    await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
    await pilot.press("enter")  # image -> target
    await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), what="target")
    await wait_for(pilot, lambda: app.screen.query_one(DiskTable).row_count > 0, what="disks")


async def settled(pilot: Pilot, screen: PreflightScreen, runs: int | None = None) -> None:
    """Wait until the pre-flight (its ``runs``-th run) is on screen."""
    session = pilot.app.session
    await wait_for(
        pilot,
        lambda: (
            not screen.busy
            and screen.findings is not None
            and (runs is None or len(session.preflights) == runs)
        ),
        what="the pre-flight",
    )
    await pilot.pause(0.1)


async def to_preflight(pilot: Pilot) -> PreflightScreen:
    await to_target(pilot)
    await pilot.press("enter")  # /dev/sda, a whole disk
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, PreflightScreen), what="pre-flight")
    screen = app.screen
    await settled(pilot, screen, 1)
    return screen


async def cursor_to(pilot: Pilot, screen: PreflightScreen, code: str) -> None:
    codes = [r.finding.code for r in screen.rows]
    assert code in codes, codes
    while screen.rows[screen.cursor].finding.code != code:
        await pilot.press("up" if codes.index(code) < screen.cursor else "down")
    await pilot.pause()


def level_of(screen: PreflightScreen, code: str) -> str:
    return next(f.level for f in screen.findings or [] if f.code == code)


async def acknowledge_all(pilot: Pilot, screen: PreflightScreen) -> None:
    for _ in range(10):
        if not screen._open():
            return
        screen.cursor = screen._row_of(screen._open()[0])
        await pilot.press("a")
        await pilot.pause()
    assert not screen._open()


async def confirm_and_restore(pilot: Pilot) -> dict[str, Any]:
    app, session = pilot.app, pilot.app.session
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTargetDialog), what="confirm")
    await pilot.press(*app.screen.code, "enter")
    await wait_for(pilot, lambda: session.restores, what="the restore call")
    return session.restores[0]


def profile_file(path: Path, **fields: Any) -> Path:
    """Another machine's profile, as the host command writes it there (JSON)."""
    data = {
        "cpus": 8,
        "memory_bytes": 32 << 30,
        "firmware": "bios",
        "dmi_vendor": "ACME",
        "dmi_product": "Rack 9",
        "virtual": None,
    }
    data.update(fields)
    path.write_text(json.dumps(data))
    return path


async def test_fixups_are_listed_and_switched_on_the_preflight_and_reach_the_restore() -> None:
    session = CannedSession(fixups=True)
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await to_preflight(pilot)
        first = session.preflights[0]["adapt"]
        assert first.selection == ALL and first.host is None and first.enabled
        text = screen_text(app)
        assert "Installed system: Debian GNU/Linux 12" in text
        assert "Fix-ups for: this machine." in text
        assert "Fix-ups on: drivers, boot-loader, names, nic-rules" in text
        assert "f Fix-up on/off" not in text  # the cursor is on the memory warning
        await pilot.press("a")  # the memory warning; the cursor goes on to the next one
        await pilot.pause()
        assert screen.acknowledged == {"memory"}

        # the fix-up lines: the footer shows f on them
        await cursor_to(pilot, screen, "adapt.drivers")
        text = screen_text(app)
        assert "Fix-up drivers: rebuild the initramfs" in text
        assert "f Fix-up on/off" in text and "e Exact" not in text
        await cursor_to(pilot, screen, "adapt.names")
        assert level_of(screen, "adapt.names") == "info"

        # off: the pre-flight runs again without it, and says it is not chosen
        await pilot.press("f")
        await settled(pilot, screen, 2)
        assert session.preflights[1]["adapt"].selection == ALL - {"names"}
        assert app.flow.fixups == ALL - {"names"}
        assert level_of(screen, "adapt.names") == "warn"
        assert screen.rows[screen.cursor].finding.code == "adapt.names"  # the cursor stays
        assert screen.acknowledged == {"memory"}  # an unchanged warning stays acknowledged
        text = screen_text(app)
        assert "Fix-up names not chosen" in text
        assert "Fix-ups on: drivers, boot-loader, nic-rules; off: names" in text

        # on again, and off once more
        await pilot.press("f")
        await settled(pilot, screen, 3)
        assert session.preflights[2]["adapt"].selection == ALL
        assert level_of(screen, "adapt.names") == "info"
        assert "Fix-ups on: drivers, boot-loader, names, nic-rules" in screen_text(app)
        await pilot.press("f")
        await settled(pilot, screen, 4)

        # f on a line that is no fix-up changes nothing and says why
        await cursor_to(pilot, screen, "adapt.system")
        await pilot.press("f")
        await pilot.pause()
        assert len(session.preflights) == 4
        assert "f switches a fix-up on or off" in screen_text(app)

        # the restore gets the same choice (and every warning acknowledged, this one too)
        await acknowledge_all(pilot, screen)
        restore = await confirm_and_restore(pilot)
        assert restore["adapt"].selection == ALL - {"names"}
        assert restore["adapt"].host is None
        assert restore["accepted_codes"] == {"memory", "adapt.hardware.0", "adapt.names"}


async def test_every_fixup_off_is_no_adaptation() -> None:
    session = CannedSession(fixups=True)
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await to_preflight(pilot)
        for n, name in enumerate(("drivers", "names", "boot-loader", "nic-rules"), start=2):
            await cursor_to(pilot, screen, f"adapt.{name}")
            await pilot.press("f")
            await settled(pilot, screen, n)
        adapt = session.preflights[-1]["adapt"]
        assert adapt.selection == set() and not adapt.enabled
        assert "Fix-ups on: none - the restored system is left as it is" in screen_text(app)
        await acknowledge_all(pilot, screen)
        restore = await confirm_and_restore(pilot)
        assert restore["adapt"].selection == set() and not restore["adapt"].enabled


async def test_machine_dialog_loads_a_profile_and_shows_what_is_wrong(tmp_path: Path) -> None:
    good = profile_file(tmp_path / "rack9.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    no_firmware = profile_file(tmp_path / "nofirmware.json", firmware="")
    session = CannedSession(fixups=True)
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await to_preflight(pilot)
        await acknowledge_all(pilot, screen)
        assert screen.acknowledged == {"memory", "adapt.hardware.0"}
        await cursor_to(pilot, screen, "adapt.system")
        assert "m Machine..." in screen_text(app)

        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MachineDialog), what="dialog")
        dialog = app.screen
        assert "Leave the field empty for this machine" in screen_text(app)
        field = dialog.query_one("Input")
        for bad, words in (
            (broken, "is not JSON"),
            (no_firmware, "does not say how that machine boots"),
            (tmp_path / "missing.json", "does not exist"),
        ):
            field.value = str(bad)
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is dialog, f"{bad} was taken"
            shown = " ".join(str(dialog.query_one("#error").render()).split())
            assert shown.startswith("Cannot use it:") and words in shown, shown
        assert len(session.preflights) == 1

        field.value = str(good)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen, what="back on the pre-flight")
        await settled(pilot, screen, 2)
        adapt = session.preflights[1]["adapt"]
        assert adapt.host is not None and adapt.host.machine == "ACME Rack 9"
        assert adapt.host.firmware == "bios" and adapt.selection == ALL
        assert app.flow.machine_file == str(good)
        text = " ".join(screen_text(app).split())
        assert f"Checks and fix-ups for: ACME Rack 9 (profile file {good})" in text
        assert "Fix-up boot-loader: install GRUB for BIOS (i386-pc)" in text
        assert screen.rows[screen.cursor].finding.code == "adapt.system"
        # the machine's warning changed (another machine's CPUs): acknowledged again
        assert screen.acknowledged == {"memory"}

        # Esc keeps the machine; an empty field is this machine again
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MachineDialog))
        assert app.screen.query_one("Input").value == str(good)  # the file chosen before
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.pause(0.1)
        assert len(session.preflights) == 2
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MachineDialog))
        app.screen.query_one("Input").value = ""
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen)
        await settled(pilot, screen, 3)
        assert session.preflights[2]["adapt"].host is None
        assert app.flow.machine is None
        assert "Fix-ups for: this machine." in screen_text(app)

        # and the other machine once more: the restore is planned for it
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MachineDialog))
        app.screen.query_one("Input").value = str(good)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen)
        await settled(pilot, screen, 4)
        await acknowledge_all(pilot, screen)
        restore = await confirm_and_restore(pilot)
        assert restore["adapt"].host.machine == "ACME Rack 9"
        assert restore["adapt"].selection == ALL


async def test_a_partition_restore_plans_no_fixups() -> None:
    session = CannedSession(fixups=True)
    session.partition_problem = lambda *a: None  # type: ignore[method-assign]
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        await to_target(pilot)
        table = app.screen.query_one(DiskTable)
        while table.selected_path() != "/dev/sda2":
            await pilot.press("down")
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PartitionPickDialog")
        await pilot.press("2")
        await wait_for(pilot, lambda: isinstance(app.screen, PreflightScreen), what="pre-flight")
        screen = app.screen
        await settled(pilot, screen, 1)
        assert session.preflights[0] == {"partition": 2, "adapt": None}
        assert not screen.query_one("#adapt").display
        text = screen_text(app)
        assert "Fix-ups" not in text and "m Machine" not in text
        await pilot.press("m", "f")
        await pilot.pause()
        assert app.screen is screen and len(session.preflights) == 1
        await acknowledge_all(pilot, screen)
        restore = await confirm_and_restore(pilot)
        assert restore["adapt"] is None


async def test_the_job_screen_shows_the_fixup_being_done() -> None:
    session = CannedSession(fixups=True)
    session.adapt_message = "fix-up drivers: rebuild the initramfs of 6.1.0-28-amd64"
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await to_preflight(pilot)
        await acknowledge_all(pilot, screen)
        await confirm_and_restore(pilot)
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job")
        job = app.screen
        await wait_for(
            pilot, lambda: job.latest is not None and job.latest.phase == "adapt", what="adapt"
        )
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "Phase: Adapting the restored system to the machine (fix-ups)" in text
        assert "Now: fix-up drivers: rebuild the initramfs of 6.1.0-28-amd64" in text


async def finished_report(pilot: Pilot) -> ReportScreen:
    app = pilot.app
    screen = await to_preflight(pilot)
    await acknowledge_all(pilot, screen)
    await confirm_and_restore(pilot)
    await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job")
    job = app.screen
    await wait_for(pilot, lambda: job.finished, what="the job to end")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen), what="report")
    await pilot.pause(0.1)
    return app.screen


def report_words(screen: ReportScreen) -> str:
    return " ".join(str(screen.query_one("#report").render()).split())


async def test_the_report_lists_each_fixup_step() -> None:
    session = CannedSession(fixups=True)
    session.finish = canned_adapt_report()
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await finished_report(pilot)
        words = report_words(screen)
        assert FIXUPS_TITLE in words
        assert "System: Debian GNU/Linux 12 (bookworm)" in words
        assert "[DONE] drivers: rebuild the initramfs with this machine's drivers" in words
        assert "changed: /boot/initrd.img-6.1.0-28-amd64 (sha256 1f2e3d4c5b6a -> a1b2c3d4e5f6" in (
            words
        )
        assert "checked: the initramfs of 6.1.0-28-amd64 lists megaraid_sas" in words
        assert "[DONE] names: name devices by UUID instead of kernel name" in words
        assert "Backups of the changed files: /var/backups/rescueui-20261121-101500" in words
        assert "SUCCESS" in screen_text(app)


async def test_the_report_after_a_failed_fixup_says_what_to_do_next() -> None:
    session = CannedSession(fixups=True)
    error = AdaptError(
        "The restore is written and verified, but fix-up(s) names failed: /etc/fstab could "
        "not be written: Read-only file system. The restored system may not boot on this "
        "machine.",
        hint="Edit /etc/fstab of the restored system by hand: UUID=0a3c6e9e for /dev/sda2.",
    )
    error.report = canned_adapt_report(failed=True)  # type: ignore[attr-defined]
    session.finish = error
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        screen = await finished_report(pilot)
        text = screen_text(app)
        assert "FIX-UP FAILED: data restored and verified, the system may not boot" in text
        words = report_words(screen)
        assert "[DONE] drivers: rebuild the initramfs" in words
        assert "[FAILED] names: name devices by UUID instead of kernel name" in words
        assert "error: /etc/fstab could not be written: Read-only file system." in words
        assert "next step: Edit /etc/fstab of the restored system by hand" in words
        assert "Result: a fix-up failed: the system may not boot" in words
        # nothing to resume: the data is written and verified
        assert screen.check_action("resume", ()) is False
        assert "Resume restore" not in text
