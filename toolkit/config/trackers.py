"""What a config's experiment trackers need from where the run happens, decided from
the config alone (and, for an unset W&B mode, the environment): which integrations it
reports to, the credentials it needs by name, whether it needs the network, a local
MLflow store it writes. The host plans mounts, network and credentials from these
(toolkit.plan); the trainer starts the trackers (toolkit.trainer.trackers)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from toolkit.config.schema import Config

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
