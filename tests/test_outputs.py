"""Writes stay where they were planned: a symbolic link at any name toolkit writes in an
output folder (files and folders, pointing at someone else's files or folders, or at
nothing) is refused, exit 2 naming it, before anything is written, and nothing outside
changes; the files toolkit opens itself are never opened through a link. Also: what
counts as a toolkit run, prepared data in a broad folder, a killed merge's leftovers and
TensorBoard on a full disk. Real CPU training of the tiny Qwen3, in-process."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import plant, problems_of, someone_elses_files, trained_demo, tree_state, umask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit import outputs
from toolkit.cli import main
from toolkit.config import load_config
from toolkit.errors import UsageError

FAST = {
    "max_steps": 4,
    "save_steps": 2,
    "logging_steps": 1,
    "val_set_size": 0.0,
    "sequence_len": 128,
}
ADVICE = "toolkit never writes through links: remove it, or choose another output_dir"

# Every name a LoRA run, a full fine-tune or a merge writes in output_dir, and names
# inside the folders it writes (existing ones and ones it would create).
PLANNED_FILES = (
    "train.log",
    "run.json",
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-00001-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "training_args.bin",
    "loss.png",
)
PLANNED_FOLDERS = ("checkpoint-2", "checkpoint-6", "tensorboard", "merged", ".toolkit")
PLANNED_FOLDERS += ("wandb", "mlruns")
INSIDE = (
    ".toolkit/lock",
    ".toolkit/segments.json",
    "checkpoint-4/trainer_state.json",
    "checkpoint-4/adapter_model.safetensors",
    "checkpoint-4/toolkit-complete.json",
    "tensorboard/events.out.tfevents.1.host",
    "wandb/latest-run",
    "mlruns/0",
)
LINK_AT = PLANNED_FILES + PLANNED_FOLDERS + INSIDE
TARGETS = ("outside file", "outside folder", "nowhere")


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 4-step LoRA run (checkpoint-2, checkpoint-4, tensorboard, loss.png),
    copied into each test."""
    return trained_demo(tmp_path_factory.mktemp("finished"), base_model=str(tiny_model_dir), **FAST)


@pytest.fixture
def world(tmp_path, finished_run, write_config, tiny_model_dir):
    """(config, out, outside): a copy of the finished run, its config, and someone
    else's files and folders beside it, with modes of their own."""
    outside = someone_elses_files(tmp_path)
    out = tmp_path / "out"
    shutil.copytree(finished_run, out, symlinks=True)
    config = write_config({**FAST, "base_model": str(tiny_model_dir), "output_dir": str(out)})
    return config, out, outside


def argv(command: str, config: Path) -> list[str]:
    return {
        # 6 steps where the finished run did 4: it would write, resuming the run.
        "train": ["train", str(config), "--runtime", "local", "--max-steps", "6"],
        "merge-lora": ["merge-lora", str(config), "--runtime", "local"],
    }[command]


# --- a link at any planned name is refused, naming it; nothing changes -----------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", LINK_AT)
@pytest.mark.parametrize("command", ["train", "merge-lora"])
def test_a_link_at_a_planned_name_is_refused_untouched(command, name, target, world, capsys):
    config, out, outside = world
    to = plant(out, name, target, outside)
    before = tree_state(out.parent)

    code = main(argv(command, config))

    err = capsys.readouterr().err
    assert code == 2, err
    assert err == (
        f"error: {config}: 1 problem\n"
        f"  - output_dir: {out / name} is a symbolic link (to {to}); {ADVICE}\n"
    )
    assert tree_state(out.parent) == before
    assert not (outside / "made-by-toolkit").exists()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    links=st.dictionaries(
        st.sampled_from(LINK_AT), st.sampled_from(TARGETS), min_size=1, max_size=4
    ),
    command=st.sampled_from(["train", "merge-lora"]),
)
def test_any_set_of_links_is_refused_naming_each(
    links, command, finished_run, tiny_model_dir, write_config, tmp_path, capsys
):
    n = len(list(tmp_path.glob("example-*")))
    here, outside = tmp_path / f"example-{n}", tmp_path / "outside"
    if not outside.exists():
        (outside / "folder").mkdir(parents=True)
        (outside / "file.txt").write_text("not toolkit's\n")
    out = here / "out"
    shutil.copytree(finished_run, out, symlinks=True)
    config = write_config(
        {**FAST, "base_model": str(tiny_model_dir), "output_dir": str(out)},
        name=f"example-{n}.yaml",
    )
    planted = {}
    for name, target in links.items():
        if any(name.startswith(other + "/") for other in links if other != name):
            continue  # its folder is a link itself: the planted folder is enough
        planted[name] = plant(out, name, target, outside)
    planted = {n: t for n, t in planted.items() if os.path.islink(out / n)}
    before = tree_state(here, outside)

    code = main(argv(command, config))

    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for name, to in planted.items():
        assert f"{out / name} is a symbolic link (to {to})" in err, err
    assert tree_state(here, outside) == before


