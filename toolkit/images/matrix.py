"""The matrix as data: images/matrix.yaml's variants, where the files live (a checkout
or an installed wheel), and an image's identity: what goes into it, hashed the same way
from a checkout and from a wheel, so one source has one tag and two sources never share one;
and each variant's Dockerfile, the one template (images/Dockerfile.in) with its row filled in."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from toolkit import __version__
from toolkit.errors import UsageError

if TYPE_CHECKING:
    from toolkit.compat import VariantFacts

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # toolkit/, in a checkout or site-packages
REPO_ROOT = PACKAGE_DIR.parent
# A checkout keeps the matrix, the locks and the Dockerfile template in images/ and its
# caches in .cache/; an installed wheel has them as toolkit/_images and caches in the
# user's cache folder (XDG).
CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "images").is_dir()
IMAGES_DIR = REPO_ROOT / "images" if CHECKOUT else PACKAGE_DIR / "_images"
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "toolkit"
CACHE_DIR = Path(
    os.environ.get("TOOLKIT_CACHE") or (REPO_ROOT / ".cache" if CHECKOUT else USER_CACHE)
)
LOCAL_BASE_REPO = "toolkit-base"
DEFAULT_VARIANT = "cpu"


@dataclass(frozen=True)
class Variant:
    """A row of images/matrix.yaml."""

    name: str
    accelerator: str  # cpu, cuda or rocm
    base: str
    base_digest: str | None
    local_base_suite: str
    local_base_packages: tuple[str, ...]
    python: str
    platform: str
    requirements: tuple[str, ...]
    torch: str
    torch_index: str
    extensions: dict
    flash_attn: str | None
    arch_list: tuple[str, ...]
    min_driver: str | None
    size_gb: float
    lock: Path
    prune: tuple[str, ...] = ()  # site-packages globs removed after the install
    gpu_version: str | None = None  # CUDA or ROCm version of the torch build
    unverified: tuple[str, ...] = ()  # facts resting on one source

    @property
    def lock_sha256(self) -> str:
        return hashlib.sha256(self.lock.read_bytes()).hexdigest()

    def pins(self) -> list[str]:
        """The lock's requirement lines, without comments, hashes or options."""
        text = self.lock.read_text().replace("\\\n", " ")
        lines = (ln.split("#", 1)[0].split(" --hash")[0].strip() for ln in text.splitlines())
        return [ln for ln in lines if ln and not ln.startswith("-")]

    @property
    def lock_complete(self) -> bool:
        """Whether the lock pins every package (then pip installs it with --no-deps)."""
        return "--hash=" in self.lock.read_text()

    def image_sha256(self, source: str) -> str:
        """The identity of the variant's image built from toolkit source `source` (a
        source_sha256): its lock, its rendered Dockerfile and that source. No time, path
        or revision enters it, so a checkout and a wheel of one source agree."""
        h = hashlib.sha256()
        for part in (self.lock.read_bytes(), render_dockerfile(self).encode(), source.encode()):
            h.update(hashlib.sha256(part).digest())
        return h.hexdigest()

    def tag_for(self, source: str) -> str:
        """The tag of the variant's image built from toolkit source `source`."""
        return f"toolkit:{self.name}-{self.image_sha256(source)[:12]}"

    @property
    def tag(self) -> str:
        """The tag of the variant's image built from the toolkit that is running."""
        return self.tag_for(source_sha256())

    @property
    def base_ref(self) -> str:
        return f"{self.base}@{self.base_digest}" if self.base_digest else self.base

    @property
    def local_base_tag(self) -> str:
        packages = hashlib.sha256(" ".join(sorted(self.local_base_packages)).encode())
        return (
            f"{LOCAL_BASE_REPO}:debian-{self.local_base_suite}-python{self.python}"
            f"-{packages.hexdigest()[:8]}"
        )

    def facts(self) -> VariantFacts:
        from toolkit.compat import VariantFacts

        return VariantFacts(
            self.name, self.accelerator, self.gpu_version, self.arch_list, self.min_driver
        )


def load_matrix(images_dir: Path = IMAGES_DIR) -> dict[str, Variant]:
    path = images_dir / "matrix.yaml"
    if not path.exists():
        raise UsageError(
            f"{path} not found; this install of toolkit lacks its image matrix: "
            "reinstall it (`pip install --force-reinstall qwen-posttrain`)"
        )
    rows = yaml.safe_load(path.read_text())["variants"]
    out = {}
    for name, row in rows.items():
        out[name] = Variant(
            name=name,
            accelerator=row["accelerator"],
            base=row["base"],
            base_digest=row.get("base_digest"),
            local_base_suite=row["local_base"]["suite"],
            local_base_packages=tuple(row["local_base"]["packages"]),
            python=str(row["python"]),
            platform=row["platform"],
            requirements=tuple(row["requirements"]),
            torch=row["torch"],
            torch_index=row["torch_index"],
            extensions=dict(row.get("extensions") or {}),
            flash_attn=row.get("flash_attn"),
            arch_list=tuple(row.get("arch_list") or ()),
            min_driver=row.get("min_driver"),
            size_gb=float(row["size_gb"]),
            lock=images_dir / row["lock"],
            gpu_version=row.get("cuda") or row.get("rocm"),
            unverified=tuple(row.get("check") or ()),
            prune=tuple(row.get("prune_always") or ()) + tuple(row.get("prune") or ()),
        )
    return out


