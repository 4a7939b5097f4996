"""The output folder: which folders a run may write, who writes it, and what it holds.

- `output_problems` (called by config validation): output_dir and dataset_prepared_path
  never equal, contain or sit inside an input; output_dir is never `/`; the home folder or
  a non-empty folder that holds no toolkit run is refused unless
  `allow_existing_output_dir: true` says the user means it.
- `RunLock`: one writer per output folder. An exclusive `flock` on
  `output_dir/.toolkit/lock`, taken by the command that starts the run and held until it
  ends (the container's reaper inherits it, see toolkit.containers.engine); trainer processes it
  launched are told by a token in TOOLKIT_RUN_LOCK, others take it themselves.
- `previous_run`: what a finished run in output_dir means for this config: the same run
  (nothing to do), the same training continued (resume), or another run (refused).
- Links: toolkit never writes through a symbolic link. A link at a name a run writes in
  output_dir (`PLANNED`, or anything inside a planned folder) is refused, exit 2 naming
  it, at validation, before the lock is taken and again where training starts (a link
  can be planted in between, and a container validates its own view); the files toolkit
  opens itself are opened with O_NOFOLLOW, and replaced by rename, which replaces a link
  rather than following it. output_dir itself, and the folders above it, may be links:
  the user chose them (outputs -> /scratch).

No torch here: the host CLI calls all of it before any container starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from toolkit import safe_io
from toolkit.errors import UsageError

STATE_DIR = ".toolkit"  # toolkit's own files inside output_dir
# Where preprocess writes when dataset_prepared_path is not set, as axolotl does.
DEFAULT_PREPARED_PATH = "last_run_prepared"
MANIFEST = "run.json"
ALLOW_KEY = "allow_existing_output_dir"


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


# Beyond WRITTEN (which publish reads too): the trackers' local stores, W&B's offline
# runs (WANDB_DIR is output_dir) and MLflow's default store.
PLANNED = (*WRITTEN, "wandb", "mlruns")
WANDB_OWN_LINKS = ("debug*.log",)
LINK_ADVICE = "toolkit never writes through links: remove it, or choose another output_dir"


def holds_toolkit_run(folder: Path) -> bool:
    """Whether toolkit has written a run into `folder` (finished or not), by a record it
    wrote: run.json, the lock or segments.json in .toolkit/, or a checkpoint's completion
    marker, each a regular file (never a link) holding what toolkit writes there. An empty
    .toolkit/, a train.log or a bare checkpoint-* folder are not one: anyone can make
    those."""
    folder = Path(folder)
    if _record(folder / MANIFEST, "toolkit_version", "config"):
        return True
    if _real_dir(folder / STATE_DIR) and (
        _record(lock_path(folder), "token", "command") or _record(segments_path(folder))
    ):
        return True
    return any(
        _real_dir(c) and _record(c / "toolkit-complete.json", "training_digest")
        for c in folder.glob("checkpoint-*")
    )


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _record(path: Path, *keys: str) -> bool:
    """Whether `path` holds JSON as toolkit writes it: an object with `keys`, or without
    keys, a list."""
    try:
        data = read_json(path)
    except (OSError, ValueError, UsageError):
        return False
    if keys:
        return isinstance(data, dict) and all(k in data for k in keys)
    return isinstance(data, list)


def planted_links(output_dir: str | Path) -> list[tuple[Path, str]]:
    """(path, target) of each symbolic link at a name toolkit writes in output_dir: a
    `PLANNED` name, or any name inside a planned folder (checkpoint-*, tensorboard,
    merged, .toolkit, wandb, mlruns), dangling or not. W&B's own links inside wandb/ are
    not counted: any pointing inside it (latest-run, debug.log), and debug*.log, which it
    links to its log cache in the home folder; it makes them anew rather than writing
    through them, in a new run folder each run. Nor is
    output_dir itself counted, nor what is beside the planned names."""
    out = Path(output_dir).expanduser()
    try:
        entries = sorted(os.scandir(out), key=lambda e: e.name)
    except OSError:  # not there yet, or not a folder: validation says so
        return []
    found = []
    for entry in entries:
        if not any(fnmatch(entry.name, name) for name in PLANNED):
            continue
        if entry.is_symlink():
            found.append((out / entry.name, _target(entry.path)))
        elif entry.is_dir(follow_symlinks=False):
            own = os.path.realpath(entry.path) if entry.name == "wandb" else None
            for root, dirs, files in os.walk(entry.path):  # never into a link
                for name in sorted(dirs + files):
                    path = os.path.join(root, name)
                    if not os.path.islink(path):
                        continue
                    if own and (
                        os.path.realpath(path).startswith(own + os.sep)
                        or any(fnmatch(name, w) for w in WANDB_OWN_LINKS)
                    ):
                        continue
                    found.append((Path(path), _target(path)))
    return found


def _target(path: str | Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def link_problem(path: Path, target: str) -> str:
    return f"{path} is a symbolic link (to {target}); {LINK_ADVICE}"


def refuse_links(output_dir: str | Path) -> None:
    """Exit 2 naming each link at a name toolkit would write in output_dir
    (`planted_links`); called before anything is written there."""
    found = planted_links(output_dir)
    if len(found) == 1:
        raise UsageError(link_problem(*found[0]))
    if found:
        raise UsageError(
            f"output_dir {output_dir} holds {len(found)} symbolic links where toolkit "
            f"writes; {LINK_ADVICE.replace('it,', 'them,')}",
            [f"{path} is a symbolic link (to {target})" for path, target in found],
        )


def open_nofollow(path: Path, flags: int, mode: int = 0o666, dir_fd: int | None = None) -> int:
    """os.open for a file toolkit writes or reads in an output folder (safe_io.open_file):
    a link at `path` is never followed, nor anything but a regular file opened (a FIFO
    would block); both are exit 2 naming it. With `dir_fd`, `path`'s name is opened in
    that folder."""
    try:
        return safe_io.open_file(
            path.name if dir_fd is not None else path, flags, mode, dir_fd=dir_fd
        )
    except safe_io.NotRegular:
        raise UsageError(
            f"{path} is not a regular file; toolkit writes its own files there: remove "
            "it, or choose another output_dir"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(link_problem(path, _target(path))) from None
        raise


def open_folder(path: Path) -> int:
    """A descriptor of a folder toolkit writes into, never through a link (exit 2)."""
    try:
        return safe_io.open_dir(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(link_problem(path, _target(path))) from None
        raise


RECORD_LIMIT = 64 << 20  # toolkit's records in output_dir are kilobytes


def read_json(path: Path) -> object:
    """A record toolkit wrote in an output folder, as JSON (safe_io.load_json): opened
    as open_nofollow opens it (UsageError for a link or a pipe), at most RECORD_LIMIT
    bytes (ValueError beyond, or for what is not JSON); OSError when it cannot be read."""
    with os.fdopen(open_nofollow(path, os.O_RDONLY), "rb") as f:
        return safe_io.load_json(safe_io.read_limited(f, RECORD_LIMIT))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


# Top-level folders of the system itself: nothing a run writes belongs in them, but for
# the places inside them that hold users' files (removable disks, per-user runtime
# folders, shared memory, software installed by hand).
SYSTEM_FOLDERS = {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc"}
SYSTEM_FOLDERS |= {"run", "sbin", "snap", "sys", "usr"}
USERS_PLACES = tuple(Path(p) for p in ("/dev/shm", "/run/media", "/run/user", "/usr/local"))  # noqa: S108


def system_folder(real: Path) -> str | None:
    """The system folder (/etc, /usr, …) that the resolved path `real` lies in, or None."""
    if len(real.parts) < 2 or real.parts[1] not in SYSTEM_FOLDERS:
        return None
    if any(real == place or place in real.parents for place in USERS_PLACES):
        return None
    return f"/{real.parts[1]}"


def _broad_folder(ref: str) -> str | None:
    """What makes folder `ref` too broad to hold prepared data (written and pruned
    whole), or None: the root, a top-level folder (/tmp, /home, /data), a system folder
    or one inside it, the home folder or a folder above it, or the working folder."""
    real = Path(os.path.realpath(Path(ref).expanduser()))
    home = Path(os.path.realpath(Path.home()))
    if real == Path("/"):
        return "the root folder"
    if len(real.parts) == 2:
        return f"the top-level folder {real}"
    if system_folder(real):
        return f"inside the system folder {system_folder(real)}"
    if real == home or real in home.parents:
        return "your home folder" if real == home else f"{real}, which holds your home folder"
    if real == Path(os.path.realpath(Path.cwd())):
        return "the working folder"
    return None


WRITE_KEYS = ("output_dir", "dataset_prepared_path")


def _overlaps(raw: dict, inputs: list[tuple[str, Path]], keys: tuple[str, ...]) -> list[str]:
    """A folder the config writes (at `keys`) that is, holds or sits inside an input."""
    out = []
    writes = [(k, raw[k]) for k in keys if isinstance(raw.get(k), str) and raw[k]]
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
    return out


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
    prepared = raw.get("dataset_prepared_path")
    broad = _broad_folder(prepared) if isinstance(prepared, str) and prepared else None
    # A broad folder holds inputs too: that it is broad says all.
    out += _overlaps(raw, inputs, ("output_dir",) if broad else WRITE_KEYS)
    if broad:
        out.append(
            f"dataset_prepared_path: {prepared!r} is {broad}; prepared data needs a "
            "folder of its own (toolkit writes and prunes it whole): choose one such "
            "as ./last_run_prepared or ~/prepared/my-run"
        )
    if not isinstance(ref, str) or any(p.startswith("output_dir:") for p in out):
        return out
    where = Path(os.path.realpath(Path(ref).expanduser()))
    if system_folder(where):
        return [
            *out,
            f"output_dir: {ref!r} is inside the system folder {system_folder(where)}; "
            "choose a folder of its own, e.g. outputs/my-run",
        ]
    links = planted_links(ref)
    if links:  # before what the folder holds: a link there is no record of a run
        return [*out, *(f"output_dir: {link_problem(*link)}" for link in links)]
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
    """Take the output folder's lock or fail at once (exit 2) naming who holds it, or
    any link where the run will write."""
    refuse_links(output_dir)
    return _take(output_dir, command)


def _take(output_dir: str | Path, command: str) -> RunLock:
    """acquire, once links are refused."""
    path = lock_path(output_dir)
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    fresh = not os.path.lexists(path.parent)
    with contextlib.suppress(FileExistsError):  # another command's, made meanwhile
        os.mkdir(path.parent)
    # Opened relative to the state folder, itself opened without following a link: a
    # link planted at .toolkit or .toolkit/lock after the check is refused, not written.
    folder = open_folder(path.parent)
    try:
        fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644, dir_fd=folder)
        if fresh and os.geteuid() == 0:
            # Run as root for another user's folder (sudo, or a container of that
            # user's): toolkit's state folder belongs to the folder's owner.
            owner = Path(output_dir).stat()
            os.fchown(folder, owner.st_uid, owner.st_gid)
            os.fchown(fd, owner.st_uid, owner.st_gid)
    finally:
        os.close(folder)
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
        found = read_json(path)
    except (OSError, ValueError, UsageError):
        return "holder unknown"
    holder = found if isinstance(found, dict) else {}
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


def held_for_us(output_dir: str | Path, token: str | None = None) -> bool:
    """Whether the lock is this process's, or held for it by the command that planned
    the run (`token`, from the plan, matches the lock file's)."""
    path = lock_path(output_dir)
    if any(lock.path == path and lock.fd >= 0 for lock in _HELD):
        return True
    if not token:
        return False
    try:
        holder = read_json(path)
    except (OSError, ValueError, UsageError):
        return False
    return isinstance(holder, dict) and holder.get("token") == token


def ensure_held(output_dir: str | Path, command: str, token: str | None = None) -> RunLock | None:
    """For a process about to write output_dir: None when the lock is held for it, else
    the lock, taken now, for the caller to release. Either way, a link where the run
    will write is refused first (exit 2)."""
    refuse_links(output_dir)
    return None if held_for_us(output_dir, token) else _take(output_dir, command)


def hold(output_dir: str | Path, command: str) -> RunLock:
    """Take the lock for this process and the processes it plans runs for (they get its
    token in the plan); when this process holds it already, that lock's token with
    nothing to release (fd -1). A link where the run will write is refused first
    (exit 2)."""
    refuse_links(output_dir)
    path = lock_path(output_dir)
    for lock in _HELD:
        if lock.path == path and lock.fd >= 0:
            return RunLock(path, -1, lock.token)
    lock = _take(output_dir, command)
    _HELD.append(lock)
    return lock


@contextlib.contextmanager
def held(output_dir: str | Path, command: str) -> Iterator[RunLock]:
    """output_dir (made if missing) locked for this command and the runs it plans, for
    as long as the block runs."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    lock = hold(output_dir, command)
    try:
        yield lock
    finally:
        release(lock)


def release(lock: RunLock) -> None:
    lock.release()
    if lock in _HELD:
        _HELD.remove(lock)


# ---------------------------------------------------------------------------
# what output_dir already holds


def segments_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / STATE_DIR / "segments.json"


def read_segments(output_dir: str | Path) -> list[dict]:
    try:
        segments = read_json(segments_path(output_dir))
    except (OSError, ValueError, UsageError):
        return []
    return [s for s in segments if isinstance(s, dict)] if isinstance(segments, list) else []


def write_segments(output_dir: str | Path, segments: list[dict]) -> None:
    """Each start of a run (the first, and each resume) with how it ended."""
    from toolkit.safe_io import write_json_atomic

    path = segments_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, segments)
