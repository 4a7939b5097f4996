"""train, preprocess, merge-lora, tiny-model: the commands that run the trainer's stack,
in the image (default outside a container) or in this Python environment."""

from __future__ import annotations

import json
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


@click.command(cls=OverridesCommand, context_settings=OVERRIDES)
@config_argument
@runtime_options
@distributed_options
@json_option
@overrides_argument
def train(config, overrides, as_json, **options) -> int:
    """Train as the config says (SFT, DPO-family, reward or process-reward model).

    Config keys can be overridden after the config path: --micro-batch-size 2. Running
    the same command on a finished run trains nothing; after a preemption (exit 75) it
    resumes."""
    from toolkit import outputs

    args = args_of(config=config, **options)
    loaded, extra = with_local_data(config, list(overrides))
    cfg = loaded.config
    distributed = _distributed_args(args)
    runtime = runtime_of(args)
    code = 0
    if outputs.check_previous(cfg.output_dir, cfg.model_dump(mode="json"), cfg.training_digest()):
        return _summary(cfg, as_json, "already complete")
    # With --json, stdout carries the summary alone; the training log goes to stderr.
    with (
        output_lock(cfg.output_dir, "train") as lock,
        redirect_stdout(sys.stderr) if as_json else nullcontext(),
    ):
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
    return _summary(cfg, as_json, "trained")


def _summary(cfg, as_json: bool, status: str) -> int:
    """Where the outputs are (stdout), or train's final summary as JSON."""
    out = Path(cfg.output_dir)
    if as_json:
        record = {}
        if (out / "run.json").exists():
            record = json.loads((out / "run.json").read_text())
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
@runtime_options
@overrides_argument
def preprocess(config, overrides, **options) -> int:
    """Tokenize SFT data into dataset_prepared_path (train reuses it)."""
    args = args_of(config=config, **options)
    loaded, extra = with_local_data(config, list(overrides))
    if runtime_of(args) == "docker":
        return in_container("preprocess", args, extra, loaded)
    from toolkit.trainer.prepared import preprocess as build

    print(f"prepared data: {build(loaded)}")
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
    from toolkit.merge import already_merged, check_inputs

    args = args_of(config=config, **options)
    loaded = load(config, overrides)
    out = loaded.config.output_dir
    if check_inputs(loaded, allow_config_mismatch) is None or already_merged(Path(out)):
        return 0
    with output_lock(out, "merge-lora") as lock:
        if runtime_of(args) == "docker":
            extra = [*overrides, *(["--allow-config-mismatch"] if allow_config_mismatch else [])]
            code = in_container("merge-lora", args, extra, loaded, keep_fds=lock.fds)
            if code == 0:
                print(f"merged model: {out}/merged\nadapter: {out}\nlog: {out}/train.log")
            return code
        from toolkit.merge import merge_lora as merge

        merge(loaded, allow_config_mismatch)
        return 0


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
