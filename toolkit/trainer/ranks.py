"""`python -m toolkit.trainer.ranks TORCHRUN_FLAGS... PLAN`: this machine's ranks of a
run plan, started by torch's own launcher (torchrun's agent, in this process), with
exit codes and messages as the toolkit command's rather than torchrun's.

torchrun itself ends a SIGTERM (a scheduler's preemption, `docker stop`) with a
traceback and exit 1, and a rank's failure with a box of its own, whether or not the
ranks saved a checkpoint. Here: 75 when rank 0 recorded that this launch stopped with a
checkpoint (the ranks agree on the step, see checkpoints.Preemption), else the ranks'
own exit code with one line naming the rank, or 128+N for a signal."""

from __future__ import annotations

import os
import signal
import sys

from toolkit.errors import Preempted, exit_code_of
from toolkit.outputs import read_segments
from toolkit.plan import read

# How long the launcher waits, after passing a SIGTERM on, for its ranks to finish the
# step and save before it kills them (torch's default is 30 s; Slurm's --signal=TERM@120
# leaves two minutes). A value the user set is kept.
SHUTDOWN_TIMEOUT_S = "110"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[-1].startswith("-"):
        print("usage: python -m toolkit.trainer.ranks TORCHRUN_FLAGS... PLAN", file=sys.stderr)
        return 2
    *flags, plan_file = argv
    try:
        plan = read(plan_file)
    except BaseException as exc:
        return exit_code_of(exc)
    output_dir = plan.config.output_dir if plan.config and plan.task.kind == "train" else None
    before = len(read_segments(output_dir)) if output_dir else 0

    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_TIMEOUT_S)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as launch

    try:
        launch(parse_args([*flags, "-m", "toolkit.trainer", plan_file]))
        return 0
    except SignalException as exc:
        if _preempted(output_dir, before):
            return Preempted.exit_code
        print(
            f"toolkit: stopped by {_name(exc.sigval)} before a checkpoint of this run was "
            "saved; run the same command again to resume from the newest complete one "
            "(or from step 0 if there is none)",
            file=sys.stderr,
        )
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        if _preempted(output_dir, before):
            return Preempted.exit_code
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        ended = f"exit code {code}" if code >= 0 else _name(-code)
        print(
            f"toolkit: rank {rank} ended first, with {ended} (its own message is above)",
            file=sys.stderr,
        )
        return code if code > 0 else 128 - code


def _preempted(output_dir: str | None, before: int) -> bool:
    """Rank 0 recorded, in this launch, that the run stopped with a checkpoint."""
    if not output_dir:
        return False
    segments = read_segments(output_dir)
    return len(segments) > before and segments[-1].get("outcome") == "preempted"


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
