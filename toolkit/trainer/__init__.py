"""What runs where the training stack is: the recipes (one file each), preprocessing,
and the stages that run beside them (toolkit.merge, toolkit.inference, toolkit.tiny).
The host reaches all of it through `run(plan)` alone, in this process or through
`python -m toolkit.trainer PLAN` (the image, torchrun's ranks); nothing here imports
the host side (toolkit.cli, toolkit.host, toolkit.containers, toolkit.images). Heavy
libraries are imported where they are used."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.trainer import quiet  # first: it quiets the libraries' import-time logs

if TYPE_CHECKING:
    from toolkit.plan import RunPlan


RECIPES = {"sft": "sft", "preference": "preference", "reward": "reward", "prm": "prm"}


def run(plan: RunPlan) -> Path | None:
    """Carry out a plan the host made: the one way in to everything that runs where the
    training stack is (the image, torchrun's ranks, or this process). Returns the output
    folder, the merged model or the prepared data's folder; nothing for inference."""
    from toolkit import pins
    from toolkit.plan import Inference, Merge, Preprocess, TinyModel

    task = plan.task
    if isinstance(task, TinyModel):
        from toolkit.tiny import write_tiny_model

        write_tiny_model(Path(task.out), moe=task.moe, seed=task.seed)
        return Path(task.out)
    quiet.quiet_libraries()  # no per-file bars or deprecation chatter in what we print
    with pins.in_use(plan.pins):
        if isinstance(task, Preprocess):
            from toolkit.trainer.prepared import preprocess

            where = preprocess(plan.loaded, task.debug_rows, task.colored)
            print(f"prepared data: {where}")
            return where
        if isinstance(task, Merge):
            from toolkit.merge import merge_lora

            return merge_lora(plan.loaded, task.allow_config_mismatch, plan.lock_token)
        if isinstance(task, Inference):
            import sys

            from toolkit.inference import run as answer
            from toolkit.inference import stdin_prompts

            asked = task.prompts or stdin_prompts(sys.stdin.isatty())
            for _ in answer(plan.loaded, asked, task.model, task.max_new_tokens, task.temperature):
                print()
            return None
        return _train(plan)


def _train(plan: RunPlan) -> Path:
    """Train with the recipe the config calls for; return the output directory.

    The output folder's lock must be held for rank 0 by the command that planned the run
    (its token is in the plan), or it is taken here; a finished run of another config is
    refused before anything is loaded."""
    import os

    from toolkit import outputs, record

    loaded = plan.loaded
    cfg = loaded.config
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    # Rank 0 alone writes the run's records, so it alone holds the lock (on several
    # machines sharing output_dir, the others could not take it).
    writer = os.environ.get("RANK", "0") == "0"
    lock = outputs.ensure_held(cfg.output_dir, "train", plan.lock_token) if writer else None
    try:
        if plan.lock_token is None and record.check_previous(
            cfg.output_dir, cfg.model_dump(mode="json"), cfg.training_digest()
        ):
            return Path(cfg.output_dir)
        out = import_module(f"toolkit.trainer.{RECIPES[cfg.recipe]}").train(loaded)
        _close_process_group()
        return out
    finally:
        if lock:
            lock.release()


def _close_process_group() -> None:
    """Under torchrun: wait until rank 0 has written the outputs, then close the process
    group. A rank that exits with it open can abort in gloo's teardown ("terminate called
    without an active exception") while rank 0 still writes, and torchrun then stops rank
    0 too."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
