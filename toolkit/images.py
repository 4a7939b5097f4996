"""The image matrix (images/matrix.yaml) and building its variants.

A variant's tag is derived from its lock: `toolkit:{variant}-{sha256(lock)[:12]}`,
so the same lock gives the same tag. The image also records the hash of
toolkit's own source in a label; `ensure_image` rebuilds (a cached, code-only
rebuild) when the checkout's source differs, so the container never runs stale
code.

Air-gapped hosts: when the base cannot be pulled, the build falls back, out
loud, to a base made from Debian's archive (debootstrap, then `docker import`).
Wheels come from a wheelhouse that the host's pip fills (the default), from a
wheelhouse you give, or from the package index inside the build (`--online`,
with `--ca-bundle` for a TLS proxy).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from toolkit import __version__
from toolkit.errors import RuntimeFailure, UsageError
from toolkit.runtime import Docker, Runtime

REPO_ROOT = Path(__file__).resolve().parent.parent
# A checkout keeps the matrix, the locks and the Dockerfile template in images/ and its
# caches in .cache/; an installed wheel has them as toolkit/_images and caches in the
# user's cache folder (XDG).
CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "images").is_dir()
IMAGES_DIR = REPO_ROOT / "images" if CHECKOUT else Path(__file__).resolve().parent / "_images"
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "toolkit"
CACHE_DIR = Path(os.environ.get("TOOLKIT_CACHE") or (REPO_ROOT / ".cache" if CHECKOUT
                                                     else USER_CACHE))
LOCAL_BASE_REPO = "toolkit-base"
DEFAULT_VARIANT = "cpu"


@dataclass(frozen=True)
class Variant:
    """A row of images/matrix.yaml."""

    name: str
    accelerator: str                    # cpu, cuda or rocm
    base: str
    base_digest: str | None
    local_base_suite: str
    local_base_packages: tuple[str, ...]
    python: str
    platform: str
    requirements: tuple[str, ...]
    torch: str
    torch_index: str
    extensions: dict
    flash_attn: str | None
    arch_list: tuple[str, ...]
    min_driver: str | None
    size_gb: float
    lock: Path
    prune: tuple[str, ...] = ()         # site-packages globs removed after the install
    gpu_version: str | None = None      # CUDA or ROCm version of the torch build
    unverified: tuple[str, ...] = ()    # facts resting on one source

    @property
    def lock_sha256(self) -> str:
        return hashlib.sha256(self.lock.read_bytes()).hexdigest()

    def pins(self) -> list[str]:
        """The lock's requirement lines, without comments, hashes or options."""
        text = self.lock.read_text().replace("\\\n", " ")
        lines = (ln.split("#", 1)[0].split(" --hash")[0].strip() for ln in text.splitlines())
        return [ln for ln in lines if ln and not ln.startswith("-")]

    @property
    def lock_complete(self) -> bool:
        """Whether the lock pins every package (then pip installs it with --no-deps)."""
        return "--hash=" in self.lock.read_text()

    @property
    def tag(self) -> str:
        return f"toolkit:{self.name}-{self.lock_sha256[:12]}"

    @property
    def base_ref(self) -> str:
        return f"{self.base}@{self.base_digest}" if self.base_digest else self.base

    @property
    def local_base_tag(self) -> str:
        packages = hashlib.sha256(" ".join(sorted(self.local_base_packages)).encode())
        return (f"{LOCAL_BASE_REPO}:debian-{self.local_base_suite}-python{self.python}"
                f"-{packages.hexdigest()[:8]}")

    def facts(self):
        from toolkit.compat import VariantFacts

        return VariantFacts(self.name, self.accelerator, self.gpu_version, self.arch_list,
                            self.min_driver)


def load_matrix(images_dir: Path = IMAGES_DIR) -> dict[str, Variant]:
    path = images_dir / "matrix.yaml"
    if not path.exists():
        raise UsageError(f"{path} not found; this install of toolkit lacks its image matrix: "
                         "reinstall it (`pip install --force-reinstall qwen-posttrain`)")
    rows = yaml.safe_load(path.read_text())["variants"]
    out = {}
    for name, row in rows.items():
        out[name] = Variant(
            name=name, accelerator=row["accelerator"], base=row["base"],
            base_digest=row.get("base_digest"),
            local_base_suite=row["local_base"]["suite"],
            local_base_packages=tuple(row["local_base"]["packages"]),
            python=str(row["python"]), platform=row["platform"],
            requirements=tuple(row["requirements"]), torch=row["torch"],
            torch_index=row["torch_index"], extensions=dict(row.get("extensions") or {}),
            flash_attn=row.get("flash_attn"), arch_list=tuple(row.get("arch_list") or ()),
            min_driver=row.get("min_driver"), size_gb=float(row["size_gb"]),
            lock=images_dir / row["lock"], gpu_version=row.get("cuda") or row.get("rocm"),
            unverified=tuple(row.get("check") or ()),
            prune=tuple(row.get("prune_always") or ()) + tuple(row.get("prune") or ()),
        )
    return out


