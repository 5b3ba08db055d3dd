"""The Files screen (issue 13, item 2): from the Image screen's ``b``, one partition of an
image browsed read-only (Enter in, Backspace up), searched by name, files and folders marked
(count and size), extracted by the job screen into a folder (a second, explicit yes for the
image's own medium) and listed with their SHA-256 in the report; the partition released when
the screen closes and when the app ends.

With the canned session (layout and keys, no root), on a folder of 10 000 files (how long the
listing takes), and on a real image captured from an ext4 partition (root: loop devices,
mounts; the extracted files compared with the source).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from rescueui.core.errors import RescueError
from rescueui.core.session import Session, summarize_image
from rescueui.tui.app import RescueApp
from rescueui.tui.screens.dialogs import BrowsePartitionDialog, ExtractDialog, ImageMediumDialog
from rescueui.tui.screens.files import FilesScreen
from rescueui.tui.screens.images import ImageScreen
from rescueui.tui.screens.job import JobScreen
from rescueui.tui.screens.report import ReportScreen
from rescueui.tui.widgets.filelist import FileList
from tests.tui.fakes import HASH_A, HASH_B, CannedSession
from tests.tui.test_flow import screen_text, wait_for

MiB = 1024 * 1024


def words(app: RescueApp) -> str:
    """The screen's text with the lines joined (a sentence may wrap anywhere)."""
    return " ".join(screen_text(app).split())


def report_words(app: RescueApp) -> str:
    """The report screen's whole text (also what is scrolled out of sight), lines joined."""
    return " ".join(str(app.screen.query_one("#report").render()).split())


def footer(app: RescueApp) -> str:
    return screen_text(app).splitlines()[-1]


def canned_app(**attrs: Any) -> RescueApp:
    session = CannedSession()
    for name, value in attrs.items():
        setattr(session, name, value)
    return RescueApp(session, console=True, watch_disks=False, repaint_interval=0.05)


async def open_files(pilot: Pilot, partition: str | None = "2") -> FilesScreen:
    """Disks -> Image -> b (-> the partition by its number) -> the Files screen, listed."""
    app = pilot.app
    await pilot.pause()
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
    await pilot.press("b")
    if partition is not None:
        await wait_for(pilot, lambda: isinstance(app.screen, BrowsePartitionDialog))
        await pilot.press(partition)
    await wait_for(pilot, lambda: isinstance(app.screen, FilesScreen))
    screen = app.screen
    assert isinstance(screen, FilesScreen)
    await wait_for(pilot, lambda: not screen.busy, what="the first listing")
    return screen


async def cursor_to(pilot: Pilot, screen: FilesScreen, name: str) -> None:
    rows = screen.query_one(FileList)
    names = [e.name for e in screen.shown]
    assert name in names, names
    while screen.shown[rows.cursor].name != name:
        await pilot.press("down" if names.index(name) > rows.cursor else "up")


async def enter(pilot: Pilot, screen: FilesScreen, name: str) -> None:
    await cursor_to(pilot, screen, name)
    await pilot.press("enter")
    await wait_for(pilot, lambda: not screen.busy and screen.path.endswith("/" + name))


# ---- the canned session: layout and keys -------------------------------------------------


