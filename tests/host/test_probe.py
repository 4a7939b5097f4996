"""Host probes fed with recorded outputs, and the doctor's verdicts on them."""

from __future__ import annotations

import pytest
from conftest import TESTS
from fakes import FakeDocker, FakeRuntime

from toolkit.compat import Status
from toolkit.containers.spec import Result, unreachable
from toolkit.host.doctor import host_checks, render
from toolkit.host.probe import (
    NVIDIA_QUERY,
    gather,
    parse_amd_smi_static,
    parse_cuda_version,
    parse_nvidia_smi,
    parse_proc_driver_version,
    parse_rocm_agent_enumerator,
    parse_rocm_smi_productname,
)
from toolkit.images import load_matrix

HOSTS = TESTS / "data" / "hosts"
MATRIX = list(load_matrix().values())


def recorded(name: str) -> str:
    return (HOSTS / name).read_text()


def test_nvidia_smi_with_mig():
    gpus, driver = parse_nvidia_smi(recorded("h100-mig.nvidia-smi.csv"))
    assert driver == "550.54.15"
    assert [(g.index, g.compute_cap, g.memory_mib, g.mig) for g in gpus] == [
        (0, "9.0", 81559, False),
        (1, "9.0", 81559, True),
    ]


def test_nvidia_smi_old_driver_without_compute_cap():
    gpus, driver = parse_nvidia_smi(recorded("t4-470.nvidia-smi.csv"), with_compute_cap=False)
    assert driver == "470.182.03"
    assert (gpus[0].name, gpus[0].compute_cap) == ("Tesla T4", "7.5")


@pytest.mark.parametrize(
    "name, version",
    [
        ("proc-driver-version.proprietary.txt", "550.54.15"),
        ("proc-driver-version.open.txt", "570.86.15"),
    ],
)
def test_proc_driver_version(name, version):
    assert parse_proc_driver_version(recorded(name)) == version


def test_cuda_version_from_header():
    assert parse_cuda_version(recorded("h100.nvidia-smi.txt")) == "12.4"


def test_amd_smi_both_layouts():
    assert [
        (g.name, g.gfx) for g in parse_amd_smi_static(recorded("mi300x.amd-smi-static.json"))
    ] == [("AMD Instinct MI300X", "gfx942")] * 2
    assert [
        (g.name, g.gfx)
        for g in parse_amd_smi_static(recorded("mi355x.amd-smi-static.gpu_data.json"))
    ] == [("AMD Instinct MI355X", "gfx950")]


def test_rocm_smi_and_agent_enumerator():
    [gpu] = parse_rocm_smi_productname(recorded("rx7800.rocm-smi-productname.json"))
    assert (gpu.index, gpu.gfx) == (0, "gfx1101")
    assert parse_rocm_agent_enumerator(recorded("mi300x.rocm_agent_enumerator.txt")) == [
        "gfx942",
        "gfx942",
    ]


def fake_host(script, programs, files=None, exists=(), engine=None):
    """What `gather` finds on a host whose programs answer from `script` and whose engine
    is `engine` (default: one that answers, with runc only)."""
    runtime = FakeRuntime(script=script, programs=set(programs), engine=engine or FakeDocker())
    files = files or {}
    return gather(runtime, read_text=files.get, exists=lambda p: p in exists)


def test_gather_old_driver_falls_back_to_the_short_query():
    host = fake_host(
        [
            (
                (
                    "nvidia-smi",
                    "--query-gpu=index,name,compute_cap,driver_version,memory.total,"
                    "mig.mode.current",
                ),
                Result(2, recorded("t4-470.compute-cap-error.txt")),
            ),
            (
                ("nvidia-smi", "--query-gpu=index,name,driver_version,memory.total"),
                Result(0, recorded("t4-470.nvidia-smi.csv")),
            ),
            (
                ("nvidia-smi",),
                Result(
                    0, "| NVIDIA-SMI 470.182.03  Driver Version: 470.182.03  CUDA Version: 11.4 |\n"
                ),
            ),
        ],
        programs={"nvidia-smi", "docker"},
    )
    assert host.facts.nvidia_driver == "470.182.03"
    assert host.facts.cuda_driver == "11.4"
    assert host.facts.gpus[0].compute_cap == "7.5"
    assert any("old driver" in s for s in host.sources)


