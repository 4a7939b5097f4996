"""`toolkit validate`'s output: every value, and with --explain where it came from."""

from __future__ import annotations

import yaml

from toolkit.config.schema import LoadedConfig

# Values the trainer decides on the device, at the start of a run (its resolve step).
DECIDED_AT_TRAIN_TIME = {
    "bf16": "auto: on where the GPU has bf16 in hardware (compute capability ≥ 8.0), else off",
    "tf32": "on only on an NVIDIA GPU",
    "attn_implementation": "decided per GPU: flash_attention_2/4 take FlashAttention-4 on "
    "sm90+ where installed, else flash-attn 2, else sdpa; packed rows on sm80+ take the "
    "varlen kernel; on the CPU sdpa",
    "lora_target_modules": "unset: every attention and MLP projection (all-linear with "
    "lora_target_linear)",
}


def dump_resolved(loaded: LoadedConfig, explain: bool = False) -> str:
    """The validated config as YAML, each top-level key annotated with its source. With
    `explain`, every value's source (file, command line, default, mapped, derived) and
    what the trainer will still decide from the hardware."""
    data = loaded.config.model_dump(mode="json")
    data["gradient_accumulation_steps"] = loaded.config.accumulation_steps
    lines = [f"# {loaded.path} (validated; '# default' marks values not set in the file)"]
    for key, value in data.items():
        block = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True).rstrip()
        source = loaded.sources.get(key, "default")
        note = [] if source == "file" and not explain else [source]
        if (
            explain
            and key in DECIDED_AT_TRAIN_TIME
            and (key != "lora_target_modules" or value is None)
        ):
            note.append("at train time: " + DECIDED_AT_TRAIN_TIME[key])
        first, *rest = block.splitlines()
        if not note:
            lines += [first, *rest]
        elif rest:  # a value on several lines: a comment inside it would become its text
            lines += [f"# {key}: {'; '.join(note)}", first, *rest]
        else:
            lines.append(f"{first}  # {'; '.join(note)}")
    return "\n".join(lines) + "\n"
