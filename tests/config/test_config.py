"""Config loading: every problem at once, each naming key, value, what is accepted and the fix."""

from __future__ import annotations

import shutil

import pytest
import yaml
from conftest import DEMO_CONFIG
from helpers import problems_of
from pydantic import ValidationError

from toolkit.cli import main
from toolkit.config import load_config, parse_overrides
from toolkit.errors import ConfigError


def test_demo_config_is_valid(monkeypatch, tmp_path, tiny_model_dir):
    shutil.copytree(tiny_model_dir, tmp_path / ".cache" / "tiny-qwen3")
    (tmp_path / "configs" / "data").mkdir(parents=True)
    (tmp_path / "configs" / "data" / "demo-chat.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    loaded = load_config(DEMO_CONFIG)
    assert loaded.config.adapter == "lora"
    assert loaded.sources["micro_batch_size"] == "file"
    assert loaded.sources["lora_modules_to_save"] == "default"


def test_unknown_key_suggests_the_close_one(write_config):
    assert problems_of(write_config({"micro_batch_sizee": 2})) == [
        "micro_batch_sizee: unknown key; did you mean 'micro_batch_size'?"
    ]


def test_unknown_nested_key_suggests_within_its_level(write_config, tmp_path):
    path = write_config()
    data = yaml.safe_load(path.read_text())
    data["datasets"][0]["feild_messages"] = "conversations"
    path.write_text(yaml.safe_dump(data))
    assert problems_of(path) == [
        "datasets[0].feild_messages: unknown key; did you mean 'field_messages'?"
    ]


def test_all_problems_are_reported_together(write_config):
    problems = problems_of(
        write_config(
            {
                "micro_batch_size": 0,
                "adapter": "qlora",
                "optimizer": "adam",
                "bf16": "maybe",
                "base_model": "./no/such/model",
            }
        )
    )
    assert len(problems) == 5
    text = "\n".join(problems)
    assert "micro_batch_size: got 0; accepted: a number > 0" in text
    assert "adapter: 'qlora' needs load_in_4bit: true" in text
    assert "optimizer: got 'adam'; accepted: 'adamw_torch'" in text
    assert "bf16: got 'maybe'; accepted: true or false or 'auto'" in text
    assert "base_model: './no/such/model' does not exist" in text


def test_missing_dataset_file_names_the_path(write_config):
    path = write_config()
    data = yaml.safe_load(path.read_text())
    data["datasets"][0]["path"] = "data/missing.jsonl"
    path.write_text(yaml.safe_dump(data))
    [problem] = problems_of(path)
    assert problem.startswith("datasets[0].path: 'data/missing.jsonl' does not exist (looked in ")
    assert "fix the path" in problem


def test_exclusive_pairs_name_both_keys(write_config):
    problems = problems_of(
        write_config(
            {"warmup_steps": 2, "warmup_ratio": 0.1, "save_steps": 5, "saves_per_epoch": 2}
        )
    )
    assert problems == [
        "warmup_steps (2) and warmup_ratio (0.1) are both set; keep one",
        "save_steps and saves_per_epoch are both set; keep one",
    ]


def test_unsupported_axolotl_key_is_refused_by_name(write_config):
    [problem] = problems_of(write_config({"xformers_attention": True}))
    assert problem.startswith("xformers_attention: got True; not supported by toolkit (")


def test_unsupported_keys_holding_off_values_are_accepted(write_config):
    loaded = load_config(
        write_config(
            {
                "xformers_attention": False,
                "deepspeed": None,
                "special_tokens": {},
                "flash_attention": False,
            }
        )
    )
    assert loaded.warnings == []


def test_tracker_keys_turn_trackers_on_as_in_axolotl(write_config):
    from toolkit.config.trackers import reporting
    from toolkit.trainer.trackers import environment

    loaded = load_config(write_config({"wandb_project": "qwen3", "wandb_entity": None}))
    assert loaded.warnings == []
    assert reporting(loaded.config) == ["wandb"]
    assert environment(loaded.config)["WANDB_PROJECT"] == "qwen3"
    off = load_config(write_config({"wandb_project": "qwen3", "use_wandb": False}))
    assert reporting(off.config) == []
    mlflow = load_config(write_config({"mlflow_experiment_name": "e", "report_to": ["wandb"]}))
    assert reporting(mlflow.config) == ["mlflow", "wandb"]


def test_switches_of_axolotl_itself_are_ignored_with_the_reason(write_config, capsys):
    path = write_config({"strict": True, "dataloader_num_workers": 4})
    loaded = load_config(path)
    assert [w.split(":")[0] for w in loaded.warnings] == ["strict", "dataloader_num_workers"]
    assert all("toolkit decides this itself" in w for w in loaded.warnings)
    assert main(["validate", str(path)]) == 0
    assert "warning: strict: axolotl's own switch" in capsys.readouterr().err


def test_not_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base_model: [unclosed\nlr: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "is not valid YAML at line" in str(info.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping of keys to values, got a list"):
        load_config(path)


def test_overrides_parse_as_yaml_scalars():
    assert parse_overrides(
        [
            "--micro-batch-size",
            "2",
            "--bf16",
            "false",
            "--lr-scheduler=linear",
            "--gradient-checkpointing",
            "--datasets.0.path",
            "x.jsonl",
        ]
    ) == {
        "micro_batch_size": 2,
        "bf16": False,
        "lr_scheduler": "linear",
        "gradient_checkpointing": True,
        "datasets.0.path": "x.jsonl",
    }


def test_override_wins_and_is_marked(write_config):
    loaded = load_config(write_config(), parse_overrides(["--micro-batch-size", "2"]))
    assert loaded.config.micro_batch_size == 2
    assert loaded.sources["micro_batch_size"] == "command line"


def test_override_is_validated_like_the_file(write_config):
    assert problems_of(write_config(), {"micro_batch_size": 0}) == [
        "micro_batch_size: got 0; accepted: a number > 0; fix: set micro_batch_size to a number > 0"
    ]


def test_config_is_frozen(write_config):
    loaded = load_config(write_config())
    with pytest.raises(ValidationError, match="frozen"):
        loaded.config.micro_batch_size = 3


# --- through the CLI: exit codes, and stdout vs stderr --------------------------------------


def test_cli_validate_prints_resolved_config(write_config, capsys):
    assert main(["validate", str(write_config()), "--micro-batch-size", "3"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "micro_batch_size: 3  # command line\n" in out
    assert "\nseed: 42\n" in out
    assert "lora_modules_to_save: null  # default\n" in out


def test_cli_misspelled_key_exit_2_on_stderr(write_config, capsys):
    path = write_config({"lerning_rate": 0.1})
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: {path}: 1 problem\n  - lerning_rate: unknown key; did you mean 'learning_rate'?\n"
    )


def test_cli_train_bad_config_fails_before_any_work(write_config, capsys):
    path = write_config({"micro_batch_size": 0})
    assert main(["train", str(path), "--runtime", "local"]) == 2
    assert "micro_batch_size: got 0" in capsys.readouterr().err


def test_cli_missing_config_file(capsys, tmp_path):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist; pass the path of a YAML config" in capsys.readouterr().err


def test_cli_unknown_flag_for_command_without_overrides(capsys):
    assert main(["images", "list", "--bogus"]) == 2
    assert "Error: No such option '--bogus'." in capsys.readouterr().err


def test_an_override_without_a_value_is_an_error(write_config, capsys):
    """`--learning-rate` alone once became 1.0; a true/false key may stand alone."""
    path = write_config()
    assert main(["validate", str(path), "--learning-rate", "--sample-packing"]) == 2
    err = capsys.readouterr().err
    assert "--learning-rate: needs a value (e.g. --learning-rate VALUE)" in err
    assert "--sample-packing" not in err
    assert main(["validate", str(path), "--sample-packing", "--seed", "3"]) == 0
    assert "sample_packing: true" in capsys.readouterr().out
    assert main(["validate", str(path), "--datasets.0.split-thinking"]) == 0


def test_an_override_before_the_config_path_says_so(write_config, capsys):
    assert main(["train", "--seed", "3", str(write_config())]) == 2
    assert (
        "--seed: the config path comes first, then the overrides: toolkit train CONFIG "
        "--seed VALUE" in capsys.readouterr().err
    )


# --- deprecated spellings, derived values, explain ----------------------------------------


def test_deprecated_spellings_are_mapped_with_a_warning(write_config, tmp_path):
    path = write_config({"flash_attention": True})
    data = yaml.safe_load(path.read_text())
    data["datasets"][0].update({"message_field_role": "from", "message_field_content": "value"})
    path.write_text(yaml.safe_dump(data))
    loaded = load_config(path)
    assert loaded.config.attn_implementation == "flash_attention_2"
    assert loaded.sources["attn_implementation"] == "mapped from flash_attention (file)"
    mapping = loaded.config.datasets[0].message_property_mappings
    assert (mapping.role, mapping.content) == ("from", "value")
    assert loaded.warnings == [
        "flash_attention: deprecated; read as attn_implementation: 'flash_attention_2'",
        "datasets[0].message_field_role: deprecated; read as message_property_mappings.role: "
        "'from'",
        "datasets[0].message_field_content: deprecated; read as "
        "message_property_mappings.content: 'value'",
    ]


def test_batch_size_derives_accumulation(write_config):
    loaded = load_config(
        write_config({"batch_size": 16, "micro_batch_size": 4, "gradient_accumulation_steps": None})
    )
    assert loaded.config.accumulation_steps == 4
    assert loaded.sources["gradient_accumulation_steps"] == (
        "derived: batch_size 16 / micro_batch_size 4"
    )


def test_two_of_three_batch_keys(write_config):
    assert problems_of(
        write_config({"batch_size": 16, "micro_batch_size": 4, "gradient_accumulation_steps": 2})
    ) == [
        "micro_batch_size, gradient_accumulation_steps and batch_size are all set; give two "
        "of them (batch_size = micro_batch_size × gradient_accumulation_steps)"
    ]
    assert problems_of(
        write_config({"batch_size": 10, "micro_batch_size": 4, "gradient_accumulation_steps": None})
    ) == ["batch_size 10 is not a multiple of micro_batch_size 4; change one of them"]


def test_fsdp_and_deepspeed_exclude_each_other(write_config):
    problems = problems_of(write_config({"deepspeed": "zero3.json", "fsdp_version": 2}))
    assert "deepspeed and fsdp are both set; they exclude each other: keep one" in problems


def test_validate_explain_names_every_source(write_config, capsys):
    path = write_config({"flash_attention": True})
    assert main(["validate", str(path), "--explain", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "\nseed: 7  # command line\n" in out
    assert "\nsequence_len: 256  # file\n" in out
    assert "\nmax_grad_norm: 1.0  # default\n" in out
    assert (
        "\nattn_implementation: flash_attention_2  # mapped from flash_attention (file); "
        "at train time: decided per GPU: flash_attention_2/4 take FlashAttention-4"
    ) in out
    assert "\nbf16: auto  # file; at train time: auto: on where the GPU has bf16" in out


def test_validate_output_loads_back_as_the_same_values(write_config, capsys):
    """Comments never land inside a value (a string on several lines, such as
    step_separator's newline), with or without --explain."""
    import yaml

    path = write_config({"step_separator": "\n\n", "chat_template_kwargs": {"a": "x\ny"}})
    for flags in ([], ["--explain"]):
        assert main(["validate", str(path), *flags]) == 0
        shown = yaml.safe_load(capsys.readouterr().out)
        loaded = load_config(path)
        expected = loaded.config.model_dump(mode="json")
        expected["gradient_accumulation_steps"] = loaded.config.accumulation_steps
        assert shown == expected


@pytest.mark.parametrize("ref", [".cache/tiny-qwen3", "-models/qwen", "org/na--me", "org/name."])
def test_a_missing_folder_that_cannot_be_a_hub_id_is_not_looked_up(ref, write_config, tmp_path):
    """The demo's `.cache/tiny-qwen3` before `toolkit tiny-model`: no Hub repository can
    have that name, so validate says the folder is missing (exit 2), with no Hub call."""
    from toolkit.config import load_config
    from toolkit.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(write_config({"base_model": ref}))
    assert any(p.startswith(f"base_model: {ref!r} does not exist") for p in info.value.problems)


@pytest.mark.parametrize("micro", [None, 1])
def test_kto_with_one_row_a_batch_is_refused_at_validate(write_config, capsys, micro):
    """TRL's KTO estimates its KL term from the other rows of a batch: one row a batch
    is a traceback in the trainer, so validate refuses it (the default included)."""
    from toolkit.cli import main

    changes = {"rl": "kto", "datasets": [{"path": "trl-lib/kto-mix-14k", "type": "kto"}]}
    config = write_config({**changes, "micro_batch_size": micro})
    if micro is None:  # unset: the default, 1
        data = yaml.safe_load(config.read_text())
        del data["micro_batch_size"]
        config.write_text(yaml.safe_dump(data))
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "micro_batch_size: 1 with rl: kto; KTO estimates its KL term" in err
    assert "Traceback" not in err
    assert main(["validate", str(config), "--micro-batch-size", "2"]) == 0
