"""toolkit.safe_io, the one way toolkit opens files: never through a link (unless an
input may be one), never blocked on a pipe, never more than a bound read, JSON never
deeper or longer-numbered than a record toolkit writes. Then every place that reads a
JSON record toolkit wrote, fed a pipe and nesting 5000 deep: each answers as for a
damaged record (its own words), none hangs, none raises a traceback.

Every call that could block runs in a thread with a deadline; the pipes are opened from
the other end afterwards, so a regression fails instead of stalling the suite."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from pathlib import Path

import pytest
from helpers import ends, umask
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit import safe_io
from toolkit.errors import UsageError


@pytest.fixture
def no_prestat(monkeypatch):
    """As if each name were swapped for what is there now between its stat and its open:
    only the open and the fstat remain to refuse it."""
    monkeypatch.setattr(safe_io, "_kind_at", lambda *args: None)


def fifo_at(path: Path) -> Path:
    os.mkfifo(path)
    return path


# --- open_file ---------------------------------------------------------------------------


@pytest.mark.parametrize("swapped", [False, True])
@pytest.mark.parametrize(
    "flags",
    [os.O_RDONLY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, os.O_RDWR | os.O_CREAT],
    ids=["read", "append", "read-write"],
)
def test_a_pipe_is_refused_at_once_however_it_is_opened(tmp_path, monkeypatch, flags, swapped):
    if swapped:
        monkeypatch.setattr(safe_io, "_kind_at", lambda *args: None)
    fifo = fifo_at(tmp_path / "train.log")
    with pytest.raises(safe_io.NotRegular) as info:
        ends(lambda: safe_io.open_file(fifo, flags), fifo)
    assert info.value.kind == "a named pipe (FIFO)"
    assert str(info.value) == f"{fifo} is a named pipe (FIFO), not a regular file"
    assert isinstance(info.value, OSError)  # callers that catch OSError still do


@pytest.mark.usefixtures("no_prestat")
def test_a_socket_and_a_folder_are_refused_when_opened(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    path = Path("/tmp") / f"tk-sock-{os.getpid()}"  # noqa: S108 (a socket's path is short)
    sock.bind(str(path))
    try:
        with pytest.raises(safe_io.NotRegular, match="is a socket, not a regular file"):
            safe_io.open_file(path)
    finally:
        sock.close()
        path.unlink()
    for flags in (os.O_RDONLY, os.O_WRONLY):
        with pytest.raises(safe_io.NotRegular, match="is a folder, not a regular file"):
            safe_io.open_file(tmp_path, flags)


def test_a_device_is_never_opened(monkeypatch):
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    with pytest.raises(safe_io.NotRegular, match="/dev/zero is a character device"):
        safe_io.open_file("/dev/zero", follow=True)
    assert opened == []


def test_a_link_is_followed_only_when_asked(tmp_path):
    target = tmp_path / "blob"
    target.write_bytes(b"weights")
    link = tmp_path / "model.safetensors"
    link.symlink_to(target)
    with pytest.raises(OSError) as info:
        safe_io.open_file(link)
    assert info.value.errno == errno.ELOOP
    with os.fdopen(safe_io.open_file(link, follow=True), "rb") as f:
        assert f.read() == b"weights"
    (tmp_path / "to-pipe").symlink_to(fifo_at(tmp_path / "pipe"))
    with pytest.raises(safe_io.NotRegular, match="named pipe"):
        ends(lambda: safe_io.open_file(tmp_path / "to-pipe", follow=True), tmp_path / "pipe")


def test_what_is_opened_blocks_as_usual_and_closes_on_exec(tmp_path):
    path = tmp_path / "f"
    fd = safe_io.open_file(path, os.O_WRONLY | os.O_CREAT)
    try:
        assert os.get_blocking(fd) and not os.get_inheritable(fd)
        assert stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_relative_to_a_folder(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    folder = safe_io.open_dir(tmp_path)
    try:
        assert safe_io.read_bytes("a.json", 10, dir_fd=folder) == b"{}"
        fifo_at(tmp_path / "p")
        with pytest.raises(safe_io.NotRegular):
            ends(lambda: safe_io.open_file("p", dir_fd=folder), tmp_path / "p")
    finally:
        os.close(folder)


# --- folders -----------------------------------------------------------------------------


def test_a_folder_is_opened_never_through_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("")
    os.close(safe_io.open_dir(tmp_path / "real"))
    with pytest.raises(OSError) as info:
        safe_io.open_dir(tmp_path / "link")
    assert info.value.errno == errno.ELOOP
    with pytest.raises(NotADirectoryError):
        safe_io.open_dir(tmp_path / "file")


def test_open_under_never_leaves_its_folder_nor_follows_a_link(tmp_path):
    (tmp_path / "ckpt" / "sub").mkdir(parents=True)
    (tmp_path / "ckpt" / "sub" / "f").write_bytes(b"x")
    (tmp_path / "ckpt" / "hop").symlink_to(tmp_path / "ckpt" / "sub")
    with os.fdopen(safe_io.open_under(tmp_path / "ckpt", "sub/f"), "rb") as f:
        assert f.read() == b"x"
    for bad in ("../ckpt/sub/f", "/etc/passwd", "sub/../../x", ""):
        with pytest.raises(ValueError, match="is not a path inside"):
            safe_io.open_under(tmp_path / "ckpt", bad)
    with pytest.raises(OSError) as info:
        safe_io.open_under(tmp_path / "ckpt", "hop/f")
    assert info.value.errno == errno.ELOOP


# --- new files ---------------------------------------------------------------------------


def test_a_new_file_is_never_made_over_anything(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("theirs")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "link").symlink_to(outside)
    fifo_at(tmp_path / "pipe")
    for name in ("dangling", "link", "pipe", "outside.txt"):
        with pytest.raises(FileExistsError):
            ends(lambda name=name: safe_io.write_new(tmp_path / name, b"ours"), tmp_path / "pipe")
    assert outside.read_text() == "theirs" and not (tmp_path / "nowhere").exists()
    safe_io.write_new(tmp_path / "new", b"ours", 0o600)
    assert (tmp_path / "new").read_bytes() == b"ours"
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600 & ~umask()


# --- bounded reads and JSON ---------------------------------------------------------------


def test_a_read_is_bounded(tmp_path):
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # sparse: refused by its size, nothing read
    with pytest.raises(safe_io.TooLarge) as info:
        safe_io.read_bytes(path, 1 << 20)
    assert (info.value.size, info.value.grew) == (1 << 40, False)
    assert str(info.value) == f"larger than {1 << 20} bytes"
    path.write_bytes(b"12345")
    assert safe_io.read_bytes(path, 5) == b"12345"
    with pytest.raises(safe_io.TooLarge):
        safe_io.read_bytes(path, 4)


@pytest.mark.parametrize(
    "text, why",
    [
        ("[" * 5000, "nested more than 64 levels deep"),
        ("[" * 5000 + "]" * 5000, "nested more than 64 levels deep"),
        ('{"a": ' * 65 + "1" + "}" * 65, "nested more than 64 levels deep"),
        ("9" * 5000, "an integer of 5,000 digits"),
        ('{"inode": -' + "1" * 41 + "}", "an integer of 41 digits"),
        (
            "{not json",
            "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
    ],
)
def test_json_beyond_a_record_is_a_value_error_naming_why(text, why):
    with pytest.raises(ValueError) as info:
        safe_io.load_json(text)
    assert str(info.value) == why
    assert not isinstance(info.value, RecursionError)


def test_json_within_the_limits_reads_as_json():
    deep = "[" * 64 + "]" * 64
    assert safe_io.load_json(deep) is not None
    assert safe_io.load_json(b'{"inode": 18446744073709551615}') == {"inode": 2**64 - 1}
    assert safe_io.load_json("-" + "9" * 40) == -int("9" * 40)
    with pytest.raises(UnicodeDecodeError):
        safe_io.load_json(b"\xff\xfe{}")


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=40,
    ).map(lambda v: json.dumps(v).encode())
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
)
def test_any_bytes_are_json_or_a_value_error(data):
    try:
        safe_io.load_json(data)
    except ValueError:
        pass


def test_kinds_in_words():
    assert [safe_io.kind_of(m) for m in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)] == [
        "a file",
        "a folder",
        "a link",
    ]
    assert [safe_io.kind_of(m) for m in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK)] == [
        "a named pipe (FIFO)",
        "a character device",
        "a block device",
    ]
    assert safe_io.kind_of(stat.S_IFSOCK) == "a socket"


# --- every reader of a record toolkit wrote -----------------------------------------------


def _lock(out: Path) -> Path:
    (out / ".toolkit").mkdir(parents=True, exist_ok=True)
    return out / ".toolkit" / "lock"


def _segments(out: Path) -> Path:
    (out / ".toolkit").mkdir(parents=True, exist_ok=True)
    return out / ".toolkit" / "segments.json"


def _adapter(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (out / name).write_bytes(b"{}")
    (out / "merged").mkdir()
    return out / "merged" / "merge.json"


def _marker(out: Path) -> Path:
    (out / "checkpoint-2").mkdir(parents=True)
    return out / "checkpoint-2" / "toolkit-complete.json"


def _pins(out: Path) -> Path:
    (out / ".toolkit").mkdir(parents=True, exist_ok=True)
    return out / ".toolkit" / "hub.json"


def _read_marker(out: Path):
    from toolkit.trainer.checkpoints import read_marker

    return read_marker(out / "checkpoint-2")


def _pins_read(out: Path):
    from toolkit import pins

    return pins.read_pins(out)


def _merged(out: Path):
    from toolkit import merge

    return merge.already_merged(out)


# (where the record is, how it is read, what a damaged one reads as, what a pipe does)
READERS = {
    "run.json": (
        lambda out: out / "run.json",
        lambda out: __import__("toolkit.outputs").outputs.holds_toolkit_run(out),
        False,
        False,
    ),
    "lock holder": (
        _lock,
        lambda out: __import__("toolkit.outputs").outputs.describe_holder(_lock(out)),
        "holder unknown",
        "holder unknown",
    ),
    "lock token": (
        _lock,
        lambda out: __import__("toolkit.outputs").outputs.held_for_us(out, "a-token"),
        False,
        False,
    ),
    "segments": (
        _segments,
        lambda out: __import__("toolkit.outputs").outputs.read_segments(out),
        [],
        [],
    ),
    "checkpoint marker": (
        _marker,
        _read_marker,
        (None, "its toolkit-complete.json cannot be read"),
        (None, "its toolkit-complete.json is a link or cannot be opened"),
    ),
    "merge.json": (_adapter, _merged, False, UsageError),
    "hub.json": (_pins, _pins_read, UsageError, UsageError),
}


@pytest.mark.parametrize("shape", ["deep", "huge integer", "pipe"])
@pytest.mark.parametrize("name", list(READERS))
def test_each_reader_of_a_record_treats_a_hostile_one_as_damaged(
    name, shape, tmp_path, monkeypatch
):
    monkeypatch.delenv("TOOLKIT_HUB_PINS", raising=False)
    where, read, damaged, piped = READERS[name]
    out = tmp_path / "out"
    out.mkdir()
    path = where(out)
    if shape == "pipe":
        fifo_at(path)
    else:
        body = "[" * 5000 if shape == "deep" else '{"token": ' + "7" * 5000 + "}"
        path.write_text(body)
    expected = piped if shape == "pipe" else damaged
    if expected is UsageError:
        with pytest.raises(UsageError) as info:
            ends(lambda: read(out), path)
        said = str(info.value)
        assert str(path) in said
        if shape == "deep":
            assert "nested more than 64 levels deep" in said
        if shape == "pipe":
            assert "named pipe" in said or "not a regular file" in said
    else:
        assert ends(lambda: read(out), path) == expected


@pytest.mark.parametrize("body", [b"[1, 2]", b'"merged"', b"null", b"{}"])
def test_a_merge_record_that_is_not_toolkits_is_no_merge(tmp_path, body):
    from toolkit import merge

    record = _adapter(tmp_path / "out")
    record.write_bytes(body)
    assert merge.already_merged(tmp_path / "out") is False


def test_a_merge_record_or_adapter_that_is_a_link_or_pipe_is_refused(tmp_path, capsys):
    from toolkit import merge

    out = tmp_path / "out"
    record = _adapter(out)
    outside = tmp_path / "merge.json"
    outside.write_text(json.dumps({"adapter_sha256": merge.adapter_sha256(out)}))
    record.symlink_to(outside)
    with pytest.raises(UsageError, match=f"^{record} is a symbolic link"):
        merge.already_merged(out)
    record.unlink()
    record.write_text(outside.read_text())
    assert merge.already_merged(out) is True
    assert "already merged" in capsys.readouterr().out
    (out / "adapter_model.safetensors").unlink()
    fifo = fifo_at(out / "adapter_model.safetensors")
    with pytest.raises(UsageError) as info:
        ends(lambda: merge.already_merged(out), fifo)
    assert str(info.value) == (
        f"{fifo} is not a regular file; toolkit writes its own files there: remove it, or "
        "choose another output_dir"
    )


@pytest.mark.parametrize("swapped", [False, True])
def test_a_pipe_at_train_log_is_exit_2_not_a_hang(tmp_path, monkeypatch, swapped):
    """Written (appended) by the trainer: a pipe with no reader is ENXIO when opened
    without blocking, which is 'not a regular file' like any other."""
    from toolkit.trainer.progress import RunLog

    if swapped:
        monkeypatch.setattr(safe_io, "_kind_at", lambda *args: None)
    log = fifo_at(tmp_path / "train.log")
    with pytest.raises(UsageError) as info:
        ends(lambda: RunLog(log), log)
    assert str(info.value) == (
        f"{log} is not a regular file; toolkit writes its own files there: remove it, or "
        "choose another output_dir"
    )
    assert info.value.exit_code == 2


def test_prepared_data_whose_report_is_deep_is_prepared_anew(tmp_path):
    from toolkit.errors import DataError
    from toolkit.trainer.data import DataReport
    from toolkit.trainer.prepared import _read, _write
    from toolkit.trainer.tokenized import Example

    folder = tmp_path / ("e" * 16)
    _write(folder, [Example([1, 2, 3], [-100, 2, 3])], DataReport(rows=1))
    assert _read(folder)[1].rows == 1
    (folder / "report.json").write_text("[" * 5000)
    with pytest.raises(DataError) as info:
        _read(folder)
    assert str(info.value) == (
        f"dataset_prepared_path: the prepared data in {folder} cannot be read (nested "
        "more than 64 levels deep); remove that folder and run again to prepare it anew"
    )
