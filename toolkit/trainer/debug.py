"""`toolkit preprocess --debug`: a few tokenized rows with the trained tokens marked, as
axolotl's --debug shows them — green on a terminal, between [[ and ]] when piped."""

from __future__ import annotations

from collections.abc import Iterable

from toolkit.trainer.chat import IGNORE_INDEX

GREEN, DIM, RESET = "\033[32m", "\033[2m", "\033[0m"
OPEN, CLOSE = "[[", "]]"


def show_example(tokenizer, ids: Iterable[int], labels: Iterable[int], color: bool) -> str:
    """The row's text, decoded token by token, trained runs marked."""
    out: list[str] = []
    run: list[int] = []
    trained = False

    def flush() -> None:
        if not run:
            return
        text = tokenizer.decode(run)
        if trained:
            out.append(f"{GREEN}{text}{RESET}" if color else f"{OPEN}{text}{CLOSE}")
        else:
            out.append(f"{DIM}{text}{RESET}" if color else text)
        run.clear()

    for token, label in zip(ids, labels, strict=True):
        if (label != IGNORE_INDEX) != trained:
            flush()
            trained = label != IGNORE_INDEX
        run.append(token)
    flush()
    return "".join(out)


def show_examples(tokenizer, examples, count: int, color: bool) -> list[str]:
    """Lines for the first `count` examples: a heading each, then its marked text."""
    legend = "trained tokens in green" if color else f"trained tokens between {OPEN} and {CLOSE}"
    lines = [f"debug: the first {min(count, len(examples))} rows as tokenized ({legend})"]
    for n, example in enumerate(examples[:count], start=1):
        ids, labels = list(example.input_ids), list(example.labels)
        trained = sum(label != IGNORE_INDEX for label in labels)
        lines.append(f"--- row {n}: {len(ids)} tokens, {trained} trained")
        lines.append(show_example(tokenizer, ids, labels, color))
    return lines
