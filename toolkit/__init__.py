"""toolkit: containerized, reproducible post-training for Qwen3 and Qwen3-MoE."""

import logging

__version__ = "0.1.0"

# bitsandbytes' CPU backend warns at import that it cannot fetch an optional kernel
# from the Hugging Face Hub (through the `kernels` package, which we do not install:
# no hub downloads the user did not ask for). Its built-in fallback is used instead.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
