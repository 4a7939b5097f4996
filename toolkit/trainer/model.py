"""Model and tokenizer loading, the hardware resolve step, and adapters.

`resolve(cfg)` is the one place where values are derived from the hardware
(`bf16: auto`, tf32, the device); its result is logged and recorded in run.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.compat import VARLEN
from toolkit.config import Config
from toolkit.errors import UsageError
from toolkit.trainer.optimize import (
    Machine,
    apply_activation_offloading,
    apply_chunked_cross_entropy,
    apply_cut_cross_entropy,
    apply_liger,
    apply_qat,
    apply_tiled_mlp,
    decide,
)

# Linear layers a LoRA targets by default: Qwen3's attention and MLP projections.
# In Qwen3-MoE (transformers 5) the experts are fused 3-D parameters, not Linear
# layers, so there the list reaches the attention projections only.
QWEN3_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Resolved:
    device: str
    device_name: str
    bf16: bool
    fp16: bool
    tf32: bool
    dtype: str
    lora_target_modules: list[str] | str | None
    attn_implementation: str = "sdpa"
    attention: str = ""  # why that kernel (compat.attention)
    notes: tuple[str, ...] = ()  # what the resolve step decided against the config
    # Each speed or memory option the config asks for: "on…" or "off: why" (optimize.decide).
    optimizations: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def resolve(cfg: Config) -> Resolved:
    """Derive hardware-dependent settings. bf16 is judged by compute capability from
    compat.yaml's table (toolkit.compat.bf16_in_hardware), not by
    `torch.cuda.is_bf16_supported()`, which counts emulation (true on a T4)."""
    import torch

    from toolkit import compat
    from toolkit.compat import bf16_in_hardware

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    hip = getattr(torch.version, "hip", None)
    capable = cuda and (
        bool(hip) or bf16_in_hardware("{}.{}".format(*torch.cuda.get_device_capability(0))) is True
    )
    if cfg.bf16 == "auto":
        bf16 = capable and not cfg.fp16
    else:
        bf16 = bool(cfg.bf16)
        if bf16 and cuda and not capable:
            raise UsageError(
                f"bf16: true but {name} has no bf16 support in hardware "
                "(compute capability < 8.0); set bf16: false and fp16: true"
            )
    if cfg.fp16 and not cuda:
        raise UsageError(
            "fp16: true needs a GPU (mixed precision on CPU is bf16 only); set fp16: false"
        )
    tf32 = bool(cfg.tf32) and cuda and not hip
    dtype = "bfloat16" if bf16 else "float16" if cfg.fp16 else "float32"
    if cfg.uses_lora:
        targets = cfg.lora_target_modules or (
            "all-linear" if cfg.lora_target_linear else QWEN3_LINEAR
        )
    else:
        targets = None
    chosen = compat.attention(
        cfg.attn_implementation,
        _gpu(name, bool(hip)) if cuda else None,
        half=dtype != "float32",
        packed=cfg.sample_packing and cfg.recipe == "sft",
        installed=attention_kernels(),
    )
    attn, notes = chosen.kernel, []
    if attn != cfg.attn_implementation:
        notes.append(f"attn_implementation: {cfg.attn_implementation} → {attn}: {chosen.why}")
    decisions = decide(cfg, Machine.here(cuda, bool(hip)))
    return Resolved(
        device="cuda" if cuda else "cpu",
        device_name=name,
        bf16=bf16,
        fp16=cfg.fp16,
        tf32=tf32,
        dtype=dtype,
        lora_target_modules=targets,
        attn_implementation=attn,
        attention=chosen.why,
        notes=tuple(notes),
        optimizations=decisions,
    )


def _gpu(name: str, hip: bool) -> Any:
    """GPU 0 as compat's decisions read it."""
    import torch

    from toolkit.compat import Gpu

    props = torch.cuda.get_device_properties(0)
    if hip:
        return Gpu(0, "amd", name, gfx=getattr(props, "gcnArchName", "").split(":")[0] or None)
    return Gpu(0, "nvidia", name, compute_cap="{}.{}".format(*torch.cuda.get_device_capability(0)))


def attention_kernels() -> frozenset[str]:
    """The attention kernels this environment has, as compat.attention names them."""
    from importlib import metadata, util

    def has(dist: str) -> bool:
        try:
            metadata.version(dist)
            return True
        except metadata.PackageNotFoundError:
            return False

    found = {"flash_attn_4"} if has("flash-attn-4") else set()
    if has("flash-attn") or has("flash_attn"):
        found.add("flash_attn")
    if util.find_spec("torch.nn.attention.varlen"):
        found.add("varlen")
    return frozenset(found)


def hub_kwargs(cfg: Config, ref: str) -> dict:
    """from_pretrained keywords for a model the config names: a Hub model at the commit
    the run's plan pinned, read from the cache alone (toolkit.pins)."""
    from toolkit.pins import model_kwargs, used

    return model_kwargs(cfg.revision_of_model, ref, used())


