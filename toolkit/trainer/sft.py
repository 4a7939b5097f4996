"""Supervised fine-tuning (LoRA, QLoRA or full) on chat data.

    toolkit train configs/tiny-cpu-demo.yaml

Read top to bottom: resolve → tokenizer and template → data → model → train →
save (adapter or model, tokenizer, chat template) → run.json.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.config import LoadedConfig
from toolkit.trainer.args import common_args
from toolkit.trainer.chat import build_encoder
from toolkit.trainer.data import Collator, split_validation
from toolkit.trainer.model import load_model
from toolkit.trainer.packing import PackedCollator, pack
from toolkit.trainer.prepared import load_or_build
from toolkit.trainer.schedule import customized
from toolkit.trainer.steps import start_run, train_and_save


def train(loaded: LoadedConfig) -> Path:
    """Train as configured; return the output directory."""
    from transformers import Trainer, TrainingArguments

    cfg = loaded.config
    log, progress, resolved = start_run(cfg)

    tokenizer, encoder = build_encoder(cfg)
    examples, report = load_or_build(cfg, encoder, log)
    for line in report.lines(cfg):
        log(line)
    train_rows, val_rows = split_validation(
        examples, cfg.val_set_size, cfg.seed, cfg.shuffle_merged_datasets
    )
    log(f"data: {len(train_rows)} training rows, {len(val_rows)} held out")
    packing = {}
    # Rows made as the trainer reads them, from the prepared data mapped in memory.
    train_set, val_set = train_rows.as_rows(), val_rows.as_rows()
    if cfg.sample_packing:
        packed, fill = pack(train_rows, cfg.sequence_len)
        train_set = packed.as_rows()
        packing["train"] = {"rows": len(train_rows), "packed_rows": len(packed), "fill": fill}
        log(
            f"packing: {len(train_rows)} rows into {len(packed)} rows of {cfg.sequence_len} "
            f"tokens, {100 * fill:.1f}% real tokens"
        )
    if val_rows and (
        cfg.sample_packing if cfg.eval_sample_packing is None else cfg.eval_sample_packing
    ):
        packed, fill = pack(val_rows, cfg.sequence_len)
        val_set = packed.as_rows()
        packing["eval"] = {"rows": len(val_rows), "packed_rows": len(packed), "fill": fill}

    model = load_model(cfg, resolved)
    if cfg.uses_lora:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log(f"model: {cfg.adapter} adapter, {trainable:,} of {total:,} parameters trainable")

    args = TrainingArguments(**common_args(cfg, resolved, len(train_set), bool(val_set)))
    pad_to = cfg.sequence_len if cfg.pad_to_sequence_len else None
    collator = PackedCollator(
        tokenizer.pad_token_id,
        Collator(tokenizer.pad_token_id, pad_to),
        # flash-attn's varlen path wants the batch as one row; toolkit_varlen reads it as one.
        flatten=resolved.attn_implementation.startswith("flash_attention"),
        pad_to=pad_to,
    )
    trainer = customized(Trainer, cfg)(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set or None,
        # The tokenizer lets transformers count real tokens in packed batches, which carry
        # no attention mask (it counts the non-pad ones).
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[progress],
    )
    return train_and_save(
        trainer,
        tokenizer,
        loaded,
        progress,
        "sft",
        resolved=resolved.as_dict(),
        data=report.as_dict(),
        train_rows=len(train_rows),
        val_rows=len(val_rows),
        packing=packing or None,
    )
