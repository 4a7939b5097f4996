"""Multi-node overhead: the demo job as two "nodes" (two containers on the host's network,
one rank each, meeting at node 0 as every Slurm node, SkyPilot VM or cloud-init VM
does) against two processes in one container on one node, same data and steps.

    .venv/bin/python bench/multinode.py [RUNS]

Needs the Docker engine. Prints the median wall time of RUNS (default 3) runs of each
(alternating), the training time run.json records (train_seconds), and the ratios
two nodes / one node (target ≤ 1.3).

Each container runs the image's `toolkit train --runtime local` as a Slurm node does,
with OMP_NUM_THREADS=1 per rank in both layouts: the two "nodes" share this machine's
cores, and a rank of each that takes every core (what suits a real node) would
oversubscribe them (torchrun sets 1 itself for two processes in one container).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLKIT = str(Path(sys.executable).parent / "toolkit")


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def in_image(image: str, out: str, *flags: str) -> list[str]:
    """`toolkit train` of the demo in the image, as a node runs it: the checkout read-only
    at its own path (the demo's relative paths), `out` writable, the host's network."""
    return [
        "docker", "run", "--rm", "--init", "--network", "host", "--shm-size", "1g",
        "--env", "OMP_NUM_THREADS=1", "--workdir", str(REPO),
        "--mount", f"type=bind,source={REPO},target={REPO},readonly",
        "--mount", f"type=bind,source={out},target={out}",
        image, "toolkit", "train", "configs/tiny-cpu-demo.yaml", "--runtime", "local",
        "--save-steps", "100", "--output-dir", out, *flags,
    ]  # fmt: skip


def wait_all(argvs: list[list[str]]) -> float:
    """Start the commands together; the wall time until the last one ends."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for argv in argvs
    ]
    outputs = [p.communicate()[0].decode(errors="replace") for p in procs]
    elapsed = time.perf_counter() - started
    for argv, proc, out in zip(argvs, procs, outputs, strict=True):
        if proc.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed:\n{out[-2000:]}")
    return elapsed


def one_node(image: str, out: str) -> float:
    os.makedirs(out)
    flags = ("--nproc-per-node", "2", "--master-port", free_port())
    return wait_all([in_image(image, out, *flags)])


def two_nodes(image: str, out: str) -> float:
    port = free_port()
    for rank in (0, 1):
        os.makedirs(f"{out}/node-{rank}")
    return wait_all(
        [
            in_image(image, f"{out}/node-{rank}", "--nnodes", "2", "--node-rank", str(rank),
                     "--master-addr", "127.0.0.1", "--master-port", port)
            for rank in (0, 1)
        ]
    )  # fmt: skip


def train_seconds(out: str) -> float:
    return json.loads((Path(out) / "run.json").read_text())["train_seconds"]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    subprocess.run([TOOLKIT, "tiny-model", ".cache/tiny-qwen3"], cwd=REPO, check=True)
    built = subprocess.run(
        [TOOLKIT, "images", "build", "cpu"], cwd=REPO, check=True, capture_output=True, text=True
    )
    image = built.stdout.split()[-1]  # the tag it prints last
    wall: dict[str, list[float]] = {"one node, 2 processes": [], "two nodes, 1 process each": []}
    trained: dict[str, list[float]] = {k: [] for k in wall}
    with tempfile.TemporaryDirectory(dir=REPO / ".cache") as tmp:
        for i in range(runs):
            one, two = f"{tmp}/one-{i}", f"{tmp}/two-{i}"
            wall["one node, 2 processes"].append(one_node(image, one))
            trained["one node, 2 processes"].append(train_seconds(one))
            wall["two nodes, 1 process each"].append(two_nodes(image, two))
            trained["two nodes, 1 process each"].append(train_seconds(f"{two}/node-0"))
    for name in wall:
        print(
            f"{name:27} wall median {statistics.median(wall[name]):5.1f} s "
            f"{[round(t, 1) for t in wall[name]]}; train_seconds median "
            f"{statistics.median(trained[name]):5.2f} s {[round(t, 2) for t in trained[name]]}"
        )
    one_w, two_w = (statistics.median(wall[k]) for k in wall)
    one_t, two_t = (statistics.median(trained[k]) for k in wall)
    print(f"two nodes / one node: wall {two_w / one_w:.2f}, training {two_t / one_t:.2f} (≤ 1.3)")


if __name__ == "__main__":
    main()
