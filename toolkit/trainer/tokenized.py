"""Tokenized SFT examples held as three flat arrays: every example's ids end to end, its
labels likewise, and where each example starts. The arrays are memory-mapped from
dataset_prepared_path (prepared.py) or, without one, built in memory; either way a run
holds its tokens once, as int32, never as Python objects (a token in a Python list
costs about 36 bytes, here 4). Selections (the held-out split, the rows that fit) are
views: an index array over the same arrays.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np


@dataclass
class Example:
    """One tokenized row: int arrays (array('i')) from tokenization and the cache, which
    the training sets turn into lists; any int sequence works."""

    input_ids: Sequence[int]
    labels: Sequence[int]


class Examples(Sequence[Example]):
    """Examples over flat `ids`, `labels` (int32) and `offsets` (int64, one more than
    the examples: example i is ids[offsets[i]:offsets[i + 1]]); `picked` selects and
    orders a subset (None: all, in order)."""

    def __init__(
        self,
        ids: np.ndarray,
        labels: np.ndarray,
        offsets: np.ndarray,
        picked: np.ndarray | None = None,
        reopen: Any = None,
    ) -> None:
        self.ids, self.labels, self.offsets, self.picked = ids, labels, offsets, picked
        # For memory-mapped arrays: a picklable callable giving (ids, labels, offsets)
        # again, so a copy sent to a spawned DataLoader worker maps the files rather
        # than carrying the tokens.
        self._reopen = reopen

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.picked is None else len(self.picked)

    def _base(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"example {i} of {n}")
        i %= n
        return i if self.picked is None else int(self.picked[i])

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> Examples: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.select(np.arange(len(self))[i])
        a, b = self.bounds(self._base(i))
        return Example(array("i", self.ids[a:b].tobytes()), array("i", self.labels[a:b].tobytes()))

    def __iter__(self) -> Iterator[Example]:
        return (self[i] for i in range(len(self)))

    def bounds(self, base: int) -> tuple[int, int]:
        """Where example `base` (an index into the arrays, not into this view) lies."""
        return int(self.offsets[base]), int(self.offsets[base + 1])

    def base_indices(self) -> np.ndarray:
        """Each example's index into the arrays."""
        return np.arange(len(self)) if self.picked is None else self.picked

    def lengths(self) -> np.ndarray:
        """Each example's token count (int64), in this view's order."""
        lengths = np.diff(self.offsets)
        return lengths if self.picked is None else lengths[self.picked]

    def select(self, indices: Sequence[int] | np.ndarray) -> Examples:
        """A view of the examples at `indices` (positions in this view), in that order."""
        positions = np.asarray(indices, dtype=np.int64)
        picked = positions if self.picked is None else self.picked[positions]
        return Examples(self.ids, self.labels, self.offsets, picked, self._reopen)

    def row(self, i: int) -> dict:
        """Example i as the trainer's collators take it: lists of ints."""
        a, b = self.bounds(self._base(i))
        return {"input_ids": self.ids[a:b].tolist(), "labels": self.labels[a:b].tolist()}

    def as_rows(self) -> Rows:
        """The examples as a training set: each row made when the trainer asks for it."""
        return Rows(self)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self._reopen is not None:
            state.update(ids=None, labels=None, offsets=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._reopen is not None:
            self.ids, self.labels, self.offsets = self._reopen()


class Rows(Sequence[dict]):
    """A training set whose row i is made from `source.row(i)` when read (torch's
    DataLoader and transformers' Trainer need only len and indexing)."""

    def __init__(self, source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    @overload
    def __getitem__(self, i: int) -> dict: ...
    @overload
    def __getitem__(self, i: slice) -> list[dict]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.source.row(j) for j in range(len(self))[i]]
        return self.source.row(i)


def collect(examples: Iterable[Example]) -> Examples:
    """Examples gathered into in-memory flat arrays (tokenizing without a cache)."""
    ids, labels, offsets = array("i"), array("i"), array("q", [0])
    for e in examples:
        ids += _ints(e.input_ids)
        labels += _ints(e.labels)
        offsets.append(len(ids))
    return Examples(
        np.frombuffer(ids, np.int32) if ids else np.zeros(0, np.int32),
        np.frombuffer(labels, np.int32) if labels else np.zeros(0, np.int32),
        np.frombuffer(offsets, np.int64),
    )


def _ints(values: Sequence[int]) -> array:
    return values if isinstance(values, array) and values.typecode == "i" else array("i", values)
