"""`rescueui unattended`: the restore the kernel command line asks for (live image, fleets).

Run by the live image's ``rescueui-unattended.service`` when ``rescueui.unattended=1`` is on
the kernel command line (options: :mod:`rescueui.core.unattended`). Also runnable by hand:
``rescueui unattended --cmdline 'rescueui.unattended=1 rescueui.image=... rescueui.target=...'``
(or ``python -m rescueui.cli.unattended`` where the sub-command is not registered).
Every line goes to stdout and, with ``--log``, to that file (the live consoles follow it).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from rescueui.core.errors import RescueError
from rescueui.core.unattended import (
    UnattendedOptions,
    UnattendedResult,
    parse_cmdline,
    read_cmdline,
    run_unattended,
)

TAG = "rescueui-unattended"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "unattended",
        help="run the restore named by rescueui.* kernel command-line options (live image)",
        description="Restore without questions as the rescueui.* kernel options say; abort "
        "without writing on any mismatch.",
    )
    _arguments(p)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cmdline",
        metavar="TEXT",
        help="options to use instead of /proc/cmdline (same syntax)",
    )
    p.add_argument("--log", metavar="FILE", type=Path, help="also append every line to FILE")
    p.add_argument(
        "--done-file",
        metavar="FILE",
        type=Path,
        help="write the outcome here when finished (default: next to --log, .done)",
    )
    p.add_argument(
        "--no-poweroff",
        action="store_true",
        help="ignore rescueui.poweroff (for trying the options on a running system)",
    )


class Console:
    """Lines with a time stamp to stdout and an optional log file, flushed at once."""

    def __init__(self, log: Path | None) -> None:
        self.files: list[TextIO] = [sys.stdout]
        self._lock = threading.Lock()
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            self.files.append(open(log, "a", encoding="utf-8", buffering=1))

    def __call__(self, text: str) -> None:
        line = f"{TAG} {time.strftime('%H:%M:%S')} {text}\n"
        with self._lock:
            for f in self.files:
                try:
                    f.write(line)
                    f.flush()
                except OSError:
                    pass


def _poweroff(say: Console) -> None:
    say("powering off in 5 s (rescueui.poweroff)")
    time.sleep(5)
    subprocess.run(["sync"], check=False)
    subprocess.run(["systemctl", "poweroff"], check=False)


def run(args: argparse.Namespace) -> int:
    say = Console(args.log)
    done_file: Path | None = args.done_file
    if done_file is None and args.log is not None:
        done_file = args.log.with_suffix(".done")
    try:
        text = args.cmdline if args.cmdline is not None else read_cmdline()
        opts = parse_cmdline(text)
    except RescueError as exc:
        say(f"ABORTED, nothing written: bad kernel options: {exc}")
        say("RESULT aborted")
        _done(done_file, "aborted")
        return 2
    if not opts.unattended:
        say("rescueui.unattended=1 is not on the kernel command line: nothing to do.")
        _done(done_file, "not requested")
        return 0
    cancel = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        say(f"signal {signum}: cancelling the restore")
        cancel.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    say("unattended restore starting")
    try:
        result = run_unattended(opts, say, cancel=cancel)
    except Exception as exc:  # the consoles must say what happened, whatever it was
        say(f"FAILED with an unexpected error: {type(exc).__name__}: {exc}")
        result = UnattendedResult("failed", f"{type(exc).__name__}: {exc}", written=True)
    say(f"RESULT {result.outcome}: {result.message}")
    _done(done_file, result.outcome)
    # Finished: a SIGTERM from here on (the power-off below) just ends the process.
    code = {"success": 0, "aborted": 3}.get(result.outcome, 1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(code))
    _maybe_poweroff(opts, result, say, args.no_poweroff)
    return code


def _maybe_poweroff(
    opts: UnattendedOptions, result: UnattendedResult, say: Console, disabled: bool
) -> None:
    wanted = opts.poweroff == "always" or (
        opts.poweroff == "success" and result.outcome == "success"
    )
    if wanted and not disabled:
        _poweroff(say)
    elif opts.poweroff == "success" and result.outcome != "success":
        say("not powering off: the restore did not succeed (rescueui.poweroff=always would)")


def _done(path: Path | None, outcome: str) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outcome + "\n")
    except OSError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescueui unattended", description=__doc__)
    _arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
