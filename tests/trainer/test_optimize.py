"""Speed and memory options: the decisions (pure, table-tested), the fused LoRA
projections against peft's, and the options that change a run on CPU."""

from __future__ import annotations

import json

import pytest
from helpers import read_run

from toolkit.config import load_config
from toolkit.errors import ConfigError, UsageError
from toolkit.trainer.optimize import Machine, decide

CPU = Machine(compiler=True, installed=frozenset({"torchao"}))
BARE_CPU = Machine()
H100 = Machine(
    cuda=True, installed=frozenset({"liger_kernel", "cut_cross_entropy", "torchao", "flash_attn"})
)
MI300 = Machine(cuda=True, hip=True, installed=frozenset({"liger_kernel"}))
GPU_NO_LIGER = Machine(cuda=True)


def cfg_of(write_config, **changes):
    return load_config(write_config(changes)).config


@pytest.mark.parametrize(
    "changes, machine, expected",
    [
        ({"liger_rms_norm": True}, CPU, {"liger_rms_norm": "off: no GPU"}),
        ({"liger_rms_norm": True}, H100, {"liger_rms_norm": "on"}),
        (
            {"liger_glu_activation": True},
            GPU_NO_LIGER,
            {
                "liger_glu_activation": "off: liger-kernel is not installed "
                "(the cu* and rocm images have it)"
            },
        ),
        (
            {"liger_layer_norm": True},
            H100,
            {"liger_layer_norm": "off: Qwen3 has no LayerNorm (its norms are RMSNorm)"},
        ),
        ({"cut_cross_entropy": True}, H100, {"cut_cross_entropy": "on"}),
        (
            {"cut_cross_entropy": True},
            MI300,
            {"cut_cross_entropy": "off: no CUDA GPU (its Triton kernels are CUDA only)"},
        ),
        ({"torch_compile": True}, H100, {"torch_compile": "on (mode default)"}),
        (
            {"torch_compile": True, "torch_compile_mode": "max-autotune"},
            H100,
            {"torch_compile": "on (mode max-autotune)"},
        ),
        ({"torch_compile": "auto"}, CPU, {"torch_compile": "off: auto compiles on a GPU only"}),
        ({"torch_compile": True}, CPU, {"torch_compile": "on (CPU)"}),
        (
            {"torch_compile": True},
            BARE_CPU,
            {
                "torch_compile": "off: no C compiler for torch.compile's CPU code (install gcc, or "
                "set torch_compile: false)"
            },
        ),
        (
            {"activation_offloading": True},
            CPU,
            {"activation_offloading": "off: no GPU (activations already live in host memory)"},
        ),
        ({"activation_offloading": True}, H100, {"activation_offloading": "on"}),
        (
            {"lora_mlp_kernel": True, "lora_o_kernel": True},
            CPU,
            {
                "lora_mlp_kernel": "on (gate_proj, up_proj, down_proj)",
                "lora_o_kernel": "on (o_proj)",
            },
        ),
        ({"optimizer": "adamw_torch_4bit"}, CPU, {"optimizer": "adamw_torch_4bit (torchao)"}),
        (
            {
                "rl": "dpo",
                "liger_fused_linear_cross_entropy": True,
                "datasets": [{"path": "x", "type": "chat_template.default"}],
            },
            H100,
            {
                "liger_fused_linear_cross_entropy": "off: the preference recipe computes "
                "its own loss from the logits; only SFT's cross-entropy is "
                "replaced"
            },
        ),
    ],
)
def test_decisions(write_config, changes, machine, expected):
    if "datasets" in changes:
        from toolkit.config import Config

        cfg = Config.model_validate({"base_model": "m", **changes})
    else:
        cfg = cfg_of(write_config, **changes)
    assert decide(cfg, machine) == expected


@pytest.mark.parametrize(
    "machine, message",
    [
        (
            Machine(compiler=True),
            "optimizer: adamw_torch_4bit needs torchao, which is not installed",
        ),
        (Machine(installed=frozenset({"torchao"})), "needs a C compiler (none found)"),
    ],
)
def test_a_4bit_optimizer_that_cannot_run_is_refused_not_dropped(write_config, machine, message):
    cfg = cfg_of(write_config, optimizer="adamw_torch_4bit")
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decide(cfg, machine)


