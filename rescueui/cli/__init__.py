"""Command line front end: ``rescueui [--demo] | disks | host | capture | restore | verify |
preflight | inspect | unattended | vm-check | files | extract``.

Thin by rule: each sub-command lives in its own module (``rescueui/cli/<name>.py``)
exposing ``add_parser(subparsers)`` and ``run(args) -> int``; no business rule here.
With no sub-command the full-screen TUI starts.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import IO

from rescueui import __version__
from rescueui.cli.output import say
from rescueui.core.errors import RescueError
from rescueui.core.text import safe_text

COMMANDS = (
    "disks",
    "host",
    "capture",
    "restore",
    "verify",
    "inspect",
    "preflight",
    "unattended",
    "vm-check",
    "files",
    "extract",
)


class _Parser(argparse.ArgumentParser):
    """argparse quotes what was typed in its messages (``invalid int value: '...'``): those
    go through safe_text like every other line (a file name can hold control characters)."""

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        super()._print_message(safe_text(message, newlines=True), file)


def _command_of(argv: Sequence[str] | None) -> str | None:
    """The sub-command named on the command line (its first word that is not an option),
    if it is one of ours: only its module is imported (a job's start-up time counts)."""
    for word in sys.argv[1:] if argv is None else argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; for a named sub-command only that one (``--help`` alone lists all)."""
    parser = _Parser(
        prog="rescueui",
        description="Restore and capture disk images. Without a command, starts the full-screen app.",
    )
    parser.add_argument("--version", action="version", version=f"rescueui {__version__}")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="run the app on a built-in demo (sample image, file-backed virtual disks; no real disk)",
    )
    parser.add_argument(
        "--ascii", action="store_true", help="ASCII-only drawing (serial lines, poor fonts)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = _command_of(argv)
    for name in COMMANDS if wanted is None else (wanted,):
        module = importlib.import_module(f"rescueui.cli.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    # argparse hands positionals out once: an optional PATH after `--partition N` would be
    # "unrecognized"; a command that takes more words after its options says so (`trailing`)
    if extra and hasattr(args, "trailing") and not any(w.startswith("-") for w in extra):
        args.trailing = list(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command is None:
            from rescueui.cli.app import run_app

            return run_app(args)
        module = importlib.import_module(f"rescueui.cli.{args.command.replace('-', '_')}")
        return int(module.run(args))
    except RescueError as exc:
        say("rescueui: {}", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        say("rescueui: interrupted")
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which closed early: not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: one paragraph, not a traceback (unless asked for)
        if os.environ.get("RESCUEUI_DEBUG"):
            raise
        say(
            "rescueui {}: internal error ({}: {}). This is a bug in rescueui, not something "
            "you did; please report it with the command you ran. Set RESCUEUI_DEBUG=1 to see "
            "where it happened.",
            args.command or "app",
            type(exc).__name__,
            exc,
        )
        return 1
