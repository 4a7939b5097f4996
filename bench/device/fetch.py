"""Fetch the device check's wheels (bench/device/requirements.txt) for the GPU machine's
CPython 3.12 on x86_64 Linux into bench/device/wheels/, and refuse a set over 64 MiB (what
one device call may carry).

    .venv/bin/python bench/device/fetch.py        (or: make device-wheels)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIMIT = 64 * 2**20


def main() -> int:
    wheels = HERE / "wheels"
    wheels.mkdir(exist_ok=True)
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)]
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    argv += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    for tag in [*platforms, "manylinux2014_x86_64", "any"]:
        argv += ["--platform", tag]
    argv += ["--dest", str(wheels), "--requirement", str(HERE / "requirements.txt")]
    subprocess.run(argv, check=True)
    carried = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    # What travels besides: the files git tracks or would (untracked, not ignored).
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=HERE.parent.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    tree = sum(
        (HERE.parent.parent / f).stat().st_size
        for f in listed
        if f and not f.startswith("bench/device/wheels/") and (HERE.parent.parent / f).is_file()
    )
    total = carried + tree
    print(
        f"{len(list(wheels.glob('*.whl')))} wheels: {carried / 2**20:.1f} MiB; with the "
        f"working tree ({tree / 2**20:.1f} MiB): {total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f}"
    )
    if total > LIMIT:
        print("over what one device call carries", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
