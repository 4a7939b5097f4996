"""The training arguments every recipe shares, from the config and the resolve step."""

from __future__ import annotations

import math
from typing import Any

from toolkit.config import Config
from toolkit.trainer.model import Resolved
from toolkit.trainer.optimize import compile_args, deepspeed_args, fsdp_args


def common_args(cfg: Config, resolved: Resolved, n_rows: int, has_eval: bool) -> dict:
    """TrainingArguments keywords every recipe shares (TRL's configs extend them)."""
    steps_per_epoch = max(1, math.ceil(n_rows / cfg.micro_batch_size / cfg.accumulation_steps))
    save: dict[str, Any]
    evaluation: dict[str, Any]
    if cfg.save_steps:
        save = {"save_strategy": "steps", "save_steps": cfg.save_steps}
    elif cfg.saves_per_epoch:
        save = {
            "save_strategy": "steps",
            "save_steps": max(1, steps_per_epoch // cfg.saves_per_epoch),
        }
    else:
        save = {"save_strategy": "epoch"}
    if not has_eval:
        evaluation = {"eval_strategy": "no"}
    elif cfg.eval_steps or cfg.evals_per_epoch:
        evaluation = {
            "eval_strategy": "steps",
            "eval_steps": cfg.eval_steps or max(1, steps_per_epoch // (cfg.evals_per_epoch or 1)),
        }
    else:
        evaluation = {"eval_strategy": "epoch"}
    if cfg.early_stopping_patience and has_eval:
        # transformers' early stopping keeps the best checkpoint, so saving follows evaluation.
        save = {
            "save_strategy": evaluation["eval_strategy"],
            "save_steps": evaluation.get("eval_steps"),
            "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss",
            "greater_is_better": False,
        }
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else (cfg.warmup_ratio or 0)
    return dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.accumulation_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        optim=cfg.optimizer,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=warmup,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=resolved.bf16,
        fp16=resolved.fp16,
        tf32=resolved.tf32 or None,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs=cfg.gradient_checkpointing_kwargs,
        logging_steps=cfg.logging_steps,
        # Log a NaN or infinite loss as it is (transformers would hide it behind the mean
        # of the finite ones), so the run stops on it (progress.Divergence).
        logging_nan_inf_filter=False,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=resolved.device == "cpu",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=resolved.device == "cuda",
        **save,
        **evaluation,
        **compile_args(cfg, resolved.optimizations),
        **fsdp_args(cfg, resolved.optimizations),
        **deepspeed_args(cfg, resolved.optimizations),
    )
