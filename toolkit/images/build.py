"""Building a variant: the base (pulled, given, or made from Debian's archive), the
build context, the build itself and what it leaves behind; `ensure_image` builds an image
only when none of its tag is here.

The tag is the variant's identity (matrix.Variant.image_sha256): its lock, its rendered
Dockerfile and the content of the toolkit source the build copies in. A checkout and a
wheel of one source compute one tag and share the image; two sources get two tags, so
neither rebuilds over the other, and a build removes the variant's images of older
sources that no container uses (`replaced_images`). The labels say where the image came
from (version, revision, creation time) and do not enter the tag. The builder's log goes
to stderr: stdout stays the answer of the command that needed the image."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from toolkit import cache
from toolkit.containers.seam import Docker, Runtime
from toolkit.containers.spec import ImageInfo
from toolkit.errors import RuntimeFailure, UsageError
from toolkit.images.lock import fill_wheelhouse
from toolkit.images.matrix import (
    CHECKOUT,
    PACKAGE_DIR,
    REPO_ROOT,
    Variant,
    render_dockerfile,
    say,
    source_files,
    source_sha256,
)

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


def _current(docker: Docker, tag: str, source: str) -> bool:
    """Whether `tag` names an image built from `source` (its label says so)."""
    info = docker.inspect_image(tag)
    return info is not None and info.labels.get("io.toolkit.source-sha256") == source


def ensure_image(variant: Variant, runtime: Runtime) -> str:
    """Return the variant's tag for the running toolkit's source, building the image only
    when no image of that tag (built from this source) is here."""
    docker = runtime.docker()
    tag = variant.tag
    if _current(docker, tag, source_sha256()):
        return tag
    if docker.inspect_image(tag) is not None:
        # The tag is the source's hash, so only a hand-made image (`images build --tag`)
        # can carry it with other content.
        say(f"image {tag} was built from other toolkit source; rebuilding it")
    else:
        say(f"image {tag} not found; building it (toolkit images build {variant.name})")
    return build_image(variant, runtime, BuildOptions())


def build_image(variant: Variant, runtime: Runtime, opts: BuildOptions) -> str:
    """Build the variant's image from the running toolkit's source and return its tag;
    nothing to do when that tag is here already (unless --no-cache, --tag or a base is
    asked for). Afterwards what it replaced (`replaced_images`) is removed."""
    docker = runtime.docker()
    docker.require()
    if opts.online and opts.wheelhouse:
        raise UsageError("--online and --wheelhouse exclude each other; pick one source of wheels")
    as_asked = not (opts.no_cache or opts.tag or opts.base or opts.local_base)
    if as_asked and _current(docker, variant.tag, source_sha256()):
        say(f"{variant.tag} is built from this source already; --no-cache builds it again")
        return variant.tag
    base = resolve_base(variant, docker, opts)
    base_info = docker.inspect_image(base)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="toolkit-build-") as tmp:
        context = Path(tmp)
        pip_source = _stage_context(variant, context, opts, runtime)
        # The hash of what was staged, not of the source now: an edit during the build
        # gets its own tag next time rather than this one.
        source = source_sha256(context / "src" / "toolkit")
        env, note = docker.buildkit_env()
        if note:
            say(note)
        build_id = uuid.uuid4().hex
        args = {
            "BASE_IMAGE": _full_name(base, base_info),
            "PIP_SOURCE": pip_source,
            "BASE_ID": base_info.id if base_info else "",
            "SOURCE_SHA256": source,
            "REVISION": _revision(runtime),
            "CREATED": _created(),
            "BUILD_ID": build_id,
        }
        tag = opts.tag or variant.tag_for(source)
        before = docker.inspect_image(tag)
        say(f"building {tag} from {base}")
        res = docker.build(str(context), tag, args, env, no_cache=opts.no_cache)
    if not res.ok:
        raise RuntimeFailure(
            f"building {tag} failed (exit {res.returncode}); the "
            "build log above shows the failing step"
        )
    say(f"built {tag} in {time.monotonic() - started:.0f} s")
    built = docker.inspect_image(tag)
    if built is not None:
        for image in replaced_images(docker, variant, built, before, build_id, bool(opts.tag)):
            if cache.remove_image(docker, image):
                say(f"removed {image.tags[0] if image.tags else image.id[7:19]}, replaced by {tag}")
    return tag


def _full_name(ref: str, info: ImageInfo | None) -> str:
    """`ref` as the engine names the image: Podman keeps what it imported or built as
    localhost/NAME:TAG, and its builder takes a short NAME:TAG for a Docker Hub name."""
    if info is None or ref in info.tags:
        return ref
    return next((t for t in info.tags if t.endswith(f"/{ref}")), ref)


def replaced_images(
    docker: Docker,
    variant: Variant,
    built: ImageInfo,
    before: ImageInfo | None,
    build_id: str,
    hand_tagged: bool,
) -> list[ImageInfo]:
    """What the build of `built` replaced, so rebuilds do not fill Docker's disk: the
    image its tag named `before` (untagged now), the variant's images of older sources
    (tagged `toolkit:VARIANT-…` or untagged; a --tag build replaces only what its tag
    named) and the builder stages of this lock that other builds left (the classic
    builder keeps each; this build's stays, the next one's layer cache). Never an image a
    container uses (and removal is never forced), nor one tagged by hand."""
    in_use = docker.images_in_use()
    ours = f"toolkit:{variant.name}-"
    out = [before] if before and before.id != built.id and before.id not in in_use else []
    for image in docker.list_images({"io.toolkit.variant": variant.name}):
        if image.id in (built.id, *in_use, *(i.id for i in out)):
            continue
        if image.labels.get("io.toolkit.stage") == "deps":
            stale = (
                image.labels.get("io.toolkit.lock-sha256") == variant.lock_sha256
                and image.labels.get("io.toolkit.build") != build_id
            )
        else:
            older = (image.created or "") < (built.created or "")
            tags_ok = not hand_tagged and all(t.startswith(ours) for t in image.tags)
            stale = older and tags_ok
        if stale:
            out.append(image)
    return out


def _stage_context(variant: Variant, context: Path, opts: BuildOptions, runtime: Runtime) -> str:
    """Lay out the build context; return pip's source options for the Dockerfile."""
    (context / "Dockerfile").write_text(render_dockerfile(variant))
    shutil.copy(variant.lock, context / "lock.txt")
    (context / "ca-bundle.crt").write_bytes(opts.ca_bundle.read_bytes() if opts.ca_bundle else b"")
    # Exactly the files the tag hashes, so the image holds what its tag says; modes fixed
    # (COPY keeps them, the hash does not see them, and any container user reads them).
    src = context / "src"
    for rel, path in source_files(PACKAGE_DIR):
        target = src / "toolkit" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        target.chmod(0o644)
    for folder in [src, *(p for p in src.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
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
    """A minimal Debian with Python from Debian's archive, imported into the engine:
    debootstrap as root; as an ordinary user (rootless Podman), mmdebstrap in a user
    namespace."""
    tag = variant.local_base_tag
    if docker.inspect_image(tag) is not None:
        return tag
    runtime = docker.runtime
    mirror = os.environ.get("TOOLKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    include = "--include=" + ",".join(variant.local_base_packages)
    with tempfile.TemporaryDirectory(prefix="toolkit-rootfs-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        if os.geteuid() == 0:
            _debootstrap(runtime, variant, include, mirror, Path(tmp), tarball)
        else:
            if runtime.which("mmdebstrap") is None:
                raise RuntimeFailure(
                    "building a local base as an ordinary user needs mmdebstrap, which "
                    "builds it in a user namespace (`sudo apt-get install mmdebstrap`), "
                    "or pass --base IMAGE"
                    # sudo would build into root's engine, not this user's rootless one.
                    + (
                        ""
                        if docker.engine().rootless
                        else f"; or run `sudo toolkit images build {variant.name} "
                        "--local-base` once"
                    )
                )
            say(f"building {tag} with mmdebstrap from {mirror} (about a minute)")
            argv = ["mmdebstrap", "--mode=unshare", "--variant=minbase", include]
            res = runtime.run([*argv, variant.local_base_suite, str(tarball), mirror], timeout=1800)
            if not res.ok:
                raise RuntimeFailure(
                    f"mmdebstrap failed: {res.stderr.strip()[-400:]}\n"
                    "Set TOOLKIT_DEBIAN_MIRROR to a reachable mirror, or pass --base IMAGE"
                )
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
            raise RuntimeFailure(f"importing the base failed: {imported.stderr.strip()[-400:]}")
    return tag


def _debootstrap(
    runtime: Runtime, variant: Variant, include: str, mirror: str, tmp: Path, tarball: Path
) -> None:
    """debootstrap into a folder (root only), empty apt's caches, pack it as `tarball`."""
    if runtime.which("debootstrap") is None:
        raise RuntimeFailure(
            "building a local base needs debootstrap; install it "
            "(`sudo apt-get install debootstrap`) or pass --base IMAGE"
        )
    say(f"building {variant.local_base_tag} with debootstrap from {mirror} (about a minute)")
    root = tmp / "root"
    res = runtime.run(
        ["debootstrap", "--variant=minbase", include, variant.local_base_suite, str(root), mirror],
        timeout=1800,
    )
    if not res.ok:
        raise RuntimeFailure(
            f"debootstrap failed: {res.stderr.strip()[-400:]}\n"
            "Set TOOLKIT_DEBIAN_MIRROR to a reachable mirror, or pass "
            "--base IMAGE"
        )
    for apt_cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (root / apt_cache).glob("*"):
            if item.is_file():
                item.unlink()
    tar = runtime.run(
        ["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."], timeout=600
    )
    if not tar.ok:
        raise RuntimeFailure(f"packing the base failed: {tar.stderr.strip()[-400:]}")


def _git(runtime: Runtime, *args: str) -> str | None:
    res = runtime.run(["git", "-C", str(REPO_ROOT), *args], timeout=30)
    return res.stdout.strip() if res.ok else None


def _revision(runtime: Runtime) -> str:
    """The revision label: the checkout's commit, `-dirty` when toolkit/ or images/ differ
    from it; else (a wheel, or no git) the installed distribution's version."""
    if CHECKOUT:
        # Only this checkout's own repository: a venv inside another project's work tree
        # must not label the image with that project's commit.
        top = _git(runtime, "rev-parse", "--show-toplevel")
        rev = _git(runtime, "rev-parse", "HEAD")
        dirty = _git(
            runtime, "status", "--porcelain", "--untracked-files=all", "--", "toolkit", "images"
        )
        if top and rev and dirty is not None and Path(top).resolve() == REPO_ROOT:
            return f"{rev}-dirty" if dirty else rev
    return f"qwen-posttrain=={_distribution_version()}"


def _distribution_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from toolkit import __version__

    try:
        return version("qwen-posttrain")
    except PackageNotFoundError:  # a source tree that was never installed
        return __version__


def _created() -> str:
    """The creation-time label: now, or SOURCE_DATE_EPOCH when set (a reproducible build
    asks for a fixed time). Never part of the tag."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        moment = time.time()
    elif epoch.isdigit():
        moment = int(epoch)
    else:
        raise UsageError(
            f"SOURCE_DATE_EPOCH={epoch!r}: expected whole seconds since 1970 (e.g. "
            "`git log -1 --format=%ct`); unset it to date the image now"
        )
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
