"""Split-KV's split count: the heuristic against every fixed count, on a few decode shapes (issue 19).

``kernels/decode.py`` picks the number of key splits with ``num_splits_heuristic`` (about two programs per SM,
at least four K/V blocks per split). This study times ``decode_attention`` at each shape with the heuristic's
count and with fixed counts 1, 2, 4, ... 128, with the suite's graph timer over fresh caches (L2 cold, as decode
sweep points are timed), and writes ``decode_splits.csv`` with meta.json::

    python -m fa2bench.profiling.decode_splits --out results/<name>

Each row is one (shape, split count); ``heuristic`` marks the heuristic's own count, ``vs_best`` its time over
the fastest count's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

# (batch, heads, kv_heads, kv_len): Llama-3-8B-like heads at lengths where splitting matters most (batch 1) and
# where the batch alone fills the GPU
SHAPES = ((1, 32, 8, 16384), (1, 32, 8, 131072), (4, 32, 8, 32768), (16, 32, 8, 8192), (64, 32, 8, 4096),
          (1, 64, 8, 65536))
SPLITS = (1, 2, 4, 8, 16, 32, 64, 128)
HEADDIM, DTYPE = 128, "bf16"
CSV = "decode_splits.csv"


def study(shapes=SHAPES, splits=SPLITS) -> pd.DataFrame:
    import torch
    import triton

    from fa2bench.core import precision
    from fa2bench.core.decode import compulsory_bytes
    from fa2bench.core.decode_ref import make_inputs
    from fa2bench.kernels import decode
    from fa2bench.run.timing import bench

    dtype = precision.torch_dtype(DTYPE)
    rows = []
    for batch, heads, kv_heads, kv_len in shapes:
        def inputs():
            return make_inputs(batch, heads, kv_heads, 1, kv_len, HEADDIM, 0, False, dtype, "cuda")

        programs = batch * kv_heads  # one query per sequence: one M tile per KV group
        chosen = decode.num_splits_heuristic(programs, triton.cdiv(kv_len, 64), decode.sm_count(torch.device("cuda")))
        nbytes = compulsory_bytes(batch, heads, kv_heads, 1, kv_len, HEADDIM, False, dtype.itemsize)
        for count in sorted({*splits, chosen}):
            def run(cache, count=count):
                return decode.decode_attention(cache.q, cache.k_cache, cache.v_cache, cache.seqlens_k,
                                               num_splits=count, validate=False)

            cache = inputs()
            run(cache)
            timing = bench(lambda: run(cache), timer="graph", input_bytes=nbytes,
                           rotate=lambda n, count=count: [((lambda c=c: run(c, count)), None)
                                                          for c in (inputs() for _ in range(n))])
            rows.append(dict(batch=batch, heads=heads, kv_heads=kv_heads, kv_len=kv_len, headdim=HEADDIM,
                             dtype=DTYPE, splits=count, heuristic=count == chosen, us=timing.ms * 1e3,
                             gbps=nbytes / (timing.ms * 1e-3) / 1e9, samples=timing.samples,
                             spread=timing.spread, noisy=timing.noisy, timer=timing.timer))
    frame = pd.DataFrame(rows)
    best = frame.groupby(["batch", "heads", "kv_len"])["us"].transform("min")
    frame["vs_best"] = frame["us"] / best
    return frame


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args(argv).out
    from fa2bench.run import hardware
    from fa2bench.run.runner import environment_meta

    out.mkdir(parents=True, exist_ok=True)
    meta = {**environment_meta("cuda"), "study": "decode split count", "ceilings": hardware.measure_ceilings()}
    frame = study()
    copy_tbps = meta["ceilings"].get("copy_tb_per_s")
    if copy_tbps:
        frame["pct_copy_bw"] = 100 * frame["gbps"] / (copy_tbps * 1e3)
    frame.to_csv(out / CSV, index=False)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(frame[frame["heuristic"]].to_string(index=False))


if __name__ == "__main__":
    main()
