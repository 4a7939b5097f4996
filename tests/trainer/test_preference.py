"""Preference, reward and process-reward training on the tiny Qwen3, for real."""

from __future__ import annotations

import math

import pytest
import yaml
from conftest import TESTS
from helpers import jsonl, read_run, run

from toolkit.cli import main
from toolkit.config import load_config
from toolkit.errors import ConfigError
from toolkit.merge import merge_lora
from toolkit.tiny import demo_preferences, demo_stepwise

BASE = {
    "chat_template": "qwen3",
    "sequence_len": 128,
    "lora_target_linear": True,
    "micro_batch_size": 8,
    "max_steps": 8,
    "learning_rate": 0.003,
    "logging_steps": 2,
    "save_steps": 8,
}


@pytest.fixture
def pairs(tmp_path):
    return jsonl(tmp_path / "pairs.jsonl", demo_preferences(64))


@pytest.fixture
def kto_rows(tmp_path):
    rows = []
    for r in demo_preferences(32):
        rows.append({"prompt": r["messages"], "completion": r["chosen"], "label": True})
        rows.append({"prompt": r["messages"], "completion": r["rejected"], "label": False})
    return jsonl(tmp_path / "kto.jsonl", rows)


@pytest.fixture
def configure(tmp_path, tiny_model_dir):
    def write(data, dtype, **changes):
        cfg = {
            **BASE,
            "base_model": str(tiny_model_dir),
            "adapter": "lora",
            "datasets": [{"path": str(data), "type": dtype}],
            "output_dir": str(tmp_path / "out"),
            **changes,
        }
        cfg = {k: v for k, v in cfg.items() if v is not None}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return load_config(path)

    return write


def manifest(out):
    return read_run(out)


def test_dpo_reward_accuracy_rises(configure, pairs):
    loaded = configure(pairs, "chat_template.default", rl="dpo", max_steps=16, val_set_size=0.25)
    run_json = manifest(run(loaded))
    assert run_json["recipe"] == "preference" and run_json["method"] == "dpo"
    accuracies = [m["rewards/accuracies"] for m in run_json["metrics_history"]]
    assert accuracies[-1] >= 0.9 and accuracies[-1] > accuracies[0] - 1e-9, accuracies
    final_eval = run_json["eval_history"][-1]
    assert final_eval["eval_rewards/accuracies"] >= 0.9
    assert run_json["final_loss"] < math.log(2) - 0.2  # DPO starts at ln 2


@pytest.mark.parametrize("rl", ["ipo", "orpo", "simpo"])
def test_pair_methods_train_with_lora(configure, pairs, rl):
    run_json = manifest(run(configure(pairs, "chat_template.default", rl=rl)))
    assert run_json["method"] == rl and run_json["steps"] == 8
    assert all(math.isfinite(loss) for _, loss in run_json["loss_history"])


def test_kto_trains(configure, kto_rows):
    run_json = manifest(run(configure(kto_rows, "kto", rl="kto")))
    assert run_json["steps"] == 8
    assert all(math.isfinite(loss) for _, loss in run_json["loss_history"])


@pytest.mark.parametrize("adapter", ["qlora", None])
def test_dpo_with_qlora_and_full(configure, pairs, adapter):
    loaded = configure(
        pairs,
        "chat_template.default",
        rl="dpo",
        max_steps=4,
        save_steps=4,
        adapter=adapter,
        load_in_4bit=adapter == "qlora" or None,
    )
    out = run(loaded)
    assert manifest(out)["adapter"] == adapter
    if adapter:
        assert (merge_lora(loaded) / "model.safetensors").exists()
    else:
        assert (out / "model.safetensors").exists()


