"""fa3's rung 9 with two consumer warpgroups against three (or the softmax's row reductions in one chain against
``--row-split`` chains, ``fa3.tiles``' ROW_SPLIT), A/B in one process, on the paper's shapes (16k tokens, hidden
2048), causal both. One CSV row per (shape, dtype, causal, consumers, row split), the suite's timer (L2 flushed
before each call), and meta.json. ``--consumers 0``: the count ``fa3.tiles`` picks.

    python tools/fa3_consumers_ab.py --out results/<name> [--seqlen 2048,4096,8192,16384] [--headdim 64]
    python tools/fa3_consumers_ab.py --out results/<name> --consumers 0 --row-split 1,4 --headdim 64,128
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def fa3_row_split() -> int:
    from fa2bench.kernels import fa3

    return fa3.ROW_SPLIT


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seqlen", type=ints, default=[2048, 4096, 8192, 16384])
    ap.add_argument("--headdim", type=ints, default=[64])
    ap.add_argument("--dtype", default="fp16,bf16")
    ap.add_argument("--consumers", type=ints, default=[2, 3])
    ap.add_argument("--row-split", type=ints, default=[fa3_row_split()])
    ap.add_argument("--rep-ms", type=float, default=50.0)
    a = ap.parse_args(argv)
    import torch

    from fa2bench.core import precision
    from fa2bench.core.flops import attention_flops, tflops
    from fa2bench.kernels import fa3
    from fa2bench.run.results import write_meta
    from fa2bench.run.runner import environment_meta
    from fa2bench.run.timing import bench

    a.out.mkdir(parents=True, exist_ok=True)
    tiles = fa3.tiles

    def split_tiles(split: int):
        return lambda *args, **kw: {**tiles(*args, **kw), **({"ROW_SPLIT": split} if "ROW_SPLIT" in
                                                              tiles(*args, **kw) else {})}

    write_meta(a.out, {**environment_meta("cuda"), "study": "fa3 rung 9: consumer warpgroups, row-reduction chains",
                       "args": {k: str(v) for k, v in vars(a).items()}})
    rows, start = [], time.time()
    for dtype_name in a.dtype.split(","):
        dtype = precision.torch_dtype(dtype_name)
        for headdim in a.headdim:
            for seqlen in a.seqlen:
                batch, heads = 16384 // seqlen, 2048 // headdim
                q, k, v = (torch.randn(batch, heads, seqlen, headdim, device="cuda", dtype=dtype) for _ in range(3))
                for causal in (False, True):
                    flops = attention_flops(batch, heads, seqlen, seqlen, headdim, causal, "fwd")
                    for consumers in a.consumers:
                        for split in a.row_split:
                            fa3.tiles = split_tiles(split)

                            def run(consumers=consumers or None, causal=causal):
                                return fa3.fa3_forward(q, k, v, causal=causal, rung=9, consumers=consumers)
                            run()
                            t = bench(run, timer="plain", rep_ms=a.rep_ms)
                            fa3.tiles = tiles
                            rows.append(dict(dtype=dtype_name, headdim=headdim, seqlen=seqlen, batch=batch,
                                             heads=heads, causal=causal, consumers=consumers, row_split=split,
                                             config=fa3.last_config(), ms=t.ms, spread=t.spread, noisy=t.noisy,
                                             tflops=tflops(flops, t.ms)))
                            print(rows[-1], f"{time.time() - start:.0f} s", flush=True)
                pd.DataFrame(rows).to_csv(a.out / "fa3_consumers_ab.csv", index=False)
    frame = pd.DataFrame(rows)
    column = "row_split" if len(a.row_split) > 1 else "consumers"
    values = a.row_split if column == "row_split" else a.consumers
    table = frame.pivot_table(index=["dtype", "headdim", "causal", "seqlen"], columns=column, values="tflops")
    print(table.assign(gain=table[values[-1]] / table[values[0]]).round(3).to_string())


if __name__ == "__main__":
    main()
