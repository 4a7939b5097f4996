"""Which engine toolkit talks to: Docker (the default socket or DOCKER_HOST) or Podman
(CONTAINER_HOST, or --engine podman: the user's own rootless socket), and what a
rootless engine changes: the container's root is the invoking user, so no user is asked
for. The runs themselves on a real rootless Podman: test_podman.py."""

from __future__ import annotations

import pytest
from fakes import FakeDocker, FakeRuntime

from toolkit.cli import main
from toolkit.containers import spec
from toolkit.containers.engine import create_kwargs
from toolkit.containers.spec import Engine, RunSpec, engine_address, unreachable


@pytest.fixture
def no_engine_env(monkeypatch):
    for name in ("DOCKER_HOST", "CONTAINER_HOST", "TOOLKIT_ENGINE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_address_comes_from_docker_host_then_container_host_then_engine(no_engine_env):
    env = no_engine_env
    assert engine_address() == (None, "the default socket")
    env.setenv("TOOLKIT_ENGINE", "podman")
    env.setattr(spec.os, "geteuid", lambda: 1000)
    env.setattr(spec.os, "getuid", lambda: 1000)
    env.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert engine_address() == ("unix:///run/user/1000/podman/podman.sock", "--engine podman")
    env.delenv("XDG_RUNTIME_DIR")
    assert engine_address()[0] == "unix:///run/user/1000/podman/podman.sock"
    env.setattr(spec.os, "geteuid", lambda: 0)
    assert engine_address()[0] == "unix:///run/podman/podman.sock"  # root's rootful service
    env.setenv("CONTAINER_HOST", "unix:///tmp/p.sock")
    assert engine_address() == ("unix:///tmp/p.sock", "CONTAINER_HOST")
    env.setenv("DOCKER_HOST", "unix:///tmp/d.sock")
    assert engine_address() == ("unix:///tmp/d.sock", "DOCKER_HOST")


def test_podman_that_does_not_answer_is_told_how_to_start(no_engine_env):
    no_engine_env.setenv("TOOLKIT_ENGINE", "podman")
    no_engine_env.setenv("XDG_RUNTIME_DIR", "/nonexistent/run")
    no_engine_env.setattr(spec.os, "geteuid", lambda: 1000)
    said = str(unreachable("Connection refused"))
    assert said.startswith(
        "no Podman service answers at unix:///nonexistent/run/podman/podman.sock "
        "(--engine podman) (Connection refused); start yours with `podman system service"
    ), said
    denied = str(unreachable("PermissionError: permission denied"))
    assert "the Podman socket is its user's alone" in denied and "docker group" not in denied


def test_an_unknown_engine_is_exit_2(no_engine_env, capsys):
    assert main(["--engine", "lxc", "doctor"]) == 2
    assert "'lxc' is not one of 'docker', 'podman'" in capsys.readouterr().err
    no_engine_env.setenv("TOOLKIT_ENGINE", "rkt")
    from toolkit.errors import UsageError

    with pytest.raises(UsageError, match="TOOLKIT_ENGINE=rkt: not an engine toolkit knows"):
        spec.wanted_engine()


def test_a_rootless_engine_is_asked_for_no_user():
    run = RunSpec(image="img", command=["true"], user="1000:1000")
    assert create_kwargs(run, "toolkit-x")["user"] == "1000:1000"
    assert create_kwargs(run, "toolkit-x", rootless=True)["user"] is None


def test_doctor_names_the_engine_and_whether_it_is_rootless(monkeypatch, capsys):
    from toolkit.cli import common

    engine = FakeDocker(version="4.3.1", name="podman", rootless=True)
    monkeypatch.setattr(common, "new_runtime", lambda: FakeRuntime(engine=engine))
    monkeypatch.delenv("TOOLKIT_IN_CONTAINER", raising=False)
    main(["doctor"])
    assert "docker  engine Podman 4.3.1 (rootless, containers run as you)" in (
        capsys.readouterr().out
    )
    assert str(Engine("docker", "27.5.1")) == "Docker 27.5.1 (rootful)"


@pytest.mark.docker
def test_engine_podman_refuses_an_address_where_docker_answers(
    docker_engine, no_engine_env, capsys
):
    no_engine_env.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert main(["--engine", "podman", "doctor"]) == 2
    err = capsys.readouterr().err
    assert (
        "--engine podman: the engine at unix:///var/run/docker.sock (DOCKER_HOST) is Docker" in err
    )
