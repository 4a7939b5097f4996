"""What a run never does to what surrounds it: write where it reads, change files it did
not write, lose a finished run's record, share its folder with a second writer, call a
diverged run a success, or trust a checkpoint whose files are gone. Real CPU training of
the tiny Qwen3; the container side is in test_trust_docker.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from helpers import preempt_at, problems_of, read_run, run

from toolkit.cli import main
from toolkit.config import load_config
from toolkit.errors import UsageError
from toolkit.trainer.checkpoints import incomplete

FAST = {"max_steps": 6, "logging_steps": 2, "save_steps": 3, "val_set_size": 0.0}


# --- inputs are never writable -------------------------------------------------------


@pytest.mark.parametrize(
    "where", ["model", "model/sub", "parent-of-model", "data-folder", "data-file"]
)
def test_output_never_overlaps_an_input(where, tiny_model_dir, write_config, tmp_path):
    import shutil

    model = tmp_path / "inputs" / "model"
    shutil.copytree(tiny_model_dir, model)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "rows.jsonl").write_text('{"messages": []}\n')
    out = {
        "model": model,
        "model/sub": model / "sub",
        "parent-of-model": tmp_path / "inputs",
        "data-folder": data_dir,
        "data-file": data_dir / "rows.jsonl",
    }[where]
    path = write_config(
        {
            "base_model": str(model),
            "output_dir": str(out),
            "datasets": [{"path": str(data_dir / "rows.jsonl")}],
        }
    )
    found = problems_of(path)
    if where == "data-file":
        assert found == [f"output_dir: {str(out)!r} is a file; choose a directory path"]
        return
    key = "base_model" if "model" in where else "datasets[0].path"
    assert len(found) == 1 and found[0].startswith(f"output_dir: {str(out)!r} ")
    assert f" {key} (" in found[0] and "a run never writes where it reads" in found[0]


def test_prepared_data_never_overlaps_an_input(tiny_model_dir, write_config):
    path = write_config(
        {"base_model": str(tiny_model_dir), "dataset_prepared_path": str(tiny_model_dir.parent)}
    )
    assert problems_of(path)[0].startswith(
        f"dataset_prepared_path: {str(tiny_model_dir.parent)!r} contains base_model"
    )


def test_a_symlinked_output_into_an_input_is_seen_through(tiny_model_dir, write_config, tmp_path):
    link = tmp_path / "innocent"
    link.symlink_to(tiny_model_dir)
    path = write_config({"base_model": str(tiny_model_dir), "output_dir": str(link)})
    assert "is base_model" in problems_of(path)[0]


def test_root_home_and_foreign_folders_are_refused(
    tiny_model_dir, write_config, tmp_path, monkeypatch
):
    base = {"base_model": str(tiny_model_dir)}
    assert "is the root folder" in problems_of(write_config({**base, "output_dir": "/"}))[0]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".bashrc").write_text("")
    found = problems_of(write_config({**base, "output_dir": "~"}))
    assert "is your home folder" in found[0] and "allow_existing_output_dir: true" in found[0]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    found = problems_of(write_config({**base, "output_dir": str(foreign)}))
    assert "already holds files that are not a toolkit run (notes.txt)" in found[0]
    load_config(
        write_config({**base, "output_dir": str(foreign), "allow_existing_output_dir": True})
    )


def test_training_changes_no_file_it_did_not_write(tiny_model_dir, write_config, tmp_path):
    out = tmp_path / "shared"
    (out / "private").mkdir(parents=True)
    key, script, folder = out / "id_ed25519", out / "run.sh", out / "private"
    key.write_text("secret")
    key.chmod(0o600)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o750)
    folder.chmod(0o700)
    (folder / "inner").write_text("x")
    (folder / "inner").chmod(0o640)
    before = {
        p: (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
        for p in [key, script, folder, folder / "inner"]
    }
    path = write_config(
        {
            **FAST,
            "base_model": str(tiny_model_dir),
            "output_dir": str(out),
            "allow_existing_output_dir": True,
        }
    )
    assert main(["train", str(path), "--runtime", "local"]) == 0
    after = {p: (p.stat().st_mode, p.read_bytes() if p.is_file() else None) for p in before}
    assert after == before
    weights = out / "adapter_model.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) & 0o044 == 0o044


# --- a run's lifecycle ---------------------------------------------------------------


def test_the_same_command_on_a_finished_run_trains_nothing(
    tiny_model_dir, write_config, tmp_path, capsys
):
    path = write_config({**FAST, "base_model": str(tiny_model_dir)})
    out = tmp_path / "out"
    assert main(["train", str(path), "--runtime", "local"]) == 0
    record = (out / "run.json").read_bytes()
    log = (out / "train.log").read_text()
    capsys.readouterr()
    assert main(["train", str(path), "--runtime", "local"]) == 0
    err = capsys.readouterr().err
    assert f"{out} already holds this run, complete: 6 steps" in err
    assert (out / "run.json").read_bytes() == record
    assert (out / "train.log").read_text() == log
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    # A cadence that cannot change the weights is the same run too.
    assert main(["train", str(path), "--runtime", "local", "--logging-steps", "3"]) == 0
    assert (out / "run.json").read_bytes() == record


def test_a_finished_run_of_another_config_is_refused_untouched(
    tiny_model_dir, write_config, tmp_path, capsys
):
    path = write_config({**FAST, "base_model": str(tiny_model_dir)})
    out = tmp_path / "out"
    assert main(["train", str(path), "--runtime", "local"]) == 0
    record = (out / "run.json").read_bytes()
    capsys.readouterr()
    assert main(["train", str(path), "--runtime", "local", "--learning-rate", "0.001"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run of another config" in err
    assert "learning_rate (0.01 → 0.001)" in err and "Nothing was changed" in err
    assert (out / "run.json").read_bytes() == record
    # merge-lora refuses to merge an adapter under a config it was not trained with.
    assert main(["merge-lora", str(path), "--runtime", "local", "--lora-alpha", "32"]) == 2
    assert "trained with another config (differs in: lora_alpha (16 → 32))" in (
        capsys.readouterr().err
    )
    assert not (out / "merged").exists()
    assert (
        main(
            [
                "merge-lora",
                str(path),
                "--runtime",
                "local",
                "--lora-alpha",
                "32",
                "--allow-config-mismatch",
            ]
        )
        == 0
    )
    assert (out / "merged" / "model.safetensors").exists()


def test_a_longer_run_continues_a_finished_one(tiny_model_dir, write_config, tmp_path, capsys):
    path = write_config({**FAST, "base_model": str(tiny_model_dir)})
    out = tmp_path / "out"
    run(load_config(path))
    capsys.readouterr()
    import toolkit.trainer.steps as steps

    def fail_on_save(*a, **k):
        assert not (out / "run.json").exists(), "the finished run's record is set aside first"
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "write_chart", fail_on_save)
        with pytest.raises(OSError):
            run(load_config(path, {"max_steps": 8, "save_steps": 4}))
    assert (
        main(
            ["merge-lora", str(path), "--runtime", "local", "--max-steps", "8", "--save-steps", "4"]
        )
        == 2
    ), "no run.json: nothing to merge"
    capsys.readouterr()
    run(load_config(path, {"max_steps": 8, "save_steps": 4}))
    assert "resume: continuing from checkpoint-8 (step 8)" in capsys.readouterr().out
    record = read_run(out)
    assert [s for s, _ in record["loss_history"]] == [2, 4, 6, 8]
    assert [(s["resumed_from_step"], s.get("outcome")) for s in record["segments"]] == [
        (None, "complete"),
        (6, "interrupted"),
        (8, "complete"),
    ]
    assert (out / "train.log").read_text().count("=== toolkit run started") == 3


def test_a_resumed_run_records_the_whole_run(
    tiny_model_dir, write_config, tmp_path, monkeypatch, capsys
):
    """Preempted at step 5 (checkpoint-5 saved on the way out), resumed: train.log and
    run.json (which loss.png is drawn from) cover all 6 steps, and `compare` finds it the
    same as an uninterrupted run."""
    base = {**FAST, "base_model": str(tiny_model_dir), "logging_steps": 1}
    whole = write_config({**base, "output_dir": str(tmp_path / "whole")}, name="whole.yaml")
    run(load_config(whole))
    path = write_config({**base, "output_dir": str(tmp_path / "cut")}, name="cut.yaml")
    preempt_at(monkeypatch, path, 5)
    assert main(["train", str(path), "--runtime", "local"]) == 0
    cut, full = read_run(tmp_path / "cut"), read_run(tmp_path / "whole")
    assert cut["chart"] == "loss.png" and (tmp_path / "cut" / "loss.png").stat().st_size
    assert [s for s, _ in cut["loss_history"]] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in cut["metrics_history"]] == [1, 2, 3, 4, 5, 6]
    assert [
        (s["resumed_from_step"], s["ended_at_step"], s["outcome"]) for s in cut["segments"]
    ] == [(None, 5, "preempted"), (5, 6, "complete")]
    for (_, a), (_, b) in zip(cut["loss_history"], full["loss_history"], strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    log = (tmp_path / "cut" / "train.log").read_text()
    assert log.count("=== toolkit run started") == 2
    assert "step 1/6 loss" in log and "preempted: SIGTERM at step 5" in log
    assert "resume: continuing from checkpoint-5" in log and "step 6/6 loss" in log
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "cut"), str(tmp_path / "whole")]) == 0
    assert "SAME" in capsys.readouterr().out


def test_resume_false_starts_at_step_zero_beside_a_checkpoint(
    tiny_model_dir, write_config, tmp_path, monkeypatch, capsys
):
    base = {**FAST, "base_model": str(tiny_model_dir), "logging_steps": 1}
    path = write_config(base)
    preempt_at(monkeypatch, path, 4)
    capsys.readouterr()
    run(load_config(path, {"resume_from_checkpoint": False}))
    printed = capsys.readouterr().out
    assert "resume: off (resume_from_checkpoint: false); starting at step 0" in printed
    record = read_run(tmp_path / "out")
    assert [s for s, _ in record["loss_history"]] == [1, 2, 3, 4, 5, 6]
    assert record["segments"][-1]["resumed_from_step"] is None


def test_resume_trusts_the_files_not_the_marker(
    tiny_model_dir, write_config, tmp_path, monkeypatch, capsys
):
    """An interrupted rotation: checkpoint-6's marker is there, its weights are not."""
    base = {**FAST, "base_model": str(tiny_model_dir), "max_steps": 8}
    path = write_config(base)
    preempt_at(monkeypatch, path, 7)
    out = tmp_path / "out"
    (out / "checkpoint-7" / "adapter_model.safetensors").unlink()
    with (out / "checkpoint-6" / "optimizer.pt").open("ab") as f:
        f.write(b"x")
    (out / "checkpoint-9").mkdir()  # a save cut short: no marker at all
    capsys.readouterr()
    run(load_config(path))
    printed = capsys.readouterr().out
    assert "resume: skipping checkpoint-9: it was still being written" in printed
    assert "resume: skipping checkpoint-7: adapter_model.safetensors is missing" in printed
    assert "resume: skipping checkpoint-6: optimizer.pt has" in printed
    assert "resume: continuing from checkpoint-3 (step 3)" in printed
    record = read_run(out)
    assert record["steps"] == 8
    assert [s for s, _ in record["loss_history"]] == [2, 4, 6, 8], "no step twice"