def get_variant(name: str) -> Variant:
    matrix = load_matrix()
    if name not in matrix:
        raise UsageError(f"unknown image variant {name!r}; known: {', '.join(matrix)} "
                         "(see `toolkit images list`)")
    return matrix[name]


def source_sha256(root: Path = REPO_ROOT) -> str:
    """A hash of what goes into the image besides the lock: toolkit's package,
    pyproject and the Dockerfile template (an image built from other ones is stale)."""
    h = hashlib.sha256()
    files = sorted(p for p in (root / "toolkit").rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    extra = [p for p in (root / "pyproject.toml", IMAGES_DIR / "Dockerfile.in") if p.is_file()
             and p not in files]
    for path in [*extra, *files]:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def list_rows() -> list[dict]:
    return [{"variant": v.name, "accelerator": v.accelerator,
             "gpu": v.gpu_version or "-", "torch": v.torch, "min_driver": v.min_driver or "-",
             "arch_list": " ".join(v.arch_list) or "-", "lock": "complete" if v.lock_complete
             else "top-level", "tag": v.tag, "base": v.base_ref,
             "unverified": list(v.unverified)}
            for v in load_matrix().values()]


def render_dockerfile(variant: Variant) -> str:
    """The variant's Dockerfile: the one template with the row's values filled in."""
    labels = {
        "io.toolkit.variant": variant.name,
        "io.toolkit.accelerator": variant.accelerator,
        "io.toolkit.torch": variant.torch,
        "io.toolkit.gpu-runtime": variant.gpu_version or "none",
        "io.toolkit.arch-list": " ".join(variant.arch_list) or "none",
        "io.toolkit.min-driver": variant.min_driver or "none",
        "io.toolkit.extensions": " ".join(f"{k}=={v}" for k, v in variant.extensions.items()),
        "io.toolkit.flash-attn": variant.flash_attn or "none",
        "io.toolkit.lock-sha256": variant.lock_sha256,
    }
    # The NVIDIA Container Toolkit reads these to expose the driver's compute libraries.
    nvidia_env = ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    cuda = variant.accelerator == "cuda"
    accel_env = "".join(f" \\\n    {e}" for e in nvidia_env) if cuda else ""
    site = f"/opt/toolkit/lib/python{variant.python}/site-packages"
    values = {
        "@VARIANT@": variant.name,
        "@BASE@": variant.base_ref,
        "@PIP_DEPS@": "--no-deps --require-hashes " if variant.lock_complete else "",
        "@ACCEL_ENV@": accel_env,
        "@VERSION@": __version__,
        "@LABELS@": " \\\n".join(f'      {k}="{v}"' for k, v in labels.items()),
        "@PRUNE@": " ".join(f"{site}/{glob}" for glob in variant.prune),
    }
    text = (IMAGES_DIR / "Dockerfile.in").read_text()
    for key, value in values.items():
        text = text.replace(key, value)
    return text


# ---------------------------------------------------------------------------
# building


@dataclass(frozen=True)
class BuildOptions:
    base: str | None = None          # an explicit base image
    local_base: bool = False         # build the base from Debian's archive
    wheelhouse: Path | None = None   # wheels to install from, offline
    online: bool = False             # let pip reach the index inside the build
    ca_bundle: Path | None = None    # CA bundle for pip inside the build (TLS proxies)
    no_cache: bool = False           # rebuild every layer (e.g. to check a build repeats)
    tag: str | None = None           # tag the result so, not with the variant's tag


def say(message: str) -> None:
    print(f"toolkit: {message}", file=sys.stderr, flush=True)


def ensure_image(variant: Variant, runtime: Runtime) -> str:
    """Return the variant's tag, building it first if missing or built from other source."""
    docker = runtime.docker()
    info = docker.inspect_image(variant.tag)
    if info is not None:
        if info.labels.get("io.toolkit.source-sha256") == source_sha256():
            return variant.tag
        say(f"image {variant.tag} was built from other toolkit source; rebuilding "
            "(only the source layer changes)")
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
        say(f"building {tag} from {base}")
        res = docker.build(str(context), tag, args, env, no_cache=opts.no_cache)
    if not res.ok:
        raise RuntimeFailure(f"building {tag} failed (exit {res.returncode}); the "
                             "build log above shows the failing step")
    say(f"built {tag} in {time.monotonic() - started:.0f} s")
    return tag


def _stage_context(variant: Variant, context: Path, opts: BuildOptions,
                   runtime: Runtime) -> str:
    """Lay out the build context; return pip's source options for the Dockerfile."""
    (context / "Dockerfile").write_text(render_dockerfile(variant))
    shutil.copy(variant.lock, context / "lock.txt")
    (context / "ca-bundle.crt").write_bytes(opts.ca_bundle.read_bytes() if opts.ca_bundle else b"")
    src = context / "src"
    shutil.copytree(REPO_ROOT / "toolkit", src / "toolkit",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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


def wheelhouse_dir(variant: Variant) -> Path:
    return CACHE_DIR / "wheelhouse" / f"{variant.name}-{variant.lock_sha256[:12]}"


def fill_wheelhouse(variant: Variant, runtime: Runtime) -> Path:
    """Download the lock's wheels with the host's pip, for the image's platform.

    The host's pip configuration (indexes, find-links, proxy CA) applies, so a
    machine that can install the lock can build the image offline.
    """
    house = wheelhouse_dir(variant)
    done = house / ".complete"
    if done.exists():
        return house
    for stale in house.parent.glob(f"{variant.name}-*"):
        if stale != house:  # wheels of an older lock of this variant
            shutil.rmtree(stale, ignore_errors=True)
    house.mkdir(parents=True, exist_ok=True)
    say(f"downloading the {variant.name} lock's wheels with this machine's pip into {house}")
    argv = [sys.executable, "-m", "pip", "download", *_target_options(variant),
            "--dest", str(house), "--requirement", str(variant.lock)]
    if variant.lock_complete:
        argv.append("--no-deps")
    # First with the host's own pip configuration only: an index that is unreachable
    # costs pip minutes of retries, so the torch index is added only when needed.
    res = runtime.run(argv, timeout=3600)
    if not res.ok:
        say(f"retrying with the torch index {variant.torch_index}")
        res = runtime.run([*argv, "--extra-index-url", variant.torch_index], timeout=3600)
    if not res.ok:
        tail = "\n".join(res.stderr.strip().splitlines()[-3:])
        raise RuntimeFailure(f"could not download the wheels for {variant.name}:\n{tail}\n"
                             "Check that pip reaches your index (pip config list), pass "
                             "--wheelhouse DIR with the lock's wheels, or --online.")
    done.write_text(variant.lock_sha256 + "\n")
    return house


def _target_options(variant: Variant) -> list[str]:
    """pip options that pick wheels for the image's Python and platform, not the host's."""
    arch = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}[variant.platform]
    # Every manylinux tag a Debian 12 (glibc 2.36) base can run.
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)]
    options = ["--only-binary=:all:", "--python-version", variant.python,
               "--implementation", "cp", "--abi", "cp" + variant.python.replace(".", ""),
               "--abi", "abi3", "--abi", "none"]
    for tag in [*tags, f"manylinux2014_{arch}", f"linux_{arch}"]:
        options += ["--platform", tag]
    return options


