"""The launcher: terminal size fallback for serial consoles, console detection, CLI wiring."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

from rescueui.tui.app import DEFAULT_COLUMNS, DEFAULT_LINES, console_mode, ensure_terminal_size


def test_size_fallback_when_the_terminal_reports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "get_terminal_size", lambda *a: os.terminal_size((0, 0)))
    env: dict[str, str] = {}
    assert ensure_terminal_size(env) == (DEFAULT_COLUMNS, DEFAULT_LINES)
    assert env == {"COLUMNS": "80", "LINES": "24"}
    env = {"COLUMNS": "132", "LINES": "50"}
    assert ensure_terminal_size(env) == (132, 50)
    # a broken environment (not ASCII digits, absurd) falls back instead of crashing
    for cols, lines in (("80x", "\u00b2"), ("\u0663", "-5"), ("99999999", "")):
        env = {"COLUMNS": cols, "LINES": lines}
        assert ensure_terminal_size(env) == (DEFAULT_COLUMNS, DEFAULT_LINES)


def test_real_size_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "get_terminal_size", lambda *a: os.terminal_size((100, 30)))
    env: dict[str, str] = {}
    assert ensure_terminal_size(env) == (100, 30)
    assert env == {}


def test_serial_tty_of_size_zero_gets_80x24() -> None:
    """A pty that reports 0x0, like a serial line: the launcher sets 24 rows, 80 columns on it."""
    code = (
        "import os, sys; from rescueui.tui.app import ensure_terminal_size; "
        "ensure_terminal_size(); s = os.get_terminal_size(sys.__stdout__.fileno()); "
        "print(s.columns, s.lines, os.environ['COLUMNS'], os.environ['LINES'])"
    )
    master, slave = pty.openpty()  # a fresh pty has size 0x0
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run(
        [sys.executable, "-c", code], stdout=slave, stderr=subprocess.PIPE, env=env, timeout=60
    )
    os.close(slave)
    out = os.read(master, 1000).decode()
    os.close(master)
    assert proc.returncode == 0, proc.stderr
    assert out.split() == ["80", "24", "80", "24"]


@pytest.mark.parametrize(
    ("term", "expected"),
    [("linux", True), ("vt100", True), ("", True), ("xterm-256color", False), ("screen", False)],
)
def test_console_mode(term: str, expected: bool) -> None:
    assert console_mode(term) is expected
