"""Clonezilla image folders: rescueui/core/images/clonezilla.py and partclone.py.

The folders are made with the commands ``ocs-sr savedisk`` runs (tests/clonezillafixtures.py:
``sfdisk -d``, ``parted``, ``dd`` of the MBR, of the post-MBR gap and of both GPTs,
``partclone.<fs> -c | <compressor> | split``), never with ``ocs-sr`` itself. The partclone
reader is compared with ``partclone.restore`` byte for byte; restores go onto random-filled
files (no root) and loop disks (root).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescueui.core.errors import CorruptImageError, ImageError, UnsupportedImageError
from rescueui.core.images import partclone
from rescueui.core.images.source import open_image
from tests.clonezillafixtures import make_source_disk, save_disk

MiB = 1024 * 1024
TOOLS = ("partclone.ext4", "partclone.xfs", "partclone.vfat", "partclone.dd", "partclone.restore")
TOOLS += (
    "sfdisk",
    "parted",
    "mkfs.xfs",
    "mkfs.vfat",
    "mcopy",
    "mkswap",
    "zstd",
    "lz4",
    "lzip",
    "blkid",
)


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


pytestmark = pytest.mark.skipif(
    not all(_which(t) for t in TOOLS),
    reason="needs partclone, sfdisk, parted, mkfs.xfs, mkfs.vfat, mtools, mkswap, zstd, lz4, "
    "lzip, blkid",
)


def run(*cmd: str | Path, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, **kw)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[-1500:]}"
        )
    return proc


@pytest.fixture(scope="module")
def gpt_src(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_source_disk(tmp_path_factory.mktemp("cz-gpt"), label="gpt")


@pytest.fixture(scope="module")
def dos_src(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_source_disk(tmp_path_factory.mktemp("cz-dos"), label="dos")


@pytest.fixture(scope="module")
def gpt_folder(gpt_src: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zstd split into 1 MiB volumes, p1 saved by partclone.dd (gzip), source named nvme0n1."""
    root = tmp_path_factory.mktemp("cz-gpt-img")
    return save_disk(
        gpt_src,
        root / "2026-11-30-img",
        dev="nvme0n1",
        split_bytes=1 * MiB,
        dd_parts=(1,),
        comp_for={1: "gz"},
    )


