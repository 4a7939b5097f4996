"""Keeping the logs readable: the libraries' import-time reports and progress bars off.
Imported before the libraries load (toolkit.trainer imports it first)."""

from __future__ import annotations

import logging

# Set before the libraries load: peft imports torchao and bitsandbytes when they are
# installed, and at import they report GPU-only pieces they cannot load on this
# machine (and torchao re-registers enums with torch), on every run.
for _name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def quiet_libraries() -> None:
    """Keep our logs readable: no per-file progress bars, no deprecation chatter
    from inside the libraries (their real warnings still show)."""
    import os
    import sys
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # datasets reads these when it is imported (only some paths need it: not JSON Lines).
    # Its own error log lines repeat what the DataError we raise says, as a traceback.
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["DATASETS_VERBOSITY"] = "critical"
    if sys.modules.get("datasets") is not None:
        sys.modules["datasets"].disable_progress_bars()
        sys.modules["datasets"].utils.logging.set_verbosity(50)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
