"""Problems as one line each: the key path, the value, what is accepted and the fix."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from toolkit.config.schema import Config

# ---------------------------------------------------------------------------
# problems


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def fields_at(loc: tuple) -> list[str]:
    """The key names accepted at the level of `loc` (for 'did you mean')."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        nested = nested_model(annotation)
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def names_at(loc: tuple) -> list[str]:
    """The names a misspelt key may have meant: toolkit's keys at its level, and
    axolotl's there (which toolkit answers even when it does not read them)."""
    from toolkit.config import inventory

    names = fields_at(loc)
    level = [p for p in loc[:-1] if not isinstance(p, int)]
    if level == []:
        names += [*inventory.axolotl_keys("top"), *inventory.axolotl_keys("plugins")]
    elif level == ["datasets"]:
        names += inventory.axolotl_keys("datasets")
    return sorted(set(names))


def nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = nested_model(arg)
        if found is not None:
            return found
    return None


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-branch labels (e.g. 'bool', "literal['auto']") from a location."""
    return tuple(p for p in loc if isinstance(p, int) or not _is_branch(p))


def _is_branch(part: str) -> bool:
    return part.startswith(("literal[", "list[", "dict[", "function-")) or part in (
        "str",
        "int",
        "bool",
        "float",
        "none",
        "MessageMapping",
        "DatasetConfig",
        "FSDPConfig",
    )


def _expected(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "literal_error":
        return str(ctx.get("expected"))
    if kind.startswith("greater_than") or kind.startswith("less_than"):
        sign = {
            "greater_than": ">",
            "greater_than_equal": "≥",
            "less_than": "<",
            "less_than_equal": "≤",
        }[kind]
        return f"a number {sign} {next(iter(ctx.values()))}"
    names = {
        "bool": "true or false",
        "int": "a whole number",
        "float": "a number",
        "string": "a string",
        "list": "a list",
        "dict": "a mapping",
        "model": "a mapping",
    }
    for prefix, words in names.items():
        if kind.startswith(prefix):
            return words
    return err["msg"][0].lower() + err["msg"][1:]


def describe_all(errors: list[dict]) -> list[str]:
    """One line per key path; union branches that all failed are merged into one line."""
    by_key: dict[str, list[dict]] = {}
    for err in errors:
        by_key.setdefault(_key_path(_clean_loc(err["loc"])), []).append(err)
    out = []
    for key, errs in by_key.items():
        first = errs[0]
        loc = _clean_loc(first["loc"])
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), names_at(loc), n=1, cutoff=0.8)
            fix = f"did you mean '{close[0]}'?" if close else "remove it or check the spelling"
            out.append(f"{key}: unknown key; {fix}")
        elif first["type"] == "missing":
            out.append(
                f"{key}: required key is missing; add it (`toolkit examples` lists configs "
                "that set it)"
            )
        elif first["type"] == "too_short":
            out.append(f"{key}: is empty; give at least one entry")
        else:
            accepted = " or ".join(dict.fromkeys(_expected(e) for e in errs))
            wanted = "one of those" if " or " in accepted else accepted
            out.append(
                f"{key}: got {show(first.get('input'))}; accepted: {accepted}; "
                f"fix: set {key.split('.')[-1]} to {wanted}"
            )
    return out
