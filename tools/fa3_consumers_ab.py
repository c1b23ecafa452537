"""fa3's rung 9 with two consumer warpgroups against three, A/B in one process, on the paper's shapes (16k tokens,
hidden 2048), causal both. One CSV row per (shape, dtype, causal, consumers), the suite's timer (L2 flushed
before each call), and meta.json.

    python tools/fa3_consumers_ab.py --out results/<name> [--seqlen 2048,4096,8192,16384] [--headdim 64]
"""
from __future__ import annotations

from fa3_ab import Rows, ints, paper_inputs, parser


def main(argv=None) -> None:
    ap = parser(__doc__, headdim=[64])
    ap.add_argument("--consumers", type=ints, default=[2, 3])
    a = ap.parse_args(argv)
    from fa2bench.core.flops import attention_flops
    from fa2bench.kernels import fa3

    rows = Rows(a.out / "fa3_consumers_ab.csv")
    for dtype, headdim, seqlen, batch, heads, q, k, v in paper_inputs(
            a, "fa3 rung 9: two consumer warpgroups against three"):
        for causal in (False, True):
            flops = attention_flops(batch, heads, seqlen, seqlen, headdim, causal, "fwd")
            for consumers in a.consumers:
                rows.time(lambda: fa3.fa3_forward(q, k, v, causal=causal, rung=9, consumers=consumers), flops,
                          a.rep_ms, dtype=dtype, headdim=headdim, seqlen=seqlen, batch=batch, heads=heads,
                          causal=causal, consumers=consumers)
        rows.save()
    table = rows.save().pivot_table(index=["dtype", "headdim", "causal", "seqlen"], columns="consumers",
                                    values="tflops")
    print(table.assign(gain=table[a.consumers[-1]] / table[a.consumers[0]]).round(3).to_string())


if __name__ == "__main__":
    main()
