"""Datasets: read rows, check them, tokenize them, and account for every row.

Bad rows (unknown role, missing field, wrong type) stop the run with the file,
row and field named: training on a silently shrunken dataset is worse than not
training. Rows longer than `sequence_len` follow `excess_length_strategy` and
are counted in the report, as are rows left with no trained token.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import itertools
import json
import os
import random
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from toolkit.bars import bar
from toolkit.config import DATA_SUFFIXES, Config, DatasetConfig, is_local_ref
from toolkit.config.load import INT_MAX, INT_MIN, Oversized
from toolkit.config.rules import (
    SAVED_DATASET_DEPTH,
    data_files_problems,
    data_patterns,
    glob_inside,
    not_regular,
    open_regular,
    special_files,
    special_kind,
)
from toolkit.errors import DataError
from toolkit.trainer.chat import (
    IGNORE_INDEX,
    ChatEncoder,
    RowError,
    TooLong,
    TurnRule,
    encode_alpaca,
    normalize_conversation,
    resolve_template,
)
from toolkit.trainer.tokenized import Example

if TYPE_CHECKING:
    from toolkit.trainer.tokenized import Examples

MAX_REPORTED_ROWS = 10

T = TypeVar("T")
# What a split expression or a shard slices: a list, or a dataset's rows unread.
Sliced = TypeVar("Sliced", list, "DatasetRows")


@dataclass
class DataReport:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    split: int = 0  # rows cut into pieces (excess_length_strategy: split)
    pieces: int = 0  # the pieces those rows became
    dropped_too_long: int = 0
    dropped_no_trained_tokens: int = 0
    dropped_duplicates: int = 0  # dataset_exact_deduplication
    dropped_too_short: int = 0  # min_sample_len
    # Turns of a trained role with nothing rendered (no text, no tool call): no loss.
    empty_turns: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    per_dataset: list[dict] = field(default_factory=list)

    def lines(self, cfg: Config) -> list[str]:
        out = [
            f"data: {self.rows} rows read, {self.kept} kept, "
            f"{self.tokens} tokens ({self.trained_tokens} with loss)"
        ]
        if self.dropped_too_long:
            out.append(
                f"data: dropped {self.dropped_too_long} rows longer than sequence_len="
                f"{cfg.sequence_len} ({100 * self.dropped_too_long / self.rows:.1f}%; "
                "excess_length_strategy: drop). Set excess_length_strategy: truncate "
                "or split, or raise sequence_len, to keep them."
            )
        if self.truncated:
            out.append(
                f"data: truncated {self.truncated} rows to sequence_len="
                f"{cfg.sequence_len} (excess_length_strategy: truncate)"
            )
        if self.split:
            out.append(
                f"data: split {self.split} rows longer than sequence_len="
                f"{cfg.sequence_len} into {self.pieces} pieces (excess_length_strategy: "
                "split; each piece is an example)"
            )
        if self.empty_turns:
            out.append(
                f"data: {self.empty_turns} turns of a trained role are empty (no text, no "
                "tool call) and train nothing, their end token included; an empty reply "
                "would teach the model to answer with nothing"
            )
        if self.dropped_duplicates:
            out.append(
                f"data: dropped {self.dropped_duplicates} rows repeating an earlier row "
                "exactly (dataset_exact_deduplication)"
            )
        if self.dropped_too_short:
            out.append(
                f"data: dropped {self.dropped_too_short} rows shorter than min_sample_len="
                f"{cfg.min_sample_len} tokens"
            )
        if self.dropped_no_trained_tokens:
            out.append(
                f"data: dropped {self.dropped_no_trained_tokens} rows (or pieces) with "
                "no token to train on (no turn of roles_to_train within sequence_len)"
            )
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def read_rows(ds: DatasetConfig, index: int) -> list[dict]:
    """All rows of one dataset entry, as dicts: its split expression and shard applied."""
    rows = open_rows(ds, index)
    return rows.take(range(len(rows)))


def open_rows(ds: DatasetConfig, index: int) -> DatasetRows:
    """The rows of one dataset entry, its split expression and shard applied, read only
    as they are taken."""
    where = f"datasets[{index}] ({ds.path})"
    path = Path(ds.path).expanduser()
    if is_local_ref(ds.path):
        _refuse_special(path, index)
    if not is_local_ref(ds.path) or path.parent.name == "snapshots":
        # A Hub id, or the snapshot of one toolkit fetched on the host (toolkit.hub):
        # `datasets` finds its files and splits as the Hub lays them out.
        rows = DatasetRows([_Table(_read_hub(ds, where))])
    else:
        name, _ = parse_split(ds.split, where)
        if path.is_dir() and _is_saved_dataset(path):
            rows = DatasetRows([_Table(_read_saved(path, name, where))])
        else:
            if name != "train":
                raise DataError(
                    f"{where}: split {ds.split!r}: local files hold one split, "
                    "'train'; use train, or a slice of it like train[:20%]"
                )
            parts: list[RowPart] = []
            for file in _data_files(path, ds, index):
                kind = ds.ds_type or DATA_SUFFIXES.get(file.suffix)
                parts.append(
                    _json_file(file, where, index)
                    if kind == "json"
                    else _Table(_read_with_datasets(kind, [file], where))
                )
            rows = DatasetRows(parts)
        rows = apply_split(rows, ds.split, where)
    if ds.shards:
        rows = shard(rows, ds.shards, ds.shards_idx, where)
    return rows


class RowPart(Protocol):
    """One file's (or table's) rows: how many, and those at some indices, parsed."""

    def __len__(self) -> int: ...
    def read(self, indices: list[int]) -> list[dict]: ...


class DatasetRows:
    """The rows of one dataset entry, parsed only when taken, so a dataset of any size
    is read in bounded memory: JSON Lines files are indexed (where each row's line lies),
    tables stay in Arrow, and only a whole-file JSON array is held as objects. A slice
    selects rows (split expressions, shards), `shuffled` orders them."""

    def __init__(self, parts: list[RowPart], order: Sequence[int] | None = None) -> None:
        self.parts = parts
        self.starts = list(itertools.accumulate((len(p) for p in parts), initial=0))
        self.order = range(self.starts[-1]) if order is None else order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, key: slice) -> DatasetRows:
        return DatasetRows(self.parts, self.order[key])

    def shuffled(self, rng: random.Random) -> DatasetRows:
        """The same rows in the order `rng.shuffle` gives a list of them."""
        order = list(self.order)
        rng.shuffle(order)
        return DatasetRows(self.parts, order)

    def take(self, positions: Iterable[int]) -> list[dict]:
        """The rows at `positions` of this selection, in that order."""
        out: list[dict] = []
        indices = [self.order[p] for p in positions]
        part_of = lambda i: bisect.bisect_right(self.starts, i) - 1  # noqa: E731
        for number, group in itertools.groupby(indices, key=part_of):
            first = self.starts[number]
            out += self.parts[number].read([i - first for i in group])
        return out


class _Listed:
    """Rows already in memory."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, indices: list[int]) -> list[dict]:
        return [self.rows[i] for i in indices]


class _Table:
    """Rows of a `datasets` table, which stays memory-mapped Arrow until read."""

    def __init__(self, table) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def read(self, indices: list[int]) -> list[dict]:
        return list(self.table.select(indices))


_SPLIT = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>-?\d*%?):(?P<end>-?\d*%?)\])?$")


