"""Building a variant: the base (pulled, given, or made from Debian's archive), the
build context, the build itself; `ensure_image` rebuilds a stale image."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import RuntimeFailure, UsageError
from toolkit.images.lock import fill_wheelhouse
from toolkit.images.matrix import (
    REPO_ROOT,
    Variant,
    say,
    source_sha256,
)
from toolkit.images.render import render_dockerfile
from toolkit.runtime import Docker, Runtime

# ---------------------------------------------------------------------------
# building


@dataclass(frozen=True)
class BuildOptions:
    base: str | None = None  # an explicit base image
    local_base: bool = False  # build the base from Debian's archive
    wheelhouse: Path | None = None  # wheels to install from, offline
    online: bool = False  # let pip reach the index inside the build
    ca_bundle: Path | None = None  # CA bundle for pip inside the build (TLS proxies)
    no_cache: bool = False  # rebuild every layer (e.g. to check a build repeats)
    tag: str | None = None  # tag the result so, not with the variant's tag


def variants_here(docker, matrix: dict[str, Variant]) -> set[str]:
    """The variants whose image is already in the engine (no room needed to build it)."""
    return {name for name, variant in matrix.items() if docker.inspect_image(variant.tag)}


def ensure_image(variant: Variant, runtime: Runtime) -> str:
    """Return the variant's tag, building it first if missing or built from other source."""
    docker = runtime.docker()
    info = docker.inspect_image(variant.tag)
    if info is not None:
        if info.labels.get("io.toolkit.source-sha256") == source_sha256():
            return variant.tag
        say(
            f"image {variant.tag} was built from other toolkit source; rebuilding "
            "(only the source layer changes)"
        )
    else:
        say(f"image {variant.tag} not found; building it (toolkit images build {variant.name})")
    return build_image(variant, runtime, BuildOptions())


def build_image(variant: Variant, runtime: Runtime, opts: BuildOptions) -> str:
    docker = runtime.docker()
    docker.require()
    if opts.online and opts.wheelhouse:
        raise UsageError("--online and --wheelhouse exclude each other; pick one source of wheels")
    base = resolve_base(variant, docker, opts)
    base_info = docker.inspect_image(base)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="toolkit-build-") as tmp:
        context = Path(tmp)
        pip_source = _stage_context(variant, context, opts, runtime)
        env, note = docker.buildkit_env()
        if note:
            say(note)
        args = {
            "BASE_IMAGE": base,
            "PIP_SOURCE": pip_source,
            "BASE_ID": base_info.id if base_info else "",
            "SOURCE_SHA256": source_sha256(),
            "REVISION": _git(runtime, "rev-parse", "HEAD") or "unknown",
            "CREATED": _created(runtime),
        }
        tag = opts.tag or variant.tag
        replaced = docker.inspect_image(tag)
        say(f"building {tag} from {base}")
        res = docker.build(str(context), tag, args, env, no_cache=opts.no_cache)
    if not res.ok:
        raise RuntimeFailure(
            f"building {tag} failed (exit {res.returncode}); the "
            "build log above shows the failing step"
        )
    say(f"built {tag} in {time.monotonic() - started:.0f} s")
    if replaced is not None:
        # The image the tag named before: untagged now and of no use; removed unless a
        # container still uses it (never forced), so rebuilds do not fill Docker's disk.
        built = docker.inspect_image(tag)
        if built is not None and built.id != replaced.id:
            docker.remove_image(replaced.id)
    return tag


