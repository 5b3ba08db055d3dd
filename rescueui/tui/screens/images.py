"""Step 2: images found on the attached media; selecting one shows its layout; b browses
the files of one of its partitions (the Files screen)."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Static

from rescueui.core.units import human_size
from rescueui.tui.screens.base import StepScreen
from rescueui.tui.text import esc, plain
from rescueui.tui.widgets.steps import StepsBar
from rescueui.tui.widgets.tablefill import fill_table


def size_text(img: Any) -> str:
    """The disk size the image needs; "~" marks an estimate (a compressed stream that records
    no size is only measured when it is opened for a restore)."""
    if not img.ok:
        return "-"
    size = human_size(img.extent_bytes)
    return f"~{size}" if getattr(img, "size_is_estimate", False) else size


def read_usage(path: Any) -> list[str]:
    """What the image at ``path`` holds of each partition (the core's lines: "p2 ext4: 58.1
    GiB used of 200 GiB - 141.9 GiB not copied"); [] when it does not say (format-1 images)
    or cannot be opened (the listing already says why). Opens the image: call it in a worker
    thread."""
    from rescueui.core.images import open_image
    from rescueui.core.images.usage import image_usage

    try:
        image = open_image(path, measure=False)
    except Exception:
        return []
    try:
        return list(image_usage(image))
    except Exception:
        return []
    finally:
        with contextlib.suppress(Exception):
            image.close()


def image_layout(img: Any, usage: list[str] | None = None) -> Text:
    """The selected image's details. Everything from the image (path, source, machine,
    warnings, labels, its own description) is outside text: shown escaped, never read as
    markup. ``usage``: the lines of :func:`read_usage` (None: not read yet)."""
    text = Text()
    text.append(esc(img.path), style="bold")
    if getattr(img, "description", ""):
        text.append(f"\nKind: {esc(img.description)}")
    elif getattr(img, "kind", ""):
        text.append(f"\nKind: {esc(img.kind)}")
    if not img.ok:
        text.append("\nCannot be used: ", style="bold reverse")
        text.append(esc(img.error or "unreadable"))
        return text
    if img.source:
        text.append(f"\nFrom {esc(img.source)} ({human_size(img.source_size)})")
    text.append(f"\nSource machine: {esc(img.machine) if img.machine else 'not recorded'}")
    needs = f"needs {human_size(img.extent_bytes)} on the target"
    if getattr(img, "size_is_estimate", False):
        needs = (
            f"needs about {human_size(img.extent_bytes)} on the target (size estimated: the "
            "compressed stream records none; it is measured before a restore)"
        )
    created = f"Created {esc(img.created)}; " if img.created else ""
    text.append(
        f"\n{created}{needs}; {human_size(img.stored_bytes)} stored; "
        f"table {esc(img.table_type or 'none')}"
    )
    if usage:  # next to the sizes, where an 80x24 screen still shows it
        text.append("\nWhat the image holds, per partition:", style="bold")
        for line in usage:
            text.append(f"\n  {esc(line)}")
    if getattr(img, "integrity_words", ""):
        text.append(f"\nChecks: {esc(img.integrity_words)}")
    if not img.complete:
        text.append("\nINCOMPLETE IMAGE (capture did not finish)", style="bold reverse")
    for w in img.warnings:
        text.append(f"\nWarning: {esc(w)}")
    text.append("\nLayout:", style="bold")
    if not img.streams:
        text.append("\n  no partition table read: restored as a whole disk")
    for s in img.streams:
        where = f"at {human_size(s.start_bytes)}"
        what = " ".join(esc(x) for x in (s.fs_type, s.label) if x)
        num = f"#{s.partition_number}" if s.partition_number else ""
        text.append(
            f"\n  {esc(s.name):<10} {esc(s.kind):<9} {num:<3} {human_size(s.size_bytes):>10} "
            f"{where:<14} {what}"
        )
    return text


class ImageScreen(StepScreen):
    STEP = "Image"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "choose", "Use this image", priority=True, id="choose"),
        Binding("o", "open_path", "Open a path", id="open"),
        Binding("b", "browse", "Browse", tooltip="Browse the files of a partition", id="browse"),
        Binding(
            "v",
            "verify",
            "Verify",
            tooltip="Verify the image (every chunk against its hash)",
            id="verify",
        ),
        Binding("r", "rescan", "Rescan", id="rescan"),
        Binding("escape", "back", "Back", id="back"),
    ]

    COLUMNS: ClassVar[list[tuple[str, str]]] = [
        ("name", "Image"),
        ("kind", "Kind"),
        ("size", "Size"),
        ("created", "Created"),
        ("about", "Source / machine"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.images: list[Any] = []
        self.extra_paths: list[str] = []
        self.usage: dict[Any, list[str]] = {}  # image path -> its usage lines (read once)

    def compose(self) -> ComposeResult:
        yield StepsBar(self.STEP, demo=self.session.is_demo)
        yield Static("Images found on the attached media (o: type a path).", id="hint")
        yield DataTable(id="images", cursor_type="row")
        with VerticalScroll(id="details-box"):
            yield Static(id="details")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#details-box").border_title = "Image layout"
        table = self.query_one(DataTable)
        fill_table(table, self.COLUMNS, [])
        table.focus()
        self.query_one("#status", Static).update("Looking for images...")
        self.scan()

    @work(thread=True, exclusive=True, exit_on_error=False, group="scan")
    def scan(self) -> None:
        images = self.session.find_images(self.extra_paths)
        self.app.call_from_thread(self._show, images)

    def _show(self, images: list[Any]) -> None:
        self.images = images
        self.usage = {}  # a rescan may find an image captured anew under the same name
        table = self.query_one(DataTable)
        rows = [
            (
                str(img.path),
                [
                    plain(img.name, style="bold"),
                    plain(esc(_kind_label(img))[:12]),
                    Text(size_text(img), justify="right"),
                    plain(esc(img.created)[:10] if img.ok else ""),
                    plain(esc(_about(img))[:40])
                    if img.ok
                    else Text.assemble(("UNUSABLE ", "bold"), esc(img.error or "")[:31]),
                ],
            )
            for img in images
        ]
        fill_table(table, self.COLUMNS, rows)
        status = f"{len(images)} image(s) found."
        if any(getattr(img, "size_is_estimate", False) for img in images if img.ok):
            status += " ~: size estimated (measured before a restore)."
        self.query_one("#status", Static).update(status)
        self._details()

    def selected(self) -> Any:
        table = self.query_one(DataTable)
        if not self.images or not table.row_count:
            return None
        return self.images[min(table.cursor_row, len(self.images) - 1)]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._details()

    def _details(self) -> None:
        img = self.selected()
        if img is None:
            self.query_one("#details", Static).update("No image found.")
            return
        usage = self.usage.get(img.path)
        self.query_one("#details", Static).update(image_layout(img, usage))
        # only our own folders record what each filesystem uses (format 2); opening a
        # foreign image may mean reading all of it
        if usage is None and img.ok and getattr(img, "kind", "") == "rescueui":
            self.load_usage(img.path)

    @work(thread=True, exclusive=True, exit_on_error=False, group="usage")
    def load_usage(self, path: Any) -> None:
        from textual.worker import get_current_worker

        lines = read_usage(path)
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._usage_read, path, lines)

    def _usage_read(self, path: Any, lines: list[str]) -> None:
        self.usage[path] = lines
        img = self.selected()
        if img is not None and img.path == path and lines:
            self.query_one("#details", Static).update(image_layout(img, lines))

    def action_rescan(self) -> None:
        self.scan()

    def action_choose(self) -> None:
        from rescueui.tui.screens.target import TargetScreen

        img = self.selected()
        if img is None:
            return
        if not img.ok:
            self.query_one("#status", Static).update(
                Text(f"Cannot use it: {esc(img.error)}", style="bold")
            )
            self.app.bell()
            return
        self.flow.image = img
        self.app.push_screen(TargetScreen())

    def action_open_path(self) -> None:
        from rescueui.tui.screens.dialogs import PathDialog

        def add(path: str | None) -> None:
            if path:
                self.extra_paths.append(path)
                self.scan()

        self.app.push_screen(PathDialog("Image folder or file (or a folder holding images):"), add)

    def action_browse(self) -> None:
        """Pick a partition of the selected image (when it has more than one) and open its
        files, read-only."""
        from rescueui.tui.screens.dialogs import BrowsePartitionDialog, browsable_streams
        from rescueui.tui.screens.files import FilesScreen

        img = self.selected()
        if img is None:
            return
        if not img.ok:
            self.query_one("#status", Static).update(
                Text(f"Cannot browse it: {esc(img.error)}", style="bold")
            )
            self.app.bell()
            return
        streams = browsable_streams(list(img.streams))
        if not streams:
            self.query_one("#status", Static).update(
                Text("The image has no partitions to browse (no partition table).", style="bold")
            )
            self.app.bell()
            return

        def browse(number: int | None) -> None:
            if number is not None:
                self.app.push_screen(FilesScreen(img, number))

        if len(streams) == 1:
            browse(streams[0].partition_number)
        else:
            self.app.push_screen(BrowsePartitionDialog(img), browse)

    def action_verify(self) -> None:
        from rescueui.tui.screens.job import JobScreen

        img = self.selected()
        if img is not None:
            self.app.push_screen(JobScreen.verify(img))


def _kind_label(img: Any) -> str:
    if not getattr(img, "kind", ""):
        return "-"  # not even its kind could be read
    label = getattr(img, "kind_label", None)
    return str(label) if label else str(img.kind)


def _about(img: Any) -> str:
    """The source disk (our images), else the source machine, else what the image is."""
    return img.source or img.machine or getattr(img, "description", "") or "-"
