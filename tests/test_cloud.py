"""Cloud VMs: push an image to a real registry on loopback and pull it by digest;
the launch files a VM runs (SkyPilot task, cloud-init user-data)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from toolkit.cli import main
from toolkit.runtime import Docker, Runtime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry (the CNCF distribution server) on 127.0.0.1, which the
    engine trusts over plain HTTP as it trusts every loopback registry."""
    binary = shutil.which("docker-registry")
    if binary is None:
        message = "docker-registry is not installed (apt-get install docker-registry)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: the registry test must run)")
        pytest.skip(message)
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: "
                      f"{tmp_path / 'store'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    server = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.mark.docker
def test_push_records_the_digest_and_a_vm_pulls_by_it(image, registry, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.setenv("TOOLKIT_PUSHED", str(tmp_path / "pushed.json"))
    assert main(["images", "push", "cpu", "--registry", f"{registry}/team"]) == 0
    record = json.loads((tmp_path / "pushed.json").read_text())["cpu"]
    assert record["image"].startswith(f"{registry}/team/toolkit@sha256:")
    assert capsys.readouterr().out.startswith(record["image"])
    docker, runtime = Docker(Runtime()), Runtime()
    local_id = docker.inspect_image(image)["Id"]
    assert record["image_id"] == local_id
    # As a VM would: nothing but the digest. The pulled image is the one built here.
    assert runtime.run(["docker", "rmi", record["tag"]], timeout=60).ok
    assert docker.pull(record["image"]).ok
    assert docker.inspect_image(record["image"])["Id"] == local_id


def test_push_refuses_a_malformed_registry(capsys):
    assert main(["images", "push", "cpu", "--registry", "https://ghcr.io/acme"]) == 2
    assert "expected HOST[:PORT][/NAMESPACE]" in capsys.readouterr().err
