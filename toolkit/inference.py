"""Answer prompts with what a run trained: the merged model (output_dir/merged) when
there is one, else the base with the trained adapter (or the fully fine-tuned model),
through the chat template the run saved, streaming tokens as they come.

    toolkit inference configs/tiny-cpu-demo.yaml --prompt "What is 7 plus 7?"

Without --prompt it reads prompts from standard input, one per line, keeping the
conversation (an empty line or end of input ends it)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from toolkit.config import LoadedConfig
from toolkit.runs import model_source


def load(loaded: LoadedConfig, use: str) -> tuple[Any, Any]:
    """The model (in eval mode) and the tokenizer the run saved."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, where = model_source(loaded, use)
    cfg = loaded.config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(where)
    model: Any
    if kind == "adapter":
        from peft import PeftModel

        from toolkit.pins import model_kwargs

        pins = {p.key: p for p in loaded.hub}
        pinned = model_kwargs(cfg.revision_of_model, cfg.base_model, pins)
        base = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype, **pinned)
        model = PeftModel.from_pretrained(base, where)
    else:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    print(f"inference: the {kind} model in {where} on {device}", file=sys.stderr)
    return model.to(device).eval(), tokenizer


def answer(model, tokenizer, messages: list[dict], settings: dict) -> str:
    """Generate one reply to `messages`, printing it token by token; return its text."""
    import torch
    from transformers import TextStreamer

    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **settings["template"]
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sampling = (
        {"do_sample": True, "temperature": settings["temperature"]}
        if settings["temperature"] > 0
        else {"do_sample": False}
    )
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=settings["max_new_tokens"],
            streamer=streamer,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def run(
    loaded: LoadedConfig,
    prompts: Iterable[str],
    use: str = "auto",
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> list[str]:
    """Answer each prompt in turn, as one conversation; return the replies."""
    import transformers

    transformers.set_seed(loaded.config.seed)
    model, tokenizer = load(loaded, use)
    settings = {
        "template": loaded.config.chat_template_kwargs or {},
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
    }
    system = loaded.config.default_system_message
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    replies = []
    for prompt in prompts:
        messages.append({"role": "user", "content": prompt})
        reply = answer(model, tokenizer, messages, settings)
        messages.append({"role": "assistant", "content": reply})
        replies.append(reply)
    return replies


def stdin_prompts(interactive: bool) -> Iterable[str]:
    """Prompts typed (or piped) one per line, until an empty line or end of input."""
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return
        yield line.rstrip("\n")
