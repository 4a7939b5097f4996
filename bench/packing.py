"""Packing efficiency on the long-tailed chat set, at sequence_len 2048 and 4096.

    .venv/bin/python bench/packing.py [ROWS]

ROWS defaults to 20000. Tokenizes the generated set (bench/longtail.py) with the
tiny demo tokenizer once, then for each sequence length packs the rows that fit
(longer ones are what excess_length_strategy drops or truncates; counted) and
prints the packed rows, the fill (real tokens / (packed rows × sequence_len)),
the padding an unpacked run would carry at micro_batch_size 4, and the time the
packing took (the bins, from the lengths alone; each packed row is made when read).
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longtail  # noqa: E402


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    import numpy as np

    from toolkit.config import load_config
    from toolkit.trainer.chat import build_encoder
    from toolkit.trainer.data import build_examples
    from toolkit.trainer.packing import pack
    from toolkit.trainer.tokenized import collect

    with tempfile.TemporaryDirectory(prefix="toolkit-bench-") as tmp:
        config, _, _ = longtail.workspace(Path(tmp), rows, 1_000_000)
        cfg = load_config(config).config
        _, encoder = build_encoder(cfg)
        examples = collect(build_examples(cfg, encoder)[0])
    every = examples.lengths()
    print(f"data: {rows} generated conversations, {int(every.sum())} tokens")
    for seq in (2048, 4096):
        fit = examples.select(np.flatnonzero(every <= seq))
        started = time.perf_counter()
        packed, fill = pack(fit, seq)
        took = time.perf_counter() - started
        # Unpacked, rows are padded to the longest of each random batch of 4.
        order = list(range(len(fit)))
        random.Random(0).shuffle(order)
        lengths = fit.lengths()[order].tolist()
        padded = sum(4 * max(lengths[i : i + 4]) for i in range(0, len(lengths), 4))
        print(
            f"sequence_len {seq}: {len(fit)} rows fit ({len(examples) - len(fit)} longer), "
            f"packed into {len(packed)} rows, fill {100 * fill:.2f}% "
            f"(unpacked, micro_batch_size 4: {100 * sum(lengths) / padded:.1f}% real tokens); "
            f"packing took {took:.2f} s"
        )


if __name__ == "__main__":
    main()