def test_cross_entropy_replacements_and_kernel_rules_name_the_fields(write_config):
    with pytest.raises(ConfigError) as err:
        load_config(
            write_config(
                {
                    "cut_cross_entropy": True,
                    "liger_fused_linear_cross_entropy": True,
                    "lora_dropout": 0.05,
                    "lora_qkv_kernel": True,
                    "plugins": ["axolotl.integrations.unknown.Plugin"],
                }
            )
        )
    problems = err.value.problems
    assert (
        "cut_cross_entropy and liger_fused_linear_cross_entropy are all set; each replaces "
        "the cross-entropy loss, so keep one" in problems
    )
    assert (
        "lora_qkv_kernel need lora_dropout: 0 (got 0.05); the fused path has no dropout" in problems
    )
    assert any(
        p.startswith(
            "plugins[0]: got 'axolotl.integrations.unknown.Plugin'; not one of axolotl's "
            "plugins (CutCrossEntropyPlugin, "
        )
        for p in problems
    ), problems


def test_offload_spelling_maps_to_checkpointing_plus_offloading(write_config):
    loaded = load_config(write_config({"gradient_checkpointing": "offload"}))
    assert loaded.config.gradient_checkpointing is True
    assert loaded.config.activation_offloading is True
    assert (
        "gradient_checkpointing: 'offload' is deprecated; read as gradient_checkpointing: "
        "true with activation_offloading: true" in loaded.warnings
    )


def _loss_and_grads(model_dir, adapter: str, fused: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from toolkit.trainer.lora_kernels import fuse_lora_projections

    torch.manual_seed(0)
    quant = (
        BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
        if adapter == "qlora"
        else None
    )
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, quantization_config=quant
    )
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    model.enable_input_require_grads()
    if fused:
        on = {"lora_mlp_kernel": "on", "lora_qkv_kernel": "on", "lora_o_kernel": "on"}
        assert fuse_lora_projections(model, on) == 14  # 7 projections × 2 layers
    ids = torch.randint(5, 400, (2, 24), generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize("adapter", ["lora", "qlora"])
def test_fused_lora_projections_match_peft_gradients(tiny_model_dir, adapter):
    import torch

    loss, grads = _loss_and_grads(tiny_model_dir, adapter, fused=False)
    fused_loss, fused_grads = _loss_and_grads(tiny_model_dir, adapter, fused=True)
    assert fused_loss == pytest.approx(loss, rel=1e-6)
    assert grads.keys() == fused_grads.keys() and len(grads) == 28
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], atol=1e-6, rtol=1e-4)


def test_options_that_apply_on_cpu_train_and_are_recorded(tiny_model_dir, write_config):
    from toolkit.trainer.sft import train

    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 4,
                "logging_steps": 1,
                "lora_mlp_kernel": True,
                "lora_qkv_kernel": True,
                "lora_o_kernel": True,
                "liger_rms_norm": True,
                "plugins": ["axolotl.integrations.liger.LigerPlugin"],
                "special_tokens": {"pad_token": "<|endoftext|>"},
            }
        )
    )
    out = train(loaded)
    run = read_run(out)
    assert run["resolved"]["optimizations"] == {
        "liger_rms_norm": "off: no GPU",
        "lora_mlp_kernel": "on (gate_proj, up_proj, down_proj)",
        "lora_qkv_kernel": "on (q_proj, k_proj, v_proj)",
        "lora_o_kernel": "on (o_proj)",
    }
    log = (out / "train.log").read_text()
    assert "optimizations: liger_rms_norm off: no GPU; lora_mlp_kernel on" in log
    losses = [loss for _, loss in run["loss_history"]]
    assert losses[-1] < losses[0]


def test_special_tokens_outside_the_vocabulary_are_refused(tiny_model_dir, write_config):
    from toolkit.trainer.sft import train

    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 1,
                "special_tokens": {"pad_token": "<|pad|>"},
            }
        )
    )
    with pytest.raises(
        UsageError,
        match=r"special_tokens.pad_token: '<\|pad\|>' is not in the "
        "tokenizer's vocabulary",
    ):
        train(loaded)


