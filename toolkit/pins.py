"""Hub pins as a type, shared by the host (which resolves and fetches them,
toolkit.host.hub) and the trainer (which loads at them, offline): one Hub input of a
run at the commit it trains, where the Hugging Face cache keeps it, and the record a
run keeps of them (output_dir/.toolkit/hub.json).

No huggingface_hub import: the cache layout is read from the environment the way
huggingface_hub lays it out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit import safe_io
from toolkit.errors import UsageError

PINS = "hub.json"  # in output_dir/.toolkit: the commits this run uses
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass(frozen=True)
class Pin:
    """One Hub input of a run: where the config names it, the repository, the revision
    asked for, the commit it resolved to, and the fetched files' hashes."""

    key: str  # base_model, tokenizer_config, datasets.0.path
    repo: str
    kind: str  # "model" or "dataset"
    revision: str | None
    commit: str
    files: dict[str, str]

    @property
    def folder(self) -> Path:
        """The repository's folder in the Hugging Face cache (what a container mounts)."""
        return repo_folder(self.kind, self.repo)

    @property
    def snapshot(self) -> Path:
        return self.folder / "snapshots" / self.commit


def hub_cache() -> Path:
    """The Hugging Face cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def repo_folder(kind: str, repo: str) -> Path:
    """A repository's folder in the Hugging Face cache, as huggingface_hub lays it out."""
    return hub_cache() / f"{kind}s--{repo.replace('/', '--')}"


def read_pins(output_dir: str | Path) -> dict[str, Pin]:
    """The commits a run in output_dir started with, by config key (no hub.json: {}).
    A damaged record is an error: read as none, a resume would lose its commits."""
    where = Path(output_dir).expanduser() / ".toolkit" / PINS
    try:
        text = safe_io.read_bytes(where, 16 << 20)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise damaged(str(where), exc) from None
    return parse_pins(text, str(where))


def parse_pins(text: str | bytes, where: str) -> dict[str, Pin]:
    """Pins from their JSON (a list of Pin's fields), by config key; `where` names the
    source in the error a damaged one gives."""
    try:
        items = safe_io.load_json(text)
        if not isinstance(items, list):
            raise ValueError("not a list of pins")
        pins = [_pin_of(i, item) for i, item in enumerate(items)]
    except ValueError as exc:
        raise damaged(where, exc) from None
    return {p.key: p for p in pins}


def damaged(where: str, exc: Exception) -> UsageError:
    return UsageError(
        f"{where} is damaged ({exc}); it holds the Hub commits this run started with. "
        "Restore it from a copy of the run, or delete it to pin each Hub input at the "
        "commit its revision names now"
    )


def _pin_of(i: int, item: object) -> Pin:
    """A recorded pin, checked field by field (ValueError naming the first that is wrong)."""
    fields = Pin.__dataclass_fields__
    if not isinstance(item, dict) or set(item) != set(fields):
        raise ValueError(f"pin {i} is not a mapping of {', '.join(fields)}")
    for name in ("key", "repo", "commit"):
        if not isinstance(item[name], str):
            raise ValueError(f"pin {i}: {name} is {item[name]!r:.60}, not a string")
    if item["kind"] not in ("model", "dataset"):
        raise ValueError(f"pin {i}: kind is {item['kind']!r:.60}, not model or dataset")
    if not isinstance(item["revision"], str | None):
        raise ValueError(f"pin {i}: revision is {item['revision']!r:.60}, not a string or null")
    files = item["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError(f"pin {i}: files is not a mapping of file names to hashes")
    return Pin(**item)


def pins_json(pins: list[Pin] | tuple[Pin, ...]) -> str:
    return json.dumps([asdict(p) for p in pins])


def write_pins(output_dir: str | Path, pins: list[Pin]) -> None:
    from toolkit.safe_io import write_json_atomic

    path = Path(output_dir).expanduser() / ".toolkit" / PINS
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, [asdict(p) for p in pins])


def named_by_repo(config: dict, pins: list[Pin]) -> dict:
    """A recorded config whose Hub datasets are named by their repository again, as the
    user's config names them (the run recorded the snapshot folder it read)."""
    found = config.get("datasets")
    # A record is input: entries that are not mappings stay as they are, for the
    # comparison that follows to name them.
    datasets = (
        [dict(d) if isinstance(d, dict) else d for d in found] if isinstance(found, list) else []
    )
    for pin in pins:
        index = int(pin.key.split(".")[1]) if pin.kind == "dataset" else len(datasets)
        if index < len(datasets) and isinstance(datasets[index], dict):
            datasets[index]["path"] = pin.repo
    return {**config, "datasets": datasets}


def model_kwargs(revision_of_model: str | None, ref: str, pins: dict[str, Pin]) -> dict[str, Any]:
    """from_pretrained keywords for a model named `ref`: at its pinned commit, from the
    cache alone, when the run pinned it; else the config's revision."""
    for pin in pins.values():
        if pin.kind == "model" and pin.repo == ref:
            return {
                "revision": pin.commit,
                "local_files_only": True,
                "cache_dir": str(hub_cache()),
            }
    return {"revision": revision_of_model} if revision_of_model else {}


_IN_USE: ContextVar[tuple[Pin, ...]] = ContextVar("toolkit_pins", default=())


@contextmanager
def in_use(pins: tuple[Pin, ...]) -> Iterator[None]:
    """The pins the models of this run load at, while it runs (toolkit.trainer.run sets
    them from its plan); with any, nothing in this process goes to the Hub on its own:
    transformers probes for optional files, peft looks up a base's config on save."""
    import sys

    token = _IN_USE.set(tuple(pins))
    saved = {k: os.environ.get(k) for k in OFFLINE_ENV}
    constants = sys.modules.get("huggingface_hub.constants")  # it reads the env once
    was_offline = getattr(constants, "HF_HUB_OFFLINE", None)
    if pins:
        os.environ.update(OFFLINE_ENV)
        if constants is not None:
            setattr(constants, "HF_HUB_OFFLINE", True)  # noqa: B010 (a module read once)
    try:
        yield
    finally:
        _IN_USE.reset(token)
        if pins:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if constants is not None:
                setattr(constants, "HF_HUB_OFFLINE", was_offline)  # noqa: B010


def used() -> dict[str, Pin]:
    """The pins of the run in progress, by config key ({} outside one)."""
    return {p.key: p for p in _IN_USE.get()}
