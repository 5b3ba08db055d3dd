"""The command line against hostile images and bad input (issue 9).

- Terminal injection: a forged manifest (valid hash) whose strings hold OSC/CSI sequences, a
  carriage return, a C1 CSI and Rich markup: `preflight`, `restore` (wrong code typed on a
  terminal) and `verify` print none of those bytes raw, the forged text shows escaped, and
  what will be destroyed is printed last, right before the prompt.
- Tracebacks and wrong messages: `--create` sizes (overflow, empty, zero, '²'), `capture
  --level 22`, a full filesystem (tmpfs) or a file size limit under a file target, an
  internal error; every failure paragraph names a report file that exists, and a file made by
  `--create` is never left behind by a run that failed or was refused.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.image import Image, save_manifest
from tests.imagefixtures import content_tree, make_disk

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
EVIL = "\x1b]0;pwn\x07\x1b[2J\r[bold red]x[/]\x9b"
# how safe_text shows EVIL
EVIL_SHOWN = "\\x1b]0;pwn\\x07\\x1b[2J\\x0d[bold red]x[/]\\x9b"
RAW = {"ESC": "\x1b", "BEL": "\x07", "CR": "\r", "CSI (C1)": "\x9b"}


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-cli")


@pytest.fixture(scope="module")
def image(work: Path) -> Path:
    """A real capture of a 64 MiB GPT disk file whose ext4 holds 20 MiB of random data (more
    than the 16 MiB tmpfs of the full-filesystem test can take). No root needed."""
    from rescueui.core.capture import capture

    src = work / "src"
    content_tree(src, random_mib=20)
    disk = make_disk(src, size_mib=64)
    with pytest.MonkeyPatch.context() as mp:  # a writer lock of our own, not the machine's
        mp.setenv("RESCUEUI_LOCK", str(work / "capture.lock"))
        report = capture(disk.path, work / "image")
    assert report.outcome == "success", report.error
    return work / "image"


def forge(image: Path, dest: Path, change: Any) -> Path:
    """A copy of ``image`` whose manifest ``change(manifest)`` rewrote (hash valid)."""
    shutil.copytree(image, dest, ignore=shutil.ignore_patterns("reports", "*journal*"))
    with Image.open(dest) as im:
        manifest = im.manifest
    change(manifest)
    save_manifest(dest, manifest)
    return dest


def poison(m: Any) -> None:
    """Outside text everywhere the plan, the pre-flight and the reports quote the image."""
    m.source_disk.update(model="M" + EVIL, vendor="V" + EVIL, serial="S" + EVIL)
    m.source_disk["path"] = "/dev/P" + EVIL
    m.host.update(dmi_vendor="DV" + EVIL, dmi_product="DP" + EVIL, cpus=64)
    m.created = "C" + EVIL
    m.tool_version = "T" + EVIL
    m.warnings = ["W" + EVIL, "[@click=app.quit]click me[/]"]
    # (partition names are not poisoned: the image module refuses control characters in the
    # partition table, which goes to sfdisk)
    for s in m.streams:
        if s.label:
            s.label = "SL" + EVIL


@pytest.fixture(scope="module")
def evil(image: Path, work: Path) -> Path:
    return forge(image, work / "evil", poison)


def cli(
    *args: str, tmp: Path, stdin: Any = subprocess.DEVNULL, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    full = dict(os.environ, RESCUEUI_LOCK=str(tmp / "cli.lock"), PYTHONPATH=str(REPO))
    full.pop("FORCE_COLOR", None)
    full.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "rescueui", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full,
        cwd=REPO,
    )


def run_cli(*args: str, tmp: Path, **kw: Any) -> tuple[int, str, str]:
    proc = cli(*args, tmp=tmp, **kw)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def typed_on_a_terminal(args: list[str], typed: str, tmp: Path) -> tuple[int, str, str]:
    """Run the CLI with a pseudo-terminal as stdin and type ``typed`` at the prompt."""
    master, slave = os.openpty()
    try:
        proc = cli(*args, tmp=tmp, stdin=slave)
        os.write(master, (typed + "\n").encode())
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(slave)
        os.close(master)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def assert_no_raw_controls(*texts: str) -> None:
    for text in texts:
        for name, raw in RAW.items():
            assert raw not in text, f"{name} reached the terminal: {text!r}"


def named_report(err: str) -> Path:
    """The report file the failure paragraph names; it must exist."""
    m = re.search(r"Report: (\S+)", err)
    assert m, f"no report named in: {err}"
    path = Path(m.group(1))
    assert path.is_file(), f"the named report {path} does not exist"
    return path


def one_paragraph(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ terminal injection


def test_preflight_shows_forged_text_escaped(evil: Path, tmp_path: Path) -> None:
    target = tmp_path / "t.img"
    target.write_bytes(b"\0" * (64 * MiB))
    rc, out, err = run_cli("preflight", str(evil), str(target), tmp=tmp_path)
    assert rc == 0, err
    assert_no_raw_controls(out, err)
    assert f"W{EVIL_SHOWN}" in out  # the image's warning, escaped, markup not applied
    assert "[@click=app.quit]click me[/]" in out
    assert f"DV{EVIL_SHOWN}" in out  # the source machine's model


def test_preflight_in_colour_sends_only_colour_sequences(evil: Path, tmp_path: Path) -> None:
    """With colour forced on, the only escape sequences are rich's own SGR colour codes."""
    target = tmp_path / "t.img"
    target.write_bytes(b"\0" * (64 * MiB))
    rc, out, err = run_cli(
        "preflight", str(evil), str(target), tmp=tmp_path, env={"FORCE_COLOR": "1"}
    )
    assert rc == 0, err
    assert "\x1b[33m" in out  # WARN in yellow: colour is really on
    no_sgr = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert_no_raw_controls(no_sgr, err)
    assert f"W{EVIL_SHOWN}" in no_sgr


