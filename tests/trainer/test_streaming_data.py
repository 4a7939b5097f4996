"""Data at scale: rows read as they are taken, tokenized in chunks and written as they
come; prepared data memory-mapped; splits and packing over views of it; and the whole of
preprocessing in bounded memory."""

from __future__ import annotations

import copy
import json
import pickle
import random
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from conftest import REPO

from toolkit.config import DatasetConfig, load_config
from toolkit.errors import DataError
from toolkit.tiny import demo_conversations
from toolkit.trainer.chat import IGNORE_INDEX, TooLong, TurnRule, build_encoder, token_reach
from toolkit.trainer.data import (
    BIG_ROW,
    Example,
    _runs,
    apply_split,
    build_examples,
    open_rows,
    read_rows,
    shard,
    split_validation,
)
from toolkit.trainer.packing import pack
from toolkit.trainer.prepared import _read, load_or_build
from toolkit.trainer.tokenized import Examples, collect

CHATS = demo_conversations(40, seed=3)


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# --- rows read as they are taken -------------------------------------------------------------


def test_json_lines_are_the_lines_splitlines_finds(tmp_path):
    """Rows are the file's non-blank lines as str.splitlines cuts them (\\r\\n, a lone \\r,
    blank and whitespace lines), and its last line may have no end."""
    lines = [json.dumps(r) for r in CHATS[:6]]
    text = f"{lines[0]}\r\n\n   \n{lines[1]}\r{lines[2]}\n\u3000\n"
    text += f"{lines[3]}\n{lines[4]}\n{lines[5]}"
    path = tmp_path / "chats.jsonl"
    path.write_text(text, encoding="utf-8", newline="")
    assert read_rows(DatasetConfig(path=str(path)), 0) == CHATS[:6]
    assert [json.loads(x) for x in text.splitlines() if x.strip()] == CHATS[:6]


def test_a_huge_row_is_read_alone_and_its_neighbours_whole(tmp_path):
    """A row over BIG_ROW bytes is read by itself (its bytes freed once parsed); the
    rows on either side of it, in any selection, are the file's."""
    rows = [*CHATS[:3], {"messages": [{"role": "user", "content": "é" * (BIG_ROW + 5)}]}]
    rows += CHATS[3:6]
    path = tmp_path / "chats.jsonl"
    path.write_text(jsonl(rows), encoding="utf-8")
    assert read_rows(DatasetConfig(path=str(path)), 0) == rows
    opened = open_rows(DatasetConfig(path=str(path)), 0)
    for picked in ([2, 3, 4], [3], [0, 1, 2, 4, 5, 6], [6, 3, 2]):
        assert opened.take(picked) == [rows[i] for i in picked]
    assert list(_runs([1, 2, 3, 4, 5, 7], lambda i: i == 3)) == [[1, 2], [3], [4, 5], [7]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n\n{"b": \xff}\n', "chats.jsonl line 3 is not UTF-8; re-encode"),
        (b'{"a": 1}\n{"b": 2\n', "chats.jsonl line 2 is not valid JSON (Expecting ',' delimiter)"),
        (b'{"a": 1}\n\n[1, 2]\n', "chats.jsonl row 2 is an array; each row must be a JSON object"),
    ],
)
def test_a_bad_line_is_named_when_its_row_is_read(tmp_path, content, message):
    path = tmp_path / "chats.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_rows(DatasetConfig(path=str(path)), 0)


def test_selections_take_the_rows_a_list_would(tmp_path):
    """Split expressions, shards and the per-dataset shuffle pick the same rows from the
    file index as from a list of every row."""
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.jsonl").write_text(jsonl(CHATS[:17]))
    (folder / "b.jsonl").write_text(jsonl(CHATS[17:]))
    ds = DatasetConfig(path=str(folder), split="train[10%:95%]", shards=3, shards_idx=1)
    expected = shard(apply_split(list(CHATS), ds.split), 3, 1)
    rows = open_rows(ds, 0)
    assert rows.take(range(len(rows))) == expected
    shuffled = list(expected)
    random.Random(7).shuffle(shuffled)
    again = rows.shuffled(random.Random(7))
    assert again.take(range(len(again))) == shuffled
    assert again.take([3, 1, 2]) == [shuffled[3], shuffled[1], shuffled[2]]


# --- tokenized in chunks, by workers, exactly as one row at a time ---------------------------


