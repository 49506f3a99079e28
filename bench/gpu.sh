#!/usr/bin/env bash
# GPU overhead of twinpeaks (issue #18): the fused Triton kernel against the torch device path,
# CNN and transformer at 60 and 500 leaf modules, fp32 and bf16/fp16 autocast, device launches per
# step (torch.profiler), torch.cuda.set_sync_debug_mode("error") over recorded steps, torch.compile;
# first the kernel's numpy checks on the device. One table; bench/results/gpu-kernel.json.
# Usage: bench/gpu.sh [bench/gpu_kernel.py options]   e.g. --rounds 5 --budget-s 420
#        bench/gpu.sh --dry-run                        checks the script on CPU (Triton's interpreter)
# Python: $PY, else .venv/bin/python, else python3 (needs a CUDA build of torch and triton for a GPU run).
# The whole run stops after $LIMIT seconds (default 470); the script skips what its budget cannot fit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--dry-run" ]; then
  shift
  exec timeout "${LIMIT:-470}" "$PY" bench/gpu_kernel.py --device cpu --dry-run --out bench/results/gpu-kernel-dry.json "$@"
fi
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("#", torch.cuda.get_device_name(), "torch", torch.__version__)'
exec timeout "${LIMIT:-470}" "$PY" bench/gpu_kernel.py --device cuda "$@"
