"""toolkit installed from a built wheel, outside any checkout: the light host install
(no torch) lists, selects, renders and builds images, and trains in one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from helpers import build_wheel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from this checkout's files."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel) -> Path:
    """A fresh venv with the wheel built from this checkout; returns its bin folder."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "-q", str(wheel)], check=True)
    return root / "venv" / "bin"


# What a toolkit on sys.path computes about its images: where it runs from and each
# variant's tag, from a process of its own (the paths are fixed at import).
IDENTITY = """
import json, toolkit
from toolkit.images import matrix
print(json.dumps({
    "package": toolkit.__file__,
    "checkout": matrix.CHECKOUT,
    "files": [rel for rel, _ in matrix.source_files()],
    "tags": {name: v.tag for name, v in matrix.load_matrix().items()},
}))
"""


def identity(root: Path, cwd: Path) -> dict:
    """IDENTITY, as computed by the toolkit under `root` (a checkout or site-packages)."""
    proc = subprocess.run(
        [sys.executable, "-c", IDENTITY],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    found = json.loads(proc.stdout)
    assert found["package"] == str(root / "toolkit" / "__init__.py")  # not the dev install
    return found


def test_a_wheel_and_a_checkout_of_one_source_build_one_image(wheel, tmp_path):
    """The wheel, unpacked as pip installs it (bytecode compiled, dist-info beside), and the
    checkout it was built from compute the same tag for every variant; a changed source
    file gives every variant another tag, in a wheel and in a checkout alike."""
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(site / "toolkit")], check=True)
    assert (site / "toolkit" / "_images" / "matrix.yaml").is_file()  # not a checkout's layout

    from_wheel = identity(site, tmp_path)
    from_checkout = identity(REPO, tmp_path)
    assert (from_wheel["checkout"], from_checkout["checkout"]) == (False, True)
    assert from_wheel["files"] == from_checkout["files"]
    assert "cli/__init__.py" in from_wheel["files"] and "compat.yaml" in from_wheel["files"]
    # Neither the wheel's mapped-in data (_images/, _examples/) nor pip's bytecode.
    assert not [f for f in from_wheel["files"] if f.split("/")[0].startswith("_") and "/" in f]
    assert not [f for f in from_wheel["files"] if f.endswith(".pyc")]
    assert from_wheel["tags"] == from_checkout["tags"]
    assert all(tag.startswith(f"toolkit:{name}-") for name, tag in from_wheel["tags"].items())

    # Another checkout, at a commit where one module differs by a comment.
    other = tmp_path / "checkout"
    shutil.copytree(
        REPO / "toolkit", other / "toolkit", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "images", other / "images")
    shutil.copy(REPO / "pyproject.toml", other / "pyproject.toml")
    assert identity(other, tmp_path)["tags"] == from_checkout["tags"]  # where it lies: no matter
    with (other / "toolkit" / "doctor.py").open("a") as f:
        f.write("# another commit\n")
    changed = identity(other, tmp_path)["tags"]
    assert all(changed[v] != from_checkout["tags"][v] for v in changed)

    # The wheel of that other source: its own tags, the other checkout's.
    shutil.copy(other / "toolkit" / "doctor.py", site / "toolkit" / "doctor.py")
    assert identity(site, tmp_path)["tags"] == changed


