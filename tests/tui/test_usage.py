"""What of each partition an image holds, on screen (Pilot): the capture estimate with its
used-blocks / every-byte switch, the exact-restore switch, the Image and Pre-flight screens'
usage lines, the capture's first phase (the used-block maps) and the restore report's note
about the space no filesystem uses."""

from __future__ import annotations

from pathlib import Path

from textual.pilot import Pilot

from rescueui.core.session import Session
from rescueui.tui.app import RescueApp
from rescueui.tui.screens import images as images_screen
from rescueui.tui.screens.dialogs import CaptureEstimateDialog, ConfirmTargetDialog, PathDialog
from rescueui.tui.screens.disks import DisksScreen
from rescueui.tui.screens.images import ImageScreen
from rescueui.tui.screens.job import JobScreen
from rescueui.tui.screens.preflight import PreflightScreen
from rescueui.tui.screens.report import ReportScreen
from rescueui.tui.widgets.disktable import DiskTable
from tests.tui.fakes import CANNED_USAGE, CannedSession, canned_image
from tests.tui.test_flow import (
    acknowledge_warnings,
    choose_row,
    go_to_target,
    open_preflight,
    screen_text,
    wait_for,
)


def canned_app(session: CannedSession) -> RescueApp:
    return RescueApp(
        session, console=True, repaint_interval=0.05, watch_disks=False, graph_warmup=0.0
    )


async def open_estimate(pilot: Pilot) -> CaptureEstimateDialog:
    app = pilot.app
    await wait_for(
        pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
    )
    await pilot.press("c")  # /dev/sda, the first disk
    await wait_for(pilot, lambda: isinstance(app.screen, CaptureEstimateDialog), what="estimate")
    dialog = app.screen
    await wait_for(pilot, lambda: not dialog.busy, what="the estimate")
    await pilot.pause(0.1)
    return dialog


async def test_capture_estimate_and_the_every_byte_switch(tmp_path: Path) -> None:
    session = CannedSession()
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        dialog = await open_estimate(pilot)
        assert session.estimates == [False]
        text = screen_text(app)
        assert "Copy: only the blocks each filesystem uses" in text
        assert "p1 vfat: 120.0 MiB used of 512.0 MiB - 392.0 MiB not copied" in text
        assert "p2 ext4: 58.1 GiB used of 400.0 GiB - 341.9 GiB not copied" in text
        assert "p3 crypto_LUKS: every byte of 16.0 GiB copied (a LUKS container)" in text
        # head 1 MiB + p1 120 MiB + p2 58.1 GiB + p3 16 GiB + tail 544 KiB
        assert "The capture reads 74.2 GiB of the disk's 480.0 GiB." in text
        assert "Estimated image size: at most 74.2 GiB before compression" in text
        assert "upper bound" in text
        assert "WARNING: p2 (ext4) was not cleanly unmounted" in text
        assert "a Every byte" in text and "Used blocks only" not in text  # the footer

        # every byte: estimated again, the request changes, the warning goes
        await pilot.press("a")
        await wait_for(pilot, lambda: not dialog.busy and dialog.all_blocks, what="every byte")
        await pilot.pause(0.1)
        assert session.estimates == [False, True]
        text = screen_text(app)
        assert "Copy: EVERY BYTE of every partition" in text
        assert "p2 ext4: every byte of 400.0 GiB copied (every byte was asked for)" in text
        assert "at most 416.5 GiB before compression" in text
        assert "WARNING" not in text
        assert "a Used blocks only" in text

        # and back, and once more to every byte
        await pilot.press("a")
        await wait_for(pilot, lambda: not dialog.busy and not dialog.all_blocks)
        await pilot.press("a")
        await wait_for(pilot, lambda: not dialog.busy and dialog.all_blocks)
        assert session.estimates == [False, True, False, True]

        # Enter: the image folder, with the choice and the estimate in its prompt
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PathDialog), what="folder")
        assert "every byte; estimated image size: at most 416.5 GiB before" in app.screen.prompt
        dest = tmp_path / "sda-image"
        app.screen.query_one("Input").value = ""
        await pilot.press(*str(dest), "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job")
        job = app.screen
        assert job.kind == "capture"
        await wait_for(pilot, lambda: session.captures, what="the capture call")
        assert session.captures == [
            {"source": "/dev/sda", "image_dir": str(dest), "all_blocks": True}
        ]
        # the first phase: the used-block maps, before the bytes to read are known
        await wait_for(pilot, lambda: job.latest is not None, what="progress")
        await pilot.pause(0.2)
        text = screen_text(app)
        assert job.title_text.endswith(" (every byte)")
        assert "Phase: Used-block maps  finding the blocks the filesystem on p2 uses" in text
        assert "bytes to read: not known yet" in text
        session.capture_gate.set()
        await wait_for(pilot, lambda: job.finished, what="capture to end")


async def test_capture_by_default_reads_the_used_blocks(tmp_path: Path) -> None:
    session = CannedSession()
    app = canned_app(session)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_estimate(pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, PathDialog))
        assert "the blocks each filesystem uses; estimated image size: at most 74.2 GiB" in (
            app.screen.prompt
        )
        app.screen.query_one("Input").value = ""
        await pilot.press(*str(tmp_path / "img"), "enter")
        await wait_for(pilot, lambda: session.captures, what="the capture call")
        assert session.captures[0]["all_blocks"] is False
        session.capture_gate.set()


