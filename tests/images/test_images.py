"""Image specs: each variant's rendered Dockerfile compared whole, linted, the per-vendor
container flags, and an image's identity (one tag per source, labels, what a build leaves)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TESTS
from fakes import Build, FakeDocker, FakeRuntime, ListImages, Remove
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.containers.spec import ImageInfo, Result
from toolkit.errors import UsageError
from toolkit.host.place import device_flags
from toolkit.images import (
    BuildOptions,
    build_image,
    ensure_image,
    get_variant,
    load_matrix,
    render_dockerfile,
)
from toolkit.images import build as build_module
from toolkit.images.matrix import REPO_ROOT, source_files, source_sha256

GOLDEN = TESTS / "golden"
VARIANTS = sorted(load_matrix())


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_dockerfile_matches_golden(variant):
    """Regenerate after an intended change: TOOLKIT_UPDATE_GOLDEN=1 pytest tests/test_images.py"""
    text = render_dockerfile(load_matrix()[variant])
    golden = GOLDEN / f"Dockerfile.{variant}"
    if os.environ.get("TOOLKIT_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_dockerfile_passes_hadolint(variant, tmp_path):
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is a dev dependency: make test installs it"
    path = tmp_path / "Dockerfile"
    path.write_text(render_dockerfile(load_matrix()[variant]))
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


def test_template_has_no_unfilled_placeholders():
    for variant in load_matrix().values():
        assert not re.search(r"@[A-Z_]+@", render_dockerfile(variant))


def test_cuda_images_ask_for_compute_libraries_only_there():
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in render_dockerfile(load_matrix()["cu130"])
    assert "NVIDIA_" not in render_dockerfile(load_matrix()["rocm7.2"])


def test_complete_locks_install_without_resolution():
    matrix = load_matrix()
    assert "pip install --no-deps --require-hashes ${PIP_SOURCE}" in render_dockerfile(
        matrix["cpu"]
    )
    assert "pip install ${PIP_SOURCE}" in render_dockerfile(matrix["rocm7.2"])


def _pins(variant) -> dict[str, str]:
    pins = {}
    for line in load_matrix()[variant].lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(" ")[0].split("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    return pins


def test_the_cu130_image_carries_flash_attention_4_with_one_cuda_flavour():
    """The pins of the attention kernel compat.attention picks on sm90+, and the prune that
    keeps cutlass-dsl's CUDA 13 libraries only."""
    cu130 = load_matrix()["cu130"]
    pins = _pins("cu130")
    name, version = cu130.flash_attn.split("==")
    assert pins[name] == version == cu130.extensions["flash-attn-4"]
    for needed in ("nvidia-cutlass-dsl", "nvidia-cutlass-dsl-libs-cu13", "quack-kernels"):
        assert needed in pins, needed
    assert pins["nvidia-cutlass-dsl"] == cu130.extensions["nvidia-cutlass-dsl[cu13]"]
    text = render_dockerfile(cu130)
    assert "site-packages/nvidia_cutlass_dsl/cu12 " in text
    assert "_cutlass_ir.cu12.*" in text and "nvidia_cutlass_dsl/cu13" not in text
    # flash-attn 2 and 4 both ship flash_attn/cute: never both in one image.
    assert "flash-attn" not in pins


