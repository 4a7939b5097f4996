"""Every key of axolotl's config schema is answered: read, mapped, warned about,
checked against the hardware, or refused by name — never "unknown key". The list is
toolkit/config/axolotl_keys.yaml, checked here against axolotl 0.19.0 itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from axolotl_ref import ROOT

from toolkit.config import load_config
from toolkit.config.inventory import CLASSES, inventory, read_axolotl
from toolkit.config.schema import Config, DatasetConfig
from toolkit.errors import ConfigError

BOOK = inventory()
TOP = sorted({**BOOK["top"], **BOOK["plugins"]})
PER_DATASET = sorted(BOOK["datasets"])


def test_the_file_lists_exactly_axolotls_keys():
    found = read_axolotl(ROOT)
    assert BOOK["axolotl"] == "0.19.0"
    for section in ("top", "datasets", "plugins", "plugin_classes"):
        assert set(BOOK[section]) == found[section], section
    assert len(BOOK["top"]) >= 390


def test_every_key_is_classified_and_honoured_keys_are_read():
    for section, model in (("top", Config), ("plugins", Config), ("datasets", DatasetConfig)):
        for key, entry in BOOK[section].items():
            assert entry["class"] in CLASSES, f"{section}.{key}: {entry}"
            if entry["class"] == "honoured":
                assert key in model.model_fields, f"{section}.{key} is not in toolkit's schema"
            else:
                assert entry.get("why"), f"{section}.{key}: a {entry['class']} key needs a why"


def load(tmp_path: Path, top: dict, dataset: dict | None = None):
    data = {
        "base_model": "Qwen/Qwen3-0.6B",
        "datasets": [{"path": "org/chat", **(dataset or {})}],
        "output_dir": str(tmp_path / "out"),
        **top,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        return load_config(path), []
    except ConfigError as exc:
        return None, exc.problems


# A value no key holds by default and that is not "off": each key is read as set.
SET = "set-by-test"


@pytest.mark.parametrize("key", TOP)
def test_no_axolotl_key_is_unknown(key, tmp_path):
    loaded, problems = load(tmp_path, {key: SET})
    assert not [p for p in problems if "unknown key" in p], problems
    entry = {**BOOK["plugins"], **BOOK["top"]}[key]
    if entry["class"] == "refused":
        assert f"{key}: got {SET!r}; not supported by toolkit ({entry['why']})" in problems
    elif entry["class"] in ("ignored", "speed"):
        assert loaded is not None and any(w.startswith(f"{key}: ") for w in loaded.warnings)
    elif entry["class"] == "hardware":
        assert loaded is not None and key in loaded.hardware


@pytest.mark.parametrize("key", PER_DATASET)
def test_no_axolotl_dataset_key_is_unknown(key, tmp_path):
    loaded, problems = load(tmp_path, {}, {key: SET})
    assert not [p for p in problems if "unknown key" in p], problems
    entry = BOOK["datasets"][key]
    if entry["class"] == "refused":
        assert any(p.startswith(f"datasets[0].{key}: got ") for p in problems), problems


def test_all_of_axolotls_keys_at_once_are_answered(tmp_path):
    """As `toolkit validate` meets a config that sets every key: every problem names a
    refused key or a value, none an unknown key."""
    _, problems = load(tmp_path, dict.fromkeys(TOP, SET), dict.fromkeys(PER_DATASET, SET))
    assert problems and not [p for p in problems if "unknown key" in p]


@pytest.mark.parametrize(
    "typo, suggestion",
    [
        ("report_too", "report_to"),
        ("use_wandbb", "use_wandb"),
        ("learnin_rate", "learning_rate"),
        ("micro_batchsize", "micro_batch_size"),
        ("sequence_length", "sequence_len"),
        ("flash_atention", "flash_attention"),
        ("epochs", None),
        ("my_custom_key", None),
        ("flex_attn_kwargs", "flex_attn_compile_kwargs"),
        ("batch", None),
    ],
)
def test_did_you_mean_only_for_close_names(typo, suggestion, tmp_path):
    _, problems = load(tmp_path, {typo: 1})
    [line] = [p for p in problems if p.startswith(f"{typo}:")]
    if suggestion:
        assert line == f"{typo}: unknown key; did you mean '{suggestion}'?"
    else:
        assert line == f"{typo}: unknown key; remove it or check the spelling"
