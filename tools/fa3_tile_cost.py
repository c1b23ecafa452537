"""Where a short causal forward's time goes, per provider: the cost of a tile's prologue and epilogue, of each K/V
block, and of the masked diagonal block, measured in one process.

Why: at head dim 64 and 2k tokens fa3's rung 9 matches cuDNN without the mask (433 / 435 TFLOP/s, fp16,
results/h200-fa3-accept-3) and trails it under the mask (330 / 385): what the mask adds is short tiles (a tile
of causal 2k sees 8.5 K/V blocks on average, not 16) and one masked block per tile. This study tells the two
apart. Without the mask, at a fixed query length, time is about tiles x (per-tile + blocks x per-block); so for
each provider it times seqlen_k = 128 .. seqlen_q (every tile sees seqlen_k / 128 blocks), fits that line, and
then times the causal forward at seqlen_k = seqlen_q: what the line does not explain is the mask's own cost.
Shapes: the paper's (16k tokens per batch at seqlen_q, hidden 2048), fresh inputs. Timer: the suite's ``auto``
by default, which replays a CUDA graph where the host's issue time would show in a call this short (the plain
timer's 0.1-0.3 ms points spread up to 47% in results/h200-fa3-tile-cost-2), over enough copies of the inputs to
keep L2 cold between replays; ``--timer plain`` for the L2-flushed plain timer alone. Each row records its
timer. Rows -> <out>/fa3_tile_cost.csv, with meta.json.

    python tools/fa3_tile_cost.py --out results/<name> [--seqlen 2048] [--headdim 64,128] [--dtype fp16]
                                  [--providers fa3-pingpong,sdpa-cudnn] [--kv 128,256,512,1024,2048]
                                  [--timer auto|plain|graph]
"""
from __future__ import annotations

import numpy as np

from fa3_ab import Rows, ints, paper_inputs, parser

BLOCK_N = 128  # the K/V block every provider is counted in (fa3's; a unit for the fit, not a claim about cuDNN)


def main(argv=None) -> None:
    ap = parser(__doc__, headdim=[64, 128])
    ap.set_defaults(seqlen=[2048], dtype="fp16")
    ap.add_argument("--providers", default="fa3-pingpong,sdpa-cudnn")
    ap.add_argument("--kv", type=ints, default=[128, 256, 512, 1024, 2048], help="key lengths of the fit")
    ap.add_argument("--timer", default="auto", choices=("auto", "plain", "graph"))
    a = ap.parse_args(argv)
    import torch

    from fa2bench.core import providers
    from fa2bench.core.flops import attention_flops
    from fa2bench.core.presets import Shape

    names = [n for n in a.providers.split(",") if n]
    rows = Rows(a.out / "fa3_tile_cost.csv")
    for dtype, headdim, seqlen, batch, heads, q, _, _ in paper_inputs(a, "per-tile, per-block and mask costs"):
        for name in names:
            for causal, kv in [(False, n) for n in a.kv if n <= seqlen] + [(True, seqlen)]:
                k, v = (torch.randn(batch, heads, kv, headdim, device="cuda", dtype=q.dtype) for _ in range(2))
                fn = providers.get(name).make(Shape(batch, heads, heads, seqlen, kv, headdim, causal))

                def rotate(n, fn=fn, q=q, k=k, v=v):  # the same call over n fresh copies of its inputs
                    copies = [tuple(t.clone() for t in (q, k, v)) for _ in range(n)]
                    return [((lambda c=c: fn(*c)), None) for c in copies]

                rows.time(lambda: fn(q, k, v), attention_flops(batch, heads, seqlen, kv, headdim, causal, "fwd"),
                          a.rep_ms, timer=a.timer, rotate=rotate,
                          input_bytes=sum(t.numel() * t.element_size() for t in (q, k, v)), provider=name,
                          dtype=dtype, headdim=headdim, seqlen_q=seqlen, seqlen_k=kv, causal=causal,
                          blocks=kv / BLOCK_N)
        rows.save()
    print("\n".join(summary(rows.save())))


def summary(frame) -> list[str]:
    """Per (provider, dtype, head dim, seqlen_q): the fitted per-tile cost in blocks, and the causal time against
    the line at the causal tiles' mean length."""
    from fa2bench.kernels import fa3

    rungs = {name: rung for rung, name in fa3.RUNGS.items()}
    lines = []
    for (name, dtype, headdim, seqlen), g in frame.groupby(["provider", "dtype", "headdim", "seqlen_q"]):
        line = g[~g.causal]
        slope, intercept = np.polyfit(line.blocks, line.ms, 1)
        causal = g[g.causal].iloc[0]
        # a causal tile's blocks, on average: fa3's rungs at their own tile rows, anyone else's taken as 128
        block_m = (fa3.tiles(headdim, rungs[name], causal=True, seqlen_q=seqlen)["BLOCK_M"] if name in rungs
                   else 128)
        mean_blocks = fa3._tile_blocks(-(-seqlen // block_m), seqlen, seqlen, block_m, BLOCK_N).mean()
        predicted = intercept + slope * mean_blocks  # the line at the causal tiles' mean length
        lines.append(f"{name} {dtype} d{headdim} {seqlen}: per-tile {intercept / slope:.2f} blocks, causal "
                     f"{causal.ms:.3f} ms against {predicted:.3f} ms from the line "
                     f"(mask's own cost {causal.ms / predicted - 1:+.1%})")
    return lines


if __name__ == "__main__":
    main()
