"""Rootless Podman as the engine (issue #22): an ordinary user, not in the docker group,
with the wheel installed alone in a fresh venv, reaches their own Podman service through
the Docker API (DOCKER_HOST, CONTAINER_HOST or --engine podman) and gets what Docker
users get: the image imported or built there, the demo trained with outputs they own,
nothing written beside them, the same losses as on Docker, SIGTERM saving a
checkpoint (75), and no container left when the command dies.

As root (CI), the fixture creates USER and starts their Podman service with the settings
../shared/ENGINES.md gives for these machines (runc: crun refuses the hybrid cgroup
layout here; overlay storage; a runtime folder of their own), through CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF rather than files in their home; it stops it at the end."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_CONFIG, DEMO_DATA, SESSION_FOLDERS
from helpers import as_user, build_wheel, python_for, someone_elses_files, tree_state

pytestmark = [pytest.mark.docker, pytest.mark.slow]

USER = "toolkit-podman"
PACKAGES = "podman uidmap slirp4netns runc catatonit mmdebstrap"


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the Podman tests run as root (they create USER and start their service)")
        pytest.skip("the Podman tests run as root: they create a user and start its service")
    if shutil.which("podman") is None:
        message = f"podman is not installed: apt-get install {PACKAGES} (.ci/run does)"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", USER], check=True)  # not in the docker group
    groups = subprocess.run(["id", "-nG", USER], capture_output=True, text=True, check=True)
    assert "docker" not in groups.stdout.split(), groups.stdout
    return pwd.getpwnam(USER)


@pytest.fixture(scope="module")
def home(user) -> Path:
    """A folder of the user's own outside the checkout: venv, caches, working folders."""
    root = Path(tempfile.mkdtemp(prefix="toolkit-podman-")).resolve()
    SESSION_FOLDERS.append(root)
    root.chmod(0o755)
    os.chown(root, user.pw_uid, user.pw_gid)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def service(user, home) -> dict[str, str]:
    """The user's rootless Podman service; the environment their commands get (with
    DOCKER_HOST unset: each test says how it names the engine)."""
    run_dir = home / "run"
    (run_dir / "podman").mkdir(parents=True)
    conf = home / "containers.conf"
    conf.write_text('[engine]\nruntime = "runc"\n')
    storage = home / "storage.conf"  # the images under HOME (this folder), removed after
    storage.write_text('[storage]\ndriver = "overlay"\n')
    for path in (run_dir, run_dir / "podman", conf, storage):
        os.chown(path, user.pw_uid, user.pw_gid)
    run_dir.chmod(0o700)
    env = {
        "HOME": str(home / "home"),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "XDG_RUNTIME_DIR": str(run_dir),
        "CONTAINERS_CONF": str(conf),
        "CONTAINERS_STORAGE_CONF": str(storage),
    }
    (home / "home").mkdir()
    os.chown(home / "home", user.pw_uid, user.pw_gid)
    socket = run_dir / "podman" / "podman.sock"
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
    proc = subprocess.Popen(
        ["runuser", "-u", USER, "--", *clean, "podman", "system", "service", "--time=0"]
        + [f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=(home / "service.log").open("w"),
        start_new_session=True,  # runuser and the service: one group to stop at the end
    )
    deadline = time.monotonic() + 60
    while not socket.exists():
        assert proc.poll() is None, (home / "service.log").read_text()
        assert time.monotonic() < deadline, "Podman's service did not start"
        time.sleep(0.2)
    yield {**env, "PODMAN_SOCKET": str(socket)}
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    # And Podman's pause process (catatonit), which outlives a rootless service by design:
    # USER is these tests' own.
    subprocess.run(["pkill", "-u", USER], check=False)


@pytest.fixture(scope="module")
def venv(home, user, image, service) -> Path:
    """The wheel alone (the light install: no torch) in a fresh venv; its bin/."""
    wheel = build_wheel(home / "build")
    subprocess.run([python_for(user), "-m", "venv", str(home / "venv")], check=True)
    pip = [str(home / "venv" / "bin" / "pip"), "install", "-q", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    return home / "venv" / "bin"


@pytest.fixture(scope="module")
def podman_image(image, home, user, venv, service) -> str:
    """The cpu image Docker built, moved to the user's Podman as a `docker save` archive
    (`toolkit images export` as root, `images import` as the user)."""
    from toolkit.cli import main

    archive = home / "cpu.tar"
    assert main(["images", "export", "cpu", "-o", str(archive)]) == 0
    os.chown(archive, user.pw_uid, user.pw_gid)
    env = {**service, "PATH": f"{venv}:{service['PATH']}"}
    loaded = as_user(
        user, ["toolkit", "--engine", "podman", "images", "import", str(archive)], home, env
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    archive.unlink()
    return image


def toolkit(user, venv, service, cwd: Path, *args: str, how: str = "--engine", **extra):
    """`toolkit ARGS` as the user, the engine named as `how` says."""
    env = {**service, "PATH": f"{venv}:{service['PATH']}", **extra}
    socket = f"unix://{env.pop('PODMAN_SOCKET')}"
    if how != "--engine":  # DOCKER_HOST or CONTAINER_HOST
        env[how] = socket
    flags = ["--engine", "podman"] if how == "--engine" else []
    return as_user(user, ["toolkit", *flags, *args], cwd, env)


def containers(user, service) -> list[str]:
    """The user's Podman containers, as `podman ps -a` lists them."""
    env = {k: v for k, v in service.items() if k != "PODMAN_SOCKET"}
    listed = as_user(user, ["podman", "ps", "-a", "--format", "{{.Names}}"], Path("/"), env)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def workdir(home: Path, user, name: str) -> Path:
    """A working folder of the user's with the demo and files that are not toolkit's."""
    here = home / name
    (here / "configs" / "data").mkdir(parents=True)
    shutil.copy(DEMO_CONFIG, here / "demo.yaml")
    shutil.copy(DEMO_DATA, here / "configs" / "data" / DEMO_DATA.name)
    someone_elses_files(here)
    for path in [here, *here.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    return here


def test_an_ordinary_user_trains_the_demo_on_their_rootless_podman(
    podman_image, user, home, venv, service, tmp_path
):
    here = workdir(home, user, "demo")
    theirs = [here / "outside"]
    before = tree_state(*theirs, mtimes=True)

    doctor = toolkit(user, venv, service, here, "doctor", how="DOCKER_HOST")
    assert "engine Podman" in doctor.stdout and "(rootless, containers run as you)" in (
        doctor.stdout
    ), doctor.stdout + doctor.stderr
    tiny = toolkit(
        user, venv, service, here, "tiny-model", ".cache/tiny-qwen3", how="CONTAINER_HOST"
    )
    assert tiny.returncode == 0, tiny.stderr[-3000:]
    trained = toolkit(user, venv, service, here, "train", "demo.yaml", "--max-steps", "10")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "as you (rootless Podman), without network" in trained.stderr
    merged = toolkit(user, venv, service, here, "merge-lora", "demo.yaml")
    assert merged.returncode == 0, merged.stderr[-3000:]

    out = here / "outputs" / "tiny-cpu-demo"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["environment"]["image"] == podman_image
    assert (out / "merged" / "model.safetensors").is_file()
    for path in [here, *here.rglob("*")]:
        if here / "outside" not in [path, *path.parents]:
            assert path.lstat().st_uid == user.pw_uid, path
    assert tree_state(*theirs, mtimes=True) == before
    assert containers(user, service) == []

    # The same config on Docker, as root: the same losses, step for step.
    from toolkit.cli import main

    raw = yaml.safe_load((here / "demo.yaml").read_text())
    raw["base_model"] = str(here / ".cache" / "tiny-qwen3")
    raw["datasets"][0]["path"] = str(here / "configs" / "data" / DEMO_DATA.name)
    raw["output_dir"] = str(tmp_path / "docker")
    config = tmp_path / "docker.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config), "--max-steps", "10", "--runtime", "docker"]) == 0
    assert main(["compare", str(out), str(tmp_path / "docker")]) == 0


def test_sigterm_saves_and_a_killed_command_leaves_no_container(
    podman_image, user, home, venv, service
):
    here = workdir(home, user, "signals")
    assert toolkit(user, venv, service, here, "tiny-model", ".cache/tiny-qwen3").returncode == 0
    env = {**service, "PATH": f"{venv}:{service['PATH']}"}
    env.pop("PODMAN_SOCKET")
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
    argv = ["runuser", "-u", USER, "--", *clean, "toolkit", "--engine", "podman", "train"]
    argv += ["demo.yaml", "--max-steps", "5000", "--save-steps", "100000", "--val-set-size", "0"]
    log = here / "outputs" / "tiny-cpu-demo" / "train.log"

    def start() -> tuple[subprocess.Popen, int]:
        """The command, once it trains; and its pid (runuser's child: runuser itself
        would follow a SIGTERM with a SIGKILL after two seconds)."""
        proc = subprocess.Popen(argv, cwd=here, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while max(map(int, re.findall(r"^step (\d+)/", _read(log), re.M)), default=0) < (
            first_steps + 20
        ):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "training never took 20 steps"
            time.sleep(0.2)
        children = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 1, children
        return proc, int(children[0])

    first_steps = 0
    first, pid = start()
    os.kill(pid, signal.SIGTERM)
    said = first.communicate(timeout=180)[0].decode()
    assert first.returncode == 75, said[-3000:]
    [checkpoint] = (here / "outputs" / "tiny-cpu-demo").glob("checkpoint-*")
    assert (checkpoint / "toolkit-complete.json").is_file()
    assert containers(user, service) == []

    first_steps = int(checkpoint.name.rsplit("-", 1)[1])
    second, pid = start()  # resumes; then the command dies without a word
    os.kill(pid, signal.SIGKILL)
    second.wait(30)
    deadline = time.monotonic() + 180  # the reaper: SIGTERM, a checkpoint, then removal
    while containers(user, service):
        assert time.monotonic() < deadline, containers(user, service)
        time.sleep(0.5)
    segments = json.loads(
        (here / "outputs" / "tiny-cpu-demo" / ".toolkit" / "segments.json").read_text()
    )
    assert [s["outcome"] for s in segments] == ["preempted", "preempted"]


def test_the_image_builds_on_rootless_podman(user, home, venv, service):
    """Without root and without the docker group: the Debian base by mmdebstrap in a
    user namespace, the image by Podman's builder (Buildah) through its API; it
    verifies against its lock and runs."""
    here = home / "build-here"
    here.mkdir()
    os.chown(here, user.pw_uid, user.pw_gid)
    tag = "toolkit:podman-test"
    # This machine's pip settings (its index, the local torch wheels), as its users get them.
    pip = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    built = toolkit(user, venv, service, here, "images", "build", "cpu", "--tag", tag, **pip)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "with mmdebstrap" in built.stderr, built.stderr[-3000:]
    verified = toolkit(user, venv, service, here, "images", "verify", "--tag", tag)
    assert verified.returncode == 0, verified.stdout[-2000:] + verified.stderr[-2000:]
    made = toolkit(user, venv, service, here, "tiny-model", "tiny", "--image", tag)
    assert made.returncode == 0, made.stderr[-3000:]
    assert (here / "tiny" / "model.safetensors").stat().st_uid == user.pw_uid
    assert containers(user, service) == []
