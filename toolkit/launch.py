"""Where a heavy command runs: in this process, or in the toolkit image.

Outside a container the default is the image: the same toolkit runs there with
`--runtime local`, the config and the data mounted read-only at their own
absolute paths, `output_dir` read-write, as the invoking user's UID:GID so the
outputs belong to the user. Inside a container (the image sets
TOOLKIT_IN_CONTAINER=1) the default is local, so `make train` works there too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from toolkit.config import Config, is_local_ref
from toolkit.runtime import Docker, Mount, RunSpec, Runtime

# Credentials a run may need; passed by name only, never by value.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def in_container() -> bool:
    return os.environ.get("TOOLKIT_IN_CONTAINER") == "1"


def default_runtime() -> str:
    return "local" if in_container() else "docker"


def config_paths(cfg: Config) -> tuple[list[Path], list[Path], bool]:
    """(read-only paths, read-write paths, needs network) for a config's run."""
    reads, remote = [], False
    for ref in (cfg.base_model, cfg.tokenizer_config, *(d.path for d in cfg.datasets)):
        if ref is None:
            continue
        if is_local_ref(ref):
            reads.append(Path(ref).expanduser())
        else:
            remote = True
    return reads, [Path(cfg.output_dir).expanduser()], remote


def plan_mounts(reads: list[Path], writes: list[Path]) -> list[Mount]:
    """Bind mounts at the paths' own absolute locations; nested duplicates folded."""
    writes = [w.absolute() for w in writes]
    reads = [r.absolute() for r in reads]
    mounts: list[Mount] = []
    for path in sorted(set(writes)):
        if not any(path != w and w in path.parents for w in writes):
            mounts.append(Mount(str(path.resolve()), str(path), read_only=False))
    for path in sorted(set(reads)):
        covered = path in writes or any(p in path.parents for p in [*reads, *writes])
        if not covered:
            mounts.append(Mount(str(path.resolve()), str(path), read_only=True))
    return mounts


def host_user() -> str:
    """UID:GID the container runs as, so its outputs belong to whoever ran toolkit."""
    return f"{os.getuid()}:{os.getgid()}"


def container_spec(image: str, image_id: str, command: list[str], reads: list[Path],
                   writes: list[Path], network: bool) -> RunSpec:
    env: dict[str, str | None] = {"TOOLKIT_IMAGE": image, "TOOLKIT_IMAGE_ID": image_id}
    env.update({name: None for name in SECRET_ENV if name in os.environ})
    return RunSpec(
        image=image,
        command=command,
        mounts=plan_mounts(reads, writes),
        user=host_user(),
        workdir=os.getcwd(),
        env=env,
        network=None if network else "none",
        extra=["--shm-size", "1g"],
    )


def run_in_container(runtime: Runtime, image: str, command: list[str], reads: list[Path],
                     writes: list[Path], network: bool = False) -> int:
    """Run `command` in `image` with the given paths mounted; stream logs; return its exit code."""
    docker = Docker(runtime)
    info = docker.inspect_image(image) or {}
    for path in writes:
        path.mkdir(parents=True, exist_ok=True)
    spec = container_spec(image, info.get("Id", ""), command, reads, writes, network)
    note = "with network access (a model or dataset is remote)" if network else "without network"
    print(f"toolkit: running in {image} as {spec.user}, {note}", file=sys.stderr, flush=True)
    return docker.run(spec)
