"""Two processes with DDP (gloo on CPU) train like one process with the same global batch,
and stop together, with one checkpoint, on a SIGTERM that reaches any of them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import read_run

from toolkit.cli import main

COMMON = {
    "max_steps": 10,
    "logging_steps": 2,
    "save_steps": 100,
    "val_set_size": 0.0,
    "micro_batch_size": 4,
    "learning_rate": 0.003,
}

pytestmark = pytest.mark.slow  # real multi-process or full-example training


def losses(out):
    run = read_run(out)
    return run, [loss for _, loss in run["loss_history"]]


def test_two_process_ddp_matches_one_process(tiny_model_dir, write_config, tmp_path, capfd):
    base = {"base_model": str(tiny_model_dir), **COMMON}
    single = write_config(
        {**base, "gradient_accumulation_steps": 2, "output_dir": str(tmp_path / "single")},
        name="single.yaml",
    )
    ddp = write_config(
        {**base, "gradient_accumulation_steps": 1, "output_dir": str(tmp_path / "ddp")},
        name="ddp.yaml",
    )
    assert main(["train", str(single), "--runtime", "local"]) == 0
    capfd.readouterr()
    assert (
        main(
            [
                "train",
                str(ddp),
                "--runtime",
                "local",
                "--nproc-per-node",
                "2",
                "--master-port",
                "29533",
            ]
        )
        == 0
    )
    # The closing lines once, by rank 0: not by rank 1 nor by the launching command.
    assert capfd.readouterr().out.count(f"manifest: {tmp_path / 'ddp'}/run.json") == 1
    one_run, one = losses(tmp_path / "single")
    two_run, two = losses(tmp_path / "ddp")
    assert two_run["world_size"] == 2 and one_run["world_size"] == 1
    assert len(one) == len(two) == 5
    for a, b in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a), (one, two)


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The process of `rank` among the launcher's children (torch's launcher sets RANK)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def _start_then_signal(config: Path, log: Path, whom: str, sig=signal.SIGTERM) -> int:
    """`toolkit train CONFIG` with two ranks; once training has taken 20 steps, SIGTERM
    to `whom` ("rank1": that rank alone, as when the signal reaches the machines of a
    multi-node job at different moments; "launcher": the command, as `docker stop` or a
    scheduler does). Its exit code."""
    argv = [sys.executable, "-m", "toolkit", "train", str(config), "--runtime", "local"]
    argv += ["--nproc-per-node", "2", "--master-port", str(_free_port())]
    with log.open("w") as sink:
        command = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not re.search(r"^step (2\d|[3-9]\d|\d{3,})/", log.read_text(), re.M):
            assert command.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        launcher = int(Path(f"/proc/{command.pid}/task/{command.pid}/children").read_text())
        target = launcher if whom == "launcher" else _rank_pid(launcher, 1)
        assert target, log.read_text()
        os.kill(target, sig)
        return command.wait(timeout=240)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("whom", ["rank1", "launcher"])
def test_sigterm_stops_every_rank_at_one_step_with_a_checkpoint(
    whom, tiny_model_dir, write_config, tmp_path
):
    out = tmp_path / "ddp"
    config = write_config(
        {
            **COMMON,
            "max_steps": 300,
            "logging_steps": 1,
            "micro_batch_size": 2,
            "val_set_size": 0.0,
            "output_dir": str(out),
        }
    )
    log = tmp_path / "train.out"
    assert _start_then_signal(config, log, whom) == 75, log.read_text()[-3000:]
    said = log.read_text()
    (segment,) = json.loads((out / ".toolkit" / "segments.json").read_text())
    step = segment["ended_at_step"]
    assert segment["outcome"] == "preempted" and step >= 20
    assert [p.name for p in out.glob("checkpoint-*")] == [f"checkpoint-{step}"]
    assert (out / f"checkpoint-{step}" / "toolkit-complete.json").is_file()
    # Said once, by rank 0; no traceback nor torchrun's failure box.
    assert said.count(f"stopped by SIGTERM at step {step}") == 1, said[-3000:]
    assert "Traceback" not in said and "ChildFailedError" not in said, said[-3000:]
    # The same command resumes from it and ends the run.
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "toolkit",
            "train",
            str(config),
            "--runtime",
            "local",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"resume: continuing from checkpoint-{step}" in resumed.stdout
    run = read_run(out)
    assert run["steps"] == 300 and [s["outcome"] for s in run["segments"]] == [
        "preempted",
        "complete",
    ]


def test_a_rank_that_dies_is_named_in_one_line_not_torchruns_box(write_config, tmp_path):
    out = tmp_path / "ddp"
    config = write_config({**COMMON, "max_steps": 5000, "logging_steps": 1, "output_dir": str(out)})
    log = tmp_path / "train.out"
    assert _start_then_signal(config, log, "rank1", signal.SIGKILL) == 128 + 9
    said = log.read_text()
    assert "toolkit: rank 1 ended first, with SIGKILL" in said, said[-3000:]
    # (Rank 0 says what it saw, its peer gone; torchrun's box of both is not shown.)
    assert "ChildFailedError" not in said and "Root Cause" not in said, said[-3000:]
    assert json.loads((out / ".toolkit" / "segments.json").read_text())[0]["outcome"] == "running"
