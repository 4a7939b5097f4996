"""`python -m toolkit.trainer PLAN`: carry out the run plan the host wrote (in the image,
or as one of torchrun's ranks); exit codes as the toolkit command's."""

import os
import sys

from toolkit.errors import Preempted, exit_code_of
from toolkit.plan import read
from toolkit.trainer import run


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m toolkit.trainer PLAN (written by the toolkit command)")
        return 2
    try:
        run(read(argv[0]))
    except Preempted as exc:
        if os.environ.get("RANK", "0") != "0":  # the ranks stop together; rank 0 says so
            return exc.exit_code
        return exit_code_of(exc)
    except BaseException as exc:
        return exit_code_of(exc)
    return 0


raise SystemExit(main(sys.argv[1:]))
