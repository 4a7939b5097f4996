"""Small file helpers the recipes and merge share: permissions and atomic writes."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path


def make_readable(root: str | Path) -> None:
    """Give saved files the permissions the user's umask allows.

    safetensors writes model files with mode 0600, so a container running as
    another UID (or a colleague) cannot read a model the trainer saved.
    """
    umask = os.umask(0)
    os.umask(umask)
    file_mode = 0o666 & ~umask
    dir_mode = 0o777 & ~umask
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        if path.is_symlink():
            continue
        mode = dir_mode if path.is_dir() else file_mode
        if stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)


def write_json_atomic(path: str | Path, data: dict) -> None:
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
