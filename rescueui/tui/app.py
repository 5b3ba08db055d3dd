"""The full-screen app: a guided restore (and capture, verify) driven by keys only.

``run(demo, ascii_only)`` is the launcher the CLI calls. :class:`RescueApp` receives its
:class:`~rescueui.core.session.Session` (real disks or the demo), so tests build it the same way.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.scrollbar import ScrollBar, ScrollBarRender

from rescueui.core.session import Session, open_session
from rescueui.tui.messages import DiskHotplug
from rescueui.tui.state import Flow
from rescueui.tui.widgets.glyphs import ASCII, CONSOLE, Glyphs

DEFAULT_COLUMNS = 80
DEFAULT_LINES = 24


class BlockScrollBarRender(ScrollBarRender):
    """Scroll bars without eighth blocks (the console font lacks them)."""

    VERTICAL_BARS = [" "] * 8
    HORIZONTAL_BARS = [" "] * 8


def console_mode(term: str | None = None) -> bool:
    """True on the Linux kernel console and other poor terminals: 16 colours, CP437 glyphs."""
    term = os.environ.get("TERM", "") if term is None else term
    return term in ("linux", "vt100", "vt102", "vt220", "ansi", "dumb", "") or term.startswith(
        "linux"
    )


class RescueApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    TITLE = "rescueui"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True)
    ]

    def __init__(
        self,
        session: Session,
        *,
        ascii_only: bool = False,
        console: bool | None = None,
        job_throttle: float = 0.0,
        repaint_interval: float = 0.25,
        watch_disks: bool = True,
        sample_every: float = 0.25,
        graph_warmup: float = 1.0,
    ) -> None:
        super().__init__()
        self.session = session
        self.ascii_only = ascii_only
        self.on_console = console_mode() if console is None else console
        self.glyphs: Glyphs = ASCII if ascii_only else CONSOLE
        self.flow = Flow()
        self.job_throttle = job_throttle  # tests: seconds to sleep per progress callback
        self.repaint_interval = repaint_interval
        self.watch_disks = watch_disks
        self.sample_every = sample_every  # seconds between throughput graph samples
        self.graph_warmup = graph_warmup  # seconds of a job before the graph starts
        ScrollBar.renderer = BlockScrollBarRender
        if self.on_console or ascii_only:
            self.theme = "ansi-dark"
        if ascii_only:
            self.add_class("-ascii")

    def get_key_display(self, binding: Binding) -> str:
        """Key names in plain ASCII (the default uses symbols the console font lacks)."""
        names = {"enter": "Enter", "escape": "Esc", "tab": "Tab", "space": "Space"}
        key = binding.key.split(",")[0]
        if binding.key_display:
            return binding.key_display
        if key.startswith("ctrl+"):
            return "^" + key[5:]
        return names.get(key, key)

    def get_default_screen(self) -> Any:
        from rescueui.tui.screens.disks import DisksScreen

        return DisksScreen()

    def on_mount(self) -> None:
        if self.ascii_only:
            self.screen.add_class("-ascii")
        if self.watch_disks:
            self.session.start_watcher(self._disk_event)

    def on_unmount(self) -> None:
        # the watcher, the partitions open for browsing, the media mounted to find images
        self.session.close()

    def _disk_event(self, event: Any) -> None:
        """Called in the watcher thread."""
        try:
            self.call_from_thread(self.post_message, DiskHotplug(event))
        except RuntimeError:  # the app is shutting down
            pass

    def on_disk_hotplug(self, message: DiskHotplug) -> None:
        for screen in self.screen_stack:
            refresh = getattr(screen, "refresh_disks", None)
            if refresh is not None:
                refresh(message.event)


def _count(text: str | None) -> int:
    """A positive whole number from the environment, else 0 (ASCII digits only: a broken
    COLUMNS=80x or '²' must not stop the app from starting)."""
    value = (text or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 6 else 0


def ensure_terminal_size(env: dict[str, str] | None = None) -> tuple[int, int]:
    """A serial console reports 0x0: fall back to 80x24 (env COLUMNS/LINES win if set)."""
    env = os.environ if env is None else env
    try:
        size = os.get_terminal_size(sys.__stdout__.fileno())
        cols, lines = size.columns, size.lines
    except (OSError, ValueError, AttributeError):
        cols, lines = 0, 0
    if cols > 0 and lines > 0:
        return cols, lines
    cols = _count(env.get("COLUMNS")) or DEFAULT_COLUMNS
    lines = _count(env.get("LINES")) or DEFAULT_LINES
    env["COLUMNS"] = str(cols)
    env["LINES"] = str(lines)
    try:  # tell the tty too (what `stty rows 24 cols 80` does), so resizes stay sane
        import fcntl
        import struct
        import termios

        fcntl.ioctl(
            sys.__stdout__.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", lines, cols, 0, 0)
        )
    except (OSError, ValueError, AttributeError, ImportError):
        pass
    return cols, lines


def run(demo: bool, ascii_only: bool) -> int:
    """Start the app on the real disks or the demo; returns the exit status."""
    ensure_terminal_size()
    if ascii_only:
        os.environ.pop("COLORTERM", None)
    if demo:
        print("rescueui: preparing the demo (sample image and virtual disks)...", flush=True)
    session = open_session(demo)
    app = RescueApp(session, ascii_only=ascii_only)
    result = app.run(mouse=False)
    return int(result or 0)
