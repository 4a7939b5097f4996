"""The files `toolkit launch` writes, held to the rules of every other output.

A launch file is shell (a batch script, a task's `setup`/`run`, cloud-init's script) or
YAML that another program turns into shell, so every value in it is checked or encoded
for where it lands:

- text that a line of the file holds outside shell quoting (Slurm's `#SBATCH` lines, the
  comments) and every path a launcher writes must be free of control characters: a
  newline there would end the line, and the next would run (`check_text`);
- the values Slurm reads itself have Slurm's forms (`slurm_value`);
- the rest is quoted by shlex (shell) or CSV-quoted (`--mount`), as toolkit.containers.spec
  does.

And written as outputs (`write_all`): every check passes before the first byte is
written; never over what the run reads (the config, its data, the model, an image
archive) or inside one of its folders; never through a link; new files only, unless
`--force`; each with the mode it needs (the script its owner's to read and run, the
rest its owner's to read) and no more.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit import safe_io
from toolkit.errors import UsageError

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: any of them
# ends or hides a line for some reader of the file (bash, sbatch, a YAML loader, a
# terminal showing the script).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Slurm's own forms (sbatch(1)): a time limit is minutes, MM:SS, HH:MM:SS, D-HH,
# D-HH:MM or D-HH:MM:SS, or UNLIMITED/INFINITE; partitions a comma list of names.
_SLURM_FORMS = {
    "--partition": (
        re.compile(r"[\w.+-]+(,[\w.+-]+)*"),
        "one or more partition names, separated by commas (gpu, gpu,debug)",
    ),
    "--account": (re.compile(r"[\w.@+-]+"), "an account name (letters, digits, . _ - + @)"),
    "--time": (
        re.compile(r"\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}|(?i:unlimited|infinite)"),
        "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED (e.g. 24:00:00)",
    ),
}


def check_text(value: str, where: str) -> str:
    """`value` unchanged, or UsageError naming `where` when it holds a control character."""
    found = _CONTROL.search(value)
    if found:
        raise UsageError(
            f"{where} {value!r}: holds the control character {found.group()!r} at "
            f"{found.start()}; a launch file would carry it into a line of shell, so it is "
            "refused: rename it (or give another value) without control characters"
        )
    return value


def slurm_value(option: str, value: str | None) -> str | None:
    """An #SBATCH option's value in the form Slurm accepts, or UsageError naming it."""
    if value is None:
        return None
    pattern, accepted = _SLURM_FORMS[option]
    if not pattern.fullmatch(value):
        raise UsageError(f"{option} {value!r}: not a Slurm value; expected {accepted}")
    return value


@dataclass(frozen=True)
class LaunchFile:
    """A file a launcher writes: where (and under which option the user named it), what,
    and with which mode."""

    path: Path
    text: str
    option: str
    mode: int = 0o600


def write_all(
    files: Sequence[LaunchFile],
    reads: Iterable[str | Path],
    force: bool,
    folders: Sequence[tuple[Path, str]] = (),
) -> None:
    """Write `files` (and make `folders`, each with the option that names it) once every
    check has passed: none lies on or inside a path in `reads`, none is a link, none
    exists unless `force` (then it is replaced atomically, never written through)."""
    inputs = [Path(os.path.abspath(p)) for p in reads]
    seen: dict[Path, str] = {}
    for f in files:
        path = Path(os.path.abspath(f.path))
        check_text(str(path), f.option)
        if path in seen:
            raise UsageError(
                f"{f.option} {path}: the launch would write two of its files there "
                f"(also {seen[path]}); choose another name"
            )
        seen[path] = f.option
        _check_target(path, f.option, inputs, force)
    for folder, option in folders:
        folder = Path(os.path.abspath(folder))
        check_text(str(folder), option)
        _refuse_inputs(folder, option, inputs)
        mode = folder.lstat().st_mode if os.path.lexists(folder) else None
        if mode is not None and not stat.S_ISDIR(mode):
            kind = safe_io.kind_of(mode)
            raise UsageError(
                f"{option} {folder}: is {kind}, where the launch keeps its folder; "
                "choose another name (or remove it)"
            )
    for folder, _option in folders:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    for f in files:
        _write(Path(os.path.abspath(f.path)), f.text.encode("utf-8"), f.mode, force)


def _check_target(path: Path, option: str, inputs: list[Path], force: bool) -> None:
    if not path.parent.is_dir():
        raise UsageError(f"{option} {path}: the folder {path.parent} does not exist")
    _refuse_inputs(path, option, inputs)
    if not os.path.lexists(path):
        return
    mode = path.lstat().st_mode
    if not stat.S_ISREG(mode):
        kind = safe_io.kind_of(mode)
        raise UsageError(
            f"{option} {path}: is {kind}; launch files are written only as files of "
            "their own, never through a link: choose another name"
        )
    if not force:
        raise UsageError(
            f"{option} {path}: exists; launch files are written new: choose another name, "
            "or pass --force to replace it"
        )


def _refuse_inputs(path: Path, option: str, inputs: list[Path]) -> None:
    real = Path(os.path.realpath(path))
    for source in inputs:
        same = real == Path(os.path.realpath(source)) or _same_file(path, source)
        inside = source.is_dir() and real.is_relative_to(os.path.realpath(source))
        if same or inside:
            what = "is" if same else "lies inside"
            raise UsageError(
                f"{option} {path}: {what} {source}, which the run reads; a launch file "
                "never goes over or into the run's inputs: choose another name"
            )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # a hard link to an input is that input
    except OSError:
        return False


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """A new file at `path` with exactly `data` and `mode` (less the umask). With `force`
    an existing file is replaced by a rename, so a reader sees the old file or the new."""
    mode &= ~safe_io.current_umask()
    if not force:
        try:
            fd = safe_io.create_new(path, mode)
        except FileExistsError:
            raise UsageError(f"{path}: was made by someone else during the launch") from None
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                os.fchmod(out.fileno(), mode)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
