"""The TUI on real disks (root): two loop disks, the source captured beforehand; Pilot drives
the restore onto the target by keys; afterwards the target's partitions mount and match."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.capture import capture
from rescueui.core.session import Session
from rescueui.tui.app import RescueApp
from rescueui.tui.screens.dialogs import ConfirmTargetDialog
from rescueui.tui.screens.disks import DisksScreen
from rescueui.tui.screens.images import ImageScreen
from rescueui.tui.screens.job import JobScreen
from rescueui.tui.screens.preflight import PreflightScreen
from rescueui.tui.screens.report import ReportScreen
from rescueui.tui.screens.target import TargetScreen
from rescueui.tui.widgets.disktable import DiskTable
from tests.imagefixtures import STDLIB, run
from tests.loopdisk import LoopFactory, mkfs_ext4, mkfs_vfat
from tests.tui.test_flow import acknowledge_warnings, choose_row, screen_text, wait_for

GPT = """label: gpt
start=2048, size=24576, type=U, name=EFI
start=26624, size=81920, type=L, name=root
"""


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "lost+found" not in p.parts
    }


async def to_target_screen(pilot: Any, image_dir: Path) -> None:
    """Disks (listed) -> Enter -> o: the image typed by its path -> chosen -> the Target
    screen."""
    app = pilot.app
    await wait_for(
        pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
    )
    await pilot.press("enter", "o")
    await wait_for(pilot, lambda: type(app.screen).__name__ == "PathDialog")
    await pilot.press(*str(image_dir), "enter")
    await wait_for(
        pilot,
        lambda: (
            isinstance(app.screen, ImageScreen)
            and any(i.path == image_dir for i in app.screen.images)
        ),
    )
    while app.screen.selected().path != image_dir:
        await pilot.press("down")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, TargetScreen))


@pytest.mark.root
@pytest.mark.udev
async def test_tui_restores_a_real_loop_disk(loops: LoopFactory, tmp_path: Path) -> None:
    source = loops.create(64, table=GPT)
    mkfs_vfat(source.part(1), "EFI")
    mkfs_ext4(source.part(2), "root")
    run("mcopy", "-s", "-i", source.part(1), STDLIB / "json", "::/")
    mnt = source.mount(2, tmp_path / "src")
    for sub in ("email", "json"):
        run("cp", "-a", STDLIB / sub, mnt)
    subprocess.run(["umount", mnt], check=True)
    source.mounts.remove(mnt)
    image_dir = tmp_path / "image"
    capture(source.path, image_dir)
    target = loops.create(64, fill="random")

    app = RescueApp(Session(), console=True, watch_disks=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
        )
        assert any(d.path == target.path for d in app.screen.table.disks)
        await to_target_screen(pilot, image_dir)
        await choose_row(pilot, app.screen.query_one(DiskTable), target.name)
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, PreflightScreen) and app.screen.findings is not None,
            what="pre-flight",
        )
        assert app.screen.check_action("confirm", ()) is True, screen_text(app)
        # a whole disk: the fix-ups of the restored system are planned (the session passes
        # the operator's choice to the core)
        assert any(f.code == "adapt.system" for f in app.screen.findings)
        assert "Fix-ups for: this machine." in screen_text(app)
        await acknowledge_warnings(pilot, app.screen)  # e.g. UEFI-only image, BIOS machine
        # exact: the space no filesystem uses is made zero too, so the target's partitions
        # equal the source's byte for byte (the target's old bytes are random)
        await pilot.press("e")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTargetDialog))
        dialog = app.screen
        await pilot.press(*"wrong", "enter")
        await pilot.pause()
        assert app.screen is dialog
        await pilot.press(*dialog.code, "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen))
        job = app.screen
        await wait_for(pilot, lambda: job.finished, timeout=300, what="restore")
        assert job.outcome == "success", job.error
        adapt = job.report.details["adapt"]  # run after the verify: no system found here
        assert adapt["plan"]["for"] == "this machine", adapt
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        report = " ".join(str(app.screen.query_one("#report").render()).split())
        assert "Fix-ups of the restored system" in report
        assert "No Linux system found on the restored disk" in report

    target.rescan()
    assert _read(target.part(1)) == _read(source.part(1))
    fsck = subprocess.run(["e2fsck", "-fn", target.part(2)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    a = source.mount(2, tmp_path / "a", options="ro")
    b = target.mount(2, tmp_path / "b", options="ro")
    tree = _tree(Path(a))
    assert tree and tree == _tree(Path(b))


@pytest.mark.root
@pytest.mark.udev
async def test_tui_restores_one_partition_onto_an_existing_partition(
    loops: LoopFactory, tmp_path: Path
) -> None:
    source = loops.create(64, table=GPT)
    mkfs_vfat(source.part(1), "EFI")
    mkfs_ext4(source.part(2), "root")
    mnt = source.mount(2, tmp_path / "src")
    run("cp", "-a", STDLIB / "json", mnt)
    subprocess.run(["umount", mnt], check=True)
    source.mounts.remove(mnt)
    image_dir = tmp_path / "image"
    capture(source.path, image_dir)
    target = loops.create(64, table=GPT, fill="random")
    p1_before = _read(target.part(1))

    app = RescueApp(Session(mount_media=False), console=True, watch_disks=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await to_target_screen(pilot, image_dir)
        table = app.screen.query_one(DiskTable)
        await choose_row(pilot, table, target.name)
        while table.selected_path() != target.part(2):
            await pilot.press("down")
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PartitionPickDialog")
        await pilot.press("2")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, PreflightScreen) and app.screen.findings is not None,
            what="pre-flight",
        )
        assert "Partition 2 of image" in screen_text(app)
        assert not any(f.code.startswith("adapt.") for f in app.screen.findings)
        assert "Fix-ups" not in screen_text(app)  # a partition restore adapts nothing
        await acknowledge_warnings(pilot, app.screen)
        await pilot.press("e")  # exact: compared byte for byte below
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTargetDialog))
        assert "PARTITION WILL BE OVERWRITTEN" in screen_text(app)
        await pilot.press(*app.screen.code, "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen))
        job = app.screen
        await wait_for(pilot, lambda: job.finished, timeout=300, what="restore")
        assert job.outcome == "success", job.error
        assert "adapt" not in job.report.details

    assert _read(target.part(2)) == _read(source.part(2))
    assert _read(target.part(1)) == p1_before  # the other partition is untouched


@pytest.mark.root
@pytest.mark.udev
async def test_tui_restores_onto_a_smaller_disk(loops: LoopFactory, tmp_path: Path) -> None:
    """A 40 MiB disk for the image of a 64 MiB one: listed as "smaller", the pre-flight shows
    the plan to acknowledge, the job copies the files, the report says what was done."""
    source = loops.create(64, table=GPT)
    mkfs_vfat(source.part(1), "EFI")
    mkfs_ext4(source.part(2), "root")
    mnt = source.mount(2, tmp_path / "src")
    run("cp", "-a", STDLIB / "json", mnt)
    subprocess.run(["umount", mnt], check=True)
    source.mounts.remove(mnt)
    image_dir = tmp_path / "image"
    capture(source.path, image_dir)
    target = loops.create(40, fill="random")

    app = RescueApp(Session(mount_media=False), console=True, watch_disks=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await to_target_screen(pilot, image_dir)
        await choose_row(pilot, app.screen.query_one(DiskTable), target.name)
        assert "Fit: smaller than the image's disk" in screen_text(app)
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, PreflightScreen) and app.screen.findings is not None,
            what="pre-flight",
        )
        codes = {f.code: f.level for f in app.screen.findings}
        assert codes.get("smaller.plan") == "warn" and "fit" not in codes, codes
        assert "smaller than the image's disk (64.0 MiB): the data fits" in screen_text(app)
        assert "filesystem made again, files copied" in screen_text(app)
        await acknowledge_warnings(pilot, app.screen)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTargetDialog))
        await pilot.press(*app.screen.code, "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen))
        job = app.screen
        await wait_for(pilot, lambda: job.finished, timeout=300, what="restore")
        assert job.outcome == "success", job.error
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        report = " ".join(str(app.screen.query_one("#report").render()).split())
        assert "Onto a smaller target (files copied):" in report
        assert "e2fsck -f -n: clean" in report

    target.rescan()
    assert _read(target.part(1)) == _read(source.part(1))  # the ESP: kept, block for block
    a = source.mount(2, tmp_path / "a", options="ro")
    b = target.mount(2, tmp_path / "b", options="ro")
    tree = _tree(Path(a))
    assert tree and tree == _tree(Path(b))


@pytest.mark.root
@pytest.mark.udev
async def test_real_udev_hotplug_updates_the_disk_list(loops: LoopFactory) -> None:
    app = RescueApp(Session(mount_media=False), console=True, watch_disks=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(
            pilot, lambda: isinstance(app.screen, DisksScreen) and app.screen.table.row_count > 0
        )
        table = app.screen.table
        keep = table.selected_path()
        await pilot.pause(0.5)  # the watcher is listening
        disk = loops.create(16)
        await wait_for(
            pilot,
            lambda: any(d.path == disk.path for d in table.disks),
            timeout=20,
            what="udev add",
        )
        assert table.selected_path() == keep
        loops.remove(disk)
        await wait_for(
            pilot,
            lambda: all(d.path != disk.path for d in table.disks),
            timeout=20,
            what="udev remove",
        )
