"""What crosses to a container engine, as data: a run (`RunSpec`: image, command,
structured bind mounts, devices, credentials by name), what the engine says of an image
(`ImageInfo`) and of a command (`Result`), and both ends of the credentials-on-stdin
protocol (`secrets_payload` on the host, `receive_secrets` in the container).

Pure standard library: the image runs `receive_secrets` from here with nothing else of
toolkit imported, and the shell scripts toolkit writes for VMs use `run_argv`.
"""

from __future__ import annotations

import os
import sys
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


ENGINES = ("docker", "podman")
ENGINE_ENV = "TOOLKIT_ENGINE"  # what --engine sets: docker or podman


@dataclass(frozen=True)
class Engine:
    """Which engine answers, and whether it runs as the invoking user (rootless Podman or
    rootless Docker): then the container's root is that user, and asking for the host's
    uid inside would map it to a subordinate one that may write nothing of theirs."""

    name: str  # "docker" or "podman"
    version: str
    rootless: bool = False

    def __str__(self) -> str:
        kind = "rootless, containers run as you" if self.rootless else "rootful"
        return f"{self.name.capitalize()} {self.version} ({kind})"


def podman_socket() -> str:
    """Where Podman's service listens by default: the user's own (rootless) socket under
    XDG_RUNTIME_DIR, or root's."""
    if os.geteuid() == 0:
        return "/run/podman/podman.sock"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return f"{runtime_dir}/podman/podman.sock"


def engine_address() -> tuple[str | None, str]:
    """The engine's address for the client, and what named it: DOCKER_HOST when set, else
    CONTAINER_HOST (Podman's variable), else with --engine podman (TOOLKIT_ENGINE) the
    Podman socket; None: Docker's default socket."""
    for name in ("DOCKER_HOST", "CONTAINER_HOST"):
        if os.environ.get(name):
            return os.environ[name], name
    if os.environ.get(ENGINE_ENV) == "podman":
        return f"unix://{podman_socket()}", "--engine podman"
    return None, "the default socket"


def wanted_engine() -> str | None:
    """The engine --engine (TOOLKIT_ENGINE) asks for, or None; a value that names none is
    exit 2."""
    from toolkit.errors import UsageError

    wanted = os.environ.get(ENGINE_ENV) or None
    if wanted is not None and wanted not in ENGINES:
        raise UsageError(
            f"{ENGINE_ENV}={wanted}: not an engine toolkit knows; use docker or podman "
            f"(or unset {ENGINE_ENV})"
        )
    return wanted


def unreachable(detail: str) -> RuntimeFailure:
    """Our message for an engine that does not answer, from what the client said: a socket
    we may not use is not an engine that is down, and the variable that named the address
    is named."""
    address, named_by = engine_address()
    podman = os.environ.get(ENGINE_ENV) == "podman" or "podman" in (address or "")
    if named_by.isupper():  # DOCKER_HOST or CONTAINER_HOST
        where = f"{named_by}={address}"
    else:
        where = f"{address} ({named_by})" if address else "the default socket /var/run/docker.sock"
    line = (detail.strip().splitlines() or ["no answer"])[0][:160]
    kind = "Podman service" if podman else "Docker engine"
    if "permission denied" in detail.lower() or "permissionerror" in detail.lower():
        fix = (
            "the Podman socket is its user's alone: run as that user, or start your own "
            "rootless service"
            if podman
            else "add your user to the docker group (`sudo usermod -aG docker $USER`, then "
            "log in again) or run as a user that may use it; or use rootless Podman "
            "(--engine podman)"
        )
        other = f"; or unset {named_by} to use the default socket" if named_by.isupper() else ""
        return RuntimeFailure(f"permission denied on the {kind} at {where}; {fix}{other}")
    if podman:
        socket = address if address and address.startswith("unix://") else None
        return RuntimeFailure(
            f"no Podman service answers at {where} ({line}); start yours with "
            f"`podman system service --time=0 {socket or 'unix://' + podman_socket()} &` "
            "(or `systemctl --user start podman.socket`)"
            + (f", or unset {named_by} to use your own socket" if named_by.isupper() else "")
            + ", or pass --runtime local"
        )
    if named_by.isupper():
        return RuntimeFailure(
            f"no {kind} answers at {where} ({line}); check "
            f"the address, or unset {named_by} to use the default socket, or "
            "pass --runtime local"
        )
    return RuntimeFailure(
        f"the Docker engine does not answer at {where} ({line}); start it "
        "(`sudo systemctl start docker`, or `dockerd &`) and check "
        "`docker info`, or use rootless Podman (--engine podman), or pass --runtime local"
    )


