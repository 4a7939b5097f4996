"""`toolkit images export` / `import`: an image as an archive, for machines that cannot
pull (a cluster's shared storage, an air-gapped site) — written only as a new file, never
through a link, and loaded back under its tags."""

from __future__ import annotations

import stat
import uuid

import pytest
from fakes import FakeDocker, FakeRuntime, Load, Save

from toolkit.cli import common, main
from toolkit.containers.seam import Docker, Runtime
from toolkit.containers.spec import ImageInfo

IMAGE = ImageInfo("sha256:" + "ab" * 32, {"io.toolkit.variant": "cpu"}, tags=("toolkit:cpu-x",))


def test_export_and_import_go_through_the_engines_interface(monkeypatch, tmp_path, capsys):
    fake = FakeRuntime(engine=FakeDocker(images={"toolkit:cpu-x": IMAGE}))
    monkeypatch.setattr(common, "new_runtime", lambda: fake)
    monkeypatch.chdir(tmp_path)
    assert main(["images", "export", "cpu", "--image", "toolkit:cpu-x"]) == 0
    archive = "toolkit-cpu-abababababab.tar"
    assert fake.engine.of(Save) == [Save("toolkit:cpu-x", archive)]
    assert f"wrote {archive}: toolkit:cpu-x ({IMAGE.id})" in capsys.readouterr().out
    fake.engine.images.clear()
    assert main(["images", "import", archive]) == 0
    assert fake.engine.of(Load) == [Load(archive)]
    assert capsys.readouterr().out == f"loaded toolkit:cpu-x {IMAGE.id}\n"
    assert main(["images", "export", "cpu", "--image", "toolkit:nothing"]) == 2


@pytest.mark.docker
def test_an_archive_round_trips_and_is_written_only_as_a_new_file(docker_engine, tmp_path, capsys):
    label = f"test-{uuid.uuid4().hex[:12]}"
    tag = f"toolkit-test-archive:{label}"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "f").write_text("a layer: an image with none cannot be saved")
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"FROM scratch\nCOPY f /f\nLABEL io.toolkit.test={label}\n"
    )
    docker = Docker(Runtime())
    assert docker.build(str(tmp_path / "ctx"), tag, {}, {"DOCKER_BUILDKIT": "0"}).ok
    archive = tmp_path / "image.tar"
    try:
        assert main(["images", "export", "cpu", "--image", tag, "-o", str(archive)]) == 0
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        built = docker.inspect_image(tag)
        # Never over a file, never through a link: the other file stays as it was.
        mine = tmp_path / "mine.txt"
        mine.write_text("mine")
        (tmp_path / "link.tar").symlink_to(mine)
        for taken in (archive, tmp_path / "link.tar"):
            capsys.readouterr()
            assert main(["images", "export", "cpu", "--image", tag, "-o", str(taken)]) == 2
            assert f"{taken} exists; toolkit writes an archive only as a new file" in (
                capsys.readouterr().err
            )
        assert mine.read_text() == "mine"
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "ctx",
            "image.tar",
            "link.tar",
            "mine.txt",
        ]  # no temporary file left behind
        assert docker.remove_image(tag)
        assert main(["images", "import", str(archive)]) == 0
        assert f"loaded {tag} {built.id} (not a toolkit image)" in capsys.readouterr().out
        assert docker.inspect_image(tag).id == built.id
        assert main(["images", "import", str(tmp_path / "mine.txt")]) == 2
        assert "not an image archive the engine can load" in capsys.readouterr().err
    finally:
        docker.remove_image(tag)
