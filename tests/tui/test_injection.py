"""Outside text on the screens (issue 9): an image whose manifest (hash valid) holds terminal
control sequences and Rich/Textual markup is shown escaped on the Image and Pre-flight
screens, with no markup applied and no control character in what is drawn; the dialogs
and the disk table treat udev text the same way."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from rescueui.tui.screens.images import ImageScreen
from rescueui.tui.screens.preflight import PreflightScreen
from rescueui.tui.widgets.disktable import DiskTable
from tests.tui.test_flow import (
    choose_row,
    forged_image,
    make_app,
    open_preflight,
    screen_text,
    wait_for,
)

EVIL = "\x1b]0;pwn\x07\x1b[2J\r[bold red]x[/]\x9b"
SHOWN = "\\x1b]0;pwn\\x07\\x1b[2J\\x0d[bold red]x[/]\\x9b"  # EVIL as safe_text shows it
CLICK = "[@click=app.quit]quit[/]"
CONTROLS = [chr(c) for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))]


def poison(m: Any) -> None:
    m.source_disk.update(model="M" + EVIL, serial="S1")
    m.host.update(dmi_vendor="DV" + EVIL, dmi_product=CLICK, cpus=64)
    m.created = "2026-11-20" + EVIL
    m.warnings = ["W" + EVIL, "B[bold]old[/bold] " + CLICK]
    for s in m.streams:
        if s.kind == "partition":
            s.label = "[reverse]LBL[/]"


def drawn_segments(app: Any) -> list[str]:
    strips = app.screen._compositor.render_strips()
    return [seg.text for strip in strips for seg in strip]


def assert_nothing_raw(app: Any) -> None:
    for text in drawn_segments(app):
        bad = [c for c in CONTROLS if c in text]
        assert not bad, f"control characters {bad!r} drawn in {text!r}"


async def test_forged_image_shown_escaped_on_image_and_preflight_screens(
    demo_env, tmp_path, monkeypatch
) -> None:
    image = forged_image(demo_env, tmp_path / "demo-image-evil", poison)
    monkeypatch.setattr(demo_env, "image_dirs", lambda: [image])
    app = make_app(demo_env)
    async with app.run_test(size=(200, 60)) as pilot:
        await wait_for(pilot, lambda: app.screen.query(DiskTable) and app.screen.table.row_count)
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images, what="images"
        )
        await pilot.pause(0.2)
        text = screen_text(app)
        # the details panel: source disk, creation time, warnings, labels: escaped, literal
        assert f"M{SHOWN}" in text
        assert f"W{SHOWN}" in text
        assert f"2026-11-20{SHOWN}" in text
        assert f"B[bold]old[/bold] {CLICK}" in text  # markup shown as typed, not applied
        assert "[reverse]LBL[/]" in text
        assert_nothing_raw(app)
        # the table row: the machine column shows the markup literally (truncated)
        assert "[@click" in text

        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.query(DiskTable), what="target screen")
        await choose_row(pilot, app.screen.query_one(DiskTable), "demo-disk-A")
        screen = await open_preflight(pilot)
        assert isinstance(screen, PreflightScreen)
        await pilot.pause(0.2)
        text = screen_text(app)
        assert f"W{SHOWN}" in text  # the image's warnings, as a pre-flight warning
        assert f"DV{SHOWN}" in text  # the source machine's model
        assert CLICK in text
        assert_nothing_raw(app)
        # the quit link was not made: clicking is moot, but the app is still running
        assert app.is_running


def test_dialog_and_table_texts_are_plain() -> None:
    """The texts the dialogs and the disk panel build hold outside values escaped and are
    ``Text`` (never parsed as markup)."""
    from rescueui.tui.screens.dialogs import destroyed_partition_text, destroyed_text
    from rescueui.tui.widgets.disktable import disk_details, part_text
    from tests.tui.fakes import _disk, _part

    part = _part("/dev/sdz", 1, 1 << 20, 100 << 20, "ext4", "L" + EVIL, ["/mnt/[b]x[/b]"])
    disk = _disk("/dev/sdz", 1 << 30, "[bold]M" + EVIL, "S" + EVIL, "usb", [part])
    for text in (destroyed_text(disk), destroyed_partition_text(disk, part), disk_details(disk)):
        assert isinstance(text, Text)
        assert f"M{SHOWN}" in text.plain and "[bold]M" in text.plain
        assert not any(c in text.plain for c in CONTROLS if c != "\n")
    assert part_text(part) == f"ext4 L{SHOWN} on /mnt/[b]x[/b]"
