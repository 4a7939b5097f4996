"""Reward models: a sequence-classification head with one output, trained on pairs
(Bradley-Terry: the chosen reply should score above the rejected one) with TRL.

    toolkit train configs/qwen3-8b-reward-model.yaml

Read top to bottom: resolve → tokenizer and template → pairs → model with a
one-label head → TRL's RewardTrainer → save → run.json (with held-out pair
accuracy).
"""

from __future__ import annotations

import time
from pathlib import Path

from toolkit.config import LoadedConfig
from toolkit.trainer.args import common_args
from toolkit.trainer.chat import resolve_template
from toolkit.trainer.data import split_validation
from toolkit.trainer.files import make_readable
from toolkit.trainer.manifest import write_manifest
from toolkit.trainer.model import (
    load_base,
    load_tokenizer,
    lora_config,
    match_trainable_dtype,
    resolve,
)
from toolkit.trainer.progress import ProgressLog, RunLog, quiet_libraries
from toolkit.trainer.rows import read_all

HEAD = "sequence_classification"


def train(loaded: LoadedConfig) -> Path:
    import transformers
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    quiet_libraries()
    cfg = loaded.config
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "train.log")
    transformers.set_seed(cfg.seed)

    resolved = resolve(cfg)
    log(f"resolved: reward model, device={resolved.device} dtype={resolved.dtype} "
        f"lora_targets={resolved.lora_target_modules}")
    tokenizer = load_tokenizer(cfg)
    tokenizer.chat_template = resolve_template(cfg, tokenizer)

    rows = read_all(cfg)
    train_rows, val_rows = split_validation(rows, cfg.val_set_size, cfg.seed)
    log(f"data: {len(rows)} pairs, {len(train_rows)} training, {len(val_rows)} held out")

    model = load_base(cfg, resolved, HEAD, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(**common_args(cfg, resolved, len(train_rows), bool(val_rows)),
                        max_length=cfg.sequence_len,
                        center_rewards_coefficient=cfg.center_rewards_coefficient)
    progress = ProgressLog(log)
    trainer = RewardTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
        peft_config=lora_config(cfg, resolved, HEAD), callbacks=[progress])
    trainer.remove_callback(PrinterCallback)
    match_trainable_dtype(cfg, resolved, trainer.model)
    dropped = len(train_rows) - len(trainer.train_dataset)
    if dropped:
        log(f"data: the reward trainer dropped {dropped} pairs longer than "
            f"sequence_len={cfg.sequence_len}; raise sequence_len to keep them")

    started = time.monotonic()
    result = trainer.train()
    elapsed = time.monotonic() - started
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    make_readable(out)
    manifest = write_manifest(
        out, loaded, recipe="reward", head=HEAD, num_labels=1, resolved=resolved.as_dict(),
        data={"rows": len(rows), "train_rows": len(train_rows), "val_rows": len(val_rows),
              "dropped_by_trainer": dropped},
        steps=trainer.state.global_step, epochs=trainer.state.epoch,
        final_loss=progress.losses[-1][1] if progress.losses else None,
        mean_loss=result.training_loss, loss_history=progress.losses,
        metrics_history=progress.metrics, eval_history=progress.evals,
        tokens_per_second=progress.tokens_seen / elapsed if elapsed else None,
        train_seconds=elapsed)
    log(f"saved {'adapter' if cfg.uses_lora else 'model'} and tokenizer to {out}; "
        f"manifest {manifest}")
    return out