def parse_split(split: str, where: str = "split") -> tuple[str, tuple[str, str] | None]:
    """`train[:20%]` → ("train", ("", "20%")); `train` → ("train", None)."""
    match = _SPLIT.match(split.replace(" ", ""))
    if not match:
        raise DataError(
            f"{where}: split {split!r} is not a split expression; write e.g. "
            "train, train[:20%], train[100:200] or test[10%:]"
        )
    bounds = (match["start"], match["end"]) if match["start"] is not None else None
    return match["name"], bounds


def apply_split(rows: Sliced, split: str, where: str = "split") -> Sliced:
    """Slice rows as the split expression says (percentages round to the nearest row)."""
    _, bounds = parse_split(split, where)
    if bounds is None:
        return rows

    def index(text: str) -> int | None:
        if text == "":
            return None
        if text.endswith("%"):
            return round(len(rows) * int(text[:-1]) / 100)
        return int(text)

    return rows[index(bounds[0]) : index(bounds[1])]


def shard(rows: Sliced, shards: int, index: int, where: str = "shards") -> Sliced:
    """The index-th of `shards` contiguous pieces (axolotl's shards / shards_idx)."""
    if not 0 <= index < shards:
        raise DataError(f"{where}: shards_idx {index} is outside 0…{shards - 1}; lower it")
    size, extra = divmod(len(rows), shards)
    start = index * size + min(index, extra)
    return rows[start : start + size + (1 if index < extra else 0)]


