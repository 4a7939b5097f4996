"""Small file helpers the recipes and merge share: permissions and atomic writes, never
through a link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from toolkit import safe_io


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
    """Set each regular file's and folder's mode through a descriptor opened without
    following a link: a link put at a name meanwhile is never followed to its target."""
    umask = safe_io.current_umask()
    for path in paths:
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            opener = safe_io.open_dir
        elif stat.S_ISREG(st.st_mode):
            opener = safe_io.open_file
        else:  # a link (never followed), a pipe, a device: not toolkit's to change
            continue
        mode = (0o777 if stat.S_ISDIR(st.st_mode) else 0o666) & ~umask
        if stat.S_IMODE(st.st_mode) == mode:
            continue
        try:
            fd = opener(path)
        except OSError:  # changed since the lstat: left as it is
            continue
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)


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
