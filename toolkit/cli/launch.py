"""toolkit launch: files that run a config on cloud VMs (SkyPilot, cloud-init) or a Slurm
cluster."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from toolkit.cli.common import (
    OVERRIDES,
    OverridesCommand,
    complete_variants,
    config_argument,
    load,
    overrides_argument,
)
from toolkit.errors import UsageError

if TYPE_CHECKING:
    from toolkit.config import LoadedConfig
    from toolkit.images import Variant


FORCE = click.option(
    "--force", is_flag=True, help="replace launch files of these names (never an input or a link)"
)


def launch_options(func) -> Callable[..., Any]:
    options = [
        click.option(
            "--variant",
            required=True,
            envvar="TOOLKIT_VARIANT",
            show_envvar=True,
            shell_complete=complete_variants,
            help="the pushed image variant (toolkit images push VARIANT)",
        ),
        click.option(
            "--outputs-url",
            "--outputs",
            "outputs",
            required=True,
            help="where output_dir goes: an s3://, gs:// or az:// URL",
        ),
        click.option("-o", "--output", type=click.Path(path_type=Path), help="the file to write"),
        FORCE,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group()
def launch() -> None:
    """Files that run a config on cloud VMs or a Slurm cluster."""


def _inputs(
    config, overrides, variant_name: str, outputs: str
) -> tuple[LoadedConfig, Variant, str]:
    from toolkit.host.remote import is_remote
    from toolkit.images import get_variant, pushed_image

    if not is_remote(outputs):
        raise UsageError(
            f"--outputs-url {outputs!r}: a VM's disk goes away with it; give an "
            "object-store URL (s3://bucket/prefix, gs://…, az://…)"
        )
    loaded = load(config, overrides)
    variant = get_variant(variant_name)
    return loaded, variant, pushed_image(variant.name)["image"]


@launch.command(cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@launch_options
@click.option("--accelerators", help="SkyPilot's accelerators, e.g. H100:8")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--infra",
    default=None,
    help="where SkyPilot runs it: a cloud (aws, gcp/us-central1 …), k8s[/CONTEXT] for a "
    "Kubernetes cluster, slurm[/CLUSTER] for a Slurm cluster SkyPilot knows (default: "
    "SkyPilot chooses)",
)
@overrides_argument
def skypilot(config, overrides, variant, outputs, output, force, accelerators, nodes, infra) -> int:
    """A SkyPilot task (sky launch FILE)."""
    import yaml

    from toolkit.host.cloud import skypilot_task, vm_config
    from toolkit.host.launchfiles import LaunchFile, write_all

    if infra is not None and not re.fullmatch(r"[a-z0-9]+(/[\w.:@-]+)*", infra):
        raise UsageError(
            f"--infra {infra!r}: expected SkyPilot's form, a name and optional parts "
            "after slashes: aws, gcp/us-central1, k8s, k8s/my-context, slurm/my-cluster"
        )
    loaded, chosen, image = _inputs(config, overrides, variant, outputs)
    if chosen.accelerator != "cpu" and not accelerators:
        raise UsageError(
            f"--accelerators: the {chosen.name} image needs GPUs; say which, "
            "e.g. --accelerators H100:8"
        )
    out = output or Path(f"{Path(config).stem}.sky.yaml")
    config_file = out.with_name(f"{Path(config).stem}.vm.yaml")
    pins = _pins(loaded)
    task = skypilot_task(loaded, image, config_file, accelerators, nodes, outputs, pins, infra)
    write_all(
        [
            LaunchFile(config_file, yaml.safe_dump(vm_config(loaded)[0], sort_keys=False), "-o"),
            LaunchFile(out, yaml.safe_dump(task, sort_keys=False, width=1000), "-o"),
        ],
        _reads(loaded),
        force,
    )
    print(
        f"wrote {out} (and {config_file}); run it with `sky launch {out}`, adding "
        "--secret NAME for each secret the run needs (e.g. --secret HF_TOKEN)"
    )
    return 0


@launch.command("cloud-init", cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@launch_options
@overrides_argument
def cloud_init(config, overrides, variant, outputs, output, force) -> int:
    """User-data for one plain VM."""
    from toolkit.host.cloud import cloud_init as user_data
    from toolkit.host.launchfiles import LaunchFile, write_all

    loaded, chosen, image = _inputs(config, overrides, variant, outputs)
    out = output or Path(f"{Path(config).stem}.cloud-init.yaml")
    text = user_data(loaded, image, chosen.accelerator, outputs, _pins(loaded))
    write_all([LaunchFile(out, text, "-o")], _reads(loaded), force)
    print(
        f"wrote {out}; pass it as the VM's user-data (secrets go in /etc/toolkit/secrets.env "
        "on the VM, never in this file)"
    )
    return 0


@launch.command(cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@click.option(
    "--variant",
    required=True,
    envvar="TOOLKIT_VARIANT",
    show_envvar=True,
    shell_complete=complete_variants,
    help="the image variant (its pushed digest, unless --image-archive)",
)
@click.option("--nodes", type=click.IntRange(min=1), required=True)
@click.option("--gpus-per-node", type=click.IntRange(min=1), help="GPUs per node (one rank each)")
@click.option(
    "--nproc-per-node",
    type=click.IntRange(min=1),
    help="ranks per node  [default: --gpus-per-node, or 1]",
)
@click.option("--partition", help="Slurm partition")
@click.option("--time", "time_limit", help="Slurm time limit, e.g. 24:00:00")
@click.option("--account", help="Slurm account")
@click.option(
    "--outputs",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="output_dir: a folder on storage every node mounts",
)
@click.option(
    "--image-archive",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="a `docker save` archive on shared storage, loaded on each node (air-gapped "
    "clusters), instead of pulling the pushed digest",
)
@click.option(
    "--engine",
    type=click.Choice(["docker", "podman", "apptainer"]),
    default="docker",
    show_default=True,
    help="the nodes' container engine (apptainer: written, untested)",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="the script to write (shared storage)"
)
@FORCE
@overrides_argument
def slurm(
    config,
    overrides,
    variant,
    nodes,
    gpus_per_node,
    nproc_per_node,
    partition,
    time_limit,
    account,
    outputs,
    image_archive,
    engine,
    output,
    force,
) -> int:
    """An sbatch script: one container and one torchrun per node (sbatch FILE)."""
    import yaml

    from toolkit.host.cloud import vm_config
    from toolkit.host.launchfiles import LaunchFile, write_all
    from toolkit.host.slurm import Allocation, Image, archive_image, batch_script, job_files
    from toolkit.images import get_variant, pushed_image

    loaded = load(config, overrides)
    chosen = get_variant(variant)
    if chosen.accelerator != "cpu" and not gpus_per_node:
        raise UsageError(
            f"--gpus-per-node: the {chosen.name} image needs GPUs; say how many each node "
            "has, e.g. --gpus-per-node 8"
        )
    image = (
        archive_image(image_archive) if image_archive else Image(pushed_image(chosen.name)["image"])
    )
    out = (output or Path(f"{Path(config).stem}.slurm.sh")).absolute()
    config_file, folder = job_files(out)
    allocation = Allocation(
        nodes, nproc_per_node or gpus_per_node or 1, gpus_per_node, partition, time_limit, account
    )
    script = batch_script(
        loaded,
        image,
        chosen.accelerator,
        allocation,
        out,
        outputs.absolute(),
        engine,
        _pins(loaded),
    )
    write_all(
        [
            LaunchFile(out, script, "-o", mode=0o700),  # sbatch reads it; you may run it
            LaunchFile(config_file, yaml.safe_dump(vm_config(loaded)[0], sort_keys=False), "-o"),
        ],
        [*_reads(loaded), outputs, *([image_archive] if image_archive else [])],
        force,
        # Slurm opens the job's log there before the script runs.
        folders=[(folder, "-o")],
    )
    print(f"wrote {out} (and {config_file}); submit it with `sbatch {out}`")
    return 0


def _reads(loaded) -> list[str]:
    """What the run reads, which no launch file may cover: the config and its local
    inputs."""
    from toolkit.host.cloud import vm_inputs
    from toolkit.host.remote import is_remote

    found = [f.source for f in vm_inputs(loaded.config) if not is_remote(f.source)]
    return [str(loaded.path), *found]


def _pins(loaded) -> list:
    """The commits of the config's Hub inputs, resolved now (nothing is downloaded here:
    the VM fetches exactly those)."""
    from toolkit.host.hub import hub_refs, resolve_all

    if not hub_refs(loaded.config):
        return []
    return resolve_all(loaded.config, log=lambda line: print(line, file=sys.stderr))
