#!/usr/bin/env bash
# Issue 9's experiment on one GPU, in one device call: compile every (path, head dim) of tools/perf_variants.py
# in parallel processes first (filling Triton's cache; their timings are discarded, the GPU being shared), then
# time them one after another. Usage: bash tools/perf_session.sh [extra perf_variants.py args]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader
t0=$(date +%s)
for p in portable+dq-kernel tma+dq-kernel tma+atomic tma+tma-reduce; do
  for d in 64 128; do
    timeout 300 python3 tools/perf_variants.py --paths "$p" --headdim $d --out /tmp/warm.jsonl "$@" >/tmp/warm-$p-$d.log 2>&1 &
  done
done
wait
echo "compile pass: $(( $(date +%s) - t0 )) s"; grep -h "^check" /tmp/warm-*.log
timeout 300 python3 tools/perf_variants.py --out "$OUT/variants.jsonl" "$@" 2>&1 | grep -v "^check"
echo "total: $(( $(date +%s) - t0 )) s"