def test_output_dir_itself_may_be_a_link_the_user_chose(
    tiny_model_dir, write_config, tmp_path, capsys
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "outputs").symlink_to(scratch)
    out = tmp_path / "outputs" / "run"
    config = write_config(
        {**FAST, "max_steps": 2, "base_model": str(tiny_model_dir), "output_dir": str(out)}
    )
    assert main(["train", str(config), "--runtime", "local"]) == 0
    assert (scratch / "run" / "adapter_model.safetensors").is_file()
    assert not any(p.is_symlink() for p in (scratch / "run").rglob("*"))


def test_w_and_b_own_links_inside_its_folder_are_not_refused(world):
    """wandb makes wandb/latest-run and wandb/debug.log, relative links to its run
    folders, and logs/debug-core.log, a link to its log cache in the home folder; a
    resume, or a save while W&B runs, must not trip over them. Another link that leaves
    wandb/ is refused."""
    _, out, outside = world
    run = out / "wandb" / "offline-run-1"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "debug.log").write_text("")
    (out / "wandb" / "latest-run").symlink_to("offline-run-1")
    (out / "wandb" / "debug.log").symlink_to("offline-run-1/logs/debug.log")
    (run / "logs" / "debug-core.log").symlink_to(outside / "core-debug-1.log")
    assert outputs.planted_links(out) == []
    (run / "files").mkdir()
    (run / "files" / "config.yaml").symlink_to(outside / "file.txt")
    assert outputs.planted_links(out) == [
        (run / "files" / "config.yaml", str(outside / "file.txt"))
    ]


def test_links_beside_the_planned_names_are_left_alone(world):
    """With allow_existing_output_dir the user's own links beside a run are theirs."""
    _, out, outside = world
    (out / "my-data").symlink_to(outside / "folder")
    (out / "notes.txt").symlink_to(outside / "file.txt")
    assert outputs.planted_links(out) == []


# --- the container side: the trainer and the merge check for themselves ---------------


def test_a_link_planted_after_validation_is_refused_by_the_trainer(world):
    """The checks at the lock and at the start of training: a link may be planted after
    the command validated (and --runtime local never passes the host side)."""
    from helpers import run

    config, out, outside = world
    loaded = load_config(config, {"max_steps": 6})
    to = plant(out, "checkpoint-6", "outside folder", outside)
    before = tree_state(out.parent)
    with pytest.raises(UsageError) as info:
        run(loaded)
    assert str(info.value) == f"{out / 'checkpoint-6'} is a symbolic link (to {to}); {ADVICE}"
    assert tree_state(out.parent) == before


@pytest.mark.parametrize("name", ["checkpoint-6", "adapter_model.safetensors"])
def test_a_link_planted_while_training_is_never_written_through(name, world, monkeypatch):
    """transformers writes checkpoints and the adapter by path, hours after the start:
    a link planted at step 5, where step 6 saves, stops the run before that save."""
    from toolkit.trainer.progress import ProgressLog

    config, out, outside = world
    planted = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5 and not planted:
            planted.append(plant(out, name, "outside folder", outside))

    monkeypatch.setattr(ProgressLog, "on_step_end", on_step_end, raising=False)
    before = tree_state(outside)
    assert main(["train", str(config), "--runtime", "local", "--max-steps", "6"]) == 2
    assert planted and tree_state(outside) == before
    assert (out / name).is_symlink()


