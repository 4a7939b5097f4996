"""Training recipes, one file each. They import their heavy libraries themselves;
nothing here is imported by the host CLI."""

from __future__ import annotations

import logging
from importlib import import_module
from pathlib import Path

# Set before the libraries load: peft imports torchao and bitsandbytes when they are
# installed, and at import they report GPU-only pieces they cannot load on this
# machine (and torchao re-registers enums with torch), on every run.
for _name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """Keep our logs readable: no per-file progress bars, no deprecation chatter
    from inside the libraries (their real warnings still show)."""
    import os
    import sys
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # datasets reads these when it is imported (only some paths need it: not JSON Lines).
    # Its own error log lines repeat what the DataError we raise says, as a traceback.
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["DATASETS_VERBOSITY"] = "critical"
    if sys.modules.get("datasets") is not None:
        sys.modules["datasets"].disable_progress_bars()
        sys.modules["datasets"].utils.logging.set_verbosity(50)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


RECIPES = {"sft": "sft", "preference": "preference", "reward": "reward", "prm": "prm"}


def run(loaded) -> Path:
    """Train with the recipe the config calls for; return the output directory.

    The output folder's lock must be ours (or held for us by the command that launched
    us); a run that is already complete there is not trained again, and a finished run
    of another config is refused, before anything is loaded."""
    from pathlib import Path

    from toolkit import outputs

    cfg = loaded.config
    check_hardware(loaded)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    lock = outputs.ensure_held(cfg.output_dir, "train")
    try:
        if outputs.check_previous(
            cfg.output_dir, cfg.model_dump(mode="json"), cfg.training_digest()
        ):
            return Path(cfg.output_dir)
        out = import_module(f"toolkit.trainer.{RECIPES[cfg.recipe]}").train(loaded)
        _close_process_group()
        return out
    finally:
        if lock:
            lock.release()


def check_hardware(loaded) -> None:
    """Refuse, before anything is written, axolotl settings this machine cannot run
    (several GPUs for tensor/context/expert parallelism, GPU kernels for QAT or FP8)."""
    if loaded.hardware:
        import torch

        from toolkit.config.axolotl import check_hardware as refuse

        refuse(loaded, torch.cuda.device_count())


def _close_process_group() -> None:
    """Under torchrun: wait until rank 0 has written the outputs, then close the process
    group. A rank that exits with it open can abort in gloo's teardown ("terminate called
    without an active exception") while rank 0 still writes, and torchrun then stops rank
    0 too."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
