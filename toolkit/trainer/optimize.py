"""Speed and memory options: which ones take effect on this machine, and applying them.

`decide` is a pure function from the config and the machine's facts to one line per
option the config asks for: "on", or "off: <why>". The run logs those lines and
run.json records them, so what was actually used is never a guess. An option that
would change the result (the optimizer) is refused instead of dropped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from typing import Any

from toolkit.config import Config
from toolkit.errors import UsageError

LIGER = (
    "liger_rope",
    "liger_rms_norm",
    "liger_glu_activation",
    "liger_layer_norm",
    "liger_fused_linear_cross_entropy",
    "liger_cross_entropy",
)
LORA_KERNELS = {
    "lora_mlp_kernel": ("gate_proj", "up_proj", "down_proj"),
    "lora_qkv_kernel": ("q_proj", "k_proj", "v_proj"),
    "lora_o_kernel": ("o_proj",),
}


@dataclass(frozen=True)
class Machine:
    cuda: bool = False  # a CUDA or ROCm device torch can use
    hip: bool = False
    compiler: bool = False  # a C compiler for torch.compile's CPU code
    installed: frozenset[str] = frozenset()
    world_size: int = 1  # processes in this (torchrun) launch

    @classmethod
    def here(cls, cuda: bool, hip: bool) -> Machine:
        names = ("liger_kernel", "cut_cross_entropy", "torchao", "flash_attn", "deepspeed")
        return cls(
            cuda=cuda,
            hip=hip,
            compiler=shutil.which(os.environ.get("CC", "cc")) is not None,
            installed=frozenset(n for n in names if importlib.util.find_spec(n)),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )


def decide(cfg: Config, machine: Machine) -> dict[str, str]:
    """One entry per option the config asks for: "on…" or "off: why" (or a UsageError
    for an optimizer the machine cannot run), one small function per family."""
    return {
        k: v
        for family in (_kernels, _compile_and_memory, _sharding, _optimizer)
        for k, v in family(cfg, machine).items()
    }


def _kernels(cfg: Config, machine: Machine) -> dict[str, str]:
    """Liger and Cut Cross-Entropy: GPU kernels that replace modules or the loss."""
    out: dict[str, str] = {}
    gpu = "on" if machine.cuda else "off: no GPU"
    liger = [k for k in LIGER if getattr(cfg, k)]
    for key in liger:
        out[key] = (
            gpu
            if not machine.cuda
            else "on"
            if "liger_kernel" in machine.installed
            else "off: liger-kernel is not installed (the cu* and rocm images have it)"
        )
    if cfg.liger_layer_norm:
        out["liger_layer_norm"] = "off: Qwen3 has no LayerNorm (its norms are RMSNorm)"
    losses = [
        k
        for k in ("cut_cross_entropy", "liger_fused_linear_cross_entropy", "liger_cross_entropy")
        if getattr(cfg, k)
    ]
    if cfg.recipe != "sft" and losses:
        for key in losses:
            out[key] = (
                f"off: the {cfg.recipe} recipe computes its own loss from the "
                "logits; only SFT's cross-entropy is replaced"
            )
    elif cfg.cut_cross_entropy:
        out["cut_cross_entropy"] = (
            "off: no CUDA GPU (its Triton kernels are CUDA only)"
            if not machine.cuda or machine.hip
            else "on"
            if "cut_cross_entropy" in machine.installed
            else "off: cut-cross-entropy is not installed (the cu* images have it)"
        )
    if cfg.chunked_cross_entropy:
        fused = [
            k
            for k in ("cut_cross_entropy", "liger_fused_linear_cross_entropy")
            if out.get(k) == "on"
        ]
        out["chunked_cross_entropy"] = (
            f"off: the {cfg.recipe} recipe computes its own loss from the logits"
            if cfg.recipe != "sft"
            else f"off: {fused[0]} already computes the loss without the full logits"
            if fused
            else f"on ({cfg.chunked_cross_entropy_num_chunks} chunks)"
        )
    return out


def _compile_and_memory(cfg: Config, machine: Machine) -> dict[str, str]:
    """torch.compile, activation offloading and checkpointing, fused LoRA."""
    out: dict[str, str] = {}
    if cfg.torch_compile:
        if machine.cuda:
            out["torch_compile"] = f"on (mode {cfg.torch_compile_mode or 'default'})"
        elif cfg.torch_compile == "auto":
            out["torch_compile"] = "off: auto compiles on a GPU only"
        else:
            out["torch_compile"] = (
                "on (CPU)"
                if machine.compiler
                else "off: no C compiler for torch.compile's CPU code "
                "(install gcc, or set torch_compile: false)"
            )
    if cfg.activation_offloading:
        out["activation_offloading"] = (
            "on" if machine.cuda else "off: no GPU (activations already live in host memory)"
        )
    if cfg.tiled_mlp:
        out["tiled_mlp"] = "on (dense MLPs; Qwen3-MoE's expert blocks are not tiled)"
    if cfg.gradient_checkpointing:
        reentrant = (cfg.gradient_checkpointing_kwargs or {}).get("use_reentrant")
        out["gradient_checkpointing"] = f"on (use_reentrant={reentrant})"
    for key, modules in LORA_KERNELS.items():
        if getattr(cfg, key):
            out[key] = f"on ({', '.join(modules)})"
    if cfg.lora_target_parameters:
        out["lora_target_parameters"] = f"on ({', '.join(cfg.lora_target_parameters)})"
    if cfg.experts_implementation:
        out["experts_implementation"] = f"on ({cfg.experts_implementation})"
    return out


def _sharding(cfg: Config, machine: Machine) -> dict[str, str]:
    """FSDP and DeepSpeed: only across the GPUs of a launch."""
    out: dict[str, str] = {}
    from toolkit.config.parallel import SIZES, decision, layout

    if any(getattr(cfg, name) is not None for name in SIZES):
        out["parallelism"] = decision(layout(cfg, machine.world_size), machine.cuda)
    if cfg.fsdp_version:
        # accelerate builds its FSDP plugin for multi-GPU launches only; on CPUs the
        # same launch is DDP (the same training, every process holding the whole model).
        out["fsdp"] = (
            "off: one process (FSDP shards across the processes of a launch with "
            "--nproc-per-node N)"
            if machine.world_size == 1
            else "off: accelerate shards with FSDP on GPUs only; this CPU launch runs DDP"
            if not machine.cuda
            else f"on (FSDP{cfg.fsdp_version}, {machine.world_size} processes)"
        )
    if cfg.deepspeed:
        if machine.world_size == 1:
            out["deepspeed"] = (
                "off: one process (ZeRO shards across the processes of a "
                "launch with --nproc-per-node N)"
            )
        elif not machine.cuda:
            out["deepspeed"] = "off: DeepSpeed needs GPUs; this CPU launch runs DDP"
        elif "deepspeed" not in machine.installed:
            raise UsageError(
                "deepspeed: the deepspeed package is not installed in this "
                "environment (toolkit's images leave it out: it compiles its "
                "ops with a CUDA toolkit they do not carry); use fsdp_version: 2, "
                "which shards as ZeRO-3 does"
            )
        else:
            out["deepspeed"] = f"on ({cfg.deepspeed}, {machine.world_size} processes)"
    return out


def _optimizer(cfg: Config, machine: Machine) -> dict[str, str]:
    """QLoRA and the optimizers that need a library or a compiler."""
    out: dict[str, str] = {}
    if cfg.adapter == "qlora":
        out["qlora"] = "on (bitsandbytes 4-bit nf4, double quantization)"
    if cfg.qat:
        if "torchao" not in machine.installed:
            raise UsageError(
                "qat: quantization-aware training fakes quantization with torchao, which "
                "is not installed; pip install 'qwen-posttrain[train]' (every image has it)"
            )
        q = cfg.qat
        acts = f", activations {q.activation_dtype} per token" if q.activation_dtype else ""
        after = f"; from step {q.fake_quant_after_n_steps}" if q.fake_quant_after_n_steps else ""
        out["qat"] = f"on (weights {q.weight_dtype} per group of {q.group_size}{acts}{after})"
    if cfg.optimizer == "adamw_torch_4bit":
        if "torchao" not in machine.installed:
            raise UsageError(
                "optimizer: adamw_torch_4bit needs torchao, which is not "
                "installed; pip install 'qwen-posttrain[train]' or pick adamw_bnb_8bit"
            )
        if not machine.cuda and not machine.compiler:
            raise UsageError(
                "optimizer: adamw_torch_4bit compiles its update with "
                "torch.compile, which on CPU needs a C compiler (none found); "
                "install gcc or pick adamw_torch"
            )
        out["optimizer"] = "adamw_torch_4bit (torchao)"
    return out


def apply_liger(base_model: str, decisions: dict[str, str], source: dict | None = None) -> None:
    """Patch transformers' Qwen3 / Qwen3-MoE classes with liger's kernels, before loading
    (`source`: from_pretrained keywords for the model's config, such as its commit)."""
    chosen = {k for k in LIGER if decisions.get(k) == "on"}
    if not chosen:
        return
    from liger_kernel.transformers import (
        apply_liger_kernel_to_qwen3,
        apply_liger_kernel_to_qwen3_moe,
    )
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(base_model, **(source or {})).model_type
    patch = {
        "qwen3": apply_liger_kernel_to_qwen3,
        "qwen3_moe": apply_liger_kernel_to_qwen3_moe,
    }.get(model_type)
    if patch is None:
        raise UsageError(
            f"liger kernels are wired for qwen3 and qwen3_moe, not {model_type!r}; "
            "set the liger_* keys false"
        )
    patch(
        rope="liger_rope" in chosen,
        rms_norm="liger_rms_norm" in chosen,
        swiglu="liger_glu_activation" in chosen,
        cross_entropy="liger_cross_entropy" in chosen,
        fused_linear_cross_entropy="liger_fused_linear_cross_entropy" in chosen,
    )


def apply_cut_cross_entropy(model, decisions: dict[str, str]) -> Any:
    """Make a causal LM compute its training loss with Cut Cross-Entropy: from the last
    hidden states and the output embedding, without materializing the logits."""
    if decisions.get("cut_cross_entropy") != "on":
        return model
    from cut_cross_entropy import linear_cross_entropy
    from transformers.modeling_outputs import CausalLMOutputWithPast

    plain = model.forward

    def forward(input_ids=None, labels=None, num_items_in_batch=None, **kwargs) -> Any:
        if labels is None:
            return plain(input_ids=input_ids, **kwargs)
        hidden = model.model(input_ids=input_ids, **kwargs).last_hidden_state
        weight = model.lm_head.weight
        # Summed then divided by the batch's label count when the Trainer gives it, so
        # gradient accumulation weighs every token alike (as transformers' own loss does).
        loss = linear_cross_entropy(
            hidden.to(weight.dtype),
            weight,
            labels,
            shift=True,
            reduction="sum" if num_items_in_batch else "mean",
        )
        if num_items_in_batch:
            loss = loss / num_items_in_batch
        return CausalLMOutputWithPast(loss=loss)

    model.forward = forward
    return model


def apply_chunked_cross_entropy(model, decisions: dict[str, str], chunks: int) -> Any:
    """Make a causal LM compute its training loss over `chunks` slices of the sequence,
    each slice's logits (float32) made from the last hidden states and dropped, then made
    again in the backward: the (L, vocab) logits never exist at once."""
    if not decisions.get("chunked_cross_entropy", "").startswith("on"):
        return model
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_outputs import CausalLMOutputWithPast

    plain = model.forward

    def summed(hidden: Any, labels: Any) -> Any:
        logits = model.lm_head(hidden).float()
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
        )

    def forward(input_ids=None, labels=None, num_items_in_batch=None, **kwargs) -> Any:
        if labels is None:
            return plain(input_ids=input_ids, **kwargs)
        hidden = model.model(input_ids=input_ids, **kwargs).last_hidden_state
        # transformers' causal-LM loss: each position predicts the next label.
        targets = F.pad(labels, (0, 1), value=-100)[..., 1:].to(hidden.device)
        loss = hidden.new_zeros((), dtype=torch.float32)
        for h, y in zip(hidden.chunk(chunks, dim=1), targets.chunk(chunks, dim=1), strict=True):
            if (y != -100).any():
                loss = loss + checkpoint(summed, h, y, use_reentrant=False)
        # Divided by the batch's label count when the Trainer gives it (gradient
        # accumulation weighs every token alike), else this batch's: the mean.
        count = num_items_in_batch if num_items_in_batch else (targets != -100).sum()
        return CausalLMOutputWithPast(loss=loss / count)

    model.forward = forward
    return model