def test_checkpoints_of_another_setup_are_not_trained_over(
    tiny_model_dir, write_config, tmp_path, monkeypatch
):
    path = write_config({**FAST, "base_model": str(tiny_model_dir)})
    preempt_at(monkeypatch, path, 4)
    with pytest.raises(UsageError, match="holds checkpoint-4, written by another training setup"):
        run(load_config(path, {"learning_rate": 0.001}))


# --- one writer ----------------------------------------------------------------------


def test_a_second_writer_fails_fast_naming_the_first(
    tiny_model_dir, write_config, tmp_path, capsys
):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from toolkit import outputs; "
            f"outputs.acquire({str(out)!r}, 'train other.yaml'); print('held', flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        path = write_config({**FAST, "base_model": str(tiny_model_dir)})
        assert main(["train", str(path), "--runtime", "local"]) == 2
        err = capsys.readouterr().err
        assert (
            f"output_dir {out} is in use by another toolkit run (`toolkit train "
            f"other.yaml`, pid {holder.pid}" in err
        )
        assert main(["merge-lora", str(path), "--runtime", "local"]) == 2
        with pytest.raises(UsageError, match="in use by another toolkit run"):
            run(load_config(path))
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "run.json").exists()
    assert main(["train", str(path), "--runtime", "local"]) == 0  # free again


