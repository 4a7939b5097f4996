"""axolotl's settings Qwen3 users set, each in a real tiny training on CPU where it
changes what happens: the optimizer's state, the learning-rate curve, the adapter
files, the checkpoints, what is frozen, the rows kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import read_run
from safetensors.torch import load_file

from toolkit.cli import main
from toolkit.config import load_config
from toolkit.errors import RuntimeFailure
from toolkit.trainer.sft import train

pytestmark = pytest.mark.slow

BASE = {"logging_steps": 1, "val_set_size": 0.0, "warmup_steps": 0, "learning_rate": 0.01}


def run(tiny_model_dir, write_config, **changes):
    loaded = load_config(write_config({**BASE, "base_model": str(tiny_model_dir), **changes}))
    return loaded, train(loaded)


def learning_rates(out) -> list[float]:
    return [m["learning_rate"] for m in read_run(out)["metrics_history"]]


def test_optimizer_arguments_reach_the_optimizer(tiny_model_dir, write_config):
    _, out = run(
        tiny_model_dir,
        write_config,
        max_steps=2,
        save_steps=2,
        adam_beta1=0.5,
        adam_beta2=0.9,
        adam_epsilon=1e-5,
        weight_decay=0.01,
    )
    group = torch.load(out / "checkpoint-2" / "optimizer.pt")["param_groups"][0]
    assert group["betas"] == (0.5, 0.9) and group["eps"] == 1e-5


def test_cosine_min_lr_ratio_floors_the_schedule(tiny_model_dir, write_config):
    _, out = run(tiny_model_dir, write_config, max_steps=10, cosine_min_lr_ratio=0.2)
    rates = learning_rates(out)
    assert rates[0] == pytest.approx(0.01)
    assert min(rates) >= 0.002 * 0.999 and rates[-1] < 0.003


def test_cosine_constant_lr_ratio_holds_the_floor(tiny_model_dir, write_config):
    _, out = run(
        tiny_model_dir,
        write_config,
        max_steps=10,
        cosine_min_lr_ratio=0.1,
        cosine_constant_lr_ratio=0.5,
    )
    rates = learning_rates(out)
    # Cosine from 0.01 to 0.001 over the first half of the steps, then held there.
    assert rates[0] == pytest.approx(0.01)
    assert rates[5:] == pytest.approx([0.001] * 5)
    assert rates[1] > rates[2] > rates[3] > rates[4] > 0.001


def test_a_float_warmup_below_one_is_a_fraction_of_the_steps(tiny_model_dir, write_config):
    _, out = run(
        tiny_model_dir,
        write_config,
        max_steps=10,
        warmup_steps=0.3,
        lr_scheduler="constant_with_warmup",
    )
    rates = learning_rates(out)
    assert rates[0] < rates[1] < rates[2] < rates[3] == pytest.approx(0.01)


def test_dora_rslora_and_rank_patterns_shape_the_adapter(tiny_model_dir, write_config):
    _, out = run(
        tiny_model_dir,
        write_config,
        max_steps=1,
        peft_use_dora=True,
        peft_use_rslora=True,
        lora_rank_pattern={"q_proj": 4},
        lora_alpha_pattern={"q_proj": 8},
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] and config["use_rslora"]
    weights = load_file(out / "adapter_model.safetensors")
    assert any("lora_magnitude_vector" in name for name in weights)
    q = [w for name, w in weights.items() if "q_proj.lora_A" in name]
    v = [w for name, w in weights.items() if "v_proj.lora_A" in name]
    assert q[0].shape[0] == 4 and v[0].shape[0] == 8


def test_loraplus_gives_the_b_matrices_their_learning_rate(tiny_model_dir, write_config):
    _, out = run(tiny_model_dir, write_config, max_steps=2, save_steps=2, loraplus_lr_ratio=16)
    groups = torch.load(out / "checkpoint-2" / "optimizer.pt")["param_groups"]
    assert {g["initial_lr"] for g in groups if g["params"]} == {0.01, 0.16}


def test_unfrozen_parameters_train_only_what_they_name(tiny_model_dir, write_config):
    _, out = run(
        tiny_model_dir,
        write_config,
        max_steps=2,
        adapter=None,
        unfrozen_parameters=[r"layers\.0\.mlp\."],
    )
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".layers.0.mlp." in name for name in changed)


def test_neftune_changes_the_training_loss(tiny_model_dir, write_config, tmp_path):
    _, plain = run(tiny_model_dir, write_config, max_steps=3, output_dir=str(tmp_path / "a"))
    _, noisy = run(
        tiny_model_dir,
        write_config,
        max_steps=3,
        neftune_noise_alpha=50.0,
        output_dir=str(tmp_path / "b"),
    )
    assert read_run(plain)["loss_history"][0] != read_run(noisy)["loss_history"][0]


def test_save_first_step_and_save_only_model(tiny_model_dir, write_config):
    _, out = run(
        tiny_model_dir,
        write_config,
        max_steps=4,
        save_steps=4,
        save_first_step=True,
        save_only_model=True,
    )
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-4").is_dir()
    assert not (out / "checkpoint-4" / "optimizer.pt").exists()


def test_save_strategy_no_writes_no_checkpoint(tiny_model_dir, write_config):
    _, out = run(tiny_model_dir, write_config, max_steps=3, save_steps=1, save_strategy="no")
    assert not list(out.glob("checkpoint-*"))
    assert (out / "adapter_model.safetensors").exists()


def test_load_best_model_at_end_tracks_the_metric(tiny_model_dir, write_config):
    _, out = run(
        tiny_model_dir,
        write_config,
        max_steps=4,
        val_set_size=0.1,
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_metric"] == min(e["eval_loss"] for e in read_run(out)["eval_history"])
    assert state["best_model_checkpoint"].endswith(("checkpoint-2", "checkpoint-4"))


def test_eval_strategy_no_skips_evaluation(tiny_model_dir, write_config):
    _, out = run(tiny_model_dir, write_config, max_steps=2, val_set_size=0.1, eval_strategy="no")
    assert read_run(out)["eval_history"] == []


def test_loss_watchdog_stops_a_run_whose_loss_stays_high(tiny_model_dir, write_config):
    loaded = load_config(
        write_config(
            {
                **BASE,
                "base_model": str(tiny_model_dir),
                "max_steps": 10,
                "loss_watchdog_threshold": 0.01,
                "loss_watchdog_patience": 2,
            }
        )
    )
    with pytest.raises(RuntimeFailure, match="above loss_watchdog_threshold 0.01 for 2 logged"):
        train(loaded)
    assert not (Path(loaded.config.output_dir) / "run.json").exists()


def test_rows_are_deduplicated_and_short_ones_dropped(tiny_model_dir, write_config, tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i % 5}"},
                {"role": "assistant", "content": f"answer number {i % 5}"},
            ]
        }
        for i in range(20)
    ]
    rows.append(
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    )
    data = tmp_path / "dups.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_config(
        write_config(
            {
                **BASE,
                "base_model": str(tiny_model_dir),
                "max_steps": 1,
                "dataset_exact_deduplication": True,
                "min_sample_len": 25,
            }
        )
    )
    loaded = load_config(loaded.path, {"datasets.0.path": str(data)})
    data_report = read_run(train(loaded))["data"]
    assert data_report["dropped_duplicates"] == 15
    assert data_report["dropped_too_short"] == 1
    assert data_report["kept"] == 5


def test_rope_scaling_is_saved_with_a_full_fine_tune(tiny_model_dir, write_config):
    _, out = run(
        tiny_model_dir,
        write_config,
        max_steps=1,
        adapter=None,
        rope_scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 64},
    )
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn"
    assert config["rope_parameters"]["factor"] == 2.0


def test_an_example_with_axolotls_deepspeed_file_name_validates(write_config, capsys):
    path = write_config(
        {
            "deepspeed": "deepspeed_configs/zero1.json",
            "auto_resume_from_checkpoints": False,
            "dataset_num_proc": 2,
        }
    )
    loaded = load_config(path)
    assert loaded.config.deepspeed == "zero1"
    assert loaded.config.resume_from_checkpoint is False
    assert loaded.config.dataset_processes == 2
    assert main(["validate", str(path)]) == 0
    assert (
        "axolotl's bundled file, not a file here; read as toolkit's bundled zero1"
        in capsys.readouterr().err
    )


def test_adamw_torch_8bit_trains(tiny_model_dir, write_config):
    _, out = run(tiny_model_dir, write_config, max_steps=2, optimizer="adamw_torch_8bit")
    assert read_run(out)["steps"] == 2
