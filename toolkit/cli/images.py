"""toolkit images: the image matrix — list, select, render, lock, build, push, export,
import, verify."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from toolkit.cli import common
from toolkit.cli.common import complete_variants, json_option, report
from toolkit.errors import UsageError


def variant_argument(func) -> Callable[..., Any]:
    return click.argument("variant", shell_complete=complete_variants)(func)


@click.group()
def images() -> None:
    """The image matrix: list, select, render, lock, build, push, export, import and verify
    variants."""


@images.command("list")
@json_option
def list_(as_json) -> int:
    """The variants and their tags."""
    from toolkit.images import list_rows

    rows = list_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["variant", "accelerator", "gpu", "torch", "min_driver", "lock", "tag"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())
    return 0


@images.command()
@json_option
def select(as_json) -> int:
    """The variant for this host, and why (exit 1 when none fits)."""
    from toolkit.compat import Status
    from toolkit.compat import select as choose
    from toolkit.host.probe import gather
    from toolkit.images import load_matrix

    host = gather(common.new_runtime())
    sel = choose(host.facts, [v.facts() for v in load_matrix().values()])
    if as_json:
        print(
            json.dumps(
                {
                    "variant": sel.variant,
                    "status": sel.status.name,
                    "explanation": sel.explanation,
                    "fix": sel.fix,
                    "gpus": [g.__dict__ for g in host.facts.gpus],
                    "nvidia_driver": host.facts.nvidia_driver,
                },
                indent=2,
            )
        )
    else:
        print(sel.variant or "none")
        for line in sel.explanation:
            print(f"  {line}")
        if sel.fix:
            print(f"  fix: {sel.fix}")
    return 1 if sel.status == Status.FAIL else 0


@images.command()
@variant_argument
def render(variant) -> int:
    """Print a variant's Dockerfile, rendered from images/Dockerfile.in."""
    from toolkit.images import get_variant, render_dockerfile

    sys.stdout.write(render_dockerfile(get_variant(variant)))
    return 0


@images.command()
@variant_argument
@click.option(
    "--find-links",
    type=click.Path(path_type=Path),
    help="a folder of wheels the indexes would serve",
)
def lock(variant, find_links) -> int:
    """Resolve a variant's lock for its platform, every package pinned with its hash."""
    from toolkit.images import get_variant, lock_variant

    print(f"wrote {lock_variant(get_variant(variant), common.new_runtime(), find_links)}")
    return 0


@images.command()
@variant_argument
@click.option("--base", help="build on this base image instead of the matrix's")
@click.option(
    "--local-base",
    is_flag=True,
    help="build the base from Debian's archive (debootstrap; for air-gapped hosts)",
)
@click.option(
    "--wheelhouse", type=click.Path(path_type=Path), help="install from these wheels, offline"
)
@click.option("--online", is_flag=True, help="let pip reach the package index in the build")
@click.option(
    "--ca-bundle", type=click.Path(path_type=Path), help="CA bundle for pip inside the build"
)
@click.option("--no-cache", is_flag=True, help="rebuild every layer")
@click.option("--tag", help="tag the image so instead of with the variant's tag")
def build(variant, base, local_base, wheelhouse, online, ca_bundle, no_cache, tag) -> int:
    """Build one variant's image."""
    from toolkit.images import BuildOptions, build_image, get_variant

    for flag, path in (("wheelhouse", wheelhouse), ("ca-bundle", ca_bundle)):
        if path is not None and not path.exists():
            raise UsageError(f"--{flag} {path}: does not exist")
    opts = BuildOptions(
        base=base,
        local_base=local_base,
        wheelhouse=wheelhouse,
        online=online,
        ca_bundle=ca_bundle,
        no_cache=no_cache,
        tag=tag,
    )
    print(build_image(get_variant(variant), common.new_runtime(), opts))
    return 0


@images.command("export")
@variant_argument
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="the archive to write (default: toolkit-VARIANT-ID.tar here); never over a file",
)
@click.option("--image", "tag", default=None, help="this image tag instead of the variant's")
def export(variant, output, tag) -> int:
    """Write a variant's image (built if missing) as an archive, for machines that cannot
    pull it: `toolkit images import FILE` there (or `toolkit launch slurm
    --image-archive FILE`)."""
    from toolkit.images import ensure_image, get_variant

    runtime = common.new_runtime()
    ref = tag or ensure_image(get_variant(variant), runtime)
    docker = runtime.docker()
    found = docker.inspect_image(ref)
    if found is None:
        raise UsageError(f"--image {ref}: no such image on this engine")
    out = output or Path(f"toolkit-{variant}-{found.id.removeprefix('sha256:')[:12]}.tar")
    image = docker.save(ref, str(out))
    print(f"wrote {out}: {ref} ({image.id})")
    return 0


@images.command("import")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
def import_(archive) -> int:
    """Load an archive `toolkit images export` wrote; print the images it held."""
    loaded = common.new_runtime().docker().load(str(archive))
    for image in loaded:
        name = ", ".join(image.tags) or "(untagged)"
        theirs = "" if image.labels.get("io.toolkit.variant") else " (not a toolkit image)"
        print(f"loaded {name} {image.id}{theirs}")
    return 0


@images.command()
@variant_argument
@click.option("--registry", required=True, help="HOST[:PORT][/NAMESPACE]")
@json_option
def push(variant, registry, as_json) -> int:
    """Push a variant to a registry and record its digest in images/pushed.json."""
    from toolkit.images import get_variant, push_image, pushed_file

    record = push_image(get_variant(variant), common.new_runtime(), registry)
    if as_json:
        print(json.dumps({**record, "recorded_in": str(pushed_file())}, indent=2))
    else:
        print(f"{record['image']}\nrecorded in {pushed_file()}")
    return 0


@images.command()
@click.argument("variant", required=False, shell_complete=complete_variants)
@click.option("--tag", help="check this image tag instead of the variant's")
@json_option
def verify(variant, tag, as_json) -> int:
    """Check a built image against its lock: versions, torch build, the trainer imports."""
    from toolkit.images import get_variant, verify_image

    if (variant is None) == (tag is None):
        raise UsageError("give a VARIANT (its tag is checked) or --tag TAG, one of the two")
    return report(verify_image(tag or get_variant(variant).tag, common.new_runtime()), as_json)
