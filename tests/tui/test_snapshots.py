"""Snapshot tests of every screen at 80x24 and 120x40 (canned data, frozen job state).

Update after an intended change: ``pytest tests/tui/test_snapshots.py --snapshot-update``,
then look at the SVGs in ``__snapshots__`` before committing them.
"""

from __future__ import annotations

import pytest
from textual.pilot import Pilot

from rescueui.tui.app import RescueApp
from rescueui.tui.screens import images as images_screen
from rescueui.tui.screens.job import JobScreen
from tests.tui.fakes import CANNED_USAGE, CannedSession

SIZES = [(80, 24), (120, 40)]


def make_app(**kwargs: object) -> RescueApp:
    return RescueApp(
        CannedSession(**kwargs),
        console=True,
        repaint_interval=0.05,
        watch_disks=False,
        sample_every=0.0,
        graph_warmup=0.0,
    )  # type: ignore[arg-type]


async def _to_target(pilot: Pilot) -> None:
    await pilot.pause()
    await pilot.press("enter")  # disks -> image
    await pilot.pause()
    await pilot.press("enter")  # image -> target
    await pilot.pause()


async def _to_preflight(pilot: Pilot) -> None:
    await _to_target(pilot)
    await pilot.press("enter")  # /dev/sda fits
    await pilot.pause(0.2)


async def _to_preflight_acknowledged(pilot: Pilot) -> None:
    await _to_preflight(pilot)
    await pilot.press("enter")  # refused: the memory warning is not acknowledged yet
    await pilot.pause()
    assert type(pilot.app.screen).__name__ == "PreflightScreen"
    await pilot.press("a")  # the cursor starts on the (only) warning
    await pilot.pause()


async def _to_confirm(pilot: Pilot) -> None:
    await _to_preflight_acknowledged(pilot)
    await pilot.press("enter")
    await pilot.pause()
    await pilot.press(*"12")


async def _to_job(pilot: Pilot) -> None:
    await _to_preflight_acknowledged(pilot)
    await pilot.press("enter")
    await pilot.pause()
    await pilot.press(*"2345", "enter")
    await pilot.pause(0.3)
    assert isinstance(pilot.app.screen, JobScreen)


async def _to_refused_confirm(pilot: Pilot) -> None:
    await _to_confirm(pilot)
    await pilot.press("enter")
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES)
class TestScreens:
    def test_disks(self, snap_compare, size) -> None:
        assert snap_compare(make_app(), terminal_size=size, run_before=lambda p: p.pause(0.2))

    def test_image(self, snap_compare, size, monkeypatch) -> None:
        # the canned image's folder does not exist: what opening it would tell
        monkeypatch.setattr(images_screen, "read_usage", lambda path: list(CANNED_USAGE))

        async def image(pilot: Pilot) -> None:
            await pilot.pause()
            await pilot.press("enter")
            await pilot.pause(0.2)

        assert snap_compare(make_app(), terminal_size=size, run_before=image)

    def test_capture_estimate(self, snap_compare, size) -> None:
        async def estimate(pilot: Pilot) -> None:
            await pilot.pause()
            await pilot.press("c")
            await pilot.pause(0.3)
            assert not pilot.app.screen.busy

        assert snap_compare(make_app(), terminal_size=size, run_before=estimate)

    def test_target(self, snap_compare, size) -> None:
        assert snap_compare(make_app(), terminal_size=size, run_before=_to_target)

    def test_preflight(self, snap_compare, size) -> None:
        assert snap_compare(make_app(), terminal_size=size, run_before=_to_preflight)

    def test_preflight_enter_refused(self, snap_compare, size) -> None:
        async def refused(pilot: Pilot) -> None:
            await _to_preflight(pilot)
            await pilot.press("enter")
            await pilot.pause()

        assert snap_compare(make_app(), terminal_size=size, run_before=refused)

    def test_preflight_acknowledged(self, snap_compare, size) -> None:
        assert snap_compare(make_app(), terminal_size=size, run_before=_to_preflight_acknowledged)

    def test_confirm_refused(self, snap_compare, size) -> None:
        assert snap_compare(make_app(), terminal_size=size, run_before=_to_refused_confirm)

    def test_restore_running(self, snap_compare, size) -> None:
        assert snap_compare(make_app(), terminal_size=size, run_before=_to_job)

    def test_restore_mismatch_alarm(self, snap_compare, size) -> None:
        assert snap_compare(make_app(corrupt=True), terminal_size=size, run_before=_to_job)


# ---- the fix-ups of the restored system (a canned system that needs some) ----------------


