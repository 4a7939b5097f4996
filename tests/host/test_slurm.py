"""Slurm: `toolkit launch slurm` writes a batch script, and a two-node cluster on loopback
(slurmctld and two slurmd on 127.0.0.1, started here as .ci/run starts the engine) runs
it: one container per node, one torchrun each, gloo across the "nodes"; the losses equal
a two-process run on one node; SIGTERM makes the job save, exit 75, requeue and resume."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_CONFIG
from helpers import read_run

from toolkit.cli import main

DIGEST = "registry.example.com/team/toolkit@sha256:" + "ab" * 32
COMMON = {
    "max_steps": 10,
    "save_steps": 5,
    "logging_steps": 2,
    "val_set_size": 0.0,
    "micro_batch_size": 4,
    "learning_rate": 0.003,
}


@pytest.fixture
def pushed(tmp_path, monkeypatch):
    """A push record as `toolkit images push` writes it (the digest is made up)."""
    records = {name: {"variant": name, "image": DIGEST} for name in ("cpu", "cu130")}
    (tmp_path / "pushed.json").write_text(json.dumps(records))
    monkeypatch.setenv("TOOLKIT_PUSHED", str(tmp_path / "pushed.json"))


def _config(folder: Path, model: Path | str, data: Path, **changes) -> Path:
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config.update(base_model=str(model), output_dir=str(folder / "unused"))
    config.update({**COMMON, **changes})
    config["datasets"][0]["path"] = str(data)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _launch(config: Path, out: Path, *flags: str) -> int:
    return main(["launch", "slurm", str(config), "--variant", "cpu", "-o", str(out), *flags])


def test_the_script_pulls_the_digest_and_runs_one_torchrun_per_node(
    pushed, tiny_model_dir, tmp_path, capsys
):
    config = _config(tmp_path, tiny_model_dir, DEMO_CONFIG.parent / "data" / "demo-chat.jsonl")
    out = tmp_path / "job.sh"
    flags = ["--nodes", "4", "--partition", "gpu", "--time", "1:00:00", "--account", "acme"]
    assert _launch(config, out, *flags, "--outputs", str(tmp_path / "runs")) == 0
    script = out.read_text()
    head = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert head == [
        "#SBATCH --job-name=toolkit-config",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
        f"#SBATCH --output={tmp_path}/job.d/slurm-%j.log",
        "#SBATCH --open-mode=append",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1:00:00",
        "#SBATCH --account=acme",
    ]
    assert f"IMAGE={DIGEST}" in script and '"$ENGINE" pull "$IMAGE"' in script
    assert "--network host" in script and "--nnodes 4" in script
    assert '--node-rank "$SLURM_NODEID" --master-addr "$MASTER_ADDR"' in script
    assert f"source={tiny_model_dir},target=/toolkit/model,readonly" in script
    assert f"source={tmp_path}/runs,target=/toolkit/outputs " in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert (tmp_path / "job.d").is_dir()  # Slurm opens its log there before the script runs
    vm = yaml.safe_load((tmp_path / "job.config.yaml").read_text())
    assert vm["output_dir"] == "/toolkit/outputs" and vm["base_model"] == "/toolkit/model"
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    assert capsys.readouterr().out == (
        f"wrote {out} (and {tmp_path}/job.config.yaml); submit it with `sbatch {out}`\n"
    )


def test_a_gpu_image_needs_gpus_per_node_and_they_are_asked_for(
    pushed, tiny_model_dir, tmp_path, capsys
):
    config = _config(tmp_path, tiny_model_dir, DEMO_CONFIG.parent / "data" / "demo-chat.jsonl")
    argv = ["launch", "slurm", str(config), "--variant", "cu130", "--nodes", "2"]
    argv += ["--outputs", str(tmp_path / "runs"), "-o", str(tmp_path / "job.sh")]
    assert main(argv) == 2
    assert "--gpus-per-node: the cu130 image needs GPUs" in capsys.readouterr().err
    assert main([*argv, "--gpus-per-node", "8"]) == 0
    script = (tmp_path / "job.sh").read_text()
    assert "#SBATCH --gpus-per-node=8" in script and "--nproc-per-node 8" in script
    assert "--gpus all --ipc=host" in script


def test_hub_inputs_are_fetched_once_at_the_pinned_commit_and_read_offline(
    pushed, tiny_model_dir, tmp_path, monkeypatch
):
    from hubstub import HubStub

    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_value_0123456789")
    with HubStub() as stub:
        files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
        commit = stub.add("Qwen/Qwen3-8B").commit(files)
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        config = _config(tmp_path, "Qwen/Qwen3-8B", DEMO_CONFIG.parent / "data" / "demo-chat.jsonl")
        flags = ["--nodes", "2", "--outputs", str(tmp_path / "runs")]
        assert _launch(config, tmp_path / "job.sh", *flags) == 0
        assert not stub.downloads()  # launch resolves the commit; the job fetches it
    script = (tmp_path / "job.sh").read_text()
    assert "hf_fake_secret" not in script
    [fetch] = [line for line in script.splitlines() if "toolkit fetch" in line]
    assert 'then secrets_json HF_TOKEN | "$ENGINE" run --rm --init --interactive ' in fetch
    assert "HF_TOKEN" not in fetch.split(" | ", 1)[1] and commit in fetch
    assert '${SLURM_RESTART_COUNT:-0}" = 0 ]' in fetch  # once, not again on a requeue
    [train] = [line for line in script.splitlines() if "toolkit train" in line]
    assert "HF_HUB_OFFLINE=1" in train and commit in train and "HF_TOKEN" not in train
    assert f"source={tmp_path}/job.d/hf,target=/toolkit/hf,readonly" in train


@pytest.mark.parametrize(
    "engine, expect, absent",
    [
        (
            "podman",
            '"$ENGINE" run --name "$NAME" --sig-proxy=false --init --network host',
            "--user",
        ),
        ("apptainer", "apptainer exec --cleanenv --bind", '"$ENGINE" run'),
    ],
)
def test_other_engines_are_written_and_parse(
    pushed, tiny_model_dir, tmp_path, engine, expect, absent
):
    config = _config(tmp_path, tiny_model_dir, DEMO_CONFIG.parent / "data" / "demo-chat.jsonl")
    flags = ["--nodes", "2", "--outputs", str(tmp_path / "runs"), "--engine", engine]
    assert _launch(config, tmp_path / "job.sh", *flags) == 0
    script = (tmp_path / "job.sh").read_text()
    assert expect in script and absent not in script
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    # The node step is bash of its own, inside srun's quotes.
    step = script.split("srun --kill-on-bad-exit=1 bash -c ", 1)[1].rsplit(" || status=$?", 1)
    [inner] = shlex.split(step[0])
    assert subprocess.run(["bash", "-n"], input=inner, text=True).returncode == 0
    if engine == "apptainer":
        assert f"docker://{DIGEST}" in inner and ":/toolkit/outputs:rw" in inner


# A stand-in engine for the node step: the container runs in the background and ends
# with CODE after SECONDS; the `run` client dies at once of a SIGTERM (as Slurm's signal
# to the step kills it) and the first KILLED `wait` clients too, as srun's second signal
# to the step does when another node exits 75 first, and the `inspect` clients whose
# call numbers MISSED lists.
FAKE_ENGINE = r"""#!/bin/bash
state="$FAKE/state"; name="${@: -1}"
case "$1" in
  run) [ "$NEVER" = created ] && exit 125
       [ "$NEVER" = started ] && { echo "created 0" > "$state"; exit 125; }
       echo "running 0" > "$state"
       ( sleep "$SECONDS_TO_END"; echo "exited $CODE" > "$state" ) &
       kill -TERM $$ ;;
  wait) n=$(cat "$FAKE/waits" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE/waits"
        [ "$n" -lt "$KILLED" ] && kill -TERM $$
        while grep -q '^running' "$state"; do sleep 0.1; done; cut -d' ' -f2 "$state" ;;
  inspect) n=$(cat "$FAKE/inspects" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE/inspects"
           case " $MISSED " in *" $((n + 1)) "*) kill -TERM $$ ;; esac
           [ -f "$state" ] || { echo "Error: No such container: $name" >&2; exit 1; }
           cat "$state" ;;
  rm) [ "$2" = -f ] || echo "rm" >> "$FAKE/removed"; rm -f "$state" ;;
