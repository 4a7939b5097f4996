"""`toolkit cache list | prune`: what toolkit keeps on this machine (toolkit.cache)."""

from __future__ import annotations

import json

import click


@click.group()
def cache() -> None:
    """What toolkit keeps on this machine (fetched models, data copies, compile caches,
    wheelhouses), with sizes; and freeing it."""


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the entries as JSON")
def list_(as_json: bool) -> int:
    """Every entry with its kind, size and folder."""
    from toolkit.cache import entries, human

    found = entries()
    if as_json:
        rows = [
            {"kind": e.kind, "name": e.name, "path": str(e.path), "bytes": e.size} for e in found
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not found:
        print("toolkit keeps nothing here yet")
        return 0
    for e in found:
        print(f"{e.kind:8} {human(e.size):>9}  {e.name}  {e.path}")
    print(f"{'total':8} {human(sum(e.size for e in found)):>9}")
    return 0


@cache.command()
@click.argument(
    "kinds",
    nargs=-1,
    required=True,
    type=click.Choice(["models", "data", "prepared", "compile", "wheels", "all"]),
)
@click.option("--dry-run", is_flag=True, help="say what would be removed, remove nothing")
def prune(kinds: tuple[str, ...], dry_run: bool) -> int:
    """Remove what toolkit made of these kinds, and nothing else: each folder holds
    toolkit's mark and is in its registry (models: the Hub repositories whose folder a
    toolkit fetch created, in whichever Hugging Face cache that was)."""
    from toolkit.cache import KINDS, human
    from toolkit.cache import prune as remove

    chosen = list(KINDS) if "all" in kinds else list(kinds)
    gone = remove(chosen, dry_run)
    verb = "would remove" if dry_run else "removed"
    for e in gone:
        print(f"{verb} {e.kind} {e.name} ({human(e.size)}): {e.path}")
    print(f"{verb} {human(sum(e.size for e in gone))} in {len(gone)} entries")
    return 0
