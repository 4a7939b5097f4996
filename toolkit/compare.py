"""`toolkit compare RUN_A RUN_B`: do two runs' loss curves agree? The portability check
(one config on AMD and on NVIDIA, or on the host and in the image).

Reads each run's run.json (given its output_dir or the file) through toolkit.record's
typed reader, compares the losses at the steps both logged, and prints a verdict: the
same within tolerance, or where they part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from toolkit import record
from toolkit.errors import UsageError
from toolkit.record import RunRecord


@dataclass
class Comparison:
    steps: list[int]
    max_abs: float
    max_rel: float
    worst_step: int | None
    same: bool
    notes: list[str]


def read_run(ref: str | Path) -> RunRecord:
    """A run's validated record (toolkit.record), with the loss history compare needs."""
    run = record.read(ref)
    if not run.loss_history:
        raise UsageError(f"{run.path}: no loss_history; the run logged no training loss")
    return run


def compare(a: RunRecord, b: RunRecord, rtol: float, atol: float) -> Comparison:
    la, lb = dict(a.loss_history), dict(b.loss_history)
    steps = sorted(set(la) & set(lb))
    from toolkit.record import config_differences

    notes = []
    differences = config_differences(a.config or {}, b.config or {})
    if differences:
        shown = "; ".join(differences[:4]) + (
            f" and {len(differences) - 4} more" if len(differences) > 4 else ""
        )
        notes.append(f"the two configs differ in {shown}; curves may differ for that alone")
    if set(la) != set(lb):
        notes.append(
            f"compared the {len(steps)} steps both logged ({len(la)} and {len(lb)} logged)"
        )
    if not steps:
        return Comparison(
            [], float("inf"), float("inf"), None, False, [*notes, "no step was logged by both runs"]
        )
    worst, max_abs, max_rel, same = None, 0.0, 0.0, True
    for step in steps:
        diff = abs(la[step] - lb[step])
        rel = diff / abs(lb[step]) if lb[step] else float("inf") if diff else 0.0
        if diff > max_abs:
            worst, max_abs = step, diff
        max_rel = max(max_rel, rel)
        same = same and diff <= atol + rtol * abs(lb[step])
    return Comparison(steps, max_abs, max_rel, worst, same, notes)


def _where(env: record.Environment | None) -> str:
    """The image a run trained in, or "host": a run started inside an image by hand
    records no tag, but the image's variant and that it was in a container."""
    if env is None:
        return "host"
    if env.image:
        return env.image
    if env.in_container:
        return f"the {env.variant} image (tag not recorded)" if env.variant else "an image"
    return "host"


def describe(run: RunRecord) -> str:
    env = run.environment
    resolved = run.resolved or {}
    torch = (env.libraries.get("torch") if env else None) or "?"
    where = _where(env)
    device, dtype = (record.printable(resolved.get(k, "?"), 60) for k in ("device_name", "dtype"))
    return (
        f"{device} ({dtype}), {where}, torch {record.printable(torch, 60)}, "
        f"final loss {run.final_loss}"
    )


def report(ref_a: str, ref_b: str, rtol: float, atol: float) -> tuple[str, bool]:
    a, b = read_run(ref_a), read_run(ref_b)
    result = compare(a, b, rtol, atol)
    lines = [f"A: {ref_a}: {describe(a)}", f"B: {ref_b}: {describe(b)}"]
    lines += [f"note: {n}" for n in result.notes]
    if result.steps and result.worst_step is None:
        lines.append(f"{len(result.steps)} steps compared; the losses are identical at every step")
    elif result.steps:
        lines.append(
            f"{len(result.steps)} steps compared; largest difference {result.max_abs:.3g} "
            f"at step {result.worst_step} (relative {result.max_rel:.3g})"
        )
    verdict = "SAME" if result.same else "DIFFERENT"
    lines.append(f"{verdict} within rtol={rtol:g}, atol={atol:g}")
    return "\n".join(lines), result.same