def test_restore_plan_escapes_and_destroys_last(evil: Path, tmp_path: Path) -> None:
    target = tmp_path / "server.img"
    target.write_bytes(b"\x33" * (64 * MiB))
    args = ["restore", str(evil), str(target), "--accept-warnings"]
    rc, out, err = typed_on_a_terminal(args, "wrong", tmp_path)
    assert rc == 1
    assert target.read_bytes() == b"\x33" * (64 * MiB)  # nothing written
    assert_no_raw_controls(out, err)
    assert f"M{EVIL_SHOWN}" in err and f"C{EVIL_SHOWN}" in err and f"W{EVIL_SHOWN}" in err
    lines = err.splitlines()
    destroys = next(i for i, x in enumerate(lines) if x.startswith("This DESTROYS"))
    # everything quoting the image comes before the destructive lines ...
    assert max(i for i, x in enumerate(lines) if "pwn" in x) < destroys
    assert next(i for i, x in enumerate(lines) if x.startswith("Pre-flight:")) < destroys
    # ... which are followed only by what is destroyed, the code and the prompt
    after = lines[destroys + 1 :]
    code_line = next(i for i, x in enumerate(after) if x.startswith("Confirmation code:"))
    assert code_line >= 1 and all(x.startswith("  ") for x in after[:code_line])
    assert after[code_line + 1].startswith("Type 'server.img' to overwrite")
    assert len(after) == code_line + 2
    assert "you typed 'wrong'" in after[-1] and "refused" in after[-1]
    named_report(after[-1])


def test_verify_report_text_escaped(evil: Path, tmp_path: Path) -> None:
    rc, out, err = run_cli("verify", str(evil), "--quiet", tmp=tmp_path)
    assert rc == 0, err
    assert_no_raw_controls(out, err)
    assert "W\\x1b]0;pwn\\x07" in out  # the image's warning, escaped (the text may wrap)
    for m in re.finditer(r"^Report: (\S+)$", out, re.M):
        assert Path(m.group(1)).is_file()


def test_verify_progress_lines_escaped(evil: Path, tmp_path: Path) -> None:
    """Without a terminal the progress display prints plain lines: none carries a control."""
    rc, out, err = run_cli("verify", str(evil), tmp=tmp_path)
    assert rc == 0, err
    assert "verify:" in err and "100.0%" in err
    assert_no_raw_controls(out, err)