# Qwen3's tokenizer classes, as AutoTokenizer picks them for these model types from
# tokenizer_config.json's tokenizer_class (transformers 5;
# tests/trainer/test_tokenizer_load.py checks the choice against AutoTokenizer's).
QWEN3_MODEL_TYPES = frozenset({"qwen3", "qwen3_moe"})
QWEN3_TOKENIZER_CLASSES = ("Qwen2Tokenizer", "TokenizersBackend")


def load_tokenizer(cfg: Config) -> Any:
    source = cfg.tokenizer_config or cfg.base_model
    kwargs = hub_kwargs(cfg, source)
    cls = qwen3_tokenizer_class(source, kwargs)
    if cls is not None:
        tokenizer = cls.from_pretrained(source, _from_auto=True, **kwargs)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    vocab = tokenizer.get_vocab()
    for role, token in (cfg.special_tokens or {}).items():
        if token not in vocab:
            raise UsageError(
                f"special_tokens.{role}: {token!r} is not in the tokenizer's "
                "vocabulary; adding tokens is not supported. Use one it has "
                "(Qwen3: <|endoftext|>, <|im_end|>) or remove the key"
            )
        setattr(tokenizer, role, token)
    if tokenizer.pad_token is None:
        # Qwen3 ships <|endoftext|> as its pad token; fall back to EOS elsewhere.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def qwen3_tokenizer_class(source: str, kwargs: dict) -> Any:
    """The class AutoTokenizer loads for a Qwen3 or Qwen3-MoE model's own tokenizer,
    found from its two JSON files; None for any other (AutoTokenizer then decides).

    AutoTokenizer's import loads transformers' model configuration code, which imports
    torch: about a second, and 180 MB in each tokenizing process, for `toolkit
    preprocess`, which needs neither (bench/README.md, Data at scale)."""
    import transformers
    from transformers.utils import cached_file

    from toolkit.safe_io import read_json

    def read(name: str) -> Any:
        path = cached_file(
            source,
            name,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **kwargs,
        )
        return read_json(path, 16 << 20, follow=True) if path else None

    try:
        config, tokenizer_config = read("config.json"), read("tokenizer_config.json")
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or not isinstance(tokenizer_config, dict):
        return None
    if config.get("model_type") not in QWEN3_MODEL_TYPES:
        return None
    if "auto_map" in config or "auto_map" in tokenizer_config:
        return None
    name = str(tokenizer_config.get("tokenizer_class") or "").removesuffix("Fast")
    if name not in QWEN3_TOKENIZER_CLASSES:
        return None
    # transformers 5's Rust-backed classes; another version decides through AutoTokenizer.
    cls, backend = (
        getattr(transformers, name, None),
        getattr(transformers, "TokenizersBackend", None),
    )
    return cls if isinstance(cls, type) and backend and issubclass(cls, backend) else None


# The model class for each kind of head a recipe trains.
HEADS = {
    "causal_lm": ("AutoModelForCausalLM", "CAUSAL_LM"),
    "sequence_classification": ("AutoModelForSequenceClassification", "SEQ_CLS"),
    "token_classification": ("AutoModelForTokenClassification", "TOKEN_CLS"),
}


def load_base(cfg: Config, resolved: Resolved, head: str = "causal_lm", num_labels: int = 0) -> Any:
    """The base model in the resolved dtype (4-bit for QLoRA, 8-bit if asked), no adapter."""
    import torch
    import transformers

    dtype = getattr(torch, resolved.dtype)
    if resolved.attn_implementation == VARLEN:
        from toolkit.trainer import attention

        attention.register()
    kwargs: dict = {
        "dtype": dtype,
        "attn_implementation": resolved.attn_implementation,
        **hub_kwargs(cfg, cfg.base_model),
    }
    if cfg.rope_scaling:
        kwargs["config"] = rope_scaled_config(cfg)
    if cfg.experts_implementation:
        kwargs["experts_implementation"] = cfg.experts_implementation
    if num_labels:
        kwargs["num_labels"] = num_labels
    if cfg.adapter == "qlora":
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    elif cfg.load_in_8bit:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
    auto = getattr(transformers, HEADS[head][0])
    if head == "causal_lm":
        apply_liger(cfg.base_model, resolved.optimizations, hub_kwargs(cfg, cfg.base_model))
    model = auto.from_pretrained(cfg.base_model, **kwargs)
    check_lora_targets(model, resolved.lora_target_modules)
    if resolved.device == "cuda" and "quantization_config" not in kwargs:
        model = model.to("cuda")
    model.config.use_cache = False
    freeze_except(model, cfg.unfrozen_parameters)
    callback = apply_qat(model, cfg)
    if callback is not None:  # steps.py adds it to the recipe's trainer
        model.toolkit_callbacks = [callback]
    return model


