"""The single seam to the outside world: subprocesses and the Docker engine.

Everything that runs a program goes through a `Runtime`. Unit tests pass a
fake (tests/fakes.py) that records each command and answers from a script; the
docker-marked tests use the real one against the real engine. Containers go through
the Docker API instead (toolkit/engine.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
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

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        capture: bool = True,
        timeout: float | None = None,
        cwd: str | None = None,
    ) -> Result:
        """Run `argv`. With capture=False its output streams to ours (used for logs)."""
        full_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.run(
                argv, env=full_env, capture_output=capture, text=True, timeout=timeout, cwd=cwd
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

    def run_child(self, argv: list[str]) -> tuple[int, int | None]:
        """Run `argv` as our child for as long as we live: SIGTERM, SIGINT and SIGHUP to us
        go to it (SIGHUP as SIGTERM: a closed terminal stops a run gracefully), and it gets
        SIGTERM if we die first (Linux's parent-death signal). Returns its exit code and
        the last signal forwarded, if any."""
        import signal
        import threading

        proc = subprocess.Popen(argv, preexec_fn=_terminate_with_parent)
        forwarded: list[int] = []

        def forward(signum, frame) -> None:
            sent = signal.SIGTERM if signum == signal.SIGHUP else signum
            forwarded.append(sent)
            proc.send_signal(sent)

        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, forward) for s in handled} if main else {}
        try:
            return proc.wait(), (forwarded[-1] if forwarded else None)
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


# ---------------------------------------------------------------------------
# Docker


def unreachable(detail: str) -> RuntimeFailure:
    """Our message for an engine that does not answer, from what the client said: a socket
    we may not use is not an engine that is down, and DOCKER_HOST is named when set."""
    host = os.environ.get("DOCKER_HOST")
    where = f"DOCKER_HOST={host}" if host else "the default socket /var/run/docker.sock"
    line = (detail.strip().splitlines() or ["no answer"])[0][:160]
    if "permission denied" in detail.lower() or "permissionerror" in detail.lower():
        return RuntimeFailure(
            f"permission denied on the Docker engine at {where}; add your "
            "user to the docker group (`sudo usermod -aG docker $USER`, then "
            "log in again) or run as a user that may use it"
            + ("; or unset DOCKER_HOST to use the default socket" if host else "")
        )
    if host:
        return RuntimeFailure(
            f"no Docker engine answers at DOCKER_HOST={host} ({line}); check "
            "the address, or unset DOCKER_HOST to use the default socket, or "
            "pass --runtime local"
        )
    return RuntimeFailure(
        f"the Docker engine does not answer at {where} ({line}); start it "
        "(`sudo systemctl start docker`, or `dockerd &`) and check "
        "`docker info`, or pass --runtime local"
    )


@dataclass(frozen=True)
class ImageInfo:
    """What toolkit reads of an image: its ID, labels and registry digests."""

    id: str
    labels: dict[str, str]
    digests: tuple[str, ...] = ()

    @classmethod
    def from_inspect(cls, data: dict) -> ImageInfo:
        """From the engine's inspect answer (the CLI's JSON and the API's are the same)."""
        return cls(
            id=data.get("Id", ""),
            labels=dict((data.get("Config") or {}).get("Labels") or {}),
            digests=tuple(data.get("RepoDigests") or ()),
        )


@dataclass(frozen=True)
class Mount:
    host: str
    container: str
    read_only: bool = True


@dataclass(frozen=True)
class Devices:
    """What a container needs to reach its accelerators, as data. The engine seam turns it
    into API fields (toolkit.engine); `flags()` into `docker run` options for the shell
    scripts toolkit writes for VMs."""

    gpus: str | None = None  # NVIDIA device request: "all" or "0,1"
    devices: tuple[str, ...] = ()  # host device nodes (AMD: /dev/kfd, /dev/dri)
    group_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    ipc_host: bool = False
    ulimits: tuple[tuple[str, int], ...] = ()
    shm_size: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    def flags(self) -> list[str]:
        out: list[str] = []
        if self.gpus:
            out += ["--gpus", "all" if self.gpus == "all" else f'"device={self.gpus}"']
        for node in self.devices:
            out += ["--device", node]
        for group in self.group_add:
            out += ["--group-add", group]
        for option in self.security_opt:
            out += ["--security-opt", option]
        if self.ipc_host:
            out.append("--ipc=host")
        for name, limit in self.ulimits:
            out += ["--ulimit", f"{name}={limit}"]
        if self.shm_size:
            out += ["--shm-size", self.shm_size]
        for name, value in self.env:
            out += ["--env", f"{name}={value}"]
        return out


@dataclass(frozen=True)
class RunSpec:
    """One container run, described as data so it can be checked without an engine."""

    image: str
    command: list[str]
    mounts: list[Mount] = field(default_factory=list)
    user: str | None = None
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # no credentials: inspect shows it
    network: str | None = None
    devices: Devices = Devices()
    # Credentials the command needs, by name: their values are read from the environment
    # when the container starts and go in on its stdin (toolkit.engine), never into the
    # container's configuration, a command line or a file.
    secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A None once meant "pass by name", which still put the value in the container's
        # configuration; a credential goes in `secrets` now.
        unset = [name for name, value in self.env.items() if not isinstance(value, str)]
        if unset:
            raise TypeError(f"RunSpec.env {unset}: values only; name credentials in `secrets`")


# In the container, before the command: read the credentials from stdin into the
# command's environment, then exec it (toolkit.engine.receive_secrets). -P: the working
# folder (maybe one the run writes to) is not searched for a module named toolkit. An
# import, not `-m toolkit.engine secrets`: an image from before the receiver would run
# that module, do nothing and exit 0, a run that never ran; the import fails instead.
SECRETS_RECEIVER = (
    "python3",
    "-P",
    "-c",
    "import sys; from toolkit.engine import receive_secrets; receive_secrets(sys.argv[2:])",
    "--",
)


def secrets_payload(names: tuple[str, ...], environ) -> bytes:
    """What goes to a container's stdin: one line of JSON with the named variables that
    are set. ASCII only (json escapes the rest), so no byte of it is an attach detach key."""
    import json

    return (json.dumps({n: environ[n] for n in names if n in environ}) + "\n").encode()


def mount_option(m: Mount) -> str:
    """`--mount` text for one bind mount. The docker CLI reads it as one CSV record, so each
    field is CSV-quoted: a comma, quote or newline in a path stays inside its field and
    can never add an option (`readonly=false`, another source)."""
    fields = ["type=bind", f"source={m.host}", f"target={m.container}"]
    if m.read_only:
        fields.append("readonly")
    return ",".join(_csv_field(f) for f in fields)


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n\r') or text != text.strip():
        return '"' + text.replace('"', '""') + '"'
    return text


def run_argv(spec: RunSpec) -> list[str]:
    """The `docker run` argument list for a spec (pure); used in the scripts toolkit writes
    for VMs. Containers on this machine run through the API (toolkit.engine). A spec with
    secrets reads them on stdin: pipe `secrets_payload` into the command."""
    argv = ["docker", "run", "--rm", "--init", *(["--interactive"] if spec.secrets else [])]
    if spec.user:
        argv += ["--user", spec.user]
    if spec.network:
        argv += ["--network", spec.network]
    for m in spec.mounts:
        argv += ["--mount", mount_option(m)]
    for name, value in spec.env.items():
        argv += ["--env", f"{name}={value}"]
    if spec.workdir:
        argv += ["--workdir", spec.workdir]
    argv += spec.devices.flags()
    return [*argv, spec.image, *(SECRETS_RECEIVER if spec.secrets else ()), *spec.command]


class Docker:
    """The Docker engine through its API (the `docker` package, see toolkit.engine); the
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
        from toolkit import engine

        return str(engine.client().version().get("Version", "unknown"))

    def info(self) -> tuple[str | None, tuple[str, ...]]:
        """The engine's data root and the container runtimes it knows (nvidia among them
        when the NVIDIA Container Toolkit is set up)."""
        from toolkit import engine

        data = engine.client().info()
        return data.get("DockerRootDir"), tuple(sorted(data.get("Runtimes") or {}))

    def inspect_image(self, ref: str) -> ImageInfo | None:
        """The image `ref` names, or None when the engine has none."""
        from toolkit import engine

        return engine.image_info(ref)

    def remove_image(self, image_id: str) -> bool:
        """Remove an unused image by ID (never forced: one a container uses stays)."""
        from toolkit import engine

        return engine.remove_image(image_id)

    def output(self, spec: RunSpec) -> Result:
        """Run a container to its end and return what it printed (stderr streams to ours)."""
        import io

        from toolkit import engine

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
        both — and we say so.
        """
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
        if env.get("DOCKER_BUILDKIT") == "1":
            argv = self.cli_build_argv(context, tag, build_args, no_cache)
            return self.runtime.run(argv, env=env, capture=False)
        from toolkit import engine

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
        from toolkit import engine

        return engine.pull(ref)

    def import_rootfs(self, tarball: str, tag: str, changes: list[str]) -> Result:
        from toolkit import engine

        return engine.import_rootfs(tarball, tag, changes)