async def test_lists_enters_searches_and_marks() -> None:
    app = canned_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_files(pilot)
        assert screen.partition == 2 and len(app.session.views) == 1
        text = screen_text(app)
        # the root folder: folders first, sizes, dates (UTC), owners, modes, links' targets
        assert "Files of partition 2 (400.0 GiB ext4 rootfs) of web01-2026-11-20" in words(app)
        assert "read-only (kernel ext4 ro,noload)" in words(app)
        for shown in ("boot/", "srv/", "lost+found/", "bin -> usr/bin", "Grüße aus Köln"):
            assert shown in text, shown
        assert text.index("var/") < text.index("Grüße aus Köln")
        assert "2.0 GiB 2023-12-21 03:12 0:0" in text and "-rw-------" in text  # swapfile
        assert "/: 10 entries (6 folders, 2 files of 2.0 GiB)" in text
        keys = footer(app)
        for key in ("Esc Close", "Enter Open", "Space Mark", "/ Search", "e Extract"):
            assert key in keys, keys
        assert "Bksp" not in keys  # nothing above the root

        await enter(pilot, screen, "srv")
        await enter(pilot, screen, "db")
        assert screen.path == "/srv/db"
        assert "105:110" in screen_text(app) and "-rw-r-----" in screen_text(app)
        assert "Bksp Up" in footer(app)

        # search: the names of this folder, as typed; Esc shows them all again
        await pilot.press("slash", *"dump")
        await pilot.pause()
        assert [e.name for e in screen.shown] == [
            "dump-2025-11-18.sql.zst",
            "dump-2025-11-19.sql.zst",
        ]
        assert "search 'dump': 2 of 4" in screen_text(app)
        assert "Esc Show all" in footer(app)
        await pilot.press("enter")  # back to the list, the search kept
        await pilot.pause()
        assert isinstance(app.focused, FileList) and len(screen.shown) == 2
        await pilot.press("space", "space")  # marks both (the cursor moves on)
        await pilot.pause()
        assert sorted(screen.marks) == ["/srv/db/dump-2025-11-18.sql.zst",
                                        "/srv/db/dump-2025-11-19.sql.zst"]  # fmt: skip
        assert "Marked: 2, 4.5 GiB in 2 files" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert len(screen.shown) == 4 and "Esc Close" in footer(app)
        assert screen_text(app).count("* dump-") == 2

        # up: the cursor on the folder we came from; a marked folder counted
        await pilot.press("backspace")
        await wait_for(pilot, lambda: screen.path == "/srv" and not screen.busy)
        assert screen.selected().name == "db"
        await cursor_to(pilot, screen, "www")
        await pilot.press("space")
        await wait_for(pilot, lambda: screen.marks["/srv/www"].bytes is not None)
        assert "Marked: 3 (1 folder), 4.5 GiB in 3 files" in screen_text(app)
        await pilot.press("u")
        await pilot.pause()
        assert not screen.marks and "Nothing marked" in screen_text(app)

        # a file is not a folder; the screen says so
        await pilot.press("backspace")
        await wait_for(pilot, lambda: screen.path == "/" and not screen.busy)
        await cursor_to(pilot, screen, "swapfile")
        await pilot.press("enter")
        await pilot.pause()
        assert "swapfile is not a folder" in words(app)

        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ImageScreen)
        assert app.session.views[0].closed  # released when the screen closed


async def test_extract_marked_items_shows_progress_and_the_report() -> None:
    app = canned_app(finish=True)
    async with app.run_test(size=(100, 32)) as pilot:
        screen = await open_files(pilot)
        await enter(pilot, screen, "etc")
        await cursor_to(pilot, screen, "nginx")
        await pilot.press("space")
        await cursor_to(pilot, screen, "shadow")
        await pilot.press("space")
        await wait_for(pilot, lambda: all(m.bytes is not None for m in screen.marks.values()))
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExtractDialog))
        dialog = app.screen
        assert dialog.query_one("#dest").value == "/media/usb-stick/web01-p2-files"
        assert "Extract 2 marked item(s), 2.6 KiB from partition 2" in words(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.finished)
        job = app.screen
        assert job.kind == "extract" and job.outcome == "success"
        assert app.session.extracts == [
            {
                "partition": 2,
                "paths": ["/etc/nginx", "/etc/shadow"],
                "dest": "/media/usb-stick/web01-p2-files",
                "allow_image_medium": False,
            }
        ]
        assert not job.query_one("#checksums-box").display  # files are hashed, not chunks
        assert "Copying the files out of the image" in words(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        assert "SUCCESS: files extracted, the SHA-256 of each listed" in words(app)
        text = report_words(app)
        assert "Extracted (3 entries; the SHA-256 of each file):" in text
        assert f"/etc/nginx/nginx.conf (1.4 KiB) sha256 {HASH_A}" in text
        assert f"/etc/shadow (1.2 KiB) sha256 {HASH_B}" in text
        assert "Enter Back to the files" in footer(app) and "Start over" not in footer(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, FilesScreen))
        await pilot.pause()
        assert app.screen is screen and not screen.marks  # extracted: the marks cleared
        assert "Extracted (the report lists each file)" in words(app)


