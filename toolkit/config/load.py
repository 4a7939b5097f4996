"""The one entry point: read YAML under limits, apply command-line overrides, map
axolotl's spellings, validate everything at once, and record where each value came from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from toolkit.config.axolotl import LORA_KEYS, OFF_VALUES, drop_nulls, map_deprecated, triage
from toolkit.config.problems import describe_all, nested_model, show
from toolkit.config.rules import (
    context_warnings,
    cross_field_problems,
    open_regular,
    path_problems,
    special_kind,
)
from toolkit.config.schema import Config, DatasetConfig, LoadedConfig
from toolkit.errors import ConfigError

# ---------------------------------------------------------------------------
# loading


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Read, override and validate a config; raise ConfigError listing every problem."""
    path = Path(path)
    raw = _read_yaml(path)
    overrides = overrides or {}
    sources = {key: "file" for key in raw}
    problems: list[str] = []
    for dotted, value in overrides.items():
        try:
            _set_dotted(raw, dotted, value)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            problems.append(
                f"--{dotted.replace('_', '-')}: cannot override ({exc}); "
                "use a top-level key or a path like datasets.0.path"
            )
            continue
        sources[dotted.split(".")[0]] = "command line"

    # Nothing past here could show such a number (str() of one raises): stop first.
    oversized = oversized_problems(raw)
    if oversized:
        problems += oversized
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{path}: {len(problems)} {noun}", problems)

    # An empty YAML value means "not set", as in axolotl: the default applies.
    raw = expand_home(drop_nulls(raw))
    for key in [k for k, v in sources.items() if k not in raw]:
        del sources[key]
    raw, mapped = map_deprecated(raw, sources)
    # axolotl's keys toolkit does not read are warned about, refused, or kept for the
    # hardware check (toolkit/config/axolotl_keys.yaml); the rest are validated.
    sorted_ = triage(raw, set(Config.model_fields), set(DatasetConfig.model_fields))
    problems += sorted_.problems
    known = sorted_.known
    config = None
    try:
        config = Config.model_validate(known)
    except ValidationError as exc:
        problems += describe_all([dict(e) for e in exc.errors()])
    problems += cross_field_problems(raw)
    problems += path_problems(known)
    if problems or config is None:
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"{path}: {len(problems)} {noun}", problems)
    for name in Config.model_fields:
        sources.setdefault(name, "default")
    warnings = mapped + sorted_.warnings + context_warnings(config)
    if raw.get("hub_strategy") not in (None, "end"):
        warnings.append(
            f"hub_strategy: {raw['hub_strategy']!r}: toolkit pushes once, when the run "
            "completes (checkpoints stay in output_dir)"
        )
    if not config.uses_lora:
        warnings += [
            f"{key}: set to {show(raw[key])} but adapter is {show(raw.get('adapter'))}"
            ", so there is no LoRA and it has no effect; set adapter: lora (or qlora) "
            "to train an adapter, or remove the key"
            for key in LORA_KEYS
            if key in raw and raw[key] not in OFF_VALUES
        ]
    derive(config, sources)
    return LoadedConfig(
        config=config, path=path, sources=sources, warnings=warnings, hardware=sorted_.hardware
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass the YAML config file inside it")
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist; pass the path of a YAML config (`toolkit examples` "
            "lists the shipped ones and copies one here)"
        )
    kind = special_kind(path)
    if kind is not None:
        raise ConfigError(
            f"{path} is {kind}, not a regular file; toolkit reads a config only from a "
            "regular file, as a pipe or device can block or never end: save the config "
            "in a file and pass its path"
        )
    # At most one byte past the limit is read, whatever the file's size says.
    with open_regular(path, str(path), ConfigError) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path} is {max(size, len(data)):,} bytes; a config is at most "
            f"{MAX_CONFIG_BYTES:,}: is it the right file?"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    try:
        raw = bounded_yaml(text, path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{path} is not valid YAML{where}: {problem}; fix the syntax "
            "(indentation, a missing ':' or an unclosed quote)"
        ) from None
    if raw is None:
        raise ConfigError(
            f"{path} is empty; start from an example: `toolkit examples` lists them, "
            "`toolkit examples NAME` copies one here"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path} must be a YAML mapping of keys to values, "
            f"got a {type(raw).__name__}; start from an example (`toolkit examples NAME` "
            "copies one here)"
        )
    return raw


# Limits on what a config may make the parser build: real configs are a few kilobytes, a
# few levels deep, with a handful of anchors. Beyond them YAML aliases can expand
# exponentially ("billion laughs") and deep nesting exhausts the stack.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000


# Integers fit in 64 bits: every count, size and seed toolkit passes on is an int64 (or
# smaller) in PyTorch, NumPy or Arrow. A numeral longer than any such integer is refused
# by its length, never converted: int() of n digits takes time quadratic in n, and
# YAML's hexadecimal and base-60 forms have no digit limit at all.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_INT_CHARS = 80


class Oversized:
    """An integer too large to use, kept as the text that wrote it so the error can
    show it; load_config refuses any that reaches it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def shown(self) -> str:
        text = self.text
        short = text if len(text) <= 24 else f"{text[:10]}…{text[-10:]}"
        return f"{short} ({len(text):,} characters)" if len(text) > 24 else short

    def __repr__(self) -> str:
        return self.shown()


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose integers beyond 64 bits load as Oversized."""


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | Oversized:
    if len(node.value) <= MAX_INT_CHARS:
        value = loader.construct_yaml_int(node)
        if INT_MIN <= value <= INT_MAX:
            return value
    return Oversized(node.value)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)


