"""The command line itself (Click): every command's --help, JSON output, completion,
environment variables, usage errors with exit 2, a closed pipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from toolkit.cli import cli, main

TOOLKIT = str(Path(sys.executable).parent / "toolkit")


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


COMMANDS = list(all_commands(cli))


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: toolkit {' '.join(path)} ")
    command = cli
    for part in path:
        command = command.commands[part]
    assert command.help and command.help.strip()[0].isupper(), "a sentence that says what it does"


def test_the_group_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    for name in (
        "validate",
        "train",
        "preprocess",
        "merge-lora",
        "tiny-model",
        "images",
        "launch",
        "reproduce",
        "compare",
        "doctor",
    ):
        assert f"  {name} " in result.output


def test_options_people_set_per_machine_come_from_the_environment(
    write_config, monkeypatch, capsys
):
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    for name in ("TOOLKIT_RUNTIME", "TOOLKIT_VARIANT", "TOOLKIT_GPUS"):
        assert name in help_text
    monkeypatch.setenv("TOOLKIT_RUNTIME", "podman")
    assert main(["train", str(write_config())]) == 2
    assert "Invalid value for '--runtime'" in capsys.readouterr().err


def test_usage_errors_exit_2_naming_the_problem(capsys):
    assert main(["train"]) == 2
    assert "Missing argument 'CONFIG'" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert "No such command 'frobnicate'" in capsys.readouterr().err
    assert main(["train", "c.yaml", "--nproc-per-node", "0"]) == 2
    assert "--nproc-per-node" in capsys.readouterr().err
    assert main(["images", "verify"]) == 2
    assert "give a VARIANT (its tag is checked) or --tag TAG" in capsys.readouterr().err


def test_version_and_help_exit_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("toolkit ")
    assert main(["-h"]) == 0


def test_validate_json(write_config, capsys):
    assert main(["validate", str(write_config()), "--json", "--seed", "7"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["values"]["seed"] == 7 and data["sources"]["seed"] == "command line"
    assert data["values"]["gradient_accumulation_steps"] == 1


def test_compare_json(tmp_path, capsys):
    for name, losses in (("a", [6.0, 5.5]), ("b", [6.0, 5.9])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(
            json.dumps({"config": {}, "loss_history": [[1, losses[0]], [2, losses[1]]]})
        )
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["same"] is False and data["worst_step"] == 2
    assert data["max_abs"] == pytest.approx(0.4)


def test_a_closed_pipe_is_not_a_traceback():
    proc = subprocess.run(
        f"{TOOLKIT} images list --json | head -c 1", shell=True, capture_output=True, text=True
    )
    assert proc.stdout == "[" and "Traceback" not in proc.stderr and proc.stderr == ""


def complete(words: str) -> list[str]:
    """What the shell would offer for the last word of `words` (bash protocol)."""
    import os

    env = {
        **os.environ,
        "_TOOLKIT_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    out = subprocess.run([TOOLKIT], env=env, capture_output=True, text=True).stdout
    return [line.split(",", 1)[1] for line in out.splitlines() if "," in line]


def test_completion_offers_commands_variants_and_config_keys():
    assert "merge-lora" in complete("toolkit me")
    assert set(complete("toolkit images build cu")) >= {"cu128", "cu130"}
    assert "--micro-batch-size" in complete("toolkit train c.yaml --micro-b")
    assert "--variant" in complete("toolkit train c.yaml --var")


def test_help_starts_fast():
    """`toolkit --help` stays under the start-up budget (no heavy import on its path)."""
    import time

    runs = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([TOOLKIT, "--help"], capture_output=True, check=True)
        runs.append(time.perf_counter() - started)
    assert min(runs) < 0.5, runs  # the budget is 0.1 s on a quiet machine; CI is shared


def test_train_json_prints_the_summary_alone(tiny_model_dir, write_config, capsys):
    path = write_config(
        {"base_model": str(tiny_model_dir), "max_steps": 2, "val_set_size": 0.0, "logging_steps": 1}
    )
    assert main(["train", str(path), "--runtime", "local", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["status"] == "trained" and summary["steps"] == 2
    assert summary["segments"][-1]["outcome"] == "complete"
    assert "step 2/2 loss" in captured.err
    assert main(["train", str(path), "--runtime", "local", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "already complete"
