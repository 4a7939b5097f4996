"""The training arguments every recipe shares, from the config and the resolve step."""

from __future__ import annotations

import math
from typing import Any

from toolkit.config import Config
from toolkit.trainer.model import Resolved
from toolkit.trainer.optimize import compile_args, deepspeed_args, fsdp_args, parallelism_args


def common_args(cfg: Config, resolved: Resolved, n_rows: int, has_eval: bool) -> dict:
    """TrainingArguments keywords every recipe shares (TRL's configs extend them)."""
    steps_per_epoch = max(1, math.ceil(n_rows / cfg.micro_batch_size / cfg.accumulation_steps))
    evaluation = evaluation_args(cfg, steps_per_epoch, has_eval)
    save = save_args(cfg, steps_per_epoch, evaluation, has_eval)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else (cfg.warmup_ratio or 0)
    if isinstance(warmup, float) and warmup.is_integer() and warmup >= 1:
        warmup = int(warmup)
    return dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.accumulation_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        optim=cfg.optimizer,
        **optimizer_args(cfg),
        **scheduler_args(cfg),
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
        save_only_model=cfg.save_only_model,
        neftune_noise_alpha=cfg.neftune_noise_alpha,
        ddp_timeout=cfg.ddp_timeout,
        ddp_find_unused_parameters=cfg.ddp_find_unused_parameters,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=resolved.device == "cpu",
        **tracker_args(cfg),
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=resolved.device == "cuda",
        **save,
        **evaluation,
        **compile_args(cfg, resolved.optimizations),
        **fsdp_args(cfg, resolved.optimizations),
        **parallelism_args(cfg, resolved.optimizations),
        **deepspeed_args(cfg, resolved.optimizations),
    )


def evaluation_args(cfg: Config, steps_per_epoch: int, has_eval: bool) -> dict[str, Any]:
    """When to evaluate: eval_strategy, else every eval_steps, evals_per_epoch times an
    epoch, or once an epoch; never without held-out rows."""
    if not has_eval or cfg.eval_strategy == "no":
        return {"eval_strategy": "no"}
    every = cfg.eval_steps or (
        max(1, steps_per_epoch // cfg.evals_per_epoch) if cfg.evals_per_epoch else None
    )
    strategy = cfg.eval_strategy or ("steps" if every else "epoch")
    if strategy == "steps":
        return {"eval_strategy": "steps", "eval_steps": every or steps_per_epoch}
    return {"eval_strategy": strategy}


def save_args(
    cfg: Config, steps_per_epoch: int, evaluation: dict[str, Any], has_eval: bool
) -> dict[str, Any]:
    """When to checkpoint (save_strategy, save_steps, saves_per_epoch, else once an
    epoch) and which checkpoint is best. Early stopping keeps the best checkpoint, so
    its saving follows evaluation, as transformers requires."""
    best = {
        "metric_for_best_model": cfg.metric_for_best_model or "eval_loss",
        "greater_is_better": cfg.greater_is_better,
    }
    if cfg.early_stopping_patience and has_eval:
        return {
            "save_strategy": evaluation["eval_strategy"],
            "save_steps": evaluation.get("eval_steps"),
            "load_best_model_at_end": True,
            **best,
        }
    every = cfg.save_steps or (
        max(1, steps_per_epoch // cfg.saves_per_epoch) if cfg.saves_per_epoch else None
    )
    strategy = cfg.save_strategy or ("steps" if every else "epoch")
    save: dict[str, Any] = {"save_strategy": strategy}
    if strategy == "steps":
        save["save_steps"] = every or steps_per_epoch
    if cfg.load_best_model_at_end and has_eval:
        save.update(load_best_model_at_end=True, **best)
    elif cfg.metric_for_best_model or strategy == "best":
        save.update(best)
    return save


def optimizer_args(cfg: Config) -> dict:
    """adam_beta1/2, adam_epsilon and optim_args, where set (else transformers' defaults)."""
    out: dict[str, Any] = {
        k: getattr(cfg, k)
        for k in ("adam_beta1", "adam_beta2", "adam_epsilon")
        if getattr(cfg, k) is not None
    }
    if isinstance(cfg.optim_args, dict):
        out["optim_args"] = ",".join(f"{k}={v}" for k, v in cfg.optim_args.items())
    elif cfg.optim_args:
        out["optim_args"] = cfg.optim_args
    return out


def scheduler_args(cfg: Config) -> dict:
    """The scheduler: cosine_min_lr_ratio turns cosine into transformers'
    cosine_with_min_lr; cosine_constant_lr_ratio is toolkit's schedule (steps.py)."""
    kwargs = dict(cfg.lr_scheduler_kwargs or {})
    kind = cfg.lr_scheduler
    if cfg.cosine_min_lr_ratio is not None and kind in ("cosine", "cosine_with_min_lr"):
        kind = "cosine_with_min_lr"
        kwargs.setdefault("min_lr_rate", cfg.cosine_min_lr_ratio)
    out: dict[str, Any] = {"lr_scheduler_type": kind}
    if kwargs:
        out["lr_scheduler_kwargs"] = kwargs
    return out


def tracker_args(cfg: Config) -> dict:
    """report_to and run_name for the trackers the config turns on (their settings
    travel as environment variables: trackers.environment)."""
    from toolkit.trainer.trackers import reporting

    targets = reporting(cfg)
    out: dict[str, Any] = {"report_to": targets or "none"}
    name = cfg.wandb_name or cfg.mlflow_run_name
    if name:
        out["run_name"] = name
    return out
