"""`images verify`: inside the image, the installed versions equal the lock, torch is
the labelled build, and the trainer's imports work."""

from __future__ import annotations

import json
import re

from toolkit.containers.seam import Runtime
from toolkit.containers.spec import RunSpec
from toolkit.errors import UsageError
from toolkit.images.matrix import get_variant

# ---------------------------------------------------------------------------
# verifying a built image


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def verify_image(tag: str, runtime: Runtime) -> list:
    """Inside the image: installed versions equal the lock, torch is the labelled
    build, and the trainer's imports work. Returns doctor-style findings."""
    from toolkit.compat import Finding, Status

    docker = runtime.docker()
    docker.require()
    info = docker.inspect_image(tag)
    if info is None:
        raise UsageError(
            f"no image {tag!r} here; `toolkit images list` shows the tags, "
            "`toolkit images build VARIANT` makes one"
        )
    labels = info.labels
    name = labels.get("io.toolkit.variant")
    if name is None:
        raise UsageError(f"{tag} has no io.toolkit.variant label: not a toolkit image")
    variant = get_variant(name)
    out = []
    if labels.get("io.toolkit.lock-sha256") != variant.lock_sha256:
        out.append(
            Finding(
                "lock",
                Status.MARGINAL,
                f"{tag} was built from another lock than {variant.lock.name} in this "
                "checkout; comparing against the checkout's",
                "rebuild the image",
            )
        )
    res = docker.output(
        RunSpec(image=tag, command=["python", "-m", "toolkit.trainer.envreport"], network="none")
    )
    if not res.ok:
        return [
            *out,
            Finding(
                "run",
                Status.FAIL,
                f"the image does not run: {res.stderr.strip()[-300:]}",
                "rebuild it",
            ),
        ]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    installed = {_canonical(k): v for k, v in report["distributions"].items()}
    pinned = {}
    for pin in variant.pins():
        pkg, _, version = pin.partition("==")
        pinned[_canonical(pkg)] = version
    wrong = [
        f"{p}: locked {v}, installed {installed.get(p, 'nothing')}"
        for p, v in sorted(pinned.items())
        if installed.get(p) != v
    ]
    extra = sorted(set(installed) - set(pinned) - {"pip"}) if variant.lock_complete else []
    if wrong or extra:
        out.append(
            Finding(
                "versions",
                Status.FAIL,
                "; ".join(wrong + ([f"not in the lock: {', '.join(extra)}"] if extra else [])),
                "rebuild the image from the lock",
            )
        )
    else:
        out.append(
            Finding(
                "versions",
                Status.OK,
                f"{len(pinned)} pins match the lock"
                + (
                    ""
                    if variant.lock_complete
                    else f" ({len(installed)} installed; the lock pins top-level only)"
                ),
            )
        )
    torch = report["torch"]
    expected_runtime = {"cpu": None, "cuda": variant.gpu_version, "rocm": variant.gpu_version}
    got = torch.get("hip") if variant.accelerator == "rocm" else torch.get("cuda")
    want = expected_runtime[variant.accelerator]
    runtime_ok = (got is None) if want is None else bool(got) and str(got).startswith(want)
    # torch.__version__ carries the build's local label (2.13.0+cu130) even where the
    # wheel's own version has none (PyPI's CUDA build): compare labels only when locked.
    version = str(torch.get("version"))
    same = (
        version == variant.torch if "+" in variant.torch else version.split("+")[0] == variant.torch
    )
    torch_ok = same and runtime_ok
    out.append(
        Finding(
            "torch",
            Status.OK if torch_ok else Status.FAIL,
            f"torch {torch.get('version')} (CUDA {torch.get('cuda')}, HIP "
            f"{torch.get('hip')}); the label says {variant.torch}, "
            f"{variant.accelerator} {want or ''}".rstrip(),
            "" if torch_ok else "rebuild: the lock and the torch index disagree",
        )
    )
    broken = {m: e for m, e in report["imports"].items() if e != "ok"}
    out.append(
        Finding(
            "imports",
            Status.FAIL if broken else Status.OK,
            "; ".join(f"{m}: {e}" for m, e in broken.items())
            or f"{len(report['imports'])} trainer modules import",
            "rebuild the image" if broken else "",
        )
    )
    return out
