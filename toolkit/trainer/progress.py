"""Training logs: one line per logging step (loss, learning rate, tokens/s), to the
terminal and to output_dir/train.log, and the loss history that run.json keeps."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from transformers import TrainerCallback
from transformers.utils import logging as hf_logging


def quiet_libraries() -> None:
    """Keep our logs readable: no per-file progress bars, no deprecation chatter
    from inside the libraries (their real warnings still show)."""
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a single process."""
    return os.environ.get("RANK", "0") == "0"


class RunLog:
    """Prints a line and appends it to the run's log file (rank 0 only under torchrun)."""

    def __init__(self, path: Path):
        self.path = path
        self.main = is_main_process()
        if self.main:
            self.path.write_text("")

    def __call__(self, line: str) -> None:
        if not self.main:
            return
        print(line, flush=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


class ProgressLog(TrainerCallback):
    def __init__(self, log: RunLog):
        self.log = log
        self.losses: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.metrics: list[dict] = []   # every logged training value, by step
        self.evals: list[dict] = []     # every evaluation, by step
        self.tokens_seen = 0
        self._last = (time.monotonic(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.monotonic(), 0)
        self.log(f"train: {state.max_steps} steps, batch {args.per_device_train_batch_size} x "
                 f"accumulation {args.gradient_accumulation_steps}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            if "eval_loss" in logs:
                self.eval_losses.append((state.global_step, float(logs["eval_loss"])))
                self.evals.append({"step": state.global_step, **_numbers(logs)})
                shown = "".join(f" eval_{k} {logs['eval_' + k]:.4f}" for k in SHOWN
                                if "eval_" + k in logs)
                self.log(f"eval: step {state.global_step} eval_loss {logs['eval_loss']:.4f}"
                         f"{shown}")
            return
        now, tokens = time.monotonic(), int(state.num_input_tokens_seen or 0)
        then, before = self._last
        rate = (tokens - before) / (now - then) if now > then else 0.0
        self._last = (now, tokens)
        self.tokens_seen = tokens
        self.losses.append((state.global_step, float(logs["loss"])))
        self.metrics.append({"step": state.global_step, **_numbers(logs)})
        shown = "".join(f" {k} {logs[k]:.3f}" for k in SHOWN if k in logs)
        self.log(f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                 f"lr {logs.get('learning_rate', 0):.2e} grad_norm "
                 f"{float(logs.get('grad_norm', 0)):.3f}{shown}"
                 + (f" tokens/s {rate:,.0f}" if tokens else ""))


# What preference and reward trainers log that tells whether training works.
SHOWN = ("rewards/accuracies", "rewards/margins", "accuracy", "margin", "step_accuracy")


def _numbers(logs: dict) -> dict:
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