@dataclass(frozen=True)
class ImageInfo:
    """What toolkit reads of an image: its ID, labels, registry digests, tags, size in
    bytes and creation time (the engine's, RFC 3339)."""

    id: str
    labels: dict[str, str]
    digests: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    size: int | None = None
    created: str | None = None

    @classmethod
    def from_inspect(cls, data: dict) -> ImageInfo:
        """From the engine's inspect answer (the CLI's JSON and the API's are the same)."""
        return cls(
            id=data.get("Id", ""),
            labels=dict((data.get("Config") or {}).get("Labels") or {}),
            digests=tuple(data.get("RepoDigests") or ()),
            tags=tuple(t for t in data.get("RepoTags") or () if t != "<none>:<none>"),
            size=data.get("Size"),
            created=data.get("Created"),
        )


@dataclass(frozen=True)
class Mount:
    host: str
    container: str
    read_only: bool = True


@dataclass(frozen=True)
class Devices:
    """What a container needs to reach its accelerators, as data. The engine seam turns it
    into API fields (toolkit.containers.engine); `flags()` into `docker run` options for the shell
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
    # when the container starts and go in on its stdin (toolkit.containers.engine), never into the
    # container's configuration, a command line or a file.
    secrets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A None once meant "pass by name", which still put the value in the container's
        # configuration; a credential goes in `secrets` now.
        unset = [name for name, value in self.env.items() if not isinstance(value, str)]
        if unset:
            raise TypeError(f"RunSpec.env {unset}: values only; name credentials in `secrets`")


# In the container, before the command: read the credentials from stdin into the
# command's environment, then exec it (receive_secrets, below). -P: the working
# folder (maybe one the run writes to) is not searched for a module named toolkit. An
# import, not `-m toolkit.containers.engine secrets`: an image from before the receiver would run
# that module, do nothing and exit 0, a run that never ran; the import fails instead.
SECRETS_RECEIVER = (
    "python3",
    "-P",
    "-c",
    "import sys; from toolkit.containers.spec import receive_secrets; "
    "receive_secrets(sys.argv[2:])",
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
    for VMs. Containers on this machine run through the API (toolkit.containers.engine). A spec with
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


MAX_SECRETS_BYTES = 1 << 20


def receive_secrets(argv: list[str]) -> None:
    """In the container: read the credentials line from stdin, put them in the
    environment, and exec `argv` with stdin on /dev/null. They reach the command and its
    children (torchrun's ranks, the trackers), and no file or argument holds them."""
    import json

    line = sys.stdin.buffer.readline(MAX_SECRETS_BYTES)
    try:
        values = json.loads(line) if line.endswith(b"\n") else None
    except ValueError:
        values = None
    if not isinstance(values, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in values.items()
    ):
        print(
            "toolkit: the run's credentials did not arrive on this container's stdin "
            "(did the toolkit command that started it stop?); nothing was run",
            file=sys.stderr,
        )
        sys.exit(125)
    os.environ.update(values)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        os.execvp(argv[0], argv)  # noqa: S606 (the spec's own command, as a list)
    except OSError as exc:
        print(f"toolkit: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        sys.exit(127)
