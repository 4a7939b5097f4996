"""Tokenized SFT data cached in `dataset_prepared_path`, keyed by everything that
decides the tokens: the data's bytes, the tokenizer's files, the chat template,
every dataset setting and every tokenization key of the config, and toolkit's
version. A change to any of them makes a new key (a new folder); an unchanged
rerun reuses the folder.

    toolkit preprocess CONFIG       (train also fills and reuses the cache)
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from array import array
from pathlib import Path
from typing import Any

from toolkit import __version__, cache, safe_io
from toolkit.config import Config, is_local_ref
from toolkit.config.rules import open_regular
from toolkit.errors import DataError
from toolkit.trainer.chat import LABEL_RULES
from toolkit.trainer.data import DataReport, Example, build_examples
from toolkit.trainer.files import make_readable

# Config keys that change the tokens of an SFT example.
TOKENIZATION_KEYS = (
    "datasets",
    "sequence_len",
    "excess_length_strategy",
    "train_on_inputs",
    "chat_template",
    "chat_template_jinja",
    "chat_template_kwargs",
    "eot_tokens",
    "default_system_message",
    "shuffle_before_merging_datasets",
    "dataset_exact_deduplication",
    "min_sample_len",
    "special_tokens",
    "base_model",
    "tokenizer_config",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def cache_key(cfg: Config, template: str) -> str:
    h = hashlib.sha256()
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k in TOKENIZATION_KEYS}
    if cfg.shuffle_before_merging_datasets:  # the order then depends on the seed
        settings["seed"] = cfg.seed
    h.update(
        json.dumps(
            {
                "toolkit": __version__,
                "format": ARRAYS,
                "labels": LABEL_RULES,
                "settings": settings,
                "template": template,
            },
            sort_keys=True,
        ).encode()
    )
    for ds in cfg.datasets:
        if is_local_ref(ds.path):
            _hash_tree(h, Path(ds.path).expanduser())
    tokenizer_dir = Path(cfg.tokenizer_config or cfg.base_model).expanduser()
    key = "tokenizer_config" if cfg.tokenizer_config else "base_model"
    if tokenizer_dir.is_dir():
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).exists():
                h.update(name.encode())
                _hash_file(h, tokenizer_dir / name, key)
    return h.hexdigest()[:16]


def _hash_tree(h, path: Path) -> None:
    # is_file (a stat) leaves out pipes and devices inside a folder, which are not read;
    # a dataset that is one itself is refused by open_regular.
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(str(file.name).encode())
        _hash_file(h, file, "datasets.path")


def _hash_file(h, file: Path, key: str) -> None:
    with open_regular(file, key, DataError) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def load_or_build(cfg: Config, encoder, log) -> tuple[list[Example], DataReport]:
    """The examples from the cache when it holds this key, else tokenized (and cached
    when dataset_prepared_path is set)."""
    if not cfg.dataset_prepared_path:
        return build_examples(cfg, encoder)
    folder = Path(cfg.dataset_prepared_path).expanduser() / cache_key(cfg, encoder.template)
    remove_leftovers(folder.parent, log)
    if (folder / "report.json").exists():
        log(f"data: reusing prepared data from {folder}")
        return _read(folder)
    examples, report = build_examples(cfg, encoder)
    _write(folder, examples, report)
    log(f"data: prepared data written to {folder}")
    return examples, report


# The examples as three flat arrays: every row's ids end to end, its labels likewise,
# and where each row starts (numpy's .npy: read back in a fraction of a second).
ARRAYS = ("input_ids.npy", "labels.npy", "offsets.npy")


def _read(folder: Path) -> tuple[list[Example], DataReport]:
    import numpy as np

    def load(name: str) -> Any:
        with open_regular(folder / name, "dataset_prepared_path", DataError) as f:
            # report.json is a few counts: bounded in size and depth like any record.
            return (
                np.load(f)
                if name in ARRAYS
                else safe_io.load_json(safe_io.read_limited(f, 1 << 20))
            )

    try:
        ids, labels, offsets = (load(name) for name in ARRAYS)
        ids, labels = array("i", ids.tobytes()), array("i", labels.tobytes())
        bounds = offsets.tolist()
        examples = [Example(ids[a:b], labels[a:b]) for a, b in itertools.pairwise(bounds)]
        report = DataReport(**load("report.json"))
    except (OSError, ValueError, TypeError, EOFError) as exc:
        raise DataError(
            f"dataset_prepared_path: the prepared data in {folder} cannot be read "
            f"({str(exc).splitlines()[0][:200]}); remove that folder and run again to "
            "prepare it anew"
        ) from None
    return examples, report


def _write(folder: Path, examples: list[Example], report: DataReport) -> None:
    """Into a temporary folder, then a rename: a half-written cache is never read."""
    import numpy as np

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    # Held until this process ends the write: remove_leftovers leaves a held folder alone.
    held = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(held, fcntl.LOCK_EX)
    # Marked under the lock, before anything is written: what lets `toolkit cache` prune
    # the folder, and the next write remove it if this one is killed.
    cache.mark(tmp, "prepared", folder.name)
    try:
        for name, part in (("input_ids.npy", "input_ids"), ("labels.npy", "labels")):
            flat = b"".join(array("i", getattr(e, part)).tobytes() for e in examples)
            np.save(tmp / name, np.frombuffer(flat, np.int32))
        lengths = [len(e.input_ids) for e in examples]
        np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        # report.json last: its presence marks a complete folder (load_or_build).
        (tmp / "report.json").write_text(json.dumps(report.as_dict()))
        make_readable(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:  # another run wrote the same key meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(held)


def remove_leftovers(parent: Path, log) -> None:
    """Remove the temporary folders of writes that were killed (toolkit.cache's rule:
    marked by _write under its lock, and no longer held)."""
    for leftover in cache.remove_leftovers(parent, "prepared"):
        log(f"data: removed {leftover}, left by an interrupted preparation")


def preprocess(loaded, debug: int = 0, color: bool = False) -> Path:
    """`toolkit preprocess`: tokenize into dataset_prepared_path (or find it done); with
    `debug`, print that many rows with their trained tokens marked."""
    from toolkit.errors import UsageError
    from toolkit.trainer.chat import build_encoder
    from toolkit.trainer.quiet import quiet_libraries

    cfg = loaded.config
    if cfg.recipe != "sft":
        raise UsageError(
            f"preprocess caches SFT data; this config trains {cfg.recipe}, whose "
            "trainer tokenizes its rows itself. Run `toolkit train` directly"
        )
    if not cfg.dataset_prepared_path:
        raise UsageError(
            "dataset_prepared_path is not set; set it to the folder that holds "
            "prepared data (e.g. dataset_prepared_path: ./prepared)"
        )
    quiet_libraries()
    tokenizer, encoder = build_encoder(cfg)
    examples, report = load_or_build(cfg, encoder, print)
    for line in report.lines(cfg):
        print(line)
    if debug:
        from toolkit.trainer.debug import show_examples

        for line in show_examples(tokenizer, examples, debug, color):
            print(line)
    return Path(cfg.dataset_prepared_path) / cache_key(cfg, encoder.template)
