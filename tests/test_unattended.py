"""Unattended restore (live image, kernel command line): option parsing, target pinning on
real loop disks, aborts that write nothing, and a full unattended restore loop -> loop."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescueui.core import unattended as un
from rescueui.core.disks import Disk, scan_disks
from rescueui.core.progress import Progress
from rescueui.core.unattended import (
    TargetPin,
    UnattendedError,
    find_filesystem,
    parse_cmdline,
    parse_image,
    parse_size,
    parse_target,
    select_target,
    split_cmdline,
)
from tests.loopdisk import MiB, mkfs_ext4, mkfs_vfat

# ------------------------------------------------------------------ parsing (pure)

LIVE = "BOOT_IMAGE=/live/vmlinuz boot=live quiet console=ttyS0,115200n8 console=tty0"


def test_split_cmdline_like_the_kernel() -> None:
    text = 'a=1  "rescueui.image=MY DISK:/img/web 01" b  c="x y"z\n'
    assert split_cmdline(text) == ["a=1", "rescueui.image=MY DISK:/img/web 01", "b", "c=x yz"]
    assert split_cmdline("") == []


def test_full_command_line() -> None:
    opts = parse_cmdline(
        f"{LIVE} rescueui.image=RESCUEIMG:/images/web01 "
        "rescueui.target=serial:S3Z9NB0K123456,size:500107862016 rescueui.unattended=1 "
        "rescueui.verify=0 rescueui.poweroff=1 rescueui.wait=30"
    )
    assert opts.unattended
    assert (opts.image_fs, opts.image_path) == ("RESCUEIMG", "/images/web01")
    assert opts.target == TargetPin(serial="S3Z9NB0K123456", size_bytes=500107862016)
    assert not opts.verify and opts.grow and not opts.strict
    assert opts.poweroff == "success"
    assert opts.wait_seconds == 30
    assert opts.unknown == ()


def test_defaults_and_not_requested() -> None:
    opts = parse_cmdline(LIVE)
    assert not opts.unattended and opts.target is None and opts.image_fs is None
    assert opts.verify and opts.grow and opts.poweroff == "no"
    assert opts.wait_seconds == un.DEFAULT_WAIT_SECONDS


def test_last_occurrence_wins_and_unknown_options_are_reported() -> None:
    opts = parse_cmdline(
        "rescueui.verify=0 rescueui.verify=1 rescueui.colour=red rescueui.serial_size=100x40"
    )
    assert opts.verify
    assert opts.unknown == ("rescueui.colour",)


def test_poweroff_always() -> None:
    assert parse_cmdline("rescueui.poweroff=always").poweroff == "always"
    assert parse_cmdline("rescueui.poweroff=0").poweroff == "no"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("rescueui.unattended=1 rescueui.target=serial:X", "rescueui.image"),
        ("rescueui.unattended=1 rescueui.image=L:/x", "rescueui.target"),
        ("rescueui.unattended=1", "rescueui.image and rescueui.target"),
        ("rescueui.unattended=maybe", "expected 1 or 0"),
        ("rescueui.verify=perhaps", "expected 1 or 0"),
        ("rescueui.wait=soon", "expected seconds"),
        ("rescueui.wait=\u00b2", "rescueui.wait=\u00b2: expected seconds, digits 0-9 only"),
        ("rescueui.wait=\u0663", "digits 0-9 only"),  # an Arabic-Indic 3: int() reads it
        ("rescueui.wait=9999999", "at most 86400"),
    ],
)
def test_unusable_command_lines_are_refused(line: str, words: str) -> None:
    with pytest.raises(UnattendedError, match=words):
        parse_cmdline(line)


def test_parse_image() -> None:
    assert parse_image("RESCUEIMG:/images/web01") == ("RESCUEIMG", "/images/web01")
    assert parse_image("A:B:/x//y/") == ("A:B", "/x/y")  # a label may hold ':'
    assert parse_image("UUID=1234-ABCD:/i") == ("UUID=1234-ABCD", "/i")
    for bad in ("RESCUEIMG", ":/x", "LABEL:images", "L:/a/../../etc"):
        with pytest.raises(UnattendedError):
            parse_image(bad)


def test_parse_target() -> None:
    assert parse_target("serial:ABC123") == TargetPin(serial="ABC123")
    assert parse_target("wwn:0x5000c500a1b2c3d4") == TargetPin(wwn="0x5000c500a1b2c3d4")
    assert parse_target("path:/dev/vdc,size:1073741824") == TargetPin(
        path="/dev/vdc", size_bytes=1073741824
    )
    assert parse_target(" serial:A , size:1GiB ").size_bytes == 1024**3
    assert parse_size("512M") == 512 * MiB
    assert parse_size("4096") == 4096


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("path:/dev/vdc", "path only"),  # a device name alone can point at another disk
        ("path:vdc,size:1", "not under /dev/"),
        ("colour:red", "unknown key"),
        ("serial", "not KEY:VALUE"),
        ("serial:A,serial:B", "given twice"),
        ("serial:A,size:lots", "not a number of bytes"),
        ("serial:A,size:\u00b2", "rescueui.target: size '\u00b2' is not a number of bytes"),
        ("serial:A,size:1\u00b2G", "not a number of bytes"),
        ("", "empty"),
    ],
)
def test_bad_targets_are_refused(value: str, words: str) -> None:
    with pytest.raises(UnattendedError, match=words):
        parse_target(value)


# ------------------------------------------------------------------ pinning (Disk objects)


def _disk(name: str, *, serial: str | None = None, wwn: str | None = None,
          size: int = 8 * 1024**3, reasons: list[str] | None = None) -> Disk:  # fmt: skip
    return Disk(
        path=f"/dev/{name}", name=name, devnum=(253, hash(name) % 1000), size_bytes=size,
        model="QEMU HARDDISK", vendor=None, serial=serial, wwn=wwn, bus="virtio",
        removable=False, read_only=False, rotational=False, logical_sector_size=512,
        physical_sector_size=512, table_type=None, reasons=list(reasons or []),
    )  # fmt: skip


def test_pin_by_serial_and_wwn() -> None:
    disks = [
        _disk("vda", serial="BOOT0001", reasons=["boot medium (the running system lives here)"]),
        _disk("vdb", serial="S3Z9NB0K123456", wwn="0x5002538e40a1b2c3"),
        _disk("vdc", serial="OTHER1"),
    ]
    assert select_target(TargetPin(serial="S3Z9NB0K123456"), disks).name == "vdb"
    # WWN spelled with or without 0x / naa. prefix
    assert select_target(TargetPin(wwn="5002538E40A1B2C3"), disks).name == "vdb"
    assert select_target(TargetPin(wwn="naa.5002538e40a1b2c3"), disks).name == "vdb"
    got = select_target(TargetPin(serial="S3Z9NB0K123456", size_bytes=8 * 1024**3), disks)
    assert got.name == "vdb"


def test_pin_mismatches_abort_with_the_reason() -> None:
    disks = [
        _disk("vda", serial="BOOT0001", reasons=["boot medium (the running system lives here)"]),
        _disk("vdb", serial="S3Z9NB0K123456", wwn="0x5002538e40a1b2c3"),
        _disk("vdc", serial="TWIN"),
        _disk("vdd", serial="TWIN"),
    ]
    with pytest.raises(UnattendedError, match=r"Target not found: no disk with serial NOPE.*vdb"):
        select_target(TargetPin(serial="NOPE"), disks)
    with pytest.raises(UnattendedError, match=r"identity differs.*size is 8589934592 bytes"):
        select_target(TargetPin(serial="S3Z9NB0K123456", size_bytes=4 * 1024**3), disks)
    with pytest.raises(UnattendedError, match=r"identity differs.*WWN is 0x5002538e40a1b2c3"):
        select_target(TargetPin(serial="S3Z9NB0K123456", wwn="0x5000000000000001"), disks)
    with pytest.raises(UnattendedError, match=r"ambiguous: 2 disks have serial TWIN"):
        select_target(TargetPin(serial="TWIN"), disks)
    with pytest.raises(UnattendedError, match=r"may not be written: boot medium"):
        select_target(TargetPin(serial="BOOT0001"), disks)


# ------------------------------------------------------------------ real loop disks


def _sha(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


@pytest.mark.root
@pytest.mark.udev
def test_pin_by_path_and_size_on_loop_disks(loops) -> None:  # type: ignore[no-untyped-def]
    a = loops.create(24)
    b = loops.create(32, table="label: gpt\ntype=L\n")
    disks = scan_disks(live_mounts=())
    got = select_target(TargetPin(path=a.path, size_bytes=24 * MiB), disks)
    assert got.path == a.path
    # a stable alias of the device works as well as its name
    alias = next(iter(Path("/dev/disk/by-diskseq").glob("*")), None)
    if alias is not None and Path(os.path.realpath(alias)) == Path(b.path):
        assert select_target(TargetPin(path=str(alias), size_bytes=32 * MiB), disks).path == b.path
    with pytest.raises(UnattendedError, match=rf"identity differs.*{a.path}.*size is {24 * MiB}"):
        select_target(TargetPin(path=a.path, size_bytes=32 * MiB), disks)
    with pytest.raises(UnattendedError, match="is a partition"):
        select_target(TargetPin(path=b.part(1), size_bytes=32 * MiB), disks)
    with pytest.raises(UnattendedError, match="Target not found"):
        select_target(TargetPin(path="/dev/null", size_bytes=32 * MiB), disks)


@pytest.mark.root
@pytest.mark.udev
def test_mounted_target_is_refused(loops, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = loops.create(32, table="label: gpt\ntype=L\n")
    mkfs_ext4(d.part(1), "RUIMOUNTED")
    d.mount(1, tmp_path / "m")
    disks = scan_disks(live_mounts=())
    with pytest.raises(UnattendedError, match=r"may not be written: .*mounted"):
        select_target(TargetPin(path=d.path, size_bytes=32 * MiB), disks)


@pytest.mark.root
@pytest.mark.udev
def test_find_filesystem_by_label(loops) -> None:  # type: ignore[no-untyped-def]
    label = "RUI" + secrets.token_hex(4).upper()
    d = loops.create(32, table="label: gpt\nsize=8MiB, type=L\ntype=L\n")
    mkfs_vfat(d.part(1), "RUIEFI")
    mkfs_ext4(d.part(2), label)
    d.rescan()
    path, mountpoints = find_filesystem(label, scan_disks(live_mounts=()))
    assert path == d.part(2) and mountpoints == []
    with pytest.raises(UnattendedError, match="no filesystem labelled"):
        find_filesystem(label + "X", scan_disks(live_mounts=()))
    twin = loops.create(16)
    mkfs_ext4(twin.path, label)
    subprocess.run(["udevadm", "settle"], check=False)
    with pytest.raises(UnattendedError, match="ambiguous: 2 filesystems"):
        find_filesystem(label, scan_disks(live_mounts=()))


def _image_medium(loops, tmp_path: Path, label: str, *, with_image_of=None):  # type: ignore[no-untyped-def]
    """A loop disk with an ext4 filesystem `label` holding the image /images/demo (captured
    from `with_image_of` if given, else from an 8 MiB file of zeros: an image all the same,
    for tests that end before it is read); unmounted again afterwards."""
    from rescueui.core.capture import capture

    medium = loops.create(96)
    mkfs_ext4(medium.path, label)
    mnt = tmp_path / "fill"
    medium.mount(None, mnt)
    (mnt / "images").mkdir()
    if with_image_of is None:
        with_image_of = tmp_path / "zeros.raw"
        with_image_of.write_bytes(bytes(8 * MiB))
    report = capture(with_image_of, mnt / "images" / "demo")
    assert report.outcome == "success", report.error
    medium.umount_all()
    subprocess.run(["udevadm", "settle"], check=False)
    return medium


def _list_reports(medium, tmp_path: Path) -> list[str]:  # type: ignore[no-untyped-def]
    mnt = tmp_path / "check"
    medium.mount(None, mnt, options="ro")
    try:
        folder = mnt / "images" / "demo" / "reports"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    finally:
        medium.umount_all()


@pytest.fixture
def run_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(un, "MEDIA_ROOT", tmp_path / "media")
    monkeypatch.setattr(un, "FALLBACK_REPORT_DIR", tmp_path / "fallback-reports")
    return tmp_path


@pytest.mark.root
@pytest.mark.udev
def test_differing_target_aborts_without_writing_and_reports(loops, run_dirs: Path) -> None:  # type: ignore[no-untyped-def]
    label = "RUI" + secrets.token_hex(4).upper()
    medium = _image_medium(loops, run_dirs, label)
    target = loops.create(32, fill="random")
    before = _sha(target.backing)
    lines: list[str] = []
    opts = parse_cmdline(
        f"rescueui.unattended=1 rescueui.image={label}:/images/demo "
        f"rescueui.target=path:{target.path},size:{33 * MiB} rescueui.wait=60"
    )
    t0 = time.monotonic()
    result = un.run_unattended(opts, lines.append)
    assert result.outcome == "aborted" and not result.written
    assert "identity differs" in result.message
    # a differing target is not something to wait for: it aborts at once
    assert time.monotonic() - t0 < 30
    assert not any("waiting up to" in line for line in lines)
    assert any(line.startswith("ABORTED, nothing written") for line in lines)
    assert _sha(target.backing) == before
    # the report lies next to the image, and the medium was unmounted again
    reports = _list_reports(medium, run_dirs)
    assert any(n.endswith(".json") for n in reports) and any(n.endswith(".txt") for n in reports)
    assert not any(os.path.ismount(p) for p in (run_dirs / "media").glob("*"))


@pytest.mark.root
@pytest.mark.udev
def test_missing_image_filesystem_aborts(run_dirs: Path) -> None:
    label = "RUI" + secrets.token_hex(4).upper()
    lines: list[str] = []
    opts = parse_cmdline(
        f"rescueui.unattended=1 rescueui.image={label}:/images/demo "
        "rescueui.target=serial:NOPE rescueui.wait=2"
    )
    result = un.run_unattended(opts, lines.append)
    assert result.outcome == "aborted"
    assert f"no filesystem labelled {label}" in result.message
    assert any("waiting up to 2 s" in line for line in lines)
    assert list((run_dirs / "fallback-reports").glob("restore-*.json"))


@pytest.mark.root
@pytest.mark.udev
def test_unattended_restore_loop_to_loop(loops, run_dirs: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("rescueui.core.restore")
    source = loops.create(48, table="label: gpt\nsize=16MiB, type=L\ntype=L\n")
    mkfs_ext4(source.part(1), "RUISRC1")
    mkfs_ext4(source.part(2), "RUISRC2")
    src_mnt = source.mount(2, tmp_path / "src")
    (Path(src_mnt) / "hello.txt").write_text("hello from the source\n")
    (Path(src_mnt) / "blob.bin").write_bytes(os.urandom(2 * MiB))
    source.umount_all()
    label = "RUI" + secrets.token_hex(4).upper()
    medium = _image_medium(loops, tmp_path, label, with_image_of=source.path)
    target = loops.create(64, fill="random")
    lines: list[str] = []
    opts = parse_cmdline(
        f"rescueui.unattended=1 rescueui.image={label}:/images/demo "
        f"rescueui.target=path:{target.path},size:{64 * MiB} rescueui.wait=5"
    )
    result = un.run_unattended(opts, lines.append, progress_interval=0.0)
    assert result.outcome == "success", "\n".join(lines)
    assert any(line.startswith("restore ") or line.startswith("write") for line in lines)
    target.rescan()
    got = target.mount(2, tmp_path / "dst", options="ro")
    assert (Path(got) / "hello.txt").read_text() == "hello from the source\n"
    src_again = source.mount(2, tmp_path / "src2", options="ro")
    assert _sha(Path(got) / "blob.bin") == _sha(Path(src_again) / "blob.bin")
    target.umount_all()
    source.umount_all()
    assert any(n.endswith(".json") for n in _list_reports(medium, tmp_path))


@pytest.mark.root
@pytest.mark.udev
def test_failure_after_writing_began_is_a_failed_restore(  # type: ignore[no-untyped-def]
    loops, run_dirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restore() raises once it has written: that is FAILED (with its report), not an abort."""
    from rescueui.core.target import TargetHandle

    source = loops.create(32, table="label: gpt\ntype=L\n", fill="random")
    label = "RUI" + secrets.token_hex(4).upper()
    medium = _image_medium(loops, tmp_path, label, with_image_of=source.path)
    target = loops.create(32, fill="random")
    real = TargetHandle.pwrite
    failed_at: list[int] = []

    def failing(self: TargetHandle, view: memoryview, offset: int) -> None:
        if offset >= 4 * MiB:
            failed_at.append(offset)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(self, view, offset)

    monkeypatch.setattr(TargetHandle, "pwrite", failing)
    lines: list[str] = []
    opts = parse_cmdline(
        f"rescueui.unattended=1 rescueui.image={label}:/images/demo "
        f"rescueui.target=path:{target.path},size:{32 * MiB} rescueui.wait=5"
    )
    result = un.run_unattended(opts, lines.append, progress_interval=0.0)
    log = "\n".join(lines)
    assert failed_at, log
    assert result.outcome == "failed" and result.written, log
    assert "I/O error" in result.message and f"byte {failed_at[0]}" in result.message, log
    assert not any("nothing written" in line for line in lines), log
    assert any(line.startswith("restore failed:") for line in lines), log
    # the failed restore's report lies next to the image
    reports = _list_reports(medium, tmp_path)
    assert any(n.startswith("restore-") and n.endswith(".json") for n in reports), reports
    assert next(Path(p).name for p in result.report_paths if p.suffix == ".json") in reports