esac
"""


@pytest.mark.parametrize(
    ("never", "killed", "missed", "code", "expect"),
    [
        ("", 0, "", 75, 75),
        ("", 3, "", 75, 75),
        ("", 2, "", 0, 0),
        # Inspections lost here and there, after many rounds: not five in a row.
        ("", 6, "1 3 7 8 9 10", 75, 75),
        ("created", 0, "", 0, 125),
        ("started", 0, "", 0, 125),
    ],
)
def test_the_node_step_reads_the_exit_code_even_when_its_clients_are_killed(
    pushed, tiny_model_dir, tmp_path, never, killed, missed, code, expect
):
    """The step's code is the container's, whichever engine clients Slurm's signals end
    on the way; a container that never ran is 125 at once, not a wait."""
    config = _config(tmp_path, tiny_model_dir, DEMO_CONFIG.parent / "data" / "demo-chat.jsonl")
    assert (
        _launch(config, tmp_path / "job.sh", "--nodes", "2", "--outputs", str(tmp_path / "runs"))
        == 0
    )
    script = (tmp_path / "job.sh").read_text()
    step = script.split("srun --kill-on-bad-exit=1 bash -c ", 1)[1].rsplit(" || status=$?", 1)
    [inner] = shlex.split(step[0])
    engine = tmp_path / "engine"
    engine.write_text(FAKE_ENGINE)
    engine.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "ENGINE": str(engine),
        "IMAGE": "img",
        "FAKE": str(tmp_path),
        "JOB": str(tmp_path / "job.d"),
        "OUTPUTS": str(tmp_path / "runs"),
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "7",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
        "NEVER": never,
        "MISSED": missed,
        "KILLED": str(killed),
        "CODE": str(code),
        "SECONDS_TO_END": "12" if missed else "1",  # long enough to be inspected often
    }
    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", inner], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == expect, done.stderr
    assert (tmp_path / "job.d" / "exit-0").read_text().strip() == str(expect)
    assert time.monotonic() - started < (25 if missed else 12)
    if not never:
        assert (tmp_path / "removed").read_text() == "rm\n"  # removed once its code was read


def test_an_archive_that_is_not_docker_save_output_is_exit_2(tiny_model_dir, tmp_path, capsys):
    config = _config(tmp_path, tiny_model_dir, DEMO_CONFIG.parent / "data" / "demo-chat.jsonl")
    bogus = tmp_path / "image.tar"
    bogus.write_bytes(b"not a tar")
    flags = ["--nodes", "2", "--outputs", str(tmp_path / "runs"), "--image-archive", str(bogus)]
    assert _launch(config, tmp_path / "job.sh", *flags) == 2
    err = capsys.readouterr().err
    assert f"--image-archive {bogus}: not a `docker save` archive" in err
    assert "Traceback" not in err and not (tmp_path / "job.sh").exists()


def test_without_a_push_or_an_archive_the_launch_says_how(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TOOLKIT_PUSHED", str(tmp_path / "none.json"))
    config = _config(tmp_path, tiny_model_dir, DEMO_CONFIG.parent / "data" / "demo-chat.jsonl")
    assert _launch(config, tmp_path / "job.sh", "--nodes", "2", "--outputs", "/x") == 2
    assert "run `toolkit images push cpu --registry HOST[/NAMESPACE]` first" in (
        capsys.readouterr().err
    )


# --- the two-node cluster on loopback -----------------------------------------------------

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(folder: Path, munge_socket: Path) -> str:
    ctld, n1, n2 = _free_port(), _free_port(), _free_port()
    nodes = "".join(
        f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
        "CPUs=2 RealMemory=8000\n"
        for name, port in (("n1", n1), ("n2", n2))
    )
    return (
        "ClusterName=loopback\nSlurmctldHost=localhost\nSlurmUser=root\nSlurmdUser=root\n"
        f"SlurmctldPort={ctld}\nSlurmdPort={n1}\n"
        f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={munge_socket},"
        # How long a requeued job waits before it starts again (120 s by default).
        "cred_expire=10\n"
        "MpiDefault=none\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n"
        "JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n"
        "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\n"
        f"SlurmctldPidFile={folder}/slurmctld.pid\nSlurmdPidFile={folder}/slurmd-%n.pid\n"
        f"SlurmdSpoolDir={folder}/spool-%n\nStateSaveLocation={folder}/state\n"
        f"SlurmctldLogFile={folder}/slurmctld.log\nSlurmdLogFile={folder}/slurmd-%n.log\n"
        + nodes
        + "PartitionName=loopback Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP\n"
    )


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory, docker_engine):
    """munged, slurmctld and two slurmd ("n1", "n2" on 127.0.0.1) of our own, stopped by
    their PIDs at the end; the environment sbatch and scontrol need. Installs nothing:
    .ci/run installs slurm-wlm and munge; without them a run outside CI skips, CI fails."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    why = None
    if missing:
        why = f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge slurm-client)"
    elif os.geteuid() != 0:
        why = "slurmd runs its jobs as their users: the loopback cluster needs root"
    elif not Path("/etc/munge/munge.key").exists():
        why = "no munge key (/etc/munge/munge.key): reinstall munge"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why + " (CI=true: the Slurm tests must run)")
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("slurm")
    # munged runs as its own user, who cannot enter pytest's 0700 folders.
    munge_dir = Path(tempfile.mkdtemp(prefix="toolkit-test-munge-"))
    munge_dir.chmod(0o755)  # clients must reach the socket
    shutil.chown(munge_dir, "munge", "munge")
    munge_socket = munge_dir / "munge.socket"
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    logs = (folder / "daemons.log").open("w")
    started: list[subprocess.Popen] = []

    def start(*argv: str) -> None:
        started.append(subprocess.Popen(argv, env=env, stdout=logs, stderr=logs))

    try:
        start(
            "runuser", "-u", "munge", "--", "munged", "-F", "--socket", str(munge_socket),
            "--pid-file", str(munge_dir / "munged.pid"), "--seed-file", str(munge_dir / "seed"),
            "--log-file", str(munge_dir / "munged.log"),
        )  # fmt: skip
        _wait(lambda: munge_socket.exists(), 20, "munged did not start", folder)
        start("slurmctld", "-D", "-f", str(conf))
        time.sleep(1)
        for node in ("n1", "n2"):
            start("slurmd", "-D", "-N", node, "-f", str(conf))

        def idle() -> bool:
            states = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True
            ).stdout.split()
            return states.count("idle") == 2

        _wait(idle, 60, "the two nodes did not come up idle", folder)
        yield env
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()
        shutil.rmtree(munge_dir, ignore_errors=True)


