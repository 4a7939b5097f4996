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

from toolkit import cache
from toolkit.config import Config, is_local_ref
from toolkit.errors import UsageError
from toolkit.outputs import RUN_LOCK_ENV
from toolkit.publish import HOST_PUBLISHES
from toolkit.runtime import Devices, Mount, RunSpec, Runtime
from toolkit.trainer import trackers


def run_secrets(command: str, cfg: Config) -> tuple[str, ...]:
    """The credentials `toolkit COMMAND` needs in its container, by name: a training's
    trackers' (trackers.credentials), nothing for any other command. Never a Hugging
    Face token or an object store's keys: Hub inputs and remote datasets are fetched on
    the host (toolkit.hub, toolkit.remote) and publishing goes from the host
    (toolkit.publish)."""
    return trackers.credentials(cfg, os.environ) if command == "train" else ()


def vm_secrets(cfg: Config) -> tuple[str, ...]:
    """The credentials a training on a VM may need, by name, for the launch files. This
    machine's environment does not decide them: an unset W&B mode is online there when the
    VM's secrets hold WANDB_API_KEY (names it lacks are dropped on the VM)."""
    return trackers.credentials(cfg, {name: "on the VM" for name in trackers.WANDB_CREDENTIALS})


def in_container() -> bool:
    return os.environ.get("TOOLKIT_IN_CONTAINER") == "1"


def default_runtime() -> str:
    return "local" if in_container() else "docker"


def config_paths(cfg: Config) -> tuple[list[Path], list[Path], bool]:
    """(read-only paths, read-write paths, needs network) for a config's run. Hub inputs
    the host fetched (TOOLKIT_HUB_PINS) are read from their cache folders, offline."""
    from toolkit.hub import read_pins

    pins = read_pins().values()
    pinned = {p.repo for p in pins}
    reads, remote = [p.folder for p in pins], False
    for ref in (cfg.base_model, cfg.tokenizer_config, *(d.path for d in cfg.datasets)):
        if ref is None or ref in pinned:
            continue
        if is_local_ref(ref):
            reads.append(Path(ref).expanduser())
        else:
            remote = True
    writes = [Path(cfg.output_dir).expanduser()]
    if cfg.dataset_prepared_path:
        writes.append(Path(cfg.dataset_prepared_path).expanduser())
    store = trackers.local_store(cfg)  # a local MLflow store the run writes to
    if store is not None:
        writes.append(store)
    return reads, writes, remote or trackers.needs_network(cfg)


def plan_mounts(reads: list[Path], writes: list[Path]) -> list[Mount]:
    """Bind mounts at the paths' own absolute locations (pure).

    A write inside another write is covered by it. A read inside another read is covered
    by it unless a write lies between them. A read never folds into a write: one nested
    in an output folder gets a read-only mount of its own, on top of the writable one
    (the engine mounts parents first), and a read equal to a write stays read-only.
    """
    writes = sorted({w.absolute() for w in writes})
    reads = sorted({r.absolute() for r in reads})

    def inside(path: Path, folder: Path) -> bool:
        return folder in path.parents

    mounts: list[Mount] = []
    for path in writes:
        if path not in reads and not any(inside(path, w) for w in writes):
            mounts.append(Mount(str(path.resolve()), str(path), read_only=False))
    for path in reads:
        covered = any(
            inside(path, r)
            and not any(inside(w, r) and (w == path or inside(path, w)) for w in writes)
            for r in reads
        )
        if not covered:
            mounts.append(Mount(str(path.resolve()), str(path), read_only=True))
    return sorted(mounts, key=lambda m: (m.container.count("/"), m.container))


def host_user() -> str:
    """UID:GID the container runs as, so its outputs belong to whoever ran toolkit."""
    return f"{os.getuid()}:{os.getgid()}"


def device_flags(
    accelerator: str, gpus: str | None = None, amd_gids: tuple[int | str, ...] = ()
) -> Devices:
    """What a container needs to reach its GPUs, per vendor (pure).

    `gpus` is "all" (or None) or a comma list of indexes; NVIDIA maps it to a
    device request, AMD to HIP_VISIBLE_DEVICES. AMD's device nodes belong to the
    host's video/render groups, added by number because the image may not know
    their names.
    """
    some = gpus is not None and gpus != "all"
    if accelerator == "cuda":
        return Devices(
            gpus=gpus if gpus is not None and some else "all",
            ipc_host=True,
            ulimits=(("memlock", -1), ("stack", 67108864)),
        )
    if accelerator == "rocm":
        return Devices(
            devices=("/dev/kfd", "/dev/dri"),
            group_add=tuple(str(g) for g in amd_gids or ("video",)),
            security_opt=("seccomp=unconfined",),
            ipc_host=True,
            env=(("HIP_VISIBLE_DEVICES", gpus),) if gpus is not None and some else (),
        )
    return Devices(shm_size="1g")


