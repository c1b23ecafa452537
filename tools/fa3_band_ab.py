"""fa3's causal tile order, A/B in one process: the band ``causal_band`` picks against every head in one band (the
longest-first order over all heads, fa3's order before bands), for each forward rung, on the paper's causal
shapes (16k tokens, hidden 2048). One CSV row per (shape, dtype, rung, band), the suite's timer (L2 flushed
before each call), and meta.json.

    python tools/fa3_band_ab.py --out results/<name> [--seqlen 2048,4096,8192,16384] [--headdim 64,128]
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
    ap.add_argument("--headdim", type=ints, default=[64, 128])
    ap.add_argument("--dtype", default="fp16,bf16")
    ap.add_argument("--rungs", type=ints, default=[8, 9, 10])
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
    write_meta(a.out, {**environment_meta("cuda"), "study": "fa3 causal band against one band of every head",
                       "args": {k: str(v) for k, v in vars(a).items()}})
    props = torch.cuda.get_device_properties(0)
    rows, start = [], time.time()
    for dtype_name in a.dtype.split(","):
        dtype = precision.torch_dtype(dtype_name)
        for headdim in a.headdim:
            for seqlen in a.seqlen:
                batch, heads = 16384 // seqlen, 2048 // headdim
                q, k, v = (torch.randn(batch, heads, seqlen, headdim, device="cuda", dtype=dtype) for _ in range(3))
                flops = attention_flops(batch, heads, seqlen, seqlen, headdim, True, "fwd")
                for rung in a.rungs:
                    auto = fa3.launch_ints(batch, heads, 1, seqlen, seqlen, headdim, True,
                                           props.multi_processor_count, props.L2_cache_size, rung=rung)["BAND"]
                    for label, band in (("all heads", batch * heads), ("causal_band", auto)):
                        def run(band=band):
                            return fa3.fa3_forward(q, k, v, causal=True, rung=rung, band=band)
                        run()
                        t = bench(run, timer="plain", rep_ms=a.rep_ms)
                        rows.append(dict(dtype=dtype_name, headdim=headdim, seqlen=seqlen, batch=batch, heads=heads,
                                         rung=rung, order=label, band=band, ms=t.ms, spread=t.spread,
                                         noisy=t.noisy, tflops=tflops(flops, t.ms)))
                        print(rows[-1], f"{time.time() - start:.0f} s", flush=True)
                pd.DataFrame(rows).to_csv(a.out / "fa3_band_ab.csv", index=False)
    frame = pd.DataFrame(rows)
    table = frame.pivot_table(index=["dtype", "headdim", "seqlen", "rung"], columns="order", values="tflops")
    print((table.assign(gain=table["causal_band"] / table["all heads"])).round(3).to_string())


if __name__ == "__main__":
    main()