def fixups_app(**attrs: object) -> RescueApp:
    app = make_app(fixups=True)
    for name, value in attrs.items():
        setattr(app.session, name, value)
    return app


async def _to_fixup_off(pilot: Pilot) -> None:
    """The pre-flight with the fix-up ``names`` switched off, the cursor on it."""
    await _to_preflight(pilot)
    screen = pilot.app.screen
    while screen.rows[screen.cursor].finding.code != "adapt.names":
        await pilot.press("down")
    await pilot.press("f")
    await pilot.pause(0.3)
    assert not screen.busy and "names" not in pilot.app.flow.fixups


async def _to_fixups_job(pilot: Pilot) -> None:
    await _to_preflight(pilot)
    await pilot.press("a", "a")  # the memory warning, then the machine's CPU setting
    await pilot.pause()
    await pilot.press("enter")
    await pilot.pause()
    await pilot.press(*"2345", "enter")
    await pilot.pause(0.3)
    assert isinstance(pilot.app.screen, JobScreen)


async def _to_fixups_report(pilot: Pilot) -> None:
    await _to_fixups_job(pilot)
    await pilot.pause(0.2)
    await pilot.press("enter")
    await pilot.pause(0.2)


def failed_fixup() -> Exception:
    from rescueui.core.errors import AdaptError
    from tests.tui.fakes import canned_adapt_report

    error = AdaptError(
        "The restore is written and verified, but fix-up(s) names failed: /etc/fstab could not "
        "be written: Read-only file system. The restored system may not boot on this machine."
    )
    error.report = canned_adapt_report(failed=True)  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize("size", SIZES)
class TestFixups:
    def test_preflight_fixup_off(self, snap_compare, size) -> None:
        assert snap_compare(fixups_app(), terminal_size=size, run_before=_to_fixup_off)

    def test_machine_dialog_refusal(self, snap_compare, size) -> None:
        async def refused(pilot: Pilot) -> None:
            await _to_preflight(pilot)
            await pilot.press("m")
            await pilot.pause()
            pilot.app.screen.query_one("Input").value = "/nonexistent/rack9.json"
            await pilot.press("enter")
            await pilot.pause()

        assert snap_compare(fixups_app(), terminal_size=size, run_before=refused)

    def test_restore_adapting(self, snap_compare, size) -> None:
        app = fixups_app(adapt_message="fix-up drivers: rebuild the initramfs of 6.1.0-28-amd64")
        assert snap_compare(app, terminal_size=size, run_before=_to_fixups_job)

    def test_report_fixup_failed(self, snap_compare, size) -> None:
        app = fixups_app(finish=failed_fixup())
        assert snap_compare(app, terminal_size=size, run_before=_to_fixups_report)


# ---- a new virtual machine instead of a target disk ---------------------------------------


def test_vm_dialog_refusal(snap_compare) -> None:
    """The dialog of the Target screen's v, after Enter on a folder that does not exist (the
    canned default): the reason in the dialog, its keys in the footer."""

    async def refused(pilot: Pilot) -> None:
        await _to_target(pilot)
        await pilot.press("v")
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert type(pilot.app.screen).__name__ == "VmDialog"

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=refused)


# ---- the Files screen: one partition of the image, browsed read-only ---------------------


async def _to_files_marked(pilot: Pilot) -> None:
    """/srv/db of the canned image's partition 2, the two dumps marked."""
    await pilot.pause()
    await pilot.press("enter")  # disks -> image
    await pilot.pause()
    await pilot.press("b", "2")  # browse partition 2
    await pilot.pause(0.3)
    screen = pilot.app.screen
    for name in ("srv", "db"):
        while screen.selected().name != name:
            await pilot.press("down")
        await pilot.press("enter")
        await pilot.pause(0.3)
    await pilot.press("space", "space")  # the two dumps (the cursor moves on)
    await pilot.pause(0.2)
    assert len(screen.marks) == 2


@pytest.mark.parametrize("size", SIZES)
def test_files(snap_compare, size) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=_to_files_marked)


def test_extract_report(snap_compare) -> None:
    """The report of an extraction: each file with its SHA-256, then the core's report."""

    async def report(pilot: Pilot) -> None:
        await _to_files_marked(pilot)
        await pilot.press("e")
        await pilot.pause()
        await pilot.press("enter")  # the default folder
        await pilot.pause(0.5)
        await pilot.press("enter")  # the report
        await pilot.pause(0.3)
        assert type(pilot.app.screen).__name__ == "ReportScreen"

    app = make_app()
    app.session.finish = True  # the canned extraction ends with its report
    assert snap_compare(app, terminal_size=(80, 24), run_before=report)
