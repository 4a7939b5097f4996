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


def sigterm_at(monkeypatch, step: int) -> None:
    """Send this process SIGTERM when training reaches `step` (a preemption, in-process)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ProgressLog, "on_step_end", on_step_end, raising=False)
