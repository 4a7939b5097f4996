"""Training throughput on one GPU: toolkit's SFT recipe against a plain transformers
Trainer + PEFT baseline, in the same run, on random-init Qwen3-shaped models (no
weights can be downloaded on the device machines).

    python bench/gpu_train.py [--shapes 0.6b,8b] [--steps 30] [--warmup 5] [--seq 2048]
                              [--runs NAME,...] [--out DIR] [--json FILE] [--no-baseline]

For each shape it saves a random-init bf16 model (Qwen3's published config:
hidden size, layers, heads, GQA, MLP width, vocab 151936) and a generated
long-tailed chat set, then runs, each for --steps optimizer steps, LoRA r16 on every
linear projection, micro_batch_size 1 with 8-step accumulation at --seq tokens:

  baseline            transformers Trainer + peft, rows padded per batch, sdpa
  toolkit             toolkit train, unpacked
  toolkit+packing     sample_packing (the attention compat.attention picks: varlen
                      kernel or FlashAttention-4, no dense mask)
  toolkit+packing+dense          the same with the varlen kernels hidden: sdpa over a
                                 dense block mask, for the varlen/dense ratio
  toolkit+packing+liger          + liger rope/rms_norm/swiglu/fused linear CE
  toolkit+packing+liger+compile  + torch_compile

and prints one line each: tokens/s (non-padding tokens, after --warmup steps),
MFU (toolkit's FLOP count, dense bf16 peak from toolkit/compat.yaml), peak GPU memory,
and the ratio of tokens/s and memory to the baseline; --json writes every figure. Targets
(8B at 2048 packed): ≥ 45 % MFU, ≥ 1.5× the baseline's tokens/s, ≤ 0.6× its peak memory,
packed+varlen no slower than packed+dense. Needs no `datasets`: the device machines do
not have it (bench/device/check.sh runs this there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longtail  # noqa: E402

SHAPES = {  # config.json of Qwen/Qwen3-0.6B and Qwen/Qwen3-8B
    "0.6b": dict(
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
        tie_word_embeddings=False,
    ),
}
WARMUP = 5
# toolkit's CLI from this checkout, installed or not; HIDE_VARLEN first hides the varlen
# and flash kernels from the attention decision (the dense-mask comparison run).
LAUNCH = (
    "import sys, toolkit.trainer.model as m\n"
    "if sys.argv[1] == 'dense': m.attention_kernels = lambda: frozenset()\n"
    "from toolkit.cli import main\n"
    "sys.exit(main(sys.argv[2:]))"
)


def build_model(shape: str, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from toolkit.tiny import build_tokenizer

    if (out / "config.json").exists():
        return out
    tokenizer = build_tokenizer()
    config = Qwen3Config(
        vocab_size=151936,
        max_position_embeddings=40960,
        rope_theta=1e6,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def baseline(model_dir: Path, data: Path, steps: int, seq: int, warmup: int) -> dict:
    """A plain Trainer + PEFT run, as a user without toolkit would write it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for line in data.read_text().splitlines()[: steps * 8 + 8]:
        messages = json.loads(line)["messages"]
        ids = tok.apply_chat_template(messages, tokenize=True)["input_ids"][:seq]
        rows.append({"input_ids": ids, "labels": ids})
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, attn_implementation="sdpa"
    ).cuda()
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup:
                torch.cuda.synchronize()
                self.start = (time.perf_counter(), state.num_input_tokens_seen)

    clock = Clock()
    args = TrainingArguments(
        output_dir=str(model_dir.parent / "baseline"),
        max_steps=steps,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=8,
        bf16=True,
        learning_rate=2e-4,
        logging_steps=10,
        report_to="none",
        save_strategy="no",
        include_num_input_tokens_seen="non_padding",
        gradient_checkpointing=True,
    )
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        callbacks=[clock],
        data_collator=DataCollatorForSeq2Seq(tok, padding=True),
    )
    trainer.train()
    torch.cuda.synchronize()
    then, before = clock.start
    rate = (trainer.state.num_input_tokens_seen - before) / (time.perf_counter() - then)
    return {"tokens_per_second": rate, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def toolkit_run(
    name: str, model_dir: Path, data: Path, steps: int, seq: int, warmup: int, **options
) -> dict:
    mode = "dense" if options.pop("_dense", False) else "as-decided"
    out = model_dir.parent / name
    config = model_dir.parent / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(model_dir),
                "chat_template": "qwen3",
                "sequence_len": seq,
                "excess_length_strategy": "truncate",
                "datasets": [{"path": str(data), "type": "chat_template"}],
                "adapter": "lora",
                "lora_r": 16,
                "lora_alpha": 32,
                "lora_target_linear": True,
                "micro_batch_size": 1,
                "gradient_accumulation_steps": 8,
                "max_steps": steps,
                "learning_rate": 2e-4,
                "bf16": "auto",
                "gradient_checkpointing": True,
                "attn_implementation": "flash_attention_2",
                "logging_steps": 1,
                "save_steps": 10_000,
                "output_dir": str(out),
                "resume_from_checkpoint": False,
                **options,
            }
        )
    )
    res = subprocess.run(
        [sys.executable, "-c", LAUNCH, mode, "train", str(config), "--runtime", "local"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if res.returncode != 0:
        return {"error": (res.stdout + res.stderr).strip().splitlines()[-1]}
    run = json.loads((out / "run.json").read_text())
    after = [m for m in run["metrics_history"] if m["step"] > warmup and m["tokens_per_second"]]
    rate = sum(m["tokens_per_second"] for m in after) / len(after) if after else None
    mfus = [m["mfu"] for m in after if m.get("mfu")]
    return {
        "tokens_per_second": rate,
        "mfu": sum(mfus) / len(mfus) if mfus else None,
        "peak_memory_gib": run["peak_memory_gib"],
        "optimizations": run["resolved"]["optimizations"],
        "attention": run["resolved"]["attn_implementation"],
        "attention_why": run["resolved"].get("attention", ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="0.6b,8b")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--runs", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--out", default="/tmp/toolkit-gpu-bench")
    parser.add_argument("--json", default="", help="write every figure to this file")
    parser.add_argument(
        "--no-baseline", action="store_true", help="toolkit's runs only (no ratios to it)"
    )
    args = parser.parse_args()
    root = Path(args.out)
    data = longtail.write(root / "chat.jsonl", 4000)
    liger = {
        "liger_rope": True,
        "liger_rms_norm": True,
        "liger_glu_activation": True,
        "liger_fused_linear_cross_entropy": True,
    }
    runs = [
        ("toolkit", {}),
        ("toolkit+packing", {"sample_packing": True}),
        ("toolkit+packing+dense", {"sample_packing": True, "_dense": True}),
        ("toolkit+packing+liger", {"sample_packing": True, **liger}),
        ("toolkit+packing+liger+compile", {"sample_packing": True, **liger, "torch_compile": True}),
    ]
    if args.runs:
        wanted = args.runs.split(",")
        runs = [(name, options) for name, options in runs if name in wanted]
    figures: dict = {"seq": args.seq, "steps": args.steps, "warmup": args.warmup, "shapes": {}}

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")

    for shape in args.shapes.split(","):
        model_dir = build_model(shape, root / shape / "model")
        base = (
            None
            if args.no_baseline
            else baseline(model_dir, data, args.steps, args.seq, args.warmup)
        )
        got_shape = figures["shapes"][shape] = {"baseline": base}
        save()
        if base:
            print(
                f"[{shape}] baseline: {base['tokens_per_second']:,.0f} tokens/s, peak "
                f"{base['peak_memory_gib']:.1f} GiB",
                flush=True,
            )
        for name, options in runs:
            got = toolkit_run(
                name, model_dir, data, args.steps, args.seq, args.warmup, **dict(options)
            )
            got_shape[name] = got
            if "error" in got:
                print(f"[{shape}] {name}: failed: {got['error']}", flush=True)
                save()
                continue
            speed = memory = ""
            if base:
                got["speed_vs_baseline"] = got["tokens_per_second"] / base["tokens_per_second"]
                got["memory_vs_baseline"] = got["peak_memory_gib"] / base["peak_memory_gib"]
                speed = f" ({got['speed_vs_baseline']:.2f}x)"
                memory = f" ({got['memory_vs_baseline']:.2f}x)"
            save()
            mfu = f"{100 * got['mfu']:.1f}%" if got["mfu"] else "n/a"
            print(
                f"[{shape}] {name}: {got['tokens_per_second']:,.0f} tokens/s{speed}, MFU "
                f"{mfu}, peak {got['peak_memory_gib']:.1f} GiB{memory}, attention "
                f"{got['attention']}; {got['optimizations']}",
                flush=True,
            )
        packed, dense = got_shape.get("toolkit+packing"), got_shape.get("toolkit+packing+dense")
        if packed and dense and "error" not in packed and "error" not in dense:
            ratio = packed["tokens_per_second"] / dense["tokens_per_second"]
            got_shape["varlen_over_dense"] = ratio
            save()
            print(f"[{shape}] packed: varlen / dense-mask tokens/s = {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
