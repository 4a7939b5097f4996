"""Reward models: a sequence-classification head with one output, trained on pairs
(Bradley-Terry: the chosen reply should score above the rejected one) with TRL.

    toolkit train configs/qwen3-8b-reward-model.yaml

Read top to bottom: resolve → tokenizer and template → pairs → model with a
one-label head → TRL's RewardTrainer → save → run.json (with held-out pair
accuracy).
"""

from __future__ import annotations

from pathlib import Path

from toolkit.config import LoadedConfig
from toolkit.trainer.args import common_args
from toolkit.trainer.model import (
    finish_model,
    load_base,
    lora_config,
)
from toolkit.trainer.rows import tokenizer_and_rows
from toolkit.trainer.schedule import customized
from toolkit.trainer.steps import start_run, train_and_save

HEAD = "sequence_classification"


def train(loaded: LoadedConfig) -> Path:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    cfg = loaded.config
    log, progress, resolved = start_run(cfg)

    tokenizer, rows, train_rows, val_rows = tokenizer_and_rows(cfg, log, "pairs")

    model = load_base(cfg, resolved, HEAD, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        **common_args(cfg, resolved, len(train_rows), bool(val_rows)),
        max_length=cfg.sequence_len,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
    )
    trainer = customized(RewardTrainer, cfg)(
        model=model,
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(val_rows) if val_rows else None,
        peft_config=lora_config(cfg, resolved, HEAD),
        callbacks=[progress],
    )
    finish_model(cfg, resolved, trainer.model)
    dropped = len(train_rows) - len(trainer.train_dataset)
    if dropped:
        log(
            f"data: the reward trainer dropped {dropped} pairs longer than "
            f"sequence_len={cfg.sequence_len}; raise sequence_len to keep them"
        )

    return train_and_save(
        trainer,
        tokenizer,
        loaded,
        progress,
        "reward",
        head=HEAD,
        num_labels=1,
        resolved=resolved.as_dict(),
        data={
            "rows": len(rows),
            "train_rows": len(train_rows),
            "val_rows": len(val_rows),
            "dropped_by_trainer": dropped,
        },
    )
