"""Opening the files toolkit reads and writes so that nothing leads it elsewhere: the one
place that knows how.

- Never through a symbolic link at the name (O_NOFOLLOW), unless the caller reads an
  input that may legitimately be one (`follow=True`: a Hugging Face snapshot links each
  file to its blob). A link refused is an OSError with errno ELOOP, whatever the kind of
  open (a folder opened with O_DIRECTORY answers ENOTDIR for a link; told apart here).
- Only a regular file is read or written: a named pipe blocks its opener until a writer
  (or reader) comes, a device may never end or may act when opened. The name is stat'ed
  first (stat never opens, so never blocks), opened with O_NONBLOCK (a pipe swapped in
  meanwhile opens at once, or fails with ENXIO), checked again by fstat on what was
  opened, and only then made blocking. Anything else is `NotRegular`, an OSError saying
  what it is in words (`kind_of`).
- Bounded reads: at most `limit` bytes, more is `TooLarge` (a ValueError).
- Bounded JSON: `load_json` refuses nesting beyond a depth and integers beyond a length,
  as ValueError naming it (never RecursionError, and no numeral converted in quadratic
  time); invalid JSON and bytes that are not UTF-8 keep json's and the codec's words.
- New files created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW): a name that exists, a link
  included, is FileExistsError, never opened.

Only the standard library: the host CLI and the trainer (in a container) both use it.
Each caller turns these errors into its own message.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

PathLike = str | os.PathLike[str]

# The kinds of file, in the words toolkit's messages use.
_KINDS = (
    (stat.S_ISREG, "a file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISLNK, "a link"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, in words: "a file", "a folder", "a link", "a named
    pipe (FIFO)", "a character device", "a block device" or "a socket"."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class NotRegular(OSError):
    """`path` is there but is not a regular file (or not a folder, for `open_dir`);
    `kind` says what it is, in words."""

    def __init__(self, path: PathLike, kind: str, wanted: str = "a regular file") -> None:
        super().__init__(f"{os.fspath(path)} is {kind}, not {wanted}")
        self.path = os.fspath(path)
        self.kind = kind


class TooLarge(ValueError):
    """A file larger than the limit it is read under: `size` bytes by its size, or (with
    `grew`) found while it was read, its size having said less."""

    def __init__(self, limit: int, size: int, grew: bool = False) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit
        self.size = size
        self.grew = grew


def link_error(path: PathLike) -> OSError:
    """The error for a link where none is followed (what O_NOFOLLOW itself raises)."""
    return OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fspath(path))


def _mode(path: PathLike, dir_fd: int | None, follow: bool) -> int | None:
    try:
        return os.stat(path, dir_fd=dir_fd, follow_symlinks=follow).st_mode
    except (OSError, ValueError):
        return None


def _kind_at(path: PathLike, dir_fd: int | None, follow: bool) -> str | None:
    """kind_of what is at `path` when it is not a regular file; None when it is one, or
    a link not to follow, or nothing is there (the open says so)."""
    mode = _mode(path, dir_fd, follow)
    if mode is None or stat.S_ISREG(mode) or (stat.S_ISLNK(mode) and not follow):
        return None
    return kind_of(mode)


def open_file(
    path: PathLike,
    flags: int = os.O_RDONLY,
    mode: int = 0o666,
    *,
    dir_fd: int | None = None,
    follow: bool = False,
) -> int:
    """os.open for a regular file, blocking as usual once opened; `flags` as os.open's
    (O_CREAT, O_APPEND, O_EXCL, …). A link at `path` is ELOOP unless `follow`; anything
    but a regular file is NotRegular, never opened when seen first (a device) and never
    blocked on (a pipe). With `dir_fd`, `path` is relative to that folder."""
    # O_CREAT|O_EXCL opens nothing that exists: FileExistsError says the name is taken.
    kind = None if flags & os.O_EXCL else _kind_at(path, dir_fd, follow)
    if kind is not None:
        raise NotRegular(path, kind)
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, mode, dir_fd=dir_fd)
    except OSError as exc:
        # ENXIO: a pipe with no reader opened for writing, or a socket. EISDIR: a folder
        # opened for writing.
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            found = _mode(path, dir_fd, follow)
            raise NotRegular(
                path, "not a regular file" if found is None else kind_of(found)
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegular(path, kind_of(info.st_mode))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir(path: PathLike, *, dir_fd: int | None = None) -> int:
    """A read-only descriptor of the folder at `path`, never through a link at the name
    (ELOOP); NotADirectoryError when something else is there."""
    try:
        return os.open(
            path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except NotADirectoryError:
        try:
            is_link = stat.S_ISLNK(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            raise link_error(path) from None
        raise


def open_under(folder: PathLike, relative: str, flags: int = os.O_RDONLY) -> int:
    """open_file of `relative` (a path of several names) inside `folder`, opened one name
    at a time without following a link at any of them (ELOOP); ValueError when
    `relative` would leave `folder` (absolute, or with '.' or '..')."""
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or any(p in (".", "..") for p in parts):
        raise ValueError(f"{relative!r} is not a path inside {os.fspath(folder)}")
    fd = open_dir(folder)
    try:
        for part in parts[:-1]:
            inner = open_dir(part, dir_fd=fd)
            os.close(fd)
            fd = inner
        return open_file(parts[-1], flags, dir_fd=fd)
    finally:
        os.close(fd)


def create_new(path: PathLike, mode: int = 0o666, *, dir_fd: int | None = None) -> int:
    """A write descriptor of a file created now at `path`: FileExistsError when the name
    is taken, by anything (a link included: never followed)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, mode, dir_fd=dir_fd)


