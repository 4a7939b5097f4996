"""On the real engine: mounts mean exactly what was planned for any path, the container
lives and dies with the CLI, and a second run into a busy folder fails fast."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_CONFIG, DEMO_DATA, SESSION_FOLDERS
from helpers import read_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.cli import main
from toolkit.containers import engine
from toolkit.host.place import container_spec, plan_mounts

pytestmark = [pytest.mark.docker, pytest.mark.slow]
TOOLKIT = str(Path(sys.executable).parent / "toolkit")

# Characters that broke option text (comma, equals, quotes, newline) and others a shell or
# a parser might trip on; any of them may appear in a folder name.
PIECES = st.sampled_from(
    list(",=\"'\n\t :;$`\\{}[]*?#!&|<>()~%@é字")
    + [",readonly=false", ",source=/etc", ",target=/", ",type=volume", '"",']
)
HOSTILE = (
    st.lists(PIECES, min_size=1, max_size=6)
    .map("".join)
    .filter(lambda s: s.strip(" ") not in ("", ".", ".."))
)


def probe_script(rw: str, ro: str, hidden: str) -> list[str]:
    """In the container: can we write the output, the input, and see the sibling?"""
    return [
        "python3",
        "-c",
        (
            "import json, os, sys; rw, ro, hidden = sys.argv[1:4]\n"
            "def can_write(d):\n"
            "    try:\n"
            "        open(os.path.join(d, 'probe'), 'w').close(); return True\n"
            "    except OSError: return False\n"
            "print(json.dumps({'rw': can_write(rw), 'ro': can_write(ro), "
            "'read': open(os.path.join(ro, 'rows.jsonl')).read(), "
            "'hidden': os.path.exists(hidden)}))"
        ),
        rw,
        ro,
        hidden,
    ]


@pytest.fixture(scope="module")
def hostile_root():
    root = Path(tempfile.mkdtemp(prefix="toolkit-hostile-"))
    SESSION_FOLDERS.append(root)
    root.chmod(0o755)
    (root / "secret").mkdir()
    (root / "secret" / "key").write_text("private")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=HOSTILE)
def test_hostile_paths_mount_exactly_as_planned(image, hostile_root, name):
    case = Path(tempfile.mkdtemp(dir=hostile_root))
    data, out = case / name / "data", case / name / "out"
    data.mkdir(parents=True)
    out.mkdir()
    (data / "rows.jsonl").write_text("row\n")
    plan = plan_mounts([data], [out])
    spec = container_spec(
        image,
        "",
        probe_script(str(out), str(data), str(hostile_root / "secret")),
        [data],
        [out],
        network=False,
    )
    client = engine.client()
    name = f"toolkit-test-{uuid.uuid4().hex[:12]}"
    container = client.containers.create(**engine.create_kwargs(spec, name))
    try:
        mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in container.attrs["Mounts"]}
        assert mounts == {m.container: (m.host, not m.read_only) for m in plan}
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs()
        seen = json.loads(container.logs(stdout=True, stderr=False).decode())
    finally:
        container.remove(force=True)
    assert seen["rw"] is True and seen["ro"] is False and seen["read"] == "row\n"
    assert seen["hidden"] is False, "a folder outside the plan is visible"
    assert not (data / "probe").exists() and (out / "probe").exists()
    shutil.rmtree(case)


def demo_config(root: Path, out: Path, data: Path, **changes) -> Path:
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw.update(
        {
            "base_model": str(root / "model"),
            "output_dir": str(out),
            "max_steps": 4,
            "save_steps": 2,
            "logging_steps": 1,
            "val_set_size": 0.0,
            **changes,
        }
    )
    raw["datasets"][0]["path"] = str(data)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def root(tiny_model_dir):
    where = Path(tempfile.mkdtemp(prefix="toolkit-trust-"))
    SESSION_FOLDERS.append(where)
    where.chmod(0o755)
    shutil.copytree(tiny_model_dir, where / "model")
    yield where
    subprocess.run(["rm", "-rf", str(where)], check=False)


def test_a_training_with_hostile_paths_in_the_container(image, root, capfd):
    """A data folder whose name is mount-option text and an output folder like
    `runs/lr=1e-4,bs=8`: the run trains, the data stays read-only, the record is whole,
    and running it again trains nothing."""
    data_dir = root / 'in,readonly=false,source=etc "q"\nline'
    data_dir.mkdir()
    shutil.copy(DEMO_DATA, data_dir / "chat.jsonl")
    before = (data_dir / "chat.jsonl").read_bytes(), (data_dir / "chat.jsonl").stat().st_mode
    out = root / "runs" / "lr=1e-4,bs=8"
    config = demo_config(root, out, data_dir / "chat.jsonl")
    assert main(["train", str(config), "--runtime", "docker"]) == 0
    record = read_run(out)
    assert record["steps"] == 4 and record["environment"]["in_container"] is True
    assert (
        (data_dir / "chat.jsonl").read_bytes(),
        (data_dir / "chat.jsonl").stat().st_mode,
    ) == before
    assert sorted(p.name for p in data_dir.iterdir()) == ["chat.jsonl"]
    capfd.readouterr()
    assert main(["train", str(config), "--runtime", "docker"]) == 0
    err = capfd.readouterr().err
    assert "already holds this run, complete: 4 steps" in err
    assert "toolkit: running in" not in err, "a finished run started a container"
    assert read_run(out) == record


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def ours() -> set[str]:
    """toolkit's containers on the engine, running or not."""
    return set(
        subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={engine.LABEL}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )


def reached(log: Path, step: int) -> bool:
    return log.exists() and f"step {step}/" in log.read_text()


def test_sigterm_to_the_cli_alone_checkpoints_and_a_second_writer_is_refused(image, root, capfd):
    out = root / "out"
    config = demo_config(root, out, DEMO_DATA, max_steps=400, save_steps=10000, learning_rate=0.001)
    before = ours()
    cli = subprocess.Popen(
        [TOOLKIT, "train", str(config), "--runtime", "docker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: reached(out / "train.log", 5), 300, "step 5")
        assert main(["train", str(config), "--runtime", "docker"]) == 2
        err = capfd.readouterr().err
        assert f"is in use by another toolkit run (`toolkit train`, pid {cli.pid}" in err
        os.kill(cli.pid, signal.SIGTERM)  # the CLI alone, not its process group
        output = cli.communicate(timeout=180)[0]
    finally:
        cli.kill()
    assert cli.returncode == 75, output[-2000:]
    assert "preempted: SIGTERM at step" in output
    [checkpoint] = list(out.glob("checkpoint-*"))
    assert (checkpoint / "toolkit-complete.json").exists()
    assert ours() - before == set()


def test_a_killed_cli_takes_its_container_down(image, root):
    out = root / "out"
    config = demo_config(root, out, DEMO_DATA, max_steps=400, save_steps=10000, learning_rate=0.001)
    before = ours()
    cli = subprocess.Popen(
        [TOOLKIT, "train", str(config), "--runtime", "docker"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: reached(out / "train.log", 5), 300, "step 5")
    assert len(ours() - before) == 1
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait()
    wait_for(lambda: ours() - before == set(), 180, "the container to be stopped and removed")
    # It was stopped, not killed: it saved a checkpoint, and the lock is free again.
    [checkpoint] = list(out.glob("checkpoint-*"))
    assert (checkpoint / "toolkit-complete.json").exists()
    resumed = subprocess.run(
        [
            TOOLKIT,
            "train",
            str(config),
            "--runtime",
            "docker",
            "--max-steps",
            str(int(checkpoint.name.split("-")[1]) + 2),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resume: continuing from {checkpoint.name}" in resumed.stdout
