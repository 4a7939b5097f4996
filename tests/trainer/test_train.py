"""The SFT recipe and merge, for real, on the tiny Qwen3 on CPU."""

from __future__ import annotations

import json
import math
import stat

import pytest
from helpers import read_run

from toolkit.cli import main
from toolkit.config import load_config
from toolkit.merge import merge_lora
from toolkit.trainer.sft import train

FAST = {"max_steps": 12, "logging_steps": 2, "save_steps": 6, "val_set_size": 0.0}


@pytest.fixture
def lora_run(tiny_model_dir, write_config):
    loaded = load_config(write_config({**FAST, "base_model": str(tiny_model_dir)}))
    return loaded, train(loaded)


def test_lora_trains_and_writes_what_it_promises(lora_run):
    loaded, out = lora_run
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "train.log",
        "run.json",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-6"]
    weights = out / "adapter_model.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) & 0o044 == 0o044, "safetensors left it 0600"

    run = read_run(out)
    assert run["recipe"] == "sft"
    assert run["config_sha256"] == loaded.config.digest()
    assert run["steps"] == 12 and run["seed"] == 42 and run["adapter"] == "lora"
    assert run["environment"]["libraries"]["torch"].startswith("2.13.0")
    assert run["environment"]["in_container"] is False
    assert run["resolved"]["device"] == "cpu" and run["resolved"]["bf16"] is False
    assert run["data"]["rows"] == 96 and run["data"]["kept"] == 96
    losses = [loss for _, loss in run["loss_history"]]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.2, losses
    assert run["final_loss"] == losses[-1]
    assert run["tokens_per_second"] > 0
    log = (out / "train.log").read_text()
    assert "step 12/12 loss" in log and "tokens/s" in log


def test_saved_tokenizer_carries_the_trained_chat_template(tiny_model_dir, write_config):
    """The tiny tokenizer ships qwen3's template, so the run trains with another
    (chatml): the saved tokenizer must carry the one training used, not the base's."""
    from transformers import AutoTokenizer

    from toolkit.templates import template_text

    assert AutoTokenizer.from_pretrained(tiny_model_dir).chat_template == template_text("qwen3")
    loaded = load_config(
        write_config(
            {**FAST, "max_steps": 2, "base_model": str(tiny_model_dir), "chat_template": "chatml"}
        )
    )
    saved = AutoTokenizer.from_pretrained(train(loaded)).chat_template
    assert saved == template_text("chatml") != template_text("qwen3")