def toolkit(bin_dir: Path, *args: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(bin_dir / "toolkit"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=900,
    )


def test_the_wheel_works_outside_a_checkout(installed, tmp_path):
    assert (
        not (installed.parent / "lib").joinpath("python3.11", "site-packages", "torch").exists()
    ), "the host stays light"
    assert toolkit(installed, "--help", cwd=tmp_path).returncode == 0
    listed = toolkit(installed, "images", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert {row["variant"] for row in json.loads(listed.stdout)} >= {"cpu", "cu130"}
    rendered = toolkit(installed, "images", "render", "cpu", cwd=tmp_path)
    from toolkit.images import get_variant, render_dockerfile

    assert rendered.stdout == render_dockerfile(get_variant("cpu"))
    assert toolkit(installed, "images", "select", cwd=tmp_path).stdout.startswith("cpu")


@pytest.mark.docker
def test_the_wheel_builds_an_image_and_trains_in_it(
    installed, tmp_path, tiny_model_dir, docker_engine, new_untagged_images_removed
):
    import shutil

    import yaml
    from conftest import DEMO_CONFIG, DEMO_DATA

    tag = "toolkit-test:from-wheel"
    # The checkout's wheelhouse, so the build needs no download; the packages are the lock's.
    env = {"TOOLKIT_CACHE": str(REPO / ".cache"), "TOOLKIT_SKIP_PREFLIGHT": "1"}
    try:
        built = toolkit(installed, "images", "build", "cpu", "--tag", tag, cwd=tmp_path, **env)
        assert built.returncode == 0, built.stderr[-2000:]
        shutil.copytree(tiny_model_dir, tmp_path / "model")
        raw = yaml.safe_load(DEMO_CONFIG.read_text())
        raw.update(
            base_model=str(tmp_path / "model"),
            output_dir=str(tmp_path / "out"),
            max_steps=2,
            save_steps=2,
            logging_steps=1,
            val_set_size=0.0,
        )
        raw["datasets"][0]["path"] = str(DEMO_DATA)
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
        trained = toolkit(
            installed, "train", "c.yaml", "--image", tag, "--json", cwd=tmp_path, **env
        )
        assert trained.returncode == 0, trained.stderr[-2000:]
        summary = json.loads(trained.stdout)  # the summary alone; the log went to stderr
        assert "step 2/2 loss" in trained.stderr
        assert summary["status"] == "trained" and summary["steps"] == 2
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


# The light install runs what it documents (issue #21): the examples ship with it, a
# shipped config that names Hub repositories validates, fetches and launches, and
# --runtime local without the trainer's stack names the extra to install.

SHIPPED = REPO / "configs"
# ShareGPT's roles, as the 8B example maps them.
SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}
NO_STACK = (
    "error: --runtime local runs the trainer in this Python environment, which lacks "
    "torch, transformers, peft, datasets, accelerate: pip install 'qwen-posttrain[train]' "
    "(or drop --runtime local to run in the toolkit image)\n"
)


def user_env(tmp_path: Path) -> dict[str, str]:
    """An installed user's folders, kept inside the test (caches, push records)."""
    return {
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
    }


def a_folder(tmp_path: Path, name: str = "here") -> Path:
    """An empty folder outside the checkout, by its real path (what the CLI prints)."""
    folder = tmp_path / name
    folder.mkdir()
    assert REPO not in folder.resolve().parents
    return folder.resolve()


def refused(rel: str, where: Path, what: str) -> str:
    return (
        f"error: {rel}: {where} already exists ({what}); toolkit examples never "
        "overwrites or writes through a link: remove or rename it, or run the command "
        "in another folder\n"
    )


def test_the_wheel_lists_its_examples_and_copies_one_here(installed, tmp_path, tiny_model_dir):
    import shutil

    names = sorted(p.stem for p in SHIPPED.glob("*.yaml"))
    here = a_folder(tmp_path)
    env = user_env(tmp_path)
    listed = toolkit(installed, "examples", cwd=here, **env)
    assert (listed.returncode, listed.stderr) == (0, "")
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines[: len(names)]] == names
    assert "qwen3-8b-lora          Qwen3-8B, LoRA SFT on a ShareGPT-style chat set." in lines
    assert lines[len(names) :] == ["", "copy one into this folder: toolkit examples NAME"]
    as_json = toolkit(installed, "examples", "--json", cwd=here, **env)
    assert [row["name"] for row in json.loads(as_json.stdout)] == names
    assert list(here.iterdir()) == []  # listing writes nothing

    copied = toolkit(installed, "examples", "qwen3-8b-lora", cwd=here, **env)
    assert (copied.returncode, copied.stderr) == (0, "")
    assert copied.stdout == (
        "wrote qwen3-8b-lora.yaml\n"
        "next: toolkit train qwen3-8b-lora.yaml && toolkit merge-lora qwen3-8b-lora.yaml\n"
    )
    assert (here / "qwen3-8b-lora.yaml").read_bytes() == (
        SHIPPED / "qwen3-8b-lora.yaml"
    ).read_bytes()
    assert sorted(p.name for p in here.iterdir()) == ["qwen3-8b-lora.yaml"]

    # The demo comes with the data it names, at the path it names, and validates here
    # unchanged once its tiny model is built where its header says.
    demo = toolkit(installed, "examples", "tiny-cpu-demo.yaml", cwd=here, **env)
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout == (
        "wrote tiny-cpu-demo.yaml\n"
        "wrote configs/data/demo-chat.jsonl\n"
        "next: toolkit tiny-model .cache/tiny-qwen3 && toolkit train tiny-cpu-demo.yaml\n"
    )
    assert (here / "configs" / "data" / "demo-chat.jsonl").read_bytes() == (
        SHIPPED / "data" / "demo-chat.jsonl"
    ).read_bytes()
    shutil.copytree(tiny_model_dir, here / ".cache" / "tiny-qwen3")
    checked = toolkit(installed, "validate", "tiny-cpu-demo.yaml", cwd=here, **env)
    assert checked.returncode == 0, checked.stderr
    assert "ModuleNotFoundError" not in checked.stderr


