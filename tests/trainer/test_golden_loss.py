"""The seeded tiny run's exact losses, as torchtune's recipe tests pin theirs: a change to
the data, the masks, the model, the optimizer or the schedule moves them. Pinned at each
of the first eight steps, for a whole run and for one preempted at step 4 and resumed.

If a deliberate change moves them (a new torch or transformers pin, another default),
print the new history (`run.json`'s loss_history) and update GOLDEN in the same commit,
saying why."""

from __future__ import annotations

import pytest
from helpers import preempt_at, read_run

from toolkit.cli import main

SEEDED = {"max_steps": 8, "save_steps": 4, "logging_steps": 1, "val_set_size": 0.0}
# The demo's LoRA on the tiny Qwen3 (seed 0) and the demo data, seed 42, CPU, float32.
GOLDEN = [
    (1, 6.2816162109375),
    (2, 6.241743087768555),
    (3, 6.101260662078857),
    (4, 5.838407039642334),
    (5, 5.778402805328369),
    (6, 5.733948707580566),
    (7, 5.730388641357422),
    (8, 5.756722927093506),
]


def _history(out) -> list[tuple[int, float]]:
    return [(step, loss) for step, loss in read_run(out)["loss_history"]]


def _assert_golden(history) -> None:
    assert [step for step, _ in history] == [step for step, _ in GOLDEN]
    for (step, loss), (_, expected) in zip(history, GOLDEN, strict=True):
        assert loss == pytest.approx(expected, abs=1e-4), f"step {step}"


def test_the_seeded_tiny_run_has_its_golden_losses(tiny_model_dir, write_config):
    path = write_config({**SEEDED, "base_model": str(tiny_model_dir)})
    assert main(["train", str(path), "--runtime", "local"]) == 0
    out = path.parent / "out"
    _assert_golden(_history(out))
    assert read_run(out)["final_loss"] == pytest.approx(GOLDEN[-1][1], abs=1e-4)


def test_a_resumed_run_has_the_same_golden_losses(tiny_model_dir, write_config, monkeypatch):
    path = write_config({**SEEDED, "base_model": str(tiny_model_dir)})
    preempt_at(monkeypatch, path, 4)
    assert main(["train", str(path), "--runtime", "local"]) == 0
    _assert_golden(_history(path.parent / "out"))
