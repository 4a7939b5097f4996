"""Checkpoints proven by content: damage that keeps a file's size is found, the resume
falls back to the newest checkpoint that verifies and says so, a run never trains from
step 0 over checkpoints that cannot be resumed unless told to (--restart), and a finished
run's record stays in place until the new segment trains. Real CPU training of the tiny
Qwen3: one preempted run and one finished run are trained once per module and copied."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from helpers import ends, preempt_at, read_run, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.cli import main
from toolkit.config import load_config
from toolkit.errors import UsageError
from toolkit.trainer.checkpoints import MARKER, find_resume, incomplete, write_marker

FAST = {"max_steps": 6, "logging_steps": 2, "save_steps": 3, "val_set_size": 0.0}
# What transformers reads back when it resumes a LoRA run, and toolkit's own marker.
RESUMED = [
    "adapter_model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
    MARKER,
]


def config(tiny_model_dir: Path, out: Path, **changes) -> Path:
    """The demo config training the tiny model into `out`, written beside `out`."""
    data = yaml.safe_load((REPO / "configs" / "tiny-cpu-demo.yaml").read_text())
    data["datasets"][0]["path"] = str(REPO / "configs" / "data" / "demo-chat.jsonl")
    data.update(FAST, base_model=str(tiny_model_dir), output_dir=str(out), **changes)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def preempted(tiny_model_dir, tmp_path_factory) -> Path:
    """A run stopped by SIGTERM at step 4: checkpoint-3 and checkpoint-4, no run.json."""
    out = tmp_path_factory.mktemp("preempted") / "out"
    with pytest.MonkeyPatch.context() as patch:
        preempt_at(patch, config(tiny_model_dir, out), 4)
    return out


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 6-step run: checkpoint-3, checkpoint-6, the adapter and run.json."""
    out = tmp_path_factory.mktemp("finished") / "out"
    run(load_config(config(tiny_model_dir, out)))
    return out


