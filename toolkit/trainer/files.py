"""Small file helpers the recipes and merge share: permissions and atomic writes."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path


def make_readable(root: str | Path) -> None:
    """Give what toolkit just wrote under `root` (a folder it created itself, or one
    file) the permissions the user's umask allows.

    safetensors writes model files with mode 0600, so a container running as
    another UID (or a colleague) cannot read a model the trainer saved. Only ever
    called on toolkit's own files: see `snapshot` and `make_written_readable` for a
    folder that may hold someone else's.
    """
    root = Path(root)
    _chmod([root, *root.rglob("*")] if root.is_dir() else [root])


def _chmod(paths) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        if path.is_symlink() or not path.exists():
            continue
        mode = (0o777 if path.is_dir() else 0o666) & ~umask
        if stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)


Snapshot = dict[Path, tuple[int, int]]


def snapshot(root: str | Path) -> Snapshot:
    """Each path under `root` with its inode and modification time."""
    root = Path(root)
    out: Snapshot = {}
    for path in root.rglob("*"):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        out[path] = (st.st_ino, st.st_mtime_ns)
    return out


def make_written_readable(root: str | Path, before: Snapshot) -> None:
    """make_readable for what was created or rewritten under `root` since `before`;
    files and folders that were there untouched keep their modes."""
    after = snapshot(root)
    _chmod(
        p
        for p, ident in after.items()
        if before.get(p) != ident and not (p.is_dir() and p in before)
    )


def write_json_atomic(path: str | Path, data: dict | list) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
        make_readable(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
