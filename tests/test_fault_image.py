"""Hostile images (issue 9): forged zstd frames, files that are not files, forged manifests.

Every image here is *index-consistent*: after a frame or a manifest field is forged, the
index, its hash and the manifest hash are rebuilt, so only the forged part is hostile and
the checks behind it are what refuses it. No root needed: the targets are files.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rescueui.core import chunkcodec, grow, parttable
from rescueui.core.chunkcodec import BadFrameError, ChunkPlace
from rescueui.core.errors import CorruptImageError, ImageError, RescueError
from rescueui.core.host import HostProfile
from rescueui.core.identity import confirm_target
from rescueui.core.image import (
    INDEX_HEADER,
    INDEX_RECORD,
    MANIFEST_NAME,
    Image,
    manifest_hash,
)
from rescueui.core.pipeline import Decoder
from rescueui.core.preflight import ImageFacts, check, read_first_sector
from rescueui.core.restore import plan_restore, restore
from rescueui.core.verify import verify_image
from tests.test_restore import capture_to, make_file_disk, sha

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parent.parent
HUGE = 1 << 37  # 128 GiB
P1_OFFSET = 1 * MiB  # p1 of make_file_disk: 3 MiB of random bytes at 1 MiB, one chunk
P1_RAW = 3 * MiB


@pytest.fixture(autouse=True)
def private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path / "rescueui.lock"))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("hostile")
    source = work / "source.img"
    make_file_disk(source, 8 * MiB)
    return {"source": source, "image": capture_to(source, work / "image")}


def copy_of(good: dict[str, Path], dest: Path) -> Path:
    shutil.copytree(good["image"], dest, ignore=shutil.ignore_patterns("reports"))
    return dest


# ------------------------------------------------------------------ building hostile images


def load_manifest(image: Path) -> dict[str, Any]:
    return json.loads((image / MANIFEST_NAME).read_text())


def store_manifest(image: Path, raw: dict[str, Any]) -> None:
    """Write ``raw`` with a valid manifest hash (so the hash check is not what refuses it)."""
    raw["manifest_blake3"] = manifest_hash(raw)
    (image / MANIFEST_NAME).write_text(json.dumps(raw, indent=1))


def frames_of(image: Path, stream: str) -> list[bytes]:
    raw = load_manifest(image)
    entry = next(s for s in raw["streams"] if s["name"] == stream)
    idx = (image / entry["index_file"]).read_bytes()
    data = (image / entry["data_file"]).read_bytes()
    return [
        data[off : off + length]
        for off, length, *_ in INDEX_RECORD.iter_unpack(idx[INDEX_HEADER.size :])
    ]


def replace_frames(image: Path, stream: str, frames: dict[int, bytes]) -> None:
    """Put other frames in place of chunks of ``stream`` and rebuild everything around them:
    data file, index (offsets, lengths), index hash, compressed size, manifest hash. Raw
    lengths, flags and chunk hashes stay: only the frames are hostile."""
    raw = load_manifest(image)
    entry = next(s for s in raw["streams"] if s["name"] == stream)
    idx = (image / entry["index_file"]).read_bytes()
    data = (image / entry["data_file"]).read_bytes()
    out = bytearray()
    records = []
    for i, (off, length, raw_len, flags, digest) in enumerate(
        INDEX_RECORD.iter_unpack(idx[INDEX_HEADER.size :])
    ):
        frame = frames.get(i, data[off : off + length])
        records.append(INDEX_RECORD.pack(len(out), len(frame), raw_len, flags, digest))
        out += frame
    new_idx = idx[: INDEX_HEADER.size] + b"".join(records)
    (image / entry["data_file"]).write_bytes(bytes(out))
    (image / entry["index_file"]).write_bytes(new_idx)
    entry["index_blake3"] = blake3.blake3(new_idx).hexdigest()
    entry["compressed_bytes"] = len(out)
    store_manifest(image, raw)


def reframe(frame: bytes, *, content_size: int | None, window_log: int | None = None) -> bytes:
    """The same zstd blocks under a new frame header: declared content size (None: not
    written) and window. A real frame from zstandard, only its header is changed."""
    params = zstandard.get_frame_parameters(frame)
    blocks = frame[zstandard.frame_header_size(frame) :]
    wlog = window_log or max(10, (params.window_size - 1).bit_length())
    fhd = 0x04 if params.has_checksum else 0x00
    fcs = b""
    if content_size is not None:
        fhd |= 3 << 6  # 8-byte content size field
        fcs = content_size.to_bytes(8, "little")
    return struct.pack("<I", 0xFD2FB528) + bytes([fhd, (wlog - 10) << 3]) + fcs + blocks


def p1_bytes(good: dict[str, Path]) -> bytes:
    with open(good["source"], "rb") as f:
        f.seek(P1_OFFSET)
        return f.read(P1_RAW)


def hostile_frames(good: dict[str, Path]) -> dict[str, tuple[bytes, str]]:
    """name -> (frame for p1 chunk 0, what the refusal says)."""
    data = p1_bytes(good)
    real = frames_of(good["image"], "p1")[0]
    no_size = zstandard.ZstdCompressor(level=3, write_content_size=False)
    return {
        "declares-128GiB": (
            reframe(real, content_size=HUGE),
            f"declares {HUGE} bytes, the chunk holds {P1_RAW}",
        ),
        "declares-4GiB": (
            reframe(real, content_size=1 << 32),
            f"declares {1 << 32} bytes, the chunk holds {P1_RAW}",
        ),
        "no-size-overlong": (no_size.compress(data + b"x" * MiB), "more than"),
        "no-size-short": (
            no_size.compress(data[: 2 * MiB]),
            f"decompresses to {2 * MiB} bytes, the chunk holds {P1_RAW}",
        ),
        "huge-window": (reframe(real, content_size=None, window_log=31), "decoding window"),
        "second-frame": (
            real + zstandard.ZstdCompressor().compress(b""),
            "follow its zstd frame",
        ),
        "trailing-bytes": (real + bytes(16), "16 bytes follow its zstd frame"),
        "skippable": (struct.pack("<II", 0x184D2A50, 4) + b"junk" + real, "skippable"),
        "not-zstd": (os.urandom(len(real)), "zstd frame"),
    }


# ------------------------------------------------------------------ the bounded decoder


def place() -> ChunkPlace:
    return ChunkPlace("p1", 0, P1_OFFSET, "/img/p1.zst", 0)


@pytest.mark.parametrize("level", [1, 3, 19])
@pytest.mark.parametrize("content_size", [True, False])
@pytest.mark.parametrize("size", [1, 4095, 2 * MiB + 3, 4 * MiB])
def test_real_frames_decode(level: int, content_size: bool, size: int) -> None:
    data = (os.urandom(size // 3) + b"text " * size)[:size]
    frame = zstandard.ZstdCompressor(
        level=level, write_content_size=content_size, write_checksum=level == 19
    ).compress(data)
    assert chunkcodec.frame_problem(frame, size) is None
    assert chunkcodec.decode(frame, size, place()) == data
    out = memoryview(bytearray(size))
    assert bytes(chunkcodec.decode_into(frame, out, place())) == data
    assert chunkcodec.decode_prefix(frame, size, 512, place()) == data[:512]


def test_reframed_without_content_size_still_decodes(good: dict[str, Path]) -> None:
    real = frames_of(good["image"], "p1")[0]
    frame = reframe(real, content_size=None)
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert chunkcodec.decode(frame, P1_RAW, place()) == p1_bytes(good)


def test_hostile_frames_are_refused_by_the_decoder(good: dict[str, Path]) -> None:
    for name, (frame, words) in hostile_frames(good).items():
        with pytest.raises(BadFrameError) as exc:
            chunkcodec.decode(frame, P1_RAW, place())
        msg = str(exc.value)
        assert words in msg, (name, msg)
        assert "stream 'p1', chunk 0 (disk offset 1048576)" in msg, msg
        assert "byte 0 of /img/p1.zst" in msg and "another copy" in msg, msg


def test_a_flood_of_tiny_blocks_is_refused_quickly() -> None:
    header = struct.pack("<I", 0xFD2FB528) + bytes([0x00, 12 << 3])
    rle = ((1 << 3) | (1 << 1)).to_bytes(3, "little") + b"a"  # 1-byte RLE blocks
    frame = header + rle * (MiB // 4)
    problem = chunkcodec.frame_problem(frame, 4 * MiB)
    assert problem is not None and "blocks" in problem


# ------------------------------------------------------------------ verify and restore refuse


@pytest.mark.parametrize(
    "name",
    [
        "declares-128GiB",
        "no-size-overlong",
        "no-size-short",
        "huge-window",
        "second-frame",
        "trailing-bytes",
        "skippable",
    ],
)
def test_verify_reports_a_forged_frame_as_a_bad_chunk(
    good: dict[str, Path], tmp_path: Path, name: str
) -> None:
    frame, words = hostile_frames(good)[name]
    img = copy_of(good, tmp_path / "img")
    replace_frames(img, "p1", {0: frame})
    Image.open(img).close()  # index-consistent: open cannot see it
    with pytest.raises(CorruptImageError) as exc:
        verify_image(img)
    msg = str(exc.value)
    assert words in msg, msg
    assert "stream 'p1', chunk 0 (disk offset 1048576)" in msg, msg
    assert str(img / "p1.zst") in msg and "Do not restore this copy" in msg
    report = exc.value.report  # type: ignore[attr-defined]
    assert report.outcome == "failed"
    statuses = {s["name"]: s["status"] for s in report.streams}
    assert statuses["p1"] == "1 bad chunk(s)" and statuses["p2"] == "ok"


@pytest.mark.parametrize("name", ["declares-128GiB", "no-size-overlong", "huge-window"])
def test_restore_stops_at_a_forged_frame_and_writes_nothing_of_it(
    good: dict[str, Path], tmp_path: Path, name: str
) -> None:
    frame, words = hostile_frames(good)[name]
    img = copy_of(good, tmp_path / "img")
    replace_frames(img, "p1", {0: frame})
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(8 * MiB))
    before = target.read_bytes()
    plan = plan_restore(img, confirm_target(target, "target.img"), accept_warnings=True)
    with pytest.raises(CorruptImageError) as exc:
        restore(plan)
    msg = str(exc.value)
    assert words in msg and "stream 'p1', chunk 0 (disk offset 1048576)" in msg, msg
    assert "Nothing from this chunk on was written" in msg
    assert exc.value.report.outcome == "failed"  # type: ignore[attr-defined]
    after = target.read_bytes()
    assert after[P1_OFFSET:] == before[P1_OFFSET:]  # nothing of that chunk or after it
    assert after[:P1_OFFSET] == good["source"].read_bytes()[:P1_OFFSET]


def test_frames_without_content_size_restore_and_verify(
    good: dict[str, Path], tmp_path: Path
) -> None:
    """The bound does not need the header: a frame without a content size is fine."""
    img = copy_of(good, tmp_path / "img")
    real = frames_of(img, "p1")[0]
    replace_frames(img, "p1", {0: reframe(real, content_size=None)})
    assert verify_image(img).outcome == "success"
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(8 * MiB))
    plan = plan_restore(img, confirm_target(target, "target.img"), accept_warnings=True)
    assert restore(plan).outcome == "success"
    assert sha(target) == sha(good["source"])


def test_forged_head_frame_leaves_boot_code_unchecked(
    good: dict[str, Path], tmp_path: Path
) -> None:
    img = copy_of(good, tmp_path / "img")
    real = frames_of(img, "head")[0]
    replace_frames(img, "head", {0: reframe(real, content_size=HUGE)})
    with Image.open(img) as im:
        mbr, note = read_first_sector(im)
    assert mbr is None and f"declares {HUGE} bytes" in note


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["RESCUEUI_LOCK"] = sys.argv[3]
    from rescueui.core.errors import RescueError
    from rescueui.core.identity import confirm_target
    from rescueui.core.restore import plan_restore, restore
    from rescueui.core.verify import verify_image

    def peak() -> int:
        # VmHWM: this process's own peak (ru_maxrss carries the parent's peak over exec,
        # which would hide any growth below it)
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) * 1024

    base = peak()
    out = {}
    try:
        verify_image(sys.argv[1])
        out["verify"] = "success"
    except RescueError as exc:
        out["verify"] = str(exc)
    try:
        plan = plan_restore(
            sys.argv[1], confirm_target(sys.argv[2], "target.img"), accept_warnings=True
        )
        restore(plan)
        out["restore"] = "success"
    except RescueError as exc:
        out["restore"] = str(exc)
    out["grew"] = peak() - base
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("declared", [1 << 32, HUGE])
def test_memory_stays_bounded(good: dict[str, Path], tmp_path: Path, declared: int) -> None:
    img = copy_of(good, tmp_path / "img")
    real = frames_of(img, "p1")[0]
    replace_frames(img, "p1", {0: reframe(real, content_size=declared)})
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(8 * MiB))
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(img), str(target), str(tmp_path / "lock")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    want = f"declares {declared} bytes, the chunk holds {P1_RAW}"
    assert want in out["verify"] and want in out["restore"], out
    assert out["grew"] < 300 * MiB, out


# ------------------------------------------------------------------ files that are not files

OPEN_SCRIPT = textwrap.dedent(
    """
    import sys
    from rescueui.core.errors import RescueError
    from rescueui.core.image import Image
    from rescueui.core.pipeline import Decoder
    try:
        if sys.argv[2] == "decoder":
            Decoder(1 << 20)._fd(sys.argv[1])
        else:
            Image.open(sys.argv[1]).close()
    except RescueError as exc:
        print("REFUSED", type(exc).__name__, exc)
        sys.exit(3)
    print("OPENED")
    """
)


def open_in_child(path: Path, how: str = "image") -> subprocess.CompletedProcess[str]:
    """Open in a child process with a timeout: a hang fails the test instead of CI."""
    return subprocess.run(
        [sys.executable, "-c", OPEN_SCRIPT, str(path), how],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("name", [MANIFEST_NAME, "p1.idx", "p1.zst"])
def test_fifo_in_place_of_an_image_file_is_refused_at_once(
    good: dict[str, Path], tmp_path: Path, name: str
) -> None:
    img = copy_of(good, tmp_path / "img")
    (img / name).unlink()
    os.mkfifo(img / name)
    proc = open_in_child(img)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "REFUSED ImageError" in proc.stdout
    assert str(img / name) in proc.stdout and "FIFO" in proc.stdout, proc.stdout


def test_fifo_data_file_refused_by_the_restore_decoder(tmp_path: Path) -> None:
    fifo = tmp_path / "p1.zst"
    os.mkfifo(fifo)
    proc = open_in_child(fifo, "decoder")
    assert proc.returncode == 3 and "FIFO" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_in_place_of_an_index_is_refused(good: dict[str, Path], tmp_path: Path) -> None:
    img = copy_of(good, tmp_path / "img")
    (img / "p2.idx").unlink()
    os.mknod(img / "p2.idx", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
    proc = open_in_child(img)
    assert proc.returncode == 3 and "character device" in proc.stdout, proc.stdout


def test_symlink_inside_the_folder_is_refused_even_to_a_sibling(
    good: dict[str, Path], tmp_path: Path
) -> None:
    img = copy_of(good, tmp_path / "img")
    (img / "p1.idx").rename(img / "p1-real.idx")
    (img / "p1.idx").symlink_to("p1-real.idx")
    with pytest.raises(ImageError, match=r"p1\.idx is a symbolic link") as exc:
        Image.open(img)
    assert "outside" not in str(exc.value)
    (img / MANIFEST_NAME).rename(img / "m.json")
    (img / MANIFEST_NAME).symlink_to(tmp_path / "img" / "m.json")
    with pytest.raises(ImageError, match=r"manifest\.json is a symbolic link"):
        Image.open(img)


def test_the_image_folder_itself_may_be_a_symlink(good: dict[str, Path], tmp_path: Path) -> None:
    img = copy_of(good, tmp_path / "img")
    link = tmp_path / "via-link"
    link.symlink_to(img)
    with Image.open(link) as im:
        assert im.read_chunk(im.stream("p1"), im.chunk(im.stream("p1"), 0)) == p1_bytes(good)


def test_oversized_manifest_is_refused(good: dict[str, Path], tmp_path: Path) -> None:
    img = copy_of(good, tmp_path / "img")
    with open(img / MANIFEST_NAME, "ab") as f:
        f.truncate(16 * MiB + 1)
    with pytest.raises(ImageError, match="too large for a manifest"):
        Image.open(img)


def test_data_file_swapped_after_open_is_noticed(good: dict[str, Path], tmp_path: Path) -> None:
    img = copy_of(good, tmp_path / "img")
    with Image.open(img) as im:
        with open(img / "p2.zst", "ab") as f:
            f.write(b"more")
        s = im.stream("p2")
        with pytest.raises(CorruptImageError, match=r"p2\.zst .*changed since"):
            im.read_compressed(s, im.chunk(s, 0))


# ------------------------------------------------------------------ forged manifests (valid hash)


def forged(good: dict[str, Path], tmp_path: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    img = copy_of(good, tmp_path / "img")
    raw = load_manifest(img)
    change(raw)
    store_manifest(img, raw)
    return img


def part(n: int, **kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["partition_table"]["partitions"][n].update(kw)


def table(**kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["partition_table"].update(kw)


def src(**kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["source_disk"].update(kw)


def host(**kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["host"].update(kw)


def stream(n: int, **kw: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["streams"][n].update(kw)


FORGED_FIELDS = [
    (table(sectorsize="abc"), "partition_table.sectorsize", "wrong type"),
    (table(sectorsize=1000), "partition_table.sectorsize", "not a sector size"),
    (table(partitions="x"), "partition_table.partitions", "wrong type"),
    (table(partitions=None), "partition_table.partitions", "wrong type (null)"),
    (table(sectorsize=None), "partition_table.sectorsize", "wrong type (null)"),
    (part(0, type=None), "partition_table.partitions[0].type", "wrong type (null)"),
    (table(partitions=[{"node": "x1"}] * 2000), "partition_table.partitions", "at most"),
    (table(label="gpt\nstart=0"), "partition_table.label", "control characters"),
    (table(id='X" , type=83'), "partition_table.id", "impossible value"),
    (table(lastlba=-1), "partition_table.lastlba", "out of range"),
    (part(0, start="2048"), "partition_table.partitions[0].start", "wrong type"),
    (part(1, size=1.5), "partition_table.partitions[1].size", "wrong type"),
    (part(0, start=True), "partition_table.partitions[0].start", "wrong type"),
    (part(0, name='EFI", type=83'), "partition_table.partitions[0].name", "quotes"),
    (part(0, name="EFI\nstart=1"), "partition_table.partitions[0].name", "control"),
    (part(0, name="E\x1b[2J"), "partition_table.partitions[0].name", "control"),
    (part(0, name="a\\x22b"), "partition_table.partitions[0].name", "backslash"),
    (part(0, type="83, bootable"), "partition_table.partitions[0].type", "impossible value"),
    (part(0, uuid="1234'5"), "partition_table.partitions[0].uuid", "impossible value"),
    (part(0, attrs='x"y'), "partition_table.partitions[0].attrs", "impossible value"),
    (part(0, node="no-number"), "partition_table.partitions[0].node", "partition number"),
    (part(1, node="/dev/x1"), "partition_table.partitions[1].node", "repeats"),
    (part(0, bootable="yes"), "partition_table.partitions[0].bootable", "true or false"),
    (src(physical_sector_size=[1]), "source_disk.physical_sector_size", "wrong type"),
    (src(logical_sector_size=3), "source_disk.logical_sector_size", "not a sector size"),
    (src(size_bytes=-1), "source_disk", "out of range"),
    (src(size_bytes="64"), "source_disk", "wrong type"),
    (src(model=["M"]), "source_disk.model", "wrong type"),
    (src(bus=7), "source_disk.bus", "wrong type"),
    (host(cpus="many"), "host.cpus", "wrong type"),
    (host(cpus=2.5), "host.cpus", "wrong type"),
    (host(memory_bytes=-5), "host.memory_bytes", "out of range"),
    (host(firmware=["uefi"]), "host.firmware", "wrong type"),
    (host(nics="eth0"), "host.nics", "wrong type"),
    (host(nics=[{"name": "eth0", "mac": 5}]), "host.nics[0].mac", "wrong type"),
    (host(nics=[{"physical": "yes"}]), "host.nics[0].physical", "true or false"),
    (host(disks=[1]), "host.disks[0]", "wrong type"),
    (host(storage_controllers=[None]), "host.storage_controllers[0]", "wrong type"),
    (lambda raw: raw.update(host=[]), "host", "wrong type"),
    (lambda raw: raw.update(warnings=[1]), "warnings", "list of"),
    (lambda raw: raw.update(warnings=["w"] * 2000), "warnings", "list of"),
    (lambda raw: raw.update(created=5), "created", "wrong type"),
    (lambda raw: raw.update(tool_version="v" * 5000), "tool_version", "characters long"),
    (stream(1, label=5), "label", "wrong type"),
    (stream(1, fs_type="ext4; rm -rf /"), "fs_type", "not a filesystem name"),
    (stream(1, kind="gap"), "kind", "partition stream"),
    (stream(0, partition_number=3), "partition_number", "must be null"),
    (stream(2, name="gap-1"), "gap-1", "named by its start"),
]


@pytest.mark.parametrize(
    ("change", "field", "words"), FORGED_FIELDS, ids=[f"{f}:{w}" for _, f, w in FORGED_FIELDS]
)
def test_forged_field_with_valid_hash_is_refused_at_open(
    good: dict[str, Path], tmp_path: Path, change: Any, field: str, words: str
) -> None:
    img = forged(good, tmp_path, change)
    with pytest.raises(ImageError) as exc:
        Image.open(img)
    msg = str(exc.value)
    assert f"'{field}" in msg or f"{field}'" in msg or field in msg, msg
    assert words in msg, msg
    assert str(img / MANIFEST_NAME) in msg or "stream" in msg, msg
    assert "manifest hash" not in msg
    assert "\x1b" not in msg and "\n" not in msg  # shown escaped, never raw


def test_forged_field_fails_verify_and_restore_cleanly(
    good: dict[str, Path], tmp_path: Path
) -> None:
    img = forged(good, tmp_path, src(physical_sector_size=[1]))
    with pytest.raises(ImageError, match="physical_sector_size") as exc:
        verify_image(img)
    assert exc.value.report.outcome == "failed"  # type: ignore[attr-defined]
    target = tmp_path / "target.img"
    target.write_bytes(bytes(8 * MiB))
    with pytest.raises(ImageError, match="physical_sector_size"):
        plan_restore(img, confirm_target(target, "target.img"), accept_warnings=True)
    assert target.read_bytes() == bytes(8 * MiB)


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_manifest_is_refused(
    good: dict[str, Path], tmp_path: Path, depth: int
) -> None:
    img = copy_of(good, tmp_path / "img")
    text = (img / MANIFEST_NAME).read_text()
    deep = "[" * depth + "]" * depth
    text = text.replace('"host": {', f'"deep": {deep}, "host": {{', 1)
    (img / MANIFEST_NAME).write_text(text)
    with pytest.raises(CorruptImageError, match=r"manifest\.json is nested"):
        Image.open(img)


def test_unusual_but_harmless_names_are_kept_and_quoted(
    good: dict[str, Path], tmp_path: Path
) -> None:
    name = "Système ø, data=1 ;#"
    img = forged(good, tmp_path, part(1, name=name))
    with Image.open(img) as im:
        assert im.manifest.partition_table is not None
        script = parttable.table_to_script(im.manifest.partition_table, "/dev/sdz")
    lines = script.splitlines()
    parts = [ln for ln in lines if ln.startswith("/dev/sdz")]
    assert len(parts) == 2 and f'name="{name}"' in parts[1]


def test_nan_is_not_a_number_here(good: dict[str, Path], tmp_path: Path) -> None:
    img = copy_of(good, tmp_path / "img")
    text = (img / MANIFEST_NAME).read_text().replace('"cpus": ', '"cpus": NaN, "x": ', 1)
    (img / MANIFEST_NAME).write_text(text)
    with pytest.raises(ImageError, match="not valid JSON"):
        Image.open(img)


# ------------------------------------------------------------------ fuzzing the parsers

JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 1, 511, 512, 4096, 1 << 62, 2**64])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(['"', "\n", "a\x1bb", "x\\y", "gpt", "dos", "/dev/sda1", "83", ""])
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@pytest.fixture(scope="module")
def fuzz_dir(good: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_of(good, tmp_path_factory.mktemp("fuzz") / "img")


def _consume(img: Image) -> None:
    """What the rest of the program does with an opened manifest (must not crash)."""
    facts = ImageFacts.from_image(img)
    target = {
        "path": "/dev/sdz",
        "size_bytes": 1 << 34,
        "logical_sector_size": 512,
        "physical_sector_size": 4096,
        "bus": "sata",
        "kind": "block",
        "partitions": [],
        "reasons": [],
    }
    here = HostProfile(
        cpus=2,
        memory_bytes=1 << 30,
        firmware="uefi",
        dmi_vendor=None,
        dmi_product=None,
        virtual=None,
    )
    check(facts, target, host=here)
    table_ = img.manifest.partition_table
    if table_:
        for size in (1 * MiB, 8 * MiB, 1 << 34):  # the grow step's table fitting
            try:
                grow.adapt_table(table_, size, grow=True)
            except RescueError:
                pass
        try:
            script = parttable.table_to_script(table_, "/dev/sdz")
        except RescueError:
            return
        # one line per partition: nothing in a value can start a new line or field
        parts = table_.get("partitions") or []
        assert sum(ln.startswith("/dev/sdz") for ln in script.splitlines()) == len(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_manifest(good: dict[str, Path], fuzz_dir: Path, data: st.DataObject) -> None:
    raw = load_manifest(good["image"])
    paths = [p for p in _paths(raw) if p and p[0] != "manifest_blake3"]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        holder: Any = raw
        try:
            for key in path[:-1]:
                holder = holder[key]
            if data.draw(st.booleans()) and isinstance(holder, dict):
                holder.pop(path[-1], None)
            else:
                holder[path[-1]] = data.draw(JSON_VALUE)
        except (KeyError, IndexError, TypeError):
            continue
    if isinstance(raw, dict):
        raw["manifest_blake3"] = manifest_hash(raw)
    (fuzz_dir / MANIFEST_NAME).write_text(json.dumps(raw))
    try:
        img = Image.open(fuzz_dir)
    except RescueError:
        return
    with img:
        _consume(img)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_index(good: dict[str, Path], fuzz_dir: Path, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["p1", "p2", "gap-4194304", "head"]))
    raw = load_manifest(good["image"])
    entry = next(s for s in raw["streams"] if s["name"] == name)
    valid = (good["image"] / entry["index_file"]).read_bytes()
    how = data.draw(st.sampled_from(["random", "flip", "cut", "grow", "fields"]))
    if how == "random":
        idx = data.draw(st.binary(max_size=400))
    elif how == "flip":
        buf = bytearray(valid)
        for pos in data.draw(st.lists(st.integers(0, len(valid) - 1), min_size=1, max_size=4)):
            buf[pos] ^= data.draw(st.integers(1, 255))
        idx = bytes(buf)
    elif how == "cut":
        idx = valid[: data.draw(st.integers(0, len(valid) - 1))]
    elif how == "grow":
        idx = valid + data.draw(st.binary(min_size=1, max_size=120))
    else:  # plausible records with wild values
        records = []
        for off, length, raw_len, flags, digest in INDEX_RECORD.iter_unpack(
            valid[INDEX_HEADER.size :]
        ):
            records.append(
                INDEX_RECORD.pack(
                    data.draw(st.sampled_from([off, 0, 2**64 - 1, off + 1])),
                    data.draw(st.sampled_from([length, 0, 2**32 - 1, length - 1])),
                    data.draw(st.sampled_from([raw_len, 0, 2**32 - 1])),
                    data.draw(st.sampled_from([flags, 1, 255])),
                    digest,
                )
            )
        idx = valid[: INDEX_HEADER.size] + b"".join(records)
    shutil.copy(good["image"] / entry["index_file"], fuzz_dir / entry["index_file"])
    (fuzz_dir / entry["index_file"]).write_bytes(idx)
    entry["index_blake3"] = blake3.blake3(idx).hexdigest()
    raw["manifest_blake3"] = manifest_hash(raw)
    (fuzz_dir / MANIFEST_NAME).write_text(json.dumps(raw))
    try:
        img = Image.open(fuzz_dir)
    except RescueError:
        return
    finally:
        shutil.copy(good["image"] / entry["index_file"], fuzz_dir / entry["index_file"])
    with img:
        s = img.stream(name)
        for c in img.iter_chunks(s):
            try:
                img.read_chunk(s, c)
            except RescueError:
                pass


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_frames(data: st.DataObject) -> None:
    raw_length = data.draw(st.sampled_from([1, 100, 4096, 70_000]))
    content = data.draw(st.binary(max_size=200)) * (raw_length // 100 + 1)
    content = content[:raw_length]
    frame = zstandard.ZstdCompressor(
        level=data.draw(st.sampled_from([1, 3])),
        write_content_size=data.draw(st.booleans()),
        write_checksum=data.draw(st.booleans()),
    ).compress(content)
    how = data.draw(st.sampled_from(["as-is", "flip", "cut", "append", "random"]))
    if how == "flip":
        buf = bytearray(frame)
        for pos in data.draw(st.lists(st.integers(0, len(frame) - 1), min_size=1, max_size=3)):
            buf[pos] ^= data.draw(st.integers(1, 255))
        frame = bytes(buf)
    elif how == "cut":
        frame = frame[: data.draw(st.integers(0, len(frame)))]
    elif how == "append":
        frame += data.draw(st.binary(min_size=1, max_size=20))
    elif how == "random":
        frame = data.draw(st.binary(max_size=300))
    try:
        out = chunkcodec.decode(frame, raw_length, place())
    except BadFrameError:
        return
    assert len(out) == raw_length
    if how == "as-is" and len(content) == raw_length:
        assert out == content


def test_decoder_of_the_pipeline_is_the_bounded_one(good: dict[str, Path], tmp_path: Path) -> None:
    """The restore pipeline's Decoder refuses a forged frame before writing a byte of it."""
    img = copy_of(good, tmp_path / "img")
    real = frames_of(img, "p1")[0]
    replace_frames(img, "p1", {0: reframe(real, content_size=HUGE)})
    from rescueui.core.pipeline import whole_disk_segments

    with Image.open(img) as im:
        segs = whole_disk_segments(im)
        seg = next(s for s in (segs[i] for i in range(len(segs))) if s.stream == "p1")
        dec = Decoder(4 * MiB + 65536)
        out = memoryview(bytearray(4 * MiB))
        try:
            with pytest.raises(BadFrameError, match=f"declares {HUGE} bytes"):
                dec.decode(seg, out)
        finally:
            dec.close()
    assert bytes(out[:16]) == bytes(16)


