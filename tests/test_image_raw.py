"""Raw disk images (plain, sparse, gzip/xz/zstd/bzip2) with and without a bmaptool bmap.

The fixtures are made by the real tools: sfdisk, mkfs.vfat/mkfs.ext4 (tests/imagefixtures),
``fallocate --dig-holes`` (a sparse file), ``bmaptool create``, gzip, xz, zstd, bzip2.
Every image is opened through :func:`open_image` (detected by content) and read the way
the engine reads it: the segments in order through the image's decoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescueui.core.errors import CorruptImageError, ImageError, RescueError
from rescueui.core.images import open_image
from rescueui.core.images.raw import RangeCheckingDecoder, RawImage
from rescueui.core.images.source import SEGMENT
from tests.imagefixtures import DiskFile, make_disk

MiB = 1024 * 1024

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("sfdisk", "bmaptool", "gzip", "xz", "zstd", "bzip2")),
    reason="needs sfdisk, bmaptool, gzip, xz, zstd and bzip2",
)

COMPRESSORS = {
    "gz": ["gzip", "-k", "-1"],
    "xz": ["xz", "-k", "-0", "-T2"],
    "zst": ["zstd", "-q", "-k"],
    "bz2": ["bzip2", "-k", "-1"],
}


def run(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def compress(src: Path, suffix: str, out: Path | None = None) -> Path:
    run(*COMPRESSORS[suffix], src)
    made = src.with_name(src.name + "." + suffix)
    if out is not None:
        made.rename(out)
        return out
    return made


def read_all(img: object, partition: int | None = None) -> tuple[str, int, object]:
    """Read an image the way the engine does: every segment in order through the decoder,
    zero segments as zeros. Returns (sha256, bytes, decoder)."""
    table = img.segment_table(partition)  # type: ignore[attr-defined]
    dec = img.decoder(table)  # type: ignore[attr-defined]
    buf = memoryview(bytearray(SEGMENT))
    h = hashlib.sha256()
    pos = 0
    for i in range(len(table)):
        seg = table[i]
        assert seg.disk_offset == pos
        view = None if seg.zero else dec.decode(seg, buf)
        h.update(bytes(seg.length) if view is None else view)  # None: it read as zeros
        pos += seg.length
    dec.close()
    return h.hexdigest(), pos, dec


def sfdisk_table(path: Path) -> dict[str, object]:
    table = json.loads(run("sfdisk", "--json", path).stdout)["partitiontable"]
    return strip_nodes(table)


def strip_nodes(table: dict[str, object]) -> dict[str, object]:
    t = {k: v for k, v in table.items() if k != "device"}
    t["partitions"] = [
        {k: v for k, v in p.items() if k != "node"}  # type: ignore[union-attr]
        for p in table["partitions"]  # type: ignore[union-attr]
    ]
    return t


# --------------------------------------------------------------------------- bmap writer


def make_bmap(
    image: Path | bytes,
    ranges: list[tuple[int, int]],
    *,
    block_size: int = 4096,
    image_size: int | None = None,
    version: str = "2.0",
    digests: dict[int, str] | None = None,
    extra: str = "",
    mapped: int | None = None,
) -> str:
    """A bmap in bmaptool's layout, with bmaptool's own-checksum rule; ranges' checksums
    are computed from ``image`` unless given in ``digests`` (range index -> hex)."""
    data = image if isinstance(image, bytes) else image.read_bytes()
    size = len(data) if image_size is None else image_size
    v = tuple(int(x) for x in version.split("."))
    cs = "sha256" if v >= (1, 4) else "sha1"
    attr = "chksum" if v >= (1, 4) else "sha1"
    lines = []
    for i, (a, b) in enumerate(ranges):
        if v >= (1, 3):
            d = (digests or {}).get(i) or hashlib.new(
                cs, data[a * block_size : (b + 1) * block_size]
            ).hexdigest()
            lines.append(f'        <Range {attr}="{d}"> {a}-{b} </Range>')
        else:
            lines.append(f"        <Range> {a}-{b} </Range>")
    count = sum(b - a + 1 for a, b in ranges) if mapped is None else mapped
    own = ""
    if v >= (1, 4):
        own = f"    <ChecksumType> sha256 </ChecksumType>\n    <BmapFileChecksum> {'0' * 64} </BmapFileChecksum>\n"
    elif v == (1, 3):
        own = f"    <BmapFileSHA1> {'0' * 40} </BmapFileSHA1>\n"
    text = (
        '<?xml version="1.0" ?>\n'
        f"{extra}"
        "<!-- a bmap made by the test -->\n"
        f'<bmap version="{version}">\n'
        f"    <ImageSize> {size} </ImageSize>\n"
        f"    <BlockSize> {block_size} </BlockSize>\n"
        f"    <BlocksCount> {-(-size // block_size)} </BlocksCount>\n"
        f"    <MappedBlocksCount> {count} </MappedBlocksCount>\n"
        f"{own}"
        "    <BlockMap>\n" + "\n".join(lines) + "\n    </BlockMap>\n</bmap>\n"
    )
    if own:
        digest = hashlib.new(cs, text.encode()).hexdigest()
        text = text.replace("0" * len(digest), digest, 1)
    return text


# --------------------------------------------------------------------------- fixtures


class Images:
    def __init__(self, root: Path, disk: DiskFile) -> None:
        self.root = root
        self.disk = disk
        self.sha = sha256_file(disk.path)
        self.table = sfdisk_table(disk.path)

    def variant(self, form: str, *, bmap: bool) -> Path:
        """The image in ``form`` ("raw", "sparse", "gz", "xz", "zst", "bz2") in a folder of
        its own, with or without the bmap next to it."""
        folder = self.root / f"{form}-{'bmap' if bmap else 'plain'}"
        name = "disk.img" if form in ("raw", "sparse") else f"disk.img.{form}"
        path = folder / name
        if path.exists():
            return path
        folder.mkdir()
        src = self.root / "sparse" / "disk.img"
        if form == "raw":
            shutil.copyfile(src, path)  # fully allocated
        elif form == "sparse":
            run("cp", "--sparse=always", src, path)
        else:
            os.link(self.root / "sparse" / name, path)
        if bmap:
            shutil.copyfile(self.root / "sparse" / "disk.img.bmap", folder / "disk.img.bmap")
        return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    root = tmp_path_factory.mktemp("rawimages")
    disk = make_disk(root / "src", size_mib=48)
    sparse = root / "sparse"
    sparse.mkdir()
    img = sparse / "disk.img"
    run("cp", "--sparse=always", disk.path, img)
    run("fallocate", "--dig-holes", img)
    run("bmaptool", "create", "-o", sparse / "disk.img.bmap", img)
    for suffix in COMPRESSORS:
        compress(img, suffix)
    yield Images(root, disk)
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- round trips

FORMS = ["raw", "sparse", "gz", "xz", "zst", "bz2"]
SIZE_WORDS = {
    "raw": "the file size",
    "sparse": "the file size",
    "gz": "measured by decompressing it once",
    "xz": "from the xz index",
    "zst": "from the zstd frame headers",
    "bz2": "from the GPT header; checked when the stream ends",
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("with_bmap", [False, True], ids=["plain", "bmap"])
def test_every_form_reads_back_byte_identical(images: Images, form: str, with_bmap: bool) -> None:
    path = images.variant(form, bmap=with_bmap)
    with open_image(path) as img:
        assert isinstance(img, RawImage)
        assert img.kind == "raw"
        assert img.extent_bytes == images.disk.size
        assert not img.size_is_estimate
        digest, total, dec = read_all(img)
        assert (digest, total) == (images.sha, images.disk.size)
        compressed = form not in ("raw", "sparse")
        assert img.sequential == (compressed or with_bmap)
        text = img.describe()
        assert text.startswith("raw disk image")
        if compressed:
            assert f"{img.compression}-compressed" in text
        if with_bmap:
            assert img.integrity.code == "range-sha256"
            assert "SHA-256 per range" in text and "bmap disk.img.bmap" in text
            assert isinstance(dec, RangeCheckingDecoder)
            assert dec.checked == len(img.bmap.ranges) > 1  # type: ignore[union-attr]
            assert dec.unchecked == 0
            # unmapped ranges are space the filesystem does not use (bmaptool leaves it as
            # it is too), mapped ones carry their SHA-256
            ext = img.extents()
            assert any(e.kind == "unused" for e in ext)
            assert all(e.sha256 for e in ext if e.kind == "data")
        else:
            assert img.integrity.code == "none"
            assert SIZE_WORDS[form] in text
            if form == "sparse":
                assert any(e.kind == "zero" for e in img.extents())
                assert "% holes" in text
            if compressed:
                assert [(e.start, e.length, e.kind) for e in img.extents()] == [
                    (0, images.disk.size, "data")
                ]
        # the facts: the table sfdisk reads from the source, filesystems where readable
        assert strip_nodes(img.manifest.partition_table) == images.table
        assert [s.partition_number for s in img.streams] == [1, 2]
        assert img.streams[1].start_bytes == images.disk.parts[2][0]
        if not compressed:
            assert (img.streams[0].fs_type, img.streams[0].label) == ("vfat", "EFI")
            assert (img.streams[1].fs_type, img.streams[1].label) == ("ext4", "root")
        else:
            assert any("backup GPT" in w for w in img.manifest.warnings)


def test_sparse_holes_are_zero_extents_and_cost_nothing(images: Images) -> None:
    path = images.variant("sparse", bmap=False)
    with open_image(path) as img:
        ext = img.extents()
        holes = [e for e in ext if e.kind == "zero"]
        assert holes
        assert sum(e.length for e in ext) == images.disk.size
        fd = os.open(path, os.O_RDONLY)
        try:
            for e in holes:  # each is a hole of the file, not merely zeros
                assert os.lseek(fd, e.start, os.SEEK_HOLE) == e.start
        finally:
            os.close(fd)
    with open_image(images.variant("raw", bmap=False)) as full:
        # a fully allocated copy has no holes: all of it is read (zero blocks: the engine's)
        assert [e.kind for e in full.extents()] == ["data"]


def test_identity_binds_the_file_its_form_and_its_bmap(images: Images) -> None:
    def ident(p: Path) -> str:
        with open_image(p) as img:
            return str(img.manifest.manifest_blake3)

    a = ident(images.variant("zst", bmap=False))
    assert a == ident(images.variant("zst", bmap=False))
    assert len(a) == 64
    others = {
        ident(images.variant("zst", bmap=True)),
        ident(images.variant("gz", bmap=False)),
        ident(images.variant("raw", bmap=False)),
    }
    assert a not in others and len(others) == 3


def test_partition_segments_and_partial_ranges(images: Images) -> None:
    """One partition of a compressed image with a bmap: its bytes, and ranges cut by the
    partition's edges are counted as not checked rather than failing."""
    start, size = images.disk.parts[2]
    want = hashlib.sha256(images.disk.read(start, size)).hexdigest()
    with open_image(images.variant("zst", bmap=True)) as img:
        digest, total, dec = read_all(img, partition=2)
        assert (digest, total) == (want, size)
        assert isinstance(dec, RangeCheckingDecoder) and dec.checked >= 1
        assert dec.summary().startswith(f"{dec.checked} bmap range(s) matched their SHA-256")


