"""The host CLI stays light: no torch (or transformers) at import or for validate/--help."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PROBE = """
import sys
from toolkit.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "peft", "datasets") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def heavy_modules(argv: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, cwd=REPO
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY=")]
    assert line, proc.stderr
    return line[0].removeprefix("HEAVY=")


def test_help_does_not_import_torch():
    assert heavy_modules(["--help"]) == ""


def test_validate_does_not_import_torch(write_config):
    assert heavy_modules(["validate", str(write_config())]) == ""


def test_images_list_does_not_import_torch():
    assert heavy_modules(["images", "list"]) == ""