def write_new(path: PathLike, data: bytes, mode: int = 0o666, *, dir_fd: int | None = None) -> None:
    """Create `path` (create_new) holding `data`; removed again if the write fails."""
    fd = create_new(path, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(path, dir_fd=dir_fd)
        raise


def read_limited(f: IO[bytes], limit: int) -> bytes:
    """Everything left in the open file `f`, at most `limit` bytes (TooLarge beyond)."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(limit, len(data))
    return data


def read_bytes(
    path: PathLike, limit: int, *, dir_fd: int | None = None, follow: bool = False
) -> bytes:
    """The bytes of the regular file at `path` (open_file), at most `limit` of them;
    TooLarge when its size says more, before reading any."""
    with os.fdopen(open_file(path, dir_fd=dir_fd, follow=follow), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise TooLarge(limit, size)
        try:
            return read_limited(f, limit)
        except TooLarge as exc:
            raise TooLarge(limit, exc.size, grew=True) from None


# A record toolkit writes is a few levels deep (run.json's config: the config's own
# limit, 32) and holds 64-bit integers at most (an inode: 20 digits).
MAX_DEPTH = 64
MAX_INT_DIGITS = 40


def load_json(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """json.loads of UTF-8 text under limits: ValueError for invalid JSON or UTF-8 (their
    own words), for nesting deeper than `max_depth` and for an integer of more than
    MAX_INT_DIGITS digits."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError(f"nested more than {max_depth} levels deep") from None
    if _deeper_than(value, max_depth):
        raise ValueError(f"nested more than {max_depth} levels deep")
    return value


def read_json(
    path: PathLike, limit: int, *, dir_fd: int | None = None, follow: bool = False
) -> Any:
    """load_json of read_bytes(path, limit)."""
    return load_json(read_bytes(path, limit, dir_fd=dir_fd, follow=follow))


def _bounded_int(text: str) -> int:
    # Refused by its length, never converted: int() of n digits takes time quadratic in n.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-')):,} digits")
    return int(text)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and mappings more than `limit` levels (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def write_json_atomic(path: str | Path, data: dict | list) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""

    def dump(f) -> None:
        f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    replace_atomically(path, dump)


def replace_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Put at `path` the bytes `write` writes to a file, with the permissions the umask
    allows: readers see the old file or the new one, never half of one.

    Never through a link: the temporary file is created anew (mkstemp's O_EXCL fails
    on any name that exists, a link included), and the rename replaces a link at `path`
    itself rather than the file it points to."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
