"""Publishing to the Hugging Face Hub as axolotl's keys ask (hub_model_id, hub_strategy,
hub_private_repo, hub_revision, push_to_hub), from the host: the token stays in the
host's environment (HF_TOKEN), never enters a container, and is never written.

After a run completes, the adapter (or the fully fine-tuned model) goes to
hub_model_id with its tokenizer, chat template and run.json; after `merge-lora`, the
merged model goes to hub_model_id + "-merged". Each push's commit is recorded in
run.json's `pushed`."""

from __future__ import annotations

import os
from pathlib import Path

from toolkit import record as toolkit_record
from toolkit.config import Config
from toolkit.errors import UsageError
from toolkit.outputs import STATE_DIR, WRITTEN

# What a finished run's folder holds that is worth publishing: what it writes, less
# the trainer's own state, the log and the folders (checkpoints, merged, TensorBoard).
NOT_PUBLISHED = (
    "training_args.bin",
    "train.log",
    "tensorboard",
    "merged",
    "checkpoint-*",
    STATE_DIR,
)
PUBLISHED = tuple(name for name in WRITTEN if name not in NOT_PUBLISHED)


def wanted(cfg: Config) -> bool:
    """Whether the run is to be published (by this command, on the host, once the run
    or the merge it planned is done; never from where the run trains)."""
    return bool(cfg.hub_model_id) and cfg.push_to_hub is not False


def check(cfg: Config) -> None:
    """Before a run that will publish: the token is there (by name)."""
    if wanted(cfg) and not (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")):
        raise UsageError(
            f"hub_model_id: {cfg.hub_model_id!r} asks to publish the result, but HF_TOKEN is "
            "not set: export a write token of that account (it stays on this machine), or "
            "set push_to_hub: false"
        )


def push(cfg: Config, folder: Path, repo_id: str, what: str) -> dict:
    """Upload `folder` to `repo_id` (created if missing); record and return the push."""
    from huggingface_hub import HfApi

    from toolkit.host.hub import endpoint, hub_error, online

    run_json = Path(cfg.output_dir) / toolkit_record.RECORD
    run = toolkit_record.read(run_json).dump()  # refused before anything is uploaded
    api = HfApi(endpoint=endpoint())
    try:
        with online():
            api.create_repo(repo_id, private=bool(cfg.hub_private_repo), exist_ok=True)
            info = api.upload_folder(
                folder_path=str(folder),
                repo_id=repo_id,
                revision=cfg.hub_revision,
                allow_patterns=list(PUBLISHED),
                ignore_patterns=["*/*"],  # top-level files only: no checkpoints, no merged/
                commit_message=f"toolkit: {what} of {Path(cfg.output_dir).name}",
            )
    except Exception as exc:
        raise hub_error(exc, "hub_model_id", repo_id, "model", cfg.hub_revision, "push") from None
    record = {
        "what": what,
        "repo": repo_id,
        "revision": cfg.hub_revision or "main",
        "commit": info.oid,
        "url": f"{endpoint()}/{repo_id}",
    }
    toolkit_record.write(run_json, {**run, "pushed": [*(run.get("pushed") or []), record]})
    print(f"pushed: {what} to {record['url']} at {record['commit'][:12]}")
    return record


def pushed(cfg: Config, repo_id: str, what: str) -> bool:
    """Whether run.json records this push already (a rerun does not push it twice)."""
    run = toolkit_record.read_if_any(Path(cfg.output_dir) / toolkit_record.RECORD)
    return any((p.repo, p.what) == (repo_id, what) for p in (run.pushed if run else []))


def after_train(cfg: Config) -> dict | None:
    """Push the finished run, unless it was pushed: the same command on a finished run
    retries a push that failed."""
    what = "adapter" if cfg.uses_lora else "model"
    if not wanted(cfg) or pushed(cfg, str(cfg.hub_model_id), what):
        return None
    check(cfg)
    return push(cfg, Path(cfg.output_dir), str(cfg.hub_model_id), what)


def after_merge(cfg: Config) -> dict | None:
    merged = Path(cfg.output_dir) / "merged"
    repo_id = f"{cfg.hub_model_id}-merged"
    if not wanted(cfg) or not (merged / "config.json").exists():
        return None
    if pushed(cfg, repo_id, "merged model"):
        return None
    check(cfg)
    return push(cfg, merged, repo_id, "merged model")
