"""The `toolkit` command (Click). It only dispatches: each command parses its options,
loads the config once, calls one function, and our exceptions become exit codes — 2 for
bad input (config, data, command line), 1 for a failed run or environment, 75 when a
preempted run saved a checkpoint. Heavy libraries are imported inside the commands that
need them, so `toolkit --help` and `validate` never load torch.

Groups live one per module: run.py (train, preprocess, merge-lora, inference, fetch,
tiny-model: each builds a RunPlan and hands it to toolkit.host.place), images.py,
launch.py, inspect.py (validate, doctor, compare, reproduce), cache.py, examples.py; what
they share is in common.py.

Shell completion (commands, options, variant names, config keys as overrides):
    eval "$(_TOOLKIT_COMPLETE=bash_source toolkit)"     # zsh_source, fish_source
"""

from __future__ import annotations

import os
import sys

import click

from toolkit import __version__
from toolkit.cli.cache import cache
from toolkit.cli.examples import examples
from toolkit.cli.images import images
from toolkit.cli.inspect import compare, doctor, reproduce, validate
from toolkit.cli.launch import launch
from toolkit.cli.run import fetch, inference, merge_lora, preprocess, tiny_model, train
from toolkit.containers.spec import ENGINE_ENV, ENGINES
from toolkit.errors import ToolkitError, environment_error


@click.group(
    name="toolkit",
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Config keys can be overridden after the config path: "
    "toolkit train CONFIG --micro-batch-size 2. Shell completion: "
    'eval "$(_TOOLKIT_COMPLETE=bash_source toolkit)".',
)
@click.version_option(__version__, "--version", prog_name="toolkit", message="%(prog)s %(version)s")
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    envvar=ENGINE_ENV,
    help="the container engine: docker (the default socket, or DOCKER_HOST) or podman "
    "(your rootless Podman service's socket, or DOCKER_HOST/CONTAINER_HOST); "
    "CONTAINER_HOST alone also selects it",
)
def cli(engine: str | None) -> None:
    """Containerized, reproducible post-training for Qwen3 and Qwen3-MoE."""
    if engine:  # for this process and those it starts (the reaper, the builder)
        os.environ[ENGINE_ENV] = engine


for command in (
    validate,
    train,
    preprocess,
    merge_lora,
    inference,
    fetch,
    tiny_model,
    images,
    reproduce,
    launch,
    compare,
    doctor,
    cache,
    examples,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv); return the exit code."""
    try:
        code = cli.main(args=argv, prog_name="toolkit", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:  # a usage error: exit 2, with click's message
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        return 130
    except ToolkitError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `toolkit images list --json | head`: the reader went away; nothing is wrong.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        error = environment_error(exc)
        if error is None:
            raise
        print(error.render(), file=sys.stderr)
        return error.exit_code
