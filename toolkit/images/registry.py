"""Pushing to a registry and the record of what was pushed (launch files use it)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from toolkit.containers.seam import Runtime
from toolkit.errors import RuntimeFailure, UsageError
from toolkit.images.build import ensure_image
from toolkit.images.matrix import CHECKOUT, IMAGES_DIR, Variant


def pushed_file() -> Path:
    """Where pushes are recorded: images/pushed.json in a checkout (commit it: launches read
    it), the user's data folder for an installed toolkit, or $TOOLKIT_PUSHED."""
    if os.environ.get("TOOLKIT_PUSHED"):
        return Path(os.environ["TOOLKIT_PUSHED"])
    if CHECKOUT:
        return IMAGES_DIR / "pushed.json"
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "toolkit" / "pushed.json"


def push_image(variant: Variant, runtime: Runtime, registry: str) -> dict:
    """Build the variant if needed, push it to `registry` (HOST[:PORT][/NAMESPACE]) and
    record its digest; return the record. Launches refer to the image by that digest."""
    registry = registry.rstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)*", registry):
        raise UsageError(
            f"--registry {registry!r}: expected HOST[:PORT][/NAMESPACE], e.g. "
            "ghcr.io/acme or 127.0.0.1:5000"
        )
    docker = runtime.docker()
    docker.require()
    local = ensure_image(variant, runtime)
    remote = f"{registry}/{local}"
    info = docker.push(local, remote)
    repo = remote.rsplit(":", 1)[0]
    digest = next((d for d in info.digests if d.startswith(repo + "@")), None)
    if digest is None:
        raise RuntimeFailure(f"pushed {remote}, but the engine reports no digest for it")
    record = {
        "variant": variant.name,
        "registry": registry,
        "tag": remote,
        "image": digest,
        "image_id": info.id,
        "lock_sha256": variant.lock_sha256,
        "source_sha256": info.labels.get("io.toolkit.source-sha256"),
        "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = pushed_file()
    records = json.loads(path.read_text()) if path.exists() else {}
    records[variant.name] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return record


def pushed_image(variant_name: str) -> dict:
    """The record of the variant's last push, or a UsageError saying how to make one."""
    path = pushed_file()
    records = json.loads(path.read_text()) if path.exists() else {}
    if variant_name not in records:
        raise UsageError(
            f"no pushed image for {variant_name} in {path}; a VM pulls its image "
            f"from a registry: run `toolkit images push {variant_name} --registry "
            "HOST[/NAMESPACE]` first"
        )
    return records[variant_name]
