"""Experiment trackers as axolotl users configure them: use_wandb / wandb_*, use_mlflow
/ mlflow_*, use_tensorboard, or transformers' report_to. W&B and MLflow are
transformers' own integrations; the config's settings reach them as the environment
variables they read. TensorBoard is toolkit's own writer (output_dir/tensorboard, the
same scalars as train.log: loss, learning rate, throughput), always on where
tensorboardX is installed; use_tensorboard makes its absence an error.
Credentials (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, …) are never in the config: they
come from the environment by name, and a run takes only those `credentials` names (a
container gets them on its stdin, toolkit.engine). The trackers' packages are in the
image, not in the light host install."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

from toolkit.config import Config
from toolkit.errors import UsageError

PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboardX"}
# What each client reads to sign in to its server (W&B: wandb's environment variables;
# MLflow: its REST client's token or basic auth). Nothing else a run may need is a
# credential of the trainer's: object stores and the Hub are reached from the host.
WANDB_CREDENTIALS = ("WANDB_API_KEY",)
MLFLOW_CREDENTIALS = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
REMOTE_MLFLOW = ("http://", "https://", "databricks")


def reporting(cfg: Config) -> list[str]:
    """The transformers integrations this run reports to (wandb, mlflow), sorted."""
    wanted = set(cfg.report_to or []) - {"tensorboard"}
    if cfg.use_wandb or (cfg.use_wandb is None and cfg.wandb_project):
        wanted.add("wandb")
    if cfg.use_mlflow or (cfg.use_mlflow is None and cfg.mlflow_experiment_name):
        wanted.add("mlflow")
    if cfg.wandb_mode == "disabled":
        wanted.discard("wandb")
    return sorted(wanted)


def wants_tensorboard(cfg: Config) -> bool:
    return cfg.use_tensorboard or "tensorboard" in (cfg.report_to or [])


def mlflow_uri(cfg: Config) -> str | None:
    """The MLflow tracking URI; a plain path is a local file store. Unset here and in
    the environment, the run's own store, output_dir/mlruns: MLflow's default is a
    database in the working folder, outside what the run plans to write."""
    uri = cfg.mlflow_tracking_uri
    if not uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        uri = str(Path(cfg.output_dir).expanduser() / "mlruns")
    # "databricks" (and "databricks-uc") name a server, not a folder.
    if uri and "://" not in uri and not uri.startswith(("file:", "databricks")):
        return Path(uri).expanduser().absolute().as_uri()
    return uri


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


def wandb_mode(cfg: Config, environ: Mapping[str, str] | None = None) -> str:
    """W&B's mode: the config's, else the environment's; unset and without
    WANDB_API_KEY, offline (the run is kept in output_dir/wandb to sync later), so an
    axolotl config that names a wandb_project trains where no key is set."""
    environ = os.environ if environ is None else environ
    mode = cfg.wandb_mode or environ.get("WANDB_MODE")
    if mode:
        return mode
    return "online" if environ.get("WANDB_API_KEY") else "offline"


def credentials(cfg: Config, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials a training of `cfg` needs where it trains, by name (pure over
    `environ`, which only decides an unset W&B mode): WANDB_API_KEY for an online W&B
    run, MLflow's token or user and password for a remote MLflow server, nothing else.
    Whether each is set is the caller's question; values are never read here."""
    targets = reporting(cfg)
    names: list[str] = []
    if "wandb" in targets and wandb_mode(cfg, environ) == "online":
        names += WANDB_CREDENTIALS
    if "mlflow" in targets and (mlflow_uri(cfg) or "").startswith(REMOTE_MLFLOW):
        names += MLFLOW_CREDENTIALS
    return tuple(names)


def needs_network(cfg: Config) -> bool:
    """Whether a tracker talks to a server (an online W&B run, a remote MLflow)."""
    targets = reporting(cfg)
    online_wandb = "wandb" in targets and wandb_mode(cfg) == "online"
    uri = mlflow_uri(cfg) or ""
    remote_mlflow = "mlflow" in targets and uri.startswith(REMOTE_MLFLOW)
    return online_wandb or remote_mlflow


def local_store(cfg: Config) -> Path | None:
    """A local MLflow store (file: URI) the run writes to, for the container to mount."""
    uri = mlflow_uri(cfg) if "mlflow" in reporting(cfg) else None
    if uri and uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    return None


def _flag(value: str | bool | None) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
