"""Hostile files around an image (issue 9): planted symlinks, FIFOs, devices, huge or
malformed journals and lock files, undecodable folder names, terminal escapes in reports.

Nothing here touches a device: every symlink points at a scratch file the test creates (or
at /dev/zero, which is only ever *read*), and the checks are that the scratch files stay
byte-identical and that every refusal is a clear RescueError.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rescueui.core import journal as journal_mod
from rescueui.core import report as report_mod
from rescueui.core.errors import JournalError, LockError, RescueError
from rescueui.core.identity import DiskIdentity, identity_of
from rescueui.core.journal import (
    JOURNAL_LIMIT,
    PREFIX,
    Journal,
    find_journal,
    journal_key,
)
from rescueui.core.lock import LockHolder, WriterLock, read_holder
from rescueui.core.report import JobReport

MiB = 1024 * 1024
MHASH = "ab" * 32
SCRATCH = b"scratch file: must stay exactly as it is\n" * 8

# Characters a terminal would act on: ESC, BEL, CR, CSI (C1), bidi override.
EVIL = ("\x1b]0;evil\x07", "\x1b[2J", "\r", "\x9b", "\u202e", "\u061c")
BAD_BYTES = (b"\x1b", b"\x07", b"\x0d", b"\x9b")


# ------------------------------------------------------------------ helpers


def scratch(path: Path) -> Path:
    path.write_bytes(SCRATCH)
    return path


def target_identity(tmp_path: Path) -> DiskIdentity:
    t = tmp_path / "target.img"
    if not t.exists():
        t.write_bytes(b"\0" * 4096)
    return identity_of(t)


def journal_name(ident: DiskIdentity, partition: int | None = None) -> str:
    return f"{PREFIX}{journal_key(MHASH, ident, partition)}.json"


def finishes_within(fn: Callable[[], Any], seconds: float = 10.0) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it blocks."""
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=runner, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked (a FIFO or device was opened without O_NONBLOCK)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@contextlib.contextmanager
def fifo_unblocker(path: Path) -> Iterator[None]:
    """Open the FIFO's other end if a test leaves a reader blocked, so no thread hangs."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)


@pytest.fixture
def journal_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    fallback = tmp_path / "journals"
    monkeypatch.setenv("RESCUEUI_JOURNAL_DIR", str(fallback))
    return image_dir, fallback


def valid_journal_dict(segments_total: int = 10) -> dict[str, Any]:
    return {
        "version": 1,
        "image_dir": "/media/stick/image",
        "manifest_blake3": MHASH,
        "target": {"path": "/dev/sdb", "kind": "block"},
        "target_key": {"kind": "block", "size_bytes": 4096},
        "partition": None,
        "segments_total": segments_total,
        "durable_segments": 4,
        "durable_bytes": 16 * MiB,
        "stream": "p1",
        "chunk": 3,
        "table_written": True,
        "started": "2024-01-01T00:00:00+0000",
        "updated": "2024-01-01T00:01:00+0000",
    }


# ------------------------------------------------------------------ 1. journal writes


def test_journal_never_writes_through_a_symlink_at_the_old_tmp_name(
    tmp_path: Path, journal_dirs: tuple[Path, Path]
) -> None:
    image_dir, _ = journal_dirs
    ident = target_identity(tmp_path)
    victim = scratch(tmp_path / "victim.bin")
    name = journal_name(ident)
    (image_dir / f"{name}.tmp").symlink_to(victim)
    j = Journal.create(image_dir, MHASH, ident, None, segments_total=10)
    j.record(3, 12 * MiB, "p1", 2)
    assert victim.read_bytes() == SCRATCH
    assert j.path == image_dir / name
    assert stat.S_ISREG(os.lstat(j.path).st_mode)
    assert json.loads(j.path.read_text())["durable_segments"] == 3


def test_journal_symlink_at_its_own_name_is_replaced_not_written_through(
    tmp_path: Path, journal_dirs: tuple[Path, Path]
) -> None:
    image_dir, _ = journal_dirs
    ident = target_identity(tmp_path)
    victim = scratch(tmp_path / "victim.bin")
    (image_dir / journal_name(ident)).symlink_to(victim)
    j = Journal.create(image_dir, MHASH, ident, None, segments_total=10)
    j.record(5, 20 * MiB, "p2", 0)
    assert victim.read_bytes() == SCRATCH
    assert stat.S_ISREG(os.lstat(j.path).st_mode)
    j.remove()
    assert victim.read_bytes() == SCRATCH and victim.exists()
    assert not os.path.lexists(j.path)


def test_journal_never_written_outside_its_folder_when_the_folder_is_swapped(
    tmp_path: Path, journal_dirs: tuple[Path, Path]
) -> None:
    image_dir, _ = journal_dirs
    ident = target_identity(tmp_path)
    j = Journal.create(image_dir, MHASH, ident, None, segments_total=10)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image_dir.rename(tmp_path / "moved")
    image_dir.symlink_to(elsewhere)  # the journal's folder is now a link to another folder
    with pytest.raises(OSError) as err:  # restore.py warns on OSError and goes on
        j.record(4, 16 * MiB, "p1", 3)
    assert str(image_dir) in str(err.value.strerror)
    assert list(elsewhere.iterdir()) == []


def test_journal_fallback_folder_planted_as_symlink_is_refused(
    tmp_path: Path, journal_dirs: tuple[Path, Path]
) -> None:
    _, fallback = journal_dirs
    ident = target_identity(tmp_path)
    victim = scratch(tmp_path / "victim.bin")
    # The image folder cannot take the journal (it is a file), and the fallback folder is
    # planted as a symlink: refused, nothing written through it.
    image_file = tmp_path / "not-a-folder"
    image_file.write_bytes(b"x")
    fallback.symlink_to(tmp_path / "attacker")
    (tmp_path / "attacker").mkdir()
    with pytest.raises(OSError) as err:
        Journal.create(image_file, MHASH, ident, None, segments_total=10)
    assert "symbolic link" in str(err.value.strerror)
    assert list((tmp_path / "attacker").iterdir()) == []
    assert victim.read_bytes() == SCRATCH


# ------------------------------------------------------------------ 2. journal reads


def test_journal_symlink_to_dev_zero_is_refused(
    tmp_path: Path, journal_dirs: tuple[Path, Path]
) -> None:
    image_dir, _ = journal_dirs
    ident = target_identity(tmp_path)
    path = image_dir / journal_name(ident)
    path.symlink_to("/dev/zero")
    with pytest.raises(JournalError) as err:
        finishes_within(lambda: find_journal(image_dir, MHASH, ident, None))
    msg = str(err.value)
    assert str(path) in msg and "symbolic link" in msg
    assert "resum" in msg.lower() and "--" not in msg


def test_journal_fifo_is_refused_without_hanging(
    tmp_path: Path, journal_dirs: tuple[Path, Path]
) -> None:
    image_dir, _ = journal_dirs
    ident = target_identity(tmp_path)
    path = image_dir / journal_name(ident)
    os.mkfifo(path)
    with fifo_unblocker(path), pytest.raises(JournalError) as err:
        finishes_within(lambda: find_journal(image_dir, MHASH, ident, None))
    assert "FIFO" in str(err.value) and str(path) in str(err.value)


def test_journal_larger_than_the_limit_is_refused(
    tmp_path: Path, journal_dirs: tuple[Path, Path]
) -> None:
    image_dir, _ = journal_dirs
    ident = target_identity(tmp_path)
    path = image_dir / journal_name(ident)
    d = valid_journal_dict()
    d.update(manifest_blake3=MHASH, target_key=ident.stable_key(), stream="x" * (JOURNAL_LIMIT))
    path.write_text(json.dumps(d))
    with pytest.raises(JournalError) as err:
        find_journal(image_dir, MHASH, ident, None)
    assert str(path) in str(err.value) and "bytes" in str(err.value)


BAD_FIELDS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("durable_segments negative", lambda d: d.update(durable_segments=-5), "durable_segments"),
    ("durable beyond total", lambda d: d.update(durable_segments=11), "durable_segments"),
    ("durable_bytes negative", lambda d: d.update(durable_bytes=-1), "durable_bytes"),
    ("segments_total a string", lambda d: d.update(segments_total="10"), "segments_total"),
    ("segments_total negative", lambda d: d.update(segments_total=-1), "segments_total"),
    ("segments_total a float", lambda d: d.update(segments_total=10.0), "segments_total"),
    ("durable_segments a bool", lambda d: d.update(durable_segments=True), "durable_segments"),
    ("target a list", lambda d: d.update(target=[1, 2]), "target"),
    ("target_key a string", lambda d: d.update(target_key="x"), "target_key"),
    ("partition negative", lambda d: d.update(partition=-1), "partition"),
    ("partition a string", lambda d: d.update(partition="2"), "partition"),
    ("stream a number", lambda d: d.update(stream=5), "stream"),
    ("chunk negative", lambda d: d.update(chunk=-1), "chunk"),
    ("table_written a string", lambda d: d.update(table_written="yes"), "table_written"),
    ("manifest missing", lambda d: d.pop("manifest_blake3"), "manifest_blake3"),
    ("image_dir a dict", lambda d: d.update(image_dir={}), "image_dir"),
    ("another version", lambda d: d.update(version=2), "version"),
    ("version missing", lambda d: d.pop("version"), "version"),
]


@pytest.mark.parametrize(
    ("change", "field"), [(c, f) for _, c, f in BAD_FIELDS], ids=[n for n, _, _ in BAD_FIELDS]
)
def test_journal_fields_are_validated(
    tmp_path: Path, change: Callable[[dict[str, Any]], Any], field: str
) -> None:
    path = tmp_path / f"{PREFIX}0123.json"
    d = valid_journal_dict()
    change(d)
    path.write_text(json.dumps(d))
    with pytest.raises(JournalError) as err:
        Journal.load(path)
    msg = str(err.value)
    assert str(path) in msg and field in msg
    assert "resum" in msg.lower() and "--" not in msg


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2, 3]",
        b"\xff\xfe\x00garbage",
        b"[" * 50_000,
        b'{"version": 1, "segments_total": NaN}',
        b'{"version": 1, "segments_total": 1' + b"0" * 5000 + b"}",
    ],
    ids=["empty", "text", "list", "binary", "deep", "nan", "huge-int"],
)
def test_journal_malformed_content_is_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / f"{PREFIX}0123.json"
    path.write_bytes(data)
    with pytest.raises(JournalError) as err:
        Journal.load(path)
    assert str(path) in str(err.value)


def test_journal_of_another_image_under_this_name_is_refused(
    tmp_path: Path, journal_dirs: tuple[Path, Path]
) -> None:
    image_dir, _ = journal_dirs
    ident = target_identity(tmp_path)
    d = valid_journal_dict()
    d.update(manifest_blake3="cd" * 32, target_key=ident.stable_key())
    path = image_dir / journal_name(ident)
    path.write_text(json.dumps(d))
    with pytest.raises(JournalError) as err:
        find_journal(image_dir, MHASH, ident, None)
    assert str(path) in str(err.value) and "another image" in str(err.value)


def test_valid_journal_is_found_and_no_journal_is_none(
    tmp_path: Path, journal_dirs: tuple[Path, Path]
) -> None:
    image_dir, _ = journal_dirs
    ident = target_identity(tmp_path)
    assert find_journal(image_dir, MHASH, ident, None) is None
    d = valid_journal_dict()
    d.update(target_key=ident.stable_key())
    (image_dir / journal_name(ident)).write_text(json.dumps(d))
    j = find_journal(image_dir, MHASH, ident, None)
    assert j is not None and j.durable_segments == 4 and j.stream == "p1"


def test_journal_in_a_folder_with_an_undecodable_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESCUEUI_JOURNAL_DIR", str(tmp_path / "journals"))
    image_dir = tmp_path / os.fsdecode(b"image-\xff")
    image_dir.mkdir()
    ident = target_identity(tmp_path)
    j = Journal.create(image_dir, MHASH, ident, None, segments_total=3)
    j.record(1, MiB, "p1", 0)
    assert j.path.parent == image_dir
    found = find_journal(image_dir, MHASH, ident, None)
    assert found is not None and found.durable_segments == 1
    assert found.image_dir == str(image_dir)


# ------------------------------------------------------------------ 3. reports: symlinks


FROZEN = "20240102T030405Z"


@pytest.fixture
def frozen_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Report names fixed in time; the fallback folders are private to the test."""
    monkeypatch.setattr(report_mod, "_stamp", lambda: FROZEN)
    monkeypatch.setattr(report_mod, "FALLBACK_DIR", tmp_path / "fallback")
    private = tmp_path / "private-tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    return tmp_path


