"""What a config key means: the typed model over axolotl's key names, and the value
sets it accepts. Validators here check one field; rules that span fields are in rules.py;
axolotl's older spellings are mapped before validation (axolotl.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from toolkit.pins import Pin

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
    "adamw_torch_8bit",
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

# DeepSpeed configs shipped in toolkit/deepspeed/, by the name `deepspeed:` takes.
DEEPSPEED_BUNDLED = ("zero1", "zero2", "zero3")


class _Strict(BaseModel):
    # No NaN or infinity in any number: `learning_rate: .inf` is a typo, not a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Chat templates by name: toolkit's bundled ones, the tokenizer's own, a jinja text,
# or the tokenizer's own falling back to a bundled one (axolotl's names).
BUNDLED_TEMPLATES = ("qwen3", "qwen_25", "qwen3_5", "chatml")
CHAT_TEMPLATES = (
    "tokenizer_default",
    "jinja",
    *BUNDLED_TEMPLATES,
    *(f"tokenizer_default_fallback_{name}" for name in BUNDLED_TEMPLATES),
)
EndTokens = Literal["turn", "all", "last", "none"]


class MessageMapping(_Strict):
    """Where each message property is read from. Besides role and content, any other
    property may be mapped (e.g. reasoning_content: thinking), as in axolotl."""

    model_config = ConfigDict(extra="allow", frozen=True)
    role: str = "role"
    content: str = "content"

    def extras(self) -> dict[str, str]:
        return {k: v for k, v in (self.model_extra or {}).items() if isinstance(v, str)}


class QATSettings(_Strict):
    """Quantization-aware training (axolotl's `qat`): torchao fakes the integer
    quantization of every linear layer but the output head in the forward, so the weights
    learn to survive it. Plain PyTorch ops: any device."""

    weight_dtype: Literal["int4", "int8"] = "int8"
    activation_dtype: Literal["int4", "int8"] | None = None
    group_size: PositiveInt = 32
    # Train unquantized for this many steps first.
    fake_quant_after_n_steps: Annotated[int, Field(ge=0)] | None = None
    quantize_embedding: Literal[False] = False


class FSDPConfig(_Strict):
    """`fsdp_config` (axolotl's keys without their old `fsdp_` prefix; transformers'
    meaning). Layers are wrapped per decoder layer (Qwen3DecoderLayer,
    Qwen3MoeDecoderLayer) unless transformer_layer_cls_to_wrap says otherwise."""

    reshard_after_forward: bool = True
    offload_params: bool = False
    cpu_ram_efficient_loading: bool = False
    activation_checkpointing: bool = False
    auto_wrap_policy: Literal["TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"] = (
        "TRANSFORMER_BASED_WRAP"
    )
    transformer_layer_cls_to_wrap: str | list[str] | None = None
    min_num_params: NonNegInt = 0
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = "FULL_STATE_DICT"


# Dataset types by the recipe that reads them (axolotl's names where axolotl has one).
SFT_TYPES = ("chat_template", "alpaca")
PAIR_TYPES = (
    "chat_template.default",
    "chat_template.argilla_chat",
    "chat_template.argilla",
    "preference",
)
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
    # Row fields read beside the messages: the tool schemas given to the template, a
    # system prompt put first when the conversation has none, a message's reasoning.
    field_tools: str = "tools"
    field_system: str = "system"
    field_thinking: str = "reasoning_content"
    # A per-message boolean field that says whether that turn trains (over roles_to_train).
    message_field_training: str | None = None
    drop_system_message: bool = False
    # This dataset's own chat template (else the config's).
    chat_template: Literal[CHAT_TEMPLATES] | None = None  # type: ignore[valid-type]
    chat_template_jinja: str | None = None
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
    # Roles whose turns carry loss; source names (gpt, human) are read through `roles`.
    roles_to_train: list[str] = ["assistant"]
    # Which end tokens carry loss: each trained turn's, every turn's, the last trained
    # turn's, none. train_on_eos is for the EOS token, train_on_eot for eot_tokens
    # (unset: as train_on_eos); for Qwen3 both are <|im_end|>.
    train_on_eos: EndTokens = "turn"
    train_on_eot: EndTokens | None = None
    # A name for the dataset (axolotl passes it to `datasets` as the configuration).
    name: str | None = None
    # A Hub dataset's revision (branch, tag or commit).
    revision: str | None = None


class Config(_Strict):
    """A training run. Key names and meanings follow axolotl's."""

    base_model: str
    tokenizer_config: str | None = None
    # null means the tokenizer's own template, as in axolotl.
    chat_template: Literal[CHAT_TEMPLATES] | None = None  # type: ignore[valid-type]
    chat_template_jinja: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    eot_tokens: list[str] | None = None
    # A system message put first in conversations that start without one.
    default_system_message: str | None = None

    datasets: Annotated[list[DatasetConfig], Field(min_length=1)]
    # Where tokenized SFT data is cached, keyed by everything that decides the tokens.
    dataset_prepared_path: str | None = None
    # Processes that tokenize SFT data; unset: one per CPU (shared among local ranks).
    dataset_processes: PositiveInt | None = None
    # Shuffle each dataset's rows before they are put together, and the whole after
    # (false keeps file order: the held-out rows are the last ones, packing follows it).
    shuffle_before_merging_datasets: bool = False
    shuffle_merged_datasets: bool = True
    # Drop rows whose tokens and labels repeat an earlier row exactly.
    dataset_exact_deduplication: bool = False
    # Drop rows shorter than this many tokens.
    min_sample_len: PositiveInt | None = None
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
    # Qwen3-MoE's expert kernels (transformers' experts interface): grouped_mm, its default,
    # runs torch's grouped GEMM (CUDA sm80+, and the CPU) and falls back where it cannot;
    # batched_mm gathers each token's experts; eager loops over the experts.
    experts_implementation: Literal["grouped_mm", "batched_mm", "eager"] | None = None
    peft_use_dora: bool = False
    peft_use_rslora: bool = False
    # Per-module ranks and alphas, by module-name pattern (peft's rank_pattern/alpha_pattern).
    lora_rank_pattern: dict[str, PositiveInt] | None = None
    lora_alpha_pattern: dict[str, PositiveInt] | None = None
    # LoRA+: the B matrices learn this many times faster (and the embeddings' at this rate).
    loraplus_lr_ratio: Annotated[float, Field(gt=0)] | None = None
    loraplus_lr_embedding: Annotated[float, Field(gt=0)] | None = None
    # Full fine-tuning of only the parameters whose names match one of these regexes.
    unfrozen_parameters: list[str] | None = None
    # The model's RoPE scaling (e.g. {rope_type: yarn, factor: 4.0,
    # original_max_position_embeddings: 32768}) for contexts beyond its training length.
    rope_scaling: dict[str, Any] | None = None
    # A Hub model's revision (branch, tag or commit).
    revision_of_model: str | None = None

    # Fully sharded data parallel over the processes of a distributed launch; with
    # fsdp_config alone, version 2.
    fsdp_version: Literal[1, 2] | None = None
    # N-D parallelism (accelerate's ParallelismConfig): the product equals the launch's
    # processes; an unset dp_shard_size takes what is left (toolkit.config.parallel).
    dp_replicate_size: PositiveInt | None = None
    dp_shard_size: PositiveInt | None = None
    tensor_parallel_size: PositiveInt | None = None
    context_parallel_size: PositiveInt | None = None
    fsdp_config: FSDPConfig | None = None
    qat: QATSettings | None = None
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
    # A number of steps, or below 1 a fraction of them (as transformers 5 reads it).
    warmup_steps: Annotated[float, Field(ge=0)] | None = None
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] | None = None
    adam_beta1: Annotated[float, Field(ge=0, lt=1)] | None = None
    adam_beta2: Annotated[float, Field(ge=0, lt=1)] | None = None
    adam_epsilon: Annotated[float, Field(gt=0)] | None = None
    # Extra optimizer arguments: "key=value,key=value" or a mapping.
    optim_args: str | dict[str, Any] | None = None
    lr_scheduler_kwargs: dict[str, Any] | None = None
    # Cosine decay to this fraction of the peak learning rate (lr_scheduler: cosine)…
    cosine_min_lr_ratio: Annotated[float, Field(ge=0, le=1)] | None = None
    # …reached at this fraction of the steps, then held there.
    cosine_constant_lr_ratio: Annotated[float, Field(gt=0, le=1)] | None = None
    # Noise added to the embeddings in training (NEFTune).
    neftune_noise_alpha: Annotated[float, Field(gt=0)] | None = None
    # Stop when the training loss stays above this for loss_watchdog_patience logs in a row.
    loss_watchdog_threshold: Annotated[float, Field(gt=0)] | None = None
    loss_watchdog_patience: PositiveInt = 3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0

    # What runs is decided per GPU (toolkit.compat.attention) and recorded in run.json:
    # flash_attention_2/4 take FlashAttention-4 on sm90+ where it is installed, flash-attn 2
    # where it is, else sdpa; packed rows on a GPU from sm80 take PyTorch's varlen kernel.
    attn_implementation: Literal[
        "sdpa", "eager", "flash_attention_2", "flash_attention_4", "flex_attention"
    ] = "sdpa"
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
    torch_compile_mode: (
        Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None
    ) = None
    # Triton kernels from liger-kernel for Qwen3 and Qwen3-MoE (GPU only).
    # axolotl's plugins by class path. toolkit needs none of them: it reads their keys
    # itself (Liger's and Cut Cross Entropy's are honoured; each other plugin's keys are
    # answered one by one in axolotl_keys.yaml), so any of axolotl's may be listed.
    plugins: list[str] | None = None
    liger_rope: bool = False
    liger_rms_norm: bool = False
    liger_glu_activation: bool = False
    liger_layer_norm: bool = False
    liger_fused_linear_cross_entropy: bool = False
    liger_cross_entropy: bool = False
    # Apple's Cut Cross-Entropy: the loss without materializing the logits (CUDA only).
    cut_cross_entropy: bool = False
    # The loss over slices of the sequence, each slice's logits recomputed in the backward:
    # long sequences never hold (L, vocab) float32 logits (any device; SFT).
    chunked_cross_entropy: bool = False
    chunked_cross_entropy_num_chunks: PositiveInt = 8
    # Each dense MLP over slices of the sequence, recomputed in the backward (axolotl's
    # ALST TiledMLP): the (L, intermediate) activations of one slice at a time. Unset
    # shards: ceil(sequence_len / hidden_size).
    tiled_mlp: bool = False
    tiled_mlp_num_shards: PositiveInt | None = None
    # One autograd node per LoRA projection (base + adapter), for these projections.
    lora_mlp_kernel: bool = False
    lora_qkv_kernel: bool = False
    lora_o_kernel: bool = False
    # Stop when the eval loss has not improved for this many evaluations.
    early_stopping_patience: PositiveInt | None = None
    # Tokens the tokenizer must use for these roles; each must already be in its vocabulary.
    special_tokens: (
        dict[Literal["pad_token", "eos_token", "bos_token", "unk_token"], str] | None
    ) = None

    logging_steps: PositiveInt = 1
    # Evaluation on the held-out rows (val_set_size): every eval_steps, or so many times an
    # epoch; neither: once an epoch.
    eval_steps: PositiveInt | None = None
    evals_per_epoch: PositiveInt | None = None
    save_steps: PositiveInt | None = None
    saves_per_epoch: PositiveInt | None = None
    save_total_limit: PositiveInt | None = None
    # transformers' strategies; unset: from eval_steps / evals_per_epoch and save_steps /
    # saves_per_epoch (else once an epoch).
    eval_strategy: Literal["no", "steps", "epoch"] | None = None
    save_strategy: Literal["no", "steps", "epoch", "best"] | None = None
    save_only_model: bool = False
    save_first_step: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    # auto: continue from the newest complete checkpoint in output_dir written by this
    # same training setup; a path: from that checkpoint; false: start fresh.
    resume_from_checkpoint: Literal["auto"] | bool | str = "auto"
    # NumPy's seed is 32 bits unsigned (transformers seeds it with this value).
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 42
    # Multi-process launches: the collective timeout (seconds) and DDP's unused-parameter search.
    # At most 2^31-1 s (68 years): a timedelta, then milliseconds in int64, must hold it.
    ddp_timeout: Annotated[int, Field(gt=0, le=2**31 - 1)] = 1800
    ddp_find_unused_parameters: bool | None = None

    # Experiment trackers (credentials by environment name only: WANDB_API_KEY, …).
    report_to: list[Literal["wandb", "mlflow", "tensorboard"]] | None = None
    # unset: on when wandb_project is set (mlflow: mlflow_experiment_name), as in axolotl.
    use_wandb: bool | None = None
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_name: str | None = None
    wandb_run_id: str | None = None
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    wandb_watch: Literal["false", "gradients", "parameters", "all"] | bool | None = None
    wandb_log_model: Literal["false", "checkpoint", "end"] | bool | None = None
    use_mlflow: bool | None = None
    mlflow_tracking_uri: str | None = None
    mlflow_experiment_name: str | None = None
    mlflow_run_name: str | None = None
    hf_mlflow_log_artifacts: bool = False
    use_tensorboard: bool = False

    # Publishing, from the host with HF_TOKEN (toolkit.host.publish): the result to
    # hub_model_id when the run completes, the merged model to hub_model_id-merged.
    hub_model_id: str | None = None
    push_to_hub: bool | None = None  # unset: push when hub_model_id is set, as in axolotl
    hub_private_repo: bool | None = None
    hub_revision: str | None = None
    # axolotl's pushing cadence; toolkit pushes once, when the run completes.
    hub_strategy: Literal["end", "every_save", "checkpoint", "all_checkpoints"] | None = None

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
        free = {*WEIGHT_NEUTRAL, "max_steps", "num_epochs", "output_dir"}
        data = {k: v for k, v in self.model_dump(mode="json").items() if k not in free}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# Trackers and publishing: where a run's results are reported, never what it trains.
