"""Start the full-screen app (the only CLI module that may import Textual, lazily)."""

from __future__ import annotations

import argparse


def run_app(args: argparse.Namespace) -> int:
    try:
        from rescueui.tui.app import run
    except ImportError:
        # Until the TUI lands, show the disk list.
        from rescueui.cli import disks

        return disks.run(argparse.Namespace(json=False))
    return run(demo=args.demo, ascii_only=args.ascii)