def oversized_problems(raw: Any, where: str = "") -> list[str]:
    """One problem per Oversized integer in a loaded config, by key path."""
    if isinstance(raw, dict):
        items = [(f"{where}.{k}" if where else f"{k}", k, v) for k, v in raw.items()]
    elif isinstance(raw, list):
        items = [(f"{where}[{i}]", i, v) for i, v in enumerate(raw)]
    else:
        return []
    out = []
    for path, key, value in items:
        if isinstance(key, Oversized):
            out.append(f"{path}: a key that is the number {key.shown()}; keys are names")
        if isinstance(value, Oversized):
            out.append(
                f"{path}: got {value.shown()}, beyond any setting's range; accepted: an "
                f"integer from {INT_MIN} to {INT_MAX}; fix: set {path} to a number in range"
            )
        else:
            out += oversized_problems(value, path)
    return out


def bounded_yaml(text: str, path: Path) -> Any:
    """safe_load with limits: nesting depth checked on the event stream (which builds
    nothing), integers beyond 64 bits loaded as Oversized (never converted), then the
    loaded document's size counted as if every alias were expanded (each shared node
    counted once per use, without expanding it)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise ConfigError(
                    f"{path}: nested more than {MAX_DEPTH} levels deep (line "
                    f"{mark.line + 1}); a config is a few levels deep: "
                    "flatten it"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    raw = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
    sizes: dict[int, int] = {}

    def expanded(node: Any, open_: frozenset[int]) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in open_:
            raise ConfigError(
                f"{path}: an alias refers to itself (a recursive anchor); write the value out"
            )
        if key not in sizes:
            children = node.values() if isinstance(node, dict) else node
            total = 1
            for child in children:
                total += expanded(child, open_ | {key})
                if total > MAX_NODES:
                    break
            sizes[key] = total
        return sizes[key]

    if expanded(raw, frozenset()) > MAX_NODES:
        raise ConfigError(
            f"{path}: its aliases expand to more than {MAX_NODES:,} values "
            "(a YAML alias bomb?); write the config without nested aliases"
        )
    return raw


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--micro-batch-size 2 --datasets.0.path x` → {"micro_batch_size": 2, ...}.

    Values are parsed as YAML scalars (so `2` is an int, `true` a bool), except that
    a lone `~` is the home folder, as in the shell, and an empty value is an error
    rather than YAML's null. A flag without a value means true, as in axolotl, for a
    key that is true or false (`--sample-packing`); any other key needs its value
    (`--learning-rate` alone is an error, not 1.0).
    """
    out: dict[str, Any] = {}
    problems: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(
                f"unexpected argument {arg!r}; overrides look like --key value "
                "(e.g. --micro-batch-size 2)"
            )
        name = arg[2:]
        value: Any
        text: str | None = None
        if "=" in name:
            name, text = name.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            text = args[i + 1]
            i += 1
        if text is not None and not text.strip():
            # YAML reads "" as null: the key would silently fall back to its default.
            problems.append(
                f"--{name}: the value is empty; give one (--{name} VALUE), or leave "
                f"--{name} out to keep the config's value"
            )
            i += 1
            continue
        if text is not None:
            # A lone ~ is the home folder, as in the shell, not YAML's null.
            value = "~" if text.strip() == "~" else _yaml_scalar(text)
        elif _is_switch(name.replace("-", "_")):
            value = True
        else:
            problems.append(
                f"{arg}: needs a value (e.g. {arg} VALUE); only true/false keys may stand alone"
            )
            i += 1
            continue
        out[name.replace("-", "_")] = value
        i += 1
    if problems:
        raise ConfigError(
            "command line: " + ("1 problem" if len(problems) == 1 else f"{len(problems)} problems"),
            problems,
        )
    return out


def _is_switch(dotted: str) -> bool:
    """Whether the key a dotted override names holds true or false (a bare flag sets it)."""
    model: type[BaseModel] = Config
    parts = [p for p in dotted.split(".") if not p.isdigit()]
    for part in parts[:-1]:
        field_info = model.model_fields.get(part)
        nested = nested_model(field_info.annotation) if field_info else None
        if nested is None:
            return False
        model = nested
    field_info = model.model_fields.get(parts[-1]) if parts else None
    if field_info is None:
        return True  # an unknown key: validation names it, with "did you mean"
    return "bool" in str(field_info.annotation)


# Where a run writes: used as paths by many modules, so `~` is resolved once, here.
WRITE_KEYS = ("output_dir", "dataset_prepared_path")


def expand_home(raw: dict) -> dict:
    """`~` and `~user` at the start of the folders a run writes, expanded (as the shell
    would have); every other value is left as written."""
    return {
        k: os.path.expanduser(v) if k in WRITE_KEYS and isinstance(v, str) else v
        for k, v in raw.items()
    }


def derive(config: Config | None, sources: dict[str, str]) -> None:
    """Record values derived from others (the explicit resolve step, not a validator)."""
    if config is not None and config.batch_size is not None:
        sources["gradient_accumulation_steps"] = (
            f"derived: batch_size {config.batch_size} / micro_batch_size {config.micro_batch_size}"
        )


def _yaml_scalar(text: str) -> Any:
    """A command-line value read as YAML, under the same limits as a config file."""
    try:
        return bounded_yaml(text, Path("a command-line value"))
    except yaml.YAMLError:
        return text


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