# --- a diverged run fails ------------------------------------------------------------


def test_a_diverging_run_fails_and_saves_nothing(tiny_model_dir, write_config, tmp_path, capsys):
    path = write_config(
        {
            **FAST,
            "base_model": str(tiny_model_dir),
            "learning_rate": 1e30,
            "max_grad_norm": 0.0,
            "logging_steps": 1,
        }
    )
    assert main(["train", str(path), "--runtime", "local"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged: ") and "Traceback" not in err
    assert "at step" in err and "learning_rate 1e+30 is likely too high" in err
    out = tmp_path / "out"
    assert not (out / "run.json").exists() and not (out / "adapter_model.safetensors").exists()
    segments = json.loads((out / ".toolkit" / "segments.json").read_text())
    assert segments[-1]["outcome"] == "diverged"


@pytest.mark.parametrize(
    "key, value",
    [
        ("learning_rate", ".inf"),
        ("learning_rate", ".nan"),
        ("weight_decay", "-.inf"),
        ("max_grad_norm", ".nan"),
        ("val_set_size", ".inf"),
        ("num_epochs", ".inf"),
        ("lora_dropout", ".nan"),
        ("rl_beta", ".inf"),
    ],
)
def test_float_keys_must_be_finite(key, value, tiny_model_dir, write_config, capsys):
    path = write_config({"base_model": str(tiny_model_dir)})
    assert main(["validate", str(path), f"--{key.replace('_', '-')}", value]) == 2
    assert f"- {key}: got " in capsys.readouterr().err


# --- silent no-ops -------------------------------------------------------------------


def test_a_lora_target_that_matches_nothing_is_an_error(
    tiny_model_dir, write_config, tmp_path, capsys
):
    path = write_config(
        {
            **FAST,
            "base_model": str(tiny_model_dir),
            "lora_target_linear": False,
            "lora_target_modules": ["q_proj", "v_projj"],
        }
    )
    assert main(["train", str(path), "--runtime", "local"]) == 2
    err = capsys.readouterr().err
    assert (
        "lora_target_modules: 'v_projj' matches no module of qwen3; its projections are " in err
        and "q_proj" in err
        and "down_proj" in err
    )
    assert not (tmp_path / "out" / "run.json").exists()


def test_lora_keys_without_an_adapter_warn(tiny_model_dir, write_config):
    loaded = load_config(
        write_config({"base_model": str(tiny_model_dir), "adapter": None, "lora_r": 32})
    )
    assert any(
        w.startswith("lora_r: set to 32 but adapter is None, so there is no LoRA")
        for w in loaded.warnings
    )
    assert not any(w.startswith("lora_target_parameters") for w in loaded.warnings), (
        "a key that is not set gets no warning"
    )


# --- hostile configs -----------------------------------------------------------------


def bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + f"\nbase_model: *a{levels - 1}\n"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("alias bomb", bomb(9), "aliases expand to more than 100,000 values"),
        ("deep nesting", "base_model: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than 32"),
        (
            "deep mappings",
            "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 60)) + "  " * 60 + "c: 1\n",
            "nested more than 32",
        ),
        ("recursive anchor", "base_model: &x [*x]\n", "an alias refers to itself"),
        ("huge file", "base_model: x\n" + "# pad\n" * 300000, "a config is at most"),
    ],
)
def test_hostile_yaml_is_refused_quickly(name, text, message, tmp_path, capsys):
    import time

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    started = time.monotonic()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert time.monotonic() - started < 5


