"""Compatibility decisions, table-driven: driver floors, arch coverage, gfx targets,
and the variant chosen for hosts described as data."""

from __future__ import annotations

import pytest

from toolkit.compat import (
    Gpu,
    HostFacts,
    Status,
    VariantFacts,
    arch_status,
    bf16_in_hardware,
    driver_status,
    gfx_status,
    select,
)
from toolkit.images import load_matrix

OK, MARGINAL, FAIL, UNKNOWN = Status.OK, Status.MARGINAL, Status.FAIL, Status.UNKNOWN
MATRIX = [v.facts() for v in load_matrix().values()]
# A build without Blackwell kernels, as torch 2.6.0+cu126 was (measured: sm_50 … sm_90).
CU126 = VariantFacts(
    "cu126",
    "cuda",
    "12.6",
    ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"),
    "560.28.03",
)


@pytest.mark.parametrize(
    "driver, cuda, status",
    [
        ("580.65.06", "13.0", OK),
        ("590.44.01", "13.0", OK),
        ("550.54.15", "13.0", FAIL),  # below the 580 floor of every CUDA 13 build
        ("575.51.03", "12.8", OK),
        ("570.26", "12.8", OK),
        ("535.183.01", "12.8", MARGINAL),  # minor-version compatibility: PTX JIT breaks
        ("470.182.03", "12.8", FAIL),
        (None, "12.8", UNKNOWN),
        ("550.54.15", "99.9", UNKNOWN),
    ],
)
def test_driver_floor(driver, cuda, status):
    assert driver_status(driver, cuda)[0] == status


def test_minor_version_compatibility_names_the_consequence():
    _, reason = driver_status("535.183.01", "12.8")
    assert "unsupported toolchain" in reason and "torch.compile" in reason


@pytest.mark.parametrize(
    "cc, arch_list, status",
    [
        ("9.0", ("sm_80", "sm_90"), OK),
        ("8.6", ("sm_80",), OK),  # SASS runs on a later minor
        ("8.9", ("sm_80", "sm_86"), OK),
        ("8.0", ("sm_86",), FAIL),  # never on an earlier minor
        ("12.0", CU126.arch_list, FAIL),  # Blackwell RTX on a cu126 build
        ("12.0", ("sm_90", "sm_120", "compute_120"), OK),
        ("10.0", ("sm_90", "compute_90"), MARGINAL),  # PTX JIT only
        ("6.1", ("sm_75", "sm_80"), FAIL),  # Pascal on cu128
        (None, ("sm_80",), UNKNOWN),
    ],
)
def test_arch_coverage(cc, arch_list, status):
    assert arch_status(cc, arch_list)[0] == status


@pytest.mark.parametrize(
    "gfx, rocm, status",
    [
        ("gfx942", "6.4", OK),
        ("gfx950", "6.4", FAIL),
        ("gfx950", "7.2", OK),
        ("gfx1151", "7.2", OK),
        ("gfx1031", "7.2", MARGINAL),  # runs only with HSA_OVERRIDE_GFX_VERSION
        ("gfx803", "7.2", FAIL),
        (None, "7.2", UNKNOWN),
        ("gfx942", "5.0", UNKNOWN),
    ],
)
def test_gfx_targets(gfx, rocm, status):
    assert gfx_status(gfx, rocm)[0] == status


def test_override_is_said_never_set():
    assert "HSA_OVERRIDE_GFX_VERSION=10.3.0" in gfx_status("gfx1031", "7.2")[1]


@pytest.mark.parametrize(
    "cc, bf16",
    [
        ("7.5", False),
        ("7.0", False),
        ("8.0", True),
        ("9.0", True),
        ("12.0", True),
        (None, None),
        ("6.1", None),
        ("99.0", None),
    ],
)
def test_bf16_by_compute_capability(cc, bf16):
    assert bf16_in_hardware(cc) is bf16


