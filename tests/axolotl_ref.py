"""axolotl's own chat-template tokenization, for tests that compare with it.

`make` installs axolotl (without its dependencies) into .venv/axolotl-<version>; its
chat-template strategy needs only the trainer's stack. Nothing here is used by
toolkit itself."""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

VERSION = "0.19.0"
ROOT = Path(__file__).resolve().parent.parent / ".venv" / f"axolotl-{VERSION}"


def strategy_loader():
    if not (ROOT / "axolotl").is_dir():
        raise RuntimeError(f"axolotl {VERSION} is not in {ROOT}; run `make .venv/.dev`")
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    logging.getLogger("axolotl").setLevel(logging.ERROR)
    from axolotl.prompt_strategies.chat_template import StrategyLoader

    return StrategyLoader()


def axolotl_encode(tokenizer, top: dict, ds: dict, row: dict) -> tuple[list[int], list[int]]:
    """Input ids and labels axolotl gives one row, for a config's top-level keys and one
    dataset entry (as axolotl sees them after validation: unset keys absent)."""
    loader = strategy_loader()
    from axolotl.utils.dict import DictDefault

    cfg = DictDefault({"sequence_len": 1 << 16, "train_on_inputs": False, **top})
    strategy = loader(tokenizer, cfg, dict(ds))
    out = strategy.tokenize_prompt(copy.deepcopy(row))
    return list(out["input_ids"]), list(out["labels"])