def get_variant(name: str) -> Variant:
    matrix = load_matrix()
    if name not in matrix:
        raise UsageError(
            f"unknown image variant {name!r}; known: {', '.join(matrix)} "
            "(see `toolkit images list`)"
        )
    return matrix[name]


# What `COPY src/` puts in the image: toolkit's package as a wheel installs it (its
# modules and pyproject's package-data), chosen by suffix so a checkout and a wheel pick
# the same files. A top-level `_name/` folder is what a wheel maps in from outside the
# package (images/ as _images/, configs/ as _examples/): the host's, not the image's.
SOURCE_SUFFIXES = frozenset({".py", ".json", ".yaml", ".jinja"})


def source_files(package: Path = PACKAGE_DIR) -> list[tuple[str, Path]]:
    """(path relative to `package`, POSIX-style; the file) of what goes into the image,
    sorted by that path: no caches, bytecode, hidden files, egg-info, links or mapped-in
    data."""
    out = []
    for path in package.rglob("*"):
        rel = path.relative_to(package)
        mapped_in = len(rel.parts) > 1 and rel.parts[0].startswith("_")
        skipped = mapped_in or any(
            part.startswith(".") or part == "__pycache__" or part.endswith(".egg-info")
            for part in rel.parts
        )
        # Never through a link: a wheel holds none, and one may point anywhere.
        if not skipped and path.suffix in SOURCE_SUFFIXES and _plain_file(path):
            out.append((rel.as_posix(), path))
    return sorted(out)


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def source_sha256(package: Path = PACKAGE_DIR) -> str:
    """The hash of source_files(package): each file's relative path and bytes."""
    h = hashlib.sha256()
    for rel, path in source_files(package):
        data = path.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode() + data)
    return h.hexdigest()


def list_rows() -> list[dict]:
    return [
        {
            "variant": v.name,
            "accelerator": v.accelerator,
            "gpu": v.gpu_version or "-",
            "torch": v.torch,
            "min_driver": v.min_driver or "-",
            "arch_list": " ".join(v.arch_list) or "-",
            "lock": "complete" if v.lock_complete else "top-level",
            "tag": v.tag,
            "base": v.base_ref,
            "unverified": list(v.unverified),
        }
        for v in load_matrix().values()
    ]


def say(message: str) -> None:
    print(f"toolkit: {message}", file=sys.stderr, flush=True)


def render_dockerfile(variant: Variant) -> str:
    """The variant's Dockerfile: the one template with the row's values filled in."""
    labels = {
        "io.toolkit.variant": variant.name,
        "io.toolkit.accelerator": variant.accelerator,
        "io.toolkit.torch": variant.torch,
        "io.toolkit.gpu-runtime": variant.gpu_version or "none",
        "io.toolkit.arch-list": " ".join(variant.arch_list) or "none",
        "io.toolkit.min-driver": variant.min_driver or "none",
        "io.toolkit.extensions": " ".join(f"{k}=={v}" for k, v in variant.extensions.items()),
        "io.toolkit.flash-attn": variant.flash_attn or "none",
        "io.toolkit.lock-sha256": variant.lock_sha256,
    }
    # The NVIDIA Container Toolkit reads these to expose the driver's compute libraries.
    nvidia_env = ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    cuda = variant.accelerator == "cuda"
    accel_env = "".join(f" \\\n    {e}" for e in nvidia_env) if cuda else ""
    site = f"/opt/toolkit/lib/python{variant.python}/site-packages"
    values = {
        "@VARIANT@": variant.name,
        "@BASE@": variant.base_ref,
        "@PIP_DEPS@": "--no-deps --require-hashes " if variant.lock_complete else "",
        "@ACCEL_ENV@": accel_env,
        "@VERSION@": __version__,
        "@LOCK_SHA256@": variant.lock_sha256,
        "@LABELS@": " \\\n".join(f'      {k}="{v}"' for k, v in labels.items()),
        "@PRUNE@": " ".join(f"{site}/{glob}" for glob in variant.prune),
    }
    text = (IMAGES_DIR / "Dockerfile.in").read_text()
    for key, value in values.items():
        text = text.replace(key, value)
    return text
