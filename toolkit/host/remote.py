"""Datasets in object stores (s3://, gs://, az://, or any fsspec URL), fetched on the host.

Before a run, `fetch_remote_datasets` copies each remote dataset into a local cache
(~/.cache/toolkit/data, or $TOOLKIT_DATA_CACHE) and points the config at the copy.
The trainer, here or in the container, only ever reads local files: a container
needs no network and no cloud credentials, which stay in the host's environment
(AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*, as each library reads
them). A copy is keyed by the URL and what the store says of every file (size and
ETag or modification time), so an unchanged dataset is not downloaded twice and a
changed one is.

fsspec and the store's package (s3fs, gcsfs, adlfs) are imported only when a
config names a remote dataset: `pip install 'qwen-posttrain[remote]'`.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from toolkit import cache, safe_io
from toolkit.config import DATA_SUFFIXES
from toolkit.errors import DataError, UsageError

# URL scheme → the package fsspec needs for it.
BACKENDS = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
}


def is_remote(ref: str) -> bool:
    """Whether a dataset path is a URL an fsspec filesystem serves (not a local path)."""
    scheme, sep, _ = ref.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme not in ("file",)


# In a copy's folder: the fetched files (beside them: .complete and toolkit's mark).
FILES = "files"


def cache_root() -> Path:
    return Path(os.environ.get("TOOLKIT_DATA_CACHE", "~/.cache/toolkit/data")).expanduser()


def fetch_remote_datasets(raw_datasets: list[dict], log=print) -> dict[str, str]:
    """Overrides (`datasets.N.path` → local copy) for every remote dataset entry."""
    overrides = {}
    for i, ds in enumerate(raw_datasets):
        url = ds.get("path") if isinstance(ds, dict) else None
        if isinstance(url, str) and is_remote(url):
            local = fetch(url, ds.get("data_files"), f"datasets[{i}] ({url})", log)
            overrides[f"datasets.{i}.path"] = str(local)
    return overrides


def fetch(url: str, data_files=None, where: str = "", log=print) -> Path:
    """A local copy of the file or folder at `url` (the data files in it, if a folder)."""
    fs, path = _filesystem(url, where)
    try:
        files = _remote_files(fs, path, data_files, where)
        infos = [fs.info(f) for f in files]
    except FileNotFoundError:
        raise DataError(f"{where}: {url} does not exist; check the bucket and key") from None
    except PermissionError as exc:
        raise DataError(
            f"{where}: access to {url} was refused ({exc}); check the "
            "credentials in the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,"
            " AZURE_STORAGE_*)"
        ) from None
    except OSError as exc:
        raise DataError(
            f"{where}: could not list {url}: {exc}; check the URL, the network "
            "and the store's endpoint settings (e.g. AWS_ENDPOINT_URL)"
        ) from None
    key = hashlib.sha256(
        json.dumps([url, [_fingerprint(info) for info in infos]], sort_keys=True).encode()
    ).hexdigest()[:16]
    single = not fs.isdir(path)
    folder = cache.find("data", key)
    if folder is not None and (folder / ".complete").is_file():
        log(f"data: {url}: unchanged since it was fetched to {folder}")
    else:
        folder = folder or cache_root() / key
        log(f"data: fetching {len(files)} file(s) from {url} to {folder}")
        folder = _download(fs, path, files, folder, key)
    if single:
        return folder / FILES / Path(files[0]).name
    return folder / FILES


def _filesystem(url: str, where: str) -> Any:
    try:
        import fsspec
    except ImportError:
        raise UsageError(
            f"{where}: remote datasets need fsspec; pip install 'qwen-posttrain[remote]'"
        ) from None
    scheme = url.partition("://")[0]
    try:
        # A fresh filesystem: a cached one keeps the endpoint and credentials it was made
        # with, and its directory listings.
        return fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except ImportError:
        package = BACKENDS.get(scheme, f"the fsspec backend for {scheme}://")
        raise UsageError(
            f"{where}: {scheme}:// needs {package}, which is not installed; "
            "pip install 'qwen-posttrain[remote]'"
        ) from None
    except ValueError as exc:
        raise UsageError(
            f"{where}: {url} is not a URL fsspec can open ({exc}); use s3://, "
            "gs://, az:// or a local path"
        ) from None


def _remote_files(fs, path: str, data_files, where: str) -> list[str]:
    if not fs.isdir(path):
        fs.info(path)  # raises FileNotFoundError when missing
        return [path]
    patterns = data_files if isinstance(data_files, list) else [data_files or "*"]
    names = sorted(
        f
        for f in fs.find(path)
        if any(fnmatch.fnmatch(f[len(path.rstrip("/")) + 1 :], p) for p in patterns)
        and Path(f).suffix in DATA_SUFFIXES
    )
    if not names:
        raise DataError(
            f"{where}: no data files under it (looked for {', '.join(patterns)} "
            f"with suffix {sorted(DATA_SUFFIXES)}); set data_files or point path "
            "at a file"
        )
    return names


def _fingerprint(info: dict) -> list:
    version = next(
        (
            str(info[k])
            for k in (
                "ETag",
                "etag",
                "md5Hash",
                "content_md5",
                "mtime",
                "LastModified",
                "last_modified",
                "created",
            )
            if info.get(k) is not None
        ),
        "",
    )
    return [info.get("name"), info.get("size"), version]


def _download(fs, root: str, files: list[str], folder: Path, key: str) -> Path:
    """Into a temporary folder, then a rename: a half-fetched copy is never used. Bytes
    fetched show as a bar on a terminal, as plain lines in a log. The copy is marked and
    recorded as toolkit's (toolkit.cache); it replaces only a copy toolkit made, and goes
    beside a folder of that name that toolkit did not make. Returns where it went: the
    files are in its FILES folder, apart from toolkit's own (.complete, the mark), which
    a dataset folder's `data_files` glob would otherwise read as data."""
    from fsspec.callbacks import Callback

    from toolkit.bars import bar

    folder.parent.mkdir(parents=True, exist_ok=True)
    for leftover in cache.remove_leftovers(folder.parent, "data", folder.name):
        print(f"data: removed {leftover}, left by an interrupted fetch", file=sys.stderr)
    total = sum(int(fs.info(f).get("size") or 0) for f in files)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    # Held until the rename, and marked before anything is fetched: a fetch killed
    # midway leaves a folder the next fetch can prove is toolkit's and no longer in use.
    held = safe_io.open_dir(tmp)
    fcntl.flock(held, fcntl.LOCK_EX)
    ident = cache.mark(tmp, "data", folder.name)
    with bar(total or None, f"fetching {root}", unit="B", scale=True) as shown:

        class Shown(Callback):
            def relative_update(self, inc=1) -> None:
                shown.update(inc)

        try:
            prefix = root.rstrip("/") + "/"
            for remote in files:
                relative = remote[len(prefix) :] if remote.startswith(prefix) else Path(remote).name
                if Path(relative).is_absolute() or ".." in Path(relative).parts:
                    raise DataError(  # an object's key must not lead out of the copy
                        f"{root}: the store lists {remote!r}, whose name leads outside the "
                        "dataset folder; rename the object or point path at the files"
                    )
                target = tmp / FILES / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(target), callback=Shown())
            (tmp / ".complete").write_text("")
            for p in [tmp, *tmp.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)  # readable by a container's other UID
            cache.remove(folder, "data")  # an incomplete copy of toolkit's; nothing else
            if os.path.lexists(folder):
                while os.path.lexists(folder):
                    folder = folder.with_name(f"{key}-{secrets.token_hex(4)}")
                (tmp / cache.MARK).unlink()  # the mark names the folder it becomes
                ident = cache.mark(tmp, "data", folder.name)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(held)
    cache.record(ident, folder, key)
    return folder
