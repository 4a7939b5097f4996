"""Remote datasets: S3 against a real S3 server on loopback (moto's), and any other
fsspec URL through fsspec's memory filesystem (gs:// and az:// take the same path)."""

from __future__ import annotations

import sys

import pytest
from conftest import DEMO_DATA
from helpers import read_run

from toolkit.cli import main
from toolkit.errors import DataError, UsageError
from toolkit.host.remote import fetch, is_remote


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """A client of a real S3 server on loopback, with an empty bucket `chats`. moto keeps
    its buckets in the process, across servers: each test's bucket is emptied first."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "TOOLKIT_DATA_CACHE": str(tmp_path / "cache"),
        "TOOLKIT_CACHE": str(tmp_path / "toolkit"),  # the registry of what toolkit made
    }.items():
        monkeypatch.setenv(name, value)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="chats")
    for item in client.list_objects_v2(Bucket="chats").get("Contents", []):
        client.delete_object(Bucket="chats", Key=item["Key"])
    yield client
    server.stop()


def test_urls_are_remote_and_paths_are_not():
    assert is_remote("s3://bucket/x.jsonl") and is_remote("gs://b/x") and is_remote("az://c/x")
    assert (
        not is_remote("data/x.jsonl") and not is_remote("/abs/x") and not is_remote("Qwen/Qwen3-8B")
    )


def test_training_reads_an_s3_dataset_and_refetches_only_when_it_changes(
    s3, tiny_model_dir, write_config, capsys
):
    s3.put_object(Bucket="chats", Key="sft/demo.jsonl", Body=DEMO_DATA.read_bytes())
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "max_steps": 2,
            "datasets": [{"path": "s3://chats/sft/demo.jsonl", "type": "chat_template"}],
        }
    )
    assert main(["validate", str(path)]) == 0  # a URL is not a missing local file
    assert main(["train", str(path), "--runtime", "local"]) == 0
    out = capsys.readouterr().out
    assert "data: fetching 1 file(s) from s3://chats/sft/demo.jsonl" in out
    assert "data: 96 rows read, 96 kept" in out

    assert (
        main(
            [
                "preprocess",
                str(path),
                "--runtime",
                "local",
                "--dataset-prepared-path",
                str(path.parent / "prep"),
            ]
        )
        == 0
    )
    assert "unchanged since it was fetched" in capsys.readouterr().out

    rows = DEMO_DATA.read_text().splitlines()[:40]
    s3.put_object(Bucket="chats", Key="sft/demo.jsonl", Body="\n".join(rows).encode())
    # Other data is another run: refused in the finished run's folder, trained in a new one.
    assert main(["train", str(path), "--runtime", "local"]) == 2
    assert "holds a finished run of another config (written" in capsys.readouterr().err
    assert (
        main(["train", str(path), "--runtime", "local", "--output-dir", str(path.parent / "again")])
        == 0
    )
    out = capsys.readouterr().out
    assert "data: fetching 1 file(s)" not in out, "fetched once, by the refused command"
    assert "data: 40 rows read" in out


def test_an_s3_folder_fetches_the_files_data_files_selects(s3, tmp_path):
    for key in ("sft/a.jsonl", "sft/nested/b.jsonl", "sft/notes.txt", "sft/c.parquet"):
        s3.put_object(Bucket="chats", Key=key, Body=b'{"messages": []}\n')
    folder = fetch("s3://chats/sft", ["*.jsonl", "nested/*.jsonl"], "datasets[0]", log=print)
    got = sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".complete"
    )
    assert got == ["a.jsonl", "nested/b.jsonl"]


def test_a_missing_object_is_named(s3):
    with pytest.raises(DataError, match=r"datasets\[0\]: s3://chats/nope.jsonl does not exist"):
        fetch("s3://chats/nope.jsonl", None, "datasets[0]", log=print)


def test_any_fsspec_url_takes_the_same_path(
    monkeypatch, tmp_path, tiny_model_dir, write_config, capsys
):
    import fsspec

    monkeypatch.setenv("TOOLKIT_DATA_CACHE", str(tmp_path / "cache"))
    with fsspec.open("memory://bucket/chats/demo.jsonl", "wb") as f:
        f.write(DEMO_DATA.read_bytes())
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "max_steps": 1,
            "datasets": [{"path": "memory://bucket/chats", "type": "chat_template"}],
        }
    )
    assert main(["train", str(path), "--runtime", "local"]) == 0
    run = read_run(tmp_path / "out")
    assert run["data"]["rows"] == 96
    assert run["config"]["datasets"][0]["path"].startswith(str(tmp_path / "cache"))


def test_a_store_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed
    with pytest.raises(
        UsageError,
        match=r"gs:// needs gcsfs, which is not installed; pip "
        r"install 'qwen-posttrain\[remote\]'",
    ):
        fetch("gs://bucket/chat.jsonl", None, "datasets[0]", log=print)


def test_a_killed_fetchs_leftover_is_removed_by_the_next_and_nothing_else(s3, tmp_path, capsys):
    """A fetch killed midway leaves its temporary folder (marked, its lock gone with its
    process): the next fetch of the same data removes it. A folder of that name pattern
    that toolkit did not mark, one a live fetch still holds, and a link are left alone."""
    import fcntl
    import os

    from helpers import someone_elses_files, tree_state

    from toolkit import cache, safe_io

    s3.put_object(Bucket="chats", Key="chat.jsonl", Body=DEMO_DATA.read_bytes())
    copy = fetch("s3://chats/chat.jsonl", None, "datasets[0]", log=print)
    folder = copy.parent.parent  # data/<key>/files/chat.jsonl
    assert main(["cache", "prune", "data"]) == 0 and not folder.exists()
    outside = someone_elses_files(tmp_path)
    left = {}
    for kind in ("killed", "live", "foreign"):
        left[kind] = folder.with_name(f".{folder.name}.{kind}")
        (left[kind] / "files").mkdir(parents=True)
        (left[kind] / "files" / "part.jsonl").write_text("{}\n")
        if kind != "foreign":
            cache.mark(left[kind], "data", folder.name)
    link = folder.with_name(f".{folder.name}.link")
    link.symlink_to(outside / "folder")
    live = safe_io.open_dir(left["live"])
    fcntl.flock(live, fcntl.LOCK_EX)  # a fetch still running holds its folder
    try:
        kept = tree_state(left["live"], left["foreign"], link, outside)
        capsys.readouterr()
        assert fetch("s3://chats/chat.jsonl", None, "datasets[0]", log=print) == copy
        assert not os.path.lexists(left["killed"])
        assert tree_state(left["live"], left["foreign"], link, outside) == kept
        err = capsys.readouterr().err
        assert f"data: removed {left['killed']}, left by an interrupted fetch" in err
    finally:
        os.close(live)