def test_moe_expert_lora_trains_the_fused_expert_weights(tmp_path, write_config):
    from safetensors.torch import load_file

    from toolkit.tiny import write_tiny_model
    from toolkit.trainer.sft import train

    moe = write_tiny_model(tmp_path / "tiny-moe", moe=True)
    loaded = load_config(
        write_config(
            {
                "base_model": str(moe),
                "max_steps": 3,
                "lora_target_modules": ["q_proj"],
                "lora_target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
            }
        )
    )
    out = train(loaded)
    names = load_file(out / "adapter_model.safetensors").keys()
    assert any("experts" in n for n in names), sorted(names)
    run = read_run(out)
    assert run["resolved"]["optimizations"]["lora_target_parameters"].startswith("on (mlp.")


@pytest.mark.parametrize("kernel", ["grouped_mm", "batched_mm"])
def test_moe_expert_kernels_train_as_the_eager_loop_does(tmp_path, write_config, kernel):
    """experts_implementation: the grouped and batched expert kernels give the eager loop's
    losses, and an expert LoRA still reaches the fused weights through them."""
    from toolkit.tiny import write_tiny_model
    from toolkit.trainer.sft import train

    moe = write_tiny_model(tmp_path / "tiny-moe", moe=True)
    losses = {}
    for impl in ("eager", kernel):
        loaded = load_config(
            write_config(
                {
                    "base_model": str(moe),
                    "max_steps": 3,
                    "logging_steps": 1,
                    "val_set_size": 0.0,
                    "experts_implementation": impl,
                    "lora_target_modules": ["q_proj"],
                    "lora_target_parameters": ["mlp.experts.gate_up_proj"],
                    "output_dir": str(tmp_path / impl),
                }
            )
        )
        run = read_run(train(loaded))
        assert run["resolved"]["optimizations"]["experts_implementation"] == f"on ({impl})"
        losses[impl] = [loss for _, loss in run["loss_history"]]
    assert len(losses["eager"]) == 3
    assert losses[kernel] == pytest.approx(losses["eager"], rel=1e-4)


def test_early_stopping_stops_when_eval_loss_stalls(tiny_model_dir, write_config):
    from toolkit.trainer.sft import train

    # A learning rate of ~0 never improves the eval loss: patience 2 stops after 3 evals.
    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 40,
                "val_set_size": 8,
                "eval_steps": 2,
                "early_stopping_patience": 2,
                "learning_rate": 1e-12,
                "lr_scheduler": "constant",
            }
        )
    )
    out = train(loaded)
    run = read_run(out)
    assert run["steps"] == 6, run["steps"]


def test_torch_compile_compiles_the_model_on_cpu(tiny_model_dir, write_config):
    import shutil

    import torch._dynamo

    from toolkit.trainer.sft import train

    if shutil.which("cc") is None:
        pytest.fail("this test needs a C compiler (gcc) for torch.compile on CPU")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    loaded = load_config(
        write_config({"base_model": str(tiny_model_dir), "max_steps": 2, "torch_compile": True})
    )
    out = train(loaded)
    run = read_run(out)
    assert run["resolved"]["optimizations"] == {"torch_compile": "on (CPU)"}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0


def test_the_4bit_optimizer_trains(tiny_model_dir, write_config):
    from toolkit.trainer.sft import train

    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 3,
                "logging_steps": 1,
                "optimizer": "adamw_torch_4bit",
            }
        )
    )
    run = read_run(train(loaded))
    assert run["resolved"]["optimizations"] == {"optimizer": "adamw_torch_4bit (torchao)"}
    assert len(run["loss_history"]) == 3


TWO_GPUS = Machine(cuda=True, world_size=2, installed=frozenset({"liger_kernel"}))


@pytest.mark.parametrize(
    "changes, machine, expected",
    [
        ({"fsdp_version": 2}, TWO_GPUS, "on (FSDP2, 2 processes)"),
        (
            {"fsdp_version": 2},
            H100,
            "off: one process (FSDP shards across the processes of a "
            "launch with --nproc-per-node N)",
        ),
        (
            {"fsdp_version": 2},
            Machine(world_size=2),
            "off: accelerate shards with FSDP on GPUs only; this CPU launch runs DDP",
        ),
    ],
)
def test_fsdp_decisions(write_config, changes, machine, expected):
    assert decide(cfg_of(write_config, **changes), machine)["fsdp"] == expected


def test_deepspeed_needs_its_package_on_gpus_and_falls_back_to_ddp_on_cpus(write_config):
    cfg = cfg_of(write_config, deepspeed="zero3")
    assert decide(cfg, Machine(world_size=2))["deepspeed"] == (
        "off: DeepSpeed needs GPUs; this CPU launch runs DDP"
    )
    with pytest.raises(UsageError, match="use fsdp_version: 2, which shards as ZeRO-3 does"):
        decide(cfg, TWO_GPUS)
    on = Machine(cuda=True, world_size=4, installed=frozenset({"deepspeed"}))
    assert decide(cfg, on)["deepspeed"] == "on (zero3, 4 processes)"