def copy_of(source: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(source, out, symlinks=True)
    return out


def flip(path: Path, position: int, mask: int = 0xFF) -> None:
    """Garble one byte in place; the size stays."""
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


def at(where: str, size: int) -> int:
    return {"start": 0, "middle": size // 2, "end": size - 1}[where]


def every_byte(root: Path) -> dict[str, object]:
    """Each path under `root` with its content (or link target) and mode."""
    return {
        str(p.relative_to(root)): (
            os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None,
            p.lstat().st_mode,
        )
        for p in sorted(root.rglob("*"))
    }


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def resume_of(cfg_path: Path, **overrides) -> tuple[str | None, list[str]]:
    lines: list[str] = []
    found = find_resume(load_config(cfg_path, overrides or None).config, lines.append)
    return found, lines


# --- what the marker records ---------------------------------------------------------


def test_the_marker_records_every_file_with_its_sha256(preempted):
    folder = preempted / "checkpoint-4"
    record = json.loads((folder / MARKER).read_text())
    on_disk = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
    assert sorted(record["files"]) == on_disk
    assert set(RESUMED) - {MARKER} <= set(on_disk)
    for name, saved in record["files"].items():
        data = (folder / name).read_bytes()
        assert saved == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    assert record["step"] == 4 and record["format"] == 2
    assert incomplete(folder) is None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_one_garbled_byte_is_found(preempted, tmp_path_factory, data):
    """Whichever file, byte and bit pattern: the checkpoint no longer verifies, and the
    reason names the damaged file (or the marker, when the damage is in the marker)."""
    folder = tmp_path_factory.mktemp("garbled") / "checkpoint-4"
    shutil.copytree(preempted / "checkpoint-4", folder)
    names = sorted(p.name for p in folder.iterdir())
    name = data.draw(st.sampled_from(names), label="file")
    path = folder / name
    original = path.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    flip(path, position, mask)
    why = incomplete(folder)
    if name == MARKER:
        try:
            same = json.loads(path.read_bytes()) == json.loads(original)
        except ValueError:
            same = False
        if same:  # a space turned into another whitespace: the record itself is intact
            assert why is None
            return
        assert why is not None and MARKER in why
    else:
        assert why == f"{name} does not match the SHA-256 it was saved with"


# --- the resume falls back, and says so ----------------------------------------------


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("name", RESUMED)
def test_damage_in_the_newest_checkpoint_falls_back_to_the_older(
    name, where, preempted, finished, tiny_model_dir, tmp_path, capsys
):
    import torch

    out = copy_of(preempted, tmp_path)
    path = out / "checkpoint-4" / name
    size = path.stat().st_size
    flip(path, at(where, size))
    assert path.stat().st_size == size
    capsys.readouterr()
    assert main(["train", str(config(tiny_model_dir, out)), "--runtime", "local"]) == 0
    printed = capsys.readouterr().out
    why = (
        f"its {MARKER} cannot be read"
        if name == MARKER
        else f"{name} does not match the SHA-256 it was saved with"
    )
    assert f"resume: skipping checkpoint-4: {why}\n" in printed
    assert "resume: continuing from checkpoint-3 (step 3)" in printed
    record = read_run(out)
    assert record["status"] == "complete" and record["steps"] == 6
    assert [s for s, _ in record["loss_history"]] == [2, 4, 6], "no step twice"
    assert [s["resumed_from_step"] for s in record["segments"]] == [None, 3]
    # Resumed from step 3, the run ends where an uninterrupted one does.
    resumed = adapter(out)
    for key, tensor in adapter(finished).items():
        assert torch.allclose(resumed[key], tensor, atol=1e-6), key


@pytest.mark.parametrize(
    "field, edit",
    [
        ("training_digest", lambda r: r.update(training_digest=_hex_flip(r["training_digest"]))),
        ("step", lambda r: r.update(step=5)),
        ("a file's hash", lambda r: _hex_flip_file(r["files"]["optimizer.pt"])),
        ("a file's size", lambda r: r["files"]["scheduler.pt"].update(size=1)),
        ("its own hash", lambda r: r.update(marker_sha256=_hex_flip(r["marker_sha256"]))),
    ],
)
def test_a_marker_damaged_into_valid_json_is_skipped_not_believed(
    field, edit, preempted, tiny_model_dir, tmp_path
):
    """A changed digest must not read as 'another training setup' (which stops the run),
    nor a changed hash or size as the truth: the marker carries its own SHA-256."""
    out = copy_of(preempted, tmp_path)
    marker = out / "checkpoint-4" / MARKER
    record = json.loads(marker.read_text())
    edit(record)
    marker.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    found, lines = resume_of(config(tiny_model_dir, out))
    assert lines == [
        f"resume: skipping checkpoint-4: its {MARKER} does not match the SHA-256 it was saved with",
        "resume: continuing from checkpoint-3 (step 3)",
    ]
    assert found == str(out / "checkpoint-3")


def _hex_flip(text: str) -> str:
    return ("1" if text[0] == "0" else "0") + text[1:]


def _hex_flip_file(saved: dict) -> None:
    saved["sha256"] = _hex_flip(saved["sha256"])


def sizes_only(folder: Path, step: int, digest: str) -> None:
    """The marker an older toolkit wrote: each file's size, no hashes, no format."""
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != MARKER}
    body = {"step": step, "training_digest": digest, "files": sizes}
    (folder / MARKER).write_text(json.dumps(body, indent=2))


def size_only_line(name: str) -> str:
    return f"resume: {name} verified by size only (written by an older toolkit)"


def test_a_sizes_only_marker_is_resumed_by_its_sizes_and_says_so(
    preempted, tiny_model_dir, tmp_path, capsys
):
    """A run preempted under an older toolkit resumes under this one: its markers hold
    sizes only, checked as such, and the log says the checkpoint was verified by size
    only. The run then trains to its end."""
    out = copy_of(preempted, tmp_path)
    path = config(tiny_model_dir, out)
    digest = load_config(path).config.training_digest()
    for step in (3, 4):
        sizes_only(out / f"checkpoint-{step}", step, digest)
    found, lines = resume_of(path)
    assert lines == [
        size_only_line("checkpoint-4"),
        "resume: continuing from checkpoint-4 (step 4)",
    ]
    assert found == str(out / "checkpoint-4")
    capsys.readouterr()
    assert main(["train", str(path), "--runtime", "local"]) == 0
    assert size_only_line("checkpoint-4") + "\n" in capsys.readouterr().out
    assert read_run(out)["steps"] == 6


def test_a_sizes_only_marker_still_checks_sizes_links_and_pipes(
    preempted, tiny_model_dir, tmp_path
):
    out = copy_of(preempted, tmp_path)
    path = config(tiny_model_dir, out)
    digest = load_config(path).config.training_digest()
    for step in (3, 4):
        sizes_only(out / f"checkpoint-{step}", step, digest)
    optimizer = out / "checkpoint-4" / "optimizer.pt"
    size = optimizer.stat().st_size
    optimizer.write_bytes(b"\0" * (size - 1))
    found, lines = resume_of(path)
    assert lines == [
        f"resume: skipping checkpoint-4: optimizer.pt has {size - 1} bytes, not the {size} "
        "it was saved with",
        size_only_line("checkpoint-3"),
        "resume: continuing from checkpoint-3 (step 3)",
    ]
    # Loaded first: the config's checks refuse links at names a run writes.
    cfg = load_config(path).config
    elsewhere = tmp_path / "optimizer.pt"
    shutil.copy(out / "checkpoint-3" / "optimizer.pt", elsewhere)
    (out / "checkpoint-3" / "optimizer.pt").unlink()
    (out / "checkpoint-3" / "optimizer.pt").symlink_to(elsewhere)
    optimizer.unlink()
    os.mkfifo(optimizer)
    with pytest.raises(UsageError) as info:
        ends(lambda: find_resume(cfg, print), optimizer)
    assert (
        "checkpoint-4 (optimizer.pt is a named pipe (FIFO), not a regular file); "
        "checkpoint-3 (optimizer.pt is a link or not a file inside the checkpoint)"
    ) in str(info.value)


def test_a_newer_verified_checkpoint_is_preferred_to_a_sizes_only_one(
    preempted, tiny_model_dir, tmp_path
):
    out = copy_of(preempted, tmp_path)
    path = config(tiny_model_dir, out)
    sizes_only(out / "checkpoint-3", 3, load_config(path).config.training_digest())
    assert resume_of(path) == (
        str(out / "checkpoint-4"),
        ["resume: continuing from checkpoint-4 (step 4)"],
    )


# --- pipes where a resume reads: skipped, never blocked on ---------------------------------


@pytest.mark.parametrize("swapped", [False, True], ids=["planted", "swapped-after-stat"])
@pytest.mark.parametrize(
    "name, why",
    [
        (MARKER, f"its {MARKER} is a link or cannot be opened"),
        ("trainer_state.json", "trainer_state.json is a named pipe (FIFO), not a regular file"),
        ("optimizer.pt", "optimizer.pt is a named pipe (FIFO), not a regular file"),
    ],
)
def test_a_pipe_in_a_checkpoint_is_skipped_never_blocked_on(
    name, why, swapped, preempted, tiny_model_dir, tmp_path, monkeypatch
):
    from toolkit import safe_io

    out = copy_of(preempted, tmp_path)
    path = config(tiny_model_dir, out)
    fifo = out / "checkpoint-4" / name
    fifo.unlink()
    os.mkfifo(fifo)
    if swapped:
        monkeypatch.setattr(safe_io, "_kind_at", lambda *args: None)
    found, lines = ends(lambda: resume_of(path), fifo)
    assert lines == [
        f"resume: skipping checkpoint-4: {why}",
        "resume: continuing from checkpoint-3 (step 3)",
    ]
    assert found == str(out / "checkpoint-3")
    with pytest.raises(UsageError, match=re.escape(f"cannot be resumed: {why}")):
        ends(lambda: resume_of(path, resume_from_checkpoint=str(out / "checkpoint-4")), fifo)


def test_a_marker_nested_5000_deep_is_skipped(preempted, tiny_model_dir, tmp_path):
    out = copy_of(preempted, tmp_path)
    (out / "checkpoint-4" / MARKER).write_text("[" * 5000 + "]" * 5000)
    found, lines = resume_of(config(tiny_model_dir, out))
    assert lines[0] == f"resume: skipping checkpoint-4: its {MARKER} cannot be read"
    assert found == str(out / "checkpoint-3")


@pytest.mark.parametrize(
    "name, content, why",
    [
        (
            "trainer_state.json",
            lambda data: b"[" + b" " * (len(data) - 2) + b"]",
            "trainer_state.json cannot be read as a trainer state",
        ),
        (
            "trainer_state.json",
            lambda data: data.replace(b'"global_step": 4', b'"global_step": 2'),
            "trainer_state.json is the state of step 2, not of checkpoint-4",
        ),
        (
            "trainer_state.json",
            lambda data: b"[" * 5000,
            "trainer_state.json cannot be read as a trainer state",
        ),
        (
            "adapter_model.safetensors",
            lambda data: b"\xff" * len(data),
            "adapter_model.safetensors cannot be read as safetensors",
        ),
    ],
)
def test_content_that_hashes_right_but_does_not_parse_is_skipped(
    name, content, why, preempted, tiny_model_dir, tmp_path
):
    """Damaged before it was hashed (or written so by another tool): the marker agrees
    with the files, yet what the resume reads first does not parse."""
    out = copy_of(preempted, tmp_path)
    folder = out / "checkpoint-4"
    path = folder / name
    path.write_bytes(content(path.read_bytes()))
    write_marker(folder, 4, load_config(config(tiny_model_dir, out)).config.training_digest())
    found, lines = resume_of(config(tiny_model_dir, out))
    assert lines[0] == f"resume: skipping checkpoint-4: {why}"
    assert found == str(out / "checkpoint-3")


def test_links_in_a_checkpoint_are_not_followed(preempted, tiny_model_dir, tmp_path):
    """A file of the checkpoint, or the checkpoint itself, replaced by a link to an
    identical copy elsewhere: not what this run wrote, so not resumed; and a marker that
    names a path outside its folder reads nothing there."""
    out = copy_of(preempted, tmp_path)
    # Loaded first: the config's checks may refuse links at names a run writes.
    cfg = load_config(config(tiny_model_dir, out)).config
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(out / "checkpoint-4", elsewhere)
    (out / "checkpoint-4" / "optimizer.pt").unlink()
    (out / "checkpoint-4" / "optimizer.pt").symlink_to(elsewhere / "optimizer.pt")
    shutil.rmtree(out / "checkpoint-3")
    (out / "checkpoint-3").symlink_to(elsewhere, target_is_directory=True)
    (out / "checkpoint-2").mkdir()
    shutil.copytree(elsewhere, out / "checkpoint-1")
    escape = json.loads((out / "checkpoint-1" / MARKER).read_text())
    escape["step"] = 1
    escape["files"] = {"../checkpoint-4/optimizer.pt": escape["files"]["optimizer.pt"]}
    body = {k: v for k, v in escape.items() if k != "marker_sha256"}
    escape["marker_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    (out / "checkpoint-1" / MARKER).write_text(json.dumps(escape))
    before = every_byte(elsewhere)
    with pytest.raises(UsageError) as info:
        find_resume(cfg, print)
    assert every_byte(elsewhere) == before
    assert str(info.value) == (
        f"output_dir {out} holds checkpoints of which none can be resumed: checkpoint-4 "
        "(optimizer.pt is a link or not a file inside the checkpoint); checkpoint-3 (it is "
        "a link or a file, not a folder this run wrote); checkpoint-1 "
        "(../checkpoint-4/optimizer.pt is a link or not a file inside the checkpoint). "
        "They were left as they are. To train from step 0 over them, run the same command "
        "with --restart (resume_from_checkpoint: false); to keep them, move them out of "
        f"{out} first"
    )


def test_a_named_checkpoint_that_does_not_verify_is_refused(preempted, tiny_model_dir, tmp_path):
    out = copy_of(preempted, tmp_path)
    flip(out / "checkpoint-3" / "scheduler.pt", 7)
    with pytest.raises(UsageError) as info:
        resume_of(config(tiny_model_dir, out), resume_from_checkpoint=str(out / "checkpoint-3"))
    assert str(info.value) == (
        f"resume_from_checkpoint: '{out / 'checkpoint-3'}' cannot be resumed: scheduler.pt "
        "does not match the SHA-256 it was saved with; point it at another checkpoint-N "
        "folder or use auto"
    )


def test_a_save_cut_short_alone_still_starts_at_step_zero(preempted, tiny_model_dir, tmp_path):
    """No marker: the save never finished, so nothing of it can be lost; said, not silent."""
    out = copy_of(preempted, tmp_path)
    for name in ("checkpoint-3", "checkpoint-4"):
        (out / name / MARKER).unlink()
    found, lines = resume_of(config(tiny_model_dir, out))
    assert found is None
    assert lines == [
        "resume: skipping checkpoint-4: it was still being written when a run stopped",
        "resume: skipping checkpoint-3: it was still being written when a run stopped",
    ]


# --- none verifies: stop, naming them ------------------------------------------------


def test_when_no_checkpoint_verifies_nothing_is_trained_over_them(
    finished, tiny_model_dir, tmp_path, capsys
):
    """A finished run continued (a longer max_steps) whose checkpoints are all damaged:
    exit 2 naming them and the choice; every byte of the folder stays (train.log only
    grows, the lock names who held it). --restart then trains from step 0 over them,
    saying what it replaces."""
    out = copy_of(finished, tmp_path)
    flip(out / "checkpoint-6" / "adapter_model.safetensors", 1000)
    flip(out / "checkpoint-3" / "optimizer.pt", 5000)
    path = config(tiny_model_dir, out)
    log = (out / "train.log").read_text()
    ours = {"train.log", ".toolkit/lock"}  # the log grows; the lock names each holder
    before = {k: v for k, v in every_byte(out).items() if k not in ours}
    capsys.readouterr()
    assert main(["train", str(path), "--runtime", "local", "--max-steps", "8"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: output_dir {out} holds checkpoints of which none can be resumed: "
        "checkpoint-6 (adapter_model.safetensors does not match the SHA-256 it was saved "
        "with); checkpoint-3 (optimizer.pt does not match the SHA-256 it was saved with). "
        "They were left as they are. To train from step 0 over them, run the same command "
        "with --restart (resume_from_checkpoint: false); to keep them, move them out of "
        f"{out} first\n"
    )
    assert "Traceback" not in captured.out
    assert {k: v for k, v in every_byte(out).items() if k not in ours} == before
    assert (out / "train.log").read_text().startswith(log)
    # merge-lora still finds the finished run.
    assert read_run(out)["steps"] == 6

    assert main(["train", str(path), "--runtime", "local", "--max-steps", "8", "--restart"]) == 0
    printed = capsys.readouterr().out
    assert (
        "resume: off (resume_from_checkpoint: false); starting at step 0 beside "
        "checkpoint-3, checkpoint-6\n"
        f"note: {out} holds a finished run (run.json); this run from step 0 replaces it and "
        "its adapter once it has trained\n"
    ) in printed
    record = read_run(out)
    assert record["steps"] == 8 and [s for s, _ in record["loss_history"]] == [2, 4, 6, 8]
    assert record["segments"][-1]["resumed_from_step"] is None
    assert incomplete(out / "checkpoint-6") is None, "rewritten whole, with a new marker"


def test_a_resume_that_fails_to_load_leaves_the_finished_run(
    finished, tiny_model_dir, tmp_path, capsys
):
    """A checkpoint that passes its checks but whose optimizer state does not load (it
    was garbled before it was hashed): exit 2 naming it, no traceback, run.json where it
    was, and merge-lora still merges the finished run."""
    out = copy_of(finished, tmp_path)
    folder = out / "checkpoint-6"
    path = config(tiny_model_dir, out)
    optimizer = folder / "optimizer.pt"
    optimizer.write_bytes(b"\x00" * optimizer.stat().st_size)
    write_marker(folder, 6, load_config(path).config.training_digest())
    record = (out / "run.json").read_bytes()
    weights = (out / "adapter_model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", str(path), "--runtime", "local", "--max-steps", "8"]) == 2
    err = capsys.readouterr().err
    # torch's own words (the first sentence of them) differ between its versions.
    said = re.escape(f"error: resume: {folder} passed its checks but could not be loaded (")
    assert re.fullmatch(
        said
        + r"\w+: [^\n]{1,200}\); "
        + re.escape(
            f"nothing was trained. Move checkpoint-6 out of {out} to resume from an older "
            "checkpoint, or run the same command with --restart (resume_from_checkpoint: "
            "false) to train from step 0\n"
        ),
        err,
    ), err
    assert "Traceback" not in err
    assert (out / "run.json").read_bytes() == record
    assert (out / "adapter_model.safetensors").read_bytes() == weights
    assert not (out / ".toolkit" / "superseded-run.json").exists()
    assert main(["merge-lora", str(path), "--runtime", "local"]) == 0
    assert (out / "merged" / "model.safetensors").exists()


# --- a diverged run stops where it diverged ------------------------------------------


def test_a_diverged_run_stops_at_the_first_non_finite_loss(tiny_model_dir, tmp_path, capsys):
    """The watchdog, not the final weight check, stops the run: at the first logged loss
    that is not finite (step 3: the warmup's first step has learning rate 0), with no
    checkpoint of the garbage weights though step 3 is a save step."""
    out = tmp_path / "out"
    path = config(tiny_model_dir, out, learning_rate=1e30, max_grad_norm=0.0, logging_steps=1)
    assert main(["train", str(path), "--runtime", "local"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: training diverged: loss nan at step 3; the last finite loss was "
        f"{_loss_at(out, 2)} at step 2. Likely cause: learning_rate 1e+30 is likely too high: "
        "lower it. Nothing was saved as the result\n"
    )
    logged = [
        line.split()[1:4:2]
        for line in (out / "train.log").read_text().splitlines()
        if line.startswith("step ")
    ]
    assert [step for step, _ in logged] == ["1/6", "2/6", "3/6"]
    assert [loss for _, loss in logged][2] == "nan" and "nan" not in logged[1][1]
    segments = json.loads((out / ".toolkit" / "segments.json").read_text())
    assert (segments[-1]["outcome"], segments[-1]["ended_at_step"]) == ("diverged", 3)
    assert not (out / "checkpoint-3").exists() and not (out / "run.json").exists()


def _loss_at(out: Path, step: int) -> str:
    for line in (out / "train.log").read_text().splitlines():
        if line.startswith(f"step {step}/"):
            return line.split()[3]
    raise AssertionError(f"no step {step} in the log")
