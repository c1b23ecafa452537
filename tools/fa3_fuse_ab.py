"""fa3's forward with the fused tile boundary (``FUSE`` 1: a tile's last P V goes into the next tile's first wgmma
group, docs/fa3.md section 16) against the unfused one (0), A/B in one process, on the paper's shapes (16k tokens,
hidden 2048), causal both. ``launch_ints`` fuses without the mask and not under it, from the A/B of session 15,
which ran before the masked step was shortened and block 0 left unmasked (section 17): this asks the question
again. One CSV row per (shape, dtype, rung, causal, fuse), the suite's timer (L2 flushed before each call), and
meta.json.

    python tools/fa3_fuse_ab.py --out results/<name> [--seqlen 2048,4096,8192,16384] [--headdim 64,128]
                                [--rungs 9]
"""
from __future__ import annotations

from fa3_ab import Rows, ints, paper_inputs, parser


def main(argv=None) -> None:
    ap = parser(__doc__, headdim=[64, 128])
    ap.add_argument("--rungs", type=ints, default=[9])
    a = ap.parse_args(argv)
    from fa2bench.core.flops import attention_flops
    from fa2bench.kernels import fa3

    rows = Rows(a.out / "fa3_fuse_ab.csv")
    for dtype, headdim, seqlen, batch, heads, q, k, v in paper_inputs(
            a, "fa3 forward: the fused tile boundary against the unfused one"):
        for causal in (False, True):
            flops = attention_flops(batch, heads, seqlen, seqlen, headdim, causal, "fwd")
            for rung in a.rungs:
                for fuse in (0, 1):
                    rows.time(lambda: fa3.fa3_forward(q, k, v, causal=causal, rung=rung, fuse=fuse), flops,
                              a.rep_ms, dtype=dtype, headdim=headdim, seqlen=seqlen, batch=batch, heads=heads,
                              causal=causal, rung=rung, fuse=fuse)
        rows.save()
    table = rows.save().pivot_table(index=["dtype", "headdim", "causal", "rung", "seqlen"], columns="fuse",
                                    values="tflops")
    print(table.assign(gain=table[1] / table[0]).round(3).to_string())


if __name__ == "__main__":
    main()
