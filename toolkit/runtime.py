"""The single seam to the outside world: subprocesses and the Docker engine.

Everything that runs a program goes through a `Runtime`. Unit tests pass a
`FakeRuntime` that records each command and answers from a script; the
docker-marked tests use the real one against the real engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from toolkit.errors import RuntimeFailure


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Runtime:
    """Runs commands for real."""

    def run(self, argv: list[str], *, env: dict[str, str] | None = None, capture: bool = True,
            timeout: float | None = None, cwd: str | None = None) -> Result:
        """Run `argv`. With capture=False its output streams to ours (used for logs)."""
        full_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run(argv, env=full_env, capture_output=capture, text=True,
                                  timeout=timeout, cwd=cwd)
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: no answer after {timeout:g} s")
        return Result(proc.returncode, proc.stdout or "", proc.stderr or "")

    def which(self, name: str) -> str | None:
        return shutil.which(name)


@dataclass
class FakeRuntime(Runtime):
    """Records every command; answers from `script`, a list of (argv prefix, Result or callable)."""

    script: list[tuple[tuple[str, ...], Result | Callable[[list[str]], Result]]] = field(
        default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    envs: list[dict[str, str]] = field(default_factory=list)
    programs: set[str] = field(default_factory=lambda: {"docker"})

    def run(self, argv, *, env=None, capture=True, timeout=None, cwd=None) -> Result:
        self.calls.append(list(argv))
        self.envs.append(dict(env or {}))
        for prefix, answer in self.script:
            if tuple(argv[:len(prefix)]) == prefix:
                return answer(list(argv)) if callable(answer) else answer
        return Result(0)

    def which(self, name: str) -> str | None:
        return f"/usr/bin/{name}" if name in self.programs else None


# ---------------------------------------------------------------------------
# Docker


@dataclass(frozen=True)
class Mount:
    host: str
    container: str
    read_only: bool = True


@dataclass(frozen=True)
class RunSpec:
    """One `docker run`, described as data so it can be checked without an engine."""

    image: str
    command: list[str]
    mounts: list[Mount] = field(default_factory=list)
    user: str | None = None
    workdir: str | None = None
    # name -> value; a value of None passes the variable by name only, so secrets
    # never appear on a command line or in a log.
    env: dict[str, str | None] = field(default_factory=dict)
    network: str | None = None
    extra: list[str] = field(default_factory=list)


def run_argv(spec: RunSpec) -> list[str]:
    """The `docker run` argument list for a spec (pure)."""
    argv = ["docker", "run", "--rm", "--init"]
    if spec.user:
        argv += ["--user", spec.user]
    if spec.network:
        argv += ["--network", spec.network]
    for m in spec.mounts:
        option = f"type=bind,source={m.host},target={m.container}"
        argv += ["--mount", option + (",readonly" if m.read_only else "")]
    for name, value in spec.env.items():
        argv += ["--env", name if value is None else f"{name}={value}"]
    if spec.workdir:
        argv += ["--workdir", spec.workdir]
    argv += spec.extra
    return argv + [spec.image, *spec.command]


class Docker:
    """The Docker engine, through the `docker` CLI the user already has."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def server_version(self) -> str | None:
        """The engine's version, or None when no engine answers."""
        if self.runtime.which("docker") is None:
            return None
        res = self.runtime.run(["docker", "version", "--format", "{{.Server.Version}}"],
                               timeout=20)
        return res.stdout.strip() if res.ok and res.stdout.strip() else None

    def require(self) -> str:
        if self.runtime.which("docker") is None:
            raise RuntimeFailure("the docker CLI is not installed; install Docker "
                                 "(https://docs.docker.com/engine/install/) or pass "
                                 "--runtime local to train in this Python environment")
        version = self.server_version()
        if version is None:
            raise RuntimeFailure("the Docker engine does not answer; start it "
                                 "(`sudo systemctl start docker`, or `dockerd &`) and check "
                                 "`docker info`, or pass --runtime local")
        return version

    def inspect_image(self, ref: str) -> dict | None:
        res = self.runtime.run(["docker", "image", "inspect", ref], timeout=60)
        if not res.ok:
            return None
        data = json.loads(res.stdout or "[]")
        return data[0] if data else None

    def buildkit_env(self) -> tuple[dict[str, str], str | None]:
        """Environment for `docker build`, and a note when we fall back.

        A modern Docker builds with BuildKit through the buildx plugin. A CLI
        without buildx cannot use BuildKit, so we ask for the classic builder
        (the Dockerfile works with both) and say so.
        """
        if self.runtime.run(["docker", "buildx", "version"], timeout=20).ok:
            return {"DOCKER_BUILDKIT": "1"}, None
        return ({"DOCKER_BUILDKIT": "0"},
                "the docker CLI has no buildx plugin; building with the classic builder "
                "(DOCKER_BUILDKIT=0). Install docker-buildx for BuildKit builds.")

    def build(self, context: str, tag: str, build_args: dict[str, str],
              env: dict[str, str], no_cache: bool = False) -> Result:
        argv = ["docker", "build", "--tag", tag, *(["--no-cache"] if no_cache else [])]
        for key, value in build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        return self.runtime.run([*argv, context], env=env, capture=False)

    def pull(self, ref: str, timeout: float = 600) -> Result:
        return self.runtime.run(["docker", "pull", ref], timeout=timeout)

    def tag(self, source: str, target: str) -> Result:
        return self.runtime.run(["docker", "tag", source, target], timeout=60)

    def push(self, ref: str, timeout: float = 3600) -> Result:
        return self.runtime.run(["docker", "push", ref], timeout=timeout)

    def import_rootfs(self, tarball: str, tag: str, changes: list[str]) -> Result:
        argv = ["docker", "import"]
        for change in changes:
            argv += ["--change", change]
        return self.runtime.run([*argv, tarball, tag], timeout=900)

    def run(self, spec: RunSpec) -> int:
        """Run a container attached to our terminal; its logs stream; returns its exit code."""
        return self.runtime.run(run_argv(spec), capture=False).returncode
