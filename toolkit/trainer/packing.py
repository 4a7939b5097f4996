"""Sample packing: several tokenized rows share one row of `sequence_len` tokens,
and none of them sees another.

Rows are placed by best-fit decreasing (each row, longest first, goes into the
fullest bin it still fits). A packed row carries position ids that restart at 0
for every sequence and no attention mask; transformers reads such position ids as
sequence boundaries — a block-diagonal causal mask for sdpa and eager, varlen
kernels for flash-attention (which want one flattened row per batch, so the
collator flattens for it). The first token of each sequence gets no label: it
would otherwise be predicted from the previous sequence's last token.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

from toolkit.trainer.chat import IGNORE_INDEX

if TYPE_CHECKING:
    import numpy as np

    from toolkit.trainer.tokenized import Examples, Rows


@dataclass(frozen=True)
class Packed:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    def as_row(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "position_ids": self.position_ids,
        }


def bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity` tokens (best-fit
    decreasing). Deterministic: ties keep the input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[tuple[int, int]] = []  # (room left, bin number), kept sorted
    out: list[list[int]] = []
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"row {i} has {size} tokens, more than the bin's {capacity}")
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            room, number = free.pop(at)
        else:
            room, number = capacity, len(out)
            out.append([])
        out[number].append(i)
        if room - size > 0:
            bisect.insort(free, (room - size, number))
    return out


def pack(examples: Sequence, capacity: int) -> tuple[PackedRows, float]:
    """Pack tokenized examples (Examples, or any with .input_ids and .labels) into rows of
    at most `capacity` tokens; return the rows and their fill (real tokens / (rows ×
    capacity)). The bins are decided from the lengths alone; each packed row is made
    from the examples' arrays when it is read."""
    import numpy as np

    from toolkit.trainer.tokenized import Examples, collect

    if not isinstance(examples, Examples):
        examples = collect(examples)
    lengths = examples.lengths()
    groups = bins(lengths.tolist(), capacity)
    members = np.fromiter(itertools.chain.from_iterable(groups), np.int64, len(examples))
    starts = np.zeros(len(groups) + 1, np.int64)
    np.cumsum([len(g) for g in groups], out=starts[1:])
    real = int(lengths.sum())
    rows = PackedRows(examples.select(members), starts)
    return rows, (real / (len(rows) * capacity) if len(rows) else 0.0)


class PackedRows(Sequence[Packed]):
    """Packed rows over a view of examples ordered bin by bin: row r holds the examples
    starts[r] to starts[r + 1] of that view."""

    def __init__(self, examples: Examples, starts: np.ndarray) -> None:
        self.examples, self.starts = examples, starts

    def __len__(self) -> int:
        return len(self.starts) - 1

    @overload
    def __getitem__(self, r: int) -> Packed: ...
    @overload
    def __getitem__(self, r: slice) -> list[Packed]: ...
    def __getitem__(self, r):
        if isinstance(r, slice):
            return [self[i] for i in range(len(self))[r]]
        return Packed(**self.row(r))

    def row(self, r: int) -> dict:
        """Packed row r as the collator takes it: lists of ints."""
        import numpy as np

        if not -len(self) <= r < len(self):
            raise IndexError(f"packed row {r} of {len(self)}")
        r %= len(self)
        e = self.examples
        spans = [e.bounds(int(i)) for i in e.base_indices()[self.starts[r] : self.starts[r + 1]]]
        ids = np.concatenate([e.ids[a:b] for a, b in spans])
        labels = np.concatenate([e.labels[a:b] for a, b in spans])
        sizes = np.array([b - a for a, b in spans])
        firsts = np.cumsum(sizes) - sizes
        labels[firsts] = IGNORE_INDEX
        positions = np.arange(len(ids)) - np.repeat(firsts, sizes)
        return {
            "input_ids": ids.tolist(),
            "labels": labels.tolist(),
            "position_ids": positions.tolist(),
        }

    def as_rows(self) -> Rows:
        """The packed rows as a training set: each made when the trainer asks for it."""
        from toolkit.trainer.tokenized import Rows

        return Rows(self)


class PackedCollator:
    """Batches packed rows. For sdpa and eager: right-padded to the longest row (or to
    `pad_to` tokens), the padding a sequence of its own with no label. For
    flash_attention_2: the rows concatenated into one, as its varlen path wants.
    Unpacked rows (no position ids: e.g. held-out rows left unpacked) go to `plain`."""

    def __init__(
        self, pad_token_id: int, plain, flatten: bool = False, pad_to: int | None = None
    ) -> None:
        self.pad_token_id, self.plain, self.flatten, self.pad_to = (
            pad_token_id,
            plain,
            flatten,
            pad_to,
        )

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        if "position_ids" not in batch[0]:
            return self.plain(batch)
        if self.flatten:
            batch = [{k: [x for b in batch for x in b[k]] for k in batch[0]}]
        width = max(len(b["input_ids"]) for b in batch)
        if self.pad_to and not self.flatten:
            width = max(width, self.pad_to)
        ids, labels, positions = [], [], []
        for b in batch:
            pad = width - len(b["input_ids"])
            ids.append(b["input_ids"] + [self.pad_token_id] * pad)
            labels.append(b["labels"] + [IGNORE_INDEX] * pad)
            positions.append(b["position_ids"] + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions),
        }
