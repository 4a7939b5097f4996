"""RunPlan: built once on the host, written once where only the run's user reads it, read
once where the run happens; what it reads, writes and needs follows from the task."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from toolkit import plan
from toolkit.config import load_config
from toolkit.errors import RuntimeFailure, UsageError
from toolkit.host.place import Distributed, plan_spec
from toolkit.pins import Pin

COMMIT = "0" * 40


def loaded_with(write_config, tmp_path, **changes):
    data = tmp_path / "chat.jsonl"
    data.write_text((REPO / "configs" / "data" / "demo-chat.jsonl").read_text())
    changes.setdefault("datasets", [{"path": str(data), "type": "chat_template"}])
    return load_config(write_config(changes))


def test_a_plan_round_trips_through_its_private_file(write_config, tmp_path):
    loaded = loaded_with(write_config, tmp_path)
    pin = Pin("base_model", "Qwen/Qwen3-8B", "model", None, COMMIT, {"config.json": "abc"})
    loaded = type(loaded)(loaded.config, loaded.path, hub=(pin,))
    planned = plan.build(plan.Train(), loaded, lock_token="t0k3n")
    with plan.written(planned) as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert plan.read(path) == planned
        assert plan.read(path).loaded.config == loaded.config
        assert plan.read(path).pins == (pin,)
    assert not path.parent.exists()  # removed once the run is over


def test_what_a_plan_reads_and_writes_follows_its_task(write_config, tmp_path):
    loaded = loaded_with(write_config, tmp_path)
    cfg = loaded.config
    data = str(Path(cfg.datasets[0].path).absolute())
    out = str(Path(cfg.output_dir).absolute())
    train = plan.build(plan.Train(), loaded)
    assert data in train.reads and train.writes == (out,) and train.network == "none"
    assert str(Path(loaded.path).absolute()) in train.reads
    merge = plan.build(plan.Merge(), loaded)
    assert data not in merge.reads and merge.writes == (out,)  # a merge reads no data
    answer = plan.build(plan.Inference(prompts=("hi",)), loaded)
    assert answer.writes == () and out in answer.reads  # the outputs, read-only
    tiny = plan.build(plan.TinyModel(out="tiny"))
    assert tiny.config is None and tiny.writes == (str(Path("tiny").absolute()),)
    assert plan.build(plan.Train(), loaded, network="host").network == "host"


def test_the_container_gets_the_plan_read_only_and_no_state_in_its_environment(
    write_config, tmp_path
):
    planned = plan.build(plan.Train(), loaded_with(write_config, tmp_path), lock_token="t0k3n")
    file = tmp_path / "plan" / "plan.json"
    spec = plan_spec(planned, file, "img", "sha256:1", distributed=Distributed(2))
    assert spec.command == [
        "python3",
        "-m",
        "toolkit.trainer.ranks",
        *Distributed(2).flags(),
        str(file),
    ]
    assert [m.read_only for m in spec.mounts if m.container == str(file)] == [True]
    assert not {"TOOLKIT_HUB_PINS", "TOOLKIT_RUN_LOCK", "TOOLKIT_HOST_PUBLISHES"} & set(spec.env)
    assert "t0k3n" not in json.dumps(spec.env) + " ".join(spec.command)
    assert spec.network == "none"


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{}", "task: Field required"),
        (b'{"task": {"kind": "train"}, "version": 2}', "version: Input should be 1"),
        (b'{"task": {"kind": "fly"}}', "task: Input tag 'fly' found"),
        (b'{"task": {"kind": "train"}, "network": "any"}', "network: Input should be"),
        (b'{"task": {"kind": "train"}, "secret": "x"}', "secret: Extra inputs are not permitted"),
        (b"[" * 5000, ""),
    ],
)
def test_a_plan_that_toolkit_did_not_write_is_refused_naming_the_field(tmp_path, body, field):
    path = tmp_path / "plan.json"
    path.write_bytes(body)
    with pytest.raises(UsageError) as caught:
        plan.read(path)
    assert str(caught.value).startswith(f"{path}: not a run plan toolkit wrote (")
    assert field in str(caught.value)


def test_a_plan_at_a_link_or_a_pipe_is_never_followed_nor_waited_on(tmp_path):
    target = tmp_path / "real.json"
    target.write_text(plan.RunPlan(task=plan.Train()).model_dump_json())
    (tmp_path / "link.json").symlink_to(target)
    os.mkfifo(tmp_path / "pipe.json")
    for name, kind in (("link.json", "a link"), ("pipe.json", "a named pipe (FIFO)")):
        with pytest.raises(UsageError) as caught:
            plan.read(tmp_path / name)
        assert str(caught.value).startswith(f"{tmp_path / name} is {kind}")


def test_a_plan_that_cannot_be_read_says_so(tmp_path):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "plan.json"  # under a file: unreadable for root as well
    with pytest.raises(RuntimeFailure) as caught:
        plan.read(path)
    assert str(caught.value).startswith(f"cannot read the run plan {path} (Not a directory)")


def test_the_trainers_entry_point_turns_a_bad_plan_into_exit_2(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"task": {"kind": "train"}, "lock_token": 7}')
    proc = subprocess.run(
        [sys.executable, "-m", "toolkit.trainer", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {path}: not a run plan toolkit wrote (lock_token: ")
    assert "Traceback" not in proc.stderr


def test_the_trainer_carries_out_a_tiny_model_plan(tmp_path):
    from toolkit.trainer import run

    out = tmp_path / "tiny"
    assert run(plan.build(plan.TinyModel(out=str(out), seed=3))) == out
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