# --------------------------------------------------------------------------- sizes


def test_zstd_without_content_size_is_measured_and_multi_frame_summed(
    images: Images, tmp_path: Path
) -> None:
    src = images.disk.path
    nosize = tmp_path / "stdin.img.zst"
    with open(src, "rb") as fin, open(nosize, "wb") as fout:
        subprocess.run(["zstd", "-q", "-c", "-"], stdin=fin, stdout=fout, check=True)
    with open_image(nosize) as img:
        assert "measured by decompressing it once" in img.describe()
        assert read_all(img)[:2] == (images.sha, images.disk.size)
    # two frames (halves), a skippable frame between: sizes from both frame headers
    half = images.disk.size // 2
    data = src.read_bytes()
    (tmp_path / "a").write_bytes(data[:half])
    (tmp_path / "b").write_bytes(data[half:])
    run("zstd", "-q", tmp_path / "a", tmp_path / "b")
    skippable = (0x184D2A51).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    multi = tmp_path / "multi.zst"
    multi.write_bytes(
        (tmp_path / "a.zst").read_bytes() + skippable + (tmp_path / "b.zst").read_bytes()
    )
    with open_image(multi) as img:
        assert "from the zstd frame headers" in img.describe()
        assert read_all(img)[:2] == (images.sha, images.disk.size)


