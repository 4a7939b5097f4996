"""validate, doctor, compare, reproduce: what a config, a machine or a run is."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from toolkit.cli import common
from toolkit.cli.common import (
    OVERRIDES,
    OverridesCommand,
    config_argument,
    json_option,
    load,
    overrides_argument,
    report,
)


@click.command(cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@click.option(
    "--explain",
    is_flag=True,
    help="say where every value comes from: file, command line, default, mapped "
    "from a deprecated key, derived, or decided at train time",
)
@json_option
@overrides_argument
def validate(config, overrides, explain, as_json) -> int:
    """Check a config and print every resolved value (never imports torch)."""
    from toolkit.config import dump_resolved

    loaded = load(config, overrides)
    if as_json:
        values = loaded.config.model_dump(mode="json")
        values["gradient_accumulation_steps"] = loaded.config.accumulation_steps
        print(
            json.dumps(
                {
                    "config": str(loaded.path),
                    "values": values,
                    "sources": loaded.sources,
                    "warnings": loaded.warnings,
                    "needs_hardware": loaded.hardware,
                },
                indent=2,
            )
        )
    else:
        sys.stdout.write(dump_resolved(loaded, explain=explain))
    return 0


@click.command()
@json_option
@click.option(
    "--variant",
    default=None,
    envvar="TOOLKIT_VARIANT",
    show_envvar=True,
    help="judge this image variant for the host",
)
def doctor(as_json, variant) -> int:
    """Will training work here? Each check with its fix (inside the image: what torch sees)."""
    from toolkit.host import doctor as checks
    from toolkit.host.place import in_container

    if in_container():
        findings = checks.container_checks()
    else:
        from toolkit.host.probe import gather
        from toolkit.images import load_matrix, variants_here

        runtime = common.new_runtime()
        matrix = load_matrix()
        docker = runtime.docker()
        present = variants_here(docker, matrix) if docker.server_version() else set()
        findings = checks.host_checks(gather(runtime), list(matrix.values()), variant, present)
    return report(findings, as_json)


def tolerances(func) -> Callable[..., Any]:
    func = click.option(
        "--atol",
        type=click.FloatRange(min=0),
        default=1e-3,
        show_default=True,
        help="absolute tolerance",
    )(func)
    return click.option(
        "--rtol",
        type=click.FloatRange(min=0),
        default=0.01,
        show_default=True,
        help="relative tolerance",
    )(func)


@click.command()
@click.argument("run_a", metavar="RUN_A")
@click.argument("run_b", metavar="RUN_B")
@tolerances
@json_option
def compare(run_a, run_b, rtol, atol, as_json) -> int:
    """Do two runs' loss curves agree? RUN is an output_dir or its run.json (exit 0 if
    so, 1 if not)."""
    from toolkit.compare import compare as judge
    from toolkit.compare import read_run
    from toolkit.compare import report as describe

    if as_json:
        result = judge(read_run(run_a), read_run(run_b), rtol, atol)
        print(
            json.dumps(
                {
                    "same": result.same,
                    "steps_compared": len(result.steps),
                    "max_abs": result.max_abs if result.steps else None,
                    "max_rel": result.max_rel if result.steps else None,
                    "worst_step": result.worst_step,
                    "notes": result.notes,
                    "rtol": rtol,
                    "atol": atol,
                },
                indent=2,
            )
        )
        return 0 if result.same else 1
    text, same = describe(run_a, run_b, rtol, atol)
    print(text)
    return 0 if same else 1


@click.command()
@click.argument("run", metavar="RUN")
@click.option("--output-dir", help="where the rerun writes (default: OUTPUT_DIR-reproduced)")
@tolerances
def reproduce(run, output_dir, rtol, atol) -> int:
    """Run a finished training again from its run.json, and compare the two."""
    from toolkit.compare import report as describe
    from toolkit.errors import exit_code_of
    from toolkit.host.reproduce import plan, prepare

    rerun = plan(run, output_dir)  # every check; nothing is written before it passes
    for note in rerun.notes:
        print(f"reproduce: {note}")
    prepare(rerun)
    toolkit = click.get_current_context().find_root().command  # `toolkit train`, here
    try:
        code = toolkit.main(args=rerun.train_argv, prog_name="toolkit", standalone_mode=False)
    except Exception as exc:  # as the command line would end: ours as exit codes
        return exit_code_of(exc)
    if code:
        return code
    text, same = describe(run, str(rerun.output_dir), rtol, atol)
    print(text)
    return 0 if same else 1
