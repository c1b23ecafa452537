#!/usr/bin/env bash
# The last call of issue 9's H100 run: finish the acceptance sweep's head dim 128 (tools/top_sweep.sh), add head
# dim 256 for fa2, cuDNN and flash (--extend), then the GPU tests of fa2's paths. About 9 minutes.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bash tools/top_sweep.sh h100-top 110
timeout -s INT -k 30 240 fa2bench sweep --seqlen 512..16384 --headdim 256 --tokens 16384 --hidden 2048 --causal both \
  --mode fwd,bwd --dtype fp16,bf16 --provider fa2,sdpa-cudnn,sdpa-flash --warmup-ms 10 --rep-ms 50 \
  --out results/h100-top --resume --extend > /tmp/d256.log 2>&1
echo "d256 sweep exit $?"; tail -3 /tmp/d256.log; cat /tmp/d256.log >> results/h100-top/sweep.log
tar czf "$OUT/h100-top.tgz" -C results h100-top
timeout -s INT -k 20 200 python3 -m pytest -q -p no:cacheprovider -m gpu -n 8 tests/test_kernels_gpu.py \
  -k "(fa2 or tma_path) and not rows_past" -rf 2>&1 | tail -25 | tee "$OUT/gpu-tests.txt"