def test_axolotl_fsdp_spellings_map_onto_fsdp_config(write_config):
    loaded = load_config(
        write_config(
            {
                "fsdp": ["full_shard", "auto_wrap", "offload"],
                "fsdp_config": {
                    "fsdp_transformer_layer_cls_to_wrap": "Qwen3DecoderLayer",
                    "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                    "fsdp_use_orig_params": False,
                    "fsdp_sync_module_states": True,
                },
            }
        )
    )
    cfg = loaded.config
    assert cfg.fsdp_version == 1
    assert cfg.fsdp_config.offload_params is True
    assert cfg.fsdp_config.transformer_layer_cls_to_wrap == "Qwen3DecoderLayer"
    assert cfg.fsdp_config.state_dict_type == "SHARDED_STATE_DICT"
    assert any(
        w.startswith(
            "fsdp: ['full_shard', 'auto_wrap', 'offload'] is deprecated; read as fsdp_version: 1"
        )
        for w in loaded.warnings
    )
    assert (
        "fsdp_config.use_orig_params: False is not used (transformers and accelerate "
        "choose it for FSDP); ignored" in loaded.warnings
    )
    fsdp2 = load_config(write_config({"fsdp_config": {"reshard_after_forward": False}})).config
    assert fsdp2.fsdp_version == 2


def test_fsdp_and_deepspeed_settings_are_what_transformers_accepts(write_config):
    from transformers import TrainingArguments

    from toolkit.trainer.optimize import deepspeed_args, fsdp_args

    cfg = cfg_of(
        write_config,
        fsdp_version=2,
        fsdp_config={
            "transformer_layer_cls_to_wrap": "Qwen3MoeDecoderLayer",
            "offload_params": True,
            "reshard_after_forward": False,
        },
    )
    args = TrainingArguments(output_dir="unused", use_cpu=True, **fsdp_args(cfg, {"fsdp": "on"}))
    assert args.fsdp_plugin_args == {
        "fsdp_version": 2,
        "cpu_offload": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_cls_names_to_wrap": "Qwen3MoeDecoderLayer",
        "cpu_ram_efficient_loading": False,
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": False,
        "reshard_after_forward": False,
    }
    bundled = deepspeed_args(cfg_of(write_config, deepspeed="zero2"), {"deepspeed": "on"})
    assert json.loads(open(bundled["deepspeed"]).read())["zero_optimization"]["stage"] == 2


def test_fsdp_in_a_form_axolotl_never_wrote_is_refused_with_the_spelling_to_use(write_config):
    with pytest.raises(ConfigError) as err:
        load_config(write_config({"fsdp": True}))
    assert err.value.problems == [
        "fsdp: got True; not supported by toolkit (give FSDP as fsdp_version: 2 with "
        "fsdp_config (axolotl's list form, e.g. fsdp: [full_shard, auto_wrap], is read too))"
    ]


@pytest.mark.parametrize(
    "option, module, longest",
    [
        # 256-token packed rows in 8 chunks: the head sees 32 positions at a time.
        ({"chunked_cross_entropy": True}, "lm_head", 32),
        # 4 shards of the sequence through each MLP.
        ({"tiled_mlp": True, "tiled_mlp_num_shards": 4}, "mlp.gate_proj", 64),
    ],
)
def test_memory_savers_slice_the_sequence_and_keep_the_loss(
    tiny_model_dir, write_config, tmp_path, monkeypatch, option, module, longest
):
    """chunked_cross_entropy and tiled_mlp: the losses of the plain run, while the logits /
    MLP activations are made for one slice of the sequence at a time."""
    import torch

    from toolkit.trainer import model as model_module
    from toolkit.trainer.sft import train

    seen: list[int] = []
    load = model_module.load_base

    def watched(*args, **kwargs):
        loaded = load(*args, **kwargs)
        for name, sub in loaded.named_modules():
            if name.endswith(module):
                sub.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
        return loaded

    common = {
        "base_model": str(tiny_model_dir),
        "max_steps": 3,
        "logging_steps": 1,
        "val_set_size": 0.0,
        "sample_packing": True,
        "sequence_len": 256,
        "pad_to_sequence_len": True,
    }
    losses = {}
    for name, extra in (("plain", {}), ("sliced", option)):
        if name == "sliced":
            monkeypatch.setattr(model_module, "load_base", watched)
        torch.manual_seed(0)
        loaded = load_config(
            write_config(
                {**common, **extra, "output_dir": str(tmp_path / name)}, name=f"{name}.yaml"
            )
        )
        run = read_run(train(loaded))
        losses[name] = [loss for _, loss in run["loss_history"]]
    key = next(iter(option))
    assert run["resolved"]["optimizations"][key].startswith("on"), run["resolved"]
    assert seen and max(seen) == longest, sorted(set(seen))
    assert losses["sliced"] == pytest.approx(losses["plain"], rel=1e-4)


