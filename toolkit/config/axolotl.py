"""axolotl's keys as data: the ones we know and do not implement, the ones that cannot
change what is trained, and the older spellings read as the current keys (each with a
warning). This runs before validation and is the only place a config's keys are
rewritten."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolkit.config.problems import show

# axolotl keys we know but do not implement yet. Holding their "off" value (null,
# false, empty) they ask for nothing and are accepted; any other value is refused
# by name with what to do instead.
UNSUPPORTED_KEYS = {
    "xformers_attention": "xformers is not supported; set it false (sdpa is used)",
    "sdp_attention": "sdpa is already the attention used; remove the key",
    "trust_remote_code": "remote code is never run; Qwen3 needs none. Set it false",
    "group_by_length": "batches are drawn in random order; set it false",
    "lora_model_dir": "starting from a trained adapter is not implemented yet; remove the key",
    "fsdp": "give FSDP as fsdp_version: 2 with fsdp_config (axolotl's list form, e.g. "
    "fsdp: [full_shard, auto_wrap], is read too)",
    "use_sonicmoe": "SonicMoE kernels are not implemented; remove it (Qwen3-MoE experts run "
    "through transformers' fused expert weights)",
    "nvfp4_merge_aware": "NVFP4 checkpoints are not supported; remove it and train on a bf16 "
    "base (QLoRA for 4-bit)",
    "fused_attn_kernel": "axolotl's fused attention kernel is not implemented; remove it "
    "(attention runs through flash-attention or sdpa, see "
    "attn_implementation)",
}
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

# Keys that cannot change what is trained (experiment trackers, run names, axolotl's
# own switches, memory-only settings): accepted, with a warning saying why.
IGNORED_PREFIXES = ("wandb_", "mlflow_", "comet_")
NOT_USED = "not used by toolkit (it cannot change what is trained); ignored"
IGNORED_KEYS = {
    **dict.fromkeys(
        (
            "strict",
            "debug",
            "local_rank",
            "eval_max_new_tokens",
            "eval_table_size",
            "use_tensorboard",
            "hub_model_id",
            "remove_unused_columns",
            "dataloader_num_workers",
            "dataloader_pin_memory",
            "dataloader_prefetch_factor",
            "save_safetensors",
        ),
        NOT_USED,
    ),
    "model_type": "ignored: the recipe picks the model class (causal LM, or a classification "
    "head for reward_model / process_reward_model)",
    "tokenizer_type": "ignored: the tokenizer is loaded with AutoTokenizer",
}


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


def _attention(m: _Mapping) -> None:
    """flash_attention / sdp_attention / eager_attention: true → attn_implementation."""
    for old, new in (
        ("flash_attention", "flash_attention_2"),
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


FAMILIES = (_attention, _fsdp_list, _fsdp_config, _plugins, _checkpointing, _message_fields)


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


def unsupported_problems(raw: dict) -> list[str]:
    return [
        f"{key}: got {show(raw[key])}; not supported by toolkit ({why})"
        for key, why in UNSUPPORTED_KEYS.items()
        if key in raw and raw[key] not in OFF_VALUES
    ]