def test_bf16_is_read_from_the_table(monkeypatch):
    """The table's bf16 column decides, not a rule written again in code."""
    from toolkit import compat

    real = compat.table()
    rows = {**real["compute_capability"]["rows"], "8.0": {"arch": "x", "bf16": False, "fa2": True}}
    monkeypatch.setattr(
        compat,
        "table",
        lambda: {**real, "compute_capability": {**real["compute_capability"], "rows": rows}},
    )
    assert bf16_in_hardware("8.0") is False


def nvidia(*ccs: str, driver: str, name: str = "GPU") -> HostFacts:
    return HostFacts(
        tuple(Gpu(i, "nvidia", name, compute_cap=cc) for i, cc in enumerate(ccs)),
        nvidia_driver=driver,
    )


def amd(*gfx: str) -> HostFacts:
    return HostFacts(tuple(Gpu(i, "amd", "AMD GPU", gfx=g) for i, g in enumerate(gfx)))


@pytest.mark.parametrize(
    "host, variant, status",
    [
        (HostFacts(), "cpu", OK),
        (nvidia("9.0", driver="590.44.01"), "cu130", OK),  # newest CUDA wins a tie
        (nvidia("9.0", driver="575.51.03"), "cu128", OK),
        (nvidia("9.0", driver="550.54.15"), "cu128", MARGINAL),  # cu130 refused outright
        (nvidia("8.0", "8.9", driver="535.183.01"), "cu128", MARGINAL),
        (nvidia("12.0", driver="590.44.01", name="RTX 5090"), "cu130", OK),
        (amd("gfx942", "gfx942"), "rocm7.2", OK),  # MI300X
        (amd("gfx950"), "rocm7.2", OK),  # MI355X: 7.x only
    ],
)
def test_select(host, variant, status):
    sel = select(host, MATRIX)
    assert (sel.variant, sel.status) == (variant, status), sel.explanation


def test_blackwell_never_gets_a_build_without_its_kernels():
    host = nvidia("12.0", driver="590.44.01", name="NVIDIA GeForce RTX 5090")
    assert select(host, [CU126]).variant is None
    assert select(host, [CU126, *MATRIX]).variant == "cu130"
    sel = select(host, [CU126])
    assert "no kernels for sm_120" in " ".join(sel.explanation)


def test_blackwell_needs_r570():
    sel = select(nvidia("12.0", driver="565.57.01"), MATRIX)
    assert sel.status == FAIL and "R570+" in " ".join(sel.explanation)


def test_old_driver_gets_the_floor_as_fix():
    sel = select(nvidia("8.0", driver="470.182.03"), MATRIX)
    assert sel.variant is None and sel.status == FAIL
    assert "upgrade the NVIDIA driver to ≥ 570.26 (for cu128)" in sel.fix


@pytest.mark.parametrize("driver", ["470.182.03", "580.65.06"])
def test_volta_is_refused_for_its_arch_not_its_driver(driver):
    """A V100 runs in no image (CUDA 13 and torch's cu128 wheels dropped sm_70): the fix
    says so and does not send the user to upgrade a driver."""
    sel = select(nvidia("7.0", driver=driver, name="Tesla V100-SXM2-16GB"), MATRIX)
    assert sel.variant is None and sel.status == FAIL
    assert "Tesla V100-SXM2-16GB (Volta, sm_70)" in sel.fix
    assert "CUDA 13 removed Volta" in sel.fix and "driver upgrade would not help" in sel.fix
    assert "upgrade the NVIDIA driver" not in sel.fix


def test_a_volta_beside_a_hopper_is_named():
    sel = select(nvidia("9.0", "7.0", driver="580.65.06", name="GPU"), MATRIX)
    assert sel.variant is None and "sm_70" in sel.fix


def test_mixed_vendors_are_refused():
    host = HostFacts(
        (Gpu(0, "nvidia", "A100", compute_cap="8.0"), Gpu(1, "amd", "MI300X", gfx="gfx942")),
        nvidia_driver="575.51.03",
    )
    sel = select(host, MATRIX)
    assert sel.variant is None and "--gpus" in sel.fix


def test_every_gpu_counts():
    # One old GPU among new ones: the build must cover both.
    host = nvidia("9.0", "6.1", driver="590.44.01")
    assert select(host, MATRIX).variant is None
