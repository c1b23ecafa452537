#!/usr/bin/env bash
# One device call: install fa2bench on the lent GPU machine (no network), then run the named stages.
# Usage: bash tools/gpu_session.sh STAGE [STAGE ...]
#   env                  GPU, driver, versions, ncu, measured ceilings
#   test:PATH            pytest -m gpu on PATH (log to $OUT)
#   sweep:NAME:SECS:ARGS fa2bench sweep ARGS --out results/NAME --resume, interrupted (SIGINT) after SECS
#                        seconds so that it ends cleanly; the folder is packed into $OUT/NAME.tgz
# Everything worth keeping goes to $OUT (8 files at most come back).
# The device's copy of the tree has no .git: pass the commit in, as literal values written here, e.g.
#   FA2BENCH_GIT_COMMIT=<output of git rev-parse HEAD> FA2BENCH_GIT_DIRTY=0 bash tools/gpu_session.sh ...
# so that meta.json records it.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
for stage in "$@"; do
  echo "=== $stage ($(date -u +%T))"
  case "$stage" in
    env)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
      python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.version.cuda)"
      command -v ncu && ncu --version | tail -1
      fa2bench info ;;
    test:*)
      path=${stage#test:}
      python3 -m pytest -q -m gpu -p no:cacheprovider "$path" >"$OUT/$(basename "$path" .py).log" 2>&1
      echo "pytest exit $?"; grep -E "passed|failed|error" "$OUT/$(basename "$path" .py).log" | tail -3
      grep -E "^(FAILED|ERROR)" "$OUT/$(basename "$path" .py).log" | head -30 ;;
    sweep:*)
      IFS=: read -r _ name secs args <<<"$stage"
      timeout -s INT -k 60 "$secs" fa2bench sweep $args --out "results/$name" --resume >"$OUT/$name.log" 2>&1
      echo "sweep exit $?"; tail -35 "$OUT/$name.log"
      tar czf "$OUT/$name.tgz" -C results "$name" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