def long_tailed(n: int, seed: int = 0) -> list[dict]:
    """Demo conversations with a long tail: a fifth of the rows' messages repeated many
    times over."""
    rng = random.Random(seed)
    rows = copy.deepcopy(demo_conversations(n, seed=seed))
    for row in rows:
        if rng.random() < 0.2:
            times = min(200, int(rng.paretovariate(1.0) * 4))
            for message in row["messages"]:
                message["content"] = " ".join([message["content"]] * times)
    return rows


@pytest.mark.parametrize("strategy", ["drop", "truncate", "split"])
def test_streamed_examples_are_those_of_each_row_alone(
    tiny_model_dir, write_config, tmp_path, strategy
):
    """Chunks, two worker processes, the file index and the length policy give, row for
    row, what encoding each conversation alone and applying the policy by hand gives."""
    rows = long_tailed(700, seed=1)
    rows[5]["messages"][1]["content"] = ""  # an empty trained turn, counted
    data = tmp_path / "chats.jsonl"
    data.write_text(jsonl(rows))
    cfg = load_config(
        write_config(
            {
                "sequence_len": 128,
                "excess_length_strategy": strategy,
                "dataset_processes": 2,
                "datasets": [{"path": str(data), "type": "chat_template"}],
            }
        )
    ).config
    _, encoder = build_encoder(cfg)
    stream, report = build_examples(cfg, encoder)
    got = [(list(e.input_ids), list(e.labels)) for e in stream]

    rule = TurnRule.from_config(cfg, cfg.datasets[0])
    expected, empty, over = [], 0, 0
    for row in rows:
        enc = encoder.encode(row["messages"], rule)
        empty += enc.empty_turns
        ids, labels = list(enc.ids), list(enc.labels)
        over += len(ids) > 128
        pieces = (
            [(ids, labels)]
            if len(ids) <= 128
            else {
                "drop": [],
                "truncate": [(ids[:128], labels[:128])],
                "split": [(ids[i : i + 128], labels[i : i + 128]) for i in range(0, len(ids), 128)],
            }[strategy]
        )
        expected += [(i, lab) for i, lab in pieces if set(lab) != {IGNORE_INDEX}]
    assert over > 50, "the test wants many rows over sequence_len"
    assert got == expected
    assert report.rows == 700 and report.kept == len(expected) and report.empty_turns == empty
    assert report.tokens == sum(len(i) for i, _ in expected)


def test_a_row_certainly_too_long_is_dropped_untokenized(tiny_model_dir, write_config):
    """With drop, a conversation whose text is longer than sequence_len × the most
    characters a token can cover is not tokenized; its empty turns still count."""
    cfg = load_config(write_config({"sequence_len": 64})).config
    tokenizer, encoder = build_encoder(cfg)
    reach = token_reach(tokenizer)
    assert reach == max(len(t) for t in tokenizer.get_vocab())  # no normalizer
    rule = TurnRule.from_config(cfg, cfg.datasets[0])
    huge = [
        {"role": "user", "content": "ka lo mi " * 2000},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "why?"},
        {"role": "assistant", "content": "because"},
    ]
    full = encoder.encode(huge, rule)
    assert len(full.ids) > 64 and full.empty_turns == 1
    assert encoder.encode(huge, rule, longest=64) == TooLong(empty_turns=1)
    # Below the bound the row is tokenized as ever, however long it turns out.
    assert encoder.encode(huge, rule, longest=len(full.ids)) == full


def test_qwen3s_tokenizer_has_a_reach_and_one_that_drops_spaces_has_none(qwen3_tokenizer_dir):
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    qwen3 = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    longest = max(map(len, qwen3.get_vocab()))
    assert token_reach(qwen3) == 4 * longest  # NFC joins at most four characters into one
    text = "The café — naïve résumé.\n\n" * 40
    assert len(qwen3(text, add_special_tokens=False)["input_ids"]) >= len(text) / token_reach(qwen3)
    qwen3.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    assert token_reach(qwen3) is None


# --- prepared data memory-mapped -------------------------------------------------------------


def test_prepared_data_is_mapped_not_loaded(tiny_model_dir, write_config, tmp_path):
    cfg = load_config(write_config({"dataset_prepared_path": str(tmp_path / "prepared")})).config
    _, encoder = build_encoder(cfg)
    logged: list[str] = []
    built, report = load_or_build(cfg, encoder, logged.append)
    [folder] = (tmp_path / "prepared").iterdir()
    examples, again = _read(folder)
    assert isinstance(examples.ids, np.memmap) and isinstance(examples.labels, np.memmap)
    assert again == report and len(examples) == report.kept == 96
    in_memory = collect(build_examples(cfg, encoder)[0])
    assert [examples.row(i) for i in range(len(examples))] == [
        in_memory.row(i) for i in range(len(in_memory))
    ]
    # A copy for a spawned DataLoader worker maps the files again, carrying no tokens.
    view = examples.select([5, 2, 9])
    copy = pickle.loads(pickle.dumps(view))
    assert len(pickle.dumps(view)) < 2000 < examples.ids.nbytes
    assert [copy.row(i) for i in range(3)] == [view.row(i) for i in range(3)]