def failed_report(image_dir: Path) -> JobReport:
    r = JobReport(job="restore", image_dir=str(image_dir), source=str(image_dir))
    r.finish("failed", RescueError("chunk 3 is bad.", hint="Use another copy."))
    return r


def test_report_does_not_follow_a_reports_symlink(frozen_reports: Path) -> None:
    tmp = frozen_reports
    image_dir = tmp / "image"
    image_dir.mkdir()
    outside = tmp / "outside"
    outside.mkdir()
    (image_dir / "reports").symlink_to(outside)
    report = failed_report(image_dir)
    jpath, tpath = report.write(image_dir / "reports")
    assert list(outside.iterdir()) == []
    assert jpath.parent == tmp / "fallback" and jpath.exists() and tpath.exists()
    assert report.report_files == [str(jpath), str(tpath)]
    text = tpath.read_text()
    assert "could not be written" in text and "symbolic link" in text
    assert json.loads(jpath.read_text())["report_files"] == report.report_files


def test_report_does_not_follow_a_reports_file(frozen_reports: Path) -> None:
    image_dir = frozen_reports / "image"
    image_dir.mkdir()
    (image_dir / "reports").write_bytes(b"a file, not a folder")
    report = failed_report(image_dir)
    jpath, _ = report.write(image_dir / "reports")
    assert jpath.parent == frozen_reports / "fallback" and jpath.exists()
    assert (image_dir / "reports").read_bytes() == b"a file, not a folder"


