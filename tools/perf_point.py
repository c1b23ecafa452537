"""One attention point for Nsight Compute: warm up (compile, autotune) outside the profiled range, then run
``--calls`` calls between cudaProfilerStart/Stop, so `ncu --profile-from-start off` sees only those.

    ncu --profile-from-start off --clock-control none --section ... \
        python3 tools/perf_point.py --provider fa2 --mode fwd --seqlen 4096 --headdim 128
"""
from __future__ import annotations

import argparse

import torch

from fa2bench.core import providers
from fa2bench.core.presets import Shape
from fa2bench.run.point import make_inputs, timed_call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--provider", required=True)
    ap.add_argument("--mode", default="fwd", choices=["fwd", "bwd", "fwd_bwd"])
    ap.add_argument("--seqlen", type=int, default=4096)
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--calls", type=int, default=1)
    a = ap.parse_args()
    heads = a.hidden // a.headdim
    shape = Shape(batch=max(1, a.tokens // a.seqlen), heads=heads, kv_heads=heads, seqlen_q=a.seqlen,
                  seqlen_k=a.seqlen, headdim=a.headdim, causal=a.causal)
    provider = providers.get(a.provider)
    fn = provider.make(shape)
    q, k, v = make_inputs(shape, a.dtype, "cuda", requires_grad=a.mode != "fwd")
    call, grads = timed_call(fn, q, k, v, a.mode)
    for _ in range(3):
        call()
        for g in grads or ():
            g.grad = None
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for _ in range(a.calls):
        call()
        for g in grads or ():
            g.grad = None
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"{a.provider} {a.mode} {shape.label if hasattr(shape, 'label') else shape} config={provider.config()}")


if __name__ == "__main__":
    main()