def test_damaged_prepared_arrays_are_prepared_anew(tiny_model_dir, write_config, tmp_path):
    cfg = load_config(write_config({"dataset_prepared_path": str(tmp_path / "prepared")})).config
    _, encoder = build_encoder(cfg)
    load_or_build(cfg, encoder, lambda line: None)
    [folder] = (tmp_path / "prepared").iterdir()
    ids = np.load(folder / "input_ids.npy")
    np.save(folder / "input_ids.npy", ids[:-3])  # a row's ids cut short
    with pytest.raises(DataError, match="cannot be read .* ids but .* labels"):
        _read(folder)
    np.save(folder / "input_ids.npy", ids.astype(np.int64))
    with pytest.raises(DataError, match="holds int64 of shape .*, not int32 values"):
        _read(folder)


def test_views_split_and_pack_as_lists_do(tiny_model_dir):
    rng = random.Random(4)
    listed = []
    for _ in range(500):
        n = min(4096, int(rng.paretovariate(1.2) * 40))
        ids = [rng.randrange(5, 400) for _ in range(n)]
        listed.append(Example(ids, [IGNORE_INDEX, *ids[1:]]))
    examples = collect(listed)
    for shuffle in (True, False):
        train, val = split_validation(examples, 0.1, seed=11, shuffle=shuffle)
        train_list, val_list = split_validation(listed, 0.1, seed=11, shuffle=shuffle)
        assert isinstance(train, Examples) and isinstance(val, Examples)
        assert [list(e.input_ids) for e in train] == [e.input_ids for e in train_list]
        assert [list(e.labels) for e in val] == [e.labels for e in val_list]
    packed, fill = pack(train, 4096)
    again, fill_list = pack(train_list, 4096)
    assert fill == fill_list and len(packed) == len(again)
    assert packed.as_rows()[0] == again[0].as_row() and packed[-1] == again[-1]
    assert sorted(len(p.input_ids) for p in packed) == sorted(len(p.input_ids) for p in again)
    rows = train.as_rows()
    assert rows[3] == {"input_ids": train_list[3].input_ids, "labels": train_list[3].labels}


# --- memory does not grow with the rows -------------------------------------------------------

CAPPED = textwrap.dedent(
    """
    import resource, sys
    cap = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    from toolkit.cli import main
    code = main(["preprocess", sys.argv[2], "--runtime", "local"])
    # This process's own peak from VmHWM: ru_maxrss would carry over the peak of the
    # process it was forked from (Linux keeps it across exec). The workers' from rusage.
    hwm = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    print("peak MB", int(hwm.split()[1]) >> 10)
    print("peak MB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >> 10)
    sys.exit(code)
    """
)


def test_preprocessing_50k_rows_stays_under_a_memory_cap(tiny_model_dir, tmp_path):
    """50 000 long-tailed rows (one of them 4.5 MB) prepared with each process's data
    segment capped (RLIMIT_DATA, inherited by the tokenizing workers). Streaming needs
    about 100 MB here (310 MB while the tokenizer's loading imported torch); the reading
    that held every row and token in memory needed 510 MB in the main process and 1.47 GB
    in a worker (the long row, tokenized whole). 100 MB fails (seen)."""
    rows = long_tailed(50_000, seed=2)
    rows[123]["messages"][0]["content"] = "ka lo mi ren " * 350_000
    data = tmp_path / "chats.jsonl"
    data.write_text(jsonl(rows))
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(tiny_model_dir),
                "chat_template": "qwen3",
                "sequence_len": 512,
                "datasets": [{"path": str(data), "type": "chat_template"}],
                "dataset_prepared_path": str(tmp_path / "prepared"),
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    cap = 192 << 20
    done = subprocess.run(
        [sys.executable, "-c", CAPPED, str(cap), str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "data: 50000 rows read" in done.stdout
    peaks = [int(line.split()[-1]) for line in done.stdout.splitlines() if "peak MB" in line]
    assert len(peaks) == 2 and max(peaks) < cap >> 20