def _wait(ready, seconds: float, what: str, folder: Path) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text()[-1500:] for p in sorted(folder.glob("*.log")))
            raise AssertionError(f"{what}:\n{logs}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def image_archive(image, tmp_path_factory) -> Path:
    """The current cpu image as `docker save` writes it, on "shared storage"."""
    path = tmp_path_factory.mktemp("archive") / "toolkit-cpu.tar"
    subprocess.run(["docker", "save", image, "-o", str(path)], check=True)
    return path


def _two_node_job(shared: Path, archive: Path, **changes) -> tuple[Path, Path]:
    """The launch files for a two-node job of the tiny demo; (script, output_dir)."""
    config = _config(shared, shared / "model", shared / "chat.jsonl", **changes)
    out, script = shared / "runs" / "slurm", shared / "job.sh"
    flags = ["--nodes", "2", "--outputs", str(out), "--image-archive", str(archive)]
    assert _launch(config, script, *flags) == 0
    return script, out


def _reference(shared: Path, image: str, capsys) -> Path:
    """The same training as two processes on one node, in the same image."""
    config = _config(shared, shared / "model", shared / "chat.jsonl")
    out = shared / "runs" / "one-node"
    argv = ["train", str(config), "--image", image, "--output-dir", str(out)]
    assert main([*argv, "--nproc-per-node", "2", "--master-port", str(_free_port())]) == 0
    capsys.readouterr()
    return out


@pytest.mark.docker
@pytest.mark.slow
def test_two_nodes_train_like_two_processes_on_one(
    slurm_cluster, image, image_archive, shared, capsys
):
    script, out = _two_node_job(shared, image_archive)
    job = subprocess.run(
        ["sbatch", "--wait", str(script)], env=slurm_cluster, capture_output=True, text=True
    )
    log = "".join(p.read_text() for p in (shared / "job.d").glob("slurm-*.log"))
    assert job.returncode == 0, log[-4000:]
    assert "--nnodes=2 --node-rank=0" in log and "--nnodes=2 --node-rank=1" in log
    run = read_run(out)
    assert run["world_size"] == 2 and run["nodes"] == 2 and run["steps"] == 10
    assert [s["outcome"] for s in run["segments"]] == ["complete"]
    # Node 0 alone wrote the run: its closing lines once, one lock, one set of records.
    assert log.count("manifest: ") == 1
    assert not (shared / "job.d" / "node-1").exists()
    reference = _reference(shared, image, capsys)
    assert main(["compare", str(out), str(reference)]) == 0
    assert "SAME" in capsys.readouterr().out


@pytest.mark.docker
@pytest.mark.slow
def test_sigterm_saves_exits_75_and_the_requeued_job_resumes(slurm_cluster, image_archive, shared):
    script, out = _two_node_job(shared, image_archive, max_steps=40)
    submitted = subprocess.run(
        ["sbatch", "--parsable", str(script)], env=slurm_cluster, capture_output=True, text=True
    )
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()

    def show() -> str:
        return subprocess.run(
            ["scontrol", "show", "job", job], env=slurm_cluster, capture_output=True, text=True
        ).stdout

    _wait(lambda: (out / "checkpoint-5").is_dir(), 300, "no checkpoint-5", shared / "job.d")
    # What the scheduler does two minutes before the time limit (--signal=TERM@120).
    subprocess.run(["scancel", "--signal=TERM", job], env=slurm_cluster, check=True)
    _wait(lambda: "Restarts=1" in show(), 120, "the job was not requeued", shared / "job.d")
    _wait(lambda: "JobState=COMPLETED" in show(), 300, "the job did not end", shared / "job.d")
    assert "ExitCode=0:0" in show()
    log = "".join(p.read_text() for p in (shared / "job.d").glob("slurm-*.log"))
    assert "Exited with exit code 75" in log
    assert f"preempted with a checkpoint (exit 75); requeueing job {job}" in log
    run = read_run(out)
    assert run["world_size"] == 2 and run["steps"] == 40
    segments = run["segments"]
    assert [s["outcome"] for s in segments] == ["preempted", "complete"]
    assert segments[1]["resumed_from_step"] == segments[0]["ended_at_step"] >= 5
