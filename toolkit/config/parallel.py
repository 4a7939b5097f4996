"""N-D parallelism: the sizes of axolotl's newest examples, checked against the launch.

`dp_replicate_size × dp_shard_size × tensor_parallel_size × context_parallel_size` must
equal the processes of the launch (an unset dp_shard_size takes what is left, as axolotl
and accelerate do). The check is pure arithmetic, so the host CLI runs it before anything
starts and the trainer again with the real WORLD_SIZE. On GPUs the sizes become
accelerate's ParallelismConfig; on CPUs the same training runs as DDP and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from toolkit.errors import ConfigError

SIZES = ("dp_replicate_size", "dp_shard_size", "tensor_parallel_size", "context_parallel_size")


@dataclass(frozen=True)
class Layout:
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    cp: int = 1

    @property
    def beyond_ddp(self) -> bool:
        """Anything but every process holding the whole model (sharding, TP, CP)."""
        return max(self.dp_shard, self.tp, self.cp) > 1

    def describe(self) -> str:
        parts = [
            f"{name} {size}"
            for name, size in zip(
                SIZES, (self.dp_replicate, self.dp_shard, self.tp, self.cp), strict=True
            )
            if size > 1
        ]
        return " × ".join(parts) or "one process"


def layout(cfg, world: int, where: str = "this launch") -> Layout:
    """The layout `cfg` asks for over `world` processes, or a ConfigError naming the sizes,
    the product and the fix."""
    given = {name: getattr(cfg, name) for name in SIZES if getattr(cfg, name) is not None}
    if not given:
        return Layout(dp_replicate=world)
    sizes = dict.fromkeys(SIZES, 1) | given
    problems = []
    if "dp_shard_size" not in given:
        others = prod(sizes[n] for n in SIZES if n != "dp_shard_size")
        if world % others == 0:
            sizes["dp_shard_size"] = world // others
    total = prod(sizes.values())
    shown = " × ".join(f"{n} {given.get(n, sizes[n])}" for n in SIZES if n in given)
    if total != world:
        problems.append(
            f"{shown} = {total} processes, but {where} has {world}: make the product "
            f"equal the process count (--nproc-per-node × nodes), or leave dp_shard_size "
            "unset to take what is left"
        )
    result = Layout(*(sizes[n] for n in SIZES))
    if result.dp_replicate > 1 and result.dp_shard == 1 and (result.tp > 1 or result.cp > 1):
        problems.append(
            "dp_replicate_size > 1 with tensor or context parallelism replicates sharded "
            "groups (HSDP): set dp_shard_size > 1 too"
        )
    if result.dp_shard > 1 and getattr(cfg, "fsdp_version", None) != 2:
        problems.append(
            f"dp_shard_size {result.dp_shard}: sharding runs through FSDP2; add fsdp_version: 2"
        )
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise ConfigError(f"parallelism: {len(problems)} {noun} with the sizes", problems)
    return result


def decision(result: Layout, cuda: bool) -> str:
    """The run's line for this layout, as optimize.decide words them."""
    if not result.beyond_ddp:
        return f"on (DDP, {result.dp_replicate} processes)"
    if not cuda:
        return (
            f"off: {result.describe()} needs GPUs (NCCL); this CPU launch runs DDP, the "
            "same training with every process holding the whole model"
        )
    return f"on ({result.describe()}, accelerate ParallelismConfig)"
