"""Attention per GPU: the decision table (compat.attention) over described hosts, and the
registered varlen attention's contract — packed sequences see only themselves, with no
(L, L) mask built — checked against sdpa over a block-diagonal mask on the CPU."""

from __future__ import annotations

import pytest

from toolkit.compat import VARLEN, Gpu, attention

ALL = frozenset({"flash_attn_4", "flash_attn", "varlen"})
TORCH_ONLY = frozenset({"varlen"})  # what the images carry without flash-attn

V100 = Gpu(0, "nvidia", "Tesla V100-SXM2-16GB", compute_cap="7.0")
T4 = Gpu(0, "nvidia", "Tesla T4", compute_cap="7.5")
A100 = Gpu(0, "nvidia", "NVIDIA A100-SXM4-80GB", compute_cap="8.0")
L40S = Gpu(0, "nvidia", "NVIDIA L40S", compute_cap="8.9")
H100 = Gpu(0, "nvidia", "NVIDIA H100 80GB HBM3", compute_cap="9.0")
B200 = Gpu(0, "nvidia", "NVIDIA B200", compute_cap="10.0")
RTX5090 = Gpu(0, "nvidia", "NVIDIA GeForce RTX 5090", compute_cap="12.0")
MI300X = Gpu(0, "amd", "AMD Instinct MI300X", gfx="gfx942")
RX7900 = Gpu(0, "amd", "Radeon RX 7900 XTX", gfx="gfx1100")


@pytest.mark.parametrize(
    "requested, gpu, half, packed, installed, kernel",
    [
        # The CPU: sdpa whatever is asked (eager only when asked).
        ("flash_attention_2", None, False, True, ALL, "sdpa"),
        ("flex_attention", None, False, False, ALL, "sdpa"),
        ("eager", None, False, True, ALL, "eager"),
        # Hopper and Blackwell train with FlashAttention-4 where it is installed.
        ("flash_attention_2", H100, True, True, ALL, "flash_attention_4"),
        ("flash_attention_4", B200, True, False, ALL, "flash_attention_4"),
        ("flash_attention_2", RTX5090, True, True, ALL, "flash_attention_4"),
        # ...and without it, packed rows take torch's varlen kernel, unpacked ones sdpa.
        ("flash_attention_2", H100, True, True, TORCH_ONLY, VARLEN),
        ("flash_attention_4", H100, True, False, TORCH_ONLY, "sdpa"),
        # sm80/sm89: FlashAttention-4 has no backward there; flash-attn 2 if installed.
        ("flash_attention_2", A100, True, True, ALL, "flash_attention_2"),
        ("flash_attention_4", L40S, True, True, TORCH_ONLY, VARLEN),
        # Packed rows on a GPU never get a dense mask, sdpa asked or not.
        ("sdpa", A100, True, True, TORCH_ONLY, VARLEN),
        ("sdpa", H100, True, False, ALL, "sdpa"),
        # ROCm: flash-attn's Triton backend when installed, else the varlen kernel.
        (
            "flash_attention_2",
            MI300X,
            True,
            True,
            frozenset({"flash_attn", "varlen"}),
            "flash_attention_2",
        ),
        ("sdpa", RX7900, True, True, TORCH_ONLY, VARLEN),
        # Volta and Turing have no flash kernels: sdpa, and it says why.
        ("flash_attention_2", T4, True, True, ALL, "sdpa"),
        ("sdpa", V100, True, True, ALL, "sdpa"),
        # float32 training: flash kernels are half precision only.
        ("flash_attention_2", H100, False, True, ALL, "sdpa"),
        ("flex_attention", H100, True, True, ALL, "flex_attention"),
        ("eager", H100, True, True, ALL, "eager"),
    ],
)
def test_the_kernel_each_host_runs(requested, gpu, half, packed, installed, kernel):
    chosen = attention(requested, gpu, half, packed, installed)
    assert chosen.kernel == kernel, chosen.why
    assert chosen.why


def test_the_reasons_name_what_is_missing():
    assert "sm75" in attention("flash_attention_2", T4, True, True, ALL).why
    assert (
        "flash-attn-4 is not installed"
        in attention("flash_attention_4", H100, True, False, TORCH_ONLY).why
    )
    assert (
        "backward needs NVIDIA sm90+"
        in attention("flash_attention_4", A100, True, True, TORCH_ONLY).why
    )
    assert "float32" in attention("flash_attention_2", H100, False, True, ALL).why
    assert "block-diagonal" in attention("sdpa", None, False, True, ALL).why


