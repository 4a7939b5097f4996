"""examples: the example configs that ship with toolkit, listed or copied here."""

from __future__ import annotations

import json
from pathlib import Path

import click

from toolkit.cli.common import json_option


def complete_examples(ctx, param, incomplete: str) -> list:
    from toolkit.examples import list_examples

    return [
        click.shell_completion.CompletionItem(e.name)
        for e in list_examples()
        if e.name.startswith(incomplete)
    ]


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...", shell_complete=complete_examples)
@json_option
def examples(names, as_json) -> int:
    """List the example configs that ship with toolkit; with NAMEs, copy those into the
    current folder (with the data files they name), never overwriting a file.

    \b
      toolkit examples                    # the list
      toolkit examples qwen3-8b-lora      # writes ./qwen3-8b-lora.yaml
      toolkit train qwen3-8b-lora.yaml"""
    from toolkit.examples import copy_examples, find, list_examples, next_steps

    if not names:
        shipped = list_examples()
        if as_json:
            rows = [{"name": e.name, "description": e.description} for e in shipped]
            print(json.dumps(rows, indent=2))
            return 0
        width = max(len(e.name) for e in shipped)
        for e in shipped:
            print(f"{e.name:<{width}}  {e.description}")
        print("\ncopy one into this folder: toolkit examples NAME")
        return 0
    written = [str(rel) for rel in copy_examples(list(names), Path.cwd())]
    if as_json:
        print(json.dumps({"written": written}, indent=2))
        return 0
    for rel in written:
        print(f"wrote {rel}")
    for name in dict.fromkeys(find(n).name for n in names):
        for line in next_steps(find(name)):
            print(f"next: {line}")
    return 0
