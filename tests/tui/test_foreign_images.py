"""Foreign images on the Image screen (Pilot, real files from qemu-img and zstd): each entry
says what it is, a compressed stream without a recorded size is marked as estimated, and
the verify job's checksum panel speaks of what the image carries."""

from __future__ import annotations

from pathlib import Path

from textual.pilot import Pilot

from rescueui.core.session import Session
from rescueui.tui.app import RescueApp
from rescueui.tui.screens.disks import DisksScreen
from rescueui.tui.screens.images import ImageScreen
from rescueui.tui.screens.job import JobScreen
from tests.test_image_discovery import raw_disk, run
from tests.tui.test_flow import screen_text, wait_for

MiB = 1024 * 1024


def foreign_media(tmp_path: Path) -> Path:
    disk = raw_disk(tmp_path / "disk.raw")
    media = tmp_path / "media"
    media.mkdir()
    run("qemu-img", "convert", "-O", "qcow2", disk, media / "vm01.qcow2")
    run("zstd", "-q", "-c", stdin=disk, stdout=media / "db01.img.zst")  # no content size
    (media / "noise.img").write_bytes(b"\x01" * (2 * MiB))  # no table: not listed
    return media


async def select(pilot: Pilot, screen: ImageScreen, name: str) -> None:
    """Move the cursor onto the image called ``name`` (from the top of the list)."""
    for _ in range(len(screen.images)):
        await pilot.press("up")
    for _ in range(len(screen.images)):
        if screen.selected().name == name:
            return
        await pilot.press("down")
    raise AssertionError(f"{name} is not listed")


async def test_image_screen_lists_foreign_images_with_their_kind(demo_env, tmp_path: Path) -> None:
    media = foreign_media(tmp_path)
    session = Session(demo_env)  # demo disks; the typed folder holds the foreign images
    app = RescueApp(session, console=True, watch_disks=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
        screen = app.screen
        await pilot.press("o")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PathDialog")
        await pilot.press(*str(media), "enter")
        await wait_for(
            pilot,
            lambda: app.screen is screen and any(i.path.parent == media for i in screen.images),
            what="the typed folder's images",
        )
        ours = {i.name: i for i in screen.images if i.path.parent == media}
        assert set(ours) == {"vm01.qcow2", "db01.img.zst"}
        assert ours["vm01.qcow2"].ok and ours["db01.img.zst"].ok
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "qcow2" in text and "raw.zst" in text
        assert "~16.0 MiB" in text  # the estimated size, marked
        assert "size estimated" in text

        await select(pilot, screen, "vm01.qcow2")
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "Kind: qcow2 VM disk, 16.0 MiB virtual" in text
        assert "the image carries no checksums" in text

        await select(pilot, screen, "db01.img.zst")
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "Kind: raw disk image, zstd-compressed, about 16.0 MiB" in text
        assert "needs about 16.0 MiB on the target (size estimated" in text

        # verify it: the job opens it measured; the panel says what can be checked
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen))
        job = app.screen
        await wait_for(pilot, lambda: job.finished, timeout=120, what="verify")
        assert job.outcome == "success", job.error
        assert not job.facts.size_is_estimate and job.facts.integrity_code == "none"
        assert "raw disk image, zstd-compressed, 16.0 MiB" in job.facts.description
        assert job.query_one("#checksums-box").border_title == (
            "BLAKE3 as read (the image has no checksums)"
        )
