"""`toolkit cache list | prune`, and the compile caches a container keeps per image.

toolkit lists and removes only the folders it made: the adversarial tests below plant
look-alikes (key-like hex names, `report.json`, image-id and variant names, copies of
toolkit's own folders with their marks), links inside and in place of entries, another
Hugging Face cache, and damaged registries, in every cache location, and check that
every foreign byte, mode and link target is as it was after a prune."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_DATA
from fakes import FakeDocker, FakeRuntime, ListImages, Remove
from helpers import ends
from hubstub import HubStub
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.cli import main
from toolkit.containers.spec import ImageInfo
from toolkit.errors import UsageError

REPO = "Qwen/Qwen3-Tiny"
IMAGE = "sha256:" + "c" * 64
HEX = "0123456789abcdef"


@dataclass
class Places:
    """Every cache location of one test, and a folder outside them all."""

    base: Path
    toolkit: Path  # TOOLKIT_CACHE: registry, compile/, wheelhouse/
    data: Path  # TOOLKIT_DATA_CACHE
    hf_a: Path  # HF_HOME toolkit fetches into
    hf_b: Path  # another HF_HOME, switched to later
    prepared: Path  # a dataset_prepared_path
    outside: Path

    @property
    def compile(self) -> Path:
        return self.toolkit / "compile"

    @property
    def wheels(self) -> Path:
        return self.toolkit / "wheelhouse"

    @property
    def registry(self) -> Path:
        return self.toolkit / "entries.json"


def use_places(base: Path, monkeypatch) -> Places:
    p = Places(
        base,
        base / "toolkit-cache",
        base / "data-cache",
        base / "hf-a",
        base / "hf-b",
        base / "prepared",
        base / "outside",
    )
    p.outside.mkdir(parents=True)
    (p.outside / "secret.txt").write_text("not toolkit's")
    (p.outside / "dir" / "keep").mkdir(parents=True)
    (p.outside / "dir" / "keep" / "weights.bin").write_bytes(b"\x00" * 300)
    monkeypatch.setenv("TOOLKIT_CACHE", str(p.toolkit))
    monkeypatch.setenv("TOOLKIT_DATA_CACHE", str(p.data))
    monkeypatch.setenv("HF_HOME", str(p.hf_a))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("TOOLKIT_IN_CONTAINER", raising=False)
    return p


def make_own(p: Places) -> dict[str, Path]:
    """One folder of each kind, made by toolkit's own code paths."""
    import fsspec

    from toolkit import cache
    from toolkit.host import hub, place, remote
    from toolkit.images import get_variant
    from toolkit.images.lock import fill_wheelhouse
    from toolkit.trainer.data import DataReport
    from toolkit.trainer.prepared import _write
    from toolkit.trainer.tokenized import Example

    own = {}
    own["models"] = hub._claim_repo_folder("model", REPO)
    (own["models"] / "snapshots" / "abc").mkdir(parents=True)
    (own["models"] / "blobs").mkdir()
    (own["models"] / "blobs" / "f00d").write_bytes(b"w" * 1000)
    (own["models"] / "snapshots" / "abc" / "model.safetensors").symlink_to("../../blobs/f00d")
    url = f"memory://chats-{os.urandom(6).hex()}/demo.jsonl"
    fsspec.filesystem("memory").pipe(url.removeprefix("memory://"), b'{"a": 1}\n')
    own["data"] = remote.fetch(url, log=lambda _: None).parent.parent
    cache.record_prepared(p.prepared)
    _write(p.prepared / ("e" * 16), [Example([1, 2, 3], [-100, 2, 3])], DataReport(rows=1))
    own["prepared"] = p.prepared / ("e" * 16)
    own["compile"] = place.compile_cache(IMAGE)
    (own["compile"] / "triton" / "k.so").write_bytes(b"x" * 2048)
    own["wheels"] = fill_wheelhouse(get_variant("cpu"), FakeRuntime())
    (own["wheels"] / "torch-2-py3-none-any.whl").write_bytes(b"wheel")
    return own


def tree(base: Path, skip: list[Path]) -> dict[Path, tuple]:
    """Every path under `base` but `skip`: its kind, mode, bytes' hash or link target."""
    out = {}
    for dirpath, dirs, files in os.walk(base):
        for name in dirs + files:
            path = Path(dirpath) / name
            if any(path == s or s in path.parents for s in skip):
                continue
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                out[path] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                out[path] = ("dir", st_.st_mode)
            elif not stat.S_ISREG(st_.st_mode):  # a pipe: never opened
                out[path] = ("special", st_.st_mode)
            else:
                out[path] = ("file", st_.st_mode, hashlib.sha256(path.read_bytes()).digest())
    return out