def _copy(folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / folder.name
    shutil.copytree(folder, dest)
    return dest


def _read_disk(img: Any, out: Path) -> None:
    table = img.segment_table()
    dec = img.decoder(table)
    buf = memoryview(bytearray(table.max_chunk()))
    with open(out, "wb") as f:
        f.truncate(img.extent_bytes)
        for i in range(len(table)):
            seg = table[i]
            if seg.zero:
                continue
            v = dec.decode(seg, buf)
            if v is not None:
                f.seek(seg.disk_offset)
                f.write(v)
    dec.close()


def partclone_restore(image: Path, out: Path, size: int) -> None:
    """``partclone.restore`` into a new zero-filled (sparse) file of the partition's size
    (it does not always create its output file itself)."""
    with open(out, "wb") as f:
        f.truncate(size)
    run("partclone.restore", "-q", "-C", "-s", image, "-O", out)
    os.truncate(out, size)


def _sha(path: Path, start: int = 0, size: int | None = None) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        return hashlib.sha256(f.read(size if size is not None else -1)).hexdigest()


# ------------------------------------------------------------------ the partclone reader


@pytest.mark.parametrize(
    ("fs", "opts"),
    [("ext4", ["-a", "1"]), ("xfs", ["-a", "1", "-k", "7"]), ("vfat", ["-a", "0"])],
)
def test_reader_is_byte_identical_to_partclone_restore(
    fs: str, opts: list[str], gpt_src: Any, tmp_path: Path
) -> None:
    n = {"vfat": 1, "ext4": 2, "xfs": 3}[fs]
    start, size, _ = gpt_src.parts[n]
    part = tmp_path / "part"
    run("dd", f"if={gpt_src.path}", f"of={part}", "bs=1M", f"skip={start // MiB}",
        f"count={size // MiB}", "status=none")  # fmt: skip
    image = tmp_path / "p.ptcl"
    run(f"partclone.{fs}", "-q", "-c", *opts, "-s", part, "-o", image)
    want = tmp_path / "want"
    partclone_restore(image, want, size)
    with open(image, "rb") as f:
        h = partclone.parse_header(f.read(partclone.HEADER_SIZE), "p.ptcl")
        bits = partclone.read_bitmap(f, h, "p.ptcl")  # type: ignore[arg-type]
        reader = partclone.BlockReader(f, h, bits, "p.ptcl")  # type: ignore[arg-type]
        got = bytearray(size)
        step = 3 * MiB  # not a multiple of the strip: strips span reads
        bs = h.block_size
        for off in range(0, h.total_blocks * bs, step):
            n_ = min(step, h.total_blocks * bs - off)
            reader.read_blocks(off // bs, memoryview(got)[off : off + n_])
        reader.finish()
    assert hashlib.sha256(got).hexdigest() == _sha(want)
    assert h.used_in_bitmap > 0 and (h.checksum_mode != 0) == ("0" not in opts)


def _to_xxh128(src: bytes) -> bytes:
    """A CRC32 partclone image rewritten as partclone 0.3.2x with ``-a3`` writes it (XXH128
    strips, as Clonezilla saves by default), built from the blocks independently of the
    reader under test. The partclone here has no xxhash support to write one itself."""
    import xxhash

    head = bytearray(src[:110])
    total, used, bs = (
        struct.unpack_from("<Q", head, 60)[0],
        struct.unpack_from("<Q", head, 76)[0],
        struct.unpack_from("<I", head, 84)[0],
    )
    bpc = struct.unpack_from("<I", head, 100)[0]
    struct.pack_into("<HH", head, 96, 0x31, 16)
    struct.pack_into("<I", head, 106, ~zlib.crc32(bytes(head[:106])) & 0xFFFFFFFF)
    bm = (total + 7) // 8 + 4
    out = [bytes(head), src[110 : 110 + bm]]
    pos = 110 + bm
    left = used
    while left:
        k = min(bpc, left)
        data = src[pos : pos + k * bs]
        out += [data, xxhash.xxh3_128(data).intdigest().to_bytes(16, "little")]
        pos += k * bs + 4
        left -= k
    return b"".join(out)


def test_xxh128_strips_are_checked(gpt_src: Any, tmp_path: Path) -> None:
    start, size, _ = gpt_src.parts[2]
    part = tmp_path / "part"
    run("dd", f"if={gpt_src.path}", f"of={part}", "bs=1M", f"skip={start // MiB}",
        f"count={size // MiB}", "status=none")  # fmt: skip
    crc = tmp_path / "crc.ptcl"
    run("partclone.ext4", "-q", "-c", "-a", "1", "-s", part, "-o", crc)
    data = _to_xxh128(crc.read_bytes())
    want = tmp_path / "want"
    partclone_restore(crc, want, size)

    def read(blob: bytes) -> bytes:
        import io

        f = io.BytesIO(blob)
        h = partclone.parse_header(f.read(110), "x.ptcl")
        assert h.checksum_name == "XXH128"
        bits = partclone.read_bitmap(f, h, "x.ptcl")  # type: ignore[arg-type]
        r = partclone.BlockReader(f, h, bits, "x.ptcl")  # type: ignore[arg-type]
        out = bytearray(h.total_blocks * h.block_size)
        r.read_blocks(0, memoryview(out))
        r.finish()
        return bytes(out[:size])

    assert hashlib.sha256(read(data)).hexdigest() == _sha(want)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x01
    with pytest.raises(CorruptImageError, match="XXH128 of used blocks"):
        read(bytes(bad))


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=1, max_size=40),
    st.integers(min_value=0, max_value=320),
    st.integers(min_value=0, max_value=320),
)
def test_used_runs_match_the_bits(bits: bytes, a: int, b: int) -> None:
    total = len(bits) * 8
    a, b = min(a, total), min(b, total)
    want = []
    run_start = None
    for i in range(a, max(a, b)):
        used = bits[i >> 3] >> (i & 7) & 1
        if used and run_start is None:
            run_start = i
        if not used and run_start is not None:
            want.append((run_start, i))
            run_start = None
    if run_start is not None:
        want.append((run_start, b))
    assert list(partclone.used_runs(bits, a, b)) == want
    # data_ranges covers every used block
    ranges = partclone.data_ranges(bits, total, 16)
    for i in range(total):
        if bits[i >> 3] >> (i & 7) & 1:
            assert any(x <= i < y for x, y in ranges)


