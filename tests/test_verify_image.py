"""Image verification without a target: every chunk, every root; damage named precisely."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from rescueui.core.capture import capture
from rescueui.core.errors import CancelledError, CorruptImageError, ImageError
from rescueui.core.image import Image
from rescueui.core.progress import Progress
from rescueui.core.report import FALLBACK_DIR, JobReport
from rescueui.core.verify import verify_image
from tests.imagefixtures import make_disk

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("verify")
    disk = make_disk(tmp / "src")
    capture(disk.path, tmp / "image")
    return tmp / "image"


@pytest.fixture
def copy(good: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(good, dst, ignore=shutil.ignore_patterns("reports"))
    return dst


def test_good_image_verifies(copy: Path) -> None:
    events: list[Progress] = []
    report = verify_image(copy, progress=events.append)
    assert report.outcome == "success"
    with Image.open(copy) as im:
        total = im.total_bytes
        chunks = sum(s.chunk_count for s in im.streams)
    assert report.bytes_done == total == events[-1].bytes_done
    assert report.details["chunks"] == chunks
    assert [s["status"] for s in report.streams] == ["ok"] * len(report.streams)
    assert all(s["computed_root_blake3"] == s["root_blake3"] for s in report.streams)
    assert all(e.last_chunk.ok for e in events if e.last_chunk)
    jpath = Path(report.report_files[0])
    assert jpath.parent == copy / "reports"
    assert json.loads(jpath.read_text())["outcome"] == "success"


def test_flipped_byte_in_a_compressed_chunk_is_named(copy: Path) -> None:
    with Image.open(copy) as im:
        s = im.stream("p2")
        target = next(c for c in im.chunks(s) if not c.zero and c.index > 0)
        offset_on_disk = im.chunk_disk_offset(s, target)
    p = copy / "p2.zst"
    data = bytearray(p.read_bytes())
    data[target.offset + target.length // 2] ^= 0x40
    p.write_bytes(bytes(data))
    Image.open(copy).close()  # the index is intact: open cannot see it
    events: list[Progress] = []
    with pytest.raises(CorruptImageError) as exc:
        verify_image(copy, progress=events.append)
    msg = str(exc.value)
    assert f"stream 'p2' chunk {target.index} at disk offset {offset_on_disk}" in msg
    assert target.blake3 in msg
    bad = [e.last_chunk for e in events if e.last_chunk and not e.last_chunk.ok]
    assert [(c.stream, c.index) for c in bad] == [("p2", target.index)]
    report = exc.value.report  # type: ignore[attr-defined]
    assert report.outcome == "failed"
    assert report.details["mismatches"][0]["index"] == target.index
    statuses = {s["name"]: s["status"] for s in report.streams}
    assert statuses["p2"] == "1 bad chunk(s)" and statuses["p1"] == "ok"
    assert Path(report.report_files[0]).exists()


def test_frame_swapped_between_chunks_is_detected(copy: Path) -> None:
    """Two equal-length frames swapped: every frame decodes, but hashes no longer match."""
    with Image.open(copy) as im:
        s = im.stream("p1")
        zero = [c for c in im.chunks(s) if c.zero]
        other = [c for c in im.chunks(s) if not c.zero]
    if not zero or not other:
        pytest.skip("needs a zero and a non-zero chunk in p1")
    z, o = zero[0], other[0]
    p = copy / "p1.zst"
    data = bytearray(p.read_bytes())
    # replace the zero chunk's frame with the start of the non-zero one's (same length window)
    data[z.offset : z.offset + z.length] = data[o.offset : o.offset + z.length]
    p.write_bytes(bytes(data))
    with pytest.raises(
        CorruptImageError, match=rf"stream 'p1' chunk {min(z.index, o.index)}|stream 'p1'"
    ):
        verify_image(copy)


def test_damaged_index_is_refused_before_reading(copy: Path) -> None:
    (copy / "tail.idx").write_bytes(b"short")
    with pytest.raises(ImageError, match=r"tail\.idx") as exc:
        verify_image(copy)
    assert exc.value.report.outcome == "failed"  # type: ignore[attr-defined]


def test_cancel(copy: Path) -> None:
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        if p.chunks_done >= 2:
            cancel.set()

    with pytest.raises(CancelledError) as exc:
        verify_image(copy, progress=progress, cancel=cancel)
    assert exc.value.report.outcome == "cancelled"  # type: ignore[attr-defined]


def test_report_falls_back_when_folder_is_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    report = JobReport(job="verify-image", image_dir=str(tmp_path))
    report.finish("failed", CorruptImageError("chunk 3 is bad.", hint="Use another copy."))
    jpath, tpath = report.write(blocker / "reports")
    assert jpath.parent == FALLBACK_DIR and jpath.exists() and tpath.exists()
    text = tpath.read_text()
    assert (
        "FAILED" in text and "chunk 3 is bad." in text and "Next step:   Use another copy." in text
    )
    assert "could not be written" in text
    data = json.loads(jpath.read_text())
    assert data["error_type"] == "CorruptImageError" and data["outcome"] == "failed"
    assert str(jpath) in data["report_files"]