async def test_the_image_s_own_medium_needs_a_second_yes() -> None:
    app = canned_app(finish=True)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_files(pilot)
        await cursor_to(pilot, screen, "Grüße aus Köln – notes.txt")
        await pilot.press("space", "e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExtractDialog))
        dialog = app.screen
        dialog.query_one("#dest").value = "/run/live/medium/out"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageMediumDialog))
        assert "on the medium that holds the image" in words(app)
        assert "y Yes, extract onto it" in footer(app)
        await pilot.press("n")  # no: the dialog stays, nothing extracted
        await wait_for(pilot, lambda: app.screen is dialog)
        assert "Choose a folder on another medium." in words(app)
        assert app.session.extracts == []
        await pilot.press("enter", "y")
        await wait_for(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.finished)
        assert app.session.extracts[0]["allow_image_medium"] is True
        assert app.session.extracts[0]["dest"] == "/run/live/medium/out"


async def test_other_refusals_stay_in_the_dialog() -> None:
    app = canned_app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_files(pilot)
        await pilot.press("e")  # nothing marked: the key is there, dimmed, and does nothing
        await pilot.pause()
        assert isinstance(app.screen, FilesScreen)
        await pilot.press("space", "e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExtractDialog))
        app.screen.query_one("#dest").value = "relative/folder"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ExtractDialog)
        assert "Cannot use it: The destination relative/folder cannot be used" in words(app)
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is screen and app.session.extracts == []


async def test_a_partition_that_cannot_be_browsed_says_why() -> None:
    why = "The image (raw disk image, zstd-compressed) can only be read from its start to its end"
    app = canned_app(view_error=why)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_files(pilot)
        assert screen.view is None and f"Cannot browse it: {why}" in words(app)
        keys = footer(app)
        assert "Esc Close" in keys and "Space" not in keys and "Enter" not in keys
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ImageScreen)


async def test_an_image_read_in_order_shows_its_staging() -> None:
    """A compressed raw or Clonezilla image is read once before it can be browsed: the
    status line says so with the share done, then the listing comes."""
    app = canned_app(stage_bytes=1024**3)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen) and app.screen.images)
        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, BrowsePartitionDialog))
        await pilot.press("2")
        await wait_for(pilot, lambda: isinstance(app.screen, FilesScreen))
        await wait_for(pilot, lambda: "100 % of 1.0 GiB" in words(app), what="staging shown")
        assert "read once, in order, before it can be browsed" in words(app)
        app.session.staged.set()
        screen = app.screen
        await wait_for(pilot, lambda: not screen.busy, what="the first listing")
        assert screen.view is not None and "read once" not in words(app)


async def test_browse_in_ascii_mode_draws_only_ascii() -> None:
    app = RescueApp(CannedSession(), console=True, watch_disks=False, ascii_only=True)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_files(pilot)
        await pilot.press("space")
        await pilot.pause()
        text = screen_text(app)
        outside = {c for c in text if ord(c) > 127} - set("Grüße aus Köln – notes.txt")
        assert not outside, outside  # the borders, marks and the list: ASCII
        assert "* boot/" in text
        assert screen.query_one("#files-box").styles.border_top[0] == "ascii"


# ---- how long a folder of 10 000 files takes ---------------------------------------------