def _is_saved_dataset(path: Path) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()


def _read_saved(path: Path, name: str, where: str) -> Any:
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types; the message is what matters
        raise DataError(
            f"{where}: could not load the saved dataset: {str(exc).splitlines()[0]}"
        ) from None
    if isinstance(saved, datasets.DatasetDict):
        if name not in saved:
            raise DataError(
                f"{where}: the saved dataset has splits {sorted(saved)}, not "
                f"{name!r}; set split to one of them"
            )
        saved = saved[name]
    return saved


def _refuse_special(path: Path, index: int) -> None:
    """A dataset that is, or in a saved dataset holds, a pipe, device or socket (which
    could block the reader or never end) stops the run, named."""
    key = f"datasets[{index}].path"
    kind = special_kind(path)
    found = [(path, kind)] if kind else []
    if not found and path.is_dir() and (_is_saved_dataset(path) or path.parent.name == "snapshots"):
        found = special_files(path, SAVED_DATASET_DEPTH)
    if found:
        raise DataError(not_regular(key, found[0][0], found[0][1]))


def _data_files(path: Path, ds: DatasetConfig, index: int) -> list[Path]:
    if path.is_file():
        return [path]
    where = f"datasets[{index}] ({ds.path})"
    key = f"datasets[{index}].data_files"
    problems = data_files_problems(key, ds.data_files)
    if problems:  # validation refuses these too; a pattern never reads outside the folder
        raise DataError(problems[0])
    patterns = data_patterns(ds.data_files)
    wanted = [f for f in glob_inside(path, patterns) if ds.ds_type or f.suffix in DATA_SUFFIXES]
    for file in wanted:
        kind = special_kind(file)
        if kind:
            raise DataError(not_regular(key, file, kind))
    files = [f for f in wanted if f.is_file()]
    if not files:
        raise DataError(
            f"{where}: no data files in the folder (looked for "
            f"{', '.join(patterns)} with suffix {sorted(DATA_SUFFIXES)}); set "
            "data_files or point path at a file"
        )
    return files


# Rows deeper than this are refused: every reader and template after the parser walks
# them recursively, and Python's stack ends near a thousand levels.
MAX_ROW_DEPTH = 100


class _HugeInt(Exception):
    """An integer in a row beyond 64 bits (Arrow and PyTorch hold no larger)."""


def _json_int(text: str) -> int:
    """json's parse_int: refuses by length first, so no long numeral is converted
    (int() of n digits takes time quadratic in n)."""
    if len(text) < 19:  # 18 digits always fit
        return int(text)
    if len(text) <= 20:
        value = int(text)
        if INT_MIN <= value <= INT_MAX:
            return value
    raise _HugeInt(text)


def _loads(text: str, what: str, array: bool = False) -> Any:
    """json.loads with integers and nesting bounded; `what` names the row in errors (a
    whole-file `array`'s errors add the row)."""
    limit = MAX_ROW_DEPTH + array
    try:
        value = json.loads(text, parse_int=_json_int)
        deep = _deeper_than(value, limit, text)
    except _HugeInt:
        field, number = _first_oversized(json.loads(text, parse_int=_mark_int))
        if array:
            row, _, field = field.partition("]")
            what, field = f"{what} row {int(row[1:]) + 1}", field.lstrip(".")
        raise DataError(
            f"{what}: {field or 'the row'} is the integer {number.shown()}, beyond the "
            f"range a row can hold; accepted: integers from {INT_MIN} to {INT_MAX}; "
            "write it as a string (in quotes) or fix the value"
        ) from None
    except RecursionError:
        deep = True
    if deep:
        raise DataError(
            f"{what} is nested more than {MAX_ROW_DEPTH} levels deep; rows are a few "
            "levels deep (messages, their fields, tool arguments): flatten it"
        )
    return value


def _mark_int(text: str) -> int | Oversized:
    try:
        return _json_int(text)
    except _HugeInt:
        return Oversized(text)