def toolkits_own(p: Places, own: dict[str, Path]) -> list[Path]:
    """What a prune may change: toolkit's folders, its registry, Hugging Face's locks."""
    registry = [q for q in p.toolkit.glob("*entries.json*") if q.is_file()]
    return [*own.values(), *registry, p.hf_a / "hub" / ".locks"]


def listed(capsys) -> set[tuple[str, str]]:
    capsys.readouterr()
    assert main(["cache", "list", "--json"]) == 0
    return {(r["kind"], r["path"]) for r in json.loads(capsys.readouterr().out)}


# Foreign things, planted where toolkit keeps its own.
LOCATIONS = ("data", "compile", "wheels", "prepared", "hf_a", "hf_b")
NAMES = st.one_of(
    st.text(HEX, min_size=16, max_size=16),  # a data, prepared or compile key
    st.text(HEX, min_size=12, max_size=12).map(lambda h: f"cpu-{h}"),  # a wheelhouse
    st.sampled_from(["models--Qwen--Qwen3-Tiny", "models--someone--else", "notes", "cccc"]),
    st.text(HEX, min_size=8, max_size=8).map(lambda h: f"{'c' * 16}-{h}"),  # toolkit's alt
)
SHAPES = st.sampled_from(
    ["folder", "copy", "forged", "link_dir", "link_file", "file", "pipe_mark", "deep_mark"]
)


def location(p: Places, where: str) -> Path:
    folder = {
        "data": p.data,
        "compile": p.compile,
        "wheels": p.wheels,
        "prepared": p.prepared,
        "hf_a": p.hf_a / "hub",
        "hf_b": p.hf_b / "hub",
    }[where]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def plant(p: Places, own: dict[str, Path], where: str, name: str, shape: str) -> None:
    """A foreign thing at `where`/`name`: a look-alike folder, a copy of toolkit's own
    folder of that place (mark and all), a folder with a forged mark, or a link."""
    target = location(p, where) / name
    if os.path.lexists(target):
        return
    kind = {"hf_a": "models", "hf_b": "models"}.get(where, where)
    if shape == "folder":
        for sub in ("report.json", ".complete", "x.whl", "triton/k.so", "snapshots/a/c.json"):
            (target / sub).parent.mkdir(parents=True, exist_ok=True)
            (target / sub).write_text("{}")
    elif shape == "copy":
        shutil.copytree(own[kind], target, symlinks=True)
    elif shape == "forged":  # the mark of toolkit's own folder, under this name
        target.mkdir()
        mark = json.loads((own[kind] / ".toolkit-entry").read_text())
        (target / ".toolkit-entry").write_text(json.dumps({**mark, "name": name}))
        (target / "report.json").write_text("{}")
    elif shape == "link_dir":  # to a copy of toolkit's folder, outside
        copy = p.outside / f"copy-{where}-{name}"
        if not copy.exists():
            shutil.copytree(own[kind], copy, symlinks=True)
        target.symlink_to(copy, target_is_directory=True)
    elif shape == "link_file":
        target.symlink_to(p.outside / "secret.txt")
    elif shape in ("pipe_mark", "deep_mark"):  # a mark no reader may block or recurse on
        target.mkdir()
        if shape == "pipe_mark":
            os.mkfifo(target / ".toolkit-entry")
        else:
            (target / ".toolkit-entry").write_text("[" * 5000)
    else:
        target.write_text("a file of the user's")


def links_inside(p: Places, own: dict[str, Path]) -> None:
    """Links in toolkit's own folders to the outside: removed, never followed."""
    for folder in own.values():
        (folder / "evil-dir").symlink_to(p.outside / "dir", target_is_directory=True)
        (folder / "evil-file").symlink_to(p.outside / "secret.txt")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plants=st.lists(st.tuples(st.sampled_from(LOCATIONS), NAMES, SHAPES), max_size=8),
    moved=st.sampled_from([None, "data", "compile", "wheels", "prepared", "models"]),
    switch_home=st.booleans(),
)
def test_prune_removes_only_what_toolkit_made(
    tmp_path, monkeypatch, capsys, plants, moved, switch_home
):
    p = use_places(Path(tempfile.mkdtemp(dir=tmp_path)), monkeypatch)
    own = make_own(p)
    links_inside(p, own)
    for where, name, shape in plants:
        plant(p, own, where, name, shape)
    if moved:  # one of toolkit's folders moved outside, a link left in its place
        away = p.outside / f"moved-{moved}"
        os.rename(own[moved], away)
        own[moved].symlink_to(away, target_is_directory=True)
        del own[moved]
    if switch_home:
        monkeypatch.setenv("HF_HOME", str(p.hf_b))
    assert listed(capsys) == {(kind, str(path)) for kind, path in own.items()}
    before = tree(p.base, toolkits_own(p, own))

    assert main(["cache", "prune", "all"]) == 0
    out = capsys.readouterr().out
    assert out.endswith(f"in {len(own)} entries\n")
    assert tree(p.base, toolkits_own(p, own)) == before, "a foreign byte changed"
    assert not any(os.path.lexists(path) for path in own.values())
    assert listed(capsys) == set()


