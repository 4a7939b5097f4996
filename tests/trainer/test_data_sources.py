"""Where rows come from: file formats, folders, save_to_disk, split expressions, shards,
and several datasets in one config."""

from __future__ import annotations

import json

import pytest
from helpers import read_run

from toolkit.config import DatasetConfig, load_config
from toolkit.errors import DataError
from toolkit.tiny import demo_conversations, demo_preferences
from toolkit.trainer.data import apply_split, read_rows, shard

CHATS = demo_conversations(20)
PAIRS = [
    {
        "system": "",
        "input": r["messages"][0]["content"],
        "chosen": r["chosen"],
        "rejected": r["rejected"],
    }
    for r in demo_preferences(20)
]


def rows_of(path, **fields) -> list[dict]:
    return read_rows(DatasetConfig(path=str(path), **fields), 0)


def test_parquet_and_jsonl_and_json_array(tmp_path):
    from datasets import Dataset

    Dataset.from_list(CHATS).to_parquet(str(tmp_path / "chats.parquet"))
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    (tmp_path / "chats.json").write_text(json.dumps(CHATS))
    for name in ("chats.parquet", "chats.jsonl", "chats.json"):
        assert rows_of(tmp_path / name) == CHATS, name


def test_csv_for_flat_rows(tmp_path):
    from datasets import Dataset

    Dataset.from_list(PAIRS).to_csv(str(tmp_path / "pairs.csv"), index=False)
    got = rows_of(tmp_path / "pairs.csv", type="bradley_terry.chat_template")
    assert [(r["input"], r["chosen"]) for r in got] == [(r["input"], r["chosen"]) for r in PAIRS]


def test_arrow_stream_file(tmp_path):
    import pyarrow as pa

    table = pa.Table.from_pylist(CHATS)
    with pa.OSFile(str(tmp_path / "chats.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    assert rows_of(tmp_path / "chats.arrow") == CHATS


def test_folder_with_data_files_glob(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS[:5]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS[5:8]))
    (tmp_path / "notes.txt").write_text("not data")
    assert rows_of(tmp_path) == CHATS[:8]
    assert rows_of(tmp_path, data_files="b*.jsonl") == CHATS[5:8]


def test_save_to_disk_dataset_and_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(CHATS).save_to_disk(str(tmp_path / "one"))
    DatasetDict(
        {"train": Dataset.from_list(CHATS[:10]), "test": Dataset.from_list(CHATS[10:])}
    ).save_to_disk(str(tmp_path / "dict"))
    assert rows_of(tmp_path / "one") == CHATS
    assert rows_of(tmp_path / "dict", split="test[:50%]") == CHATS[10:15]
    with pytest.raises(DataError, match=r"has splits \['test', 'train'\], not 'validation'"):
        rows_of(tmp_path / "dict", split="validation")


@pytest.mark.parametrize(
    "split, expected",
    [
        ("train", list(range(10))),
        ("train[:20%]", [0, 1]),
        ("train[2:5]", [2, 3, 4]),
        ("train[-3:]", [7, 8, 9]),
        ("train[50%:]", [5, 6, 7, 8, 9]),
        ("train[10%:30%]", [1, 2]),
    ],
)
def test_split_expressions(split, expected):
    assert apply_split(list(range(10)), split) == expected


def test_bad_split_expression_and_local_split_name(tmp_path):
    with pytest.raises(DataError, match="is not a split expression; write e.g. train"):
        apply_split([1], "train[::2]")
    (tmp_path / "c.jsonl").write_text(json.dumps(CHATS[0]) + "\n")
    with pytest.raises(DataError, match="local files hold one split, 'train'"):
        rows_of(tmp_path / "c.jsonl", split="test")


def test_shards_are_contiguous_and_cover_everything():
    rows = list(range(10))
    pieces = [shard(rows, 3, i) for i in range(3)]
    assert pieces == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(DataError, match="shards_idx 3 is outside 0…2"):
        shard(rows, 3, 3)


def test_several_datasets_are_mixed(tiny_model_dir, tmp_path, write_config):
    from datasets import Dataset
    from helpers import run

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    Dataset.from_list(demo_conversations(30, seed=5)).to_parquet(str(tmp_path / "b.parquet"))
    path = write_config(
        {"base_model": str(tiny_model_dir), "max_steps": 2, "save_steps": 2, "val_set_size": 0.0}
    )
    loaded = load_config(
        path,
        {
            "datasets": [
                {
                    "path": str(tmp_path / "a.jsonl"),
                    "type": "chat_template",
                    "split": "train[:50%]",
                },
                {"path": str(tmp_path / "b.parquet"), "type": "chat_template", "shards": 3},
            ]
        },
    )
    data = read_run(run(loaded))["data"]
    assert [d["rows"] for d in data["per_dataset"]] == [10, 10]
    assert data["rows"] == 20
