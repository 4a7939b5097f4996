"""Data at scale: `toolkit preprocess` and the start of `toolkit train` on growing sets.

    .venv/bin/python bench/scale.py [--rows 20000,80000,200000] [--seq 2048] [--seed 0]
                                    [--train] [--keep DIR]

For each size, generates the long-tailed chat set (bench/longtail.py; --seed picks
another draw, for held-out data) and prints:

  floor       what preprocessing cannot go below: every row rendered once with the
              template and tokenized in Rust batches, in one process, no torch import
              (toolkit's own templates, the tiny tokenizer's tokenizer.json)
  preprocess  `toolkit preprocess` on a cold cache in a fresh process: wall time, time
              per row, CPU time (all processes), peak RSS (the largest process), and
              wall time / floor and CPU time / floor's CPU time (the steadier figure on
              a shared machine)
  train       with --train, `toolkit train --max-steps 2` on the prepared rows: peak RSS

Peak RSS is getrusage's ru_maxrss of the command's process tree, read in a fresh
process per command, so one command's peak never hides another's.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longtail  # noqa: E402

TOOLKIT = [sys.executable, "-m", "toolkit"]


def measure(command: list[str]) -> dict:
    """Run `command` from a fresh process that reports its wall time, CPU time and peak
    RSS (the largest process of its tree)."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure", "--", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    *_, last = out.stdout.strip().splitlines() or [""]
    if out.returncode or not last.startswith("{"):
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    return json.loads(last)


def _measured(command: list[str]) -> None:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        print(done.stdout[-3000:], done.stderr[-3000:])
        raise SystemExit(done.returncode)
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(done.stdout)
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": use.ru_utime + use.ru_stime,
                "peak_mb": use.ru_maxrss / 1024,
                "stdout": done.stdout[-2000:],
            }
        )
    )


def _floor(data: Path, tokenizer_json: Path) -> None:
    """Render every row once and tokenize in batches; print the two times."""
    from tokenizers import Tokenizer

    from toolkit.templates import plain_renderer, template_text

    render = plain_renderer(template_text("qwen3"))
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    rendering = tokenizing = 0.0
    batch: list[str] = []

    def flush() -> float:
        started = time.perf_counter()
        tokenizer.encode_batch(batch, add_special_tokens=False)
        batch.clear()
        return time.perf_counter() - started

    with data.open(encoding="utf-8") as f:
        for line in f:
            started = time.perf_counter()
            batch.append(render(messages=json.loads(line)["messages"]))
            rendering += time.perf_counter() - started
            if len(batch) == 256:
                tokenizing += flush()
    tokenizing += flush()
    assert "torch" not in sys.modules, "the floor must not import torch"
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "render_s": rendering,
                "tokenize_s": tokenizing,
                "cpu_s": use.ru_utime + use.ru_stime,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="20000,80000,200000")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--keep", type=Path, help="generate and prepare under DIR, kept")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="toolkit-scale-"))
    print(f"long-tailed chat rows (seed {args.seed}), sequence_len {args.seq}, under {root}")
    header = (
        f"{'rows':>8} {'floor s':>8} {'cpu s':>6} {'prep s':>7} {'ms/row':>7} {'cpu s':>7} "
        f"{'peak MB':>8} {'/floor':>7} {'cpu/floor':>9}"
        + (f" {'train peak MB':>14}" if args.train else "")
    )
    print(header)
    for rows in (int(n) for n in args.rows.split(",")):
        tmp = root / f"rows-{rows}-seed-{args.seed}"
        tmp.mkdir(parents=True, exist_ok=True)
        config, model, data = longtail.workspace(
            tmp,
            rows,
            args.seq,
            seed=args.seed,
            dataset_prepared_path=str(tmp / "prepared"),
            output_dir=str(tmp / "out"),
        )
        # A cold cache, also when --keep reuses the folder.
        shutil.rmtree(tmp / "prepared", ignore_errors=True)
        floor = json.loads(
            subprocess.run(
                [sys.executable, __file__, "--floor", str(data), str(model / "tokenizer.json")],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()[-1]
        )
        floor_s = floor["render_s"] + floor["tokenize_s"]
        prep = measure([*TOOLKIT, "preprocess", str(config), "--runtime", "local"])
        line = (
            f"{rows:>8} {floor_s:>8.1f} {floor['cpu_s']:>6.1f} {prep['wall_s']:>7.1f} "
            f"{1000 * prep['wall_s'] / rows:>7.3f} {prep['cpu_s']:>7.1f} "
            f"{prep['peak_mb']:>8.0f} {prep['wall_s'] / floor_s:>7.2f} "
            f"{prep['cpu_s'] / floor['cpu_s']:>9.2f}"
        )
        if args.train:
            train = measure(
                [*TOOLKIT, "train", str(config), "--runtime", "local", "--max-steps", "2"]
            )
            line += f" {train['peak_mb']:>14.0f}"
        print(line, flush=True)
        for text in prep["stdout"].splitlines():
            if text.startswith("data: ") and "rows read" in text:
                print(f"{'':>8} {text}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        _measured(sys.argv[3:])
    elif sys.argv[1:2] == ["--floor"]:
        _floor(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