def test_list_and_prune_what_toolkit_made(
    tmp_path, monkeypatch, capsys, tiny_model_dir, write_config
):
    from toolkit.host import hub

    p = use_places(tmp_path, monkeypatch)
    with HubStub() as stub:
        files = {q.name: q.read_bytes() for q in tiny_model_dir.iterdir() if q.is_file()}
        stub.add(REPO).commit(files)
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        pin = hub.fetch("base_model", REPO, "model", None, log=lambda _: None)
    # A repository another tool put in the same cache is not toolkit's to list or prune.
    other = p.hf_a / "hub" / "models--someone--else" / "snapshots" / "abc"
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    data = tmp_path / "chat.jsonl"
    data.write_text(DEMO_DATA.read_text())
    config = write_config(
        {"base_model": str(tiny_model_dir), "dataset_prepared_path": str(p.prepared)}
    )
    assert (
        main(["preprocess", str(config), "--runtime", "local", "--datasets.0.path", str(data)]) == 0
    )
    [key] = [q for q in p.prepared.iterdir()]
    # The user's own folders beside it, one shaped like a key folder: never listed.
    (p.prepared / "abc123").mkdir()
    (p.prepared / "abc123" / "report.json").write_text("{}")
    (p.prepared / "notes").mkdir()
    from toolkit.host import place

    compiled = place.compile_cache(IMAGE)
    (compiled / "triton" / "k.so").write_bytes(b"x" * 2048)
    foreign_compile = p.compile / "0123456789abcdef" / "triton"
    foreign_compile.mkdir(parents=True)
    (foreign_compile / "k.so").write_bytes(b"y")
    capsys.readouterr()
    assert main(["cache", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["kind"], r["name"], r["path"]) for r in rows} == {
        ("models", f"model {REPO}", str(pin.folder)),
        ("prepared", f"prepared/{key.name}", str(key)),
        ("compile", "c" * 16, str(compiled)),
    }
    model = next(r for r in rows if r["kind"] == "models")
    assert model["bytes"] >= (pin.snapshot / "model.safetensors").stat().st_size
    assert main(["cache", "prune", "models", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith(f"would remove models model {REPO} (")
    assert pin.folder.is_dir()
    assert main(["cache", "prune", "all"]) == 0
    assert not pin.folder.exists() and other.is_dir()
    assert not key.exists() and (p.prepared / "abc123" / "report.json").is_file()
    assert (p.prepared / "notes").is_dir()
    assert not compiled.exists() and (foreign_compile / "k.so").read_bytes() == b"y"
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    assert capsys.readouterr().out == "toolkit keeps nothing here yet\n"


def test_prune_models_keeps_to_the_cache_each_repo_was_fetched_into(
    tmp_path, monkeypatch, capsys, tiny_model_dir
):
    from toolkit.host import hub

    p = use_places(tmp_path, monkeypatch)
    with HubStub() as stub:
        files = {q.name: q.read_bytes() for q in tiny_model_dir.iterdir() if q.is_file()}
        stub.add(REPO).commit(files)
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        fetched = hub.fetch("base_model", REPO, "model", None, log=lambda _: None).folder
        # Another tool has the same repository in another Hugging Face cache: a copy,
        # toolkit's mark and all.
        theirs = p.hf_b / "hub" / fetched.name
        shutil.copytree(fetched, theirs, symlinks=True)
        monkeypatch.setenv("HF_HOME", str(p.hf_b))
        before = tree(p.hf_b, [])
        assert listed(capsys) == {("models", str(fetched))}
        assert main(["cache", "prune", "models"]) == 0
        assert capsys.readouterr().out.startswith(f"removed models model {REPO} (")
        assert not fetched.exists() and tree(p.hf_b, []) == before
        # Fetched again with HF_HOME at the other cache: the folder was there before
        # toolkit came, so it stays the other tool's.
        hub.fetch("base_model", REPO, "model", None, log=lambda _: None)
        assert listed(capsys) == set()
        monkeypatch.setenv("HF_HOME", str(p.hf_a))
        again = hub.fetch("base_model", REPO, "model", None, log=lambda _: None).folder
        monkeypatch.setenv("HF_HOME", str(p.hf_b))
        assert listed(capsys) == {("models", str(again))}, "forgot the one it fetched"
        assert main(["cache", "prune", "models"]) == 0
        assert not again.exists() and theirs.is_dir()
        # A fetch that fails leaves no empty folder of toolkit's in the cache.
        with pytest.raises(UsageError, match="is not a model on the Hub"):
            hub.fetch("base_model", "nobody/nothing", "model", None, log=lambda _: None)
        assert not hub.repo_folder("model", "nobody/nothing").exists()
        assert listed(capsys) == set()


def test_a_link_planted_at_or_above_an_entry_is_never_followed(tmp_path, monkeypatch, capsys):
    p = use_places(tmp_path, monkeypatch)
    own = make_own(p)
    # The data cache's folder moved elsewhere, a link left in its place: what is there is
    # reached through a link, so it is not touched (its own folder, inode and mark kept).
    os.rename(p.data, p.outside / "data-cache")
    p.data.symlink_to(p.outside / "data-cache", target_is_directory=True)
    # The prepared folder likewise, after it was recorded.
    os.rename(p.prepared, p.outside / "prepared")
    p.prepared.symlink_to(p.outside / "prepared", target_is_directory=True)
    before = tree(p.outside, [])
    assert listed(capsys) == {(k, str(own[k])) for k in ("models", "compile", "wheels")}
    assert main(["cache", "prune", "data", "prepared"]) == 0
    assert capsys.readouterr().out == "removed 0 B in 0 entries\n"
    assert tree(p.outside, []) == before


DAMAGED = [
    (b"{not json", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b"[]", "not toolkit's registry layout"),
    (b'{"version": 1, "entries": {}, "prepared": []}', "'entries' is not a list"),
    (b'{"version": 1, "entries": [], "prepared": [3]}', "'prepared' is not a list of folders"),
    (
        b'{"version": 1, "entries": [7], "prepared": []}',
        "an entry is not a mapping of kind, label, path, id, inode, hub_cache: 7",
    ),
    (
        b'{"version": 1, "entries": [{"kind": "models"}], "prepared": []}',
        "an entry is not a mapping of kind, label, path, id, inode, hub_cache: {'kind': 'models'}",
    ),
    (
        b'{"version": 1, "entries": [{"kind": "models", "label": "m", "path": "rel", "id": "1",'
        b' "inode": 3}], "prepared": []}',
        "an entry has a wrong field: {'kind': 'models', 'label': 'm', 'path': 'rel', "
        "'id': '1', 'inode': 3}",
    ),
    (b"[" * 100000, "nested more than 64 levels deep"),
    (
        b'{"version": 1, "entries": [], "prepared": [], "x": ' + b"[" * 70 + b"]" * 70 + b"}",
        "nested more than 64 levels deep",
    ),
    (
        b'{"version": 1, "entries": [], "prepared": [], "x": ' + b"9" * 5000 + b"}",
        "an integer of 5,000 digits",
    ),
    (b"\xff\xfe", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
]


def damaged_message(path: Path, why: str) -> str:
    return (
        f"error: {path} is damaged ({why}); it is toolkit's record of the cache folders it "
        f"made. Restore it from a backup, or move it away (mv {path} {path}.bad): "
        "toolkit then counts nothing made before as its own, and never removes it\n"
    )


@pytest.mark.parametrize(("body", "why"), DAMAGED)
def test_a_damaged_registry_is_exit_2_naming_it(tmp_path, monkeypatch, capsys, body, why):
    from toolkit import cache
    from toolkit.host import place

    p = use_places(tmp_path, monkeypatch)
    monkeypatch.setattr(cache, "_WARNED", set())
    compiled = place.compile_cache(IMAGE)
    p.registry.write_bytes(body)
    capsys.readouterr()
    for argv in (["cache", "list"], ["cache", "prune", "all"], ["cache", "prune", "compile"]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", damaged_message(p.registry, why))
    assert compiled.is_dir() and p.registry.read_bytes() == body
    # A run does not need the registry: it says so once, and goes on unrecorded.
    fresh = place.compile_cache("sha256:" + "d" * 64)
    again = place.compile_cache("sha256:" + "d" * 64)
    assert fresh == p.compile / ("d" * 16) and fresh.is_dir()
    assert again.parent == p.compile and again != fresh, "unrecorded: never reused"
    assert capsys.readouterr().err == run_warning(p.registry, why)
    assert p.registry.read_bytes() == body


def run_warning(path: Path, why: str) -> str:
    return (
        f"warning: {path} is damaged ({why}); it is toolkit's record of the cache folders "
        f"it made. Restore it from a backup, or move it away (mv {path} {path}.bad): "
        "toolkit then counts nothing made before as its own, and never removes it. Until "
        "then, the cache folders this run makes are not recorded: `toolkit cache` never "
        "lists or prunes them, and no later run reuses them\n"
    )


def test_a_registry_that_is_not_a_file_is_damaged_and_never_read(tmp_path, monkeypatch, capsys):
    p = use_places(tmp_path, monkeypatch)
    p.toolkit.mkdir()
    os.mkfifo(p.registry)  # reading it would block forever
    assert main(["cache", "list"]) == 2
    assert f"error: {p.registry} is damaged (" in capsys.readouterr().err
    p.registry.unlink()
    p.registry.symlink_to("/dev/zero")
    assert main(["cache", "prune", "all"]) == 2
    assert "Too many levels of symbolic links" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_registry_bytes_are_read_or_refused_never_a_traceback(body):
    from toolkit import cache

    with tempfile.TemporaryDirectory() as tmp:
        saved = os.environ.get("TOOLKIT_CACHE")
        os.environ["TOOLKIT_CACHE"] = tmp
        try:
            (Path(tmp) / "entries.json").write_bytes(body)
            try:
                found = cache.entries()
            except UsageError as exc:
                assert str(exc).startswith(f"{tmp}/entries.json is damaged (")
            else:
                assert found == []
        finally:
            if saved is None:
                del os.environ["TOOLKIT_CACHE"]
            else:
                os.environ["TOOLKIT_CACHE"] = saved


def test_foreign_folders_at_toolkits_names_are_neither_used_nor_removed(tmp_path, monkeypatch):
    import fsspec

    from toolkit import cache
    from toolkit.host import place, remote
    from toolkit.images import get_variant, wheelhouse_dir
    from toolkit.images.lock import fill_wheelhouse

    p = use_places(tmp_path, monkeypatch)
    variant = get_variant("cpu")
    # toolkit's wheelhouse of an older lock goes when a new one is filled; the user's
    # variant-named folders beside it, one at the new lock's own name, stay unused.
    old = cache.create("wheels", p.wheels / f"cpu-{'0' * 12}", f"cpu-{'0' * 12}")
    for name in (f"cpu-{'1' * 12}", wheelhouse_dir(variant).name):
        (p.wheels / name).mkdir()
        (p.wheels / name / ".complete").write_text("x")
        (p.wheels / name / "evil-1-py3-none-any.whl").write_bytes(b"not a wheel of the lock")
    before = tree(p.wheels, [old])
    fake = FakeRuntime()
    house = fill_wheelhouse(variant, fake)
    assert house.parent == p.wheels and house.name.startswith(wheelhouse_dir(variant).name + "-")
    assert [c[3] for c in fake.calls] == ["download"], "the user's folder was taken as done"
    assert not old.exists() and tree(p.wheels, [house]) == before
    assert fill_wheelhouse(variant, fake) == house and len(fake.calls) == 1

    # An image's compile cache goes beside a folder of its name that toolkit did not make.
    (p.compile / ("a" * 16) / "triton").mkdir(parents=True)
    compiled = place.compile_cache("sha256:" + "a" * 64)
    assert compiled.parent == p.compile and compiled.name.startswith("a" * 16 + "-")
    assert [q.name for q in (p.compile / ("a" * 16)).iterdir()] == ["triton"]

    # A data copy likewise: the user's folder at its key is neither read nor replaced.
    fsspec.filesystem("memory").pipe("/chats-foreign/demo.jsonl", b'{"a": 1}\n')
    first = remote.fetch("memory://chats-foreign/demo.jsonl", log=lambda _: None)
    key = first.parent.parent
    assert main(["cache", "prune", "data"]) == 0 and not key.exists()
    first.parent.mkdir(parents=True)
    (key / ".complete").write_text("")
    first.write_text("the user's")
    again = remote.fetch("memory://chats-foreign/demo.jsonl", log=lambda _: None)
    assert again.parent.parent.name.startswith(key.name + "-")
    assert again.read_bytes() == b'{"a": 1}\n' and first.read_text() == "the user's"


def test_a_damaged_hub_json_is_exit_2_a_missing_one_means_no_pins(
    tmp_path, monkeypatch, capsys, tiny_model_dir
):
    from toolkit.host import hub

    monkeypatch.delenv(hub.PINS_ENV, raising=False)
    assert hub.read_pins(tmp_path / "none") == {}
    out = tmp_path / "out"
    (out / ".toolkit").mkdir(parents=True)
    pins = out / ".toolkit" / "hub.json"
    why = {
        b"[{": "Expecting property name enclosed in double quotes: line 1 column 3 (char 2)",
        b'{"key": 1}': "not a list of pins",
        b'[{"key": "base_model"}]': "pin 0 is not a mapping of key, repo, kind, revision, "
        "commit, files",
        b'[{"key": "base_model", "repo": "Qwen/Qwen3-Tiny", "kind": "model", "revision": 3, '
        b'"commit": "abc", "files": {}}]': "pin 0: revision is 3, not a string or null",
    }
    for body, reason in why.items():
        pins.write_bytes(body)
        with pytest.raises(UsageError) as caught:
            hub.read_pins(out)
        assert str(caught.value) == (
            f"{pins} is damaged ({reason}); it holds the Hub commits this run started with. "
            "Restore it from a copy of the run, or delete it to pin each Hub input at the "
            "commit its revision names now"
        )
    # A run that pinned its commits, then lost its record: the next run of it stops
    # with exit 2 before asking the Hub, rather than training whatever main is now.
    pins.unlink()
    use_places(tmp_path / "caches", monkeypatch)
    data = tmp_path / "chat.jsonl"
    data.write_text(DEMO_DATA.read_text())
    config = tmp_path / "c.yaml"
    settings_ = {"adapter": "lora", "lora_target_linear": True, "max_steps": 1, "save_steps": 1}
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": REPO,
                "datasets": [{"path": str(data), "type": "chat_template"}],
                "output_dir": str(tmp_path / "run"),
                **settings_,
            }
        )
    )
    with HubStub() as stub:
        files = {q.name: q.read_bytes() for q in tiny_model_dir.iterdir() if q.is_file()}
        stub.add(REPO).commit(files)
        monkeypatch.setenv("HF_ENDPOINT", stub.url)
        assert main(["train", str(config), "--runtime", "local"]) == 0
        recorded = tmp_path / "run" / ".toolkit" / "hub.json"
        assert json.loads(recorded.read_text())[0]["repo"] == REPO
        recorded.write_text('[{"key": "base_model", "repo": ')
        monkeypatch.delenv(hub.PINS_ENV, raising=False)
        stub.requests.clear()
        capsys.readouterr()
        assert main(["train", str(config), "--runtime", "local", "--max-steps", "2"]) == 2
        assert capsys.readouterr().err == (
            f"error: {recorded} is damaged (Expecting value: line 1 column 32 (char 31)); "
            "it holds the Hub commits this run started with. Restore it from a copy of the "
            "run, or delete it to pin each Hub input at the commit its revision names now\n"
        )
        assert stub.requests == []


@settings(max_examples=40, deadline=None)
@given(body=st.binary(max_size=120) | st.text(max_size=120).map(str.encode))
def test_any_hub_json_bytes_are_pins_or_exit_2(body):
    from toolkit.host import hub

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / ".toolkit").mkdir()
        (Path(tmp) / ".toolkit" / "hub.json").write_bytes(body)
        try:
            pins = hub.read_pins(tmp)
        except UsageError as exc:
            assert "hub.json is damaged (" in str(exc)
        else:
            assert all(isinstance(pin, hub.Pin) for pin in pins.values())


