"""The matrix as data: images/matrix.yaml's variants, where the files live (a checkout
or an installed wheel), and the hash of the source an image is built from."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from toolkit.errors import UsageError

if TYPE_CHECKING:
    from toolkit.compat import VariantFacts

REPO_ROOT = Path(__file__).resolve().parents[2]
# A checkout keeps the matrix, the locks and the Dockerfile template in images/ and its
# caches in .cache/; an installed wheel has them as toolkit/_images and caches in the
# user's cache folder (XDG).
CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "images").is_dir()
IMAGES_DIR = REPO_ROOT / "images" if CHECKOUT else Path(__file__).resolve().parents[1] / "_images"
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

    @property
    def tag(self) -> str:
        return f"toolkit:{self.name}-{self.lock_sha256[:12]}"

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


def source_sha256(root: Path = REPO_ROOT) -> str:
    """A hash of what goes into the image besides the lock: toolkit's package,
    pyproject and the Dockerfile template (an image built from other ones is stale)."""
    h = hashlib.sha256()
    files = sorted(
        p for p in (root / "toolkit").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    extra = [
        p
        for p in (root / "pyproject.toml", IMAGES_DIR / "Dockerfile.in")
        if p.is_file() and p not in files
    ]
    for path in [*extra, *files]:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
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
