"""What the command groups share: option decorators, completion, loading a config with
its overrides, where a heavy command runs, and the output folder's lock.

Nothing heavy is imported here: each command imports the stage it calls when it runs,
so `toolkit --help` and `validate` never load torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import click

from toolkit.errors import ToolkitError, UsageError

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

    from toolkit.config import LoadedConfig
    from toolkit.outputs import RunLock
    from toolkit.runtime import Runtime

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


def with_local_data(config: str, overrides: list[str]) -> tuple:
    """The config with its inputs on this machine: remote datasets (s3://, gs://, az://)
    copied to the host's cache, and Hub models and datasets fetched into the Hugging
    Face cache at a pinned commit (toolkit.hub); datasets are pointed at their copies.
    Returns it and the overrides to pass on."""
    import dataclasses

    from toolkit import hub
    from toolkit.remote import fetch_remote_datasets, is_remote

    loaded = load(config, overrides)
    cfg = loaded.config
    if cfg.dataset_prepared_path:  # for `toolkit cache`
        from toolkit.cache import record_prepared

        record_prepared(cfg.dataset_prepared_path)
    remote = any(is_remote(d.path) for d in cfg.datasets)
    refs = hub.hub_refs(cfg)
    if not remote and not refs:
        return loaded, list(overrides)
    from toolkit.config import load_config, parse_overrides

    extra = list(overrides)
    if remote:
        raw = [{"path": d.path, "data_files": d.data_files} for d in cfg.datasets]
        extra += [f"--{key}={value}" for key, value in fetch_remote_datasets(raw).items()]
    pins = hub.fetch_all(cfg, hub.read_pins(cfg.output_dir), log) if refs else []
    extra += [f"--{p.key}={p.snapshot}" for p in pins if p.kind == "dataset"]
    if pins:  # for the trainer: here, its worker processes, or the container
        os.environ[hub.PINS_ENV] = hub.pins_json(pins)
        hub.go_offline()
    reloaded = load_config(config, parse_overrides(extra)) if extra != list(overrides) else loaded
    return dataclasses.replace(reloaded, hub=tuple(pins)), extra


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def runtime_of(args) -> str:
    from toolkit.launch import default_runtime, in_container

    chosen = args.runtime or default_runtime()
    if chosen == "docker" and in_container():
        raise UsageError(
            "--runtime docker inside the toolkit container: Docker is not "
            "available here; drop the flag (local is the default inside)"
        )
    if chosen == "local":  # the light install (no [train] extra) runs only the image
        from importlib.util import find_spec

        stack = ("torch", "transformers", "peft", "datasets", "accelerate")
        missing = [name for name in stack if find_spec(name) is None]
        if missing:
            from toolkit.errors import RuntimeFailure

            raise RuntimeFailure(
                f"--runtime local runs the trainer in this Python environment, which lacks "
                f"{', '.join(missing)}: pip install 'qwen-posttrain[train]' (or drop "
                "--runtime local to run in the toolkit image)"
            )
    return chosen


def new_runtime() -> Runtime:
    from toolkit.runtime import Runtime

    return Runtime()


def image_for(args) -> str:
    from toolkit.launch import choose_image

    return choose_image(new_runtime(), args.image, args.variant)


@contextmanager
def output_lock(output_dir: str, command: str) -> Iterator[RunLock]:
    """Hold output_dir's lock for this command and what it launches."""
    from toolkit import outputs

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    lock = outputs.hold(output_dir, command)
    try:
        yield lock
    finally:
        outputs.release(lock)


def in_container(
    command: str,
    args,
    extra,
    loaded,
    host_network: bool = False,
    keep_fds: tuple[int, ...] = (),
    read_only: bool = False,
) -> int:
    """Run this same command in the image, with the config's paths mounted (the outputs
    read-only too when the command only reads them)."""
    from toolkit.launch import config_paths, run_in_container, run_secrets

    reads, writes, network = config_paths(loaded.config)
    if read_only:
        reads, writes = [*reads, *writes], []
    argv = ["toolkit", command, str(Path(args.config).absolute()), "--runtime", "local", *extra]
    code = run_in_container(
        image_for(args),
        argv,
        [Path(args.config), *reads],
        writes,
        "host" if host_network else network,
        args.gpus,
        keep_fds,
        run_secrets(command, loaded.config),
    )
    return container_failed(code) if code else 0


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


def environment_error(exc: BaseException, where: str | None = None) -> ToolkitError | None:
    """An operating-system error (or a library's error that wraps one, such as
    safetensors' "No space left on device (os error 28)") as one line naming the path and
    the fix, exit 1; None for any other exception."""
    import errno
    import re

    from toolkit.errors import RuntimeFailure

    if isinstance(exc, ToolkitError):
        return None
    seen: BaseException | None = exc
    cause: OSError | None = None
    while seen is not None and cause is None:
        if isinstance(seen, OSError) and seen.errno:
            cause = seen
        seen = seen.__cause__ or seen.__context__
    if cause is not None and cause.errno:
        code = cause.errno
    else:
        match = re.search(r"\(os error (\d+)\)", str(exc))
        if not match:
            return None
        code = int(match.group(1))
    where = (
        (cause.filename if cause is not None and cause.filename else None)
        or where
        or "a file toolkit writes"
    )
    strerror = (cause.strerror if cause is not None else None) or os.strerror(code)
    fixes = {
        errno.ENOSPC: f"no space left on the device holding {where}; free some space "
        "(save_total_limit keeps fewer checkpoints) or choose an output_dir on "
        "a larger disk, then run the same command again to resume",
        errno.EDQUOT: f"disk quota exceeded writing {where}; free some space or choose an "
        "output_dir elsewhere",
        errno.EROFS: f"{where} is on a read-only filesystem; choose an output_dir you can write",
        errno.EACCES: f"permission denied: {where}; make it writable for you "
        f"(uid {os.getuid()}) or choose another output_dir",
        errno.EPERM: f"operation not permitted on {where}; check its owner and permissions",
    }
    return RuntimeFailure(fixes.get(code, f"{strerror}: {where}"))


def report(findings, as_json: bool) -> int:
    import json

    from toolkit.compat import Status
    from toolkit.doctor import render, worst

    if as_json:
        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        print(render(findings))
    return 1 if worst(findings) == Status.FAIL else 0


def args_of(**values) -> SimpleNamespace:
    """The parsed options as one value the command bodies read."""
    return SimpleNamespace(**values)
