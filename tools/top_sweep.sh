#!/usr/bin/env bash
# Issue 9's acceptance sweep on one GPU (fa2 against the kernels users pick instead), resumable across device
# calls: each call runs until its time limit (SIGINT keeps every finished point), packs the folder into
# $OUT/NAME.tgz; the next call continues it with --resume once the folder is unpacked into results/ here.
# Usage: FA2BENCH_GIT_COMMIT=<sha> FA2BENCH_GIT_DIRTY=0 bash tools/top_sweep.sh NAME SECONDS
set -uo pipefail
NAME=$1; LIMIT=$2
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader
timeout -s INT -k 30 "$LIMIT" fa2bench sweep --seqlen 512..16384 --headdim 64,128,256 --tokens 16384 --hidden 2048 \
  --causal both --mode fwd,bwd --dtype fp16,bf16 \
  --provider fa2,sdpa-cudnn,sdpa-flash,sdpa-efficient,flex,fa1 \
  --warmup-ms 10 --rep-ms 50 --out "results/$NAME" --resume > "/tmp/$NAME.log" 2>&1
echo "sweep exit $?"; tail -5 "/tmp/$NAME.log"
python3 -c "
import pandas as pd; df = pd.read_csv('results/$NAME/results.csv')
print(len(df), 'rows;', df.status.value_counts().to_dict())"
cp "/tmp/$NAME.log" "results/$NAME/sweep.log"
tar czf "$OUT/$NAME.tgz" -C results "$NAME"