# The device node each vendor's driver makes when a GPU is there (what the container
# runtime passes in).
GPU_NODES = {"cuda": "/dev/nvidiactl", "rocm": "/dev/kfd"}


def gpu_nodes(accelerator: str) -> bool:
    """Whether this host has the device node of `accelerator`'s GPUs."""
    return os.path.exists(GPU_NODES[accelerator])


def amd_group_ids() -> tuple[int, ...]:
    """Groups owning /dev/kfd and the render nodes on this host."""
    paths = [Path("/dev/kfd"), *sorted(Path("/dev/dri").glob("renderD*"))]
    return tuple(sorted({p.stat().st_gid for p in paths if p.exists()}))


def container_spec(
    image: str,
    image_id: str,
    command: list[str],
    reads: list[Path],
    writes: list[Path],
    network: bool | str,
    devices: Devices | None = None,
    secrets: tuple[str, ...] = (),
) -> RunSpec:
    """`network`: True for the default bridge, False for none, "host" for multi-node runs
    (the ranks must reach each other's ports). `secrets`: the credentials the command
    needs, by name (run_secrets); those set here go in on the container's stdin."""
    env: dict[str, str] = {"TOOLKIT_IMAGE": image, "TOOLKIT_IMAGE_ID": image_id}
    if os.environ.get(RUN_LOCK_ENV):
        env[RUN_LOCK_ENV] = os.environ[RUN_LOCK_ENV]
    env.update(hub_environment())
    env[HOST_PUBLISHES] = "1"  # pushes go from the host (toolkit.publish)
    return RunSpec(
        image=image,
        command=command,
        mounts=plan_mounts(reads, writes),
        user=host_user(),
        workdir=os.getcwd(),
        env=env,
        network="host" if network == "host" else None if network else "none",
        devices=devices if devices is not None else device_flags("cpu"),
        secrets=tuple(name for name in dict.fromkeys(secrets) if name in os.environ),
    )


def hub_environment() -> dict[str, str]:
    """For a run whose Hub inputs the host pinned: where the cache is (mounted read-only
    at the same path), the pins, and offline mode, so nothing is fetched inside."""
    from toolkit import hub

    if not os.environ.get(hub.PINS_ENV):
        return {}
    return {
        hub.PINS_ENV: os.environ[hub.PINS_ENV],
        "HF_HUB_CACHE": str(hub.hub_cache()),
        **hub.OFFLINE_ENV,
    }


COMPILE_MOUNT = "/var/cache/toolkit-compile"


def compile_cache(image_id: str) -> Path:
    """The image's own folder for what its compilers build (Triton, TorchInductor, CUDA,
    torch extensions), kept between runs; writable by the user the container runs as."""
    folder = cache.compile_folder(image_id)
    for sub in cache.COMPILE_ENV.values():
        (folder / sub).mkdir(parents=True, exist_ok=True)
    uid, gid = (int(x) for x in host_user().split(":"))
    if os.geteuid() == 0 and uid != 0:  # root on the host, another user in the container
        for path in [folder, *(folder / sub for sub in cache.COMPILE_ENV.values())]:
            os.chown(path, uid, gid)
    return folder


