"""Training recipes, one file each. The recipes import their heavy libraries
inside their functions or modules; nothing here is imported by the host CLI."""

import logging

# bitsandbytes' CPU backend warns at import that it cannot fetch an optional
# kernel from the Hugging Face Hub (through the `kernels` package, which we do
# not install: no hub downloads the user did not ask for). Its fallback is used.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