@pytest.mark.parametrize(
    "accelerator, gpus, gids, flags",
    [
        ("cpu", None, (), ["--shm-size", "1g"]),
        (
            "cuda",
            None,
            (),
            ["--gpus", "all", "--ipc=host", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864"],
        ),
        (
            "cuda",
            "0,1",
            (),
            [
                "--gpus",
                '"device=0,1"',
                "--ipc=host",
                "--ulimit",
                "memlock=-1",
                "--ulimit",
                "stack=67108864",
            ],
        ),
        (
            "rocm",
            "all",
            (44, 109),
            [
                "--device",
                "/dev/kfd",
                "--device",
                "/dev/dri",
                "--group-add",
                "44",
                "--group-add",
                "109",
                "--security-opt",
                "seccomp=unconfined",
                "--ipc=host",
            ],
        ),
        (
            "rocm",
            "1",
            (),
            [
                "--device",
                "/dev/kfd",
                "--device",
                "/dev/dri",
                "--group-add",
                "video",
                "--security-opt",
                "seccomp=unconfined",
                "--ipc=host",
                "--env",
                "HIP_VISIBLE_DEVICES=1",
            ],
        ),
    ],
)
def test_device_flags(accelerator, gpus, gids, flags):
    assert device_flags(accelerator, gpus, gids).flags() == flags


# ---------------------------------------------------------------------------
# one image identity per source

# What never goes into an image, whatever folder holds the package: bytecode, hidden
# files, egg-info, files of other kinds, and the data a wheel maps in (_images/, _examples/).
NOISE = {
    "__pycache__/a.cpython-311.pyc": b"\x00bytecode",
    "cli/__pycache__/b.cpython-311.pyc": b"\x00",
    ".mypy_cache/x.json": b"{}",
    ".hidden.py": b"x = 1\n",
    "qwen_posttrain.egg-info/top_level.py": b"toolkit\n",
    "notes.txt": b"scratch\n",
    "_images/matrix.yaml": b"variants: {}\n",
    "_images/pushed.json": b"{}\n",
    "_examples/demo.yaml": b"base_model: x\n",
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


names = st.sampled_from(["a.py", "b.py", "c.json", "d.yaml", "e.jinja", "cli/f.py", "x/y/g.py"])


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(names, st.binary(max_size=64), min_size=1), st.data())
def test_source_hash_is_the_copied_content_only(files, data):
    """Two folders with the same files hash alike whatever else lies there; any change of
    a copied file's content or path gives another hash."""
    import tempfile

    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        first = write_tree(Path(one) / "toolkit", files)
        second = write_tree(Path(two) / "site-packages" / "toolkit", {**files, **NOISE})
        assert [r for r, _ in source_files(second)] == sorted(files)
        assert source_sha256(first) == source_sha256(second)

        rel = data.draw(st.sampled_from(sorted(files)))
        (second / rel).write_bytes(files[rel] + b"\n")
        assert source_sha256(second) != source_sha256(first)
        (second / rel).write_bytes(files[rel])
        moved = second / ("moved/" + rel)
        moved.parent.mkdir(parents=True, exist_ok=True)
        (second / rel).rename(moved)
        assert source_sha256(second) != source_sha256(first)


def test_bytes_moved_between_files_change_the_hash(tmp_path):
    one = write_tree(tmp_path / "one", {"a.py": b"xy", "b.py": b""})
    two = write_tree(tmp_path / "two", {"a.py": b"x", "b.py": b"y"})
    assert source_sha256(one) != source_sha256(two)


def test_links_are_not_followed_into_the_image(tmp_path):
    secret = write_tree(tmp_path / "outside", {"secret.py": b"TOKEN = 'x'\n"})
    package = write_tree(tmp_path / "toolkit", {"a.py": b"a = 1\n"})
    before = source_sha256(package)
    (package / "linked.py").symlink_to(secret / "secret.py")
    (package / "folder").symlink_to(secret, target_is_directory=True)
    assert [rel for rel, _ in source_files(package)] == ["a.py"]
    assert source_sha256(package) == before


def test_the_tag_follows_the_dockerfile_and_never_the_time(monkeypatch):
    variant = get_variant("cpu")
    source = source_sha256()
    before = variant.tag_for(source)
    assert before.startswith("toolkit:cpu-") and variant.tag == before
    assert variant.tag_for("0" * 64) != before
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert variant.tag_for(source) == before
    monkeypatch.setattr("toolkit.images.matrix.render_dockerfile", lambda v: "FROM scratch\n")
    assert variant.tag_for(source) != before


def scripted_engine(present: dict[str, ImageInfo], buildkit: bool, git: dict | None = None):
    """A FakeRuntime whose engine has `present` (ref -> image); a build records its
    context and arguments and tags an image labelled as the Dockerfile would."""
    built: dict = {}
    engine = FakeDocker(images=present)

    def build(call: Build) -> Result:
        context = Path(call.context)
        built.update(
            tag=call.tag,
            args=call.build_args,
            files=sorted(
                p.relative_to(context / "src" / "toolkit").as_posix()
                for p in (context / "src" / "toolkit").rglob("*")
                if p.is_file()
            ),
            staged=source_sha256(context / "src" / "toolkit"),
            modes={oct(p.stat().st_mode & 0o777) for p in (context / "src").rglob("*")},
            others=sorted(p.name for p in (context / "src").iterdir()),
        )
        labels = {"io.toolkit.source-sha256": call.build_args["SOURCE_SHA256"]}
        engine.tag(
            call.tag, ImageInfo(f"sha256:{len(present)}", labels, created="2026-12-02T00:00:00Z")
        )
        return Result(0)

    def answer_git(argv):
        key = " ".join(argv[3:])
        return Result(0, (git or {})[key]) if key in (git or {}) else Result(128, "", "not git")

    engine.build_answer = build
    fake = FakeRuntime(
        script=[(("docker", "buildx"), Result(0 if buildkit else 1)), (("git",), answer_git)],
        engine=engine,
    )
    return fake, built


@pytest.fixture
def wheels(tmp_path) -> Path:
    house = tmp_path / "wheels"
    house.mkdir()
    (house / "x-1-py3-none-any.whl").write_bytes(b"wheel")
    return house


def builds(fake) -> list[Build]:
    return fake.engine.of(Build)


def test_an_unchanged_source_is_never_rebuilt(wheels, capsys):
    """The tag of this source is here: `images build` and every run reuse it; only
    --no-cache builds again."""
    variant = get_variant("cpu")
    labels = {"io.toolkit.source-sha256": source_sha256()}
    present = {
        variant.base_ref: ImageInfo("sha256:base", {}),
        variant.tag: ImageInfo("sha256:img", labels),
    }
    fake, _ = scripted_engine(present, buildkit=False)
    assert build_image(variant, fake, BuildOptions(wheelhouse=wheels)) == variant.tag
    assert ensure_image(variant, fake) == variant.tag
    assert builds(fake) == []
    assert fake.engine.of(Remove) == []
    assert f"{variant.tag} is built from this source already" in capsys.readouterr().err
    assert build_image(variant, fake, BuildOptions(wheelhouse=wheels, no_cache=True))
    assert len(builds(fake)) == 1


def test_a_source_whose_tag_is_missing_is_built_once(wheels, monkeypatch):
    variant = get_variant("cpu")
    monkeypatch.setattr(build_module, "fill_wheelhouse", lambda v, r: wheels)
    fake, built = scripted_engine({variant.base_ref: ImageInfo("sha256:base", {})}, buildkit=True)
    assert ensure_image(variant, fake) == variant.tag
    assert ensure_image(variant, fake) == variant.tag
    assert len(builds(fake)) == 1


def test_the_build_copies_exactly_what_its_tag_hashes(wheels):
    variant = get_variant("cpu")
    fake, built = scripted_engine({variant.base_ref: ImageInfo("sha256:base", {})}, buildkit=True)
    old_umask = os.umask(0o077)  # a private umask: the image's modes must not follow it
    try:
        assert build_image(variant, fake, BuildOptions(wheelhouse=wheels)) == variant.tag
    finally:
        os.umask(old_umask)
    assert built["files"] == [rel for rel, _ in source_files()]
    assert built["others"] == ["toolkit"]  # no pyproject, no images/: not in the hash
    assert built["modes"] == {"0o644", "0o755"}  # any container user reads them
    assert built["args"]["SOURCE_SHA256"] == built["staged"] == source_sha256()
    assert built["tag"] == variant.tag_for(built["staged"])


GIT_TOP = {"rev-parse --show-toplevel": f"{REPO_ROOT}\n", "rev-parse HEAD": "abc123\n"}
STATUS = "status --porcelain --untracked-files=all -- toolkit images"


@pytest.mark.parametrize(
    "checkout, git, revision",
    [
        (True, {**GIT_TOP, STATUS: ""}, "abc123"),
        (True, {**GIT_TOP, STATUS: " M toolkit/host/doctor.py\n"}, "abc123-dirty"),
        (True, {**GIT_TOP, STATUS: "?? toolkit/new.py\n"}, "abc123-dirty"),
        # A venv inside another project's work tree: that project's commit is not ours.
        (True, {**GIT_TOP, "rev-parse --show-toplevel": "/elsewhere\n", STATUS: ""}, None),
        (True, {}, None),  # a source tree without git
        (False, {**GIT_TOP, STATUS: ""}, None),  # a wheel
    ],
)
def test_labels_name_the_revision_or_version_and_the_real_time(
    wheels, monkeypatch, checkout, git, revision
):
    import calendar
    import time
    from importlib.metadata import version

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.setattr(build_module, "CHECKOUT", checkout)
    variant = get_variant("cpu")
    fake, built = scripted_engine({variant.base_ref: ImageInfo("sha256:b", {})}, True, git)
    before = time.time()
    build_image(variant, fake, BuildOptions(wheelhouse=wheels))
    args = built["args"]
    assert args["REVISION"] == (revision or f"qwen-posttrain=={version('qwen-posttrain')}")
    created = calendar.timegm(time.strptime(args["CREATED"], "%Y-%m-%dT%H:%M:%SZ"))
    assert before - 1 <= created <= time.time() + 1


def test_source_date_epoch_dates_the_image_and_is_checked(wheels, monkeypatch):
    variant = get_variant("cpu")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    fake, built = scripted_engine({variant.base_ref: ImageInfo("sha256:b", {})}, buildkit=True)
    assert build_image(variant, fake, BuildOptions(wheelhouse=wheels)) == variant.tag
    assert built["args"]["CREATED"] == "2023-11-14T22:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    fake, _ = scripted_engine({variant.base_ref: ImageInfo("sha256:b", {})}, buildkit=True)
    with pytest.raises(UsageError) as exc:
        build_image(variant, fake, BuildOptions(wheelhouse=wheels, no_cache=True))
    assert str(exc.value) == (
        "SOURCE_DATE_EPOCH='yesterday': expected whole seconds since 1970 (e.g. "
        "`git log -1 --format=%ct`); unset it to date the image now"
    )


def test_a_build_removes_what_it_replaced_and_nothing_else(wheels):
    """After a build go, each never forced: the image its tag named before, the variant's
    images of older sources (toolkit-tagged or untagged) and this lock's builder stages of
    other builds. What stays: this build's stage (the next build's cache), another lock's,
    an image a container uses, a hand-tagged one, a newer one."""
    variant = get_variant("cpu")
    present = {
        variant.base_ref: ImageInfo("sha256:b", {}),
        variant.tag: ImageInfo("sha256:old", {}),
    }
    fake, built = scripted_engine(present, buildkit=False)
    engine, build = fake.engine, fake.engine.build_answer

    def image(ident, tags=(), created="2026-12-01T00:00:00Z", **labels):
        labels = {"io.toolkit.variant": "cpu", **labels}
        info = ImageInfo(ident, labels, tags=tuple(tags), created=created)
        present[tags[0] if tags else ident] = info

    stage = {"io.toolkit.stage": "deps", "io.toolkit.lock-sha256": variant.lock_sha256}
    other_lock = {**stage, "io.toolkit.lock-sha256": "0" * 64}

    def build_beside_others(call: Build) -> Result:
        res = build(call)
        image("sha256:stage-old", **stage, **{"io.toolkit.build": "other"})
        image("sha256:stage-this", **stage, **{"io.toolkit.build": call.build_args["BUILD_ID"]})
        image("sha256:stage-other-lock", **other_lock, **{"io.toolkit.build": "other"})
        image("sha256:older-source", ["toolkit:cpu-000000000000"])
        image("sha256:older-untagged")
        image("sha256:in-use", ["toolkit:cpu-111111111111"])
        image("sha256:hand-tagged", ["mine:1"])
        image("sha256:newer", ["toolkit:cpu-222222222222"], created="2026-12-03T00:00:00Z")
        return res

    engine.build_answer = build_beside_others
    engine.in_use = {"sha256:in-use"}
    assert build_image(variant, fake, BuildOptions(wheelhouse=wheels)) == variant.tag
    assert ListImages({"io.toolkit.variant": "cpu"}) in engine.calls
    assert [c.ref for c in engine.of(Remove)] == [
        "sha256:old",
        "sha256:stage-old",
        "toolkit:cpu-000000000000",
        "sha256:older-untagged",
    ]
    assert {i.id for i in present.values()} == {
        "sha256:b",
        engine.inspect_image(variant.tag).id,
        "sha256:stage-this",
        "sha256:stage-other-lock",
        "sha256:in-use",
        "sha256:hand-tagged",
        "sha256:newer",
    }


def test_a_hand_tagged_build_removes_only_what_its_tag_named(wheels):
    variant = get_variant("cpu")
    older = ImageInfo(
        "sha256:older-source",
        {"io.toolkit.variant": "cpu"},
        tags=("toolkit:cpu-000000000000",),
        created="2026-12-01T00:00:00Z",
    )
    present = {
        variant.base_ref: ImageInfo("sha256:b", {}),
        "mine:1": ImageInfo("sha256:old", {}),
        "toolkit:cpu-000000000000": older,
    }
    fake, _ = scripted_engine(present, buildkit=True)
    assert build_image(variant, fake, BuildOptions(wheelhouse=wheels, tag="mine:1")) == "mine:1"
    assert fake.engine.of(Remove) == [Remove("sha256:old")]


def test_the_builders_log_goes_to_stderr(tmp_path):
    """A build as a side effect of `preprocess --debug` or `train --json` must not mix
    its log into their stdout: a BuildKit build runs the docker CLI with its stdout on our
    stderr (the classic builder's: test_the_classic_builders_log_goes_to_stderr)."""
    import sys

    from toolkit.containers.seam import Docker

    runtime = FakeRuntime()
    assert Docker(runtime).build(str(tmp_path), "t:1", {"A": "1"}, {"DOCKER_BUILDKIT": "1"}).ok
    assert runtime.calls == [
        ["docker", "build", "--tag", "t:1", "--build-arg", "A=1", str(tmp_path)]
    ]
    assert runtime.envs == [{"DOCKER_BUILDKIT": "1"}] and runtime.stdouts == [sys.stderr]


@pytest.mark.docker
def test_the_classic_builders_log_goes_to_stderr(docker_engine, tmp_path, capfd):
    """The engine's classic builder (no buildx plugin): the log it streams goes to our
    stderr, nothing to our stdout."""
    import uuid

    from toolkit.containers.seam import Docker, Runtime

    (tmp_path / "Dockerfile").write_text("FROM scratch\nLABEL io.toolkit.test=1\n")
    tag = f"toolkit-test-classic:{uuid.uuid4().hex[:12]}"
    docker = Docker(Runtime())
    try:
        assert docker.build(str(tmp_path), tag, {}, {"DOCKER_BUILDKIT": "0"}).ok
        out, err = capfd.readouterr()
        assert out == "" and "Step 1/2 : FROM scratch" in err
    finally:
        docker.remove_image(tag)


def test_a_streamed_command_can_send_its_stdout_to_our_stderr(capfd):
    """The real seam: with capture=False and stdout=sys.stderr nothing reaches stdout."""
    import sys

    from toolkit.containers.seam import Runtime

    res = Runtime().run(["sh", "-c", "echo step; echo warn >&2"], capture=False, stdout=sys.stderr)
    out, err = capfd.readouterr()
    assert res.ok and out == "" and err.splitlines() == ["step", "warn"]


def test_each_build_has_its_own_builder_stage_id(wheels):
    variant = get_variant("cpu")
    ids = set()
    for _ in range(2):
        fake, built = scripted_engine({variant.base_ref: ImageInfo("sha256:b", {})}, buildkit=False)
        build_image(variant, fake, BuildOptions(wheelhouse=wheels))
        ids.add(built["args"]["BUILD_ID"])
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)