def test_gather_prefers_sysfs_driver_version():
    host = fake_host(
        [(("nvidia-smi",), Result(0, recorded("h100-mig.nvidia-smi.csv")))],
        programs={"nvidia-smi", "docker"},
        files={"/sys/module/nvidia/version": "550.54.15\n"},
    )
    assert host.sources[0] == "driver from /sys/module/nvidia/version"
    assert host.facts.nvidia_driver == "550.54.15"


def test_gather_amd_host():
    host = fake_host(
        [(("amd-smi",), Result(0, recorded("mi300x.amd-smi-static.json")))],
        programs={"amd-smi", "docker"},
        exists={"/dev/kfd", "/dev/dri"},
    )
    assert [g.gfx for g in host.facts.gpus] == ["gfx942", "gfx942"]
    assert host.dev_kfd and host.dev_dri


# --- doctor verdicts on described hosts ---------------------------------------------------


def nvidia_host(csv: str, driver_files=None, runtimes=("nvidia", "runc")):
    return fake_host(
        [
            (("nvidia-smi", f"--query-gpu={NVIDIA_QUERY}"), Result(0, csv)),
            (("nvidia-smi",), Result(0, "CUDA Version: 12.4")),
        ],
        programs={"nvidia-smi", "docker"},
        files=driver_files,
        engine=FakeDocker(runtimes=runtimes),
    )


def finding(findings, check):
    return next(f for f in findings if f.check == check)


def test_doctor_refuses_cu130_on_driver_550_and_names_the_alternatives():
    host = nvidia_host(recorded("h100-mig.nvidia-smi.csv"))
    image = finding(host_checks(host, MATRIX, wanted="cu130"), "image")
    assert image.status == Status.FAIL
    assert "below 580" in image.message
    assert image.fix == "use the cu128 image, or upgrade the NVIDIA driver to ≥ 580.65.06"


@pytest.mark.parametrize("wanted", ["cu130", "rocm7.2"])
def test_a_gpu_image_asked_for_on_a_host_with_no_gpu_is_a_portability_check(wanted):
    """Not a refusal: the image's torch runs on the CPU (same config, same curve, to
    compare with a GPU run); the doctor says it is slower, and the run asks the engine for
    no GPU (tests/test_docker.py). With a GPU of the other vendor it stays refused."""
    image = finding(host_checks(fake_host([], {"docker"}), MATRIX, wanted), "image")
    assert (image.status, image.fix) == (Status.MARGINAL, "use the cpu image for speed")
    assert image.message == (
        f"{wanted}: no GPU on this host; the image runs on the CPU (a portability check), "
        "slower than the cpu image"
    )
    nvidia = nvidia_host("0, NVIDIA H100 80GB HBM3, 9.0, 580.82.07, 81559 MiB, [N/A]\n")
    assert finding(host_checks(nvidia, MATRIX, "rocm7.2"), "image").status == Status.FAIL


def test_doctor_t4_is_told_no_bf16_no_flash_attention():
    host = nvidia_host("0, Tesla T4, 7.5, 575.51.03, 15360 MiB, [N/A]\n")
    precision = finding(host_checks(host, MATRIX), "gpu 0 precision")
    assert precision.status == Status.MARGINAL
    assert "no bf16 in hardware and no FlashAttention-2" in precision.message
    assert "fp16: true" in precision.fix


