"""What a trained run's folder allows, read from its record (run.json) and files before
anything heavy loads: merging its adapter (`check_inputs`, `already_merged`) and answering
with its model (`model_source`). The host checks these before it plans a merge or an
inference; the merge and the inference (toolkit.merge, toolkit.inference) rely on them.

Light: no torch, nothing of the host or the trainer.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from toolkit.config import LoadedConfig
from toolkit.errors import UsageError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_sha256(out: Path) -> str:
    """The adapter's fingerprint (its files' names and bytes), read as toolkit reads its
    own files in output_dir: never through a link, never blocking on a pipe (exit 2)."""
    from toolkit.outputs import open_nofollow

    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        h.update(name.encode() + b"\0")
        with os.fdopen(open_nofollow(out / name, os.O_RDONLY), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# Keys that shape a training but not what a merge of its adapter is: the run's length,
# its batches, its optimizer and schedule, its data. `train --max-steps 4` then
# `merge-lora` needs no repeated overrides; the base, the adapter's shape, the dtype, the
# template and the heads must still agree.
TRAINING_ONLY = (
    "max_steps",
    "num_epochs",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "eval_batch_size",
    "sequence_len",
    "sample_packing",
    "learning_rate",
    "lr_scheduler",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "optimizer",
    "seed",
    "datasets",
    "val_set_size",
    "early_stopping_patience",
)


def check_inputs(
    loaded: LoadedConfig,
    allow_mismatch: bool = False,
    hub_inputs: bool = False,
    notes: bool = True,
) -> dict | None:
    """Validate output_dir before loading anything heavy; return run.json, or None
    when the run was a full fine-tune and there is nothing to merge. The adapter must
    have been trained with this config (run.json says so), unless `allow_mismatch`.
    `notes`: say what differs only in how the run trained (once per command)."""
    from toolkit.record import config_differences, read_manifest

    out = Path(loaded.config.output_dir)
    run = read_manifest(out)
    if run is None:
        raise UsageError(
            f"{out / 'run.json'} not found: nothing has been trained into "
            f"output_dir {out}; run `toolkit train CONFIG` first"
        )
    recorded = run.get("config") or {}
    if hub_inputs:  # before the Hub datasets are fetched: compare them by repository
        from toolkit.pins import Pin, named_by_repo

        recorded = named_by_repo(recorded, [Pin(**p) for p in run.get("hub") or []])
    differences = config_differences(recorded, loaded.config.model_dump(mode="json"))
    how_trained = [d for d in differences if d.split(" ", 1)[0] in TRAINING_ONLY]
    if how_trained:
        if notes:
            print(
                f"note: merging the adapter in {out} as it was trained; this config differs "
                f"only in how it trains ({'; '.join(how_trained)}), not in what is merged",
                file=sys.stderr,
            )
        differences = [d for d in differences if d not in how_trained]
    if differences and not allow_mismatch:
        shown = "; ".join(differences[:6]) + (
            f" and {len(differences) - 6} more" if len(differences) > 6 else ""
        )
        raise UsageError(
            f"the run in {out} was trained with another config (differs in: "
            f"{shown}); merge with the config it was trained with, train this "
            "one first, or pass --allow-config-mismatch to merge it anyway"
        )
    if not run.get("base_model"):
        raise UsageError(
            f"{out / 'run.json'} records no base_model, which `toolkit merge-lora` needs; "
            "restore the run's own run.json, or train the run again"
        )
    if not run.get("adapter"):
        print(
            f"nothing to merge: the run in {out} is a full fine-tune, and its model in "
            "output_dir is already complete"
        )
        return None
    missing = [name for name in ADAPTER_FILES if not (out / name).exists()]
    if missing:
        raise UsageError(
            f"{out} lacks {', '.join(missing)}; training did not finish. "
            "Rerun `toolkit train CONFIG`"
        )
    return run


def already_merged(out: Path) -> bool:
    """Whether output_dir/merged holds this very adapter merged (said when it does). A
    merge.json that is a link or not a regular file is refused (exit 2) like any such
    name where toolkit writes; one that does not read as toolkit's record is no merge
    (the merge writes it anew)."""
    from toolkit.outputs import read_json

    try:
        record = read_json(out / "merged" / "merge.json")
    except (OSError, ValueError):  # missing, or damaged
        return False
    if not isinstance(record, dict):
        return False
    fingerprint = adapter_sha256(out)
    if record.get("adapter_sha256") != fingerprint:
        return False
    print(
        f"already merged: {out / 'merged'} holds this adapter ({fingerprint[:12]}); nothing to do"
    )
    return True


def model_source(loaded: LoadedConfig, use: str) -> tuple[str, Path]:
    """Which trained weights answer: ('merged', dir), ('adapter', dir) or ('full', dir)."""
    from toolkit import record

    out = Path(loaded.config.output_dir)
    merged = out / "merged"
    # Read and validated, not only found: a damaged or planted record is exit 2 here.
    if record.read_if_any(out / record.RECORD) is None:
        raise UsageError(
            f"{out / 'run.json'} not found: nothing has been trained into output_dir {out}; "
            "run `toolkit train CONFIG` first"
        )
    if use in ("auto", "merged") and (merged / "config.json").exists():
        return "merged", merged
    if use == "merged":
        raise UsageError(
            f"{merged} holds no merged model; run `toolkit merge-lora CONFIG` first, or "
            "use --model adapter"
        )
    if (out / "adapter_config.json").exists():
        return "adapter", out
    return "full", out


def is_run_folder(ref: str) -> bool:
    """Whether a command's CONFIG argument names a trained run instead of a YAML: its
    output_dir, or that folder's run.json."""
    from toolkit.record import RECORD

    path = Path(ref)
    return path.is_dir() or (path.name == RECORD and path.is_file())


def recorded_config(ref: str) -> LoadedConfig:
    """The config a run in `ref` (its output_dir or run.json) was trained with, from its
    record, for the commands that read a trained run (merge-lora OUTPUT_DIR): its Hub
    datasets named by repository again, its output_dir the folder the record is in (a
    copied run is merged where it is). A record whose config does not validate is exit 2
    naming each field."""
    from pydantic import ValidationError

    from toolkit import record
    from toolkit.config import Config
    from toolkit.config.problems import describe_all
    from toolkit.pins import Pin, named_by_repo

    run = record.read(ref)
    record.need(run, "config", command="merge-lora")
    config = dict(run.config or {})
    pins = [Pin(**pin.model_dump()) for pin in run.hub]
    datasets = config.get("datasets")
    if pins and isinstance(datasets, list) and all(isinstance(d, dict) for d in datasets):
        config = named_by_repo(config, pins)
    config["output_dir"] = str(run.path.parent)
    try:
        cfg = Config.model_validate(config)
    except ValidationError as exc:
        raise UsageError(
            f"{run.path}: the recorded config does not validate; {record.FIX}",
            [f"config.{p}" for p in describe_all([dict(e) for e in exc.errors()])],
        ) from None
    return LoadedConfig(config=cfg, path=Path(run.config_path or run.path))
