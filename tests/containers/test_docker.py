"""The real engine: build the cpu image, then train and merge in it as a user would.

These run in CI (CI=true makes a missing engine a failure). The first build of
the image takes a few minutes; later ones reuse the layers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_CONFIG, REPO
from helpers import read_run

from toolkit.cli import main
from toolkit.config import load_config
from toolkit.containers.seam import Docker, Runtime
from toolkit.host import place
from toolkit.images import get_variant

pytestmark = [pytest.mark.docker, pytest.mark.slow]
USER = (1000, 1000)  # not root, not us: outputs must still belong to the caller


def demo_config(root: Path, **changes) -> Path:
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data.update(
        {
            "base_model": str(root / "model"),
            "output_dir": str(root / "out"),
            "max_steps": 12,
            "save_steps": 6,
            "logging_steps": 2,
            **changes,
        }
    )
    data["datasets"][0]["path"] = str(root / "chat.jsonl")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def as_user(monkeypatch, root: Path) -> tuple[int, int]:
    """Run containers as USER when we are root (as in CI), else as ourselves."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    monkeypatch.setattr(place, "host_user", lambda: f"{USER[0]}:{USER[1]}")
    (root / "out").mkdir()
    os.chown(root / "out", *USER)
    return USER


def test_image_labels_describe_it(image):
    labels = Docker(Runtime()).inspect_image(image).labels
    variant = get_variant("cpu")
    assert labels["io.toolkit.variant"] == "cpu"
    assert labels["io.toolkit.lock-sha256"] == variant.lock_sha256
    assert labels["io.toolkit.torch"] == "2.13.0+cpu"
    assert labels["org.opencontainers.image.base.digest"].startswith("sha256:")
    freeze = subprocess.run(
        ["docker", "run", "--rm", image, "pip", "freeze", "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(p.lower() for p in freeze if not p.startswith("pip==")) == sorted(
        p.lower() for p in variant.pins()
    )


def test_train_and_merge_in_container_match_local(image, shared, monkeypatch, capfd):
    uid, gid = as_user(monkeypatch, shared)
    config = demo_config(shared)
    assert main(["train", str(config), "--runtime", "docker"]) == 0
    out = shared / "out"
    closing = f"adapter and tokenizer: {out}\nmanifest: {out}/run.json\nlog: {out}/train.log\n"
    assert capfd.readouterr().out.count(closing) == 1  # the container's own, once
    assert main(["merge-lora", str(config), "--runtime", "docker"]) == 0
    printed = capfd.readouterr().out
    assert f"merged model: {out}/merged" in printed

    for path in [out, *out.rglob("*")]:
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path
    run = read_run(out)
    assert run["environment"]["in_container"] is True
    assert run["environment"]["image"] == image
    assert run["environment"]["image_id"].startswith("sha256:")
    assert (out / "merged" / "model.safetensors").exists()

    # The same config and seed in this process gives the same loss curve.
    from toolkit.trainer.sft import train

    local_out = shared / "local"
    local = load_config(config, {"output_dir": str(local_out)})
    train(local)
    local_run = read_run(local_out)
    steps = [s for s, _ in run["loss_history"]]
    assert steps == [s for s, _ in local_run["loss_history"]] == [2, 4, 6, 8, 10, 12]
    for (_, a), (_, b) in zip(run["loss_history"], local_run["loss_history"], strict=True):
        assert abs(a - b) <= 1e-4 * abs(b), (run["loss_history"], local_run["loss_history"])


def test_bad_config_stops_before_docker(image, shared, capfd):
    config = demo_config(shared, micro_batch_size=0)
    assert main(["train", str(config), "--runtime", "docker"]) == 2
    captured = capfd.readouterr()
    assert "micro_batch_size: got 0" in captured.err
    assert "running in" not in captured.err


def test_failing_run_returns_the_container_exit_code(image, shared, capfd):
    (shared / "chat.jsonl").write_text('{"messages": [{"role": "bot", "content": "x"}]}\n')
    assert main(["train", str(demo_config(shared)), "--runtime", "docker"]) == 2
    err = capfd.readouterr().err
    assert "messages[0].role is 'bot'" in err
    assert "the container exited with code 2" in err


def test_make_train_inside_the_container(image, shared):
    """The repo mounted into the image: `make train` runs locally there, no Docker inside."""
    work = shared / "repo"
    work.mkdir()
    for name in ("Makefile", "configs", "pyproject.toml"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    subprocess.run(["chown", "-R", f"{USER[0]}:{USER[1]}", str(work)], check=False)
    user = f"{USER[0]}:{USER[1]}" if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    proc = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            user,
            "--mount",
            f"type=bind,source={work},target=/work",
            "--workdir",
            "/work",
            image,
            "make",
            "train",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "step 40/40 loss" in proc.stdout
    assert (work / "outputs" / "tiny-cpu-demo" / "merged" / "model.safetensors").exists()


def test_verify_the_built_image(image):
    from toolkit.compat import Status
    from toolkit.images import verify_image

    findings = verify_image(image, Runtime())
    assert [(f.check, f.status) for f in findings] == [
        ("versions", Status.OK),
        ("torch", Status.OK),
        ("imports", Status.OK),
    ], findings


def test_doctor_inside_the_container(image):
    proc = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--shm-size",
            "1g",
            image,
            "toolkit",
            "doctor",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    checks = {f["check"]: f["status"] for f in json.loads(proc.stdout)}
    assert checks == {
        "torch": "OK",
        "device": "OK",
        "flash-attn-4": "OK",
        "bitsandbytes": "OK",
        "liger": "OK",
        "shm": "OK",
    }


def test_dpo_runs_in_the_container_as_sft_does(image, shared, monkeypatch, capfd):
    from toolkit.tiny import demo_preferences

    uid, gid = as_user(monkeypatch, shared)
    data = shared / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_preferences(32)))
    config = shared / "dpo.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(shared / "model"),
                "chat_template": "qwen3",
                "rl": "dpo",
                "datasets": [{"path": str(data), "type": "chat_template.default"}],
                "output_dir": str(shared / "out"),
                "sequence_len": 128,
                "adapter": "lora",
                "lora_target_linear": True,
                "micro_batch_size": 8,
                "max_steps": 4,
                "save_steps": 4,
                "learning_rate": 0.003,
                "logging_steps": 2,
            }
        )
    )
    assert main(["train", str(config), "--runtime", "docker"]) == 0
    assert main(["merge-lora", str(config), "--runtime", "docker"]) == 0
    run = read_run(shared / "out")
    assert run["method"] == "dpo" and run["environment"]["in_container"] is True
    assert (shared / "out" / "merged" / "model.safetensors").stat().st_uid == uid