def lock_variant(variant: Variant, runtime: Runtime, find_links: Path | None = None) -> Path:
    """Resolve the variant's requirements for its platform and write an exact, hashed lock.

    pip runs without this machine's configuration (so a host-only wheel cannot
    leak into a GPU lock), against PyPI and the variant's torch index, plus
    `find_links` when given (a folder holding wheels those indexes serve).
    """
    requirements = [f"torch=={variant.torch}",
                    *(f"{k}=={v}" for k, v in variant.extensions.items()),
                    *variant.requirements]
    with tempfile.TemporaryDirectory(prefix="toolkit-lock-") as tmp:
        report = Path(tmp) / "report.json"
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
                "--ignore-installed", "--report", str(report), "--target", str(Path(tmp) / "t"),
                "--retries", "1", "--timeout", "30", *_target_options(variant),
                "--extra-index-url", variant.torch_index, *requirements]
        env = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(find_links or "")}
        res = runtime.run(argv, env=env, timeout=1800)
        if not res.ok:
            tail = "\n".join(res.stderr.strip().splitlines()[-3:])
            raise RuntimeFailure(f"could not resolve the {variant.name} lock:\n{tail}\n"
                                 f"Its index ({variant.torch_index}) must be reachable, or "
                                 "pass --find-links DIR with the wheels it would serve. "
                                 f"{variant.lock} is unchanged.")
        installs = json.loads(report.read_text())["install"]
    lines = [f"# Exact pins of the {variant.name} image, with hashes: written by",
             f"# `toolkit images lock {variant.name}`. Same lock, same image tag."]
    for item in sorted(installs, key=lambda i: i["metadata"]["name"].lower()):
        meta, archive = item["metadata"], item["download_info"].get("archive_info", {})
        digest = archive.get("hashes", {}).get("sha256")
        line = f"{meta['name']}=={meta['version']}"
        lines.append(f"{line} \\\n    --hash=sha256:{digest}" if digest else line)
    variant.lock.write_text("\n".join(lines) + "\n")
    return variant.lock


