"""`toolkit doctor`: will this work here, and if not, what to change.

On the host (no torch): GPUs and driver, the image that fits them, the Docker
engine, the NVIDIA Container Toolkit or AMD device nodes, disk for the image,
/dev/shm. Inside the toolkit image: torch's CUDA/HIP build, the device, its arch
in the build, bf16, flash-attn, bitsandbytes, liger, /dev/shm. Each check gives
OK, MARGINAL, UNKNOWN or FAIL with the consequence and the fix.

`toolkit train` runs the host checks first and refuses on FAIL; set
TOOLKIT_SKIP_PREFLIGHT=1 to skip them.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from toolkit.compat import Finding, Status, bf16_in_hardware, flash_attention_2, select
from toolkit.host.probe import Host

SKIP_ENV = "TOOLKIT_SKIP_PREFLIGHT"
SHM_MIN_GB = 1.0
CONTAINER_GB = 0.5
NVIDIA_TOOLKIT_URL = (
    "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html"
)


def host_checks(
    host: Host, variants: list, wanted: str | None = None, present: Collection[str] = ()
) -> list[Finding]:
    """Findings for this host; `variants` are matrix rows, `wanted` an image variant asked for,
    `present` the variants whose image is already in the engine (no space needed to fetch it)."""
    out: list[Finding] = []
    facts = host.facts
    if not facts.gpus:
        out.append(Finding("gpus", Status.OK, "no GPU found; training runs on the CPU"))
    for gpu in facts.gpus:
        detail = (gpu.compute_cap and f"compute capability {gpu.compute_cap}") or gpu.gfx or "?"
        mig = ", MIG enabled (each MIG slice is a separate device)" if gpu.mig else ""
        out.append(
            Finding(f"gpu {gpu.index}", Status.OK, f"{gpu.vendor} {gpu.name} ({detail}){mig}")
        )
        if gpu.vendor == "nvidia" and gpu.compute_cap:
            if bf16_in_hardware(gpu.compute_cap) is False:
                out.append(
                    Finding(
                        f"gpu {gpu.index} precision",
                        Status.MARGINAL,
                        f"{gpu.name} has no bf16 in hardware and no "
                        "FlashAttention-2; bf16: auto picks fp32/fp16",
                        "set bf16: false and fp16: true; leave attn_implementation at sdpa",
                    )
                )
            elif flash_attention_2(gpu.compute_cap) is None:
                out.append(
                    Finding(
                        f"gpu {gpu.index} precision",
                        Status.UNKNOWN,
                        f"compute capability {gpu.compute_cap} is not in our table",
                    )
                )
    if "nvidia" in facts.vendors:
        out.append(
            Finding(
                "nvidia driver",
                Status.OK if facts.nvidia_driver else Status.UNKNOWN,
                f"driver {facts.nvidia_driver or 'unknown'}, supports CUDA up to "
                f"{facts.cuda_driver or 'unknown'}",
            )
        )
    out.append(_image_finding(host, variants, wanted))
    out += _docker_findings(host, variants, wanted, present)
    return out


def _image_finding(host: Host, variants: list, wanted: str | None) -> Finding:
    facts = [v.facts() for v in variants]
    if wanted:
        from toolkit.compat import evaluate

        chosen = next((f for f in facts if f.name == wanted), None)
        if chosen is None:
            return Finding(
                "image", Status.FAIL, f"no variant {wanted!r}", "see `toolkit images list`"
            )
        ev = evaluate(host.facts, chosen)
        if chosen.accelerator != "cpu" and not host.facts.gpus:
            # Asked for by name on a machine with no GPU at all: a portability check (does
            # this config train alike in the CUDA or ROCm image?); torch falls back to the CPU.
            return Finding(
                "image",
                Status.MARGINAL,
                f"{wanted}: no GPU on this host; the image runs on the CPU (a portability "
                "check), slower than the cpu image",
                "use the cpu image for speed",
            )
        if ev.status == Status.OK:
            return Finding("image", ev.status, f"{wanted}: {'; '.join(ev.reasons)}")
        best = select(host.facts, facts)
        fixes = [f"use the {best.variant} image"] if best.variant not in (None, wanted) else []
        driver_short = any(r.startswith("driver ") and "below" in r for r in ev.reasons)
        if chosen.min_driver and driver_short:
            fixes.append(f"upgrade the NVIDIA driver to ≥ {chosen.min_driver}")
        return Finding(
            "image", ev.status, f"{wanted}: {'; '.join(ev.reasons)}", ", or ".join(fixes)
        )
    sel = select(host.facts, facts)
    return Finding("image", sel.status, " | ".join(sel.explanation), sel.fix)


def _docker_findings(
    host: Host, variants: list, wanted: str | None, present: Collection[str]
) -> list[Finding]:
    out = []
    if host.docker_version is None and "permission denied" in (host.docker_error or "").lower():
        # The engine may well be running: this user may not use its socket.
        out.append(
            Finding(
                "docker",
                Status.FAIL,
                f"{(host.docker_error or '').split(';')[0]}: a permission problem (the engine "
                "may well be running), this user may not use its socket",
                "add your user to the docker group (`sudo usermod -aG docker $USER`, then "
                "log in again), or set DOCKER_HOST to an engine you may use, or train "
                "with --runtime local",
            )
        )
        return out
    if host.docker_version is None:
        out.append(
            Finding(
                "docker",
                Status.FAIL,
                "the Docker engine does not answer: toolkit cannot run the image",
                "install Docker and start it (`sudo systemctl start docker`), or "
                "train with --runtime local",
            )
        )
        return out
    out.append(Finding("docker", Status.OK, f"engine {host.docker_engine or host.docker_version}"))
    vendors = host.facts.vendors
    if "nvidia" in vendors:
        if "nvidia" in host.docker_runtimes or host.nvidia_ctk:
            out.append(Finding("nvidia container toolkit", Status.OK, "installed"))
        else:
            out.append(
                Finding(
                    "nvidia container toolkit",
                    Status.FAIL,
                    "not installed: `docker run --gpus all` fails with 'could not select device "
                    'driver "" with capabilities: [[gpu]]\'',
                    f"install the NVIDIA Container Toolkit ({NVIDIA_TOOLKIT_URL}), then "
                    "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl "
                    "restart docker`",
                )
            )
    if "amd" in vendors:
        missing = [
            d for d, ok in (("/dev/kfd", host.dev_kfd), ("/dev/dri", host.dev_dri)) if not ok
        ]
        if missing:
            out.append(
                Finding(
                    "amd devices",
                    Status.FAIL,
                    f"{' and '.join(missing)} missing: the ROCm driver (amdgpu) is "
                    "not loaded, so no container can reach the GPU",
                    "install the amdgpu driver (amdgpu-install --usecase=dkms) and reboot",
                )
            )
        elif not host.is_root and not {"video", "render"} & set(host.groups):
            out.append(
                Finding(
                    "amd devices",
                    Status.MARGINAL,
                    "you are in neither the video nor the render group",
                    "sudo usermod -aG video,render $USER, then log in again",
                )
            )
        else:
            out.append(Finding("amd devices", Status.OK, "/dev/kfd and /dev/dri present"))
    # The image this host would run: the one asked for, else the one select picks (cpu on a
    # host without GPUs); the largest of the matrix only when nothing fits.
    target = wanted or select(host.facts, [v.facts() for v in variants]).variant
    size = next((v.size_gb for v in variants if v.name == target), None) or max(
        (v.size_gb for v in variants), default=6.0
    )
    # An image already here needs no room to fetch; a container still needs its writable
    # layer and logs in Docker's root.
    need = CONTAINER_GB if target in present else size
    if host.disk_free_gb is None:
        out.append(Finding("disk", Status.UNKNOWN, "cannot read free space of Docker's root"))
    elif host.disk_free_gb < need:
        what = (
            f"a container of the {target} image (already here) needs about {need} GB"
            if target in present
            else f"the image needs about {size:.0f} GB"
        )
        out.append(
            Finding(
                "disk",
                Status.FAIL,
                f"{host.disk_free_gb:.1f} GB free in {host.docker_root or 'Docker'}; {what}",
                "free space (`docker system prune`) or move Docker's data-root",
            )
        )
    elif host.disk_free_gb < 2 * need + 10:
        out.append(
            Finding(
                "disk",
                Status.MARGINAL,
                f"{host.disk_free_gb:.1f} GB free in {host.docker_root or 'Docker'}: "
                + ("the image is here" if target in present else "the image fits")
                + ", a later image build or pull may not",
                "free space (`docker system prune`)",
            )
        )
    else:
        out.append(Finding("disk", Status.OK, f"{host.disk_free_gb:.0f} GB free"))
    out.append(_shm_finding(host.shm_gb, in_container=False))
    return out


def _shm_finding(shm_gb: float | None, in_container: bool) -> Finding:
    if shm_gb is None:
        return Finding("shm", Status.UNKNOWN, "no /dev/shm")
    if shm_gb >= SHM_MIN_GB:
        return Finding("shm", Status.OK, f"/dev/shm {shm_gb:.1f} GB")
    fix = (
        "toolkit passes --shm-size or --ipc=host to its containers; start this one the same way"
        if in_container
        else "only --runtime local uses it: remount it larger (mount -o remount,size=8G /dev/shm)"
    )
    return Finding(
        "shm",
        Status.MARGINAL,
        f"/dev/shm is {shm_gb * 1000:.0f} MB: DataLoader workers crash ('bus error') when it fills",
        fix,
    )


def container_checks() -> list[Finding]:
    """Inside the image: what torch sees, in the order that failures cascade."""
    import torch

    out = []
    variant = os.environ.get("TOOLKIT_VARIANT", "unknown")
    hip, cuda = getattr(torch.version, "hip", None), torch.version.cuda
    build = f"HIP {hip}" if hip else f"CUDA {cuda}" if cuda else "CPU only"
    out.append(
        Finding("torch", Status.OK, f"torch {torch.__version__} ({build}), image variant {variant}")
    )
    gpu_build = bool(hip or cuda)
    if gpu_build and not torch.cuda.is_available():
        out.append(
            Finding(
                "device",
                Status.FAIL,
                "no GPU is visible in the container",
                "start it with the GPU passed in (toolkit train does: --gpus all, "
                "or /dev/kfd and /dev/dri for AMD); check `nvidia-smi` or `rocm-smi` "
                "on the host",
            )
        )
    elif not gpu_build:
        out.append(Finding("device", Status.OK, "CPU image: training runs on the CPU"))
    else:
        arch_list = torch.cuda.get_arch_list()
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            if hip:
                gfx = props.gcnArchName.split(":")[0]
                ok = gfx in arch_list
                out.append(
                    Finding(
                        f"gpu {i} arch",
                        Status.OK if ok else Status.FAIL,
                        f"{props.name} {gfx}; the build has {' '.join(arch_list)}",
                        ""
                        if ok
                        else "use a ROCm variant whose targets include "
                        f"{gfx} (`toolkit images select`)",
                    )
                )
                continue
            cc = f"{props.major}.{props.minor}"
            from toolkit.compat import arch_status

            status, reason = arch_status(cc, tuple(arch_list))
            out.append(
                Finding(
                    f"gpu {i} arch",
                    status,
                    f"{props.name}: {reason}",
                    "" if status == Status.OK else "use the variant `toolkit images select` names",
                )
            )
            bf16 = bf16_in_hardware(cc)
            out.append(
                Finding(
                    f"gpu {i} bf16",
                    Status.OK if bf16 else Status.MARGINAL,
                    f"bf16 in hardware: {'yes' if bf16 else 'no'} (compute "
                    f"capability {cc}; is_bf16_supported() is not asked: it counts "
                    "emulation)",
                    "" if bf16 else "set bf16: false, fp16: true",
                )
            )
    out.append(
        _import_finding(
            "flash-attn-4",
            "flash_attn.cute",
            gpu_only=True,
            gpu=gpu_build,
            missing="not installed: packed rows take PyTorch's varlen kernel, others sdpa",
        )
    )
    out.append(
        _import_finding(
            "bitsandbytes",
            "bitsandbytes",
            gpu_only=False,
            gpu=gpu_build,
            missing="not installed: QLoRA and 8-bit optimizers unavailable",
        )
    )
    out.append(
        _import_finding(
            "liger",
            "liger_kernel",
            gpu_only=True,
            gpu=gpu_build,
            missing="not installed: the liger_* keys are unavailable",
        )
    )
    try:
        st = os.statvfs("/dev/shm")
        shm = st.f_blocks * st.f_frsize / 1e9
    except OSError:
        shm = None
    out.append(_shm_finding(shm, in_container=True))
    return out


def _import_finding(check: str, module: str, gpu_only: bool, gpu: bool, missing: str) -> Finding:
    if gpu_only and not gpu:
        return Finding(check, Status.OK, "not used on the CPU")
    try:
        imported = __import__(module)
    except ImportError:
        return Finding(check, Status.MARGINAL, missing)
    except Exception as exc:  # an extension built for another torch fails here, not at ImportError
        return Finding(
            check,
            Status.FAIL,
            f"import fails: {str(exc).splitlines()[0][:200]}",
            "the extension was built for another torch, C++ ABI or CUDA; rebuild "
            "the image from its lock",
        )
    from importlib import metadata

    try:
        version = metadata.version(check if check != "liger" else "liger-kernel")
    except metadata.PackageNotFoundError:
        version = getattr(imported, "__version__", "")
    return Finding(check, Status.OK, f"{module} {version}".strip())


def worst(findings: list[Finding]) -> Status:
    return max((f.status for f in findings), default=Status.OK)


def render(findings: list[Finding]) -> str:
    width = max((len(f.check) for f in findings), default=0)
    lines = []
    for f in findings:
        lines.append(f"{f.status.name:<8} {f.check:<{width}}  {f.message}")
        if f.fix:
            lines.append(f"{'':<8} {'':<{width}}  fix: {f.fix}")
    return "\n".join(lines)
