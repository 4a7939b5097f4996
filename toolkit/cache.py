"""What toolkit keeps on this machine, and freeing it.

    toolkit cache list [--json]
    toolkit cache prune KIND... [--dry-run]  KIND: models data prepared compile wheels

models   Hub repositories toolkit fetched, in the shared Hugging Face cache
         (HF_HUB_CACHE): only those toolkit fetched are listed or pruned
data     remote datasets copied from object stores (TOOLKIT_DATA_CACHE)
prepared tokenized data in the dataset_prepared_path folders toolkit has used (each
         key folder toolkit wrote; nothing else in those folders)
compile  Triton, TorchInductor, CUDA and torch-extension caches, one folder per image
         (compiled code of one image never meets another's), mounted into the
         container so a run does not pay the warm-up again
wheels   the wheelhouses images are built from
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

KINDS = ("models", "data", "prepared", "compile", "wheels")
# Inside the container: where each compiler keeps what it built, under the image's folder.
COMPILE_ENV = {
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TORCH_EXTENSIONS_DIR": "torch_extensions",
    "CUDA_CACHE_PATH": "nv",
}


def root() -> Path:
    """toolkit's own cache folder (XDG: $XDG_CACHE_HOME/toolkit, else ~/.cache/toolkit;
    TOOLKIT_CACHE in a checkout's tests)."""
    from toolkit.images.matrix import USER_CACHE

    return Path(os.environ.get("TOOLKIT_CACHE") or USER_CACHE)


def compile_dir(image_id: str) -> Path:
    """The compile caches of one image (by its ID)."""
    return root() / "compile" / image_id.removeprefix("sha256:")[:16]


def compile_env(folder: Path) -> dict[str, str]:
    return {name: str(folder / sub) for name, sub in COMPILE_ENV.items()}


def record_fetched(kind: str, repo: str) -> None:
    """Remember a Hub repository toolkit fetched, so `cache` lists and prunes only those."""
    _remember("hub-fetched.json", [kind, repo])


def record_prepared(folder: str | Path) -> None:
    """Remember a dataset_prepared_path toolkit tokenizes into."""
    _remember("prepared.json", str(Path(folder).expanduser().resolve()))


def _remember(name: str, item: object) -> None:
    """Add `item` to one of toolkit's lists (on the host: a container only reads what the
    host fetched, and writes where the host recorded)."""
    if os.environ.get("TOOLKIT_IN_CONTAINER") == "1":
        return
    path = root() / name
    known = _recalled(name)
    if item in known:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps([*known, item]))
        os.replace(tmp, path)
    except OSError as exc:  # a list for `toolkit cache`; the run does not need it
        print(f"warning: could not record {item} in {path}: {exc.strerror}", file=sys.stderr)


def _recalled(name: str) -> list:
    try:
        return json.loads((root() / name).read_text())
    except (OSError, ValueError):
        return []


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    path: Path
    size: int


def entries() -> list[Entry]:
    """Everything toolkit keeps, with sizes."""
    from toolkit.hub import repo_folder
    from toolkit.images.lock import wheelhouse_root
    from toolkit.remote import cache_root

    out = []
    for kind, repo in _recalled("hub-fetched.json"):
        folder = repo_folder(kind, repo)
        if folder.is_dir():
            out.append(Entry("models", f"{kind} {repo}", folder, _size(folder)))
    for parent in map(Path, _recalled("prepared.json")):
        if parent.is_dir():  # the key folders toolkit wrote (each ends with report.json)
            out += [
                Entry("prepared", f"{parent.name}/{child.name}", child, _size(child))
                for child in sorted(parent.iterdir())
                if (child / "report.json").is_file()
            ]
    for kind, parent in (
        ("data", cache_root()),
        ("compile", root() / "compile"),
        ("wheels", wheelhouse_root()),
    ):
        if parent.is_dir():
            out += [
                Entry(kind, child.name, child, _size(child))
                for child in sorted(parent.iterdir())
                if child.is_dir()
            ]
    return out


def prune(kinds: list[str], dry_run: bool = False) -> list[Entry]:
    """Remove what toolkit keeps of these kinds; return what was (or would be) removed."""
    chosen = [e for e in entries() if e.kind in kinds]
    if not dry_run:
        for entry in chosen:
            shutil.rmtree(entry.path, ignore_errors=True)
        if "models" in kinds:
            (root() / "hub-fetched.json").unlink(missing_ok=True)
    return chosen


def _size(path: Path) -> int:
    """Bytes under `path`, each file once (the Hub cache links snapshots to blobs)."""
    total, seen = 0, set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                stat = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
