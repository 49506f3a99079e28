#!/usr/bin/env bash
# GPU overhead table: CNN and transformer at a GPU-filling batch, fp32 and fp16/bf16 autocast,
# every twinpeaks step under torch.cuda.set_sync_debug_mode("error") (raises on any host sync).
# Usage: bench/gpu.sh [python]   (default .venv/bin/python; needs a CUDA build of torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
OUT=bench/results
mkdir -p "$OUT"
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("#", torch.cuda.get_device_name(), "torch", torch.__version__)'
for amp in none fp16 bf16; do
  "$PY" bench/overhead.py --device cuda --scale 16 --amp "$amp" --sync-check --only cnn transformer \
    --threads 4 --rounds 10 --skip-extras --out "$OUT/gpu-$amp.json"
done
