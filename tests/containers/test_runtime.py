"""The Docker seam and the container plan, without an engine (FakeDocker)."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import Build, FakeDocker, FakeRuntime, Import, Pull, Remove

from toolkit import images
from toolkit.containers.seam import Docker, Runtime
from toolkit.containers.spec import (
    SECRETS_RECEIVER,
    Devices,
    ImageInfo,
    Mount,
    Result,
    RunSpec,
    mount_option,
    run_argv,
    unreachable,
)
from toolkit.host.place import container_spec, plan_mounts
from toolkit.images import BuildOptions, build_image, ensure_image, get_variant, resolve_base
from toolkit.plan import paths as config_paths


def test_run_argv_is_exact():
    spec = RunSpec(
        image="toolkit:cpu-abc",
        command=["toolkit", "train", "/c.yaml"],
        mounts=[Mount("/data", "/data"), Mount("/out", "/out", read_only=False)],
        user="1000:1000",
        workdir="/work",
        env={"A": "1"},
        network="none",
        devices=Devices(shm_size="1g"),
        secrets=("HF_TOKEN",),
    )
    assert run_argv(spec) == [
        "docker",
        "run",
        "--rm",
        "--init",
        "--interactive",
        "--user",
        "1000:1000",
        "--network",
        "none",
        "--mount",
        "type=bind,source=/data,target=/data,readonly",
        "--mount",
        "type=bind,source=/out,target=/out",
        "--env",
        "A=1",
        "--workdir",
        "/work",
        "--shm-size",
        "1g",
        "toolkit:cpu-abc",
        *SECRETS_RECEIVER,
        "toolkit",
        "train",
        "/c.yaml",
    ]


def test_mounts_fold_nested_paths_but_never_into_a_write(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    mounts = plan_mounts(reads=[data, data / "a.jsonl", out / "model"], writes=[out, out / "sub"])
    assert mounts == [
        Mount(str(data), str(data), read_only=True),
        Mount(str(out), str(out), read_only=False),
        Mount(str(out / "model"), str(out / "model"), read_only=True),
    ]


def test_a_read_equal_to_a_write_stays_read_only(tmp_path):
    assert plan_mounts(reads=[tmp_path / "m"], writes=[tmp_path / "m"]) == [
        Mount(str(tmp_path / "m"), str(tmp_path / "m"), read_only=True)
    ]
    # A read inside a read, with a write between them, keeps its own read-only mount.
    outer, out = tmp_path / "d", tmp_path / "d" / "out"
    mounts = plan_mounts(reads=[outer, out / "x.jsonl"], writes=[out])
    assert Mount(str(out / "x.jsonl"), str(out / "x.jsonl"), read_only=True) in mounts


@pytest.mark.parametrize(
    "path",
    ["/data/lr=1e-4,bs=8", '/q/"x",readonly=false', "/n/a\nb", "/s/ lead", "/c/a,source=/etc"],
)
def test_mount_option_text_is_one_field_per_value(path):
    """The --mount text the VM scripts use: the docker CLI reads it as one CSV record, so a
    path's commas and quotes stay in their field."""
    import csv
    import io

    text = mount_option(Mount(path, path, read_only=True))
    fields = next(csv.reader(io.StringIO(text)))
    assert fields == ["type=bind", f"source={path}", f"target={path}", "readonly"]


def test_secrets_go_by_stdin_and_only_when_named(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "wandb_secret_value")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    spec = container_spec("img", "sha256:1", ["toolkit"], [], [tmp_path], network=False)
    assert spec.secrets == () and "--interactive" not in run_argv(spec)  # none named
    spec = container_spec(
        "img", "sha256:1", ["toolkit"], [], [tmp_path], network=False, secrets=("WANDB_API_KEY",)
    )
    argv = run_argv(spec)
    assert spec.secrets == ("WANDB_API_KEY",) and "--interactive" in argv
    assert not any("WANDB_API_KEY" in a or "HF_TOKEN" in a for a in argv)
    assert not any("secret_value" in a for a in argv)
    assert spec.user == f"{os.getuid()}:{os.getgid()}"
    assert spec.network == "none"


def test_config_paths_split_local_and_remote(tmp_path, write_config, tiny_model_dir):
    from toolkit.config import load_config

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    cfg = load_config(write_config({"base_model": str(model)})).config
    reads, writes, remote = config_paths(cfg)
    assert reads[0] == model and writes == [Path(cfg.output_dir)] and remote is False
    hub = load_config(write_config({"base_model": "Qwen/Qwen3-8B"})).config
    assert config_paths(hub)[2] is True


