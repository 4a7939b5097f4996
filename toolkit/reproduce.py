"""`toolkit reproduce OUTPUT_DIR/run.json`: run a finished training again, as it ran.

From run.json: the validated config (every value, as trained), where it ran (this
Python environment, or an image by tag and ID) and the library versions. The plan
re-selects that image — present by tag, or rebuilt from the current lock when the
matrix still produces that tag — or says which revision to check out when it does
not; the rerun writes to a new output_dir, then the two loss curves are compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from toolkit.compare import read_run
from toolkit.errors import UsageError


@dataclass
class Plan:
    config: Path  # the recorded config, written for the rerun
    output_dir: Path
    train_argv: list[str]  # `toolkit train …` for toolkit.cli.main
    notes: list[str] = field(default_factory=list)


def plan(run_ref: str, output_dir: str | None = None) -> Plan:
    run = read_run(run_ref)
    recorded = run.get("config") or {}
    if not recorded:
        raise UsageError(f"{run_ref}: run.json holds no config; was it written by toolkit?")
    # Every validated value, less the unset ones; batch_size stands for the accumulation
    # it implies (giving all three batch keys is refused).
    config = {k: v for k, v in recorded.items() if v is not None}
    if config.get("batch_size"):
        config.pop("gradient_accumulation_steps", None)
    original = Path(config["output_dir"])
    out = Path(output_dir) if output_dir else original.with_name(original.name + "-reproduced")
    if (out / "run.json").exists():
        raise UsageError(f"{out} already holds a run; pass --output-dir for a new folder")
    config.update(output_dir=str(out), resume_from_checkpoint=False)
    hub_notes = _pin_hub_inputs(run, config, out)
    path = out.parent / f"{out.name}.config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = run.get("environment") or {}
    notes = [
        f"config: the recorded values of {run.get('config_path', run_ref)} "
        f"(sha256 {str(run.get('config_sha256', ''))[:12]}), output_dir {out}",
        *hub_notes,
    ]
    argv = ["train", str(path)]
    world = int(run.get("world_size") or 1)
    if world > 1:
        argv += ["--nproc-per-node", str(world)]
    if env.get("in_container"):
        argv += ["--runtime", "docker", "--image", _image(env, notes)]
    else:
        argv += ["--runtime", "local"]
        notes += _library_drift(env.get("libraries") or {})
    return Plan(path, out, argv, notes)


def _pin_hub_inputs(run: dict, config: dict, out: Path) -> list[str]:
    """The run's Hub inputs at the commits it trained (run.json's `hub`): the rerun's
    output_dir starts with those pins, so the rerun fetches (if the cache lost them) and
    trains exactly those commits, wherever the branches are now."""
    from toolkit.hub import Pin, named_by_repo, write_pins

    pins = [Pin(**p) for p in run.get("hub") or []]
    if not pins:
        return []
    config.update(named_by_repo(config, pins))
    write_pins(out, pins)
    return [
        f"hub: {pin.repo} at {pin.commit[:12]}, the run's commit"
        + ("" if pin.snapshot.is_dir() else " (not in the cache: it is fetched again)")
        for pin in pins
    ]


def _image(env: dict, notes: list[str]) -> str:
    """The recorded image: by tag if present with the same ID; rebuilt from the lock when
    the matrix still makes that tag; else a UsageError naming what to check out."""
    from toolkit.images import ensure_image, load_matrix
    from toolkit.runtime import Runtime

    tag, image_id = env.get("image"), env.get("image_id")
    if not tag:
        raise UsageError("run.json says the run was in a container but records no image tag")
    runtime = Runtime()
    info = runtime.docker().inspect_image(tag)
    if info is not None and info.id == image_id:
        notes.append(f"image: {tag}, the same image ({image_id[:19]})")
        return tag
    variant = next((v for v in load_matrix().values() if v.tag == tag), None)
    if variant is None:
        revision = (info.labels if info else {}).get(
            "org.opencontainers.image.revision", "the run's revision"
        )
        raise UsageError(
            f"image {tag} is not here and today's images/locks build no image "
            f"of that tag (its lock changed); check out {revision} and run "
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


def _library_drift(recorded: dict) -> list[str]:
    from importlib import metadata

    out = []
    for name, version in recorded.items():
        try:
            now = metadata.version(name)
        except metadata.PackageNotFoundError:
            now = None
        if now != version:
            out.append(
                f"warning: {name} is {now} here; the run had {version} (results may "
                "differ; rerun it in an image to pin every version)"
            )
    return out
