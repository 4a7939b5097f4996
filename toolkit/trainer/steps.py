"""The first and the last steps every recipe shares: open the run, and train, save
and describe it. The recipes stay readable top to bottom between the two."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

from transformers import TrainerCallback

from toolkit.config import Config, LoadedConfig
from toolkit.errors import Preempted, RuntimeFailure, ToolkitError, UsageError
from toolkit.outputs import MANIFEST, STATE_DIR, read_segments, refuse_links, write_segments
from toolkit.trainer import trackers
from toolkit.trainer.checkpoints import CheckpointMarker, Preemption, find_resume
from toolkit.trainer.files import make_written_readable, snapshot
from toolkit.trainer.manifest import write_manifest
from toolkit.trainer.model import Resolved, resolve
from toolkit.trainer.progress import Divergence, ProgressLog, RunLog
from toolkit.trainer.quiet import quiet_libraries
from toolkit.trainer.throughput import (
    TensorBoard,
    flops_per_token,
    peak_flops,
    peak_memory_gib,
    write_chart,
)


def start_run(cfg: Config) -> tuple[RunLog, ProgressLog, Resolved]:
    """Create output_dir, its train.log and the progress callback; seed everything;
    resolve what depends on the hardware, and log it. A link where the run writes is
    refused first (exit 2): it may have been planted since the command checked."""
    import transformers

    quiet_libraries()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    refuse_links(out)
    log = RunLog(out / "train.log")
    transformers.set_seed(cfg.seed)
    resolved = resolve(cfg)
    reporting = trackers.start(cfg)
    log(
        f"resolved: recipe={cfg.recipe}{f' ({cfg.rl})' if cfg.rl else ''} "
        f"device={resolved.device} ({resolved.device_name}) dtype={resolved.dtype} "
        f"attention={resolved.attn_implementation} tf32={resolved.tf32} "
        f"lora_targets={resolved.lora_target_modules}"
    )
    if reporting:
        shown = [f"wandb ({trackers.wandb_mode(cfg)})" if t == "wandb" else t for t in reporting]
        log(f"trackers: {', '.join(shown)}")
    if resolved.optimizations:
        log("optimizations: " + "; ".join(f"{k} {v}" for k, v in resolved.optimizations.items()))
    for note in resolved.notes:
        log(f"note: {note}")
    return log, ProgressLog(log), resolved


class SaveFirstStep(TrainerCallback):
    """save_first_step: a checkpoint after the first optimizer step (axolotl's key), to
    check early that saving and resuming work."""

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == 1:
            control.should_save = True


class LogLastStep(TrainerCallback):
    """The last step's loss is logged, and so recorded, when max_steps is not a multiple
    of logging_steps: a short run has a final loss that compare and reproduce can use."""

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.max_steps and state.global_step == state.max_steps:
            control.should_log = True


class SetAside(TrainerCallback):
    """Moves a finished run's record (run.json) aside once this segment has started
    training: from then until this run is saved whole, the folder holds no finished run,
    so nothing merges a half-written adapter. Not before: a resume that fails while it
    loads its checkpoint leaves the finished run as it was, merge-lora included."""

    def __init__(self, out: Path | None) -> None:
        self.out, self.done = out, False  # out: None on ranks other than 0

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.set_aside()

    def set_aside(self) -> None:
        """Move output_dir/run.json to .toolkit/superseded-run.json (once)."""
        if not self.done and self.out and (self.out / MANIFEST).exists():
            os.replace(self.out / MANIFEST, self.out / STATE_DIR / f"superseded-{MANIFEST}")
        self.done = True


class LinkGuard(TrainerCallback):
    """Before each save, the planned names are looked at again: a link planted while the
    run trained (at the checkpoint about to be written, say) stops the run, exit 2,
    instead of being written through by transformers, which writes by path. Added last,
    so that it sees every callback's decision to save."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if control.should_save:
            refuse_links(self.out)


def _unloadable(exc: Exception) -> bool:
    """Whether `exc`, raised before the first step of a resume, says the checkpoint could
    not be loaded (a pickle or tensor file that does not parse) rather than that the
    machine failed (memory, disk: those keep their own messages) or toolkit said why."""
    import torch

    return not isinstance(exc, (OSError, MemoryError, torch.OutOfMemoryError, ToolkitError))


def train_and_save(
    trainer, tokenizer, loaded: LoadedConfig, progress: ProgressLog, recipe: str, **facts
) -> Path:
    """Train (resuming where the run stopped); save the adapter (or model) with the
    tokenizer; write run.json for the whole run, every segment of it."""
    from transformers.trainer_callback import PrinterCallback

    cfg = loaded.config
    out = Path(cfg.output_dir)
    main = trainer.is_world_process_zero()
    before = snapshot(out)
    trainer.remove_callback(PrinterCallback)  # ProgressLog prints one line per log step
    resume = find_resume(cfg, progress.log)
    if main and resume is None and (out / MANIFEST).exists():
        progress.log(
            f"note: {out} holds a finished run (run.json); this run from step 0 replaces "
            "it and its adapter once it has trained"
        )
    segments = _start_segment(out, resume) if main else []
    started_training = SetAside(out if main else None)
    trainer.add_callback(started_training)
    trainer.add_callback(CheckpointMarker(cfg.training_digest()))
    trainer.add_callback(LogLastStep())
    if cfg.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        trainer.add_callback(EarlyStoppingCallback(cfg.early_stopping_patience))
    preemption = Preemption()
    divergence = Divergence(cfg.loss_watchdog_threshold, cfg.loss_watchdog_patience)
    if cfg.save_first_step:
        trainer.add_callback(SaveFirstStep())
    trainer.add_callback(preemption)
    trainer.add_callback(divergence)
    for callback in getattr(trainer.model, "toolkit_callbacks", ()):  # qat's, from load_base
        trainer.add_callback(callback)
    if main:
        trainer.add_callback(LinkGuard(out))
    resolved = facts["resolved"]
    board = TensorBoard(out / "tensorboard") if main else None
    progress.measure(
        _flops_per_token(cfg, trainer.model, facts.get("data")),
        peak_flops(resolved["device"], resolved["device_name"], resolved["dtype"]),
        resolved["device"],
        board,
    )
    started = time.monotonic()
    try:
        with preemption.installed():
            result = trainer.train(resume_from_checkpoint=resume)
    except Exception as exc:
        if resume is None or started_training.done or not _unloadable(exc):
            raise
        _end_segment(out, segments, trainer.state.global_step, "failed")
        said = re.split(r"(?<=\.)\s|\n", str(exc).strip(), maxsplit=1)[0][:200]
        raise UsageError(
            f"resume: {resume} passed its checks but could not be loaded "
            f"({type(exc).__name__}: {said}); nothing was trained. Move "
            f"{Path(resume).name} out of {out} to resume from an older checkpoint, or run "
            "the same command with --restart (resume_from_checkpoint: false) to train "
            "from step 0"
        ) from exc
    finally:
        if board:
            board.close()
        trackers.finish(cfg)
    elapsed = time.monotonic() - started
    step = trainer.state.global_step
    if preemption.requested:
        progress.log(f"preempted: SIGTERM at step {step}; checkpoint saved")
        _end_segment(out, segments, step, "preempted")
        make_written_readable(out, before)
        again = (
            "Run the same command again without --restart (resume_from_checkpoint: auto) "
            "to resume from it"
            if cfg.resume_from_checkpoint is False
            else "Run the same command again to resume from it"
        )
        raise Preempted(
            f"stopped by SIGTERM at step {step}; checkpoint {out}/checkpoint-{step} "
            f"was saved. {again}"
        )
    if divergence.step is None and trainer.args.world_size == 1 and not _finite(trainer.model):
        divergence.step, divergence.what = step, "a trainable weight that is not finite"
    if divergence.step is not None:
        progress.log(f"error: {divergence.message(cfg)}")
        _end_segment(out, segments, step, "diverged")
        make_written_readable(out, before)
        raise RuntimeFailure(divergence.message(cfg))
    started_training.set_aside()  # a run that took no step still replaces the record
    if main:
        refuse_links(out)  # transformers and peft write by path: none may be a link now
    trainer.save_model(str(out))  # every rank joins; rank 0 writes
    if not main:
        return out
    tokenizer.save_pretrained(str(out))
    rate = progress.tokens_seen / elapsed if elapsed and progress.tokens_seen else None
    memory, memory_kind = peak_memory_gib(resolved["device"])
    losses, evals, metrics, eval_history = _whole_run_history(
        trainer.state.log_history, progress, resume
    )
    charted = write_chart(out / "loss.png", losses, evals, progress.rates)
    segments = _end_segment(out, segments, step, "complete")
    manifest = write_manifest(
        out,
        loaded,
        recipe=recipe,
        **facts,
        status="complete",
        training_digest=cfg.training_digest(),
        segments=segments,
        steps=step,
        epochs=trainer.state.epoch,
        final_loss=losses[-1][1] if losses else None,
        mean_loss=result.training_loss,
        eval_loss=evals[-1][1] if evals else None,
        loss_history=losses,
        metrics_history=metrics,
        eval_history=eval_history,
        tokens_per_second=rate,
        mfu=progress.mfu(rate, trainer.args.world_size) if rate else None,
        flops_per_token=progress.flops_per_token,
        peak_memory_gib=memory,
        peak_memory_of=memory_kind,
        train_seconds=elapsed,
        world_size=trainer.args.world_size,
        # torchrun's layout: the ranks over the ranks on each machine.
        nodes=trainer.args.world_size // int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1),
        chart="loss.png" if charted else None,
        tensorboard="tensorboard" if board and board.writer else None,
    )
    progress.log.note(  # the command prints where they are as its closing lines
        f"saved {'adapter' if cfg.uses_lora else 'model'} and tokenizer to {out}; "
        f"manifest {manifest}; log {out / 'train.log'}"
    )
    make_written_readable(out, before)
    return out


def _start_segment(out: Path, resume: str | None) -> list[dict]:
    """Record this start of the run (the first, or a resume) in output_dir/.toolkit."""
    segments = read_segments(out)
    for earlier in segments:  # one that never said how it ended: killed, or crashed
        if earlier.get("outcome", "running") == "running":
            earlier["outcome"] = "interrupted"
    resumed = int(Path(resume).name.rsplit("-", 1)[-1]) if resume else None
    segments.append(
        {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "resumed_from_step": resumed,
            "host": socket.gethostname(),
            "image": os.environ.get("TOOLKIT_IMAGE"),
            "image_id": os.environ.get("TOOLKIT_IMAGE_ID"),
            "outcome": "running",
        }
    )
    write_segments(out, segments)
    return segments


def _end_segment(out: Path, segments: list[dict], step: int, outcome: str) -> list[dict]:
    if segments:
        segments[-1].update(ended_at_step=step, outcome=outcome)
        write_segments(out, segments)
    return segments


def _whole_run_history(
    log_history: list[dict], progress: ProgressLog, resume: str | None
) -> tuple[list, list, list, list]:
    """Losses, eval losses and logged values of the whole run: what the checkpoint resumed
    from recorded (transformers keeps it in trainer_state.json) and what this segment
    logged."""
    resumed = int(Path(resume).name.rsplit("-", 1)[-1]) if resume else 0
    earlier = [e for e in log_history if e.get("step", 0) <= resumed]
    metrics = [
        {k: v for k, v in e.items() if isinstance(v, (int, float))} for e in earlier if "loss" in e
    ] + progress.metrics
    eval_history = [
        {k: v for k, v in e.items() if isinstance(v, (int, float))}
        for e in earlier
        if "eval_loss" in e
    ] + progress.evals
    losses = [(m["step"], m["loss"]) for m in metrics]
    evals = [(m["step"], m["eval_loss"]) for m in eval_history]
    return losses, evals, metrics, eval_history


def _finite(model) -> bool:
    """Whether every trainable weight is a finite number (a divergence between two logged
    steps leaves no NaN in the logs)."""
    import torch

    with torch.no_grad():
        return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def _flops_per_token(cfg: Config, model, data: dict | None) -> float | None:
    """For causal-LM SFT, where the mean sequence length is known from the data report;
    the other recipes' sequences are pairs or steps, and MFU is not reported for them."""
    if cfg.recipe != "sft" or not data or not data.get("kept"):
        return None
    return flops_per_token(model.config, not cfg.uses_lora, data["tokens"] / data["kept"])
