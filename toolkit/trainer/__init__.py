"""Training recipes, one file each. They import their heavy libraries themselves;
nothing here is imported by the host CLI."""

from __future__ import annotations

from importlib import import_module

RECIPES = {"sft": "sft", "preference": "preference", "reward": "reward", "prm": "prm"}


def run(loaded):
    """Train with the recipe the config calls for; return the output directory."""
    return import_module(f"toolkit.trainer.{RECIPES[loaded.config.recipe]}").train(loaded)