def test_garbled_header_is_refused(tmp_path: Path) -> None:
    head = bytearray(b"partclone-image\0" + b"0.3.23".ljust(14, b"\0") + b"0002" + b"\xc0\xde")
    head += bytes(110 - len(head))
    with pytest.raises(UnsupportedImageError, match="big-endian"):
        partclone.parse_header(bytes(head), "x")
    struct.pack_into("<H", head, 34, 0xC0DE)
    with pytest.raises(CorruptImageError, match="CRC32"):
        partclone.parse_header(bytes(head), "x")
    head[30:34] = b"0001"
    with pytest.raises(UnsupportedImageError, match="format 0001"):
        partclone.parse_header(bytes(head), "x")


# ------------------------------------------------------------------ the folder


def test_folder_is_read_as_one_disk(gpt_folder: Path, gpt_src: Any, tmp_path: Path) -> None:
    """The whole disk read through the seam: table areas equal the source, each partition
    byte-identical to what partclone.restore makes, the swap header the same."""
    out = tmp_path / "out.img"
    with open_image(gpt_folder) as img:
        assert img.kind == "clonezilla"
        words = img.describe()
        assert "savedisk of nvme0n1, GPT, 3 partition images" in words
        assert "swap nvme0n1p4 made anew by mkswap" in words
        assert img.integrity.code == "block-checksums"
        assert "nvme0n1p1 carries none" in img.integrity.words  # the dd stream
        assert img.manifest.host["cpus"] == 32
        assert img.manifest.host["memory_bytes"] == 64 << 30
        assert img.manifest.host["dmi_product"] == "PowerEdge R640"
        assert len(img.manifest.host["nics"]) == 2
        assert [s.partition_number for s in img.streams] == [1, 2, 3, 4]
        # from blkid.list (p1 was saved as dd, p4 is swap) and the stream names
        assert [(s.fs_type, s.label) for s in img.streams] == [
            ("vfat", "ESP"),
            ("ext4", "rootfs"),
            ("xfs", "data"),
            ("swap", "swap0"),
        ]
        _read_disk(img, out)
    src = gpt_src.path
    assert _sha(out, 0, MiB) == _sha(src, 0, MiB)  # boot code, both GPT headers/entries
    assert _sha(out, gpt_src.size - 33 * 512) == _sha(src, gpt_src.size - 33 * 512)
    start, size, _ = gpt_src.parts[1]
    assert _sha(out, start, size) == _sha(src, start, size)  # the dd stream
    start, size, _ = gpt_src.parts[4]
    assert _sha(out, start, 4096) == _sha(src, start, 4096)  # mkswap: same UUID and label
    for n in (2, 3):
        start, size, fs = gpt_src.parts[n]
        vols = sorted(gpt_folder.glob(f"nvme0n1p{n}.{fs}-ptcl-img.zst.*"))
        assert len(vols) > 1  # split into volumes
        want = tmp_path / f"want{n}"
        stream = tmp_path / f"stream{n}"
        with open(stream, "wb") as out_f:  # what cat vols | zstd -dc gives
            subprocess.run(
                f"cat {' '.join(map(str, vols))} | zstd -dc",
                shell=True,
                check=True,
                stdout=out_f,
            )
        partclone_restore(stream, want, size)
        assert _sha(out, start, size) == _sha(want)


def test_dos_folder_keeps_hidden_data_and_logical_partitions(dos_src: Any, tmp_path: Path) -> None:
    folder = save_disk(dos_src, tmp_path / "img", comp="xz", comp_for={5: "lz4", 1: "lzip"})
    out = tmp_path / "out.img"
    with open_image(folder) as img:
        assert (img.manifest.partition_table or {})["label"] == "dos"
        assert {s.partition_number for s in img.streams} >= {1, 5, 6}
        _read_disk(img, out)
    # boot code, table, the 63 sectors after the MBR, the EBRs of the logical partitions
    assert _sha(out, 0, MiB) == _sha(dos_src.path, 0, MiB)
    got = run("sfdisk", "-d", out).stdout.decode().replace(str(out), "D")
    assert got == run("sfdisk", "-d", dos_src.path).stdout.decode().replace(str(dos_src.path), "D")