def test_concatenated_gzip_bzip2_xz_streams(images: Images, tmp_path: Path) -> None:
    data = images.disk.path.read_bytes()
    cut = 5 * MiB + 12345
    for suffix, tool in (("gz", "gzip"), ("bz2", "bzip2"), ("xz", "xz")):
        parts = []
        for i, piece in enumerate((data[:cut], data[cut:])):
            p = tmp_path / f"{suffix}{i}"
            p.write_bytes(piece)
            run(tool, "-1", p)
            parts.append(Path(f"{p}.{suffix}").read_bytes())
        pad = b"\0" * 8 if suffix in ("gz", "xz") else b""  # padding both formats accept
        path = tmp_path / f"cat.img.{suffix}"
        path.write_bytes(parts[0] + pad + parts[1] + pad)
        with open_image(path) as img:
            assert img.extent_bytes == len(data), suffix
            assert read_all(img)[:2] == (images.sha, len(data)), suffix


def test_bzip2_size_measured_without_gpt_and_checked_against_gpt(tmp_path: Path) -> None:
    """bzip2 records no size: an MBR disk's is measured; a GPT disk's is read from its
    backup header's place, and a stream that goes on beyond it fails when read."""
    dos = make_disk(tmp_path / "dos", label="dos", size_mib=48, gap_junk=False)
    run("bzip2", "-k", "-1", dos.path)
    with open_image(Path(f"{dos.path}.bz2")) as img:
        assert "measured by decompressing it once" in img.describe()
        assert img.extent_bytes == dos.size
        assert read_all(img)[:2] == (sha256_file(dos.path), dos.size)
        # the logical partition's EBR lies inside the stream: said, not guessed
        assert any("extended partition" in w for w in img.manifest.warnings)
    gpt = make_disk(tmp_path / "gpt", size_mib=48, gap_junk=False)
    longer = tmp_path / "longer.img"
    longer.write_bytes(gpt.path.read_bytes() + os.urandom(MiB))
    run("bzip2", "-1", longer)
    with open_image(Path(f"{longer}.bz2")) as img:
        assert img.extent_bytes == gpt.size
        with pytest.raises(CorruptImageError, match=r"longer than its size.*GPT header"):
            read_all(img)