def test_base_falls_back_to_local_build_out_loud(capsys):
    variant = get_variant("cpu")
    engine = FakeDocker(
        pull_answer=Result(1, "", "dial tcp: lookup registry-1.docker.io: no such host")
    )
    fake = FakeRuntime(
        script=[(("debootstrap",), Result(0))],
        programs={"docker", "debootstrap"},
        engine=engine,
    )
    if os.geteuid() != 0:
        pytest.skip("the local base needs root (debootstrap)")
    base = resolve_base(variant, fake.docker(), BuildOptions())
    assert base == variant.local_base_tag
    err = capsys.readouterr().err
    assert (
        f"could not pull {variant.base_ref} (dial tcp: lookup registry-1.docker.io: no such "
        "host); falling back to a base built from Debian's archive" in err
    )
    debootstrap = next(c for c in fake.calls if c[0] == "debootstrap")
    assert debootstrap[1:4] == [
        "--variant=minbase",
        "--include=python3,python3-venv,ca-certificates,make",
        "bookworm",
    ]
    [imported] = engine.of(Import)
    assert imported.tag == variant.local_base_tag


def test_explicit_base_is_used_without_pulling_others():
    variant = get_variant("cpu")
    fake = FakeRuntime(engine=FakeDocker(images={"my/base:1": ImageInfo("sha256:b", {})}))
    assert resolve_base(variant, fake.docker(), BuildOptions(base="my/base:1")) == "my/base:1"
    assert fake.engine.of(Pull) == []


def test_build_passes_labels_and_offline_pip(tmp_path, monkeypatch):
    variant = get_variant("cpu")
    house = tmp_path / "wheels"
    house.mkdir()
    (house / "x-1-py3-none-any.whl").write_bytes(b"wheel")
    staged = {}

    def build(call: Build) -> Result:
        context = Path(call.context)
        staged["files"] = sorted(p.name for p in (context / "wheels").iterdir())
        staged["src"] = (context / "src" / "toolkit" / "cli" / "__init__.py").exists()
        staged["dockerfile"] = (context / "Dockerfile").read_text()
        return Result(0)

    engine = FakeDocker(
        images={variant.base_ref: ImageInfo("sha256:b", {})},
        build_answer=build,
    )
    fake = FakeRuntime(script=[(("docker", "buildx"), Result(1))], engine=engine)
    assert build_image(variant, fake, BuildOptions(wheelhouse=house)) == variant.tag
    [call] = engine.of(Build)
    args = call.build_args
    assert args["PIP_SOURCE"] == "--no-index --find-links /build/wheels"
    assert args["BASE_ID"] == "sha256:b" and args["BASE_IMAGE"] == variant.base_ref
    assert args["SOURCE_SHA256"] == images.source_sha256()
    assert staged["dockerfile"] == images.render_dockerfile(variant)
    assert staged["files"] == ["x-1-py3-none-any.whl"] and staged["src"]
    assert call.env == {"DOCKER_BUILDKIT": "0"}
    # Nothing had the tag before: nothing is removed.
    assert engine.of(Remove) == []


def test_a_rebuild_removes_the_image_its_tag_named_before(tmp_path):
    variant = get_variant("cpu")
    house = tmp_path / "wheels"
    house.mkdir()
    (house / "x-1-py3-none-any.whl").write_bytes(b"wheel")
    engine = FakeDocker(
        images={
            variant.base_ref: ImageInfo("sha256:b", {}),
            variant.tag: ImageInfo("sha256:old", {}),
        },
    )

    def build(call: Build) -> Result:
        engine.tag(call.tag, ImageInfo("sha256:new", {}))
        return Result(0)

    engine.build_answer = build
    fake = FakeRuntime(script=[(("docker", "buildx"), Result(1))], engine=engine)
    assert build_image(variant, fake, BuildOptions(wheelhouse=house)) == variant.tag
    # Untagged by the build, so removed (never forced: one a container uses stays).
    assert engine.calls[-1] == Remove("sha256:old")
    assert engine.inspect_image("sha256:old") is None


