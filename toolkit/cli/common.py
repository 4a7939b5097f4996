"""What the command groups share: option decorators and the typed values they become,
completion, loading a config with its overrides, and what a container's exit code
means.

Nothing heavy is imported here: each command imports the stage it calls when it runs,
so `toolkit --help` and `validate` never load torch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from toolkit.errors import UsageError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from toolkit.config import LoadedConfig
    from toolkit.containers.seam import Runtime
    from toolkit.host.place import Distributed, Placement

# Commands that take config overrides after the config path: --key value, as in axolotl.
OVERRIDES = {
    "ignore_unknown_options": True,
    "allow_extra_args": False,
    "help_option_names": ["-h", "--help"],
}


def complete_variants(ctx, param, incomplete: str) -> list[CompletionItem]:
    from toolkit.images import load_matrix

    return [
        click.shell_completion.CompletionItem(name)
        for name in load_matrix()
        if name.startswith(incomplete)
    ]


def complete_keys(ctx, param, incomplete: str) -> list[CompletionItem]:
    """Config keys as overrides (`--micro-batch-size`), for the shell's completion."""
    if not incomplete.startswith("-"):
        return [click.shell_completion.CompletionItem(incomplete, type="file")]
    from toolkit.config import Config

    names = [f"--{name.replace('_', '-')}" for name in Config.model_fields]
    return [click.shell_completion.CompletionItem(n) for n in names if n.startswith(incomplete)]


class OverridesCommand(click.Command):
    """A command that takes config overrides: completing `--mi…` offers its own options
    and the config's keys."""

    def shell_complete(self, ctx, incomplete) -> list[CompletionItem]:
        items = super().shell_complete(ctx, incomplete)
        if incomplete.startswith("--") and ctx.params.get("config"):
            items += complete_keys(ctx, None, incomplete)
        return items


def config_argument(func) -> Callable[..., Any]:
    return click.argument("config", type=click.Path(), metavar="CONFIG")(func)


def overrides_argument(func) -> Callable[..., Any]:
    return click.argument(
        "overrides",
        nargs=-1,
        type=click.UNPROCESSED,
        metavar="[--KEY VALUE]...",
        shell_complete=complete_keys,
    )(func)


def json_option(func) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="print the result as JSON")(func)


def runtime_options(func) -> Callable[..., Any]:
    options = [
        click.option(
            "--runtime",
            type=click.Choice(["docker", "local"]),
            default=None,
            envvar="TOOLKIT_RUNTIME",
            show_envvar=True,
            help="where to run: the toolkit image (default outside a container) or "
            "this Python environment (default inside one)",
        ),
        click.option(
            "--image",
            default=None,
            callback=not_blank,
            help="image tag to run in (default: the variant `toolkit images select` "
            "picks, built if missing)",
        ),
        click.option(
            "--variant",
            default=None,
            callback=not_blank,
            envvar="TOOLKIT_VARIANT",
            show_envvar=True,
            shell_complete=complete_variants,
            help="image variant to run in (see `toolkit images list`)",
        ),
        click.option(
            "--gpus",
            default=None,
            callback=not_blank,
            envvar="TOOLKIT_GPUS",
            show_envvar=True,
            help="GPUs for the container: all (default) or indexes like 0,1",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def distributed_options(func) -> Callable[..., Any]:
    options = [
        click.option(
            "--nproc-per-node",
            type=click.IntRange(min=1),
            default=1,
            help="processes on this machine (torchrun); DDP across them",
        ),
        click.option("--nnodes", type=click.IntRange(min=1), default=1, help="machines in the run"),
        click.option(
            "--node-rank", type=click.IntRange(min=0), default=0, help="this machine's rank"
        ),
        click.option(
            "--master-addr", default="127.0.0.1", callback=not_blank, help="rank 0's address"
        ),
        click.option(
            "--master-port", type=click.IntRange(1, 65535), default=29500, help="rank 0's port"
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def not_blank(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """An option given an empty value (`--image ""`) is an error, not its default."""
    if isinstance(value, str) and not value.strip():
        name = param.opts[0] if param.opts else str(param.name)
        raise UsageError(
            f"{name}: the value is empty; give one ({name} VALUE), or leave {name} out "
            "for its default"
        )
    return value


def checked_config(config: str) -> str:
    """An override given before the config path reads as the path: say what to do; an
    empty path is not the current folder."""
    if not config.strip():
        raise UsageError(
            f"CONFIG: {config!r} is empty; pass the path of a YAML config (`toolkit "
            "examples` lists the shipped ones)"
        )
    if config.startswith("--"):
        command = click.get_current_context().command_path
        raise UsageError(
            f"{config}: the config path comes first, then the overrides: "
            f"{command} CONFIG {config} VALUE"
        )
    return config


def load(config: str, overrides: tuple[str, ...] | list[str]) -> LoadedConfig:
    """The validated config with its command-line overrides; warnings printed."""
    from toolkit.config import load_config, parse_overrides

    loaded = load_config(checked_config(config), parse_overrides(list(overrides)))
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for line in loaded.hardware.values():
        print(
            f"note: {line}; it needs several GPUs or GPU kernels: checked when the run starts",
            file=sys.stderr,
        )
    return loaded


def placement(runtime, image, variant, gpus) -> Placement:
    """The --runtime, --image, --variant and --gpus options, typed."""
    from toolkit.host.place import Placement

    return Placement(runtime, image, variant, gpus)


def distributed(nproc_per_node, nnodes, node_rank, master_addr, master_port) -> Distributed:
    """torchrun's options, typed."""
    from toolkit.host.place import Distributed

    return Distributed(nproc_per_node, nnodes, node_rank, master_addr, master_port)


def new_runtime() -> Runtime:
    from toolkit.containers.seam import Runtime

    return Runtime()


def container_failed(code: int) -> int:
    hint = {
        75: "it was preempted (SIGTERM) and saved a checkpoint; run the same command "
        "again to resume",
        137: "it was killed (out of memory, or a `docker stop` whose grace period ran out "
        "before the checkpoint was saved: give it more with `docker stop -t`)",
        125: "docker could not start it (see the message above)",
        130: "it was interrupted (Ctrl-C); run the same command again to resume from its "
        "last complete checkpoint (SIGTERM, not Ctrl-C, saves one on the way out)",
    }.get(code, "see its log above")
    print(f"error: the container exited with code {code}: {hint}", file=sys.stderr)
    return code


def report(findings, as_json: bool) -> int:
    import json

    from toolkit.compat import Status
    from toolkit.host.doctor import render, worst

    if as_json:
        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        print(render(findings))
    return 1 if worst(findings) == Status.FAIL else 0
