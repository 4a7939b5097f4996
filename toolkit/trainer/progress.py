"""Training logs: one line per logging step (loss, learning rate, tokens/s), to the
terminal and to output_dir/train.log, and the loss history that run.json keeps."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from toolkit.bars import bar, clock
from toolkit.outputs import open_nofollow
from toolkit.trainer.throughput import peak_memory_gib


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a single process."""
    return os.environ.get("RANK", "0") == "0"


class RunLog:
    """Prints a line and appends it to the run's log file (rank 0 only under torchrun).
    A run that resumes appends to the log of the part before it, so train.log tells the
    whole run; each start is marked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.main = is_main_process()
        if self.main:
            started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            self._append(f"=== toolkit run started {started} ===\n")

    def __call__(self, line: str) -> None:
        if not self.main:
            return
        print(line, flush=True)
        self._append(line + "\n")

    def note(self, line: str) -> None:
        """A line for train.log alone (what the command prints itself at the end)."""
        if self.main:
            self._append(line + "\n")

    def _append(self, text: str) -> None:
        # Never through a link planted at train.log (exit 2 naming it).
        fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(text)


class ProgressLog(TrainerCallback):
    def __init__(self, log: RunLog) -> None:
        self.log = log
        self.losses: list[tuple[int, float]] = []
        self.eval_losses: list[tuple[int, float]] = []
        self.metrics: list[dict] = []  # every logged training value, by step
        self.evals: list[dict] = []  # every evaluation, by step
        self.tokens_seen = 0
        self.rates: list[tuple[int, float]] = []
        self._last = (time.monotonic(), 0)
        self.flops_per_token: float | None = None
        self.peak_flops: float | None = None
        self.device = "cpu"
        self.board = None

    def measure(
        self, flops_per_token: float | None, peak_flops: float | None, device: str, board
    ) -> None:
        """What MFU and memory are computed from, and where scalars go (TensorBoard)."""
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.device, self.board = device, board

    def mfu(self, tokens_per_second: float, world_size: int) -> float | None:
        """Tokens/s (all processes) as a fraction of the devices' peak."""
        if not (self.flops_per_token and self.peak_flops and tokens_per_second):
            return None
        return tokens_per_second * self.flops_per_token / (self.peak_flops * world_size)

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self._last = (time.monotonic(), 0)
        self._began = (time.monotonic(), state.global_step)  # a resumed run starts past 0
        self.log(
            f"train: {state.max_steps} steps, batch {args.per_device_train_batch_size} x "
            f"accumulation {args.gradient_accumulation_steps}"
        )

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs) -> None:
        """A bar (or plain lines) over the evaluation batches, rank 0 only."""
        if not self.log.main:
            return
        if getattr(self, "_eval_bar", None) is None:
            total = (
                len(eval_dataloader)
                if eval_dataloader is not None and hasattr(eval_dataloader, "__len__")
                else None
            )
            self._eval_bar = bar(total, "evaluation", unit="batch")
        self._eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs) -> None:
        if getattr(self, "_eval_bar", None) is not None:
            self._eval_bar.close()
            self._eval_bar = None

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        logs = logs or {}
        if "loss" not in logs:
            if "eval_loss" in logs:
                self.eval_losses.append((state.global_step, float(logs["eval_loss"])))
                self.evals.append({"step": state.global_step, **_numbers(logs)})
                shown = "".join(
                    f" eval_{k} {logs['eval_' + k]:.4f}" for k in SHOWN if "eval_" + k in logs
                )
                self.log(f"eval: step {state.global_step} eval_loss {logs['eval_loss']:.4f}{shown}")
                if self.board:
                    self.board.scalars(state.global_step, {"eval/loss": logs["eval_loss"]})
            return
        now, tokens = time.monotonic(), int(state.num_input_tokens_seen or 0)
        then, before = self._last
        rate = (tokens - before) / (now - then) if now > then else 0.0
        self._last = (now, tokens)
        self.tokens_seen = tokens
        step = state.global_step
        mfu = self.mfu(rate, args.world_size)
        memory, _ = peak_memory_gib(self.device)
        self.losses.append((step, float(logs["loss"])))
        self.metrics.append(
            {
                "step": step,
                **_numbers(logs),
                "tokens_per_second": rate,
                "mfu": mfu,
                "peak_memory_gib": memory,
            }
        )
        if tokens:
            self.rates.append((step, rate))
        shown = "".join(f" {k} {logs[k]:.3f}" for k in SHOWN if k in logs)
        began, first = getattr(self, "_began", (now, 0))
        elapsed = now - began
        eta = elapsed / (step - first) * (state.max_steps - step) if step > first else None
        timing = f" epoch {float(state.epoch or 0):.2f} elapsed {clock(elapsed)}" + (
            f" eta {clock(eta)}" if eta is not None else ""
        )
        self.log(
            f"step {step}/{state.max_steps} loss {logs['loss']:.4f} "
            f"lr {logs.get('learning_rate', 0):.2e} grad_norm "
            f"{float(logs.get('grad_norm', 0)):.3f}{shown}"
            + (f" tokens/s {rate:,.0f}" if tokens else "")
            + (f" mfu {100 * mfu:.1f}%" if mfu else "")
            + f" mem {memory:.2f} GiB"
            + timing
        )
        if self.board:
            self.board.scalars(
                step,
                {
                    "train/loss": logs["loss"],
                    "train/learning_rate": logs.get("learning_rate"),
                    "train/grad_norm": logs.get("grad_norm"),
                    "train/tokens_per_second": rate if tokens else None,
                    "train/mfu": mfu,
                    "train/peak_memory_gib": memory,
                },
            )