async def test_the_estimate_can_be_left_while_it_runs() -> None:
    session = CannedSession()
    session.estimate_delay = 1.0
    app = canned_app(session)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
        )
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CaptureEstimateDialog))
        dialog = app.screen
        await pilot.pause(0.1)
        assert dialog.busy
        assert "Finding the blocks each filesystem uses..." in screen_text(app)
        assert dialog.check_action("accept", ()) is None  # dimmed until the estimate is in
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is dialog
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DisksScreen), what="back")
        # Esc stopped the estimate (its map tools) at once, not after its 1 s
        await wait_for(pilot, lambda: session.estimates_cancelled == 1, what="cancel")
        await pilot.pause(1.2)  # nothing late arrives
        assert isinstance(app.screen, DisksScreen)
        assert session.captures == []


async def test_preflight_groups_the_usage_lines_and_exact_reaches_the_restore() -> None:
    session = CannedSession()
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        await pilot.pause()
        await pilot.press("enter")  # disks -> image
        await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
        await pilot.press("enter")  # image -> target
        await pilot.pause()
        await pilot.press("enter")  # /dev/sda
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, PreflightScreen) and app.screen.findings is not None,
        )
        screen = app.screen
        await pilot.pause(0.1)
        text = screen_text(app)
        # one row after the other findings, the warning first in view
        assert text.count("What the image holds, per partition:") == 1
        assert text.index("[WARN]") < text.index("What the image holds")
        assert text.index("Partition 2 will be grown") < text.index("What the image holds")
        for line in CANNED_USAGE:
            assert line in text
        assert len(screen.rows) == 5  # 5 findings, the two usage lines in one row
        assert screen.rows[screen.cursor].finding.code == "memory"
        assert "made zero where the target does it fast" in text
        assert "e Exact" in text

        await pilot.press("e")
        await pilot.pause()
        assert app.flow.exact
        assert "EXACT: the space no filesystem uses is made zero" in screen_text(app)
        await pilot.press("a")  # the memory warning
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTargetDialog))
        assert "Exact restore: the space no filesystem uses is made zero too." in (screen_text(app))
        await pilot.press(*"2345", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job")
        await wait_for(pilot, lambda: session.restores, what="the restore call")
        assert session.restores[0]["exact"] is True
        assert "(exact: unused space made zero)" in screen_text(app)


async def test_restore_is_not_exact_unless_asked() -> None:
    session = CannedSession()
    app = canned_app(session)
    async with app.run_test(size=(100, 34)) as pilot:
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, PreflightScreen) and app.screen.findings is not None,
        )
        await pilot.press("e", "e")  # on and off again
        await pilot.press("a", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTargetDialog))
        assert "Exact restore" not in screen_text(app)
        await pilot.press(*"2345", "enter")
        await wait_for(pilot, lambda: session.restores, what="the restore call")
        assert session.restores[0]["exact"] is False


async def test_image_screen_shows_the_usage_lines(monkeypatch) -> None:
    path = canned_image().path
    opened: list[Path] = []

    def fake_usage(p: Path) -> list[str]:
        opened.append(p)
        return list(CANNED_USAGE) if p == path else []

    monkeypatch.setattr(images_screen, "read_usage", fake_usage)
    app = canned_app(CannedSession())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
        screen = app.screen
        await wait_for(pilot, lambda: path in screen.usage, what="usage read")
        await pilot.pause(0.1)
        text = screen_text(app)
        assert "What the image holds, per partition:" in text
        assert "p2 ext4: 58.1 GiB used of 400.0 GiB - 341.9 GiB not copied" in text
        # the foreign image is not opened for it, the unusable one neither
        await pilot.press("down", "down")
        await pilot.pause(0.2)
        assert "What the image holds" not in screen_text(app)
        await pilot.press("up", "up")
        await pilot.pause(0.2)
        assert opened == [path]  # read once
        assert "What the image holds" in screen_text(app)


# ---- with the real engine: the demo's format-2 image ------------------------------------


async def test_image_screen_shows_a_real_format_2_image(demo_env) -> None:
    from rescueui.core.images import open_image
    from rescueui.core.images.usage import image_usage

    with open_image(demo_env.build.image_dir) as image:
        expected = image_usage(image)
    assert expected and all(" of " in line for line in expected)
    app = RescueApp(Session(demo_env), console=True, watch_disks=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
        screen = app.screen
        assert screen.selected().path == demo_env.build.image_dir
        await wait_for(pilot, lambda: screen.usage.get(screen.selected().path), what="usage")
        await pilot.pause(0.1)
        text = screen_text(app)
        assert "What the image holds, per partition:" in text
        for line in expected:
            assert line in text


async def test_exact_restore_of_the_demo_image_reports_the_unused_space(demo_env) -> None:
    app = RescueApp(Session(demo_env), console=True, watch_disks=False)
    async with app.run_test(size=(100, 34)) as pilot:
        await go_to_target(pilot)
        await choose_row(pilot, app.screen.query_one(DiskTable), "demo-disk-A")
        screen = await open_preflight(pilot)
        assert any(f.code.startswith("usage.") for f in screen.findings)
        assert "What the image holds, per partition:" in screen_text(app)
        await pilot.press("e")
        await acknowledge_warnings(pilot, screen)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTargetDialog))
        await pilot.press(*app.screen.code, "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job")
        job = app.screen
        await wait_for(pilot, lambda: job.finished, timeout=120, what="restore")
        assert job.outcome == "success", job.error
        unused = job.report.details["unused_space"]
        assert unused["zeroed"] is True and "exact" in unused["reason"]
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        # the report box, its wrapped lines joined: the note on the space no filesystem
        # uses, and each partition's usage line
        report = " ".join(str(app.screen.query_one("#report").render()).split())
        assert "Note: Space no filesystem uses: " in report
        assert "made zero (an exact restore was asked" in report
        for f in screen.findings:
            if f.code.startswith("usage."):
                assert f.message in report
