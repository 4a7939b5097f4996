"""Throughput, MFU and peak memory; the run's PNG chart and TensorBoard events.

MFU counts the model's FLOPs, not the implementation's (PaLM's definition:
recomputation under gradient checkpointing is not counted). Per trained token:

    matmuls    2·N forward, where N counts the weights a token passes through (attention
               and MLP projections — for MoE the router and top-k experts only — and
               the output head); the backward adds 2·N for the input gradients and,
               only when the base is trained (full fine-tune), 2·N for its weight gradients
    attention  4·L·H·d_head·s forward (scores and values over s positions, no causal
               discount, as PaLM), 3× that with the backward

where s is the mean sequence length. A LoRA run therefore counts 4·N (+attention),
a full fine-tune 6·N. Peak FLOPs are dense bf16 from compat.yaml; on a CPU or an
unlisted GPU MFU is not reported.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from pathlib import Path
from typing import BinaryIO


def flops_per_token(config, full_finetune: bool, mean_len: float) -> float:
    """Training FLOPs per token of a Qwen3 / Qwen3-MoE config (see the module docstring)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attention = 2 * d * heads * head_dim + 2 * d * kv * head_dim
    experts = getattr(config, "num_experts", 0) or 0
    if experts:
        mlp = 3 * d * config.moe_intermediate_size * config.num_experts_per_tok + d * experts
    else:
        mlp = 3 * d * config.intermediate_size
    weights = layers * (attention + mlp) + d * config.vocab_size
    matmul = (6 if full_finetune else 4) * weights
    return matmul + 3 * 4 * layers * heads * head_dim * mean_len


def peak_flops(device: str, device_name: str, dtype: str) -> float | None:
    """The device's dense peak for the run's dtype, in FLOPs; None where unknown."""
    from toolkit.compat import peak_tflops

    if device != "cuda" or dtype not in ("bfloat16", "float16"):
        return None
    tflops = peak_tflops(device_name)
    return tflops * 1e12 if tflops else None


def peak_memory_gib(device: str) -> tuple[float, str]:
    """The peak memory of this process: allocated on the GPU, else the host RSS."""
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30, "GPU allocated (torch)"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host RSS"


def write_chart(path: Path, losses, evals, rates) -> bool:
    """A PNG of the loss (and eval loss) and tokens/s by step. False if matplotlib is
    missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    if losses:
        top.plot(*zip(*losses, strict=True), label="train loss")
    if evals:
        top.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    top.set_ylabel("loss")
    top.legend()
    if rates:
        bottom.plot(*zip(*rates, strict=True), color="tab:green")
    bottom.set_ylabel("tokens/s")
    bottom.set_xlabel("step")
    fig.tight_layout()
    from toolkit.safe_io import replace_atomically

    try:
        replace_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return True


class TensorBoard:
    """Scalars to output_dir/tensorboard as TensorBoard event files (tensorboardX's
    protos and CRC; a no-op if it is missing).

    Written here, in the calling thread, not through tensorboardX's SummaryWriter: when
    a write fails (a full disk) its writer thread dies, its bounded queue then blocks
    training, and its exit hook flushes again and prints a traceback. Here a failed write
    turns the events off for the rest of the run, quietly (train.log and run.json hold
    the same numbers), and nothing runs at exit. The event file is created anew, never
    through a link; a link at tensorboard/ itself is refused (exit 2)."""

    def __init__(self, directory: Path) -> None:
        self.writer: BinaryIO | None = None
        try:
            from tensorboardX.proto.event_pb2 import Event
            from tensorboardX.proto.summary_pb2 import Summary
            from tensorboardX.record_writer import masked_crc32c
        except ImportError:
            return
        from toolkit.outputs import open_folder

        self._event, self._summary, self._crc = Event, Summary, masked_crc32c
        try:
            directory.mkdir(exist_ok=True)
            folder = open_folder(directory)
            try:
                fd = self._create(folder)
            finally:
                os.close(folder)
            self.writer = os.fdopen(fd, "wb")
            self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        except OSError:
            self.close()
            self.writer = None

    @staticmethod
    def _create(folder: int) -> int:
        """A new event file, by TensorBoard's naming; a resume in the same second (and
        process) gets the next free name."""
        from toolkit.safe_io import create_new

        stem = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        n = 0
        while True:  # a name that exists, a link included, is never opened
            try:
                return create_new(f"{stem}.{n}", dir_fd=folder)
            except FileExistsError:
                n += 1

    def _write(self, event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        record = header + struct.pack("<I", self._crc(header)) + data
        if self.writer is None:  # closed after a failed write: the events end there
            return
        self.writer.write(record + struct.pack("<I", self._crc(data)))
        self.writer.flush()

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None or self.writer.closed:
            return
        shown = [
            self._summary.Value(tag=name, simple_value=float(value))
            for name, value in values.items()
            if value is not None
        ]
        try:
            self._write(
                self._event(wall_time=time.time(), step=step, summary=self._summary(value=shown))
            )
        except OSError:
            self.close()

    def close(self) -> None:
        """Close the event file; a failure to (a full disk) only ends the events. The
        file closes even then: nothing is left to flush at exit."""
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.close()
