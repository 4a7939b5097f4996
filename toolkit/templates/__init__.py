"""Chat templates shipped with toolkit (Jinja text, as tokenizers store them)."""

from __future__ import annotations

from importlib import resources
from typing import Any


def template_text(name: str) -> str:
    """The Jinja source of a bundled template (one of BUNDLED)."""
    text = resources.files(__package__).joinpath(f"{name}.jinja").read_text(encoding="utf-8")
    # A trailing newline in the file would be rendered after every conversation.
    return text.strip()


BUNDLED = ("qwen3", "qwen_25", "qwen3_5", "chatml")


def plain_renderer(template: str) -> Any:
    """A render function for one of toolkit's own templates, or None for any other.

    transformers renders every template in jinja's sandbox, which checks each
    attribute access: right for templates that come with a downloaded tokenizer, and
    most of the cost of preprocessing. Ours ship inside this package, so they are
    compiled without the sandbox, with the same options, filters and globals
    (tests/test_chat.py checks both renderings are equal).
    """
    if template not in (template_text(name) for name in BUNDLED):
        return None
    import jinja2
    import jinja2.ext
    from transformers.utils.chat_template_utils import _compile_jinja_template

    sandboxed = _compile_jinja_template(template).environment
    # Chat text, not HTML: escaping would change the tokens (the same as transformers').
    env = jinja2.Environment(  # noqa: S701
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
    )
    env.filters.update(sandboxed.filters)
    env.globals.update(sandboxed.globals)
    return env.from_string(template).render
