"""The tiny demo job run locally and in the cpu image, and the image rebuild after a
code-only change.

    .venv/bin/python bench/container_overhead.py [RUNS]

Needs the Docker engine and the demo model (`make tiny-model`). Prints the median
wall time of RUNS (default 3) runs of `toolkit train configs/tiny-cpu-demo.yaml`
with --runtime local and --runtime docker (alternating, same outputs folder kind),
their ratio (target ≤ 1.15), and the time of `toolkit images build cpu` in a copy
of the checkout after a one-line change to toolkit's source (target ≤ 20 s).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLKIT = str(Path(sys.executable).parent / "toolkit")


def run(argv: list[str], cwd: Path = REPO, env: dict | None = None) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    run([TOOLKIT, "tiny-model", ".cache/tiny-qwen3", "--runtime", "local"])
    run([TOOLKIT, "images", "build", "cpu"])  # so that no build lands in a timed run
    times: dict[str, list[float]] = {"local": [], "docker": []}
    with tempfile.TemporaryDirectory(dir=REPO / ".cache") as out:
        for i in range(runs):
            for runtime in ("local", "docker"):
                times[runtime].append(
                    run(
                        [
                            TOOLKIT,
                            "train",
                            "configs/tiny-cpu-demo.yaml",
                            "--runtime",
                            runtime,
                            "--output-dir",
                            f"{out}/{runtime}-{i}",
                        ]
                    )
                )
    local, docker = (statistics.median(times[k]) for k in ("local", "docker"))
    print(f"tiny job, local    median {local:.1f} s  {[round(t, 1) for t in times['local']]}")
    print(f"tiny job, docker   median {docker:.1f} s  {[round(t, 1) for t in times['docker']]}")
    print(f"container / local  {docker / local:.2f}  (target ≤ 1.15)")

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "toolkit"
        files = subprocess.run(
            ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
        for name in files:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
        env = {"TOOLKIT_CACHE": str(REPO / ".cache"), "PYTHONPATH": str(copy)}
        build = [sys.executable, "-m", "toolkit", "images", "build", "cpu"]
        run(build, cwd=copy, env=env)
        with (copy / "toolkit" / "cli" / "__init__.py").open("a") as f:
            f.write("\n# a code-only change\n")
        seconds = run(build, cwd=copy, env=env)
    print(f"rebuild after a code-only change  {seconds:.1f} s  (target ≤ 20 s)")


if __name__ == "__main__":
    main()
