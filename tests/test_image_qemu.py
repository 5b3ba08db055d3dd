"""VM disks (qcow2, vmdk, vhdx, vdi, vpc) read through QEMU: rescueui/core/images/qemu.py.

The fixtures are made by the real tools: a GPT disk image file (vfat ESP with mcopy, ext4
with ``mkfs.ext4 -d``, xfs with ``mkfs.xfs -p``, random bytes between the partitions), then
``qemu-img convert`` to every format and subformat. Each image is opened through
:func:`open_image` (detected by content) and read through the seam; what it reads must be
the raw disk, byte for byte. No root is needed (nothing here touches a device).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.errors import CorruptImageError, ImageError, RescueError
from rescueui.core.images import qemu
from rescueui.core.images.qemu import QemuImage, _Coalescer, read_map, sweep_stale
from rescueui.core.images.source import Extent, open_image
from tests.imagefixtures import content_tree, make_disk, make_ext4, make_vfat, make_xfs

MiB = 1024 * 1024
QEMU_TOOLS = ("qemu-img", "qemu-nbd", "qemu-io")
FS_TOOLS = ("sfdisk", "blkid", "mkfs.vfat", "mcopy", "mkfs.ext4", "mkfs.xfs")


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


pytestmark = pytest.mark.skipif(
    not all(_which(t) for t in QEMU_TOOLS + FS_TOOLS),
    reason="needs qemu-img, qemu-nbd and qemu-io (qemu-utils), sfdisk, blkid, mkfs.vfat, "
    "mcopy, mkfs.ext4 and mkfs.xfs",
)

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "qcow2": ("qcow2", []),
    "qcow2-compressed": ("qcow2", ["-c"]),
    "vmdk-monolithicSparse": ("vmdk", ["-o", "subformat=monolithicSparse"]),
    "vmdk-streamOptimized": ("vmdk", ["-o", "subformat=streamOptimized"]),
    "vmdk-twoGbMaxExtentSparse": ("vmdk", ["-o", "subformat=twoGbMaxExtentSparse"]),
    "vhdx": ("vhdx", []),
    "vdi": ("vdi", []),
    "vpc": ("vpc", []),
    "vpc-fixed": ("vpc", ["-o", "subformat=fixed"]),
}


THROUGH_QEMU = {"vhdx", "vmdk-streamOptimized"}  # the map gives no place in a file


def run(*cmd: str | Path, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, **kw)


def sha256_file(path: Path, size: int | None = None) -> str:
    h = hashlib.sha256()
    left = size if size is not None else os.path.getsize(path)
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(4 * MiB, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sfdisk_json(path: Path) -> dict[str, Any]:
    return json.loads(run(_which("sfdisk") or "sfdisk", "--json", path).stdout)["partitiontable"]


def comparable(table: dict[str, Any]) -> dict[str, Any]:
    """A table without the names of its device and partition nodes."""
    t = {k: v for k, v in table.items() if k not in ("device",)}
    t["partitions"] = [{k: v for k, v in p.items() if k != "node"} for p in table["partitions"]]
    return t


def our_helpers() -> list[int]:
    """Live (not zombie) QEMU helpers started for an image by this test process's code."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry.name}/stat").read_text()
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        state = stat_line.rsplit(")", 1)[1].split()[0]
        if state != "Z" and f"{qemu.TEMP_PREFIX}{os.getpid()}-".encode() in cmd:
            out.append(int(entry.name))
    return out


def our_folders() -> list[str]:
    prefix = f"{qemu.TEMP_PREFIX}{os.getpid()}-"
    return [e.name for e in os.scandir(qemu.temp_base()) if e.name.startswith(prefix)]


def read_all(img: Any) -> bytearray:
    """The whole virtual disk as the engine would see it: data extents read, zeros elsewhere."""
    buf = bytearray(img.extent_bytes)
    view = memoryview(buf)
    for e in img.extents():
        if e.kind == "data":
            img.read_into(e.start, view[e.start : e.end])
    return buf


# ------------------------------------------------------------------ fixtures


