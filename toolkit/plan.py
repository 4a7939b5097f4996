"""RunPlan: what crosses from the host to where a heavy command runs, as one typed value.

The host builds it once, after the config is loaded and validated and its inputs are on
this machine: the task and its options, the validated config, the Hub pins, the paths
the run reads and may write (the container's mounts), the network it needs, the
credentials it needs (by name: their values go on the container's stdin, never here),
and the token of the output folder's lock the host holds for it. It is written once, as
JSON, to a private temporary file the container gets read-only (`written`), and read once
where the work runs (`read`) — the image, torchrun's ranks, or this process for
`--runtime local` — then handed to `toolkit.trainer.run`, the trainer's one entry point.
No environment variable or command-line round trip carries any of it.

No torch and no host-side import: the trainer reads plans through this module.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolkit import safe_io
from toolkit.config import Config, LoadedConfig, is_local_ref, trackers
from toolkit.errors import RuntimeFailure, UsageError
from toolkit.pins import Pin

VERSION = 1
# A plan is kilobytes (the config, the pins' file hashes): far beyond any real one.
MAX_BYTES = 16 << 20


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Train(_Frozen):
    kind: Literal["train"] = "train"


class Preprocess(_Frozen):
    kind: Literal["preprocess"] = "preprocess"
    debug_rows: int = Field(0, ge=0)  # rows printed as tokenized (--debug); 0: none
    colored: bool = False


class Merge(_Frozen):
    kind: Literal["merge-lora"] = "merge-lora"
    allow_config_mismatch: bool = False


class Inference(_Frozen):
    kind: Literal["inference"] = "inference"
    prompts: tuple[str, ...] = ()  # none: read from this process's stdin, one a line
    model: Literal["auto", "merged", "adapter"] = "auto"
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)


class TinyModel(_Frozen):
    kind: Literal["tiny-model"] = "tiny-model"
    out: str
    moe: bool = False
    seed: int = 0


Task = Annotated[Train | Preprocess | Merge | Inference | TinyModel, Field(discriminator="kind")]


class RunPlan(_Frozen):
    """One heavy command, planned on the host (see the module's docstring)."""

    version: Literal[1] = 1  # VERSION
    task: Task
    config: Config | None = None
    config_path: str | None = None  # the YAML the config came from (recorded in run.json)
    pins: tuple[Pin, ...] = ()
    reads: tuple[str, ...] = ()  # absolute paths, read-only in the container
    writes: tuple[str, ...] = ()  # absolute paths the run may write
    network: Literal["none", "bridge", "host"] = "none"
    credentials: tuple[str, ...] = ()  # names only
    lock_token: str | None = None  # the output folder's lock, held by the host for us

    @property
    def command(self) -> str:
        return self.task.kind

    @property
    def loaded(self) -> LoadedConfig:
        """The config as the stages read it, with its Hub pins."""
        if self.config is None or self.config_path is None:
            raise ValueError(f"a {self.command} plan has no config")
        return LoadedConfig(config=self.config, path=Path(self.config_path), hub=self.pins)


def build(
    task: Train | Preprocess | Merge | Inference | TinyModel,
    loaded: LoadedConfig | None = None,
    *,
    lock_token: str | None = None,
    network: Literal["none", "bridge", "host"] | None = None,
) -> RunPlan:
    """The plan of `task` for a loaded config whose inputs are on this machine (its Hub
    pins in `loaded.hub`): what it reads, what it writes and whether it needs the
    network follow from the config; `network="host"` for a multi-node launch. Only a
    training gets credentials: its trackers' (by name, as this environment decides an
    unset W&B mode); Hub inputs and remote data are fetched, and pushes made, on the
    host."""
    if loaded is None:
        out = Path(task.out).absolute() if isinstance(task, TinyModel) else None
        return RunPlan(task=task, writes=(str(out),) if out else ())
    cfg = loaded.config
    reads, writes, remote = paths(cfg, loaded.hub, data=isinstance(task, Train | Preprocess))
    if isinstance(task, Inference):  # reads the outputs, writes nothing
        reads, writes = [*reads, *writes], []
    chosen = network or ("bridge" if remote else "none")
    return RunPlan(
        task=task,
        config=cfg,
        config_path=str(Path(loaded.path).absolute()),
        pins=tuple(loaded.hub),
        reads=tuple(str(p) for p in [Path(loaded.path).absolute(), *reads]),
        writes=tuple(str(p) for p in writes),
        network=chosen,
        credentials=trackers.credentials(cfg, os.environ) if isinstance(task, Train) else (),
        lock_token=lock_token,
    )


def paths(
    cfg: Config, pins: tuple[Pin, ...] = (), data: bool = True
) -> tuple[list[Path], list[Path], bool]:
    """(read-only paths, read-write paths, needs network) of a config's run; `data`:
    whether it reads the datasets (a merge or an inference does not). Hub inputs the
    host fetched are read from their cache folders, offline."""
    if not data:
        pins = tuple(p for p in pins if p.kind != "dataset")
    pinned = {p.repo for p in pins}
    reads, remote = [p.folder for p in pins], False
    datasets = [d.path for d in cfg.datasets] if data else []
    for ref in (cfg.base_model, cfg.tokenizer_config, *datasets):
        if ref is None or ref in pinned:
            continue
        if is_local_ref(ref):
            reads.append(Path(ref).expanduser().absolute())
        else:
            remote = True
    writes = [Path(cfg.output_dir).expanduser().absolute()]
    if cfg.dataset_prepared_path:
        writes.append(Path(cfg.dataset_prepared_path).expanduser().absolute())
    store = trackers.local_store(cfg)  # a local MLflow store the run writes to
    if store is not None:
        writes.append(store)
    return reads, writes, remote or trackers.needs_network(cfg)


@contextmanager
def written(plan: RunPlan) -> Iterator[Path]:
    """The plan as a file only this user can read, in a private folder of its own, for
    as long as the run needs it; removed after."""
    folder = Path(tempfile.mkdtemp(prefix="toolkit-plan-"))  # mode 0700, ours
    try:
        path = folder / "plan.json"
        safe_io.write_new(path, plan.model_dump_json().encode(), 0o600)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def read(path: str | os.PathLike) -> RunPlan:
    """The plan the host wrote (a regular file of bounded size, never through a link);
    one that does not validate is an input error naming the field."""
    try:
        data = safe_io.read_bytes(path, MAX_BYTES)
    except safe_io.NotRegular as exc:
        raise UsageError(f"{path} is {exc.kind}, not a run plan toolkit wrote") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(f"{path} is a link, not a run plan toolkit wrote") from None
        raise RuntimeFailure(
            f"cannot read the run plan {path} ({exc.strerror or exc}): it is written by the "
            "toolkit command that starts the run, for the user the run is started as"
        ) from None
    try:
        return RunPlan.model_validate_json(data)
    except ValueError as exc:
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            detail = f"{where}: {first['msg']}"
        else:
            detail = str(exc)
        raise UsageError(
            f"{path}: not a run plan toolkit wrote ({detail}); it is written by the toolkit "
            "command that starts the run: run that command instead"
        ) from None
