"""Locks and wheelhouses: every package of a variant pinned with its hash, and the
wheels a build installs from, filled by the host's pip."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from toolkit.containers.seam import Runtime
from toolkit.errors import RuntimeFailure
from toolkit.images.matrix import CACHE_DIR, Variant, say


def wheelhouse_root() -> Path:
    """Where the wheelhouses are (TOOLKIT_CACHE, read now: tests set it late)."""
    return Path(os.environ.get("TOOLKIT_CACHE") or CACHE_DIR) / "wheelhouse"


def wheelhouse_dir(variant: Variant) -> Path:
    """Where the variant's wheelhouse goes when the name is free (toolkit.cache keeps
    where it went)."""
    return wheelhouse_root() / f"{variant.name}-{variant.lock_sha256[:12]}"


def fill_wheelhouse(variant: Variant, runtime: Runtime) -> Path:
    """Download the lock's wheels with the host's pip, for the image's platform.

    The host's pip configuration (indexes, find-links, proxy CA) applies, so a
    machine that can install the lock can build the image offline. The wheelhouse is a
    folder toolkit made and recorded (toolkit.cache): a folder of that name that toolkit
    did not make is neither used nor removed.
    """
    from toolkit import cache

    label = wheelhouse_dir(variant).name
    house = cache.find("wheels", label)
    if house is not None and (house / ".complete").is_file():
        return house
    for rec in cache.made("wheels"):  # recorded and still toolkit's; nothing measured
        if rec.label != label and rec.label.rsplit("-", 1)[0] == variant.name:
            cache.remove(Path(rec.path), "wheels")  # wheels of an older lock of this variant
    house = house or cache.create("wheels", wheelhouse_dir(variant), label)
    say(f"downloading the {variant.name} lock's wheels with this machine's pip into {house}")
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        *_target_options(variant),
        "--dest",
        str(house),
        "--requirement",
        str(variant.lock),
    ]
    if variant.lock_complete:
        argv.append("--no-deps")
    # First with the host's own pip configuration only: an index that is unreachable
    # costs pip minutes of retries, so the torch index is added only when needed.
    res = runtime.run(argv, timeout=3600)
    if not res.ok:
        say(f"retrying with the torch index {variant.torch_index}")
        res = runtime.run([*argv, "--extra-index-url", variant.torch_index], timeout=3600)
    if not res.ok:
        tail = "\n".join(res.stderr.strip().splitlines()[-3:])
        raise RuntimeFailure(
            f"could not download the wheels for {variant.name}:\n{tail}\n"
            "Check that pip reaches your index (pip config list), pass "
            "--wheelhouse DIR with the lock's wheels, or --online."
        )
    (house / ".complete").write_text(variant.lock_sha256 + "\n")
    return house


def _target_options(variant: Variant) -> list[str]:
    """pip options that pick wheels for the image's Python and platform, not the host's."""
    arch = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}[variant.platform]
    # Every manylinux tag a Debian 12 (glibc 2.36) base can run.
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)]
    options = [
        "--only-binary=:all:",
        "--python-version",
        variant.python,
        "--implementation",
        "cp",
        "--abi",
        "cp" + variant.python.replace(".", ""),
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for tag in [*tags, f"manylinux2014_{arch}", f"linux_{arch}"]:
        options += ["--platform", tag]
    return options


def lock_variant(variant: Variant, runtime: Runtime, find_links: Path | None = None) -> Path:
    """Resolve the variant's requirements for its platform and write an exact, hashed lock.

    pip runs without this machine's configuration (so a host-only wheel cannot
    leak into a GPU lock), against PyPI and the variant's torch index, plus
    `find_links` when given (a folder holding wheels those indexes serve).
    """
    requirements = [
        f"torch=={variant.torch}",
        *(f"{k}=={v}" for k, v in variant.extensions.items()),
        *variant.requirements,
    ]
    with tempfile.TemporaryDirectory(prefix="toolkit-lock-") as tmp:
        report = Path(tmp) / "report.json"
        argv = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--ignore-installed",
            "--report",
            str(report),
            "--target",
            str(Path(tmp) / "t"),
            "--retries",
            "1",
            "--timeout",
            "30",
            *_target_options(variant),
            "--extra-index-url",
            variant.torch_index,
            *requirements,
        ]
        env = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(find_links or "")}
        res = runtime.run(argv, env=env, timeout=1800)
        if not res.ok:
            tail = "\n".join(res.stderr.strip().splitlines()[-3:])
            raise RuntimeFailure(
                f"could not resolve the {variant.name} lock:\n{tail}\n"
                f"Its index ({variant.torch_index}) must be reachable, or "
                "pass --find-links DIR with the wheels it would serve. "
                f"{variant.lock} is unchanged."
            )
        installs = json.loads(report.read_text())["install"]
    lines = [
        f"# Exact pins of the {variant.name} image, with hashes: written by",
        f"# `toolkit images lock {variant.name}`. Same lock, same image tag.",
    ]
    for item in sorted(installs, key=lambda i: i["metadata"]["name"].lower()):
        meta, archive = item["metadata"], item["download_info"].get("archive_info", {})
        digest = archive.get("hashes", {}).get("sha256")
        line = f"{meta['name']}=={meta['version']}"
        lines.append(f"{line} \\\n    --hash=sha256:{digest}" if digest else line)
    variant.lock.write_text("\n".join(lines) + "\n")
    return variant.lock
