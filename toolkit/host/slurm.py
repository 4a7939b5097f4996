"""A Slurm batch script: one container per node of the allocation, one torchrun in each.

The job runs the pinned image (a registry digest the nodes pull, or the image ID of a
`docker save` archive on shared storage that each node loads) with the site's engine,
on the host's network so the ranks reach each other. Node 0 of the allocation hosts the
rendezvous (`--master-addr`: the first node of SLURM_JOB_NODELIST, `--node-rank`:
SLURM_NODEID). Everything the job reads or writes lies on storage every node mounts:

    JOB.sh, JOB.config.yaml   the script and the config as toolkit validated it
    JOB.d/hf                  the Hub inputs, fetched once by the first node (pinned
                              commits), read offline by every node
    OUTPUTS                   output_dir: rank 0 alone writes the run there

Inside each container the paths are those of the cloud launch files (toolkit.host.cloud:
/toolkit/config.yaml, /toolkit/outputs, /toolkit/hf, /toolkit/model, /toolkit/data/N).

Node 0's `toolkit train` writes the run: it holds output_dir's lock and writes the pins,
the records and the pushes; the other nodes (`--node-rank` > 0) start once node 0 holds
the lock, take none, and write into output_dir only what transformers has every rank
write into a checkpoint (its RNG state).

Preemption: `--signal=TERM@120` asks the ranks to save a checkpoint two minutes before
the time limit (or when the scheduler preempts with SIGTERM); node 0's container exits
75, and the script requeues the job (`--requeue`), which resumes from that checkpoint.
"""

from __future__ import annotations

import json
import re
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toolkit.config import LoadedConfig
from toolkit.containers.spec import Mount, RunSpec, run_argv
from toolkit.errors import Preempted, UsageError
from toolkit.host.cloud import (
    VM,
    VM_HF,
    check_launch_values,
    hub_steps,
    vm_config,
    vm_inputs,
    vm_secrets,
)
from toolkit.host.launchfiles import check_text, slurm_value
from toolkit.host.place import device_flags
from toolkit.host.remote import is_remote
from toolkit.outputs import STATE_DIR

Engine = Literal["docker", "podman", "apptainer"]
PREEMPTED = Preempted.exit_code  # the ranks saved a checkpoint: resume from it


@dataclass(frozen=True)
class Allocation:
    """What the script asks Slurm for (the #SBATCH lines)."""

    nodes: int
    nproc_per_node: int = 1
    gpus_per_node: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None

    def directives(self, name: str, log: Path) -> list[str]:
        lines = [
            f"--job-name={name}",
            f"--nodes={self.nodes}",
            "--ntasks-per-node=1",
            # Two minutes before the time limit (or when the scheduler preempts): SIGTERM
            # to the step, which saves a checkpoint and exits 75; the script requeues.
            "--signal=TERM@120",
            "--requeue",
            f"--output={log}",
            "--open-mode=append",  # a requeued job adds to the same log
        ]
        if self.gpus_per_node:
            lines += [f"--gpus-per-node={self.gpus_per_node}", "--exclusive"]
        for key in ("partition", "time", "account"):
            if getattr(self, key):
                lines.append(f"--{key}={getattr(self, key)}")
        return [f"#SBATCH {shlex.quote(line)}" for line in lines]


@dataclass(frozen=True)
class Image:
    """The image every node runs: `ref` pulled from a registry (a digest), or, with an
    `archive`, loaded from it; `ref` is then the archive's image ID."""

    ref: str
    archive: Path | None = None


def archive_image(path: Path) -> Image:
    """The image in a `docker save` archive, by ID (the sha256 of its configuration,
    which the archive's manifest names), so the job runs exactly that image."""
    where = f"--image-archive {path}"
    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile("manifest.json")
            manifest = json.loads(member.read(1 << 20)) if member else None
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        raise UsageError(
            f"{where}: not a `docker save` archive ({exc}); make one with "
            "`docker save IMAGE -o FILE` on storage every node reads"
        ) from None
    configs = [m.get("Config", "") for m in manifest or [] if isinstance(m, dict)]
    ids = {m.group(1) for c in configs if (m := re.search(r"([0-9a-f]{64})\.json$", c))}
    if len(ids) != 1:
        raise UsageError(
            f"{where}: holds {len(ids)} images; the job runs one: save one image per archive"
        )
    return Image(f"sha256:{ids.pop()}", path.absolute())