def test_report_names_that_are_symlinks_are_never_written_through(frozen_reports: Path) -> None:
    tmp = frozen_reports
    reports = tmp / "image" / "reports"
    reports.mkdir(parents=True)
    victim = scratch(tmp / "victim.bin")
    dangling = tmp / "outside" / "created-by-report"
    (tmp / "outside").mkdir()
    (reports / f"restore-{FROZEN}.json").symlink_to(victim)
    (reports / f"restore-{FROZEN}.txt").symlink_to(dangling)
    (reports / f"restore-{FROZEN}-2.json").symlink_to(dangling)
    report = failed_report(tmp / "image")
    jpath, tpath = report.write(reports)
    assert victim.read_bytes() == SCRATCH
    assert not dangling.exists()
    assert jpath.parent == reports and tpath.parent == reports
    assert not jpath.is_symlink() and not tpath.is_symlink()
    assert jpath.exists() and tpath.exists()


def test_reports_written_in_the_same_second_do_not_collide(frozen_reports: Path) -> None:
    reports = frozen_reports / "image" / "reports"
    written: list[str] = []
    for _ in range(3):
        r = failed_report(frozen_reports / "image")
        r.write(reports)
        written += r.report_files
    assert len(set(written)) == 6 and all(Path(p).exists() for p in written)


