"""The one typed config, over axolotl's key names.

`load_config(path, overrides)` (load.py) reads YAML under limits, applies command-line
overrides, and validates everything at once: field types and ranges (the typed model,
schema.py), cross-field rules and the files the config points at (rules.py). Every
problem names its key path, the value, what is accepted and the fix (problems.py); they
are raised together as one ConfigError. Validation never changes a value. Before it,
one explicit step reads axolotl's empty values as unset and its deprecated spellings as
the current keys (axolotl.py, each with a warning); after it, `derive` records values
derived from others. Values that depend on the hardware (`bf16: auto`) are the
trainer's resolve step. explain.py prints the result for `toolkit validate`.

This package must stay importable without torch.
"""

from toolkit.config.explain import DECIDED_AT_TRAIN_TIME, dump_resolved
from toolkit.config.load import load_config, parse_overrides
from toolkit.config.schema import (
    DATA_SUFFIXES,
    DEEPSPEED_BUNDLED,
    OPTIMIZERS,
    Config,
    DatasetConfig,
    FSDPConfig,
    LoadedConfig,
    is_local_ref,
    recipe_of,
)

__all__ = [
    "DATA_SUFFIXES",
    "DECIDED_AT_TRAIN_TIME",
    "DEEPSPEED_BUNDLED",
    "OPTIMIZERS",
    "Config",
    "DatasetConfig",
    "FSDPConfig",
    "LoadedConfig",
    "dump_resolved",
    "is_local_ref",
    "load_config",
    "parse_overrides",
    "recipe_of",
]
