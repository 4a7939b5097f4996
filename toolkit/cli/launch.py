"""toolkit launch: files that run a config on cloud VMs (SkyPilot, cloud-init)."""

from __future__ import annotations

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
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group()
def launch() -> None:
    """Files that run a config on cloud VMs."""


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
@overrides_argument
def skypilot(config, overrides, variant, outputs, output, accelerators, nodes) -> int:
    """A SkyPilot task (sky launch FILE)."""
    import yaml

    from toolkit.host.cloud import skypilot_task, vm_config

    loaded, chosen, image = _inputs(config, overrides, variant, outputs)
    if chosen.accelerator != "cpu" and not accelerators:
        raise UsageError(
            f"--accelerators: the {chosen.name} image needs GPUs; say which, "
            "e.g. --accelerators H100:8"
        )
    out = output or Path(f"{Path(config).stem}.sky.yaml")
    config_file = out.with_name(f"{Path(config).stem}.vm.yaml")
    config_file.write_text(yaml.safe_dump(vm_config(loaded)[0], sort_keys=False))
    task = skypilot_task(loaded, image, config_file, accelerators, nodes, outputs, _pins(loaded))
    out.write_text(yaml.safe_dump(task, sort_keys=False, width=1000))
    print(
        f"wrote {out} (and {config_file}); run it with `sky launch {out}`, adding "
        "--secret NAME for each secret the run needs (e.g. --secret HF_TOKEN)"
    )
    return 0


@launch.command("cloud-init", cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@launch_options
@overrides_argument
def cloud_init(config, overrides, variant, outputs, output) -> int:
    """User-data for one plain VM."""
    from toolkit.host.cloud import cloud_init as user_data

    loaded, chosen, image = _inputs(config, overrides, variant, outputs)
    out = output or Path(f"{Path(config).stem}.cloud-init.yaml")
    out.write_text(user_data(loaded, image, chosen.accelerator, outputs, _pins(loaded)))
    print(
        f"wrote {out}; pass it as the VM's user-data (secrets go in /etc/toolkit/secrets.env "
        "on the VM, never in this file)"
    )
    return 0


def _pins(loaded) -> list:
    """The commits of the config's Hub inputs, resolved now (nothing is downloaded here:
    the VM fetches exactly those)."""
    from toolkit.host.hub import hub_refs, resolve_all

    if not hub_refs(loaded.config):
        return []
    return resolve_all(loaded.config, log=lambda line: print(line, file=sys.stderr))