def test_estimate_without_measuring(images: Images, tmp_path: Path) -> None:
    path = tmp_path / "e.img.bz2"  # a new file: no size measured for it yet
    shutil.copyfile(images.variant("bz2", bmap=False), path)
    img = RawImage.open(path, compression="bzip2", measure=False)
    try:
        assert img.size_is_estimate
        assert img.extent_bytes == images.disk.size  # the GPT's backup header LBA + 1
        assert "not exact" in img.describe() and "GPT" in img.describe()
    finally:
        img.close()


def test_measuring_reports_progress_and_is_remembered(images: Images, tmp_path: Path) -> None:
    path = tmp_path / "m.img.gz"
    shutil.copyfile(images.variant("gz", bmap=False), path)
    calls: list[tuple[int, int]] = []
    RawImage.open(path, compression="gzip", progress=lambda d, t: calls.append((d, t))).close()
    assert calls and calls[-1][0] == calls[-1][1] == path.stat().st_size
    calls.clear()
    t0 = time.monotonic()
    RawImage.open(path, compression="gzip", progress=lambda d, t: calls.append((d, t))).close()
    assert calls == [] and time.monotonic() - t0 < 2


# --------------------------------------------------------------------------- the stream


def test_compressed_reads_forward_only(images: Images) -> None:
    with open_image(images.variant("gz", bmap=False)) as img:
        data = images.disk.path.read_bytes()
        view = memoryview(bytearray(4096))
        img.read_into(10 * MiB, view)  # skips forward by decompressing
        assert bytes(view) == data[10 * MiB : 10 * MiB + 4096]
        img.read_into(20 * MiB + 7, view)
        assert bytes(view) == data[20 * MiB + 7 : 20 * MiB + 7 + 4096]
        with pytest.raises(ImageError, match=r"read in order only.*bug") as exc:
            img.read_into(MiB, view)
        assert not isinstance(exc.value, CorruptImageError)


def test_peeks_do_not_disturb_a_decoder_pass(images: Images) -> None:
    """The pre-flight peeks at the first sector and the engine then reads from byte 0:
    every decoder has a pass over the stream of its own."""
    data = images.disk.path.read_bytes()
    with open_image(images.variant("zst", bmap=False)) as img:
        assert img.first_sector() == data[:512]
        view = memoryview(bytearray(512))
        img.read_into(0, view)  # from the head read while opening
        img.read_into(3 * MiB, view)  # the image's own pass
        assert bytes(view) == data[3 * MiB : 3 * MiB + 512]
        assert read_all(img)[0] == images.sha
        assert read_all(img)[0] == images.sha  # a second job: a new pass


def test_cut_short_raw_image_and_missing_given_bmap(images: Images, tmp_path: Path) -> None:
    cut = tmp_path / "cut.img"
    cut.write_bytes(images.disk.path.read_bytes()[: 30 * MiB])
    with open_image(cut) as img:
        assert img.extent_bytes == 30 * MiB
        assert any("Partition 2 ends at byte" in w for w in img.manifest.warnings)
    with pytest.raises(ImageError, match=r"bmap file .*nope\.bmap does not exist"):
        RawImage.open(cut, bmap=tmp_path / "nope.bmap")


@pytest.mark.parametrize("suffix", ["gz", "xz", "zst", "bz2"])
def test_truncated_compressed_image_is_refused_naming_file_and_offset(
    images: Images, tmp_path: Path, suffix: str
) -> None:
    whole = images.variant(suffix, bmap=False).read_bytes()
    path = tmp_path / f"cut.img.{suffix}"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(CorruptImageError) as exc:
        img = open_image(path)  # xz/zst: the index/frames; gz/bz2: the counting pass
        try:
            read_all(img)
        finally:
            img.close()
    msg = str(exc.value)
    assert str(path) in msg
    assert re.search(r"byte \d+", msg), msg
    assert "truncated" in msg or "ends" in msg


@pytest.mark.parametrize("suffix", ["gz", "bz2"])
def test_truncated_stream_with_bmap_fails_while_reading(
    images: Images, tmp_path: Path, suffix: str
) -> None:
    """With a bmap the size comes from it (no counting pass): the cut shows when read."""
    whole = images.variant(suffix, bmap=False).read_bytes()
    path = tmp_path / f"disk.img.{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    shutil.copyfile(images.root / "sparse" / "disk.img.bmap", tmp_path / "disk.img.bmap")
    with open_image(path) as img:
        assert "from the bmap" in img.describe()
        with pytest.raises(CorruptImageError, match=re.escape(str(path)) + ".*byte \\d+"):
            read_all(img)


