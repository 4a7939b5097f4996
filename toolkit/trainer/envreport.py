"""Run inside an image by `toolkit images verify`: print what is installed, as JSON.

python -m toolkit.trainer.envreport
"""

from __future__ import annotations

import importlib
import json
from importlib import metadata

# What the trainer imports; each must import cleanly in every image.
TRAINER_MODULES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "bitsandbytes",
    "toolkit.trainer.sft",
    "toolkit.merge",
)


def report() -> dict:
    dists = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    imports = {}
    for name in TRAINER_MODULES:
        try:
            importlib.import_module(name)
            imports[name] = "ok"
        except Exception as exc:  # report every failure, whatever its type
            imports[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    torch_info = {}
    if imports.get("torch") == "ok":
        import torch

        torch_info = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "hip": getattr(torch.version, "hip", None),
            "arch_list": torch.cuda.get_arch_list() if torch.cuda.is_available() else [],
        }
    return {"distributions": dists, "imports": imports, "torch": torch_info}


if __name__ == "__main__":
    print(json.dumps(report()))
