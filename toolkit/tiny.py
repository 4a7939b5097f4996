"""The bundled tiny default: a random-init Qwen3 (or Qwen3-MoE), a small BPE
tokenizer with Qwen3's special tokens and chat template, and a small chat set.

No model hub is reachable from where toolkit is developed and tested, so the demo
and the tests build their model here instead of downloading one. The shapes
follow Qwen3's (GQA, q/k norms, SwiGLU) at a size that trains in seconds on CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from toolkit.templates import template_text

# Qwen3's added tokens, in Qwen3's order. The first three are "special" (skipped
# when decoding); the tag tokens are plain added tokens, as in Qwen3.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAG_TOKENS = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]

# Qwen2/Qwen3's pre-tokenizer split pattern.
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_NAMES = ["Ada", "Bo", "Cyd", "Dee", "Eli", "Fay", "Gus", "Hal"]
_COLORS = ["red", "blue", "green", "amber", "violet", "white"]
_CAPITALS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Norway": "Oslo",
    "Chile": "Santiago",
    "Egypt": "Cairo",
    "Spain": "Madrid",
}


def demo_conversations(n: int = 96, seed: int = 0) -> list[dict]:
    """A deterministic chat set in OpenAI `messages` form with learnable patterns."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            turns = [("user", f"What is {a} plus {b}?"), ("assistant", f"{a} plus {b} is {a + b}.")]
        elif kind == 1:
            country = rng.choice(sorted(_CAPITALS))
            turns = [
                ("user", f"What is the capital of {country}?"),
                ("assistant", f"The capital of {country} is {_CAPITALS[country]}."),
            ]
        elif kind == 2:
            word = rng.choice(_COLORS)
            turns = [
                ("user", f"Spell {word} backwards."),
                ("assistant", word[::-1]),
                ("user", "And forwards?"),
                ("assistant", word),
            ]
        else:
            name = rng.choice(_NAMES)
            turns = [
                ("system", "You are a polite assistant."),
                ("user", f"My name is {name}."),
                ("assistant", f"Nice to meet you, {name}!"),
            ]
        rows.append({"messages": [{"role": r, "content": c} for r, c in turns]})
    return rows


def demo_preferences(n: int = 64, seed: int = 0) -> list[dict]:
    """Preference pairs (chat_template.default) whose chosen reply is always the right
    sum and the rejected one always a refusal: a difference a tiny model can learn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append(
            {
                "messages": [{"role": "user", "content": f"What is {a} plus {b}?"}],
                "chosen": f"{a} plus {b} is {a + b}.",
                "rejected": "I do not know.",
            }
        )
    return rows


def demo_stepwise(n: int = 48, seed: int = 0) -> list[dict]:
    """stepwise_supervised rows: arithmetic steps, each labelled right or wrong."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        good = rng.random() < 0.5
        second = a + b + c if good else a + b + c + rng.randint(1, 3)
        rows.append(
            {
                "prompt": f"What is {a} plus {b} plus {c}?",
                "completions": [f"{a} plus {b} is {a + b}.", f"{a + b} plus {c} is {second}."],
                "labels": [True, good],
            }
        )
    return rows


def write_demo_dataset(path: str | Path, n: int = 96, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in demo_conversations(n, seed):
            f.write(json.dumps(row) + "\n")
    return path


def build_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE with Qwen3's pre-tokenizer, special tokens and chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [m["content"] for row in demo_conversations(400, seed=1) for m in row["messages"]]
    corpus += ["The quick brown fox jumps over the lazy dog.", "Hello, how are you today?"]
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(TAG_TOKENS)
    fast.chat_template = template_text("qwen3")
    return fast


def build_model(
    tokenizer, moe: bool = False, seed: int = 0, hidden: int = 64, layers: int = 2
) -> Any:
    """A random-init Qwen3 (or Qwen3-MoE) sized to the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config: Qwen3Config | Qwen3MoeConfig
    if moe:
        config = Qwen3MoeConfig(
            intermediate_size=2 * hidden,
            moe_intermediate_size=hidden // 2,
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            **common,
        )
    else:
        config = Qwen3Config(intermediate_size=2 * hidden, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def write_tiny_model(out_dir: str | Path, moe: bool = False, seed: int = 0) -> Path:
    """Build and save the tiny model and tokenizer into `out_dir` (created if missing)."""
    from toolkit.trainer.files import make_written_readable, snapshot
    from toolkit.trainer.quiet import quiet_libraries

    quiet_libraries()
    out_dir = Path(out_dir)
    before = snapshot(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, moe=moe, seed=seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    make_written_readable(out_dir, before)
    return out_dir
