"""A newcomer's first mistakes, met at `toolkit validate` (or `toolkit doctor`): one
screen naming the key, what is wrong and the fix, exit 2, never a traceback from deep
inside the container."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from fakes import FakeDocker, FakeRuntime
from hubstub import HubStub

from toolkit.cli import main
from toolkit.compat import Status
from toolkit.containers.spec import unreachable
from toolkit.host.doctor import host_checks, render
from toolkit.host.probe import gather
from toolkit.images import load_matrix

TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
FOLDER_FIX = (
    "point base_model at a folder holding config.json, the *.safetensors weights and the "
    "tokenizer (as save_pretrained writes it), or at a hub id like Qwen/Qwen3-8B"
)


def copy_without(tiny_model_dir, where, *missing):
    """A copy of the tiny model, less the files named."""
    shutil.copytree(tiny_model_dir, where, ignore=lambda _d, names: set(missing) & set(names))
    return where


def validate(path, capsys) -> tuple[int, str]:
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


# --- 1. a model folder without weights or tokenizer ---------------------------------


def test_a_model_folder_without_weights_is_a_config_problem(
    tiny_model_dir, write_config, tmp_path, capsys
):
    model = copy_without(tiny_model_dir, tmp_path / "my-model", "model.safetensors")
    code, err = validate(write_config({"base_model": str(model)}), capsys)
    assert code == 2
    assert (
        f"base_model: {str(model)!r} has config.json but no weights (no *.safetensors or "
        f"model.safetensors.index.json); {FOLDER_FIX}"
    ) in err
    assert len(err.splitlines()) < 25


def test_a_model_folder_without_a_tokenizer_is_a_config_problem(
    tiny_model_dir, write_config, tmp_path, capsys
):
    model = copy_without(tiny_model_dir, tmp_path / "my-model", *TOKENIZER)
    code, err = validate(write_config({"base_model": str(model)}), capsys)
    assert code == 2
    assert (
        f"base_model: {str(model)!r} has config.json but no tokenizer (no tokenizer.json "
        f"or tokenizer_config.json) and tokenizer_config is not set; {FOLDER_FIX}"
    ) in err


def test_a_half_built_demo_model_names_the_tiny_model_command(
    tiny_model_dir, write_config, tmp_path, capsys
):
    """config.json alone, as an interrupted `toolkit tiny-model` leaves it."""
    model = tmp_path / "tiny-qwen3"
    model.mkdir()
    shutil.copy(tiny_model_dir / "config.json", model)
    code, err = validate(write_config({"base_model": str(model)}), capsys)
    assert code == 2
    assert (
        f"base_model: {str(model)!r} has config.json but no weights (no *.safetensors or "
        "model.safetensors.index.json) and no tokenizer (no tokenizer.json or "
        "tokenizer_config.json) and tokenizer_config is not set; for the bundled demo "
        f"remove it and run `toolkit tiny-model {model}`; otherwise point base_model at"
    ) in err


def test_the_tokenizer_may_come_from_a_tokenizer_only_folder(
    tiny_model_dir, write_config, tmp_path, capsys
):
    """tokenizer_config names a folder with a tokenizer and no weights: that is enough,
    and the model folder then needs no tokenizer of its own."""
    model = copy_without(tiny_model_dir, tmp_path / "weights-only", *TOKENIZER)
    tokenizer = tmp_path / "tokenizer-only"
    tokenizer.mkdir()
    for name in TOKENIZER:
        shutil.copy(tiny_model_dir / name, tokenizer)
    code, err = validate(
        write_config({"base_model": str(model), "tokenizer_config": str(tokenizer)}), capsys
    )
    assert code == 0, err


def test_sharded_weights_are_weights(tiny_model_dir, write_config, tmp_path, capsys):
    model = copy_without(tiny_model_dir, tmp_path / "sharded", "model.safetensors")
    shutil.copy(tiny_model_dir / "model.safetensors", model / "model-00001-of-00001.safetensors")
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {}, "metadata": {}})
    )
    code, err = validate(write_config({"base_model": str(model)}), capsys)
    assert code == 0, err


def test_a_tokenizer_config_folder_without_a_tokenizer_is_refused(
    tiny_model_dir, write_config, tmp_path, capsys
):
    empty = tmp_path / "tok"
    empty.mkdir()
    code, err = validate(write_config({"tokenizer_config": str(empty)}), capsys)
    assert code == 2
    assert (
        f"tokenizer_config: {str(empty)!r} holds no tokenizer (no tokenizer.json or "
        "tokenizer_config.json); give the folder a tokenizer was saved to"
    ) in err


# --- 2. sequence_len past the model's positions --------------------------------------


def test_sequence_len_past_a_local_models_positions_is_warned_about(
    tiny_model_dir, write_config, capsys
):
    trained = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    code, err = validate(write_config({"sequence_len": trained * 2}), capsys)
    assert code == 0, err
    assert (
        f"warning: sequence_len: {trained * 2} is beyond {tiny_model_dir}'s "
        f"max_position_embeddings {trained} and rope_scaling is not set: positions past "
        f"{trained} are untrained; lower sequence_len or set rope_scaling (yarn), e.g. "
        f"{{rope_type: yarn, factor: 2, original_max_position_embeddings: {trained}}}"
    ) in err


@pytest.mark.parametrize("change", ["within", "rope_scaling"])
def test_no_warning_within_the_positions_or_with_rope_scaling(
    change, tiny_model_dir, write_config, capsys
):
    trained = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    changes = (
        {"sequence_len": trained}
        if change == "within"
        else {
            "sequence_len": trained * 2,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 2.0,
                "original_max_position_embeddings": trained,
            },
        }
    )
    code, err = validate(write_config(changes), capsys)
    assert code == 0, err
    assert "max_position_embeddings" not in err


REPO = "Qwen/Qwen3-0.6B"


@pytest.mark.parametrize("fetched", [False, True])
def test_a_hub_models_positions_come_from_the_cache_only(
    fetched, tiny_model_dir, write_config, tmp_path, monkeypatch, capsys
):
    """A Hub base_model is judged from the Hugging Face cache when it was fetched, and
    never looked up: validate makes no request to the Hub, fetched or not."""
    from toolkit.host import hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "toolkit-cache"))
    files = {q.name: q.read_bytes() for q in tiny_model_dir.iterdir() if q.is_file()}
    files["config.json"] = json.dumps(
        {**json.loads(files["config.json"]), "max_position_embeddings": 40960}
    ).encode()
    with HubStub() as stub:
        stub.add(REPO).commit(files)
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        if fetched:
            hub.fetch("base_model", REPO, "model", None, log=lambda _: None)
        before = list(stub.requests)
        code, err = validate(write_config({"base_model": REPO, "sequence_len": 100000}), capsys)
        assert stub.requests == before
    assert code == 0, err
    warning = (
        f"warning: sequence_len: 100000 is beyond {REPO}'s max_position_embeddings 40960 and "
        "rope_scaling is not set: positions past 40960 are untrained; lower sequence_len or "
        "set rope_scaling (yarn), e.g. {rope_type: yarn, factor: 3, "
        "original_max_position_embeddings: 40960}"
    )
    assert (warning in err) is fetched, err


# --- 3. template_thinking_key ---------------------------------------------------------


def test_template_thinking_key_reasoning_content_is_accepted(write_config, tmp_path, capsys):
    """axolotl's default, and the key toolkit's chat template reads: nothing to say."""
    path = write_config()
    data = yaml.safe_load(path.read_text())
    data["datasets"][0]["template_thinking_key"] = "reasoning_content"
    path.write_text(json.dumps(data))
    code, err = validate(path, capsys)
    assert code == 0, err
    assert "template_thinking_key" not in err


def test_another_template_thinking_key_is_refused_naming_the_accepted_one(
    write_config, tmp_path, capsys
):
    path = write_config()
    data = yaml.safe_load(path.read_text())
    data["datasets"][0]["template_thinking_key"] = "thinking"
    path.write_text(json.dumps(data))
    code, err = validate(path, capsys)
    assert code == 2
    assert (
        "datasets[0].template_thinking_key: got 'thinking'; not supported by toolkit "
        "(toolkit's chat template reads a message's reasoning as reasoning_content, the one "
        "value accepted; to take the reasoning from another field of the rows, set "
        "field_thinking)"
    ) in err


# --- 4. doctor, for a user outside the docker group -----------------------------------

DENIED = (
    "permission denied while trying to connect to the Docker daemon socket at "
    'unix:///var/run/docker.sock: Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.24/version": '
    "dial unix /var/run/docker.sock: connect: permission denied"
)


def denied_runtime() -> FakeRuntime:
    return FakeRuntime(engine=FakeDocker(version=unreachable(DENIED)))


def test_doctor_says_permission_denied_is_a_permission_problem(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    host = gather(denied_runtime(), read_text=lambda _: None, exists=lambda _: False)
    assert host.docker_version is None
    docker = next(f for f in host_checks(host, list(load_matrix().values())) if f.check == "docker")
    assert docker.status == Status.FAIL
    assert docker.message.startswith(
        "permission denied on the Docker engine at the default socket /var/run/docker.sock: "
        "a permission problem (the engine may well be running)"
    )
    assert docker.fix.startswith(
        "add your user to the docker group (`sudo usermod -aG docker $USER`, then log in "
        "again), or set DOCKER_HOST to an engine you may use, or train with --runtime local"
    )
    assert "start" not in docker.message + docker.fix


def test_cli_doctor_for_a_user_outside_the_docker_group(monkeypatch, capsys):
    from toolkit.cli import common

    monkeypatch.setattr(common, "new_runtime", denied_runtime)
    monkeypatch.delenv("TOOLKIT_IN_CONTAINER", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL     docker  permission denied on the Docker engine" in out
    assert "sudo usermod -aG docker $USER" in out and "systemctl start" not in out


def test_an_engine_that_is_down_is_still_told_to_start():
    host = gather(
        FakeRuntime(engine=FakeDocker(version=unreachable("Cannot connect"))),
        read_text=lambda _: None,
        exists=lambda _: False,
    )
    text = render(host_checks(host, list(load_matrix().values())))
    assert "fix: install Docker and start it" in text and "usermod" not in text
