"""Chat templates shipped with toolkit (Jinja text, as tokenizers store them)."""

from __future__ import annotations

from importlib import resources


def template_text(name: str) -> str:
    """The Jinja source of a bundled template: 'qwen3' or 'chatml'."""
    text = resources.files(__package__).joinpath(f"{name}.jinja").read_text(encoding="utf-8")
    # A trailing newline in the file would be rendered after every conversation.
    return text.strip()
