"""Test doubles for the seams toolkit talks to the outside world through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from toolkit.runtime import Result, Runtime


@dataclass
class FakeRuntime(Runtime):
    """Records every command; answers from `script`, a list of (argv prefix, Result or callable)."""

    script: list[tuple[tuple[str, ...], Result | Callable[[list[str]], Result]]] = field(
        default_factory=list)
    calls: list[list[str]] = field(default_factory=list)
    envs: list[dict[str, str]] = field(default_factory=list)
    programs: set[str] = field(default_factory=lambda: {"docker"})

    def run(self, argv, *, env=None, capture=True, timeout=None, cwd=None) -> Result:
        self.calls.append(list(argv))
        self.envs.append(dict(env or {}))
        for prefix, answer in self.script:
            if tuple(argv[:len(prefix)]) == prefix:
                return answer(list(argv)) if callable(answer) else answer
        return Result(0)

    def which(self, name: str) -> str | None:
        return f"/usr/bin/{name}" if name in self.programs else None

    def run_child(self, argv: list[str]) -> tuple[int, int | None]:
        return self.run(argv, capture=False).returncode, None