def test_disks_table_escapes_udev_text(capsys: pytest.CaptureFixture[str]) -> None:
    """Labels, models and mount points from udev: escaped, markup not applied, one line each."""
    from rescueui.cli.disks import print_table
    from tests.tui.fakes import _disk, _part

    part = _part("/dev/sdz", 1, MiB, 100 * MiB, "ext4", "L" + EVIL, ["/mnt/a\nFAKE ROW"])
    disk = _disk("/dev/sdz", 512 * MiB, "[bold]M" + EVIL, "S" + EVIL, "usb", [part])
    print_table([disk])
    out = capsys.readouterr().out
    assert_no_raw_controls(out)
    assert "\\x1b]0;pwn" in out and "[bold]M" in out
    assert "FAKE ROW" not in out.replace("\\x0aFAKE ROW", "")  # the newline is shown, not done


# ------------------------------------------------------------------ --create and --level


@pytest.mark.parametrize(
    ("size", "words"),
    [
        ("9223372036854775808", "larger than any disk image this tool makes"),
        ("2048T", "larger than any disk image"),
        ("", "needs a size; it was given an empty one"),
        ("0", "must be larger than 0 bytes"),
        ("\u00b2", "cannot read this size"),
        ("\u0663G", "cannot read this size"),  # an Arabic-Indic digit: int() would read it
        ("12X", "cannot read this size"),
    ],
)
def test_create_bad_size_is_refused_and_leaves_no_file(
    image: Path, tmp_path: Path, size: str, words: str
) -> None:
    target = tmp_path / "new.img"
    rc, _, err = run_cli(
        "restore", str(image), str(target), "--create", size, "--yes", "--quiet", tmp=tmp_path
    )
    assert rc == 1
    line = one_paragraph(err)
    assert words in line and "--create" in line and "Traceback" not in err
    assert not target.exists()
    report = json.loads(named_report(line).with_suffix(".json").read_text())
    assert report["outcome"] in ("refused", "failed") and words in report["error"]


def test_create_retry_after_a_refusal_works(image: Path, tmp_path: Path) -> None:
    target = tmp_path / "new.img"
    rc, _, err = run_cli(
        "restore", str(image), str(target), "--create", "9223372036854775808", "--yes",
        "--quiet", tmp=tmp_path,
    )  # fmt: skip
    assert rc == 1 and not target.exists()
    rc, out, err = run_cli(
        "restore", str(image), str(target), "--create", "64M", "--yes", "--quiet",
        "--accept-warnings", tmp=tmp_path,
    )  # fmt: skip
    assert rc == 0, err
    assert "SUCCESS" in out and target.stat().st_size == 64 * MiB


def test_create_refused_at_the_prompt_removes_its_file(image: Path, tmp_path: Path) -> None:
    target = tmp_path / "vm.img"
    args = ["restore", str(image), str(target), "--create", "64M", "--accept-warnings"]
    rc, _, err = typed_on_a_terminal(args, "nope", tmp_path)
    assert rc == 1 and not target.exists()
    last = err.splitlines()[-1]
    assert "was removed again" in last and "nothing was written to it" in last
    named_report(last)


def test_create_refused_by_the_preflight_removes_its_file(evil: Path, tmp_path: Path) -> None:
    """Warnings not acknowledged (the forged image claims 64 CPUs): refused while planning."""
    target = tmp_path / "vm.img"
    rc, _, err = run_cli(
        "restore", str(evil), str(target), "--create", "64M", "--yes", "--quiet", tmp=tmp_path
    )
    assert rc != 0 and not target.exists()
    last = err.splitlines()[-1]
    assert "refused" in last and "nothing was written to it" in last, err
    assert_no_raw_controls(err)
    named_report(last)


