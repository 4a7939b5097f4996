"""Test doubles for the seams toolkit talks to the outside world through."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from toolkit.runtime import Docker, ImageInfo, Result, RunSpec, Runtime, run_argv, unreachable


@dataclass
class FakeRuntime(Runtime):
    """Records every command; answers from `script`, a list of (argv prefix, Result or callable)."""

    script: list[tuple[tuple[str, ...], Result | Callable[[list[str]], Result]]] = field(
        default_factory=list
    )
    calls: list[list[str]] = field(default_factory=list)
    envs: list[dict[str, str]] = field(default_factory=list)
    programs: set[str] = field(default_factory=lambda: {"docker"})

    def run(self, argv, *, env=None, capture=True, timeout=None, cwd=None) -> Result:
        self.calls.append(list(argv))
        self.envs.append(dict(env or {}))
        for prefix, answer in self.script:
            if tuple(argv[: len(prefix)]) == prefix:
                return answer(list(argv)) if callable(answer) else answer
        return Result(0)

    def which(self, name: str) -> str | None:
        return f"/usr/bin/{name}" if name in self.programs else None

    def run_child(self, argv: list[str]) -> tuple[int, int | None]:
        return self.run(argv, capture=False).returncode, None

    def docker(self) -> ScriptedDocker:
        return ScriptedDocker(self)


class ScriptedDocker(Docker):
    """The Docker seam answered by FakeRuntime's script: each call is the `docker` CLI
    command it stands for, so tests script engine answers by argv prefix."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def server_version(self) -> str | None:
        """The engine's version, or None when no engine answers."""
        if self.runtime.which("docker") is None:
            return None
        res = self._version()
        return res.stdout.strip() if res.ok and res.stdout.strip() else None

    def _version(self) -> Result:
        return self.runtime.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], timeout=20
        )

    def info(self) -> tuple[str | None, tuple[str, ...]]:
        res = self.runtime.run(
            ["docker", "info", "--format", "{{.DockerRootDir}}|{{json .Runtimes}}"], timeout=30
        )
        if not res.ok or "|" not in res.stdout:
            return None, ()
        root, raw = res.stdout.strip().split("|", 1)
        try:
            return root, tuple(sorted(json.loads(raw)))
        except ValueError:
            return root, ()

    def require(self) -> str:
        res = self._version()
        if res.ok and res.stdout.strip():
            return res.stdout.strip()
        raise unreachable(res.stderr)

    def inspect_image(self, ref: str) -> ImageInfo | None:
        """The image `ref` names, or None when the engine has none."""
        res = self.runtime.run(["docker", "image", "inspect", ref], timeout=60)
        if not res.ok:
            return None
        data = json.loads(res.stdout or "[]")
        return ImageInfo.from_inspect(data[0]) if data else None

    def build(
        self,
        context: str,
        tag: str,
        build_args: dict[str, str],
        env: dict[str, str],
        no_cache: bool = False,
    ) -> Result:
        """Every build as the CLI command it stands for (BuildKit or not)."""
        argv = Docker.cli_build_argv(context, tag, build_args, no_cache)
        return self.runtime.run(argv, env=env, capture=False)

    def pull(self, ref: str, timeout: float = 600) -> Result:
        return self.runtime.run(["docker", "pull", ref], timeout=timeout)

    def remove_image(self, image_id: str) -> bool:
        return self.runtime.run(["docker", "image", "rm", image_id], timeout=60).ok

    def import_rootfs(self, tarball: str, tag: str, changes: list[str]) -> Result:
        argv = ["docker", "import"]
        for change in changes:
            argv += ["--change", change]
        return self.runtime.run([*argv, tarball, tag], timeout=900)

    def output(self, spec: RunSpec) -> Result:
        return self.runtime.run(run_argv(spec))
