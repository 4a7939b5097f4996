"""SIGTERM saves a checkpoint and exits 75; the same command then resumes and ends
with the weights an uninterrupted run ends with."""

from __future__ import annotations

import pytest
from helpers import read_run, run, sigterm_at

from toolkit.cli import main
from toolkit.config import load_config
from toolkit.errors import Preempted

STEPS = {"max_steps": 20, "save_steps": 100, "logging_steps": 5, "val_set_size": 0.0}


def adapter(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def test_preempted_run_resumes_to_the_same_weights(
    tiny_model_dir, write_config, tmp_path, monkeypatch, capsys
):
    import torch

    base = {"base_model": str(tiny_model_dir), **STEPS}
    full = run(load_config(write_config({**base, "output_dir": str(tmp_path / "full")})))

    path = write_config({**base, "output_dir": str(tmp_path / "pre")}, name="pre.yaml")
    sigterm_at(monkeypatch, 8)
    with pytest.raises(Preempted) as info:
        run(load_config(path))
    assert info.value.exit_code == 75
    assert "Run the same command again to resume" in str(info.value)
    assert (tmp_path / "pre" / "checkpoint-8" / "toolkit-complete.json").exists()
    assert not (tmp_path / "pre" / "run.json").exists(), "no final outputs after preemption"

    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", str(path), "--runtime", "local"]) == 0
    assert "resume: continuing from checkpoint-8 (step 8)" in capsys.readouterr().out
    resumed = adapter(tmp_path / "pre")
    for name, tensor in adapter(full).items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6), name
    assert read_run(tmp_path / "pre")["steps"] == 20


# Skipping cut-short, missing and foreign checkpoints, and resume_from_checkpoint: false,
# are tested in test_trust.py; damage that keeps a file's size (the SHA-256 each
# checkpoint's marker records), the fallback and the stop when none verifies in
# test_checkpoints.py.


def test_ranks_agree_on_the_stop_and_a_signal_during_the_agreement_is_not_lost(monkeypatch):
    """The flag the ranks reduce at each step end: a SIGTERM that lands while the
    all-reduce runs (the rank waits there for the others) counts at the next step."""
    from dataclasses import dataclass

    import torch
    import torch.distributed as dist
    from transformers import TrainerControl

    from toolkit.trainer.checkpoints import Preemption

    @dataclass
    class Args:
        world_size: int = 2
        device: str = "cpu"

    preemption = Preemption()
    others: list[int] = []  # what the other rank brings to each reduction

    def all_reduce(flag, op):
        if not others:
            preemption._on_signal(15, None)  # the signal, in the middle of the reduction
        flag.copy_(torch.maximum(flag, torch.tensor([others.pop(0) if others else 0])))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    control = TrainerControl()
    preemption.on_step_end(Args(), None, control)  # this rank had no signal, nor the other
    assert not control.should_training_stop
    preemption.on_step_end(Args(), None, control)  # now it brings its own
    assert control.should_training_stop and control.should_save

    # The other rank's signal alone stops this one at the same step.
    other_rank = Preemption()
    others.append(1)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    control = TrainerControl()
    other_rank.on_step_end(Args(), None, control)
    assert control.should_training_stop and not other_rank.signalled
