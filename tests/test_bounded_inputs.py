"""Inputs bounded: only regular files (or folders of them) are read as config and data,
integers fit in 64 bits, data_files patterns stay inside their folder, an empty value on
the command line is an error, and what an interrupted preparation left behind is removed
by the next run. Every case ends in exit 2 with the key named and no traceback, and none
may hang: the commands run in a thread with a deadline, and a pipe a reader might block
on is opened for writing afterwards, so a regression fails instead of stalling."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ends, problems_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit import cache
from toolkit.cli import main
from toolkit.config import load_config, parse_overrides
from toolkit.config.load import INT_MAX, INT_MIN
from toolkit.config.rules import glob_inside, open_regular
from toolkit.errors import ConfigError, DataError
from toolkit.trainer.prepared import remove_leftovers

DEADLINE_S = 120


def run_cli(argv: list[str], unblock: list[Path] = ()) -> int:
    """main(argv), which must end before DEADLINE_S (pipes in `unblock` are then opened,
    so a reader stuck on one ends and the test fails)."""
    return ends(lambda: main(argv), *unblock, deadline=DEADLINE_S)


def refused(capsys, argv: list[str], *needles: str, unblock: list[Path] = ()) -> str:
    """Run argv; assert exit 2, nothing on stdout, one error on stderr holding `needles`."""
    code = run_cli(argv, unblock)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def short_dir():
    """A folder with a short path: a socket's path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_special(kind: str, where: Path) -> Path:
    """A non-regular file of `kind` at `where` (or a link to a device there)."""
    if kind == "fifo":
        os.mkfifo(where)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(where))
        sock.close()  # the file stays; nothing listens
    elif kind == "link to /dev/zero":
        where.symlink_to("/dev/zero")
    elif kind == "link to /dev/null":
        where.symlink_to("/dev/null")
    return where


KINDS = {
    "fifo": "is a named pipe (FIFO), not a regular file",
    "socket": "is a socket, not a regular file",
    "link to /dev/zero": "is a character device, not a regular file",
    "link to /dev/null": "is a character device, not a regular file",
}
COMMANDS = [
    ["validate"],
    ["preprocess", "--runtime", "local"],
    ["train", "--runtime", "local"],
]


# --- only regular files are read -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_the_config_itself_must_be_a_regular_file(kind, command, short_dir, capsys):
    path = make_special(kind, short_dir / "config.yaml")
    refused(capsys, [command[0], str(path), *command[1:]], KINDS[kind], unblock=[path])


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_device_as_config_is_refused_before_it_is_read(device, capsys):
    err = refused(capsys, ["validate", device], f"error: {device} is a character device")
    assert "save the config in a file and pass its path" in err


def test_a_config_larger_than_its_limit_is_refused_after_reading_past_it(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("base_model: x\n" + "#" * (1 << 21) + "\n")
    refused(capsys, ["validate", str(path)], "a config is at most 1,048,576")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_dataset_must_be_a_regular_file(
    kind, command, short_dir, tiny_model_dir, write_config, capsys
):
    data = make_special(kind, short_dir / "rows.jsonl")
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "datasets": [{"path": str(data), "type": "chat_template"}],
            "dataset_prepared_path": str(short_dir / "prepared"),
        }
    )
    refused(
        capsys,
        [command[0], str(path), *command[1:]],
        f"datasets[0].path: '{data}' {KINDS[kind]}",
        "toolkit reads only regular files (or folders of them)",
        unblock=[data],
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_pipe_matched_by_data_files_in_a_folder_is_refused(
    kind, short_dir, tiny_model_dir, write_config, capsys
):
    folder = short_dir / "data"
    folder.mkdir()
    shutil.copy(__import__("conftest").DEMO_DATA, folder / "a.jsonl")
    bad = make_special(kind, folder / "b.jsonl")
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "datasets": [{"path": str(folder), "type": "chat_template"}],
            "dataset_prepared_path": str(short_dir / "prepared"),
        }
    )
    for command in COMMANDS:
        refused(
            capsys,
            [command[0], str(path), *command[1:]],
            f"datasets[0].path: '{bad}' {KINDS[kind]}",
            unblock=[bad],
        )


def test_a_pipe_the_patterns_do_not_match_is_never_opened(
    short_dir, tiny_model_dir, write_config, capsys
):
    folder = short_dir / "data"
    folder.mkdir()
    shutil.copy(__import__("conftest").DEMO_DATA, folder / "a.jsonl")
    os.mkfifo(folder / "notes.txt")
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "datasets": [{"path": str(folder), "type": "chat_template", "data_files": "*.jsonl"}],
        }
    )
    assert run_cli(["validate", str(path)], unblock=[folder / "notes.txt"]) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "chat_template.jinja"])
