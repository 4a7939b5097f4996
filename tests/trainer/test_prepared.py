"""The tokenized-data cache: keyed by everything that decides the tokens."""

from __future__ import annotations

from conftest import DEMO_DATA

from toolkit.cli import main
from toolkit.config import load_config


def test_preprocess_then_train_reuses_and_changes_invalidate(
    tiny_model_dir, write_config, tmp_path, capsys
):
    prepared = tmp_path / "prepared"
    data = tmp_path / "chat.jsonl"
    data.write_text(DEMO_DATA.read_text())
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "max_steps": 2,
            "save_steps": 2,
            "dataset_prepared_path": str(prepared),
        }
    )
    args = ["--runtime", "local", "--datasets.0.path", str(data)]

    assert main(["preprocess", str(path), *args]) == 0
    [first] = list(prepared.iterdir())
    assert "data: prepared data written to" in capsys.readouterr().out
    from toolkit.trainer.prepared import _read

    examples, report = _read(first)
    assert len(examples) == 96 and report.kept == 96

    assert main(["preprocess", str(path), *args]) == 0
    assert f"data: reusing prepared data from {first}" in capsys.readouterr().out
    assert main(["train", str(path), *args]) == 0
    assert f"data: reusing prepared data from {first}" in capsys.readouterr().out

    assert main(["preprocess", str(path), *args, "--sequence-len", "64"]) == 0
    assert len(list(prepared.iterdir())) == 2, "a setting that changes tokens made a new key"
    data.write_text(DEMO_DATA.read_text().replace("capital", "Capital"))
    assert main(["preprocess", str(path), *args]) == 0
    assert len(list(prepared.iterdir())) == 3, "new data bytes made a new key"
    assert not [p for p in prepared.iterdir() if p.name.startswith(".")], "temporary left"


def test_preprocess_is_for_sft(write_config, tiny_model_dir, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "rl": "dpo",
            "dataset_prepared_path": str(tmp_path / "prepared"),
            "datasets": [{"path": str(pairs), "type": "chat_template.default"}],
        }
    )
    assert main(["preprocess", str(path), "--runtime", "local"]) == 2
    assert "preprocess caches SFT data; this config trains preference" in capsys.readouterr().err


def test_worker_processes_encode_exactly_as_one_process(tiny_model_dir, write_config, tmp_path):
    from toolkit.tiny import demo_conversations
    from toolkit.trainer.chat import TurnRule, build_encoder
    from toolkit.trainer.data import encode_rows

    rows = demo_conversations(600, seed=5)
    rows[17] = {"messages": [{"role": "robot", "content": "x"}]}
    cfg = load_config(write_config({"base_model": str(tiny_model_dir)})).config
    _, encoder = build_encoder(cfg)
    ds = cfg.datasets[0]
    rule = TurnRule.from_config(cfg, ds)
    alone = encode_rows(encoder, ds, rule, rows, 1)
    shared = encode_rows(encoder, ds, rule, rows, 2)
    assert alone == shared and len(shared) == 600
    assert shared[17].startswith("messages[0].role is 'robot'")
