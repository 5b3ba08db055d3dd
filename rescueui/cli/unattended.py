"""`rescueui unattended`: the restore the kernel command line asks for (live image, fleets).

Run by the live image's ``rescueui-unattended.service`` when ``rescueui.unattended=1`` is on
the kernel command line (options: :mod:`rescueui.core.unattended`). Also runnable by hand:
``rescueui unattended --cmdline 'rescueui.unattended=1 rescueui.image=... rescueui.target=...'``
(or ``python -m rescueui.cli.unattended`` where the sub-command is not registered).
Every line goes to stdout and, with ``--log``, to that file (the live consoles follow it),
always as one line with its control characters escaped (image text, labels and models from
udev are quoted in them). Every run that was asked for ends with a ``RESULT`` line and a
report file (the job's, or a refusal report when it never started), also on bad options.
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

from rescueui.core import unattended as core_unattended
from rescueui.core.errors import RescueError
from rescueui.core.text import safe_text
from rescueui.core.unattended import (
    UnattendedOptions,
    UnattendedResult,
    parse_cmdline,
    read_cmdline,
    run_unattended,
    unexpected_error,
    write_abort_report,
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
        # one line, escaped: a line break or ESC in quoted text cannot fake or repaint a line
        line = f"{TAG} {time.strftime('%H:%M:%S')} {safe_text(text)}\n"
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
    text: str | None = None
    try:
        text = args.cmdline if args.cmdline is not None else read_cmdline()
        opts = parse_cmdline(text)
    except (RescueError, OSError, ValueError) as exc:
        error = exc if isinstance(exc, RescueError) else unexpected_error(exc, None)
        say(f"ABORTED, nothing written: bad kernel options: {error}")
        _report(core_unattended.FALLBACK_REPORT_DIR, None, error, say, cmdline=text)
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
    except Exception as exc:  # run_unattended reports its own failures; this is a last resort
        error = RescueError(
            f"Unexpected error in the unattended run: {type(exc).__name__}: {exc}.",
            hint="The target may be partly written: do not use it before a restore of it "
            "succeeds. Report this with the report file.",
        )
        say(f"FAILED with an unexpected error: {error}")
        paths = _report(core_unattended.FALLBACK_REPORT_DIR, opts, error, say, written=None)
        # it may have failed after writing began: never claim "nothing written"
        result = UnattendedResult("failed", str(error), paths, written=True)
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


def _report(
    folder: Path,
    opts: UnattendedOptions | None,
    error: BaseException,
    say: Console,
    *,
    cmdline: str | None = None,
    written: bool | None = False,
) -> list[Path]:
    """Write the refusal report and name it on the consoles (or say it could not be)."""
    paths = write_abort_report(folder, opts, None, error, cmdline=cmdline, written=written)
    for p in paths:
        say(f"report: {p}")
    if not paths:
        say("no report file could be written anywhere (/run, /tmp): this log is all there is")
    return paths


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
