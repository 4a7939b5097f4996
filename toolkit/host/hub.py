"""Models and datasets from the Hugging Face Hub, fetched on the host, pinned by commit.

Before a run, each Hub input of the config (base_model, tokenizer_config, a dataset
named by its Hub id) is resolved with huggingface_hub: its revision (revision_of_model,
a dataset's `revision`, else the default branch) becomes a commit, and the files a run
needs (config, tokenizer, safetensors weights; never the .bin/.pth/.gguf duplicates)
are fetched into the user's Hugging Face cache (HF_HOME / HF_HUB_CACHE, shared with
their other tools), with huggingface_hub's own progress, resume and locking. A run
keeps the commits it started with (output_dir/.toolkit/hub.json; run.json records
them with each file's hash), so a resumed, rerun or reproduced run trains the same
weights even after the branch moved, and a second run asks the Hub for nothing.

The trainer then loads models by name at that commit from the cache alone
(`local_files_only`), and reads a Hub dataset from its snapshot folder. The
container gets the cache folders of those repositories read-only, HF_HUB_OFFLINE=1,
no network for them and no token. Errors (gated, missing, a wrong revision, no
network) stop the run here, before anything starts, naming the repository, the
revision and the fix.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.cache import MARK, create, remove
from toolkit.config import Config, is_local_ref
from toolkit.errors import ToolkitError, UsageError
from toolkit.pins import OFFLINE_ENV, Pin, hub_cache, parse_pins, read_pins, repo_folder

# The commits to fetch, as JSON pins, when the command that starts toolkit chose them: a
# launch file's fetch step on a VM, and reproduce.
PINS_ENV = "TOOLKIT_HUB_PINS"
# What a run reads from a model repository: config, tokenizer, safetensors weights.
MODEL_FILES = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.jinja",
    "*.tiktoken",
    "*.py",
    "*.md",
)
DATASET_FILES = (
    "*.json",
    "*.jsonl",
    "*.parquet",
    "*.arrow",
    "*.csv",
    "*.tsv",
    "*.txt",
    "*.gz",
    "*.zst",
    "*.md",
)


class HubUnreachable(ToolkitError):
    """The Hub (or the HF_ENDPOINT stand-in) could not be reached. Exit 1."""


def endpoint() -> str:
    """The Hub's address: HF_ENDPOINT (read now, not when huggingface_hub was imported)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_refs(cfg: Config) -> list[tuple[str, str, str, str | None]]:
    """(key, repo, kind, revision) for every Hub input of a config."""
    refs: list[tuple[str, str, str, str | None]] = []
    for key, ref in (("base_model", cfg.base_model), ("tokenizer_config", cfg.tokenizer_config)):
        if ref and not is_local_ref(ref) and ref not in (r for _, r, _, _ in refs):
            # revision_of_model is the base model's; another tokenizer repo: its default
            revision = cfg.revision_of_model if ref == cfg.base_model else None
            refs.append((key, ref, "model", revision))
    for i, ds in enumerate(cfg.datasets):
        if not is_local_ref(ds.path) and "://" not in ds.path:
            refs.append((f"datasets.{i}.path", ds.path, "dataset", ds.revision))
    return refs


def recorded_pins(output_dir: str | Path | None = None) -> dict[str, Pin]:
    """The commits to use, by config key: those the command that started toolkit chose
    (TOOLKIT_HUB_PINS: a launch file's fetch step, reproduce), else those a run in
    output_dir started with."""
    if os.environ.get(PINS_ENV):
        return parse_pins(os.environ[PINS_ENV], PINS_ENV)
    return read_pins(output_dir) if output_dir is not None else {}


def fetch_all(cfg: Config, recorded: dict[str, Pin] | None = None, log=print) -> list[Pin]:
    """Resolve and fetch every Hub input; a recorded pin of the same repository and
    revision is kept (its commit fetched if the cache lost it) without asking the Hub
    where the branch is now."""
    pins = []
    for key, repo, kind, revision in hub_refs(cfg):
        known = (recorded or {}).get(key)
        same = known is not None and (known.repo, known.revision) == (repo, revision)
        commit = known.commit if known is not None and same else None
        pins.append(fetch(key, repo, kind, revision, commit, log))
    return pins


def resolve_all(cfg: Config, log=print) -> list[Pin]:
    """Every Hub input's commit, asking the Hub but fetching nothing: for launch files,
    whose VM fetches those commits itself (`toolkit fetch`)."""
    from huggingface_hub import HfApi

    pins = []
    for key, repo, kind, revision in hub_refs(cfg):
        try:
            info = HfApi(endpoint=endpoint()).repo_info(repo, repo_type=kind, revision=revision)
        except Exception as exc:
            raise hub_error(exc, key, repo, kind, revision) from None
        log(f"hub: {key}: {repo} at {info.sha}")
        pins.append(Pin(key, repo, kind, revision, str(info.sha), {}))
    return pins


