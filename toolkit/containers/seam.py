"""The interface to the outside world: subprocesses (`Runtime`) and the container
engine (`Docker`: build, import, pull, push, inspect, run, remove). Every engine call of
toolkit goes through a `Docker` from `Runtime.docker()`; unit tests hand in a double
(tests/fakes.py) that records each call and answers with the same typed values
(`Result`, `ImageInfo`); the docker-marked tests use the real one against the real engine.
The Docker SDK itself is imported only by toolkit/containers/engine.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import TextIO

from toolkit.containers.spec import Engine, ImageInfo, Result, RunSpec
from toolkit.errors import RuntimeFailure


class Runtime:
    """Runs commands for real."""

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        capture: bool = True,
        timeout: float | None = None,
        cwd: str | None = None,
        stdout: TextIO | None = None,
    ) -> Result:
        """Run `argv`. With capture=False its output streams to ours (used for logs), its
        stdout to `stdout` when given (a build's log goes to stderr, so that stdout stays
        the command's answer: `--json`, `--debug`)."""
        full_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run(
                argv,
                env=full_env,
                capture_output=capture,
                stdout=None if capture else stdout,
                text=True,
                timeout=timeout,
                cwd=cwd,
            )
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: no answer after {timeout:g} s")
        return Result(proc.returncode, proc.stdout or "", proc.stderr or "")

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def docker(self) -> Docker:
        """The Docker engine, as this runtime reaches it."""
        return Docker(self)

    def run_child(self, argv: list[str]) -> int:
        """Run `argv` as our child for as long as we live: SIGTERM, SIGINT and SIGHUP to us
        go to it (SIGHUP as SIGTERM: a closed terminal stops a run gracefully), and it gets
        SIGTERM if we die first (Linux's parent-death signal). Returns its exit code."""
        import signal
        import threading

        proc = subprocess.Popen(argv, preexec_fn=_terminate_with_parent)

        def forward(signum, frame) -> None:
            proc.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, forward) for s in handled} if main else {}
        try:
            return proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _terminate_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal
    from contextlib import suppress

    with suppress(OSError, AttributeError):  # not Linux: the child is not tied to us
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)


class Docker:
    """The Docker engine through its API (the `docker` package, see toolkit.containers.engine); the
    `docker` CLI only to build with BuildKit, which needs its buildx plugin. Get one from
    `Runtime.docker()`, so tests can hand in a scripted double (tests/fakes.py)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def server_version(self) -> str | None:
        """The engine's version, or None when no engine answers."""
        try:
            return self.require()
        except RuntimeFailure:
            return None

    def require(self) -> str:
        """The engine's version, or a RuntimeFailure saying why none answers."""
        from toolkit.containers import engine

        return str(engine.client().version().get("Version", "unknown"))

    def engine(self) -> Engine:
        """Which engine answers (Docker or Podman), its version, and whether it is
        rootless (then containers run as the invoking user)."""
        from toolkit.containers import engine

        return engine.describe()

    def info(self) -> tuple[str | None, tuple[str, ...]]:
        """The engine's data root and the container runtimes it knows (nvidia among them
        when the NVIDIA Container Toolkit is set up)."""
        from toolkit.containers import engine

        data = engine.client().info()
        return data.get("DockerRootDir"), tuple(sorted(data.get("Runtimes") or {}))

    def inspect_image(self, ref: str) -> ImageInfo | None:
        """The image `ref` names, or None when the engine has none."""
        from toolkit.containers import engine

        return engine.image_info(ref)

    def remove_image(self, image_id: str) -> bool:
        """Remove an unused image by ID or tag (never forced: one a container uses stays;
        a tag of an image with others is only untagged)."""
        from toolkit.containers import engine

        return engine.remove_image(image_id)

    def list_images(self, labels: dict[str, str | None]) -> list[ImageInfo]:
        """The top-level images (dangling ones included) that carry every label in
        `labels` (with that value; None: any value)."""
        from toolkit.containers import engine

        return engine.list_images(labels)

    def images_in_use(self) -> set[str]:
        """The IDs of the images some container (running or stopped) was created from."""
        from toolkit.containers import engine

        return engine.images_in_use()

    def run(self, spec: RunSpec, keep_fds: tuple[int, ...] = ()) -> int:
        """Run a container as `spec` says, its output streamed to ours; its exit code.
        `keep_fds` (the output folder's lock) stay open until the container is gone."""
        from toolkit.containers import engine

        return engine.run(spec, keep_fds)

    def save(self, ref: str, path: str) -> ImageInfo:
        """Write the image `ref` names as a `docker save` archive at `path` (a new file)."""
        from toolkit.containers import engine

        return engine.save(ref, path)

    def load(self, path: str) -> list[ImageInfo]:
        """Load a `docker save` archive; the images it held."""
        from toolkit.containers import engine

        return engine.load(path)

    def push(self, local: str, remote: str) -> ImageInfo:
        """Tag `local` as `remote`, push it, and return what the engine then knows of it
        (its registry digests among them)."""
        from toolkit.containers import engine

        return engine.push(local, remote)

    def output(self, spec: RunSpec) -> Result:
        """Run a container to its end and return what it printed (stderr streams to ours)."""
        import io

        from toolkit.containers import engine

        captured = io.BytesIO()
        code = engine.run(spec, stdout=captured)
        return Result(
            code,
            captured.getvalue().decode("utf-8", "replace"),
            "" if code == 0 else f"exit {code} (its log is above)",
        )

    def buildkit_env(self) -> tuple[dict[str, str], str | None]:
        """Environment for a build, and a note when we fall back.

        A modern Docker builds with BuildKit through the CLI's buildx plugin. Without it
        the build goes through the API's (classic) builder — the Dockerfile works with
        both — and we say so. Podman builds through its API (Buildah), BuildKit's
        equivalent there.
        """
        if self.engine().name == "podman":
            return {"DOCKER_BUILDKIT": "0"}, None
        if (
            self.runtime.which("docker")
            and self.runtime.run(["docker", "buildx", "version"], timeout=20).ok
        ):
            return {"DOCKER_BUILDKIT": "1"}, None
        return (
            {"DOCKER_BUILDKIT": "0"},
            "the docker CLI has no buildx plugin; building with the engine's classic "
            "builder. Install docker-buildx for BuildKit builds.",
        )

    def build(
        self,
        context: str,
        tag: str,
        build_args: dict[str, str],
        env: dict[str, str],
        no_cache: bool = False,
    ) -> Result:
        """Build `context` as `tag`; the builder's log goes to our stderr (stdout is the
        answer of the command that needed the image)."""
        if env.get("DOCKER_BUILDKIT") == "1":
            argv = self.cli_build_argv(context, tag, build_args, no_cache)
            return self.runtime.run(argv, env=env, capture=False, stdout=sys.stderr)
        from toolkit.containers import engine

        return engine.build(context, tag, build_args, no_cache)

    @staticmethod
    def cli_build_argv(
        context: str, tag: str, build_args: dict[str, str], no_cache: bool
    ) -> list[str]:
        """`docker build` for a BuildKit build through the CLI."""
        argv = ["docker", "build", "--tag", tag, *(["--no-cache"] if no_cache else [])]
        for key, value in build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        return [*argv, context]

    def pull(self, ref: str, timeout: float = 600) -> Result:
        from toolkit.containers import engine

        return engine.pull(ref)

    def import_rootfs(self, tarball: str, tag: str, changes: list[str]) -> Result:
        from toolkit.containers import engine

        return engine.import_rootfs(tarball, tag, changes)
