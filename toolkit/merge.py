"""Merge a trained LoRA adapter into its full-precision base.

    toolkit merge-lora configs/tiny-cpu-demo.yaml

Reads `output_dir/run.json` (what training recorded), merges on CPU into
`output_dir/merged` with the trained tokenizer, and writes atomically: into a
temporary folder beside it, then a rename. It is idempotent: `merged/merge.json`
records the adapter's hash, and a second call with the same adapter returns at
once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from toolkit.config import LoadedConfig
from toolkit.errors import UsageError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TMP_PREFIX = ".merged.tmp-"  # a merge's folder until it is complete
OLD_PREFIX = ".merged.old-"  # the merged folder being replaced
LEFTOVERS = (TMP_PREFIX, OLD_PREFIX)


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
    loaded: LoadedConfig, allow_mismatch: bool = False, hub_inputs: bool = False
) -> dict | None:
    """Validate output_dir before loading anything heavy; return run.json, or None
    when the run was a full fine-tune and there is nothing to merge. The adapter must
    have been trained with this config (run.json says so), unless `allow_mismatch`."""
    from toolkit.outputs import config_differences, read_manifest

    out = Path(loaded.config.output_dir)
    run = read_manifest(out)
    if run is None:
        raise UsageError(
            f"{out / 'run.json'} not found: nothing has been trained into "
            f"output_dir {out}; run `toolkit train CONFIG` first"
        )
    recorded = run.get("config") or {}
    if hub_inputs:  # before the Hub datasets are fetched: compare them by repository
        from toolkit.hub import Pin, named_by_repo

        recorded = named_by_repo(recorded, [Pin(**p) for p in run.get("hub") or []])
    differences = config_differences(recorded, loaded.config.model_dump(mode="json"))
    how_trained = [d for d in differences if d.split(" ", 1)[0] in TRAINING_ONLY]
    if how_trained:
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


def merge_lora(loaded: LoadedConfig, allow_mismatch: bool = False) -> Path:
    """Merge and return the merged folder (or return it untouched if already merged).
    Holds output_dir's lock (or runs under the command that holds it); a link where the
    merge writes is refused (exit 2)."""
    from toolkit import outputs

    out = Path(loaded.config.output_dir)
    run = check_inputs(loaded, allow_mismatch)
    if run is None:
        return out
    lock = outputs.ensure_held(out, "merge-lora")
    try:
        remove_leftovers(out)
        if already_merged(out):
            return out / "merged"
        return _merge(loaded, out, run)
    finally:
        if lock:
            lock.release()


def remove_leftovers(out: Path) -> None:
    """Remove what a merge that was killed left in output_dir: its temporary folder, or
    the merged folder it was replacing. Only folders by toolkit's own names, never a
    link (nor what one points to); the caller holds the lock, so no merge is running."""
    for entry in os.scandir(out):
        if entry.name.startswith(LEFTOVERS) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def _merge(loaded: LoadedConfig, out: Path, run: dict) -> Path:
    merged = out / "merged"
    fingerprint = adapter_sha256(out)

    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoTokenizer

    from toolkit.trainer import quiet_libraries
    from toolkit.trainer.files import make_readable, write_json_atomic

    quiet_libraries()

    from toolkit.trainer.model import HEADS

    base_ref = run["base_model"]
    head = run.get("head", "causal_lm")
    extra = {"num_labels": run["num_labels"]} if run.get("num_labels") else {}
    # The base in its stored precision, never quantized: a QLoRA adapter merges into
    # the full-precision weights, not into the 4-bit ones it trained against. A
    # classification head comes from the adapter folder (trained in full beside it).
    auto = getattr(transformers, HEADS[head][0])
    from toolkit.hub import model_kwargs, read_pins

    pinned = model_kwargs(loaded.config, base_ref, read_pins(out))
    base = auto.from_pretrained(base_ref, dtype="auto", device_map={"": "cpu"}, **pinned, **extra)
    model = PeftModel.from_pretrained(base, str(out), torch_device="cpu")
    model = model.merge_and_unload(progressbar=sys.stderr.isatty())
    tokenizer = AutoTokenizer.from_pretrained(str(out))

    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
    try:
        with torch.no_grad():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(
            tmp / "merge.json",
            {
                "adapter_sha256": fingerprint,
                "base_model": base_ref,
                "head": head,
                "dtype": str(model.dtype).removeprefix("torch."),
            },
        )
        make_readable(tmp)
        _replace_dir(tmp, merged)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"merged {out} into {merged}")
    return merged


def _replace_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`; an old `target` is moved aside first and then removed."""
    if target.exists():
        old = target.with_name(f"{OLD_PREFIX}{os.getpid()}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, target)
