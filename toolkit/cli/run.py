"""train, preprocess, merge-lora, tiny-model: the commands that run the trainer's stack,
in the image (default outside a container) or in this Python environment."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import nullcontext, redirect_stdout
from pathlib import Path

import click

from toolkit.cli import common
from toolkit.cli.common import (
    OVERRIDES,
    OverridesCommand,
    config_argument,
    container_failed,
    distributed,
    distributed_options,
    json_option,
    load,
    overrides_argument,
    placement,
    runtime_options,
)
from toolkit.errors import UsageError


@click.command(cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@runtime_options
@distributed_options
@json_option
@click.option(
    "--restart",
    is_flag=True,
    help="start at step 0 beside output_dir's checkpoints instead of resuming from them "
    "(resume_from_checkpoint: false), e.g. when none of them verifies",
)
@overrides_argument
def train(
    config,
    overrides,
    as_json,
    restart,
    runtime,
    image,
    variant,
    gpus,
    nproc_per_node,
    nnodes,
    node_rank,
    master_addr,
    master_port,
) -> int:
    """Train as the config says (SFT, DPO-family, reward or process-reward model).

    Config keys can be overridden after the config path: --micro-batch-size 2. Running
    the same command on a finished run trains nothing; after a preemption (exit 75) it
    resumes."""
    from toolkit import outputs, plan, record
    from toolkit.config.axolotl import check_hardware
    from toolkit.config.parallel import layout
    from toolkit.host import publish
    from toolkit.host.inputs import on_this_machine
    from toolkit.host.place import execute

    where = placement(runtime, image, variant, gpus)
    ranks = distributed(nproc_per_node, nnodes, node_rank, master_addr, master_port)
    chosen = where.chosen()  # before any Hub fetch: a light install says so at once
    if restart:  # start at step 0 beside the checkpoints
        overrides = (*overrides, "--resume-from-checkpoint", "false")
    loaded = on_this_machine(load(config, overrides))
    cfg = loaded.config
    if record.check_previous(cfg.output_dir, cfg.model_dump(mode="json"), cfg.training_digest()):
        publish.after_train(cfg)  # a push that failed after the run is retried
        return _summary(cfg, as_json, "already complete")
    if loaded.hardware:  # settings that need GPUs: refused before anything is written
        check_hardware(loaded, gpus_here(chosen))
    if "WORLD_SIZE" in os.environ:  # a process torchrun started: the launch it is part of
        layout(cfg, int(os.environ["WORLD_SIZE"]), "this torchrun launch")
    else:
        launch = f"--nproc-per-node {ranks.nproc_per_node} × --nnodes {ranks.nnodes}"
        layout(cfg, ranks.world_size, launch)
    # The first machine of a multi-node run writes the run (its lock, pins, records and
    # pushes); the others train beside it in the same output_dir and write none of it.
    leader = ranks.node_rank == 0
    if leader:
        publish.check(cfg)
    # With --json, stdout carries the summary alone; the training log goes to stderr.
    with (
        outputs.held(cfg.output_dir, "train") if leader else nullcontext() as lock,
        redirect_stdout(sys.stderr) if as_json else nullcontext(),
    ):
        if loaded.hub and leader:  # the commits this run trains: a resume keeps them
            from toolkit.pins import write_pins

            write_pins(cfg.output_dir, list(loaded.hub))
        planned = plan.build(
            plan.Train(),
            loaded,
            lock_token=lock.token if lock else None,
            network="host" if ranks.nnodes > 1 else None,
        )
        runtime = common.new_runtime()
        fds = lock.fds if lock else ()
        code = _run_here(lambda: execute(planned, where, ranks, fds, runtime), cfg.output_dir)
    if code:
        return container_failed(code) if chosen == "docker" else code
    if not leader:
        return 0
    publish.after_train(cfg)
    return _summary(cfg, as_json, "trained")


def _run_here(carry_out, output_dir: str) -> int:
    """`carry_out()`, with an operating-system error from a run in this process said as
    one line naming the path and the fix."""
    from toolkit.errors import environment_error

    try:
        return carry_out()
    except Exception as exc:
        error = environment_error(exc, output_dir)
        if error is None:
            raise
        raise error from None


def gpus_here(runtime: str) -> int:
    """The GPUs a run would have: torch's count here, the host's for the image."""
    if runtime == "local":
        import torch

        return torch.cuda.device_count()
    from toolkit.host import probe

    return len(probe.gather(common.new_runtime()).facts.gpus)


def _summary(cfg, as_json: bool, status: str) -> int:
    """Where the outputs are (stdout), or train's final summary as JSON."""
    out = Path(cfg.output_dir)
    if as_json:
        from toolkit import record as run_record

        found = run_record.read_if_any(out / run_record.RECORD)
        record = found.dump() if found else {}
        print(
            json.dumps(
                {
                    "status": status,
                    "output_dir": str(out),
                    "manifest": str(out / "run.json"),
                    "log": str(out / "train.log"),
                    **{
                        k: record.get(k)
                        for k in (
                            "steps",
                            "final_loss",
                            "eval_loss",
                            "tokens_per_second",
                            "mfu",
                            "train_seconds",
                            "segments",
                        )
                    },
                },
                indent=2,
            )
        )
    elif status == "trained":
        what = "adapter" if cfg.uses_lora else "model"
        print(f"{what} and tokenizer: {out}\nmanifest: {out}/run.json\nlog: {out}/train.log")
    return 0