def _first_oversized(value) -> tuple[str, Oversized]:
    """The field path (`messages[0].content`) and value of the first Oversized."""
    stack = [("", value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, Oversized):
            return where, node
        if isinstance(node, dict):
            items = [(f"{where}.{k}" if where else k, v) for k, v in node.items()]
        elif isinstance(node, list):
            items = [(f"{where}[{i}]", v) for i, v in enumerate(node)]
        else:
            continue
        stack += reversed(items)
    return "", Oversized("?")


def _deeper_than(value, limit: int, text: str) -> bool:
    """Whether `value` nests more than `limit` arrays and objects (walked only when its
    text has that many brackets)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack += [(child, depth + 1) for child in children]
    return False


def _json_file(file: Path, where: str, index: int) -> RowPart:
    """A JSON Lines file, indexed; or one JSON array, read whole."""
    lines = _JsonLines(file, where, index)
    return _Listed(_read_json_array(file, where, index)) if lines.is_array else lines


# What str.splitlines ends a line at, besides "\n": rows are the file's lines as
# splitlines finds them, as when the file was read whole.
_LINE_ENDS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


class _JsonLines:
    """A JSON Lines file read row by row. One pass checks that it is UTF-8 and notes
    where each non-blank line lies (24 bytes a row); rows are parsed as they are read,
    errors naming the row and line."""

    def __init__(self, file: Path, where: str, index: int) -> None:
        self.file, self.where, self.key = file, where, f"datasets[{index}].path"
        self.starts, self.ends, self.lines = array("q"), array("q"), array("q")
        self.is_array = False
        pos = line = 0
        with open_regular(file, self.key, DataError) as f:
            for physical, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(
                        f"{where}: {file.name} line {physical} is not UTF-8; re-encode the "
                        "file as UTF-8"
                    ) from None
                parts = text.splitlines(keepends=True)
                at = pos
                for part in parts:
                    line += 1
                    size = len(raw) if len(parts) == 1 else len(part.encode())
                    if part.strip():
                        if not self.starts and part.lstrip().startswith("["):
                            self.is_array = True  # one JSON array: read whole
                            return
                        body = part.rstrip(_LINE_ENDS) if len(parts) > 1 else part
                        self.starts.append(at)
                        self.ends.append(at + len(body.encode()) if len(parts) > 1 else at + size)
                        self.lines.append(line)
                    at += size
                pos += len(raw)

    def __len__(self) -> int:
        return len(self.starts)

    def read(self, indices: list[int]) -> list[dict]:
        out = []
        with open_regular(self.file, self.key, DataError) as f:
            for run in _runs(indices, lambda i: self.ends[i] - self.starts[i] > BIG_ROW):
                base, size = self.starts[run[0]], self.ends[run[-1]] - self.starts[run[0]]
                data = os.pread(f.fileno(), size, base)
                if len(data) != size:
                    raise self._changed()
                view = memoryview(data)  # rows decoded from it in place, not copied out
                for i in run:
                    out.append(self._row(i, view[self.starts[i] - base : self.ends[i] - base]))
                del view, data  # a huge row's bytes go before the next run is read
        return out

    def _row(self, i: int, raw: memoryview) -> dict:
        name, line = self.file.name, self.lines[i]
        try:
            text = str(raw, "utf-8")
            raw.release()
            row = _loads(text, f"{self.where}: {name} row {i + 1} (line {line})")
        except UnicodeDecodeError:
            raise self._changed() from None
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{self.where}: {name} line {line} is not valid JSON ({exc.msg}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                f"{self.where}: {name} row {i + 1} is {_json_kind(row)}; each row must be a "
                "JSON object"
            )
        return row

    def _changed(self) -> DataError:
        return DataError(
            f"{self.where}: {self.file.name} changed while it was read; run again once "
            "nothing writes to it"
        )


# A row of more bytes than this is read alone: its bytes are freed once it is parsed,
# not held until its neighbours are.
BIG_ROW = 1 << 20


def _runs(indices: list[int], alone: Callable[[int], bool]) -> Iterator[list[int]]:
    """`indices` cut into runs of consecutive numbers (each read in one call); an index
    for which `alone` is true is a run of its own."""
    run: list[int] = []
    for i in indices:
        if run and (i != run[-1] + 1 or alone(i) or alone(run[-1])):
            yield run
            run = []
        run.append(i)
    if run:
        yield run


def _read_json_array(file: Path, where: str, index: int) -> list[dict]:
    """A file that is one JSON array of rows."""
    with open_regular(file, f"datasets[{index}].path", DataError) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{where}: {file.name} line {bad_line} is not UTF-8; re-encode the file as UTF-8"
        ) from None
    try:
        rows = _loads(text, f"{where}: {file.name}", array=True)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}: {file.name} is not valid JSON at line {exc.lineno}: {exc.msg}"
        ) from None
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(
                f"{where}: {file.name} row {n} is {_json_kind(row)}; each row must be a JSON object"
            )
    return rows


def _json_kind(value) -> str:
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
    }
    return names.get(type(value), type(value).__name__)


def _read_with_datasets(kind: str | None, files: list[Path], where: str) -> Any:
    import datasets

    try:
        table = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as exc:  # datasets raises many types; the message is what matters
        raise DataError(f"{where}: could not read as {kind}: {str(exc).splitlines()[0]}") from None
    return table


def _read_hub(ds: DatasetConfig, where: str) -> Any:
    import datasets

    try:
        table = datasets.load_dataset(
            ds.path, name=ds.name, data_files=ds.data_files, split=ds.split
        )
    except Exception as exc:
        raise DataError(
            f"{where}: could not load from the Hugging Face Hub: "
            f"{str(exc).splitlines()[0]}; check the id, your network and HF_TOKEN, "
            "or download it and point path at the files"
        ) from None
    return table


def build_examples(cfg: Config, encoder: ChatEncoder) -> tuple[Iterator[Example], DataReport]:
    """Every dataset tokenized, as a stream of examples in order, and the report, which
    is complete once the stream has ended. Rows are read, tokenized and handed on in
    chunks, so memory does not grow with the data. The stream raises DataError naming the
    bad rows, if any, at the end of their dataset."""
    report = DataReport()
    return _examples(cfg, encoder, report), report


def _examples(cfg: Config, encoder: ChatEncoder, report: DataReport) -> Iterator[Example]:
    seen: set[bytes] = set()
    for index, ds in enumerate(cfg.datasets):
        rows = open_rows(ds, index)
        if cfg.shuffle_before_merging_datasets:
            rows = rows.shuffled(random.Random(cfg.seed + index))
        bad: list[str] = []
        before = report.kept
        encoded = encode_stream(
            encoder_for(cfg, ds, encoder),
            ds,
            TurnRule.from_config(cfg, ds),
            rows,
            processes_for(cfg, len(rows)),
            cfg.default_system_message,
            # Dropped anyway: a row certainly too long need not be tokenized.
            cfg.sequence_len if cfg.excess_length_strategy == "drop" else None,
        )
        for n, result in enumerate(encoded, start=1):
            report.rows += 1
            if isinstance(result, str):
                bad.append(f"row {n}: {result}")
                continue
            if isinstance(result, TooLong):
                report.empty_turns += result.empty_turns
                report.dropped_too_long += 1
                continue
            row_ids, row_labels, empty = result
            report.empty_turns += empty
            for ids, labels in _pieces(cfg, row_ids, row_labels, report):
                if _keep(cfg, ids, labels, report, seen):
                    report.kept += 1
                    yield Example(ids, labels)
        if bad:
            raise bad_rows_error(index, ds, bad, len(rows))
        if not len(rows):
            raise DataError(
                f"datasets[{index}].path: {ds.path!r} holds no rows (only blank "
                "lines, or an empty table); point it at the file with your rows"
            )
        report.per_dataset.append(
            {"path": ds.path, "rows": len(rows), "kept": report.kept - before}
        )
    if not report.kept:
        raise DataError("no usable rows after tokenization; " + " ".join(report.lines(cfg)))


def encoder_for(cfg: Config, ds: DatasetConfig, encoder: ChatEncoder) -> ChatEncoder:
    """The encoder of a dataset with its own chat_template; else the config's."""
    if not ds.chat_template:
        return encoder
    template = resolve_template(cfg, encoder.tokenizer, ds)
    return ChatEncoder(encoder.tokenizer, template, encoder.eot_tokens, encoder.template_kwargs)


def _pieces(cfg: Config, ids, labels, report: DataReport) -> list:
    """A row as it trains: whole, or as excess_length_strategy says when too long."""
    if len(ids) <= cfg.sequence_len:
        return [(ids, labels)]
    step = cfg.sequence_len
    if cfg.excess_length_strategy == "drop":
        report.dropped_too_long += 1
        return []
    if cfg.excess_length_strategy == "truncate":
        report.truncated += 1
        return [(ids[:step], labels[:step])]
    pieces = [(ids[i : i + step], labels[i : i + step]) for i in range(0, len(ids), step)]
    report.split += 1
    report.pieces += len(pieces)
    return pieces


def _keep(cfg: Config, ids, labels, report: DataReport, seen: set[bytes]) -> bool:
    """Whether an example trains: it has a trained token, min_sample_len tokens, and
    (dataset_exact_deduplication) no earlier example with the same ids and labels."""
    trained = len(labels) - labels.count(IGNORE_INDEX)
    if not trained:
        report.dropped_no_trained_tokens += 1
        return False
    if cfg.min_sample_len and len(ids) < cfg.min_sample_len:
        report.dropped_too_short += 1
        return False
    if cfg.dataset_exact_deduplication:
        both = array("i", ids).tobytes() + b"|" + array("i", labels).tobytes()
        key = hashlib.blake2b(both, digest_size=16).digest()
        if key in seen:
            report.dropped_duplicates += 1
            return False
        seen.add(key)
    report.tokens += len(ids)
    report.trained_tokens += trained
    return True


# Rows per task a worker process takes; below PARALLEL_FROM rows one process does all.
CHUNK = 256
PARALLEL_FROM = 2048


def processes_for(cfg: Config, rows: int) -> int:
    """dataset_processes, else this process's share of the CPUs (torchrun starts one
    tokenizing process per local rank)."""
    if rows < PARALLEL_FROM:
        return 1
    if cfg.dataset_processes:
        # No more workers than chunks of work: a huge value must not fork without end.
        return min(cfg.dataset_processes, -(-rows // CHUNK))
    share = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, share)


# What the worker processes tokenize with: set before they fork, so never pickled.
_JOB: tuple | None = None


Encoded = tuple[array, array, int]  # ids, labels, empty turns


def encode_rows(
    encoder: ChatEncoder,
    ds: DatasetConfig,
    rule: TurnRule,
    rows: Sequence[dict] | DatasetRows,
    processes: int,
    default_system: str | None = None,
    longest: int | None = None,
) -> list[Encoded | TooLong | str]:
    """encode_stream's results, gathered in a list."""
    return list(encode_stream(encoder, ds, rule, rows, processes, default_system, longest))


def encode_stream(
    encoder: ChatEncoder,
    ds: DatasetConfig,
    rule: TurnRule,
    rows: Sequence[dict] | DatasetRows,
    processes: int,
    default_system: str | None = None,
    longest: int | None = None,
) -> Iterator[Encoded | TooLong | str]:
    """Each row's (ids, labels) as int arrays, TooLong for a conversation certainly
    longer than `longest` tokens, or the reason a row cannot be used — in row order, over
    `processes` forked workers when more than one. A worker is sent only where its chunk
    of rows lies and reads the rows itself; only the tokens come back."""
    global _JOB
    if not isinstance(rows, DatasetRows):
        rows = DatasetRows([_Listed(list(rows))])
    chunks = [range(i, min(i + CHUNK, len(rows))) for i in range(0, len(rows), CHUNK)]
    _JOB = (encoder, ds, rule, default_system, longest, rows)
    # Encoding makes millions of small objects and frees few: the collector's full
    # passes over them would take a fifth of the time, and find nothing to free.
    collecting = gc.isenabled()
    gc.disable()
    main = os.environ.get("RANK", "0") == "0"
    try:
        with ExitStack() as stack:
            shown = (
                stack.enter_context(bar(len(rows), f"tokenizing {Path(ds.path).name}", unit="rows"))
                if len(chunks) > 1 and main
                else None
            )
            work: Iterable[list[Encoded | TooLong | str]]
            if processes == 1:
                work = map(_encode_chunk, chunks)
            else:
                import multiprocessing

                # Each worker is single-threaded; the Rust tokenizer's own threads would
                # only contend with the other workers.
                os.environ["TOKENIZERS_PARALLELISM"] = "false"
                pool = stack.enter_context(multiprocessing.get_context("fork").Pool(processes))
                work = pool.imap(_encode_chunk, chunks)  # in order, as each chunk is done
            for chunk in work:
                if shown:
                    shown.update(len(chunk))
                yield from chunk
    finally:
        _JOB = None
        if collecting:
            gc.enable()


def _encode_chunk(positions: range) -> list[Encoded | TooLong | str]:
    if _JOB is None:
        raise RuntimeError("encode_stream sets the job before any chunk runs")
    encoder, ds, rule, default_system, longest, source = _JOB
    rows = source.take(positions)
    out: list = [None] * len(rows)
    if ds.type == "alpaca":
        for i, row in enumerate(rows):
            try:
                ids, labels = encode_alpaca(encoder.tokenizer, row, rule.train_on_inputs)
                out[i] = (array("i", ids), array("i", labels), 0)
            except RowError as exc:
                out[i] = str(exc)
        return out
    good = []
    for i, row in enumerate(rows):
        try:
            good.append((i, normalize_conversation(row, ds, default_system)))
        except RowError as exc:
            out[i] = str(exc)
    try:
        encoded: list = encoder.encode_many([c for _, c in good], rule, longest)
    except RowError:  # one row cannot be encoded: encode each alone to name it
        encoded = []
        for _, conversation in good:
            try:
                encoded.append(encoder.encode(conversation, rule, longest))
            except RowError as exc:
                encoded.append(str(exc))
    for (i, _), result in zip(good, encoded, strict=True):
        out[i] = (
            result
            if isinstance(result, str | TooLong)
            else (array("i", result.ids), array("i", result.labels), result.empty_turns)
        )
    return out


def bad_rows_error(index: int, ds: DatasetConfig, bad: list[str], total: int) -> DataError:
    """One error naming the bad rows of a dataset (the first MAX_REPORTED_ROWS of them)."""
    shown = bad[:MAX_REPORTED_ROWS]
    more = f" (and {len(bad) - len(shown)} more)" if len(bad) > len(shown) else ""
    return DataError(
        f"datasets[{index}] ({ds.path}): {len(bad)} of {total} rows cannot be "
        f"used{more}; fix them or remove them",
        shown,
    )


@overload
def split_validation(
    examples: Examples, size: float, seed: int, shuffle: bool = True
) -> tuple[Examples, Examples]: ...
@overload
def split_validation(
    examples: list[T], size: float, seed: int, shuffle: bool = True
) -> tuple[list[T], list[T]]: ...
def split_validation(examples, size, seed, shuffle=True):
    """Hold out a fraction (size < 1) or a count (size ≥ 1) of rows, chosen by `seed`
    (shuffle_merged_datasets: false holds out the last rows, in file order). Tokenized
    Examples split into two views of the same arrays; a list into two lists."""
    from toolkit.trainer.tokenized import Examples

    if size <= 0:
        return examples, examples[:0]
    count = int(size) if size >= 1 else max(1, round(len(examples) * size))
    if count >= len(examples):
        raise DataError(
            f"val_set_size={size} leaves no training rows out of {len(examples)}; lower it"
        )
    if not shuffle:
        return examples[: len(examples) - count], examples[len(examples) - count :]
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    if isinstance(examples, Examples):
        import numpy as np

        held_out = np.zeros(len(examples), dtype=bool)
        held_out[order[:count]] = True
        del order
        return examples.select(np.flatnonzero(~held_out)), examples.select(np.flatnonzero(held_out))
    held = set(order[:count])
    train = [e for i, e in enumerate(examples) if i not in held]
    val = [e for i, e in enumerate(examples) if i in held]
    return train, val


class Collator:
    """Right-pads a batch to its longest row (or to `pad_to` tokens); padding carries no
    loss and no attention."""

    def __init__(self, pad_token_id: int, pad_to: int | None = None) -> None:
        self.pad_token_id, self.pad_to = pad_token_id, pad_to

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max([len(b["input_ids"]) for b in batch] + [self.pad_to or 0])
        ids, labels, mask = [], [], []
        for b in batch:
            pad = width - len(b["input_ids"])
            ids.append(b["input_ids"] + [self.pad_token_id] * pad)
            labels.append(b["labels"] + [IGNORE_INDEX] * pad)
            mask.append([1] * len(b["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }
