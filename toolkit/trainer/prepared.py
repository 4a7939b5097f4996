"""Tokenized SFT data cached in `dataset_prepared_path`, keyed by everything that
decides the tokens: the data's bytes, the tokenizer's files, the chat template,
every dataset setting and every tokenization key of the config, and toolkit's
version. A change to any of them makes a new key (a new folder); an unchanged
rerun reuses the folder.

    toolkit preprocess CONFIG       (train also fills and reuses the cache)
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit import __version__, cache, safe_io
from toolkit.config import Config, is_local_ref
from toolkit.config.rules import open_regular
from toolkit.errors import DataError
from toolkit.trainer.chat import LABEL_RULES
from toolkit.trainer.data import DataReport, build_examples
from toolkit.trainer.files import make_readable
from toolkit.trainer.tokenized import Example

if TYPE_CHECKING:
    from toolkit.trainer.tokenized import Examples

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


def load_or_build(cfg: Config, encoder, log) -> tuple[Examples, DataReport]:
    """The examples from the cache when it holds this key, else tokenized (and cached
    when dataset_prepared_path is set). From the cache they are memory-mapped; without
    one, gathered in memory as flat arrays."""
    from toolkit.trainer.tokenized import collect

    if not cfg.dataset_prepared_path:
        examples, report = build_examples(cfg, encoder)
        return collect(examples), report
    folder = Path(cfg.dataset_prepared_path).expanduser() / cache_key(cfg, encoder.template)
    remove_leftovers(folder.parent, log)
    if (folder / "report.json").exists():
        log(f"data: reusing prepared data from {folder}")
        return _read(folder)
    _write(folder, *build_examples(cfg, encoder))
    log(f"data: prepared data written to {folder}")
    return _read(folder)


# The examples as three flat arrays (numpy's .npy, memory-mapped when read): every
# row's ids end to end (int32), its labels likewise, and where each row starts (int64).
ARRAYS = ("input_ids.npy", "labels.npy", "offsets.npy")
DTYPES = {"input_ids.npy": "int32", "labels.npy": "int32", "offsets.npy": "int64"}


def _read(folder: Path) -> tuple[Examples, DataReport]:
    from toolkit.trainer.tokenized import Examples

    try:
        ids, labels, offsets = _map_arrays(folder)
        with open_regular(folder / "report.json", "dataset_prepared_path", DataError) as f:
            # report.json is a few counts: bounded in size and depth like any record.
            report = DataReport(**safe_io.load_json(safe_io.read_limited(f, 1 << 20)))
    except (OSError, ValueError, TypeError, EOFError) as exc:
        raise DataError(
            f"dataset_prepared_path: the prepared data in {folder} cannot be read "
            f"({str(exc).splitlines()[0][:200]}); remove that folder and run again to "
            "prepare it anew"
        ) from None
    return Examples(ids, labels, offsets, reopen=functools.partial(_map_arrays, folder)), report


def _map_arrays(folder: Path) -> tuple[Any, Any, Any]:
    """The three arrays of a prepared folder, memory-mapped (read, never loaded), checked
    to fit together."""
    ids, labels, offsets = (_map(folder / name, DTYPES[name]) for name in ARRAYS)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    if not len(offsets) or offsets[0] != 0 or offsets[-1] != len(ids):
        raise ValueError("offsets.npy does not span the ids")
    if len(offsets) > 1 and (offsets[1:] < offsets[:-1]).any():
        raise ValueError("offsets.npy goes backwards")
    return ids, labels, offsets


def _map(path: Path, dtype: str) -> Any:
    import numpy as np
    from numpy.lib import format as npy

    with open_regular(path, "dataset_prepared_path", DataError) as f:
        version = npy.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{path.name}: .npy version {version}")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran_order, found = read_header(f)
        if found != np.dtype(dtype) or len(shape) != 1 or fortran_order:
            raise ValueError(f"{path.name} holds {found} of shape {shape}, not {dtype} values")
        if shape[0] == 0:
            return np.zeros(0, dtype)
        return np.memmap(f, dtype=found, mode="r", offset=f.tell(), shape=shape)


def _write(folder: Path, examples: Iterable[Example], report: DataReport) -> None:
    """Into a temporary folder, then a rename: a half-written cache is never read.
    `examples` is consumed once, each written as it comes; `report` is written after
    them, so a report filled while they are made (build_examples) is complete."""
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
        offsets = array("q", [0])
        with _Appender(tmp / "input_ids.npy") as ids, _Appender(tmp / "labels.npy") as labels:
            for e in examples:
                ids.add(e.input_ids)
                labels.add(e.labels)
                if ids.count != labels.count:
                    raise ValueError(f"example {len(offsets)} has more ids than labels")
                offsets.append(ids.count)
        np.save(tmp / "offsets.npy", np.frombuffer(offsets, np.int64))
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


class _Appender:
    """An int32 .npy file written as its values come: numpy's header leaves room for the
    length to grow in place (numpy.lib.format's GROWTH_AXIS_MAX_DIGITS), so the header
    is written first and rewritten with the final count at the end."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "xb", buffering=1 << 20)  # noqa: SIM115 (closed by __exit__)
        self.count = 0
        self.data_start = self._header()

    def _header(self) -> int:
        import numpy as np
        from numpy.lib import format as npy

        header = {"descr": npy.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False}
        npy.write_array_header_1_0(self.file, {**header, "shape": (self.count,)})
        return self.file.tell()

    def add(self, values) -> None:
        ints = (
            values if isinstance(values, array) and values.typecode == "i" else array("i", values)
        )
        self.file.write(ints)
        self.count += len(ints)

    def __enter__(self) -> _Appender:
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            if kind is None:
                self.file.seek(0)
                if self._header() != self.data_start:
                    raise ValueError("the .npy header outgrew the room numpy leaves for it")
        finally:
            self.file.close()


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
