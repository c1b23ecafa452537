"""Issue 9's experiments: time fa2's kernel paths (portable pointers vs TMA descriptors, warp specialisation, dQ by
its own kernel vs atomics vs TMA reductions) against cuDNN's SDPA at one shape each, every path autotuned over a
wide config list, and print each config's time so the candidate lists can be re-pruned from evidence.

    python3 tools/perf_variants.py --headdim 64,128 --seqlen 4096 --causal both --out /tmp/variants.jsonl

Each path is first checked against a float32 reference at a small ragged GQA shape (output and gradients).
Times are triton.testing.do_bench medians (L2 flushed between repetitions), fwd and bwd separately.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import torch
import triton
from triton.testing import do_bench

from fa2bench.kernels import flash2
from fa2bench.kernels._common import describe_config
from fa2bench.kernels.flash2 import FA2, Variant, run_variant
from fa2bench.core.reference import attention_ref, rel_error


def cfg(bm, bn, w, s):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)


WIDE = {
    "fwd": [cfg(128, 64, 4, 3), cfg(128, 64, 8, 3), cfg(128, 128, 8, 2), cfg(128, 128, 8, 3), cfg(128, 64, 4, 4),
            cfg(64, 64, 4, 3), cfg(64, 128, 4, 3)],
    "bwd_dkdv": [cfg(32, 128, 4, 3), cfg(64, 128, 8, 3), cfg(32, 128, 8, 3), cfg(64, 64, 4, 3), cfg(64, 128, 8, 2),
                 cfg(16, 128, 4, 3), cfg(32, 64, 4, 4)],
    "bwd_dq": flash2._DQ_CANDIDATES,
}


def wide_launcher() -> flash2.Launcher:
    """fa2's three kernels autotuned over every WIDE config whose tiles fit 227 KiB of shared memory (register
    spills allowed: they are measured, not guessed)."""
    def prune_for(name):
        def prune(configs, named_args, **kwargs):
            args = {**named_args, **kwargs}
            saved, flash2.MAX_TILE_FP32_PER_THREAD = flash2.MAX_TILE_FP32_PER_THREAD, 1e9
            try:
                return flash2.pruned(name, configs, args["HEAD_DIM"], args["Q"].element_size(), limit=len(configs))
            finally:
                flash2.MAX_TILE_FP32_PER_THREAD = saved
        return prune

    flash2.SMEM_BUDGET = 227 * 1024
    kernels = flash2.autotuned(WIDE, prune_for)
    return flash2.Launcher(kernels, {name: prune_for(name) for name in kernels})


PATHS = {  # name -> Variant fields over fa2's defaults
    "portable+dq-kernel": dict(tma="off", dq="kernel"),  # fa2 as it was before this levers
    "portable+atomic": dict(tma="off", dq="atomic"),
    "tma+dq-kernel": dict(tma="on", dq="kernel"),
    "tma+atomic": dict(tma="on", dq="atomic"),
    "tma+tma-reduce": dict(tma="on", dq="tma-reduce"),
    "tma+ws": dict(tma="on", dq="kernel", warp_specialize=True),  # Triton 3.6 on sm_90: compiles with 8 warps only
}
DEFAULT_PATHS = "portable+dq-kernel,tma+dq-kernel,tma+atomic,tma+tma-reduce"


def check(variant: Variant) -> str:
    """Max relative error (output and gradients, full and causal) at a ragged GQA shape, first configs only."""
    first = {name: flash2.pruned(name, cands, 128)[0] for name, cands in flash2._CANDIDATES.items()}
    with variant.launcher.forced_configs(**first):
        return _check(variant)


def _check(variant: Variant) -> str:
    torch.manual_seed(0)
    q = torch.randn(2, 8, 1000, 128, device="cuda", dtype=torch.float16, requires_grad=True)
    k, v = (torch.randn(2, 2, 1111, 128, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(2))
    do = torch.randn_like(q)
    out = []
    for causal in (False, True):
        o = run_variant(variant, q, k, v, causal, None, False)
        got = torch.autograd.grad(o, (q, k, v), do)
        leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
        ref = attention_ref(*leaves, causal=causal, upcast=True, dtype=torch.float32)
        want = torch.autograd.grad(ref, leaves, do.float())
        out.append(max(rel_error(o, ref), *(rel_error(a, b) for a, b in zip(got, want))))
    return " ".join(f"{e:.1e}" for e in out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--headdim", default="64,128")
    ap.add_argument("--seqlen", default="4096")
    ap.add_argument("--causal", default="both")
    ap.add_argument("--paths", default=DEFAULT_PATHS)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--out", default="variants.jsonl")
    a = ap.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    launcher = wide_launcher()
    paths = {name: dataclasses.replace(FA2, launcher=launcher, **PATHS[name]) for name in a.paths.split(",")}
    for name, variant in paths.items():
        t = time.time()
        try:
            print(f"check {name}: max rel error (full, causal) {check(variant)} ({time.time() - t:.0f} s)", flush=True)
        except Exception as exc:  # a path that does not compile on this GPU is reported and dropped
            print(f"check {name}: FAILED {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}", flush=True)
            paths[name] = None
    causals = {"both": (False, True), "on": (True,), "off": (False,)}[a.causal]
    with open(a.out, "a") as log:
        for d in map(int, a.headdim.split(",")):
            for n in map(int, a.seqlen.split(",")):
                for causal in causals:
                    heads, batch = a.hidden // d, max(1, a.tokens // n)
                    q, k, v = (torch.randn(batch, heads, n, d, device="cuda", dtype=dtype, requires_grad=True)
                               for _ in range(3))
                    do = torch.randn_like(q)
                    flops = 4 * batch * heads * n * n * d * (0.5 if causal else 1.0)
                    fns = {name: (lambda var: lambda q, k, v: run_variant(var, q, k, v, causal, None, False))(var)
                           for name, var in paths.items() if var is not None}
                    fns["sdpa-cudnn"] = lambda q, k, v: _cudnn(q, k, v, causal)
                    for name, fn in fns.items():
                        row = dict(path=name, headdim=d, seqlen=n, causal=causal, dtype=a.dtype, batch=batch,
                                   heads=heads, gpu=torch.cuda.get_device_name())
                        try:
                            o = fn(q, k, v)  # autotunes the forward
                            timings = _timings(launcher, "fwd")
                            row["fwd_ms"] = do_bench(lambda: fn(q, k, v), warmup=25, rep=200)
                            torch.autograd.grad(o, (q, k, v), do, retain_graph=True)  # autotunes the backward
                            timings.update(_timings(launcher, "bwd_dkdv", "bwd_dq"))
                            row["bwd_ms"] = do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
                                                     warmup=25, rep=200)
                            row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                            row["bwd_tflops"] = 2.5 * flops / row["bwd_ms"] / 1e9
                            if name != "sdpa-cudnn":
                                row["config"] = launcher.last_config()
                                row["timings"] = timings
                        except Exception as exc:
                            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                        print(f"d{d} n{n} causal={causal} {name:20s} fwd {row.get('fwd_tflops', math.nan):6.1f} "
                              f"bwd {row.get('bwd_tflops', math.nan):6.1f} TFLOP/s  {row.get('config', '')}"
                              f"{row.get('error', '')}", flush=True)


def _timings(launcher, *names) -> dict:
    """The last autotuning's time per config (ms) of the named kernels: {kernel: {"128x64 w4 s3": ms}}."""
    out = {}
    for name in names:
        kern = launcher.kernels[name]
        out[name] = {describe_config(c): round(t[0] if isinstance(t, (list, tuple)) else t, 4)
                     for c, t in (getattr(kern, "configs_timings", None) or {}).items()}
        kern.configs_timings = {}
    return out


def _cudnn(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)


if __name__ == "__main__":
    main()