def test_fallback_folder_planted_as_symlink_is_refused(frozen_reports: Path) -> None:
    tmp = frozen_reports
    attacker = tmp / "attacker"
    attacker.mkdir()
    (tmp / "fallback").symlink_to(attacker)
    report = failed_report(tmp / "image")
    jpath, tpath = report.write(None)
    assert list(attacker.iterdir()) == []
    assert jpath.exists() and tpath.exists()
    assert jpath.parent.parent == tmp / "private-tmp"  # a fresh mkdtemp folder
    assert stat.S_IMODE(os.stat(jpath.parent).st_mode) == 0o700


def test_fallback_folder_writable_by_others_is_refused(frozen_reports: Path) -> None:
    tmp = frozen_reports
    fallback = tmp / "fallback"
    fallback.mkdir()
    fallback.chmod(0o777)
    report = failed_report(tmp / "image")
    jpath, _ = report.write(None)
    assert list(fallback.iterdir()) == []
    assert jpath.exists() and jpath.parent.parent == tmp / "private-tmp"


# ------------------------------------------------------------------ 4. undecodable paths


def test_report_next_to_an_image_with_an_undecodable_name(frozen_reports: Path) -> None:
    image_dir = frozen_reports / os.fsdecode(b"image-\xff-\x1b[2J")
    image_dir.mkdir()
    report = failed_report(image_dir)
    report.warnings.append(f"something about {image_dir}")
    jpath, tpath = report.write(image_dir / "reports")
    assert jpath.parent == image_dir / "reports"
    assert report.report_files == [str(jpath), str(tpath)]
    assert all(Path(p).exists() for p in report.report_files)
    raw_text = tpath.read_bytes()
    text = raw_text.decode("utf-8")  # strict: the text file is valid UTF-8
    assert "image-\\udcff" in text
    assert not any(b in raw_text for b in BAD_BYTES)
    raw_json = jpath.read_bytes()
    data = json.loads(raw_json.decode("utf-8"))
    assert data["image_dir"] == str(image_dir)  # the exact path, escaped in JSON
    assert os.fsencode(data["image_dir"]).endswith(b"image-\xff-\x1b[2J")
    assert [os.fsencode(p) for p in data["report_files"]] == [
        os.fsencode(p) for p in report.report_files
    ]


