"""Training recipes, one file each. They import their heavy libraries themselves;
nothing here is imported by the host CLI."""

from __future__ import annotations

import logging
from importlib import import_module

# Set before the libraries load: peft imports torchao and bitsandbytes when they are
# installed, and at import they report GPU-only pieces they cannot load on this
# machine (and torchao re-registers enums with torch), on every run.
for _name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).setLevel(logging.ERROR)

RECIPES = {"sft": "sft", "preference": "preference", "reward": "reward", "prm": "prm"}


def run(loaded):
    """Train with the recipe the config calls for; return the output directory."""
    return import_module(f"toolkit.trainer.{RECIPES[loaded.config.recipe]}").train(loaded)
