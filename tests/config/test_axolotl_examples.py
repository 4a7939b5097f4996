"""axolotl's published Qwen3 SFT examples (tests/data/axolotl/qwen3-*.yaml, copied as
they are) with only base_model and the dataset path changed on the command line:
each trains on CPU or is refused key by key with what to change."""

from __future__ import annotations

import pytest
from conftest import TESTS
from helpers import jsonl, read_run

from toolkit.cli import main
from toolkit.tiny import demo_conversations

AXOLOTL = TESTS / "data" / "axolotl"

pytestmark = pytest.mark.slow  # real multi-process or full-example training


def sharegpt(n):
    """FineTome's shape: ShareGPT turns under `conversations`, roles human / gpt."""
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return [
        {
            "conversations": [
                {"from": names[m["role"]], "value": m["content"]} for m in r["messages"]
            ]
        }
        for r in demo_conversations(n)
    ]


def alpaca(n):
    return [
        {
            "instruction": r["messages"][0]["content"],
            "input": "",
            "output": r["messages"][1]["content"],
        }
        for r in demo_conversations(n)
    ]


def run(name, data, tiny_model_dir, tmp_path, monkeypatch, *more):
    monkeypatch.chdir(tmp_path)  # output_dir and dataset_prepared_path are relative
    return main(
        [
            "train",
            str(AXOLOTL / name),
            "--runtime",
            "local",
            "--base-model",
            str(tiny_model_dir),
            "--datasets.0.path",
            str(data),
            *more,
        ]
    )


def test_qwen3_32b_qlora_trains(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = jsonl(tmp_path / "finetome.jsonl", sharegpt(96))
    assert run("qwen3-32b-qlora.yaml", data, tiny_model_dir, tmp_path, monkeypatch) == 0
    captured = capsys.readouterr()
    assert "warning: gradient_checkpointing: 'offload' is deprecated" in captured.err
    run_json = read_run(tmp_path / "outputs" / "out")
    assert run_json["data"]["rows"] == 19  # split: train[:20%] of 96
    assert run_json["packing"]["train"]["rows"] == 19
    assert run_json["resolved"]["optimizations"] == {
        "cut_cross_entropy": "off: no CUDA GPU (its Triton kernels are CUDA only)",
        "activation_offloading": "off: no GPU (activations already live in host memory)",
        "gradient_checkpointing": "on (use_reentrant=False)",
        "lora_mlp_kernel": "on (gate_proj, up_proj, down_proj)",
        "lora_qkv_kernel": "on (q_proj, k_proj, v_proj)",
        "lora_o_kernel": "on (o_proj)",
        "qlora": "on (bitsandbytes 4-bit nf4, double quantization)",
        "optimizer": "adamw_torch_4bit (torchao)",
    }
    assert any((tmp_path / "last_run_prepared").iterdir())


def test_qwen3_qlora_fsdp_trains_alpaca(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = jsonl(tmp_path / "alpaca.jsonl", alpaca(96))
    assert (
        run(
            "qwen3-qlora-fsdp.yaml", data, tiny_model_dir, tmp_path, monkeypatch, "--max-steps", "3"
        )
        == 0
    )
    captured = capsys.readouterr()
    assert (
        "warning: fsdp: ['full_shard', 'auto_wrap'] is deprecated; read as fsdp_version: 1"
        in captured.err
    )
    run_json = read_run(tmp_path / "outputs" / "out")
    assert run_json["config"]["fsdp_config"]["offload_params"] is True
    assert run_json["resolved"]["optimizations"]["fsdp"].startswith("off: one process")
    assert run_json["data"]["kept"] == 96 and run_json["steps"] == 3


def rows_for(example: dict, n: int = 96) -> list[dict]:
    """Rows in the shape the example's first dataset reads."""
    ds = example["datasets"][0]
    if ds.get("type") == "alpaca":
        return alpaca(n)
    if ds.get("field_messages") == "conversations":
        return sharegpt(n)
    return demo_conversations(n)


# axolotl's Qwen3 and Qwen3-MoE SFT examples, newest and older, with what each needs
# that a CPU does not have (None: it trains here).
SFT_EXAMPLES = {
    "qwen3-32b-qlora.yaml": None,
    "qwen3-qlora-fsdp.yaml": None,
    "qwen3-8b-qat-fsdp2.yaml": None,
    "qwen3-8b-lora-fused-attn.yaml": None,
    "qwen3-8b-lora-fused-attn-compile.yaml": None,
    # group_size 256 is for Qwen3-8B's widths; the tiny model's are 64.
    "qwen3-qat.yaml": "qat.group_size 256 does not divide model.layers.0.self_attn.q_proj's 64",
    # 2 × 2 × 2 = 8 processes: refused for the launch's size before anything else.
    "qwen3-8b-fsdp-tp-cp.yaml": "dp_shard_size 2 × tensor_parallel_size 2 × "
    "context_parallel_size 2 = 8 processes, but --nproc-per-node 1 × --nnodes 1 has 1",
    "qwen3-30b-a3b-ep-lora.yaml": ["expert_parallel_size"],
    "qwen3-30b-a3b-nvfp4-lora.yaml": ["nvfp4_merge_aware"],
}


@pytest.mark.parametrize("name", list(SFT_EXAMPLES))
def test_each_example_trains_on_cpu_or_names_the_hardware_it_needs(
    name, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """Only the model and the data paths changed (and max_steps, to keep it short): no
    key is unknown, and the run either trains or is refused when it starts because
    this machine has no GPU, naming each setting that needs one."""
    import yaml

    from toolkit.tiny import write_tiny_model

    example = yaml.safe_load((AXOLOTL / name).read_text())
    moe = "30b-a3b" in name
    model = write_tiny_model(tmp_path / "tiny-moe", moe=True) if moe else tiny_model_dir
    data = jsonl(tmp_path / "rows.jsonl", rows_for(example, 200 if moe else 96))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    code = run(name, data, model, tmp_path, monkeypatch, "--max-steps", "2")
    err = capsys.readouterr().err
    assert "unknown key" not in err and "Traceback" not in err, err
    needs = SFT_EXAMPLES[name]
    if needs is None:
        assert code == 0, err
        return
    assert code == 2, err
    if isinstance(needs, str):
        assert needs in err
        return
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert [p.split(":")[0].removeprefix("  - ") for p in problems] == needs
    assert all("this machine has no GPU" in p for p in problems), problems
    assert not (tmp_path / "outputs").exists()  # refused before anything was written


def test_qwen3_fsdp2_liger_example_trains(tiny_model_dir, tmp_path, monkeypatch, capsys):
    data = jsonl(tmp_path / "alpaca.jsonl", alpaca(96))
    # max_steps: 2000 in the example; 3 here keep the test short.
    assert (
        run(
            "qwen3-8b-qat-fsdp2.yaml",
            data,
            tiny_model_dir,
            tmp_path,
            monkeypatch,
            "--max-steps",
            "3",
        )
        == 0
    )
    run_json = read_run(tmp_path / "outputs" / "qat_out")
    assert run_json["config"]["fsdp_version"] == 2
    assert run_json["config"]["fsdp_config"]["activation_checkpointing"] is True
    decided = run_json["resolved"]["optimizations"]
    assert decided["liger_rope"] == "off: no GPU"
    assert decided["liger_layer_norm"] == "off: Qwen3 has no LayerNorm (its norms are RMSNorm)"
    assert run_json["resolved"]["bf16"] is True  # bf16: true is honoured on CPU too