def test_restore_onto_a_random_file(gpt_folder: Path, gpt_src: Any, tmp_path: Path) -> None:
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore

    folder = _copy(gpt_folder, tmp_path)
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.write(os.urandom(gpt_src.size))
    code = confirmation_code(identity_of(target))
    report = restore(plan_restore(folder, confirm_target(target, code), accept_warnings=True))
    assert report.outcome == "success", report.error
    assert report.details["image_kind"] == "clonezilla"
    assert "partclone's CRC32" in report.details["source_checks"]
    text = report.to_text()
    assert "Kind:" in text and "Clonezilla image" in text
    assert _sha(target, 0, MiB) == _sha(gpt_src.path, 0, MiB)
    ids = ["sfdisk", "-d", target]
    assert run(*ids).stdout.decode().replace(str(target), "D") == run(
        "sfdisk", "-d", gpt_src.path
    ).stdout.decode().replace(str(gpt_src.path), "D")
    for n in (1, 2, 3, 4):
        start = gpt_src.parts[n][0]
        for tag in ("UUID", "LABEL", "TYPE"):
            want = run("blkid", "-p", "-o", "value", "-s", tag, "-O", str(start), gpt_src.path)
            got = run("blkid", "-p", "-o", "value", "-s", tag, "-O", str(start), target)
            assert got.stdout == want.stdout, (n, tag)
    start, size, _ = gpt_src.parts[2]
    part = tmp_path / "p2"
    run("dd", f"if={target}", f"of={part}", "bs=1M", f"skip={start // MiB}",
        f"count={size // MiB}", "status=none")  # fmt: skip
    run("e2fsck", "-fn", part)
    start, size, _ = gpt_src.parts[3]
    run("dd", f"if={target}", f"of={part}", "bs=1M", f"skip={start // MiB}",
        f"count={size // MiB}", "status=none")  # fmt: skip
    run("xfs_repair", "-n", "-f", part)


