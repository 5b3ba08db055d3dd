"""The demo flow driven by keys only (Pilot): the real engine restores into virtual disks."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from textual.pilot import Pilot

from rescueui.core.hotplug import DiskEvent
from rescueui.core.session import Session
from rescueui.tui.app import RescueApp
from rescueui.tui.messages import DiskHotplug
from rescueui.tui.screens.dialogs import (
    CancelJobDialog,
    CaptureEstimateDialog,
    ConfirmTargetDialog,
)
from rescueui.tui.screens.disks import DisksScreen
from rescueui.tui.screens.images import ImageScreen
from rescueui.tui.screens.job import JobScreen
from rescueui.tui.screens.preflight import PreflightScreen
from rescueui.tui.screens.report import ReportScreen
from rescueui.tui.screens.target import TargetScreen
from rescueui.tui.widgets.disktable import DiskTable
from tests.tui.conftest import read_range


def make_app(env, **kw) -> RescueApp:
    return RescueApp(Session(env), console=True, **kw)


async def wait_for(pilot: Pilot, cond, timeout: float = 30.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


def screen_text(app: RescueApp) -> str:
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in s) for s in strips)


async def choose_row(pilot: Pilot, table: DiskTable, name: str) -> None:
    await wait_for(pilot, lambda: table.row_count > 0, what="disk rows")
    while table.cursor_row > 0:
        await pilot.press("up")
    for _ in range(table.row_count + 1):
        disk = table.selected_disk()
        if disk is not None and disk.name == name and table.selected_path() == disk.path:
            return
        await pilot.press("down")
    raise AssertionError(f"{name} not in the table")


async def go_to_target(pilot: Pilot, image_index: int = 0) -> None:
    app = pilot.app
    await wait_for(
        pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
    )
    await pilot.press("enter")
    await wait_for(
        pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images, what="images"
    )
    for _ in range(image_index):
        await pilot.press("down")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), what="target screen")


async def open_preflight(pilot: Pilot) -> PreflightScreen:
    """Enter on the selected target; wait until the pre-flight findings are on screen."""
    app = pilot.app
    await pilot.press("enter")
    await wait_for(
        pilot,
        lambda: isinstance(app.screen, PreflightScreen) and app.screen.findings is not None,
        what="pre-flight",
    )
    return app.screen


def warning_codes(screen: PreflightScreen) -> list[str]:
    return [f.code for f in screen.findings or [] if f.level == "warn"]


async def acknowledge_warnings(pilot: Pilot, screen: PreflightScreen) -> None:
    """Acknowledge each warning, one key press per warning (the cursor goes to the next)."""
    for _ in warning_codes(screen):
        await pilot.press("a")
    await pilot.pause()
    assert screen.acknowledged == set(warning_codes(screen))


async def restore_to(pilot: Pilot, target: str, *, image_index: int = 0) -> JobScreen:
    """Keys from the Disks screen to a started restore onto the named virtual disk."""
    app = pilot.app
    await go_to_target(pilot, image_index)
    await choose_row(pilot, app.screen.query_one(DiskTable), target)
    screen = await open_preflight(pilot)
    await acknowledge_warnings(pilot, screen)
    await pilot.press("enter")
    await wait_for(
        pilot, lambda: isinstance(app.screen, ConfirmTargetDialog), what="confirm dialog"
    )
    dialog = app.screen
    # a wrong code is refused and the dialog stays
    await pilot.press(*"nope", "enter")
    await pilot.pause()
    assert app.screen is dialog
    assert "REFUSED" in str(dialog.query_one("#error").render())
    await pilot.press(*dialog.code, "enter")
    await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job screen")
    return app.screen


async def test_demo_restore_by_keys_only(demo_env) -> None:
    app = make_app(demo_env)
    async with app.run_test(size=(100, 34)) as pilot:
        job = await restore_to(pilot, "demo-disk-A")
        await wait_for(pilot, lambda: job.finished, timeout=120, what="restore to finish")
        assert job.outcome == "success", job.error
        assert job.mismatch is None
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "FINISHED: SUCCESS" in text
        assert "100.0%" in text
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        text = screen_text(app)
        assert "SUCCESS" in text
        assert "Report written to" in text
        report = job.report
        assert report.outcome == "success" and report.report_files
        # start over goes back to the disks
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DisksScreen))
    # the virtual disk now holds the sample disk's partitions, byte for byte
    target = demo_env.target_path(next(t for t in demo_env_targets() if t.name == "demo-disk-A"))
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(demo_env.build.sample_disk)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["partitiontable"]
    for part in table["partitions"]:
        off, size = part["start"] * 512, part["size"] * 512
        assert read_range(target, off, size) == read_range(demo_env.build.sample_disk, off, size)


def demo_env_targets():
    from rescueui.core.demo import DEMO_TARGETS

    return DEMO_TARGETS


async def test_too_small_target_is_refused(demo_env) -> None:
    app = make_app(demo_env)
    async with app.run_test(size=(100, 34)) as pilot:
        await go_to_target(pilot)
        await choose_row(pilot, app.screen.query_one(DiskTable), "demo-small")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, TargetScreen)
        assert "too small" in screen_text(app)
        # the boot medium is refused too
        await choose_row(pilot, app.screen.query_one(DiskTable), "rescue-stick")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, TargetScreen)
        assert "boot medium" in screen_text(app)


async def test_cancel_mid_restore_leaves_a_resumable_state(demo_env) -> None:
    demo_env.pace = 8e6  # slow virtual disk: the restore is mid-run when we cancel
    app = make_app(demo_env)
    async with app.run_test(size=(100, 34)) as pilot:
        job = await restore_to(pilot, "demo-disk-B")
        await wait_for(
            pilot, lambda: job.latest is not None and job.latest.bytes_done > 0, what="progress"
        )
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, CancelJobDialog))
        await pilot.press("n")  # no: it goes on
        await pilot.pause(0.2)
        assert not job.cancel_event.is_set()
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, CancelJobDialog))
        await pilot.press("y")
        await wait_for(pilot, lambda: job.finished, timeout=60, what="cancel")
        assert job.outcome == "cancelled"
        assert job.latest.bytes_done < job.latest.bytes_total
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        assert "CANCELLED" in screen_text(app)
        assert app.screen.check_action("resume", ()) is True
        # resume from the journal and finish
        demo_env.pace = 0.0
        await pilot.press("u")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen is not job)
        resumed = app.screen
        await wait_for(pilot, lambda: resumed.finished, timeout=120, what="resumed restore")
        assert resumed.outcome == "success", resumed.error


async def test_hotplug_adds_a_disk_while_the_list_is_open(demo_env) -> None:
    app = make_app(demo_env)
    async with app.run_test(size=(100, 34)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
        )
        table = app.screen.table
        await choose_row(pilot, table, "demo-disk-B")
        assert "demo-usb-C" not in screen_text(app)
        # what the udev watcher thread does: a new disk, then a message through call_from_thread
        plugged = demo_env.plug()
        assert plugged is not None and plugged[0] == "add"
        event = DiskEvent(action="add", kind="disk", path=str(plugged[1]), devnum=(0, 0))
        app._disk_event(event) if False else app.post_message(DiskHotplug(event))
        await wait_for(
            pilot, lambda: any(d.name == "demo-usb-C" for d in table.disks), what="hotplugged disk"
        )
        await pilot.pause(0.1)
        assert "demo-usb-C" in screen_text(app)
        assert table.selected_disk().name == "demo-disk-B"  # selection kept
        assert "appeared" in screen_text(app)


async def test_corrupt_image_shows_the_alarm_and_no_success(demo_env) -> None:
    app = make_app(demo_env)
    async with app.run_test(size=(100, 34)) as pilot:
        job = await restore_to(pilot, "demo-disk-A", image_index=1)
        await wait_for(pilot, lambda: job.finished, timeout=120, what="restore to stop")
        assert job.outcome == "failed"
        assert job.mismatch is not None
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "CHECKSUM MISMATCH" in text
        assert "SUCCESS" not in text
        assert job.query_one("#alarm").display
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        text = screen_text(app)
        assert "CHECKSUM MISMATCH" in text and "SUCCESS" not in text


async def test_capture_a_disk_then_verify_the_new_image(demo_env, tmp_path) -> None:
    app = make_app(demo_env)
    async with app.run_test(size=(100, 34)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
        )
        await choose_row(pilot, app.screen.table, "sample-disk")
        await pilot.press("c")
        # first what the capture will store: the core's estimate (partclone's maps)
        await wait_for(pilot, lambda: isinstance(app.screen, CaptureEstimateDialog))
        estimate = app.screen
        await wait_for(pilot, lambda: not estimate.busy, timeout=60, what="the estimate")
        assert estimate.error is None, estimate.error
        await pilot.pause(0.1)
        text = screen_text(app)
        assert "p2 ext4: " in text and " used of " in text and "not copied" in text
        assert "Estimated image size: at most " in text
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PathDialog")
        dest = tmp_path / "captured"
        app.screen.query_one("Input").value = ""
        await pilot.press(*str(dest), "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen))
        job = app.screen
        assert job.kind == "capture"
        await wait_for(pilot, lambda: job.finished, timeout=120, what="capture")
        assert job.outcome == "success", job.error
        assert (dest / "manifest.json").is_file()
        # the capture read what the estimate said it would
        assert job.latest.bytes_total == sum(p.read_bytes for p in estimate.plans)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        assert "SUCCESS" in screen_text(app)
        # the report says what of each partition the image holds, as the estimate did
        report = " ".join(str(app.screen.query_one("#report").render()).split())
        for p in estimate.plans:
            if p.kind == "partition":
                assert p.usage() in report
        await pilot.press("enter")  # start over
        await wait_for(pilot, lambda: isinstance(app.screen, DisksScreen))
        # the new image is opened by its path on the Image screen and verified there
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
        await pilot.press("o")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PathDialog")
        await pilot.press(*str(dest), "enter")
        await wait_for(
            pilot,
            lambda: (
                isinstance(app.screen, ImageScreen)
                and any(i.path == dest for i in app.screen.images)
            ),
            what="typed image",
        )
        image_screen = app.screen
        while image_screen.selected().path != dest:
            await pilot.press("down")
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen))
        vjob = app.screen
        assert vjob.kind == "verify"
        await wait_for(pilot, lambda: vjob.finished, timeout=120, what="verify")
        assert vjob.outcome == "success", vjob.error
        assert vjob.mismatch is None


async def test_verify_of_the_damaged_image_sounds_the_alarm(demo_env) -> None:
    app = make_app(demo_env)
    async with app.run_test(size=(100, 34)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
        await pilot.press("down", "v")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen))
        job = app.screen
        await wait_for(pilot, lambda: job.finished, timeout=120, what="verify")
        assert job.outcome == "failed" and job.mismatch is not None
        await pilot.pause(0.3)
        assert "CHECKSUM MISMATCH" in screen_text(app)


def forged_image(env, dest, change) -> Path:
    """A copy of the demo image whose manifest ``change(manifest)`` rewrote through the core's
    image API (so its hash stays valid)."""
    import shutil

    from rescueui.core.image import Image, save_manifest

    shutil.copytree(env.build.image_dir, dest, ignore=shutil.ignore_patterns("reports"))
    with Image.open(dest) as im:
        manifest = im.manifest
    change(manifest)
    save_manifest(dest, manifest)
    return dest


def forged_warning_image(env, dest) -> Path:
    """The source had 64 CPUs: a real pre-flight warning on any machine."""
    return forged_image(env, dest, lambda m: m.host.update(cpus=64))


async def test_a_stop_cannot_be_confirmed_past(demo_env, tmp_path, monkeypatch) -> None:
    image = forged_image(
        demo_env,
        tmp_path / "demo-image-4k",
        lambda m: m.source_disk.update(logical_sector_size=4096, physical_sector_size=4096),
    )
    monkeypatch.setattr(demo_env, "image_dirs", lambda: [image])
    app = make_app(demo_env)
    async with app.run_test(size=(100, 34)) as pilot:
        await go_to_target(pilot)
        await choose_row(pilot, app.screen.query_one(DiskTable), "demo-disk-A")
        screen = await open_preflight(pilot)
        assert any(f.level == "stop" for f in screen.findings)
        assert "[STOP]" in screen_text(app) and "STOP: a check above forbids" in screen_text(app)
        assert screen.check_action("confirm", ()) is None  # dimmed in the footer
        assert screen.check_action("acknowledge", ()) is False  # nothing to acknowledge past
        for key in ("a", "space", "enter"):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is screen
        assert screen.acknowledged == set()


async def test_each_warning_must_be_acknowledged_before_confirming(
    demo_env, tmp_path, monkeypatch
) -> None:
    from rescueui.core.session import TUI_OPERATOR

    image = forged_warning_image(demo_env, tmp_path / "demo-image-64cpus")
    monkeypatch.setattr(demo_env, "image_dirs", lambda: [image])
    app = make_app(demo_env)
    async with app.run_test(size=(100, 34)) as pilot:
        await go_to_target(pilot)
        await choose_row(pilot, app.screen.query_one(DiskTable), "demo-disk-A")
        screen = await open_preflight(pilot)
        warns = warning_codes(screen)
        # the demo's real warnings here (e.g. UEFI-only image on a BIOS machine) plus the forged one
        assert "cpus" in warns, [(f.level, f.code) for f in screen.findings]
        assert screen.acknowledged == set()
        assert screen.check_action("acknowledge", ()) is True
        assert "a Acknowledge warning" in screen_text(app)  # the footer shows the key
        text = screen_text(app)
        assert text.count("NOT ACKNOWLEDGED") == len(warns) and "[ACK]" not in text

        # a non-warning line cannot be acknowledged
        ok_row = next(i for i, f in enumerate(screen.findings) if f.level == "ok")
        while screen.cursor != ok_row:
            await pilot.press("up" if screen.cursor > ok_row else "down")
        await pilot.press("a")
        await pilot.pause()
        assert screen.acknowledged == set()
        assert "only warnings are acknowledged" in screen_text(app)

        # one at a time: Enter is refused while any warning is open, and says why
        for n, code in enumerate(warns):
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is screen, "Enter went past an unacknowledged warning"
            assert "REFUSED: acknowledge each warning first" in screen_text(app)
            assert f"({len(warns) - n} open" in screen_text(app)
            # the refusal put the cursor on the first open warning
            assert screen.findings[screen.cursor].code == code
            await pilot.press("space" if n % 2 else "a")
            await pilot.pause()
            assert screen.acknowledged == set(warns[: n + 1])
            assert screen_text(app).count("[ACK]") == n + 1

        # toggling one back makes it open again
        while screen.findings[screen.cursor].code != warns[0]:
            await pilot.press("up")
        await pilot.press("a")
        await pilot.pause()
        assert warns[0] not in screen.acknowledged
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen

        # back to the target and in again: nothing is acknowledged any more
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen), what="target")
        screen = await open_preflight(pilot)
        assert screen.acknowledged == set()
        assert "[ACK]" not in screen_text(app)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen

        await acknowledge_warnings(pilot, screen)
        assert "GO - every warning acknowledged" in screen_text(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTargetDialog))
        await pilot.press(*app.screen.code, "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen), what="job screen")
        job = app.screen
        await wait_for(pilot, lambda: job.finished, timeout=120, what="restore to finish")
        assert job.outcome == "success", job.error

    data = json.loads(
        next(p for p in map(Path, job.report.report_files) if p.suffix == ".json").read_text()
    )
    assert data["outcome"] == "success"
    assert sorted(f["code"] for f in data["findings"] if f["level"] == "warn") == sorted(warns)
    acks = data["acknowledgements"]
    assert sorted(a["code"] for a in acks) == sorted(warns)
    assert all(a["by"] == TUI_OPERATOR and a["at"] for a in acks)
    text = next(p for p in map(Path, job.report.report_files) if p.suffix == ".txt").read_text()
    assert text.count("[ACK]") == len(warns)
