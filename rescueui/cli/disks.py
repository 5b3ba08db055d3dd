"""`rescueui disks` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("disks", help="(not built yet)")
    p.add_argument("rest", nargs="*")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    print("rescueui disks: not built yet", file=sys.stderr)
    return 2