# What preference and reward trainers log that tells whether training works.
SHOWN = ("rewards/accuracies", "rewards/margins", "accuracy", "margin", "step_accuracy")


def _numbers(logs: dict) -> dict:
    return {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}


class Divergence(TrainerCallback):
    """Stops training at the first logged loss or gradient norm that is not a finite
    number (the weights are garbage from there on), or when the loss has stayed above
    loss_watchdog_threshold for loss_watchdog_patience logs in a row (axolotl's loss
    watchdog), without saving a checkpoint of them. The recipe then fails the run."""

    def __init__(self, threshold: float | None = None, patience: int = 3) -> None:
        self.step: int | None = None
        self.what = ""
        self.last_finite: tuple[int, float] | None = None
        self.threshold, self.patience, self.high = threshold, patience, 0

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        logs = logs or {}
        for key in ("loss", "grad_norm"):
            value = logs.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                self.stop(state.global_step, f"{key} {value}", control)
                return
        loss = logs.get("loss")
        if not isinstance(loss, (int, float)):
            return
        self.last_finite = (state.global_step, float(loss))
        self.high = self.high + 1 if self.threshold is not None and loss > self.threshold else 0
        if self.high >= self.patience:
            self.stop(
                state.global_step,
                f"loss {loss:.4f} above loss_watchdog_threshold {self.threshold:g} for "
                f"{self.high} logged steps in a row",
                control,
            )

    def stop(self, step: int, what: str, control) -> None:
        self.step, self.what = step, what
        control.should_training_stop = True
        control.should_save = False

    def message(self, cfg) -> str:
        last = (
            f"the last finite loss was {self.last_finite[1]:.4f} at step {self.last_finite[0]}"
            if self.last_finite
            else "no finite loss was logged"
        )
        cause = (
            "fp16 overflow: use bf16 (or bf16: auto) on a GPU that has it"
            if cfg.fp16
            else f"learning_rate {cfg.learning_rate:g} is likely too high: lower it"
            if cfg.learning_rate > 1e-2
            else "try a lower learning_rate, warmup_steps, or max_grad_norm: 1.0"
        )
        return (
            f"training diverged: {self.what} at step {self.step}; {last}. Likely cause: "
            f"{cause}. Nothing was saved as the result"
        )
