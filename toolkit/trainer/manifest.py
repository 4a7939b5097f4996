"""run.json: what a training run was, so outputs describe themselves.

merge-lora, `toolkit compare` and `toolkit reproduce` read it through toolkit.record,
whose check it passes before it is written; it never holds secrets (the config holds
none: tokens reach the container by name only).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from toolkit import __version__, record
from toolkit.config import LoadedConfig

MANIFEST = record.RECORD
LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "bitsandbytes",
)


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment() -> dict:
    """Where the run happened: host or image, and the versions that decide numerics."""
    inside = os.environ.get("TOOLKIT_IN_CONTAINER") == "1"
    return {
        "in_container": inside,
        "image": os.environ.get("TOOLKIT_IMAGE") or None,
        "image_id": os.environ.get("TOOLKIT_IMAGE_ID") or None,
        # Inside, the image's own variant (its ENV; on the host TOOLKIT_VARIANT is only the
        # user's default choice): a run started inside an image by hand has no tag.
        "variant": (os.environ.get("TOOLKIT_VARIANT") or None) if inside else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "libraries": library_versions(),
    }


def write_manifest(output_dir: str | Path, loaded: LoadedConfig, recipe: str, **facts) -> Path:
    cfg = loaded.config
    data = {
        "toolkit_version": __version__,
        "recipe": recipe,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config_path": str(Path(loaded.path).resolve()),
        "config_sha256": cfg.digest(),
        "config": cfg.model_dump(mode="json"),
        "base_model": str(Path(cfg.base_model).resolve())
        if Path(cfg.base_model).exists()
        else cfg.base_model,
        "adapter": cfg.adapter if cfg.uses_lora else None,
        "seed": cfg.seed,
        "hub": [asdict(p) for p in loaded.hub],
        "environment": environment(),
        **facts,
    }
    return record.write(Path(output_dir) / MANIFEST, data)
