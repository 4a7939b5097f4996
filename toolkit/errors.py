"""One exception tree; the CLI turns these into exit codes and one-screen messages."""

from __future__ import annotations


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
