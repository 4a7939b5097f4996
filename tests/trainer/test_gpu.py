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
    from helpers import run

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
    from toolkit.host.doctor import container_checks

    monkeypatch.setenv("TOOLKIT_VARIANT", "gpu-test")
    findings = {f.check: f for f in container_checks()}
    assert findings["gpu 0 arch"].status == Status.OK, findings["gpu 0 arch"].message
    assert "device" not in findings or findings["device"].status != Status.FAIL


def _first_losses(write_config, tiny_model_dir, tmp_path, name, **changes):
    from helpers import run

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


def test_the_varlen_kernel_matches_its_contract_on_the_gpu(gpu):
    """torch's varlen flash kernel (what packed rows run on sm80+ and ROCm) against the same
    attention computed sequence by sequence with sdpa."""
    import torch

    from toolkit.trainer.attention import _per_sequence, boundaries, varlen_attention

    if gpu < (8, 0):  # below sm80 the decision never picks it: that is what to check there
        from toolkit.compat import VARLEN, Gpu, attention

        older = Gpu(0, "nvidia", "GPU", compute_cap="{}.{}".format(*gpu))
        assert attention("sdpa", older, True, True, {"varlen"}).kernel != VARLEN
        return
    torch.manual_seed(0)
    positions = torch.tensor([[p for n in (300, 1200, 548) for p in range(n)]], device="cuda")
    q = torch.randn(1, 16, 2048, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 8, 2048, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, 8, 2048, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out, _ = varlen_attention(None, q, k, v, None, scaling=128**-0.5, position_ids=positions)
    flat = [t.transpose(1, 2).reshape(2048, t.shape[1], 128) for t in (q, k, v)]
    cu, _ = boundaries(positions)
    want = _per_sequence(*flat, cu.tolist(), 128**-0.5).reshape(1, 2048, 16, 128)
    torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2)
    out.float().square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_packed_training_on_the_gpu_builds_no_dense_mask(
    gpu, write_config, tiny_model_dir, tmp_path, monkeypatch
):
    import transformers.masking_utils as masking
    from helpers import run

    from toolkit.compat import VARLEN

    def refuse(*args, **kwargs):
        raise AssertionError("a dense mask was built for a packed batch")

    for name in ("sdpa", "eager"):
        monkeypatch.setitem(masking.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, name, refuse)
    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 6,
                "logging_steps": 1,
                "sample_packing": True,
                "bf16": "auto",
                "val_set_size": 0.0,
                "output_dir": str(tmp_path / "packed"),
            }
        )
    )
    data = read_run(run(loaded))
    kernel = data["resolved"]["attn_implementation"]
    assert kernel in (VARLEN, "flash_attention_4", "flash_attention_2"), data["resolved"]
    assert data["resolved"]["attention"]
    losses = [loss for _, loss in data["loss_history"]]
    assert len(losses) == 6 and all(loss == loss for loss in losses)


def test_moe_grouped_experts_match_the_loop_on_the_gpu(gpu, write_config, tmp_path):
    from helpers import run

    from toolkit.tiny import write_tiny_model

    moe = write_tiny_model(tmp_path / "moe", moe=True)
    losses = {}
    for impl in ("eager", "grouped_mm"):
        loaded = load_config(
            write_config(
                {
                    "base_model": str(moe),
                    "max_steps": 4,
                    "logging_steps": 1,
                    "bf16": False,
                    "val_set_size": 0.0,
                    "experts_implementation": impl,
                    "lora_target_parameters": ["mlp.experts.gate_up_proj"],
                    "output_dir": str(tmp_path / impl),
                },
                name=f"{impl}.yaml",
            )
        )
        losses[impl] = [loss for _, loss in read_run(run(loaded))["loss_history"]]
    assert losses["grouped_mm"] == pytest.approx(losses["eager"], rel=2e-3)