def test_a_pipe_in_the_model_folder_is_refused(
    kind, name, short_dir, tiny_model_dir, write_config, capsys
):
    model = short_dir / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / name).unlink()
    bad = make_special(kind, model / name)
    path = write_config(
        {"base_model": str(model), "dataset_prepared_path": str(short_dir / "prepared")}
    )
    for command in COMMANDS:
        refused(
            capsys,
            [command[0], str(path), *command[1:]],
            f"base_model: '{bad}' {KINDS[kind]}",
            unblock=[bad],
        )


@pytest.mark.parametrize("key", ["base_model", "tokenizer_config"])
def test_a_pipe_as_the_model_is_refused(key, short_dir, tiny_model_dir, write_config, capsys):
    fifo = make_special("fifo", short_dir / "model")
    path = write_config({"base_model": str(tiny_model_dir), key: str(fifo)})
    refused(capsys, ["validate", str(path)], f"{key}: '{fifo}' is a named pipe", unblock=[fifo])


@pytest.mark.parametrize("key", ["output_dir", "dataset_prepared_path"])
@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_pipe_where_a_folder_is_written_is_refused(
    key, kind, short_dir, tiny_model_dir, write_config, capsys
):
    bad = make_special(kind, short_dir / "out")
    path = write_config({"base_model": str(tiny_model_dir), key: str(bad)})
    refused(
        capsys, ["validate", str(path)], f"{key}: '{bad}' is a {kind.replace('fifo', 'named pipe')}"
    )


