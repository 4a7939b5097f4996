"""`toolkit cache list | prune`, and the compile caches a container keeps per image."""

from __future__ import annotations

import json

from hubstub import HubStub

from toolkit.cli import main


def test_list_and_prune_what_toolkit_fetched(tmp_path, monkeypatch, capsys, tiny_model_dir):
    from toolkit import hub

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "toolkit-cache"))
    monkeypatch.setenv("TOOLKIT_DATA_CACHE", str(tmp_path / "data-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with HubStub() as stub:
        files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
        stub.add("Qwen/Qwen3-Tiny").commit(files)
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        pin = hub.fetch("base_model", "Qwen/Qwen3-Tiny", "model", None, log=lambda _: None)
    # A repository another tool put in the same cache is not toolkit's to list or prune.
    other = tmp_path / "hf" / "models--someone--else" / "snapshots" / "abc"
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    from toolkit.cache import record_prepared

    prepared = tmp_path / "prepared"
    (prepared / "abc123").mkdir(parents=True)
    (prepared / "abc123" / "report.json").write_text("{}")
    (prepared / "notes").mkdir()  # the user's own folder beside it: never listed
    record_prepared(prepared)
    (tmp_path / "toolkit-cache" / "compile" / "0123456789abcdef" / "triton").mkdir(parents=True)
    (tmp_path / "toolkit-cache" / "compile" / "0123456789abcdef" / "triton" / "k.so").write_bytes(
        b"x" * 2048
    )
    assert main(["cache", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["kind"], r["name"]) for r in rows} == {
        ("models", "model Qwen/Qwen3-Tiny"),
        ("prepared", "prepared/abc123"),
        ("compile", "0123456789abcdef"),
    }
    model = next(r for r in rows if r["kind"] == "models")
    weights = (pin.snapshot / "model.safetensors").stat().st_size
    assert model["bytes"] >= weights and model["path"] == str(pin.folder)
    assert main(["cache", "prune", "models", "--dry-run"]) == 0
    assert "would remove models model Qwen/Qwen3-Tiny" in capsys.readouterr().out
    assert pin.folder.is_dir()
    assert main(["cache", "prune", "all"]) == 0
    assert not pin.folder.exists() and other.is_dir()
    assert not (prepared / "abc123").exists() and (prepared / "notes").is_dir()
    assert not (tmp_path / "toolkit-cache" / "compile" / "0123456789abcdef").exists()
    assert main(["cache", "list"]) == 0
    assert "toolkit keeps nothing here yet" in capsys.readouterr().out


def test_each_image_gets_its_own_compile_cache(tmp_path, monkeypatch):
    from toolkit import cache, launch

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(
        launch, "host_user", lambda: f"{__import__('os').getuid()}:{__import__('os').getgid()}"
    )
    a = launch.compile_cache("sha256:" + "a" * 64)
    b = launch.compile_cache("sha256:" + "b" * 64)
    assert a != b and a.parent == b.parent == tmp_path / "compile"
    env = cache.compile_env(a)
    assert env["TRITON_CACHE_DIR"] == str(a / "triton")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(a / "inductor")
    assert all((a / sub).is_dir() for sub in cache.COMPILE_ENV.values())
