"""axolotl's keys as data: the ones we know and do not implement, the ones that cannot
change what is trained, and the older spellings read as the current keys (each with a
warning). This runs before validation and is the only place a config's keys are
rewritten."""

from __future__ import annotations

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
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_linear",
             "lora_modules_to_save", "lora_target_parameters", "lora_mlp_kernel",
             "lora_qkv_kernel", "lora_o_kernel")

# Keys that cannot change what is trained (experiment trackers, run names, axolotl's
# own switches, memory-only settings): accepted, with a warning saying why.
IGNORED_PREFIXES = ("wandb_", "mlflow_", "comet_")
NOT_USED = "not used by toolkit (it cannot change what is trained); ignored"
IGNORED_KEYS = {
    **dict.fromkeys(("strict", "debug", "local_rank",
                     "eval_max_new_tokens", "eval_table_size",
                     "use_tensorboard", "hub_model_id", "remove_unused_columns",
                     "dataloader_num_workers", "dataloader_pin_memory",
                     "dataloader_prefetch_factor", "save_safetensors"), NOT_USED),
    "model_type": "ignored: the recipe picks the model class (causal LM, or a classification "
                  "head for reward_model / process_reward_model)",
    "tokenizer_type": "ignored: the tokenizer is loaded with AutoTokenizer",
}


def map_deprecated(raw: dict, sources: dict[str, str]) -> tuple[dict, list[str]]:
    """axolotl's older spellings, mapped to the current keys, each with a warning. This
    runs before validation and is the only place a config's keys are rewritten."""
    raw, notes = dict(raw), []

    def move(old: str, new: str, value, why: str = "") -> None:
        raw.pop(old, None)
        if new in raw and raw[new] != value:
            notes.append(f"{old}: deprecated and overridden by {new}: {raw[new]!r}")
            return
        raw[new] = value
        sources[new] = f"mapped from {old} ({sources.pop(old, 'file')})"
        notes.append(f"{old}: deprecated; read as {new}: {value!r}{why}")

    if raw.get("flash_attention") is True:
        move("flash_attention", "attn_implementation", "flash_attention_2")
    elif raw.get("flash_attention") is False:
        raw.pop("flash_attention")
    if raw.get("sdp_attention") is True:
        move("sdp_attention", "attn_implementation", "sdpa")
    elif raw.get("sdp_attention") is False:
        raw.pop("sdp_attention")
    if raw.get("eager_attention") is True:
        move("eager_attention", "attn_implementation", "eager")
    fsdp_list = raw.pop("fsdp", None)
    if isinstance(fsdp_list, str):
        fsdp_list = fsdp_list.split()
    if isinstance(fsdp_list, list) and fsdp_list:
        fsdp_cfg = dict(raw.get("fsdp_config") or {})
        if "shard_grad_op" in fsdp_list:
            fsdp_cfg.setdefault("reshard_after_forward", False)
        if "offload" in fsdp_list:
            fsdp_cfg.setdefault("offload_params", True)
        raw["fsdp_config"] = fsdp_cfg
        if raw.get("fsdp_version") is None:
            raw["fsdp_version"] = 1
            sources["fsdp_version"] = "mapped from fsdp (a list means FSDP1)"
        notes.append(f"fsdp: {fsdp_list} is deprecated; read as fsdp_version: "
                     f"{raw['fsdp_version']} with fsdp_config (FSDP2 is fsdp_version: 2)")
    elif fsdp_list not in OFF_VALUES:
        raw["fsdp"] = fsdp_list  # neither a list nor a string: refused by name
    if isinstance(raw.get("fsdp_config"), dict):
        renamed = {k: k.removeprefix("fsdp_") for k in raw["fsdp_config"] if
                   k.startswith("fsdp_")}
        if renamed:
            raw["fsdp_config"] = {renamed.get(k, k): v for k, v in raw["fsdp_config"].items()}
            notes.append("fsdp_config: the fsdp_ prefix is deprecated; read "
                         + ", ".join(f"{old} as {new}" for old, new in renamed.items()))
        if "version" in raw["fsdp_config"]:  # axolotl's fsdp_config.fsdp_version
            version = raw["fsdp_config"].pop("version")
            if raw.get("fsdp_version") is None:
                raw["fsdp_version"] = version
                sources["fsdp_version"] = "mapped from fsdp_config.fsdp_version"
            notes.append(f"fsdp_config.fsdp_version: read as fsdp_version: {version!r}")
        if "sharding_strategy" in raw["fsdp_config"]:
            strategy = raw["fsdp_config"].pop("sharding_strategy")
            if strategy in ("FULL_SHARD", "SHARD_GRAD_OP"):
                raw["fsdp_config"]["reshard_after_forward"] = strategy == "FULL_SHARD"
                notes.append(f"fsdp_config.sharding_strategy: {strategy} is FSDP1's; read as "
                             f"reshard_after_forward: {strategy == 'FULL_SHARD'}")
            else:
                raw["fsdp_config"]["sharding_strategy"] = strategy  # refused by name
        for gone in ("use_orig_params", "sync_module_states", "limit_all_gathers",
                     "forward_prefetch", "backward_prefetch"):
            if gone in raw["fsdp_config"]:
                value = raw["fsdp_config"].pop(gone)
                notes.append(f"fsdp_config.{gone}: {value!r} is not used (transformers and "
                             "accelerate choose it for FSDP); ignored")
    if raw.get("fsdp_config") and raw.get("fsdp_version") is None:
        raw["fsdp_version"] = 2
        sources["fsdp_version"] = "derived: fsdp_config without fsdp_version"
    plugins = raw.get("plugins")
    if (isinstance(plugins, list) and "cut_cross_entropy" not in raw
            and "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin" in plugins):
        # axolotl's plugin turns its key on by default.
        raw["cut_cross_entropy"] = True
        sources["cut_cross_entropy"] = "derived: the CutCrossEntropyPlugin is listed"
    if raw.get("gradient_checkpointing") == "offload":
        raw["gradient_checkpointing"] = True
        if raw.get("activation_offloading") in (None, False):
            raw["activation_offloading"] = True
            sources["activation_offloading"] = "mapped from gradient_checkpointing: offload"
        notes.append("gradient_checkpointing: 'offload' is deprecated; read as "
                     "gradient_checkpointing: true with activation_offloading: true")
    datasets = raw.get("datasets")
    for i, ds in enumerate(datasets if isinstance(datasets, list) else []):
        if not isinstance(ds, dict):
            continue
        for old, part in (("message_field_role", "role"), ("message_field_content", "content")):
            if old in ds:
                mapping = dict(ds.get("message_property_mappings") or {})
                mapping.setdefault(part, ds.pop(old))
                ds["message_property_mappings"] = mapping
                notes.append(f"datasets[{i}].{old}: deprecated; read as "
                             f"message_property_mappings.{part}: {mapping[part]!r}")
    return raw, notes


def drop_nulls(raw: dict) -> dict:
    out = {k: v for k, v in raw.items() if v is not None}
    if isinstance(out.get("datasets"), list):
        out["datasets"] = [{k: v for k, v in d.items() if v is not None}
                           if isinstance(d, dict) else d for d in out["datasets"]]
    return out


def unsupported_problems(raw: dict) -> list[str]:
    return [f"{key}: got {show(raw[key])}; not supported by toolkit ({why})"
            for key, why in UNSUPPORTED_KEYS.items()
            if key in raw and raw[key] not in OFF_VALUES]
