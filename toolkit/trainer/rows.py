"""Rows for preference, KTO, reward and process-reward training, in the canonical
shapes the recipes feed to their trainers:

    pairs   {"prompt": [messages], "chosen": [assistant message], "rejected": [...]}
    kto     {"prompt": [messages], "completion": [assistant message], "label": bool}
    prm     {"prompt": str, "completions": [str], "labels": [bool]}

Each normalizer raises RowError naming the field; `read_all` collects them per
dataset and stops the run with the rows named, as SFT does.
"""

from __future__ import annotations

from typing import Any

from toolkit.config import Config, DatasetConfig
from toolkit.errors import DataError
from toolkit.trainer.chat import RowError, normalize_turns
from toolkit.trainer.data import bad_rows_error, read_rows


def _field(row: dict, name: str, what: str) -> Any:
    if name not in row:
        raise RowError(f"has no {name!r} field ({what}); its fields are {sorted(row)[:8]}")
    return row[name]


def _reply(value, ds: DatasetConfig, field: str) -> dict:
    """A reply given as a string, a message, or a list whose last message counts."""
    if isinstance(value, str):
        message = {"role": "assistant", "content": value}
    elif isinstance(value, dict):
        message = normalize_turns([value], ds, field)[0]
    else:
        message = normalize_turns(value, ds, field)[-1]
    if message["role"] != "assistant":
        raise RowError(f"{field}: the reply's role is {message['role']!r}; expected assistant")
    if not message["content"].strip():
        raise RowError(f"{field} is empty; a preference pair needs text on both sides")
    return message