def job_files(script: Path) -> tuple[Path, Path]:
    """Beside the script JOB.sh: the config it runs (JOB.config.yaml) and its folder
    (JOB.d: the Hub cache, the nodes' exit codes, Slurm's log), which must exist before sbatch."""
    script = script.absolute()
    return script.with_suffix(".config.yaml"), script.with_suffix(".d")


def batch_script(
    loaded: LoadedConfig,
    image: Image,
    accelerator: str,
    allocation: Allocation,
    script: Path,
    outputs: Path,
    engine: Engine = "docker",
    pins: list | None = None,
) -> str:
    """The sbatch script (pure): the image on each node, the Hub fetch once, one
    torchrun per node, requeue after a preemption. Every value it carries is checked
    for where it lands (toolkit.host.launchfiles): UsageError naming the first that
    could be read as anything but data."""
    _check_values(loaded, image, allocation, script, outputs, engine)
    _data, copies = vm_config(loaded)
    remote = sorted(src for src in copies.values() if is_remote(src))
    if remote:
        raise UsageError(
            f"a Slurm job reads its inputs from shared storage, not {', '.join(remote)}; "
            "copy them to a folder every node mounts and point the config there"
        )
    config_file, job = job_files(script)
    fetch_env, train_env = hub_steps(pins or [])
    inputs = [Mount(src, target) for target, src in copies.items()]
    mounts = [
        Mount(str(config_file.absolute()), str(VM / "config.yaml")),
        *inputs,
        Mount(str(outputs), str(VM / "outputs"), read_only=False),
    ]
    if train_env:
        mounts.append(Mount(str(job / "hf"), str(VM_HF)))
    train = RunSpec(
        image=image.ref,
        command=[
            "toolkit",
            "train",
            str(VM / "config.yaml"),
            "--runtime",
            "local",
            *("--nproc-per-node", str(allocation.nproc_per_node)),
            *("--nnodes", str(allocation.nodes)),
        ],
        mounts=mounts,
        workdir="/",
        env=train_env,
        network="host",  # the rendezvous and the ranks' own ports, across nodes
        devices=device_flags(accelerator, None, ("video", "render")),
        secrets=vm_secrets(loaded.config),
    )
    fetch = RunSpec(
        image=image.ref,
        command=["toolkit", "fetch", str(VM / "config.yaml")],
        mounts=[mounts[0], *inputs, Mount(str(job / "hf"), str(VM_HF), read_only=False)],
        workdir="/",
        env=fetch_env,
        devices=device_flags("cpu"),
        secrets=("HF_TOKEN",),
    )
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# Written by `toolkit launch slurm` for {loaded.path}; submit it with sbatch",
        "# (`sbatch --wait` returns the job's exit code). Its paths must be on storage",
        "# every node mounts.",
        # sbatch expands %-patterns in the log's name: the folder's own % are doubled.
        *allocation.directives(
            f"toolkit-{Path(loaded.path).stem}",
            Path(str(job).replace("%", "%%")) / "slurm-%j.log",
        ),
        "set -euo pipefail",
        f"ENGINE={q(engine)}",
        f"IMAGE={q(image.ref)}",
        f"JOB={q(str(job))}",
        f"OUTPUTS={q(str(outputs))}",
        "export ENGINE IMAGE JOB OUTPUTS  # for the steps srun starts",
        "# The credentials a container needs go in on its stdin as one JSON line (never",
        "# in its configuration, which `inspect` shows); names only in this file.",
        "secrets_json() {",
        "  python3 -c 'import json, os, sys; print(json.dumps("
        '{n: os.environ[n] for n in sys.argv[1:] if n in os.environ}))\' "$@"',
        "}",
        'mkdir -p "$JOB/hf" "$OUTPUTS"',
        *_image_steps(image),
        *(
            [
                "# Hub inputs at the commits pinned at launch, once, on the first node;",
                "# the nodes read them offline.",
                f'if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then {_run_line(fetch)}; fi',
            ]
            if fetch_env
            else []
        ),
        "# Node 0 of the allocation hosts the rendezvous: its address as Slurm knows it.",
        'FIRST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        "MASTER_ADDR=$(scontrol show node \"$FIRST\" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
        "MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))  # two jobs on a node: two ports",
        "export MASTER_ADDR MASTER_PORT",
        "export -f secrets_json",
        'rm -f "$JOB"/exit-*',
        "status=0",
        f"srun --kill-on-bad-exit=1 bash -c {q(_node_step(train, engine, image))} || status=$?",
        "# Node 0's ranks saved the checkpoint when its container says 75; srun's own code",
        "# may be another node's, ended by srun once node 0 had exited.",
        f'if [ "$(cat "$JOB/exit-0" 2>/dev/null)" = {PREEMPTED} ]; then',
        '  echo "toolkit: preempted with a checkpoint (exit 75); requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        f"  status={PREEMPTED}",
        "fi",
        "exit $status",
        "",
    ]
    return "\n".join(lines)


