"""Preprocessing throughput: `toolkit preprocess` against a plain single-process
baseline, on the same generated long-tailed chat set.

    .venv/bin/python bench/preprocess.py [ROWS] [SEQUENCE_LEN]

ROWS defaults to 20000, SEQUENCE_LEN to 2048. Prints the data's length mix, then
for each method its wall time, rows/s and what it did with over-long rows:

  baseline  transformers' apply_chat_template + the tokenizer, one row at a time
            through datasets.map in one process — no loss masks (less work than ours)
  toolkit   `toolkit preprocess` on a cold cache (a fresh process: reading, template
            rendering, masks, length policy, cache write), then again on the warm cache

The tokenizer is the tiny demo's (byte-level BPE, Qwen3's template and special
tokens, 488 tokens): the hub's Qwen3 tokenizer cannot be downloaded here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import longtail  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOOLKIT = str(Path(sys.executable).parent / "toolkit")


def baseline(data: Path, model: Path, seq: int) -> tuple[float, int, int]:
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    table = datasets.load_dataset(
        "json", data_files=str(data), split="train", cache_dir=str(data.parent / "hf-cache")
    )

    def encode(row):
        text = tok.apply_chat_template(row["messages"], tokenize=False)
        return {"input_ids": tok(text, add_special_tokens=False)["input_ids"]}

    table = table.map(encode, remove_columns=table.column_names)
    kept = table.filter(lambda row: len(row["input_ids"]) <= seq)
    return time.perf_counter() - started, len(table), len(kept)


def toolkit_preprocess(config: Path) -> tuple[float, str]:
    started = time.perf_counter()
    res = subprocess.run(
        [TOOLKIT, "preprocess", str(config), "--runtime", "local"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if res.returncode != 0:
        raise SystemExit(res.stdout + res.stderr)
    return time.perf_counter() - started, res.stdout


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    seq = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
    with tempfile.TemporaryDirectory(prefix="toolkit-bench-") as tmp:
        tmp = Path(tmp)
        config, model, data = longtail.workspace(
            tmp, rows, seq, dataset_prepared_path=str(tmp / "prepared"), output_dir=str(tmp / "out")
        )
        print(f"data: {rows} generated conversations, sequence_len {seq}")

        took, total, kept = baseline(data, model, seq)
        print(
            f"baseline (datasets.map, 1 process, no masks): {took:6.1f} s  "
            f"{total / took:7.0f} rows/s  {total - kept} rows over {seq} tokens"
        )
        cold, out = toolkit_preprocess(config)
        report = json.loads(next((tmp / "prepared").glob("*/report.json")).read_text())
        print(
            f"toolkit preprocess (cold cache):               {cold:6.1f} s  "
            f"{rows / cold:7.0f} rows/s  {report['dropped_too_long']} rows over {seq} "
            "tokens, dropped and reported"
        )
        warm, _ = toolkit_preprocess(config)
        print(f"toolkit preprocess (warm cache):               {warm:6.1f} s")
        print(f"baseline / toolkit (cold): {took / cold:.2f}x")
        for line in out.splitlines():
            if line.startswith("data:"):
                print("  " + line)


if __name__ == "__main__":
    main()