def _prompt(value, ds: DatasetConfig, field: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{field} is empty")
        return [{"role": "user", "content": value}]
    return normalize_turns(value, ds, field)


def pair_default(row: dict, ds: DatasetConfig) -> dict:
    """chat_template.default (and `preference`, TRL's format, whose prompt field is `prompt`)."""
    field = "prompt" if ds.type == "preference" else ds.field_messages
    chosen_field = "chosen" if ds.type == "preference" else ds.field_chosen
    rejected_field = "rejected" if ds.type == "preference" else ds.field_rejected
    prompt = _prompt(_field(row, field, "the prompt"), ds, field)
    return {
        "prompt": prompt,
        "chosen": [_reply(_field(row, chosen_field, "field_chosen"), ds, chosen_field)],
        "rejected": [_reply(_field(row, rejected_field, "field_rejected"), ds, rejected_field)],
    }


def pair_conversations(row: dict, ds: DatasetConfig) -> dict:
    """argilla_chat / argilla: chosen and rejected are whole conversations sharing a prompt."""
    chosen = normalize_turns(_field(row, ds.field_chosen, "field_chosen"), ds, ds.field_chosen)
    rejected = normalize_turns(
        _field(row, ds.field_rejected, "field_rejected"), ds, ds.field_rejected
    )
    if chosen[:-1] != rejected[:-1]:
        raise RowError(
            f"{ds.field_chosen} and {ds.field_rejected} have different prompts "
            "(every message before the last must be the same)"
        )
    if len(chosen) < 2:
        raise RowError(f"{ds.field_chosen} has no prompt before its reply")
    return {
        "prompt": chosen[:-1],
        "chosen": [_reply(chosen[-1], ds, ds.field_chosen)],
        "rejected": [_reply(rejected[-1], ds, ds.field_rejected)],
    }


def bradley_terry(row: dict, ds: DatasetConfig) -> dict:
    """bradley_terry.chat_template: system (optional), input, chosen, rejected strings."""
    prompt = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        prompt.append({"role": "system", "content": row["system"]})
    prompt += _prompt(_field(row, "input", "the user turn"), ds, "input")
    return {
        "prompt": prompt,
        "chosen": [_reply(_field(row, "chosen", "chosen"), ds, "chosen")],
        "rejected": [_reply(_field(row, "rejected", "rejected"), ds, "rejected")],
    }


def kto(row: dict, ds: DatasetConfig) -> dict:
    label = _field(row, "label", "KTO needs a label: true for a desirable completion")
    if not isinstance(label, bool):
        raise RowError(f"label is {label!r}; expected true or false")
    return {
        "prompt": _prompt(_field(row, "prompt", "the prompt"), ds, "prompt"),
        "completion": [_reply(_field(row, "completion", "the completion"), ds, "completion")],
        "label": label,
    }


def stepwise(row: dict, ds: DatasetConfig) -> dict:
    prompt = _field(row, "prompt", "the problem")
    steps = _field(row, "completions", "the steps")
    labels = _field(row, "labels", "one label per step")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError("prompt must be non-empty text")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise RowError("completions must be a non-empty list of step texts")
    if not isinstance(labels, list) or not all(isinstance(x, bool) for x in labels):
        raise RowError("labels must be a list of true/false, one per step")
    if len(labels) != len(steps):
        raise RowError(
            f"labels has {len(labels)} entries but completions has {len(steps)} "
            "steps; give one label per step"
        )
    # Dataset-level settings travel with the row; None falls back to the top level.
    return {
        "prompt": prompt,
        "completions": steps,
        "labels": labels,
        "step_separator": ds.step_separator,
        "train_on_last_step_only": ds.train_on_last_step_only,
        "max_completion_length": ds.max_completion_length,
    }


NORMALIZERS = {
    "chat_template.default": pair_default,
    "preference": pair_default,
    "chat_template.argilla_chat": pair_conversations,
    "chat_template.argilla": pair_conversations,
    "bradley_terry.chat_template": bradley_terry,
    "kto": kto,
    "stepwise_supervised": stepwise,
}


# TRL's ORPO, CPO (SimPO) and KTO trainers render the prompt themselves and raise on a
# prompt whose last message is not a user, tool or assistant turn (trl.data_utils).
RENDERS_THE_PROMPT = {"orpo", "simpo", "kto"}
BEFORE_A_REPLY = ("user", "tool", "assistant")


def _reply_follows_a_turn(row: dict, rl: str) -> None:
    prompt = row.get("prompt")
    last = prompt[-1]["role"] if isinstance(prompt, list) and prompt else None
    if last is not None and last not in BEFORE_A_REPLY:
        raise RowError(
            f"the prompt ends with a {last} message; rl: {rl} needs the reply to follow a "
            "user (or tool) turn: move that message to the start of the prompt, or drop "
            "the row (rl: dpo takes such prompts)"
        )


def read_all(cfg: Config) -> list[dict]:
    """Every row of every dataset in canonical shape; bad rows stop the run, named."""
    out: list[dict] = []
    for index, ds in enumerate(cfg.datasets):
        rows = read_rows(ds, index)
        normalize = NORMALIZERS[ds.type]
        bad = []
        for n, row in enumerate(rows, start=1):
            try:
                shaped = normalize(row, ds)
                if cfg.rl in RENDERS_THE_PROMPT:
                    _reply_follows_a_turn(shaped, cfg.rl)
                out.append(shaped)
            except RowError as exc:
                bad.append(f"row {n}: {exc}")
        if bad:
            raise bad_rows_error(index, ds, bad, len(rows))
    if not out:
        raise DataError("the datasets hold no rows")
    return out


def tokenizer_and_rows(
    cfg: Config, log, noun: str = "rows"
) -> tuple[Any, list[dict], list[dict], list[dict]]:
    """The tokenizer with the config's chat template set, and the rows split into
    training and held-out sets (for the recipes whose TRL trainer tokenizes)."""
    from toolkit.trainer.chat import resolve_template
    from toolkit.trainer.data import split_validation
    from toolkit.trainer.model import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    tokenizer.chat_template = resolve_template(cfg, tokenizer)
    rows = read_all(cfg)
    train_rows, val_rows = split_validation(
        rows, cfg.val_set_size, cfg.seed, cfg.shuffle_merged_datasets
    )
    log(f"data: {len(rows)} {noun}, {len(train_rows)} training, {len(val_rows)} held out")
    return tokenizer, rows, train_rows, val_rows