def apply_tiled_mlp(model, decisions: dict[str, str], shards: int) -> None:
    """Run each dense MLP over `shards` slices of the sequence, each recomputed in the
    backward, so one slice's (L, intermediate) activations exist at a time."""
    if not decisions.get("tiled_mlp", "").startswith("on"):
        return
    from torch.utils.checkpoint import checkpoint

    def tiled(plain: Any) -> Any:
        def forward(x: Any) -> Any:
            import torch

            if x.dim() != 3 or x.shape[1] < 2 * shards:
                return plain(x)
            parts = [checkpoint(plain, p, use_reentrant=False) for p in x.chunk(shards, dim=1)]
            return torch.cat(parts, dim=1)

        return forward

    for module in model.modules():
        if type(module).__name__ in ("Qwen3MLP", "Qwen2MLP", "LlamaMLP"):
            module.forward = tiled(module.forward)


def apply_qat(model, cfg: Config) -> Any:
    """Fake-quantize every linear layer but the output head (torchao), before any adapter
    wraps them. Returns a callback that turns the fake quantization on at
    fake_quant_after_n_steps, or None."""
    if not cfg.qat:
        return None
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    q = cfg.qat
    dtypes = {"int4": torch.int4, "int8": torch.int8}  # type: ignore[attr-defined]
    acts = (
        IntxFakeQuantizeConfig(dtypes[q.activation_dtype], "per_token", is_symmetric=False)
        if q.activation_dtype
        else None
    )
    weights = IntxFakeQuantizeConfig(dtypes[q.weight_dtype], group_size=q.group_size)

    def chosen(module: Any, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not name.endswith(("lm_head", "score"))

    for name, module in model.named_modules():
        if chosen(module, name) and module.in_features % q.group_size:
            raise UsageError(
                f"qat.group_size {q.group_size} does not divide {name}'s "
                f"{module.in_features} input features; pick a group size that divides the "
                "model's layer widths (32 divides every Qwen3's)"
            )
    quantize_(
        model,
        QATConfig(activation_config=acts, weight_config=weights, step="prepare"),
        filter_fn=chosen,
    )
    quantizers = [
        sub
        for module in model.modules()
        for sub in (
            getattr(module, "weight_fake_quantizer", None),
            getattr(module, "activation_fake_quantizer", None),
        )
        if sub is not None
    ]
    if not q.fake_quant_after_n_steps:
        return None
    from transformers import TrainerCallback

    class FakeQuantFrom(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs) -> None:
            on = state.global_step >= (q.fake_quant_after_n_steps or 0)
            for quantizer in quantizers:
                quantizer.enabled = on

    for quantizer in quantizers:
        quantizer.enabled = False
    return FakeQuantFrom()


def apply_activation_offloading(model, decisions: dict[str, str]) -> None:
    """Move every tensor autograd saves during the forward to pinned host memory; the
    backward brings each back when it needs it."""
    if decisions.get("activation_offloading") != "on":
        return
    import torch

    forward = model.forward

    def offloaded(*args, **kwargs) -> Any:
        with torch.autograd.graph.save_on_cpu(pin_memory=True):
            return forward(*args, **kwargs)

    model.forward = offloaded


def compile_args(cfg: Config, decisions: dict[str, str]) -> dict:
    """TrainingArguments keywords for torch.compile, if it is on."""
    if not decisions.get("torch_compile", "off").startswith("on"):
        return {}
    return {
        "torch_compile": True,
        "torch_compile_backend": cfg.torch_compile_backend or "inductor",
        "torch_compile_mode": cfg.torch_compile_mode,
    }


def fsdp_args(cfg: Config, decisions: dict[str, str]) -> dict:
    """TrainingArguments keywords for FSDP (transformers' names), if it is on."""
    if not decisions.get("fsdp", "off").startswith("on"):
        return {}
    from toolkit.config import FSDPConfig

    c = cfg.fsdp_config or FSDPConfig()
    options: dict[str, Any] = {
        "version": cfg.fsdp_version,
        "reshard_after_forward": c.reshard_after_forward,
        "cpu_ram_efficient_loading": c.cpu_ram_efficient_loading,
        "activation_checkpointing": c.activation_checkpointing,
        "auto_wrap_policy": c.auto_wrap_policy,
        "min_num_params": c.min_num_params,
        "state_dict_type": c.state_dict_type,
    }
    if c.transformer_layer_cls_to_wrap:
        layers = c.transformer_layer_cls_to_wrap
        options["transformer_layer_cls_to_wrap"] = [layers] if isinstance(layers, str) else layers
    options["cpu_offload"] = c.offload_params
    return {"fsdp": True, "fsdp_config": options}


def parallelism_args(cfg: Config, decisions: dict[str, str]) -> dict:
    """TrainingArguments' parallelism_config (accelerate's) for a layout beyond DDP on GPUs."""
    line = decisions.get("parallelism", "")
    if not (line.startswith("on (") and "ParallelismConfig" in line):
        return {}
    from accelerate.parallelism_config import ParallelismConfig

    from toolkit.config.parallel import layout

    sizes = layout(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    return {
        "parallelism_config": ParallelismConfig(
            dp_replicate_size=sizes.dp_replicate,
            dp_shard_size=sizes.dp_shard,
            tp_size=sizes.tp,
            cp_size=sizes.cp,
        )
    }


def deepspeed_args(cfg: Config, decisions: dict[str, str]) -> dict:
    """TrainingArguments' `deepspeed` (a bundled name resolved to its file), if it is on."""
    if not decisions.get("deepspeed", "off").startswith("on"):
        return {}
    from importlib import resources

    from toolkit.config import DEEPSPEED_BUNDLED

    if cfg.deepspeed in DEEPSPEED_BUNDLED:
        return {
            "deepspeed": str(resources.files("toolkit").joinpath(f"deepspeed/{cfg.deepspeed}.json"))
        }
    return {"deepspeed": cfg.deepspeed}