def run_in_container(
    image: str,
    command: list[str],
    reads: list[Path],
    writes: list[Path],
    network: bool | str = False,
    gpus: str | None = None,
    keep_fds: tuple[int, ...] = (),
    secrets: tuple[str, ...] = (),
) -> int:
    """Run `command` in `image` with the given paths mounted and the named credentials
    (run_secrets) on its stdin; stream logs; return its exit code."""
    from toolkit import engine

    info = engine.image_info(image)
    if info is None:
        raise UsageError(
            f"image {image}: not on this engine; build it with "
            "`toolkit images build VARIANT` or pull it"
        )
    accelerator = info.labels.get("io.toolkit.accelerator", "cpu")
    if gpus is None and accelerator in GPU_NODES and not gpu_nodes(accelerator):
        # A CUDA or ROCm image on a host without that vendor's GPUs (a portability check on
        # a CPU machine): asking the engine for GPUs would fail; torch falls back to the CPU.
        print(
            f"toolkit: no {accelerator.upper()} GPU on this host ({GPU_NODES[accelerator]} "
            f"absent): {image} runs on the CPU",
            file=sys.stderr,
        )
        accelerator = "cpu"
    gids = amd_group_ids() if accelerator == "rocm" else ()
    for path in writes:
        path.mkdir(parents=True, exist_ok=True)
    devices = device_flags(accelerator, gpus, gids)
    spec = container_spec(image, info.id, command, reads, writes, network, devices, secrets)
    # The image's compile caches, at a path of their own inside (not under a home
    # folder the container's user may not own).
    spec.mounts.append(Mount(str(compile_cache(info.id)), COMPILE_MOUNT, read_only=False))
    spec.env.update(cache.compile_env(Path(COMPILE_MOUNT)))
    note = (
        "on the host's network (multi-node)"
        if network == "host"
        else "with network access (a remote model, dataset or tracker)"
        if network
        else "without network"
    )
    if spec.secrets:  # names only
        note += f", given {', '.join(spec.secrets)} on its stdin"
    print(f"toolkit: running in {image} as {spec.user}, {note}", file=sys.stderr, flush=True)
    return engine.run(spec, keep_fds)


def choose_image(runtime: Runtime, image: str | None, variant: str | None) -> str:
    """The image a heavy command runs in, after the host preflight.

    `image` is a tag the user gave; `variant` a matrix row; neither: the variant
    `images select` picks for this host. A FAIL in the preflight refuses the run
    unless TOOLKIT_SKIP_PREFLIGHT=1.
    """
    from toolkit import doctor, images, probe
    from toolkit.compat import Status
    from toolkit.errors import RuntimeFailure

    docker = runtime.docker()
    docker.require()
    matrix = images.load_matrix()
    if image:
        info = docker.inspect_image(image)
        if info is None:
            raise UsageError(
                f"--image {image}: no such image here; build one with "
                "`toolkit images build VARIANT` or `docker pull` it"
            )
        variant = info.labels.get("io.toolkit.variant")
    if os.environ.get(doctor.SKIP_ENV) == "1":
        host_variant = variant or images.DEFAULT_VARIANT
        print(
            f"toolkit: preflight skipped ({doctor.SKIP_ENV}=1); image variant "
            f"{host_variant} (pass --variant or --image to choose)",
            file=sys.stderr,
        )
    else:
        host = probe.gather(runtime)
        present = set(matrix) if image else images.variants_here(docker, matrix)
        findings = doctor.host_checks(host, list(matrix.values()), variant, present)
        failed = [f for f in findings if f.status == Status.FAIL]
        if failed:
            raise RuntimeFailure(
                f"preflight failed; fix these or set {doctor.SKIP_ENV}=1 to run anyway",
                [f"{f.check}: {f.message}" + (f"; fix: {f.fix}" if f.fix else "") for f in failed],
            )
        from toolkit.compat import select

        host_variant = (
            variant or select(host.facts, [v.facts() for v in matrix.values()]).variant or ""
        )
    if image:
        return image
    if host_variant not in matrix:
        raise UsageError(f"unknown image variant {host_variant!r}; see `toolkit images list`")
    return images.ensure_image(matrix[host_variant], runtime)


def torchrun(runtime: Runtime, args, distributed: list[str], extra: list[str]) -> int:
    """Launch `toolkit train` once per process with torchrun (DDP; gloo on CPU, NCCL on GPU).
    Each process sees LOCAL_RANK and runs the recipe; rank 0 writes the outputs."""
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *distributed,
        "-m",
        "toolkit",
        "train",
        str(Path(args.config).absolute()),
        "--runtime",
        "local",
        *extra,
    ]
    print(f"toolkit: torchrun {' '.join(distributed)}", file=sys.stderr, flush=True)
    code, signalled = runtime.run_child(argv)
    if code and signalled is not None:
        from toolkit.errors import Preempted

        raise Preempted(
            f"stopped by signal {signalled}: torchrun's processes saved a checkpoint "
            "where they could. Run the same command again to resume from the "
            "newest complete one"
        )
    return code