@pytest.mark.parametrize("name", ["train.log", "tensorboard", ".toolkit/segments.json"])
def test_start_run_refuses_a_link(name, world):
    from toolkit.trainer.steps import start_run

    config, out, outside = world
    cfg = load_config(config).config
    to = plant(out, name, "outside file", outside)
    before = tree_state(out.parent)
    with pytest.raises(UsageError, match="toolkit never writes through links") as info:
        start_run(cfg)
    assert f"{out / name} is a symbolic link (to {to})" in str(info.value)
    assert tree_state(out.parent) == before


def test_a_merge_checks_for_itself(world):
    """merge_lora called directly (the container's side) refuses a link at merged."""
    from toolkit.merge import merge_lora

    config, out, outside = world
    loaded = load_config(config)
    to = plant(out, "merged", "outside folder", outside)
    before = tree_state(out.parent)
    with pytest.raises(UsageError) as info:
        merge_lora(loaded)
    assert str(info.value) == f"{out / 'merged'} is a symbolic link (to {to}); {ADVICE}"
    assert tree_state(out.parent) == before


def test_several_links_are_named_together(world):
    _, out, outside = world
    a = plant(out, "train.log", "outside file", outside)
    b = plant(out, "tensorboard", "nowhere", outside)
    with pytest.raises(UsageError) as info:
        outputs.refuse_links(out)
    assert info.value.render() == (
        f"error: output_dir {out} holds 2 symbolic links where toolkit writes; toolkit "
        "never writes through links: remove them, or choose another output_dir\n"
        f"  - {out / 'tensorboard'} is a symbolic link (to {b})\n"
        f"  - {out / 'train.log'} is a symbolic link (to {a})"
    )


# --- the files toolkit opens itself never follow a link --------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_the_log_never_appends_through_a_link(target, tmp_path):
    """A link planted at train.log while the run is going (after every check)."""
    from toolkit.trainer.progress import RunLog

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file.txt").write_text("theirs\n")
    (outside / "folder").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    log = RunLog(out / "train.log")
    (out / "train.log").unlink()
    to = plant(out, "train.log", target, outside)
    before = tree_state(outside)
    with pytest.raises(UsageError) as info:
        log("step 1/4 loss 1.0")
    assert str(info.value) == f"{out / 'train.log'} is a symbolic link (to {to}); {ADVICE}"
    assert tree_state(outside) == before


@pytest.mark.parametrize("target", TARGETS)
def test_records_and_the_chart_replace_a_link_never_follow_it(target, tmp_path):
    """rename(2) replaces a link at the destination: the outside file stays as it was."""
    from toolkit.safe_io import write_json_atomic
    from toolkit.trainer.throughput import write_chart

    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "file.txt").write_text("theirs\n")
    out = tmp_path / "out"
    out.mkdir()
    plant(out, "run.json", target, outside)
    plant(out, "loss.png", target, outside)
    before = tree_state(outside)
    write_json_atomic(out / "run.json", {"a": 1})
    assert write_chart(out / "loss.png", [(1, 2.0), (2, 1.0)], [], [])
    assert tree_state(outside) == before
    for name in ("run.json", "loss.png"):
        assert (out / name).is_file() and not (out / name).is_symlink()
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == 0o666 & ~umask()
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "run.json"]


