"""A corpus of malformed configs and dataset files: each gives one screen naming what is
wrong, exit 2, no traceback and no outputs."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import DEMO_CONFIG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.cli import main
from toolkit.config import Config, load_config
from toolkit.errors import ConfigError

DEMO = yaml.safe_load(DEMO_CONFIG.read_text())


def demo(**changes):
    data = {**DEMO, **changes}
    return {k: v for k, v in data.items() if v != "<drop>"}


def ds(**changes):
    entry = {**DEMO["datasets"][0], **changes}
    return demo(datasets=[{k: v for k, v in entry.items() if v != "<drop>"}])


BAD_CONFIGS = [
    ("not yaml", "base_model: [unclosed\n"),
    ("tab indentation", "base_model: x\n\tdatasets: []\n"),
    ("a list", "- base_model\n"),
    ("a scalar", "just words\n"),
    ("empty", ""),
    ("only comments", "# nothing\n"),
    ("misspelled key", demo(micro_batchsize=2)),
    ("unknown key", demo(frobnicate=True)),
    ("missing base_model", demo(base_model="<drop>")),
    ("missing datasets", demo(datasets="<drop>")),
    ("datasets empty", demo(datasets=[])),
    ("datasets a string", demo(datasets="data.jsonl")),
    ("datasets entry a string", demo(datasets=["data.jsonl"])),
    ("dataset without path", ds(path="<drop>")),
    ("dataset path missing file", ds(path="nope/missing.jsonl")),
    ("dataset unknown type", ds(type="sharegpt")),
    ("dataset type for rl on sft", ds(type="chat_template.default")),
    ("dataset unknown field", ds(fieldmessages="x")),
    ("roles_to_train unknown role", ds(roles_to_train=["bot"])),
    ("train_on_eos bad", ds(train_on_eos="sometimes")),
    ("ds_type bad", ds(ds_type="xml")),
    ("split bad type", ds(split=3)),
    ("shards zero", ds(shards=0)),
    ("message mappings not a map", ds(message_property_mappings="role")),
    ("micro_batch_size zero", demo(micro_batch_size=0)),
    ("micro_batch_size negative", demo(micro_batch_size=-1)),
    ("micro_batch_size text", demo(micro_batch_size="four")),
    ("micro_batch_size float", demo(micro_batch_size=1.5)),
    ("gradient_accumulation zero", demo(gradient_accumulation_steps=0)),
    ("learning_rate zero", demo(learning_rate=0)),
    ("learning_rate text", demo(learning_rate="fast")),
    ("num_epochs negative", demo(num_epochs=-1)),
    ("max_steps zero", demo(max_steps=0)),
    ("sequence_len zero", demo(sequence_len=0)),
    ("sequence_len list", demo(sequence_len=[512])),
    ("lora_r zero", demo(lora_r=0)),
    ("lora_dropout one", demo(lora_dropout=1.0)),
    ("adapter unknown", demo(adapter="dora")),
    ("qlora without 4bit", demo(adapter="qlora")),
    ("4bit without qlora", demo(load_in_4bit=True)),
    ("4bit and 8bit", demo(adapter="qlora", load_in_4bit=True, load_in_8bit=True)),
    ("optimizer unknown", demo(optimizer="adam")),
    ("scheduler unknown", demo(lr_scheduler="triangle")),
    ("warmup both", demo(warmup_steps=2, warmup_ratio=0.1)),
    ("warmup ratio one", demo(warmup_steps="<drop>", warmup_ratio=1.5)),
    ("save both", demo(save_steps=5, saves_per_epoch=2)),
    ("bf16 and fp16", demo(bf16=True, fp16=True)),
    ("bf16 text", demo(bf16="maybe")),
    ("chat_template unknown", demo(chat_template="llama3")),
    ("jinja without text", demo(chat_template="jinja")),
    ("jinja text without jinja", demo(chat_template_jinja="{{ x }}")),
    ("val_set_size negative", demo(val_set_size=-0.1)),
    ("val_set_size fractional count", demo(val_set_size=2.5)),
    ("output_dir is a file", demo(output_dir="README.md")),
    ("rl unknown", demo(rl="ppo")),
    ("rl and reward model", demo(rl="dpo", reward_model=True)),
    ("packing with rl", demo(rl="dpo", sample_packing=True)),
    ("NUL byte in a path", demo(base_model="models\x00tiny")),
    ("two cross-entropy replacements", demo(cut_cross_entropy=True, liger_cross_entropy=True)),
    ("deepspeed set", demo(deepspeed="zero3.json")),
    ("three batch keys", demo(batch_size=8)),
    ("reward model with labels", demo(reward_model=True, num_labels=3)),
    ("seed text", demo(seed="forty-two")),
    # Numbers that are not numbers: every float key must be finite.
    *[
        (f"{key} {word}", demo(**{key: value}, **extra))
        for key, extra in [
            ("learning_rate", {}),
            ("weight_decay", {}),
            ("max_grad_norm", {}),
            ("num_epochs", {}),
            ("val_set_size", {}),
            ("lora_dropout", {}),
            ("warmup_ratio", {"warmup_steps": None}),
            ("simpo_gamma", {"rl": "simpo"}),
            ("cpo_alpha", {"rl": "simpo"}),
            ("rl_beta", {"rl": "dpo"}),
            ("orpo_alpha", {"rl": "orpo"}),
            ("kto_desirable_weight", {"rl": "kto"}),
            ("center_rewards_coefficient", {"reward_model": True}),
        ]
        for word, value in [("infinite", float("inf")), ("nan", float("nan"))]
    ],
    # Where a run writes: never over an input, never the root, home or a foreign folder.
    ("output_dir contains the dataset", demo(output_dir="configs")),
    ("output_dir is the dataset's folder", demo(output_dir="configs/data")),
    ("output_dir is the dataset file", demo(output_dir="configs/data/demo-chat.jsonl")),
    ("prepared data contains the dataset", demo(dataset_prepared_path="configs")),
    (
        "prepared data inside the model",
        demo(base_model="tests/data", dataset_prepared_path="tests/data/prep"),
    ),
    ("output_dir is the root", demo(output_dir="/")),
    ("output_dir is the root, dotted", demo(output_dir="/tmp/../")),
    ("output_dir is home", demo(output_dir="~")),
    ("output_dir is a foreign folder", demo(output_dir="toolkit")),
    ("output_dir is the repository", demo(output_dir=".")),
    ("allow_existing_output_dir not a bool", demo(allow_existing_output_dir="please")),
    ("base_model a folder without a model", demo(base_model="toolkit")),
    ("base_model a file", demo(base_model="README.md")),
    ("tokenizer_config without a tokenizer", demo(tokenizer_config="toolkit")),
    # Hostile YAML: bounded before anything is built.
    (
        "alias bomb",
        'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
        + "".join(
            f"a{i}: &a{i} [" + ", ".join(["*a" if i == 1 else f"*a{i - 1}"] * 10) + "]\n"
            for i in range(1, 9)
        )
        + "base_model: *a8\n",
    ),
    ("deep nesting", "base_model: " + "[" * 3000 + "]" * 3000 + "\n"),
    ("deep mappings", "".join(" " * i + f"k{i}:\n" for i in range(40)) + " " * 40 + "v: 1\n"),
    ("recursive anchor", "base_model: &x [*x]\n"),
    ("recursive mapping", "datasets: &d\n  - path: *d\n"),
    ("huge file", "base_model: x\n" + "# padding\n" * 200000),
]


@pytest.mark.parametrize("name, content", BAD_CONFIGS, ids=[n for n, _ in BAD_CONFIGS])
def test_bad_config(name, content, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(__import__("conftest").REPO)
    path = tmp_path / "config.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    assert main(["validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.splitlines()) <= 25, err


def test_corpus_is_big_enough():
    assert len(BAD_CONFIGS) >= 100 and len(BAD_ROWS) + len(BAD_FILES) >= 50


MSG = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
BAD_ROWS = [
    ("unknown role", {"messages": [{"role": "bot", "content": "x"}]}),
    ("empty conversation", {"messages": []}),
    ("messages a string", {"messages": "hi"}),
    ("messages a mapping", {"messages": {"role": "user"}}),
    ("messages missing", {"conversation": MSG}),
    ("message a string", {"messages": ["hi"]}),
    ("message without role", {"messages": [{"content": "x"}]}),
    ("message without content", {"messages": [{"role": "user"}]}),
    ("content a number", {"messages": [{"role": "user", "content": 3}]}),
    # content: null is OpenAI's tool-call form and a list of text parts is read as its
    # text; an image part, or a tool call that is not one, cannot be trained.
    ("content an image", {"messages": [{"role": "user", "content": [{"type": "image"}]}]}),
    ("content a list of numbers", {"messages": [{"role": "user", "content": [1, 2]}]}),
    (
        "tool call arguments not JSON",
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"function": {"name": "f", "arguments": "{"}}],
                }
            ]
        },
    ),
    (
        "tool call without a name",
        {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}]},
    ),
    ("tools not a list", {"tools": 3, "messages": MSG}),
    ("role null", {"messages": [{"role": None, "content": "x"}]}),
    ("messages null", {"messages": None}),
    ("messages a mapping", {"messages": {"role": "user", "content": "hi"}}),
    ("messages a number", {"messages": 3}),
    ("message a list", {"messages": [["user", "hi"]]}),
    ("message a number", {"messages": [5]}),
    ("role unknown", {"messages": [{"role": "bot", "content": "x"}, *MSG]}),
    ("role a number", {"messages": [{"role": 1, "content": "x"}]}),
    ("role a list", {"messages": [{"role": ["user"], "content": "x"}]}),
    ("content a mapping", {"messages": [{"role": "user", "content": {"text": "x"}}]}),
    ("content a bool", {"messages": [{"role": "assistant", "content": True}]}),
    ("row an empty object", {}),
    ("row a bool", True),
    ("row a list", [1, 2]),
    ("row a number", 7),
    ("row a string", "hello"),
    ("row null", None),
]
BAD_FILES = [
    ("truncated json line", b'{"messages": [{"role": "user", "content": "hi"}\n', "not valid JSON"),
    ("non-utf8 bytes", b'{"messages": []}\n\xff\xfe\xfd\n', "not UTF-8"),
    ("truncated json array", b'[{"messages": []}', "not valid JSON"),
    ("json array of numbers", b"[1, 2, 3]", "must be a JSON object"),
    ("bare text", b"hello world\n", "not valid JSON"),
    ("empty file", b"", "bad.jsonl' is empty (0 bytes)"),
    ("only blank lines", b"\n\n\n", "bad.jsonl' holds no rows"),
    (
        "gzip named jsonl",
        bytes.fromhex("1f8b0800000000000003") + b"rest",
        "is gzip-compressed but named .jsonl; decompress it first (`gunzip -c bad.jsonl",
    ),
    ("zstd named jsonl", bytes.fromhex("28b52ffd") + b"rest", "is zstd-compressed"),
    ("zip named csv", b"PK\x03\x04rest", "is zip-compressed but named .csv"),
    ("nul bytes", b"\x00\x00\x00", "not valid JSON"),
    ("utf-16 bom", '{"messages": []}'.encode("utf-16"), "not UTF-8"),
    (
        "a giant row",
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "x" * 200000},
                        {"role": "assistant", "content": "y"},
                    ]
                }
            )
            + "\n"
        ).encode(),
        "no usable rows",
    ),
    (
        "every row too long",
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "word " * 400},
                        {"role": "assistant", "content": "ok"},
                    ]
                }
            )
            + "\n"
            for _ in range(3)
        ).encode(),
        "no usable rows",
    ),
    (
        "only user turns",
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n").encode(),
        "no usable rows",
    ),
    ("parquet suffix, text inside", b"not parquet", "could not read as parquet"),
    ("csv suffix without messages", b"a,b\n1,2\n", "has no 'messages' field"),
    ("bzip2 named jsonl", b"BZh91AY&SY rest", "is bzip2-compressed but named .jsonl"),
    ("zip named json", b"PK\x03\x04 rest", "is zip-compressed"),
    ("a trailing comma", b'{"messages": [],}\n', "not valid JSON"),
    ("a lone number line", b"42\n", "must be a JSON object"),
    ("a lone string line", b'"hello"\n', "must be a JSON object"),
    ("array of arrays", b"[[1], [2]]", "must be a JSON object"),
    ("nul in the middle", b'{"messages": []}\n\x00\n', "not valid JSON"),
    ("only whitespace", b"   \t  \n  ", "holds no rows"),
]


def write_row(path, row):
    path.write_text(json.dumps(row) + "\n")


@pytest.mark.parametrize("name, row", BAD_ROWS, ids=[n for n, _ in BAD_ROWS])
def test_bad_row(name, row, tiny_model_dir, write_config, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    write_row(data, row)
    path = write_config({"base_model": str(tiny_model_dir), "max_steps": 1})
    assert main(["train", str(path), "--runtime", "local", "--datasets.0.path", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "row 1" in err
    assert not (tmp_path / "out" / "run.json").exists()


@pytest.mark.parametrize("name, content, message", BAD_FILES, ids=[n for n, *_ in BAD_FILES])
def test_bad_file(name, content, message, tiny_model_dir, write_config, tmp_path, capsys):
    suffix = ".parquet" if "parquet" in name else ".csv" if "csv" in name else ".jsonl"
    data = tmp_path / f"bad{suffix}"
    data.write_bytes(content)
    path = write_config({"base_model": str(tiny_model_dir), "max_steps": 1, "sequence_len": 64})
    assert main(["train", str(path), "--runtime", "local", "--datasets.0.path", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in err, err
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_directory_where_a_file_is_expected(write_config, tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "is a directory; pass the YAML config file" in capsys.readouterr().err


# --- property-based: whatever the YAML holds, the loader answers with a config or a
# ConfigError, never another exception ------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        *Config.model_fields,
        "datasets",
        "flash_attention",
        "sample_packing",
        "wandb_project",
        "batch_size",
        "not_a_key",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_loader_never_raises_anything_but_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.render().startswith("error: ")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_loader_survives_arbitrary_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError:
        pass
