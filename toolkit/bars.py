"""Progress people can read: a bar on a terminal, plain periodic lines when the output
is a file or a pipe (no control characters in logs).

tqdm draws the bars (a well-kept library, already in transformers' stack, pure Python,
light enough for the host install); piped, `Lines` prints `what: 40% (400/1000), 12s,
eta 18s` at most every `every` seconds and once at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def bar(
    total: int | None,
    what: str,
    unit: str = "it",
    scale: bool = False,
    every: float = 10.0,
    stream=None,
) -> Any:
    """A progress bar (update(n), close(), a context manager) for `total` units of work."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(
            total=total,
            desc=what,
            unit=unit,
            unit_scale=scale,
            file=stream,
            dynamic_ncols=True,
            mininterval=0.2,
            leave=False,
        )
    return Lines(total, what, unit, scale, every, stream)


class Lines:
    """tqdm's interface as plain lines, for logs."""

    def __init__(self, total, what, unit, scale, every, stream) -> None:
        self.total, self.what, self.unit, self.scale = total, what, unit, scale
        self.every, self.stream = every, stream
        self.n = 0
        self.started = self.said = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.said >= self.every:
            self.said = now
            self._say(now)

    def close(self) -> None:
        if self.n and time.monotonic() - self.started >= 1.0:
            self._say(time.monotonic(), done=True)

    def _say(self, now: float, done: bool = False) -> None:
        elapsed = now - self.started
        count = _amount(self.n, self.unit, self.scale)
        if self.total:
            share = min(1.0, self.n / self.total)
            eta = (
                ""
                if done or not self.n
                else f", eta {clock(elapsed * (self.total - self.n) / self.n)}"
            )
            text = (
                f"{self.what}: {100 * share:.0f}% ({count}/"
                f"{_amount(self.total, self.unit, self.scale)}), {clock(elapsed)}{eta}"
            )
        else:
            text = f"{self.what}: {count}, {clock(elapsed)}"
        print(text + (" — done" if done else ""), file=self.stream, flush=True)

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def clock(seconds: float) -> str:
    """12s, 4m05s, 2h03m: how long, at a glance."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _amount(n: float, unit: str, scale: bool) -> str:
    if not scale:
        return f"{n:,} {unit}"
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.1f} {prefix}{unit}" if prefix else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} P{unit}"
