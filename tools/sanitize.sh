#!/usr/bin/env bash
# compute-sanitizer (memcheck, then racecheck) over every fa2bench Triton kernel, forward and backward, at awkward
# shapes (seqlen 1, 17, 97, 1025; head dims 40/64/128; causal and not; GQA and MQA), one config forced per
# kernel so that nothing is autotuned under the sanitizer. Needs a CUDA GPU and compute-sanitizer on PATH.
# Usage: bash tools/sanitize.sh [LOG_DIR]        (default $OUT, else /tmp/sanitize); about 3-4 minutes on an H100.
# Prints one line per tool: "<tool>: ========= ERROR SUMMARY: N errors"; exit 1 if any tool found errors.
set -uo pipefail
LOG=${1:-${OUT:-/tmp/sanitize}}; mkdir -p "$LOG"
export PYTORCH_NO_CUDA_MEMORY_CACHING=1  # one cudaMalloc per tensor: memcheck sees out-of-bounds accesses
export PYTHONUNBUFFERED=1
cat >"$LOG/sanitize_cases.py" <<'PY'
import torch

from fa2bench.core import providers
import fa2bench.kernels

# (batch, heads, kv_heads, seqlen_q, seqlen_k, headdim)
SHAPES = [(1, 2, 2, 1, 1, 40), (2, 2, 2, 17, 17, 64), (1, 2, 2, 97, 97, 128), (1, 1, 1, 1025, 1025, 64),
          (1, 4, 2, 17, 97, 64), (1, 4, 1, 97, 17, 40)]
for name in providers.triton_providers():
    fn = getattr(fa2bench.kernels, providers.get(name).function)
    module = providers.kernel_module(name)
    for shape in SHAPES:
        b, h, hkv, sq, sk, d = shape
        first = {kernel: cfgs[0] for kernel, cfgs in module.configs(d).items()}
        for causal in (False, True):
            q = torch.randn(b, h, sq, d, device="cuda", dtype=torch.float16, requires_grad=True)
            k, v = (torch.randn(b, hkv, sk, d, device="cuda", dtype=torch.float16, requires_grad=True)
                    for _ in range(2))
            with module.forced_configs(**first):
                o = fn(q, k, v, causal=causal)
                o.backward(torch.randn_like(o))
            torch.cuda.synchronize()
    print(name, "done", flush=True)
PY
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$LOG/install.log" 2>&1 || { cat "$LOG/install.log"; exit 1; }
status=0
for tool in memcheck racecheck; do
  start=$(date +%s)
  compute-sanitizer --tool "$tool" --print-limit 20 python3 "$LOG/sanitize_cases.py" >"$LOG/sanitize-$tool.log" 2>&1
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$LOG/sanitize-$tool.log" | tail -1)
  echo "$tool: ${summary:-no summary (see $LOG/sanitize-$tool.log)} ($(( $(date +%s) - start )) s)"
  echo "$summary" | grep -qE "SUMMARY: 0 (errors|hazards)" || status=1
done
exit $status
