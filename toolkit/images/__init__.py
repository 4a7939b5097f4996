"""The image matrix (images/matrix.yaml) and building its variants.

A variant's tag is its identity: `toolkit:{variant}-{sha256(lock, rendered
Dockerfile, toolkit source)[:12]}`, computed alike from a checkout and a wheel (the
source is the content of what the build copies in), so one source never rebuilds and
two sources never share a tag. `ensure_image` builds only when that tag is missing.

Air-gapped hosts: when the base cannot be pulled, the build falls back, out
loud, to a base made from Debian's archive (debootstrap, then `docker import`).
Wheels come from a wheelhouse that the host's pip fills (the default), from a
wheelhouse you give, or from the package index inside the build (`--online`,
with `--ca-bundle` for a TLS proxy).

One module per job: matrix.py (the variants as data, where the files live), render.py
(the Dockerfile), lock.py (locks and wheelhouses), build.py (bases and builds),
verify.py (an image against its lock), registry.py (pushes and their record).
"""

from toolkit.images.build import (
    BuildOptions,
    build_image,
    ensure_image,
    resolve_base,
    variants_here,
)
from toolkit.images.lock import fill_wheelhouse, lock_variant, wheelhouse_dir
from toolkit.images.matrix import (
    CACHE_DIR,
    CHECKOUT,
    DEFAULT_VARIANT,
    IMAGES_DIR,
    REPO_ROOT,
    Variant,
    get_variant,
    list_rows,
    load_matrix,
    render_dockerfile,
    say,
    source_sha256,
)
from toolkit.images.registry import push_image, pushed_file, pushed_image
from toolkit.images.verify import verify_image

__all__ = [
    "CACHE_DIR",
    "CHECKOUT",
    "DEFAULT_VARIANT",
    "IMAGES_DIR",
    "REPO_ROOT",
    "BuildOptions",
    "Variant",
    "build_image",
    "ensure_image",
    "fill_wheelhouse",
    "get_variant",
    "list_rows",
    "load_matrix",
    "lock_variant",
    "push_image",
    "pushed_file",
    "pushed_image",
    "render_dockerfile",
    "resolve_base",
    "say",
    "source_sha256",
    "variants_here",
    "verify_image",
    "wheelhouse_dir",
]