@pytest.mark.parametrize("at", [".toolkit", ".toolkit/lock"])
@pytest.mark.parametrize("target", TARGETS)
def test_the_lock_is_never_taken_through_a_link(at, target, tmp_path):
    """The host side: `.toolkit` or its lock a link, the lock is refused, and nothing is
    written into the linked folder nor the linked file truncated."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "file.txt").write_text("theirs\n")
    out = tmp_path / "out"
    out.mkdir()
    to = plant(out, at, target, outside)
    before = tree_state(outside)
    with pytest.raises(UsageError) as info:
        outputs.acquire(out, "train")
    assert str(info.value) == f"{out / at} is a symbolic link (to {to}); {ADVICE}"
    assert tree_state(outside) == before
    # Planted after the check, between it and the open: still never followed.
    (out / at).unlink()
    if at == ".toolkit/lock":
        (out / ".toolkit").mkdir(exist_ok=True)
    plant(out, at, target, outside)
    with pytest.raises(UsageError, match="is a symbolic link"):
        _acquire_unchecked(out)
    assert tree_state(outside) == before


def _acquire_unchecked(out: Path) -> None:
    """acquire without its first check, as if the link came just after it."""
    from unittest import mock

    with mock.patch.object(outputs, "refuse_links", lambda _: None):
        outputs.acquire(out, "train")


# --- what counts as a toolkit run ------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        "empty .toolkit",
        "foreign lock",
        "lock a list",
        "train.log only",
        "bare checkpoint",
        "run.json not toolkit's",
    ],
)
def test_only_a_record_toolkit_wrote_makes_a_run(state, tiny_model_dir, write_config, tmp_path):
    out = tmp_path / "out"
    (out / ".toolkit").mkdir(parents=True)
    name = ".toolkit"
    if state == "foreign lock":
        (out / ".toolkit" / "lock").write_text("")
    elif state == "lock a list":
        (out / ".toolkit" / "lock").write_text('["token", "command"]')
    elif state == "train.log only":
        shutil.rmtree(out / ".toolkit")
        (out / "train.log").write_text("=== toolkit run started ===\n")
        name = "train.log"
    elif state == "bare checkpoint":
        shutil.rmtree(out / ".toolkit")
        (out / "checkpoint-3").mkdir()
        name = "checkpoint-3"
    elif state == "run.json not toolkit's":
        shutil.rmtree(out / ".toolkit")
        (out / "run.json").write_text('{"status": "complete"}')
        name = "run.json"
    assert not outputs.holds_toolkit_run(out)
    config = write_config({"base_model": str(tiny_model_dir), "output_dir": str(out)})
    assert problems_of(config) == [
        f"output_dir: {str(out)!r} already holds files that are not a toolkit run "
        f"({name}); choose an empty or new folder, or set allow_existing_output_dir: true "
        "to write beside them (toolkit changes none of them)"
    ]


def test_records_toolkit_wrote_make_a_run(world):
    _, out, _ = world
    assert outputs.holds_toolkit_run(out)
    (out / "run.json").unlink()
    assert outputs.holds_toolkit_run(out)  # the lock and segments.json
    (out / ".toolkit" / "segments.json").unlink()
    assert outputs.holds_toolkit_run(out)  # the lock with its holder
    (out / ".toolkit" / "lock").unlink()
    assert outputs.holds_toolkit_run(out)  # checkpoints' completion markers
    for checkpoint in out.glob("checkpoint-*"):
        (checkpoint / "toolkit-complete.json").unlink()
    assert not outputs.holds_toolkit_run(out)


def test_a_lock_taken_makes_a_run_of_a_fresh_folder(tmp_path):
    """What the host writes before the container starts is enough for the container's
    own validation to see a run there."""
    out = tmp_path / "out"
    outputs.release(outputs.hold(out, "train"))
    assert outputs.holds_toolkit_run(out)


# --- prepared data needs a folder of its own -------------------------------------------


@pytest.mark.parametrize(
    ("ref", "what"),
    [
        ("/", "the root folder"),
        ("/etc", "the top-level folder /etc"),
        ("/tmp", "the top-level folder /tmp"),
        ("/usr/share/doc", "inside the system folder /usr"),
        ("/proc/self", "inside the system folder /proc"),
        ("~", "your home folder"),
        (".", "the working folder"),
    ],
)
def test_a_broad_prepared_data_folder_is_refused(
    ref, what, tiny_model_dir, write_config, tmp_path, monkeypatch
):
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = write_config({"base_model": str(tiny_model_dir), "dataset_prepared_path": ref})
    shown = str(home) if ref == "~" else ref  # the loader expands ~ before validation
    assert problems_of(config) == [
        f"dataset_prepared_path: {shown!r} is {what}; prepared data needs a folder of its "
        "own (toolkit writes and prunes it whole): choose one such as ./last_run_prepared "
        "or ~/prepared/my-run"
    ]


def test_a_folder_above_home_is_refused_and_one_of_its_own_is_not(
    tiny_model_dir, write_config, tmp_path, monkeypatch
):
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    base = {"base_model": str(tiny_model_dir)}
    found = problems_of(write_config({**base, "dataset_prepared_path": str(home.parent)}))
    assert found[0].startswith(
        f"dataset_prepared_path: {str(home.parent)!r} is {home.parent}, which holds your "
        "home folder;"
    )
    load_config(write_config({**base, "dataset_prepared_path": str(home / "prepared")}))
    load_config(write_config({**base, "dataset_prepared_path": "last_run_prepared"}))


def test_an_output_folder_inside_a_system_folder_is_refused(tiny_model_dir, write_config):
    config = write_config(
        {
            "base_model": str(tiny_model_dir),
            "output_dir": "/etc/toolkit-run",
            "allow_existing_output_dir": True,
        }
    )
    assert problems_of(config) == [
        "output_dir: '/etc/toolkit-run' is inside the system folder /etc; choose a folder "
        "of its own, e.g. outputs/my-run"
    ]


# --- a killed merge's leftovers ----------------------------------------------------------


def test_a_killed_merges_leftovers_are_removed_by_the_next(world, capsys):
    config, out, outside = world
    for name in (".merged.tmp-k1ll3d", ".merged.old-42"):
        (out / name / "sub").mkdir(parents=True)
        (out / name / "model.safetensors").write_bytes(b"half")
        (out / name / "sub" / "x").write_text("x")
        # A link inside a leftover is removed, never followed.
        (out / name / "sub" / "to-outside").symlink_to(outside / "folder")
    # Links by those names are not toolkit's folders: left alone, and so are their targets.
    (out / ".merged.tmp-link").symlink_to(outside / "folder")
    (out / ".merged.old-link").symlink_to(outside / "file.txt")
    before = tree_state(outside)
    assert main(["merge-lora", str(config), "--runtime", "local"]) == 0, capsys.readouterr()
    assert sorted(p.name for p in out.glob(".merged.*")) == [
        ".merged.old-link",
        ".merged.tmp-link",
    ]
    assert (out / "merged" / "model.safetensors").is_file()
    assert tree_state(outside) == before


# --- TensorBoard on a full disk ----------------------------------------------------------


def test_tensorboard_on_a_full_disk_is_quiet_at_close_and_at_exit(tmp_path):
    """/dev/full answers every write with ENOSPC, as a full disk does. The events end,
    training is not stopped by them, and nothing prints a traceback at exit."""
    pytest.importorskip("tensorboardX")
    script = f"""
