"""The first and the last steps every recipe shares: open the run, and train, save
and describe it. The recipes stay readable top to bottom between the two."""

from __future__ import annotations

import time
from pathlib import Path

from toolkit.config import Config, LoadedConfig
from toolkit.errors import Preempted
from toolkit.trainer import quiet_libraries
from toolkit.trainer.checkpoints import CheckpointMarker, Preemption, find_resume
from toolkit.trainer.files import make_readable
from toolkit.trainer.manifest import write_manifest
from toolkit.trainer.model import Resolved, resolve
from toolkit.trainer.progress import ProgressLog, RunLog
from toolkit.trainer.throughput import (
    TensorBoard,
    flops_per_token,
    peak_flops,
    peak_memory_gib,
    write_chart,
)


def start_run(cfg: Config) -> tuple[RunLog, ProgressLog, Resolved]:
    """Create output_dir, its train.log and the progress callback; seed everything;
    resolve what depends on the hardware, and log it."""
    import transformers

    quiet_libraries()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "train.log")
    transformers.set_seed(cfg.seed)
    resolved = resolve(cfg)
    log(f"resolved: recipe={cfg.recipe}{f' ({cfg.rl})' if cfg.rl else ''} "
        f"device={resolved.device} ({resolved.device_name}) dtype={resolved.dtype} "
        f"attention={resolved.attn_implementation} tf32={resolved.tf32} "
        f"lora_targets={resolved.lora_target_modules}")
    if resolved.optimizations:
        log("optimizations: " + "; ".join(f"{k} {v}" for k, v in resolved.optimizations.items()))
    for note in resolved.notes:
        log(f"note: {note}")
    return log, ProgressLog(log), resolved


def train_and_save(trainer, tokenizer, loaded: LoadedConfig, progress: ProgressLog,
                   recipe: str, **facts) -> Path:
    """Train; save the adapter (or model) with the tokenizer; write run.json."""
    from transformers.trainer_callback import PrinterCallback

    cfg = loaded.config
    out = Path(cfg.output_dir)
    trainer.remove_callback(PrinterCallback)  # ProgressLog prints one line per log step
    resume = find_resume(cfg, progress.log)
    trainer.add_callback(CheckpointMarker(cfg.training_digest()))
    if cfg.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        trainer.add_callback(EarlyStoppingCallback(cfg.early_stopping_patience))
    preemption = Preemption()
    trainer.add_callback(preemption)
    resolved = facts["resolved"]
    board = TensorBoard(out / "tensorboard") if trainer.is_world_process_zero() else None
    progress.measure(_flops_per_token(cfg, trainer.model, facts.get("data")),
                     peak_flops(resolved["device"], resolved["device_name"], resolved["dtype"]),
                     resolved["device"], board)
    started = time.monotonic()
    try:
        with preemption.installed():
            result = trainer.train(resume_from_checkpoint=resume)
    finally:
        if board:
            board.close()
    elapsed = time.monotonic() - started
    if preemption.requested:
        step = trainer.state.global_step
        progress.log(f"preempted: SIGTERM at step {step}; checkpoint saved")
        raise Preempted(f"stopped by SIGTERM at step {step}; checkpoint {out}/checkpoint-{step} "
                        "was saved. Run the same command again to resume from it")
    trainer.save_model(str(out))  # every rank joins; rank 0 writes
    if not trainer.is_world_process_zero():
        return out
    tokenizer.save_pretrained(str(out))
    make_readable(out)
    rate = progress.tokens_seen / elapsed if elapsed and progress.tokens_seen else None
    memory, memory_kind = peak_memory_gib(resolved["device"])
    charted = write_chart(out / "loss.png", progress.losses, progress.eval_losses,
                          progress.rates)
    manifest = write_manifest(
        out, loaded, recipe=recipe, **facts,
        steps=trainer.state.global_step, epochs=trainer.state.epoch,
        final_loss=progress.losses[-1][1] if progress.losses else None,
        mean_loss=result.training_loss,
        eval_loss=progress.eval_losses[-1][1] if progress.eval_losses else None,
        loss_history=progress.losses, metrics_history=progress.metrics,
        eval_history=progress.evals,
        tokens_per_second=rate, mfu=progress.mfu(rate, trainer.args.world_size),
        flops_per_token=progress.flops_per_token,
        peak_memory_gib=memory, peak_memory_of=memory_kind,
        train_seconds=elapsed, world_size=trainer.args.world_size,
        chart="loss.png" if charted else None,
        tensorboard="tensorboard" if board and board.writer else None)
    progress.log(f"saved {'adapter' if cfg.uses_lora else 'model'} and tokenizer to {out}; "
                 f"manifest {manifest}; log {out / 'train.log'}")
    return out


def _flops_per_token(cfg: Config, model, data: dict | None) -> float | None:
    """For causal-LM SFT, where the mean sequence length is known from the data report;
    the other recipes' sequences are pairs or steps, and MFU is not reported for them."""
    if cfg.recipe != "sft" or not data or not data.get("kept"):
        return None
    return flops_per_token(model.config, not cfg.uses_lora, data["tokens"] / data["kept"])
