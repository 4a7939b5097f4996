"""What toolkit keeps on this machine, and freeing it.

    toolkit cache list [KIND...] [--json]
    toolkit cache prune KIND... [--dry-run]  KIND: models data prepared compile wheels
                                             images, or all (the folder kinds)

models   Hub repositories whose cache folder a toolkit fetch created, in the shared Hugging
         Face cache it was fetched into (HF_HUB_CACHE / HF_HOME, as it was then)
data     remote datasets copied from object stores (TOOLKIT_DATA_CACHE)
prepared tokenized data in the dataset_prepared_path folders toolkit has used (each
         key folder toolkit wrote; nothing else in those folders)
compile  Triton, TorchInductor, CUDA and torch-extension caches, one folder per image
         (compiled code of one image never meets another's), mounted into the
         container so a run does not pay the warm-up again
wheels   the wheelhouses images are built from
images   toolkit's images in the container engine: those labelled io.toolkit.variant
         (the variants' images and the builder stages the classic builder keeps).
         Prune removes those that are not the current tag of a variant for this
         toolkit's source and that no container uses; never forced, never an image
         without toolkit's label. Named only, never part of `all`: the engine is
         shared with whoever else uses it

Ownership: toolkit lists and removes only folders it made itself. Each one holds a mark
(`.toolkit-entry`: its kind, its name, its inode and a random id) written when it was
made, and the registry (`entries.json` in toolkit's cache folder) keeps its path with the
same id and inode. A folder counts as toolkit's only while it is a real folder (not a
link) at the recorded path, with that inode, holding that mark: a user's folder with a
look-alike name, a copy of one of toolkit's folders, or a link planted in its place is
never listed and never removed. Prepared folders are written by the trainer, which in a
container cannot reach the host's registry: they are toolkit's when their mark names the
folder itself and its inode, inside a dataset_prepared_path the host recorded.

A damaged registry is never read as empty. `cache list` and `cache prune` stop on it
(exit 2, naming it and the fix); a run, which does not need it, warns once and goes on
with the folders it makes left unrecorded: never listed, never pruned, never reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit import safe_io
from toolkit.errors import UsageError

if TYPE_CHECKING:
    from toolkit.containers.seam import Docker
    from toolkit.containers.spec import ImageInfo

KINDS = ("models", "data", "prepared", "compile", "wheels")
MARK = ".toolkit-entry"  # inside each folder toolkit made
REGISTRY = "entries.json"  # in root(): the folders toolkit made, with their identity
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
    """Where the compile caches of one image (by its ID) go when the name is free."""
    return root() / "compile" / image_id.removeprefix("sha256:")[:16]


def compile_folder(image_id: str) -> Path:
    """The compile caches of one image: the folder toolkit made for it, else a new one
    (beside a folder of that name that toolkit did not make, never inside it)."""
    label = compile_dir(image_id).name
    return find("compile", label) or create("compile", compile_dir(image_id), label)


def compile_env(folder: Path) -> dict[str, str]:
    return {name: str(folder / sub) for name, sub in COMPILE_ENV.items()}


@dataclass(frozen=True)
class Mark:
    """What `mark` wrote into a new folder: to `record` once the folder is in place."""

    kind: str
    id: str
    inode: int


@dataclass(frozen=True)
class Record:
    """One folder toolkit made, as the registry keeps it."""

    kind: str
    label: str  # what `cache list` calls it: "model Qwen/Qwen3-0.6B", a data key, an image
    path: str  # absolute, its parent's links resolved
    id: str  # the random id its mark holds
    inode: int
    hub_cache: str | None = None  # models: the Hugging Face cache it was fetched into


def mark(folder: Path, kind: str, name: str | None = None) -> Mark:
    """Write toolkit's mark into `folder`, a folder toolkit just created (under a
    temporary name when `name`, the name it will be renamed to, is given: a rename keeps
    the inode)."""
    ident = Mark(kind, secrets.token_hex(16), os.lstat(folder).st_ino)
    body = {"kind": kind, "name": name or folder.name, "inode": ident.inode, "id": ident.id}
    safe_io.write_new(folder / MARK, json.dumps(body).encode(), 0o644)
    return ident


def record(ident: Mark, path: Path, label: str, hub_cache: Path | None = None) -> None:
    """Keep a folder toolkit made (marked by `mark`) in the registry (on the host: a
    container only writes into folders the host made or recorded)."""
    if os.environ.get("TOOLKIT_IN_CONTAINER") == "1":
        return
    entry = Record(
        ident.kind,
        label,
        str(_real(path)),
        ident.id,
        ident.inode,
        str(_real(hub_cache)) if hub_cache else None,
    )
    _update(lambda reg: {**reg, "entries": [*_others(reg, entry.path), asdict(entry)]})


def _others(reg: dict, path: str) -> list[dict]:
    """The registry's other entries, less those whose folder is gone: it keeps no more
    than is on the disk (a folder that came back without its mark would not count)."""
    return [r for r in reg["entries"] if r["path"] != path and os.path.lexists(r["path"])]


def create(kind: str, path: Path, label: str, hub_cache: Path | None = None) -> Path:
    """Make a new folder of `kind` at `path`, mark it, record it and return it (as
    recorded: links in its parent resolved). When something
    toolkit did not make holds that name, the folder is made beside it (name-XXXXXXXX),
    except for models, whose folder name the Hub cache fixes (FileExistsError). With a
    damaged registry the folder is made and marked but not recorded (said once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path
    while True:
        try:
            target.mkdir()
            break
        except FileExistsError:
            if kind == "models":
                raise
            target = path.with_name(f"{path.name}-{secrets.token_hex(4)}")
    record(mark(target, kind), target, label, hub_cache)
    return _real(target)


def find(kind: str, label: str) -> Path | None:
    """The folder toolkit made for `label` of `kind`, while it is still toolkit's; else
    None (also when the registry is damaged: said once)."""
    for rec in made(kind):
        if rec.label == label:
            return Path(rec.path)
    return None


def made(kind: str) -> list[Record]:
    """The folders of `kind` toolkit recorded and that are still its own, without
    measuring them; none when the registry is damaged (said once). For a run: `entries`
    is `cache list`'s."""
    reg = _registry_for_run()
    if reg is None:
        return []
    return [rec for rec in map(_as_record, reg["entries"]) if rec.kind == kind and _owned(rec)]


def record_prepared(folder: str | Path) -> None:
    """Remember a dataset_prepared_path toolkit tokenizes into."""
    if os.environ.get("TOOLKIT_IN_CONTAINER") == "1":
        return
    # Resolved whole: the folder may be a link the user made; what toolkit wrote inside is
    # known by its marks (a link planted later at a key folder is never followed).
    parent = os.path.realpath(Path(folder).expanduser())
    reg = _registry_for_run()
    if reg is not None and parent not in reg["prepared"]:
        _update(
            lambda reg: {
                **reg,
                "prepared": sorted({parent, *filter(os.path.lexists, reg["prepared"])}),
            }
        )


def _real(path: Path) -> Path:
    """`path` absolute, with links in its parent resolved (never the last name's)."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    return Path(os.path.realpath(path.parent)) / path.name


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    path: Path
    size: int


def entries() -> list[Entry]:
    """Everything toolkit keeps and can prove it made, with sizes."""
    reg = _read_registry()
    out = [
        Entry(rec.kind, rec.label, Path(rec.path), _size(Path(rec.path)))
        for rec in map(_as_record, reg["entries"])
        if _owned(rec)
    ]
    for parent in map(Path, reg["prepared"]):
        if os.path.realpath(parent) != str(parent):  # a link now (see _unmoved)
            continue
        for child in _children(parent):
            if _mark_of(child, {"kind": "prepared", "name": child.name}) is not None:
                out.append(Entry("prepared", f"{parent.name}/{child.name}", child, _size(child)))
    unique = {e.path: e for e in out}.values()  # a prepared folder recorded twice
    return sorted(unique, key=lambda e: (KINDS.index(e.kind), e.name, str(e.path)))


def prune(kinds: list[str], dry_run: bool = False) -> list[Entry]:
    """Remove what toolkit made of these kinds; return what was (or would be) removed.
    Each folder's identity is checked again as it is removed; links are never followed."""
    chosen = [e for e in entries() if e.kind in kinds]
    if dry_run:
        return chosen
    gone = [e for e in chosen if remove(e.path, e.kind)]
    paths = {str(e.path) for e in gone}
    if paths:
        _update(
            lambda reg: {**reg, "entries": [r for r in reg["entries"] if r["path"] not in paths]}
        )
    return gone


def remove(path: Path, kind: str) -> bool:
    """Delete the folder at `path` if it is still toolkit's (its mark, its inode, the
    registry's id; for prepared data, its mark): never a link, never what a link inside
    points at. Returns whether it was removed (never, with a damaged registry).

    The check and the removal act on one object: the folder is opened once (never
    through a link), its mark read and its inode compared through that descriptor, its
    contents removed through it, and its name removed last only while the name still
    holds that folder; a folder swapped in at the name meanwhile is left whole."""
    reg = _registry_for_run()
    path = Path(os.path.abspath(path))
    if reg is None or not _unmoved(path):
        return False
    rec = next(
        (r for r in map(_as_record, reg["entries"]) if (r.path, r.kind) == (str(path), kind)),
        None,
    )
    want: dict[str, object] = {"kind": kind, "name": path.name}
    if rec is not None:
        want |= {"id": rec.id, "inode": rec.inode}
    elif kind != "prepared" or str(path.parent) not in reg["prepared"]:
        return False
    try:
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            folder = safe_io.open_dir(path.name, dir_fd=parent)
        except OSError:
            return False
        try:
            if _mark_in(folder, want) is None:
                return False
            _empty(folder, path)
            if _same(path.name, parent, folder):
                os.rmdir(path.name, dir_fd=parent)
        finally:
            os.close(folder)
        return not _exists(path.name, parent)
    except OSError as exc:
        print(f"warning: could not remove {path}: {exc}", file=sys.stderr)
        return False
    finally:
        os.close(parent)


def remove_leftovers(parent: Path, kind: str, name: str | None = None) -> list[Path]:
    """Remove the temporary folders killed writes of `kind` left in `parent` (for the
    folder `name`, or for any): only those named `.NAME.*` that hold toolkit's mark for
    that NAME and kind (written first, under the write's lock) and that no live write
    holds (its flock ends with its process); never through a link, emptied through the
    folder's descriptor. Returns what was removed."""
    removed: list[Path] = []
    try:
        parent_fd = safe_io.open_dir(parent)
    except OSError:
        return removed
    try:
        for entry in sorted(os.listdir(parent_fd)):
            target = entry[1:].rsplit(".", 1)[0] if entry.startswith(".") else ""
            if (
                target
                and name in (None, target)
                and _remove_leftover(parent_fd, entry, kind, target)
            ):
                removed.append(parent / entry)
    finally:
        os.close(parent_fd)
    return removed


def _remove_leftover(parent: int, entry: str, kind: str, name: str) -> bool:
    try:
        folder = safe_io.open_dir(entry, dir_fd=parent)
    except OSError:  # gone, a link, or not a folder
        return False
    try:
        fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _mark_in(folder, {"kind": kind, "name": name}) is None:
            return False
        _empty(folder, Path(entry))
        if _same(entry, parent, folder):
            os.rmdir(entry, dir_fd=parent)
        return True
    except OSError:  # held by a live write (BlockingIOError), or changed meanwhile
        return False
    finally:
        os.close(folder)


def _empty(folder: int, path: Path) -> None:
    """Remove everything inside the open folder `folder` (at `path`, for warnings), by
    names relative to it: links inside are removed, never followed; toolkit's mark last,
    so a removal cut short leaves a folder that is still known as toolkit's."""
    names = sorted(os.listdir(folder), key=lambda n: n == MARK)
    for name in names:
        try:
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                # rmtree with dir_fd: the child's name in this descriptor, never a link.
                shutil.rmtree(name, dir_fd=folder, **_ON_ERROR)  # type: ignore[arg-type]
            else:
                os.unlink(name, dir_fd=folder)
        except OSError as exc:
            _warn(None, str(path / name), exc)


def _same(name: str, parent: int, folder: int) -> bool:
    """Whether `name` in `parent` is still the folder open as `folder`."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return False
    return os.path.samestat(st, os.fstat(folder))


def _owned(rec: Record) -> bool:
    want = {"kind": rec.kind, "name": Path(rec.path).name, "id": rec.id, "inode": rec.inode}
    return _unmoved(Path(rec.path)) and _mark_of(Path(rec.path), want) is not None


def _unmoved(path: Path) -> bool:
    """Whether `path`'s parent is still reached without a link, as when it was recorded:
    a parent replaced by a link leads elsewhere, and nothing there is toolkit's to touch."""
    return _real(path) == path


def _mark_of(folder: Path, want: dict) -> dict | None:
    """The mark inside `folder` when `folder` is a real folder (not a link) whose inode the
    mark names and whose mark agrees with `want`; else None."""
    try:
        fd = safe_io.open_dir(folder)
    except OSError:
        return None
    try:
        return _mark_in(fd, want)
    finally:
        os.close(fd)


# A mark is a line of JSON: well under this.
MARK_LIMIT = 4096


def _mark_in(folder: int, want: dict) -> dict | None:
    """The mark inside the open folder `folder` when it names that folder's inode and
    agrees with `want`; else None."""
    try:
        body = safe_io.read_json(MARK, MARK_LIMIT, dir_fd=folder)
        ino = os.fstat(folder).st_ino
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("inode") != ino:
        return None
    return body if all(body.get(k) == v for k, v in want.items()) else None


def _children(parent: Path) -> list[Path]:
    try:
        return sorted(parent.iterdir()) if parent.is_dir() else []
    except OSError:
        return []


def _exists(name: str, parent_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _warn(_func, path, exc) -> None:
    exc = exc[1] if isinstance(exc, tuple) else exc  # onerror passes sys.exc_info()
    print(f"warning: could not remove {path}: {exc}", file=sys.stderr)


_ON_ERROR = {"onexc" if sys.version_info >= (3, 12) else "onerror": _warn}


# The registry: read whole, changed under a lock, replaced atomically.
REGISTRY_LIMIT = 16 << 20


def _read_registry() -> dict:
    """The registry (none yet: empty). A damaged one is an error, never read as empty:
    toolkit would then forget what it made, or count nothing as made."""
    path = root() / REGISTRY
    try:
        data = safe_io.read_json(path, REGISTRY_LIMIT)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ValueError("not toolkit's registry layout")
        if not isinstance(data.get("prepared"), list) or not all(
            isinstance(p, str) for p in data["prepared"]
        ):
            raise ValueError("'prepared' is not a list of folders")
        if not isinstance(data.get("entries"), list):
            raise ValueError("'entries' is not a list")
        for item in data["entries"]:
            _as_record(item)
    except FileNotFoundError:
        return {"version": 1, "entries": [], "prepared": []}
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{path} is damaged ({exc}); it is toolkit's record of the cache folders it "
            f"made. Restore it from a backup, or move it away (mv {path} {path}.bad): "
            "toolkit then counts nothing made before as its own, and never removes it"
        ) from None
    return data


def _as_record(item: object) -> Record:
    """A registry entry, checked field by field (ValueError naming what is wrong)."""
    fields = Record.__dataclass_fields__
    if not isinstance(item, dict) or not set(fields) - {"hub_cache"} <= set(item) <= set(fields):
        raise ValueError(f"an entry is not a mapping of {', '.join(fields)}: {item!r:.80}")
    rec = Record(**item)
    if (
        rec.kind not in KINDS
        or not all(isinstance(v, str) for v in (rec.label, rec.path, rec.id))
        or not os.path.isabs(rec.path)
        or type(rec.inode) is not int
        or not isinstance(rec.hub_cache, str | None)
    ):
        raise ValueError(f"an entry has a wrong field: {item!r:.120}")
    return rec


_WARNED: set[str] = set()  # the damaged registries a run has been told about


def _registry_for_run() -> dict | None:
    """The registry, or None when it is damaged: a run goes on without it, told once per
    registry (on stderr) that what it makes now is not recorded."""
    try:
        return _read_registry()
    except UsageError as exc:
        path = str(root() / REGISTRY)
        if path not in _WARNED:
            _WARNED.add(path)
            print(
                f"warning: {exc.args[0]}. Until then, the cache folders this run makes are "
                "not recorded: `toolkit cache` never lists or prunes them, and no later "
                "run reuses them",
                file=sys.stderr,
            )
        return None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One writer at a time: two runs recording at once must not lose an entry."""
    root().mkdir(parents=True, exist_ok=True)
    fd = safe_io.open_file(root() / f"{REGISTRY}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _update(change) -> None:
    """Apply `change` to the registry. A damaged registry is left as it is and said once
    (`_registry_for_run`); one that cannot be written is a warning: the run does not
    need it."""
    from toolkit.safe_io import write_json_atomic

    path = root() / REGISTRY
    try:
        with _locked():
            reg = _registry_for_run()
            if reg is not None:
                write_json_atomic(path, change(reg))
    except OSError as exc:
        print(f"warning: could not update {path}: {exc}", file=sys.stderr)


def _size(path: Path) -> int:
    """Bytes under `path`, each file once (the Hub cache links snapshots to blobs)."""
    total, seen = 0, set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


# ---------------------------------------------------------------------------
# images

IMAGE_LABEL = "io.toolkit.variant"  # on every image toolkit builds, builder stages too


@dataclass(frozen=True)
class ImageEntry:
    image: ImageInfo
    variant: str
    current: bool  # tagged as its variant's image for this toolkit's source
    in_use: bool  # some container (running or stopped) was created from it

    @property
    def name(self) -> str:
        """Its tags, or what it is when untagged."""
        if self.image.tags:
            return ", ".join(self.image.tags)
        return (
            "<untagged builder stage>"
            if self.image.labels.get("io.toolkit.stage")
            else "<untagged>"
        )


def images(docker: Docker, current_tags: dict[str, str]) -> list[ImageEntry]:
    """toolkit's images in the engine (labelled IMAGE_LABEL), oldest first; `current_tags`
    maps each variant to its tag for this toolkit's source (matrix Variant.tag)."""
    in_use = docker.images_in_use()
    found = [
        ImageEntry(
            image,
            image.labels[IMAGE_LABEL],
            current_tags.get(image.labels[IMAGE_LABEL]) in image.tags,
            image.id in in_use,
        )
        for image in docker.list_images({IMAGE_LABEL: None})
        if image.labels.get(IMAGE_LABEL)
    ]
    return sorted(found, key=lambda e: (e.variant, e.image.created or "", e.image.id))


def prune_images(
    docker: Docker, current_tags: dict[str, str], dry_run: bool = False
) -> list[ImageEntry]:
    """Remove toolkit's images that are not a variant's current one and that no container
    uses; return those removed (or, dry, that would be)."""
    chosen = [e for e in images(docker, current_tags) if not e.current and not e.in_use]
    if dry_run:
        return chosen
    return [e for e in chosen if remove_image(docker, e.image)]


def remove_image(docker: Docker, image: ImageInfo) -> bool:
    """Remove an image, never forced: tag by tag (the engine refuses to remove by ID an
    image with several tags), the last removal deleting it; untagged, by its ID."""
    if not image.tags:
        return docker.remove_image(image.id)
    for tag in image.tags:
        docker.remove_image(tag)
    return docker.inspect_image(image.id) is None