def test_progress_printer_throttles() -> None:
    now = [0.0]
    lines: list[str] = []
    printer = un.ProgressPrinter(lines.append, interval=5.0, clock=lambda: now[0])
    snap = Progress(job="restore", phase="write", bytes_done=MiB, bytes_total=4 * MiB,
                    rate_now=MiB, rate_avg=MiB, eta=3.0, stream="p1")  # fmt: skip
    printer(snap)
    now[0] = 1.0
    printer(snap)  # same phase, too soon
    now[0] = 2.0
    printer(Progress(job="restore", phase="verify", bytes_done=2 * MiB, bytes_total=4 * MiB))
    now[0] = 8.0
    printer(snap)
    assert len(lines) == 3
    assert "25.0%" in lines[0] and "stream p1" in lines[0]
    assert lines[1].startswith("verify")
    # the fix-ups move no bytes: each step is its own line, in words
    now[0] = 8.5
    for step in ("mounting the restored system", "fix-up drivers: rebuild the initramfs"):
        printer(Progress(job="restore", phase="adapt", bytes_done=4 * MiB, bytes_total=4 * MiB,
                         message=step, stream="p1"))  # fmt: skip
    assert lines[3:] == ["adapt     mounting the restored system",
                         "adapt     fix-up drivers: rebuild the initramfs"]  # fmt: skip


