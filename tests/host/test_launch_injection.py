"""Launch files carry values as data: every option, config value and path is fed through
each launcher (Slurm with docker, podman and apptainer; SkyPilot; cloud-init) with names
built to break out of shell, sbatch, CSV mounts and Apptainer's bind list, and the file
written is then **run**, with stand-ins for srun, scontrol, the engines and toolkit that
only log their argv. Either the launcher refuses (exit 2, naming the option or key,
nothing written) or the file runs nothing but the stand-ins and every mount comes back
exactly. And launch files are outputs: never over an input, never through a link, new
unless --force, nothing written before every check passed."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_CONFIG

from toolkit.cli import main

DIGEST = "registry.example.com/team/toolkit@sha256:" + "ab" * 32
DATA = DEMO_CONFIG.parent / "data" / "demo-chat.jsonl"

# Each would run `touch CANARY` (or end a line, or add a bind) if a launch file took it
# for anything but data.
HOSTILE = [
    "plain",
    "two words",
    "$(touch CANARY)",
    "`touch CANARY`",
    "x;touch CANARY;y",
    "q'uote",
    'd"q',
    "c,omma",
    "co:lon",
    "readonly=false,source=/etc",
    "ünï©ødé ✓",
    "new\ntouch CANARY\nline",
    "cr\rhere",
    "tab\there",
    "back\\slash",
    "per%jcent%%",
    "-dash",
    "*glob?[x]",
    "#hash",
    "a&b|c>d<e",
    "{brace,x}",
    "~tilde",
    "$HOME${PATH}",
    "line\u2028sep",
]
CONTROL = ("\n", "\r", "\t", "\u2028")
ENGINES = ("docker", "podman", "apptainer")


@pytest.fixture
def pushed(tmp_path, monkeypatch):
    records = {name: {"variant": name, "image": DIGEST} for name in ("cpu", "cu130")}
    (tmp_path / "pushed.json").write_text(json.dumps(records))
    monkeypatch.setenv("TOOLKIT_PUSHED", str(tmp_path / "pushed.json"))


# The interpreter by path: one stub is named python3 and stands first on PATH.
STUB = (
    f"#!{sys.executable}\n"
    + r"""import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([name, *sys.argv[1:]]) + "\n")
args = sys.argv[1:]
if name == "srun":
    rest = [a for a in args if not a.startswith("-")]
    os.execvp(rest[0], args[args.index(rest[0]):])
if name == "scontrol" and args[:2] == ["show", "hostnames"]:
    print("node0")
if name == "scontrol" and args[:2] == ["show", "node"]:
    print("NodeName=node0 NodeAddr=127.0.0.1 State=IDLE")
if name in ("docker", "podman") and args[:1] == ["inspect"]:
    print("exited 0")
if name in ("docker", "podman") and args[:1] == ["run"]:
    sys.stdin.read()
