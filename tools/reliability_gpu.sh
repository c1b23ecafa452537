#!/usr/bin/env bash
# Issue 10 (reliability) on the lent GPU, one device call of about 3-4 minutes:
#   1. the reliability tests, GPU ones included: a Triton kernel writing far out of bounds (a sticky CUDA
#      error) is recorded `error` and the next points run in a restarted worker; abort and hang likewise;
#   2. a small fp32/tf32 sweep in isolated workers: what each provider's fp32 and tf32 points measure against
#      the gate, the timing repetitions (`reps`) and spreads, and % of the fp32 / tf32 peaks.
# Usage: FA2BENCH_GIT_COMMIT=<commit> bash tools/reliability_gpu.sh   (logs under $OUT)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }

echo "=== reliability tests ($(date -u +%T))"
timeout 300 python3 -m pytest -q -rs -p no:cacheprovider tests/test_worker.py tests/test_precision.py tests/test_timing.py \
    tests/test_memory.py tests/test_resume.py tests/test_compare.py >"$OUT/reliability-tests.log" 2>&1
echo "pytest exit $?"; grep -E "passed|failed|error|SKIPPED" "$OUT/reliability-tests.log" | tail -8
grep -E "^(FAILED|ERROR|E  )" "$OUT/reliability-tests.log" | head -30

echo "=== fp32 / tf32 sweep ($(date -u +%T))"
run=$(mktemp -d)/tf32
timeout -s INT -k 30 240 python3 -m fa2bench sweep --seqlen 1024,4096 --headdim 64,128 --batch 1 --heads 16 \
    --causal off --dtype fp32,tf32 --mode fwd,bwd --provider fa2,fa1,naive,torch-eager,sdpa-math,sdpa-efficient \
    --no-ceilings --out "$run" >"$OUT/tf32-sweep.log" 2>&1
echo "sweep exit $?"; tail -5 "$OUT/tf32-sweep.log"
cp "$run/results.csv" "$OUT/tf32-results.csv" 2>/dev/null
python3 - "$run" <<'PY'
import sys
import pandas as pd
from fa2bench.run.results import load_run
f = load_run(sys.argv[1])
f["spread_pct"] = 100 * (f["ms_p80"] - f["ms_p20"]) / f["ms"]
cols = ["provider", "dtype", "mode", "seqlen_q", "headdim", "status", "max_rel_error", "ms", "reps", "spread_pct",
        "tflops", "pct_device_peak"]
with pd.option_context("display.width", 250, "display.max_rows", 200):
    print(f[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f.loc[f["status"] != "ok", ["provider", "dtype", "mode", "seqlen_q", "headdim", "error"]].to_string(index=False))
PY
