"""Experiment trackers as axolotl users configure them: use_wandb / wandb_*, use_mlflow
/ mlflow_*, use_tensorboard, or transformers' report_to. W&B and MLflow are
transformers' own integrations; the config's settings reach them as the environment
variables they read. TensorBoard is toolkit's own writer (output_dir/tensorboard, the
same scalars as train.log: loss, learning rate, throughput), always on where
tensorboardX is installed; use_tensorboard makes its absence an error.
Credentials (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, …) are never in the config: they
come from the environment by name, and a run takes only those `credentials` names (a
container gets them on its stdin, toolkit.containers.engine). The trackers' packages are in the
image, not in the light host install."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from toolkit.config import Config
from toolkit.config.trackers import (
    mlflow_uri,
    reporting,
    wandb_mode,
    wants_tensorboard,
)
from toolkit.errors import UsageError

PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboardX"}


def environment(cfg: Config) -> dict[str, str]:
    """The environment variables transformers' integrations read for this config."""
    targets = reporting(cfg)
    env: dict[str, str] = {}
    if "wandb" in targets:
        for key, value in (
            ("WANDB_PROJECT", cfg.wandb_project),
            ("WANDB_ENTITY", cfg.wandb_entity),
            ("WANDB_NAME", cfg.wandb_name),
            ("WANDB_RUN_ID", cfg.wandb_run_id),
            ("WANDB_MODE", wandb_mode(cfg)),
            ("WANDB_WATCH", _flag(cfg.wandb_watch)),
            ("WANDB_LOG_MODEL", _flag(cfg.wandb_log_model)),
        ):
            if value is not None:
                env[key] = str(value)
        # W&B's files (and an offline run, to sync later) live with the run's outputs.
        env["WANDB_DIR"] = str(Path(cfg.output_dir).expanduser().absolute())
        if cfg.wandb_run_id:
            env["WANDB_RESUME"] = "allow"
    if "mlflow" in targets:
        uri = mlflow_uri(cfg)
        if uri:
            env["MLFLOW_TRACKING_URI"] = uri
        if uri and uri.startswith("file:"):
            # The user named a folder: MLflow 3 keeps its file store only when asked.
            env["MLFLOW_ALLOW_FILE_STORE"] = "true"
        if cfg.mlflow_experiment_name:
            env["MLFLOW_EXPERIMENT_NAME"] = cfg.mlflow_experiment_name
        if cfg.mlflow_run_name:
            env["MLFLOW_RUN_NAME"] = cfg.mlflow_run_name
        env["HF_MLFLOW_LOG_ARTIFACTS"] = "1" if cfg.hf_mlflow_log_artifacts else "0"
    return env


def start(cfg: Config) -> list[str]:
    """Check the trackers' packages are here and set their environment; return them."""
    targets = reporting(cfg)
    wanted = [*targets, *(["tensorboard"] if wants_tensorboard(cfg) else [])]
    missing = [t for t in wanted if importlib.util.find_spec(PACKAGES[t]) is None]
    if missing:
        raise UsageError(
            f"{', '.join(missing)}: the tracker's package is not installed where training "
            "runs; use the toolkit image (it has them) or pip install "
            + " ".join(PACKAGES[t] for t in missing)
        )
    if "wandb" in targets and wandb_mode(cfg) == "online" and not os.environ.get("WANDB_API_KEY"):
        raise UsageError(
            "wandb_mode: online, but WANDB_API_KEY is not set: export it, or set "
            "wandb_mode: offline (sync later with `wandb sync OUTPUT_DIR/wandb`)"
        )
    os.environ.update(environment(cfg))
    return targets


def finish(cfg: Config) -> None:
    """Close this run's W&B and MLflow runs (transformers leaves them open), so what
    they hold is flushed and a later run in the same process starts its own."""
    targets = reporting(cfg)
    if "wandb" in targets:
        import wandb

        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()  # its settings (the run folder) are read again by the next run
    if "mlflow" in targets:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run()


def _flag(value: str | bool | None) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