def test_each_image_gets_its_own_compile_cache(tmp_path, monkeypatch):
    from toolkit import cache
    from toolkit.host import place

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(
        place, "host_user", lambda: f"{__import__('os').getuid()}:{__import__('os').getgid()}"
    )
    a = place.compile_cache("sha256:" + "a" * 64)
    b = place.compile_cache("sha256:" + "b" * 64)
    assert a != b and a.parent == b.parent == tmp_path / "compile"
    assert place.compile_cache("sha256:" + "a" * 64) == a, "the same image reuses its folder"
    env = cache.compile_env(a)
    assert env["TRITON_CACHE_DIR"] == str(a / "triton")
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(a / "inductor")
    assert all((a / sub).is_dir() for sub in cache.COMPILE_ENV.values())


def test_an_object_whose_key_leads_out_of_the_copy_is_refused(tmp_path, monkeypatch):
    from toolkit.errors import DataError
    from toolkit.host import remote

    p = use_places(tmp_path, monkeypatch)

    class Store:  # a store that lists an object named with "..", as S3 allows
        def isdir(self, path):
            return path == "bucket/sft"

        def info(self, path):
            return {"name": path, "size": 2, "ETag": "x"}

        def find(self, path):
            return ["bucket/sft/../../../escaped.jsonl"]

        def get_file(self, remote_path, local, callback=None):
            Path(local).write_text("{}")

    monkeypatch.setattr(remote, "_filesystem", lambda url, where: (Store(), "bucket/sft"))
    with pytest.raises(DataError, match="whose name leads outside the dataset folder"):
        remote.fetch("s3://bucket/sft", None, "datasets[0]", log=lambda _: None)
    assert not any(p.base.rglob("escaped.jsonl")) and list(p.data.iterdir()) == []


