"""Disks and their partitions as table rows; what the core says about each, shown as is.

Models, serials, labels, mount points and reasons quote udev and the disks themselves:
every one is shown escaped (:mod:`rescueui.tui.text`) and every cell is a ``Text`` (a ``str``
cell would be read as markup)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from rescueui.core.units import human_size
from rescueui.tui.text import esc, plain
from rescueui.tui.widgets.tablefill import fill_table


def disk_status(disk: Any) -> Text:
    if disk.targetable:
        return Text("target ok")
    if "boot" in disk.roles and "image" in disk.roles:
        return Text("BOOT+IMAGE", style="bold")
    if "boot" in disk.roles:
        return Text("BOOT MEDIUM", style="bold")
    if "image" in disk.roles:
        return Text("IMAGE MEDIUM", style="bold")
    return Text(f"no: {esc(disk.reasons[0])}"[:26] if disk.reasons else "not a target")


def collapsed(disk: Any) -> bool:
    """Partition rows of a disk the core says can never be a target (boot/image medium) are
    folded into the disk row; they stay listed in the details panel."""
    return bool(disk.partitions) and bool(getattr(disk, "never_target", False))


def partitions_note(disk: Any) -> Text:
    n = len(disk.partitions)
    return Text(f"  {n} partition{'s' if n != 1 else ''}", style="dim")


def part_text(p: Any) -> str:
    """Filesystem, label and mount points of a partition, escaped (for a ``Text``)."""
    bits = [esc(p.fs_type or ""), esc(p.label or p.part_label or "")]
    if p.mountpoints:
        bits.append("on " + ",".join(esc(m) for m in p.mountpoints))
    return " ".join(b for b in bits if b)


def disk_details(disk: Any) -> Text:
    """Everything about one disk, for the panel under the table."""
    text = Text()
    text.append(esc(disk.path), style="bold")
    text.append(f"  {esc(disk.model or '?')}  serial {esc(disk.serial or '-')}")
    if disk.wwn:
        text.append(f"  WWN {esc(disk.wwn)}")
    if getattr(disk, "backing_file", None):
        text.append(f"  backed by {esc(disk.backing_file)}")
    text.append(
        f"\n{human_size(disk.size_bytes)} ({disk.size_bytes} bytes), bus {esc(disk.bus)}, "
        f"sectors {disk.logical_sector_size}/{disk.physical_sector_size}, "
        f"table {esc(disk.table_type or 'none')}"
        f"{', removable' if disk.removable else ''}{', read-only' if disk.read_only else ''}"
    )
    if disk.reasons:
        text.append("\nNot a target: ", style="bold")
        text.append("; ".join(esc(r) for r in disk.reasons))
    else:
        text.append("\nCan be chosen as a restore target.")
    for p in disk.partitions:
        text.append(f"\n  {esc(p.name):<12} {human_size(p.size_bytes):>10}  {part_text(p)}")
    if not disk.partitions:
        text.append("\n  (no partitions)")
    return text


class DiskTable(DataTable[Any]):
    """One row per disk followed by one row per partition. Row keys: device paths.

    A disk that can never be a target (boot or image medium) gets no partition rows, only a
    "4 partitions" note: on an 80x24 console the boot stick's ISO partitions would otherwise
    push the real disks below the fold.
    """

    def __init__(
        self, *, id: str | None = None, extra: tuple[str, Callable[[Any], Text]] | None = None
    ) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.extra = extra
        self.disks: list[Any] = []
        self._row_disk: dict[str, Any] = {}
        self._folded: dict[str, str] = {}  # partition path -> its disk's row key

    def columns_spec(self) -> list[tuple[str, str]]:
        return [
            ("dev", "Device"),
            ("model", "Model"),
            ("size", "Size"),
            ("bus", "Bus"),
            ("status", self.extra[0] if self.extra else "Status"),
        ]

    def show(self, disks: Sequence[Any]) -> None:
        """Replace the rows, keeping the cursor on the same device if it is still there."""
        keep = self.selected_path()
        self.disks = list(disks)
        self._row_disk = {}
        self._folded = {}
        rows: list[tuple[str, list[Any]]] = []
        for d in self.disks:
            status = self.extra[1](d) if self.extra else disk_status(d)
            fold = collapsed(d)
            if fold:
                status = Text.assemble(status, partitions_note(d))
            rows.append(
                (
                    d.path,
                    [
                        plain(esc(d.name)[:14], style="bold"),
                        plain(esc(d.model or "")[:20]),
                        Text(human_size(d.size_bytes), justify="right"),
                        plain(d.bus),
                        status,
                    ],
                )
            )
            self._row_disk[d.path] = d
            for p in d.partitions:
                if fold:
                    self._folded[p.path] = d.path
                    continue
                rows.append(
                    (
                        p.path,
                        [
                            Text("  " + esc(p.name)[-12:], style="dim"),
                            Text(part_text(p)[:20], style="dim"),
                            Text(human_size(p.size_bytes), justify="right", style="dim"),
                            "",
                            "",
                        ],
                    )
                )
                self._row_disk[p.path] = d
        fill_table(self, self.columns_spec(), rows)
        if keep is not None:
            keep = self._folded.get(keep, keep)
        if keep is not None and keep in self._row_disk:
            self.move_cursor(row=self.get_row_index(keep))

    def selected_path(self) -> str | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return key.value

    def selected_partition(self) -> Any:
        """The partition under the cursor (None on a disk row)."""
        path = self.selected_path()
        disk = self._row_disk.get(path) if path else None
        if disk is None or path == disk.path:
            return None
        return next((p for p in disk.partitions if p.path == path), None)

    def selected_disk(self) -> Any:
        path = self.selected_path()
        return self._row_disk.get(path) if path else None
