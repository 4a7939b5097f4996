"""The one typed config, over axolotl's key names.

`load_config(path, overrides)` reads YAML, applies command-line overrides, and
validates everything at once: field types and ranges (pydantic), cross-field
rules (`_cross_field_problems`, the only place they live) and the files the
config points at (`_path_problems`). Every problem names its key path, the
value, what is accepted and the fix; they are raised together as one
ConfigError. Validation never changes a value. Before it, one explicit step reads
axolotl's empty values as unset and its deprecated spellings as the current keys
(`_map_deprecated`, each with a warning); after it, `derive` records values
derived from others. Values that depend on the hardware (`bf16: auto`) are the
trainer's resolve step.

This module must stay importable without torch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolkit.errors import ConfigError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]

# Data file suffixes we read, mapped to the `datasets` builder that reads them.
DATA_SUFFIXES = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
}

# Optimizers the trainer can build on every backend we ship (names as transformers spells them).
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_torch_4bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "adamw_8bit",
    "adafactor",
    "sgd",
)
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
)

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
OFF_VALUES = (None, False, "", [], {})

# Keys that only mean something for a LoRA adapter.
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_linear",
             "lora_modules_to_save", "lora_target_parameters", "lora_mlp_kernel",
             "lora_qkv_kernel", "lora_o_kernel")

# DeepSpeed configs shipped in toolkit/deepspeed/, by the name `deepspeed:` takes.
DEEPSPEED_BUNDLED = ("zero1", "zero2", "zero3")

# axolotl's plugins, by the class path its configs list, and the keys each one reads.
# Here those keys work without the plugin; listing it is accepted and checked.
PLUGINS = {
    "axolotl.integrations.liger.LigerPlugin": (
        "liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm",
        "liger_fused_linear_cross_entropy", "liger_cross_entropy"),
    "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin": ("cut_cross_entropy",),
}

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


class _Strict(BaseModel):
    # No NaN or infinity in any number: `learning_rate: .inf` is a typo, not a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class MessageMapping(_Strict):
    role: str = "role"
    content: str = "content"


class FSDPConfig(_Strict):
    """`fsdp_config` (axolotl's keys without their old `fsdp_` prefix; transformers'
    meaning). Layers are wrapped per decoder layer (Qwen3DecoderLayer,
    Qwen3MoeDecoderLayer) unless transformer_layer_cls_to_wrap says otherwise."""

    reshard_after_forward: bool = True
    offload_params: bool = False
    cpu_ram_efficient_loading: bool = False
    activation_checkpointing: bool = False
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP",
                              "NO_WRAP"] = "TRANSFORMER_BASED_WRAP"
    transformer_layer_cls_to_wrap: str | list[str] | None = None
    min_num_params: NonNegInt = 0
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = "FULL_STATE_DICT"


# Dataset types by the recipe that reads them (axolotl's names where axolotl has one).
SFT_TYPES = ("chat_template", "alpaca")
PAIR_TYPES = ("chat_template.default", "chat_template.argilla_chat", "chat_template.argilla",
              "preference")
KTO_TYPES = ("kto",)
RM_TYPES = ("bradley_terry.chat_template", *PAIR_TYPES)
PRM_TYPES = ("stepwise_supervised",)
DATASET_TYPES = tuple(dict.fromkeys(SFT_TYPES + PAIR_TYPES + KTO_TYPES + RM_TYPES + PRM_TYPES))
RL_METHODS = ("dpo", "ipo", "orpo", "simpo", "kto")


class DatasetConfig(_Strict):
    """One entry of `datasets:`. `type` says how rows are read:

    chat_template                SFT: `field_messages` conversations
    alpaca                       SFT: instruction, input (optional), output in the Alpaca
                                 prompt (no chat template); loss on the output and EOS
    chat_template.default        pairs: `field_messages` prompt, `field_chosen`/`field_rejected`
                                 (a string, a message, or a list whose last message counts)
    chat_template.argilla_chat   pairs: chosen and rejected are whole conversations
    chat_template.argilla        the same (ORPO's name in axolotl)
    preference                   TRL's conversational format: prompt, chosen, rejected
    kto                          prompt, completion, label (true = desirable)
    bradley_terry.chat_template  reward model: system, input, chosen, rejected
    stepwise_supervised          process reward model: prompt, completions, labels
    """

    path: str
    type: Literal[DATASET_TYPES] = "chat_template"  # type: ignore[valid-type]
    ds_type: Literal["json", "parquet", "arrow", "csv"] | None = None
    data_files: str | list[str] | None = None
    split: str = "train"
    # Use the shards_idx-th of `shards` contiguous pieces of the rows (axolotl's keys).
    shards: PositiveInt | None = None
    shards_idx: NonNegInt = 0
    field_messages: str = "messages"
    message_property_mappings: MessageMapping = MessageMapping()
    # Source role names mapped onto the canonical roles: {user: [human], assistant: [gpt]}.
    roles: dict[Literal["system", "user", "assistant", "tool"], list[str]] | None = None
    field_chosen: str = "chosen"
    field_rejected: str = "rejected"
    # stepwise_supervised settings may sit on the dataset, as in axolotl (else top level).
    step_separator: str | None = None
    train_on_last_step_only: bool | None = None
    max_completion_length: PositiveInt | None = None
    # Move `<think>…</think>` at the start of an assistant message into reasoning_content.
    split_thinking: bool = False
    roles_to_train: list[Literal["system", "user", "assistant", "tool"]] = ["assistant"]
    # Which end-of-turn tokens carry loss: each trained turn's, every turn's, the last one's, none.
    train_on_eos: Literal["turn", "all", "last", "none"] = "turn"


class Config(_Strict):
    """A training run. Key names and meanings follow axolotl's."""

    base_model: str
    tokenizer_config: str | None = None
    # null means the tokenizer's own template, as in axolotl.
    chat_template: Literal["tokenizer_default", "qwen3", "chatml", "jinja"] | None = None
    chat_template_jinja: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    eot_tokens: list[str] | None = None

    datasets: Annotated[list[DatasetConfig], Field(min_length=1)]
    # Where tokenized SFT data is cached, keyed by everything that decides the tokens.
    dataset_prepared_path: str | None = None
    # Processes that tokenize SFT data; unset: one per CPU (shared among local ranks).
    dataset_processes: PositiveInt | None = None
    val_set_size: Annotated[float, Field(ge=0)] = 0.0
    output_dir: str = "./outputs/model-out"
    # Write into a folder that already holds files other than a toolkit run (or into the
    # home folder); toolkit never changes those files.
    allow_existing_output_dir: bool = False
    sequence_len: PositiveInt = 2048
    # What happens to a row longer than sequence_len: dropped, cut at sequence_len, or cut
    # into pieces of sequence_len that each train; all are counted and reported.
    excess_length_strategy: Literal["drop", "truncate", "split"] = "drop"
    # Pack several rows into each sequence_len row, each seeing only itself (SFT only).
    sample_packing: bool = False
    # Pack the held-out rows too; unset follows sample_packing.
    eval_sample_packing: bool | None = None
    # Pad every batch to sequence_len (fixed shapes, e.g. for torch_compile) instead of
    # to its longest row.
    pad_to_sequence_len: bool = False
    train_on_inputs: bool = False

    # Preference training (TRL): the method and its knobs.
    rl: Literal[RL_METHODS] | None = None  # type: ignore[valid-type]
    dpo_loss_type: list[str] | None = None
    rl_beta: Annotated[float, Field(gt=0)] | None = None
    orpo_alpha: Annotated[float, Field(gt=0)] | None = None
    simpo_gamma: Annotated[float, Field(ge=0)] = 0.5
    cpo_alpha: Annotated[float, Field(ge=0)] = 0.0
    kto_desirable_weight: Annotated[float, Field(gt=0)] = 1.0
    kto_undesirable_weight: Annotated[float, Field(gt=0)] = 1.0
    max_prompt_len: PositiveInt | None = None
    # Reward models: a sequence-classification head scoring a conversation.
    reward_model: bool = False
    center_rewards_coefficient: Annotated[float, Field(ge=0)] | None = None
    num_labels: PositiveInt | None = None
    # Process reward models: a token-classification head labelling each step.
    process_reward_model: bool = False
    step_separator: str = "\n"
    train_on_last_step_only: bool = False
    max_completion_length: PositiveInt | None = None

    adapter: Literal["lora", "qlora", "none"] | None = None
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    lora_r: PositiveInt = 8
    lora_alpha: PositiveInt = 16
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    lora_target_modules: list[str] | str | None = None
    lora_target_linear: bool = False
    lora_modules_to_save: list[str] | None = None
    # nn.Parameters (not Linear layers) that get an adapter: Qwen3-MoE's fused experts,
    # e.g. [mlp.experts.gate_up_proj, mlp.experts.down_proj].
    lora_target_parameters: list[str] | None = None

    # Fully sharded data parallel over the processes of a distributed launch; with
    # fsdp_config alone, version 2.
    fsdp_version: Literal[1, 2] | None = None
    fsdp_config: FSDPConfig | None = None
    # A DeepSpeed JSON file, or toolkit's bundled zero1 / zero2 / zero3.
    deepspeed: str | None = None

    micro_batch_size: PositiveInt = 1
    # The global batch per optimizer step on one device; with micro_batch_size it
    # fixes gradient_accumulation_steps (give two of the three, as in axolotl).
    batch_size: PositiveInt | None = None
    eval_batch_size: PositiveInt | None = None
    gradient_accumulation_steps: PositiveInt = 1
    num_epochs: Annotated[float, Field(gt=0)] = 1.0
    max_steps: PositiveInt | None = None
    learning_rate: Annotated[float, Field(gt=0)] = 2e-4
    optimizer: Literal[OPTIMIZERS] = "adamw_torch"  # type: ignore[valid-type]
    lr_scheduler: Literal[LR_SCHEDULERS] = "cosine"  # type: ignore[valid-type]
    warmup_steps: NonNegInt | None = None
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0

    # flash_attention_2 needs flash-attn and a GPU of compute capability ≥ 8.0; where it is
    # missing the trainer uses sdpa (the same attention) and says so.
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    bf16: bool | Literal["auto"] = "auto"
    fp16: bool = False
    tf32: bool = False
    gradient_checkpointing: bool = False
    gradient_checkpointing_kwargs: dict[str, bool] | None = None
    # Keep saved activations in host memory between forward and backward (GPU only).
    activation_offloading: bool = False
    # auto: on where a GPU is present.
    torch_compile: bool | Literal["auto"] = False
    torch_compile_backend: str | None = None
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                                "max-autotune-no-cudagraphs"] | None = None
    # Triton kernels from liger-kernel for Qwen3 and Qwen3-MoE (GPU only).
    plugins: list[Literal[tuple(PLUGINS)]] | None = None  # type: ignore[valid-type]
    liger_rope: bool = False
    liger_rms_norm: bool = False
    liger_glu_activation: bool = False
    liger_layer_norm: bool = False
    liger_fused_linear_cross_entropy: bool = False
    liger_cross_entropy: bool = False
    # Apple's Cut Cross-Entropy: the loss without materializing the logits (CUDA only).
    cut_cross_entropy: bool = False
    # One autograd node per LoRA projection (base + adapter), for these projections.
    lora_mlp_kernel: bool = False
    lora_qkv_kernel: bool = False
    lora_o_kernel: bool = False
    # Stop when the eval loss has not improved for this many evaluations.
    early_stopping_patience: PositiveInt | None = None
    # Tokens the tokenizer must use for these roles; each must already be in its vocabulary.
    special_tokens: dict[Literal["pad_token", "eos_token", "bos_token", "unk_token"],
                         str] | None = None

    logging_steps: PositiveInt = 1
    # Evaluation on the held-out rows (val_set_size): every eval_steps, or so many times an
    # epoch; neither: once an epoch.
    eval_steps: PositiveInt | None = None
    evals_per_epoch: PositiveInt | None = None
    save_steps: PositiveInt | None = None
    saves_per_epoch: PositiveInt | None = None
    save_total_limit: PositiveInt | None = None
    # auto: continue from the newest complete checkpoint in output_dir written by this
    # same training setup; a path: from that checkpoint; false: start fresh.
    resume_from_checkpoint: Literal["auto"] | bool | str = "auto"
    seed: int = 42

    @property
    def uses_lora(self) -> bool:
        return self.adapter in ("lora", "qlora")

    @property
    def accumulation_steps(self) -> int:
        """gradient_accumulation_steps, or the one batch_size implies."""
        if self.batch_size is not None:
            return self.batch_size // self.micro_batch_size
        return self.gradient_accumulation_steps

    @property
    def recipe(self) -> str:
        """Which trainer/ recipe runs this config: sft, preference, reward or prm."""
        return recipe_of(self.model_dump())

    def digest(self) -> str:
        """A stable hash of every validated value (what run.json calls the config hash)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def training_digest(self) -> str:
        """A hash of what decides the weights up to any step: a checkpoint written under
        another one is not resumed automatically. Lengths, saving, logging and
        evaluation cadence may change between a run and its resumption."""
        free = {"max_steps", "num_epochs", "logging_steps", "save_steps", "saves_per_epoch",
                "save_total_limit", "eval_steps", "evals_per_epoch", "resume_from_checkpoint",
                "output_dir", "dataset_prepared_path", "dataset_processes"}
        data = {k: v for k, v in self.model_dump(mode="json").items() if k not in free}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where each top-level value came from."""

    config: Config
    path: Path
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# loading


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Read, override and validate a config; raise ConfigError listing every problem."""
    path = Path(path)
    raw = _read_yaml(path)
    overrides = overrides or {}
    sources = {key: "file" for key in raw}
    problems: list[str] = []
    for dotted, value in overrides.items():
        try:
            _set_dotted(raw, dotted, value)
        except (KeyError, IndexError, TypeError) as exc:
            problems.append(f"--{dotted.replace('_', '-')}: cannot override ({exc}); "
                            "use a top-level key or a path like datasets.0.path")
            continue
        sources[dotted.split(".")[0]] = "command line"

    # An empty YAML value means "not set", as in axolotl: the default applies.
    raw = _drop_nulls(raw)
    for key in [k for k, v in sources.items() if k not in raw]:
        del sources[key]
    raw, mapped = _map_deprecated(raw, sources)
    problems += _unsupported_problems(raw)
    ignored = [k for k in raw if (k in IGNORED_KEYS or k.startswith(IGNORED_PREFIXES))
               and k not in UNSUPPORTED_KEYS]
    known = {k: v for k, v in raw.items() if k not in UNSUPPORTED_KEYS and k not in ignored}
    config = None
    try:
        config = Config.model_validate(known)
    except ValidationError as exc:
        problems += _describe_all(exc.errors())
    problems += _cross_field_problems(raw)
    problems += _path_problems(known)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{path}: {len(problems)} {noun}", problems)
    for name in Config.model_fields:
        sources.setdefault(name, "default")
    warnings = mapped + [f"{key}: {IGNORED_KEYS.get(key, NOT_USED)}"
                         for key in ignored if raw[key] not in OFF_VALUES]
    if not config.uses_lora:
        warnings += [f"{key}: set to {_show(raw[key])} but adapter is {_show(raw.get('adapter'))}"
                     ", so there is no LoRA and it has no effect; set adapter: lora (or qlora) "
                     "to train an adapter, or remove the key" for key in LORA_KEYS
                     if key in raw and raw[key] not in OFF_VALUES]
    derive(config, sources)
    return LoadedConfig(config=config, path=path, sources=sources, warnings=warnings)


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass the YAML config file inside it")
    if not path.exists():
        raise ConfigError(f"{path} does not exist; pass the path of a YAML config "
                          "(examples are in configs/)")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {size:,} bytes; a config is at most "
                          f"{MAX_CONFIG_BYTES:,}: is it the right file?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); "
                          "save it as UTF-8") from None
    try:
        raw = _bounded_yaml(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}; fix the syntax "
                          "(indentation, a missing ':' or an unclosed quote)") from None
    if raw is None:
        raise ConfigError(f"{path} is empty; start from an example in configs/")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a YAML mapping of keys to values, "
                          f"got a {type(raw).__name__}; start from an example in configs/")
    return raw


# Limits on what a config may make the parser build: real configs are a few kilobytes, a
# few levels deep, with a handful of anchors. Beyond them YAML aliases can expand
# exponentially ("billion laughs") and deep nesting exhausts the stack.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000


def _bounded_yaml(text: str, path: Path) -> Any:
    """safe_load with limits: nesting depth checked on the event stream (which builds
    nothing), then the loaded document's size counted as if every alias were expanded
    (each shared node counted once per use, without expanding it)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise ConfigError(f"{path}: nested more than {MAX_DEPTH} levels deep (line "
                                  f"{mark.line + 1}); a config is a few levels deep: "
                                  "flatten it")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    raw = yaml.safe_load(text)
    sizes: dict[int, int] = {}

    def expanded(node: Any, open_: frozenset[int]) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in open_:
            raise ConfigError(f"{path}: an alias refers to itself (a recursive anchor); "
                              "write the value out")
        if key not in sizes:
            children = node.values() if isinstance(node, dict) else node
            total = 1
            for child in children:
                total += expanded(child, open_ | {key})
                if total > MAX_NODES:
                    break
            sizes[key] = total
        return sizes[key]

    if expanded(raw, frozenset()) > MAX_NODES:
        raise ConfigError(f"{path}: its aliases expand to more than {MAX_NODES:,} values "
                          "(a YAML alias bomb?); write the config without nested aliases")
    return raw


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--micro-batch-size 2 --datasets.0.path x` → {"micro_batch_size": 2, ...}.

    Values are parsed as YAML scalars (so `2` is an int, `true` a bool). A flag
    without a value means true, as in axolotl, for a key that is true or false
    (`--sample-packing`); any other key needs its value (`--learning-rate` alone is
    an error, not 1.0).
    """
    out: dict[str, Any] = {}
    problems: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --key value "
                              "(e.g. --micro-batch-size 2)")
        name = arg[2:]
        value: Any
        if "=" in name:
            name, text = name.split("=", 1)
            value = _yaml_scalar(text)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = _yaml_scalar(args[i + 1])
            i += 1
        elif _is_switch(name.replace("-", "_")):
            value = True
        else:
            problems.append(f"{arg}: needs a value (e.g. {arg} VALUE); only true/false keys "
                            "may stand alone")
            i += 1
            continue
        out[name.replace("-", "_")] = value
        i += 1
    if problems:
        raise ConfigError("command line: " + ("1 problem" if len(problems) == 1 else
                                              f"{len(problems)} problems"), problems)
    return out


def _is_switch(dotted: str) -> bool:
    """Whether the key a dotted override names holds true or false (a bare flag sets it)."""
    model: type[BaseModel] = Config
    parts = [p for p in dotted.split(".") if not p.isdigit()]
    for part in parts[:-1]:
        field_info = model.model_fields.get(part)
        nested = _nested_model(field_info.annotation) if field_info else None
        if nested is None:
            return False
        model = nested
    field_info = model.model_fields.get(parts[-1]) if parts else None
    if field_info is None:
        return True  # an unknown key: validation names it, with "did you mean"
    return "bool" in str(field_info.annotation)


def _map_deprecated(raw: dict, sources: dict[str, str]) -> tuple[dict, list[str]]:
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


def derive(config: Config | None, sources: dict[str, str]) -> None:
    """Record values derived from others (the explicit resolve step, not a validator)."""
    if config is not None and config.batch_size is not None:
        sources["gradient_accumulation_steps"] = (
            f"derived: batch_size {config.batch_size} / micro_batch_size "
            f"{config.micro_batch_size}")


def _drop_nulls(raw: dict) -> dict:
    out = {k: v for k, v in raw.items() if v is not None}
    if isinstance(out.get("datasets"), list):
        out["datasets"] = [{k: v for k, v in d.items() if v is not None}
                           if isinstance(d, dict) else d for d in out["datasets"]]
    return out


def _yaml_scalar(text: str) -> Any:
    """A command-line value read as YAML, under the same limits as a config file."""
    try:
        return _bounded_yaml(text, Path("a command-line value"))
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


# ---------------------------------------------------------------------------
# problems


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _fields_at(loc: tuple) -> list[str]:
    """The key names accepted at the level of `loc` (for 'did you mean')."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        nested = _nested_model(annotation)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-branch labels (e.g. 'bool', "literal['auto']") from a location."""
    return tuple(p for p in loc if isinstance(p, int) or not _is_branch(p))


def _is_branch(part: str) -> bool:
    return part.startswith(("literal[", "list[", "dict[", "function-")) or part in (
        "str", "int", "bool", "float", "none", "MessageMapping", "DatasetConfig", "FSDPConfig")


def _expected(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "literal_error":
        return str(ctx.get("expected"))
    if kind.startswith("greater_than") or kind.startswith("less_than"):
        sign = {"greater_than": ">", "greater_than_equal": "≥", "less_than": "<",
                "less_than_equal": "≤"}[kind]
        return f"a number {sign} {next(iter(ctx.values()))}"
    names = {"bool": "true or false", "int": "a whole number", "float": "a number",
             "string": "a string", "list": "a list", "dict": "a mapping", "model": "a mapping"}
    for prefix, words in names.items():
        if kind.startswith(prefix):
            return words
    return err["msg"][0].lower() + err["msg"][1:]


def _describe_all(errors: list[dict]) -> list[str]:
    """One line per key path; union branches that all failed are merged into one line."""
    by_key: dict[str, list[dict]] = {}
    for err in errors:
        by_key.setdefault(_key_path(_clean_loc(err["loc"])), []).append(err)
    out = []
    for key, errs in by_key.items():
        first = errs[0]
        loc = _clean_loc(first["loc"])
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1, cutoff=0.6)
            fix = f"did you mean '{close[0]}'?" if close else "remove it or check the spelling"
            out.append(f"{key}: unknown key; {fix}")
        elif first["type"] == "missing":
            out.append(f"{key}: required key is missing; add it (see configs/ for examples)")
        elif first["type"] == "too_short":
            out.append(f"{key}: is empty; give at least one entry")
        else:
            accepted = " or ".join(dict.fromkeys(_expected(e) for e in errs))
            wanted = "one of those" if " or " in accepted else accepted
            out.append(f"{key}: got {_show(first.get('input'))}; accepted: {accepted}; "
                       f"fix: set {key.split('.')[-1]} to {wanted}")
    return out


def _unsupported_problems(raw: dict) -> list[str]:
    return [f"{key}: got {_show(raw[key])}; not supported by toolkit ({why})"
            for key, why in UNSUPPORTED_KEYS.items()
            if key in raw and raw[key] not in OFF_VALUES]


def recipe_of(raw: dict) -> str:
    if raw.get("rl"):
        return "preference"
    if raw.get("reward_model") is True:
        return "reward"
    if raw.get("process_reward_model") is True:
        return "prm"
    return "sft"


ACCEPTED_TYPES = {"sft": SFT_TYPES, "reward": RM_TYPES, "prm": PRM_TYPES}


def _cross_field_problems(raw: dict) -> list[str]:
    """Rules that span fields. They read the raw values and only judge well-typed ones."""
    out = []
    modes = [k for k in ("rl", "reward_model", "process_reward_model") if raw.get(k)]
    if len(modes) > 1:
        out.append(f"{' and '.join(modes)} are all set; a run trains one thing: keep one")
    recipe = recipe_of(raw)
    if recipe == "preference":
        accepted = KTO_TYPES if raw.get("rl") == "kto" else PAIR_TYPES
    else:
        accepted = ACCEPTED_TYPES[recipe]
    datasets = raw.get("datasets")
    for i, ds in enumerate(datasets if isinstance(datasets, list) else []):
        kind = ds.get("type", "chat_template") if isinstance(ds, dict) else None
        if kind in DATASET_TYPES and kind not in accepted:
            what = f"rl: {raw['rl']}" if raw.get("rl") else recipe.upper() if recipe != "sft" \
                else "SFT (no rl, reward_model or process_reward_model)"
            out.append(f"datasets[{i}].type: {kind!r} cannot feed {what}; accepted: "
                       f"{', '.join(accepted)}")
    if raw.get("rl") and raw.get("sample_packing"):
        out.append(f"sample_packing with rl: {raw['rl']}: packing would mix the chosen and "
                   "rejected sequences; remove sample_packing")
    if raw.get("sample_packing") is True and recipe in ("reward", "prm"):
        out.append(f"sample_packing with {recipe} training: its heads score whole sequences; "
                   "remove sample_packing")
    losses = [k for k in ("cut_cross_entropy", "liger_fused_linear_cross_entropy",
                          "liger_cross_entropy") if raw.get(k) is True]
    if len(losses) > 1:
        out.append(f"{' and '.join(losses)} are all set; each replaces the cross-entropy "
                   "loss, so keep one")
    kernels = [k for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel")
               if raw.get(k) is True]
    if kernels and raw.get("adapter") not in ("lora", "qlora"):
        out.append(f"{', '.join(kernels)} need adapter: lora or qlora (got adapter: "
                   f"{_show(raw.get('adapter'))}); set them false for a full fine-tune")
    elif kernels and raw.get("lora_dropout") not in (None, 0, 0.0):
        out.append(f"{', '.join(kernels)} need lora_dropout: 0 (got "
                   f"{_show(raw.get('lora_dropout'))}); the fused path has no dropout")
    if raw.get("early_stopping_patience") and not raw.get("val_set_size"):
        out.append("early_stopping_patience needs held-out rows to watch; set val_set_size")
    if raw.get("dpo_loss_type") and raw.get("rl") not in ("dpo", "ipo"):
        out.append(f"dpo_loss_type is set but rl is {_show(raw.get('rl'))}; it needs rl: dpo")
    if raw.get("reward_model") and raw.get("num_labels") not in (None, 1):
        out.append(f"num_labels: {raw['num_labels']} with reward_model: a reward model has "
                   "one output; remove num_labels")
    adapter = raw.get("adapter")
    if adapter == "qlora" and raw.get("load_in_4bit") is not True:
        out.append("adapter: 'qlora' needs load_in_4bit: true; add `load_in_4bit: true` "
                   "or use adapter: lora")
    if raw.get("load_in_4bit") is True and adapter != "qlora":
        out.append(f"load_in_4bit: true needs adapter: qlora (got adapter: {_show(adapter)}); "
                   "a 4-bit base can only be trained through an adapter")
    if raw.get("load_in_4bit") is True and raw.get("load_in_8bit") is True:
        out.append("load_in_4bit and load_in_8bit are both true; keep one")
    given = [k for k in ("micro_batch_size", "gradient_accumulation_steps", "batch_size")
             if k in raw]
    if len(given) == 3:
        out.append("micro_batch_size, gradient_accumulation_steps and batch_size are all set; "
                   "give two of them (batch_size = micro_batch_size × "
                   "gradient_accumulation_steps)")
    elif "batch_size" in raw and isinstance(raw["batch_size"], int) and isinstance(
            raw.get("micro_batch_size", 1), int) and raw.get("micro_batch_size", 1) > 0 and \
            raw["batch_size"] % raw.get("micro_batch_size", 1):
        out.append(f"batch_size {raw['batch_size']} is not a multiple of micro_batch_size "
                   f"{raw.get('micro_batch_size', 1)}; change one of them")
    if raw.get("deepspeed") not in OFF_VALUES and any(
            raw.get(k) not in OFF_VALUES for k in ("fsdp_config", "fsdp_version")):
        out.append("deepspeed and fsdp are both set; they exclude each other: keep one")
    if raw.get("warmup_steps") is not None and raw.get("warmup_ratio") is not None:
        out.append(f"warmup_steps ({_show(raw['warmup_steps'])}) and warmup_ratio "
                   f"({_show(raw['warmup_ratio'])}) are both set; keep one")
    if raw.get("eval_steps") is not None and raw.get("evals_per_epoch") is not None:
        out.append("eval_steps and evals_per_epoch are both set; keep one")
    if raw.get("save_steps") is not None and raw.get("saves_per_epoch") is not None:
        out.append("save_steps and saves_per_epoch are both set; keep one")
    if raw.get("bf16") is True and raw.get("fp16") is True:
        out.append("bf16 and fp16 are both true; keep one (bf16: auto picks for you)")
    template = raw.get("chat_template", "tokenizer_default")
    if template == "jinja" and not raw.get("chat_template_jinja"):
        out.append("chat_template: 'jinja' needs chat_template_jinja (the template text); "
                   "add it or pick qwen3 / chatml / tokenizer_default")
    if raw.get("chat_template_jinja") and template != "jinja":
        out.append(f"chat_template_jinja is set but chat_template is {_show(template)}; "
                   "set chat_template: jinja to use it")
    val = raw.get("val_set_size")
    if isinstance(val, (int, float)) and math.isfinite(val) and val >= 1 and \
            float(val) != int(val):
        out.append(f"val_set_size: got {val}; use a fraction below 1 or a whole number of rows")
    return out


def is_local_ref(ref: str) -> bool:
    """Whether a model or dataset reference names a local path rather than a hub id or
    a URL (s3://, gs://, …)."""
    if "://" in ref:
        return False
    if ref.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(ref)):
        return True
    return Path(ref).suffix in DATA_SUFFIXES or ref.count("/") != 1


def _path_problems(raw: dict) -> list[str]:
    """Files the config points at. Reads raw values so it runs even when other keys are wrong."""
    out = []
    for key, ref in [(k, raw.get(k)) for k in ("base_model", "tokenizer_config", "output_dir")] + [
            (f"datasets[{i}].path", d.get("path")) for i, d in enumerate(
                raw.get("datasets") if isinstance(raw.get("datasets"), list) else [])
            if isinstance(d, dict)]:
        if isinstance(ref, str) and "\x00" in ref:
            out.append(f"{key}: {ref!r} contains a NUL byte, which no path can hold; "
                       "remove it")
    if out:
        return out
    for key in ("base_model", "tokenizer_config"):
        ref = raw.get(key)
        if isinstance(ref, str) and is_local_ref(ref) and not Path(ref).expanduser().exists():
            hint = (f"; for the bundled demo run `toolkit tiny-model {ref}` (or `make train`)"
                    if "tiny" in ref else
                    "; give an existing model folder or a hub id like Qwen/Qwen3-8B")
            out.append(f"{key}: {ref!r} does not exist (looked in "
                       f"{Path(ref).expanduser().resolve()}){hint}")
        elif isinstance(ref, str) and is_local_ref(ref):
            out += _model_folder_problems(key, ref)
    datasets = raw.get("datasets")
    for i, ds in enumerate(datasets if isinstance(datasets, list) else []):
        ref = ds.get("path") if isinstance(ds, dict) else None
        if not isinstance(ref, str) or not is_local_ref(ref):
            continue
        where = Path(ref).expanduser()
        if not where.exists():
            out.append(f"datasets[{i}].path: {ref!r} does not exist (looked in "
                       f"{where.resolve()}); fix the path (relative paths start at the "
                       "directory you run toolkit from)")
        elif where.is_file() and ds.get("ds_type") is None and where.suffix not in DATA_SUFFIXES:
            out.append(f"datasets[{i}].path: cannot tell the format of {ref!r}; "
                       f"set ds_type to one of {sorted(set(DATA_SUFFIXES.values()))}")
        elif where.is_file():
            out += _data_file_problems(f"datasets[{i}].path", ref, where)
    ds_file = raw.get("deepspeed")
    if isinstance(ds_file, str) and ds_file not in DEEPSPEED_BUNDLED and not Path(
            ds_file).expanduser().is_file():
        out.append(f"deepspeed: {ds_file!r} is not a file; give a DeepSpeed JSON config or "
                   f"one of toolkit's: {', '.join(DEEPSPEED_BUNDLED)}")
    out_dir = raw.get("output_dir")
    if isinstance(out_dir, str) and Path(out_dir).expanduser().is_file():
        out.append(f"output_dir: {out_dir!r} is a file; choose a directory path")
    else:
        from toolkit.outputs import output_problems

        out += output_problems(raw, local_inputs(raw))
    return out


def local_inputs(raw: dict) -> list[tuple[str, Path]]:
    """(key, absolute path) of every local file or folder a config reads."""
    refs = [(k, raw.get(k)) for k in ("base_model", "tokenizer_config")]
    datasets = raw.get("datasets")
    refs += [(f"datasets[{i}].path", d.get("path")) for i, d in enumerate(
        datasets if isinstance(datasets, list) else []) if isinstance(d, dict)]
    if raw.get("deepspeed") not in DEEPSPEED_BUNDLED:
        refs.append(("deepspeed", raw.get("deepspeed")))
    return [(key, Path(os.path.abspath(Path(ref).expanduser()))) for key, ref in refs
            if isinstance(ref, str) and ref and is_local_ref(ref)]


def _model_folder_problems(key: str, ref: str) -> list[str]:
    """A local model folder must hold a model: config.json (an adapter folder is not one)."""
    where = Path(ref).expanduser()
    if not where.is_dir():
        return [f"{key}: {ref!r} is a file; give the folder that holds the model "
                "(config.json, the weights, the tokenizer)"]
    adapter = where / "adapter_config.json"
    if adapter.is_file() and not (where / "config.json").is_file():
        try:
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            base = None
        return [f"{key}: {ref!r} is a LoRA adapter, not a model; set {key} to the model it "
                f"was trained on ({base!r} says its adapter_config.json) and merge the "
                "adapter first (`toolkit merge-lora`) if you want to train on top of it"]
    if key == "base_model" and not (where / "config.json").is_file():
        return [f"{key}: {ref!r} holds no model (no config.json); give the folder a model was "
                "saved to (save_pretrained) or a hub id like Qwen/Qwen3-8B"]
    if key == "tokenizer_config" and not any(
            (where / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        return [f"{key}: {ref!r} holds no tokenizer (no tokenizer.json or "
                "tokenizer_config.json); give the folder a tokenizer was saved to"]
    return []


def _data_file_problems(key: str, ref: str, where: Path) -> list[str]:
    """A data file that cannot be what its name says: empty, or compressed."""
    try:
        with where.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        return [f"{key}: {ref!r} cannot be read ({exc.strerror}); check its permissions"]
    if not head:
        return [f"{key}: {ref!r} is empty (0 bytes); point it at the file with your rows"]
    compressed = {b"\x1f\x8b": ("gzip", "gunzip -c"), b"PK\x03\x04": ("zip", "unzip -p"),
                  b"\x28\xb5\x2f\xfd": ("zstd", "zstd -dc"), b"BZh": ("bzip2", "bunzip2 -c")}
    for magic, (kind, tool) in compressed.items():
        if head.startswith(magic) and where.suffix != ".parquet":
            return [f"{key}: {ref!r} is {kind}-compressed but named {where.suffix}; "
                    f"decompress it first (`{tool} {where.name} > rows{where.suffix}`) and "
                    "point the path at that file"]
    return []


# Values the trainer decides on the device, at the start of a run (its resolve step).
DECIDED_AT_TRAIN_TIME = {
    "bf16": "auto: on where the GPU has bf16 in hardware (compute capability ≥ 8.0), "
            "else off",
    "tf32": "on only on an NVIDIA GPU",
    "attn_implementation": "flash_attention_2 falls back to sdpa without flash-attn or a GPU "
                           "of compute capability ≥ 8.0",
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
        if explain and key in DECIDED_AT_TRAIN_TIME and (
                key != "lora_target_modules" or value is None):
            note.append("at train time: " + DECIDED_AT_TRAIN_TIME[key])
        first, *rest = block.splitlines()
        if not note:
            lines += [first, *rest]
        elif rest:  # a value on several lines: a comment inside it would become its text
            lines += [f"# {key}: {'; '.join(note)}", first, *rest]
        else:
            lines.append(f"{first}  # {'; '.join(note)}")
    return "\n".join(lines) + "\n"
