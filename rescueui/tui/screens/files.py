"""The Files screen: one partition of an image, mounted read-only, browsed folder by folder.

Enter opens a folder, Backspace goes up; Space marks files and folders (a line counts them
and their size: a marked folder's files are counted in a worker thread); ``/`` searches the
names of the folder shown; ``e`` extracts what is marked (a dialog asks the folder, then the
ordinary job screen and report). The partition stays mounted while the screen is open and
is released when it closes (the session releases it too when the app ends).

The list draws only the lines on screen (:class:`~rescueui.tui.widgets.filelist.FileList`),
so a folder of 10 000 entries shows as fast as a small one (``bench/files_screen.py``).
"""

from __future__ import annotations

import contextlib
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, ClassVar

from rich.cells import set_cell_size
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Footer, Input, Static
from textual.worker import get_current_worker

from rescueui.core.errors import RescueError
from rescueui.core.units import human_size
from rescueui.tui.screens.base import StepScreen
from rescueui.tui.text import esc, plain
from rescueui.tui.widgets.filelist import FileList
from rescueui.tui.widgets.steps import StepsBar

KIND_BITS = {
    "file": stat.S_IFREG,
    "folder": stat.S_IFDIR,
    "link": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
    "device": stat.S_IFCHR,  # the core does not say which: shown as a character device
}
SIZE_W = 10  # "1023.9 MiB"
DATE_W = 16  # "2026-11-20 03:12" (UTC)
MODE_W = 10  # "drwxr-x---"
MIN_NAME_W = 14
SEARCH_SCOPE = "names in this folder"


def mode_text(entry: Any) -> str:
    """``-rw-r-----`` for the entry's kind and permission bits."""
    return stat.filemode(KIND_BITS.get(entry.kind, 0) | (entry.mode & 0o7777))


def date_text(mtime_ns: int) -> str:
    """The modification time in UTC (the image's clock; the zone of its machine is not known)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(mtime_ns / 1e9))
    except (OverflowError, OSError, ValueError):
        return "?"


def name_text(entry: Any) -> str:
    """The entry's name as shown (escaped; a folder ends in /, a link shows its target)."""
    name = esc(entry.name).replace("\t", " ")
    if entry.kind == "folder":
        name += "/"
    elif entry.kind == "link":
        name += f" -> {esc(entry.link_target or '?')}".replace("\t", " ")
    return name


@dataclass
class Columns:
    """The widths of the list's columns for one width of the list."""

    name: int
    owner: int
    show_owner: bool = True
    show_mode: bool = True

    @classmethod
    def fit(cls, width: int, owner: int) -> Columns:
        cols = cls(name=0, owner=owner)
        fixed = 2 + SIZE_W + 1 + DATE_W + 1 + owner + 1 + MODE_W + 1  # "* " mark, gaps
        if width - fixed < MIN_NAME_W:
            cols.show_mode = False
            fixed -= MODE_W + 1
        if width - fixed < MIN_NAME_W:
            cols.show_owner = False
            fixed -= owner + 1
        cols.name = max(width - fixed, 4)
        return cols

    def header(self, width: int) -> str:
        line = "  " + set_cell_size("Name", self.name) + " " + "Size".rjust(SIZE_W)
        line += " " + set_cell_size("Modified (UTC)", DATE_W)
        if self.show_owner:
            line += " " + set_cell_size("Owner", self.owner)
        if self.show_mode:
            line += " " + set_cell_size("Mode", MODE_W)
        return set_cell_size(line, width)

    def row(self, entry: Any, marked: bool, width: int) -> str:
        size = human_size(entry.size) if entry.kind == "file" else ""
        line = ("* " if marked else "  ") + set_cell_size(name_text(entry), self.name)
        line += " " + size.rjust(SIZE_W) + " " + date_text(entry.mtime_ns).ljust(DATE_W)
        if self.show_owner:
            line += " " + set_cell_size(f"{entry.uid}:{entry.gid}", self.owner)
        if self.show_mode:
            line += " " + mode_text(entry)
        return set_cell_size(line, width)


