"""FlashAttention-4's varlen kernels, forward and backward, compiled for Hopper and
Blackwell on a machine without a GPU: the cu130 image's flash-attn-4 and cutlass-dsl
(CUDA 13 flavour only; its CUDA 12 half is pruned) under fake tensors.

    docker run --rm -v "$PWD/bench:/bench:ro" --entrypoint /opt/toolkit/bin/python \\
        toolkit:cu130-<lock> /bench/fa4_compile.py [90 100 120]

One line per architecture: the output shapes and the compile time, or the error. The
shapes are Qwen3-8B's attention (32 query heads, 8 key/value heads, head dim 128) over
4 packed sequences of 4096 tokens in all, causal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def compile_for(arch: str) -> None:
    os.environ["FLASH_ATTENTION_ARCH"] = f"sm_{arch}"  # which kernel (read once, cached)
    os.environ["CUTE_DSL_ARCH"] = f"sm_{arch}a"  # what it is compiled for
    os.environ.setdefault("FLASH_ATTENTION_NUM_SMS", "132")
    import torch
    from flash_attn.cute import interface
    from torch._subclasses.fake_tensor import FakeTensorMode

    started = time.monotonic()
    with FakeTensorMode():
        q = torch.empty(4096, 32, 128, dtype=torch.bfloat16, device="cuda")
        k = torch.empty(4096, 8, 128, dtype=torch.bfloat16, device="cuda")
        v = torch.empty_like(k)
        cu = torch.empty(5, dtype=torch.int32, device="cuda")
        lengths = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=2048, max_seqlen_k=2048)
        out, lse = interface._flash_attn_fwd(q, k, v, causal=True, return_lse=True, **lengths)[:2]
        dq, dk, dv = interface._flash_attn_bwd(
            q, k, v, out, torch.empty_like(out), lse, causal=True, **lengths
        )[:3]
    shapes = " ".join(str(tuple(t.shape)) for t in (out, dq, dk, dv))
    print(
        f"sm_{arch}a: forward and backward compiled in {time.monotonic() - started:.0f} s; {shapes}"
    )


def main() -> int:
    archs = sys.argv[1:] or ["90", "100", "120"]
    if len(archs) == 1:
        compile_for(archs[0])
        return 0
    failed = 0
    for arch in archs:  # one process each: flash-attn caches the architecture it read
        res = subprocess.run([sys.executable, __file__, arch], capture_output=True, text=True)
        lines = [line for line in res.stdout.splitlines() if line.startswith("sm_")]
        print(lines[-1] if lines else f"sm_{arch}a: failed: {res.stderr.strip().splitlines()[-1:]}")
        failed += res.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
