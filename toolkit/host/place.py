"""Where a heavy command runs — this process, torchrun's processes, or the toolkit
image — and running a `RunPlan` there (`execute`).

Outside a container the default is the image: the plan's file is mounted read-only and
`python -m toolkit.trainer PLAN` carries it out, with the paths the plan reads mounted
read-only at their own absolute locations, those it writes read-write, as the invoking
user's UID:GID so the outputs belong to the user, and the credentials it names on the
container's stdin. Inside a container (the image sets TOOLKIT_IN_CONTAINER=1) the
default is local, so `make train` works there too.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toolkit import cache
from toolkit.containers.seam import Runtime
from toolkit.containers.spec import Devices, Mount, RunSpec
from toolkit.errors import RuntimeFailure, UsageError
from toolkit.pins import OFFLINE_ENV, hub_cache
from toolkit.plan import RunPlan, written


@dataclass(frozen=True)
class Placement:
    """Where to run (the --runtime, --image, --variant and --gpus options)."""

    runtime: Literal["docker", "local"] | None = None
    image: str | None = None
    variant: str | None = None
    gpus: str | None = None

    def chosen(self) -> Literal["docker", "local"]:
        """docker or local, as given or by default; local only where the training stack
        is installed (the light install runs the image), said before any Hub fetch."""
        chosen: Literal["docker", "local"] = self.runtime or default_runtime()
        if chosen == "docker" and in_container():
            raise UsageError(
                "--runtime docker inside the toolkit container: Docker is not "
                "available here; drop the flag (local is the default inside)"
            )
        if chosen == "local":
            from importlib.util import find_spec

            stack = ("torch", "transformers", "peft", "datasets", "accelerate")
            missing = [name for name in stack if find_spec(name) is None]
            if missing:
                raise RuntimeFailure(
                    f"--runtime local runs the trainer in this Python environment, which "
                    f"lacks {', '.join(missing)}: pip install 'qwen-posttrain[train]' (or "
                    "drop --runtime local to run in the toolkit image)"
                )
        return chosen


@dataclass(frozen=True)
class Distributed:
    """torchrun's layout (the --nproc-per-node, --nnodes, --node-rank, --master-addr and
    --master-port options)."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def flags(self) -> list[str]:
        """torchrun's flags, or [] for one process on one machine."""
        if self.world_size == 1:
            return []
        return [
            f"--nproc-per-node={self.nproc_per_node}",
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}",
        ]


def in_container() -> bool:
    return os.environ.get("TOOLKIT_IN_CONTAINER") == "1"


def default_runtime() -> Literal["docker", "local"]:
    return "local" if in_container() else "docker"


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


def choose_image(runtime: Runtime, image: str | None, variant: str | None) -> str:
    """The image a heavy command runs in, after the host preflight.

    `image` is a tag the user gave; `variant` a matrix row; neither: the variant
    `images select` picks for this host. A FAIL in the preflight refuses the run
    unless TOOLKIT_SKIP_PREFLIGHT=1.
    """
    from toolkit import images
    from toolkit.compat import Status
    from toolkit.errors import RuntimeFailure
    from toolkit.host import doctor, probe

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


def execute(
    plan: RunPlan,
    where: Placement,
    distributed: Distributed = Distributed(),
    keep_fds: tuple[int, ...] = (),
    runtime: Runtime | None = None,
) -> int:
    """Carry out `plan` where `where` says, through `runtime` (the seam to processes and
    the engine); the exit code (0: done). In this process the trainer's errors propagate
    as they are; in torchrun or the image, their exit code."""
    runtime = runtime or Runtime()
    if where.chosen() == "docker":
        image = choose_image(runtime, where.image, where.variant)
        with written(plan) as path:
            return run_in_image(runtime, plan, path, image, where.gpus, distributed, keep_fds)
    if distributed.world_size > 1:
        with written(plan) as path:
            return torchrun(runtime, path, distributed)
    from toolkit.trainer import run

    run(plan)
    return 0