# ------------------------------------------------------------------ 5. terminal escapes


def evil_report(image_dir: Path) -> JobReport:
    r = JobReport(
        job="restore",
        image_dir=str(image_dir),
        source=f"{image_dir}\x1b[2J",
        target="/dev/sdb\r\x1b]0;evil\x07",
    )
    r.streams.append({"name": "p1\x1b[31m", "size_bytes": MiB, "status": "ok\r"})
    r.findings.append({"level": "warn", "code": "model\x9b", "message": "Disk " + "".join(EVIL)})
    r.acknowledgements.append({"code": "x", "message": "m\x1b[2J", "by": "op\r", "at": "now"})
    r.notes.append("note \u202eevil")
    for e in EVIL:
        r.warnings.append(f"warning {e} end")
    r.finish("failed", RescueError("error \x1b]0;evil\x07 \r", hint="hint \x1b[2J"))
    return r


def test_report_text_shows_no_terminal_controls(frozen_reports: Path) -> None:
    image_dir = frozen_reports / "image"
    report = evil_report(image_dir)
    text = report.to_text()
    assert not any(c in text for c in "\x1b\x07\r\x9b\u202e\u061c")
    assert "\\x1b]0;evil\\x07" in text and "\\x1b[2J" in text
    _, tpath = report.write(image_dir / "reports")
    raw = tpath.read_bytes()
    assert not any(b in raw for b in BAD_BYTES)
    assert "\u202e" not in raw.decode("utf-8")


def test_report_json_keeps_data_with_controls_escaped(frozen_reports: Path) -> None:
    image_dir = frozen_reports / "image"
    report = evil_report(image_dir)
    jpath, _ = report.write(image_dir / "reports")
    raw = jpath.read_bytes()
    decoded = raw.decode("utf-8")
    assert not any(b in raw for b in BAD_BYTES)
    assert not any(0x7F <= ord(c) <= 0x9F or c in "\u202e\u061c\u2028\u2029" for c in decoded)
    data = json.loads(decoded)
    assert data["warnings"] == report.warnings  # the data itself is intact
    assert data["findings"][0]["code"] == "model\x9b"


# ------------------------------------------------------------------ 6. the writer lock


def test_lock_file_planted_as_symlink_is_refused(tmp_path: Path) -> None:
    victim = scratch(tmp_path / "victim.bin")
    lock = tmp_path / "rescueui.lock"
    lock.symlink_to(victim)
    with pytest.raises(LockError) as err:
        WriterLock("/dev/sdb", path=lock).acquire()
    assert victim.read_bytes() == SCRATCH
    assert str(lock) in str(err.value) and "symbolic link" in str(err.value)


def test_lock_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "rescueui.lock"
    os.mkfifo(lock)
    with fifo_unblocker(lock), pytest.raises(LockError) as err:
        finishes_within(lambda: WriterLock("/dev/sdb", path=lock).acquire())
    assert str(lock) in str(err.value) and "FIFO" in str(err.value)


