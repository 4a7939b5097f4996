"""Every key of axolotl's config schema, and what toolkit does with each: the data in
axolotl_keys.yaml, read here.

Regenerate the key lists from a newer axolotl with `make axolotl-keys` (it runs
`python -m toolkit.config.inventory DIR`, DIR holding the axolotl package): keys axolotl
still has keep their class, new ones arrive as class `new` (tests/test_axolotl_keys.py
fails until each is classified) and dropped ones are removed.

Classes:
    honoured  a key of toolkit's schema, read with axolotl's meaning
    mapped    read as toolkit's key named in `as`, with a warning
    ignored   accepted with a warning saying why (it cannot change what is trained
              here: trackers we do not run, axolotl's own switches, other models)
    speed     accepted; a speed or memory setting that does not change what is trained,
              not applied yet (a warning says so)
    hardware  accepted; a run that sets it needs several GPUs or GPU kernels, checked
              when the run starts (refused there, with the reason)
    refused   any value but off (null, false, empty, 1 for a size) or one listed in the
              entry's `accepts` is refused at validation with why and what to do instead
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

FILE = "axolotl_keys.yaml"
CLASSES = ("honoured", "mapped", "ignored", "speed", "hardware", "refused")
SECTIONS = ("top", "datasets", "plugins")


@cache
def inventory() -> dict[str, Any]:
    """The data file: {axolotl: version, top|datasets|plugins: {key: {class, why, ...}}}."""
    text = resources.files(__package__).joinpath(FILE).read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # noqa: S506 (a safe loader, C or Python)


def entries(section: str, kind: str) -> dict[str, dict]:
    """The keys of one section (top, datasets, plugins) in one class."""
    return {k: v for k, v in inventory()[section].items() if v["class"] == kind}


def axolotl_keys(section: str) -> set[str]:
    return set(inventory()[section])


def is_plugin(path: str) -> bool:
    """Whether `path` names one of axolotl's plugin classes, by its package
    (axolotl.integrations.liger.LigerPlugin) or its module (….liger.plugin.LigerPlugin)."""
    parts = path.split(".")
    known = set(inventory()["plugin_classes"])
    return path in known or (len(parts) == 5 and ".".join([*parts[:3], parts[4]]) in known)


# ---------------------------------------------------------------------------
# regeneration (make axolotl-keys)


def read_axolotl(root: Path) -> dict[str, set[str]]:
    """The key names of axolotl's schema under `root`: top-level (field names and the
    aliases users write), per-dataset, and its plugins' keys (read from their source,
    so no plugin's dependencies are needed)."""
    sys.path.insert(0, str(root))
    from axolotl.utils.schemas import datasets as ds_schemas
    from axolotl.utils.schemas.config import AxolotlInputConfig

    top = set()
    for name, info in AxolotlInputConfig.model_fields.items():
        top.add(name)
        if info.alias:
            top.add(info.alias)
    per_dataset = set()
    for model in (
        ds_schemas.SFTDataset,
        ds_schemas.DPODataset,
        ds_schemas.KTODataset,
        ds_schemas.StepwiseSupervisedDataset,
    ):
        per_dataset |= set(model.model_fields)
    plugins: set[str] = set()
    for args in sorted((root / "axolotl" / "integrations").glob("*/args.py")):
        classes = [n for n in ast.parse(args.read_text()).body if isinstance(n, ast.ClassDef)]
        # A class another one uses as a field's type is a nested block, not top-level keys.
        nested = {
            name.id
            for c in classes
            for s in c.body
            if isinstance(s, ast.AnnAssign)
            for name in ast.walk(s.annotation)
            if isinstance(name, ast.Name)
        }
        for node in classes:
            if node.name.endswith("Args") and node.name not in nested:
                plugins |= {
                    s.target.id
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                }
    plugin_classes: set[str] = set()
    for source in sorted((root / "axolotl" / "integrations").glob("*/*.py")):
        for stmt in ast.parse(source.read_text()).body:
            if isinstance(stmt, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id == "BasePlugin" for b in stmt.bases
            ):
                plugin_classes.add(f"axolotl.integrations.{source.parent.name}.{stmt.name}")
    return {
        "top": top,
        "datasets": per_dataset,
        "plugins": plugins - top,
        "plugin_classes": plugin_classes,
    }


def regenerate(root: Path, old: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    found = read_axolotl(root)
    out: dict[str, Any] = {"axolotl": version("axolotl")}
    for section in SECTIONS:
        known = old.get(section) or {}
        out[section] = {key: known.get(key, {"class": "new"}) for key in sorted(found[section])}
    out["plugin_classes"] = sorted(found["plugin_classes"])
    return out


HEADER = """\
# Every key of axolotl's config schema and what toolkit does with it (classes are
# explained in toolkit/config/inventory.py). The key lists are generated from axolotl
# itself: `make axolotl-keys`; the classes and reasons are written by hand and kept.
"""


def dump(data: dict[str, Any]) -> str:
    """The data file's text: one line per key, so a diff shows each change."""
    lines = [HEADER.rstrip("\n"), f"axolotl: {data['axolotl']}"]
    for section in SECTIONS:
        lines.append(f"{section}:")
        for key, entry in data[section].items():
            flow = yaml.safe_dump(entry, default_flow_style=True, width=1 << 20, allow_unicode=True)
            lines.append(f"  {key}: {flow.strip()}")
    lines.append("# axolotl's plugin classes, as configs list them under `plugins:`.")
    lines.append("plugin_classes:")
    lines += [f"  - {name}" for name in data["plugin_classes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    target = Path(__file__).with_name(FILE)
    old = yaml.safe_load(target.read_text()) if target.exists() else {}
    data = regenerate(root, old)
    target.write_text(dump(data))
    new = [f"{s}.{k}" for s in SECTIONS for k, v in data[s].items() if v["class"] == "new"]
    print(
        f"{target}: axolotl {data['axolotl']}, "
        + ", ".join(f"{len(data[s])} {s} keys" for s in SECTIONS)
        + (f"; {len(new)} new, to classify: {' '.join(new)}" if new else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
