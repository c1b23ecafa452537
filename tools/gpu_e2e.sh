#!/usr/bin/env bash
# One device call for `fa2bench e2e` (issue 12): install, optionally run the e2e GPU test, then train the paper's
# GPT sizes with each attention provider into results/NAME, stopped cleanly (SIGINT) after SECS seconds so that a
# second call with the same NAME continues it (--resume). The folder is packed into $OUT/NAME.tgz.
# Usage: bash tools/gpu_e2e.sh NAME SECS [--test] [fa2bench e2e options...]
#   Providers: fa2, fa1, fa1-split (when registered), sdpa-flash, sdpa-cudnn, naive, torch-eager (--provider
#   overrides). Pass the commit in as literal values so that meta.json records it (the copy has no .git):
#   FA2BENCH_GIT_COMMIT=<git rev-parse HEAD> FA2BENCH_GIT_DIRTY=0 bash tools/gpu_e2e.sh ...
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
name=$1; secs=$2; shift 2
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
if [ "${1:-}" = "--test" ]; then
  shift
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_e2e.py >"$OUT/test_e2e.log" 2>&1
  echo "pytest exit $?"; tail -5 "$OUT/test_e2e.log"
fi
providers=$(python3 -c "from fa2bench.core import providers as p; print(','.join(n for n in ('fa2', 'fa1', 'fa1-split',
 'sdpa-flash', 'sdpa-cudnn', 'naive', 'torch-eager') if n in p.names()))")
echo "=== e2e $name ($(date -u +%T)), providers $providers, limit ${secs}s"
timeout -s INT -k 60 "$secs" fa2bench e2e --provider "$providers" --out "results/$name" --resume "$@" \
  >"$OUT/$name.log" 2>&1
echo "e2e exit $? ($(date -u +%T))"; grep -vE "^\s*$" "$OUT/$name.log" | tail -40
fa2bench report "results/$name" >>"$OUT/$name.log" 2>&1 && cat "results/$name/report.md" | sed -n '/Table 1/,/Every configuration/p'
tar czf "$OUT/$name.tgz" -C results "$name"