@pytest.mark.parametrize("nproc", [1, 2])
def test_docker_stop_then_train_again_resumes(image, shared, nproc):
    """A preempted VM: `docker stop` mid-run, then the same command again; with two
    ranks, the launcher in the container passes the signal on and says 75 too."""
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    config = demo_config(
        shared,
        max_steps=600,
        save_steps=10000,
        logging_steps=25,
        val_set_size=0.0,
        learning_rate=0.001,
    )
    log = shared / "out" / "train.log"
    toolkit = str(Path(sys.executable).parent / "toolkit")
    command = [toolkit, "train", str(config), "--runtime", "docker"]
    command += ["--nproc-per-node", "2"] if nproc == 2 else []
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.exists() and "step 50/600" in log.read_text():
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("training never reached step 50")
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"ancestor={image}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(ids) == 1
    subprocess.run(["docker", "stop", "-t", "60", ids[0]], check=True, capture_output=True)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 75, output[-2000:]
    assert "it was preempted (SIGTERM) and saved a checkpoint" in output
    assert "Traceback" not in output and "SignalException" not in output, output[-2000:]
    [checkpoint] = list((shared / "out").glob("checkpoint-*"))
    assert (checkpoint / "toolkit-complete.json").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resume: continuing from {checkpoint.name}" in resumed.stdout
    run = read_run(shared / "out")
    assert [s["outcome"] for s in run["segments"]] == ["preempted", "complete"]
    assert run["world_size"] == nproc and run["steps"] == 600
    if nproc == 2:
        return  # two ranks' batches: the one-process reference below is not theirs

    from toolkit.trainer.sft import train

    reference = train(load_config(config, {"output_dir": str(shared / "reference")}))
    want = load_file(str(reference / "adapter_model.safetensors"))
    got = load_file(str(shared / "out" / "adapter_model.safetensors"))
    for name, tensor in want.items():
        assert torch.allclose(got[name], tensor, atol=1e-5), name


def test_secrets_pass_by_name_and_are_never_written(image, shared, monkeypatch, capfd):
    """Fake tokens (HF_TOKEN, and WANDB_API_KEY, which an offline W&B run does not
    need: neither enters the container) appear in no log, output, resolved config,
    image layer or label (tests/test_secrets.py looks in `docker inspect` too)."""
    secret = "hf_fake_0123456789abcdefSECRET"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("WANDB_API_KEY", secret + "_wandb")
    config = demo_config(shared, max_steps=2, save_steps=2, wandb_project="p", wandb_mode="offline")
    assert main(["validate", str(config), "--explain"]) == 0
    assert main(["train", str(config), "--runtime", "docker"]) == 0
    captured = capfd.readouterr()
    assert secret not in captured.out + captured.err
    for path in (shared / "out").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    # The image built while the secret is in the environment holds it nowhere. (The
    # layers come from the cache; a secret reaching the build as an argument or variable
    # would change their cache keys and land in rebuilt ones.)
    from toolkit.images import BuildOptions, build_image

    tag = "toolkit-test:built-with-secret"
    try:
        build_image(get_variant("cpu"), Runtime(), BuildOptions(tag=tag))
        history = subprocess.run(
            ["docker", "history", "--no-trunc", tag], capture_output=True, text=True, check=True
        ).stdout
        inspect = subprocess.run(
            ["docker", "image", "inspect", tag], capture_output=True, text=True, check=True
        ).stdout
        assert secret not in history + inspect
        saved = subprocess.run(["docker", "save", tag], capture_output=True, check=True).stdout
        assert secret.encode() not in saved
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True, check=False)