def resolve_base(variant: Variant, docker: Docker, opts: BuildOptions) -> str:
    """The base image to build on: explicit, local, present, pulled — or, out loud, local."""
    if opts.base:
        if docker.inspect_image(opts.base) is None and not docker.pull(opts.base).ok:
            raise RuntimeFailure(f"--base {opts.base}: not present and cannot be pulled; "
                                 "`docker images` lists what you have")
        return opts.base
    if opts.local_base:
        return make_local_base(variant, docker)
    if docker.inspect_image(variant.base_ref) is not None:
        return variant.base_ref
    pulled = docker.pull(variant.base_ref, timeout=900)
    if pulled.ok:
        return variant.base_ref
    if docker.inspect_image(variant.local_base_tag) is not None:
        say(f"could not pull {variant.base_ref}; using the local base "
            f"{variant.local_base_tag} built earlier from Debian's archive")
        return variant.local_base_tag
    reason = (pulled.stderr.strip().splitlines() or ["no answer"])[-1]
    say(f"could not pull {variant.base_ref} ({reason}); falling back to a base built from "
        f"Debian's archive ({variant.local_base_tag}). Pass --base IMAGE to use another.")
    return make_local_base(variant, docker)


def make_local_base(variant: Variant, docker: Docker) -> str:
    """debootstrap a minimal Debian with Python into a folder and `docker import` it."""
    tag = variant.local_base_tag
    if docker.inspect_image(tag) is not None:
        return tag
    runtime = docker.runtime
    if runtime.which("debootstrap") is None:
        raise RuntimeFailure("building a local base needs debootstrap; install it "
                             "(`sudo apt-get install debootstrap`) or pass --base IMAGE")
    if os.geteuid() != 0:
        raise RuntimeFailure("debootstrap must run as root; run `sudo toolkit images build "
                             f"{variant.name} --local-base` once, or pass --base IMAGE")
    mirror = os.environ.get("TOOLKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    say(f"building {tag} with debootstrap from {mirror} (about a minute)")
    with tempfile.TemporaryDirectory(prefix="toolkit-rootfs-") as tmp:
        root = Path(tmp) / "root"
        res = runtime.run(["debootstrap", "--variant=minbase",
                           "--include=" + ",".join(variant.local_base_packages),
                           variant.local_base_suite, str(root), mirror], timeout=1800)
        if not res.ok:
            raise RuntimeFailure(f"debootstrap failed: {res.stderr.strip()[-400:]}\n"
                                 "Set TOOLKIT_DEBIAN_MIRROR to a reachable mirror, or pass "
                                 "--base IMAGE")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        tar = runtime.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."],
                          timeout=600)
        if not tar.ok:
            raise RuntimeFailure(f"packing the base failed: {tar.stderr.strip()[-400:]}")
        imported = docker.import_rootfs(str(tarball), tag, [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["python3"]',
        ])
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
        raise UsageError(f"no image {tag!r} here; `toolkit images list` shows the tags, "
                         "`toolkit images build VARIANT` makes one")
    labels = info.labels
    name = labels.get("io.toolkit.variant")
    if name is None:
        raise UsageError(f"{tag} has no io.toolkit.variant label: not a toolkit image")
    variant = get_variant(name)
    out = []
    if labels.get("io.toolkit.lock-sha256") != variant.lock_sha256:
        out.append(Finding("lock", Status.MARGINAL,
                           f"{tag} was built from another lock than {variant.lock.name} in this "
                           "checkout; comparing against the checkout's", "rebuild the image"))
    res = runtime.run(["docker", "run", "--rm", "--network", "none", tag,
                       "python", "-m", "toolkit.envreport"], timeout=900)
    if not res.ok:
        return out + [Finding("run", Status.FAIL, f"the image does not run: "
                              f"{res.stderr.strip()[-300:]}", "rebuild it")]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    installed = {_canonical(k): v for k, v in report["distributions"].items()}
    pinned = {}
    for pin in variant.pins():
        pkg, _, version = pin.partition("==")
        pinned[_canonical(pkg)] = version
    wrong = [f"{p}: locked {v}, installed {installed.get(p, 'nothing')}"
             for p, v in sorted(pinned.items()) if installed.get(p) != v]
    extra = sorted(set(installed) - set(pinned) - {"pip"}) if variant.lock_complete else []
    if wrong or extra:
        out.append(Finding("versions", Status.FAIL, "; ".join(
            wrong + ([f"not in the lock: {', '.join(extra)}"] if extra else [])),
            "rebuild the image from the lock"))
    else:
        out.append(Finding("versions", Status.OK,
                           f"{len(pinned)} pins match the lock" +
                           ("" if variant.lock_complete else
                            f" ({len(installed)} installed; the lock pins top-level only)")))
    torch = report["torch"]
    expected_runtime = {"cpu": None, "cuda": variant.gpu_version, "rocm": variant.gpu_version}
    got = torch.get("hip") if variant.accelerator == "rocm" else torch.get("cuda")
    want = expected_runtime[variant.accelerator]
    runtime_ok = (got is None) if want is None else bool(got) and str(got).startswith(want)
    # torch.__version__ carries the build's local label (2.13.0+cu130) even where the
    # wheel's own version has none (PyPI's CUDA build): compare labels only when locked.
    version = str(torch.get("version"))
    same = (version == variant.torch if "+" in variant.torch
            else version.split("+")[0] == variant.torch)
    torch_ok = same and runtime_ok
    out.append(Finding("torch", Status.OK if torch_ok else Status.FAIL,
                       f"torch {torch.get('version')} (CUDA {torch.get('cuda')}, HIP "
                       f"{torch.get('hip')}); the label says {variant.torch}, "
                       f"{variant.accelerator} {want or ''}".rstrip(),
                       "" if torch_ok else "rebuild: the lock and the torch index disagree"))
    broken = {m: e for m, e in report["imports"].items() if e != "ok"}
    out.append(Finding("imports", Status.FAIL if broken else Status.OK,
                       "; ".join(f"{m}: {e}" for m, e in broken.items()) or
                       f"{len(report['imports'])} trainer modules import",
                       "rebuild the image" if broken else ""))
    return out


