"""The disk table: boot/image media fold their partitions into one row; the cursor survives rescans."""

from __future__ import annotations

from textual.app import App, ComposeResult

from rescueui.core.disks import REASON_BOOT, REASON_IMAGE, Disk, Partition, classify
from rescueui.core.units import GiB, MiB
from rescueui.tui.widgets.disktable import DiskTable, disk_details


def _part(disk: str, n: int, minor: int, fs: str | None, label: str | None) -> Partition:
    return Partition(
        path=f"/dev/{disk}{n}", name=f"{disk}{n}", number=n, devnum=(8, minor + n),
        start_bytes=n * MiB, size_bytes=64 * MiB, fs_type=fs, label=label, uuid=None,
        part_label=None, part_type=None, part_uuid=None,
    )  # fmt: skip


def _disk(name: str, minor: int, parts: list[Partition]) -> Disk:
    return Disk(
        path=f"/dev/{name}", name=name, devnum=(8, minor), size_bytes=32 * GiB, model=name.upper(),
        vendor=None, serial=None, wwn=None, bus="ata", removable=False, read_only=False,
        rotational=False, logical_sector_size=512, physical_sector_size=512, table_type="gpt",
        partitions=parts,
    )  # fmt: skip


def live_machine(boot: set[tuple[int, int]]) -> list[Disk]:
    """The live image's view: a boot stick with its four ISO partitions, and a server disk."""
    stick = _disk(
        "sda",
        0,
        [
            _part("sda", 1, 0, "iso9660", "Gap0"),
            _part("sda", 2, 0, "vfat", "EFI"),
            _part("sda", 3, 0, "hfsplus", "HFS"),
            _part("sda", 4, 0, None, "Gap1"),
        ],
    )
    server = _disk("sdb", 16, [_part("sdb", 1, 16, "vfat", "EFI"), _part("sdb", 2, 16, "ext4", "")])
    disks = [stick, server]
    for d in disks:
        classify(d, boot=boot, image=set())
    return disks


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield DiskTable(id="disks")


def _keys(table: DiskTable) -> list[str]:
    return [str(table.coordinate_to_cell_key((i, 0)).row_key.value) for i in range(table.row_count)]


async def test_boot_medium_partitions_folded_into_the_disk_row() -> None:
    async with TableApp().run_test() as pilot:
        table = pilot.app.query_one(DiskTable)
        disks = live_machine(boot={(8, 0)})
        assert disks[0].reasons == [REASON_BOOT]
        table.show(disks)
        await pilot.pause()
        assert _keys(table) == ["/dev/sda", "/dev/sdb", "/dev/sdb1", "/dev/sdb2"]
        status = table.get_cell("/dev/sda", "status")
        assert "BOOT MEDIUM" in str(status) and "4 partitions" in str(status)
        assert "partition" not in str(table.get_cell("/dev/sdb", "status"))
        # The folded partitions are still described in the details panel.
        details = str(disk_details(table.selected_disk()))
        for n in range(1, 5):
            assert f"sda{n}" in details
        # Not a boot medium any more (another stick booted): its partitions come back as rows.
        table.show(live_machine(boot=set()))
        await pilot.pause()
        assert _keys(table)[:5] == [f"/dev/sda{n}" if n else "/dev/sda" for n in range(5)]


async def test_only_never_target_disks_are_folded() -> None:
    """A mounted disk can be freed by the technician: its partitions stay rows."""
    async with TableApp().run_test() as pilot:
        table = pilot.app.query_one(DiskTable)
        disks = live_machine(boot=set())
        disks[0].partitions[0].mountpoints = ["/mnt/x"]
        classify(disks[0], boot=set(), image=set())
        classify(disks[1], boot=set(), image={(8, 16)})  # sdb holds the image
        assert not disks[0].targetable and REASON_IMAGE in disks[1].reasons
        table.show(disks)
        await pilot.pause()
        assert _keys(table) == [
            "/dev/sda", "/dev/sda1", "/dev/sda2", "/dev/sda3", "/dev/sda4", "/dev/sdb"
        ]  # fmt: skip
        assert "IMAGE MEDIUM  2 partitions" in str(table.get_cell("/dev/sdb", "status"))


async def test_cursor_stays_on_its_device_across_rescans() -> None:
    async with TableApp().run_test() as pilot:
        table = pilot.app.query_one(DiskTable)
        table.focus()
        table.show(live_machine(boot={(8, 0)}))
        await pilot.pause()
        await pilot.press("down", "down", "down")
        assert table.selected_path() == "/dev/sdb2"
        # A disk is plugged in before it (hotplug): the cursor follows /dev/sdb2.
        plugged = _disk("nvme0n1", 259, [])
        classify(plugged, boot=set(), image=set())
        table.show([plugged, *live_machine(boot={(8, 0)})])
        await pilot.pause()
        assert table.selected_path() == "/dev/sdb2" and table.selected_partition().name == "sdb2"
        # The cursor on a partition whose disk becomes the image medium lands on that disk's row.
        disks = live_machine(boot={(8, 0)})
        classify(disks[1], boot=set(), image={(8, 16)})
        table.show(disks)
        await pilot.pause()
        assert table.selected_path() == "/dev/sdb"
        assert table.selected_partition() is None
        assert table.selected_disk() is disks[1]
