"""Small helpers several test modules share."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from toolkit.trainer.progress import ProgressLog


def read_run(out: Path) -> dict:
    """A run's run.json."""
    return json.loads((Path(out) / "run.json").read_text())


def answer_of(capsys, config, *flags, prompt: str, tokens: int = 12) -> str:
    """What `toolkit inference` prints for one prompt (flags: --model, …); it must exit 0."""
    from toolkit.cli import main

    argv = ["inference", str(config), "--runtime", "local", "--prompt", prompt]
    assert main([*argv, "--max-new-tokens", str(tokens), *flags]) == 0
    return capsys.readouterr().out


def sigterm_at(monkeypatch, step: int) -> None:
    """Send this process SIGTERM when training reaches `step` (a preemption, in-process)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ProgressLog, "on_step_end", on_step_end, raising=False)


def preempt_at(monkeypatch, config_path: Path, step: int) -> None:
    """Train `config_path` in-process until SIGTERM at `step` stops it with a checkpoint
    (exit 75's Preempted), then lift the patch so the next run goes to the end."""
    import pytest

    from toolkit.config import load_config
    from toolkit.errors import Preempted
    from toolkit.trainer import run

    with monkeypatch.context() as patch:
        sigterm_at(patch, step)
        with pytest.raises(Preempted):
            run(load_config(config_path))
