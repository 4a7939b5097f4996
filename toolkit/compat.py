"""Compatibility decisions: pure functions over the tables in compat.yaml.

Nothing here does I/O beyond reading that table once; host facts come in as
data (`HostFacts`, gathered by `toolkit.host.probe`). Each decision returns a status
and words a user can act on. Unknown input yields UNKNOWN, never a guess.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import yaml


class Status(enum.IntEnum):
    """Ordered so that max() of several statuses is the worst."""

    OK = 0
    UNKNOWN = 1
    MARGINAL = 2
    FAIL = 3


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    message: str
    fix: str = ""

    def as_dict(self) -> dict:
        return {
            "check": self.check,
            "status": self.status.name,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Gpu:
    index: int
    vendor: str  # "nvidia" or "amd"
    name: str
    compute_cap: str | None = None  # NVIDIA, e.g. "9.0"
    gfx: str | None = None  # AMD, e.g. "gfx942"
    memory_mib: int | None = None
    mig: bool = False


@dataclass(frozen=True)
class HostFacts:
    gpus: tuple[Gpu, ...] = ()
    nvidia_driver: str | None = None
    cuda_driver: str | None = None  # the highest CUDA the driver supports, e.g. "12.8"

    @property
    def vendors(self) -> set[str]:
        return {g.vendor for g in self.gpus}


@dataclass(frozen=True)
class VariantFacts:
    """What select needs to know of an image variant (a row of images/matrix.yaml)."""

    name: str
    accelerator: str  # "cpu", "cuda" or "rocm"
    version: str | None = None  # CUDA or ROCm version of the torch build
    arch_list: tuple[str, ...] = ()  # torch.cuda.get_arch_list() of the build
    min_driver: str | None = None


@cache
def table() -> dict:
    return yaml.safe_load(resources.files("toolkit").joinpath("compat.yaml").read_text())


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.strip().split(".") if part.isdigit())


# ---------------------------------------------------------------------------
# single decisions


def driver_status(driver: str | None, cuda: str) -> tuple[Status, str]:
    """Can this NVIDIA driver run a torch build for `cuda`?"""
    row = table()["cuda_driver_floor"]["rows"].get(cuda)
    if row is None:
        return Status.UNKNOWN, f"no driver floor on record for CUDA {cuda}"
    if driver is None:
        return Status.UNKNOWN, "the NVIDIA driver version is unknown"
    have = version_tuple(driver)
    if have >= version_tuple(row["ga"]):
        return Status.OK, f"driver {driver} ≥ {row['ga']}, CUDA {cuda}'s floor"
    if have >= version_tuple(row["minor"]):
        return Status.MARGINAL, (
            f"driver {driver} is below CUDA {cuda}'s floor {row['ga']} and runs it only under "
            "minor-version compatibility: PTX built by a newer toolchain fails to JIT "
            "('the provided PTX was compiled with an unsupported toolchain'), which breaks "
            "Triton kernels and torch.compile"
        )
    return Status.FAIL, (
        f"driver {driver} is below {row['minor']}, the least any CUDA {cuda} "
        "build runs on ('CUDA driver version is insufficient')"
    )


def arch_status(compute_cap: str | None, arch_list: tuple[str, ...]) -> tuple[Status, str]:
    """Does a torch build with `arch_list` have kernels for a GPU of this compute capability?

    SASS (sm_XY) runs on the same major with an equal or higher minor (sm_80 code
    runs on 8.6, never on 9.0); PTX (compute_XY) is compiled at first use on any
    later GPU.
    """
    if compute_cap is None:
        return Status.UNKNOWN, "the GPU's compute capability is unknown"
    major, minor = version_tuple(compute_cap)[:2]
    sm = f"sm_{major}{minor}"
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if kind != "sm" or not digits[:-1].isdigit():
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if a_major == major and a_minor <= minor:
            return Status.OK, f"the build has {arch} kernels for this {sm} GPU"
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if (
            kind == "compute"
            and digits[:-1].isdigit()
            and (int(digits[:-1]), int(digits[-1])) <= (major, minor)
        ):
            return Status.MARGINAL, (
                f"no {sm} kernels; {arch} PTX is compiled at first use "
                "(slow start, and only with a driver at the toolkit's "
                "own floor)"
            )
    return Status.FAIL, (
        f"the build has no kernels for {sm} ({' '.join(arch_list) or 'none'}): "
        "'no kernel image is available for execution on the device'"
    )


def gfx_status(gfx: str | None, rocm: str) -> tuple[Status, str]:
    targets = table()["rocm_gfx"]["rows"].get(rocm)
    if targets is None:
        return Status.UNKNOWN, f"no gfx list on record for ROCm {rocm}"
    if gfx is None:
        return Status.UNKNOWN, "the GPU's gfx target is unknown"
    if gfx in targets:
        return Status.OK, f"ROCm {rocm} builds for {gfx}"
    override = table()["rocm_override"]["rows"].get(gfx)
    if override:
        return Status.MARGINAL, (
            f"ROCm {rocm} has no {gfx} build; it is known to run with "
            f"HSA_OVERRIDE_GFX_VERSION={override} (unsupported by AMD; "
            "toolkit never sets it for you)"
        )
    return Status.FAIL, f"ROCm {rocm} has no {gfx} build ('hipErrorNoBinaryForGpu')"


def bf16_in_hardware(compute_cap: str | None) -> bool | None:
    """bf16 in hardware, from the compute-capability table (is_bf16_supported() counts
    emulation, and says yes on a T4); None for a capability the table does not know."""
    row = table()["compute_capability"]["rows"].get(compute_cap or "")
    return None if row is None else bool(row["bf16"])


def flash_attention_2(compute_cap: str | None) -> bool | None:
    row = table()["compute_capability"]["rows"].get(compute_cap or "")
    return None if row is None else bool(row["fa2"])


@dataclass(frozen=True)
class Attention:
    """The attention a training runs: `kernel` is the name transformers is given."""

    kernel: str
    why: str


VARLEN = "toolkit_varlen"  # registered by toolkit.trainer.attention


def attention(
    requested: str,
    gpu: Gpu | None,
    half: bool,
    packed: bool,
    installed: Collection[str] = (),
) -> Attention:
    """The kernel for `requested` (the config's attn_implementation) on `gpu` (None: the
    CPU), training in bf16/fp16 (`half`) or not, on packed rows or not. `installed` names
    what the environment has: "flash_attn_4", "flash_attn" (2), "varlen" (torch's)."""
    if requested == "eager":
        return Attention("eager", "eager, as asked")
    rows = "packed rows get a block-diagonal (L, L) mask" if packed else "no packed rows"
    if gpu is None:
        if requested == "sdpa":
            return Attention("sdpa", f"sdpa on the CPU; {rows}")
        return Attention("sdpa", f"{requested} runs on GPUs only; sdpa on the CPU, {rows}")
    if requested == "flex_attention":
        return Attention("flex_attention", "FlexAttention; packed rows become a document mask")
    if not half:
        return Attention(
            "sdpa",
            f"flash kernels run in bf16 or fp16 and this run trains in float32; sdpa, {rows}",
        )
    facts = table()["attention"]
    nvidia, cap = gpu.vendor == "nvidia", gpu.compute_cap or "0.0"
    flash_asked = requested.startswith("flash_attention")
    fa4_trains = nvidia and cap in facts["flash_attention_4_trains_on"]
    if flash_asked and fa4_trains and "flash_attn_4" in installed:
        return Attention("flash_attention_4", f"FlashAttention-4 on sm{cap.replace('.', '')}")
    missed = ""
    if requested == "flash_attention_4" or (flash_asked and fa4_trains):
        missed = (
            "flash-attn-4 is not installed (the cu130 image carries it); "
            if fa4_trains
            else f"FlashAttention-4 does not train on {gpu.name} (its backward needs NVIDIA "
            "sm90+); "
        )
    from_sm80 = not nvidia or version_tuple(cap) >= version_tuple(facts["varlen_min_compute_cap"])
    if flash_asked and "flash_attn" in installed and from_sm80:
        return Attention("flash_attention_2", missed + "flash-attn 2")
    if packed and from_sm80 and "varlen" in installed:
        return Attention(
            VARLEN,
            missed + "packed rows: PyTorch's varlen flash kernel over each sequence, no mask",
        )
    if not from_sm80:
        return Attention(
            "sdpa",
            f"{gpu.name} (sm{cap.replace('.', '')}) has no flash kernels (they need sm80+); "
            f"sdpa, {rows}",
        )
    return Attention("sdpa", missed + "sdpa (its own flash backend where the inputs allow)")


def is_blackwell(compute_cap: str | None) -> bool:
    return compute_cap is not None and version_tuple(compute_cap)[0] >= 10


# ---------------------------------------------------------------------------
# choosing a variant for a host


@dataclass
class Evaluation:
    variant: VariantFacts
    status: Status
    reasons: list[str] = field(default_factory=list)


@dataclass
class Selection:
    variant: str | None
    status: Status
    explanation: list[str]
    fix: str = ""
    evaluations: list[Evaluation] = field(default_factory=list)


def evaluate(host: HostFacts, variant: VariantFacts) -> Evaluation:
    """How well `variant` fits `host`: the worst status over driver and every GPU."""
    ev = Evaluation(variant, Status.OK)

    def add(status: Status, reason: str) -> None:
        ev.status = max(ev.status, status)
        ev.reasons.append(reason)

    if variant.accelerator == "cpu":
        add(Status.OK, "runs anywhere, on the CPU")
        return ev
    if variant.accelerator == "cuda":
        if "nvidia" not in host.vendors:
            add(Status.FAIL, "needs an NVIDIA GPU")
            return ev
        add(*driver_status(host.nvidia_driver, variant.version or ""))
        floor = table()["blackwell_driver_floor"]["driver"]
        for gpu in host.gpus:
            status, reason = arch_status(gpu.compute_cap, variant.arch_list)
            add(status, f"GPU {gpu.index} ({gpu.name}): {reason}")
            if (
                is_blackwell(gpu.compute_cap)
                and host.nvidia_driver
                and (version_tuple(host.nvidia_driver) < version_tuple(floor))
            ):
                add(
                    Status.FAIL,
                    f"GPU {gpu.index} ({gpu.name}) is a Blackwell GPU and needs "
                    f"an R{floor}+ driver",
                )
        return ev
    if "amd" not in host.vendors:
        add(Status.FAIL, "needs an AMD GPU")
        return ev
    for gpu in host.gpus:
        status, reason = gfx_status(gpu.gfx, variant.version or "")
        add(status, f"GPU {gpu.index} ({gpu.name}): {reason}")
    return ev


def select(host: HostFacts, variants: list[VariantFacts]) -> Selection:
    """The best variant for this host, with the reasons; newest toolkit wins a tie."""
    if not host.gpus:
        return Selection("cpu", Status.OK, ["cpu: no GPU found, so the CPU image"])
    if len(host.vendors) > 1:
        return Selection(
            None,
            Status.FAIL,
            ["this host has NVIDIA and AMD GPUs; one image serves one vendor"],
            fix="pick the GPUs of one vendor with --gpus",
        )
    vendor = next(iter(host.vendors))
    accel = "cuda" if vendor == "nvidia" else "rocm"
    candidates = [v for v in variants if v.accelerator == accel]
    evaluations = sorted(
        (evaluate(host, v) for v in candidates),
        key=lambda e: (e.status, tuple(-x for x in version_tuple(e.variant.version or "0"))),
    )
    best = evaluations[0] if evaluations else None
    if best is None or best.status == Status.FAIL:
        lines = [f"{e.variant.name}: {'; '.join(r for r in e.reasons)}" for e in evaluations]
        return Selection(
            None,
            Status.FAIL,
            ["no image fits this host:", *lines],
            fix=_fix_for(host, evaluations),
            evaluations=evaluations,
        )
    lines = [f"{best.variant.name}: {'; '.join(best.reasons)}"]
    for e in evaluations[1:]:
        lines.append(
            f"not {e.variant.name} ({e.status.name}): "
            f"{'; '.join(r for r in e.reasons if 'OK' not in r)[:300]}"
        )
    return Selection(best.variant.name, best.status, lines, evaluations=evaluations)


def _fix_for(host: HostFacts, evaluations: list[Evaluation]) -> str:
    if not evaluations:
        return "no image variant for this vendor is in images/matrix.yaml"
    if host.vendors == {"nvidia"}:
        # A GPU no variant has kernels for: a driver upgrade would not help.
        for gpu in host.gpus:
            if gpu.compute_cap and all(
                arch_status(gpu.compute_cap, e.variant.arch_list)[0] == Status.FAIL
                for e in evaluations
            ):
                row = table()["compute_capability"]["rows"].get(gpu.compute_cap, {})
                sm = "sm_" + gpu.compute_cap.replace(".", "")
                arch = f" ({row['arch']}, {sm})" if row.get("arch") else f" ({sm})"
                why = f": {row['dropped']}" if row.get("dropped") else ""
                return (
                    f"no image in the matrix has kernels for {gpu.name}{arch}{why}. A driver "
                    "upgrade would not help: train on a Turing (sm_75) or newer GPU"
                )
        floors = [
            (e.variant.min_driver, e.variant.name) for e in evaluations if e.variant.min_driver
        ]
        if floors:
            lowest = min(floors, key=lambda f: version_tuple(f[0]))
            return (
                f"upgrade the NVIDIA driver to ≥ {lowest[0]} (for {lowest[1]}), or to the "
                "floor of the variant whose arch list covers your GPU"
            )
    return "no variant covers this GPU; see the reasons above"


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its torch device name; None when not in the table."""
    for row in table()["peak_tflops"]["rows"]:
        if row["match"] in device_name:
            return float(row["bf16"])
    return None