def test_read_holder_refuses_symlinks_fifos_and_huge_files(tmp_path: Path) -> None:
    lock = tmp_path / "a.lock"
    lock.symlink_to("/dev/zero")
    assert finishes_within(lambda: read_holder(lock)) is None
    fifo = tmp_path / "b.lock"
    os.mkfifo(fifo)
    with fifo_unblocker(fifo):
        assert finishes_within(lambda: read_holder(fifo)) is None
    big = tmp_path / "c.lock"
    big.write_text(json.dumps({"pid": 1, "job": "restore", "target": "x" * 100_000}))
    assert read_holder(big) is None


def test_read_holder_keeps_only_fields_of_the_right_type(tmp_path: Path) -> None:
    lock = tmp_path / "rescueui.lock"
    lock.write_text(json.dumps({"pid": "1; rm", "tty": 5, "target": ["x"], "job": "restore"}))
    holder = read_holder(lock)
    assert holder == LockHolder(pid=None, tty=None, target=None, job="restore", since=None)
    lock.write_text(json.dumps([1, 2]))
    assert read_holder(lock) is None


def test_lock_holder_text_is_safe_and_reads_well(tmp_path: Path) -> None:
    evil = LockHolder(
        pid=42, tty="/dev/tty1\x1b]0;evil\x07", target="/dev/sdb\r", job="capture", since="now"
    )
    text = evil.describe()
    assert not any(c in text for c in "\x1b\x07\r")
    assert "running capture of /dev/sdb" in text
    restore = LockHolder(pid=7, tty="/dev/ttyS0", target="/dev/sdc", job="restore", since=None)
    assert restore.describe() == "process 7 on /dev/ttyS0, running restore on /dev/sdc"
    lock = tmp_path / "rescueui.lock"
    with WriterLock("/dev/sdb\x1b[2J", job="capture", path=lock):
        with pytest.raises(LockError) as err:
            WriterLock("/dev/sdc", path=lock).acquire()
    msg = str(err.value)
    assert "\x1b" not in msg and "running capture of /dev/sdb\\x1b[2J" in msg
    assert str(lock) in msg


# ------------------------------------------------------------------ 7. fuzzing the journal parser

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis folder in the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)
FIELDS = list(valid_journal_dict())


def load_bytes(folder: Path, data: bytes) -> Journal | None:
    """Journal.load on ``data``; None when it raised a RescueError (anything else fails)."""
    path = folder / f"{PREFIX}fuzz.json"
    path.write_bytes(data)
    try:
        j = Journal.load(path)
    except RescueError as exc:
        assert str(path) in str(exc)
        return None
    assert isinstance(j, Journal)
    assert 0 <= j.durable_segments <= j.segments_total
    assert j.durable_bytes >= 0 and isinstance(j.target, dict)
    assert j.partition is None or (type(j.partition) is int and j.partition >= 1)
    return j


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.binary(max_size=2048))
def test_fuzz_journal_arbitrary_bytes(fuzz_dir: Path, data: bytes) -> None:
    load_bytes(fuzz_dir, data)


@settings(FUZZ, max_examples=150)
@given(value=json_values)
def test_fuzz_journal_arbitrary_json(fuzz_dir: Path, value: Any) -> None:
    load_bytes(fuzz_dir, json.dumps(value).encode())


@settings(FUZZ, max_examples=150)
@given(
    changes=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4),
    drop=st.lists(st.sampled_from(FIELDS), max_size=2),
)
def test_fuzz_journal_near_valid(fuzz_dir: Path, changes: dict[str, Any], drop: list[str]) -> None:
    d = valid_journal_dict()
    d.update(changes)
    for k in drop:
        d.pop(k, None)
    load_bytes(fuzz_dir, json.dumps(d).encode())


def test_fuzz_baseline_valid_journal_loads(fuzz_dir: Path) -> None:
    j = load_bytes(fuzz_dir, json.dumps(valid_journal_dict()).encode())
    assert j is not None and j.durable_bytes == 16 * MiB


def test_journal_module_keeps_its_fallback_hook() -> None:
    # test_resume.py forces the fallback folder through this hook.
    assert callable(journal_mod._dir_writable)