def test_boundaries_of_a_packed_batch():
    import torch

    from toolkit.trainer.attention import boundaries

    cu, longest = boundaries(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]))
    assert cu.tolist() == [0, 3, 5, 9, 10] and cu.dtype == torch.int32 and longest == 4
    with pytest.raises(ValueError, match="start every row at 0"):
        boundaries(torch.tensor([[1, 2, 0]]))


@pytest.fixture(scope="module")
def tiny_models(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.trainer import attention as varlen

    varlen.register()
    load = lambda attn: AutoModelForCausalLM.from_pretrained(  # noqa: E731
        tiny_model_dir, attn_implementation=attn, dtype=torch.float32
    ).eval()
    return load("sdpa"), load(VARLEN)


def _packed_batch():
    import torch

    torch.manual_seed(0)
    lengths = [[5, 9, 2], [7, 9]]  # two rows of 16 tokens, five sequences
    ids = torch.randint(3, 200, (2, 16))
    positions = torch.tensor([[p for n in row for p in range(n)] for row in lengths])
    return ids, positions, lengths


def test_packed_sequences_see_only_themselves(tiny_models):
    """The varlen attention over a packed batch gives each sequence the logits it has
    alone, and those sdpa gives with transformers' block-diagonal mask."""
    import torch

    sdpa, varlen = tiny_models
    ids, positions, lengths = _packed_batch()
    with torch.no_grad():
        packed = varlen(input_ids=ids, position_ids=positions, use_cache=False).logits
        masked = sdpa(input_ids=ids, position_ids=positions, use_cache=False).logits
        torch.testing.assert_close(packed, masked, atol=1e-5, rtol=1e-4)
        for row, row_lengths in enumerate(lengths):
            start = 0
            for n in row_lengths:
                alone = sdpa(input_ids=ids[row : row + 1, start : start + n]).logits[0]
                torch.testing.assert_close(
                    packed[row, start : start + n], alone, atol=1e-5, rtol=1e-4
                )
                start += n


def test_no_dense_mask_is_built_for_packed_rows(tiny_models, monkeypatch):
    import torch
    import transformers.masking_utils as masking

    def refuse(*args, **kwargs):
        raise AssertionError("a dense mask was built")

    # Every mask function that builds a 4-D mask refuses; the flash kernels' one (which
    # passes a 2-D padding mask through) stays.
    mapping = masking.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    for name in ("sdpa", "eager", "flex_attention"):
        monkeypatch.setitem(mapping, name, refuse)
    ids, positions, _ = _packed_batch()
    _, varlen = tiny_models
    with torch.no_grad():
        assert varlen(input_ids=ids, position_ids=positions, use_cache=False).logits.shape[:2] == (
            2,
            16,
        )
    with pytest.raises(AssertionError, match="dense mask"):
        tiny_models[0](input_ids=ids, position_ids=positions, use_cache=False)


def test_gradients_match_the_masked_sdpa(tiny_models):
    import torch

    sdpa, varlen = tiny_models
    ids, positions, _ = _packed_batch()
    grads = []
    for model in (sdpa, varlen):
        model.zero_grad()
        model(input_ids=ids, position_ids=positions, labels=ids, use_cache=False).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_unpacked_right_padded_rows_match_sdpa(tiny_models):
    import torch

    sdpa, varlen = tiny_models
    ids = torch.randint(3, 200, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        a = sdpa(input_ids=ids, attention_mask=mask).logits
        b = varlen(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a[1, :6], b[1, :6], atol=1e-5, rtol=1e-4)
    left = mask.flip(1)
    with pytest.raises(ValueError, match="left-padded"):
        varlen(input_ids=ids, attention_mask=left)


def test_generation_with_a_cache_matches_sdpa(tiny_models, tmp_path):
    import json

    import torch

    sdpa, varlen = tiny_models
    ids = torch.randint(3, 200, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
        a = sdpa.generate(input_ids=ids[:1], **kw)
        b = varlen.generate(input_ids=ids[:1], **kw)
    assert a.tolist() == b.tolist()
    # A model saved after such a training names no attention toolkit registered.
    varlen.save_pretrained(tmp_path)
    assert "toolkit_varlen" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


def test_a_model_with_sliding_windows_is_told_what_to_change(tiny_models):
    import torch

    from toolkit.errors import UsageError
    from toolkit.trainer.attention import varlen_attention

    q = torch.zeros(1, 4, 8, 16)
    kv = torch.zeros(1, 2, 8, 16)
    for extra in ({"sliding_window": 4}, {"dropout": 0.1}):
        with pytest.raises(UsageError, match="set sample_packing: false"):
            varlen_attention(None, q, kv, kv, None, **extra)
