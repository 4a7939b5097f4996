"""A generated long-tailed chat set, the input of the preprocessing and packing
benchmarks: mostly short conversations, a heavy tail of long ones (about 3 % over
2048 tokens with the tiny tokenizer), 1–8 turns, some with Qwen3 `<think>` blocks.
Deterministic for a seed."""

from __future__ import annotations

import json
import random
from pathlib import Path

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ren",
    "sut",
    "va",
    "pel",
    "dor",
    "ix",
    "na",
    "tho",
    "bel",
    "qu",
    "ar",
    "sen",
    "fi",
    "gor",
    "lam",
    "ept",
    "ul",
]


def _words(rng: random.Random, n: int) -> str:
    words = ("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n))
    text = " ".join(words)
    return text[:1].upper() + text[1:] + "."


def _length(rng: random.Random) -> int:
    """Words in one message: log-normal body, Pareto tail."""
    if rng.random() < 0.017:
        return int(130 * rng.paretovariate(1.1))
    return max(2, int(rng.lognormvariate(2.75, 0.9)))


def conversations(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = []
        if rng.random() < 0.3:
            messages.append({"role": "system", "content": _words(rng, rng.randint(5, 30))})
        for _ in range(min(8, int(rng.expovariate(0.7)) + 1)):
            messages.append({"role": "user", "content": _words(rng, _length(rng))})
            reply = _words(rng, _length(rng))
            if rng.random() < 0.25:
                reply = f"<think>\n{_words(rng, _length(rng))}\n</think>\n\n{reply}"
            messages.append({"role": "assistant", "content": reply})
        rows.append({"messages": messages})
    return rows


def write(path: Path, n: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in conversations(n, seed):
            f.write(json.dumps(row) + "\n")
    return path


def workspace(
    tmp: Path, rows: int, sequence_len: int, seed: int = 0, **settings
) -> tuple[Path, Path, Path]:
    """The generated set, the tiny model and an SFT config over them, in `tmp`:
    (config, model, data)."""
    import yaml

    from toolkit.tiny import write_tiny_model

    data = write(tmp / "chat.jsonl", rows, seed)
    model = write_tiny_model(tmp / "tiny")
    config = tmp / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(model),
                "chat_template": "qwen3",
                "sequence_len": sequence_len,
                "datasets": [{"path": str(data), "type": "chat_template"}],
                **settings,
            }
        )
    )
    return config, model, data