def test_merge_matches_adapter_logits_and_is_idempotent(lora_run, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded, out = lora_run
    merged_dir = merge_lora(loaded)
    assert merged_dir == out / "merged"
    assert not list(out.glob(".merged*")), "temporary folders left behind"

    tok = AutoTokenizer.from_pretrained(merged_dir)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(text, return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(loaded.config.base_model)
    with_adapter = PeftModel.from_pretrained(base, str(out)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        expected = with_adapter(ids).logits
        got = merged(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(loaded.config.base_model)(ids).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert not torch.allclose(got, plain, atol=1e-3), "the adapter changed nothing"
    generated = merged.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids.shape[1]

    capsys.readouterr()
    stamp = (merged_dir / "model.safetensors").stat().st_mtime_ns
    assert merge_lora(loaded) == merged_dir
    assert "already merged" in capsys.readouterr().out
    assert (merged_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_full_fine_tune_saves_the_whole_model(tiny_model_dir, write_config, capsys):
    from transformers import AutoModelForCausalLM

    loaded = load_config(
        write_config(
            {**FAST, "base_model": str(tiny_model_dir), "adapter": None, "learning_rate": 0.001}
        )
    )
    out = train(loaded)
    run = read_run(out)
    assert run["adapter"] is None
    losses = [loss for _, loss in run["loss_history"]]
    assert losses[-1] < losses[0]
    AutoModelForCausalLM.from_pretrained(out)
    assert merge_lora(loaded) == out
    assert "nothing to merge" in capsys.readouterr().out


def test_long_rows_are_dropped_and_counted(tiny_model_dir, write_config):
    loaded = load_config(
        write_config({**FAST, "base_model": str(tiny_model_dir), "sequence_len": 40})
    )
    out = train(loaded)
    data = read_run(out)["data"]
    assert data["dropped_too_long"] > 0
    assert data["kept"] + data["dropped_too_long"] + data["dropped_no_trained_tokens"] == 96
    assert (
        f"dropped {data['dropped_too_long']} rows longer than sequence_len=40"
        in (out / "train.log").read_text()
    )


def test_long_rows_are_truncated_when_asked(tiny_model_dir, write_config):
    loaded = load_config(
        write_config(
            {
                **FAST,
                "base_model": str(tiny_model_dir),
                "sequence_len": 40,
                "excess_length_strategy": "truncate",
            }
        )
    )
    data = read_run(train(loaded))["data"]
    assert data["truncated"] > 0 and data["dropped_too_long"] == 0
    assert data["kept"] + data["dropped_no_trained_tokens"] == 96


def test_long_rows_are_split_into_pieces_that_all_train(tiny_model_dir, write_config):
    loaded = load_config(
        write_config(
            {
                **FAST,
                "base_model": str(tiny_model_dir),
                "sequence_len": 40,
                "excess_length_strategy": "split",
            }
        )
    )
    out = train(loaded)
    data = read_run(out)["data"]
    assert data["split"] > 0 and data["pieces"] >= 2 * data["split"]
    assert data["dropped_too_long"] == 0 and data["truncated"] == 0
    whole = 96 - data["split"]
    assert data["kept"] + data["dropped_no_trained_tokens"] == whole + data["pieces"]
    assert data["tokens"] > 3000  # little cut away: the demo has 3880 tokens in all
    assert (
        f"split {data['split']} rows longer than sequence_len=40 into {data['pieces']} "
        "pieces" in (out / "train.log").read_text()
    )


def test_unknown_role_stops_with_row_and_exit_2(tiny_model_dir, write_config, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    data.write_text("\n".join(json.dumps(r) for r in (good, bad, good)) + "\n")
    path = write_config({**FAST, "base_model": str(tiny_model_dir)})
    code = main(["train", str(path), "--runtime", "local", "--datasets.0.path", str(data)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: datasets[0] ({data}): 1 of 3 rows cannot be used" in err
    assert "row 2: messages[1].role is 'bot'; accepted: system, user, assistant, tool" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "run.json").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"messages": [}\n', "line 1 is not valid JSON"),
        (b'{"messages": []}\n\xff\xfe\n', "line 2 is not UTF-8"),
        (b"[1, 2]", "row 1 is a number; each row must be a JSON object"),
    ],
)
def test_unreadable_data_files_exit_2(
    tiny_model_dir, write_config, tmp_path, capsys, content, message
):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(content)
    path = write_config({**FAST, "base_model": str(tiny_model_dir)})
    assert main(["train", str(path), "--runtime", "local", "--datasets.0.path", str(data)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_qlora_trains_on_cpu(tiny_model_dir, write_config):
    loaded = load_config(
        write_config(
            {
                **FAST,
                "base_model": str(tiny_model_dir),
                "adapter": "qlora",
                "load_in_4bit": True,
                "max_steps": 4,
                "save_steps": 4,
            }
        )
    )
    out = train(loaded)
    run = read_run(out)
    assert run["adapter"] == "qlora" and run["steps"] == 4
    assert all(math.isfinite(loss) for _, loss in run["loss_history"])
    assert (merge_lora(loaded) / "model.safetensors").exists()


def test_moe_lora_trains(tmp_path, write_config):
    from toolkit.tiny import write_tiny_model

    moe = write_tiny_model(tmp_path / "tiny-moe", moe=True)
    loaded = load_config(write_config({**FAST, "base_model": str(moe)}))
    run = read_run(train(loaded))
    losses = [loss for _, loss in run["loss_history"]]
    assert losses[-1] < losses[0] and run["resolved"]["lora_target_modules"] == "all-linear"
    assert (merge_lora(loaded) / "model.safetensors").exists()


@pytest.mark.parametrize(
    "path", sorted((__import__("conftest").REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem
)
def test_example_configs_validate(path, monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)
    overrides = {"base_model": "Qwen/Qwen3-0.6B"} if path.stem == "tiny-cpu-demo" else {}
    loaded = load_config(path, overrides)
    assert loaded.warnings == []
    assert loaded.config.recipe in ("sft", "preference", "reward", "prm")


def test_evals_per_epoch(tiny_model_dir, write_config):
    loaded = load_config(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 22,
                "save_steps": 22,
                "logging_steps": 11,
                "val_set_size": 0.1,
                "evals_per_epoch": 2,
            }
        )
    )
    run = read_run(train(loaded))
    assert [e["step"] for e in run["eval_history"]] == [11, 22]  # 86 rows / 4 = 22 steps


def test_bundled_demo_data_is_what_the_generator_writes(tmp_path):
    from conftest import DEMO_DATA

    from toolkit.tiny import write_demo_dataset

    assert write_demo_dataset(tmp_path / "demo.jsonl").read_text() == DEMO_DATA.read_text()


def test_the_closing_lines_are_printed_once(tiny_model_dir, write_config, capsys):
    """Where the adapter, the record and the log are: said once on stdout by the command
    (the trainer's own line about them goes to train.log alone)."""
    path = write_config({**FAST, "max_steps": 2, "base_model": str(tiny_model_dir)})
    assert main(["train", str(path), "--runtime", "local"]) == 0
    out = path.parent / "out"
    printed = capsys.readouterr().out
    closing = f"adapter and tokenizer: {out}\nmanifest: {out}/run.json\nlog: {out}/train.log\n"
    assert printed.count(closing) == 1 and printed.endswith(closing)
    assert "saved adapter and tokenizer to" not in printed
    assert f"saved adapter and tokenizer to {out}; " in (out / "train.log").read_text()


def test_a_run_shorter_than_logging_steps_records_its_last_loss(
    tiny_model_dir, write_config, capsys
):
    """3 steps with logging_steps 5: the last step is logged all the same, so run.json
    has a final loss, and compare (and reproduce) can use the run."""
    changes = {**FAST, "max_steps": 3, "logging_steps": 5, "save_steps": 100}
    path = write_config({**changes, "base_model": str(tiny_model_dir)})
    assert main(["train", str(path), "--runtime", "local"]) == 0
    run = read_run(path.parent / "out")
    assert [step for step, _ in run["loss_history"]] == [3]
    assert run["final_loss"] == run["loss_history"][-1][1]
    capsys.readouterr()
    assert main(["compare", str(path.parent / "out"), str(path.parent / "out")]) == 0


def test_merge_after_a_shortened_training_needs_no_repeated_overrides(
    tiny_model_dir, write_config, capsys
):
    """`train --max-steps 2` then `merge-lora` with the YAML alone: the run's length does
    not change what is merged (said in a note); the adapter's shape still must agree."""
    path = write_config({**FAST, "base_model": str(tiny_model_dir)})
    assert main(["train", str(path), "--runtime", "local", "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["merge-lora", str(path), "--runtime", "local"]) == 0
    err = capsys.readouterr().err
    assert "differs only in how it trains (max_steps (2 → 12))" in err
    merged = path.parent / "out" / "merged"
    assert (merged / "model.safetensors").is_file()
    (merged / "merge.json").unlink()  # so that the next merge does not stop at "already"
    assert main(["merge-lora", str(path), "--runtime", "local", "--lora-alpha", "32"]) == 2
    assert "differs in: lora_alpha (16 → 32)" in capsys.readouterr().err