def _check_values(
    loaded: LoadedConfig,
    image: Image,
    allocation: Allocation,
    script: Path,
    outputs: Path,
    engine: Engine,
) -> None:
    """Refuse what the script could not carry as data: control characters in any path
    (a newline would end a `#SBATCH` line or a comment, and the next line would run),
    option values not in Slurm's forms, a backslash in the script's name (sbatch then
    reads its log's name without patterns), and, for Apptainer, a `,` or `:` in a bound
    path (its --bind list has no escape: a comma adds a bind of its own)."""
    check_launch_values(loaded, str(outputs))
    check_text(str(script), "-o")
    if "\\" in str(script):
        raise UsageError(
            f"-o {script}: a backslash in the script's name makes sbatch ignore the "
            "patterns of its log's name (slurm-%j.log); choose a name without one"
        )
    if image.archive is not None:
        check_text(str(image.archive), "--image-archive")
    check_text(image.ref, "--variant's image")
    for option in ("partition", "time", "account"):
        slurm_value(f"--{option}", getattr(allocation, option))
    if engine != "apptainer":
        return
    config_file, job = job_files(script)
    binds = [(found.key, found.source) for found in vm_inputs(loaded.config)]
    binds += [("-o", str(config_file)), ("-o", str(job)), ("--outputs", str(outputs))]
    binds += [(found.key, found.target) for found in vm_inputs(loaded.config)]
    for where, path in binds:
        bad = sorted({c for c in ",:\\" if c in path})
        if bad:
            raise UsageError(
                f"{where} {path}: Apptainer reads its binds as a list split at ',' and "
                f"':', with no escape, so {' and '.join(repr(c) for c in bad)} in a bound "
                "path would add or cut a bind; rename it (or link it from a name without "
                "them), or run the nodes with --engine docker or podman, whose mounts "
                "carry any name"
            )


def _image_steps(image: Image) -> list[str]:
    """On every node: the image, loaded from the archive or pulled by digest, unless the
    engine has it already (Apptainer reads either where it is)."""
    have = '"$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1'
    get = (
        f'"$ENGINE" load -i {shlex.quote(str(image.archive))}'
        if image.archive
        else '"$ENGINE" pull "$IMAGE"'
    )
    return [
        "# The pinned image on every node of the allocation.",
        'if [ "$ENGINE" != apptainer ]; then',
        f"  srun --ntasks-per-node=1 bash -c {shlex.quote(f'{have} || {get}')}",
        "fi",
    ]


def _run_line(spec: RunSpec, extra: str = "") -> str:
    """The engine's command line for a spec, with the engine and image from the script's
    variables and `extra` (shell text) after `run`; its credentials piped to its stdin."""
    argv = run_argv(spec)
    at = argv.index(spec.image, 2)
    words = [
        '"$ENGINE" run',
        *([extra] if extra else []),
        *(shlex.quote(a) for a in argv[2:at]),
        '"$IMAGE"',
        *(shlex.quote(a) for a in argv[at + 1 :]),
    ]
    line = " ".join(words)
    return f"secrets_json {shlex.join(spec.secrets)} | {line}" if spec.secrets else line


RANK_FLAGS = '--node-rank "$SLURM_NODEID" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"'


