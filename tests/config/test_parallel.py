"""N-D parallelism sizes: the arithmetic against the launch (exit 2 naming the sizes,
before anything is written), axolotl's older name, and what a CPU launch runs instead."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers import read_run

from toolkit.cli import main
from toolkit.config.parallel import Layout, decision, layout
from toolkit.errors import ConfigError


def sizes(**given):
    keys = ("dp_replicate_size", "dp_shard_size", "tensor_parallel_size", "context_parallel_size")
    return SimpleNamespace(
        **{k: given.get(k) for k in keys}, fsdp_version=given.get("fsdp_version")
    )


@pytest.mark.parametrize(
    "given, world, expected",
    [
        ({}, 4, Layout(dp_replicate=4)),
        ({"dp_replicate_size": 8}, 8, Layout(dp_replicate=8)),
        # An unset dp_shard_size takes what is left.
        ({"tensor_parallel_size": 2, "fsdp_version": 2}, 8, Layout(dp_shard=4, tp=2)),
        (
            {
                "dp_replicate_size": 2,
                "dp_shard_size": 2,
                "context_parallel_size": 2,
                "fsdp_version": 2,
            },
            8,
            Layout(2, 2, 1, 2),
        ),
        ({"tensor_parallel_size": 4}, 4, Layout(tp=4)),
    ],
)
def test_layouts_that_fit_the_launch(given, world, expected):
    assert layout(sizes(**given), world) == expected


@pytest.mark.parametrize(
    "given, world, words",
    [
        (
            {"tensor_parallel_size": 4, "dp_shard_size": 2, "fsdp_version": 2},
            4,
            "dp_shard_size 2 × tensor_parallel_size 4 = 8 processes, but this launch has 4",
        ),
        (
            {"tensor_parallel_size": 3},
            4,
            "tensor_parallel_size 3 = 3 processes, but this launch has 4",
        ),
        (
            {"dp_shard_size": 2},
            2,
            "dp_shard_size 2: sharding runs through FSDP2; add fsdp_version: 2",
        ),
        (
            {"dp_replicate_size": 2, "dp_shard_size": 1, "tensor_parallel_size": 2},
            4,
            "set dp_shard_size > 1 too",
        ),
    ],
)
def test_layouts_that_do_not_fit_are_named(given, world, words):
    with pytest.raises(ConfigError) as caught:
        layout(sizes(**given), world)
    assert any(words in line for line in caught.value.problems), caught.value.problems


def test_the_decision_on_cpus_and_gpus():
    assert decision(Layout(dp_replicate=2), cuda=False) == "on (DDP, 2 processes)"
    off = decision(Layout(tp=2), cuda=False)
    assert off.startswith("off: tensor_parallel_size 2 needs GPUs") and "runs DDP" in off
    assert decision(Layout(dp_shard=2, tp=2), cuda=True).startswith(
        "on (dp_shard_size 2 × tensor_parallel_size 2"
    )


def test_the_cli_refuses_sizes_the_launch_cannot_hold(
    tiny_model_dir, write_config, tmp_path, capsys
):
    config = write_config(
        {
            "base_model": str(tiny_model_dir),
            "tensor_parallel_size": 4,
            "output_dir": str(tmp_path / "out"),
        }
    )
    assert main(["train", str(config), "--runtime", "local", "--nproc-per-node", "2"]) == 2
    err = capsys.readouterr().err
    assert "tensor_parallel_size 4 = 4 processes, but --nproc-per-node 2 × --nnodes 1 has 2" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_axolotls_older_name_is_read_as_context_parallel_size(tiny_model_dir, write_config):
    from toolkit.config import load_config

    loaded = load_config(
        write_config({"base_model": str(tiny_model_dir), "sequence_parallel_degree": 2})
    )
    assert loaded.config.context_parallel_size == 2


@pytest.mark.slow
def test_a_cpu_launch_with_tensor_parallelism_runs_ddp_and_says_so(
    tiny_model_dir, write_config, tmp_path
):
    config = write_config(
        {
            "base_model": str(tiny_model_dir),
            "max_steps": 2,
            "save_steps": 2,
            "val_set_size": 0.0,
            "tensor_parallel_size": 2,
            "dp_shard_size": 1,
        }
    )
    argv = ["train", str(config), "--runtime", "local", "--nproc-per-node", "2"]
    assert main([*argv, "--master-port", "29541"]) == 0
    run = read_run(tmp_path / "out")
    assert run["world_size"] == 2
    assert run["resolved"]["optimizations"]["parallelism"].startswith(
        "off: tensor_parallel_size 2 needs GPUs"
    )