# --- hostile marks, a swap during removal, a damaged registry on a run's path -------------


def test_a_planted_mark_in_a_shared_prepared_folder_is_not_listed(tmp_path, monkeypatch, capsys):
    """dataset_prepared_path may be shared with other tools: a .toolkit-entry someone put
    there, nested 5000 deep, holding a huge number, or a pipe, is no mark of toolkit's,
    and `cache list`/`prune` neither crash, hang nor touch it."""
    from toolkit import cache

    p = use_places(tmp_path, monkeypatch)
    cache.record_prepared(p.prepared)
    bodies = {"deep": "[" * 5000, "number": '{"inode": ' + "9" * 5000 + "}"}
    for name, body in bodies.items():
        (p.prepared / ("a" * 15 + name[0])).mkdir(parents=True)
        (p.prepared / ("a" * 15 + name[0]) / ".toolkit-entry").write_text(body)
    (p.prepared / ("a" * 16)).mkdir()
    fifo = p.prepared / ("a" * 16) / ".toolkit-entry"
    os.mkfifo(fifo)
    before = tree(p.base, [p.toolkit])
    capsys.readouterr()
    assert ends(lambda: main(["cache", "list"]), fifo) == 0
    assert capsys.readouterr().out == "toolkit keeps nothing here yet\n"
    assert ends(lambda: main(["cache", "prune", "prepared"]), fifo) == 0
    assert capsys.readouterr().out == "removed 0 B in 0 entries\n"
    assert tree(p.base, [p.toolkit]) == before