def test_a_saved_dataset_holding_a_pipe_is_refused(short_dir, write_config, tiny_model_dir, capsys):
    saved = short_dir / "saved"
    (saved / "train").mkdir(parents=True)
    (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
    bad = make_special("fifo", saved / "train" / "data-00000-of-00001.arrow")
    path = write_config({"base_model": str(tiny_model_dir), "datasets": [{"path": str(saved)}]})
    refused(capsys, ["validate", str(path)], f"datasets[0].path: '{bad}' is a named pipe")


def test_open_regular_never_blocks_on_a_pipe_swapped_in_after_the_check(short_dir, monkeypatch):
    # The stat check is bypassed, as if the name were swapped between check and open:
    # the open must still return at once (O_NONBLOCK) and fstat refuse it.
    fifo = make_special("fifo", short_dir / "rows.jsonl")
    monkeypatch.setattr("toolkit.config.rules.special_kind", lambda path: None)
    done = threading.Event()
    caught: list[BaseException] = []

    def target() -> None:
        try:
            open_regular(fifo, "datasets[0].path", DataError)
        except BaseException as exc:
            caught.append(exc)
        done.set()

    threading.Thread(target=target, daemon=True).start()
    finished = done.wait(10)
    if not finished:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert finished, "open_regular blocked on a FIFO"
    assert isinstance(caught[0], DataError)
    assert "is a named pipe (FIFO), not a regular file" in str(caught[0])


def test_prepared_data_that_is_a_pipe_is_refused(tiny_model_dir, write_config, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    path = write_config({"base_model": str(tiny_model_dir), "dataset_prepared_path": str(prepared)})
    assert run_cli(["preprocess", str(path), "--runtime", "local"]) == 0
    capsys.readouterr()
    (folder,) = [p for p in prepared.iterdir() if not p.name.startswith(".")]
    (folder / "input_ids.npy").unlink()
    os.mkfifo(folder / "input_ids.npy")
    refused(
        capsys,
        ["preprocess", str(path), "--runtime", "local"],
        f"dataset_prepared_path: '{folder / 'input_ids.npy'}' is a named pipe",
        unblock=[folder / "input_ids.npy"],
    )
    (folder / "input_ids.npy").unlink()
    (folder / "input_ids.npy").write_bytes(b"garbage of no format")
    refused(
        capsys,
        ["preprocess", str(path), "--runtime", "local"],
        f"the prepared data in {folder} cannot be read",
        "remove that folder and run again",
    )


# --- integers fit in 64 bits -------------------------------------------------------------

DEMO = yaml.safe_load(__import__("conftest").DEMO_CONFIG.read_text())


def numeral(digits: int, form: str) -> str:
    """A YAML integer of about `digits` digits, in one of YAML 1.1's spellings."""
    return {
        "decimal": "9" * digits,
        "negative": "-" + "8" * digits,
        "underscored": "1_" + "0" * digits,
        "hex": "0x" + "f" * digits,
        "octal": "0" + "7" * digits,
        "binary": "0b" + "1" * 4 * digits,
        "base 60": "1" + ":59" * max(1, digits // 2),
    }[form]


FORMS = ["decimal", "negative", "underscored", "hex", "octal", "binary", "base 60"]
INT_KEYS = [
    "micro_batch_size",
    "max_steps",
    "seed",
    "sequence_len",
    "lora_r",
    "learning_rate",
    "datasets[0].shards",
    "lora_rank_pattern.q_proj",
    "not_a_key",
]


def config_text(key_path: str, value: str, tiny_model_dir) -> str:
    """The demo config as YAML with `value` (raw YAML text) at `key_path`."""
    data = {**DEMO, "base_model": str(tiny_model_dir)}
    data["datasets"] = [{**DEMO["datasets"][0], "path": str(__import__("conftest").DEMO_DATA)}]
    marker = "__HUGE__"
    if key_path.startswith("datasets[0]."):
        data["datasets"][0][key_path.split(".", 1)[1]] = marker
    elif "." in key_path:
        top, sub = key_path.split(".")
        data[top] = {sub: marker}
    else:
        data[key_path] = marker
    return yaml.safe_dump(data).replace(marker, value)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    key=st.sampled_from(INT_KEYS),
    form=st.sampled_from(FORMS),
    digits=st.sampled_from([25, 100, 4301, 5000, 100_000]),
)
def test_a_huge_integer_anywhere_in_the_config_is_named(
    key, form, digits, tiny_model_dir, tmp_path_factory
):
    path = tmp_path_factory.mktemp("huge") / "config.yaml"
    path.write_text(config_text(key, numeral(digits, form), tiny_model_dir))
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.monotonic() - started < 5, "a long numeral was converted"
    (problem,) = info.value.problems
    assert problem.startswith(f"{key}: got "), problem
    assert f"accepted: an integer from {INT_MIN} to {INT_MAX}" in problem
    assert len(problem) < 300  # the value is shown shortened


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_huge_integer_in_the_config_exits_2(form, command, tiny_model_dir, write_config, capsys):
    path = write_config({"base_model": str(tiny_model_dir), "micro_batch_size": "__HUGE__"})
    path.write_text(path.read_text().replace("__HUGE__", numeral(5000, form)))
    refused(capsys, [command[0], str(path), *command[1:]], "micro_batch_size: got ", "characters)")


@pytest.mark.parametrize("value", ["9" * 5000, "0x" + "f" * 5000, "-" + "9" * 30])
def test_a_huge_integer_on_the_command_line_is_named(value, write_config, capsys):
    refused(capsys, ["validate", str(write_config()), "--max-steps", value], "max_steps: got ")
    refused(capsys, ["validate", str(write_config()), f"--datasets.0.shards={value}"])
    err = refused(capsys, ["validate", str(write_config()), f"--datasets.{value[:5000]}.path", "x"])
    assert "--datasets." in err


def test_the_largest_integers_still_load(write_config):
    with pytest.raises(ConfigError) as info:
        load_config(write_config({"max_steps": INT_MAX + 1}))
    assert info.value.problems[0].startswith("max_steps: got 9223372036854775808,")
    assert load_config(write_config({"max_steps": INT_MAX})).config.max_steps == INT_MAX


@pytest.mark.parametrize(
    "key, value, accepted",
    [
        ("seed", 2**32, "a number ≤ 4294967295"),
        ("seed", -1, "a number ≥ 0"),
        ("ddp_timeout", 2**40, "a number ≤ 2147483647"),
    ],
)
def test_integers_that_overflow_where_they_go_are_bounded(key, value, accepted, write_config):
    (problem,) = [p for p in problems_of(write_config({key: value})) if p.startswith(key)]
    assert f"accepted: {accepted}" in problem


ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def huge_row(field: str, number: str) -> str:
    """The row as JSON text with the integer `number` at `field`."""
    row = json.loads(json.dumps(ROW))
    if field == "tools":
        row["tools"] = [{"type": "function", "function": {"name": "f", "n": "__N__"}}]
    else:
        row["messages"][1][field] = "__N__"
    return json.dumps(row).replace('"__N__"', number)


@pytest.mark.parametrize(
    "field, where",
    [
        ("content", "messages[1].content"),
        ("weight", "messages[1].weight"),
        ("tools", "tools[0].function.n"),
    ],
)
@pytest.mark.parametrize("digits", [25, 4301, 100_000])
@pytest.mark.parametrize("layout", ["lines", "array"])
def test_a_huge_integer_in_a_row_names_file_row_and_field(
    field, where, digits, layout, tiny_model_dir, write_config, tmp_path, capsys
):
    good = json.dumps(ROW)
    bad = huge_row(field, "9" * digits)
    data = tmp_path / "rows.jsonl"
    if layout == "lines":
        data.write_text(f"{good}\n\n{good}\n{bad}\n")
        row = "rows.jsonl row 3 (line 4)"
    else:
        data.write_text(f"[{good}, {good}, {bad}]")
        row = "rows.jsonl row 3"
    path = write_config({"base_model": str(tiny_model_dir), "max_steps": 1})
    started = time.monotonic()
    err = refused(
        capsys,
        ["train", str(path), "--runtime", "local", "--datasets.0.path", str(data)],
        f"{row}: {where} is the integer 9999999999…9999999999 ({digits:,} characters)",
        f"accepted: integers from {INT_MIN} to {INT_MAX}",
    )
    assert time.monotonic() - started < 60
    assert len(err.splitlines()) == 1 and len(err) < 500
    assert not (tmp_path / "out" / "run.json").exists()


@pytest.mark.parametrize("layout", ["lines", "array"])
@pytest.mark.parametrize("depth", [150, 5000])
def test_a_row_nested_too_deep_is_refused(
    layout, depth, tiny_model_dir, write_config, tmp_path, capsys
):
    deep = "[" * depth + "]" * depth
    bad = json.dumps({**ROW, "extra": "__D__"}).replace('"__D__"', deep)
    data = tmp_path / "rows.jsonl"
    data.write_text(f"{bad}\n" if layout == "lines" else f"[{bad}]")
    path = write_config({"base_model": str(tiny_model_dir), "max_steps": 1})
    refused(
        capsys,
        ["train", str(path), "--runtime", "local", "--datasets.0.path", str(data)],
        "is nested more than 100 levels deep",
    )


# --- data_files stay inside the dataset's folder -------------------------------------------


BAD_PATTERNS = [
    ("/etc/*.conf", "is an absolute pattern"),
    ("/", "is an absolute pattern"),
    ("~/*.jsonl", "is an absolute pattern"),
    ("../*.jsonl", "climbs out of the folder with '..'"),
    ("sub/../../*.jsonl", "climbs out of the folder with '..'"),
    ("**/../../etc/host*", "climbs out of the folder with '..'"),
    ("", "is empty"),
    ("   ", "is empty"),
    ("a\x00b", "contains a NUL byte"),
]


@pytest.mark.parametrize("pattern, message", BAD_PATTERNS, ids=[repr(p) for p, _ in BAD_PATTERNS])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("as_list", [False, True])
def test_a_pattern_outside_the_folder_is_refused(
    pattern, message, command, as_list, tiny_model_dir, write_config, tmp_path, capsys
):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(__import__("conftest").DEMO_DATA, folder / "a.jsonl")
    value = ["*.jsonl", pattern] if as_list else pattern
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "datasets": [{"path": str(folder), "type": "chat_template", "data_files": value}],
        }
    )
    key = "datasets[0].data_files[1]" if as_list else "datasets[0].data_files"
    refused(capsys, [command[0], str(path), *command[1:]], f"{key}: {pattern!r} {message}")


