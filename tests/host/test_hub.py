"""Hub models and datasets fetched once on the host, pinned by commit, recorded — served
by a Hub stand-in on loopback (tests/hubstub.py); only HF_ENDPOINT differs from the
real Hub's code path."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import SESSION_FOLDERS
from helpers import answer_of, read_run
from hubstub import TOKEN, HubStub

from toolkit.cli import main
from toolkit.tiny import demo_conversations

REPO = "Qwen/Qwen3-Tiny-Instruct"
DATA = "toolkit-tests/chat"


def model_files(model_dir) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    files["pytorch_model.bin"] = b"a duplicate a run never needs"
    return files


@pytest.fixture
def hub(tiny_model_dir, tmp_path, monkeypatch):
    with HubStub() as stub:
        stub.add(REPO).commit(model_files(tiny_model_dir))
        rows = "".join(json.dumps(r) + "\n" for r in demo_conversations(48))
        stub.add(DATA, "dataset").commit({"train.jsonl": rows.encode(), "README.md": b"# chat"})
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HOME", raising=False)
        yield stub


def hub_config(tmp_path, name="out", **changes):
    data = {
        "base_model": REPO,
        "chat_template": "qwen3",
        "datasets": [{"path": DATA, "type": "chat_template"}],
        "output_dir": str(tmp_path / name),
        "adapter": "lora",
        "lora_target_linear": True,
        "max_steps": 2,
        "save_steps": 2,
        "micro_batch_size": 4,
        "learning_rate": 0.01,
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def downloaded(stub) -> list[str]:
    return sorted(p.rsplit("/", 1)[-1] for p in stub.downloads())


def test_first_run_fetches_once_the_second_asks_nothing(hub, tmp_path, capsys):
    config = hub_config(tmp_path)
    assert main(["train", str(config), "--runtime", "local"]) == 0
    # Every file once, the .bin duplicate never.
    model = hub.repos[("model", REPO)]
    served = model.commits[model.branches["main"]]
    wanted = [name for name in served if name != "pytorch_model.bin"]
    assert downloaded(hub) == sorted([*wanted, "README.md", "train.jsonl"])
    run = read_run(tmp_path / "out")
    pins = {p["repo"]: p for p in run["hub"]}
    assert pins[REPO]["commit"] == hub.repos[("model", REPO)].branches["main"]
    assert pins[DATA]["commit"] == hub.repos[("dataset", DATA)].branches["main"]
    assert pins[REPO]["files"]["model.safetensors"]  # each file's hash
    assert run["config"]["base_model"] == REPO
    hub.requests.clear()
    capsys.readouterr()
    assert main(["train", str(config), "--runtime", "local"]) == 0
    assert "already holds this run" in capsys.readouterr().err
    assert hub.requests == []  # the recorded commits: nothing asked of the Hub
    # Another run of the same model: resolved again (the branch may have moved), nothing
    # downloaded.
    assert main(["train", str(hub_config(tmp_path, "other")), "--runtime", "local"]) == 0
    assert downloaded(hub) == []


def test_a_gated_repository_fails_on_the_host_with_the_fix(hub, tmp_path, capsys):
    hub.repos[("model", REPO)].gated = True
    assert main(["train", str(hub_config(tmp_path)), "--runtime", "local"]) == 2
    err = capsys.readouterr().err
    assert f"base_model: {REPO} is gated: accept its licence on {hub.url}/{REPO}" in err
    assert "set HF_TOKEN" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_gated_repository_with_a_token_trains(hub, tmp_path, monkeypatch):
    hub.repos[("model", REPO)].gated = True
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["train", str(hub_config(tmp_path)), "--runtime", "local"]) == 0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"base_model": "Qwen/Nope"}, "base_model: Qwen/Nope is not a model on the Hub"),
        ({"revision_of_model": "v9"}, f"base_model: {REPO} has no revision 'v9'"),
    ],
)
def test_missing_repositories_and_revisions_name_the_fix(hub, tmp_path, capsys, changes, message):
    assert main(["train", str(hub_config(tmp_path, **changes)), "--runtime", "local"]) == 2
    assert message in capsys.readouterr().err


def test_no_hub_stops_before_anything_starts(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert main(["train", str(hub_config(tmp_path)), "--runtime", "local"]) == 1
    err = capsys.readouterr().err
    assert f"base_model: could not fetch {REPO}@main from http://127.0.0.1:9" in err
    assert not (tmp_path / "out").exists()


def test_a_reproduced_run_keeps_the_commit_after_the_branch_moved(
    hub, tmp_path, tiny_model_dir, capsys
):
    config = hub_config(tmp_path)
    assert main(["train", str(config), "--runtime", "local"]) == 0
    repo = hub.repos[("model", REPO)]
    first = repo.branches["main"]
    files = model_files(tiny_model_dir)
    files["README.md"] = b"a new commit on main"
    assert repo.commit(files) != first
    # The same command on the finished run: the same commit, not the branch's new one.
    assert main(["train", str(config), "--runtime", "local"]) == 0
    assert main(["reproduce", str(tmp_path / "out"), "--output-dir", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert f"hub: {REPO} at {first[:12]}, the run's commit" in out
    assert "SAME within" in out
    again = {p["repo"]: p["commit"] for p in read_run(tmp_path / "again")["hub"]}
    assert again[REPO] == first


def test_the_container_gets_the_cache_offline_and_no_token(hub, tmp_path, monkeypatch):
    """What the engine is asked for: the repository's cache folder read-only, offline
    mode, the pins, no network for the Hub, and no Hugging Face token by any name."""
    from toolkit import plan
    from toolkit.config import load_config
    from toolkit.host import hub as toolkit_hub
    from toolkit.host import place
    from toolkit.host.inputs import on_this_machine

    monkeypatch.setenv("HF_TOKEN", "hf_secret_on_the_host")
    loaded = on_this_machine(load_config(hub_config(tmp_path)))
    planned = plan.build(plan.Train(), loaded)
    spec = place.plan_spec(planned, tmp_path / "plan.json", "img", "sha256:x")
    folders = {p.folder for p in loaded.hub}
    assert {m.host for m in spec.mounts if m.read_only} >= {str(f.resolve()) for f in folders}
    assert spec.network == "none"
    assert spec.env["HF_HUB_OFFLINE"] == "1" and spec.env["HF_HUB_CACHE"] == str(
        toolkit_hub.hub_cache()
    )
    assert not {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"} & set(spec.env)
    assert "hf_secret_on_the_host" not in json.dumps(spec.env)


@pytest.mark.docker
@pytest.mark.slow
def test_a_hub_model_trains_in_the_offline_container(hub, image, tmp_path, monkeypatch, capfd):
    import os
    import shutil
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="toolkit-hub-docker-"))
    SESSION_FOLDERS.append(root)
    root.chmod(0o755)
    try:
        monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf-cache"))
        config = hub_config(root)
        if os.geteuid() == 0:  # run as a user that is not root, as the other docker tests
            from toolkit.host import place

            monkeypatch.setattr(place, "host_user", lambda: "1000:1000")
            (root / "out").mkdir()
            os.chown(root / "out", 1000, 1000)
        assert main(["train", str(config), "--runtime", "docker"]) == 0
        assert "without network" in capfd.readouterr().err
        run = read_run(root / "out")
        assert run["environment"]["in_container"] is True
        pins = {p["repo"]: p["commit"] for p in run["hub"]}
        assert pins[REPO] == hub.repos[("model", REPO)].branches["main"]
        assert run["config"]["base_model"] == REPO  # loaded by its name, from the cache
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_merge_and_inference_use_the_commit_the_adapter_was_trained_on(
    hub, tmp_path, tiny_model_dir, capsys
):
    config = hub_config(tmp_path)
    assert main(["train", str(config), "--runtime", "local"]) == 0
    repo = hub.repos[("model", REPO)]
    files = model_files(tiny_model_dir)
    files["README.md"] = b"moved"
    repo.commit(files)
    hub.requests.clear()
    assert main(["merge-lora", str(config), "--runtime", "local"]) == 0
    answer_of(capsys, config, prompt="Hi", tokens=4)
    assert hub.requests == []  # the recorded commit, from the cache: nothing asked
    merged = json.loads((tmp_path / "out" / "merged" / "config.json").read_text())
    assert merged["model_type"] == "qwen3"


def test_the_adapter_and_the_merged_model_are_pushed_from_the_host(
    hub, tmp_path, monkeypatch, capsys
):
    config = hub_config(tmp_path, hub_model_id="me/tiny-lora", hub_private_repo=True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["train", str(config), "--runtime", "local"]) == 2
    assert "HF_TOKEN is not set: export a write token" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was fetched or written
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["train", str(config), "--runtime", "local"]) == 0
    assert main(["merge-lora", str(config), "--runtime", "local"]) == 0
    adapter, merged = (
        hub.repos[("model", "me/tiny-lora")],
        hub.repos[("model", "me/tiny-lora-merged")],
    )
    served = adapter.commits[adapter.branches["main"]]
    assert {"adapter_config.json", "adapter_model.safetensors", "run.json"} <= set(served)
    assert (
        served["adapter_model.safetensors"]
        == (tmp_path / "out" / "adapter_model.safetensors").read_bytes()
    )
    assert "model.safetensors" in merged.commits[merged.branches["main"]] and adapter.private
    assert not any(name.startswith("checkpoint-") for name in served)
    # The same commands again: nothing is pushed twice.
    hub.requests.clear()
    assert main(["train", str(config), "--runtime", "local"]) == 0
    assert main(["merge-lora", str(config), "--runtime", "local"]) == 0
    assert [r for r in hub.requests if r[0] == "POST"] == []
    pushed = read_run(tmp_path / "out")["pushed"]
    assert [(p["what"], p["repo"], p["commit"]) for p in pushed] == [
        ("adapter", "me/tiny-lora", adapter.branches["main"]),
        ("merged model", "me/tiny-lora-merged", merged.branches["main"]),
    ]


def test_a_preempted_run_resumes_on_its_commit_after_the_branch_moved(
    hub, tmp_path, tiny_model_dir, monkeypatch, capsys
):
    from helpers import sigterm_at

    config = hub_config(tmp_path, max_steps=4, save_steps=2)
    with monkeypatch.context() as patch:
        sigterm_at(patch, 2)
        assert main(["train", str(config), "--runtime", "local"]) == 75
    repo = hub.repos[("model", REPO)]
    first = repo.branches["main"]
    files = model_files(tiny_model_dir)
    files["README.md"] = b"moved while the run was stopped"
    repo.commit(files)
    hub.requests.clear()
    assert main(["train", str(config), "--runtime", "local"]) == 0
    assert "resume: continuing from checkpoint-2" in capsys.readouterr().out
    assert hub.requests == []
    run = read_run(tmp_path / "out")
    assert {p["repo"]: p["commit"] for p in run["hub"]}[REPO] == first
    assert [s["outcome"] for s in run["segments"]] == ["preempted", "complete"]


def test_a_finished_run_not_yet_pushed_is_pushed_by_the_same_command(
    hub, tmp_path, monkeypatch, capsys
):
    """What did not reach the Hub (a push that failed, or one not asked for at first)
    goes by running the same command again; the run is not trained twice."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    config = hub_config(tmp_path, hub_model_id="me/tiny-lora")
    assert main(["train", str(config), "--runtime", "local", "--push-to-hub", "false"]) == 0
    assert ("model", "me/tiny-lora") not in hub.repos
    capsys.readouterr()
    assert main(["train", str(config), "--runtime", "local"]) == 0
    assert "already holds this run" in capsys.readouterr().err
    assert ("model", "me/tiny-lora") in hub.repos
    assert [p["repo"] for p in read_run(tmp_path / "out")["pushed"]] == ["me/tiny-lora"]
