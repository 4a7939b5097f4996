"""The example configs that ship with toolkit: listed, and copied into a folder so that
an install without a checkout can start from one.

A checkout keeps them in configs/; a wheel carries the same files as toolkit/_examples.
A copy is the shipped file unchanged, with the local data files it names (the demo's
configs/data/demo-chat.jsonl) at the same relative paths, so it validates and trains
from the folder it was copied into. Nothing that is already there is overwritten, and
no link is followed: neither at a file's name nor at a folder the copy creates.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from toolkit import safe_io
from toolkit.errors import UsageError

_PACKAGED = Path(__file__).resolve().parent / "_examples"
# A checkout (or an editable install of one) has no toolkit/_examples: the files are
# configs/ beside the package.
EXAMPLES_DIR = _PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parents[1] / "configs"
# The prefix the examples use for their own data (datasets: - path: configs/data/…).
DATA_PREFIX = PurePosixPath("configs")


@dataclass(frozen=True)
class Example:
    """A shipped config: its name (the file name without .yaml), its first comment
    sentence, and where it lies in the installation."""

    name: str
    description: str
    path: Path


def list_examples() -> list[Example]:
    """Every shipped example config, by name."""
    return [
        Example(path.stem, _description(path), path) for path in sorted(EXAMPLES_DIR.glob("*.yaml"))
    ]


def _description(path: Path) -> str:
    """The opening comment up to its first full stop (the lines after it show commands)."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or line.startswith("#   "):
            break
        words.append(line.lstrip("#").strip())
    text = " ".join(words)
    end = text.find(". ")
    return text[: end + 1] if end >= 0 else text


def find(name: str) -> Example:
    """The example called `name` (with or without .yaml); a usage error naming the
    examples otherwise."""
    examples = {e.name: e for e in list_examples()}
    wanted = name.removesuffix(".yaml")
    if wanted in examples:
        return examples[wanted]
    close = difflib.get_close_matches(wanted, examples, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(
        f"no example named {name!r}; {hint}the examples are {', '.join(examples)} "
        "(`toolkit examples` lists them)"
    )


def files_of(example: Example) -> list[tuple[PurePosixPath, Path]]:
    """What a copy writes: (relative destination, shipped source) for the config and
    for each shipped data file it names by a relative configs/… path."""
    import yaml

    out = [(PurePosixPath(example.path.name), example.path)]
    raw = yaml.safe_load(example.path.read_text()) or {}
    for key in ("datasets", "test_datasets"):
        for ds in raw.get(key) or []:
            ref = PurePosixPath(str(ds.get("path", ""))) if isinstance(ds, dict) else None
            if ref is None or ref.is_absolute() or ref.parts[:1] != DATA_PREFIX.parts:
                continue
            source = EXAMPLES_DIR.joinpath(*ref.parts[1:])
            if source.is_file() and (ref, source) not in out:
                out.append((ref, source))
    return out


def copy_examples(names: list[str], into: Path) -> list[PurePosixPath]:
    """Copy the examples `names` into the folder `into`; return the relative paths
    written.

    Refuses (before writing anything) when a config's name is already taken there, by a
    file, a folder or a link, dangling or not, or when a folder on the way is a link or a
    file; a data file already there with the same bytes is kept, any other is refused.
    Folders on the way are created without following links, so nothing is written
    outside `into`."""
    configs = {PurePosixPath(find(name).path.name) for name in names}
    wanted: dict[PurePosixPath, bytes] = {}
    for name in names:
        for rel, source in files_of(find(name)):
            wanted[rel] = source.read_bytes()
    # A config is never "already there": a file of that name may be the user's edit.
    writes = [
        (rel, data)
        for rel, data in wanted.items()
        if _is_free(into, rel, None if rel in configs else data)
    ]
    for rel, data in writes:
        _write_new(into, rel, data)
    return [rel for rel, _ in writes]


def next_steps(example: Example) -> list[str]:
    """The commands the example's opening comment shows, for its copy in the current
    folder (configs/NAME.yaml → NAME.yaml)."""
    shown = [
        line.removeprefix("#").strip()
        for line in example.path.read_text().splitlines()
        if line.startswith("#   toolkit ")
    ]
    here = [line.replace(f"configs/{example.path.name}", example.path.name) for line in shown]
    return here or [f"toolkit validate {example.path.name} && toolkit train {example.path.name}"]


def _is_free(into: Path, rel: PurePosixPath, same: bytes | None) -> bool:
    """True when `rel` can be created in `into`; False when it already holds the bytes
    `same` (a data file to keep); a usage error when anything else holds the name."""
    for i in range(1, len(rel.parts)):
        folder = into.joinpath(*rel.parts[:i])
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise _taken(rel, folder, "a link" if folder.is_symlink() else "a file")
    where = into / rel
    try:
        mode = os.lstat(where).st_mode
    except FileNotFoundError:
        return True
    if same is not None and stat.S_ISREG(mode) and _holds(where, same):
        return False
    raise _taken(rel, where, safe_io.kind_of(mode))


def _holds(path: Path, data: bytes) -> bool:
    """Whether the regular file at `path` holds exactly `data` (read without following
    a link or blocking on a pipe put there meanwhile, and no more than that)."""
    try:
        return safe_io.read_bytes(path, len(data)) == data
    except (OSError, ValueError):
        return False


def _taken(rel: PurePosixPath, where: Path, what: str) -> UsageError:
    return UsageError(
        f"{rel}: {where.absolute()} already exists ({what}); toolkit examples never "
        "overwrites or writes through a link: remove or rename it, or run the command "
        "in another folder"
    )


def _write_new(into: Path, rel: PurePosixPath, data: bytes) -> None:
    """Create `into/rel` holding `data`: each folder on the way created or opened without
    following a link, the file created exclusively (never through a link)."""
    fd = os.open(into, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel.parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o777, dir_fd=fd)
            # A link put there since the check fails here (ELOOP), not followed.
            sub = safe_io.open_dir(part, dir_fd=fd)
            os.close(fd)
            fd = sub
        safe_io.write_new(rel.name, data, dir_fd=fd)
    finally:
        os.close(fd)
