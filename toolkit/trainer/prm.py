"""Process reward models: a token-classification head with two labels that judges
each reasoning step, built on transformers' Trainer (TRL 1.14+ has no PRM trainer).

    toolkit train configs/qwen3-prm.yaml

A row {prompt, completions: [step, …], labels: [bool, …]} becomes
`prompt SEP step1 SEP step2 SEP …`; only the last token of each step (its
separator) carries a label (1 = the step is right), every other token is -100.
With `train_on_last_step_only`, only the final step is labelled. Completions
longer than `max_completion_length` lose their last tokens; the whole row is cut
at `sequence_len`; both are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.config import Config, LoadedConfig
from toolkit.errors import DataError
from toolkit.trainer.args import common_args
from toolkit.trainer.chat import IGNORE_INDEX
from toolkit.trainer.data import Collator, split_validation
from toolkit.trainer.model import load_model, load_tokenizer
from toolkit.trainer.rows import read_all
from toolkit.trainer.schedule import customized
from toolkit.trainer.steps import start_run, train_and_save

HEAD = "token_classification"


@dataclass
class StepCounts:
    rows: int = 0
    truncated: int = 0
    dropped_no_label: int = 0


def encode_steps(tokenizer, row: dict, cfg: Config) -> tuple[list[int], list[int], bool]:
    """Token ids and per-token labels for one stepwise row; and whether it was cut."""

    def setting(name) -> Any:
        return row[name] if row.get(name) is not None else getattr(cfg, name)

    separator, last_only, max_completion = (
        setting("step_separator"),
        setting("train_on_last_step_only"),
        setting("max_completion_length"),
    )
    sep = tokenizer(separator, add_special_tokens=False)["input_ids"]
    ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] + sep
    labels = [IGNORE_INDEX] * len(ids)
    completion_ids, completion_labels = [], []
    last = len(row["completions"]) - 1
    for i, (step, good) in enumerate(zip(row["completions"], row["labels"], strict=True)):
        step_ids = tokenizer(step, add_special_tokens=False)["input_ids"] + sep
        label = int(good) if (i == last or not last_only) else IGNORE_INDEX
        completion_ids += step_ids
        completion_labels += [IGNORE_INDEX] * (len(step_ids) - 1) + [label]
    cut = False
    if max_completion and len(completion_ids) > max_completion:
        completion_ids = completion_ids[:max_completion]
        completion_labels = completion_labels[:max_completion]
        cut = True
    ids, labels = ids + completion_ids, labels + completion_labels
    if len(ids) > cfg.sequence_len:
        ids, labels, cut = ids[: cfg.sequence_len], labels[: cfg.sequence_len], True
    return ids, labels, cut


def step_accuracy(eval_pred) -> dict:
    """Share of labelled step tokens the model classifies right."""
    import numpy as np

    logits, labels = eval_pred
    mask = labels != IGNORE_INDEX
    predicted = np.argmax(logits, axis=-1)
    return {"step_accuracy": float((predicted[mask] == labels[mask]).mean()) if mask.any() else 0.0}


def train(loaded: LoadedConfig) -> Path:
    from transformers import Trainer, TrainingArguments

    cfg = loaded.config
    log, progress, resolved = start_run(cfg)

    tokenizer = load_tokenizer(cfg)

    counts = StepCounts()
    examples = []
    for row in read_all(cfg):
        counts.rows += 1
        ids, labels, cut = encode_steps(tokenizer, row, cfg)
        counts.truncated += cut
        if all(x == IGNORE_INDEX for x in labels):
            counts.dropped_no_label += 1
            continue
        examples.append({"input_ids": ids, "labels": labels})
    if counts.truncated:
        log(f"data: truncated {counts.truncated} rows to max_completion_length / sequence_len")
    if counts.dropped_no_label:
        log(
            f"data: dropped {counts.dropped_no_label} rows whose labelled steps were all cut; "
            "raise sequence_len or max_completion_length to keep them"
        )
    if not examples:
        raise DataError("no row keeps a labelled step within sequence_len")
    train_rows, val_rows = split_validation(
        examples, cfg.val_set_size, cfg.seed, cfg.shuffle_merged_datasets
    )
    log(f"data: {counts.rows} rows, {len(train_rows)} training, {len(val_rows)} held out")

    model = load_model(cfg, resolved, HEAD, num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = TrainingArguments(**common_args(cfg, resolved, len(train_rows), bool(val_rows)))
    trainer = customized(Trainer, cfg)(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=val_rows or None,
        data_collator=Collator(tokenizer.pad_token_id),
        compute_metrics=step_accuracy,
        callbacks=[progress],
    )

    return train_and_save(
        trainer,
        tokenizer,
        loaded,
        progress,
        "prm",
        head=HEAD,
        num_labels=2,
        resolved=resolved.as_dict(),
        data={
            "rows": counts.rows,
            "truncated": counts.truncated,
            "dropped_no_label": counts.dropped_no_label,
            "train_rows": len(train_rows),
            "val_rows": len(val_rows),
        },
    )
