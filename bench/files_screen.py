#!/usr/bin/env python3
"""How long the Files screen takes to list a folder of 10 000 files (issue 13: under 1 s).

Measured in the app itself (Textual's headless driver, 80x24), from the key that opens the
folder to the list painted, median of ``--runs``:

* ``folder``: the folder on this machine's filesystem (the screen and the core's
  ``list_folder``, no image): what the screen itself costs;
* ``image``: the same files in an ext4 partition of a rescueui image, browsed through the
  read-only view (FUSE file over the chunk index, loop device, kernel ext4): the first
  listing (its inodes read through the view) and a second one. Needs root and mkfs.ext4;
  left out otherwise, or with ``--skip-image``;
* ``datatable``: for comparison, a Textual ``DataTable`` given the same 10 000 rows (what
  the screen would cost if it used one; it measures every cell of every row).

    .venv/bin/python bench/files_screen.py [--files 10000] [--runs 3] [--skip-image]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rescueui.core.session import Session
from rescueui.tui.app import RescueApp

MiB = 1024 * 1024
BIG = "big"


class FolderView:
    """A folder on this machine, shown as if it were a partition's root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.how = "a folder on this machine (bench)"
        self.fs_type = "folder"
        self.size_bytes = 0
        self.closed = False

    def problem(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


class FolderSession(Session):
    def __init__(self, root: Path) -> None:
        super().__init__(mount_media=False)
        self.root = root

    def open_view(self, image_path: Any, partition: int) -> Any:
        return FolderView(self.root)


def make_files(folder: Path, n: int) -> None:
    big = folder / BIG
    big.mkdir(parents=True)
    for i in range(n):
        (big / f"file-{i:05d}.log").write_bytes(b"x" * (i % 700))
    (folder / "etc").mkdir()


def image_stub(path: Path, partition: int = 1) -> Any:
    from rescueui.core.session import summarize_image

    return summarize_image(path) if path.exists() else _Stub(path)


class _Stub:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.streams: list[Any] = []
        self.ok = True


async def time_listing(session: Session, image: Any, runs: int) -> list[float]:
    """Open the Files screen, then (``runs`` times) open the big folder and go back up;
    the seconds from the Enter to the list painted, each time."""
    from rescueui.tui.screens.files import FilesScreen
    from rescueui.tui.widgets.filelist import FileList

    app = RescueApp(session, console=True, watch_disks=False)
    times: list[float] = []
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = FilesScreen(image, 1)
        app.push_screen(screen)
        await _until(pilot, lambda: screen.view is not None and not screen.busy, 120)
        for _ in range(runs):
            rows = screen.query_one(FileList)
            while screen.shown[rows.cursor].name != BIG:
                await pilot.press("down")
            start = time.perf_counter()
            await pilot.press("enter")
            await _until(pilot, lambda: screen.path == f"/{BIG}" and not screen.busy, 60)
            await pilot.pause()  # the list painted
            times.append(time.perf_counter() - start)
            assert len(screen.entries) >= 10_000 or len(screen.entries) == rows.row_count
            await pilot.press("backspace")
            await _until(pilot, lambda: screen.path == "/" and not screen.busy, 60)
        await pilot.press("escape")
        await pilot.pause()
    return times


async def _until(pilot: Any, cond: Any, timeout: float) -> None:
    """Wait, giving the app's thread nothing to do meanwhile (no Pilot pauses: they make it
    work, and the listing's worker thread would wait for the GIL)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("the Files screen did not get there")
        await asyncio.sleep(0.005)


async def time_datatable(n: int) -> float:
    from rich.text import Text
    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    class TableApp(App[None]):
        def compose(self) -> ComposeResult:
            yield DataTable(cursor_type="row")

    app = TableApp()
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(DataTable)
        for key, width in (("mark", 1), ("name", 24), ("size", 10), ("date", 16), ("own", 5)):
            table.add_column(key, key=key, width=width)
        rows = [
            (" ", Text(f"file-{i:05d}.log"), Text("1.2 KiB", justify="right"),
             "2026-01-01 10:00", "0:0")
            for i in range(n)
        ]  # fmt: skip
        start = time.perf_counter()
        table.add_rows(rows)
        await pilot.pause()
        return time.perf_counter() - start


def make_image(work: Path, files: Path) -> Path:
    """An ext4 partition holding ``files`` (mkfs.ext4 -d), in a GPT disk file, captured."""
    size = 128 * MiB
    part = work / "p1.ext4"
    with open(part, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-N", "20000", "-d", str(files), str(part)], check=True
    )
    disk = work / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(size + 2 * MiB)
    subprocess.run(
        ["sfdisk", "--quiet", str(disk)],
        input=f"label: gpt\nstart=2048, size={size // 512}, type=L\n",
        text=True,
        check=True,
    )
    subprocess.run(
        ["dd", f"if={part}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse",
         "status=none"],
        check=True,
    )  # fmt: skip
    part.unlink()
    image = work / "img"
    subprocess.run(
        [sys.executable, "-m", "rescueui", "capture", str(disk), str(image), "--quiet"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    disk.unlink()
    return image


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-image", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rescueui-bench-files-"))
    try:
        files = work / "files"
        make_files(files, args.files)
        print(f"Files screen, a folder of {args.files} files, 80x24, median of {args.runs}:")
        t = asyncio.run(time_listing(FolderSession(files), _Stub(work / "folder"), args.runs))
        print(f"  folder on this machine: {statistics.median(t):.3f} s  (runs: "
              f"{', '.join(f'{x:.3f}' for x in t)})")  # fmt: skip
        can_image = os.geteuid() == 0 and shutil.which("mkfs.ext4") and shutil.which("sfdisk")
        if args.skip_image or not can_image:
            print("  image through the read-only view: left out (needs root and mkfs.ext4)")
        else:
            image = make_image(work, files)
            t = asyncio.run(time_listing(Session(mount_media=False), image_stub(image), args.runs))
            print(f"  image through the read-only view: first {t[0]:.3f} s, then "
                  f"{statistics.median(t[1:] or t):.3f} s  (runs: "
                  f"{', '.join(f'{x:.3f}' for x in t)})")  # fmt: skip
        d = asyncio.run(time_datatable(args.files))
        print(f"  for comparison, a DataTable given the same rows: {d:.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
