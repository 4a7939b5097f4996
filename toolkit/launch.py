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
    writes = [Path(cfg.output_dir).expanduser()]
    if cfg.dataset_prepared_path:
        writes.append(Path(cfg.dataset_prepared_path).expanduser())
    return reads, writes, remote


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


def device_flags(accelerator: str, gpus: str | None = None,
                 amd_gids: tuple[int, ...] = ()) -> list[str]:
    """docker run flags that give a container its GPUs, per vendor (pure).

    `gpus` is "all" (or None) or a comma list of indexes; NVIDIA maps it to a
    device request, AMD to HIP_VISIBLE_DEVICES. AMD's device nodes belong to the
    host's video/render groups, added by number because the image may not know
    their names.
    """
    some = gpus not in (None, "all")
    if accelerator == "cuda":
        request = f'"device={gpus}"' if some else "all"
        return ["--gpus", request, "--ipc=host", "--ulimit", "memlock=-1",
                "--ulimit", "stack=67108864"]
    if accelerator == "rocm":
        flags = ["--device", "/dev/kfd", "--device", "/dev/dri"]
        for gid in amd_gids or ("video",):
            flags += ["--group-add", str(gid)]
        flags += ["--security-opt", "seccomp=unconfined", "--ipc=host"]
        if some:
            flags += ["--env", f"HIP_VISIBLE_DEVICES={gpus}"]
        return flags
    return ["--shm-size", "1g"]


def amd_group_ids() -> tuple[int, ...]:
    """Groups owning /dev/kfd and the render nodes on this host."""
    paths = [Path("/dev/kfd"), *sorted(Path("/dev/dri").glob("renderD*"))]
    return tuple(sorted({p.stat().st_gid for p in paths if p.exists()}))


def container_spec(image: str, image_id: str, command: list[str], reads: list[Path],
                   writes: list[Path], network: bool | str, devices: list[str] | None = None
                   ) -> RunSpec:
    """`network`: True for the default bridge, False for none, "host" for multi-node runs
    (the ranks must reach each other's ports)."""
    env: dict[str, str | None] = {"TOOLKIT_IMAGE": image, "TOOLKIT_IMAGE_ID": image_id}
    env.update({name: None for name in SECRET_ENV if name in os.environ})
    return RunSpec(
        image=image,
        command=command,
        mounts=plan_mounts(reads, writes),
        user=host_user(),
        workdir=os.getcwd(),
        env=env,
        network="host" if network == "host" else None if network else "none",
        extra=devices if devices is not None else device_flags("cpu"),
    )


def run_in_container(runtime: Runtime, image: str, command: list[str], reads: list[Path],
                     writes: list[Path], network: bool | str = False,
                     gpus: str | None = None) -> int:
    """Run `command` in `image` with the given paths mounted; stream logs; return its exit code."""
    docker = Docker(runtime)
    info = docker.inspect_image(image) or {}
    labels = (info.get("Config") or {}).get("Labels") or {}
    accelerator = labels.get("io.toolkit.accelerator", "cpu")
    gids = amd_group_ids() if accelerator == "rocm" else ()
    for path in writes:
        path.mkdir(parents=True, exist_ok=True)
    spec = container_spec(image, info.get("Id", ""), command, reads, writes, network,
                          device_flags(accelerator, gpus, gids))
    note = ("on the host's network (multi-node)" if network == "host" else
            "with network access (a model or dataset is remote)" if network else
            "without network")
    print(f"toolkit: running in {image} as {spec.user}, {note}", file=sys.stderr, flush=True)
    return docker.run(spec)


def choose_image(runtime: Runtime, image: str | None, variant: str | None) -> str:
    """The image a heavy command runs in, after the host preflight.

    `image` is a tag the user gave; `variant` a matrix row; neither: the variant
    `images select` picks for this host. A FAIL in the preflight refuses the run
    unless TOOLKIT_SKIP_PREFLIGHT=1.
    """
    from toolkit import doctor, images, probe
    from toolkit.compat import Status
    from toolkit.errors import RuntimeFailure, UsageError

    docker = Docker(runtime)
    docker.require()
    matrix = images.load_matrix()
    if image:
        info = docker.inspect_image(image)
        if info is None:
            raise UsageError(f"--image {image}: no such image here; build one with "
                             "`toolkit images build VARIANT` or `docker pull` it")
        variant = ((info.get("Config") or {}).get("Labels") or {}).get("io.toolkit.variant")
    if os.environ.get(doctor.SKIP_ENV) == "1":
        host_variant = variant or images.DEFAULT_VARIANT
        print(f"toolkit: preflight skipped ({doctor.SKIP_ENV}=1); image variant "
              f"{host_variant} (pass --variant or --image to choose)", file=sys.stderr)
    else:
        host = probe.gather(runtime)
        findings = doctor.host_checks(host, list(matrix.values()), wanted=variant)
        failed = [f for f in findings if f.status == Status.FAIL]
        if failed:
            raise RuntimeFailure(
                f"preflight failed; fix these or set {doctor.SKIP_ENV}=1 to run anyway",
                [f"{f.check}: {f.message}" + (f"; fix: {f.fix}" if f.fix else "")
                 for f in failed])
        from toolkit.compat import select

        host_variant = variant or select(host.facts, [v.facts() for v in matrix.values()]).variant
    if image:
        return image
    if host_variant not in matrix:
        raise UsageError(f"unknown image variant {host_variant!r}; see `toolkit images list`")
    return images.ensure_image(matrix[host_variant], runtime)


def torchrun(runtime: Runtime, args, distributed: list[str], extra: list[str]) -> int:
    """Launch `toolkit train` once per process with torchrun (DDP; gloo on CPU, NCCL on GPU).
    Each process sees LOCAL_RANK and runs the recipe; rank 0 writes the outputs."""
    argv = [sys.executable, "-m", "torch.distributed.run", *distributed,
            "-m", "toolkit", "train", str(Path(args.config).absolute()), "--runtime", "local",
            *extra]
    print(f"toolkit: torchrun {' '.join(distributed)}", file=sys.stderr, flush=True)
    return runtime.run(argv, capture=False).returncode