class FolderView:
    """A folder on this machine shown as a partition's root (no image, no root needed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.how = "a folder on this machine"
        self.closed = False

    def problem(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class FolderSession(Session):
    def __init__(self, root: Path) -> None:
        super().__init__(mount_media=False)
        self.root = root
        self.opened: list[FolderView] = []

    def open_view(self, image_path: Any, partition: int, **_: Any) -> Any:
        view = FolderView(self.root)
        self.opened.append(view)
        return view


async def test_a_folder_of_10000_files_is_listed_in_under_a_second(tmp_path: Path) -> None:
    big = tmp_path / "root" / "big"
    big.mkdir(parents=True)
    for i in range(10_000):
        (big / f"file-{i:05d}.log").write_bytes(b"x" * (i % 300))
    session = FolderSession(tmp_path / "root")
    app = RescueApp(session, console=True, watch_disks=False)
    image = summarize_image(tmp_path / "none")  # not an image: the screen needs its name
    times: list[float] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = FilesScreen(image, 1)
        app.push_screen(screen)
        await wait_for(pilot, lambda: screen.view is not None and not screen.busy)
        for _ in range(3):
            start = time.perf_counter()
            await pilot.press("enter")  # the cursor is on "big", the only entry
            while screen.busy or screen.path != "/big":
                await asyncio.sleep(0.005)  # the app's thread left alone meanwhile
            await pilot.pause()  # painted
            times.append(time.perf_counter() - start)
            assert len(screen.entries) == 10_000
            assert "file-00000.log" in screen_text(app)
            await pilot.press("end")
            await pilot.pause()
            assert "file-09999.log" in screen_text(app)
            await pilot.press("backspace")
            await wait_for(pilot, lambda: screen.path == "/" and not screen.busy)
    print(f"\nFiles screen, 10 000 files: {', '.join(f'{t:.3f}' for t in times)} s")
    assert statistics.median(times) < 1.0, times


# ---- the session: views held and released, the destination --------------------------------


@pytest.fixture
def recorded_views(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """partition_view replaced by one that records its entry and exit (no mount)."""
    events: list[list[str]] = []

    @contextlib.contextmanager
    def fake_view(image_dir: Any, partition: int, **_: Any) -> Iterator[Any]:
        record = [f"open {partition}"]
        events.append(record)
        try:
            yield FolderView(Path("/"))
        finally:
            record.append("released")

    monkeypatch.setattr("rescueui.core.images.view.partition_view", fake_view)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    return events


def test_the_session_releases_its_views(recorded_views: list[list[str]]) -> None:
    session = Session(mount_media=False)
    one = session.open_view("/img", 1)
    two = session.open_view("/img", 2)
    assert session.open_views == [one, two]
    one.close()
    one.close()  # again: nothing more
    assert recorded_views == [["open 1", "released"], ["open 2"]]
    session.close()
    assert recorded_views[1] == ["open 2", "released"] and two.closed
    assert session.open_views == []
    with pytest.raises(RescueError, match="ending"):  # mounted as the session ended
        session.open_view("/img", 3)
    assert recorded_views[2] == ["open 3", "released"]


async def test_the_app_releases_the_views_when_it_ends(recorded_views: list[list[str]]) -> None:
    session = Session(mount_media=False)
    app = RescueApp(session, console=True, watch_disks=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        session.open_view("/img", 3)  # e.g. a screen that did not close its own
    assert recorded_views == [["open 3", "released"]]


def test_the_demo_without_root_says_browsing_needs_root(
    demo_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(RescueError, match="needs root; this demo runs without root"):
        Session(demo_env).open_view(demo_env.build.image_dir, 2)


def test_a_new_start_releases_what_a_killed_run_left(monkeypatch: pytest.MonkeyPatch) -> None:
    from rescueui.core import session as session_module

    swept: list[bool] = []
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(
        "rescueui.core.images.view.sweep_stale", lambda: swept.append(True) or ["unmounted x"]
    )
    session_module.open_session(False).close()
    assert swept == [True]


def test_the_destination_is_checked_and_made(tmp_path: Path) -> None:
    session = Session(mount_media=False)
    image = tmp_path / "image"
    image.mkdir()
    # the image's own medium: refused with the action the dialog asks about, nothing made
    with pytest.raises(RescueError) as refused:
        session.extract_destination(tmp_path / "out", image)
    assert refused.value.action == "onto-image-medium" and not (tmp_path / "out").exists()
    made = session.extract_destination(tmp_path / "out", image, allow_image_medium=True)
    assert made == tmp_path / "out" and made.is_dir()
    with pytest.raises(RescueError, match="cannot be used"):  # one level is made, no more
        session.extract_destination(tmp_path / "a" / "b", image, allow_image_medium=True)
    with pytest.raises(RescueError, match="No destination folder"):
        session.extract_destination("  ", image)
    other = Path("/dev/shm")
    if other.is_dir() and os.stat(other).st_dev != os.stat(image).st_dev:
        dest = other / f"rescueui-test-{os.getpid()}"
        try:
            assert session.extract_destination(dest, image) == dest and dest.is_dir()
        finally:
            shutil.rmtree(dest, ignore_errors=True)


def test_the_default_destination_is_a_new_folder_named_after_the_image(tmp_path: Path) -> None:
    image = tmp_path / "web01-img"
    image.mkdir()
    folder = Session(mount_media=False).default_extract_folder(image, 2)
    assert folder.name.startswith("web01-img-p2-files-") and not folder.exists()
    if folder.parent != tmp_path:  # another medium was found: not the image's own
        assert os.stat(folder.parent).st_dev != os.stat(image).st_dev


# ---- a real image (root): browse, extract, nothing left mounted ---------------------------

PART_SIZE = 64 * MiB
UTF8_NAME = "Grüße aus Köln – notes.txt"


def _run(*cmd: str | Path, stdin: str | None = None) -> None:
    proc = subprocess.run([str(c) for c in cmd], input=stdin, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stderr}"


def _populate(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/app.conf").write_text("listen 8080\n")
    os.chown(root / "etc/app.conf", 1001, 1002)
    os.chmod(root / "etc/app.conf", 0o640)
    data = root / "data"
    data.mkdir(mode=0o750)
    (data / "random.bin").write_bytes(os.urandom(2 * MiB + 77))
    os.link(data / "random.bin", data / "random-hardlink.bin")
    os.symlink("../etc/app.conf", data / "conf-link")
    (data / UTF8_NAME).write_text("für alle\n")
    (data / "deep").mkdir()
    (data / "deep/inner.txt").write_text("inside a marked folder\n")
    for i in range(30):
        (data / f"small-{i:03d}.txt").write_text(f"file {i}\n" * (i + 1))


@pytest.fixture(scope="module")
def real_image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An ext4 partition with awkward files in a GPT disk file, captured by rescueui; the
    files themselves kept as the reference."""
    missing = [t for t in ("sfdisk", "mkfs.ext4") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    from tests.clirun import rescueui

    tmp = tmp_path_factory.mktemp("files-screen")
    ref = tmp / "reference"
    ref.mkdir()
    _populate(ref)
    part = tmp / "p1.ext4"
    with open(part, "wb") as f:
        f.truncate(PART_SIZE)
    _run("mkfs.ext4", "-q", "-F", "-L", "data", "-d", ref, part)
    disk = tmp / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(PART_SIZE + 2 * MiB)
    _run("sfdisk", "--quiet", disk, stdin=f"label: gpt\nstart=2048, size={PART_SIZE // 512}\n")
    _run("dd", f"if={part}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse", "status=none")
    part.unlink()
    image = tmp / "img"
    rescueui("capture", disk, image, "--quiet")
    return {"image": image, "ref": ref}


class OneImageSession(Session):
    """The real session (real views, real extraction), showing only the test's image."""

    def __init__(self, image: Path) -> None:
        super().__init__(mount_media=False)
        self.image = image

    def scan_disks(self, image_dir: Any = None) -> list[Any]:
        return []

    def find_images(self, extra: Any = ()) -> list[Any]:
        return [summarize_image(self.image)]


def ours_mounted(places: list[str]) -> list[str]:
    """Lines of /proc/self/mounts of this process's views or at ``places`` (other work on
    this machine may hold views of its own under /run/rescueui/)."""
    mine = f"/run/rescueui/view/{os.getpid()}-"
    lines = Path("/proc/self/mounts").read_text().splitlines()
    return [ln for ln in lines if mine in ln or any(f" {p} " in ln for p in places)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.root
async def test_browse_and_extract_from_a_real_image(
    real_image: dict[str, Path], tmp_path: Path
) -> None:
    ref = real_image["ref"]
    dest = tmp_path / "out"  # on the image's medium (both under the test's temporary folder)
    app = RescueApp(OneImageSession(real_image["image"]), console=True, watch_disks=False)
    async with app.run_test(size=(100, 32)) as pilot:
        screen = await open_files(pilot, partition=None)  # one partition: no question
        assert screen.view is not None
        mounted_at = str(screen.view.root)
        assert ours_mounted([mounted_at])  # mounted while the screen is open
        assert {e.name for e in screen.entries} == {"data", "etc", "lost+found"}
        assert "read-only (kernel ext4 ro,noload)" in words(app)

        await enter(pilot, screen, "data")
        text = screen_text(app)
        assert UTF8_NAME in text and "conf-link -> ../etc/app.conf" in text
        assert "deep/" in text
        assert "/data: 35 entries (1 folder, 33 files of" in text  # the hard link counts

        await pilot.press("slash", *"small-00")
        await pilot.pause()
        assert len(screen.shown) == 10 and "search 'small-00': 10 of 35" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()

        for name in ("random.bin", UTF8_NAME, "deep"):
            await cursor_to(pilot, screen, name)
            await pilot.press("space")
        await wait_for(pilot, lambda: all(m.bytes is not None for m in screen.marks.values()))
        size = (2 * MiB + 77) + len("für alle\n".encode()) + len("inside a marked folder\n")
        assert screen.marks["/data/deep"].files == 1
        marked = sum(m.bytes or 0 for m in screen.marks.values())
        assert marked == size and "Marked: 3 (1 folder), 2.0 MiB in 3 files" in words(app)

        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExtractDialog))
        app.screen.query_one("#dest").value = str(dest)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageMediumDialog))
        assert not dest.exists()  # nothing made before the answer
        await pilot.press("y")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, JobScreen) and app.screen.finished,
            timeout=120,
        )
        job = app.screen
        assert job.outcome == "success", job.error
        for rel in ("data/random.bin", f"data/{UTF8_NAME}", "data/deep/inner.txt"):
            name = rel.removeprefix("data/")
            assert sha256(dest / name) == sha256(ref / rel), rel
        listed = {f["path"]: f for f in job.report.details["files"]}
        assert listed["/data/random.bin"]["sha256"] == sha256(ref / "data/random.bin")
        assert listed["/data/deep/inner.txt"]["sha256"] == sha256(ref / "data/deep/inner.txt")

        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen))
        assert "SUCCESS: files extracted" in words(app)
        text = report_words(app)
        for rel in ("data/random.bin", f"data/{UTF8_NAME}", "data/deep/inner.txt"):
            assert f"/{rel}" in text and sha256(ref / rel) in text, rel

        await pilot.press("enter")  # back to the files
        await wait_for(pilot, lambda: isinstance(app.screen, FilesScreen))
        assert ours_mounted([mounted_at])  # still browsing
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ImageScreen))
        assert ours_mounted([mounted_at]) == []  # released when the screen closed
        assert not Path(mounted_at).exists()
        assert app.session.open_views == []


