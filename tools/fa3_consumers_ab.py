"""fa3's rung 9 with two consumer warpgroups against three, A/B in one process, on the paper's shapes (16k tokens,
hidden 2048), causal both. One CSV row per (shape, dtype, causal, consumers), the suite's timer (L2 flushed
before each call), and meta.json.

    python tools/fa3_consumers_ab.py --out results/<name> [--seqlen 2048,4096,8192,16384] [--headdim 64]
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seqlen", type=ints, default=[2048, 4096, 8192, 16384])
    ap.add_argument("--headdim", type=ints, default=[64])
    ap.add_argument("--dtype", default="fp16,bf16")
    ap.add_argument("--consumers", type=ints, default=[2, 3])
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
    write_meta(a.out, {**environment_meta("cuda"), "study": "fa3 rung 9: two consumer warpgroups against three",
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
                        def run(consumers=consumers, causal=causal):
                            return fa3.fa3_forward(q, k, v, causal=causal, rung=9, consumers=consumers)
                        run()
                        t = bench(run, timer="plain", rep_ms=a.rep_ms)
                        rows.append(dict(dtype=dtype_name, headdim=headdim, seqlen=seqlen, batch=batch, heads=heads,
                                         causal=causal, consumers=consumers, config=fa3.last_config(), ms=t.ms,
                                         spread=t.spread, noisy=t.noisy, tflops=tflops(flops, t.ms)))
                        print(rows[-1], f"{time.time() - start:.0f} s", flush=True)
                pd.DataFrame(rows).to_csv(a.out / "fa3_consumers_ab.csv", index=False)
    frame = pd.DataFrame(rows)
    table = frame.pivot_table(index=["dtype", "headdim", "causal", "seqlen"], columns="consumers", values="tflops")
    print(table.assign(gain=table[a.consumers[-1]] / table[a.consumers[0]]).round(3).to_string())


if __name__ == "__main__":
    main()