@pytest.mark.parametrize("swap", ["folder", "link"])
def test_a_folder_swapped_in_after_the_check_is_never_removed(tmp_path, monkeypatch, swap):
    """The mark is checked, then someone puts their own folder (or a link to it) at the
    name: the removal acts on the folder that was checked, never on what the name holds
    now."""
    from toolkit import cache
    from toolkit.host import place

    p = use_places(tmp_path, monkeypatch)
    compiled = place.compile_cache(IMAGE)
    (compiled / "triton" / "k.so").write_bytes(b"x" * 2048)
    theirs = p.outside / "theirs"
    (theirs / "sub").mkdir(parents=True)
    (theirs / "sub" / "weights.bin").write_bytes(b"\x01" * 100)
    (theirs / cache.MARK).write_bytes((compiled / cache.MARK).read_bytes())
    checked = p.base / "checked"
    real_mark_in = cache._mark_in

    def then_swap(fd: int, want: dict):
        found = real_mark_in(fd, want)
        os.rename(compiled, checked)  # toolkit's folder, already open, moves away
        if swap == "folder":
            os.rename(theirs, compiled)
        else:
            compiled.symlink_to(theirs, target_is_directory=True)
        return found

    monkeypatch.setattr(cache, "_mark_in", then_swap)
    outside = tree(p.outside, [])
    assert cache.remove(compiled, "compile") is False
    if swap == "folder":
        assert (compiled / "sub" / "weights.bin").read_bytes() == b"\x01" * 100
    else:
        assert compiled.is_symlink() and tree(p.outside, []) == outside
    # What was checked is emptied through its descriptor; its name, now elsewhere, stays.
    assert checked.is_dir() and list(checked.iterdir()) == []