def test_doctor_without_nvidia_container_toolkit():
    host = nvidia_host(recorded("rtx5090.nvidia-smi.csv"), runtimes=("runc",))
    findings = host_checks(host, MATRIX)
    ctk = finding(findings, "nvidia container toolkit")
    assert ctk.status == Status.FAIL
    assert 'could not select device driver "" with capabilities: [[gpu]]' in ctk.message
    assert "nvidia-ctk runtime configure" in ctk.fix
    # Driver 570 runs cu128's build (with sm_120) but not cu130's.
    assert finding(findings, "image").message.startswith("cu128: driver 570.124.04")


def test_doctor_amd_without_device_nodes():
    host = fake_host(
        [(("amd-smi",), Result(0, recorded("mi300x.amd-smi-static.json")))],
        programs={"amd-smi", "docker"},
    )
    devices = finding(host_checks(host, MATRIX), "amd devices")
    assert devices.status == Status.FAIL and "/dev/kfd and /dev/dri missing" in devices.message


def test_doctor_no_engine_and_cpu_only():
    host = fake_host([], {"docker"}, engine=FakeDocker(version=unreachable("Cannot connect")))
    findings = host_checks(host, MATRIX)
    assert finding(findings, "image").message.startswith("cpu:")
    docker = finding(findings, "docker")
    assert docker.status == Status.FAIL and "--runtime local" in docker.fix
    text = render(findings)
    assert "FAIL     docker" in text and "fix: install Docker" in text


def test_disk_is_judged_against_the_image_this_host_would_run():
    from dataclasses import replace

    host = replace(fake_host([], programs={"docker"}), disk_free_gb=5.0)
    # No GPU: the cpu image (2 GB in the matrix), not the largest variant (rocm, 12 GB).
    assert finding(host_checks(host, MATRIX), "disk").status == Status.MARGINAL
    disk = finding(host_checks(host, MATRIX, wanted="rocm7.2"), "disk")
    assert disk.status == Status.FAIL and "the image needs about 12 GB" in disk.message


def test_an_image_already_here_needs_room_for_a_container_only():
    from dataclasses import replace

    host = replace(fake_host([], programs={"docker"}), disk_free_gb=1.6)
    assert finding(host_checks(host, MATRIX), "disk").status == Status.FAIL
    disk = finding(host_checks(host, MATRIX, present={"cpu"}), "disk")
    assert disk.status == Status.MARGINAL and "the image is here" in disk.message
    # Another variant's image being here does not help the one this host runs.
    assert finding(host_checks(host, MATRIX, present={"cu130"}), "disk").status == Status.FAIL
    tight = replace(host, disk_free_gb=0.3)
    disk = finding(host_checks(tight, MATRIX, present={"cpu"}), "disk")
    assert disk.status == Status.FAIL and "already here" in disk.message


def test_cli_select_and_doctor_on_a_described_host(monkeypatch, capsys):
    import json

    from toolkit import cli
    from toolkit.cli import common

    fake = FakeRuntime(
        script=[
            (
                ("nvidia-smi", f"--query-gpu={NVIDIA_QUERY}"),
                Result(0, "0, NVIDIA GeForce RTX 5090, 12.0, 550.54.15, 32607 MiB, [N/A]\n"),
            ),
            (("nvidia-smi",), Result(0, "CUDA Version: 12.4")),
        ],
        programs={"nvidia-smi", "docker"},
        engine=FakeDocker(runtimes=("nvidia", "runc")),
    )
    monkeypatch.setattr(common, "new_runtime", lambda: fake)
    monkeypatch.delenv("TOOLKIT_IN_CONTAINER", raising=False)
    assert cli.main(["images", "select", "--json"]) == 1  # Blackwell on driver 550: nothing fits
    out = json.loads(capsys.readouterr().out)
    assert out["variant"] is None and out["status"] == "FAIL"
    assert any("R570+" in line for line in out["explanation"])
    assert cli.main(["doctor", "--json"]) == 1
    checks = {f["check"]: f["status"] for f in json.loads(capsys.readouterr().out)}
    assert checks["image"] == "FAIL" and checks["nvidia container toolkit"] == "OK"
