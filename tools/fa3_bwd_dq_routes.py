"""Time fa3's backward by its three dQ routes against cuDNN's, in one process on a Hopper GPU (kernels/fa3_bwd.py):

- ``kernel``: the deterministic dQ kernel (recomputes S and dP: 7 matmuls), provider fa3-deterministic's backward;
- ``redg``: dQ added from the dK/dV kernel with fp32 atomics from registers (``DQ_ATOMICS = "redg"``);
- ``tma``: dQ added from the dK/dV kernel by one TMA reduce-add per step (``DQ_ATOMICS = "tma"``,
  provider fa3's backward).

    python tools/fa3_bwd_dq_routes.py                       # paper shapes: 16k tokens, hidden 2048, fp16
    python tools/fa3_bwd_dq_routes.py --seqlen 8192 --headdim 128 --causal full --out results/<name>

With ``--out`` the rows also go to ``fa3_bwd_dq_routes.csv`` there, beside a tool-written meta.json (GPU, versions,
commit), so the numbers are a results run rather than a console log.

Only the backward is timed (Delta, the dK/dV and dQ kernels, the fp32 dQ's zeroing and cast: what
``fa3_backward`` launches; cuDNN's through ``torch.autograd.grad`` on a saved forward). Each route's dQ, dK, dV
are compared with the deterministic route's (max abs difference), so a wrong route shows before its time counts.
TFLOP/s as the suite counts the backward (2.5x the forward's FLOPs, causal: the attended pairs).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from fa2bench.core.flops import attention_flops, tflops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqlen", default="2048,8192")
    ap.add_argument("--headdim", default="64,128")
    ap.add_argument("--causal", default="both", choices=("both", "full", "causal"))
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "bf16"))
    ap.add_argument("--tokens", type=int, default=16384, help="batch x seqlen (the paper preset's 16k)")
    ap.add_argument("--hidden", type=int, default=2048, help="heads x headdim (the paper preset's 2048)")
    ap.add_argument("--rep-ms", type=int, default=200)
    ap.add_argument("--out", type=Path, help="a folder for the rows (CSV) and meta.json")
    a = ap.parse_args()
    rows = []
    if a.out:
        from fa2bench.run.results import write_meta
        from fa2bench.run.runner import environment_meta

        a.out.mkdir(parents=True, exist_ok=True)
        write_meta(a.out, {**environment_meta("cuda"), "study": "fa3 backward dQ routes against cuDNN",
                           "args": {k: str(v) for k, v in vars(a).items()}})

    from fa2bench.kernels import fa3_bwd
    from fa2bench.kernels.fa3 import fa3_forward

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    causals = {"both": (False, True), "full": (False,), "causal": (True,)}[a.causal]
    print(f"{'d':>4} {'mask':>6} {'seqlen':>6} | {'route':>6} {'ms':>7} {'TFLOP/s':>8} {'x kernel':>8} "
          f"{'x cuDNN':>7} | max |diff| vs kernel route (dq, dk, dv)", flush=True)
    for d in map(int, a.headdim.split(",")):
        for n in map(int, a.seqlen.split(",")):
            for causal in causals:
                b, h = max(1, a.tokens // n), a.hidden // d
                torch.manual_seed(0)
                q, k, v, do = (torch.randn(b, h, n, d, device="cuda", dtype=dtype) for _ in range(4))
                o, lse = fa3_forward(q, k, v, causal)
                flops = attention_flops(b, h, n, n, d, causal, "bwd")
                results, ref = {}, None
                for route in ("kernel", "redg", "tma"):
                    fa3_bwd.DQ_ATOMICS = "tma" if route == "kernel" else route

                    def run(route=route):
                        return fa3_bwd.fa3_backward(q, k, v, o, lse, do, causal, deterministic=route == "kernel")

                    grads = run()
                    if ref is None:
                        ref = grads
                    diff = ", ".join(f"{(g.float() - r.float()).abs().max().item():.2e}" for g, r in zip(grads, ref))
                    results[route] = (triton.testing.do_bench(run, rep=a.rep_ms), diff)
                fa3_bwd.DQ_ATOMICS = "tma"
                qc, kc, vc = (t.detach().clone().requires_grad_() for t in (q, k, v))
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    oc = torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=causal)
                cudnn_ms = triton.testing.do_bench(
                    lambda: torch.autograd.grad(oc, (qc, kc, vc), do, retain_graph=True), rep=a.rep_ms)
                mask = "causal" if causal else "full"
                for route, (ms, diff) in results.items():
                    rows.append(dict(headdim=d, causal=causal, seqlen=n, batch=b, heads=h, dtype=a.dtype, route=route,
                                     ms=ms, tflops=tflops(flops, ms), vs_kernel=results["kernel"][0] / ms,
                                     vs_cudnn=cudnn_ms / ms, max_diff_dq_dk_dv=diff))
                    print(f"{d:>4} {mask:>6} {n:>6} | {route:>6} {ms:7.3f} {tflops(flops, ms):8.1f} "
                          f"{results['kernel'][0] / ms:8.3f} {cudnn_ms / ms:7.3f} | {diff}", flush=True)
                print(f"{d:>4} {mask:>6} {n:>6} | {'cudnn':>6} {cudnn_ms:7.3f} {tflops(flops, cudnn_ms):8.1f}",
                      flush=True)
                rows.append(dict(headdim=d, causal=causal, seqlen=n, batch=b, heads=h, dtype=a.dtype, route="cudnn",
                                 ms=cudnn_ms, tflops=tflops(flops, cudnn_ms), vs_cudnn=1.0))
                if a.out:
                    import pandas as pd

                    pd.DataFrame(rows).to_csv(a.out / "fa3_bwd_dq_routes.csv", index=False)


if __name__ == "__main__":
    main()