def test_examples_never_overwrite_nor_write_through_a_link(installed, tmp_path):
    here = a_folder(tmp_path)
    outside = a_folder(tmp_path, "outside")
    env = user_env(tmp_path)
    config = here / "qwen3-8b-lora.yaml"

    def copy(*names: str) -> subprocess.CompletedProcess:
        return toolkit(installed, "examples", *names, cwd=here, **env)

    config.write_text("mine\n")
    result = copy("qwen3-8b-lora")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == refused("qwen3-8b-lora.yaml", config, "a file")
    assert config.read_text() == "mine\n"

    # A link at the name: to a file outside, and dangling (O_EXCL would not create its
    # target either, but the refusal comes first and names it).
    config.unlink()
    victim = outside / "victim.yaml"
    victim.write_text("victim\n")
    config.symlink_to(victim)
    result = copy("qwen3-8b-lora")
    assert (result.returncode, result.stderr) == (
        2,
        refused("qwen3-8b-lora.yaml", config, "a link"),
    )
    assert victim.read_text() == "victim\n"
    config.unlink()
    config.symlink_to(outside / "new.yaml")
    assert copy("qwen3-8b-lora").returncode == 2
    assert not (outside / "new.yaml").exists()
    config.unlink()
    config.mkdir()
    assert copy("qwen3-8b-lora").stderr == refused("qwen3-8b-lora.yaml", config, "a folder")
    config.rmdir()

    # A folder on the demo's data path that is a link out of here: nothing is written,
    # not even the config, which was free.
    (here / "configs").symlink_to(outside)
    result = copy("tiny-cpu-demo")
    assert result.returncode == 2
    assert result.stderr == refused("configs/data/demo-chat.jsonl", here / "configs", "a link")
    assert sorted(p.name for p in here.iterdir()) == ["configs"]
    assert sorted(p.name for p in outside.iterdir()) == ["victim.yaml"]
    (here / "configs").unlink()

    # Other data at the demo's data path: refused, kept; the very same bytes: kept, and
    # the config is copied beside them.
    data = here / "configs" / "data" / "demo-chat.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("{}\n")
    result = copy("tiny-cpu-demo", "qwen3-8b-lora")
    assert result.stderr == refused("configs/data/demo-chat.jsonl", data, "a file")
    assert data.read_text() == "{}\n"
    assert not (here / "tiny-cpu-demo.yaml").exists()
    assert not config.exists()  # several names: all or nothing
    data.write_bytes((SHIPPED / "data" / "demo-chat.jsonl").read_bytes())
    result = copy("tiny-cpu-demo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "wrote tiny-cpu-demo.yaml"
    assert "demo-chat.jsonl" not in result.stdout

    unknown = copy("qwen3-8b-lor")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    names = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
    assert unknown.stderr == (
        f"error: no example named 'qwen3-8b-lor'; did you mean qwen3-8b-lora? the "
        f"examples are {names} (`toolkit examples` lists them)\n"
    )
    # A name is never a path: nothing outside the shipped set is read or written.
    assert copy("../outside/victim").returncode == 2


def test_the_wheel_fetches_and_launches_a_shipped_config_from_the_hub(
    installed, tmp_path, tiny_model_dir
):
    """qwen3-8b-lora.yaml unchanged, its repositories served under their own names by the
    Hub stand-in: validate, fetch and launch cloud-init run from the light install."""
    from hubstub import HubStub

    from toolkit.tiny import demo_conversations

    here = a_folder(tmp_path)
    env = user_env(tmp_path)
    rows = [
        {
            "conversations": [
                {"from": SHAREGPT[m["role"]], "value": m["content"]} for m in row["messages"]
            ]
        }
        for row in demo_conversations(32)
    ]
    with HubStub() as hub:
        files = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
        model = hub.add("Qwen/Qwen3-8B").commit(files)
        data = hub.add("mlabonne/FineTome-100k", "dataset").commit(
            {"data/train.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode()}
        )
        env["HF_ENDPOINT"] = hub.url
        assert toolkit(installed, "examples", "qwen3-8b-lora", cwd=here, **env).returncode == 0
        checked = toolkit(installed, "validate", "qwen3-8b-lora.yaml", cwd=here, **env)
        assert checked.returncode == 0, checked.stderr

        fetched = toolkit(installed, "fetch", "qwen3-8b-lora.yaml", cwd=here, **env)
        assert fetched.returncode == 0, fetched.stderr
        assert "ModuleNotFoundError" not in fetched.stderr
        pins = [(p["key"], p["repo"], p["commit"]) for p in json.loads(fetched.stdout)]
        assert pins == [
            ("base_model", "Qwen/Qwen3-8B", model),
            ("datasets.0.path", "mlabonne/FineTome-100k", data),
        ]
        snapshot = tmp_path / "hf-cache" / "models--Qwen--Qwen3-8B" / "snapshots" / model
        assert (snapshot / "model.safetensors").read_bytes() == files["model.safetensors"]

        pushed = tmp_path / "pushed.json"
        digest = "registry.example.com/team/toolkit@sha256:" + "ab" * 32
        pushed.write_text(json.dumps({"cu130": {"variant": "cu130", "image": digest}}))
        launched = toolkit(
            installed,
            *("launch", "cloud-init", "qwen3-8b-lora.yaml", "--variant", "cu130"),
            *("--outputs-url", "s3://bucket/runs/8b", "-o", "vm.yaml"),
            cwd=here,
            TOOLKIT_PUSHED=str(pushed),
            **env,
        )
        assert launched.returncode == 0, launched.stderr
        user_data = (here / "vm.yaml").read_text()
        assert model in user_data and data in user_data and digest in user_data

        # The same config with --runtime local: the extra to install, exit 1.
        local = toolkit(
            installed, "train", "qwen3-8b-lora.yaml", "--runtime", "local", cwd=here, **env
        )
        assert local.returncode == 1
        assert local.stderr.splitlines()[-1] == NO_STACK.rstrip("\n")
        assert "Traceback" not in local.stderr


def test_runtime_local_without_the_training_stack_names_the_extra(
    installed, tmp_path, tiny_model_dir
):
    import shutil

    here = a_folder(tmp_path)
    env = user_env(tmp_path)
    assert toolkit(installed, "examples", "tiny-cpu-demo", cwd=here, **env).returncode == 0
    shutil.copytree(tiny_model_dir, here / ".cache" / "tiny-qwen3")
    before = sorted(p.name for p in here.iterdir())
    for argv, extra_env in [
        (("train", "tiny-cpu-demo.yaml", "--runtime", "local"), {}),
        (("train", "tiny-cpu-demo.yaml"), {"TOOLKIT_RUNTIME": "local"}),
        (("tiny-model", "model", "--runtime", "local"), {}),
    ]:
        result = toolkit(installed, *argv, cwd=here, **env, **extra_env)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", NO_STACK), argv
    prepared = toolkit(
        installed, "preprocess", "tiny-cpu-demo.yaml", "--runtime", "local", cwd=here, **env
    )
    assert prepared.returncode == 1
    assert prepared.stderr.endswith(NO_STACK) and "Traceback" not in prepared.stderr
    assert sorted(p.name for p in here.iterdir()) == before  # no outputs/, no model/
