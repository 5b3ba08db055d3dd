"""Image format v1: layout, hashes, and refusal of damaged or forged images (no root needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import blake3
import pytest

from rescueui.core.capture import capture
from rescueui.core.errors import CorruptImageError, ImageError, UnsupportedImageError
from rescueui.core.image import (
    CHUNK_SIZE,
    INDEX_HEADER,
    INDEX_RECORD,
    ZERO_CHUNK_BLAKE3,
    Image,
    save_manifest,
)
from tests.imagefixtures import DiskFile, make_disk, reassemble

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiskFile, Path]:
    tmp = tmp_path_factory.mktemp("imgfmt")
    disk = make_disk(tmp / "src")
    image = tmp / "image"
    capture(disk.path, image)
    return disk, image


@pytest.fixture
def image_copy(built: tuple[DiskFile, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(built[1], dst, ignore=shutil.ignore_patterns("reports"))
    return dst


def _manifest(image: Path) -> dict:
    return json.loads((image / "manifest.json").read_text())


def _write_manifest(image: Path, d: dict) -> None:
    (image / "manifest.json").write_text(json.dumps(d, indent=2))


def test_layout_streams_and_extent(built: tuple[DiskFile, Path]) -> None:
    disk, image = built
    with Image.open(image) as im:
        names = [s.name for s in im.streams]
        assert names == ["head", "p1", f"gap-{13 * MiB}", "p2", "tail"]
        assert im.stream("p1").fs_type == "vfat" and im.stream("p1").label == "EFI"
        assert im.stream("p2").fs_type == "ext4" and im.stream("p2").label == "root"
        assert im.extent_bytes == disk.size
        assert im.manifest.partition_table is not None
        assert im.manifest.partition_table["label"] == "gpt"
        assert im.manifest.source_disk["size_bytes"] == disk.size
        assert im.manifest.host["cpus"] >= 1
        assert im.manifest.complete and im.manifest.whole_disk
        # streams in disk order, each where the table says
        assert im.stream("p2").start_bytes == disk.parts[2][0]
        assert im.stream("p2").size_bytes == disk.parts[2][1]
    # the free space between p2 and the GPT backup is all zeros: no stream for it
    assert not list(image.glob(f"gap-{47 * MiB}*"))
    assert not (image / "INCOMPLETE").exists()


def test_zstd_dc_gives_exact_partition_bytes(built: tuple[DiskFile, Path]) -> None:
    disk, image = built
    for n in (1, 2):
        out = subprocess.run(
            ["zstd", "-dc", str(image / f"p{n}.zst")], check=True, capture_output=True
        ).stdout
        assert out == disk.part_bytes(n)


def test_reassembled_disk_is_bit_identical(built: tuple[DiskFile, Path], tmp_path: Path) -> None:
    disk, image = built
    out = tmp_path / "rebuilt.img"
    reassemble(image, out, disk.size)
    assert out.read_bytes() == disk.path.read_bytes()


def test_index_hashes_zero_flags_and_roots(built: tuple[DiskFile, Path]) -> None:
    disk, image = built
    raw = disk.path.read_bytes()
    zero_seen = nonzero_seen = 0
    with Image.open(image) as im:
        for s in im.streams:
            digests = b""
            chunks = im.chunks(s)
            assert len(chunks) == -(-s.size_bytes // s.chunk_size)
            for c in chunks:
                start = s.start_bytes + c.index * s.chunk_size
                data = raw[start : start + c.raw_length]
                assert blake3.blake3(data).hexdigest() == c.blake3
                assert c.zero == (data == bytes(len(data)))
                assert im.read_chunk(s, c) == data
                if c.zero:
                    zero_seen += 1
                    if c.raw_length == CHUNK_SIZE:
                        assert c.blake3 == ZERO_CHUNK_BLAKE3
                else:
                    nonzero_seen += 1
                digests += bytes.fromhex(c.blake3)
            assert blake3.blake3(digests).hexdigest() == s.root_blake3
            idx = (image / s.index_file).read_bytes()
            assert blake3.blake3(idx).hexdigest() == s.index_blake3
    assert zero_seen > 0 and nonzero_seen > 0


def test_zero_chunk_hash_matches_b3sum(tmp_path: Path) -> None:
    f = tmp_path / "zeros"
    f.write_bytes(bytes(CHUNK_SIZE))
    out = subprocess.run(
        ["b3sum", "--no-names", str(f)], check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == ZERO_CHUNK_BLAKE3


def test_manifest_hash_covers_everything(built: tuple[DiskFile, Path]) -> None:
    d = _manifest(built[1])
    body = {k: v for k, v in d.items() if k != "manifest_blake3"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert blake3.blake3(canon).hexdigest() == d["manifest_blake3"]


def test_edited_manifest_is_refused(image_copy: Path) -> None:
    d = _manifest(image_copy)
    d["source_disk"]["serial"] = "FORGED"
    _write_manifest(image_copy, d)
    with pytest.raises(CorruptImageError, match="manifest hash"):
        Image.open(image_copy)


def test_save_manifest_rehashes_a_forged_variant(image_copy: Path) -> None:
    with Image.open(image_copy) as im:
        m = im.manifest
    m.host = {**m.host, "cpus": 128, "firmware": "bios"}
    save_manifest(image_copy, m)
    with Image.open(image_copy) as im:
        assert im.manifest.host["cpus"] == 128


def test_edited_root_is_refused_even_if_rehashed(image_copy: Path) -> None:
    with Image.open(image_copy) as im:
        m = im.manifest
    m.streams[1].root_blake3 = "0" * 64
    save_manifest(image_copy, m)
    with pytest.raises(CorruptImageError, match="root hash"):
        Image.open(image_copy)


def test_truncated_data_file_is_named(image_copy: Path) -> None:
    p = image_copy / "p2.zst"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptImageError, match=r"p2\.zst is truncated"):
        Image.open(image_copy)


def test_missing_index_file_is_named(image_copy: Path) -> None:
    (image_copy / "p1.idx").unlink()
    with pytest.raises(ImageError, match=r"p1\.idx.*missing"):
        Image.open(image_copy)


def test_missing_data_file_is_named(image_copy: Path) -> None:
    (image_copy / "head.zst").unlink()
    with pytest.raises(ImageError, match=r"head\.zst.*missing"):
        Image.open(image_copy)


def test_edited_index_is_refused(image_copy: Path) -> None:
    p = image_copy / "p2.idx"
    data = bytearray(p.read_bytes())
    data[INDEX_HEADER.size + INDEX_RECORD.size + 20] ^= 0x01  # a digest byte of chunk 1
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptImageError, match=r"p2\.idx"):
        Image.open(image_copy)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("name", "../x", "stream name"),
        ("name", "p1/../../etc", "stream name"),
        ("data_file", "../p1.zst", "file name"),
        ("data_file", "/etc/passwd", "file name"),
        ("index_file", "..", "file name"),
        ("chunk_size", 3 * MiB, "Chunk size"),
        ("chunk_count", 1, "chunks"),
        ("size_bytes", 1 << 60, "out of range"),
        ("size_bytes", "12", "wrong type"),
    ],
)
def test_forged_stream_fields_are_refused(
    image_copy: Path, field: str, value: object, pattern: str
) -> None:
    d = _manifest(image_copy)
    d["streams"][1][field] = value
    _write_manifest(image_copy, d)  # even without rehashing, the check comes first
    with pytest.raises(ImageError, match=pattern):
        Image.open(image_copy)


def test_symlink_data_file_outside_folder_is_refused(image_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.zst"
    shutil.copy(image_copy / "p1.zst", outside)
    (image_copy / "p1.zst").unlink()
    (image_copy / "p1.zst").symlink_to(outside)
    with pytest.raises(ImageError, match="outside the image folder"):
        Image.open(image_copy)


def test_unknown_version_is_refused(image_copy: Path) -> None:
    d = _manifest(image_copy)
    d["version"] = 3
    _write_manifest(image_copy, d)
    with pytest.raises(UnsupportedImageError, match=r"version 3.*reads version 1, 2 only"):
        Image.open(image_copy)


def test_not_our_format_is_refused(image_copy: Path) -> None:
    d = _manifest(image_copy)
    del d["format"]
    _write_manifest(image_copy, d)
    with pytest.raises(UnsupportedImageError, match="not a rescueui image"):
        Image.open(image_copy)


@pytest.mark.parametrize("field", ["streams", "created", "complete", "source_disk", "host"])
def test_missing_field_is_named(image_copy: Path, field: str) -> None:
    d = _manifest(image_copy)
    del d[field]
    _write_manifest(image_copy, d)
    with pytest.raises(ImageError, match=rf"'{field}' is missing in .*manifest\.json"):
        Image.open(image_copy)


def test_missing_stream_field_is_named(image_copy: Path) -> None:
    d = _manifest(image_copy)
    del d["streams"][2]["root_blake3"]
    _write_manifest(image_copy, d)
    with pytest.raises(ImageError, match=r"'root_blake3' is missing in stream 'gap-"):
        Image.open(image_copy)


def test_overlapping_streams_are_refused(image_copy: Path) -> None:
    d = _manifest(image_copy)
    d["streams"][1]["start_bytes"] = 0
    _write_manifest(image_copy, d)
    with pytest.raises(ImageError, match="overlap"):
        Image.open(image_copy)


def test_not_json_and_no_manifest(image_copy: Path, tmp_path: Path) -> None:
    (image_copy / "manifest.json").write_text("{ not json")
    with pytest.raises(ImageError, match="not valid JSON"):
        Image.open(image_copy)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match=r"no manifest\.json"):
        Image.open(empty)


def test_incomplete_marker_and_flag_are_refused(image_copy: Path) -> None:
    (image_copy / "INCOMPLETE").write_text("x")
    with pytest.raises(ImageError, match="incomplete image"):
        Image.open(image_copy)
    (image_copy / "INCOMPLETE").unlink()
    with Image.open(image_copy) as im:
        m = im.manifest
    m.complete = False
    save_manifest(image_copy, m)
    with pytest.raises(ImageError, match="incomplete image"):
        Image.open(image_copy)