PLAUSIBLE = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=1 << 20)
    | st.sampled_from([0, 1, 512, 4096, 65536, 1 << 40, 1 << 62])
    | st.text(alphabet="ab1 -_:,=\"'\\\n\r\x1b\x9bé/", max_size=12)
    | st.sampled_from(["gpt", "dos", "sun", "0x1234", "83", "5", "/dev/sda1", "x9999", "uefi"])
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_table_and_host_values(
    good: dict[str, Path], fuzz_dir: Path, data: st.DataObject
) -> None:
    """Plausible values in the parts pre-flight and the grow step read: either refused at
    open, or every consumer copes (and the sfdisk script keeps one line per partition)."""
    raw = load_manifest(good["image"])
    sections = [raw["partition_table"], *raw["partition_table"]["partitions"], raw["host"]]
    sections += [raw["source_disk"], *raw["host"]["nics"], *raw["host"]["disks"]]
    for _ in range(data.draw(st.integers(1, 4))):
        section = data.draw(st.sampled_from(sections))
        keys = [*section.keys(), "table-length", "bootable", "attrs", "name", "id"]
        section[data.draw(st.sampled_from(keys))] = data.draw(PLAUSIBLE)
    raw["manifest_blake3"] = manifest_hash(raw)
    (fuzz_dir / MANIFEST_NAME).write_text(json.dumps(raw))
    try:
        img = Image.open(fuzz_dir)
    except RescueError:
        return
    with img:
        _consume(img)