def test_cli_not_requested_and_bad_options(
    run_dirs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rescueui.cli.unattended import main

    tmp_path = run_dirs
    log = tmp_path / "run" / "unattended.log"
    assert main(["--cmdline", LIVE, "--log", str(log)]) == 0
    assert (tmp_path / "run" / "unattended.done").read_text() == "not requested\n"
    rc = main(["--cmdline", "rescueui.unattended=1 rescueui.image=X:/y", "--log", str(log)])
    assert rc == 2
    assert (tmp_path / "run" / "unattended.done").read_text() == "aborted\n"
    text = log.read_text()
    assert "ABORTED, nothing written: bad kernel options" in text and "rescueui.target" in text
    assert "RESULT aborted" in capsys.readouterr().out
    # even bad options leave a report, and the log names it
    reports = sorted((tmp_path / "fallback-reports").glob("restore-*.json"))
    assert len(reports) == 1 and f"report: {reports[0]}" in text


@pytest.fixture
def keep_signals() -> Iterator[None]:
    """`rescueui unattended` installs SIGTERM/SIGINT handlers: give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("rescueui.wait=\u00b2", "rescueui.wait=\u00b2: expected seconds, digits 0-9 only"),
        ("rescueui.target=serial:A,size:\u00b2", "size '\u00b2' is not a number of bytes"),
    ],
)
def test_cli_non_ascii_digits_are_refused_with_a_report(
    run_dirs: Path, capsys: pytest.CaptureFixture[str], option: str, words: str
) -> None:
    """'\u00b2'.isdigit() is True and int('\u00b2') raises: a clear refusal naming the option,
    with a report, never a traceback."""
    from rescueui.cli.unattended import main

    log = run_dirs / "unattended.log"
    line = f"rescueui.unattended=1 rescueui.image=X:/y rescueui.target=serial:A {option}"
    assert main(["--cmdline", line, "--log", str(log)]) == 2
    text = log.read_text()
    assert words in text and "Traceback" not in text
    assert "RESULT aborted" in capsys.readouterr().out
    reports = list((run_dirs / "fallback-reports").glob("restore-*.json"))
    assert len(reports) == 1
    data = json.loads(reports[0].read_text())
    assert data["outcome"] in ("refused", "failed") and words in data["error"]
    assert data["details"]["written"] is False


EVIL = "\x1b]0;pwn\x07\x1b[2J\r[bold red]x[/]\x9b"


@pytest.mark.root
@pytest.mark.udev
def test_forged_manifest_aborts_with_a_message_and_a_report(  # type: ignore[no-untyped-def]
    loops, run_dirs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_signals
) -> None:
    """A manifest whose hash is valid but whose values make the planning raise a plain
    Python error (here ValueError): before, 'RESULT failed: ValueError' and no report."""
    from rescueui.cli.unattended import main
    from rescueui.core.image import Image, save_manifest

    source = loops.create(32, table="label: gpt\ntype=L\n", fill="random")
    label = "RUI" + secrets.token_hex(4).upper()
    medium = _image_medium(loops, tmp_path, label, with_image_of=source.path)
    mnt = Path(medium.mount(None, tmp_path / "forge"))
    with Image.open(mnt / "images" / "demo") as im:
        manifest = im.manifest
    manifest.source_disk.update(physical_sector_size="x", model="M" + EVIL)
    manifest.warnings = ["W" + EVIL]
    save_manifest(mnt / "images" / "demo", manifest)
    medium.umount_all()
    subprocess.run(["udevadm", "settle"], check=False)
    target = loops.create(32, fill="random")
    before = _sha(target.backing)
    log = run_dirs / "run" / "unattended.log"
    line = (
        f"rescueui.unattended=1 rescueui.image={label}:/images/demo "
        f"rescueui.target=path:{target.path},size:{32 * MiB} rescueui.wait=5"
    )
    rc = main(["--cmdline", line, "--log", str(log), "--no-poweroff"])
    out = capsys.readouterr().out
    text = log.read_text()
    assert rc == 3, text
    # refused when the image is opened, naming the forged field (once a ValueError deep in
    # the pre-flight)
    assert "RESULT aborted" in text
    assert "source_disk.physical_sector_size" in text and "forged" in text
    assert "RESULT failed" not in text
    assert _sha(target.backing) == before
    # the report lies next to the image and the log names it
    reports = _list_reports(medium, tmp_path)
    json_name = next(n for n in reports if n.startswith("restore-") and n.endswith(".json"))
    assert f"images/demo/reports/{json_name}" in text
    # nothing from the image reached the consoles raw
    for raw in ("\x1b", "\x07", "\r", "\x9b"):
        assert raw not in text and raw not in out


def test_a_target_pinned_by_size_only_is_refused_in_plain_words() -> None:
    from rescueui.core.unattended import UnattendedError

    with pytest.raises(UnattendedError, match="names no disk"):
        parse_target("size:134217728")


# ------------------------------------------------------------------ image files (any kind)


def _medium_dir(tmp_path: Path) -> un.ImageMedium:
    """A folder standing in for a mounted image filesystem, with images of several kinds."""
    from tests.test_image_discovery import raw_disk, run

    root = tmp_path / "medium"
    images = root / "images"
    images.mkdir(parents=True)
    disk = raw_disk(tmp_path / "disk.raw")
    run("qemu-img", "convert", "-O", "qcow2", disk, images / "vm01.qcow2")
    run("cp", "--sparse=always", disk, images / "web01.img")
    cz = images / "cz-2026"
    cz.mkdir()
    (cz / "parts").write_text("sda1\n")
    (root / "empty").mkdir()
    (root / "outside-link").symlink_to(tmp_path / "disk.raw")
    (images / "inner-link.img").symlink_to(images / "web01.img")
    return un.ImageMedium(device="/dev/RUITEST", mountpoint=root, mounted_here=False)


def test_image_path_names_a_file_or_an_image_folder_on_the_medium(tmp_path: Path) -> None:
    medium = _medium_dir(tmp_path)
    root = medium.mountpoint
    assert un.image_dir_in(medium, "/images/vm01.qcow2") == (root / "images/vm01.qcow2").resolve()
    assert un.image_dir_in(medium, "/images/web01.img") == (root / "images/web01.img").resolve()
    assert un.image_dir_in(medium, "/images/cz-2026") == (root / "images/cz-2026").resolve()
    # a symlink that stays on the medium is what it points at
    assert un.image_dir_in(medium, "/images/inner-link.img").name == "web01.img"
    assert un.image_kind_words(root / "images/vm01.qcow2") == "qcow2"
    assert un.image_home(root / "images/vm01.qcow2") == (root / "images")
    assert un.image_home(root / "images/cz-2026") == (root / "images/cz-2026")


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/empty", r"/empty on /dev/RUITEST is not an image: .*no manifest\.json"),
        ("/images/nope.qcow2", r"Image /images/nope\.qcow2 not found on /dev/RUITEST"),
        ("/outside-link", r"leads outside /dev/RUITEST"),
    ],
)
def test_image_path_that_is_no_image_is_refused_naming_what_is_there(
    tmp_path: Path, path: str, words: str
) -> None:
    medium = _medium_dir(tmp_path)
    with pytest.raises(UnattendedError, match=words) as err:
        un.image_dir_in(medium, path)
    text = str(err.value)
    assert "Nothing was written" in text
    if "outside" not in text:  # the hint lists the images the medium holds, with their kind
        assert "/images/vm01.qcow2 (qcow2)" in text and "/images/web01.img (raw)" in text
        assert "/images/cz-2026 (clonezilla)" in text
        assert "inner-link" not in text  # symlinks are not listed


def _file_medium(loops, tmp_path: Path, label: str, files: dict[str, Path]):  # type: ignore[no-untyped-def]
    """A loop disk with an ext4 filesystem `label` holding /images/<name> for each file."""
    medium = loops.create(96)
    mkfs_ext4(medium.path, label)
    mnt = tmp_path / "fill"
    medium.mount(None, mnt)
    (mnt / "images").mkdir()
    for name, src in files.items():
        subprocess.run(["cp", "--sparse=always", str(src), str(mnt / "images" / name)], check=True)
    medium.umount_all()
    subprocess.run(["udevadm", "settle"], check=False)
    return medium


@pytest.mark.root
@pytest.mark.udev
@pytest.mark.parametrize(
    ("name", "kind"), [("vm01.qcow2", "qcow2"), ("db01.img.zst", "raw, zstd-compressed")]
)
def test_unattended_restore_of_an_image_file(  # type: ignore[no-untyped-def]
    loops, run_dirs: Path, tmp_path: Path, name: str, kind: str
) -> None:
    """rescueui.image= names a VM disk or a compressed raw image file: restored byte for byte,
    the console says which kind, the report lies next to the file."""
    from tests.test_image_discovery import raw_disk, run

    disk = raw_disk(tmp_path / "disk.raw")
    image = tmp_path / name
    if name.endswith(".qcow2"):
        run("qemu-img", "convert", "-O", "qcow2", disk, image)
    else:
        run("zstd", "-q", "-c", stdin=disk, stdout=image)  # no content size: measured
    label = "RUI" + secrets.token_hex(4).upper()
    medium = _file_medium(loops, tmp_path, label, {name: image})
    target = loops.create(16, fill="random")
    lines: list[str] = []
    opts = parse_cmdline(
        f"rescueui.unattended=1 rescueui.image={label}:/images/{name} "
        f"rescueui.target=path:{target.path},size:{16 * MiB} rescueui.wait=5"
    )
    result = un.run_unattended(opts, lines.append, progress_interval=0.0)
    log = "\n".join(lines)
    assert result.outcome == "success", log
    assert any(line.startswith("image: ") and line.endswith(f"({kind})") for line in lines), log
    assert any(line.startswith("restoring ") and name in line for line in lines), log
    assert f"(image kind: {kind})" in result.message, log
    assert any(line.startswith("source checks: the image carries no checksums") for line in lines)
    assert _sha(target.backing) == _sha(disk)
    # the report lies next to the image file: <folder>/reports
    mnt = tmp_path / "check"
    medium.mount(None, mnt, options="ro")
    try:
        reports = sorted((mnt / "images" / "reports").glob("restore-*.json"))
        assert reports, log
        data = json.loads(reports[-1].read_text())
        assert data["outcome"] == "success"
        assert json.dumps(data).count(name) >= 1
    finally:
        medium.umount_all()
