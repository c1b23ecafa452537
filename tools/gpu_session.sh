#!/usr/bin/env bash
# One device call: install fa2bench on the lent GPU machine (no network), then run the named stages.
# Usage: bash tools/gpu_session.sh STAGE [STAGE ...]; everything worth keeping goes to $OUT (8 files at most).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
for stage in "$@"; do
  echo "=== stage $stage $(date -u +%T)"
  case "$stage" in
    env)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
      python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.version.cuda)"
      which ncu && ncu --version | tail -1
      fa2bench info --measure ;;
    gpu-tests)
      python3 -m pytest -q -m gpu -x tests 2>&1 | tee "$OUT/gpu-tests.log" | tail -40 ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