def test_a_removal_through_the_descriptor_removes_links_never_their_targets(tmp_path, monkeypatch):
    from toolkit import cache
    from toolkit.host import place

    p = use_places(tmp_path, monkeypatch)
    compiled = place.compile_cache(IMAGE)
    (compiled / "evil-dir").symlink_to(p.outside / "dir", target_is_directory=True)
    (compiled / "evil-file").symlink_to(p.outside / "secret.txt")
    os.mkfifo(compiled / "pipe")
    (compiled / "deep" / "er").mkdir(parents=True)
    (compiled / "deep" / "er" / "f").write_text("x")
    outside = tree(p.outside, [])
    assert cache.remove(compiled, "compile") is True
    assert not os.path.lexists(compiled) and tree(p.outside, []) == outside


@pytest.mark.parametrize("damage", ["not json", "pipe"])
def test_a_damaged_registry_warns_a_run_once_and_the_run_goes_on(
    tmp_path, monkeypatch, capsys, damage
):
    """Compile cache, data copy, Hub folder, prepared data: each made and used, none
    recorded (never listed, never pruned), one warning; `cache list` still exit 2."""
    import fsspec

    from toolkit import cache
    from toolkit.host import hub, place, remote

    p = use_places(tmp_path, monkeypatch)
    monkeypatch.setattr(cache, "_WARNED", set())
    p.toolkit.mkdir(parents=True)
    if damage == "pipe":
        os.mkfifo(p.registry)
        why = f"{p.registry} is a named pipe (FIFO), not a regular file"
    else:
        p.registry.write_text("{not json")
        why = "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    capsys.readouterr()

    def run_path() -> list[Path]:
        compiled = place.compile_cache(IMAGE)
        fsspec.filesystem("memory").pipe("/chats-damaged/demo.jsonl", b'{"a": 1}\n')
        copied = remote.fetch("memory://chats-damaged/demo.jsonl", log=lambda _: None)
        model = hub._claim_repo_folder("model", REPO)
        cache.record_prepared(p.prepared)
        return [compiled, copied, model]

    compiled, copied, model = ends(run_path, p.registry)
    assert compiled.is_dir() and copied.read_bytes() == b'{"a": 1}\n' and model.is_dir()
    assert capsys.readouterr().err == run_warning(p.registry, why)
    assert cache.made("compile") == [] and cache.find("data", copied.parent.parent.name) is None
    assert capsys.readouterr().err == "", "said once"
    assert ends(lambda: main(["cache", "list"]), p.registry) == 2
    assert capsys.readouterr().err == damaged_message(p.registry, why)
    assert stat.S_ISFIFO(p.registry.lstat().st_mode) or p.registry.read_text() == "{not json"


