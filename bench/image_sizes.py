"""Print the size of every toolkit image variant built on this machine.

    .venv/bin/python bench/image_sizes.py

One line per variant: its tag, and the image's size in GB (as `docker image
inspect` reports it, uncompressed) against the target, or "not built".
"""

from __future__ import annotations

from toolkit.containers.seam import Docker, Runtime
from toolkit.images import load_matrix

TARGET_GB = {"cpu": 1.5, "cuda": 6.0, "rocm": None}


def main() -> None:
    docker = Docker(Runtime())
    for variant in load_matrix().values():
        info = docker.inspect_image(variant.tag)
        target = TARGET_GB[variant.accelerator]
        goal = f"target ≤ {target} GB" if target else "no target"
        size = f"{info['Size'] / 1e9:.2f} GB" if info else "not built"
        print(f"{variant.name:<8} {variant.tag:<28} {size:<10} ({goal})")


if __name__ == "__main__":
    main()
