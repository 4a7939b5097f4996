"""Merge a trained LoRA adapter into its full-precision base.

    toolkit merge-lora configs/tiny-cpu-demo.yaml

Reads `output_dir/run.json` (what training recorded), merges on CPU into
`output_dir/merged` with the trained tokenizer, and writes atomically: into a
temporary folder beside it, then a rename. It is idempotent: `merged/merge.json`
records the adapter's hash, and a second call with the same adapter returns at
once.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from toolkit.config import LoadedConfig
from toolkit.runs import adapter_sha256, already_merged, check_inputs

TMP_PREFIX = ".merged.tmp-"  # a merge's folder until it is complete
OLD_PREFIX = ".merged.old-"  # the merged folder being replaced
LEFTOVERS = (TMP_PREFIX, OLD_PREFIX)


def merge_lora(
    loaded: LoadedConfig, allow_mismatch: bool = False, lock_token: str | None = None
) -> Path:
    """Merge and return the merged folder (or return it untouched if already merged).
    Holds output_dir's lock (or runs under the command that holds it); a link where the
    merge writes is refused (exit 2). `lock_token`: the lock the planning command holds."""
    from toolkit import outputs

    out = Path(loaded.config.output_dir)
    run = check_inputs(loaded, allow_mismatch, notes=lock_token is None)
    if run is None:
        return out
    lock = outputs.ensure_held(out, "merge-lora", lock_token)
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

    from toolkit.safe_io import write_json_atomic
    from toolkit.trainer.files import make_readable
    from toolkit.trainer.quiet import quiet_libraries

    quiet_libraries()

    from toolkit.trainer.model import HEADS

    base_ref = run["base_model"]
    head = run.get("head", "causal_lm")
    extra = {"num_labels": run["num_labels"]} if run.get("num_labels") else {}
    # The base in its stored precision, never quantized: a QLoRA adapter merges into
    # the full-precision weights, not into the 4-bit ones it trained against. A
    # classification head comes from the adapter folder (trained in full beside it).
    auto = getattr(transformers, HEADS[head][0])
    from toolkit.pins import model_kwargs

    pins = {p.key: p for p in loaded.hub}
    pinned = model_kwargs(loaded.config.revision_of_model, base_ref, pins)
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