def test_chunked_cross_entropy_gives_way_to_a_fused_loss_and_to_other_recipes():
    from toolkit.config import Config
    from toolkit.trainer.optimize import Machine, decide

    def cfg(**changes):
        base = {"base_model": "m", "datasets": [{"path": "d.jsonl"}], "chunked_cross_entropy": True}
        return Config.model_validate({**base, **changes})

    gpu = Machine(cuda=True, installed=frozenset({"cut_cross_entropy"}))
    assert decide(cfg(), Machine())["chunked_cross_entropy"] == "on (8 chunks)"
    assert decide(cfg(cut_cross_entropy=True), gpu)["chunked_cross_entropy"].startswith(
        "off: cut_cross_entropy already"
    )
    # Without a GPU the fused loss is off, so the chunked one runs.
    assert (
        decide(cfg(cut_cross_entropy=True), Machine())["chunked_cross_entropy"] == "on (8 chunks)"
    )


def test_qat_fakes_quantization_from_the_step_asked(tiny_model_dir, write_config, tmp_path):
    """qat: the losses follow the plain run's until fake_quant_after_n_steps, then differ
    (the forward sees int4 weights, int8 activations); the saved model is a plain Qwen3."""
    from safetensors.torch import load_file

    from toolkit.trainer.sft import train

    common = {
        "base_model": str(tiny_model_dir),
        "adapter": "none",
        "max_steps": 4,
        "logging_steps": 1,
        "val_set_size": 0.0,
        "learning_rate": 1e-3,
    }
    qat = {"weight_dtype": "int4", "activation_dtype": "int8", "group_size": 32}
    runs = {}
    for name, extra in (
        ("plain", {}),
        ("qat-later", {"qat": {**qat, "fake_quant_after_n_steps": 2}}),
        ("qat", {"qat": qat}),
    ):
        loaded = load_config(
            write_config(
                {**common, **extra, "output_dir": str(tmp_path / name)}, name=f"{name}.yaml"
            )
        )
        runs[name] = read_run(out := train(loaded))
        runs[name]["out"] = out
    losses = {k: [loss for _, loss in r["loss_history"]] for k, r in runs.items()}
    decided = runs["qat-later"]["resolved"]["optimizations"]["qat"]
    assert decided == "on (weights int4 per group of 32, activations int8 per token; from step 2)"
    assert losses["qat-later"][:2] == pytest.approx(losses["plain"][:2], rel=1e-5)
    assert losses["qat-later"][2] != pytest.approx(losses["plain"][2], rel=1e-4)
    assert losses["qat"][0] != pytest.approx(losses["plain"][0], rel=1e-4)
    saved = load_file(runs["qat"]["out"] / "model.safetensors")
    plain = load_file(runs["plain"]["out"] / "model.safetensors")
    assert saved.keys() == plain.keys()


def test_qat_refuses_dtypes_it_cannot_fake(tiny_model_dir, write_config, capsys):
    from toolkit.cli import main

    config = write_config({"base_model": str(tiny_model_dir), "qat": {"weight_dtype": "nvfp4"}})
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "qat.weight_dtype" in err and "int4" in err
    config = write_config(
        {
            "base_model": str(tiny_model_dir),
            "qat": {"weight_dtype": "int4"},
            "adapter": "qlora",
            "load_in_4bit": True,
        },
        name="q.yaml",
    )
    assert main(["validate", str(config)]) == 2
    assert "qat fakes the quantization of full-precision layers, but load_in_4bit" in (
        capsys.readouterr().err
    )