REPORTING_KEYS = (
    "hub_model_id",
    "push_to_hub",
    "hub_private_repo",
    "hub_revision",
    "hub_strategy",
    "report_to",
    "use_wandb",
    "wandb_project",
    "wandb_entity",
    "wandb_name",
    "wandb_run_id",
    "wandb_mode",
    "wandb_watch",
    "wandb_log_model",
    "use_mlflow",
    "mlflow_tracking_uri",
    "mlflow_experiment_name",
    "mlflow_run_name",
    "hf_mlflow_log_artifacts",
    "use_tensorboard",
)


# Keys that cannot change the trained weights: how often a run logs, evaluates and
# saves, where it caches and reports, how it waits. A finished run whose config differs
# only in these is the same run (record.config_differences); a checkpoint may be
# resumed across them (training_digest, which also frees the run's length).
WEIGHT_NEUTRAL = (
    "logging_steps",
    "dataset_processes",
    "resume_from_checkpoint",
    "save_steps",
    "saves_per_epoch",
    "save_total_limit",
    "save_strategy",
    "save_only_model",
    "save_first_step",
    "eval_steps",
    "evals_per_epoch",
    "eval_strategy",
    "dataset_prepared_path",
    "ddp_timeout",
    "loss_watchdog_threshold",
    "loss_watchdog_patience",
    *REPORTING_KEYS,
)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus where each top-level value came from."""

    config: Config
    path: Path
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # axolotl settings that need several GPUs or GPU kernels (key: what it is), which
    # the run checks when it starts.
    hardware: dict[str, str] = field(default_factory=dict)
    # The Hub inputs fetched on the host, each pinned to a commit.
    hub: tuple[Pin, ...] = ()


def recipe_of(raw: dict) -> str:
    if raw.get("rl"):
        return "preference"
    if raw.get("reward_model") is True:
        return "reward"
    if raw.get("process_reward_model") is True:
        return "prm"
    return "sft"


def is_local_ref(ref: str) -> bool:
    """Whether a model or dataset reference names a local path rather than a hub id or
    a URL (s3://, gs://, …)."""
    if "://" in ref:
        return False
    if ref.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(ref)):
        return True
    if Path(ref).suffix in DATA_SUFFIXES or ref.count("/") != 1:
        return True
    # What the Hub cannot name (huggingface_hub's validate_repo_id): `.cache/tiny-qwen3`
    # is a folder not made yet, not a repository to look up.
    return not all(HUB_NAME.fullmatch(part) for part in ref.split("/"))


# A Hub namespace or repository name: letters, digits, - _ . (at most 96), neither
# starting nor ending with - or ., with no -- or .. inside.
HUB_NAME = re.compile(r"(?!.*(--|\.\.))[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?")