def _stage_context(variant: Variant, context: Path, opts: BuildOptions, runtime: Runtime) -> str:
    """Lay out the build context; return pip's source options for the Dockerfile."""
    (context / "Dockerfile").write_text(render_dockerfile(variant))
    shutil.copy(variant.lock, context / "lock.txt")
    (context / "ca-bundle.crt").write_bytes(opts.ca_bundle.read_bytes() if opts.ca_bundle else b"")
    src = context / "src"
    shutil.copytree(
        REPO_ROOT / "toolkit",
        src / "toolkit",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    if (REPO_ROOT / "pyproject.toml").is_file():
        shutil.copy(REPO_ROOT / "pyproject.toml", src / "pyproject.toml")
    wheels = context / "wheels"
    wheels.mkdir()
    if opts.online:
        say(f"pip will install inside the build from the index (+ {variant.torch_index})")
        return f"--extra-index-url {variant.torch_index}"
    house = opts.wheelhouse or fill_wheelhouse(variant, runtime)
    for whl in sorted(Path(house).glob("*.whl")):
        _link_or_copy(whl, wheels / whl.name)
    return "--no-index --find-links /build/wheels"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def resolve_base(variant: Variant, docker: Docker, opts: BuildOptions) -> str:
    """The base image to build on: explicit, local, present, pulled — or, out loud, local."""
    if opts.base:
        if docker.inspect_image(opts.base) is None and not docker.pull(opts.base).ok:
            raise RuntimeFailure(
                f"--base {opts.base}: not present and cannot be pulled; "
                "`docker images` lists what you have"
            )
        return opts.base
    if opts.local_base:
        return make_local_base(variant, docker)
    if docker.inspect_image(variant.base_ref) is not None:
        return variant.base_ref
    pulled = docker.pull(variant.base_ref, timeout=900)
    if pulled.ok:
        return variant.base_ref
    if docker.inspect_image(variant.local_base_tag) is not None:
        say(
            f"could not pull {variant.base_ref}; using the local base "
            f"{variant.local_base_tag} built earlier from Debian's archive"
        )
        return variant.local_base_tag
    reason = (pulled.stderr.strip().splitlines() or ["no answer"])[-1]
    say(
        f"could not pull {variant.base_ref} ({reason}); falling back to a base built from "
        f"Debian's archive ({variant.local_base_tag}). Pass --base IMAGE to use another."
    )
    return make_local_base(variant, docker)


def make_local_base(variant: Variant, docker: Docker) -> str:
    """debootstrap a minimal Debian with Python into a folder and `docker import` it."""
    tag = variant.local_base_tag
    if docker.inspect_image(tag) is not None:
        return tag
    runtime = docker.runtime
    if runtime.which("debootstrap") is None:
        raise RuntimeFailure(
            "building a local base needs debootstrap; install it "
            "(`sudo apt-get install debootstrap`) or pass --base IMAGE"
        )
    if os.geteuid() != 0:
        raise RuntimeFailure(
            "debootstrap must run as root; run `sudo toolkit images build "
            f"{variant.name} --local-base` once, or pass --base IMAGE"
        )
    mirror = os.environ.get("TOOLKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    say(f"building {tag} with debootstrap from {mirror} (about a minute)")
    with tempfile.TemporaryDirectory(prefix="toolkit-rootfs-") as tmp:
        root = Path(tmp) / "root"
        res = runtime.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(variant.local_base_packages),
                variant.local_base_suite,
                str(root),
                mirror,
            ],
            timeout=1800,
        )
        if not res.ok:
            raise RuntimeFailure(
                f"debootstrap failed: {res.stderr.strip()[-400:]}\n"
                "Set TOOLKIT_DEBIAN_MIRROR to a reachable mirror, or pass "
                "--base IMAGE"
            )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        tar = runtime.run(
            ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."], timeout=600
        )
        if not tar.ok:
            raise RuntimeFailure(f"packing the base failed: {tar.stderr.strip()[-400:]}")
        imported = docker.import_rootfs(
            str(tarball),
            tag,
            [
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "ENV LANG=C.UTF-8",
                'CMD ["python3"]',
            ],
        )
        if not imported.ok:
            raise RuntimeFailure(f"docker import failed: {imported.stderr.strip()[-400:]}")
    return tag


def _git(runtime: Runtime, *args: str) -> str:
    res = runtime.run(["git", "-C", str(REPO_ROOT), *args], timeout=30)
    return res.stdout.strip() if res.ok else ""


def _created(runtime: Runtime) -> str:
    """Build time for the label: SOURCE_DATE_EPOCH when set, else the last commit's time."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or _git(runtime, "log", "-1", "--format=%ct")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(epoch or 0)))