def trainer_argv(python: str, plan_file: Path, distributed: Distributed) -> list[str]:
    """The command that carries out a plan file: the trainer's entry point, once, or once
    per process under torch's launcher (DDP; gloo on CPU, NCCL on GPU), which
    toolkit.trainer.ranks runs so that its exit codes and messages are toolkit's."""
    if distributed.world_size == 1:
        return [python, "-m", "toolkit.trainer", str(plan_file)]
    return [python, "-m", "toolkit.trainer.ranks", *distributed.flags(), str(plan_file)]


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
    """A container of toolkit's: `reads` mounted read-only and `writes` read-write at
    their own paths, as the invoking user. `network`: True for the default bridge, False
    for none, "host" for multi-node runs (the ranks must reach each other's ports).
    `secrets`: credentials by name; those set here go in on the container's stdin. The
    environment holds no state of a run, only what the image and libraries read."""
    env: dict[str, str] = {
        "TOOLKIT_IMAGE": image,
        "TOOLKIT_IMAGE_ID": image_id,
        # torchrun starts its ranks with `python -m`: never a `toolkit` folder in the
        # working directory (perhaps one the run writes) in place of the image's.
        "PYTHONSAFEPATH": "1",
    }
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


def plan_spec(
    plan: RunPlan,
    plan_file: Path,
    image: str,
    image_id: str,
    devices: Devices | None = None,
    distributed: Distributed = Distributed(),
) -> RunSpec:
    """The container that carries out `plan`: its paths mounted (the plan's file among
    them, read-only), its network and credentials; for Hub inputs the host pinned, where
    the Hugging Face cache is (mounted read-only at the same path) and offline mode."""
    networks: dict[str, bool | str] = {"host": "host", "bridge": True, "none": False}
    network = networks[plan.network]
    spec = container_spec(
        image,
        image_id,
        trainer_argv("python3", plan_file, distributed),
        [*(Path(p) for p in plan.reads), plan_file],
        [Path(p) for p in plan.writes],
        network,
        devices,
        plan.credentials,
    )
    if plan.pins:
        spec.env.update({"HF_HUB_CACHE": str(hub_cache()), **OFFLINE_ENV})
    return spec


def run_in_image(
    runtime: Runtime,
    plan: RunPlan,
    plan_file: Path,
    image: str,
    gpus: str | None = None,
    distributed: Distributed = Distributed(),
    keep_fds: tuple[int, ...] = (),
) -> int:
    """Carry out `plan` in `image`, its logs streamed; the container's exit code."""
    docker = runtime.docker()
    info = docker.inspect_image(image)
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
    uid, gid = (int(x) for x in host_user().split(":"))
    engine = docker.engine()
    # A rootless engine's containers run as the invoking user (spec.Engine): no other.
    if os.geteuid() == 0 and uid != 0 and not engine.rootless:
        for private in (plan_file.parent, plan_file):
            os.chown(private, uid, gid)
    for path in plan.writes:
        Path(path).mkdir(parents=True, exist_ok=True)
    devices = device_flags(accelerator, gpus, gids)
    spec = plan_spec(plan, plan_file, image, info.id, devices, distributed)
    # The image's compile caches, at a path of their own inside (not under a home
    # folder the container's user may not own).
    spec.mounts.append(Mount(str(compile_cache(info.id)), COMPILE_MOUNT, read_only=False))
    spec.env.update(cache.compile_env(Path(COMPILE_MOUNT)))
    note = {
        "host": "on the host's network (multi-node)",
        "bridge": "with network access (a remote model, dataset or tracker)",
        "none": "without network",
    }[plan.network]
    if spec.secrets:  # names only
        note += f", given {', '.join(spec.secrets)} on its stdin"
    who = f"you (rootless {engine.name.capitalize()})" if engine.rootless else spec.user
    print(f"toolkit: running in {image} as {who}, {note}", file=sys.stderr, flush=True)
    return docker.run(spec, keep_fds)


def torchrun(runtime: Runtime, plan_file: Path, distributed: Distributed) -> int:
    """One process per rank on this machine, each carrying out the plan; rank 0 writes
    the outputs and says how the run ended (75: preempted with a checkpoint)."""
    argv = trainer_argv(sys.executable, plan_file, distributed)
    print(f"toolkit: torchrun {' '.join(distributed.flags())}", file=sys.stderr, flush=True)
    return runtime.run_child(argv)