def test_argilla_chat_pairs(configure, tmp_path):
    rows = [
        {
            "chosen": r["messages"] + [{"role": "assistant", "content": r["chosen"]}],
            "rejected": r["messages"] + [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in demo_preferences(16)
    ]
    data = jsonl(tmp_path / "argilla.jsonl", rows)
    run_json = manifest(
        run(configure(data, "chat_template.argilla_chat", rl="orpo", max_steps=2, save_steps=2))
    )
    assert run_json["data"]["rows"] == 16


def test_dpo_tokenization_of_prompt_chosen_rejected(tiny_model_dir, tiny_tokenizer):
    """What TRL feeds the DPO loss: the prompt with the generation prompt, then each reply
    with Qwen3's empty think block and the end of turn."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from toolkit.config import DatasetConfig
    from toolkit.templates import template_text
    from toolkit.trainer.rows import pair_default

    tiny_tokenizer.chat_template = template_text("qwen3")
    row = pair_default(
        {
            "messages": [{"role": "user", "content": "What is 2 plus 3?"}],
            "chosen": "2 plus 3 is 5.",
            "rejected": "I do not know.",
        },
        DatasetConfig(path="x.jsonl", type="chat_template.default"),
    )
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=DPOConfig(
            output_dir="/tmp/toolkit-dpo-tok",
            report_to="none",
            use_cpu=True,
            bf16=False,
            max_length=64,
        ),
        train_dataset=Dataset.from_list([row]),
        processing_class=tiny_tokenizer,
    )
    got = trainer.train_dataset[0]
    ids = lambda text: tiny_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert got["prompt_ids"] == ids(
        "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert got["chosen_ids"] == ids("<think>\n\n</think>\n\n2 plus 3 is 5.<|im_end|>\n")
    assert got["rejected_ids"] == ids("<think>\n\n</think>\n\nI do not know.<|im_end|>\n")


def test_reward_model_ranks_held_out_pairs(configure, tmp_path):
    rows = [
        {
            "system": "Answer briefly.",
            "input": r["messages"][0]["content"],
            "chosen": r["chosen"],
            "rejected": r["rejected"],
        }
        for r in demo_preferences(64)
    ]
    data = jsonl(tmp_path / "bt.jsonl", rows)
    loaded = configure(
        data,
        "bradley_terry.chat_template",
        reward_model=True,
        val_set_size=0.25,
        max_steps=12,
        center_rewards_coefficient=0.01,
    )
    out = run(loaded)
    run_json = manifest(out)
    assert run_json["recipe"] == "reward" and run_json["head"] == "sequence_classification"
    assert run_json["eval_history"][-1]["eval_accuracy"] > 0.75  # chance is 0.5

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged_dir = merge_lora(loaded)
    tok = AutoTokenizer.from_pretrained(merged_dir)
    text = tok.apply_chat_template(
        [
            {"role": "user", "content": "What is 4 plus 4?"},
            {"role": "assistant", "content": "4 plus 4 is 8."},
        ],
        tokenize=False,
    )
    batch = tok(text, return_tensors="pt")
    base = AutoModelForSequenceClassification.from_pretrained(
        loaded.config.base_model, num_labels=1
    )
    base.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, str(out)).eval()(**batch).logits
        got = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_prm_labels_only_the_last_token_of_each_step(tiny_tokenizer, write_config):
    from toolkit.trainer.chat import IGNORE_INDEX
    from toolkit.trainer.prm import encode_steps

    cfg = load_config(write_config()).config.model_copy(update={"step_separator": "\n"})
    row = {
        "prompt": "What is 1 plus 2 plus 3?",
        "completions": ["1 plus 2 is 3.", "3 plus 3 is 7."],
        "labels": [True, False],
    }
    ids, labels, cut = encode_steps(tiny_tokenizer, row, cfg)
    enc = lambda text: tiny_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, step1, step2 = (
        enc(row["prompt"]) + enc("\n"),
        enc("1 plus 2 is 3.") + enc("\n"),
        enc("3 plus 3 is 7.") + enc("\n"),
    )
    assert ids == prompt + step1 + step2 and not cut
    assert labels == (
        [IGNORE_INDEX] * len(prompt)
        + [IGNORE_INDEX] * (len(step1) - 1)
        + [1]
        + [IGNORE_INDEX] * (len(step2) - 1)
        + [0]
    )
    last_only = cfg.model_copy(update={"train_on_last_step_only": True})
    assert encode_steps(tiny_tokenizer, row, last_only)[1].count(1) == 0
    assert [x for x in encode_steps(tiny_tokenizer, row, last_only)[1] if x != IGNORE_INDEX] == [0]


def test_prm_trains_and_merges_with_its_head(configure, tmp_path):
    data = jsonl(tmp_path / "prm.jsonl", demo_stepwise(48))
    loaded = configure(
        data,
        "stepwise_supervised",
        process_reward_model=True,
        chat_template=None,
        val_set_size=0.25,
    )
    run_json = manifest(run(loaded))
    assert run_json["recipe"] == "prm" and run_json["num_labels"] == 2
    assert "eval_step_accuracy" in run_json["eval_history"][-1]
    from transformers import AutoModelForTokenClassification

    merged = AutoModelForTokenClassification.from_pretrained(merge_lora(loaded))
    assert merged.config.num_labels == 2


# --- bad combinations and bad rows --------------------------------------------------------


def test_packing_with_rl_and_wrong_dataset_types_are_refused(write_config, pairs):
    path = write_config({"rl": "dpo", "sample_packing": True})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = "\n".join(info.value.problems)
    assert "sample_packing with rl: dpo" in problems
    assert (
        "datasets[0].type: 'chat_template' cannot feed rl: dpo; accepted: chat_template.default"
    ) in problems


@pytest.mark.parametrize(
    "dtype, rl, row, message",
    [
        (
            "kto",
            "kto",
            {"prompt": "hi", "completion": "yo"},
            "row 1: has no 'label' field (KTO needs a label",
        ),
        (
            "chat_template.argilla_chat",
            "dpo",
            {
                "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                "rejected": [
                    {"role": "user", "content": "c"},
                    {"role": "assistant", "content": "d"},
                ],
            },
            "row 1: chosen and rejected have different prompts",
        ),
        (
            "chat_template.default",
            "dpo",
            {"messages": [{"role": "user", "content": "a"}], "chosen": "", "rejected": "no"},
            "row 1: chosen is empty",
        ),
        *(
            (
                "chat_template.default",
                rl,
                {
                    "messages": [
                        {"role": "user", "content": "a"},
                        {"role": "system", "content": "be brief"},
                    ],
                    "chosen": "yes",
                    "rejected": "no",
                },
                f"row 1: the prompt ends with a system message; rl: {rl} needs the reply",
            )
            for rl in ("orpo", "simpo")
        ),
        (
            "kto",
            "kto",
            {
                "prompt": [{"role": "system", "content": "s"}],
                "completion": "yes",
                "label": True,
            },
            "row 1: the prompt ends with a system message; rl: kto needs the reply",
        ),
        (
            "stepwise_supervised",
            None,
            {"prompt": "p", "completions": ["a", "b"], "labels": [True]},
            "row 1: labels has 1 entries but completions has 2 steps",
        ),
    ],
)
def test_bad_rows_are_named(tmp_path, tiny_model_dir, capsys, dtype, rl, row, message):
    data = jsonl(tmp_path / "bad.jsonl", [row])
    cfg = {
        **BASE,
        "base_model": str(tiny_model_dir),
        "output_dir": str(tmp_path / "out"),
        "datasets": [{"path": str(data), "type": dtype}],
    }
    cfg.update({"rl": rl} if rl else {"process_reward_model": True})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--runtime", "local"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


AXOLOTL = TESTS / "data" / "axolotl"


@pytest.mark.parametrize("name", ["dpo-qlora", "reward-model", "prm"])
def test_axolotl_style_configs_train_with_only_model_and_data_changed(
    name, tmp_path, tiny_model_dir, capsys, monkeypatch
):
    if name == "dpo-qlora":
        rows = [
            {"conversation": r["messages"], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in demo_preferences(32)
        ]
    elif name == "reward-model":
        rows = [
            {
                "system": "",
                "input": r["messages"][0]["content"],
                "chosen": r["chosen"],
                "rejected": r["rejected"],
            }
            for r in demo_preferences(32)
        ]
    else:
        rows = demo_stepwise(32)
    data = jsonl(tmp_path / "data.jsonl", rows)
    monkeypatch.chdir(tmp_path)  # output_dir is relative, as in axolotl's examples
    code = main(
        [
            "train",
            str(AXOLOTL / f"{name}.yaml"),
            "--runtime",
            "local",
            "--base-model",
            str(tiny_model_dir),
            "--datasets.0.path",
            str(data),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert (
        "warning: flash_attention: deprecated; read as attn_implementation: 'flash_attention_2'"
    ) in captured.err
    assert (
        "note: attn_implementation: flash_attention_2 → sdpa: flash_attention_2 runs on GPUs "
        "only; sdpa on the CPU" in captured.out
    )
    run_json = manifest(tmp_path / "outputs" / ("dpo-out" if name == "dpo-qlora" else "out"))
    assert all(math.isfinite(loss) for _, loss in run_json["loss_history"])


@pytest.mark.parametrize(
    "kind, adapter", [("kto", None), ("reward", "qlora"), ("prm", None), ("orpo", "qlora")]
)
def test_more_methods_with_qlora_and_full(kind, adapter, configure, pairs, kto_rows, tmp_path):
    four_bit = adapter == "qlora" or None
    if kind == "kto":
        loaded = configure(kto_rows, "kto", rl="kto", adapter=adapter, max_steps=2)
    elif kind == "orpo":
        loaded = configure(
            pairs,
            "chat_template.default",
            rl="orpo",
            adapter=adapter,
            load_in_4bit=four_bit,
            max_steps=2,
        )
    elif kind == "reward":
        loaded = configure(
            pairs,
            "chat_template.default",
            reward_model=True,
            adapter=adapter,
            load_in_4bit=four_bit,
            max_steps=2,
        )
    else:
        data = jsonl(tmp_path / "prm.jsonl", demo_stepwise(16))
        loaded = configure(
            data, "stepwise_supervised", process_reward_model=True, adapter=adapter, max_steps=2
        )
    run_json = manifest(run(loaded))
    assert run_json["adapter"] == adapter and run_json["steps"] == 2
    assert all(math.isfinite(loss) for _, loss in run_json["loss_history"])


def test_the_reply_check_reads_only_conversational_prompts():
    """ORPO/SimPO/KTO's check of a prompt's last turn: a text prompt (a stepwise row's)
    has no turns to check and passes; a conversation ending in a system turn does not."""
    from toolkit.trainer.rows import RowError, _reply_follows_a_turn

    _reply_follows_a_turn({"prompt": "What is 2+2?"}, "kto")
    _reply_follows_a_turn({"prompt": [{"role": "user", "content": "hi"}]}, "orpo")
    with pytest.raises(RowError, match="the prompt ends with a system message"):
        _reply_follows_a_turn({"prompt": [{"role": "system", "content": "x"}]}, "simpo")
