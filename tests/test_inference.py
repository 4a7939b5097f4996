"""`toolkit inference` answers with what the run trained, and `toolkit preprocess
--debug` shows which tokens train — both as an axolotl user runs them."""

from __future__ import annotations

import os

import pytest
from helpers import answer_of

from toolkit.cli import main
from toolkit.config import load_config

pytestmark = pytest.mark.slow

PROMPT = "What is 7 plus 7?"


def test_inference_answers_with_the_adapter_then_the_merged_model(
    tiny_model_dir, write_config, capsys
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = write_config(
        {"base_model": str(tiny_model_dir), "max_steps": 12, "val_set_size": 0.0, "save_steps": 12}
    )
    assert main(["inference", str(config), "--runtime", "local", "--prompt", PROMPT]) == 2
    assert "nothing has been trained into output_dir" in capsys.readouterr().err
    assert main(["train", str(config), "--runtime", "local"]) == 0
    capsys.readouterr()
    with_adapter = answer_of(capsys, config, prompt=PROMPT)
    assert main(["merge-lora", str(config), "--runtime", "local"]) == 0
    capsys.readouterr()
    merged = answer_of(capsys, config, prompt=PROMPT)
    assert merged == answer_of(capsys, config, "--model", "merged", prompt=PROMPT)
    assert with_adapter and merged == with_adapter
    # The untrained base answers otherwise: the trained weights are the ones used.
    tokenizer = AutoTokenizer.from_pretrained(load_config(config).config.output_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = base.generate(**ids, max_new_tokens=12, do_sample=False)
    untrained = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert untrained + "\n" != merged


def test_preprocess_debug_marks_the_trained_tokens(
    tiny_model_dir, write_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    config = write_config({"base_model": str(tiny_model_dir)})
    assert (
        main(
            [
                "preprocess",
                str(config),
                "--runtime",
                "local",
                "--debug",
                "--debug-num-examples",
                "2",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "writing to ./last_run_prepared as axolotl does" in err
    assert (tmp_path / "last_run_prepared").is_dir()
    assert "debug: the first 2 rows as tokenized (trained tokens between [[ and ]])" in out
    assert out.count("--- row ") == 2
    # The user's turn and the headers are not trained; the reply and its end token are.
    assert "<|im_start|>user\n" in out and "[[<think>\n\n</think>\n\n" in out
    assert "<|im_end|>]]" in out and "[[<|im_start|>" not in out
    assert (
        main(["preprocess", str(config), "--runtime", "local", "--debug", "--color", "always"]) == 0
    )
    colored = capsys.readouterr().out
    assert "\033[32m" in colored and "[[" not in colored


def test_inference_and_preprocess_debug_print_no_library_bars_or_warnings(
    tiny_model_dir, write_config, tmp_path, monkeypatch
):
    """What a user reads is toolkit's: no "Loading weights" bar, no FutureWarning of
    transformers' or peft's, on either stream (each command in a process of its own, as
    a user runs it: nothing quieted beforehand by another)."""
    import subprocess
    import sys

    from conftest import REPO

    monkeypatch.chdir(tmp_path)
    config = write_config({"base_model": str(tiny_model_dir), "max_steps": 2})
    assert main(["train", str(config), "--runtime", "local"]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def toolkit(*argv: str) -> subprocess.CompletedProcess:
        run = [sys.executable, "-m", "toolkit", *argv, "--runtime", "local"]
        return subprocess.run(run, capture_output=True, text=True, env=env, check=True)

    answered = toolkit("inference", str(config), "--prompt", PROMPT, "--max-new-tokens", "4")
    shown = toolkit("preprocess", str(config), "--debug")
    assert "inference: the adapter model in" in answered.stderr
    assert "debug: the first 3 rows" in shown.stdout
    for text in (answered.stdout, answered.stderr, shown.stdout, shown.stderr):
        assert "it/s]" not in text and "Loading weights" not in text
        assert "Warning" not in text and "warnings.warn" not in text
