"""GPU-only paths, for a machine with a CUDA or ROCm GPU: `make test-gpu`.
`make test` deselects them (-m "not gpu"), so on a CPU machine they neither run nor skip."""

from __future__ import annotations

import pytest
from helpers import read_run

from toolkit.compat import Status, bf16_in_hardware
from toolkit.config import load_config

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need a visible CUDA or ROCm GPU (torch.cuda.is_available())")
    return torch.cuda.get_device_capability(0)


def test_tiny_lora_trains_on_the_gpu_with_bf16_by_capability(gpu, tiny_model_dir, write_config):
    from toolkit.trainer import run

    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 8,
                "save_steps": 8,
                "bf16": "auto",
                "attn_implementation": "flash_attention_2",
            }
        )
    )
    resolved = read_run(run(loaded))["resolved"]
    assert resolved["device"] == "cuda"
    assert resolved["bf16"] is bf16_in_hardware(f"{gpu[0]}.{gpu[1]}")
    assert resolved["attn_implementation"] in ("flash_attention_2", "sdpa")


def test_in_image_checks_see_the_gpu(monkeypatch):
    from toolkit.doctor import container_checks

    monkeypatch.setenv("TOOLKIT_VARIANT", "gpu-test")
    findings = {f.check: f for f in container_checks()}
    assert findings["gpu 0 arch"].status == Status.OK, findings["gpu 0 arch"].message
    assert "device" not in findings or findings["device"].status != Status.FAIL


def _first_losses(write_config, tiny_model_dir, tmp_path, name, **changes):
    from toolkit.trainer import run

    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 4,
                "logging_steps": 1,
                "bf16": False,
                "output_dir": str(tmp_path / name),
                **changes,
            },
            name=f"{name}.yaml",
        )
    )
    data = read_run(run(loaded))
    return data["resolved"]["optimizations"], [loss for _, loss in data["loss_history"]]


@pytest.mark.parametrize(
    "option",
    [
        {
            "liger_rope": True,
            "liger_rms_norm": True,
            "liger_glu_activation": True,
            "liger_fused_linear_cross_entropy": True,
        },
        {"cut_cross_entropy": True},
        {"lora_mlp_kernel": True, "lora_qkv_kernel": True, "lora_o_kernel": True},
        {"activation_offloading": True, "gradient_checkpointing": True},
        {"torch_compile": True},
    ],
)
def test_each_gpu_option_takes_effect_and_keeps_the_loss(
    option, write_config, tiny_model_dir, tmp_path
):
    _, plain = _first_losses(write_config, tiny_model_dir, tmp_path, "plain")
    decisions, losses = _first_losses(write_config, tiny_model_dir, tmp_path, "opt", **option)
    assert all(decisions[key].startswith("on") for key in option), decisions
    assert losses == pytest.approx(plain, rel=2e-3)
