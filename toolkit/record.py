"""run.json, typed: the one reader (and validator) of a training run's record, and the
check its writer (toolkit.trainer.manifest) passes before the file is written.

A record is input like any other: it may be copied from another machine, edited,
damaged or planted. `read` takes only a regular file of bounded size (never a link, a
FIFO or a device), parses it with pydantic's JSON parser (bounded depth and numbers)
and checks every field a reader uses; a problem is a UsageError (exit 2) naming the
file, the field's path (`config`, `hub[0].commit`), the value and what is accepted.
Fields a record may lack (an older toolkit wrote it, the run did not finish) are
optional here; a command asks for those it needs with `need`, and refuses only then.
Unknown fields are kept, so a newer record still reads and round-trips.

No torch and no host-only imports: the trainer writes through this module too.
"""

from __future__ import annotations

import errno
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from toolkit import safe_io
from toolkit.config.schema import WEIGHT_NEUTRAL
from toolkit.errors import UsageError

RECORD = "run.json"
# Bumped only when a field changes meaning or type; added fields do not bump it.
VERSION = 1
# A run.json is kilobytes (its longest parts are the loss and metric histories, a few
# dozen bytes per logged step): far beyond any real one, and still quick to refuse.
MAX_BYTES = 64 << 20
FIX = (
    "it was damaged, edited or not written by toolkit: restore the run's own run.json, "
    "or move it away and train the run again"
)

# A count toolkit could have written (steps, a row index): within a signed 64-bit integer.
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
Text = Annotated[str, Field(max_length=4096)]


class _Part(BaseModel):
    # strict: a record toolkit wrote has exact JSON types ("2" is not a world size).
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)


class Environment(_Part):
    """Where the run happened."""

    in_container: bool | None = None
    image: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")] | None = None
    image_id: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    variant: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] | None = None
    python: Text | None = None
    platform: Text | None = None
    executable: Text | None = None
    libraries: dict[Annotated[str, Field(max_length=200)], Text | None] = {}


