"""Bad input and faults: each ends in a specific message and a target in a known state.

Damaged images are refused before any write (target unchanged); a chunk that fails its
BLAKE3 check stops the restore at that chunk with nothing from its offset on written;
I/O errors name the device and offset and never end in "success".
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.errors import (
    CorruptImageError,
    ImageError,
    RestoreError,
    UnsupportedImageError,
)
from rescueui.core.identity import confirm_target
from rescueui.core.image import Image, manifest_hash
from rescueui.core.restore import plan_restore, restore
from rescueui.core.target import TargetHandle
from tests.loopdisk import LoopFactory
from tests.test_restore import (
    capture_to,
    confirmed,
    make_file_disk,
    make_source,
    sha,
)

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def private_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESCUEUI_LOCK", str(tmp_path / "rescueui.lock"))


@pytest.fixture(scope="module")
def file_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A disk image file and its captured image (no root needed)."""
    work = tmp_path_factory.mktemp("faults")
    source = work / "source.img"
    make_file_disk(source, 8 * MiB)
    yield {"source": source, "image": capture_to(source, work / "image")}


def damaged_copy(image: Path, dest: Path) -> Path:
    shutil.copytree(image, dest, ignore=shutil.ignore_patterns("reports"))
    return dest


def random_target(path: Path, size: int = 8 * MiB) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def rewrite_manifest(image: Path, edit: Any, *, rehash: bool) -> None:
    mpath = image / "manifest.json"
    raw = json.loads(mpath.read_text())
    edit(raw)
    if rehash:
        raw["manifest_blake3"] = manifest_hash(raw)
    mpath.write_text(json.dumps(raw, indent=1))


def refused_before_write(image: Path, tmp_path: Path, exc_type: type, match: str) -> None:
    target = random_target(tmp_path / "target.img")
    before = sha(target)
    with pytest.raises(exc_type, match=match):
        plan_restore(image, confirm_target(target, "target.img"), accept_warnings=True)
    assert sha(target) == before


# ------------------------------------------------------------------ refused before any write


def test_truncated_data_file_refused(file_image: dict[str, Path], tmp_path: Path) -> None:
    img = damaged_copy(file_image["image"], tmp_path / "img")
    data = img / "p1.zst"
    os.truncate(data, data.stat().st_size - 100)
    refused_before_write(img, tmp_path, CorruptImageError, "truncated|ends|size")


def test_missing_index_refused(file_image: dict[str, Path], tmp_path: Path) -> None:
    img = damaged_copy(file_image["image"], tmp_path / "img")
    (img / "p1.idx").unlink()
    refused_before_write(img, tmp_path, ImageError, "index file .*p1.idx.* missing")


def test_edited_manifest_refused(file_image: dict[str, Path], tmp_path: Path) -> None:
    img = damaged_copy(file_image["image"], tmp_path / "img")

    def relabel(raw: dict[str, Any]) -> None:
        raw["source_disk"]["serial"] = "EDITED"
        raw["streams"][1]["label"] = "edited"

    rewrite_manifest(img, relabel, rehash=False)
    refused_before_write(img, tmp_path, CorruptImageError, "manifest hash")


@pytest.mark.parametrize(
    ("field", "value"),
    [("data_file", "../../../etc/passwd"), ("index_file", "/etc/shadow"), ("name", "../p1")],
)
def test_path_traversal_refused(
    file_image: dict[str, Path], tmp_path: Path, field: str, value: str
) -> None:
    img = damaged_copy(file_image["image"], tmp_path / "img")

    def escape(raw: dict[str, Any]) -> None:
        raw["streams"][1][field] = value

    # Even with a correct manifest hash (someone recomputed it), the name is refused.
    rewrite_manifest(img, escape, rehash=True)
    refused_before_write(img, tmp_path, ImageError, "name|file")


def test_unknown_version_refused(file_image: dict[str, Path], tmp_path: Path) -> None:
    img = damaged_copy(file_image["image"], tmp_path / "img")
    rewrite_manifest(img, lambda raw: raw.update(version=99), rehash=True)
    refused_before_write(img, tmp_path, UnsupportedImageError, "version 99")


# ------------------------------------------------------------------ corrupt chunk


def corrupt_one_chunk(image: Path, stream_name: str, min_index: int = 1) -> tuple[int, int]:
    """Flip one byte inside a non-zero chunk's frame; returns (chunk index, disk offset)."""
    with Image.open(image) as img:
        stream = img.stream(stream_name)
        chunk = next(c for c in img.chunks(stream) if not c.zero and c.index >= min_index)
        where = img.data_path(stream)
        offset = img.chunk_disk_offset(stream, chunk)
        pos = chunk.offset + chunk.length // 2
    with open(where, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x5A]))
    return chunk.index, offset


def restore_stopped_at(plan: Any, stream: str, index: int, offset: int) -> Any:
    """Run the restore; it must raise CorruptImageError at that chunk. Returns the report."""
    where = f"stream '{stream}', chunk {index} (disk offset {offset})"
    with pytest.raises(CorruptImageError, match=re.escape(where)) as excinfo:
        restore(plan)
    report = excinfo.value.report
    assert report.outcome == "failed"
    assert where in report.error
    assert "Nothing from this chunk on was written" in (report.hint or "")
    assert report.report_files
    return report


@pytest.mark.root
def test_corrupt_chunk_stops_the_restore_at_that_chunk(loops: LoopFactory, tmp_path: Path) -> None:
    src = make_source(loops, "gpt", tmp_path)
    image = capture_to(src.path, tmp_path / "image")
    index, offset = corrupt_one_chunk(image, "p2", min_index=2)
    target = loops.create(64, fill="random")
    before_tail = sha(target.backing, offset, None)
    # exact: the space no filesystem uses is made zero too, so what came before the bad
    # chunk equals the source bit for bit
    plan = plan_restore(image, confirmed(target.path), accept_warnings=True, exact=True)
    report = restore_stopped_at(plan, "p2", index, offset)
    # Nothing from the bad chunk's offset onward was written ...
    assert sha(target.backing, offset, None) == before_tail
    # ... and everything before it was (it is identical to the source).
    assert sha(target.backing, 0, offset) == sha(src.path, 0, offset)
    assert report.report_files


def test_corrupt_chunk_in_a_file_target(file_image: dict[str, Path], tmp_path: Path) -> None:
    img = damaged_copy(file_image["image"], tmp_path / "img")
    index, offset = corrupt_one_chunk(img, "p1", min_index=0)
    target = random_target(tmp_path / "target.img")
    before = target.read_bytes()
    plan = plan_restore(img, confirm_target(target, "target.img"), accept_warnings=True)
    restore_stopped_at(plan, "p1", index, offset)
    after = target.read_bytes()
    assert after[offset:] == before[offset:]
    assert after[:offset] == file_image["source"].read_bytes()[:offset]


# ------------------------------------------------------------------ I/O errors


@pytest.mark.parametrize(
    ("err", "words"),
    [(errno.EIO, ["I/O error", "dmesg"]), (errno.ENODEV, ["disappeared", "resume the restore"])],
)
def test_io_error_mid_write_names_device_and_offset(
    file_image: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    words: list[str],
) -> None:
    target = random_target(tmp_path / "target.img")
    real = TargetHandle.pwrite
    fail_at = 2 * MiB
    failed_at: list[int] = []

    def failing(self: TargetHandle, view: memoryview, offset: int) -> None:
        if offset >= fail_at:
            failed_at.append(offset)
            raise OSError(err, os.strerror(err))
        real(self, view, offset)

    monkeypatch.setattr(TargetHandle, "pwrite", failing)
    plan = plan_restore(
        file_image["image"], confirm_target(target, "target.img"), accept_warnings=True
    )
    with pytest.raises(RestoreError, match=re.escape(str(target))) as excinfo:
        restore(plan)
    report = excinfo.value.report
    assert report.outcome == "failed"
    assert str(target) in report.error
    assert failed_at and f"byte {failed_at[0]}" in report.error
    for w in words:
        assert w in f"{report.error} {report.hint}"
    # The journal is kept, so the operator can resume once the disk is back.
    assert list(Path(file_image["image"]).glob("restore-journal-*.json"))
    for j in Path(file_image["image"]).glob("restore-journal-*.json"):
        j.unlink()
