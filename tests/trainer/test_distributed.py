"""Two processes with DDP (gloo on CPU) train like one process with the same global batch."""

from __future__ import annotations

import pytest
from helpers import read_run

from toolkit.cli import main

COMMON = {
    "max_steps": 10,
    "logging_steps": 2,
    "save_steps": 100,
    "val_set_size": 0.0,
    "micro_batch_size": 4,
    "learning_rate": 0.003,
}

pytestmark = pytest.mark.slow  # real multi-process or full-example training


def losses(out):
    run = read_run(out)
    return run, [loss for _, loss in run["loss_history"]]


def test_two_process_ddp_matches_one_process(tiny_model_dir, write_config, tmp_path, capfd):
    base = {"base_model": str(tiny_model_dir), **COMMON}
    single = write_config(
        {**base, "gradient_accumulation_steps": 2, "output_dir": str(tmp_path / "single")},
        name="single.yaml",
    )
    ddp = write_config(
        {**base, "gradient_accumulation_steps": 1, "output_dir": str(tmp_path / "ddp")},
        name="ddp.yaml",
    )
    assert main(["train", str(single), "--runtime", "local"]) == 0
    capfd.readouterr()
    assert (
        main(
            [
                "train",
                str(ddp),
                "--runtime",
                "local",
                "--nproc-per-node",
                "2",
                "--master-port",
                "29533",
            ]
        )
        == 0
    )
    # The closing lines once, by rank 0: not by rank 1 nor by the launching command.
    assert capfd.readouterr().out.count(f"manifest: {tmp_path / 'ddp'}/run.json") == 1
    one_run, one = losses(tmp_path / "single")
    two_run, two = losses(tmp_path / "ddp")
    assert two_run["world_size"] == 2 and one_run["world_size"] == 1
    assert len(one) == len(two) == 5
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (one, two)