@click.command(cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@click.option(
    "--debug",
    is_flag=True,
    help="print the first rows as tokenized, the trained tokens marked (axolotl's --debug)",
)
@click.option(
    "--debug-num-examples",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="how many rows --debug prints",
)
@click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="mark trained tokens in colour (auto: when printing to a terminal)",
)
@runtime_options
@overrides_argument
def preprocess(config, overrides, debug, debug_num_examples, color, **options) -> int:
    """Tokenize SFT data into dataset_prepared_path (train reuses it); unset, it is
    ./last_run_prepared, as in axolotl."""
    from toolkit import plan
    from toolkit.host.inputs import on_this_machine
    from toolkit.host.place import execute
    from toolkit.outputs import DEFAULT_PREPARED_PATH

    where = placement(**options)
    chosen = where.chosen()  # before any Hub fetch or write
    loaded = on_this_machine(load(config, overrides))
    if not loaded.config.dataset_prepared_path:
        print(
            f"note: dataset_prepared_path is not set; writing to ./{DEFAULT_PREPARED_PATH} "
            "as axolotl does (set dataset_prepared_path, and train reads it from there)",
            file=sys.stderr,
        )
        from toolkit.cache import record_prepared

        record_prepared(DEFAULT_PREPARED_PATH)
        loaded = dataclasses.replace(
            loaded,
            config=loaded.config.model_copy(
                update={"dataset_prepared_path": DEFAULT_PREPARED_PATH}
            ),
        )
    colored = color == "always" or (color == "auto" and sys.stdout.isatty())
    task = plan.Preprocess(debug_rows=debug_num_examples if debug else 0, colored=colored)
    code = execute(plan.build(task, loaded), where, runtime=common.new_runtime())
    return container_failed(code) if code and chosen == "docker" else code


