"""A loaded config's inputs, on this machine: remote datasets (s3://, gs://, az://)
copied to the host's cache (toolkit.host.remote), Hub models and datasets fetched into
the Hugging Face cache at a pinned commit (toolkit.host.hub). The result is the same
config with its datasets pointing at their local copies and its pins: a typed value,
never overrides turned back into text to load the config again."""

from __future__ import annotations

import dataclasses
import sys

from toolkit.config import LoadedConfig


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def on_this_machine(loaded: LoadedConfig) -> LoadedConfig:
    """`loaded` with every remote input fetched and every Hub input pinned (the commits a
    run in output_dir started with, or those TOOLKIT_HUB_PINS names, are kept)."""
    from toolkit.host import hub
    from toolkit.host.remote import fetch_remote_datasets, is_remote

    cfg = loaded.config
    if cfg.dataset_prepared_path:  # for `toolkit cache`
        from toolkit.cache import record_prepared

        record_prepared(cfg.dataset_prepared_path)
    remote = any(is_remote(d.path) for d in cfg.datasets)
    refs = hub.hub_refs(cfg)
    if not remote and not refs:
        return loaded
    local: dict[int, str] = {}
    if remote:
        raw = [{"path": d.path, "data_files": d.data_files} for d in cfg.datasets]
        fetched = fetch_remote_datasets(raw)
        local.update({int(key.split(".")[1]): path for key, path in fetched.items()})
    pins = hub.fetch_all(cfg, hub.recorded_pins(cfg.output_dir), log) if refs else []
    local.update({int(p.key.split(".")[1]): str(p.snapshot) for p in pins if p.kind == "dataset"})
    datasets = [
        d.model_copy(update={"path": local[i]}) if i in local else d
        for i, d in enumerate(cfg.datasets)
    ]
    config = cfg.model_copy(update={"datasets": datasets})
    return dataclasses.replace(loaded, config=config, hub=tuple(pins))