def rope_scaled_config(cfg: Config) -> Any:
    """The model's config with rope_scaling applied (transformers 5 keeps RoPE settings
    in rope_parameters; the older rope_scaling spelling is read into it)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(cfg.base_model, **hub_kwargs(cfg, cfg.base_model))
    scaling = dict(cfg.rope_scaling or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.update(scaling)
    config.rope_parameters = params
    return config


def freeze_except(model, patterns: list[str] | None) -> None:
    """unfrozen_parameters: train only the parameters whose names match a pattern."""
    if not patterns:
        return
    import re

    compiled = [re.compile(p) for p in patterns]
    kept = 0
    for name, param in model.named_parameters():
        param.requires_grad = any(p.search(name) for p in compiled)
        kept += param.requires_grad
    if not kept:
        raise UsageError(
            f"unfrozen_parameters: {patterns} matches no parameter of {cfg_name(model)}; "
            "its names look like model.layers.0.mlp.down_proj.weight"
        )


def check_lora_targets(model, targets: list[str] | str | None) -> None:
    """Every lora_target_modules entry must name modules of this model, as peft matches
    them (the full name, or its last dotted parts); peft itself ignores an entry that
    matches nothing as long as another one matches, so a typo would train fewer modules."""
    import re

    if targets is None or targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        missing = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if type(m).__name__.startswith("Linear") and n
            }
        )
        raise UsageError(
            f"lora_target_modules: {', '.join(map(repr, missing))} "
            f"{'matches' if len(missing) == 1 else 'match'} no module of "
            f"{cfg_name(model)}; its projections are {', '.join(linear)}. "
            "Fix the spelling, or use lora_target_linear: true for all of them"
        )


def cfg_name(model) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def lora_config(cfg: Config, resolved: Resolved, head: str = "causal_lm") -> Any:
    """The adapter the config asks for, or None for a full fine-tune. A classification
    head (`score`) is trained in full beside the adapter (peft's SEQ_CLS/TOKEN_CLS do this)."""
    if not cfg.uses_lora:
        return None
    from peft import LoraConfig

    # A classification head (Qwen3 calls it `score`) is new and trained in full, so no
    # adapter goes on it; "all-linear" would otherwise put one there too.
    exclude = ["score"] if head != "causal_lm" else None
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=resolved.lora_target_modules,
        exclude_modules=exclude,
        modules_to_save=cfg.lora_modules_to_save,
        task_type=HEADS[head][1],
        target_parameters=cfg.lora_target_parameters,
        use_dora=cfg.peft_use_dora,
        use_rslora=cfg.peft_use_rslora,
        rank_pattern=dict(cfg.lora_rank_pattern or {}),
        alpha_pattern=dict(cfg.lora_alpha_pattern or {}),
    )


def load_model(
    cfg: Config, resolved: Resolved, head: str = "causal_lm", num_labels: int = 0
) -> Any:
    """The base with the adapter attached (for recipes that drive transformers' Trainer)."""
    model = load_base(cfg, resolved, head, num_labels)
    if head == "causal_lm":
        model = apply_cut_cross_entropy(model, resolved.optimizations)
        model = apply_chunked_cross_entropy(
            model, resolved.optimizations, cfg.chunked_cross_entropy_num_chunks
        )
    shards = cfg.tiled_mlp_num_shards or -(-cfg.sequence_len // model.config.hidden_size)
    apply_tiled_mlp(model, resolved.optimizations, shards)
    lora = lora_config(cfg, resolved, head)
    if lora is not None:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if cfg.adapter == "qlora" or cfg.load_in_8bit:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=cfg.gradient_checkpointing
            )
        elif cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, lora)
    finish_model(cfg, resolved, model)
    return model


def finish_model(cfg: Config, resolved: Resolved, model) -> None:
    """What acts on the finished (adapter-wrapped) model: trainable weights in the compute
    dtype, fused LoRA projections, activation offloading. TRL's trainers wrap the adapter
    themselves, so their recipes call this on `trainer.model`."""
    from toolkit.trainer.lora_kernels import fuse_lora_projections

    match_trainable_dtype(cfg, resolved, model)
    fuse_lora_projections(model, resolved.optimizations)
    apply_activation_offloading(model, resolved.optimizations)


def match_trainable_dtype(cfg: Config, resolved: Resolved, model) -> None:
    """Undo TRL's cast of every trainable weight to bf16 under QLoRA where the compute
    dtype is not bf16 (CPU, pre-Ampere GPUs): a fully trained head such as a reward
    model's `score` would otherwise meet float32 activations and fail."""
    if cfg.adapter != "qlora" or resolved.dtype == "bfloat16":
        return
    import torch

    dtype = getattr(torch, resolved.dtype)
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)
