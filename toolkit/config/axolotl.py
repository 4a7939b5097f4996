"""axolotl's keys: the older spellings read as the current keys (each with a warning;
one small function per family), then every key sorted by what toolkit does with it —
validated, warned about, refused, or kept for the hardware check — as
axolotl_keys.yaml says (inventory.py). This runs before validation and is the only
place a config's keys are rewritten."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from toolkit.config.problems import show

OFF_VALUES: tuple[object, ...] = (None, False, "", [], {})

# Keys that only mean something for a LoRA adapter.
LORA_KEYS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_target_linear",
    "lora_modules_to_save",
    "lora_target_parameters",
    "lora_mlp_kernel",
    "lora_qkv_kernel",
    "lora_o_kernel",
)


@dataclass
class _Mapping:
    """A config being read: its raw values, where each came from, and the warnings so far."""

    raw: dict
    sources: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def move(self, old: str, new: str, value: Any) -> None:
        self.raw.pop(old, None)
        if new in self.raw and self.raw[new] != value:
            self.notes.append(f"{old}: deprecated and overridden by {new}: {self.raw[new]!r}")
            return
        self.raw[new] = value
        self.sources[new] = f"mapped from {old} ({self.sources.pop(old, 'file')})"
        self.notes.append(f"{old}: deprecated; read as {new}: {value!r}")


# axolotl's other names for a key: read as the key, with a warning.
RENAMES = {
    "dataset_num_proc": "dataset_processes",
    "model_revision": "revision_of_model",
    "noisy_embedding_alpha": "neftune_noise_alpha",
    "evaluation_strategy": "eval_strategy",
    "dpo_beta": "rl_beta",
    "bfloat16": "bf16",
    "float16": "fp16",
    "liger_swiglu": "liger_glu_activation",
    "sequence_parallel_degree": "context_parallel_size",
}


def _renames(m: _Mapping) -> None:
    for old, new in RENAMES.items():
        if old in m.raw:
            m.move(old, new, m.raw[old])
    auto = m.raw.get("auto_resume_from_checkpoints")
    if isinstance(auto, bool):
        m.raw.pop("auto_resume_from_checkpoints")
        if "resume_from_checkpoint" not in m.raw:
            m.raw["resume_from_checkpoint"] = "auto" if auto else False
            m.sources["resume_from_checkpoint"] = "mapped from auto_resume_from_checkpoints"
        m.notes.append(
            f"auto_resume_from_checkpoints: read as resume_from_checkpoint: "
            f"{m.raw['resume_from_checkpoint']!r}"
        )
    final = m.raw.pop("fsdp_final_state_dict_type", None)
    if final is not None:
        fsdp = m.raw.get("fsdp_config")
        fsdp = dict(fsdp) if isinstance(fsdp, dict) else {}
        fsdp.setdefault("state_dict_type", final)
        m.raw["fsdp_config"] = fsdp
        m.notes.append(
            f"fsdp_final_state_dict_type: read as fsdp_config.state_dict_type: {final!r}"
        )


# axolotl's bundled DeepSpeed files (deepspeed_configs/ in its repository), read as
# toolkit's bundled stage of the same name when the path is not a file here.
DEEPSPEED_FILES = {
    "zero1.json": "zero1",
    "zero1_torch_compile.json": "zero1",
    "zero2.json": "zero2",
    "zero2_torch_compile.json": "zero2",
    "zero3.json": "zero3",
    "zero3_bf16.json": "zero3",
}


def _deepspeed(m: _Mapping) -> None:
    """`deepspeed: deepspeed_configs/zero1.json` (axolotl's examples) → zero1."""
    value = m.raw.get("deepspeed")
    if not isinstance(value, str) or os.path.isfile(os.path.expanduser(value)):
        return
    name = value.replace("\\", "/").rsplit("/", 1)[-1]
    if name in DEEPSPEED_FILES and "deepspeed_configs" in value:
        m.move("deepspeed", "deepspeed", DEEPSPEED_FILES[name])
        m.notes[-1] = (
            f"deepspeed: {value!r} is axolotl's bundled file, not a file here; read as "
            f"toolkit's bundled {DEEPSPEED_FILES[name]} (give a path to use your own)"
        )


def _attention(m: _Mapping) -> None:
    """flash_attention / flex_attention / sdp_attention / eager_attention: true →
    attn_implementation."""
    for old, new in (
        ("flash_attention", "flash_attention_2"),
        ("flex_attention", "flex_attention"),
        ("sdp_attention", "sdpa"),
        ("eager_attention", "eager"),
    ):
        if m.raw.get(old) is True:
            m.move(old, "attn_implementation", new)
        elif m.raw.get(old) is False:
            m.raw.pop(old)


def _fsdp_list(m: _Mapping) -> None:
    """`fsdp: [full_shard, auto_wrap, offload]` (FSDP1's list) → fsdp_version + fsdp_config."""
    raw = m.raw
    fsdp_list = raw.pop("fsdp", None)
    if isinstance(fsdp_list, str):
        fsdp_list = fsdp_list.split()
    if not (isinstance(fsdp_list, list) and fsdp_list):
        if fsdp_list not in OFF_VALUES:
            raw["fsdp"] = fsdp_list  # neither a list nor a string: refused by name
        return
    fsdp_cfg = dict(raw.get("fsdp_config") or {})
    if "shard_grad_op" in fsdp_list:
        fsdp_cfg.setdefault("reshard_after_forward", False)
    if "offload" in fsdp_list:
        fsdp_cfg.setdefault("offload_params", True)
    raw["fsdp_config"] = fsdp_cfg
    if raw.get("fsdp_version") is None:
        raw["fsdp_version"] = 1
        m.sources["fsdp_version"] = "mapped from fsdp (a list means FSDP1)"
    m.notes.append(
        f"fsdp: {fsdp_list} is deprecated; read as fsdp_version: "
        f"{raw['fsdp_version']} with fsdp_config (FSDP2 is fsdp_version: 2)"
    )


def _fsdp_config(m: _Mapping) -> None:
    """fsdp_config's older keys: the fsdp_ prefix, fsdp_version inside it, FSDP1's
    sharding_strategy, and knobs transformers now chooses."""
    raw = m.raw
    if isinstance(raw.get("fsdp_config"), dict):
        fsdp = raw["fsdp_config"]
        renamed = {k: k.removeprefix("fsdp_") for k in fsdp if k.startswith("fsdp_")}
        if renamed:
            fsdp = raw["fsdp_config"] = {renamed.get(k, k): v for k, v in fsdp.items()}
            m.notes.append(
                "fsdp_config: the fsdp_ prefix is deprecated; read "
                + ", ".join(f"{old} as {new}" for old, new in renamed.items())
            )
        if "version" in fsdp:  # axolotl's fsdp_config.fsdp_version
            version = fsdp.pop("version")
            if raw.get("fsdp_version") is None:
                raw["fsdp_version"] = version
                m.sources["fsdp_version"] = "mapped from fsdp_config.fsdp_version"
            m.notes.append(f"fsdp_config.fsdp_version: read as fsdp_version: {version!r}")
        if "sharding_strategy" in fsdp:
            strategy = fsdp.pop("sharding_strategy")
            if strategy in ("FULL_SHARD", "SHARD_GRAD_OP"):
                fsdp["reshard_after_forward"] = strategy == "FULL_SHARD"
                m.notes.append(
                    f"fsdp_config.sharding_strategy: {strategy} is FSDP1's; read as "
                    f"reshard_after_forward: {strategy == 'FULL_SHARD'}"
                )
            else:
                fsdp["sharding_strategy"] = strategy  # refused by name
        for gone in (
            "use_orig_params",
            "sync_module_states",
            "limit_all_gathers",
            "forward_prefetch",
            "backward_prefetch",
        ):
            if gone in fsdp:
                value = fsdp.pop(gone)
                m.notes.append(
                    f"fsdp_config.{gone}: {value!r} is not used (transformers and "
                    "accelerate choose it for FSDP); ignored"
                )
    if raw.get("fsdp_config") and raw.get("fsdp_version") is None:
        raw["fsdp_version"] = 2
        m.sources["fsdp_version"] = "derived: fsdp_config without fsdp_version"


def _plugins(m: _Mapping) -> None:
    """axolotl's Cut Cross Entropy plugin turns its key on by default."""
    plugins = m.raw.get("plugins")
    if (
        isinstance(plugins, list)
        and "cut_cross_entropy" not in m.raw
        and "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin" in plugins
    ):
        m.raw["cut_cross_entropy"] = True
        m.sources["cut_cross_entropy"] = "derived: the CutCrossEntropyPlugin is listed"


def _checkpointing(m: _Mapping) -> None:
    """gradient_checkpointing: offload → checkpointing with activation offloading."""
    if m.raw.get("gradient_checkpointing") != "offload":
        return
    m.raw["gradient_checkpointing"] = True
    if m.raw.get("activation_offloading") in (None, False):
        m.raw["activation_offloading"] = True
        m.sources["activation_offloading"] = "mapped from gradient_checkpointing: offload"
    m.notes.append(
        "gradient_checkpointing: 'offload' is deprecated; read as "
        "gradient_checkpointing: true with activation_offloading: true"
    )


def _message_fields(m: _Mapping) -> None:
    """A dataset's message_field_role / message_field_content → message_property_mappings."""
    datasets = m.raw.get("datasets")
    for i, ds in enumerate(datasets if isinstance(datasets, list) else []):
        if not isinstance(ds, dict):
            continue
        for old, part in (("message_field_role", "role"), ("message_field_content", "content")):
            if old in ds:
                mapping = dict(ds.get("message_property_mappings") or {})
                mapping.setdefault(part, ds.pop(old))
                ds["message_property_mappings"] = mapping
                m.notes.append(
                    f"datasets[{i}].{old}: deprecated; read as "
                    f"message_property_mappings.{part}: {mapping[part]!r}"
                )


FAMILIES = (
    _renames,
    _deepspeed,
    _attention,
    _fsdp_list,
    _fsdp_config,
    _plugins,
    _checkpointing,
    _message_fields,
)


def map_deprecated(raw: dict, sources: dict[str, str]) -> tuple[dict, list[str]]:
    """axolotl's older spellings, mapped to the current keys, each with a warning. This
    runs before validation and is the only place a config's keys are rewritten; one
    small function per family of keys."""
    m = _Mapping(dict(raw), sources)
    for family in FAMILIES:
        family(m)
    return m.raw, m.notes


def drop_nulls(raw: dict) -> dict:
    out = {k: v for k, v in raw.items() if v is not None}
    if isinstance(out.get("datasets"), list):
        out["datasets"] = [
            {k: v for k, v in d.items() if v is not None} if isinstance(d, dict) else d
            for d in out["datasets"]
        ]
    return out


@dataclass
class Triage:
    """A config's keys sorted by what toolkit does with them (axolotl_keys.yaml)."""

    known: dict  # what validation reads: toolkit's keys, and any it does not know
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Keys whose settings need hardware or processes: checked when the run starts.
    hardware: dict[str, str] = field(default_factory=dict)


def _is_off(value: Any) -> bool:
    """Null, false, empty, or a size of 1: the setting asks for nothing."""
    return value in OFF_VALUES or (value == 1 and not isinstance(value, bool))


def triage(raw: dict, fields: set[str], dataset_fields: set[str]) -> Triage:
    """Sort a (mapped) config's keys: toolkit's own go to validation; axolotl's others are
    warned about, refused, or kept for the hardware check, as the inventory says."""
    from toolkit.config import inventory

    out = Triage(known={})
    book = {**inventory.inventory()["plugins"], **inventory.inventory()["top"]}
    for key, value in raw.items():
        if key in fields or key not in book:
            out.known[key] = value
        else:
            _sort(key, key, value, book[key], out)
    datasets = out.known.get("datasets")
    if isinstance(datasets, list):
        per_dataset = inventory.inventory()["datasets"]
        kept = []
        for i, ds in enumerate(datasets):
            if isinstance(ds, dict):
                ds = dict(ds)
                for key in [k for k in ds if k not in dataset_fields and k in per_dataset]:
                    _sort(f"datasets[{i}].{key}", key, ds.pop(key), per_dataset[key], out)
            kept.append(ds)
        out.known["datasets"] = kept
    return out


def _sort(where: str, key: str, value: Any, entry: dict, out: Triage) -> None:
    kind, why = entry["class"], entry.get("why", "")
    # `accepts`: the values that ask for what toolkit does anyway (axolotl's default).
    if _is_off(value) or value in entry.get("accepts", ()):
        return
    if kind == "ignored":
        out.warnings.append(f"{where}: {why}; ignored")
    elif kind == "speed":
        out.warnings.append(
            f"{where}: a speed or memory setting toolkit does not apply yet ({why}); "
            "the run trains the same without it"
        )
    elif kind == "hardware":
        out.hardware[where] = f"{where}: {show(value)}: {why}"
    else:  # refused, or a mapped key whose value no mapping reads
        out.problems.append(f"{where}: got {show(value)}; not supported by toolkit ({why})")


def check_hardware(loaded: Any, gpus: int) -> None:
    """Raise ConfigError naming each setting of `loaded` that needs hardware, if any."""
    from toolkit.errors import ConfigError

    problems = hardware_refusals(loaded.hardware, gpus)
    if problems:
        noun = "setting" if len(problems) == 1 else "settings"
        raise ConfigError(f"{loaded.path}: {len(problems)} {noun} this run cannot use", problems)


def hardware_refusals(hardware: dict[str, str], gpus: int) -> list[str]:
    """What a run cannot do on this machine, one line each: the settings that need
    several GPUs (parallelism) or GPU kernels (QAT, FP8)."""
    where = (
        f"this machine has {gpus} GPU{'s' if gpus != 1 else ''}"
        if gpus
        else "this machine has no GPU"
    )
    return [
        f"{line}; {where}, and toolkit does not run it yet on any hardware. Remove the key "
        "(or set it to 1 / false) to train here"
        for line in hardware.values()
    ]
