"""Image specs: each variant's rendered Dockerfile compared whole, linted, and the
per-vendor container flags."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from toolkit.images import load_matrix, render_dockerfile
from toolkit.launch import device_flags

GOLDEN = Path(__file__).parent / "golden"
VARIANTS = sorted(load_matrix())


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_dockerfile_matches_golden(variant):
    """Regenerate after an intended change: TOOLKIT_UPDATE_GOLDEN=1 pytest tests/test_images.py"""
    text = render_dockerfile(load_matrix()[variant])
    golden = GOLDEN / f"Dockerfile.{variant}"
    if os.environ.get("TOOLKIT_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_dockerfile_passes_hadolint(variant, tmp_path):
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is a dev dependency: make test installs it"
    path = tmp_path / "Dockerfile"
    path.write_text(render_dockerfile(load_matrix()[variant]))
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


def test_template_has_no_unfilled_placeholders():
    for variant in load_matrix().values():
        assert not re.search(r"@[A-Z_]+@", render_dockerfile(variant))


def test_cuda_images_ask_for_compute_libraries_only_there():
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in render_dockerfile(load_matrix()["cu130"])
    assert "NVIDIA_" not in render_dockerfile(load_matrix()["rocm7.2"])


def test_complete_locks_install_without_resolution():
    matrix = load_matrix()
    assert "pip install --no-deps --require-hashes ${PIP_SOURCE}" in render_dockerfile(
        matrix["cpu"]
    )
    assert "pip install ${PIP_SOURCE}" in render_dockerfile(matrix["rocm7.2"])


def _pins(variant) -> dict[str, str]:
    pins = {}
    for line in load_matrix()[variant].lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(" ")[0].split("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    return pins


def test_the_cu130_image_carries_flash_attention_4_with_one_cuda_flavour():
    """The pins of the attention kernel compat.attention picks on sm90+, and the prune that
    keeps cutlass-dsl's CUDA 13 libraries only."""
    cu130 = load_matrix()["cu130"]
    pins = _pins("cu130")
    name, version = cu130.flash_attn.split("==")
    assert pins[name] == version == cu130.extensions["flash-attn-4"]
    for needed in ("nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-cu13", "quack-kernels"):
        assert needed in pins, needed
    assert pins["nvidia-cutlass-dsl"] == cu130.extensions["nvidia-cutlass-dsl[cu13]"]
    text = render_dockerfile(cu130)
    assert "site-packages/nvidia_cutlass_dsl/cu12 " in text
    assert "_cutlass_ir.cu12.*" in text and "nvidia_cutlass_dsl/cu13" not in text
    # flash-attn 2 and 4 both ship flash_attn/cute: never both in one image.
    assert "flash-attn" not in pins


@pytest.mark.parametrize(
    "accelerator, gpus, gids, flags",
    [
        ("cpu", None, (), ["--shm-size", "1g"]),
        (
            "cuda",
            None,
            (),
            ["--gpus", "all", "--ipc=host", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864"],
        ),
        (
            "cuda",
            "0,1",
            (),
            [
                "--gpus",
                '"device=0,1"',
                "--ipc=host",
                "--ulimit",
                "memlock=-1",
                "--ulimit",
                "stack=67108864",
            ],
        ),
        (
            "rocm",
            "all",
            (44, 109),
            [
                "--device",
                "/dev/kfd",
                "--device",
                "/dev/dri",
                "--group-add",
                "44",
                "--group-add",
                "109",
                "--security-opt",
                "seccomp=unconfined",
                "--ipc=host",
            ],
        ),
        (
            "rocm",
            "1",
            (),
            [
                "--device",
                "/dev/kfd",
                "--device",
                "/dev/dri",
                "--group-add",
                "video",
                "--security-opt",
                "seccomp=unconfined",
                "--ipc=host",
                "--env",
                "HIP_VISIBLE_DEVICES=1",
            ],
        ),
    ],
)
def test_device_flags(accelerator, gpus, gids, flags):
    assert device_flags(accelerator, gpus, gids).flags() == flags
