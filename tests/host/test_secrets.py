"""Secrets by need, never as visible values.

A run names exactly the credentials it needs (trackers.credentials: W&B's key for an
online W&B run, MLflow's for a remote server, nothing else); those go into a container
on its stdin (toolkit.containers.engine), never as its environment, labels or command line, so
`docker inspect` shows no value; launch files name only those, never a value.

The docker-marked tests fill the environment with credentials of every kind, each a
unique value, and look for every value in `docker inspect` (taken while the container
runs), the container's log, the CLI's output and every file the run wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_CONFIG, DEMO_DATA, REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit import plan
from toolkit.config import LoadedConfig, load_config
from toolkit.config.trackers import MLFLOW_CREDENTIALS, WANDB_CREDENTIALS, credentials
from toolkit.containers.spec import SECRETS_RECEIVER, run_argv, secrets_payload
from toolkit.host.place import container_spec

WANDB = WANDB_CREDENTIALS
MLFLOW = MLFLOW_CREDENTIALS
# Every credential a host may hold; only the trackers' may ever enter a container.
HOST_ONLY = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
)
ALL = (*WANDB, *MLFLOW, *HOST_ONLY)


def config_with(write_config, **changes):
    return load_config(write_config(changes)).config


# (config keys, environment) -> the credentials a training needs.
NEEDS = [
    ({}, {}, ()),
    ({}, {n: "v" for n in ALL}, ()),  # a run on local data with no tracker: none
    ({"wandb_project": "p"}, {}, ()),  # offline: no key here
    ({"wandb_project": "p"}, {"WANDB_API_KEY": "k"}, WANDB),  # online, as W&B decides
    ({"wandb_project": "p", "wandb_mode": "offline"}, {"WANDB_API_KEY": "k"}, ()),
    ({"wandb_project": "p", "wandb_mode": "disabled"}, {"WANDB_API_KEY": "k"}, ()),
    ({"wandb_project": "p", "wandb_mode": "online"}, {}, WANDB),  # named; checked inside
    ({"wandb_project": "p"}, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, ()),
    ({"wandb_project": "p", "use_wandb": False}, {"WANDB_API_KEY": "k"}, ()),
    ({"use_wandb": True}, {"WANDB_API_KEY": "k"}, WANDB),
    ({"report_to": ["wandb"]}, {"WANDB_API_KEY": "k"}, WANDB),
    ({"report_to": ["tensorboard"]}, {n: "v" for n in ALL}, ()),
    ({"mlflow_experiment_name": "e"}, {n: "v" for n in ALL}, ()),  # transformers' ./mlruns
    ({"mlflow_experiment_name": "e", "mlflow_tracking_uri": "/tmp/mlruns"}, {}, ()),
    ({"mlflow_experiment_name": "e", "mlflow_tracking_uri": "file:///tmp/m"}, {}, ()),
    ({"mlflow_experiment_name": "e", "mlflow_tracking_uri": "http://10.0.0.1:5000"}, {}, MLFLOW),
    ({"mlflow_experiment_name": "e", "mlflow_tracking_uri": "https://ml.example"}, {}, MLFLOW),
    ({"mlflow_experiment_name": "e", "mlflow_tracking_uri": "databricks"}, {}, MLFLOW),
    ({"use_mlflow": False, "mlflow_tracking_uri": "https://ml.example"}, {}, ()),
    (
        {"report_to": ["wandb", "mlflow"], "mlflow_tracking_uri": "https://ml.example"},
        {"WANDB_API_KEY": "k"},
        (*WANDB, *MLFLOW),
    ),
    ({"hub_model_id": "me/model"}, {n: "v" for n in ALL}, ()),  # pushed from the host
    (
        {"datasets": [{"path": "s3://bucket/chat.jsonl", "type": "chat_template"}]},
        {n: "v" for n in ALL},
        (),  # copied on the host before the run
    ),
]


@pytest.mark.parametrize("changes, environ, needed", NEEDS)
def test_a_training_needs_exactly_its_trackers_credentials(write_config, changes, environ, needed):
    cfg = config_with(write_config, **changes)
    assert credentials(cfg, environ) == needed
    # Only a training reports to trackers: no other command gets any credential.
    loaded = LoadedConfig(cfg, Path("config.yaml"))
    for task in (plan.Preprocess(), plan.Merge(), plan.Inference(prompts=("hi",))):
        assert plan.build(task, loaded).credentials == ()
    assert plan.build(plan.TinyModel(out="tiny")).credentials == ()


@settings(max_examples=60, deadline=None)
@given(
    wandb=st.sampled_from([None, "online", "offline", "disabled"]),
    use_wandb=st.sampled_from([None, True, False]),
    use_mlflow=st.sampled_from([None, True, False]),
    uri=st.sampled_from([None, "/tmp/m", "file:///m", "http://h:1", "https://h", "databricks"]),
    present=st.sets(st.sampled_from([*ALL, "WANDB_MODE", "MY_TOKEN"])),
)
def test_no_config_ever_needs_a_host_credential(
    tmp_path_factory, tiny_model_dir, wandb, use_wandb, use_mlflow, uri, present
):
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["base_model"] = str(tiny_model_dir)
    raw["datasets"][0]["path"] = str(DEMO_DATA)
    raw["output_dir"] = str(tmp_path_factory.mktemp("o"))
    raw.update({"wandb_project": "p", "mlflow_experiment_name": "e"})
    for key, value in (
        ("wandb_mode", wandb),
        ("use_wandb", use_wandb),
        ("use_mlflow", use_mlflow),
        ("mlflow_tracking_uri", uri),
    ):
        if value is not None:
            raw[key] = value
    path = tmp_path_factory.mktemp("c") / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    environ = {name: "value" for name in present}
    needed = credentials(load_config(path).config, environ)
    assert set(needed) <= {*WANDB, *MLFLOW}
    assert len(set(needed)) == len(needed)


def test_a_container_spec_holds_names_never_values(monkeypatch, tmp_path):
    values = {name: f"value-of-{name}-{uuid.uuid4().hex}" for name in ALL}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")  # named as needed, but not set here
    needed = (*WANDB, *MLFLOW, "WANDB_API_KEY")
    spec = container_spec(
        "img", "sha256:1", ["toolkit", "train"], [], [tmp_path], False, None, needed
    )
    assert spec.secrets == ("WANDB_API_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    assert not set(spec.env) & set(ALL)
    from toolkit.containers.engine import create_kwargs

    kwargs = create_kwargs(spec, "toolkit-x")
    shown = json.dumps(kwargs, default=repr) + json.dumps(run_argv(spec))
    assert not [name for name, value in values.items() if value in shown]
    assert kwargs["command"] == [*SECRETS_RECEIVER, "toolkit", "train"]
    assert kwargs["stdin_open"] is True
    assert run_argv(spec)[:5] == ["docker", "run", "--rm", "--init", "--interactive"]
    # The values travel only in the stdin line, and only the needed ones.
    line = json.loads(secrets_payload(spec.secrets, os.environ))
    assert line == {n: values[n] for n in spec.secrets}


def test_a_run_that_needs_nothing_gets_no_receiver_and_no_stdin(monkeypatch, tmp_path):
    for name in ALL:
        monkeypatch.setenv(name, "set")
    spec = container_spec("img", "sha256:1", ["toolkit", "train"], [], [tmp_path], False)
    from toolkit.containers.engine import create_kwargs

    kwargs = create_kwargs(spec, "toolkit-x")
    assert spec.secrets == () and kwargs["command"] == ["toolkit", "train"]
    assert kwargs["stdin_open"] is False and "--interactive" not in run_argv(spec)
    assert not any("set" == e.split("=", 1)[1] for e in kwargs["environment"])


RECEIVER = [sys.executable, *SECRETS_RECEIVER[1:]]  # the host's Python stands in for the image's
DUMP_ENV = [sys.executable, "-c", "import json, os, sys; print(json.dumps(dict(os.environ)))"]
NAMES = st.from_regex(r"[A-Z_][A-Z0-9_]{0,20}", fullmatch=True).filter(
    lambda n: not n.startswith(("PYTHON", "LD_"))  # these would change the Python that dumps
)
VALUES = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=80)


@settings(max_examples=25, deadline=None)
@given(values=st.dictionaries(NAMES, VALUES, max_size=4))
def test_the_receiver_puts_any_value_in_the_commands_environment_only(values):
    """Quotes, newlines, `=`, shell text and any Unicode arrive exactly; the command's
    stdin is closed; nothing is printed."""
    names = tuple(values)
    done = subprocess.run(
        [*RECEIVER, *DUMP_ENV],
        input=secrets_payload(names, values) + b"not for the command\n",
        capture_output=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert {n: seen.get(n) for n in names} == values
    assert done.stderr == b""


@pytest.mark.parametrize(
    "sent", [b"", b'{"A": "no newline"}', b"[1, 2]\n", b'{"A": 1}\n', b'{"A=B": "x"}\n', b"{\n"]
)
def test_the_receiver_runs_nothing_without_its_line_and_echoes_no_value(sent):
    done = subprocess.run(
        [*RECEIVER, "sh", "-c", "echo RAN"],
        input=sent,
        capture_output=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 125 and done.stdout == b""
    assert done.stderr.decode() == (
        "toolkit: the run's credentials did not arrive on this container's stdin (did the "
        "toolkit command that started it stop?); nothing was run\n"
    )


# --- launch files -------------------------------------------------------------------


# A VM fetches its base model from the Hub (it cannot read this machine's files).
VM_MODEL = "Qwen/Qwen3-0.6B"


def test_launch_files_name_only_what_the_run_needs(write_config, tmp_path, monkeypatch):
    from toolkit.host.cloud import cloud_init, skypilot_task

    values = {name: f"v-{name}-{uuid.uuid4().hex}" for name in ALL}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    remote = {
        "base_model": VM_MODEL,
        "datasets": [{"path": "s3://bucket/chat.jsonl", "type": "chat_template"}],
    }
    plain = load_config(write_config(remote))
    online = load_config(
        write_config({**remote, "wandb_project": "p", "wandb_mode": "online"}, name="w.yaml")
    )
    config_file = tmp_path / "vm.yaml"
    config_file.write_text("{}")
    image = "r/toolkit@sha256:" + "ab" * 32

    task = skypilot_task(plain, image, config_file, None, 1, "s3://b/o")
    assert "secrets" not in task  # a run on copied data with no tracker needs none
    task = skypilot_task(online, image, config_file, None, 1, "s3://b/o")
    assert task["secrets"] == {"WANDB_API_KEY": None}
    texts = [yaml.safe_dump(task)]

    for loaded, needed in ((plain, ()), (online, ("WANDB_API_KEY",))):
        text = cloud_init(loaded, image, "cpu", "s3://b/o")
        texts.append(text)
        script = next(
            f["content"]
            for f in yaml.safe_load(text)["write_files"]
            if f["path"] == "/opt/toolkit/run.sh"
        )
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
        runs = [line for line in script.splitlines() if "docker run" in line]
        assert runs and not any(f"--env {n}" in r for r in runs for n in ALL)
        [train] = [line for line in runs if "toolkit train" in line]
        if needed:
            assert train.startswith(
                "secrets_json WANDB_API_KEY | docker run --rm --init --interactive "
            )
        else:
            assert train.startswith("docker run --rm --init --user")
        assert not any(n in train for n in ALL if n not in needed)
    for text in texts:
        assert not [name for name, value in values.items() if value in text]


@pytest.mark.parametrize(
    ("mode", "listed"), [(None, True), ("online", True), ("offline", False), ("disabled", False)]
)
def test_launch_files_ask_the_vm_not_this_machine_about_w_and_b(
    mode, listed, write_config, tmp_path, monkeypatch
):
    """Which credentials a VM's run needs is decided by the config and the VM's secrets,
    not by the environment of the machine that writes the files: with no key here (and
    WANDB_MODE=offline here), an unset wandb_mode is still online on a VM that has one."""
    from toolkit.host.cloud import cloud_init, skypilot_task

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    remote = {
        "base_model": VM_MODEL,
        "datasets": [{"path": "s3://bucket/chat.jsonl", "type": "chat_template"}],
    }
    changes = {**remote, "wandb_project": "p", **({"wandb_mode": mode} if mode else {})}
    loaded = load_config(write_config(changes))
    config_file = tmp_path / "vm.yaml"
    config_file.write_text("{}")
    image = "r/toolkit@sha256:" + "ab" * 32
    task = skypilot_task(loaded, image, config_file, None, 1, "s3://b/o")
    assert task.get("secrets") == ({"WANDB_API_KEY": None} if listed else None)
    script = next(
        f["content"]
        for f in yaml.safe_load(cloud_init(loaded, image, "cpu", "s3://b/o"))["write_files"]
        if f["path"] == "/opt/toolkit/run.sh"
    )
    [train] = [line for line in script.splitlines() if "toolkit train" in line]
    assert ("secrets_json WANDB_API_KEY |" in train) is listed


def test_the_vm_scripts_secrets_reach_the_command_through_the_pipe(write_config, tmp_path):
    """The cloud-init script's own `secrets_json`, run by bash with the VM's variables
    set, feeds the receiver: the command sees the value, no argument holds it."""
    from toolkit.host.cloud import cloud_init

    loaded = load_config(
        write_config(
            {
                "base_model": VM_MODEL,
                "datasets": [{"path": "s3://bucket/chat.jsonl", "type": "chat_template"}],
                "mlflow_experiment_name": "e",
                "mlflow_tracking_uri": "https://ml.example",
            }
        )
    )
    script = next(
        f["content"]
        for f in yaml.safe_load(cloud_init(loaded, "img@sha256:0", "cpu", "s3://b/o"))[
            "write_files"
        ]
        if f["path"] == "/opt/toolkit/run.sh"
    )
    lines = script.splitlines()
    start = lines.index("secrets_json() {")
    function = "\n".join(lines[start : start + 3]).replace(
        "/opt/toolkit/fsspec/bin/python", sys.executable
    )
    [train] = [line for line in lines if "toolkit train" in line]
    piped = train.split(" | ")[0]
    assert piped == "secrets_json " + " ".join(MLFLOW)
    planted = tmp_path / "ran"
    value = f"p'a\"s s\n$(touch {planted})`touch {planted}`"
    bash = f"{function}\n{piped} | {shlex_join(RECEIVER)} {shlex_join(DUMP_ENV)}"
    done = subprocess.run(
        ["bash", "-c", bash],
        capture_output=True,
        text=True,
        env={
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(REPO),
            "MLFLOW_TRACKING_PASSWORD": value,
            "AWS_SECRET_ACCESS_KEY": "stays-on-the-vm",
        },
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["MLFLOW_TRACKING_PASSWORD"] == value and not planted.exists()
    assert "MLFLOW_TRACKING_TOKEN" not in seen  # not set on the VM: not invented


def shlex_join(argv):
    import shlex

    return shlex.join(argv)


# --- the real engine ----------------------------------------------------------------


class Inspections:
    """`docker inspect` and the log of every toolkit container, taken over and over
    while a test runs (a container lives for the test's whole run)."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict, str]] = []  # (inspect, log so far)
        self.running = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        from toolkit.containers import engine

        client = engine.client()
        while not self._stop.is_set():
            for container in client.api.containers(all=True, filters={"label": engine.LABEL}):
                try:
                    data = client.api.inspect_container(container["Id"])
                    logs = client.api.logs(container["Id"]).decode("utf-8", "replace")
                except Exception:  # removed between the list and the inspect
                    continue
                self.running += bool(data["State"]["Running"])
                self.seen.append((data, logs))
            self._stop.wait(0.1)

    def __enter__(self) -> Inspections:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def text(self) -> str:
        return "\n".join(json.dumps(data) + logs for data, logs in self.seen)


def fill_environment(monkeypatch) -> dict[str, str]:
    """Credentials of every kind, and a few of no known kind, each a unique value."""
    values = {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in ALL}
    values.update(
        {f"SVC{i}_{uuid.uuid4().hex[:6].upper()}_TOKEN": uuid.uuid4().hex for i in range(3)}
    )
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def visible(values: dict[str, str], text: str) -> list[str]:
    return sorted(name for name, value in values.items() if value in text)


@pytest.mark.docker
@pytest.mark.slow
def test_a_training_in_the_container_shows_no_credential(image, shared, monkeypatch, capfd):
    """Local data, W&B offline: the run needs no credential, so none goes in; no value is
    in `docker inspect` (taken while it trains), its log, our output or any file written."""
    from toolkit.cli import main

    values = fill_environment(monkeypatch)
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw.update(
        {
            "base_model": str(shared / "model"),
            "output_dir": str(shared / "out"),
            "max_steps": 2,
            "save_steps": 2,
            "val_set_size": 0.0,
            "wandb_project": "p",
            "wandb_mode": "offline",
        }
    )
    raw["datasets"][0]["path"] = str(shared / "chat.jsonl")
    config = shared / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    with Inspections() as inspections:
        code = main(["train", str(config), "--runtime", "docker"])
    captured = capfd.readouterr()
    assert code == 0, captured.err[-2000:]
    assert inspections.running, "no inspection caught the container running"
    assert visible(values, inspections.text()) == []
    assert visible(values, captured.out + captured.err) == []
    assert "on its stdin" not in captured.err  # nothing was handed in
    for path in (shared / "out").rglob("*"):
        if path.is_file():
            assert visible(values, path.read_bytes().decode("latin-1")) == [], path
    assert list((shared / "out" / "wandb").glob("offline-run-*"))


@pytest.mark.docker
@pytest.mark.slow
def test_a_needed_credential_reaches_the_process_and_nothing_shows_it(
    image, write_config, monkeypatch, capfd
):
    """A remote MLflow run's credentials, through the engine as a training gets them:
    the process sees exactly those values (and none of the others); inspect, the log and
    our output show none."""
    import hashlib

    from toolkit.containers import engine

    values = fill_environment(monkeypatch)
    cfg = config_with(
        write_config, mlflow_experiment_name="e", mlflow_tracking_uri="https://ml.example"
    )
    needed = plan.build(plan.Train(), LoadedConfig(cfg, Path("config.yaml"))).credentials
    assert needed == MLFLOW
    report = (
        "import hashlib, json, os, sys, time\n"
        "print(json.dumps({n: hashlib.sha256(v.encode()).hexdigest() "
        "for n, v in os.environ.items()}), flush=True)\n"
        "print('stdin:', repr(sys.stdin.read()), flush=True)\n"
        "time.sleep(3)\n"
    )
    spec = container_spec(image, "", ["python3", "-c", report], [], [], False, None, needed)
    with Inspections() as inspections:
        assert engine.run(spec) == 0
    out, err = capfd.readouterr()
    [line, stdin] = out.splitlines()[:2]
    hashes = json.loads(line)
    assert {n: hashes.get(n) for n in values} == {
        n: hashlib.sha256(values[n].encode()).hexdigest() if n in MLFLOW else None for n in values
    }
    assert stdin == "stdin: ''"  # the command's stdin is closed, the line consumed
    assert inspections.running
    assert visible(values, inspections.text()) == []
    assert visible(values, out + err) == []
    ours = [data for data, _ in inspections.seen if report in data["Config"]["Cmd"]]
    assert ours, "the container was never inspected"
    for data in ours:  # names are not shown either: the environment holds none of them
        assert data["Config"]["Cmd"] == [*SECRETS_RECEIVER, "python3", "-c", report]
        assert not any(e.split("=", 1)[0] in values for e in data["Config"]["Env"])
