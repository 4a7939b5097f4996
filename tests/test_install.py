"""toolkit installed from a built wheel, outside any checkout: the light host install
(no torch) lists, selects, renders and builds images, and trains in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel built from this checkout; returns its bin folder."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(root / "dist"),
            str(REPO),
        ],
        check=True,
    )
    [wheel] = (root / "dist").glob("qwen_posttrain-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "-q", str(wheel)], check=True)
    return root / "venv" / "bin"


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
