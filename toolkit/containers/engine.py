"""Containers on this machine, through the Docker Engine API (the `docker` package).

A run is created from a `RunSpec` with structured fields: each bind mount is a
source, a target and a read-only flag, never option text, so no character in a path
can add a mount or make one writable. The container is named and labelled as
toolkit's, its output streams to ours, and it lives and dies with the command that
started it:

- SIGTERM, SIGINT and SIGHUP to the CLI are forwarded to the container (SIGTERM makes
  the trainer save a checkpoint and exit 75);
- a reaper process, in a session of its own, holds the read end of a pipe whose write
  end only the CLI has. When the CLI ends in any way (SIGKILL included) the pipe closes,
  and the reaper stops the container (SIGTERM, a grace period to checkpoint, then
  SIGKILL) and removes it. It also keeps the output folder's lock (an inherited file
  descriptor) until the container is gone, so no second run starts while this one still
  writes.

Credentials a run needs (`RunSpec.secrets`, by name) go in on the container's stdin:
the CLI writes their values as one JSON line right after the start, and a receiver in
the image reads it, puts them in the command's environment and execs the command with
stdin closed (`receive_secrets`). Why stdin, of the ways in:
- the container's environment, labels and command line are what `docker inspect` shows
  to anyone who may use the engine;
- a host file bind-mounted in puts the value on the host's disk (or on a host tmpfs a
  remote engine cannot see), and a killed CLI leaves it there;
- `put_archive` into a tmpfs mount does not reach the tmpfs: the archive API writes to
  the container's layer on the engine's disk, and before the start there is no tmpfs;
- `exec` after the start races the command that needs the values.
Over stdin the value goes from our process through the API connection into a pipe the
receiver reads before anything else runs: nothing on any disk, nothing in the
container's configuration or logs, the same on a remote engine, and a CLI that dies
first leaves nothing behind (the reaper removes the waiting container).

The `docker` package is imported here only, when a container or the engine is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, BinaryIO

from toolkit.containers.spec import (
    ENGINE_ENV,
    SECRETS_RECEIVER,
    Engine,
    ImageInfo,
    Result,
    RunSpec,
    engine_address,
    secrets_payload,
    unreachable,
    wanted_engine,
)
from toolkit.errors import RuntimeFailure, UsageError

if TYPE_CHECKING:
    from docker import DockerClient

LABEL = "io.toolkit.run"  # every container toolkit starts carries it
STOP_GRACE_S = 120  # time a stopped trainer gets to save its checkpoint


def _connect(timeout: int) -> DockerClient:
    """A client for the engine spec.engine_address names: DOCKER_HOST, CONTAINER_HOST,
    Podman's socket for --engine podman, or Docker's default socket."""
    import docker

    address, _ = engine_address()
    if address is None:
        return docker.from_env(timeout=timeout)
    return docker.DockerClient(base_url=address, timeout=timeout)


def client() -> DockerClient:
    """A client for the engine (see _connect), or a RuntimeFailure that says which socket
    failed and how to fix it; with --engine, one of that engine or exit 2."""
    from docker.errors import DockerException

    wanted = wanted_engine()
    try:
        c = _connect(600)
        c.ping()
    except DockerException as exc:
        raise unreachable(str(exc)) from None
    if wanted is not None and describe(c).name != wanted:
        address, named_by = engine_address()
        raise UsageError(
            f"--engine {wanted}: the engine at {address or 'the default socket'} "
            f"({named_by}) is {describe(c).name.capitalize()}; point DOCKER_HOST at "
            f"{wanted.capitalize()}'s socket, or unset {ENGINE_ENV} (--engine) to use "
            "the engine it names"
        )
    return c


_described: dict[str, Engine] = {}


def describe(c: DockerClient | None = None) -> Engine:
    """Which engine answers (Podman names itself among the version's components), its
    version, and whether it is rootless: Podman's own info says so; Docker lists
    `name=rootless` among its security options."""
    c = c or client()
    key = str(c.api.base_url)
    if key not in _described:
        version = c.version()
        names = [str(part.get("Name", "")) for part in version.get("Components") or []]
        if any(name.startswith("Podman") for name in names):
            libpod = c.api._result(c.api._get(c.api._url("/libpod/info")), json=True)
            rootless = bool(libpod.get("host", {}).get("security", {}).get("rootless"))
            _described[key] = Engine("podman", str(version.get("Version", "?")), rootless)
        else:
            options = c.info().get("SecurityOptions") or []
            rootless = any("name=rootless" in str(o) for o in options)
            _described[key] = Engine("docker", str(version.get("Version", "?")), rootless)
    return _described[key]


def image_info(ref: str) -> ImageInfo | None:
    """The image `ref` names, or None when the engine has no such image."""
    from docker.errors import ImageNotFound

    try:
        image = client().images.get(ref)
    except ImageNotFound:
        return None
    return ImageInfo.from_inspect(image.attrs)


def remove_image(image_id: str) -> bool:
    """Remove an image no container or tag still uses; False when the engine keeps it."""
    from docker.errors import APIError

    try:
        client().images.remove(image_id)
        return True
    except APIError:
        return False


def list_images(labels: dict[str, str | None]) -> list[ImageInfo]:
    """The top-level images (dangling ones included) carrying every label in `labels`
    (with that value; None: any value)."""
    from docker.errors import ImageNotFound

    wanted = [k if v is None else f"{k}={v}" for k, v in labels.items()]
    api = client().api
    found = []
    for summary in api.images(filters={"label": wanted}):
        with suppress(ImageNotFound):  # removed since the listing
            found.append(ImageInfo.from_inspect(api.inspect_image(summary["Id"])))
    return found


def images_in_use() -> set[str]:
    """The IDs of the images some container, running or stopped, was created from."""
    return {c["ImageID"] for c in client().api.containers(all=True) if c.get("ImageID")}


def pull(ref: str) -> Result:
    """Pull `ref`, showing the bytes fetched; a Result whose stderr says why it failed."""
    from docker.errors import DockerException

    repo, tag = _split_ref(ref)
    try:
        events = client().api.pull(repo, tag=tag, stream=True, decode=True)
        error = _layer_progress(events, f"pulling {ref}")
    except (DockerException, RuntimeFailure) as exc:
        error = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no answer"
    return Result(1, "", error) if error else Result(0)


def import_rootfs(tarball: str, tag: str, changes: list[str]) -> Result:
    """A base image from a root filesystem tarball (`docker import`), imported unnamed
    and then tagged: Podman's import ignores the API's `tag` (it would name the image
    docker.io/library/REPO:latest)."""
    import re

    from docker.errors import DockerException

    repo, name = _split_ref(tag)
    try:
        api = client().api
        answer = str(api.import_image(src=tarball, changes=changes))
        ids = re.findall(r"sha256:[0-9a-f]{64}", answer)
        if not ids:
            return Result(1, "", f"the engine did not name the imported image: {answer[-300:]}")
        api.tag(ids[-1], repo, name)
    except DockerException as exc:
        return Result(1, "", str(exc))
    return Result(0)


def build(context: str, tag: str, build_args: dict[str, str], no_cache: bool) -> Result:
    """Build with the engine's (classic) builder, its log streamed to our stderr (stdout
    is the answer of the command that needed the image)."""
    from docker.errors import DockerException

    try:
        for event in client().api.build(
            path=context,
            tag=tag,
            buildargs=build_args,
            nocache=no_cache,
            rm=True,
            forcerm=True,
            decode=True,
        ):
            if event.get("stream"):
                sys.stderr.write(event["stream"])
                sys.stderr.flush()
            if event.get("error"):
                return Result(1, "", str(event["error"]).strip())
    except DockerException as exc:
        return Result(1, "", str(exc))
    return Result(0)


def _split_ref(ref: str) -> tuple[str, str]:
    """`host:5000/a/b:tag` → (`host:5000/a/b`, `tag`), `repo@sha256:…` → (`repo`,
    `sha256:…`) (the API takes a digest where a tag goes); no tag: latest."""
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(ref)
    return repo, tag or "latest"


def _layer_progress(events, what: str) -> str | None:
    """Show a pull's or push's bytes as one bar over all layers; the error, if any."""
    from toolkit.bars import bar

    done: dict[str, int] = {}
    with bar(None, what, unit="B", scale=True) as shown:
        for event in events:
            if event.get("error"):
                return str(event["error"])
            current = (event.get("progressDetail") or {}).get("current")
            layer = event.get("id")
            if layer and current is not None:
                shown.update(max(0, current - done.get(layer, 0)))
                done[layer] = max(current, done.get(layer, 0))
    return None


def save(ref: str, path: str) -> ImageInfo:
    """Write the image `ref` names, with its tags, as a `docker save` archive at `path`:
    a file created now (never over another, never through a link), complete or absent,
    readable by this user alone (mkstemp's 0600)."""
    import tempfile

    from docker.errors import ImageNotFound

    try:
        image = client().images.get(ref)
    except ImageNotFound:
        raise UsageError(f"{ref}: no such image on this engine") from None
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.lexists(path):
        raise UsageError(f"{path} exists; toolkit writes an archive only as a new file")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in image.save(named=True):
                f.write(chunk)
        os.link(tmp, path)  # the name, only if it is still free
    except FileExistsError:
        raise UsageError(f"{path} appeared meanwhile; nothing was written over it") from None
    finally:
        os.unlink(tmp)
    return ImageInfo.from_inspect(image.attrs)


def load(path: str) -> list[ImageInfo]:
    """Load a `docker save` archive; the images it held."""
    from docker.errors import APIError, ImageLoadError

    from toolkit import safe_io

    try:
        fd = safe_io.open_file(path, follow=True)  # the user's own file, wherever it is
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file; give a `toolkit images export` archive") from None
    except safe_io.NotRegular as exc:
        raise UsageError(f"{path} is {exc.kind}, not an image archive") from None
    try:
        with os.fdopen(fd, "rb") as f:
            loaded = client().images.load(f)
    except (APIError, ImageLoadError) as exc:
        detail = exc.explanation if isinstance(exc, APIError) else str(exc)
        raise UsageError(
            f"{path}: not an image archive the engine can load ({detail or exc})"
        ) from None
    return [ImageInfo.from_inspect(image.attrs) for image in loaded]


def push(local: str, remote: str) -> ImageInfo:
    """Tag `local` as `remote` and push it, showing the bytes sent (a bar on a terminal,
    plain lines in a log); return the pushed image (its digests name the registry's)."""
    from docker.errors import APIError

    engine = client()
    repo, tag = _split_ref(remote)
    try:
        engine.images.get(local).tag(repo, tag)
        error = _layer_progress(
            engine.api.push(repo, tag=tag, stream=True, decode=True), f"pushing {remote}"
        )
    except APIError as exc:
        error = exc.explanation or str(exc)
    if error:
        raise RuntimeFailure(
            f"pushing {remote} failed: {error}; log in first (`docker login "
            f"{repo.split('/')[0]}`) if the registry needs it"
        )
    info = image_info(remote)
    if info is None:
        raise RuntimeFailure(f"pushed {remote}, but the engine no longer has it")
    return info


def create_kwargs(spec: RunSpec, name: str, rootless: bool = False) -> dict:
    """The API's fields for a spec (pure). Secrets are not among them: a spec that has
    some gets an open stdin and the receiver before its command. On a rootless engine
    the container's root is the invoking user, so no user is asked for (spec.Engine)."""
    from docker.types import DeviceRequest, Mount, Ulimit

    env = [f"{k}={v}" for k, v in spec.env.items()]
    env += [f"{k}={v}" for k, v in spec.devices.env]
    d = spec.devices
    kwargs: dict = dict(
        image=spec.image,
        command=[*SECRETS_RECEIVER, *spec.command] if spec.secrets else spec.command,
        name=name,
        labels={LABEL: "1"},
        user=None if rootless else spec.user,
        working_dir=spec.workdir,
        environment=env,
        init=True,
        detach=True,
        stdin_open=bool(spec.secrets),
        network_mode=spec.network,
        mounts=[
            Mount(target=m.container, source=m.host, type="bind", read_only=m.read_only)
            for m in spec.mounts
        ],
    )
    if d.gpus:
        request = (
            DeviceRequest(count=-1, capabilities=[["gpu"]])
            if d.gpus == "all"
            else DeviceRequest(device_ids=d.gpus.split(","), capabilities=[["gpu"]])
        )
        kwargs["device_requests"] = [request]
    if d.devices:
        kwargs["devices"] = [f"{node}:{node}:rwm" for node in d.devices]
    if d.group_add:
        kwargs["group_add"] = list(d.group_add)
    if d.security_opt:
        kwargs["security_opt"] = list(d.security_opt)
    if d.ipc_host:
        kwargs["ipc_mode"] = "host"
    if d.ulimits:
        kwargs["ulimits"] = [Ulimit(name=n, soft=v, hard=v) for n, v in d.ulimits]
    if d.shm_size:
        kwargs["shm_size"] = d.shm_size
    return kwargs


def run(spec: RunSpec, keep_fds: tuple[int, ...] = (), stdout: BinaryIO | None = None) -> int:
    """Run a container as `spec` says, its output streamed to ours (its stdout to `stdout`
    when given); return its exit code. `keep_fds` (the output folder's lock) stay open in
    the reaper until the container is removed."""
    from docker.errors import APIError, ImageNotFound

    engine = client()
    name = f"toolkit-{uuid.uuid4().hex[:12]}"
    # The reaper starts first and finds the container by name: a CLI killed between
    # creating it and starting it leaves nothing behind either.
    with _reaper(name, keep_fds):
        try:
            rootless = describe(engine).rootless
            container = engine.containers.create(**create_kwargs(spec, name, rootless))
        except ImageNotFound:
            raise UsageError(
                f"image {spec.image}: not on this engine; build it with "
                "`toolkit images build VARIANT` or pull it"
            ) from None
        except APIError as exc:
            raise RuntimeFailure(
                f"the engine refused to create the container: {exc.explanation or exc}"
            ) from None
        try:
            stdin = _attach_stdin(engine, container.id) if spec.secrets else None
            stream = engine.api.attach(
                container.id, stdout=True, stderr=True, stream=True, logs=True, demux=True
            )
            with _forwarding(container):
                container.start()
                if stdin is not None:
                    _send(stdin, secrets_payload(spec.secrets, os.environ))
                for out, err in stream:
                    if out and stdout is not None:
                        stdout.write(out)
                    elif out:  # sys.stdout at the time: train --json sends logs to stderr
                        sys.stdout.buffer.write(out)
                        sys.stdout.flush()
                    if err:
                        sys.stderr.buffer.write(err)
                        sys.stderr.flush()
                code = container.wait()["StatusCode"]
        except APIError as exc:
            raise RuntimeFailure(
                f"the engine could not run {name}: {exc.explanation or exc}"
            ) from None
        finally:
            _remove(container)
    return code


def _attach_stdin(engine: DockerClient, container_id: str) -> Any:
    """A connection to the container's stdin. The detach key is NUL, which the ASCII
    payload never holds (a detach key from the user's docker config could be a letter)."""
    return engine.api.attach_socket(
        container_id, params={"stdin": 1, "stream": 1, "detachKeys": "ctrl-@"}
    )


def _send(sock: Any, payload: bytes) -> None:
    """Write the secrets line to the container's stdin and close our end."""
    import socket

    raw = getattr(sock, "_sock", sock)  # a unix socket comes wrapped in a SocketIO
    try:
        raw.sendall(payload)
    except OSError as exc:
        raise RuntimeFailure(
            f"could not hand the run's credentials to its container ({exc.strerror or exc})"
        ) from None
    finally:
        with suppress(OSError, AttributeError):
            raw.shutdown(socket.SHUT_WR)
        with suppress(OSError):
            sock.close()


def _remove(container) -> None:
    from docker.errors import APIError, NotFound

    try:
        container.remove(force=True)
    except NotFound:
        pass
    except APIError as exc:
        print(
            f"toolkit: could not remove container {container.name}: {exc}; remove it with "
            f"`docker rm -f {container.name}`",
            file=sys.stderr,
        )


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextmanager
def _forwarding(container) -> Iterator[None]:
    """Signals to us go to the container while it runs (from a thread: the handler must
    not make an HTTP call while the main thread may be inside one)."""

    def forward(signum, frame) -> None:
        # SIGHUP (the terminal closed) stops the run as SIGTERM does: with a checkpoint.
        sent = signal.SIGTERM if signum == signal.SIGHUP else signum
        threading.Thread(target=_kill, args=(container, sent), daemon=True).start()

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; nothing to install here
        return
    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _kill(container, signum: int) -> None:
    from docker.errors import APIError

    with suppress(APIError):  # it has exited already
        container.kill(signal=signum)


@contextmanager
def _reaper(container: str, keep_fds: tuple[int, ...]) -> Iterator[None]:
    """Start the reaper for `container` (a name or ID); on leaving, let it go and wait."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "toolkit.containers.engine", "reap", container, str(read_end)],
        pass_fds=(read_end, *keep_fds),
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(read_end)
    try:
        yield
    finally:
        os.close(write_end)
        proc.wait()


def reap(container_id: str, read_end: int) -> None:
    """Block until the CLI closes the pipe (it finished, or died), then make sure the
    container is gone."""
    while os.read(read_end, 1024):
        pass
    from docker.errors import DockerException, NotFound

    try:
        container = _connect(STOP_GRACE_S + 60).containers.get(container_id)
    except NotFound:
        return
    except DockerException:
        return
    try:
        container.stop(timeout=STOP_GRACE_S)
        container.remove(force=True)
    except DockerException:
        pass


if __name__ == "__main__" and sys.argv[1:2] == ["reap"]:
    reap(sys.argv[2], int(sys.argv[3]))