@pytest.mark.root
async def test_nothing_stays_mounted_when_the_app_ends_on_the_files_screen(
    real_image: dict[str, Path],
) -> None:
    app = RescueApp(OneImageSession(real_image["image"]), console=True, watch_disks=False)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_files(pilot, partition=None)
        mounted_at = str(screen.view.root)
        await enter(pilot, screen, "etc")
        assert ours_mounted([mounted_at])
    assert ours_mounted([mounted_at]) == []


@pytest.mark.root
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.parametrize("ascii_only", [False, True], ids=["console", "ascii"])
def test_the_files_screen_on_the_linux_console(tmp_path: Path, ascii_only: bool) -> None:
    """The demo's image browsed in tmux under TERM=linux: 16-colour SGR and console glyphs
    only (ASCII only with --ascii), on the list, the marks, the search and the dialog."""
    from tests.tui.test_console import ESC, Tmux, check_console_safe, rescueui_cmd

    env = (
        f"env -u COLORTERM TERM=linux XDG_CACHE_HOME={tmp_path / 'cache'} "
        f"RESCUEUI_LOCK={tmp_path / 'lock'}"
    )
    flag = " --ascii" if ascii_only else ""
    tmux = Tmux(f"{env} {rescueui_cmd()} --demo{flag}; sleep 600")
    screens = []
    try:
        tmux.wait_for("Choose image", timeout=90)
        tmux.keys("Enter")
        tmux.wait_for("demo-server-image")
        tmux.keys("b")
        tmux.wait_for("Browse the files of which partition")
        screens.append(tmux.capture())
        tmux.keys("2")
        tmux.wait_for("README.txt")
        tmux.keys("Down", "Down", "Down", "Space")
        tmux.wait_for("Marked: 1")
        screens.append(tmux.capture())
        tmux.keys("/")
        tmux.keys("READ", literal=True)
        tmux.wait_for("search 'READ': 1 of 4")
        screens.append(tmux.capture())
        tmux.keys("Escape")
        tmux.wait_for("Esc Close")
        tmux.keys("e")
        tmux.wait_for("into the folder")
        screens.append(tmux.capture())
        tmux.keys("Escape")
        tmux.wait_for("Esc Close")
        tmux.keys("Escape")  # the partition released before the session ends
        tmux.wait_for("image(s) found")
    finally:
        tmux.kill()
    for screen in screens:
        check_console_safe(screen)
        if ascii_only:
            bad = {ch for ch in ESC.sub("", screen) if not ch.isascii()}
            assert not bad, f"non-ASCII glyphs in --ascii mode: {bad}"
    assert "* README.txt" in ESC.sub("", screens[1])