import sys
from pathlib import Path
from toolkit.trainer.throughput import TensorBoard
board = TensorBoard(Path({str(tmp_path / "tb")!r}))
assert board.writer is not None
board.writer.close()
board.writer = open("/dev/full", "wb")
board.scalars(1, {{"train/loss": 1.0, "train/mfu": None}})
assert board.writer.closed, "the events end at the first failed write"
board.scalars(2, {{"train/loss": 0.5}})
board.close()
board2 = TensorBoard(Path({str(tmp_path / "tb")!r}))
board2.writer.close()
board2.writer = open("/dev/full", "wb")
board2.writer.write(b"pending")
board2.close()
print("done")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    assert result.stderr == ""


def test_tensorboard_refuses_a_link_and_writes_readable_events(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto.event_pb2 import Event

    from toolkit.trainer.throughput import TensorBoard

    (tmp_path / "outside").mkdir()
    (tmp_path / "tensorboard").symlink_to(tmp_path / "outside")
    with pytest.raises(UsageError, match="tensorboard is a symbolic link"):
        TensorBoard(tmp_path / "tensorboard")
    assert list((tmp_path / "outside").iterdir()) == []
    (tmp_path / "tensorboard").unlink()
    board = TensorBoard(tmp_path / "tensorboard")
    board.scalars(3, {"train/loss": 0.25})
    board.close()
    (events,) = (tmp_path / "tensorboard").iterdir()
    blob = events.read_bytes()
    length = int.from_bytes(blob[:8], "little")
    second = blob[12 + length + 4 :]
    event = Event.FromString(second[12 : 12 + int.from_bytes(second[:8], "little")])
    assert event.step == 3
    assert [(v.tag, v.simple_value) for v in event.summary.value] == [("train/loss", 0.25)]
