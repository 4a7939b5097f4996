"""The output folder: which folders a run may write, who writes it, and what it holds.

- `output_problems` (called by config validation): output_dir and dataset_prepared_path
  never equal, contain or sit inside an input; output_dir is never `/`; the home folder or
  a non-empty folder that holds no toolkit run is refused unless
  `allow_existing_output_dir: true` says the user means it.
- `RunLock`: one writer per output folder. An exclusive `flock` on
  `output_dir/.toolkit/lock`, taken by the command that starts the run and held until it
  ends (the container's reaper inherits it, see toolkit.engine); trainer processes it
  launched are told by a token in TOOLKIT_RUN_LOCK, others take it themselves.
- `previous_run`: what a finished run in output_dir means for this config: the same run
  (nothing to do), the same training continued (resume), or another run (refused).

No torch here: the host CLI calls all of it before any container starts.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from toolkit.config.schema import WEIGHT_NEUTRAL as CONFIG_NEUTRAL
from toolkit.errors import UsageError

STATE_DIR = ".toolkit"  # toolkit's own files inside output_dir
RUN_LOCK_ENV = "TOOLKIT_RUN_LOCK"
MANIFEST = "run.json"
ALLOW_KEY = "allow_existing_output_dir"
# Config keys that cannot change the trained weights: a finished run whose config differs
# only in these is the same run.
WEIGHT_NEUTRAL = (*CONFIG_NEUTRAL, ALLOW_KEY)


# What a run writes into output_dir (transformers, peft and toolkit), by name.
WRITTEN = (
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "training_args.bin",
    "run.json",
    "train.log",
    "loss.png",
    "tensorboard",
    "merged",
    "checkpoint-*",
    STATE_DIR,
)


def holds_toolkit_run(folder: Path) -> bool:
    """Whether toolkit has written into `folder` before (a run, finished or not)."""
    return any((folder / name).exists() for name in (STATE_DIR, MANIFEST, "train.log")) or any(
        folder.glob("checkpoint-*")
    )


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def output_problems(raw: dict, inputs: list[tuple[str, Path]]) -> list[str]:
    """Problems with where a config writes. `inputs`: (key, absolute path) of each local
    input the run reads."""
    out = []
    ref = raw.get("output_dir")
    if isinstance(ref, str) and Path(os.path.realpath(Path(ref).expanduser())) == Path("/"):
        return [
            f"output_dir: {ref!r} is the root folder; choose a folder of its own, e.g. "
            "outputs/my-run"
        ]
    writes = [
        (k, raw[k])
        for k in ("output_dir", "dataset_prepared_path")
        if isinstance(raw.get(k), str) and raw[k]
    ]
    for key, write in writes:
        real = Path(os.path.realpath(Path(write).expanduser()))
        for in_key, in_path in inputs:
            in_real = Path(os.path.realpath(in_path))
            if real == in_real:
                rel = "is"
            elif _inside(real, in_real):
                rel = "sits inside"
            elif _inside(in_real, real):
                rel = "contains"
            else:
                continue
            out.append(
                f"{key}: {write!r} {rel} {in_key} ({in_path}); a run never writes "
                f"where it reads: choose a {key} outside every input"
            )
    if not isinstance(ref, str) or any(p.startswith("output_dir:") for p in out):
        return out
    where = Path(os.path.realpath(Path(ref).expanduser()))
    if raw.get(ALLOW_KEY) is True:
        clashes = (
            []
            if holds_toolkit_run(where) or not where.is_dir()
            else sorted(p.name for p in where.iterdir() if any(fnmatch(p.name, n) for n in WRITTEN))
        )
        if clashes:
            out.append(
                f"output_dir: {ref!r} holds {', '.join(clashes)}, which training would "
                "write over; move them away or choose another output_dir"
            )
        return out
    if where == Path(os.path.realpath(Path.home())):
        out.append(
            f"output_dir: {ref!r} is your home folder; choose a folder of its own (e.g. "
            f"~/runs/my-run), or set {ALLOW_KEY}: true to write there"
        )
    elif where.is_dir() and not holds_toolkit_run(where) and any(where.iterdir()):
        names = sorted(p.name for p in where.iterdir())
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        out.append(
            f"output_dir: {ref!r} already holds files that are not a toolkit run "
            f"({shown}); choose an empty or new folder, or set {ALLOW_KEY}: true to "
            "write beside them (toolkit changes none of them)"
        )
    return out


# ---------------------------------------------------------------------------
# one writer per output folder


@dataclass
class RunLock:
    """An exclusive lock on an output folder, held until `release` or process exit."""

    path: Path
    fd: int
    token: str

    @property
    def fds(self) -> tuple[int, ...]:
        """The descriptor to keep open in whatever must hold the lock with us."""
        return (self.fd,) if self.fd >= 0 else ()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / STATE_DIR / "lock"


def acquire(output_dir: str | Path, command: str) -> RunLock:
    """Take the output folder's lock or fail at once (exit 2) naming who holds it."""
    path = lock_path(output_dir)
    fresh = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if fresh and os.geteuid() == 0:
        # Run as root for another user's folder (sudo, or a container of that user's):
        # toolkit's state folder belongs to the folder's owner, who writes it.
        owner = Path(output_dir).stat()
        os.chown(path.parent, owner.st_uid, owner.st_gid)
        os.fchown(fd, owner.st_uid, owner.st_gid)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise UsageError(
            f"output_dir {output_dir} is in use by another toolkit run "
            f"({describe_holder(path)}); wait for it to finish, stop it, or "
            "choose another output_dir"
        ) from None
    token = secrets.token_hex(16)
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "token": token,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    return RunLock(path, fd, token)