def test_patterns_inside_the_folder_still_read(tiny_model_dir, write_config, tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(__import__("conftest").DEMO_DATA, folder / "sub" / "a.jsonl")
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "datasets": [
                {"path": str(folder), "type": "chat_template", "data_files": "**/*.jsonl"}
            ],
        }
    )
    from toolkit.trainer.data import read_rows

    rows = read_rows(load_config(path).config.datasets[0], 0)
    assert len(rows) == len(__import__("conftest").DEMO_DATA.read_text().splitlines())


PARTS = st.sampled_from(
    ["*", "**", "..", ".", "sub", "a.jsonl", "*.jsonl", "", "~", "/", "[", "[!a]*", "\\", " "]
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(PARTS, min_size=1, max_size=5), st.booleans())
def test_a_glob_never_matches_outside_its_folder(tmp_path_factory, parts, absolute):
    root = tmp_path_factory.mktemp("glob")
    folder = root / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.jsonl").write_text("{}\n")
    (folder / "a.jsonl").write_text("{}\n")
    (root / "secret.jsonl").write_text("{}\n")
    pattern = ("/" if absolute else "") + "/".join(parts)
    for match in glob_inside(folder, [pattern]):
        assert os.path.normpath(match).startswith(str(folder)), (pattern, match)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(PARTS, min_size=1, max_size=4))
