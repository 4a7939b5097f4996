"""Sample packing: bins, exact masking (packed logits = unpacked logits), training."""

from __future__ import annotations

import random

import pytest
from helpers import read_run

from toolkit.config import load_config
from toolkit.trainer.chat import IGNORE_INDEX
from toolkit.trainer.packing import PackedCollator, bins, pack
from toolkit.trainer.sft import train
from toolkit.trainer.tokenized import Example


def test_bins_hold_every_row_once_and_never_overflow():
    rng = random.Random(0)
    lengths = [min(4096, int(rng.paretovariate(1.2) * 60)) for _ in range(3000)]
    groups = bins(lengths, 4096)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 4096 for g in groups)
    # Best-fit decreasing leaves at most one bin less than half full.
    assert sum(sum(lengths[i] for i in g) <= 2048 for g in groups) <= 1


def test_bins_refuse_a_row_longer_than_the_bin():
    with pytest.raises(ValueError, match="row 1 has 9 tokens, more than the bin's 8"):
        bins([3, 9], 8)


def test_packed_rows_restart_positions_and_unlabel_each_first_token():
    rows, fill = pack([Example([1, 2, 3], [1, 2, 3]), Example([4, 5], [-100, 5])], 8)
    [row] = rows
    assert row.input_ids == [1, 2, 3, 4, 5]
    assert row.position_ids == [0, 1, 2, 0, 1]
    assert row.labels == [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]
    assert fill == 5 / 8


def test_collator_pads_as_its_own_sequence_or_flattens():
    rows = [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "position_ids": [0, 1, 2]},
        {"input_ids": [4], "labels": [-100], "position_ids": [0]},
    ]
    padded = PackedCollator(0, plain=None)(rows)
    assert padded["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert padded["labels"].tolist() == [[-100, 2, 3], [-100, -100, -100]]
    assert "attention_mask" not in padded
    flat = PackedCollator(0, plain=None, flatten=True)(rows)
    assert flat["input_ids"].tolist() == [[1, 2, 3, 4]]
    assert flat["position_ids"].tolist() == [[0, 1, 2, 0]]
    assert PackedCollator(0, plain=None, pad_to=6)(rows)["input_ids"].shape == (2, 6)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_each_packed_sequence_has_exactly_its_unpacked_logits(tiny_model_dir, attention):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=attention
    ).eval()
    rng = random.Random(1)
    seqs = [[rng.randrange(5, 400) for _ in range(n)] for n in (7, 19, 3, 30, 12, 1)]
    rows, _ = pack([Example(s, s) for s in seqs], 40)
    assert len(rows) == 2, "the test wants several sequences in each packed row"
    batch = PackedCollator(0, plain=None)([r.as_row() for r in rows])
    with torch.no_grad():
        # Without a cache, as in training: transformers reads restarting position ids as
        # sequence boundaries only then (load_base turns the cache off).
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        alone = {tuple(s): model(input_ids=torch.tensor([s])).logits[0] for s in seqs}
    for b, row in enumerate(rows):
        start = 0
        for end in [i for i, p in enumerate(row.position_ids[1:], 1) if p == 0] + [
            len(row.input_ids)
        ]:
            seq = tuple(row.input_ids[start:end])
            torch.testing.assert_close(packed[b, start:end], alone[seq], atol=1e-5, rtol=1e-5)
            start = end


def test_packing_trains_on_fewer_rows_and_reports_its_fill(tiny_model_dir, write_config):
    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 6,
                "sample_packing": True,
                "sequence_len": 256,
                "val_set_size": 8,
                "micro_batch_size": 2,
                "pad_to_sequence_len": True,
            }
        )
    )
    out = train(loaded)
    run = read_run(out)
    train_fill = run["packing"]["train"]
    assert train_fill["rows"] == 88 and train_fill["packed_rows"] < 88 / 3
    assert train_fill["fill"] > 0.9
    assert run["packing"]["eval"]["rows"] == 8
    assert run["eval_loss"] is not None
    assert "packing: 88 rows into" in (out / "train.log").read_text()