def test_damaged_stream_fails_and_nothing_is_reported_good(gpt_src: Any, tmp_path: Path) -> None:
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore

    folder = save_disk(gpt_src, tmp_path / "img", comp="uncomp", dd_parts=(1,))
    vol = next(folder.glob("sda2.ext4-ptcl-img.uncomp"))
    data = bytearray(vol.read_bytes())
    data[len(data) // 2] ^= 0xFF
    vol.write_bytes(bytes(data))
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.truncate(gpt_src.size)
    code = confirmation_code(identity_of(target))
    with pytest.raises(CorruptImageError) as caught:
        restore(plan_restore(folder, confirm_target(target, code), accept_warnings=True))
    report = caught.value.report  # type: ignore[attr-defined]
    assert report.outcome == "failed"
    assert "sda2.ext4-ptcl-img.uncomp" in (report.error or "")
    assert "CRC32 of used blocks" in (report.error or "")
    assert not any(s["status"].startswith("written and") for s in report.streams)
    with pytest.raises(CorruptImageError, match=r"sda2\.ext4-ptcl-img\.uncomp"):
        with open_image(folder) as img:
            img.check_source()


def test_verify_reads_every_stream(gpt_folder: Path, tmp_path: Path) -> None:
    from rescueui.core.verify import verify_image

    folder = _copy(gpt_folder, tmp_path)
    seen: list[Any] = []
    report = verify_image(folder, progress=seen.append)
    assert report.outcome == "success"
    assert any("partclone's CRC32 block checksums all matched" in n for n in report.notes)
    with open_image(folder) as img:
        data = sum(e.length for e in img.extents() if e.kind == "data")
    assert report.bytes_done == report.bytes_total == data  # progress counts what is read
    assert list((folder / "reports").glob("verify-image-*.json"))  # in the folder, as ours


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("missing-volume", CorruptImageError, r"volume '\.ab' .* is missing"),
        ("truncated-volume", CorruptImageError, "ends early|truncated"),
        ("no-streams", CorruptImageError, "image of partition nvme0n1p2 is missing"),
        ("lvm", UnsupportedImageError, "LVM"),
        ("encrypted", UnsupportedImageError, "encrypted"),
        ("two-disks", UnsupportedImageError, "multi-disk"),
        ("bad-name", CorruptImageError, "not a device"),
        ("no-table", CorruptImageError, "nvme0n1-pt.sf is missing"),
        ("garbled-table", CorruptImageError, "cannot be applied"),
        ("symlinked-volume", ImageError, "nvme0n1p3"),
    ],
)
def test_bad_folders_are_refused_by_name(
    damage: str, error: type[Exception], match: str, gpt_folder: Path, tmp_path: Path
) -> None:
    folder = _copy(gpt_folder, tmp_path)
    vols = sorted(folder.glob("nvme0n1p2.ext4-ptcl-img.zst.*"))
    if damage == "missing-volume":
        vols[1].unlink()
    elif damage == "truncated-volume":
        os.truncate(vols[-1], vols[-1].stat().st_size // 2)
    elif damage == "no-streams":
        for v in vols:
            v.unlink()
    elif damage == "lvm":
        (folder / "lvm_vg_dev.list").write_text("vg0 /dev/nvme0n1p3\n")
    elif damage == "encrypted":
        (folder / "ecryptfs.info").write_text("x\n")
    elif damage == "two-disks":
        (folder / "disk").write_text("nvme0n1 sdb\n")
    elif damage == "bad-name":
        (folder / "parts").write_text("nvme0n1p1 ../../etc\n")
    elif damage == "no-table":
        (folder / "nvme0n1-pt.sf").unlink()
    elif damage == "garbled-table":
        (folder / "nvme0n1-pt.sf").write_text("label: gpt\nstart=x, size=y\n\x1b[31m\n")
    elif damage == "symlinked-volume":
        v = next(folder.glob("nvme0n1p3.xfs-ptcl-img.zst*"))
        real = tmp_path / "elsewhere"
        v.rename(real)
        v.symlink_to(real)
    with pytest.raises(error, match=match):
        open_image(folder)  # refused before anything could be written


def test_a_truncated_stream_of_each_compression_is_found(gpt_src: Any, tmp_path: Path) -> None:
    """zstd and uncompressed streams are found short when the folder is opened; the others
    (no end marker to find without decompressing) when they are read: never taken as good."""
    for comp in ("zst", "uncomp", "gz", "xz", "bz2", "lz4", "lzip"):
        folder = save_disk(gpt_src, tmp_path / comp, comp=comp, comp_for={1: "zst", 3: "zst"})
        vol = next(folder.glob("sda2.ext4-ptcl-img.*"))
        os.truncate(vol, vol.stat().st_size - 100)
        with pytest.raises(CorruptImageError, match=r"sda2\.ext4-ptcl-img") as caught:
            with open_image(folder) as img:
                assert comp not in ("zst", "uncomp"), "opened a short stream"
                img.check_source()
        assert "truncated" in caught.value.message or "ends" in caught.value.message, comp


def test_a_folder_that_only_looks_like_clonezilla(tmp_path: Path) -> None:
    folder = tmp_path / "looks"
    folder.mkdir()
    (folder / "parts").write_text("sda1\n")
    (folder / "disk").write_text("sda\n")
    with pytest.raises(CorruptImageError, match=str(folder)):
        open_image(folder)


@pytest.mark.root
@pytest.mark.slow
def test_restore_onto_a_larger_loop_disk(
    gpt_folder: Path, gpt_src: Any, tmp_path: Path, loops: Any
) -> None:
    """An image of nvme0n1 onto a larger random-filled loop disk: table fitted, files equal,
    filesystems clean, UUIDs and labels kept."""
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore

    folder = _copy(gpt_folder, tmp_path)
    disk = loops.create(480, fill="random")
    code = confirmation_code(identity_of(disk.path))
    report = restore(plan_restore(folder, confirm_target(disk.path, code), accept_warnings=True))
    assert report.outcome == "success", report.error
    disk.rescan()
    run("fsck.vfat", "-n", disk.part(1))
    run("e2fsck", "-fn", disk.part(2))
    run("xfs_repair", "-n", disk.part(3))
    for n in (1, 2, 3, 4):
        start = gpt_src.parts[n][0]
        want = run("blkid", "-p", "-o", "value", "-s", "UUID", "-O", str(start), gpt_src.path)
        got = run("blkid", "-p", "-o", "value", "-s", "UUID", disk.part(n))
        assert got.stdout == want.stdout, n
    content = gpt_src.path.parent / "content"
    mnt = tmp_path / "mnt"
    disk.mount(2, mnt, options="ro")
    try:
        for f in content.rglob("*"):
            if f.is_file():
                assert (mnt / f.relative_to(content)).read_bytes() == f.read_bytes()
    finally:
        disk.umount_all()
    disk.mount(3, mnt, options="ro")
    try:
        for f in content.iterdir():
            if f.is_file():
                assert (mnt / f.name).read_bytes() == f.read_bytes()
    finally:
        disk.umount_all()


@pytest.mark.root
def test_one_partition_onto_an_existing_partition(
    gpt_folder: Path, gpt_src: Any, tmp_path: Path, loops: Any
) -> None:
    """``restore --partition 3``: only the xfs stream is read, onto partition 1 of a loop disk
    whose other bytes are left alone."""
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore

    folder = _copy(gpt_folder, tmp_path)
    disk = loops.create(320, fill="random", table="label: gpt\nstart=2048, size=624000\n")
    disk.rescan()
    before = _sha(Path(disk.path), 0, MiB)
    part = disk.part(1)
    code = confirmation_code(identity_of(part))
    plan = plan_restore(folder, confirm_target(part, code), partition=3, accept_warnings=True)
    report = restore(plan)
    assert report.outcome == "success", report.error
    assert _sha(Path(disk.path), 0, MiB) == before  # the table and the gap: untouched
    run("xfs_repair", "-n", part)
    start = gpt_src.parts[3][0]
    want = run("blkid", "-p", "-o", "value", "-s", "UUID", "-O", str(start), gpt_src.path)
    assert run("blkid", "-p", "-o", "value", "-s", "UUID", part).stdout == want.stdout


def test_an_interrupted_restore_resumes(
    gpt_folder: Path, gpt_src: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled mid-way, then resumed: the streams are read again up to the checkpoint
    (their BLAKE3 learnt), the target compared, the streams rewound, the rest written."""
    import json

    from rescueui.core.errors import CancelledError
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of
    from rescueui.core.restore import plan_restore, restore
    from rescueui.core.target import TargetHandle

    folder = _copy(gpt_folder, tmp_path)
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.write(os.urandom(gpt_src.size))
    code = confirmation_code(identity_of(target))
    plan = plan_restore(folder, confirm_target(target, code), accept_warnings=True, grow=False)
    plan.checkpoint_bytes = 4 * MiB
    stop = threading.Event()

    def progress(p: Any) -> None:
        if p.phase == "write" and p.bytes_done >= 0.3 * p.bytes_total:
            stop.set()

    with pytest.raises(CancelledError):
        restore(plan, progress=progress, cancel=stop)
    journal = next(folder.glob("restore-journal-*.json"))
    durable = json.loads(journal.read_text())["durable_bytes"]
    assert durable > 20 * MiB  # into the ext4 stream at least
    offsets: list[int] = []
    real = TargetHandle.pwrite

    def spy(self: TargetHandle, view: memoryview, offset: int) -> None:
        offsets.append(offset)
        real(self, view, offset)

    monkeypatch.setattr(TargetHandle, "pwrite", spy)
    code = confirmation_code(identity_of(target))
    plan = plan_restore(
        folder, confirm_target(target, code), resume=True, accept_warnings=True, grow=False
    )
    report = restore(plan)
    assert report.outcome == "success", report.error
    assert any("Resumed an interrupted restore" in n for n in report.notes)
    assert offsets and min(offsets) >= durable
    for n in (2, 3):
        start, size, _ = gpt_src.parts[n]
        run("dd", f"if={target}", f"of={tmp_path / 'p'}", "bs=1M", f"skip={start // MiB}",
            f"count={size // MiB}", "status=none")  # fmt: skip
        fsck = ["e2fsck", "-fn"] if n == 2 else ["xfs_repair", "-n", "-f"]
        run(*fsck, tmp_path / "p")
