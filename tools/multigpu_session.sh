#!/usr/bin/env bash
# One device call on a lent 4-GPU machine (nvidia-h100-x4; torch 2.11, NCCL, no network), under 8 minutes:
#   1. env     GPUs, NCCL/PyTorch/NVSHMEM multicast switches (must read 0/1/1), versions
#   2. sweep   the same small sweep sharded over 4 GPUs (--gpus 4) and as a plain one-GPU sweep, compared
#              point for point (statuses must be equal; time ratios listed) -> compare.txt
#   3. check   ring-fa2 and allgather-fa2 forward + backward on 4 ranks against the one-GPU fa2 kernel and a
#              float32 reference (fp16/bf16, causal and not, MHA and GQA, seqlen 8k)
#   4. ring    context-parallel scaling on 1, 2 and 4 GPUs: 64k/128k/256k tokens, 16 heads, d128, bf16,
#              causal; ring-fa2, allgather-fa2, cp-sdpa; then scaling.csv and scaling.png
#   5. e2e     (only when named) data-parallel GPT training on 4 GPUs (fa2bench e2e --gpus 4, DDP): GPT3-1.3B
#              at seqlen 2k then 8k, fa2 and sdpa-cudnn, 3 timed steps, at most 150 s -> e2e-dp.tgz
# Usage: FA2BENCH_GIT_COMMIT=<git rev-parse HEAD> FA2BENCH_GIT_DIRTY=0 bash tools/multigpu_session.sh [STAGE ...]
# (default: all four; about 7.5 minutes: sweep 3 min, check 1 min, ring 3.5 min, or run them in two calls).
# Every stage has a time limit; a run cut short keeps what it finished (sweeps stop with SIGINT and merge).
# At most 6 files come back in $OUT: session.log, sharded4.tgz, single.tgz, compare.txt, ring.tgz, e2e-dp.tgz.
# The e2e stage alone (about 2.5 minutes): bash tools/multigpu_session.sh env e2e
set -uo pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
# NVLink multicast stays off in every process started here (the lent hosts require it; nothing needs it)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/install.log 2>&1 || { cat /tmp/install.log; exit 1; }
STAGES=${*:-env sweep check ring}
R=results/multigpu
SWEEP="--seqlen 1024,4096 --headdim 128 --tokens 16384 --hidden 2048 --causal both --mode fwd,bwd
       --dtype fp16 --provider fa2,sdpa-flash,torch-eager --no-ceilings"
RING="--seqlen 65536,131072,262144 --heads 16 --headdim 128 --dtype bf16 --causal on --mode fwd,fwd_bwd --reps 2"
mkdir -p "$R"
for stage in $STAGES; do
  echo "=== $stage ($(date -u +%T))"
  case "$stage" in
    env)
      nvidia-smi --query-gpu=index,name,driver_version,clocks.max.sm,power.limit --format=csv
      env | grep -E "^(NCCL_NVLS_ENABLE|TORCH_SYMM_MEM_DISABLE_MULTICAST|NVSHMEM_DISABLE_NVLS)="
      python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count(), 'nccl', torch.cuda.nccl.version())" ;;
    sweep)
      rm -rf "$R/sharded4" "$R/single"
      timeout -s INT -k 20 80 fa2bench sweep $SWEEP --gpus 4 --out "$R/sharded4" >"$R/sharded4.log" 2>&1
      echo "4-GPU sweep exit $?"; grep -E "^\[rank [0-9]/|merged|missing|error" "$R/sharded4.log" | head -20
      timeout -s INT -k 20 100 fa2bench sweep $SWEEP --out "$R/single" >"$R/single.log" 2>&1
      echo "1-GPU sweep exit $?"; grep -E "^statuses|error" "$R/single.log" | head -10
      python3 - "$R/single" "$R/sharded4" <<'PY' | tee "$OUT/compare.txt"
import sys
from fa2bench.run.results import load_run
one, four = load_run(sys.argv[1]), load_run(sys.argv[2])
key = ["provider", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim", "causal"]
j = one.merge(four, on=key, how="outer", suffixes=("_1gpu", "_4gpu"), indicator=True)
print(f"points: 1 GPU {len(one)}, 4 GPUs {len(four)}, in both {int((j['_merge'] == 'both').sum())}")
both = j[j["_merge"] == "both"]
same = both["status_1gpu"] == both["status_4gpu"]
print(f"same status: {int(same.sum())}/{len(both)}")
for r in both[~same].to_dict("records"):
    print("status differs:", r["provider"], r["mode"], r["seqlen_q"], r["causal"], r["status_1gpu"], r["status_4gpu"])
ok = both[(both["status_1gpu"] == "ok") & (both["status_4gpu"] == "ok")].copy()
ok["ratio"] = ok["ms_4gpu"] / ok["ms_1gpu"]
print(f"time ratio 4-GPU run / 1-GPU run over {len(ok)} ok points: median {ok['ratio'].median():.3f}, "
      f"min {ok['ratio'].min():.3f}, max {ok['ratio'].max():.3f}")
cols = key[:2] + ["seqlen_q", "causal", "rank", "ms_1gpu", "ms_4gpu", "ratio"]
print(ok[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
PY
      tar czf "$OUT/sharded4.tgz" -C "$R" sharded4 sharded4.log
      tar czf "$OUT/single.tgz" -C "$R" single single.log ;;
    check)
      timeout -k 20 60 torchrun --standalone --nproc-per-node 4 -m fa2bench.distributed.ringbench check \
        --out "$R/ring" --seqlen 8192 --heads 16 --kv-heads 4 --dtype fp16,bf16 --causal both 2>&1 \
        | grep -vE "^(W|I)[0-9]{4}|OMP_NUM_THREADS|^\*+$"
      echo "check exit ${PIPESTATUS[0]}" ;;
    ring)
      for n in 1 2 4; do
        limit=$((n == 1 ? 90 : n == 2 ? 60 : 50))   # seconds; a run cut short keeps the rows it finished
        timeout -k 20 $limit torchrun --standalone --nproc-per-node $n -m fa2bench.distributed.ringbench run \
          --out "$R/ring" $RING 2>&1 | grep -vE "^(W|I)[0-9]{4}|OMP_NUM_THREADS|^\*+$"
        echo "ring x$n exit ${PIPESTATUS[0]}"
      done
      python3 -m fa2bench.distributed.ringbench report "$R/ring"
      tar czf "$OUT/ring.tgz" -C "$R" ring ;;
    e2e)
      rm -rf "$R/e2e-dp"   # 130 s, then SIGINT (rank 0 keeps the finished rows), killed 20 s later: 150 s at most
      timeout -s INT -k 20 130 fa2bench e2e --gpus 4 --model gpt-1.3b --seqlen 2048,8192 \
        --provider fa2,sdpa-cudnn --steps 3 --warmup 2 --out "$R/e2e-dp" >"$R/e2e-dp.log" 2>&1
      echo "e2e x4 exit $?"; grep -E "TFLOP/s|oom|error|wrong|interrupted|results:" "$R/e2e-dp.log" | head -20
      tar czf "$OUT/e2e-dp.tgz" -C "$R" e2e-dp e2e-dp.log ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
echo "=== done ($(date -u +%T))"
