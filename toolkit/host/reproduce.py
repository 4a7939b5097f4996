"""`toolkit reproduce OUTPUT_DIR/run.json`: run a finished training again, as it ran.

From run.json: the validated config (every value, as trained), where it ran (this
Python environment, or an image by tag and ID) and the library versions. The plan
re-selects that image — present by tag, or rebuilt from the current lock when the
matrix still produces that tag — or says which revision to check out when it does
not; the rerun writes to a new output_dir, then the two loss curves are compared.

The record is input: it is read through toolkit.record, and its config is validated
like a config file before anything is written, each problem named `config.KEY`. It
never decides where the rerun writes: output_dir is --output-dir or the record's own
folder with `-reproduced` appended, and the record's other written places (prepared
data, trackers, the Hub) are not carried over. `plan` only checks; `prepare` then
writes the rerun's config beside its output_dir and hands the run's Hub commits to the
rerun's `toolkit train`, which writes everything else.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from toolkit import record, safe_io
from toolkit.config.schema import REPORTING_KEYS
from toolkit.errors import UsageError
from toolkit.record import Environment, RunRecord

# Where a run writes besides output_dir, or what it publishes: a record's values for
# these are not followed (TensorBoard writes inside output_dir, so it stays).
NOT_CARRIED = ("dataset_prepared_path", *(k for k in REPORTING_KEYS if k != "use_tensorboard"))


@dataclass
class Rerun:
    config: Path  # the recorded config, written for the rerun
    output_dir: Path
    train_argv: list[str]  # `train …`: the toolkit command line of the rerun
    notes: list[str] = field(default_factory=list)
    text: str = ""  # the config file's content
    pins: list = field(default_factory=list)  # toolkit.pins.Pin: the commits to train


def plan(run_ref: str, output_dir: str | None = None) -> Rerun:
    """Check everything a rerun needs (exit 2 naming what is wrong); write nothing."""
    from toolkit.pins import Pin

    run = record.read(run_ref)
    record.need(run, "config", command="reproduce")
    out = _output_dir(run, output_dir)
    config, dropped = _rerun_config(run, out)
    pins = [Pin(**pin.model_dump()) for pin in run.hub]
    config = _checked(run, config, pins)
    path = out.parent / f"{out.name}.config.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    _refuse_other_file(path, text)
    env = run.environment or Environment()
    notes = [
        f"config: the recorded values of {record.printable(run.config_path or run.path)} "
        f"(sha256 {(run.config_sha256 or '')[:12]}), output_dir {out}",
        *(
            [
                f"not carried over from the record: {', '.join(dropped)} (a rerun writes only "
                "to its output_dir, and publishes and reports nothing)"
            ]
            if dropped
            else []
        ),
        *(
            f"hub: {pin.repo} at {pin.commit[:12]}, the run's commit"
            + ("" if pin.snapshot.is_dir() else " (not in the cache: it is fetched again)")
            for pin in pins
        ),
    ]
    argv = ["train", str(path)]
    if (run.world_size or 1) > 1:
        argv += ["--nproc-per-node", str(run.world_size)]
    if env.in_container:
        argv += ["--runtime", "docker", "--image", _image(env, notes)]
    else:
        argv += ["--runtime", "local"]
        notes += _library_drift(env.libraries)
    return Rerun(path, out, argv, notes, text, pins)


def prepare(rerun: Rerun) -> None:
    """The plan's effects, once every check passed: the config file beside output_dir
    (created, never written over: the same file from an interrupted reproduce is kept),
    and the run's Hub commits in TOOLKIT_HUB_PINS, which the rerun's `toolkit train`
    (in this process) fetches, trains and records, wherever the branches are now."""
    from toolkit.host.hub import PINS_ENV
    from toolkit.pins import pins_json

    rerun.output_dir.parent.mkdir(parents=True, exist_ok=True)
    if _refuse_other_file(rerun.config, rerun.text):
        try:
            safe_io.write_new(rerun.config, rerun.text.encode("utf-8"), 0o644)
        except FileExistsError:
            raise UsageError(f"{rerun.config} appeared while reproduce ran; try again") from None
    if rerun.pins:
        os.environ[PINS_ENV] = pins_json(rerun.pins)


def _output_dir(run: RunRecord, given: str | None) -> Path:
    """--output-dir, or the record's folder with `-reproduced`: never the record's own
    output_dir (a copied record could name any folder)."""
    if given is not None:
        if not given.strip():
            raise UsageError("--output-dir is empty; give the folder the rerun writes to")
        out = Path(os.path.abspath(os.path.expanduser(given)))
    else:
        folder = Path(os.path.abspath(run.path.parent))
        if folder == folder.parent:
            raise UsageError(f"{run.path} is in the root folder; pass --output-dir for the rerun")
        out = folder.with_name(folder.name + "-reproduced")
    where = f"output_dir {out} (the rerun's)"
    if out == out.parent:
        raise UsageError(f"{where} is the root folder; pass --output-dir NEW_FOLDER")
    if out.is_symlink():
        raise UsageError(f"{where} is a symbolic link; pass --output-dir with a folder of its own")
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"{where} exists and is not a folder; pass --output-dir NEW_FOLDER")
    if os.path.lexists(out / record.RECORD):
        raise UsageError(f"{out} already holds a run; pass --output-dir for a new folder")
    from toolkit.outputs import holds_toolkit_run

    if out.is_dir() and any(out.iterdir()) and not holds_toolkit_run(out):
        raise UsageError(
            f"{where} holds files that are not a toolkit run; pass --output-dir with a new "
            "or empty folder (reproduce writes beside no one's files)"
        )
    return out


def _rerun_config(run: RunRecord, out: Path) -> tuple[dict, list[str]]:
    """The recorded values for the rerun, and the keys not carried over."""
    # Every validated value, less the unset ones; batch_size stands for the accumulation
    # it implies (giving all three batch keys is refused).
    config = {k: v for k, v in (run.config or {}).items() if v is not None}
    if config.get("batch_size"):
        config.pop("gradient_accumulation_steps", None)
    dropped = [k for k in NOT_CARRIED if config.get(k) not in (None, False, [], {}, "")]
    config = {k: v for k, v in config.items() if k not in NOT_CARRIED}
    # allow_existing_output_dir is the record's word about its own folder, not the rerun's.
    config.update(
        output_dir=str(out), resume_from_checkpoint=False, allow_existing_output_dir=False
    )
    return config, dropped


def _checked(run: RunRecord, config: dict, pins: list) -> dict:
    """The rerun's config (its Hub datasets named by repository again), validated as
    `toolkit train` will validate it: every problem at once, named `config.KEY` in the
    record (output_dir: the rerun's own)."""
    from pydantic import ValidationError

    from toolkit.config import Config
    from toolkit.config.problems import describe_all
    from toolkit.config.rules import cross_field_problems, path_problems
    from toolkit.pins import named_by_repo

    problems: list[str] = []
    try:
        Config.model_validate(config)
    except ValidationError as exc:
        problems += describe_all([dict(e) for e in exc.errors()])
    datasets = config.get("datasets")
    if pins and isinstance(datasets, list) and all(isinstance(d, dict) for d in datasets):
        config = named_by_repo(config, pins)
    # Both read raw values and judge only well-typed ones, so they run on a wrong config too.
    problems += cross_field_problems(config) + path_problems(config)
    if problems:
        shown = [p if p.startswith("output_dir:") else f"config.{p}" for p in problems]
        noun = "problem" if len(problems) == 1 else "problems"
        raise UsageError(
            f"{run.path}: the recorded config cannot be trained again ({len(problems)} "
            f"{noun}); {record.FIX}",
            shown,
        )
    return config


def _refuse_other_file(path: Path, text: str) -> bool:
    """True when `path` is free for the rerun's config; False when it holds that very
    config (an interrupted reproduce); a UsageError for anything else there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    if stat.S_ISREG(info.st_mode) and info.st_size == len(text.encode()):
        with contextlib.suppress(OSError, ValueError):
            if safe_io.read_bytes(path, info.st_size) == text.encode():
                return False
    raise UsageError(
        f"{path} exists and is not this rerun's config; reproduce writes its config there "
        "and never over another file: move it away, or pass --output-dir for another folder"
    )


def _image(env: Environment, notes: list[str]) -> str:
    """The recorded image: by tag if present with the same ID; rebuilt from the lock when
    the matrix still makes that tag; else a UsageError naming what to check out."""
    from toolkit.containers.seam import Runtime
    from toolkit.images import ensure_image, load_matrix

    tag, image_id = env.image, env.image_id
    if not tag:
        raise UsageError("run.json says the run was in a container but records no image tag")
    runtime = Runtime()
    info = runtime.docker().inspect_image(tag)
    if info is not None and info.id == image_id:
        notes.append(f"image: {tag}, the same image ({str(image_id)[:19]})")
        return tag
    variant = next((v for v in load_matrix().values() if v.tag == tag), None)
    if variant is None:
        revision = (info.labels if info else {}).get(
            "org.opencontainers.image.revision", "the run's revision"
        )
        raise UsageError(
            f"image {tag} is not here and today's images/locks build no image "
            f"of that tag (its lock or toolkit's source changed); check out {revision} and run "
            "`toolkit reproduce` there"
        )
    built = ensure_image(variant, runtime)
    rebuilt = runtime.docker().inspect_image(built)
    new_id = rebuilt.id if rebuilt else ""
    same = new_id == image_id
    notes.append(
        f"image: {tag} {'is the same image' if same else 'rebuilt from the same lock'}"
        + (
            ""
            if same
            else f" (ID {new_id[:19]}, the run had {str(image_id)[:19]}: "
            "same packages, other toolkit source or base)"
        )
    )
    return built


def _library_drift(recorded: dict[str, str | None]) -> list[str]:
    from importlib import metadata

    out = []
    for name, version in recorded.items():
        try:
            now = metadata.version(name)
        except (metadata.PackageNotFoundError, ValueError):
            now = None
        if now != version:
            name, version = record.printable(name, 60), record.printable(version, 60)
            out.append(
                f"warning: {name} is {now} here; the run had {version} (results may "
                "differ; rerun it in an image to pin every version)"
            )
    return out
