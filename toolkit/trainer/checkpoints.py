"""Surviving preemption: a SIGTERM saves a checkpoint and stops; the next run of the
same command resumes from the newest complete checkpoint.

A checkpoint counts as complete once transformers has finished writing it: then
(and only then) `toolkit-complete.json` is written into it, with the hash of the
training setup and every file of the checkpoint with its size. A checkpoint is
resumed only if those files are all there with those sizes:
`resume_from_checkpoint: auto` (the default) skips one whose save was cut short or
whose files went missing since (a rotation under save_total_limit interrupted), says
so, and never resumes a checkpoint of another training setup.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from toolkit.config import Config
from toolkit.errors import UsageError
from toolkit.trainer.files import write_json_atomic

MARKER = "toolkit-complete.json"


class CheckpointMarker(TrainerCallback):
    """Marks each checkpoint complete after the Trainer has written all of it."""

    def __init__(self, training_digest: str) -> None:
        self.training_digest = training_digest

    def on_save(self, args, state, control, **kwargs) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            files = {
                str(p.relative_to(folder)): p.stat().st_size
                for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != MARKER
            }
            write_json_atomic(
                folder / MARKER,
                {
                    "step": state.global_step,
                    "training_digest": self.training_digest,
                    "files": files,
                },
            )


def incomplete(folder: Path) -> str | None:
    """Why `folder` cannot be resumed, or None when its marker and files agree."""
    marker = folder / MARKER
    if not marker.exists():
        return "it was still being written when a run stopped"
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return f"its {MARKER} cannot be read"
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return f"its {MARKER} lists no files (written by an older toolkit)"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not the {size} it was saved with"
    return None


class Preemption(TrainerCallback):
    """On SIGTERM: finish the current step, save a checkpoint, stop training."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[Preemption]:
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True


def _step(folder: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def find_resume(cfg: Config, log) -> str | None:
    """The checkpoint to resume from, as resume_from_checkpoint says; logs the choice."""
    setting = cfg.resume_from_checkpoint
    if setting is False:
        found = sorted(p.name for p in Path(cfg.output_dir).glob("checkpoint-*"))
        if found:
            log(
                f"resume: off (resume_from_checkpoint: false); starting at step 0 beside "
                f"{', '.join(found)}"
            )
        return None
    if isinstance(setting, str) and setting != "auto":
        folder = Path(setting).expanduser()
        if not (folder / "trainer_state.json").exists():
            raise UsageError(
                f"resume_from_checkpoint: {setting!r} is not a complete checkpoint "
                "(no trainer_state.json); point it at a checkpoint-N folder or use "
                "auto"
            )
        log(f"resume: from {folder} (resume_from_checkpoint)")
        return str(folder)
    if setting is True:
        setting = "auto"
    out = Path(cfg.output_dir)
    folders = sorted(
        (p for p in out.glob("checkpoint-*") if _step(p) >= 0), key=_step, reverse=True
    )
    for folder in folders:
        why = incomplete(folder)
        if why:
            log(f"resume: skipping {folder.name}: {why}")
            continue
        if (
            json.loads((folder / MARKER).read_text()).get("training_digest")
            != cfg.training_digest()
        ):
            raise UsageError(
                f"output_dir {out} holds {folder.name}, written by another training setup; "
                "choose a new output_dir, move the old checkpoints away, or set "
                f"resume_from_checkpoint: {folder} to continue from it anyway"
            )
        log(f"resume: continuing from {folder.name} (step {_step(folder)})")
        return str(folder)
    return None