def _put(disk: Path, src: Path, offset: int) -> None:
    """Copy ``src`` into ``disk`` at ``offset``, skipping zero blocks (keeps it sparse)."""
    zero = bytes(64 * 1024)
    with open(src, "rb") as fin, open(disk, "r+b") as fout:
        pos = 0
        while block := fin.read(64 * 1024):
            if block != zero[: len(block)]:
                fout.seek(offset + pos)
                fout.write(block)
            pos += len(block)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A GPT disk image file: p1 vfat ESP, p2 ext4, p3 xfs, random bytes in a gap."""
    work = tmp_path_factory.mktemp("qemu-src")
    disk = work / "disk.raw"
    size = 104 * MiB
    with open(disk, "wb") as f:
        f.truncate(size)
    s = 512
    parts = {1: (1 * MiB, 12 * MiB), 2: (14 * MiB, 30 * MiB), 3: (45 * MiB, 48 * MiB)}
    script = (
        "label: gpt\n"
        f"start={parts[1][0] // s}, size={parts[1][1] // s}, "
        'type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"\n'
        f"start={parts[2][0] // s}, size={parts[2][1] // s}, "
        'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"\n'
        f"start={parts[3][0] // s}, size={parts[3][1] // s}, "
        'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="data"\n'
    )
    run(_which("sfdisk") or "sfdisk", "--quiet", disk, input=script.encode())
    content = content_tree(work, random_mib=3)
    for n, maker in ((1, "vfat"), (2, "ext4"), (3, "xfs")):
        part = work / f"p{n}.{maker}"
        if maker == "vfat":
            make_vfat(part, parts[n][1], [content / "json"], label="ESP")
        elif maker == "ext4":
            make_ext4(part, parts[n][1], content, label="ROOT")
        else:
            make_xfs(part, parts[n][1], content, label="XDATA")
        _put(disk, part, parts[n][0])
        part.unlink()
    with open(disk, "r+b") as f:  # something outside every partition
        f.seek(13 * MiB + 4096)
        f.write(os.urandom(8192))
    return {
        "path": disk,
        "size": size,
        "sha256": sha256_file(disk),
        "table": sfdisk_json(disk),
        "parts": parts,
        "content": content,
    }


@pytest.fixture(scope="module")
def images(source: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every VM format made from the source by ``qemu-img convert``, each in its folder."""
    work = tmp_path_factory.mktemp("qemu-images")
    out: dict[str, Path] = {}
    for name, (fmt, opts) in VARIANTS.items():
        folder = work / name
        folder.mkdir()
        path = folder / f"disk.{fmt}"
        run("qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, source["path"], path)
        out[name] = path
    return out


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Every test leaves no QEMU helper and no private folder of this process behind."""
    yield
    deadline = time.monotonic() + 5
    while our_helpers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert our_helpers() == [], "a QEMU helper is still running"
    assert our_folders() == [], "a private folder was left behind"


# ------------------------------------------------------------------ every format


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_format_reads_as_the_raw_disk(
    variant: str, images: dict[str, Path], source: dict[str, Any]
) -> None:
    path = images[variant]
    fmt = VARIANTS[variant][0]
    before = {p: (sha256_file(p), os.stat(p).st_mtime_ns) for p in path.parent.iterdir()}
    with open_image(path) as img:
        assert isinstance(img, QemuImage)
        assert img.fmt == fmt
        assert img.extent_bytes >= source["size"]
        # extents cover [0, virtual size) in order, 4 KiB granules
        pos = 0
        for e in img.extents():
            assert e.start == pos and e.length > 0 and e.kind in ("data", "zero")
            assert e.start % 4096 == 0
            pos = e.end
        assert pos == img.extent_bytes
        # the segment table the engine uses covers the same bytes
        assert img.segment_table().total_bytes == img.extent_bytes
        # data with a place in a file is read there; compressed data and vhdx through QEMU
        assert img.direct_reads == (variant not in THROUGH_QEMU)
        data = read_all(img)
        assert hashlib.sha256(data[: source["size"]]).hexdigest() == source["sha256"]
        assert not any(data[source["size"] :])  # vpc rounds its size up: zeros there
        if img.direct_reads:  # and everything through QEMU reads the same
            img._pieces = None
            assert read_all(img) == data
        # zero extents really read as zeros (QEMU's own bytes, not our assumption)
        for e in img.extents():
            if e.kind == "zero":
                for off in (e.start, max(e.start, e.end - 65536)):
                    n = min(65536, e.end - off)
                    chunk = bytearray(n)
                    img.read_into(off, memoryview(chunk))
                    assert not any(chunk), f"zero extent at {off} holds data"
        # facts: the table is sfdisk's on the raw disk, filesystems by blkid
        table = img.manifest.partition_table
        assert table is not None
        assert comparable(table)["partitions"] == comparable(source["table"])["partitions"]
        for key in ("label", "id", "firstlba", "sectorsize"):
            assert table[key] == source["table"][key]
        fs = {s.partition_number: (s.fs_type, s.label) for s in img.streams}
        assert fs == {1: ("vfat", "ESP"), 2: ("ext4", "ROOT"), 3: ("xfs", "XDATA")}
        for n, (start, size) in source["parts"].items():
            stream = img.manifest.partition_stream(n)
            assert stream is not None
            assert (stream.start_bytes, stream.size_bytes) == (start, size)
        assert img.manifest.source_disk["model"] == f"{fmt} virtual disk"
        assert img.manifest.source_disk["logical_sector_size"] == 512
        assert len(img.manifest.manifest_blake3) == 64
        assert img.integrity.code == "none" and not img.integrity.checked_at_source
        assert img.describe().startswith(qemu.FORMAT_WORDS[fmt])
        assert "VM disk" in img.describe() and "virtual" in img.describe()
    # nothing was written to any file of the image
    after = {p: (sha256_file(p), os.stat(p).st_mtime_ns) for p in path.parent.iterdir()}
    assert after == before


def test_compressed_clusters_are_described(images: dict[str, Path]) -> None:
    with open_image(images["qcow2-compressed"]) as img:
        assert img.describe().startswith("qcow2 VM disk, 104.0 MiB virtual, compressed clusters")
        assert "qemu-img check" in img.integrity.words
    with open_image(images["qcow2"]) as img:
        assert "compressed" not in img.describe()
    with open_image(images["vmdk-streamOptimized"]) as img:
        assert "streamOptimized" in img.describe() and "compressed" in img.describe()


def test_random_access_and_threads(images: dict[str, Path], source: dict[str, Any]) -> None:
    raw = source["path"].read_bytes()
    import random

    rnd = random.Random(7)
    with open_image(images["qcow2-compressed"]) as img:
        for _ in range(40):  # unaligned, across extent boundaries, backwards
            off = rnd.randrange(0, source["size"] - 1)
            n = rnd.randrange(1, min(9 * MiB, source["size"] - off))
            buf = bytearray(n)
            img.read_into(off, memoryview(buf))
            assert buf == raw[off : off + n]
        errors: list[BaseException] = []

        def reader(seed: int) -> None:
            r = random.Random(seed)
            try:
                for _ in range(30):
                    off = r.randrange(0, source["size"] - 4 * MiB)
                    buf = bytearray(4 * MiB)
                    img.read_into(off, memoryview(buf))
                    assert buf == raw[off : off + 4 * MiB]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with pytest.raises(CorruptImageError, match="past the end"):
            img.read_into(img.extent_bytes - 10, memoryview(bytearray(20)))


def test_direct_reads_that_differ_from_qemu_are_not_used(
    images: dict[str, Path], source: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sample of places is read both ways at open; one difference: all through QEMU."""

    def garbled(self: QemuImage, p: Any, i: int, pos: int, view: memoryview) -> None:
        view[:] = b"\x5a" * len(view)

    monkeypatch.setattr(QemuImage, "_pread", garbled)
    with open_image(images["qcow2"]) as img:
        assert not img.direct_reads
        assert hashlib.sha256(read_all(img)[: source["size"]]).hexdigest() == source["sha256"]


def test_segments_through_the_decoder(images: dict[str, Path], source: dict[str, Any]) -> None:
    """The engine's path: segment table + decoder, one partition and the whole disk."""
    raw = source["path"].read_bytes()
    with open_image(images["vdi"]) as img:
        table = img.segment_table()
        dec = img.decoder(table)
        out = bytearray(img.extent_bytes)
        buf = bytearray(table.max_chunk())
        for i in range(len(table)):
            seg = table[i]
            if seg.zero:
                continue
            view = dec.decode(seg, memoryview(buf))
            if view is not None:  # None: the piece read as zeros (``out`` holds zeros)
                out[seg.disk_offset : seg.disk_offset + seg.length] = view
            assert table[i].blake3  # recorded as read, for the read-back
        assert out[: source["size"]] == raw
        start, size = source["parts"][2]
        part = img.segment_table(2)
        assert part.total_bytes == size
        got = bytearray(size)
        for i in range(len(part)):
            seg = part[i]
            view = None if seg.zero else img.decoder(part).decode(seg, memoryview(buf))
            if view is not None:
                got[seg.disk_offset : seg.disk_offset + seg.length] = view
        assert got == raw[start : start + size]


def test_dos_table_with_a_logical_partition(tmp_path: Path) -> None:
    """The EBR chain lies outside the first MiB: the probe file follows it."""
    disk = make_disk(tmp_path / "src", label="dos")
    img_path = tmp_path / "dos.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk.path, img_path)
    with open_image(img_path) as img:
        table = img.manifest.partition_table
        assert table is not None and table["label"] == "dos"
        assert comparable(table)["partitions"] == comparable(sfdisk_json(disk.path))["partitions"]
        fs = {s.partition_number: s.fs_type for s in img.streams}
        assert fs[1] == "vfat" and fs[5] == "ext4"
        assert hashlib.sha256(read_all(img)).hexdigest() == sha256_file(disk.path)


def test_disk_without_a_table(tmp_path: Path) -> None:
    raw = tmp_path / "plain.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(3 * MiB)
        f.write(os.urandom(MiB))
    img_path = tmp_path / "plain.vdi"
    run("qemu-img", "convert", "-f", "raw", "-O", "vdi", raw, img_path)
    with open_image(img_path) as img:
        assert img.manifest.partition_table is None
        assert img.streams == []
        assert read_all(img) == raw.read_bytes()


# ------------------------------------------------------------------ backing files


def _overlay(tmp_path: Path, source: dict[str, Any]) -> tuple[Path, Path, bytes]:
    """base.qcow2 in another folder, overlay.qcow2 on it with 64 KiB changed at 20 MiB."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = elsewhere / "base.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", source["path"], base)
    vm = tmp_path / "vm"
    vm.mkdir()
    overlay = vm / "overlay.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 20M 64k", overlay)
    expect = bytearray(source["path"].read_bytes())
    expect[20 * MiB : 20 * MiB + 65536] = b"\xab" * 65536
    return base, overlay, bytes(expect)


def test_missing_backing_file_is_refused_by_name(tmp_path: Path, source: dict[str, Any]) -> None:
    _base, overlay, _ = _overlay(tmp_path, source)
    with pytest.raises(ImageError) as exc:
        open_image(overlay)
    msg = str(exc.value)
    assert "backing file" in msg and "base.qcow2" in msg and str(overlay) in msg
    assert "next to the image" in msg


def test_backing_file_next_to_the_image_is_used_read_only(
    tmp_path: Path, source: dict[str, Any]
) -> None:
    base, overlay, expect = _overlay(tmp_path, source)
    beside = overlay.parent / "base.qcow2"
    shutil.copy2(base, beside)
    shutil.rmtree(base.parent)  # the recorded path no longer exists
    before = {p: (sha256_file(p), os.stat(p).st_mtime_ns) for p in (overlay, beside)}
    with open_image(overlay) as img:
        assert "on backing file base.qcow2" in img.describe()
        assert bytes(read_all(img)) == expect
        assert [layer.path for layer in img.chain] == [overlay, beside]
        assert img.check().ok
    after = {p: (sha256_file(p), os.stat(p).st_mtime_ns) for p in (overlay, beside)}
    assert after == before


def test_backing_file_recorded_elsewhere_is_not_used(
    tmp_path: Path, source: dict[str, Any]
) -> None:
    """The recorded path exists, but only a file next to the image may be used."""
    _base, overlay, _ = _overlay(tmp_path, source)
    with pytest.raises(ImageError, match="not in the image's folder"):
        open_image(overlay)


def test_backing_file_that_is_a_symlink_is_refused(tmp_path: Path, source: dict[str, Any]) -> None:
    base, overlay, _ = _overlay(tmp_path, source)
    (overlay.parent / "base.qcow2").symlink_to(base)
    with pytest.raises(ImageError, match="symbolic link"):
        open_image(overlay)


def test_network_backing_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "net.qcow2"
    run(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "nbd://host/x",
        "-F",
        "raw",
        img,
        "64M",
    )
    with pytest.raises(ImageError, match="not a file"):
        open_image(img)


def test_vmdk_extent_outside_the_folder_is_refused(tmp_path: Path, images: dict[str, Path]) -> None:
    src = images["vmdk-twoGbMaxExtentSparse"]
    folder = tmp_path / "vm"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    desc = src.read_text(errors="replace")
    extent = next(p for p in src.parent.iterdir() if p != src)
    shutil.copy(extent, elsewhere / extent.name)
    (folder / src.name).write_text(desc.replace(f'"{extent.name}"', f'"{elsewhere / extent.name}"'))
    with pytest.raises(ImageError, match="not in the image's folder"):
        open_image(folder / src.name)


# ------------------------------------------------------------------ damaged files


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "vpc-fixed"])
def test_truncated_image_is_refused_by_name(
    variant: str, images: dict[str, Path], tmp_path: Path
) -> None:
    src = images[variant]
    folder = tmp_path / variant
    shutil.copytree(src.parent, folder)
    victim = max(folder.iterdir(), key=lambda p: p.stat().st_size)  # vmdk: the extent file
    size = victim.stat().st_size
    with open(victim, "r+b") as f:
        f.truncate(size * 6 // 10)
    t = time.monotonic()
    with pytest.raises(ImageError) as exc:
        with open_image(folder / src.name) as img:
            read_all(img)  # some damage only shows when the data is read
    assert time.monotonic() - t < 60
    assert str(folder) in str(exc.value)


@pytest.mark.parametrize("variant", ["qcow2", "vmdk-monolithicSparse", "vhdx", "vdi", "vpc"])
def test_garbled_header_is_refused_by_name(
    variant: str, images: dict[str, Path], tmp_path: Path
) -> None:
    src = images[variant]
    bad = tmp_path / src.name
    shutil.copy(src, bad)
    data = bytearray(bad.read_bytes())
    if variant == "vpc":  # the footer is at the end (the copy at the start too)
        data[-500:] = os.urandom(500)
        data[8:512] = os.urandom(504)
    elif variant == "vdi":
        data[0x40 + 4 : 0x200] = os.urandom(0x200 - 0x44)
    elif variant == "vhdx":  # the headers and region tables at 64 KiB .. 256 KiB
        data[65536 : 4 * 65536] = os.urandom(3 * 65536)
    else:
        data[8:4096] = os.urandom(4088)
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageError) as exc:
        with open_image(bad) as img:
            read_all(img)
    assert str(bad) in str(exc.value)


def test_only_the_magic_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "fake.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\x00" * 60 + os.urandom(1000))
    with pytest.raises(ImageError) as exc:
        open_image(bad)
    assert str(bad) in str(exc.value)


def test_truncated_qcow2_tables_are_refused(images: dict[str, Path], tmp_path: Path) -> None:
    """QEMU reads tables past the end of the file as zeros: a disk of holes, not an error."""
    bad = tmp_path / "cut.qcow2"
    with open(images["qcow2"], "rb") as f:
        bad.write_bytes(f.read(100_000))
    with pytest.raises(CorruptImageError, match="truncated"):
        open_image(bad)


# ------------------------------------------------------------------ verify


@pytest.mark.parametrize("variant", ["qcow2", "vmdk-monolithicSparse", "vhdx", "vdi", "vpc"])
def test_check(variant: str, images: dict[str, Path]) -> None:
    with open_image(images[variant]) as img:
        r = img.check()
        if variant == "vpc":
            assert not r.supported and r.ok
        else:
            assert r.supported and r.ok and r.corruptions == 0 and r.check_errors == 0
            assert "no problem" in r.words


# ------------------------------------------------------------------ helpers and cleanup


def test_close_leaves_nothing_and_refuses_reads(images: dict[str, Path]) -> None:
    img = open_image(images["qcow2"])
    assert our_helpers() and our_folders()
    img.close()
    assert our_helpers() == [] and our_folders() == []
    with pytest.raises(ImageError, match="closed"):
        img.read_into(0, memoryview(bytearray(512)))
    img.close()  # twice is fine


def test_a_killed_run_leaves_no_helper_and_is_swept(
    images: dict[str, Path], tmp_path: Path
) -> None:
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        from rescueui.core.images.source import open_image
        img = open_image({str(images["qcow2"])!r})
        print(img._res.folder, img._res.proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(), timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    folder, pid = proc.stdout.split()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state == "Z":
            break
        time.sleep(0.05)
    else:
        os.kill(int(pid), signal.SIGKILL)
        pytest.fail("qemu-nbd outlived the program that started it")
    assert Path(folder).exists()  # the dead run could not remove it ...
    with open_image(images["vdi"]):
        pass
    assert not Path(folder).exists()  # ... the next open sweeps it


def test_sweep_keeps_live_folders(images: dict[str, Path]) -> None:
    with open_image(images["qcow2"]) as img:
        sweep_stale()
        assert img._res.folder is not None and img._res.folder.exists()
        assert len(read_all(img)) == img.extent_bytes


def test_helper_that_dies_is_reported(images: dict[str, Path]) -> None:
    with open_image(images["vhdx"]) as img:  # vhdx: every byte is read through QEMU
        assert not img.direct_reads
        proc = img._res.proc
        assert proc is not None
        proc.kill()
        proc.wait()
        with pytest.raises(ImageError, match=str(images["vhdx"])):
            img.read_into(0, memoryview(bytearray(MiB)))


def test_hung_tool_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "qemu-img"
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(qemu, "INFO_TIMEOUT", 1.0)
    img = tmp_path / "x.qcow2"
    img.write_bytes(b"QFI\xfb" + bytes(1000))
    t = time.monotonic()
    with pytest.raises(ImageError, match="did not finish"):
        qemu.resolve_chain(str(fake), img, "qcow2")
    assert time.monotonic() - t < 10


# ------------------------------------------------------------------ the map, untrusted


def _fake_map(tmp_path: Path, lines: list[str], *, rc: int = 0) -> str:
    out = tmp_path / "map.out"
    out.write_text("\n".join(lines) + "\n")
    fake = tmp_path / "fake-qemu-img"
    fake.write_text(f"#!/bin/sh\ncat {out}\nexit {rc}\n")
    fake.chmod(0o755)
    return str(fake)


def _chain(tmp_path: Path, size: int = 10 * MiB) -> list[qemu._Layer]:
    f = tmp_path / "img.qcow2"
    f.write_bytes(bytes(4096))
    st = os.stat(f)
    return [qemu._Layer(f, "qcow2", {"virtual-size": size}, st.st_size, st)]


def entry(start: int, length: int, data: bool, **kw: Any) -> str:
    d = {"start": start, "length": length, "depth": 0, "present": data, "zero": not data}
    d["data"] = data
    d.update(kw)
    return json.dumps(d) + ","


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ([entry(0, MiB, True), entry(2 * MiB, 8 * MiB, False)], "skips or repeats"),
        ([entry(0, 2 * MiB, True), entry(MiB, 9 * MiB, False)], "skips or repeats"),
        ([entry(0, 11 * MiB, True)], "outside the disk"),
        ([entry(0, 5 * MiB, True)], "ends at byte"),
        ([entry(0, 0, True)], "outside the disk"),
        (['{"start": "0", "length": 1}'], "without numbers"),
        ([entry(0, 10 * MiB, True, depth=3)], "backing file that is not there"),
        ([entry(0, 10 * MiB, True, offset=-5)], "bad file offset"),
        (["not json"], "could not be read"),
        (["[" + "x" * 10000], "too long"),
    ],
)
def test_hostile_map_is_refused(tmp_path: Path, lines: list[str], why: str) -> None:
    fake = _fake_map(tmp_path, ["[", *lines, "]"])
    with pytest.raises(CorruptImageError, match=why):
        read_map(fake, tmp_path / "img.qcow2", _chain(tmp_path), 10 * MiB)


def test_map_data_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    fake = _fake_map(
        tmp_path, ["[", entry(0, MiB, True, offset=0), entry(MiB, 9 * MiB, False) + "]"]
    )
    with pytest.raises(CorruptImageError, match="truncated"):
        read_map(fake, tmp_path / "img.qcow2", _chain(tmp_path), 10 * MiB)


def test_map_merges_and_absorbs_small_zero_runs(tmp_path: Path) -> None:
    size = 10 * MiB
    lines = [
        entry(0, 4096, True),
        entry(4096, 61440, False),  # 60 KiB hole: read as data
        entry(65536, 66048, True),
        entry(131584, 512, False),  # a long zero run with an unaligned start ...
        entry(132096, 3 * MiB - 132096, False, present=True),  # ... in two pieces
        entry(3 * MiB, 7 * MiB, True),
    ]
    fake = _fake_map(tmp_path, ["[", *lines, "]"])
    got = read_map(fake, tmp_path / "img.qcow2", _chain(tmp_path, size), size)
    assert got.extents == [
        (0, 135168, True),  # up to the next 4 KiB boundary
        (135168, 3 * MiB - 135168, False),
        (3 * MiB, 7 * MiB, True),
    ]
    assert got.data_bytes == 4096 + 66048 + 7 * MiB


def test_coalescer_bounds_the_number_of_extents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "MAX_EXTENTS", 100)
    size = 1000 * 2 * MiB
    co = _Coalescer(size)
    for i in range(1000):  # alternating 1 MiB data, 1 MiB zero: 2000 extents
        co.add(i * 2 * MiB, i * 2 * MiB + MiB, True)
        co.add(i * 2 * MiB + MiB, (i + 1) * 2 * MiB, False)
    ext = co.finish()
    assert len(ext) <= 100
    assert sum(n for _, n, _ in ext) == size
    assert ext[0][0] == 0


def test_extents_are_seam_extents(images: dict[str, Path]) -> None:
    with open_image(images["vdi"]) as img:
        assert all(isinstance(e, Extent) for e in img.extents())
        assert {e.kind for e in img.extents()} == {"data", "zero"}


# ------------------------------------------------------------------ the NBD client


def test_nbd_client_refuses_a_writable_export(tmp_path: Path) -> None:
    """A server that offers a writable export is not used (a fake server, one connection)."""
    import socket

    sock_path = str(tmp_path / "s.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(sock_path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"NBDMAGICIHAVEOPT" + struct.pack(">H", 3))
            conn.recv(4)
            head = conn.recv(16)
            (length,) = struct.unpack(">I", head[12:16])
            conn.recv(length)
            info = struct.pack(">HQH", 0, 1 * MiB, 1)  # HAS_FLAGS, not READ_ONLY
            conn.sendall(struct.pack(">QIII", qemu.NBD_REPLY_MAGIC, 7, 3, len(info)) + info)
            conn.sendall(struct.pack(">QIII", qemu.NBD_REPLY_MAGIC, 7, 1, 0))
            conn.recv(100)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with pytest.raises(qemu.NbdError, match="not read-only"):
            qemu.NbdConnection(sock_path, timeout=5)
    finally:
        t.join(timeout=5)
        srv.close()


def test_errors_are_rescue_errors() -> None:
    assert issubclass(CorruptImageError, RescueError)


# ------------------------------------------------------------------ restore, end to end


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))


def _copy_image(images: dict[str, Path], variant: str, tmp_path: Path) -> Path:
    """A private copy (reports are written next to the image)."""
    folder = tmp_path / "image"
    shutil.copytree(images[variant].parent, folder)
    return folder / images[variant].name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_restore_each_format_onto_a_file(
    variant: str, images: dict[str, Path], source: dict[str, Any], tmp_path: Path
) -> None:
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore

    path = _copy_image(images, variant, tmp_path)
    with open_image(path) as img:
        vsize = img.extent_bytes
    target = tmp_path / "target.img"
    _random_file(target, vsize)
    code = confirmation_code(identity_of(target))
    plan = plan_restore(path, confirm_target(target, code), accept_warnings=True)
    report = restore(plan)
    assert report.outcome == "success", report.error
    assert sha256_file(target, source["size"]) == source["sha256"]
    with open(target, "rb") as f:
        f.seek(source["size"])
        assert not any(f.read())  # vpc's rounded-up size: zeros, not the random bytes
    fmt = VARIANTS[variant][0]
    assert report.details["image_kind"] == "vm-disk"
    assert report.details["image_description"].startswith(qemu.FORMAT_WORDS[fmt])
    # what was verified, and nothing more: no source checksums, a full read-back
    assert any("carries no checksums" in n for n in report.notes)
    assert all(s["status"] == "written and read back" for s in report.streams)
    assert report.phases["verify"]["bytes"] == vsize
    assert list((path.parent / "reports").glob("restore-*.json"))


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["qcow2-compressed", "vmdk-streamOptimized"])
def test_restore_onto_a_larger_loop_disk(
    variant: str, images: dict[str, Path], source: dict[str, Any], tmp_path: Path, loops: Any
) -> None:
    """A larger random-filled loop disk: the table fitted, the last partition grown, every
    filesystem clean and the files equal."""
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore

    path = _copy_image(images, variant, tmp_path)
    disk = loops.create(160, fill="random")
    code = confirmation_code(identity_of(disk.path))
    plan = plan_restore(path, confirm_target(disk.path, code), accept_warnings=True)
    report = restore(plan)
    assert report.outcome == "success", report.error
    disk.rescan()
    start, size = source["parts"][2]
    with open(disk.path, "rb") as f:  # p2 is byte-identical (p3 was grown)
        f.seek(start)
        got = hashlib.sha256(f.read(size)).hexdigest()
    with open(source["path"], "rb") as f:
        f.seek(start)
        assert got == hashlib.sha256(f.read(size)).hexdigest()
    run("fsck.vfat", "-n", disk.part(1))
    run("e2fsck", "-fn", disk.part(2))
    run("xfs_repair", "-n", disk.part(3))
    table = sfdisk_json(Path(disk.path))
    assert table["partitions"][2]["size"] > source["parts"][3][1] // 512  # grown
    mnt = tmp_path / "mnt"
    disk.mount(2, mnt, options="ro")
    try:
        for f in source["content"].rglob("*"):
            if f.is_file():
                assert (mnt / f.relative_to(source["content"])).read_bytes() == f.read_bytes()
    finally:
        disk.umount_all()
    mnt3 = tmp_path / "mnt3"
    disk.mount(3, mnt3, options="ro")
    try:
        for f in source["content"].iterdir():
            if f.is_file():
                assert (mnt3 / f.name).read_bytes() == f.read_bytes()
    finally:
        disk.umount_all()


@pytest.mark.root
def test_zero_clusters_stored_as_data_are_made_zero_not_written(
    source: dict[str, Any], tmp_path: Path, loops: Any
) -> None:
    """A qcow2 made without sparse detection (``-S 0``) stores the disk's zero blocks as
    data clusters: QEMU maps every byte as data. The restore finds the 4 MiB pieces that
    read as zeros and makes them zero with the zero calls instead of writing them; the
    random-filled loop disk reads back identical and the read-back verify passes."""
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.images.source import SEGMENT
    from rescueui.core.restore import plan_restore, restore

    folder = tmp_path / "image"
    folder.mkdir()
    path = folder / "allocated.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-S", "0", source["path"], path)
    raw = source["path"].read_bytes()
    size = len(raw)
    zero_pieces = [
        a
        for a in range(0, size, SEGMENT)
        if raw[a : a + SEGMENT] == bytes(len(raw[a : a + SEGMENT]))
    ]
    zero_bytes = sum(min(SEGMENT, size - a) for a in zero_pieces)
    assert zero_pieces, "the source disk should hold whole zero pieces"
    with open_image(path) as img:
        assert [(e.start, e.length, e.kind) for e in img.extents()] == [(0, size, "data")]
    disk = loops.create(-(-size // MiB), fill="random")
    plan = plan_restore(
        path,
        confirm_target(disk.path, confirmation_code(identity_of(disk.path))),
        accept_warnings=True,
    )
    # no checkpoint inside the disk (each one ends the pending zero run with its call)
    report = restore(dataclasses.replace(plan, checkpoint_bytes=2 * size))
    assert report.outcome == "success", report.error
    with open(disk.path, "rb") as f:
        assert f.read(size) == raw
    d = report.details
    assert d["zero_found_segments"] == len(zero_pieces)
    assert d["zero_found_bytes"] == zero_bytes
    assert d["data_bytes_written"] == size - zero_bytes
    runs = sum(1 for i, a in enumerate(zero_pieces) if i == 0 or zero_pieces[i - 1] != a - SEGMENT)
    assert d["zero_range_calls"] == runs  # one call per run of zero pieces
    assert report.phases["verify"]["bytes"] == size
