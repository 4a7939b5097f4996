"""Small helpers several test modules share."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from toolkit.trainer.progress import ProgressLog


def read_run(out: Path) -> dict:
    """A run's run.json."""
    return json.loads((Path(out) / "run.json").read_text())


def answer_of(capsys, config, *flags, prompt: str, tokens: int = 12) -> str:
    """What `toolkit inference` prints for one prompt (flags: --model, …); it must exit 0."""
    from toolkit.cli import main

    argv = ["inference", str(config), "--runtime", "local", "--prompt", prompt]
    assert main([*argv, "--max-new-tokens", str(tokens), *flags]) == 0
    return capsys.readouterr().out


def sigterm_at(monkeypatch, step: int) -> None:
    """Send this process SIGTERM when training reaches `step` (a preemption, in-process)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == step:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ProgressLog, "on_step_end", on_step_end, raising=False)


def preempt_at(monkeypatch, config_path: Path, step: int) -> None:
    """Train `config_path` in-process until SIGTERM at `step` stops it with a checkpoint
    (exit 75's Preempted), then lift the patch so the next run goes to the end."""
    import pytest

    from toolkit.config import load_config
    from toolkit.errors import Preempted

    with monkeypatch.context() as patch:
        sigterm_at(patch, step)
        with pytest.raises(Preempted):
            run(load_config(config_path))


def problems_of(path, overrides=None) -> list[str]:
    """The problems loading the config at `path` reports (it must refuse it)."""
    import pytest

    from toolkit.config import load_config
    from toolkit.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def jsonl(path: Path, rows) -> Path:
    """Write `rows` as JSON Lines at `path`; return it."""
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def umask() -> int:
    """This process's umask (read by setting it, and setting it back)."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def build_wheel(work: Path) -> Path:
    """The wheel of this checkout's files (those git lists, committed or not), built in
    `work`: never from the checkout itself, whose setuptools build/lib keeps modules
    removed since and would put them in the wheel (and so change its image tags)."""
    from conftest import REPO

    source, dist = work / "source", work / "dist"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    for rel in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, source / rel)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(dist), str(source)],
        check=True,
    )
    [wheel] = dist.glob("qwen_posttrain-*.whl")
    return wheel


def run(loaded) -> Path:
    """Train a loaded config in this process, as `toolkit train --runtime local` does:
    through the trainer's one entry point, with the plan the host would make."""
    from toolkit import plan
    from toolkit.trainer import run as carry_out

    return carry_out(plan.build(plan.Train(), loaded))


def tree_state(*tops: Path, mtimes: bool = False) -> dict[str, tuple]:
    """Every path under `tops`, links never followed: its kind, mode, and bytes or link
    target (and modification time with `mtimes`). Only regular files are opened (a FIFO
    would block). Two equal states: nothing there was written, removed, re-moded or
    re-linked."""
    import stat

    out: dict[str, tuple] = {}
    for top in tops:
        if not os.path.lexists(top):
            out[str(top)] = ("absent",)
            continue
        stack = [Path(top)]
        while stack:
            path = stack.pop()
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            when = (info.st_mtime_ns,) if mtimes else ()
            if stat.S_ISLNK(info.st_mode):
                out[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                out[str(path)] = ("dir", mode)
                stack.extend(path.iterdir())
            elif stat.S_ISREG(info.st_mode):
                out[str(path)] = ("file", mode, path.read_bytes(), *when)
            else:
                out[str(path)] = ("other", info.st_mode, *when)
    return out


def someone_elses_files(root: Path) -> Path:
    """root/outside: files and folders that are not toolkit's, with modes of their own."""
    outside = Path(root) / "outside"
    (outside / "folder" / "deep").mkdir(parents=True)
    (outside / "file.txt").write_text("not toolkit's\n")
    (outside / "folder" / "notes.md").write_text("# mine\n")
    (outside / "folder" / "deep" / "data.bin").write_bytes(bytes(range(256)))
    os.chmod(outside / "file.txt", 0o600)
    os.chmod(outside / "folder" / "deep", 0o750)
    return outside


def demo_config(where: Path, **changes) -> Path:
    """where/config.yaml: the tiny demo's config with `changes`, its data found here."""
    import yaml
    from conftest import DEMO_CONFIG, DEMO_DATA

    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["datasets"][0]["path"] = str(DEMO_DATA)
    data.update(changes)
    path = Path(where) / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def trained_demo(where: Path, **changes) -> Path:
    """Train the demo config with `changes` into where/out, in-process; its output_dir."""
    from toolkit.cli import main

    config = demo_config(where, output_dir=str(Path(where) / "out"), **changes)
    assert main(["train", str(config), "--runtime", "local"]) == 0
    return Path(where) / "out"


def plant(out: Path, name: str, target: str, outside: Path) -> str:
    """A symbolic link at out/name (replacing what is there) to `target` ("outside
    file", "outside folder" or "nowhere", in `outside`); returns where it points."""
    import shutil

    path = out / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    to = str(
        {
            "outside file": outside / "file.txt",
            "outside folder": outside / "folder",
            "nowhere": outside / "made-by-toolkit",
        }[target]
    )
    path.symlink_to(to)
    return to


def ends(call, *fifos: Path, deadline: float = 60):
    """call() in a thread: its result (or its exception, raised here) if it ends within
    `deadline` seconds; else the pipes `fifos` are opened from both ends to free it and the
    test fails: a command blocked on a pipe fails the test instead of hanging the suite."""
    import threading

    result: dict = {}

    def target() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:  # a traceback: the test reports it
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(deadline)
    hung = thread.is_alive()
    for fifo in fifos:
        for flags in (os.O_WRONLY, os.O_RDONLY):
            try:
                os.close(os.open(fifo, flags | os.O_NONBLOCK))
            except OSError:
                pass  # no reader waits on it: good
    thread.join(5)
    assert not hung, f"{call} blocked"
    if "error" in result:
        raise result["error"]
    return result["value"]


def python_for(user) -> str:
    """A Python the user can run (this one may lie under root's 0700 home, as pyenv's)."""
    for python in (sys._base_executable, "/usr/bin/python3", shutil.which("python3")):
        if python and as_user(user, [python, "-c", ""], Path("/"), {}).returncode == 0:
            return python
    raise AssertionError(f"no Python that {user.pw_name} can run: install python3")


def as_user(user, argv, cwd: Path, env: dict[str, str], timeout: int = 900):
    """argv run as `user` (as root; else as ourselves) with nothing but `env` in its environment."""
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())]
    prefix = ["runuser", "-u", user.pw_name, "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, *clean, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