@dataclass
class Mark:
    """A marked file or folder: its size once known (a folder's is counted in a worker)."""

    path: str  # inside the partition
    kind: str
    bytes: int | None = None
    files: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


def marked_text(marks: dict[str, Mark]) -> Text:
    """The line under the list: how many are marked and what they hold."""
    if not marks:
        return Text("Nothing marked (Space marks the highlighted file or folder).")
    folders = sum(1 for m in marks.values() if m.kind == "folder")
    known = [m for m in marks.values() if m.bytes is not None]
    total = sum(m.bytes or 0 for m in known)
    files = sum(m.files or 0 for m in known)
    text = Text()
    text.append(f"Marked: {len(marks)}", style="bold")
    what = f" ({_count(folders, 'folder')})" if folders else ""
    text.append(f"{what}, {human_size(total)} in {_count(files, 'file')}")
    if len(known) < len(marks):
        text.append(" so far (counting the folders...)")
    return text


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def folder_order(entry: Any) -> tuple[int, str]:
    """Folders first, then by name (the core lists by name)."""
    return (0 if entry.kind == "folder" else 1, entry.name)


@dataclass
class Listing:
    """A folder's entries as the screen shows them, prepared in the worker thread (so the
    app's own thread only fills the list): folders first, the owner column's width, a line
    that sums the folder up."""

    entries: list[Any]
    owner_width: int
    words: str

    @classmethod
    def of(cls, path: str, entries: list[Any]) -> Listing:
        ordered = sorted(entries, key=folder_order)
        owner = max((len(f"{e.uid}:{e.gid}") for e in ordered), default=0)
        folders = files = size = 0
        for e in ordered:
            if e.kind == "folder":
                folders += 1
            elif e.kind == "file":
                files += 1
                size += e.size
        words = (
            f"{path}: {_count(len(ordered), 'entry', 'entries')} ({_count(folders, 'folder')}, "
            f"{_count(files, 'file')} of {human_size(size)})"
        )
        return cls(ordered, max(owner, 5), words)


