"""The app on a Linux-console-like terminal: tmux with TERM=linux and no COLORTERM.

Drives the demo by keys (``send-keys``), reads the screen with ``capture-pane -p -e`` and checks
that only 16-colour SGR sequences and only glyphs the console font has (CP437) appear.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

SGR = re.compile(r"\x1b\[([0-9;:]*)m")
ESC = re.compile(r"\x1b\[[0-9;:?]*[A-Za-z]")


def rescueui_cmd() -> str:
    exe = Path(sys.executable).with_name("rescueui")
    return str(exe) if exe.exists() else f"{sys.executable} -m rescueui"


class Tmux:
    def __init__(self, cmd: str, width: int = 80, height: int = 24) -> None:
        self.name = f"rescueui-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                self.name,
                "-x",
                str(width),
                "-y",
                str(height),
                cmd,
            ],
            check=True,
        )

    def keys(self, *keys: str, literal: bool = False) -> None:
        args = ["tmux", "send-keys", "-t", self.name, *(["-l"] if literal else []), *keys]
        subprocess.run(args, check=True)

    def capture(self, escapes: bool = True) -> str:
        args = ["tmux", "capture-pane", "-t", self.name, "-p"] + (["-e"] if escapes else [])
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        end = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < end:
            screen = self.capture(escapes=False)
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; screen was:\n{screen}")

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], check=False)


def check_console_safe(screen: str) -> None:
    for params in SGR.findall(screen):
        assert "38;5;" not in params and "48;5;" not in params, f"256-colour SGR: {params}"
        assert "38;2;" not in params and "48;2;" not in params, f"truecolour SGR: {params}"
        for p in params.replace(":", ";").split(";"):
            assert p == "" or int(p) < 108, f"unexpected SGR parameter {p} in {params}"
    text = ESC.sub("", screen)
    for ch in text:
        if ch in "\n":
            continue
        try:
            ch.encode("cp437")
        except UnicodeEncodeError:
            raise AssertionError(
                f"glyph {ch!r} (U+{ord(ch):04X}) is not in the console font"
            ) from None
        assert ch == " " or ord(ch) >= 0x20, f"control character {ch!r} on screen"


def screens_of_demo(tmp_path: Path, *, ascii_only: bool = False) -> list[str]:
    cache = tmp_path / "cache"
    env = (
        f"env -u COLORTERM TERM=linux XDG_CACHE_HOME={cache} RESCUEUI_DEMO_PACE=4e6 "
        f"RESCUEUI_LOCK={tmp_path / 'lock'}"
    )
    flag = " --ascii" if ascii_only else ""
    tmux = Tmux(f"{env} {rescueui_cmd()} --demo{flag}; sleep 600")
    screens = []
    try:
        screens.append(tmux.capture())
        tmux.wait_for("Choose image", timeout=90)
        tmux.wait_for("demo-disk-A")
        screens.append(tmux.capture())
        # what a capture of the selected disk (the demo's source) would store, then back
        tmux.keys("c")
        tmux.wait_for("Estimated image size")
        screens.append(tmux.capture())
        tmux.keys("Escape")
        tmux.wait_for("Choose image")
        tmux.keys("Enter")
        tmux.wait_for("demo-server-image")
        screens.append(tmux.capture())
        tmux.keys("Enter")
        tmux.wait_for("Restore onto this disk")
        for _ in range(20):  # move to demo-disk-A
            if "Target disk" in tmux.capture(False) and "demo-disk-A.img" in tmux.capture(False):
                break
            tmux.keys("Down")
            time.sleep(0.2)
        screens.append(tmux.capture())
        # the dialog of a new virtual machine, then back
        tmux.keys("v")
        tmux.wait_for("Restore into a new virtual machine")
        screens.append(tmux.capture())
        tmux.keys("Escape")
        tmux.wait_for("v New VM")
        tmux.keys("Enter")
        tmux.wait_for("Pre-flight checks")
        tmux.wait_for("Enter Confirm")
        for _ in range(100):  # the findings are in once the verdict line is
            if any(w in tmux.capture(False) for w in (" GO ", "not acknowledged (", "STOP:")):
                break
            time.sleep(0.2)
        screens.append(tmux.capture())
        # every warning (e.g. the UEFI-only demo image on a BIOS machine) is acknowledged
        # one by one before Enter is accepted
        for _ in range(20):  # the verdict line counts the open ones
            if "not acknowledged (" not in tmux.capture(False):
                break
            tmux.keys("a")
            time.sleep(0.3)
        if "[WARN]" in screens[-1]:
            tmux.wait_for("every warning acknowledged")
            screens.append(tmux.capture())
        tmux.keys("Enter")
        tmux.wait_for("confirmation code")
        screens.append(tmux.capture())
        tmux.keys("demo-disk-A.img", literal=True)
        tmux.keys("Enter")
        tmux.wait_for("BLAKE3")
        time.sleep(2)
        mid = tmux.capture()
        screens.append(mid)
        assert "MB/s" in mid and "Chunks verified" in mid
        tmux.keys("x")
        tmux.wait_for("Stop the restore now?")
        screens.append(tmux.capture())
        tmux.keys("y")
        tmux.wait_for("CANCELLED", timeout=60)
        tmux.keys("Enter")
        tmux.wait_for("Report")
        screens.append(tmux.capture())
    finally:
        tmux.kill()
    return screens


def test_console_shows_only_16_colours_and_console_glyphs(tmp_path: Path) -> None:
    screens = screens_of_demo(tmp_path)
    assert len(screens) >= 8
    for screen in screens:
        check_console_safe(screen)
    assert any("\x1b[" in s for s in screens)  # it did draw with attributes


def test_ascii_mode_shows_only_ascii(tmp_path: Path) -> None:
    screens = screens_of_demo(tmp_path, ascii_only=True)
    for screen in screens:
        check_console_safe(screen)
        text = ESC.sub("", screen)
        bad = {ch for ch in text if not ch.isascii()}
        assert not bad, f"non-ASCII glyphs in --ascii mode: {bad}"


def test_checker_catches_what_it_should() -> None:
    with pytest.raises(AssertionError):
        check_console_safe("\x1b[38;5;200mx\x1b[0m")
    with pytest.raises(AssertionError):
        check_console_safe("\x1b[48;2;1;2;3mx")
    with pytest.raises(AssertionError):
        check_console_safe("\u256dround corner")
    check_console_safe("\x1b[1;31m\u2588\u2591 \u2554\u2550\u2557\x1b[0m")
