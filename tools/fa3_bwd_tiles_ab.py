"""fa3's backward at head dim 64, A/B in one process: 64 query rows per dK/dV step (the default) against 128
(``fa3_bwd.DKDV_BLOCK_M``; docs/fa3.md section 17), beside cuDNN's backward, on the paper's shapes (16k tokens,
hidden 2048), causal both. Only the backward is timed (fa3: Delta, the dK/dV kernel with dQ by TMA reduce-add,
the fp32 dQ's zeroing and cast; cuDNN: ``torch.autograd.grad`` on a saved forward), the suite's timer with L2
flushed before each call, TFLOP/s by the suite's FLOP count (2.5x the forward's). Before timing, the 128-row
gradients are compared with the 64-row ones (max |difference| of dQ, dK, dV in the row), so a wrong kernel shows
before its time counts. One CSV row per (shape, dtype, variant) and meta.json.

    python tools/fa3_bwd_tiles_ab.py --out results/<name> [--seqlen 2048,4096,8192,16384] [--dtype fp16,bf16]
"""
from __future__ import annotations

from fa3_ab import Rows, paper_inputs, parser


def main(argv=None) -> None:
    ap = parser(__doc__, headdim=[64])
    ap.add_argument("--block-m", default="64,128", help="query rows per dK/dV step to time (DKDV_BLOCK_M at d64)")
    a = ap.parse_args(argv)
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fa2bench.core.flops import attention_flops
    from fa2bench.kernels import fa3_bwd
    from fa2bench.kernels.fa3 import fa3_forward

    rows = Rows(a.out / "fa3_bwd_tiles_ab.csv")
    block_ms = [int(x) for x in a.block_m.split(",")]
    for dtype, headdim, seqlen, batch, heads, q, k, v in paper_inputs(
            a, "fa3 backward: query rows per dK/dV step, against cuDNN"):
        do = torch.randn_like(q)
        for causal in (False, True):
            o, lse = fa3_forward(q, k, v, causal)
            flops = attention_flops(batch, heads, seqlen, seqlen, headdim, causal, "bwd")
            labels = dict(dtype=dtype, headdim=headdim, seqlen=seqlen, batch=batch, heads=heads, causal=causal)
            first = None
            for block_m in block_ms:
                fa3_bwd.DKDV_BLOCK_M = {**fa3_bwd.DKDV_BLOCK_M, headdim: block_m}

                def run():
                    return fa3_bwd.fa3_backward(q, k, v, o, lse, do, causal, deterministic=False)

                grads = run()
                first = first or grads
                diff = max((g.float() - f.float()).abs().max().item() for g, f in zip(grads, first))
                rows.time(run, flops, a.rep_ms, **labels, provider="fa3", block_m=block_m, max_diff=diff)
            fa3_bwd.DKDV_BLOCK_M = {**fa3_bwd.DKDV_BLOCK_M, headdim: 64}
            qc, kc, vc = (t.detach().clone().requires_grad_() for t in (q, k, v))
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                oc = torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=causal)
            rows.time(lambda: torch.autograd.grad(oc, (qc, kc, vc), do, retain_graph=True), flops, a.rep_ms,
                      config="cuDNN", **labels, provider="sdpa-cudnn", block_m=0, max_diff=0.0)
        rows.save()
    frame = rows.save()
    table = frame.pivot_table(index=["dtype", "headdim", "causal", "seqlen"], columns=["provider", "block_m"],
                              values="tflops")
    table.columns = [f"fa3 m{m}" if name == "fa3" else name for name, m in table.columns]  # TFLOP/s
    for m in block_ms:
        table[f"m{m} / cuDNN"] = table[f"fa3 m{m}"] / table["sdpa-cudnn"]
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