def test_a_hostile_pattern_is_a_config_error_or_stays_inside(tmp_path_factory, parts):
    root = tmp_path_factory.mktemp("pat")
    (root / "data").mkdir()
    shutil.copy(__import__("conftest").DEMO_DATA, root / "data" / "a.jsonl")
    pattern = "/".join(parts)
    data = {
        **DEMO,
        "base_model": "Qwen/Qwen3-0.6B",  # a hub id: nothing local to check but the data
        "output_dir": str(root / "out"),
        "datasets": [{"path": str(root / "data"), "data_files": pattern}],
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.render().startswith("error: ")
        escapes = pattern.startswith(("/", "~")) or ".." in pattern.split("/")
        if escapes or not pattern.strip():
            assert any(p.startswith("datasets[0].data_files: ") for p in exc.problems)
    else:
        assert pattern.strip() and not pattern.startswith(("/", "~"))
        assert ".." not in pattern.split("/")


# --- empty values on the command line ----------------------------------------------------


@pytest.mark.parametrize("value", ["", " ", "\t", "  \n"])
@pytest.mark.parametrize("spelling", ["separate", "equals"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_an_empty_override_is_an_error_naming_it(value, spelling, command, write_config, capsys):
    flag = ["--output-dir", value] if spelling == "separate" else [f"--output-dir={value}"]
    refused(
        capsys,
        [command[0], str(write_config()), *command[1:], *flag],
        "error: command line: 1 problem\n  - --output-dir: the value is empty; give one "
        "(--output-dir VALUE), or leave --output-dir out to keep the config's value",
    )


@pytest.mark.parametrize("key", ["dataset-prepared-path", "base-model", "datasets.0.path"])
def test_an_empty_override_of_any_path_is_an_error(key, write_config, capsys):
    refused(
        capsys, ["validate", str(write_config()), f"--{key}", ""], f"--{key}: the value is empty"
    )


@pytest.mark.parametrize(
    "spelling", [["--output-dir", "~"], ["--output-dir=~"], ["--output-dir", " ~ "]]
)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_tilde_is_the_home_folder_and_is_refused(
    spelling, command, tiny_model_dir, write_config, tmp_path, monkeypatch, capsys
):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    path = write_config({"base_model": str(tiny_model_dir)})
    refused(
        capsys,
        [command[0], str(path), *command[1:], *spelling],
        f"output_dir: '{home}' is your home folder",
    )
    assert sorted(p.name for p in home.iterdir()) == [".bashrc"]


def test_tilde_paths_are_expanded_where_a_run_writes(write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    loaded = load_config(
        write_config(),
        parse_overrides(["--output-dir", "~/runs/a", "--dataset-prepared-path=~/prepared"]),
    )
    assert loaded.config.output_dir == str(tmp_path / "home" / "runs" / "a")
    assert loaded.config.dataset_prepared_path == str(tmp_path / "home" / "prepared")


def test_a_run_with_a_tilde_output_dir_writes_in_home_not_a_folder_named_tilde(
    tiny_model_dir, write_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = write_config({"base_model": str(tiny_model_dir), "max_steps": 1, "val_set_size": 0})
    assert main(["train", str(path), "--runtime", "local", "--output-dir", "~/runs/a"]) == 0
    assert (tmp_path / "home" / "runs" / "a" / "run.json").is_file()
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("option", ["--image", "--variant", "--gpus", "--master-addr"])
def test_an_empty_option_is_an_error_naming_it(option, write_config, capsys):
    refused(
        capsys,
        ["train", str(write_config()), "--runtime", "local", option, " "],
        f"error: {option}: the value is empty; give one ({option} VALUE)",
    )


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_config_path_is_an_error(value, capsys):
    for command in COMMANDS:
        refused(capsys, [command[0], value, *command[1:]], f"error: CONFIG: {value!r} is empty")


@pytest.mark.parametrize("key", ["output_dir", "base_model"])
@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_path_in_the_config_is_an_error(key, value, write_config):
    problems = problems_of(write_config({key: value}))
    assert f"{key}: {value!r} is empty; give a path, or remove the key" in problems


# --- leftovers of an interrupted preparation -------------------------------------------------


def plant(
    prepared: Path, name: str, files=("input_ids.npy",), age_s: float = 600, marked=True
) -> Path:
    """A temporary folder as a killed _write leaves it: marked for its key (as _write
    marks it under its lock, first), or, unmarked, as another tool's or as one between
    mkdtemp and its lock."""
    folder = prepared / name
    folder.mkdir(parents=True)
    if marked:
        cache.mark(folder, "prepared", name[1:].rsplit(".", 1)[0])
    for file in files:
        (folder / file).write_bytes(b"partial")
    past = time.time() - age_s
    os.utime(folder, (past, past))
    return folder


def test_the_next_preparation_removes_only_its_own_leftovers(
    tiny_model_dir, write_config, tmp_path, capsys
):
    prepared = tmp_path / "prepared"
    killed = plant(prepared, ".0123456789abcdef.k2_9zq1x", ("input_ids.npy", "labels.npy"))
    empty = plant(prepared, ".fedcba9876543210.abcdefgh", ())
    foreign = plant(
        prepared, ".0123456789abcdef.userdata", ("input_ids.npy", "notes.txt"), marked=False
    )
    fresh = plant(prepared, ".0123456789abcdef.justmade", age_s=0, marked=False)
    held = plant(prepared, ".0123456789abcdef.writing1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "input_ids.npy").write_text("theirs")
    (prepared / ".0123456789abcdef.linkedto").symlink_to(outside)
    nested = plant(prepared, ".0123456789abcdef.nested12", (), marked=False)
    (nested / "input_ids.npy").mkdir()
    os.utime(nested, (time.time() - 600, time.time() - 600))
    lock = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        path = write_config(
            {"base_model": str(tiny_model_dir), "dataset_prepared_path": str(prepared)}
        )
        assert run_cli(["preprocess", str(path), "--runtime", "local"]) == 0
    finally:
        os.close(lock)
    out = capsys.readouterr().out
    assert f"data: removed {killed}, left by an interrupted preparation" in out
    assert not killed.exists() and not empty.exists()
    for kept in (foreign, fresh, held, nested):
        assert kept.is_dir(), kept
    assert (prepared / ".0123456789abcdef.linkedto").is_symlink()
    assert (outside / "input_ids.npy").read_text() == "theirs"
    assert (foreign / "notes.txt").exists()


def test_train_removes_leftovers_too(tmp_path):
    prepared = tmp_path / "prepared"
    killed = plant(prepared, ".0123456789abcdef.k2_9zq1x", ("offsets.npy", "report.json"))
    lines: list[str] = []
    remove_leftovers(prepared, lines.append)
    assert not killed.exists() and lines == [
        f"data: removed {killed}, left by an interrupted preparation"
    ]
    remove_leftovers(tmp_path / "absent", lines.append)  # nothing there: nothing to do


def test_a_write_in_progress_holds_its_folder(tmp_path, monkeypatch):
    """_write holds its temporary folder while it writes: a cleaner running meanwhile
    (another rank, another run) leaves it."""
    from toolkit.trainer import prepared as module
    from toolkit.trainer.data import DataReport
    from toolkit.trainer.tokenized import Example

    seen: list[bool] = []
    real_save = np.save

    def save_and_clean(file, array) -> None:
        real_save(file, array)
        past = time.time() - 600
        os.utime(Path(file).parent, (past, past))
        remove_leftovers(tmp_path, lambda line: None)
        seen.append(Path(file).parent.exists())

    monkeypatch.setattr(np, "save", save_and_clean)
    folder = tmp_path / "0123456789abcdef"
    module._write(folder, [Example([1, 2], [1, 2])], DataReport(rows=1, kept=1))
    assert seen and all(seen)
    assert (folder / "report.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_the_bounds_still_accept_their_largest_values(write_config):
    loaded = load_config(write_config({"seed": 2**32 - 1, "ddp_timeout": 2**31 - 1}))
    assert loaded.config.seed == 2**32 - 1 and loaded.config.ddp_timeout == 2**31 - 1


def test_a_huge_process_count_forks_no_more_workers_than_chunks(write_config):
    from toolkit.trainer.data import CHUNK, processes_for

    cfg = load_config(write_config({"dataset_processes": INT_MAX})).config
    assert processes_for(cfg, 3000) == -(-3000 // CHUNK) == 12
    assert processes_for(cfg, 100) == 1
