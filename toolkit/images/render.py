"""A variant's Dockerfile: the one template (images/Dockerfile.in) with its row filled in."""

from __future__ import annotations

from toolkit import __version__
from toolkit.images.matrix import IMAGES_DIR, Variant


def render_dockerfile(variant: Variant) -> str:
    """The variant's Dockerfile: the one template with the row's values filled in."""
    labels = {
        "io.toolkit.variant": variant.name,
        "io.toolkit.accelerator": variant.accelerator,
        "io.toolkit.torch": variant.torch,
        "io.toolkit.gpu-runtime": variant.gpu_version or "none",
        "io.toolkit.arch-list": " ".join(variant.arch_list) or "none",
        "io.toolkit.min-driver": variant.min_driver or "none",
        "io.toolkit.extensions": " ".join(f"{k}=={v}" for k, v in variant.extensions.items()),
        "io.toolkit.flash-attn": variant.flash_attn or "none",
        "io.toolkit.lock-sha256": variant.lock_sha256,
    }
    # The NVIDIA Container Toolkit reads these to expose the driver's compute libraries.
    nvidia_env = ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    cuda = variant.accelerator == "cuda"
    accel_env = "".join(f" \\\n    {e}" for e in nvidia_env) if cuda else ""
    site = f"/opt/toolkit/lib/python{variant.python}/site-packages"
    values = {
        "@VARIANT@": variant.name,
        "@BASE@": variant.base_ref,
        "@PIP_DEPS@": "--no-deps --require-hashes " if variant.lock_complete else "",
        "@ACCEL_ENV@": accel_env,
        "@VERSION@": __version__,
        "@LOCK_SHA256@": variant.lock_sha256,
        "@LABELS@": " \\\n".join(f'      {k}="{v}"' for k, v in labels.items()),
        "@PRUNE@": " ".join(f"{site}/{glob}" for glob in variant.prune),
    }
    text = (IMAGES_DIR / "Dockerfile.in").read_text()
    for key, value in values.items():
        text = text.replace(key, value)
    return text