def test_create_never_removes_a_file_it_did_not_make(image: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious.img"
    target.write_bytes(b"keep me")
    rc, _, err = run_cli(
        "restore", str(image), str(target), "--create", "64M", "--yes", tmp=tmp_path
    )
    assert rc == 1 and "already exists" in err
    assert target.read_bytes() == b"keep me"


@pytest.mark.parametrize("level", ["22", "0", "-5", "\u00b2", "fast"])
def test_capture_level_out_of_range_is_refused(image: Path, tmp_path: Path, level: str) -> None:
    src = image.parent / "src" / "disk.img"
    rc, _, err = run_cli("capture", str(src), str(tmp_path / "img"), "--level", level, tmp=tmp_path)
    assert rc == 2
    assert "--level" in err and "1 to 19" in err and "Traceback" not in err
    assert not (tmp_path / "img").exists()


# ------------------------------------------------------------------ a full file target


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs")
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.root
def test_full_filesystem_under_a_created_file_target(
    image: Path, tmp_path: Path, small_tmpfs: Path
) -> None:
    target = small_tmpfs / "vm.img"
    rc, _, err = run_cli(
        "restore", str(image), str(target), "--create", "64M", "--yes", "--quiet",
        "--accept-warnings", tmp=tmp_path,
    )  # fmt: skip
    assert rc == 1
    line = one_paragraph(err.replace(f"Created {target} (64.0 MiB, 67108864 bytes).\n", ""))
    assert f"The filesystem holding the target file {target} is full" in line, line
    assert "ENOSPC" in line and "smaller than it claimed" not in line
    m = re.search(r"the first [0-9.]+ MiB \((\d+) bytes\) of the image were written", line)
    # zero ranges take no space in a file, so the position passes the tmpfs's 16 MiB
    assert m and 0 < int(m.group(1)) < 64 * MiB, line
    assert f"df -h {small_tmpfs}" in line
    # the file this run made is gone again, the space is free, and the paragraph says so
    assert not target.exists() and os.listdir(small_tmpfs) == []
    assert f"{target} was removed again" in line
    report = json.loads(named_report(line).with_suffix(".json").read_text())
    assert report["outcome"] == "failed" and "is full" in report["error"]


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 * MiB, 8 * MiB))


def test_file_size_limit_under_a_file_target(image: Path, tmp_path: Path) -> None:
    """EFBIG (a filesystem's largest file, here RLIMIT_FSIZE) is named as such."""
    target = tmp_path / "t.img"
    with open(target, "wb") as f:
        f.truncate(64 * MiB)
    reports = tmp_path / "image"
    shutil.copytree(image, reports, ignore=shutil.ignore_patterns("reports", "*journal*"))
    full = dict(os.environ, RESCUEUI_LOCK=str(tmp_path / "cli.lock"), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "rescueui", "restore", str(reports), str(target), "--yes",
         "--quiet", "--accept-warnings"],
        capture_output=True, text=True, env=full, cwd=REPO, preexec_fn=_limit_file_size,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    line = one_paragraph(proc.stderr)
    assert f"The target file {target} cannot grow past byte" in line, line
    assert "EFBIG" in line and "ext4, XFS, exFAT, NTFS" in line
    assert target.exists()  # not made by this run: never removed
    named_report(line)


def test_quota_and_full_messages_only_for_regular_files(tmp_path: Path) -> None:
    from rescueui.core.pipeline import device_error

    f = tmp_path / "t.img"
    f.write_bytes(b"x")
    quota = device_error(OSError(errno.EDQUOT, "Disk quota exceeded"), str(f), 4 * MiB, "writing")
    assert "disk quota" in quota.message and "EDQUOT" in quota.message
    assert "the first 4.0 MiB (4194304 bytes)" in quota.message
    # a block device (or anything not a regular file) keeps the device wording
    dev = device_error(OSError(errno.ENOSPC, "No space left"), "/dev/null", 512, "writing")
    assert "ENOSPC" in str(dev) and "backing file" in str(dev) and dev.action == "resume"


# ------------------------------------------------------------------ no tracebacks


def test_internal_error_is_one_paragraph_not_a_traceback(
    image: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A bug (any exception that is not a RescueError) ends in one paragraph, not a
    traceback; RESCUEUI_DEBUG=1 shows the traceback."""
    import rescueui.cli.preflight as cli_preflight
    from rescueui.cli import main

    def broken(*_a: Any, **_kw: Any) -> Any:
        raise ValueError("invalid literal for int() with base 10: '\x1b[2J'")

    monkeypatch.setattr(cli_preflight, "run_preflight", broken)
    monkeypatch.delenv("RESCUEUI_DEBUG", raising=False)
    target = tmp_path / "t.img"
    target.write_bytes(b"\0" * MiB)
    assert main(["preflight", str(image), str(target)]) == 1
    err = capsys.readouterr().err
    line = one_paragraph(err)
    assert "internal error (ValueError" in line and "RESCUEUI_DEBUG=1" in line
    assert_no_raw_controls(err)
    monkeypatch.setenv("RESCUEUI_DEBUG", "1")
    with pytest.raises(ValueError):
        main(["preflight", str(image), str(target)])
