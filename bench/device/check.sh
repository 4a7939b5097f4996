#!/usr/bin/env bash
# The prepared GPU check, for one call on a lent H100/H200 (Python 3.12 with torch, transformers,
# peft, accelerate and triton; no network). Run it first whenever such a machine is lent:
#
#   here:    make device-wheels                       (bench/device/wheels/, ≤ 64 MiB with the tree)
#   device:  run  command="bash bench/device/check.sh"  carry=["bench/device/wheels"]  timeout_s=600
#
# Writes to $OUT: environment.json, pytest.log (pytest -m gpu), gpu_train.json and .log
# (bench/gpu_train.py: 0.6B and 8B shapes, baseline Trainer + PEFT against toolkit unpacked,
# packed with the decided attention, packed with a dense mask, +Liger, +compile), and
# gpu_train_8192.json (0.6B packed, varlen against the dense mask at 8192). Each phase
# has its own time limit so the whole ends inside 9 minutes, and every figure is written as
# it comes: a phase cut short still leaves the earlier ones. Put the figures in bench/README.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/toolkit-device-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
started=$(date +%s)
phase() { echo "== $1 ($(($(date +%s) - started)) s in)"; }

phase "install the carried wheels"
ls bench/device/wheels/*.whl >/dev/null || { echo "no wheels: run make device-wheels here first"; exit 2; }
$PY -m pip install --quiet --no-index --no-deps bench/device/wheels/*.whl 2>&1 | tail -3

phase "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
$PY - <<'PY' | tee "$OUT/environment.json"
import importlib.metadata as md, json, torch
from toolkit.trainer.model import attention_kernels
names = ("torch", "transformers", "peft", "accelerate", "triton", "liger-kernel", "flash-attn-4")
versions = {}
for name in names:
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
print(json.dumps({
    "gpu": torch.cuda.get_device_name(0),
    "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
    "versions": versions,
    "attention_kernels": sorted(attention_kernels()),
}, indent=2))
PY

phase "pytest -m gpu"
timeout 180 $PY -m pytest -m gpu -q -p no:cacheprovider tests/trainer/test_gpu.py -x --no-header 2>&1 \
  | tee "$OUT/pytest.log" | tail -25

phase "bench/gpu_train.py at 2048"
timeout 270 $PY bench/gpu_train.py --shapes 0.6b,8b --steps 12 --warmup 4 --seq 2048 \
  --runs toolkit,toolkit+packing,toolkit+packing+dense,toolkit+packing+liger,toolkit+packing+liger+compile \
  --json "$OUT/gpu_train.json" 2>&1 | tee "$OUT/gpu_train.log" | grep -E '^\[|Error|error' | tail -30

phase "varlen against the dense mask at 8192"
timeout 90 $PY bench/gpu_train.py --shapes 0.6b --steps 8 --warmup 3 --seq 8192 --no-baseline \
  --runs toolkit+packing,toolkit+packing+dense --out /tmp/toolkit-gpu-bench-8192 \
  --json "$OUT/gpu_train_8192.json" 2>&1 | tee "$OUT/gpu_train_8192.log" | grep -E '^\[|Error' | tail -5
phase "done"
