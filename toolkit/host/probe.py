"""Host facts without torch: GPUs, drivers, Docker, device nodes, disk, /dev/shm.

Parsers are pure (tests feed them recorded outputs); `gather` runs the probes
through the Runtime seam and reads files through `read_text`, both replaceable.
Order: the driver from /sys/module/nvidia/version, then /proc/driver/nvidia/version
(both written by the kernel module), then nvidia-smi; GPUs from nvidia-smi, falling
back to a query without compute_cap for old drivers (470-era nvidia-smi answers
'Field "compute_cap" is not a valid field to query'); AMD from rocm_agent_enumerator,
amd-smi (the successor of rocm-smi), rocm-smi and /dev/kfd.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from toolkit.compat import Gpu, HostFacts
from toolkit.containers.seam import Runtime
from toolkit.containers.spec import Engine
from toolkit.errors import RuntimeFailure

NVIDIA_QUERY = "index,name,compute_cap,driver_version,memory.total,mig.mode.current"
NVIDIA_QUERY_OLD = "index,name,driver_version,memory.total"

# Compute capabilities by product name, for drivers whose nvidia-smi cannot report
# compute_cap (470-era). Source: NVIDIA's CUDA GPUs list.
CC_BY_NAME = {
    "V100": "7.0",
    "T4": "7.5",
    "A100": "8.0",
    "A10": "8.6",
    "A40": "8.6",
    "A30": "8.0",
    "L4": "8.9",
    "L40": "8.9",
    "H100": "9.0",
    "H200": "9.0",
    "B200": "10.0",
    "RTX 3090": "8.6",
    "RTX 4090": "8.9",
    "RTX 5090": "12.0",
}


def parse_proc_driver_version(text: str) -> str | None:
    """/proc/driver/nvidia/version → '550.54.15' (proprietary or open kernel module)."""
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def parse_cuda_version(nvidia_smi_header: str) -> str | None:
    """`nvidia-smi` (no arguments) → the highest CUDA the driver supports."""
    match = re.search(r"CUDA Version:\s*(\d+\.\d+)", nvidia_smi_header)
    return match.group(1) if match else None


def _mib(text: str) -> int | None:
    match = re.search(r"(\d+)", text)
    return int(match.group(1)) if match else None


def parse_nvidia_smi(csv_text: str, with_compute_cap: bool = True) -> tuple[list[Gpu], str | None]:
    """nvidia-smi --query-gpu=NVIDIA_QUERY (or NVIDIA_QUERY_OLD) --format=csv,noheader."""
    gpus, driver = [], None
    for line in csv_text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if with_compute_cap and len(cells) >= 6:
            index, name, raw_cc, driver, memory, mig = cells[:6]
            cc = raw_cc if re.fullmatch(r"\d+\.\d+", raw_cc) else None
            mig_on = mig.lower() == "enabled"
        elif len(cells) >= 4:
            index, name, driver, memory = cells[:4]
            cc = _cc_from_name(name)
            mig_on = False
        else:
            continue
        gpus.append(
            Gpu(
                index=int(index),
                vendor="nvidia",
                name=name,
                compute_cap=cc,
                memory_mib=_mib(memory),
                mig=mig_on,
            )
        )
    return gpus, driver


def _cc_from_name(name: str) -> str | None:
    for key in sorted(CC_BY_NAME, key=len, reverse=True):
        if key in name:
            return CC_BY_NAME[key]
    return None


def parse_rocm_agent_enumerator(text: str) -> list[str]:
    """One gfx name per agent; gfx000 is the CPU agent."""
    return [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip().startswith("gfx") and ln.strip() != "gfx000"
    ]


def parse_amd_smi_static(text: str) -> list[Gpu]:
    """`amd-smi static --asic --json`: a list of {gpu, asic{market_name, target_graphics_version}},
    or the same list under "gpu_data" (newer releases)."""
    data = json.loads(text)
    rows = data.get("gpu_data", []) if isinstance(data, dict) else data
    gpus = []
    for i, row in enumerate(rows):
        asic = row.get("asic", {})
        gfx = asic.get("target_graphics_version")
        gpus.append(
            Gpu(
                index=int(row.get("gpu", i)),
                vendor="amd",
                name=asic.get("market_name", "AMD GPU"),
                gfx=gfx if gfx and gfx.startswith("gfx") else None,
            )
        )
    return gpus


def parse_rocm_smi_productname(text: str) -> list[Gpu]:
    """`rocm-smi --showproductname --json`: {"card0": {"Card series": …, "GFX Version": …}}."""
    data = json.loads(text)
    gpus = []
    for key, row in sorted(data.items()):
        if not key.startswith("card"):
            continue
        row = {k.lower(): v for k, v in row.items()}  # "Card series" became "Card Series"
        gfx = row.get("gfx version")
        gpus.append(
            Gpu(
                index=int(key[4:]),
                vendor="amd",
                name=row.get("card series") or row.get("card model", "AMD GPU"),
                gfx=gfx if gfx and gfx.startswith("gfx") else None,
            )
        )
    return gpus


@dataclass
class Host:
    """Everything the host doctor looks at."""

    facts: HostFacts
    sources: list[str] = field(default_factory=list)  # which probe answered what
    docker_version: str | None = None
    docker_engine: Engine | None = None  # which engine answers (Docker or Podman), rootless?
    docker_error: str | None = None  # why no engine answers, as the client said it
    docker_root: str | None = None
    docker_runtimes: tuple[str, ...] = ()
    nvidia_ctk: bool = False
    dev_kfd: bool = False
    dev_dri: bool = False
    disk_free_gb: float | None = None
    shm_gb: float | None = None
    groups: tuple[str, ...] = ()
    is_root: bool = False


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def gather(
    runtime: Runtime,
    read_text: Callable[[str], str | None] = _read,
    exists: Callable[[str], bool] = os.path.exists,
) -> Host:
    """Probe this host. Every probe may be missing; what is unknown stays None."""
    sources: list[str] = []
    driver = (read_text("/sys/module/nvidia/version") or "").strip() or None
    if driver:
        sources.append("driver from /sys/module/nvidia/version")
    else:
        driver = parse_proc_driver_version(read_text("/proc/driver/nvidia/version") or "")
        if driver:
            sources.append("driver from /proc/driver/nvidia/version")

    gpus: list[Gpu] = []
    cuda = None
    if runtime.which("nvidia-smi"):
        res = runtime.run(
            ["nvidia-smi", f"--query-gpu={NVIDIA_QUERY}", "--format=csv,noheader"], timeout=30
        )
        if res.ok:
            gpus, smi_driver = parse_nvidia_smi(res.stdout)
            sources.append("GPUs from nvidia-smi")
        elif "not a valid field" in (res.stdout + res.stderr):
            res = runtime.run(
                ["nvidia-smi", f"--query-gpu={NVIDIA_QUERY_OLD}", "--format=csv,noheader"],
                timeout=30,
            )
            gpus, smi_driver = parse_nvidia_smi(res.stdout, with_compute_cap=False)
            sources.append(
                "GPUs from nvidia-smi (an old driver: compute capability from the product name)"
            )
        else:
            smi_driver = None
        driver = driver or smi_driver
        header = runtime.run(["nvidia-smi"], timeout=30)
        cuda = parse_cuda_version(header.stdout) if header.ok else None

    amd: list[Gpu] = []
    if runtime.which("amd-smi"):
        res = runtime.run(["amd-smi", "static", "--asic", "--json"], timeout=30)
        if res.ok:
            amd = parse_amd_smi_static(res.stdout)
            sources.append("AMD GPUs from amd-smi")
    if not amd and runtime.which("rocm-smi"):
        res = runtime.run(["rocm-smi", "--showproductname", "--json"], timeout=30)
        if res.ok:
            amd = parse_rocm_smi_productname(res.stdout)
            sources.append("AMD GPUs from rocm-smi")
    if runtime.which("rocm_agent_enumerator"):
        res = runtime.run(["rocm_agent_enumerator"], timeout=30)
        targets = parse_rocm_agent_enumerator(res.stdout) if res.ok else []
        if targets and not amd:
            amd = [Gpu(index=i, vendor="amd", name=t, gfx=t) for i, t in enumerate(targets)]
            sources.append("AMD GPUs from rocm_agent_enumerator")
        elif targets:
            amd = [
                g if g.gfx or i >= len(targets) else replace(g, gfx=targets[i])
                for i, g in enumerate(amd)
            ]

    docker = runtime.docker()
    try:
        version, docker_error = docker.require(), None
    except RuntimeFailure as exc:
        version, docker_error = None, str(exc)
    engine = docker.engine() if version else None
    root, runtimes = docker.info() if version else (None, ())
    disk = _free_gb(root) if root else _free_gb("/var/lib/docker")
    return Host(
        facts=HostFacts(gpus=tuple(gpus + amd), nvidia_driver=driver, cuda_driver=cuda),
        sources=sources,
        docker_version=version,
        docker_engine=engine,
        docker_error=docker_error,
        docker_root=root,
        docker_runtimes=runtimes,
        nvidia_ctk=bool(runtime.which("nvidia-ctk") or runtime.which("nvidia-container-cli")),
        dev_kfd=exists("/dev/kfd"),
        dev_dri=exists("/dev/dri"),
        disk_free_gb=disk,
        shm_gb=_size_gb("/dev/shm"),
        groups=_groups(),
        is_root=os.geteuid() == 0,
    )


def _free_gb(path: str) -> float | None:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free / 1e9
    except OSError:
        return None


def _size_gb(path: str) -> float | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_blocks * st.f_frsize / 1e9


def _groups() -> tuple[str, ...]:
    import grp

    names = []
    for gid in os.getgroups():
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return tuple(names)
