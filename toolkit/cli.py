"""The `toolkit` command. It only dispatches: each command parses its arguments,
loads the config, calls one function, and turns our exceptions into exit codes
(2 for bad input, 1 for a failed run). Heavy libraries are imported inside the
commands that need them, so `toolkit --help` and `validate` never load torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from toolkit import __version__
from toolkit.errors import ToolkitError, UsageError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "takes_overrides", False) and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args, extra) or 0
    except ToolkitError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        error = _environment_error(exc)
        if error is None:
            raise
        print(error.render(), file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolkit", allow_abbrev=False,
        description="Containerized, reproducible post-training for Qwen3 and Qwen3-MoE.",
        epilog="Config keys can be overridden after the config path: --micro-batch-size 2")
    parser.add_argument("--version", action="version", version=f"toolkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help: str, overrides: bool = False):
        p = sub.add_parser(name, help=help, description=help, allow_abbrev=False)
        p.set_defaults(func=func, takes_overrides=overrides)
        return p

    def runtime_options(p):
        p.add_argument("--runtime", choices=["docker", "local"], default=None,
                       help="where to run: the toolkit image (default outside a container) "
                            "or this Python environment (default inside one)")
        p.add_argument("--image", default=None,
                       help="image tag to run in (default: the variant `toolkit images select` "
                            "picks, built if missing)")
        p.add_argument("--variant", default=None,
                       help="image variant to run in (see `toolkit images list`)")
        p.add_argument("--gpus", default=None,
                       help="GPUs for the container: all (default) or indexes like 0,1")

    def distributed_options(p):
        p.add_argument("--nproc-per-node", type=int, default=1,
                       help="processes on this machine (torchrun); DDP across them")
        p.add_argument("--nnodes", type=int, default=1, help="machines in the run")
        p.add_argument("--node-rank", type=int, default=0, help="this machine's rank")
        p.add_argument("--master-addr", default="127.0.0.1", help="rank 0's address")
        p.add_argument("--master-port", type=int, default=29500, help="rank 0's port")

    p = command("validate", cmd_validate, "check a config and print every resolved value",
                overrides=True)
    p.add_argument("config")
    p.add_argument("--explain", action="store_true",
                   help="say where every value comes from: file, command line, default, "
                        "mapped from a deprecated key, derived, or decided at train time")

    p = command("train", cmd_train, "train as the config says", overrides=True)
    p.add_argument("config")
    runtime_options(p)
    distributed_options(p)

    p = command("preprocess", cmd_preprocess,
                "tokenize SFT data into dataset_prepared_path (train reuses it)", overrides=True)
    p.add_argument("config")
    runtime_options(p)

    p = command("merge-lora", cmd_merge, "merge the trained LoRA adapter into the base model",
                overrides=True)
    p.add_argument("config")
    p.add_argument("--allow-config-mismatch", action="store_true",
                   help="merge even though run.json says the adapter was trained with a "
                        "config that differs from this one")
    runtime_options(p)

    p = command("tiny-model", cmd_tiny,
                "build the tiny random-init Qwen3 and tokenizer the demo and tests use")
    p.add_argument("out_dir")
    p.add_argument("--moe", action="store_true", help="a Qwen3-MoE instead of a dense Qwen3")
    p.add_argument("--seed", type=int, default=0)
    runtime_options(p)

    images = sub.add_parser("images", help="the image matrix: list and build variants",
                            allow_abbrev=False)
    isub = images.add_subparsers(dest="images_command", required=True, metavar="SUBCOMMAND")
    p = isub.add_parser("list", help="the variants and their tags", allow_abbrev=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_images_list, takes_overrides=False)
    p = isub.add_parser("render", help="print a variant's rendered Dockerfile",
                        allow_abbrev=False)
    p.add_argument("variant")
    p.set_defaults(func=cmd_images_render, takes_overrides=False)
    p = isub.add_parser("lock", help="resolve a variant's lock, with hashes",
                        allow_abbrev=False)
    p.add_argument("variant")
    p.add_argument("--find-links", type=Path, help="a folder of wheels the indexes would serve")
    p.set_defaults(func=cmd_images_lock, takes_overrides=False)
    p = isub.add_parser("select", help="the variant for this host, and why", allow_abbrev=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_images_select, takes_overrides=False)
    p = isub.add_parser("verify", help="check a built image against its lock",
                        allow_abbrev=False)
    p.add_argument("tag")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_images_verify, takes_overrides=False)
    p = isub.add_parser("build", help="build one variant's image", allow_abbrev=False)
    p.add_argument("variant")
    p.add_argument("--base", help="build on this base image instead of the matrix's")
    p.add_argument("--local-base", action="store_true",
                   help="build the base from Debian's archive (debootstrap; for air-gapped hosts)")
    p.add_argument("--wheelhouse", type=Path, help="install from these wheels, offline")
    p.add_argument("--online", action="store_true",
                   help="let pip reach the package index inside the build")
    p.add_argument("--ca-bundle", type=Path, help="CA bundle for pip inside the build")
    p.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    p.add_argument("--tag", help="tag the image so instead of with the variant's tag")
    p.set_defaults(func=cmd_images_build, takes_overrides=False)
    p = isub.add_parser("push", help="push a variant to a registry and record its digest",
                        allow_abbrev=False)
    p.add_argument("variant")
    p.add_argument("--registry", required=True, help="HOST[:PORT][/NAMESPACE]")
    p.set_defaults(func=cmd_images_push, takes_overrides=False)
    p = command("reproduce", cmd_reproduce,
                "run a finished training again from its run.json, and compare the two")
    p.add_argument("run", help="an output_dir, or its run.json")
    p.add_argument("--output-dir", help="where the rerun writes (default: OUTPUT_DIR-reproduced)")
    p.add_argument("--rtol", type=float, default=0.01, help="relative tolerance (0.01)")
    p.add_argument("--atol", type=float, default=1e-3, help="absolute tolerance (0.001)")
    launch = sub.add_parser("launch", help="files that run a config on cloud VMs",
                            allow_abbrev=False)
    lsub = launch.add_subparsers(dest="launch_command", required=True, metavar="TARGET")
    for name, func, text in (
            ("skypilot", cmd_launch_skypilot, "a SkyPilot task (sky launch FILE)"),
            ("cloud-init", cmd_launch_cloud_init, "user-data for one plain VM")):
        p = lsub.add_parser(name, help=text, description=text, allow_abbrev=False)
        p.add_argument("config")
        p.add_argument("--variant", required=True,
                       help="the pushed image variant (toolkit images push VARIANT)")
        p.add_argument("--outputs", required=True,
                       help="where output_dir goes: an s3://, gs:// or az:// URL")
        p.add_argument("-o", "--output", type=Path, help="the file to write")
        if name == "skypilot":
            p.add_argument("--accelerators", help="SkyPilot's accelerators, e.g. H100:8")
            p.add_argument("--nodes", type=int, default=1)
        p.set_defaults(func=func, takes_overrides=True)
    p = command("compare", cmd_compare,
                "do two runs' loss curves agree? (exit 0 if so, 1 if not)")
    p.add_argument("run_a", help="an output_dir, or its run.json")
    p.add_argument("run_b")
    p.add_argument("--rtol", type=float, default=0.01, help="relative tolerance (0.01)")
    p.add_argument("--atol", type=float, default=1e-3, help="absolute tolerance (0.001)")

    p = command("doctor", cmd_doctor, "will training work here? each check with its fix "
                "(inside the image: what torch sees)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--variant", default=None, help="judge this image variant for the host")
    return parser


# ---------------------------------------------------------------------------
# commands


def _load(args, extra):
    from toolkit.config import load_config, parse_overrides

    loaded = load_config(args.config, parse_overrides(extra))
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return loaded


def _runtime():
    from toolkit.runtime import Runtime

    return Runtime()


def cmd_validate(args, extra) -> int:
    from toolkit.config import dump_resolved

    loaded = _load(args, extra)
    sys.stdout.write(dump_resolved(loaded, explain=args.explain))
    return 0


def _with_local_data(args, extra) -> tuple:
    """The config, with remote datasets (s3://, gs://, az://) fetched to the host's cache
    and the config pointed at the copies; and the overrides to pass on, those included."""
    from toolkit.remote import fetch_remote_datasets, is_remote

    loaded = _load(args, extra)
    raw = [{"path": d.path, "data_files": d.data_files} for d in loaded.config.datasets]
    if not any(is_remote(d["path"]) for d in raw):
        return loaded, extra
    from toolkit.config import load_config, parse_overrides

    fetched = [f"--{key}={value}" for key, value in fetch_remote_datasets(raw).items()]
    extra = [*extra, *fetched]
    return load_config(args.config, parse_overrides(extra)), extra


def cmd_train(args, extra) -> int:
    from toolkit import outputs

    loaded, extra = _with_local_data(args, extra)
    cfg = loaded.config
    distributed = _distributed_args(args)
    runtime = _runtime_of(args)
    if outputs.check_previous(cfg.output_dir, cfg.model_dump(mode="json"),
                              cfg.training_digest()):
        return 0
    with _output_lock(cfg.output_dir, "train") as lock:
        if runtime == "docker":
            code = _in_container("train", args, [*distributed, *extra], loaded,
                                 host_network=args.nnodes > 1, keep_fds=lock.fds)
            if code == 0:
                what = "adapter" if cfg.uses_lora else "model"
                print(f"{what} and tokenizer: {cfg.output_dir}\nmanifest: "
                      f"{cfg.output_dir}/run.json\nlog: {cfg.output_dir}/train.log")
            return code
        if distributed:
            from toolkit.launch import torchrun

            return torchrun(_runtime(), args, distributed, extra)
        from toolkit.trainer import run

        try:
            run(loaded)
        except Exception as exc:
            error = _environment_error(exc, cfg.output_dir)
            if error is None:
                raise
            raise error from None
        return 0


@contextmanager
def _output_lock(output_dir: str, command: str):
    """Hold output_dir's lock for this command and what it launches."""
    from toolkit import outputs

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    lock = outputs.hold(output_dir, command)
    try:
        yield lock
    finally:
        outputs.release(lock)


def _distributed_args(args) -> list[str]:
    """The launch flags to pass on, or [] for one process on one machine."""
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise UsageError("--nproc-per-node and --nnodes must be at least 1")
    if args.nproc_per_node == 1 and args.nnodes == 1:
        return []
    return ["--nproc-per-node", str(args.nproc_per_node), "--nnodes", str(args.nnodes),
            "--node-rank", str(args.node_rank), "--master-addr", args.master_addr,
            "--master-port", str(args.master_port)]


def cmd_preprocess(args, extra) -> int:
    loaded, extra = _with_local_data(args, extra)
    if _runtime_of(args) == "docker":
        return _in_container("preprocess", args, extra, loaded)
    from toolkit.trainer.prepared import preprocess

    print(f"prepared data: {preprocess(loaded)}")
    return 0


def cmd_merge(args, extra) -> int:
    from toolkit.merge import already_merged, check_inputs

    loaded = _load(args, extra)
    out = loaded.config.output_dir
    if check_inputs(loaded, args.allow_config_mismatch) is None or already_merged(Path(out)):
        return 0
    with _output_lock(out, "merge-lora") as lock:
        if _runtime_of(args) == "docker":
            code = _in_container("merge-lora", args,
                                 [*extra, *(["--allow-config-mismatch"]
                                            if args.allow_config_mismatch else [])],
                                 loaded, keep_fds=lock.fds)
            if code == 0:
                print(f"merged model: {out}/merged\nadapter: {out}\nlog: {out}/train.log")
            return code
        from toolkit.merge import merge_lora

        merge_lora(loaded, args.allow_config_mismatch)
        return 0


def _in_container(command: str, args, extra, loaded, host_network: bool = False,
                  keep_fds: tuple[int, ...] = ()) -> int:
    """Run this same command in the image, with the config's paths mounted."""
    from toolkit.launch import config_paths, run_in_container

    reads, writes, network = config_paths(loaded.config)
    argv = ["toolkit", command, str(Path(args.config).absolute()), "--runtime", "local", *extra]
    code = run_in_container(_image(args), argv, [Path(args.config), *reads], writes,
                            "host" if host_network else network, args.gpus, keep_fds)
    return _container_failed(code) if code else 0


def cmd_tiny(args, extra) -> int:
    out = Path(args.out_dir)
    if (out / "config.json").exists():
        print(f"{out} already holds a model; remove it to build a new one")
        return 0
    if _runtime_of(args) == "docker":
        from toolkit.launch import run_in_container

        command = ["toolkit", "tiny-model", str(out.absolute()), "--runtime", "local",
                   "--seed", str(args.seed), *(["--moe"] if args.moe else [])]
        code = run_in_container(_image(args), command, [], [out], gpus=args.gpus)
        return _container_failed(code) if code else 0
    from toolkit.tiny import write_tiny_model

    write_tiny_model(out, moe=args.moe, seed=args.seed)
    print(f"wrote a tiny {'Qwen3-MoE' if args.moe else 'Qwen3'} and its tokenizer to {out}")
    return 0


def cmd_images_list(args, extra) -> int:
    from toolkit.images import list_rows

    rows = list_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["variant", "accelerator", "gpu", "torch", "min_driver", "lock", "tag"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())
    return 0


def cmd_images_build(args, extra) -> int:
    from toolkit.images import BuildOptions, build_image, get_variant

    for flag in ("wheelhouse", "ca_bundle"):
        path = getattr(args, flag)
        if path is not None and not path.exists():
            raise UsageError(f"--{flag.replace('_', '-')} {path}: does not exist")
    opts = BuildOptions(base=args.base, local_base=args.local_base, wheelhouse=args.wheelhouse,
                        online=args.online, ca_bundle=args.ca_bundle, no_cache=args.no_cache,
                        tag=args.tag)
    print(build_image(get_variant(args.variant), _runtime(), opts))
    return 0


def cmd_images_push(args, extra) -> int:
    from toolkit.images import get_variant, push_image, pushed_file

    record = push_image(get_variant(args.variant), _runtime(), args.registry)
    print(f"{record['image']}\nrecorded in {pushed_file()}")
    return 0


def cmd_images_render(args, extra) -> int:
    from toolkit.images import get_variant, render_dockerfile

    sys.stdout.write(render_dockerfile(get_variant(args.variant)))
    return 0


def cmd_images_lock(args, extra) -> int:
    from toolkit.images import get_variant, lock_variant

    print(f"wrote {lock_variant(get_variant(args.variant), _runtime(), args.find_links)}")
    return 0


def cmd_images_select(args, extra) -> int:
    from toolkit.compat import Status, select
    from toolkit.images import load_matrix
    from toolkit.probe import gather

    host = gather(_runtime())
    sel = select(host.facts, [v.facts() for v in load_matrix().values()])
    if args.json:
        print(json.dumps({"variant": sel.variant, "status": sel.status.name,
                          "explanation": sel.explanation, "fix": sel.fix,
                          "gpus": [g.__dict__ for g in host.facts.gpus],
                          "nvidia_driver": host.facts.nvidia_driver}, indent=2))
    else:
        print(sel.variant or "none")
        for line in sel.explanation:
            print(f"  {line}")
        if sel.fix:
            print(f"  fix: {sel.fix}")
    return 1 if sel.status == Status.FAIL else 0


def cmd_images_verify(args, extra) -> int:
    from toolkit.images import verify_image

    return _report(verify_image(args.tag, _runtime()), args.json)


def _launch_inputs(args, extra):
    from toolkit.images import get_variant, pushed_image
    from toolkit.remote import is_remote

    if not is_remote(args.outputs):
        raise UsageError(f"--outputs {args.outputs!r}: a VM's disk goes away with it; give an "
                         "object-store URL (s3://bucket/prefix, gs://…, az://…)")
    loaded = _load(args, extra)
    variant = get_variant(args.variant)
    return loaded, variant, pushed_image(variant.name)["image"]


def cmd_launch_skypilot(args, extra) -> int:
    import yaml

    from toolkit.cloud import skypilot_task, vm_config

    loaded, variant, image = _launch_inputs(args, extra)
    if variant.accelerator != "cpu" and not args.accelerators:
        raise UsageError(f"--accelerators: the {variant.name} image needs GPUs; say which, "
                         "e.g. --accelerators H100:8")
    out = args.output or Path(f"{Path(args.config).stem}.sky.yaml")
    config_file = out.with_name(f"{Path(args.config).stem}.vm.yaml")
    config_file.write_text(yaml.safe_dump(vm_config(loaded)[0], sort_keys=False))
    task = skypilot_task(loaded, image, config_file, args.accelerators, args.nodes, args.outputs)
    out.write_text(yaml.safe_dump(task, sort_keys=False, width=1000))
    print(f"wrote {out} (and {config_file}); run it with `sky launch {out}`, adding "
          "--secret NAME for each secret the run needs (e.g. --secret HF_TOKEN)")
    return 0


def cmd_launch_cloud_init(args, extra) -> int:
    from toolkit.cloud import cloud_init

    loaded, variant, image = _launch_inputs(args, extra)
    out = args.output or Path(f"{Path(args.config).stem}.cloud-init.yaml")
    out.write_text(cloud_init(loaded, image, variant.accelerator, args.outputs))
    print(f"wrote {out}; pass it as the VM's user-data (secrets go in /etc/toolkit/secrets.env "
          "on the VM, never in this file)")
    return 0


def cmd_reproduce(args, extra) -> int:
    from toolkit.compare import report
    from toolkit.reproduce import plan

    rerun = plan(args.run, args.output_dir)
    for note in rerun.notes:
        print(f"reproduce: {note}")
    code = main(rerun.train_argv)
    if code:
        return code
    text, same = report(args.run, str(rerun.output_dir), args.rtol, args.atol)
    print(text)
    return 0 if same else 1


def cmd_compare(args, extra) -> int:
    from toolkit.compare import report

    text, same = report(args.run_a, args.run_b, args.rtol, args.atol)
    print(text)
    return 0 if same else 1


def cmd_doctor(args, extra) -> int:
    from toolkit import doctor
    from toolkit.launch import in_container

    if in_container():
        findings = doctor.container_checks()
    else:
        from toolkit.images import load_matrix
        from toolkit.probe import gather

        findings = doctor.host_checks(gather(_runtime()), list(load_matrix().values()),
                                      wanted=args.variant)
    return _report(findings, args.json)


def _report(findings, as_json: bool) -> int:
    from toolkit.compat import Status
    from toolkit.doctor import render, worst

    if as_json:
        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        print(render(findings))
    return 1 if worst(findings) == Status.FAIL else 0


# ---------------------------------------------------------------------------
# helpers


def _runtime_of(args) -> str:
    from toolkit.launch import default_runtime, in_container

    chosen = args.runtime or default_runtime()
    if chosen == "docker" and in_container():
        raise UsageError("--runtime docker inside the toolkit container: Docker is not "
                         "available here; drop the flag (local is the default inside)")
    return chosen


def _image(args) -> str:
    from toolkit.launch import choose_image

    return choose_image(_runtime(), args.image, args.variant)


def _environment_error(exc: BaseException, where: str | None = None) -> ToolkitError | None:
    """An operating-system error (or a library's error that wraps one, such as
    safetensors' "No space left on device (os error 28)") as one line naming the path and
    the fix, exit 1; None for any other exception."""
    import errno
    import re

    from toolkit.errors import RuntimeFailure

    if isinstance(exc, ToolkitError):
        return None
    seen, cause, code = exc, None, None
    while seen is not None and cause is None:
        if isinstance(seen, OSError) and seen.errno:
            cause, code = seen, seen.errno
        seen = seen.__cause__ or seen.__context__
    if cause is None:
        match = re.search(r"\(os error (\d+)\)", str(exc))
        if not match:
            return None
        code = int(match.group(1))
    where = (cause.filename if cause is not None and cause.filename else None) or where or \
        "a file toolkit writes"
    strerror = (cause.strerror if cause is not None else None) or os.strerror(code)
    fixes = {
        errno.ENOSPC: f"no space left on the device holding {where}; free some space "
                      "(save_total_limit keeps fewer checkpoints) or choose an output_dir on "
                      "a larger disk, then run the same command again to resume",
        errno.EDQUOT: f"disk quota exceeded writing {where}; free some space or choose an "
                      "output_dir elsewhere",
        errno.EROFS: f"{where} is on a read-only filesystem; choose an output_dir you can "
                     "write",
        errno.EACCES: f"permission denied: {where}; make it writable for you "
                      f"(uid {os.getuid()}) or choose another output_dir",
        errno.EPERM: f"operation not permitted on {where}; check its owner and permissions",
    }
    return RuntimeFailure(fixes.get(code, f"{strerror}: {where}"))


def _container_failed(code: int) -> int:
    hint = {75: "it was preempted (SIGTERM) and saved a checkpoint; run the same command "
                "again to resume",
            137: "it was killed (out of memory, or a `docker stop` whose grace period ran out "
                 "before the checkpoint was saved: give it more with `docker stop -t`)",
            125: "docker could not start it (see the message above)"}.get(code, "see its log above")
    print(f"error: the container exited with code {code}: {hint}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
