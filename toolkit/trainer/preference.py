"""Preference training through TRL: DPO, IPO, ORPO, SimPO and KTO.

    toolkit train configs/qwen3-dpo-lora.yaml

Read top to bottom: resolve → tokenizer and template → rows → model → the
method's TRL trainer → train → save → run.json. With LoRA the reference model is
the base with the adapter disabled (TRL's behaviour when given a peft_config), so
no second copy of the model is held in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.config import Config, LoadedConfig
from toolkit.errors import UsageError
from toolkit.trainer.args import common_args
from toolkit.trainer.model import (
    finish_model,
    load_base,
    lora_config,
)
from toolkit.trainer.rows import tokenizer_and_rows
from toolkit.trainer.schedule import customized
from toolkit.trainer.steps import start_run, train_and_save

# Defaults where axolotl's configs usually leave them out (TRL's own defaults).
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "orpo": 0.1, "simpo": 2.0, "kto": 0.1}


def train(loaded: LoadedConfig) -> Path:
    from datasets import Dataset

    cfg = loaded.config
    log, progress, resolved = start_run(cfg)

    tokenizer, rows, train_rows, val_rows = tokenizer_and_rows(cfg, log, "rows")

    model = load_base(cfg, resolved)
    trainer_cls, args = method(cfg, common_args(cfg, resolved, len(train_rows), bool(val_rows)))
    trainer = customized(trainer_cls, cfg)(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
        peft_config=lora_config(cfg, resolved),
        callbacks=[progress],
    )
    finish_model(cfg, resolved, trainer.model)
    dropped = len(train_rows) - len(trainer.train_dataset)
    if dropped:
        log(
            f"data: the {cfg.rl} trainer dropped {dropped} rows whose prompt alone fills "
            f"sequence_len={cfg.sequence_len}; raise sequence_len to keep them"
        )

    return train_and_save(
        trainer,
        tokenizer,
        loaded,
        progress,
        "preference",
        method=cfg.rl,
        beta=beta_of(cfg),
        resolved=resolved.as_dict(),
        data={
            "rows": len(rows),
            "train_rows": len(train_rows),
            "val_rows": len(val_rows),
            "dropped_by_trainer": dropped,
        },
    )


def beta_of(cfg: Config) -> float:
    if cfg.rl == "orpo" and cfg.orpo_alpha is not None:
        return cfg.orpo_alpha
    return cfg.rl_beta if cfg.rl_beta is not None else DEFAULT_BETA[cfg.rl or "dpo"]


def method(cfg: Config, common: dict[str, Any]) -> tuple[Any, Any]:
    """The TRL trainer class and its config for `cfg.rl`."""
    seq: dict[str, Any] = {"max_length": cfg.sequence_len}
    if cfg.rl in ("dpo", "ipo"):
        from trl import DPOConfig, DPOTrainer

        loss = ["ipo"] if cfg.rl == "ipo" else (cfg.dpo_loss_type or ["sigmoid"])
        _refuse_prompt_len(cfg, DPOConfig)
        return DPOTrainer, DPOConfig(**common, **seq, beta=beta_of(cfg), loss_type=loss)
    if cfg.rl == "kto":
        from trl import KTOConfig, KTOTrainer

        _refuse_prompt_len(cfg, KTOConfig)
        return KTOTrainer, KTOConfig(
            **common,
            **seq,
            beta=beta_of(cfg),
            desirable_weight=cfg.kto_desirable_weight,
            undesirable_weight=cfg.kto_undesirable_weight,
        )
    # ORPO and CPO batch prompt/chosen/rejected ids under their own names, which
    # transformers cannot count tokens in; tokens/s is not reported for them.
    common = {**common, "include_num_input_tokens_seen": "no"}
    extra = {"max_completion_length": cfg.max_completion_length}
    if cfg.max_prompt_len:
        extra["max_prompt_length"] = cfg.max_prompt_len
    if cfg.rl == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig(
            **common, **seq, **_known(ORPOConfig, extra), beta=beta_of(cfg)
        )
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    # SimPO is CPO's simpo loss; cpo_alpha 0 (the default here) is pure SimPO.
    return CPOTrainer, CPOConfig(
        **common,
        **seq,
        **_known(CPOConfig, extra),
        loss_type="simpo",
        beta=beta_of(cfg),
        simpo_gamma=cfg.simpo_gamma,
        cpo_alpha=cfg.cpo_alpha,
    )


def _known(config_cls, extra: dict) -> dict:
    import dataclasses

    names = {f.name for f in dataclasses.fields(config_cls)}
    return {k: v for k, v in extra.items() if k in names and v is not None}


def _refuse_prompt_len(cfg: Config, config_cls) -> None:
    import dataclasses

    if cfg.max_prompt_len and "max_prompt_length" not in {
        f.name for f in dataclasses.fields(config_cls)
    }:
        raise UsageError(
            f"max_prompt_len: TRL's {str(cfg.rl).upper()} trainer has no prompt "
            f"limit; sequences are cut at sequence_len={cfg.sequence_len}. Remove "
            "max_prompt_len (or lower sequence_len)"
        )
