"""fa3's causal tile order, A/B in one process: the band ``causal_band`` picks against every head in one band (the
longest-first order over all heads, fa3's order before bands), for each forward rung, on the paper's causal
shapes (16k tokens, hidden 2048). One CSV row per (shape, dtype, rung, band), the suite's timer (L2 flushed
before each call), and meta.json.

    python tools/fa3_band_ab.py --out results/<name> [--seqlen 2048,4096,8192,16384] [--headdim 64,128]
                                [--rungs 9] [--bands 1,2,4,8,16]   # fixed bands besides those two
"""
from __future__ import annotations

from fa3_ab import Rows, ints, paper_inputs, parser


def main(argv=None) -> None:
    ap = parser(__doc__, headdim=[64, 128])
    ap.add_argument("--rungs", type=ints, default=[8, 9, 10])
    ap.add_argument("--bands", type=ints, default=[], help="fixed bands to time as well")
    a = ap.parse_args(argv)
    import torch

    from fa2bench.core.flops import attention_flops
    from fa2bench.kernels import fa3

    props = torch.cuda.get_device_properties(0)
    rows = Rows(a.out / "fa3_band_ab.csv")
    for dtype, headdim, seqlen, batch, heads, q, k, v in paper_inputs(
            a, "fa3 causal band against one band of every head"):
        flops = attention_flops(batch, heads, seqlen, seqlen, headdim, True, "fwd")
        for rung in a.rungs:
            auto = fa3.launch_ints(batch, heads, 1, seqlen, seqlen, headdim, True, props.multi_processor_count,
                                   props.L2_cache_size, rung=rung)["BAND"]
            fixed = [(f"band {b}", b) for b in a.bands if b < batch * heads]
            for label, band in (("all heads", batch * heads), ("causal_band", auto), *fixed):
                rows.time(lambda: fa3.fa3_forward(q, k, v, causal=True, rung=rung, band=band), flops, a.rep_ms,
                          dtype=dtype, headdim=headdim, seqlen=seqlen, batch=batch, heads=heads, rung=rung,
                          order=label, band=band)
        rows.save()
    table = rows.save().pivot_table(index=["dtype", "headdim", "seqlen", "rung"], columns="order", values="tflops")
    print(table.div(table["all heads"], axis=0).round(3).assign(**{"all heads TFLOP/s": table["all heads"]})
          .to_string())


if __name__ == "__main__":
    main()
