"""Experiment trackers as axolotl users configure them, for real: W&B in its offline
mode and MLflow against a local tracking store, both fed by a tiny training."""

from __future__ import annotations

import pytest
from helpers import read_run

from toolkit.config import load_config
from toolkit.errors import UsageError
from toolkit.trainer.sft import train

pytestmark = pytest.mark.slow

FAST = {"max_steps": 3, "logging_steps": 1, "val_set_size": 0.0, "save_steps": 3}


def test_wandb_offline_records_the_run_with_the_output(tiny_model_dir, write_config, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    loaded = load_config(
        write_config(
            {
                **FAST,
                "base_model": str(tiny_model_dir),
                "wandb_project": "qwen3-sft",
                "wandb_name": "tiny",
                "wandb_mode": "offline",
            }
        )
    )
    out = train(loaded)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), list(runs[0].iterdir())
    assert "trackers: wandb (offline)" in (out / "train.log").read_text()


def test_mlflow_logs_every_loss_to_a_local_store(tiny_model_dir, write_config, tmp_path):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    loaded = load_config(
        write_config(
            {
                **FAST,
                "base_model": str(tiny_model_dir),
                "use_mlflow": True,
                "mlflow_tracking_uri": str(store),
                "mlflow_experiment_name": "qwen3",
                "mlflow_run_name": "tiny",
            }
        )
    )
    out = train(loaded)
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("qwen3")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert losses == pytest.approx([loss for _, loss in read_run(out)["loss_history"]])


def test_wandb_without_a_key_runs_offline_unless_online_is_asked(
    tiny_model_dir, write_config, monkeypatch
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = write_config({**FAST, "base_model": str(tiny_model_dir), "wandb_project": "p"})
    out = train(load_config(config))
    assert "trackers: wandb (offline)" in (out / "train.log").read_text()
    assert list((out / "wandb").glob("offline-run-*"))
    online = load_config(config, {"wandb_mode": "online", "output_dir": f"{out}-2"})
    with pytest.raises(UsageError, match="wandb_mode: online, but WANDB_API_KEY is not set"):
        train(online)


def test_tracker_and_saving_settings_do_not_make_another_run(write_config):
    """A finished run rerun with another W&B name or save cadence is the same run."""
    from toolkit.record import config_differences

    a = load_config(write_config({"wandb_project": "p", "save_strategy": "steps"})).config
    b = load_config(
        write_config({"wandb_project": "q", "wandb_name": "n", "save_only_model": True})
    ).config
    assert config_differences(a.model_dump(mode="json"), b.model_dump(mode="json")) == []
    c = load_config(write_config({"learning_rate": 0.5})).config
    assert config_differences(a.model_dump(mode="json"), c.model_dump(mode="json")) == [
        "learning_rate (0.01 → 0.5)"
    ]
