"""One exception tree; the CLI turns these into exit codes and one-screen messages."""

from __future__ import annotations

import os
import sys


class ToolkitError(Exception):
    """An error the user can act on. `exit_code` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def render(self) -> str:
        lines = [f"error: {self.args[0]}"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class UsageError(ToolkitError):
    """Bad input from the user: config, data, command line. Exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """Every problem found in one config, reported together."""


class DataError(UsageError):
    """A dataset that cannot be used as configured."""


class RuntimeFailure(ToolkitError):
    """Docker, a subprocess or the environment failed; the message says what to do."""

    exit_code = 1


class Preempted(ToolkitError):
    """SIGTERM arrived; a checkpoint was saved. Rerunning the same command resumes.

    75 is sysexits' EX_TEMPFAIL: a schedulers' and people's cue to try again.
    """

    exit_code = 75


def environment_error(exc: BaseException, where: str | None = None) -> ToolkitError | None:
    """An operating-system error (or a library's error that wraps one, such as
    safetensors' "No space left on device (os error 28)") as one line naming the path and
    the fix, exit 1; None for any other exception."""
    import errno
    import re

    if isinstance(exc, ToolkitError):
        return None
    seen: BaseException | None = exc
    cause: OSError | None = None
    while seen is not None and cause is None:
        if isinstance(seen, OSError) and seen.errno:
            cause = seen
        seen = seen.__cause__ or seen.__context__
    if cause is not None and cause.errno:
        code = cause.errno
    else:
        match = re.search(r"\(os error (\d+)\)", str(exc))
        if not match:
            return None
        code = int(match.group(1))
    where = (
        (cause.filename if cause is not None and cause.filename else None)
        or where
        or "a file toolkit writes"
    )
    strerror = (cause.strerror if cause is not None else None) or os.strerror(code)
    fixes = {
        errno.ENOSPC: f"no space left on the device holding {where}; free some space "
        "(save_total_limit keeps fewer checkpoints) or choose an output_dir on "
        "a larger disk, then run the same command again to resume",
        errno.EDQUOT: f"disk quota exceeded writing {where}; free some space or choose an "
        "output_dir elsewhere",
        errno.EROFS: f"{where} is on a read-only filesystem; choose an output_dir you can write",
        errno.EACCES: f"permission denied: {where}; make it writable for you "
        f"(uid {os.getuid()}) or choose another output_dir",
        errno.EPERM: f"operation not permitted on {where}; check its owner and permissions",
    }
    return RuntimeFailure(fixes.get(code, f"{strerror}: {where}"))


def exit_code_of(exc: BaseException) -> int:
    """What the command says of an exception that ended it, on stderr, and its exit code:
    ours as one screen; an interrupt 130; an operating-system error as one line naming
    the path and the fix (1). Anything else is a bug: re-raised, for its traceback."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    error = exc if isinstance(exc, ToolkitError) else environment_error(exc)
    if error is None:
        raise exc
    print(error.render(), file=sys.stderr)
    return error.exit_code
