"""Cloud VMs: push an image to a real registry on loopback and pull it by digest;
the launch files a VM runs (SkyPilot task, cloud-init user-data)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from toolkit.cli import main
from toolkit.containers.seam import Docker, Runtime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry (the CNCF distribution server) on 127.0.0.1, which the
    engine trusts over plain HTTP as it trusts every loopback registry."""
    binary = shutil.which("docker-registry")
    if binary is None:
        message = "docker-registry is not installed (apt-get install docker-registry)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the registry test must run)")
        pytest.skip(message)
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: "
        f"{tmp_path / 'store'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    server = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.mark.docker
def test_push_records_the_digest_and_a_vm_pulls_by_it(
    image, registry, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TOOLKIT_PUSHED", str(tmp_path / "pushed.json"))
    assert main(["images", "push", "cpu", "--registry", f"{registry}/team"]) == 0
    record = json.loads((tmp_path / "pushed.json").read_text())["cpu"]
    assert record["image"].startswith(f"{registry}/team/toolkit@sha256:")
    assert capsys.readouterr().out.startswith(record["image"])
    docker, runtime = Docker(Runtime()), Runtime()
    local_id = docker.inspect_image(image).id
    assert record["image_id"] == local_id
    # As a VM would: nothing but the digest. The pulled image is the one built here.
    assert runtime.run(["docker", "rmi", record["tag"]], timeout=60).ok
    try:
        assert docker.pull(record["image"]).ok
        assert docker.inspect_image(record["image"]).id == local_id
    finally:
        runtime.run(["docker", "rmi", record["image"]], timeout=60)


def test_push_refuses_a_malformed_registry(capsys):
    assert main(["images", "push", "cpu", "--registry", "https://ghcr.io/acme"]) == 2
    assert "expected HOST[:PORT][/NAMESPACE]" in capsys.readouterr().err


SKY_PYTHON = REPO / ".venv-sky" / "bin" / "python"
FAKE_SECRET = "hf_fake_secret_value_0123456789"


@pytest.fixture
def pushed(tmp_path, monkeypatch):
    """A push record as `toolkit images push` writes it (the digest is made up)."""
    digest = "registry.example.com/team/toolkit@sha256:" + "ab" * 32
    records = {name: {"variant": name, "image": digest} for name in ("cpu", "cu130", "rocm7.2")}
    (tmp_path / "pushed.json").write_text(json.dumps(records))
    monkeypatch.setenv("TOOLKIT_PUSHED", str(tmp_path / "pushed.json"))
    monkeypatch.setenv("HF_TOKEN", FAKE_SECRET)
    return digest


def _validator(argv0: Path, what: str):
    if not argv0.exists():
        message = f"{what} is not installed ({argv0}); .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_skypilot_task_passes_skypilots_own_validation(
    pushed, tiny_model_dir, write_config, tmp_path, capsys
):
    _validator(SKY_PYTHON, "SkyPilot")
    config = write_config({"base_model": str(tiny_model_dir)})
    out = tmp_path / "task.yaml"
    assert (
        main(
            [
                "launch",
                "skypilot",
                str(config),
                "--variant",
                "cu130",
                "--outputs",
                "s3://bucket/runs/demo",
                "--accelerators",
                "H100:8",
                "--nodes",
                "2",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    task = yaml.safe_load(out.read_text())
    assert task["resources"] == {"image_id": f"docker:{pushed}", "accelerators": "H100:8"}
    assert task["num_nodes"] == 2 and task["setup"] == "toolkit doctor\n"
    assert task["file_mounts"]["/toolkit/model"] == str(tiny_model_dir.resolve())
    assert task["file_mounts"]["/toolkit/outputs"] == {
        "source": "s3://bucket/runs/demo",
        "mode": "MOUNT",
    }
    assert '--node-rank "$SKYPILOT_NODE_RANK"' in task["run"]
    vm = yaml.safe_load((tmp_path / "config.vm.yaml").read_text())
    assert vm["base_model"] == "/toolkit/model" and vm["output_dir"] == "/toolkit/outputs"
    assert vm["datasets"][0]["path"] == "/toolkit/data/0/demo-chat.jsonl"
    for path in (out, tmp_path / "config.vm.yaml"):
        assert FAKE_SECRET not in path.read_text()
    check = subprocess.run(
        [
            str(SKY_PYTHON),
            "-c",
            (
                "import sys, yaml, sky\n"
                "from sky.utils import common_utils, schemas\n"
                "data = yaml.safe_load(open(sys.argv[1]))\n"
                "common_utils.validate_schema(data, schemas.get_task_schema(), 'invalid task: ')\n"
                "task = sky.Task.from_yaml(sys.argv[1])\n"
                "print(task.num_nodes, sorted(task.file_mounts or {}))\n"
            ),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.startswith("2 ['/toolkit/config.yaml', '/toolkit/data/0/demo-chat.jsonl'")
    # No tracker and no Hub input: the run needs no secret, and the task names none.
    assert "secrets" not in task


@pytest.mark.parametrize(
    "variant, expect",
    [
        ("cu130", "nvidia-ctk runtime configure --runtime=docker"),
        ("rocm7.2", "--device /dev/kfd --device /dev/dri"),
    ],
)
def test_cloud_init_passes_cloud_inits_schema_and_bash(
    pushed, write_config, tmp_path, variant, expect, monkeypatch, tiny_model_dir
):
    from hubstub import HubStub

    _validator(Path("/usr/bin/cloud-init"), "cloud-init")
    stub = HubStub().__enter__()
    files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    commit = stub.add("Qwen/Qwen3-8B").commit(files)
    monkeypatch.setenv("HF_ENDPOINT", stub.url)
    config = write_config(
        {
            "base_model": "Qwen/Qwen3-8B",
            "datasets": [{"path": "s3://bucket/chat.jsonl", "type": "chat_template"}],
        }
    )
    out = tmp_path / "user-data.yaml"
    assert (
        main(
            [
                "launch",
                "cloud-init",
                str(config),
                "--variant",
                variant,
                "--outputs",
                "s3://bucket/runs/demo",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert text.startswith("#cloud-config\n") and FAKE_SECRET not in text
    check = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(out)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    script = next(
        f["content"]
        for f in yaml.safe_load(text)["write_files"]
        if f["path"] == "/opt/toolkit/run.sh"
    )
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert f"docker pull {pushed}" in script and expect in script
    assert "fs_copy get s3://bucket/chat.jsonl /opt/toolkit/data/0/chat.jsonl" in script
    stub.__exit__(None, None, None)
    assert not stub.downloads()  # launch resolves the commit; the VM fetches it
    [fetch] = [line for line in script.splitlines() if "toolkit fetch" in line]
    # On its stdin: the value comes from secrets.env on the VM, never as --env.
    assert fetch.startswith("secrets_json HF_TOKEN | docker run --rm --init --interactive ")
    assert "HF_TOKEN" not in fetch.split(" | ", 1)[1]
    assert commit in fetch and "/opt/toolkit/hf" in fetch
    [train] = [line for line in script.splitlines() if "toolkit train" in line]
    assert "--network none" in train and "HF_TOKEN" not in train  # offline, no token
    assert "HF_HUB_OFFLINE=1" in train and commit in train


def test_cloud_init_refuses_local_files_and_launch_needs_a_push(
    write_config, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TOOLKIT_PUSHED", str(tmp_path / "none.json"))
    config = write_config({"base_model": str(tiny_model_dir)})
    assert (
        main(["launch", "cloud-init", str(config), "--variant", "cpu", "--outputs", "s3://b/o"])
        == 2
    )
    assert (
        "run `toolkit images push cpu --registry HOST[/NAMESPACE]` first" in capsys.readouterr().err
    )
    (tmp_path / "none.json").write_text(json.dumps({"cpu": {"image": "r/toolkit@sha256:0"}}))
    assert (
        main(["launch", "cloud-init", str(config), "--variant", "cpu", "--outputs", "s3://b/o"])
        == 2
    )
    assert "a VM cannot read this machine's files" in capsys.readouterr().err
    assert (
        main(["launch", "cloud-init", str(config), "--variant", "cpu", "--outputs", "/tmp/out"])
        == 2
    )
    assert "a VM's disk goes away with it" in capsys.readouterr().err


def test_skypilot_fetches_the_pinned_commits_in_setup_and_trains_offline(write_config, tmp_path):
    from toolkit.config import load_config
    from toolkit.host.cloud import skypilot_task
    from toolkit.pins import Pin

    loaded = load_config(write_config({"base_model": "Qwen/Qwen3-8B"}))
    commit = "c0ffee" * 6 + "abcd"
    pin = Pin("base_model", "Qwen/Qwen3-8B", "model", None, commit, {})
    config_file = tmp_path / "vm.yaml"
    config_file.write_text("{}")
    task = skypilot_task(loaded, "img@sha256:x", config_file, "H100:1", 1, "s3://b/o", [pin])
    assert "toolkit fetch /toolkit/config.yaml" in task["setup"] and commit in task["setup"]
    assert task["secrets"]["HF_TOKEN"] is None  # for the fetch in setup
    run = task["run"]
    assert "env -u HF_TOKEN -u HUGGING_FACE_HUB_TOKEN" in run and "HF_HUB_OFFLINE=1" in run
    assert commit in run and "toolkit train" in run


@pytest.mark.parametrize(
    "infra, kind",
    [("k8s", "Kubernetes"), ("k8s/my-context", "Kubernetes"), ("slurm/my-cluster", "Slurm")],
)
def test_skypilot_runs_the_same_task_on_a_kubernetes_or_slurm_cluster(
    pushed, tiny_model_dir, write_config, tmp_path, infra, kind
):
    """The task is the same; `--infra` says where, and SkyPilot's own loader reads it as
    a task for that cluster."""
    _validator(SKY_PYTHON, "SkyPilot")
    config = write_config({"base_model": str(tiny_model_dir)})
    out = tmp_path / "task.yaml"
    flags = ["--variant", "cu130", "--outputs", "s3://bucket/runs/demo", "-o", str(out)]
    argv = ["launch", "skypilot", str(config), *flags, "--accelerators", "H100:8"]
    assert main([*argv, "--nodes", "2", "--infra", infra]) == 0
    task = yaml.safe_load(out.read_text())
    assert task["resources"]["infra"] == infra and task["num_nodes"] == 2
    check = subprocess.run(
        [
            str(SKY_PYTHON),
            "-c",
            "import sys, sky\nprint(sky.Task.from_yaml(sys.argv[1]).resources)",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.startswith("{" + kind + "(")


@pytest.mark.parametrize("infra", ["", "k8s;rm -rf", "Slurm/x", "slurm//x"])
def test_an_infra_skypilot_cannot_read_is_refused(pushed, write_config, tmp_path, capsys, infra):
    config = write_config({})
    flags = ["--variant", "cu130", "--outputs", "s3://b/r", "--accelerators", "H100:8"]
    flags += ["-o", str(tmp_path / "t.yaml")]
    assert main(["launch", "skypilot", str(config), *flags, "--infra", infra]) == 2
    assert f"--infra {infra!r}: expected SkyPilot's form" in capsys.readouterr().err
    assert not (tmp_path / "t.yaml").exists()