def describe_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return "holder unknown"
    text = (
        f"`toolkit {holder.get('command', '?')}`, pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('started_at', '?')}"
    )
    if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
        # The command is gone but its container's reaper still holds the lock.
        text += "; that command has ended and its container is being stopped (it saves a "
        text += "checkpoint first): try again in a minute"
    return text


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: list[RunLock] = []


def held_for_us(output_dir: str | Path) -> bool:
    """Whether the lock is this process's, or held for it by the command that launched it
    (the token that command passed matches the lock file's)."""
    path = lock_path(output_dir)
    if any(lock.path == path and lock.fd >= 0 for lock in _HELD):
        return True
    token = os.environ.get(RUN_LOCK_ENV)
    if not token:
        return False
    try:
        return json.loads(path.read_text()).get("token") == token
    except (OSError, ValueError):
        return False


def ensure_held(output_dir: str | Path, command: str) -> RunLock | None:
    """For a process about to write output_dir: None when the lock is held for it, else
    the lock, taken now, for the caller to release."""
    return None if held_for_us(output_dir) else acquire(output_dir, command)


def hold(output_dir: str | Path, command: str) -> RunLock:
    """Take the lock for this process and the processes it launches (by token); when it is
    held for us already, a lock with nothing to release (fd -1)."""
    if held_for_us(output_dir):
        return RunLock(lock_path(output_dir), -1, "")
    lock = acquire(output_dir, command)
    _HELD.append(lock)
    os.environ[RUN_LOCK_ENV] = lock.token
    return lock


def release(lock: RunLock) -> None:
    lock.release()
    if lock in _HELD:
        _HELD.remove(lock)
    if lock.token and os.environ.get(RUN_LOCK_ENV) == lock.token:
        del os.environ[RUN_LOCK_ENV]


# ---------------------------------------------------------------------------
# what output_dir already holds


@dataclass(frozen=True)
class Previous:
    kind: str  # "none", "finished" (this very run), "extend" (same training), "other"
    run: dict | None = None
    differences: tuple[str, ...] = ()


def read_manifest(output_dir: str | Path) -> dict | None:
    path = Path(output_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{path} cannot be read ({exc}); it was not written by toolkit, or "
            "was damaged: move it away, or choose another output_dir"
        ) from None


def config_differences(recorded: dict, current: dict) -> list[str]:
    """`key (recorded → current)` for each top-level key whose value differs."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        if key in WEIGHT_NEUTRAL or key == "output_dir":
            continue
        if recorded.get(key) != current.get(key):
            out.append(f"{key} ({_brief(recorded.get(key))} → {_brief(current.get(key))})")
    return out


def _brief(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def previous_run(output_dir: str | Path, config: dict, training_digest: str) -> Previous:
    """What output_dir's run.json means for a run of `config` (its JSON dump)."""
    run = read_manifest(output_dir)
    if run is None:
        return Previous("none")
    if run.get("status", "complete") != "complete":
        return Previous("none", run)
    differences = tuple(config_differences(run.get("config") or {}, config))
    if not differences:
        return Previous("finished", run)
    if run.get("training_digest") == training_digest:
        return Previous("extend", run, differences)
    return Previous("other", run, differences)


def refuse_other_run(output_dir: str | Path, previous: Previous) -> None:
    if previous.kind != "other":
        return
    run = previous.run or {}
    shown = "; ".join(previous.differences[:6]) + (
        f" and {len(previous.differences) - 6} more" if len(previous.differences) > 6 else ""
    )
    raise UsageError(
        f"output_dir {output_dir} holds a finished run of another config (written "
        f"{run.get('written_at', '?')}; differs in: {shown}); choose a new "
        "output_dir, or move that run away first. Nothing was changed"
    )


def check_previous(
    output_dir: str | Path, config: dict, training_digest: str, what: str = "train"
) -> bool:
    """True when output_dir already holds this very run, finished (said so); raises when it
    holds another finished run; False when training should go on (fresh, or resumed)."""
    previous = previous_run(output_dir, config, training_digest)
    if previous.kind == "finished":
        report_finished(output_dir, previous, what)
        return True
    refuse_other_run(output_dir, previous)
    return False


def segments_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / STATE_DIR / "segments.json"


def read_segments(output_dir: str | Path) -> list[dict]:
    try:
        return json.loads(segments_path(output_dir).read_text())
    except (OSError, ValueError):
        return []


def write_segments(output_dir: str | Path, segments: list[dict]) -> None:
    """Each start of a run (the first, and each resume) with how it ended."""
    path = segments_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(segments, indent=2) + "\n")
    os.replace(tmp, path)


def report_finished(output_dir: str | Path, previous: Previous, what: str = "train") -> None:
    run = previous.run or {}
    print(
        f"toolkit: {output_dir} already holds this run, complete: {run.get('steps')} steps, "
        f"final loss {run.get('final_loss')}, finished {run.get('written_at')}; nothing to "
        f"{what}. To train again, choose another output_dir or remove this one",
        file=sys.stderr,
    )