class HubPin(_Part):
    """One Hub input at the commit the run trained (toolkit.pins.Pin's fields)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    key: Annotated[
        str, Field(pattern=r"^(base_model|tokenizer_config|datasets\.[0-9]{1,5}\.path)$")
    ]
    # Hugging Face repository ids: [owner/]name of letters, digits, '-', '_', '.'.
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")]
    kind: Literal["model", "dataset"]
    revision: Text | None  # required, as toolkit.pins.Pin's fields are
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
    files: dict[Text, Text]

    @field_validator("kind")
    @classmethod
    def _fits_key(cls, kind: str, info: ValidationInfo) -> str:
        key = info.data.get("key")  # validated first: it is declared first
        if key is not None and (kind == "dataset") != key.startswith("datasets."):
            raise ValueError(
                f"{'model' if kind == 'dataset' else 'dataset'} at {key} (a dataset is "
                "pinned at datasets.N.path, a model at base_model or tokenizer_config)"
            )
        return kind


class Push(_Part):
    """One publication of the run to the Hub (toolkit.host.publish)."""

    what: Text
    repo: Text
    revision: Text | None = None
    commit: Text | None = None
    url: Text | None = None


class RunRecord(_Part):
    """The fields of run.json that toolkit reads; all optional (see the module's note)."""

    record_version: Annotated[int, Field(ge=0)] | None = None
    toolkit_version: Text | None = None
    recipe: Text | None = None
    written_at: Text | None = None
    status: Text | None = None
    config_path: Text | None = None
    config_sha256: Text | None = None
    training_digest: Text | None = None
    config: dict[str, Any] | None = None
    base_model: Text | None = None
    adapter: Text | None = None
    head: Literal["causal_lm", "sequence_classification", "token_classification"] | None = None
    num_labels: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    seed: int | None = None
    hub: list[HubPin] = []
    environment: Environment | None = None
    resolved: dict[str, Any] | None = None
    segments: list[dict[str, Any]] = []
    steps: Count | None = None
    epochs: float | None = None
    final_loss: float | None = None
    mean_loss: float | None = None
    eval_loss: float | None = None
    loss_history: list[tuple[Count, float]] = []
    tokens_per_second: float | None = None
    mfu: float | None = None
    train_seconds: float | None = None
    world_size: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    nodes: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    pushed: list[Push] = []
    _path: Path = PrivateAttr(default=Path(RECORD))

    @property
    def path(self) -> Path:
        """The file this record was read from."""
        return self._path

    def dump(self) -> dict:
        """The record as JSON values: the fields it holds (none added), unknown ones kept."""
        return self.model_dump(mode="json", exclude_unset=True)


def record_path(ref: str | Path) -> Path:
    """A run's record: `ref` itself, or `ref/run.json` when `ref` is a folder."""
    path = Path(ref)
    return path / RECORD if path.is_dir() else path


def read(ref: str | Path) -> RunRecord:
    """The validated record at `ref` (a run's folder or its run.json); a UsageError
    (exit 2) for any problem, a missing record included."""
    path = record_path(ref)
    try:
        return parse(_read_bytes(path), path)
    except FileNotFoundError:
        raise UsageError(
            f"{ref}: no {RECORD} there; give a training output_dir or its {RECORD}"
        ) from None


def read_if_any(path: str | Path) -> RunRecord | None:
    """The validated record at `path` (a run.json), or None when there is none."""
    try:
        return parse(_read_bytes(Path(path)), path)
    except FileNotFoundError:
        return None


def parse(data: str | bytes, path: str | Path = RECORD) -> RunRecord:
    """Validate a record's JSON text; UsageError naming each wrong field."""
    try:
        record = RunRecord.model_validate_json(data)
    except ValidationError as exc:
        raise _invalid(Path(path), exc) from None
    if (record.record_version or 0) > VERSION:
        raise UsageError(
            f"{path}: record_version is {record.record_version}; this toolkit reads records up "
            f"to version {VERSION}: use the toolkit that wrote it (or a newer one)"
        )
    record._path = Path(path)
    return record


def need(record: RunRecord, *fields: str, command: str) -> None:
    """Refuse (exit 2) unless the record holds each of `fields` (set, not empty)."""
    missing = [name for name in fields if getattr(record, name) in (None, [], {}, "")]
    if missing:
        raise UsageError(
            f"{record.path}: records no {', '.join(missing)}, which `toolkit {command}` "
            "needs; it was written by an older toolkit or by a run that did not finish: "
            "train the run with this toolkit to record it"
        )


def validate(data: dict, path: str | Path = RECORD) -> dict:
    """What a writer is about to write, checked as `read` will check it (the writer and
    the reader agree by construction); returns it with record_version set."""
    data = {"record_version": VERSION, **data}
    parse(json.dumps(data), path)
    return data


def write(path: str | Path, data: dict) -> Path:
    """Validate and write a record atomically (readers see the old one or the new)."""
    from toolkit.safe_io import write_json_atomic

    write_json_atomic(path, validate(data, path))
    return Path(path)


def printable(value: object, limit: int = 200) -> str:
    """A record's value as text safe to print: control characters escaped (a string in
    a copied record could carry terminal escapes), cut short."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value)[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, read under the limits; FileNotFoundError when it is missing."""
    # A record toolkit wrote is a regular file, never a link to somewhere else, nor a
    # pipe or device (safe_io never blocks on one).
    try:
        return safe_io.read_bytes(path, MAX_BYTES)
    except FileNotFoundError:
        raise
    except safe_io.NotRegular as exc:
        raise UsageError(
            f"{path} is {exc.kind}, not a regular file; give a run's {RECORD}"
        ) from None
    except safe_io.TooLarge as exc:
        if exc.grew:
            raise UsageError(
                f"{path} grew past {MAX_BYTES:,} bytes while read; is it a run's?"
            ) from None
        raise UsageError(
            f"{path} is {exc.size:,} bytes; a run record is at most {MAX_BYTES:,}: "
            "is it the right file?"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(
                f"{path} is a symbolic link; a record toolkit wrote is a regular file: "
                "give the file itself (or move the link away)"
            ) from None
        raise UsageError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None


def _invalid(path: Path, exc: ValidationError) -> UsageError:
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        msg = next(e for e in errors if e["type"] == "json_invalid")["msg"]
        return UsageError(f"{path} is not a run record: {msg}; {FIX}")
    problems: dict[str, str] = {}
    for err in errors:
        field = _field(err["loc"])
        if field in problems:  # one line per field
            continue
        generic = re.sub(r"\[\d+\]", "[]", field)
        accepted = (
            "a JSON object (a mapping of field names to values)"
            if not err["loc"]
            else _ACCEPTED.get(generic)
            or _ACCEPTED.get(str(err["loc"][0]) + "*")
            or _TYPES.get(err["type"])
            or err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
        )
        problems[field] = (
            f"{field}: missing; it is required here"
            if err["type"] == "missing"
            else f"{field}: got {_show(err.get('input'))}; accepted: {accepted}"
        )
    noun = "1 field is" if len(problems) == 1 else f"{len(problems)} fields are"
    return UsageError(f"{path}: {noun} wrong; {FIX}", list(problems.values()))


# What a field accepts, said for the fields whose rule is more than their type.
_ACCEPTED = {
    "environment.image": "a Docker image reference such as toolkit:cpu, or null",
    "environment.image_id": "an image ID (sha256: and 64 hex digits), or null",
    "hub[].key": "base_model, tokenizer_config or datasets.N.path",
    "hub[].repo": "a Hugging Face repository id such as Qwen/Qwen3-8B",
    "hub[].commit": "a commit id of 40 hex digits",
    "world_size": "a whole number of processes from 1 to 1048576",
    "nodes": "a whole number of machines from 1 to 1048576",
    "num_labels": "a whole number of labels from 1 to 1048576, or null",
    "steps": "a whole number from 0 to 2**63-1, or null",
    "loss_history*": "a list of [step, loss] pairs: a whole number and a number",
    "record_version": f"a whole number up to {VERSION}",
}
_TYPES = {
    "int_type": "a whole number",
    "float_type": "a number",
    "string_type": "a string",
    "string_too_long": "a string of at most 4096 characters",
    "bool_type": "true or false",
    "list_type": "a list (a JSON array)",
    "tuple_type": "a list (a JSON array)",
    "dict_type": "a mapping (a JSON object)",
    "model_type": "a mapping (a JSON object)",
}


def _field(loc: tuple) -> str:
    """('hub', 0, 'commit') → 'hub[0].commit'; the whole record → 'the record'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the record"


def _show(value: Any, limit: int = 60) -> str:
    """A value as JSON, cut short: a hostile record's value may be huge."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
    if isinstance(value, list | dict) and len(value) > 20:
        return f"a {'list' if isinstance(value, list) else 'mapping'} of {len(value):,} entries"
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# what output_dir's record means for a run about to start

# Config keys that cannot change the trained weights: a finished run whose config differs
# only in these is the same run.
CONFIG_NEUTRAL = (*WEIGHT_NEUTRAL, "allow_existing_output_dir")


@dataclass(frozen=True)
class Previous:
    kind: str  # "none", "finished" (this very run), "extend" (same training), "other"
    run: dict | None = None
    differences: tuple[str, ...] = ()


def read_manifest(output_dir: str | Path) -> dict | None:
    """output_dir's run.json as JSON values, validated by toolkit.record (exit 2 naming
    the field when it is malformed); None when there is none."""
    run = read_if_any(Path(output_dir) / RECORD)
    return None if run is None else run.dump()


def config_differences(recorded: dict, current: dict) -> list[str]:
    """`key (recorded → current)` for each top-level key whose value differs."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        if key in CONFIG_NEUTRAL or key == "output_dir":
            continue
        if recorded.get(key) != current.get(key):
            out.append(f"{key} ({_brief(recorded.get(key))} → {_brief(current.get(key))})")
    return out


def _brief(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def previous_run(output_dir: str | Path, config: dict, training_digest: str) -> Previous:
    """What output_dir's run.json means for a run of `config` (its JSON dump)."""
    run = read_manifest(output_dir)
    if run is None:
        return Previous("none")
    if run.get("status", "complete") != "complete":
        return Previous("none", run)
    differences = tuple(config_differences(run.get("config") or {}, config))
    if not differences:
        return Previous("finished", run)
    if run.get("training_digest") == training_digest:
        return Previous("extend", run, differences)
    return Previous("other", run, differences)


def refuse_other_run(output_dir: str | Path, previous: Previous) -> None:
    if previous.kind != "other":
        return
    run = previous.run or {}
    shown = "; ".join(previous.differences[:6]) + (
        f" and {len(previous.differences) - 6} more" if len(previous.differences) > 6 else ""
    )
    raise UsageError(
        f"output_dir {output_dir} holds a finished run of another config (written "
        f"{run.get('written_at', '?')}; differs in: {shown}); choose a new "
        "output_dir, or move that run away first. Nothing was changed"
    )


def check_previous(
    output_dir: str | Path, config: dict, training_digest: str, what: str = "train"
) -> bool:
    """True when output_dir already holds this very run, finished (said so); raises when it
    holds another finished run; False when training should go on (fresh, or resumed)."""
    previous = previous_run(output_dir, config, training_digest)
    if previous.kind == "finished":
        report_finished(output_dir, previous, what)
        return True
    refuse_other_run(output_dir, previous)
    return False


def report_finished(output_dir: str | Path, previous: Previous, what: str = "train") -> None:
    run = previous.run or {}
    print(
        f"toolkit: {output_dir} already holds this run, complete: {run.get('steps')} steps, "
        f"final loss {run.get('final_loss')}, finished {run.get('written_at')}; nothing to "
        f"{what}. To train again, choose another output_dir or remove this one",
        file=sys.stderr,
    )