def test_stream_longer_or_shorter_than_its_size(images: Images, tmp_path: Path) -> None:
    data = images.disk.path.read_bytes()
    size = len(data)
    for name, claimed, words in (
        ("long", size - 4096, "longer than its size"),
        ("short", size + 4096, "ends early"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        path = folder / "disk.img.gz"
        shutil.copyfile(images.variant("gz", bmap=False), path)
        blocks = -(-claimed // 4096)
        padded = data + bytes(8192)
        (folder / "disk.img.bmap").write_text(
            make_bmap(padded, [(0, 3), (blocks - 2, blocks - 1)], image_size=claimed)
        )
        with open_image(path) as img:
            assert img.extent_bytes == claimed
            with pytest.raises(CorruptImageError, match=words) as exc:
                read_all(img)
            assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    "magic", [b"\x1f\x8b\x08\x00", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"BZh9"]
)
def test_garbage_after_magic_fails_fast(tmp_path: Path, magic: bytes) -> None:
    path = tmp_path / "garbage.img"
    path.write_bytes(magic + os.urandom(3 * MiB))
    t0 = time.monotonic()
    with pytest.raises(ImageError) as exc:
        img = open_image(path)
        try:
            read_all(img)
        finally:
            img.close()
    assert time.monotonic() - t0 < 10
    assert str(path) in str(exc.value)


def test_garbage_without_magic_is_a_raw_image_without_a_table(tmp_path: Path) -> None:
    path = tmp_path / "notes.dd"
    path.write_bytes(b"just some text\n" * 1000)
    with open_image(path) as img:
        assert img.manifest.partition_table is None and img.streams == []
        assert read_all(img)[1] == path.stat().st_size
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        open_image(empty)


BOMB_CHILD = textwrap.dedent(
    """
    import sys
    from rescueui.core.images import open_image
    from rescueui.core.images.source import SEGMENT
    img = open_image(sys.argv[1])
    table = img.segment_table()
    dec = img.decoder(table)
    buf = memoryview(bytearray(SEGMENT))
    n = 0
    for i in range(len(table)):
        seg = table[i]
        if not seg.zero:
            dec.decode(seg, buf)  # None when the piece read as zeros
            n += seg.length
    # VmHWM: this process's own peak (ru_maxrss would carry the parent's peak over exec)
    hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
    print(n, img.extent_bytes, hwm // 1024)
    """
)


@pytest.mark.parametrize("suffix", ["gz", "xz", "zst", "bz2"])
def test_highly_compressed_image_in_bounded_memory(tmp_path: Path, suffix: str) -> None:
    """1 GiB of zeros (a few KiB to 1 MiB compressed): counted, read, memory stays small."""
    path = tmp_path / f"zeros.img.{suffix}"
    tool = {"gz": "gzip", "xz": "xz", "zst": "zstd", "bz2": "bzip2"}[suffix]
    with open(path, "wb") as out:
        head = subprocess.Popen(
            ["head", "-c", str(1024 * MiB), "/dev/zero"], stdout=subprocess.PIPE
        )
        subprocess.run(
            [tool, "-c", "-1"] + (["-q"] if tool == "zstd" else []),
            stdin=head.stdout,
            stdout=out,
            check=True,
        )
        head.wait()
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD, str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    read, size, rss_mib = (int(x) for x in proc.stdout.split())
    assert read == size == 1024 * MiB
    assert rss_mib < 300, rss_mib


# --------------------------------------------------------------------------- bmap checks


def test_changed_byte_in_a_mapped_range_fails_naming_the_range(
    images: Images, tmp_path: Path
) -> None:
    base = images.root / "sparse"
    bmap_text = (base / "disk.img.bmap").read_text()
    ranges = [
        (int(a), int(b or a))
        for a, b in re.findall(r"<Range[^>]*>\s*(\d+)(?:\s*-\s*(\d+))?\s*</Range>", bmap_text)
    ]
    # the largest range: several segments long, so its earlier pieces are read first
    first, last = max(ranges, key=lambda r: r[1] - r[0])
    assert (last - first + 1) * 4096 > SEGMENT
    victim = (last * 4096) + 100  # in the range's last segment
    for form in ("raw", "zst"):
        folder = tmp_path / form
        folder.mkdir()
        img_path = folder / "disk.img"
        run("cp", "--sparse=always", base / "disk.img", img_path)
        with open(img_path, "r+b") as f:
            f.seek(victim)
            old = f.read(1)
            f.seek(victim)
            f.write(bytes([old[0] ^ 0xFF]))
        if form == "zst":
            run("zstd", "-q", "--rm", img_path)
            img_path = folder / "disk.img.zst"
        shutil.copyfile(base / "disk.img.bmap", folder / "disk.img.bmap")
        with open_image(img_path) as img:
            table = img.segment_table()
            dec = img.decoder(table)
            buf = memoryview(bytearray(SEGMENT))
            failed_at = None
            for i in range(len(table)):
                seg = table[i]
                if seg.zero:
                    continue
                try:
                    dec.decode(seg, buf)
                except CorruptImageError as exc:
                    failed_at = seg
                    msg = str(exc)
                    break
            assert failed_at is not None
            assert failed_at.end == min(
                (last + 1) * 4096, images.disk.size
            )  # the range's last piece
            assert f"blocks {first}-{last}" in msg
            assert f"bytes {first * 4096} to" in msg
            assert str(folder / "disk.img.bmap") in msg and str(img_path) in msg
            assert "was not written" in msg and "may already be on the target" in msg
            assert dec.checked == sum(1 for a, _ in ranges if a < first)


def test_single_segment_range_mismatch_says_nothing_was_written(tmp_path: Path) -> None:
    data = bytearray(os.urandom(64 * 1024)) + bytearray(64 * 1024)
    img = tmp_path / "small.img"
    img.write_bytes(bytes(data))
    (tmp_path / "small.img.bmap").write_text(
        make_bmap(bytes(data), [(0, 3), (8, 15)], digests={1: "ab" * 32})
    )
    with open_image(img) as image:
        with pytest.raises(
            CorruptImageError, match=r"blocks 8-15 .*Nothing of this range was written"
        ):
            read_all(image)


def bmap_error(tmp_path: Path, text: str | bytes, data: bytes | None = None) -> str:
    data = data if data is not None else os.urandom(64 * 1024)
    folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "x.img").write_bytes(data)
    bmap = folder / "x.img.bmap"
    if isinstance(text, bytes):
        bmap.write_bytes(text)
    else:
        bmap.write_text(text)
    t0 = time.monotonic()
    with pytest.raises(RescueError) as exc:
        open_image(folder / "x.img").close()
    assert time.monotonic() - t0 < 5
    msg = str(exc.value)
    assert str(bmap) in msg, msg
    return msg


def test_bad_bmaps_are_refused_naming_the_bmap(tmp_path: Path) -> None:
    data = os.urandom(64 * 1024)
    good = make_bmap(data, [(0, 3), (8, 15)])
    # a sanity check of the test's writer: bmaptool itself accepts it
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "img").write_bytes(data)
    (tmp_path / "t" / "img.bmap").write_text(good)
    (tmp_path / "t" / "target").write_bytes(bytes(len(data)))
    run(
        "bmaptool",
        "copy",
        "--bmap",
        tmp_path / "t" / "img.bmap",
        tmp_path / "t" / "img",
        tmp_path / "t" / "target",
    )
    shutil.rmtree(tmp_path / "t")

    tampered = good.replace("<BlockSize> 4096", "<BlockSize> 4096 ", 1)
    assert "checksum does not match" in bmap_error(tmp_path, tampered, data)
    m = re.search(r"<BmapFileChecksum> (\w+)", good)
    assert m
    wrong = good.replace(m.group(1), "f" * 64)
    assert "checksum does not match" in bmap_error(tmp_path, wrong, data)
    assert "overlaps" in bmap_error(tmp_path, make_bmap(data, [(0, 5), (4, 8)]), data)
    assert "in order" in bmap_error(tmp_path, make_bmap(data, [(8, 9), (0, 3)]), data)
    assert "beyond the image" in bmap_error(tmp_path, make_bmap(data, [(0, 3), (10, 16)]), data)
    assert "mapped blocks" in bmap_error(tmp_path, make_bmap(data, [(0, 3)], mapped=7), data)
    assert "another image" in bmap_error(
        tmp_path, make_bmap(data, [(0, 3)], image_size=128 * 1024), data
    )
    assert "backwards" in bmap_error(tmp_path, make_bmap(data, [(3, 0)], mapped=0), data)
    assert "not well-formed" in bmap_error(tmp_path, good[:-20], data)
    assert "version" in bmap_error(tmp_path, good.replace('version="2.0"', 'version="3.0"'), data)
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE bmap [\n <!ENTITY a "aaaaaaaaaa">\n'
        + "".join(
            f' <!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(9)
        )
        + ']>\n<bmap version="2.0"><ImageSize>&j;</ImageSize></bmap>\n'
    )
    assert "DTD" in bmap_error(tmp_path, bomb, data)
    external = (
        '<?xml version="1.0"?>\n<!DOCTYPE bmap SYSTEM "/etc/passwd">\n<bmap version="2.0"/>\n'
    )
    assert "DTD" in bmap_error(tmp_path, external, data)
    undeclared = good.replace("<ImageSize> 65536", "<ImageSize> &x;", 1)
    assert "not well-formed" in bmap_error(tmp_path, undeclared, data)
    assert "not well-formed" in bmap_error(tmp_path, os.urandom(4000), data)


def test_oversized_or_linked_bmap_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.img").write_bytes(os.urandom(8192))
    with open(tmp_path / "x.img.bmap", "wb") as f:
        f.truncate(64 * MiB)
    with pytest.raises(ImageError, match=re.escape(str(tmp_path / "x.img.bmap")) + ".*more than"):
        open_image(tmp_path / "x.img")
    os.unlink(tmp_path / "x.img.bmap")
    other = tmp_path / "elsewhere.bmap"
    other.write_text(make_bmap(tmp_path.joinpath("x.img").read_bytes(), [(0, 1)]))
    os.symlink(other, tmp_path / "x.img.bmap")
    with pytest.raises(RescueError, match="symbolic link"):
        open_image(tmp_path / "x.img")


def test_older_bmap_versions(tmp_path: Path) -> None:
    data = os.urandom(32 * 1024) + bytes(32 * 1024)
    (tmp_path / "a.img").write_bytes(data)
    # 1.3: SHA-1 per range, its own SHA-1
    (tmp_path / "a.img.bmap").write_text(make_bmap(data, [(0, 7)], version="1.3"))
    with open_image(tmp_path / "a.img") as img:
        assert img.integrity.code == "range-sha1"
        assert "SHA-1 per range" in img.describe()
        assert read_all(img)[0] == hashlib.sha256(data).hexdigest()
    bad = make_bmap(data, [(0, 7)], version="1.3", digests={0: "0" * 40})
    (tmp_path / "a.img.bmap").write_text(bad)
    with open_image(tmp_path / "a.img") as img, pytest.raises(CorruptImageError, match="SHA-1"):
        read_all(img)
    # 1.2: no checksums at all: mapped/unmapped only, nothing claimed
    (tmp_path / "a.img.bmap").write_text(make_bmap(data, [(0, 7)], version="1.2"))
    with open_image(tmp_path / "a.img") as img:
        assert img.integrity.code == "none"
        assert "no checksums" in img.describe()
        assert [e.kind for e in img.extents()] == ["data", "unused"]
        assert read_all(img)[0] == hashlib.sha256(data).hexdigest()


def test_given_bmap_and_bmaptool_no_checksum(images: Images, tmp_path: Path) -> None:
    src = images.root / "sparse" / "disk.img"
    given = tmp_path / "somewhere.bmap"
    run("bmaptool", "create", "--no-checksum", "-o", given, src)
    img = RawImage.open(images.variant("xz", bmap=False), compression="xz", bmap=given)
    try:
        assert img.bmap is not None and img.bmap.path == given
        assert img.integrity.code == "none"
        assert read_all(img)[:2] == (images.sha, images.disk.size)
    finally:
        img.close()


# --------------------------------------------------------------------------- end to end


def confirmed(path: Path) -> object:
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of

    return confirm_target(path, confirmation_code(identity_of(path)))


@pytest.mark.parametrize(
    ("form", "with_bmap"),
    [("raw", False), ("sparse", True), ("zst", False), ("gz", False), ("xz", True)],
    ids=["raw", "raw+bmap", "zst", "gz", "xz+bmap"],
)
def test_restore_onto_a_random_filled_file(
    images: Images, tmp_path: Path, form: str, with_bmap: bool
) -> None:
    from rescueui.core.restore import plan_restore, restore

    image = images.variant(form, bmap=with_bmap)
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(images.disk.size))
    plan = plan_restore(image, confirmed(target), accept_warnings=True)  # type: ignore[arg-type]
    report = restore(plan)
    assert report.outcome == "success", report.error
    assert sha256_file(target) == images.sha
    assert report.details["image_kind"] == "raw"
    if with_bmap:
        assert "lists a SHA-256 for each of its" in report.details["source_checks"]


def test_restore_with_a_damaged_mapped_range_fails_naming_it(
    images: Images, tmp_path: Path
) -> None:
    from rescueui.core.restore import plan_restore, restore

    base = images.root / "sparse"
    folder = tmp_path / "img"
    folder.mkdir()
    image = folder / "disk.img"
    run("cp", "--sparse=always", base / "disk.img", image)
    shutil.copyfile(base / "disk.img.bmap", folder / "disk.img.bmap")
    p2_start = images.disk.parts[2][0]
    with open(image, "r+b") as f:  # the ext4 superblock area of p2: mapped
        f.seek(p2_start + 1024 + 7)
        old = f.read(1)
        f.seek(p2_start + 1024 + 7)
        f.write(bytes([old[0] ^ 0x01]))
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(images.disk.size))
    plan = plan_restore(image, confirmed(target), accept_warnings=True)  # type: ignore[arg-type]
    with pytest.raises(CorruptImageError) as exc:
        restore(plan)
    msg = str(exc.value)
    block = (p2_start + 1024) // 4096
    m = re.search(r"blocks (\d+)-(\d+)", msg)
    assert m and int(m.group(1)) <= block <= int(m.group(2)), msg
    assert str(folder / "disk.img.bmap") in msg
    report = getattr(exc.value, "report", None)
    assert report is not None and report.outcome != "success"


def test_check_source_reads_and_checks_without_a_target(images: Images, tmp_path: Path) -> None:
    with open_image(images.variant("gz", bmap=True)) as img:
        words = img.check_source()
        assert "bmap ranges matched their checksums" in words
        assert "gzip stream decoded without error" in words
    data = bytearray(os.urandom(64 * 1024))
    (tmp_path / "d.img.bmap").write_text(make_bmap(bytes(data), [(0, 3), (8, 15)]))
    data[9 * 4096] ^= 1
    (tmp_path / "d.img").write_bytes(bytes(data))
    with open_image(tmp_path / "d.img") as img, pytest.raises(CorruptImageError, match="8-15"):
        img.check_source()


# --------------------------------------------------------------------------- zero detection

# (MiB, kind): a raw disk whose zero blocks are written zeros, not holes
ZERO_LAYOUT = [(4, "random"), (16, "zeros"), (4, "random"), (4, "zeros"), (2, "random")]


def _written_zeros_image(path: Path) -> bytes:
    """A raw image without a bmap and without holes: random data around two runs of
    written zero blocks (5 whole 4 MiB segments), the last segment shorter."""
    data = b"".join(
        os.urandom(n * MiB) if kind == "random" else bytes(n * MiB) for n, kind in ZERO_LAYOUT
    )
    path.write_bytes(data)
    return data


@pytest.mark.root
@pytest.mark.parametrize("form", ["raw", "zst"])
def test_zero_blocks_in_data_are_made_zero_not_written(
    tmp_path: Path, loops: object, form: str
) -> None:
    """Without a bmap, zero blocks are found as they are read and cleared in one call per
    run (not written); the random-filled loop disk reads back identical to the image, and
    the read-back verify passes against the zero hashes recorded for them."""
    from rescueui.core.restore import plan_restore, restore

    image = tmp_path / "img" / "disk.img"
    image.parent.mkdir()
    data = _written_zeros_image(image)
    if form == "zst":
        run("zstd", "-q", "--rm", image)
        image = image.with_name("disk.img.zst")
    with open_image(image) as img:  # the file has no holes: one data extent, no zero extent
        assert [(e.start, e.length, e.kind) for e in img.extents()] == [(0, len(data), "data")]
    disk = loops.create(40, fill="random")  # type: ignore[attr-defined]
    plan = plan_restore(image, confirmed(Path(disk.path)), accept_warnings=True)  # type: ignore[arg-type]
    report = restore(plan)
    assert report.outcome == "success", report.error
    with open(disk.path, "rb") as f:
        assert hashlib.sha256(f.read(len(data))).hexdigest() == hashlib.sha256(data).hexdigest()
    d = report.details
    assert d["zero_found_segments"] == 5
    assert d["zero_found_bytes"] == 20 * MiB
    assert d["data_bytes_written"] == len(data) - 20 * MiB
    assert d["zero_range_calls"] == 2  # [4, 20) MiB and [24, 28) MiB, one call each
    assert d["zero_methods"] == ["blkzeroout"]
    assert report.phases["verify"]["bytes"] == len(data)


def test_the_decoder_hands_zero_pieces_over_as_none_with_their_hash(tmp_path: Path) -> None:
    """The seam's decoder: an all-zero data piece is not returned (None) and its recorded
    BLAKE3 is that of so many zeros; a piece with one byte set is returned and hashed."""
    from rescueui.core.pipeline import zero_hash

    path = tmp_path / "d.img"
    data = bytearray(3 * SEGMENT)
    data[2 * SEGMENT - 1] = 1  # the second piece differs from zeros in its last byte only
    path.write_bytes(bytes(data))
    with open_image(path) as img:
        table = img.segment_table()
        assert [table[i].zero for i in range(len(table))] == [False] * 3
        dec = img.decoder(table)
        buf = memoryview(bytearray(SEGMENT))
        got = []
        for i in range(3):
            view = dec.decode(table[i], buf)
            got.append(None if view is None else bytes(view))
        assert got[0] is None and got[2] is None
        assert got[1] == bytes(data[SEGMENT : 2 * SEGMENT])
        assert table[0].blake3 == table[2].blake3 == zero_hash(SEGMENT)
        assert table[1].blake3 != zero_hash(SEGMENT)
