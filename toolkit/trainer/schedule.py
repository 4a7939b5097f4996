"""What transformers' Trainer has no argument for, added to a recipe's trainer class:
LoRA+ (faster-learning B matrices, peft's optimizer) and axolotl's cosine schedule that
decays to cosine_min_lr_ratio by cosine_constant_lr_ratio of the steps, then holds."""

from __future__ import annotations

import math
from typing import Any

from toolkit.config import Config


def customized(trainer_cls: type, cfg: Config) -> type:
    """The recipe's trainer class, with toolkit's optimizer or schedule where the config
    asks for one (else the class itself)."""
    if not (cfg.loraplus_lr_ratio or cfg.cosine_constant_lr_ratio):
        return trainer_cls
    return type(f"Toolkit{trainer_cls.__name__}", (_Custom, trainer_cls), {"toolkit_cfg": cfg})


class _Custom:
    toolkit_cfg: Config

    def create_optimizer(self, model=None) -> Any:
        cfg = self.toolkit_cfg
        if cfg.loraplus_lr_ratio is None or getattr(self, "optimizer", None) is not None:
            return super().create_optimizer(model)  # type: ignore[misc]
        from peft.optimizers import create_loraplus_optimizer

        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)  # type: ignore[attr-defined]
        lr = kwargs.pop("lr", self.args.learning_rate)  # type: ignore[attr-defined]
        extra = {}
        if cfg.loraplus_lr_embedding is not None:
            extra["loraplus_lr_embedding"] = cfg.loraplus_lr_embedding
        self.optimizer = create_loraplus_optimizer(
            self.model,  # type: ignore[attr-defined]
            optimizer_cls,
            lr=lr,
            loraplus_lr_ratio=cfg.loraplus_lr_ratio,
            weight_decay=self.args.weight_decay,  # type: ignore[attr-defined]
            **extra,
            **kwargs,
        )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None) -> Any:
        cfg = self.toolkit_cfg
        hold_from = cfg.cosine_constant_lr_ratio
        if hold_from is None or getattr(self, "lr_scheduler", None) is not None:
            return super().create_scheduler(num_training_steps, optimizer)  # type: ignore[misc]
        from torch.optim.lr_scheduler import LambdaLR

        warmup = self.args.get_warmup_steps(num_training_steps)  # type: ignore[attr-defined]
        self.lr_scheduler = LambdaLR(
            optimizer or self.optimizer,
            lambda step: cosine_then_constant(
                step,
                warmup,
                num_training_steps,
                cfg.cosine_min_lr_ratio or 0.0,
                hold_from,
            ),
        )
        return self.lr_scheduler


def cosine_then_constant(
    step: int, warmup: int, total: int, min_ratio: float, constant_ratio: float
) -> float:
    """The learning-rate factor at `step`: linear warmup, cosine decay from 1 to
    min_ratio reached at constant_ratio of the steps, then min_ratio."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    end = max(warmup + 1, int(total * constant_ratio))
    if step >= end:
        return min_ratio
    progress = (step - warmup) / (end - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