def test_tag_follows_the_lock(tmp_path):
    (tmp_path / "locks").mkdir()
    matrix = (images.IMAGES_DIR / "matrix.yaml").read_text()
    (tmp_path / "matrix.yaml").write_text(matrix)
    (tmp_path / "locks" / "cpu.txt").write_text("torch==2.13.0+cpu\n")
    first = images.load_matrix(tmp_path)["cpu"].tag
    assert first == images.load_matrix(tmp_path)["cpu"].tag
    (tmp_path / "locks" / "cpu.txt").write_text("torch==2.13.0+cpu\nnumpy==2.4.6\n")
    assert images.load_matrix(tmp_path)["cpu"].tag != first


def test_stale_image_is_rebuilt(monkeypatch, capsys):
    variant = get_variant("cpu")
    stale = ImageInfo("sha256:i", {"io.toolkit.source-sha256": "old"})
    engine = FakeDocker(images={variant.tag: stale})
    fake = FakeRuntime(engine=engine)
    rebuilt = []

    def build(v, r, o):
        rebuilt.append(v)
        engine.tag(v.tag, replace(stale, id="sha256:new"))
        return v.tag

    monkeypatch.setattr(images.build, "build_image", build)
    assert ensure_image(variant, fake) == variant.tag
    assert rebuilt == [variant]
    assert "was built from other toolkit source; rebuilding" in capsys.readouterr().err


def test_current_image_is_reused(monkeypatch):
    variant = get_variant("cpu")
    fresh = ImageInfo("sha256:i", {"io.toolkit.source-sha256": images.source_sha256()})
    fake = FakeRuntime(engine=FakeDocker(images={variant.tag: fresh}))
    monkeypatch.setattr(
        images.build, "build_image", lambda *a: pytest.fail("rebuilt a fresh image")
    )
    assert ensure_image(variant, fake) == variant.tag


def test_missing_engine_says_what_to_do(monkeypatch):
    from toolkit.errors import RuntimeFailure

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert re.match(
        r"the Docker engine does not answer at the "
        r"default socket /var/run/docker.sock \(Cannot "
        r"connect\); start it",
        str(unreachable("Cannot connect")),
    )
    denied = unreachable("permission denied while trying to connect to the Docker daemon socket")
    assert re.search("permission denied .* docker group", str(denied))
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.2.3:2375")
    assert re.search(
        r"DOCKER_HOST=tcp://10.1.2.3:2375 \(Cannot connect\); check",
        str(unreachable("Cannot connect")),
    )
    # The real seam (the Docker API) says so of an address nothing listens on.
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    with pytest.raises(
        RuntimeFailure,
        match=r"no Docker engine answers at "
        r"DOCKER_HOST=tcp://127.0.0.1:1 \(",
    ):
        Docker(Runtime()).require()
    assert Docker(Runtime()).server_version() is None


def test_the_engine_double_answers_every_engine_call():
    """FakeDocker answers each method of the seam that reaches the engine itself, so no
    unit test reaches a real one; it inherits only what runs programs through the
    FakeRuntime (buildkit_env), builds argv (cli_build_argv) or asks its own (server_version)."""
    public = {name for name in vars(Docker) if not name.startswith("_")}
    assert public - set(vars(FakeDocker)) == {"server_version", "buildkit_env", "cli_build_argv"}


def test_preflight_failure_refuses_and_names_the_skip(monkeypatch):
    from toolkit.errors import RuntimeFailure
    from toolkit.host.place import choose_image
    from toolkit.host.probe import NVIDIA_QUERY

    fake = FakeRuntime(
        script=[
            (
                ("nvidia-smi", f"--query-gpu={NVIDIA_QUERY}"),
                Result(0, "0, NVIDIA H100 80GB HBM3, 9.0, 575.51.03, 81559 MiB, Disabled\n"),
            ),
        ],
        programs={"docker", "nvidia-smi"},
    )
    monkeypatch.delenv("TOOLKIT_SKIP_PREFLIGHT", raising=False)
    with pytest.raises(RuntimeFailure) as info:
        choose_image(fake, None, None)
    assert "set TOOLKIT_SKIP_PREFLIGHT=1 to run anyway" in str(info.value)
    assert any(p.startswith("nvidia container toolkit: not installed") for p in info.value.problems)

    monkeypatch.setenv("TOOLKIT_SKIP_PREFLIGHT", "1")
    monkeypatch.setattr(images, "ensure_image", lambda v, r: v.tag)
    assert choose_image(fake, None, None) == get_variant("cpu").tag
