"""Verify an image without a target: every chunk decompressed and hashed, roots and manifest.

``Image.open`` already checks the manifest hash, every index hash and that the chunk
digests add up to each stream root. This module reads every frame, decodes it with the
one bounded decoder (:mod:`rescueui.core.chunkcodec`: a forged frame is reported as a bad
chunk, never decompressed beyond the chunk's raw length) and compares the BLAKE3 of the
bytes with the index; the digests actually computed are combined again into each
stream's root. Work runs on a small thread pool (pread, zstd and BLAKE3 release the GIL);
results are consumed in order so progress and the first mismatch are reported in disk
order.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import blake3

from rescueui.core.chunkcodec import BadFrameError, decode_into
from rescueui.core.errors import (
    CancelledError,
    CorruptImageError,
    ImageError,
    RescueError,
    VerifyError,
)
from rescueui.core.image import ChunkRecord, Image, StreamEntry, root_of, zero_digest
from rescueui.core.images.source import detect_kind, open_image
from rescueui.core.progress import ChunkEvent, ProgressCallback, ProgressMeter
from rescueui.core.report import JobReport

REPORTS_SUBDIR = "reports"
MAX_LISTED_MISMATCHES = 50
DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class ChunkMismatch:
    stream: str
    index: int
    disk_offset: int
    expected: str
    actual: str  # hex digest, or the decoder's reason ("its zstd frame declares ...")
    refused: str = ""  # where and why, when the decoder refused the stored frame itself

    def describe(self) -> str:
        if self.refused:
            return self.refused
        return (
            f"stream '{self.stream}' chunk {self.index} (disk offset {self.disk_offset}): "
            f"expected BLAKE3 {self.expected}, got {self.actual}"
        )


_local = threading.local()


@lru_cache(maxsize=4)
def _zeros(n: int) -> bytes:
    return bytes(n)


def _buffer(n: int) -> bytearray:
    """This thread's decode buffer of exactly ``n`` bytes (reused: a full and a last chunk)."""
    bufs: dict[int, bytearray] | None = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(n)
    if buf is None:
        if len(bufs) >= 2:
            bufs.clear()
        buf = bufs[n] = bytearray(n)
    return buf


def _check_chunk(
    image: Image, stream: StreamEntry, chunk: ChunkRecord
) -> tuple[bytes, str | None, BadFrameError | None]:
    """(actual digest or b'', problem, refusal) for one chunk; problem is None when it
    matches. The frame is decoded by the one bounded decoder into a reused buffer."""
    frame = image.read_compressed(stream, chunk)
    data = _buffer(chunk.raw_length)
    try:
        decode_into(
            frame,
            memoryview(data),
            image.chunk_place(stream, chunk),
            hint="Do not restore this copy; use another copy of the image (or capture again).",
        )
    except BadFrameError as exc:
        return b"", exc.problem, exc
    if chunk.zero and data == _zeros(chunk.raw_length):
        digest = zero_digest(chunk.raw_length)  # known hash: no need to hash zeros
    else:
        digest = blake3.blake3(data).digest()
    if digest.hex() != chunk.blake3:
        return digest, digest.hex(), None
    return digest, None, None