def test_a_run_lists_its_kind_without_measuring_anything(tmp_path, monkeypatch):
    """A run looks for its own folders of one kind (the wheelhouses of older locks):
    never by measuring every entry, a whole Hugging Face cache included."""
    from toolkit import cache
    from toolkit.host import place

    p = use_places(tmp_path, monkeypatch)
    compiled = place.compile_cache(IMAGE)
    wheels = cache.create("wheels", p.wheels / "cpu-000000000000", "cpu-000000000000")
    monkeypatch.setattr(cache, "_size", lambda path: pytest.fail(f"measured {path}"))
    assert [(r.label, r.path) for r in cache.made("wheels")] == [("cpu-000000000000", str(wheels))]
    assert [r.path for r in cache.made("compile")] == [str(compiled)]
    assert cache.find("compile", compiled.name) == compiled


# ---------------------------------------------------------------------------
# images (the real engine's are in test_image_cache.py; here the engine is scripted)


def image_engine(monkeypatch, current: str) -> FakeRuntime:
    """An engine with toolkit's cpu image of this source (`current`), an older one, a
    dangling builder stage, one a container uses; `cache` commands get it."""
    from toolkit.cli import common

    def image(ident, tags, created, **labels):
        labels = {"io.toolkit.variant": "cpu", **labels}
        return ImageInfo(ident, labels, tags=tuple(tags), size=1 << 30, created=created)

    listed = [
        image("sha256:" + "c" * 64, [current], "2026-12-02T02:00:00Z"),
        image("sha256:" + "o" * 64, ["toolkit:cpu-000000000000"], "2026-12-01T02:00:00Z"),
        image("sha256:" + "s" * 64, [], "2026-12-01T01:00:00Z", **{"io.toolkit.stage": "deps"}),
        image("sha256:" + "u" * 64, ["toolkit:cpu-111111111111"], "2026-12-01T03:00:00Z"),
    ]
    engine = FakeDocker(
        images={(i.tags[0] if i.tags else i.id): i for i in listed}, in_use={"sha256:" + "u" * 64}
    )
    fake = FakeRuntime(engine=engine)
    monkeypatch.setattr(common, "new_runtime", lambda: fake)
    return fake


def test_cache_list_images_names_each_with_its_state(monkeypatch, capsys):
    from toolkit.images import get_variant

    current = get_variant("cpu").tag
    fake = image_engine(monkeypatch, current)
    assert main(["cache", "list", "images"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ListImages({"io.toolkit.variant": None}) in fake.engine.calls
    assert lines == [
        f"images      1.0 GB  <untagged builder stage>  {'s' * 12}  cpu  2026-12-01 01:00:00",
        f"images      1.0 GB  toolkit:cpu-000000000000  {'o' * 12}  cpu  2026-12-01 02:00:00",
        f"images      1.0 GB  toolkit:cpu-111111111111  {'u' * 12}  cpu  2026-12-01 03:00:00"
        "  (in use)",
        f"images      1.0 GB  {current}  {'c' * 12}  cpu  2026-12-02 02:00:00  (current)",
        "total       4.0 GB",
    ]


def test_cache_prune_images_removes_the_stale_unused_ones_and_all_leaves_them(
    tmp_path, monkeypatch, capsys
):
    from toolkit.images import get_variant

    use_places(tmp_path, monkeypatch)
    fake = image_engine(monkeypatch, get_variant("cpu").tag)
    assert main(["cache", "prune", "all"]) == 0
    # The engine is shared: `all` is the folders only.
    assert fake.engine.calls == [] and fake.calls == []
    assert main(["cache", "prune", "images", "--dry-run"]) == 0
    assert fake.engine.of(Remove) == []
    capsys.readouterr()
    assert main(["cache", "prune", "images"]) == 0
    assert fake.engine.of(Remove) == [
        Remove("sha256:" + "s" * 64),
        Remove("toolkit:cpu-000000000000"),
    ]
    assert capsys.readouterr().out.splitlines() == [
        f"removed images <untagged builder stage> (1.0 GB): sha256:{'s' * 64}",
        f"removed images toolkit:cpu-000000000000 (1.0 GB): sha256:{'o' * 64}",
        "removed 2.0 GB in 2 entries",
    ]
