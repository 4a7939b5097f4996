"""How long the host CLI takes to start: `toolkit --help` and `toolkit validate`.

    .venv/bin/python bench/cli_startup.py [RUNS]

Prints the median and the fastest of RUNS (default 15) runs of each command, in
seconds, against the target (≤ 0.1 s for --help).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLKIT = str(Path(sys.executable).parent / "toolkit")


def timed(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, cwd=REPO, capture_output=True, check=True)
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    demo = ["--base-model", "Qwen/Qwen3-0.6B"]  # the demo's tiny model need not exist
    for label, argv in (
        ("toolkit --help", [TOOLKIT, "--help"]),
        ("toolkit validate (demo)", [TOOLKIT, "validate", "configs/tiny-cpu-demo.yaml", *demo]),
    ):
        times = timed(argv, runs)
        print(
            f"{label:<26} median {statistics.median(times):.3f} s  fastest {min(times):.3f} s"
            f"  ({runs} runs)"
        )


if __name__ == "__main__":
    main()