def fetch(
    key: str, repo: str, kind: str, revision: str | None, commit: str | None = None, log=print
) -> Pin:
    """One input: resolve the revision (unless its commit is known), fetch what a run
    needs at that commit (nothing when the cache holds it), and return its pin."""
    from huggingface_hub import HfApi, snapshot_download

    where = f"{key}: {repo}" + (f"@{revision}" if revision else "")
    made = None
    try:
        made = _claim_repo_folder(kind, repo)
        if commit is None:
            info = HfApi(endpoint=endpoint()).repo_info(repo, repo_type=kind, revision=revision)
            commit = info.sha
            if commit is None:
                raise HubUnreachable(f"{where}: the Hub gave no commit for it")
        cached = _snapshot_files(kind, repo, commit)
        if not cached:
            log(f"hub: fetching {repo} at {commit[:12]} into {hub_cache()}")
        folder = snapshot_download(
            repo,
            repo_type=kind,
            revision=commit,
            allow_patterns=list(MODEL_FILES if kind == "model" else DATASET_FILES),
            cache_dir=str(hub_cache()),
            endpoint=endpoint(),
        )
    except Exception as exc:
        if made is not None:  # toolkit's empty folder would read as a damaged repository
            with contextlib.suppress(OSError):
                if os.listdir(made) == [MARK]:
                    remove(made, "models")
        raise hub_error(exc, key, repo, kind, revision) from None
    files = _snapshot_files(kind, repo, commit)
    if kind == "model" and not any(name.endswith(".safetensors") for name in files):
        raise UsageError(
            f"{where}: has no .safetensors weights at {commit[:12]}; toolkit loads "
            "safetensors only (convert the .bin weights, or pick a revision that has them)"
        )
    expected = repo_folder(kind, repo) / "snapshots" / commit
    if Path(folder).resolve() != expected.resolve():
        raise HubUnreachable(f"{where}: fetched into {folder}, not the cache toolkit expects")
    return Pin(key, repo, kind, revision, commit, files)


def _claim_repo_folder(kind: str, repo: str) -> Path | None:
    """Create the repository's folder in the Hugging Face cache before huggingface_hub
    fills it, marked and recorded as toolkit's (with the cache it is in), so `toolkit
    cache` can prune it later. A folder already there belongs to whoever made it (another
    tool, or an earlier toolkit fetch): None."""
    folder = repo_folder(kind, repo)
    if os.path.lexists(folder) or os.environ.get("TOOLKIT_IN_CONTAINER") == "1":
        return None
    try:
        return create("models", folder, f"{kind} {repo}", hub_cache=hub_cache())
    except FileExistsError:  # another process made it meanwhile
        return None


def _snapshot_files(kind: str, repo: str, commit: str) -> dict[str, str]:
    """A cached snapshot's files and their hashes: each is a link to a blob named by
    its hash (the LFS sha256, or the git blob id)."""
    root = repo_folder(kind, repo) / "snapshots" / commit
    if not root.is_dir():
        return {}
    return {
        str(path.relative_to(root)): Path(os.readlink(path)).name if path.is_symlink() else ""
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def hub_error(
    exc: Exception, key: str, repo: str, kind: str, revision: str | None, verb: str = "fetch"
) -> Exception:
    """What a huggingface_hub error means for this run, as one line with the fix."""
    from huggingface_hub import errors

    page = f"{endpoint()}/{'datasets/' if kind == 'dataset' else ''}{repo}"
    at = f"{repo}@{revision or 'main'}"
    if isinstance(exc, ToolkitError):
        return exc
    if isinstance(exc, errors.GatedRepoError):
        return UsageError(
            f"{key}: {repo} is gated: accept its licence on {page} with your account, then "
            "set HF_TOKEN to a token of that account in your environment (it is used on "
            "this machine only, never in the container)"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return UsageError(
            f"{key}: {repo} has no revision {revision!r}; give a branch, tag or commit it has "
            f"({'revision_of_model' if kind == 'model' else 'the dataset entry: revision'})"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return UsageError(
            f"{key}: {repo} is not a {kind} on the Hub ({endpoint()}): check the name, or set "
            "HF_TOKEN if it is private; a local folder must exist to be read as one"
        )
    return HubUnreachable(
        f"{key}: could not {verb} {at} {'to' if verb == 'push' else 'from'} {endpoint()} "
        f"({type(exc).__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); check the network or "
        "HF_ENDPOINT and run again"
        + (
            " (the same command pushes what did not reach it; output_dir is complete)"
            if verb == "push"
            else " (a download resumes where it stopped)"
        )
    )


@contextmanager
def online() -> Iterator[None]:
    """The Hub reachable again for a moment (publishing, which the user asked for)."""
    import huggingface_hub.constants

    saved = {k: os.environ.pop(k, None) for k in OFFLINE_ENV}
    offline, huggingface_hub.constants.HF_HUB_OFFLINE = (
        huggingface_hub.constants.HF_HUB_OFFLINE,
        False,
    )
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = offline
        os.environ.update({k: v for k, v in saved.items() if v is not None})
