"""`toolkit cache list | prune`: what toolkit keeps on this machine (toolkit.cache)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from toolkit.containers.seam import Docker


@click.group()
def cache() -> None:
    """What toolkit keeps on this machine (fetched models, data copies, compile caches,
    wheelhouses, images), with sizes; and freeing it."""


def _engine() -> tuple[Docker, dict[str, str]]:
    """The engine (a RuntimeFailure saying why when none answers) and each variant's
    current tag, for this toolkit's source."""
    from toolkit.cli import common
    from toolkit.images.matrix import load_matrix

    docker = common.new_runtime().docker()
    docker.require()
    return docker, {name: v.tag for name, v in load_matrix().items()}


FOLDERS = ("models", "data", "prepared", "compile", "wheels")


@cache.command("list")
@click.argument("kinds", nargs=-1, type=click.Choice([*FOLDERS, "images"]))
@click.option("--json", "as_json", is_flag=True, help="print the entries as JSON")
def list_(kinds: tuple[str, ...], as_json: bool) -> int:
    """The entries of these kinds (default: every folder kind) with their kind, size and
    folder; `images`: toolkit's images in the engine, with their tags, ID, size, creation
    time, variant, and whether each is its variant's current image or in use."""
    from toolkit.cache import entries, human, images

    chosen = set(kinds or FOLDERS)
    found = [e for e in entries() if e.kind in chosen]
    imgs = images(*_engine()) if "images" in chosen else []
    if as_json:
        rows = [
            {"kind": e.kind, "name": e.name, "path": str(e.path), "bytes": e.size} for e in found
        ]
        rows += [
            {
                "kind": "images",
                "name": e.name,
                "tags": list(e.image.tags),
                "id": e.image.id,
                "bytes": e.image.size,
                "created": e.image.created,
                "variant": e.variant,
                "current": e.current,
                "in_use": e.in_use,
            }
            for e in imgs
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not found and not imgs:
        print("toolkit keeps nothing here yet")
        return 0
    for e in found:
        print(f"{e.kind:8} {human(e.size):>9}  {e.name}  {e.path}")
    for img in imgs:
        notes = [n for n, on in (("current", img.current), ("in use", img.in_use)) if on]
        created = (img.image.created or "?")[:19].replace("T", " ")
        print(
            f"{'images':8} {human(img.image.size or 0):>9}  {img.name}  {img.image.id[7:19]}  "
            f"{img.variant}  {created}" + (f"  ({', '.join(notes)})" if notes else "")
        )
    total = sum(e.size for e in found) + sum(e.image.size or 0 for e in imgs)
    print(f"{'total':8} {human(total):>9}")
    return 0


@cache.command()
@click.argument(
    "kinds",
    nargs=-1,
    required=True,
    type=click.Choice([*FOLDERS, "images", "all"]),
)
@click.option("--dry-run", is_flag=True, help="say what would be removed, remove nothing")
def prune(kinds: tuple[str, ...], dry_run: bool) -> int:
    """Remove what toolkit made of these kinds, and nothing else: each folder holds
    toolkit's mark and is in its registry (models: the Hub repositories whose folder a
    toolkit fetch created, in whichever Hugging Face cache that was). `images` (named,
    never part of `all`: the engine is shared with whoever else uses it): those labelled
    as toolkit's that are not a variant's current image and that no container uses
    (never forced)."""
    from toolkit.cache import KINDS, human, prune_images
    from toolkit.cache import prune as remove

    chosen = list(KINDS) if "all" in kinds else [k for k in kinds if k != "images"]
    gone = [(e.kind, e.name, e.size, str(e.path)) for e in remove(chosen, dry_run)]
    if "images" in kinds:
        gone += [
            ("images", e.name, e.image.size or 0, e.image.id)
            for e in prune_images(*_engine(), dry_run)
        ]
    verb = "would remove" if dry_run else "removed"
    for kind, name, size, where in gone:
        print(f"{verb} {kind} {name} ({human(size)}): {where}")
    print(f"{verb} {human(sum(g[2] for g in gone))} in {len(gone)} entries")
    return 0
