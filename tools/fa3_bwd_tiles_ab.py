"""fa3's backward, A/B in one process: the dK/dV kernel's steps of 64 query rows against the studies of docs/fa3.md
sections 17 and 21: at head dim 64, 128 query rows per step (``fa3_bwd.DKDV_BLOCK_M``) and the steps overlapped
(``fa3_bwd.DKDV_PIPELINE``: each step's S^T and dP^T under the previous step's dQ); at head dim 128, dQ's wgmma
before dK's and its tile reduced while dK's runs (``fa3_bwd.DKDV_DQ_FIRST``); beside cuDNN's backward, on the
paper's shapes (16k tokens, hidden 2048), causal both. Only the backward is timed (fa3: Delta, the dK/dV kernel
with dQ by TMA reduce-add, the fp32 dQ's zeroing and cast; cuDNN: ``torch.autograd.grad`` on a saved forward), the
suite's timer with L2 flushed before each call, TFLOP/s by the suite's FLOP count (2.5x the forward's). Before
timing, each study's gradients are compared with the default's (max |difference| of dQ, dK, dV in the row), so a
wrong kernel shows before its time counts. One CSV row per (shape, dtype, variant) and meta.json.

    python tools/fa3_bwd_tiles_ab.py --out results/<name> [--seqlen 2048,4096,8192,16384] [--dtype fp16,bf16]
                                     [--variants m64,m64-pipelined,m128]
    python tools/fa3_bwd_tiles_ab.py --out results/<name> --headdim 128 --variants m64,dq-first
"""
from __future__ import annotations

from fa3_ab import Rows, paper_inputs, parser

# (query rows per step, steps overlapped, dQ first)
VARIANTS = {"m64": (64, False, False), "m64-pipelined": (64, True, False), "m128": (128, False, False),
            "dq-first": (64, False, True)}


def main(argv=None) -> None:
    ap = parser(__doc__, headdim=[64])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}; the first is "
                    "the reference the others' gradients are compared with")
    a = ap.parse_args(argv)
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fa2bench.core.flops import attention_flops
    from fa2bench.kernels import fa3_bwd
    from fa2bench.kernels.fa3 import fa3_forward

    variants = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    rows = Rows(a.out / "fa3_bwd_tiles_ab.csv")
    default = (dict(fa3_bwd.DKDV_BLOCK_M), dict(fa3_bwd.DKDV_PIPELINE), dict(fa3_bwd.DKDV_DQ_FIRST))
    for dtype, headdim, seqlen, batch, heads, q, k, v in paper_inputs(
            a, "fa3 backward: the dK/dV step studies against 64-row steps, and cuDNN"):
        do = torch.randn_like(q)
        for causal in (False, True):
            o, lse = fa3_forward(q, k, v, causal)
            flops = attention_flops(batch, heads, seqlen, seqlen, headdim, causal, "bwd")
            labels = dict(dtype=dtype, headdim=headdim, seqlen=seqlen, batch=batch, heads=heads, causal=causal)
            first = None
            for variant in variants:
                block_m, pipeline, dq_first = VARIANTS[variant]
                fa3_bwd.DKDV_BLOCK_M = {**default[0], (headdim, causal): block_m}
                fa3_bwd.DKDV_PIPELINE = {**default[1], (headdim, causal): pipeline}
                fa3_bwd.DKDV_DQ_FIRST = {**default[2], (headdim, causal): dq_first}

                def run():
                    return fa3_bwd.fa3_backward(q, k, v, o, lse, do, causal, deterministic=False)

                grads = run()
                first = first or grads
                diff = max((g.float() - f.float()).abs().max().item() for g, f in zip(grads, first))
                rows.time(run, flops, a.rep_ms, **labels, provider="fa3", variant=variant, max_diff=diff)
            fa3_bwd.DKDV_BLOCK_M, fa3_bwd.DKDV_PIPELINE, fa3_bwd.DKDV_DQ_FIRST = map(dict, default)
            qc, kc, vc = (t.detach().clone().requires_grad_() for t in (q, k, v))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                oc = torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=causal)
            rows.time(lambda: torch.autograd.grad(oc, (qc, kc, vc), do, retain_graph=True), flops, a.rep_ms,
                      config="cuDNN", **labels, provider="sdpa-cudnn", variant="cudnn", max_diff=0.0)
        rows.save()
    table = rows.save().pivot_table(index=["dtype", "headdim", "causal", "seqlen"], columns="variant",
                                    values="tflops")  # TFLOP/s
    for variant in variants:
        table[f"{variant} / cuDNN"] = table[variant] / table["cudnn"]
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
