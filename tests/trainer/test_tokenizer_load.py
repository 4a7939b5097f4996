"""A Qwen3 tokenizer is loaded without AutoTokenizer (whose import brings torch) and
is the one AutoTokenizer loads; `toolkit preprocess` never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import DEMO_DATA

from toolkit.config.load import load_config
from toolkit.tiny import write_tiny_model
from toolkit.trainer.model import load_tokenizer, qwen3_tokenizer_class

TEXTS = [
    "Hello, world! 你好 <|im_start|>user\nhi<|im_end|>\n",
    "<think>\nreasoning\n</think>\n\n  spaces\t\ttabs and émojis 🙂 <|endoftext|>",
    "",
]


def _config(tmp_path, model, **changes) -> object:
    data = {"base_model": str(model), "datasets": [{"path": str(DEMO_DATA)}], **changes}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path).config


def _same_tokenizer(ours, auto) -> None:
    assert type(ours) is type(auto)
    assert ours.special_tokens_map == auto.special_tokens_map
    assert ours.chat_template == auto.chat_template
    assert ours.get_vocab() == auto.get_vocab()
    assert (ours.eos_token_id, ours.pad_token_id) == (auto.eos_token_id, auto.pad_token_id)
    for text in TEXTS:
        assert ours.encode(text) == auto.encode(text)
        assert ours(text, add_special_tokens=False)["input_ids"] == auto.encode(
            text, add_special_tokens=False
        )


def _qwen3_model(tmp_path, tokenizer_dir, model_type="qwen3"):
    """Qwen3's real tokenizer files in a model folder whose config names `model_type`."""
    model = tmp_path / f"model-{model_type}"
    shutil.copytree(tokenizer_dir, model)
    (model / "config.json").write_text(json.dumps({"model_type": model_type}))
    return model


@pytest.mark.parametrize("moe", [False, True])
def test_the_tiny_models_tokenizer_is_autotokenizers(tmp_path, tiny_model_dir, moe):
    from transformers import AutoTokenizer

    model = write_tiny_model(tmp_path / "moe", moe=True) if moe else tiny_model_dir
    assert qwen3_tokenizer_class(str(model), {}) is not None
    ours = load_tokenizer(_config(tmp_path, model))
    _same_tokenizer(ours, AutoTokenizer.from_pretrained(model))


@pytest.mark.parametrize("model_type", ["qwen3", "qwen3_moe"])
def test_qwen3s_real_tokenizer_is_autotokenizers(
    tmp_path, tiny_model_dir, qwen3_tokenizer_dir, model_type
):
    from transformers import AutoTokenizer

    model = _qwen3_model(tmp_path, qwen3_tokenizer_dir, model_type)
    assert qwen3_tokenizer_class(str(model), {}).__name__ == "Qwen2Tokenizer"
    ours = load_tokenizer(_config(tmp_path, tiny_model_dir, tokenizer_config=str(model)))
    _same_tokenizer(ours, AutoTokenizer.from_pretrained(model))


@pytest.mark.parametrize(
    ("model_type", "change"),
    [
        ("llama", {}),  # another model type: AutoTokenizer's own rules
        ("qwen3", {"auto_map": {"AutoTokenizer": ["x.Tok", None]}}),  # the model's code
        ("qwen3", {"tokenizer_class": "LlamaTokenizerFast"}),  # another class
    ],
)
def test_anything_else_is_left_to_autotokenizer(tmp_path, qwen3_tokenizer_dir, model_type, change):
    model = _qwen3_model(tmp_path, qwen3_tokenizer_dir, model_type)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**settings, **change}))
    assert qwen3_tokenizer_class(str(model), {}) is None


def test_a_folder_without_a_model_config_is_left_to_autotokenizer(qwen3_tokenizer_dir):
    assert not (qwen3_tokenizer_dir / "config.json").exists()
    assert qwen3_tokenizer_class(str(qwen3_tokenizer_dir), {}) is None


def test_preprocess_never_imports_torch(tmp_path, tiny_model_dir):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(tiny_model_dir),
                "chat_template": "qwen3",
                "datasets": [{"path": str(DEMO_DATA), "type": "chat_template"}],
                "dataset_prepared_path": str(tmp_path / "prepared"),
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    code = (
        "import sys\n"
        "from toolkit.cli import main\n"
        f"code = main(['preprocess', {str(config)!r}, '--runtime', 'local'])\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "prepared data:" in done.stdout
    assert "torch imported: False" in done.stdout


def test_a_transformers_without_its_rust_backed_classes_decides_through_autotokenizer(
    tiny_model_dir, monkeypatch
):
    """transformers 4 has no TokenizersBackend, and its Qwen2Tokenizer is the slow one
    (AutoTokenizer would load Qwen2TokenizerFast): the choice is then AutoTokenizer's."""
    import transformers

    assert qwen3_tokenizer_class(str(tiny_model_dir), {}) is not None
    monkeypatch.setattr(transformers, "TokenizersBackend", None)
    assert qwen3_tokenizer_class(str(tiny_model_dir), {}) is None