class _Verifier:
    """Consumes chunk results in order: progress, mismatches, the digests for the root."""

    def __init__(self, image: Image, meter: ProgressMeter, chunks_total: int) -> None:
        self.image = image
        self.meter = meter
        self.chunks_total = chunks_total
        self.mismatches: list[ChunkMismatch] = []
        self.bad_count = 0
        self.chunks_done = 0

    def consume(
        self,
        stream: StreamEntry,
        digests: bytearray,
        chunk: ChunkRecord,
        fut: Future[tuple[bytes, str | None, BadFrameError | None]],
    ) -> None:
        digest, problem, refusal = fut.result()
        digests.extend(digest if len(digest) == 32 else bytes(32))
        offset = self.image.chunk_disk_offset(stream, chunk)
        if problem is not None:
            self.bad_count += 1
            if len(self.mismatches) < MAX_LISTED_MISMATCHES:
                self.mismatches.append(
                    ChunkMismatch(
                        stream.name,
                        chunk.index,
                        offset,
                        chunk.blake3,
                        problem,
                        refusal.detail if refusal is not None else "",
                    )
                )
        self.chunks_done += 1
        self.meter.advance(
            chunk.raw_length,
            stream=stream.name,
            chunks_done=self.chunks_done,
            stream_chunks_done=chunk.index + 1,
            stream_chunks_total=stream.chunk_count,
            last_chunk=ChunkEvent(
                stream=stream.name,
                index=chunk.index,
                offset=offset,
                length=chunk.raw_length,
                blake3=digest.hex() if digest else "",
                ok=problem is None,
                zero=chunk.zero,
            ),
        )


def verify_image(
    image_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    workers: int = DEFAULT_WORKERS,
) -> JobReport:
    """Check every chunk, every stream root and the manifest hash of the image in ``image_dir``.

    Returns the success report (written to ``image_dir/reports``). On a damaged image
    raises :class:`CorruptImageError` naming the first bad stream, chunk, disk offset and
    both hashes (``exc.mismatches`` lists up to 50); on other failures the matching
    :class:`RescueError`. The failed report is written too and attached as ``exc.report``.
    """
    image_dir = Path(image_dir).absolute()
    cancel = cancel or threading.Event()
    report = JobReport(job="verify-image", source=str(image_dir), image_dir=str(image_dir))
    image: Image | None = None
    try:
        if detect_kind(image_dir).kind != "rescueui":
            return _verify_foreign(image_dir, report, progress, cancel)
        image = Image.open(image_dir)
        total = image.total_bytes
        report.bytes_total = total
        report.warnings = list(image.manifest.warnings)
        report.details["manifest_blake3"] = image.manifest.manifest_blake3
        meter = ProgressMeter("verify-image", total, progress or (lambda _p: None))
        chunks_total = sum(s.chunk_count for s in image.streams)
        meter.update(phase="verify", chunks_total=chunks_total)
        v = _Verifier(image, meter, chunks_total)
        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="verify")
        try:
            for stream in image.streams:
                digests = bytearray()
                pending: deque[
                    tuple[ChunkRecord, Future[tuple[bytes, str | None, BadFrameError | None]]]
                ] = deque()
                bad_before = v.bad_count
                for chunk in image.iter_chunks(stream):
                    if cancel.is_set():
                        raise CancelledError(
                            f"Verification of {image_dir} cancelled by the operator after "
                            f"{v.chunks_done} of {chunks_total} chunks.",
                            hint="Nothing was changed; run the verification again when ready.",
                        )
                    pending.append((chunk, pool.submit(_check_chunk, image, stream, chunk)))
                    while pending and (len(pending) > 2 * workers + 2 or pending[0][1].done()):
                        v.consume(stream, digests, *pending.popleft())
                while pending:
                    v.consume(stream, digests, *pending.popleft())
                root = root_of(bytes(digests))
                status = "ok"
                if v.bad_count > bad_before:
                    status = f"{v.bad_count - bad_before} bad chunk(s)"
                elif root != stream.root_blake3:
                    status = "root mismatch"
                    v.bad_count += 1
                    v.mismatches.append(
                        ChunkMismatch(stream.name, -1, stream.start_bytes, stream.root_blake3, root)
                    )
                report.streams.append(
                    {
                        "name": stream.name,
                        "kind": stream.kind,
                        "start_bytes": stream.start_bytes,
                        "size_bytes": stream.size_bytes,
                        "root_blake3": stream.root_blake3,
                        "computed_root_blake3": root,
                        "status": status,
                    }
                )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        mismatches, bad_count, chunks_done = v.mismatches, v.bad_count, v.chunks_done
        report.bytes_done = meter.last.bytes_done
        report.details["chunks"] = chunks_done
        if mismatches:
            first = mismatches[0]
            where = (
                f"stream '{first.stream}' chunk {first.index} at disk offset {first.disk_offset}"
                if first.index >= 0
                else f"the root hash of stream '{first.stream}'"
            )
            report.details["mismatches"] = [m.__dict__ for m in mismatches]
            if first.refused:  # the decoder refused the stored frame itself
                text = (
                    f"The image {image_dir} is damaged: {bad_count} chunk(s) are bad. "
                    f"First: {first.refused}."
                )
            else:
                text = (
                    f"The image {image_dir} is damaged: {bad_count} chunk(s) do not match "
                    f"their hashes. First: {where}: expected BLAKE3 {first.expected}, got "
                    f"{first.actual}."
                )
            err = CorruptImageError(
                text,
                hint="Do not restore this copy; use another copy of the image (or capture again).",
            )
            err.mismatches = mismatches  # type: ignore[attr-defined]
            raise err
        meter.update(phase="done")
        report.finish("success")
        report.write(image_dir / REPORTS_SUBDIR)
        return report
    except RescueError as exc:
        _fail(report, exc, image_dir)
        raise
    except Exception as exc:
        err = VerifyError(
            f"Verification of {image_dir} failed unexpectedly: {type(exc).__name__}: {exc}.",
            hint="Please report this with the log.",
        )
        _fail(report, err, image_dir)
        raise err from exc
    finally:
        if image is not None:
            image.close()