def test_two_process_ddp_in_the_container(image, shared):
    config = demo_config(shared, max_steps=4, save_steps=4, logging_steps=2, val_set_size=0.0)
    assert main(["train", str(config), "--runtime", "docker", "--nproc-per-node", "2"]) == 0
    run = read_run(shared / "out")
    assert run["world_size"] == 2 and run["environment"]["in_container"] is True
    assert run["steps"] == 4


def test_reproduce_reselects_the_image_and_matches(image, shared, monkeypatch, capfd):
    as_user(monkeypatch, shared)
    config = demo_config(shared, max_steps=4)
    assert main(["train", str(config), "--runtime", "docker"]) == 0
    capfd.readouterr()
    if os.geteuid() == 0:  # the rerun's folder, owned by the container's user as `out` is
        (shared / "out-reproduced").mkdir()
        os.chown(shared / "out-reproduced", *USER)
    assert main(["reproduce", str(shared / "out")]) == 0
    out = capfd.readouterr().out
    image_id = Docker(Runtime()).inspect_image(image).id
    assert f"reproduce: image: {image}, the same image ({image_id[:19]})" in out
    first = read_run(shared / "out")
    again = read_run(shared / "out-reproduced")
    assert again["environment"]["image_id"] == first["environment"]["image_id"]
    assert again["loss_history"] == first["loss_history"]


def test_two_builds_from_one_lock_freeze_and_label_alike(
    image, new_untagged_images_removed, monkeypatch
):
    """The cpu variant built again with no layer cache: the same packages, the same labels
    (the creation time is the build's own unless SOURCE_DATE_EPOCH fixes it)."""
    from toolkit.images import BuildOptions, build_image

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")

    # Both builds now, from this checkout: the labels name the revision and the source, so an
    # older build of the same lock would differ there by design.
    first, again = "toolkit-test:cpu-first", "toolkit-test:cpu-rebuilt"
    runtime = Runtime()
    try:
        built = build_image(get_variant("cpu"), runtime, BuildOptions(tag=first))
        assert (
            build_image(get_variant("cpu"), runtime, BuildOptions(no_cache=True, tag=again))
            == again
        )

        def freeze(tag):
            return subprocess.run(
                ["docker", "run", "--rm", tag, "pip", "freeze", "--all"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout

        def labels(tag):
            return Docker(runtime).inspect_image(tag).labels

        assert freeze(again) == freeze(built)
        assert labels(again) == labels(built)
    finally:
        runtime.run(["docker", "rmi", "-f", first, again], timeout=120)


def test_trackers_run_in_the_offline_container(image, shared, monkeypatch, capfd):
    """W&B offline and a local MLflow store, from an axolotl-style config, in the image:
    the container has no network, the store is mounted writable, and both record the run."""
    as_user(monkeypatch, shared)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    store = shared / "mlruns"
    store.mkdir(mode=0o777)
    store.chmod(0o777)
    config = demo_config(
        shared,
        max_steps=4,
        save_steps=4,
        wandb_project="qwen3",
        wandb_mode="offline",
        mlflow_tracking_uri=str(store),
        mlflow_experiment_name="qwen3",
    )
    assert main(["train", str(config), "--runtime", "docker"]) == 0
    assert "without network" in capfd.readouterr().err
    assert list((shared / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=store.as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("qwen3").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2


def test_a_cuda_image_on_a_host_without_gpus_trains_on_the_cpu(image, shared, capfd):
    """A portability check on a CPU machine: a CUDA image (here the cpu image relabelled,
    as building cu130 takes GBs) asks the engine for no GPU the host lacks, and trains on
    the CPU, saying so. Skipped where this host has an NVIDIA GPU: that is the GPU path."""
    import tempfile

    from toolkit.host.place import gpu_nodes

    if gpu_nodes("cuda"):
        pytest.skip("this host has an NVIDIA GPU; the fallback is for hosts without one")
    tag = "toolkit-test:cuda-on-cpu"
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(
            f"FROM {image}\nLABEL io.toolkit.accelerator=cuda io.toolkit.variant=cu130\n"
        )
        subprocess.run(["docker", "build", "-q", "-t", tag, context], check=True)
    try:
        config = demo_config(shared, max_steps=2)
        code = main(["train", str(config), "--runtime", "docker", "--image", tag])
        err = capfd.readouterr().err
        assert code == 0, err
        assert (
            f"toolkit: no CUDA GPU on this host (/dev/nvidiactl absent): {tag} runs on the CPU"
            in err
        )
        assert read_run(shared / "out")["resolved"]["device"] == "cpu"
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True, check=False)
