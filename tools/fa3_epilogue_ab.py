"""fa3's forward (rung 9) with each warpgroup's O tile written through shared memory and one TMA copy (``o_tma``,
docs/fa3.md section 25) against the pointer stores from registers (the default), and cuDNN's forward beside them,
A/B in one process on the paper's shapes (16k tokens, hidden 2048). Each round times the three in one order and the
next round in the reverse order, so neither epilogue always runs first on a card that heats through a cell. One CSV
row per (shape, dtype, causal, round, variant), the suite's timer (L2 flushed before each call), and meta.json.

    python tools/fa3_epilogue_ab.py --out results/<name> [--seqlen 2048,4096,8192,16384] [--headdim 128]
                                    [--causal 0,1] [--rounds 2]
"""
from __future__ import annotations

from fa3_ab import Rows, ints, paper_inputs, parser


def main(argv=None) -> None:
    ap = parser(__doc__, headdim=[128])
    ap.add_argument("--causal", type=ints, default=[0, 1], help="0: no mask, 1: causal (comma list)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    from fa2bench.core import providers
    from fa2bench.core.flops import attention_flops
    from fa2bench.core.presets import Shape
    from fa2bench.kernels import fa3

    rows = Rows(a.out / "fa3_epilogue_ab.csv")
    for dtype, headdim, seqlen, batch, heads, q, k, v in paper_inputs(
            a, "fa3 forward (rung 9): O by TMA copies against pointer stores, and cuDNN"):
        for causal in map(bool, a.causal):
            cudnn = providers.get("sdpa-cudnn").make(Shape(batch, heads, heads, seqlen, seqlen, headdim, causal))
            variants = {"pointer": lambda: fa3.fa3_forward(q, k, v, causal=causal, rung=9, o_tma=False),
                        "tma": lambda: fa3.fa3_forward(q, k, v, causal=causal, rung=9, o_tma=True),
                        "cudnn": lambda: cudnn(q, k, v)}
            flops = attention_flops(batch, heads, seqlen, seqlen, headdim, causal, "fwd")
            diff = float((variants["tma"]()[0] - variants["pointer"]()[0]).abs().max())  # before any time counts
            for rnd in range(a.rounds):
                order = list(variants) if rnd % 2 == 0 else list(variants)[::-1]
                for name in order:
                    rows.time(variants[name], flops, a.rep_ms, config="cuDNN" if name == "cudnn" else None,
                              dtype=dtype, headdim=headdim, seqlen=seqlen, batch=batch, heads=heads, causal=causal,
                              round=rnd, variant=name, max_diff=diff)
        rows.save()
    table = rows.save().pivot_table(index=["dtype", "headdim", "causal", "seqlen"], columns="variant",
                                    values="tflops", aggfunc="median")
    table["tma / pointer"] = table["tma"] / table["pointer"]
    table["pointer / cuDNN"] = table["pointer"] / table["cudnn"]
    table["tma / cuDNN"] = table["tma"] / table["cudnn"]
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