def _verify_foreign(
    path: Path,
    report: JobReport,
    progress: ProgressCallback | None,
    cancel: threading.Event,
) -> JobReport:
    """What each foreign kind allows: a raw image's stream and bmap ranges are read and
    checked (``check_source``); a VM disk's metadata is checked by QEMU (``check``). The
    report says what was checked and what could not be."""
    with open_image(path) as image:
        report.details.update(image_kind=image.kind, image_description=image.describe())
        report.bytes_total = int(image.extent_bytes)
        if hasattr(image, "check_source"):  # what is read: the data ranges
            report.bytes_total = sum(e.length for e in image.extents() if e.kind == "data")
        meter = ProgressMeter("verify-image", report.bytes_total, progress or (lambda _p: None))
        meter.update(phase="verify", message=f"checking {path.name}")
        if hasattr(image, "check_source"):

            def step(done: int, total: int) -> None:
                meter.update(bytes_done=done, phase_bytes_done=done, phase_bytes_total=total)

            words = image.check_source(progress=step, cancelled=cancel)
        elif hasattr(image, "check"):
            result = image.check()
            words = result.words
            if not result.ok:
                raise CorruptImageError(
                    f"The image {path} is damaged: {words}.",
                    hint="Do not restore this copy; use another copy of the VM disk.",
                )
        else:
            words = "nothing can be checked in this kind of image"
        report.notes.append(f"Checked: {words}.")
        report.notes.append(f"What this kind of image carries: {image.integrity.words}.")
        report.bytes_done = meter.last.bytes_done
        meter.update(phase="done")
        report.finish("success")
        report.write(Path(image.dir) / REPORTS_SUBDIR)  # next to the image, or in its folder
        return report


def _fail(report: JobReport, exc: RescueError, image_dir: Path) -> None:
    report.finish("cancelled" if isinstance(exc, CancelledError) else "failed", exc)
    if image_dir.is_dir():
        directory: Path | None = image_dir / REPORTS_SUBDIR
    elif image_dir.is_file():
        directory = image_dir.parent / REPORTS_SUBDIR  # an image file: next to it
    else:
        directory = None
    report.write(directory)
    exc.report = report  # type: ignore[attr-defined]


__all__ = ["ChunkMismatch", "ImageError", "verify_image"]
