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


def test_examples_load_neither_the_hub_client_nor_the_trainer():
    assert heavy_modules(["examples"], (*TRAINER, "huggingface_hub", "pydantic")) == ""


def test_the_hub_client_is_imported_by_the_commands_that_read_the_hub_only():
    """huggingface_hub is a host dependency, imported when a command reads the Hub: the
    modules that use it and the commands' modules load without it."""
    modules = ("toolkit.host.hub", "toolkit.host.publish", "toolkit.host.remote", "toolkit.cli")
    probe = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
    probe += "print('huggingface_hub' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert proc.stdout == "False\n", proc.stderr


def test_help_takes_under_a_tenth_of_a_second():
    """`toolkit --help` (imports and the command line, after Python's own start) in CPU
    seconds, the best of five runs, so other work on a busy machine does not decide."""
    probe = (
        "import time\nstart = time.process_time()\nfrom toolkit.cli import main\n"
        "main(['--help'])\nprint(f'SECONDS={time.process_time() - start}')"
    )
    times = []
    for _ in range(5):
        proc = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO
        )
        [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("SECONDS=")]
        times.append(float(line.removeprefix("SECONDS=")))
    assert min(times) < 0.1, times