# --- environment faults --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["empty folder", "adapter folder", "a file"])
def test_base_model_that_is_not_a_model(kind, tiny_model_dir, write_config, tmp_path, capsys):
    where = tmp_path / "m"
    if kind == "a file":
        where.write_text("x")
    else:
        where.mkdir()
    if kind == "adapter folder":
        (where / "adapter_config.json").write_text(
            json.dumps({"base_model_name_or_path": "Qwen/Qwen3-0.6B"})
        )
        (where / "adapter_model.safetensors").write_bytes(b"")
    path = write_config({"base_model": str(where)})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    expected = {
        "empty folder": "holds no model (no config.json)",
        "adapter folder": "is a LoRA adapter, not a model; set base_model to the model "
        "it was trained on ('Qwen/Qwen3-0.6B'",
        "a file": "is a file; give the folder that holds the model",
    }[kind]
    assert expected in err, err


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB filesystem: the adapter fits, checkpoints with optimizer state do not."""
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@needs_root
def test_disk_full_is_one_line_and_nothing_looks_complete(
    small_disk, tiny_model_dir, write_config, capsys
):
    out = small_disk / "run"
    path = write_config(
        {
            **FAST,
            "base_model": str(tiny_model_dir),
            "output_dir": str(out),
            "lora_r": 64,
            "lora_target_linear": True,
        }
    )
    code = main(["train", str(path), "--runtime", "local"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert (
        err.startswith("error: no space left on the device holding ") and "Traceback" not in err
    ), err
    assert not (out / "run.json").exists()
    assert not list(out.glob("**/.*.tmp*")) and not list(out.glob(".run.json.*"))
    for checkpoint in out.glob("checkpoint-*"):  # a cut-short save is never resumed
        assert not (checkpoint / "toolkit-complete.json").exists() or incomplete(checkpoint) is None


@needs_root
def test_a_read_only_output_folder_is_named(tiny_model_dir, write_config, tmp_path, capsys):
    where = tmp_path / "ro"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], check=True)
    try:
        path = write_config(
            {**FAST, "base_model": str(tiny_model_dir), "output_dir": str(where / "run")}
        )
        assert main(["train", str(path), "--runtime", "local"]) == 1
        err = capsys.readouterr().err
        assert f"{where / 'run'} is on a read-only filesystem; choose an output_dir" in err
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_the_trainer_entry_point_takes_the_lock_itself(tiny_model_dir, write_config, tmp_path):
    """The trainer entry point checks the lock itself, so no caller can skip it."""
    from toolkit import outputs

    path = write_config({**FAST, "base_model": str(tiny_model_dir)})
    lock = outputs.acquire(tmp_path / "out", "train")
    try:
        with pytest.raises(UsageError):
            run(load_config(path))
    finally:
        lock.release()


def test_files_a_run_would_write_over_are_named(tiny_model_dir, write_config, tmp_path):
    """Writing beside someone's files is allowed on request, never writing over them."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "config.json").write_text("{}")
    (out / "keep.txt").write_text("x")
    found = problems_of(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "output_dir": str(out),
                "allow_existing_output_dir": True,
            }
        )
    )
    assert found == [
        f"output_dir: {str(out)!r} holds README.md, config.json, which training "
        "would write over; move them away or choose another output_dir"
    ]


def test_prepared_data_path_does_not_hide_the_output_checks(tiny_model_dir, write_config, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    found = problems_of(
        write_config(
            {
                "base_model": str(tiny_model_dir),
                "output_dir": str(foreign),
                "dataset_prepared_path": str(tmp_path / "prep"),
            }
        )
    )
    assert "already holds files that are not a toolkit run (x)" in found[0]


def test_a_lock_held_after_its_command_ended_says_so(tmp_path):
    """The reaper keeps the lock while a killed CLI's container checkpoints: say so."""
    import socket

    from toolkit import outputs

    lock = outputs.acquire(tmp_path / "out", "train")
    try:
        record = json.loads(lock.path.read_text())
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        record.update(pid=int(dead), host=socket.gethostname())
        lock.path.write_text(json.dumps(record))
        assert "that command has ended and its container is being stopped" in (
            outputs.describe_holder(lock.path)
        )
    finally:
        lock.release()