"""
)


def _stubs(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    folder.mkdir()
    for name in names:
        (folder / name).write_text(STUB)
        (folder / name).chmod(0o755)
    return {
        "PATH": f"{folder}:{os.environ['PATH']}",
        "STUB_LOG": str(folder / "log"),
        "HOME": str(folder),
    }


def _calls(env: dict[str, str]) -> list[list[str]]:
    log = Path(env["STUB_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _mounts(argv: list[str]) -> set[tuple[str, str, bool]]:
    """The binds of a `docker run` argv, parsed as the docker CLI parses --mount (CSV)."""
    found = set()
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "--mount":
            [fields] = csv.reader([value])
            kv = dict(f.split("=", 1) if "=" in f else (f, "true") for f in fields)
            assert kv.pop("type") == "bind" and set(kv) <= {"source", "target", "readonly"}
            found.add((kv["source"], kv["target"], kv.get("readonly") == "true"))
    return found


def _layout(root: Path, name: str, tiny_model_dir: Path) -> dict[str, Path]:
    """A config, its model and data, and the places for the script and outputs, each
    under a folder and with a file name made of `name`."""
    places = {k: root / f"{k}-{name}" for k in ("model", "data", "config", "out")}
    for folder in places.values():
        folder.mkdir(parents=True)  # a name with "/" is a folder deeper
    for f in tiny_model_dir.iterdir():
        os.link(f, places["model"] / f.name)  # the model, under the hostile name
    data = places["data"] / f"{name}.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA, data)
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config.update(base_model=str(places["model"]), output_dir=str(root / "unused"))
    config["datasets"][0]["path"] = str(data)
    config_file = places["config"] / f"{name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    (places["out"] / f"{name}.sh").parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return {
        "config": config_file,
        "model": places["model"],
        "data": data,
        "script": places["out"] / f"{name}.sh",
        "outputs": root / f"runs-{name}",
    }


def _tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    seen = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        body = (
            path.read_bytes()
            if stat.S_ISREG(st.st_mode)
            else os.readlink(path)
            if path.is_symlink()
            else ""
        )
        seen[str(path.relative_to(root))] = (st.st_mode, body)
    return seen


def _refused(code: int, err: str, root: Path, before: dict, name: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert "control character" in err or "Apptainer" in err or "backslash" in err, err
    assert _tree(root) == before  # nothing written, nothing moved


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", HOSTILE)
def test_slurm_scripts_run_only_what_they_say(
    pushed, tiny_model_dir, tmp_path, capsys, engine, name
):
    root = tmp_path / "w"
    root.mkdir()
    paths = _layout(root, name, tiny_model_dir)
    before = _tree(root)
    code = main(
        [
            "launch",
            "slurm",
            str(paths["config"]),
            "--variant",
            "cpu",
            "--nodes",
            "1",
            "--engine",
            engine,
            "--outputs",
            str(paths["outputs"]),
            "-o",
            str(paths["script"]),
        ]
    )
    err = capsys.readouterr().err
    control = any(c in name for c in CONTROL)
    if control or (engine == "apptainer" and any(c in name for c in ",:\\")) or "\\" in name:
        _refused(code, err, root, before, name)
        return
    assert code == 0, err
    script = paths["script"]
    assert stat.S_IMODE(script.stat().st_mode) == 0o700
    config_file, job = script.with_suffix(".config.yaml"), script.with_suffix(".d")
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    # sbatch reads #SBATCH lines up to the first line of shell: all of them, each one
    # option that shell-splits back to exactly what was meant.
    lines = script.read_text().splitlines()
    first_shell = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    directives = [
        shlex.split(line[len("#SBATCH ") :]) for line in lines if line.startswith("#SBATCH")
    ]
    assert all(line.startswith("#") for line in lines[1:first_shell])
    assert len(directives) == sum(1 for line in lines[:first_shell] if line.startswith("#SBATCH"))
    assert all(len(d) == 1 for d in directives)
    log_name = str(job).replace("%", "%%") + "/slurm-%j.log"
    assert [f"--output={log_name}"] in directives
    assert [f"--job-name=toolkit-{paths['config'].stem}"] in directives

    env = _stubs(tmp_path / "bin", ("srun", "scontrol", "docker", "podman", "apptainer"))
    env.update(SLURM_JOB_NODELIST="node0", SLURM_JOB_ID="7", SLURM_NODEID="0")
    os.chdir(tmp_path)
    done = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("CANARY")), "a value ran as shell"
    calls = _calls(env)
    programs = {c[0] for c in calls}
    assert programs <= {"srun", "scontrol", engine}, programs
    expected = {
        (str(config_file), "/toolkit/config.yaml", True),
        (str(paths["model"]), "/toolkit/model", True),
        (str(paths["data"]), f"/toolkit/data/0/{paths['data'].name}", True),
        (str(paths["outputs"]), "/toolkit/outputs", False),
    }
    vm = yaml.safe_load(config_file.read_text())
    assert vm["datasets"][0]["path"] == f"/toolkit/data/0/{paths['data'].name}"
    if engine == "apptainer":
        [run] = [c for c in calls if c[0] == "apptainer"]
        binds = run[run.index("--bind") + 1].split(",")
        got = {tuple(b.split(":")) for b in binds}
        assert got == {(h, c, "ro" if ro else "rw") for h, c, ro in expected}
        at = run.index(f"docker://{DIGEST}")
        assert run[at + 1 : at + 5] == ["toolkit", "train", "/toolkit/config.yaml", "--runtime"]
    else:
        [run] = [c for c in calls if c[0] == engine and c[1] == "run"]
        assert _mounts(run) == expected
        at = run.index(DIGEST)
        assert run[at + 1 : at + 5] == ["toolkit", "train", "/toolkit/config.yaml", "--runtime"]
        assert (job / "exit-0").read_text().strip() == "0"  # the container's code, kept


SLURM_OPTIONS = [
    ("--partition", "gpu\ntouch CANARY"),
    ("--partition", "gpu;touch CANARY"),
    ("--time", "1:00:00\n#SBATCH --uid=0"),
    ("--time", "soon"),
    ("--account", "acme' ; touch CANARY"),
]


@pytest.mark.parametrize(("option", "value"), SLURM_OPTIONS)
def test_slurm_option_values_outside_slurms_forms_are_refused(
    pushed, tiny_model_dir, tmp_path, capsys, option, value
):
    root = tmp_path / "w"
    root.mkdir()
    paths = _layout(root, "plain", tiny_model_dir)
    before = _tree(root)
    argv = ["launch", "slurm", str(paths["config"]), "--variant", "cpu", "--nodes", "2"]
    argv += ["--outputs", str(paths["outputs"]), "-o", str(paths["script"]), option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option} {value!r}: not a Slurm value; expected ")
    assert _tree(root) == before


@pytest.mark.parametrize(("option", "value"), [("--partition", "gpu,debug"), ("--time", "2-12:00")])
def test_slurm_option_values_in_slurms_forms_are_written(
    pushed, tiny_model_dir, tmp_path, option, value
):
    paths = _layout(tmp_path, "plain", tiny_model_dir)
    argv = ["launch", "slurm", str(paths["config"]), "--variant", "cpu", "--nodes", "2"]
    argv += ["--outputs", str(paths["outputs"]), "-o", str(paths["script"]), option, value]
    assert main(argv) == 0
    assert f"#SBATCH {option}={value}\n" in paths["script"].read_text()


@pytest.mark.parametrize("name", HOSTILE)
def test_skypilot_tasks_carry_every_path_as_data(pushed, tiny_model_dir, tmp_path, capsys, name):
    root = tmp_path / "w"
    root.mkdir()
    paths = _layout(root, name, tiny_model_dir)
    task_file = paths["script"].with_suffix(".sky.yaml")
    before = _tree(root)
    outputs = f"s3://bucket/{name}"
    code = main(
        [
            "launch",
            "skypilot",
            str(paths["config"]),
            "--variant",
            "cpu",
            "--outputs",
            outputs,
            "-o",
            str(task_file),
        ]
    )
    err = capsys.readouterr().err
    if any(c in name for c in CONTROL):
        _refused(code, err, root, before, name)
        return
    assert code == 0, err
    task = yaml.safe_load(task_file.read_text())
    vm_file = task_file.with_name(f"{paths['config'].stem}.vm.yaml")
    assert task["file_mounts"] == {
        "/toolkit/config.yaml": str(vm_file),
        "/toolkit/model": str(paths["model"]),
        f"/toolkit/data/0/{paths['data'].name}": str(paths["data"]),
        "/toolkit/outputs": {"source": outputs, "mode": "MOUNT"},
    }
    for mode in (task_file, vm_file):
        assert stat.S_IMODE(mode.stat().st_mode) == 0o600
    env = _stubs(tmp_path / "bin", ("toolkit",))
    env.update(SKYPILOT_NUM_NODES="1", SKYPILOT_NODE_RANK="0", SKYPILOT_NODE_IPS="10.0.0.1")
    for part in ("setup", "run"):
        done = subprocess.run(
            ["bash", "-c", task[part]], env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("CANARY"))
    assert [c[:2] for c in _calls(env)] == [["toolkit", "doctor"], ["toolkit", "train"]]


@pytest.mark.parametrize("name", HOSTILE)
def test_cloud_init_runs_only_what_it_says(
    pushed, tiny_model_dir, write_config, tmp_path, capsys, monkeypatch, name
):
    from hubstub import HubStub

    with HubStub() as stub:
        files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
        stub.add("Qwen/Qwen3-8B").commit(files)
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        source = f"s3://bucket/{name}/chat.jsonl"
        config = write_config(
            {"base_model": "Qwen/Qwen3-8B", "datasets": [{"path": source, "type": "chat_template"}]}
        )
        out = tmp_path / "user-data.yaml"
        outputs = f"s3://bucket/runs/{name}"
        argv = ["launch", "cloud-init", str(config), "--variant", "cpu"]
        code = main([*argv, "--outputs", outputs, "-o", str(out)])
    err = capsys.readouterr().err
    if any(c in name for c in CONTROL):
        assert code == 2 and "control character" in err and "Traceback" not in err, err
        assert not out.exists()
        return
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    script = next(
        f["content"]
        for f in yaml.safe_load(out.read_text())["write_files"]
        if f["path"] == "/opt/toolkit/run.sh"
    )
    vm = tmp_path / "vm"
    for fixed in ("/opt/toolkit", "/etc/toolkit", "/var/log/toolkit.log"):
        script = script.replace(fixed, str(vm) + fixed)  # the VM's places, here
    (vm / "var/log").mkdir(parents=True)
    env = _stubs(tmp_path / "bin", ("apt-get", "systemctl", "docker", "curl", "gpg", "python3"))
    fsspec = vm / "opt/toolkit/fsspec/bin"
    fsspec.mkdir(parents=True)
    for tool in ("python", "pip"):
        shutil.copy(tmp_path / "bin" / "python3", fsspec / tool)
    done = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("CANARY"))
    calls = _calls(env)
    copies = [c for c in calls if c[0] == "python" and c[3:4] in (["get"], ["put"])]
    assert [c[3:] for c in copies] == [
        ["get", source, f"{vm}/opt/toolkit/data/0/chat.jsonl"],
        ["put", f"{vm}/opt/toolkit/outputs", outputs],
    ]
    [train] = [c for c in calls if c[0] == "docker" and "train" in c]
    assert (f"{vm}/opt/toolkit/data", "/toolkit/data", True) in _mounts(train)


# ---------------------------------------------------------------------------
# launch files are outputs


def _slurm(paths, *extra) -> list[str]:
    return [
        "launch",
        "slurm",
        str(paths["config"]),
        "--variant",
        "cpu",
        "--nodes",
        "1",
        "--outputs",
        str(paths["outputs"]),
        *extra,
    ]


def test_a_launch_file_never_goes_over_the_config_it_launches(
    pushed, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    """`launch slurm train.config.yaml -o train.sh` would write its VM copy of the config
    to train.config.yaml: the input itself."""
    paths = _layout(tmp_path, "plain", tiny_model_dir)
    config = paths["config"].with_name("train.config.yaml")
    paths["config"].rename(config)
    paths["config"] = config
    before = config.read_bytes()
    assert main(_slurm(paths, "-o", str(config.with_name("train.sh")))) == 2
    err = capsys.readouterr().err
    assert f"-o {config}: is {config}, which the run reads" in err
    assert config.read_bytes() == before and not config.with_name("train.sh").exists()
    # Nor with --force, nor into its data's folder or the model's.
    assert main(_slurm(paths, "-o", str(config.with_name("train.sh")), "--force")) == 2
    assert main(_slurm(paths, "-o", str(paths["model"] / "job.sh"))) == 2
    assert "lies inside" in capsys.readouterr().err
    assert sorted(p.name for p in paths["model"].iterdir()) == sorted(
        p.name for p in tiny_model_dir.iterdir()
    )
    # A hard link to the config is the config.
    os.link(config, tmp_path / "job.config.yaml")
    assert main(_slurm(paths, "-o", str(tmp_path / "job.sh"))) == 2
    assert config.read_bytes() == before


def test_a_launch_file_is_new_unless_forced_and_never_through_a_link(
    pushed, tiny_model_dir, tmp_path, capsys
):
    paths = _layout(tmp_path, "plain", tiny_model_dir)
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("someone else's\n")
    theirs.chmod(0o644)
    link = tmp_path / "out" / "job.sh"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(theirs)
    assert main(_slurm(paths, "-o", str(link))) == 2
    assert "is a link; launch files are written only as files" in capsys.readouterr().err
    assert main(_slurm(paths, "-o", str(link), "--force")) == 2
    assert theirs.read_text() == "someone else's\n"
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o644
    link.unlink()
    # The job's folder as a link elsewhere: refused too (Slurm would write through it).
    (tmp_path / "out" / "job.d").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert main(_slurm(paths, "-o", str(link))) == 2
    assert "job.d: is a link, where the launch keeps its folder" in capsys.readouterr().err
    (tmp_path / "out" / "job.d").unlink()
    assert main(_slurm(paths, "-o", str(link))) == 0
    first = link.read_text()
    assert main(_slurm(paths, "-o", str(link))) == 2
    assert "exists; launch files are written new" in capsys.readouterr().err
    assert main(_slurm(paths, "-o", str(link), "--partition", "debug", "--force")) == 0
    assert link.read_text() != first and "--partition=debug" in link.read_text()


def test_skypilot_writes_nothing_until_every_check_passed(
    pushed, tiny_model_dir, tmp_path, capsys, monkeypatch
):
    paths = _layout(tmp_path, "plain", tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    vm_file = tmp_path / "plain.vm.yaml"
    vm_file.write_text("mine\n")
    argv = ["launch", "skypilot", str(paths["config"]), "--variant", "cpu"]
    argv += ["--outputs", "s3://b/o"]
    assert main([*argv, "--infra", "not valid!"]) == 2
    assert vm_file.read_text() == "mine\n" and not (tmp_path / "plain.sky.yaml").exists()
    assert main(argv) == 2  # its .vm.yaml exists: neither file is written
    assert "plain.vm.yaml: exists" in capsys.readouterr().err
    assert vm_file.read_text() == "mine\n" and not (tmp_path / "plain.sky.yaml").exists()
    assert main([*argv, "--force"]) == 0
    assert yaml.safe_load(vm_file.read_text())["output_dir"] == "/toolkit/outputs"
