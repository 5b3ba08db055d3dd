"""The fix-up options of restore and preflight: --adapt, --no-adapt, --for-host."""

from __future__ import annotations

import argparse
from typing import Any

from rescueui.core.errors import RescueError


def add_adapt_arguments(p: argparse.ArgumentParser) -> None:
    """The fix-up choices, shared by restore and preflight."""
    from rescueui.core.adapt.plan import FIXUPS

    p.add_argument(
        "--adapt",
        metavar="LIST",
        default="all",
        help="after a whole-disk restore, fit the restored Linux system to the machine: "
        f"a comma-separated choice of {', '.join(FIXUPS)} (default: all that are needed; "
        "the pre-flight lists them)",
    )
    p.add_argument(
        "--no-adapt",
        action="store_true",
        help="change nothing in the restored system (same as --adapt none)",
    )
    p.add_argument(
        "--for-host",
        metavar="PROFILE.json",
        help="fit the restored system to another machine, described by `rescueui host --json` "
        "run there (default: this machine)",
    )


def adapt_options(args: argparse.Namespace) -> Any:
    """--adapt / --no-adapt / --for-host as the core's AdaptOptions."""
    from rescueui.core.adapt import AdaptOptions
    from rescueui.core.adapt.plan import parse_selection
    from rescueui.core.host import load_profile

    try:
        selection = set() if args.no_adapt else parse_selection(args.adapt)
    except ValueError as exc:
        raise RescueError(f"--adapt {args.adapt!r}: {exc}.") from exc
    host = load_profile(args.for_host) if args.for_host else None
    return AdaptOptions(selection=selection, host=host, enabled=bool(selection))
