"""toolkit's images in the real engine: `toolkit cache` lists and prunes them, and an
image build's log goes to stderr. The engine is shared: each test makes its own
throwaway images (an empty `docker import`, labelled with a value unique to the test),
sees only those, and removes everything it made."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Iterator

import pytest

from toolkit.cache import IMAGE_LABEL, prune_images
from toolkit.cli import main
from toolkit.containers import engine
from toolkit.containers.seam import Docker, Runtime
from toolkit.containers.spec import ImageInfo

pytestmark = pytest.mark.docker

MARK = "io.toolkit.test"  # each test's images carry it with the test's own value


class Scoped(Docker):
    """The real engine, with every listing narrowed to one test's images."""

    def __init__(self, runtime: Runtime, mark: str) -> None:
        super().__init__(runtime)
        self.mark = mark

    def list_images(self, labels: dict[str, str | None]) -> list[ImageInfo]:
        return super().list_images({**labels, MARK: self.mark})


@pytest.fixture
def throwaway(docker_engine) -> Iterator[tuple[str, callable]]:
    """(the test's mark, make(tag, labels) -> image ID); on leaving, the containers and
    images this test made are removed, by ID."""
    from docker.errors import DockerException

    mark = uuid.uuid4().hex
    client = engine.client()
    made: list[str] = []
    containers: list = []
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()

    def make(tag: str | None, labels: dict[str, str]) -> str:
        changes = [f'LABEL {k}="{v}"' for k, v in {**labels, MARK: mark}.items()]
        repo, name = tag.split(":") if tag else (None, None)
        answer = client.api.import_image_from_data(
            empty.getvalue(), repository=repo, tag=name, changes=changes
        )
        image_id = json.loads(answer.strip().splitlines()[-1])["status"]
        made.append(image_id)
        return image_id

    make.containers = containers
    yield mark, make
    for container in containers:
        container.remove(force=True)
    for image_id in reversed(made):
        try:
            client.images.remove(image_id, force=True)  # our own, by ID: never another's
        except DockerException:
            pass


def test_prune_removes_only_unused_stale_images_labelled_as_toolkits(throwaway):
    mark, make = throwaway
    variant = f"test-{mark[:8]}"
    repo = f"toolkit-test-{mark[:12]}"
    ours = {IMAGE_LABEL: variant}
    current = make(f"{repo}:current", ours)
    old = make(f"{repo}:old", ours)
    dangling = make(None, {**ours, "io.toolkit.stage": "deps"})
    used = make(f"{repo}:used", ours)
    foreign = make(f"{repo}:foreign", {"org.example.owner": "someone"})
    client = engine.client()
    make.containers.append(client.containers.create(used, command=["none"]))
    docker = Scoped(Runtime(), mark)
    current_tags = {variant: f"{repo}:current"}

    would = prune_images(docker, current_tags, dry_run=True)
    assert {e.image.id for e in would} == {old, dangling}
    assert all(engine.image_info(i) is not None for i in (old, dangling))

    gone = prune_images(docker, current_tags)
    assert {e.image.id for e in gone} == {old, dangling}
    assert engine.image_info(old) is None and engine.image_info(dangling) is None
    for kept in (current, used, foreign):
        assert engine.image_info(kept) is not None


def test_cache_list_images_shows_tags_id_size_variant_and_state(throwaway, capsys):
    mark, make = throwaway
    variant = f"test-{mark[:8]}"
    repo = f"toolkit-test-{mark[:12]}"
    old = make(f"{repo}:old", {IMAGE_LABEL: variant})
    make(f"{repo}:foreign", {"org.example.owner": "someone"})
    capsys.readouterr()
    assert main(["cache", "list", "images", "--json"]) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["variant"] == variant]
    assert len(rows) == 1
    row = rows[0]
    assert row["kind"] == "images" and row["id"] == old and row["tags"] == [f"{repo}:old"]
    assert row["current"] is False and row["in_use"] is False
    assert isinstance(row["bytes"], int) and row["created"].startswith("20")


def test_a_classic_build_logs_to_stderr_only(docker_engine, tmp_path, capfd):
    """The API's (classic) builder: its step lines and the RUN's output go to stderr,
    nothing to stdout (`train --json` and `preprocess --debug` print there)."""
    from toolkit.images import get_variant

    variant = get_variant("cpu")
    bases = [b for b in (variant.base_ref, variant.local_base_tag) if engine.image_info(b)]
    assert bases, f"neither {variant.base_ref} nor {variant.local_base_tag} is on the engine"
    mark = uuid.uuid4().hex
    (tmp_path / "Dockerfile").write_text(
        f'FROM {bases[0]}\nLABEL {MARK}="{mark}"\nRUN echo hello-{mark[:8]}\n'
    )
    tag = f"toolkit-test-{mark[:12]}:build"
    capfd.readouterr()
    try:
        res = engine.build(str(tmp_path), tag, {}, no_cache=True)
        out, err = capfd.readouterr()
        assert res.ok, res.stderr
        assert out == ""
        assert f"hello-{mark[:8]}" in err and "Step 3/3" in err
    finally:
        built = engine.image_info(tag)
        if built is not None:
            engine.client().images.remove(built.id, force=True)