def pushed_file() -> Path:
    """Where pushes are recorded: images/pushed.json in a checkout (commit it: launches read
    it), the user's data folder for an installed toolkit, or $TOOLKIT_PUSHED."""
    if os.environ.get("TOOLKIT_PUSHED"):
        return Path(os.environ["TOOLKIT_PUSHED"])
    if CHECKOUT:
        return IMAGES_DIR / "pushed.json"
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "toolkit" / "pushed.json"


def push_image(variant: Variant, runtime: Runtime, registry: str) -> dict:
    """Build the variant if needed, push it to `registry` (HOST[:PORT][/NAMESPACE]) and
    record its digest; return the record. Launches refer to the image by that digest."""
    registry = registry.rstrip("/")
    if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?(/[a-z0-9._-]+)*", registry):
        raise UsageError(f"--registry {registry!r}: expected HOST[:PORT][/NAMESPACE], e.g. "
                         "ghcr.io/acme or 127.0.0.1:5000")
    from toolkit import engine

    runtime.docker().require()
    local = ensure_image(variant, runtime)
    remote = f"{registry}/{local}"
    info = engine.push(local, remote)
    repo = remote.rsplit(":", 1)[0]
    digest = next((d for d in info.digests if d.startswith(repo + "@")), None)
    if digest is None:
        raise RuntimeFailure(f"pushed {remote}, but the engine reports no digest for it")
    record = {"variant": variant.name, "registry": registry, "tag": remote, "image": digest,
              "image_id": info.id, "lock_sha256": variant.lock_sha256,
              "source_sha256": info.labels.get("io.toolkit.source-sha256"),
              "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = pushed_file()
    records = json.loads(path.read_text()) if path.exists() else {}
    records[variant.name] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return record


def pushed_image(variant_name: str) -> dict:
    """The record of the variant's last push, or a UsageError saying how to make one."""
    path = pushed_file()
    records = json.loads(path.read_text()) if path.exists() else {}
    if variant_name not in records:
        raise UsageError(f"no pushed image for {variant_name} in {path}; a VM pulls its image "
                         f"from a registry: run `toolkit images push {variant_name} --registry "
                         "HOST[/NAMESPACE]` first")
    return records[variant_name]
