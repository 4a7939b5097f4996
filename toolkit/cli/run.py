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
    args_of,
    config_argument,
    container_failed,
    distributed_options,
    environment_error,
    image_for,
    in_container,
    json_option,
    load,
    output_lock,
    overrides_argument,
    runtime_of,
    runtime_options,
    with_local_data,
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
def train(config, overrides, as_json, restart, **options) -> int:
    """Train as the config says (SFT, DPO-family, reward or process-reward model).

    Config keys can be overridden after the config path: --micro-batch-size 2. Running
    the same command on a finished run trains nothing; after a preemption (exit 75) it
    resumes."""
    from toolkit import outputs

    if restart:  # an override, so it reaches the trainer in the container as well
        overrides = (*overrides, "--resume-from-checkpoint", "false")
    args = args_of(config=config, **options)
    runtime = runtime_of(args)  # before any Hub fetch: a light install says so at once
    loaded, extra = with_local_data(config, list(overrides))
    cfg = loaded.config
    distributed = _distributed_args(args)
    code = 0
    from toolkit import publish
    from toolkit.config.axolotl import check_hardware

    if outputs.check_previous(cfg.output_dir, cfg.model_dump(mode="json"), cfg.training_digest()):
        publish.after_train(cfg)  # a push that failed after the run is retried
        return _summary(cfg, as_json, "already complete")

    if loaded.hardware:  # settings that need GPUs: refused before anything is written
        check_hardware(loaded, gpus_here(runtime))
    from toolkit.config.parallel import layout

    if "WORLD_SIZE" in os.environ:  # a process torchrun started: the launch it is part of
        layout(cfg, int(os.environ["WORLD_SIZE"]), "this torchrun launch")
    else:
        launch = f"--nproc-per-node {args.nproc_per_node} × --nnodes {args.nnodes}"
        layout(cfg, args.nproc_per_node * args.nnodes, launch)
    publish.check(cfg)
    # With --json, stdout carries the summary alone; the training log goes to stderr.
    with (
        output_lock(cfg.output_dir, "train") as lock,
        redirect_stdout(sys.stderr) if as_json else nullcontext(),
    ):
        if loaded.hub:  # the commits this run trains: a resume or rerun keeps them
            from toolkit.hub import write_pins

            write_pins(cfg.output_dir, loaded.hub)
        if runtime == "docker":
            code = in_container(
                "train",
                args,
                [*distributed, *extra],
                loaded,
                host_network=args.nnodes > 1,
                keep_fds=lock.fds,
            )
        elif distributed:
            from toolkit.launch import torchrun

            code = torchrun(common.new_runtime(), args, distributed, extra)
        else:
            from toolkit.trainer import run

            try:
                run(loaded)
            except Exception as exc:
                error = environment_error(exc, cfg.output_dir)
                if error is None:
                    raise
                raise error from None
    if code:
        return code
    publish.after_train(cfg)
    # The closing lines once: by the container's own `toolkit train` in the image, by
    # torchrun's rank 0 (not by the command that launched it, nor by the other ranks).
    said = runtime != "local" or bool(distributed) or os.environ.get("RANK", "0") != "0"
    return _summary(cfg, as_json, "trained", said=said)


def gpus_here(runtime: str) -> int:
    """The GPUs a run would have: torch's count here, the host's for the image."""
    if runtime == "local":
        import torch

        return torch.cuda.device_count()
    from toolkit import probe

    return len(probe.gather(common.new_runtime()).facts.gpus)


def _summary(cfg, as_json: bool, status: str, said: bool = False) -> int:
    """Where the outputs are (stdout), or train's final summary as JSON; `said`: the
    closing lines were printed already (by the container's own command)."""
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
    elif status == "trained" and not said:
        what = "adapter" if cfg.uses_lora else "model"
        print(f"{what} and tokenizer: {out}\nmanifest: {out}/run.json\nlog: {out}/train.log")
    return 0


