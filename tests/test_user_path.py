"""The user's path (issue #21): the wheel installed alone in a fresh venv, run by an
ordinary member of the docker group from a folder of their own outside the checkout,
takes every shipped config unchanged, its Hub repositories served by the stand-in
under their own names, through validate, fetch, a two-step train in the cpu image,
merge-lora and inference. Only steps, batch and sequence length are overridden.

As root (CI), the commands run as USER (created, in the docker group, if missing);
otherwise as whoever runs the tests."""

from __future__ import annotations

import json
import math
import os
import pwd
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SESSION_FOLDERS
from helpers import as_user, build_wheel, python_for, someone_elses_files, tree_state

pytestmark = [pytest.mark.docker, pytest.mark.slow]

USER = "toolkit-user"
# The shipped examples, as a checkout lists them; the wheel's own list must be the same
# (test_the_wheel_ships_every_example_tested_here), so a new config is a new case.
EXAMPLES = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
# Only these overrides: the shipped values of everything else are what is tested.
SHORT = ("--max-steps", "2", "--sequence-len", "128", "--micro-batch-size")
# A Qwen3-MoE is named like Qwen3-30B-A3B: total, then active parameters.
MOE_NAME = re.compile(r"-A\d+(\.\d+)?B\b")


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    """Who runs the commands: USER (a docker-group member) when root, else ourselves."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid())
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-G", "docker", USER], check=True)
    groups = subprocess.run(["id", "-nG", USER], capture_output=True, text=True, check=True)
    assert "docker" in groups.stdout.split(), f"{USER} is not in the docker group: {groups}"
    return pwd.getpwnam(USER)


@pytest.fixture(scope="module")
def home(user) -> Path:
    """A folder of the user's own (0755, so root's venv-building and reading work), outside
    the checkout: the venv, the user's caches and each case's working folder lie in it."""
    root = Path(tempfile.mkdtemp(prefix="toolkit-user-path-")).resolve()
    SESSION_FOLDERS.append(root)  # its containers are this session's
    root.chmod(0o755)
    os.chown(root, user.pw_uid, user.pw_gid)
    assert REPO not in root.parents
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def venv(home, user, image) -> Path:
    """The wheel built from this checkout, installed alone into a fresh venv; its bin/.
    Its cpu tag is the image the checkout built (one build per source): a wheel that
    computed another would build its own in the first case, for minutes."""
    wheel = build_wheel(home)
    subprocess.run([python_for(user), "-m", "venv", str(home / "venv")], check=True)
    pip = [str(home / "venv" / "bin" / "pip"), "install", "-q", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    bin_dir = home / "venv" / "bin"
    listed = as_user(user, [str(bin_dir / "toolkit"), "images", "list", "--json"], home, {})
    tags = {row["variant"]: row["tag"] for row in json.loads(listed.stdout)}
    assert tags["cpu"] == image, "the checkout changed between the image build and the wheel"
    return bin_dir


def test_the_wheel_ships_every_example_tested_here(venv, user, home):
    env = {"HOME": str(home), "PATH": f"{venv}:/usr/bin:/bin"}
    listed = as_user(user, ["toolkit", "examples", "--json"], home, env)
    assert listed.returncode == 0, listed.stderr
    assert [row["name"] for row in json.loads(listed.stdout)] == EXAMPLES


# Rows in the shape each dataset `type` reads, with the config's own field names.


def _turns(n: int) -> list[list[dict]]:
    from toolkit.tiny import demo_conversations

    return [row["messages"] for row in demo_conversations(n)]


def _as_source(messages: list[dict], ds: dict) -> list[dict]:
    """Canonical messages in the dataset's source form: its role names and fields."""
    mapping = {"role": "role", "content": "content", **ds.get("message_property_mappings", {})}
    roles = {role: names[0] for role, names in (ds.get("roles") or {}).items()}
    return [
        {mapping["role"]: roles.get(m["role"], m["role"]), mapping["content"]: m["content"]}
        for m in messages
    ]


def _sft(ds: dict, n: int) -> list[dict]:
    return [{ds.get("field_messages", "messages"): _as_source(t, ds)} for t in _turns(n)]


def _pairs(ds: dict, n: int) -> list[dict]:
    from toolkit.tiny import demo_preferences

    return [
        {
            ds.get("field_messages", "messages"): _as_source(row["messages"], ds),
            ds.get("field_chosen", "chosen"): row["chosen"],
            ds.get("field_rejected", "rejected"): row["rejected"],
        }
        for row in demo_preferences(n)
    ]


def _bradley_terry(ds: dict, n: int) -> list[dict]:
    from toolkit.tiny import demo_preferences

    return [
        {"system": "You answer briefly.", "input": row["messages"][0]["content"]}
        | {"chosen": row["chosen"], "rejected": row["rejected"]}
        for row in demo_preferences(n)
    ]


def _kto(ds: dict, n: int) -> list[dict]:
    from toolkit.tiny import demo_preferences

    return [
        {
            "prompt": row["messages"],
            "completion": [
                {"role": "assistant", "content": row["rejected" if i % 2 else "chosen"]}
            ],
            "label": i % 2 == 0,
        }
        for i, row in enumerate(demo_preferences(n))
    ]


def _stepwise(ds: dict, n: int) -> list[dict]:
    from toolkit.tiny import demo_stepwise

    return demo_stepwise(n)


ROWS = {
    "chat_template": _sft,
    "chat_template.default": _pairs,
    "bradley_terry.chat_template": _bradley_terry,
    "kto": _kto,
    "stepwise_supervised": _stepwise,
}


