"""Two "nodes" without a scheduler, as a SkyPilot task or two cloud-init VMs run them:
each runs `toolkit train --nnodes 2 --node-rank 0|1 --master-addr ADDR` in its own
container on the host's network; the ranks meet at node 0 (gloo) and train like two
processes on one node. Each VM has its own disk, so each node has its own output_dir;
rank 0 alone writes the run."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import yaml
from conftest import DEMO_CONFIG
from helpers import read_run

from toolkit.cli import main

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_containers_meet_at_node_0_and_train_like_two_processes(image, shared, capsys):
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config.update(
        base_model=str(shared / "model"),
        output_dir=str(shared / "unused"),
        max_steps=10,
        save_steps=5,
        logging_steps=2,
        val_set_size=0.0,
    )
    config["datasets"][0]["path"] = str(shared / "chat.jsonl")
    path = shared / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    train = [sys.executable, "-m", "toolkit", "train", str(path), "--image", image]
    port = str(_free_port())
    nodes = [
        subprocess.Popen(
            [
                *train,
                *("--output-dir", str(shared / f"node-{rank}")),
                *("--nnodes", "2", "--node-rank", str(rank)),
                *("--master-addr", "127.0.0.1", "--master-port", port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "on the host's network (multi-node)" in logs[0] + logs[1]
    run = read_run(shared / "node-0")
    assert run["world_size"] == 2 and run["steps"] == 10
    assert not (shared / "node-1" / "run.json").exists()  # rank 0 alone writes the run
    one = shared / "one-node"
    argv = [*train[3:], "--output-dir", str(one), "--nproc-per-node", "2"]
    assert main([*argv, "--master-port", str(_free_port())]) == 0
    capsys.readouterr()
    assert main(["compare", str(shared / "node-0"), str(one)]) == 0
    assert "SAME" in capsys.readouterr().out