@click.command("merge-lora", cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@click.option(
    "--allow-config-mismatch",
    is_flag=True,
    help="merge even though run.json says the adapter was trained with a config "
    "that differs from this one",
)
@runtime_options
@overrides_argument
def merge_lora(config, overrides, allow_config_mismatch, **options) -> int:
    """Merge the trained LoRA adapter into the full-precision base (output_dir/merged).

    CONFIG is the YAML the run was trained with, or the run's output_dir (or its
    run.json): then the config is the one the run recorded."""
    from toolkit import outputs, plan
    from toolkit.host import publish
    from toolkit.host.hub import hub_refs
    from toolkit.host.inputs import on_this_machine
    from toolkit.host.place import execute
    from toolkit.runs import already_merged, check_inputs, is_run_folder, recorded_config

    where = placement(**options)
    chosen = where.chosen()  # before any Hub fetch
    if is_run_folder(config):
        if overrides:
            raise UsageError(
                f"{config} is a trained run: merge-lora reads its recorded config, which "
                f"takes no overrides ({' '.join(overrides)}); pass the YAML to override keys"
            )
        loaded = recorded_config(config)
    else:
        loaded = load(config, overrides)
    out = loaded.config.output_dir
    if check_inputs(loaded, allow_config_mismatch, hub_inputs=True) is None:
        return 0
    if already_merged(Path(out)):
        publish.after_merge(loaded.config)  # a push that failed after the merge is retried
        return 0
    if hub_refs(loaded.config):
        # The base at the commit the adapter was trained on (from the Hub's cache,
        # fetched again only if the cache lost it).
        loaded = on_this_machine(loaded)
        check_inputs(loaded, allow_config_mismatch, notes=False)
    with outputs.held(out, "merge-lora") as lock:
        task = plan.Merge(allow_config_mismatch=allow_config_mismatch)
        planned = plan.build(task, loaded, lock_token=lock.token)
        code = execute(planned, where, keep_fds=lock.fds, runtime=common.new_runtime())
    if code:
        return container_failed(code) if chosen == "docker" else code
    if chosen == "docker":
        print(f"merged model: {out}/merged\nadapter: {out}\nlog: {out}/train.log")
    publish.after_merge(loaded.config)
    return 0


@click.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--moe", is_flag=True, help="a Qwen3-MoE instead of a dense Qwen3")
@click.option("--seed", type=int, default=0, show_default=True)
@runtime_options
def tiny_model(out_dir, moe, seed, **options) -> int:
    """Build the tiny random-init Qwen3 and tokenizer the demo and tests use."""
    from toolkit import plan
    from toolkit.host.place import execute

    where = placement(**options)
    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        print(f"{out} already holds a model; remove it to build a new one")
        return 0
    chosen = where.chosen()
    task = plan.TinyModel(out=str(out.absolute()), moe=moe, seed=seed)
    code = execute(plan.build(task), where, runtime=common.new_runtime())
    if code:
        return container_failed(code) if chosen == "docker" else code
    print(f"wrote a tiny {'Qwen3-MoE' if moe else 'Qwen3'} and its tokenizer to {out}")
    return 0


@click.command(cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@click.option(
    "--prompt",
    "prompts",
    multiple=True,
    help="a prompt to answer (repeat for a conversation); none: read prompts from stdin",
)
@click.option(
    "--model",
    "use",
    type=click.Choice(["auto", "merged", "adapter"]),
    default="auto",
    show_default=True,
    help="auto: output_dir/merged when merge-lora made it, else the trained adapter on the base",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="0 answers greedily (the same answer each time)",
)
@runtime_options
@overrides_argument
def inference(config, overrides, prompts, use, max_new_tokens, temperature, **options) -> int:
    """Answer prompts with the trained model, streaming tokens as they come."""
    from toolkit import plan
    from toolkit.host.hub import hub_refs
    from toolkit.host.inputs import on_this_machine
    from toolkit.host.place import execute
    from toolkit.runs import model_source

    where = placement(**options)
    chosen = where.chosen()  # before any Hub fetch
    loaded = load(config, overrides)
    model_source(loaded, use)  # nothing trained yet, or no merged model: say so here
    if hub_refs(loaded.config):  # the base at the run's commit, from the Hub's cache
        loaded = on_this_machine(loaded)
    if chosen == "docker" and not prompts:
        raise UsageError(
            "in the container, give the prompts with --prompt (repeat it for a "
            "conversation), or run with --runtime local to type them"
        )
    task = plan.Inference(
        prompts=prompts, model=use, max_new_tokens=max_new_tokens, temperature=temperature
    )
    code = execute(plan.build(task, loaded), where, runtime=common.new_runtime())
    return container_failed(code) if code and chosen == "docker" else code


@click.command(cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@overrides_argument
def fetch(config, overrides) -> int:
    """Fetch the config's Hub models and datasets (and object-store datasets) into the
    local caches, each at a pinned commit, and print the pins as JSON. A later run of
    the same output_dir trains exactly these commits; TOOLKIT_HUB_PINS (set by launch
    files) names the commits to fetch."""
    from dataclasses import asdict

    from toolkit.host.inputs import on_this_machine

    loaded = on_this_machine(load(config, overrides))
    print(json.dumps([asdict(p) for p in loaded.hub], indent=2))
    return 0
