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
heavy = sorted(m for m in {modules!r} if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


TRAINER = ("torch", "transformers", "peft", "datasets")


def heavy_modules(argv: list[str], modules: tuple[str, ...] = TRAINER) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv, modules=modules)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY=")]
    assert line, proc.stderr
    return line[0].removeprefix("HEAVY=")


def test_help_does_not_import_torch():
    assert heavy_modules(["--help"]) == ""


def test_help_loads_neither_the_config_nor_the_hub_client():
    """`toolkit --help` stays fast: pydantic, the config and huggingface_hub load only in
    the commands that use them."""
    assert heavy_modules(["--help"], ("pydantic", "toolkit.config", "huggingface_hub")) == ""


def test_validate_does_not_import_torch(write_config):
    assert heavy_modules(["validate", str(write_config())]) == ""


def test_images_list_does_not_import_torch():
    assert heavy_modules(["images", "list"]) == ""
