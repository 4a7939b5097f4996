"""MFU's FLOP count, and the chart and TensorBoard events a run writes."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from helpers import read_run

from toolkit.compat import peak_tflops
from toolkit.config import load_config
from toolkit.trainer.throughput import flops_per_token, peak_flops

# Qwen3-8B's published shape (config.json of Qwen/Qwen3-8B).
QWEN3_8B = SimpleNamespace(
    hidden_size=4096,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=12288,
    vocab_size=151936,
)
# Qwen3-30B-A3B: 128 experts, 8 active.
QWEN3_30B_A3B = SimpleNamespace(
    hidden_size=2048,
    num_hidden_layers=48,
    num_attention_heads=32,
    num_key_value_heads=4,
    head_dim=128,
    num_experts=128,
    num_experts_per_tok=8,
    moe_intermediate_size=768,
    vocab_size=151936,
)


def test_flops_count_the_weights_a_token_passes_through():
    # 8B: 36 × (attention 41.9M + MLP 151M) + head 622M = 7.57B matmul weights per token.
    weights = 36 * (2 * 4096 * 32 * 128 + 2 * 4096 * 8 * 128 + 3 * 4096 * 12288) + 4096 * 151936
    assert weights == pytest.approx(7.57e9, rel=1e-3)
    attention = 12 * 36 * 32 * 128 * 2048
    assert flops_per_token(QWEN3_8B, True, 2048) == 6 * weights + attention
    assert flops_per_token(QWEN3_8B, False, 2048) == 4 * weights + attention
    # The MoE counts its 8 active experts and the router, not all 128: 3.04B, which with
    # the input embedding (a lookup, not a matmul: 0.31B) is its published 3.3B active.
    active = (
        48 * (2 * 2048 * 32 * 128 + 2 * 2048 * 4 * 128 + 3 * 2048 * 768 * 8 + 2048 * 128)
        + 2048 * 151936
    )
    assert active + 2048 * 151936 == pytest.approx(3.3e9, rel=0.02)
    assert flops_per_token(QWEN3_30B_A3B, True, 0) == 6 * active


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("AMD Instinct MI300X", 1307),
        ("Tesla T4", None),
    ],
)
def test_peak_flops_by_device_name(name, expected):
    assert peak_tflops(name) == expected


def test_no_mfu_without_a_known_peak():
    assert peak_flops("cpu", "cpu", "float32") is None
    assert peak_flops("cuda", "NVIDIA H100 80GB HBM3", "float32") is None
    assert peak_flops("cuda", "NVIDIA H100 80GB HBM3", "bfloat16") == 989e12


def _tensorboard_tags(directory) -> set[str]:
    """Read TFRecord-framed Event protos (length, crc, data, crc) with tensorboardX's proto."""
    from tensorboardX.proto.event_pb2 import Event

    tags = set()
    for file in directory.glob("events.out.tfevents.*"):
        blob = file.read_bytes()
        at = 0
        while at < len(blob):
            (length,) = struct.unpack("<Q", blob[at : at + 8])
            event = Event.FromString(blob[at + 12 : at + 12 + length])
            tags |= {v.tag for v in event.summary.value}
            at += 12 + length + 4
    return tags


def test_a_run_writes_its_chart_tensorboard_and_throughput(tiny_model_dir, write_config):
    from toolkit.trainer.sft import train

    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 4,
                "logging_steps": 1,
                "val_set_size": 8,
                "eval_steps": 2,
            }
        )
    )
    out = train(loaded)
    run = read_run(out)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run["chart"] == "loss.png" and run["tensorboard"] == "tensorboard"
    assert {
        "train/loss",
        "train/tokens_per_second",
        "train/peak_memory_gib",
        "eval/loss",
    } <= _tensorboard_tags(out / "tensorboard")
    assert run["tokens_per_second"] > 0 and run["flops_per_token"] > 0
    assert run["mfu"] is None  # no peak FLOPs for a CPU
    assert run["peak_memory_of"] == "host RSS" and run["peak_memory_gib"] > 0.1
    assert " mem " in (out / "train.log").read_text()
