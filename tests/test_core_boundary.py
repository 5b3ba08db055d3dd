"""The core never imports Textual (checked in a fresh interpreter)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import rescueui.core


def test_core_does_not_import_textual() -> None:
    modules = [f"rescueui.core.{m.name}" for m in pkgutil.iter_modules(rescueui.core.__path__)]
    assert modules, "rescueui.core has no modules"
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k == 'textual' or k.startswith('textual.'))\n"
        "print(','.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"core pulled in Textual: {r.stdout} {r.stderr}"


def test_cli_commands_do_not_import_textual() -> None:
    code = (
        "import sys\n"
        "from rescueui.cli import build_parser\n"
        "build_parser()\n"
        "sys.exit(1 if 'textual' in sys.modules else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