class FilesScreen(StepScreen):
    """The files of partition ``partition`` of ``image`` (a core ImageSummary)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "clear_search", "Show all", id="clear-search"),
        Binding("escape", "back", "Close", id="back"),
        Binding("enter", "open", "Open", id="open"),
        Binding("backspace", "up", "Up", key_display="Bksp", id="up"),
        Binding("space", "mark", "Mark", id="mark"),
        Binding("slash", "search", "Search", key_display="/", id="search"),
        Binding("e", "extract", "Extract", id="extract"),
        Binding("u", "unmark_all", "Unmark all", id="unmark-all"),
    ]

    def __init__(self, image: Any, partition: int) -> None:
        super().__init__()
        self.image = image
        self.partition = partition
        self.view: Any = None  # the session's OpenView, once mounted
        self.path = "/"
        self.listing = Listing.of("/", [])
        self.entries: list[Any] = []  # of the folder shown, folders first
        self.shown: list[Any] = []  # the entries shown (the search filters them)
        self.query_text = ""
        self.marks: dict[str, Mark] = {}
        self.columns = Columns(name=20, owner=9)
        self.error: str | None = None
        self.busy = True
        self.listed_at: float = 0.0  # when the last listing was asked for
        self.listing_seconds: float | None = None  # asked -> shown, for the last folder
        self._released = False
        self._stop_staging = threading.Event()  # set when the screen closes: staging stops
        self._staged_percent = -1
        self._generation = 0
        self._extract_job: Any = None

    # -- layout ----------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StepsBar(self.STEP, demo=self.session.is_demo)
        yield Static(self._title(), id="files-title")
        with Vertical(id="files-box"):
            yield Static("", id="files-header")
            yield FileList(self._line, self._is_marked, id="files")
        yield Input(placeholder=f"search {SEARCH_SCOPE}", id="files-search")
        yield Static(marked_text(self.marks), id="marked")
        yield Static("", id="status")
        yield Footer()

    def _title(self) -> Text:
        stream = next(
            (s for s in getattr(self.image, "streams", []) if s.partition_number == self.partition),
            None,
        )
        text = Text()
        text.append("Files of ", style="bold")
        text.append(f"partition {self.partition}", style="bold")
        if stream is not None:
            what = " ".join(esc(x) for x in (stream.fs_type, stream.label) if x)
            text.append(f" ({human_size(stream.size_bytes)}{' ' + what if what else ''})")
        text.append(" of ")
        text.append(esc(self.image.name), style="bold")
        if self.view is not None:
            text.append(f" - read-only ({esc(self.view.how)})")
        return text

    def on_mount(self) -> None:
        self.query_one("#files-search").display = False
        self.query_one("#files-box").border_title = "/"
        self._status(f"Opening partition {self.partition} read-only...")
        self.query_one(FileList).focus()
        self.open_partition()

    def on_resize(self) -> None:
        self._fit_columns()

    def _fit_columns(self) -> None:
        width = self.query_one(FileList).scrollable_content_region.width
        self.columns = Columns.fit(width, self.listing.owner_width)
        self.query_one("#files-header", Static).update(
            Text(self.columns.header(width), style="bold")
        )
        self.query_one(FileList).refresh()

    def _line(self, row: int, width: int) -> str:
        entry = self.shown[row]
        return self.columns.row(entry, self._path_of(entry) in self.marks, width)

    def _is_marked(self, row: int) -> bool:
        return self._path_of(self.shown[row]) in self.marks

    def _path_of(self, entry: Any) -> str:
        return str(PurePosixPath(self.path) / entry.name)

    def _status(self, message: str | Text, *, loud: bool = False) -> None:
        line = message if isinstance(message, Text) else plain(message)
        if loud:
            line.stylize("bold")
        self.query_one("#status", Static).update(line)

    # -- the view (worker threads) ------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="files-open")
    def open_partition(self) -> None:
        view = None
        error: str | None = None
        try:
            view = self.session.open_view(
                self.image.path, self.partition, progress=self._staging, cancel=self._stop_staging
            )
        except RescueError as exc:
            error = str(exc)
        except Exception as exc:  # a bug must not leave the screen at "Opening..."
            error = f"internal error opening the partition: {type(exc).__name__}: {exc}"
        try:
            self.app.call_from_thread(self._opened, view, error)
        except RuntimeError:  # the app is ending: nothing may stay mounted
            if view is not None:
                view.close()

    def _staging(self, done: int, total: int) -> None:
        """An image read only in order is read once before it can be browsed: its progress
        on the status line (from the opening thread; a new line per whole percent)."""
        percent = done * 100 // total if total else 100
        if percent == self._staged_percent:
            return
        self._staged_percent = percent
        line = (
            f"Opening partition {self.partition}: this kind of image is read once, in order, "
            f"before it can be browsed - {percent} % of {human_size(total)}..."
        )
        with contextlib.suppress(RuntimeError):  # the app is ending
            self.app.call_from_thread(self._status, line)

    def _opened(self, view: Any, error: str | None) -> None:
        if self._released:  # the screen was closed while the partition was being mounted
            if view is not None:
                view.close()
            return
        if view is None:
            self.busy = False
            self.error = error
            self._status(plain(f"Cannot browse it: {error}", style="bold reverse"))
            self.app.bell()
            self.refresh_bindings()
            return
        self.view = view
        self.query_one("#files-title", Static).update(self._title())
        self.load("/")

    def load(self, path: str, *, cursor_on: str | None = None) -> None:
        """List the folder ``path`` (in a worker); ``cursor_on``: the name to put the cursor
        on (the folder we came up from)."""
        self.busy = True
        self._generation += 1
        self.listed_at = time.perf_counter()
        self._status(f"Listing {path} ...")
        self.refresh_bindings()
        self.list_worker(path, cursor_on, self._generation)

    @work(thread=True, exclusive=True, exit_on_error=False, group="files-list")
    def list_worker(self, path: str, cursor_on: str | None, generation: int) -> None:
        listing: Listing | None = None
        error: str | None = None
        try:
            listing = Listing.of(path, self.session.list_folder(self.view, path))
        except RescueError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"internal error listing {path}: {type(exc).__name__}: {exc}"
        if get_current_worker().is_cancelled:
            return
        try:
            self.app.call_from_thread(self._listed, generation, path, listing, error, cursor_on)
        except RuntimeError:  # the app is ending
            pass

    def _listed(
        self,
        generation: int,
        path: str,
        listing: Listing | None,
        error: str | None,
        cursor_on: str | None,
    ) -> None:
        if generation != self._generation or self._released:
            return
        self.busy = False
        self.refresh_bindings()
        if listing is None:
            self._status(plain(f"Cannot open {path}: {error}", style="bold"))
            self.app.bell()
            return
        self.path = path
        self.entries = listing.entries
        self.listing = listing
        self.query_text = ""
        search = self.query_one("#files-search", Input)
        search.value = ""
        search.display = False
        self._fit_columns()
        self._show(cursor_on)
        self.listing_seconds = time.perf_counter() - self.listed_at
        self._status(listing.words)

    def _show(self, cursor_on: str | None = None) -> None:
        """Fill the list with the entries that match the search (all without one)."""
        needle = self.query_text.casefold()
        if needle:
            self.shown = [e for e in self.entries if needle in e.name.casefold()]
        else:
            self.shown = self.entries
        cursor = 0
        if cursor_on is not None:
            cursor = next((i for i, e in enumerate(self.shown) if e.name == cursor_on), 0)
        self.query_one(FileList).set_rows(len(self.shown), cursor)
        title = esc(self.path)
        if needle:
            title += f"  search {esc(self.query_text)!r}: {len(self.shown)} of {len(self.entries)}"
        self.query_one("#files-box").border_title = title

    def selected(self) -> Any:
        rows = self.query_one(FileList)
        if not self.shown or rows.cursor >= len(self.shown):
            return None
        return self.shown[rows.cursor]

    # -- keys ----------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        browsing = self.view is not None
        if action in ("open", "mark", "search"):
            return browsing
        if action == "up":
            return browsing and self.path != "/"
        if action == "extract":
            return browsing and (True if self.marks else None)  # dimmed with nothing marked
        if action == "unmark_all":
            return bool(self.marks)
        if action == "clear_search":
            return self._searching()
        if action == "back":
            return not self._searching() and super().check_action(action, parameters)
        return super().check_action(action, parameters)

    def _searching(self) -> bool:
        return bool(
            self.is_mounted and (self.query_one("#files-search").display or self.query_text)
        )

    def action_open(self) -> None:
        entry = self.selected()
        if entry is None or self.busy:
            return
        if entry.kind == "folder" or entry.kind == "link":
            self.load(self._path_of(entry))  # a link that leads to a folder opens it
        else:
            self._status(f"{esc(entry.name)} is not a folder: Space marks it, e extracts.")

    def action_up(self) -> None:
        if self.path == "/" or self.busy:
            return
        here = PurePosixPath(self.path)
        self.load(str(here.parent), cursor_on=here.name)

    def action_mark(self) -> None:
        entry = self.selected()
        if entry is None:
            return
        path = self._path_of(entry)
        rows = self.query_one(FileList)
        if path in self.marks:
            self.marks.pop(path).cancel.set()
        else:
            mark = Mark(path, entry.kind)
            self.marks[path] = mark
            if entry.kind == "folder":
                self.count_folder(mark)
            else:
                mark.bytes, mark.files = (entry.size, 1) if entry.kind == "file" else (0, 0)
        rows.refresh_row(rows.cursor)
        rows.action_move(1)
        self._marks_changed()

    def _marks_changed(self) -> None:
        self.query_one("#marked", Static).update(marked_text(self.marks))
        self.refresh_bindings()

    @work(thread=True, exit_on_error=False, group="files-count")
    def count_folder(self, mark: Mark) -> None:
        try:
            size, files = self.session.tree_size(self.view, mark.path, mark.cancel)
        except RescueError:
            size, files = 0, 0
        if mark.cancel.is_set():
            return
        try:
            self.app.call_from_thread(self._counted, mark, size, files)
        except RuntimeError:
            pass

    def _counted(self, mark: Mark, size: int, files: int) -> None:
        if self.marks.get(mark.path) is mark:
            mark.bytes, mark.files = size, files
            self._marks_changed()

    def action_unmark_all(self) -> None:
        for mark in self.marks.values():
            mark.cancel.set()
        self.marks.clear()
        self.query_one(FileList).refresh()
        self._marks_changed()

    # -- search --------------------------------------------------------------
    def action_search(self) -> None:
        search = self.query_one("#files-search", Input)
        search.display = True
        search.focus()
        self.refresh_bindings()
        self._status(f"Search: {SEARCH_SCOPE} (as you type). Enter: back to the list, Esc: clear.")

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "files-search" and event.input.display:
            self.query_text = event.value
            self._show()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "files-search":
            return
        if not self.query_text:
            self._clear_search()
            return
        self.query_one(FileList).focus()
        if not self.shown:
            self._status(f"Nothing in {esc(self.path)} matches {esc(self.query_text)!r}.")
        else:
            self._status(
                f"{len(self.shown)} of {len(self.entries)} match {esc(self.query_text)!r} "
                "(/: change it, Esc: show all)."
            )

    def action_clear_search(self) -> None:
        self._clear_search()

    def _clear_search(self) -> None:
        search = self.query_one("#files-search", Input)
        search.display = False
        search.value = ""
        self.query_text = ""
        current = self.selected()
        self._show(current.name if current is not None else None)
        self.query_one(FileList).focus()
        self._status(self.listing.words)
        self.refresh_bindings()

    # -- extract -------------------------------------------------------------
    def action_extract(self) -> None:
        from rescueui.tui.screens.dialogs import ExtractDialog

        if not self.marks:
            self._status("Mark files or folders with Space first.")
            self.app.bell()
            return
        paths = sorted(self.marks)
        marks = list(self.marks.values())
        known = all(m.bytes is not None for m in marks)
        total = sum(m.bytes or 0 for m in marks)

        def check(dest: str, allow: bool) -> Any:
            return self.session.extract_destination(dest, self.image.path, allow_image_medium=allow)

        def go(choice: Any) -> None:
            if choice is not None:
                self._start_extract(paths, choice)

        self.app.push_screen(
            ExtractDialog(
                check,
                str(self.session.default_extract_folder(self.image.path, self.partition)),
                what=f"{len(paths)} marked item(s)"
                + (f", {human_size(total)}" if known else "")
                + f" from partition {self.partition} of {self.image.name}",
            ),
            go,
        )

    def _start_extract(self, paths: list[str], choice: Any) -> None:
        from rescueui.tui.screens.job import JobScreen

        job = JobScreen.extract(
            self.image,
            self.partition,
            paths,
            str(choice.folder),
            allow_image_medium=choice.allow_image_medium,
        )
        self._extract_job = job
        self.app.push_screen(job)

    def on_screen_resume(self) -> None:
        job = self._extract_job
        if job is None or not job.finished or self.app.screen is not self:
            return  # (a resume from the dialog may arrive after the job screen came up)
        self._extract_job = None
        if job.outcome == "success":
            self.action_unmark_all()  # extracted: marked again only on purpose
            self._status("Extracted (the report lists each file); the marks are cleared.")

    # -- closing ---------------------------------------------------------------
    def on_unmount(self) -> None:
        self.release()

    def release(self) -> None:
        """Unmount the partition (the screen is closing)."""
        self._released = True
        self._stop_staging.set()
        for mark in self.marks.values():
            mark.cancel.set()
        view, self.view = self.view, None
        if view is not None:
            view.close()