def _node_step(train: RunSpec, engine: Engine, image: Image) -> str:
    """What srun runs once on each node: the training container for this node's rank,
    on nodes after the first once node 0 holds the run's lock (see the module's note).

    Its exit code is the container's (also left in JOB.d/exit-N), not the engine
    client's: Slurm signals every process of the step, the client among them, and again
    when srun ends the step after another node's exit 75 (--kill-on-bad-exit), so the
    client may die of a SIGTERM while the ranks still save. The first SIGTERM goes on to
    the container, the rest are ignored, and the engine says how the container ended."""
    if engine == "apptainer":
        return _apptainer_step(train, image)
    # docker: as the submitting user, so the outputs are theirs; rootless podman's root
    # is that user already.
    user = '--user "$(id -u):$(id -g)" ' if engine == "docker" else ""
    run = _run_line(train, f'--name "$NAME" --sig-proxy=false {user}'.rstrip())
    run = run.replace(" --rm ", " ", 1)  # removed below, once its exit code is read
    return "\n".join(
        [
            *_after_the_first(),
            'NAME="toolkit-$SLURM_JOB_ID-$SLURM_NODEID"',
            '"$ENGINE" rm -f "$NAME" >/dev/null 2>&1 || true  # left by a killed attempt',
            "forward() {",
            "  trap '' TERM",
            '  "$ENGINE" kill --signal TERM "$NAME" >/dev/null 2>&1 || true',
            "}",
            "trap forward TERM",
            f"{run} {RANK_FLAGS} &",
            "client=$!",
            'while kill -0 "$client" 2>/dev/null; do wait "$client" || true; done',
            *_container_exit_code(),
            '"$ENGINE" rm "$NAME" >/dev/null 2>&1 || true',
            'echo "$status" > "$JOB/exit-$SLURM_NODEID"',
            'exit "$status"',
        ]
    )


def _container_exit_code() -> list[str]:
    """Shell: `status`, the container's exit code once it has ended, read from the engine
    until it answers: a `wait` or `inspect` client can itself be ended by the signals
    Slurm sends the step (srun ends the step when another node exits 75 first), and the
    ranks may still be saving then. A container the engine does not know (five
    inspections in a row unanswered: never created) or never started is 125, the
    engine's own code for a container that did not run."""
    state = '"$ENGINE" inspect --format \'{{.State.Status}} {{.State.ExitCode}}\' "$NAME"'
    return [
        'status=""',
        "missed=0  # inspections in a row that got no answer",
        "for _ in $(seq 900); do",
        f"  if state=$({state} 2>/dev/null); then",
        "    missed=0",
        '    case "${state%% *}" in',
        "      exited|stopped|dead) status=${state##* }; break ;;",
        "      created|configured) status=125; break ;;",
        '      *) "$ENGINE" wait "$NAME" >/dev/null 2>&1 || sleep 1 || true ;;',
        "    esac",
        "  else",
        "    missed=$((missed + 1))",
        '    if [ "$missed" -ge 5 ]; then break; fi',
        "    sleep 1 || true",
        "  fi",
        "done",
        "status=${status:-125}",
    ]


def _after_the_first() -> list[str]:
    """Shell: on a node after the first, wait until node 0 holds output_dir's lock, so
    the run it validates against is node 0's (a folder with its lock, not one with
    someone else's files)."""
    lock = f"$OUTPUTS/{STATE_DIR}/lock"
    return [
        "set -euo pipefail",
        'if [ "$SLURM_NODEID" != 0 ]; then',
        f'  for _ in $(seq 600); do [ -f "{lock}" ] && break; sleep 1; done',
        f'  [ -f "{lock}" ] || {{ echo "toolkit: node 0 did not start the run" >&2; exit 1; }}',
        "fi",
    ]


def _apptainer_step(train: RunSpec, image: Image) -> str:
    """Apptainer/Singularity (written, not tested here: neither is available on our
    machines): the image from the registry or the archive; the host's network and the
    submitting user are Apptainer's defaults. Credentials go in as APPTAINERENV_*
    variables, which --cleanenv lets through and no command line shows."""
    source = f"docker-archive:{image.archive}" if image.archive else f"docker://{image.ref}"
    binds = ",".join(
        f"{m.host}:{m.container}:{'ro' if m.read_only else 'rw'}" for m in train.mounts
    )
    env = " ".join(f"--env {shlex.quote(f'{k}={v}')}" for k, v in train.env.items())
    return "\n".join(
        [
            *_after_the_first(),
            f"BINDS={shlex.quote(binds)}",
            *(f'export APPTAINERENV_{n}="${{{n}:-}}"' for n in train.secrets),
            f'exec apptainer exec --cleanenv --bind "$BINDS" {env} {shlex.quote(source)} '
            f"{shlex.join(train.command)} {RANK_FLAGS}",
        ]
    )
