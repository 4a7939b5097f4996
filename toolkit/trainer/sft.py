"""Supervised fine-tuning (LoRA, QLoRA or full) on chat data.

    toolkit train configs/tiny-cpu-demo.yaml

Read top to bottom: resolve → tokenizer and template → data → model → train →
save (adapter or model, tokenizer, chat template) → run.json.
"""

from __future__ import annotations

import time
from pathlib import Path

from toolkit.config import LoadedConfig
from toolkit.trainer.args import common_args
from toolkit.trainer.chat import ChatEncoder, resolve_eot_tokens, resolve_template
from toolkit.trainer.data import Collator, build_examples, split_validation
from toolkit.trainer.files import make_readable
from toolkit.trainer.manifest import write_manifest
from toolkit.trainer.model import load_model, load_tokenizer, resolve
from toolkit.trainer.progress import ProgressLog, RunLog, quiet_libraries


def train(loaded: LoadedConfig) -> Path:
    """Train as configured; return the output directory."""
    import transformers
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    quiet_libraries()
    cfg = loaded.config
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "train.log")
    transformers.set_seed(cfg.seed)

    resolved = resolve(cfg)
    log(f"resolved: device={resolved.device} ({resolved.device_name}) dtype={resolved.dtype} "
        f"bf16={resolved.bf16} tf32={resolved.tf32} lora_targets={resolved.lora_target_modules}")

    tokenizer = load_tokenizer(cfg)
    template = resolve_template(cfg, tokenizer)
    tokenizer.chat_template = template
    encoder = ChatEncoder(tokenizer, template, resolve_eot_tokens(cfg, tokenizer))

    examples, report = build_examples(cfg, encoder)
    for line in report.lines(cfg):
        log(line)
    train_rows, val_rows = split_validation(examples, cfg.val_set_size, cfg.seed)
    log(f"data: {len(train_rows)} training rows, {len(val_rows)} held out")

    model = load_model(cfg, resolved)
    if cfg.uses_lora:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log(f"model: {cfg.adapter} adapter, {trainable:,} of {total:,} parameters trainable")

    args = TrainingArguments(**common_args(cfg, resolved, len(train_rows), bool(val_rows)))
    progress = ProgressLog(log)
    trainer = Trainer(
        model=model, args=args,
        train_dataset=[{"input_ids": e.input_ids, "labels": e.labels} for e in train_rows],
        eval_dataset=[{"input_ids": e.input_ids, "labels": e.labels} for e in val_rows] or None,
        data_collator=Collator(tokenizer.pad_token_id),
        callbacks=[progress],
    )
    trainer.remove_callback(PrinterCallback)  # ProgressLog prints one line per log step
    started = time.monotonic()
    result = trainer.train()
    elapsed = time.monotonic() - started

    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    make_readable(out)
    manifest = write_manifest(
        out, loaded, recipe="sft",
        resolved=resolved.as_dict(),
        data=report.as_dict(),
        train_rows=len(train_rows), val_rows=len(val_rows),
        steps=trainer.state.global_step,
        epochs=trainer.state.epoch,
        final_loss=progress.losses[-1][1] if progress.losses else None,
        mean_loss=result.training_loss,
        eval_loss=progress.eval_losses[-1][1] if progress.eval_losses else None,
        loss_history=progress.losses,
        tokens_per_second=progress.tokens_seen / elapsed if elapsed else None,
        train_seconds=elapsed,
    )
    log(f"saved {'adapter' if cfg.uses_lora else 'model'} and tokenizer to {out}; "
        f"manifest {manifest}; log {out / 'train.log'}")
    return out