def _hub_name(name: str, here: Path) -> bool:
    """A Hub repository id, as opposed to a local path (relative to the config's folder)."""
    return re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", name) is not None and not (here / name).exists()


def serve(hub, raw: dict, here: Path, tiny: Path, tiny_moe: Path) -> list[tuple[str, str, str]]:
    """Every Hub repository `raw` names, committed to `hub` under that name; the pins
    fetch should print, as (key, repo, commit)."""

    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    pins = []
    if _hub_name(raw["base_model"], here):
        model = tiny_moe if MOE_NAME.search(raw["base_model"]) else tiny
        sha = hub.add(raw["base_model"]).commit(files(model))
        pins.append(("base_model", raw["base_model"], sha))
    for i, ds in enumerate(raw["datasets"]):
        if not _hub_name(ds["path"], here):
            continue
        kind = ds["type"]
        assert kind in ROWS, f"no rows for dataset type {kind!r}: add a builder to ROWS"
        rows = ROWS[kind](ds, 32)
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        sha = hub.add(ds["path"], "dataset").commit({"data/train.jsonl": data})
        pins.append((f"datasets.{i}.path", ds["path"], sha))
    return pins


@pytest.fixture(scope="module")
def tiny_moe_dir(tmp_path_factory) -> Path:
    from toolkit.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen3-moe", moe=True)


def _next_steps(copied: str) -> list[list[str]]:
    """The commands `toolkit examples` says to run before train (tiny-model for the demo)."""
    [line] = [line for line in copied.splitlines() if line.startswith("next: ")]
    steps = [shlex.split(part) for part in line.removeprefix("next: ").split("&&")]
    return [s for s in steps if s[1] not in ("train", "merge-lora")]


@pytest.mark.parametrize("name", EXAMPLES)
def test_a_shipped_config_runs_unchanged_for_a_user(
    name, venv, user, home, image, tiny_model_dir, tiny_moe_dir
):
    from hubstub import HubStub

    here = home / name
    here.mkdir()
    someone_elses_files(here)
    elsewhere = home / f"{name}-elsewhere"
    (elsewhere / "kept").mkdir(parents=True)
    (elsewhere / "kept" / "notes.txt").write_text("not toolkit's\n")
    (here / "link").symlink_to(elsewhere / "kept")
    for path in [here, *here.rglob("*"), elsewhere, *elsewhere.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    theirs = [here / "outside", here / "link", elsewhere]
    before = tree_state(*theirs, mtimes=True)

    env = {
        "HOME": str(home / f"{name}-home"),
        "PATH": f"{venv}:/usr/local/bin:/usr/bin:/bin",
        "XDG_CACHE_HOME": str(home / f"{name}-home" / ".cache"),
    }
    (home / f"{name}-home").mkdir()
    os.chown(home / f"{name}-home", user.pw_uid, user.pw_gid)

    def toolkit(*args: str) -> subprocess.CompletedProcess:
        return as_user(user, ["toolkit", *args], here, env)

    copied = toolkit("examples", name)
    assert copied.returncode == 0, copied.stderr
    config = f"{name}.yaml"
    assert (here / config).read_bytes() == (REPO / "configs" / config).read_bytes()
    for step in _next_steps(copied.stdout):
        done = toolkit(*step[1:])
        assert done.returncode == 0, (step, done.stderr[-3000:])
    raw = yaml.safe_load((here / config).read_text())

    with HubStub() as hub:
        env["HF_ENDPOINT"] = hub.url
        pins = serve(hub, raw, here, tiny_model_dir, tiny_moe_dir)

        checked = toolkit("validate", config)
        assert checked.returncode == 0, checked.stderr[-3000:]
        fetched = toolkit("fetch", config)
        assert fetched.returncode == 0, fetched.stderr[-3000:]
        assert [(p["key"], p["repo"], p["commit"]) for p in json.loads(fetched.stdout)] == pins

        def offline(command: str) -> None:
            """After fetch, the commands read the caches alone: no request reached the Hub."""
            asked, hub.requests[:] = list(hub.requests), []
            assert asked == [], f"{command} asked the Hub: {asked}"

        hub.requests.clear()  # validate and fetch ask the Hub, as documented
        # KTO's KL term needs two rows in a batch (TRL refuses one).
        trained = toolkit("train", config, *SHORT, "2" if raw.get("rl") == "kto" else "1")
        assert trained.returncode == 0, trained.stderr[-3000:]
        # A first train resolves each revision to a commit (docs/data.md); the files
        # come from fetch's cache.
        assert hub.downloads() == [], f"train downloaded {hub.downloads()}"
        hub.requests.clear()
        out = here / raw["output_dir"]
        run = json.loads((out / "run.json").read_text())
        assert run["environment"]["image"] == image
        assert run["status"] == "complete" and math.isfinite(run["final_loss"]), run

        merged = toolkit("merge-lora", config)
        assert merged.returncode == 0, merged.stderr[-3000:]
        offline("merge-lora")
        if raw.get("adapter"):
            assert (out / "merged" / "model.safetensors").is_file(), merged.stdout
        else:
            assert merged.stdout.startswith("nothing to merge: "), merged.stdout

        if not (raw.get("reward_model") or raw.get("process_reward_model")):
            answered = toolkit("inference", config, "--prompt", "hi", "--max-new-tokens", "4")
            assert answered.returncode == 0, answered.stderr[-3000:]
            offline("inference")

    for path in [here, *here.rglob("*")]:
        if not {here / "outside", here / "link"} & {path, *path.parents}:
            assert path.lstat().st_uid == user.pw_uid, path
    assert tree_state(*theirs, mtimes=True) == before
