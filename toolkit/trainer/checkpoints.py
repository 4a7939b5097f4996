"""Surviving preemption: a SIGTERM saves a checkpoint and stops; the next run of the
same command resumes from the newest checkpoint that proves intact.

A checkpoint counts as complete once transformers has finished writing it: then
(and only then) `toolkit-complete.json` is written into it, with the hash of the
training setup, every file of the checkpoint with its size and SHA-256, and the
SHA-256 of the marker itself. A checkpoint is resumed only if its marker is intact
and every file it lists is there, a regular file, with that size and that content:
`resume_from_checkpoint: auto` (the default) skips one whose save was cut short, whose
files went missing or were damaged since (a disk that flips bits, a copy cut short, a
rotation under save_total_limit interrupted), says why, and resumes the newest that
verifies. When checkpoints that were complete once are there and none verifies, the run
stops (exit 2) naming them rather than train from step 0 over them; `--restart`
(`resume_from_checkpoint: false`) is the way to do that. It never resumes a checkpoint
of another training setup. A checkpoint an older toolkit marked (sizes only, no
format) is resumed when its sizes agree, in its turn among the others, and the log says
it was verified by size only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from toolkit import safe_io
from toolkit.config import Config
from toolkit.errors import UsageError
from toolkit.safe_io import write_json_atomic

MARKER = "toolkit-complete.json"
MARKER_FORMAT = 2  # 1 (unversioned): sizes only, which same-size damage passes
_MARKER_LIMIT = 64 << 20  # a marker lists file names and hashes: kilobytes, not this

CUT_SHORT = "it was still being written when a run stopped"  # no marker: nothing to lose
SIZE_ONLY = 1  # the format of a marker an older toolkit wrote (it has no "format")


def sha256_in(folder: Path, name: str) -> str:
    """SHA-256 of the regular file `name` inside `folder`, opened without following a
    link and never blocking on a pipe (safe_io.open_under); streamed: hashlib releases
    the GIL, so several files hash in parallel threads."""
    with os.fdopen(safe_io.open_under(folder, name), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _hash_all(folder: Path, names: list[str]) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(names, pool.map(lambda n: sha256_in(folder, n), names), strict=True))


def _self_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "marker_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _regular_files(folder: Path) -> dict[str, int]:
    """Every regular file under `folder` (links neither listed nor followed), with its
    size; the marker itself left out."""
    files = {}
    for root, _dirs, names in os.walk(folder):  # os.walk does not descend into links
        for name in names:
            path = Path(root, name)
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and path != folder / MARKER:
                files[str(path.relative_to(folder))] = st.st_size
    return dict(sorted(files.items()))


def write_marker(folder: Path, step: int, training_digest: str) -> None:
    """Mark `folder` complete: each file's size and SHA-256, and the marker's own hash
    (so a damaged marker is told from a checkpoint of another setup)."""
    sizes = _regular_files(folder)
    hashes = _hash_all(folder, list(sizes))
    record = {
        "format": MARKER_FORMAT,
        "step": step,
        "training_digest": training_digest,
        "files": {name: {"size": sizes[name], "sha256": hashes[name]} for name in sizes},
    }
    write_json_atomic(folder / MARKER, {**record, "marker_sha256": _self_hash(record)})


class CheckpointMarker(TrainerCallback):
    """Marks each checkpoint complete after the Trainer has written all of it.

    The hashes are taken here, right after transformers wrote the files (its writers
    cannot be wrapped to hash as they write); the files are still in the page cache,
    so this reads memory, in parallel threads."""

    def __init__(self, training_digest: str) -> None:
        self.training_digest = training_digest

    def on_save(self, args, state, control, **kwargs) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir() and not folder.is_symlink():
            write_marker(folder, state.global_step, self.training_digest)


def read_marker(folder: Path) -> tuple[dict | None, str | None]:
    """The marker of `folder` once it proves intact, or None and why it cannot be used."""
    try:
        fd = safe_io.open_under(folder, MARKER)
    except FileNotFoundError:
        return None, CUT_SHORT
    except OSError:
        return None, f"its {MARKER} is a link or cannot be opened"
    try:
        with os.fdopen(fd, "rb") as f:
            record = safe_io.load_json(safe_io.read_limited(f, _MARKER_LIMIT))
    except (OSError, ValueError):
        return None, f"its {MARKER} cannot be read"
    if not isinstance(record, dict):
        return None, f"its {MARKER} cannot be read"
    files = record.get("files")
    if (
        "marker_sha256" not in record
        and "format" not in record
        and isinstance(files, dict)
        and files
        and all(type(size) is int for size in files.values())
    ):
        # An older toolkit's: sizes only, checked as such (incomplete); the resume says so.
        return {
            **record,
            "format": SIZE_ONLY,
            "files": {n: {"size": s} for n, s in files.items()},
        }, None
    if record.get("marker_sha256") != _self_hash(record):
        return None, f"its {MARKER} does not match the SHA-256 it was saved with"
    if record.get("format") != MARKER_FORMAT:
        return None, f"its {MARKER} has format {record.get('format')!r}, not {MARKER_FORMAT}"
    if not isinstance(files, dict) or not files:
        return None, f"its {MARKER} lists no files"
    if not all(
        isinstance(saved, dict)
        and isinstance(saved.get("size"), int)
        and isinstance(saved.get("sha256"), str)
        for saved in files.values()
    ):
        return None, f"its {MARKER} lists a file without its size and SHA-256"
    return record, None


def incomplete(folder: Path) -> str | None:
    """Why `folder` cannot be resumed, or None when its marker and files agree: sizes
    first (cheap), then each file's SHA-256, then that what transformers reads first
    parses."""
    if folder.is_symlink() or not folder.is_dir():
        return "it is a link or a file, not a folder this run wrote"
    record, why = read_marker(folder)
    if record is None:
        return why
    if _step(folder) >= 0 and record.get("step") != _step(folder):
        return f"its {MARKER} is of step {record.get('step')}, not of {folder.name}"
    files = record["files"]
    for name, saved in files.items():
        try:
            with os.fdopen(safe_io.open_under(folder, name), "rb") as f:
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            return f"{name} is missing"
        except safe_io.NotRegular as exc:
            return f"{name} is {exc.kind}, not a regular file"
        except (OSError, ValueError):
            return f"{name} is a link or not a file inside the checkpoint"
        if size != saved["size"]:
            return f"{name} has {size} bytes, not the {saved['size']} it was saved with"
    if record["format"] != SIZE_ONLY:
        hashes = _hash_all(folder, list(files))
        for name, saved in files.items():
            if hashes[name] != saved["sha256"]:
                return f"{name} does not match the SHA-256 it was saved with"
    return _unreadable(folder, record)


def _unreadable(folder: Path, record: dict) -> str | None:
    """Content that hashes right yet cannot be resumed (damaged before it was hashed, or
    written so by another tool): the trainer state and the weights' headers, which are
    cheap to read; a torch pickle that does not load stops the resume (see steps.py)."""
    files = record["files"]
    if "trainer_state.json" in files:
        try:
            with os.fdopen(safe_io.open_under(folder, "trainer_state.json"), "rb") as f:
                step = safe_io.load_json(safe_io.read_limited(f, _MARKER_LIMIT))["global_step"]
        except (OSError, ValueError, KeyError, TypeError):
            return "trainer_state.json cannot be read as a trainer state"
        if step != record.get("step"):
            return f"trainer_state.json is the state of step {step}, not of {folder.name}"
    from safetensors import safe_open

    for name in (n for n in files if n.endswith(".safetensors")):
        try:
            with os.fdopen(safe_io.open_under(folder, name), "rb") as f:
                # safetensors opens a path: the one of the file just opened (and
                # checked), so a name swapped meanwhile is not what it reads.
                proc = f"/proc/self/fd/{f.fileno()}"
                with safe_open(proc if os.path.exists(proc) else str(folder / name), "pt"):
                    pass
        except Exception:  # safetensors raises its own error type, or OSError
            return f"{name} cannot be read as safetensors"
    return None


class Preemption(TrainerCallback):
    """On SIGTERM: finish the current step, save a checkpoint, stop training.

    With several ranks, they agree at the end of each step (one all-reduce of a flag):
    the signal reaches each rank, on each machine, at its own moment, and a rank that
    stopped a step before the others would leave them waiting in a collective.
    `signalled` is this rank's (set by the handler, at any moment, never cleared);
    `requested` is what the ranks agreed, the step they stop at."""

    def __init__(self) -> None:
        self.signalled = False
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[Preemption]:
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = True

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            flag = torch.tensor([int(self.signalled)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.requested = self.requested or bool(flag.item())
        else:
            self.requested = self.signalled
        if self.requested:
            control.should_save = True
            control.should_training_stop = True


def _step(folder: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def find_resume(cfg: Config, log) -> str | None:
    """The checkpoint to resume from, as resume_from_checkpoint says; logs the choice.

    Raises UsageError (exit 2) rather than start at step 0 over checkpoints that were
    complete once and of which none verifies now."""
    setting = cfg.resume_from_checkpoint
    out = Path(cfg.output_dir)
    if setting is False:
        found = sorted(p.name for p in out.glob("checkpoint-*"))
        if found:
            log(
                f"resume: off (resume_from_checkpoint: false); starting at step 0 beside "
                f"{', '.join(found)}"
            )
        return None
    if isinstance(setting, str) and setting != "auto":
        return _named(Path(setting).expanduser(), setting, log)
    folders = sorted(
        (p for p in out.glob("checkpoint-*") if _step(p) >= 0), key=_step, reverse=True
    )
    damaged = []
    for folder in folders:
        why = incomplete(folder)
        if why:
            log(f"resume: skipping {folder.name}: {why}")
            if why != CUT_SHORT:
                damaged.append(f"{folder.name} ({why})")
            continue
        marker = read_marker(folder)[0] or {}  # incomplete() has just read it whole
        if marker.get("training_digest") != cfg.training_digest():
            raise UsageError(
                f"output_dir {out} holds {folder.name}, written by another training setup; "
                "choose a new output_dir, move the old checkpoints away, or set "
                f"resume_from_checkpoint: {folder} to continue from it anyway"
            )
        if marker.get("format") == SIZE_ONLY:
            log(_size_only(folder))
        log(f"resume: continuing from {folder.name} (step {_step(folder)})")
        return str(folder)
    if damaged:
        raise UsageError(
            f"output_dir {out} holds checkpoints of which none can be resumed: "
            f"{'; '.join(damaged)}. They were left as they are. To train from step 0 "
            "over them, run the same command with --restart (resume_from_checkpoint: "
            f"false); to keep them, move them out of {out} first"
        )
    return None


def _named(folder: Path, setting: str, log) -> str:
    """resume_from_checkpoint: PATH — a toolkit checkpoint must verify; one another tool
    wrote (no marker) is taken as it is, and the log says so."""
    if not (folder / "trainer_state.json").exists():
        raise UsageError(
            f"resume_from_checkpoint: {setting!r} is not a complete checkpoint "
            "(no trainer_state.json); point it at a checkpoint-N folder or use "
            "auto"
        )
    if (folder / MARKER).exists() or (folder / MARKER).is_symlink():
        why = incomplete(folder)
        if why:
            raise UsageError(
                f"resume_from_checkpoint: {setting!r} cannot be resumed: {why}; point it "
                "at another checkpoint-N folder or use auto"
            )
        if (read_marker(folder)[0] or {}).get("format") == SIZE_ONLY:
            log(_size_only(folder))
        log(f"resume: from {folder} (resume_from_checkpoint)")
    else:
        log(f"resume: from {folder} (resume_from_checkpoint; no {MARKER}: not verified)")
    return str(folder)


def _size_only(folder: Path) -> str:
    """The loud line for an older toolkit's checkpoint: damage that keeps a file's size
    would pass its check."""
    return f"resume: {folder.name} verified by size only (written by an older toolkit)"
