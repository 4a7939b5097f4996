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