def _distributed_args(args) -> list[str]:
    """The launch flags to pass on, or [] for one process on one machine."""
    if args.nproc_per_node == 1 and args.nnodes == 1:
        return []
    return [
        "--nproc-per-node",
        str(args.nproc_per_node),
        "--nnodes",
        str(args.nnodes),
        "--node-rank",
        str(args.node_rank),
        "--master-addr",
        args.master_addr,
        "--master-port",
        str(args.master_port),
    ]


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
    from toolkit.trainer.prepared import DEFAULT_PREPARED_PATH

    args = args_of(config=config, **options)
    runtime = runtime_of(args)  # before any Hub fetch or write
    overrides = list(overrides)
    loaded, extra = with_local_data(config, overrides)
    if not loaded.config.dataset_prepared_path:
        print(
            f"note: dataset_prepared_path is not set; writing to ./{DEFAULT_PREPARED_PATH} "
            "as axolotl does (set dataset_prepared_path, and train reads it from there)",
            file=sys.stderr,
        )
        extra = [*extra, f"--dataset_prepared_path={DEFAULT_PREPARED_PATH}"]
        from toolkit.cache import record_prepared

        record_prepared(DEFAULT_PREPARED_PATH)
        loaded = dataclasses.replace(
            loaded,
            config=loaded.config.model_copy(
                update={"dataset_prepared_path": DEFAULT_PREPARED_PATH}
            ),
        )
    colored = color == "always" or (color == "auto" and sys.stdout.isatty())
    if runtime == "docker":
        flags = ["--color", "always" if colored else "never"]
        if debug:
            flags += ["--debug", "--debug-num-examples", str(debug_num_examples)]
        return in_container("preprocess", args, [*flags, *extra], loaded)
    from toolkit.trainer.prepared import preprocess as build

    where = build(loaded, debug_num_examples if debug else 0, colored)
    print(f"prepared data: {where}")
    return 0


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
    """Merge the trained LoRA adapter into the full-precision base (output_dir/merged)."""
    from toolkit import publish
    from toolkit.hub import hub_refs
    from toolkit.merge import already_merged, check_inputs

    args = args_of(config=config, **options)
    runtime = runtime_of(args)  # before any Hub fetch
    loaded = load(config, overrides)
    out = loaded.config.output_dir
    if check_inputs(loaded, allow_config_mismatch, hub_inputs=True) is None:
        return 0
    if already_merged(Path(out)):
        publish.after_merge(loaded.config)  # a push that failed after the merge is retried
        return 0
    extra = list(overrides)
    if hub_refs(loaded.config):
        # The base at the commit the adapter was trained on (from the Hub's cache,
        # fetched again only if the cache lost it).
        loaded, extra = with_local_data(config, extra)
        check_inputs(loaded, allow_config_mismatch)
    with output_lock(out, "merge-lora") as lock:
        if runtime == "docker":
            extra = [*extra, *(["--allow-config-mismatch"] if allow_config_mismatch else [])]
            code = in_container("merge-lora", args, extra, loaded, keep_fds=lock.fds)
            if code == 0:
                print(f"merged model: {out}/merged\nadapter: {out}\nlog: {out}/train.log")
        else:
            from toolkit.merge import merge_lora as merge

            merge(loaded, allow_config_mismatch)
            code = 0
    if code == 0:
        publish.after_merge(loaded.config)
    return code


@click.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--moe", is_flag=True, help="a Qwen3-MoE instead of a dense Qwen3")
@click.option("--seed", type=int, default=0, show_default=True)
@runtime_options
def tiny_model(out_dir, moe, seed, **options) -> int:
    """Build the tiny random-init Qwen3 and tokenizer the demo and tests use."""
    args = args_of(**options)
    out = Path(out_dir)
    if (out / "config.json").exists():
        print(f"{out} already holds a model; remove it to build a new one")
        return 0
    if runtime_of(args) == "docker":
        from toolkit.launch import run_in_container

        command = [
            "toolkit",
            "tiny-model",
            str(out.absolute()),
            "--runtime",
            "local",
            "--seed",
            str(seed),
            *(["--moe"] if moe else []),
        ]
        code = run_in_container(image_for(args), command, [], [out], gpus=args.gpus)
        return container_failed(code) if code else 0
    from toolkit.tiny import write_tiny_model

    write_tiny_model(out, moe=moe, seed=seed)
    print(
        f"wrote a tiny {'Qwen3-MoE' if moe else 'Qwen3'} and its tokenizer to {out}",
        file=sys.stdout,
    )
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
    from toolkit.hub import hub_refs
    from toolkit.inference import model_source

    args = args_of(config=config, **options)
    runtime = runtime_of(args)  # before any Hub fetch
    loaded = load(config, overrides)
    model_source(loaded, use)  # nothing trained yet, or no merged model: say so here
    if hub_refs(loaded.config):  # the base at the run's commit, from the Hub's cache
        loaded, overrides = with_local_data(config, list(overrides))
    if runtime == "docker":
        if not prompts:
            raise UsageError(
                "in the container, give the prompts with --prompt (repeat it for a "
                "conversation), or run with --runtime local to type them"
            )
        flags = ["--model", use, "--max-new-tokens", str(max_new_tokens)]
        flags += ["--temperature", str(temperature)]
        for prompt in prompts:
            flags += ["--prompt", prompt]
        return in_container("inference", args, [*flags, *overrides], loaded, read_only=True)
    from toolkit.inference import run, stdin_prompts

    asked = list(prompts) or stdin_prompts(sys.stdin.isatty())
    for _ in run(loaded, asked, use, max_new_tokens, temperature):
        print()
    return 0


@click.command(cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@overrides_argument
def fetch(config, overrides) -> int:
    """Fetch the config's Hub models and datasets (and object-store datasets) into the
    local caches, each at a pinned commit, and print the pins as JSON. A later run of
    the same output_dir trains exactly these commits; TOOLKIT_HUB_PINS (set by launch
    files) names the commits to fetch."""
    from dataclasses import asdict

    loaded, _ = with_local_data(config, list(overrides))
    print(json.dumps([asdict(p) for p in loaded.hub], indent=2))
    return 0
