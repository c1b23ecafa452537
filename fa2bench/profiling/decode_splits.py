"""Split-KV's split count: the heuristic against every fixed count, on a few decode shapes (issue 19).

``kernels/decode.py`` plans a launch (``decode.plan``): its tiling with ``choose_tile`` and the number of key
splits with ``num_splits_heuristic`` (one wave of resident programs). This study times ``decode_attention`` at
each shape with the plan's count and with fixed counts 1, 2, 4, ... 128, with the suite's graph timer over fresh
caches (L2 cold, as decode sweep points are timed), and writes ``decode_splits.csv`` with meta.json::

    python -m fa2bench.profiling.decode_splits --out results/<name> [--study splits|tiles|both]

Each row is one (shape, split count); ``heuristic`` marks the heuristic's own count, ``vs_best`` its time over
the fastest count's. ``--study tiles`` writes ``decode_tiles.csv``: every (BLOCK_N, warps, stages) of ``TILES``
at split counts 1-32, the data behind the kernel's tiling and heuristic; ``--page-size N`` runs either study on a
cache in pages of N keys (a block larger than a page spans several; the plan is the contiguous cache's).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

# (batch, heads, kv_heads, kv_len): Llama-3-8B-like heads at lengths where splitting matters most (batch 1) and
# where the batch alone fills the GPU
SHAPES = ((1, 32, 8, 16384), (1, 32, 8, 131072), (4, 32, 8, 32768), (16, 32, 8, 8192), (64, 32, 8, 4096),
          (1, 64, 8, 65536))
SPLITS = (1, 2, 4, 8, 16, 32, 64, 128)
HEADDIM, DTYPE = 128, "bf16"
CSV = "decode_splits.csv"


# the tile study: (BLOCK_N, warps, stages) x split counts at shapes from each regime of the decode preset
TILE_SHAPES = ((1, 32, 8, 1024), (1, 32, 8, 16384), (4, 32, 8, 32768), (16, 32, 8, 8192), (64, 32, 8, 4096),
               (64, 32, 8, 16384), (256, 32, 8, 4096))
TILES = ((32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 3), (128, 4, 2), (128, 4, 3), (128, 8, 2),
         (128, 8, 3))
TILE_SPLITS = (1, 2, 4, 8, 16, 32)
TILES_CSV = "decode_tiles.csv"


def _timer(batch: int, heads: int, kv_heads: int, kv_len: int, page: int = 0):
    """time(splits, tiles) -> a row: decode_attention on fresh caches of this shape (pages of ``page`` keys; 0:
    contiguous), graph timer, L2 cold."""
    import torch

    from fa2bench.core import precision
    from fa2bench.core.decode import compulsory_bytes
    from fa2bench.core.decode_ref import make_inputs
    from fa2bench.kernels import decode
    from fa2bench.run.timing import bench

    dtype = precision.torch_dtype(DTYPE)
    nbytes = compulsory_bytes(batch, heads, kv_heads, 1, kv_len, HEADDIM, False, dtype.itemsize)

    def inputs():
        return make_inputs(batch, heads, kv_heads, 1, kv_len, HEADDIM, page, False, dtype, "cuda")

    def time(count: int | None, tiles=None) -> dict:
        def run(cache):
            return decode.decode_attention(cache.q, cache.k_cache, cache.v_cache, cache.seqlens_k, cache.block_table,
                                           num_splits=count, validate=False, tiles=tiles)

        cache = inputs()
        run(cache)
        timing = bench(lambda: run(cache), timer="graph", input_bytes=nbytes,
                       rotate=lambda n: [((lambda c=c: run(c)), None) for c in (inputs() for _ in range(n))])
        torch.cuda.synchronize()
        return dict(batch=batch, heads=heads, kv_heads=kv_heads, kv_len=kv_len, headdim=HEADDIM, dtype=DTYPE,
                    page_size=page, splits=count, us=timing.ms * 1e3, gbps=nbytes / (timing.ms * 1e-3) / 1e9,
                    samples=timing.samples, spread=timing.spread, noisy=timing.noisy, timer=timing.timer)

    return time


def heuristic_splits(batch: int, heads: int, kv_heads: int, kv_len: int) -> int:
    """The split count decode_attention picks for one query per sequence (its launch plan, ``decode.plan``, the
    same for a contiguous and a paged cache)."""
    import torch

    from fa2bench.core import precision
    from fa2bench.kernels import decode

    elt = precision.torch_dtype(DTYPE).itemsize
    return decode.plan(batch, 1, heads, kv_heads, HEADDIM, kv_len, elt, decode.sm_count(torch.device("cuda"))).splits


def study(shapes=SHAPES, splits=SPLITS, save=None, page: int = 0) -> pd.DataFrame:
    """The heuristic's split count against each fixed count (default tiles); ``save(frame)`` at the end."""
    rows = []
    for batch, heads, kv_heads, kv_len in shapes:
        time = _timer(batch, heads, kv_heads, kv_len, page)
        chosen = heuristic_splits(batch, heads, kv_heads, kv_len)
        rows += [{**time(count), "heuristic": count == chosen} for count in sorted({*splits, chosen})]
    frame = pd.DataFrame(rows)
    frame["vs_best"] = frame["us"] / frame.groupby(["batch", "heads", "kv_len"])["us"].transform("min")
    if save:
        save(frame)
    return frame


def tile_study(shapes=TILE_SHAPES, tiles=TILES, splits=TILE_SPLITS, save=None, page: int = 0) -> pd.DataFrame:
    """Every (BLOCK_N, warps, stages) of ``tiles`` at every split count of ``splits`` and the heuristic's;
    ``save(frame)`` after each shape (a study stopped by a time limit keeps what it measured)."""
    rows = []
    for batch, heads, kv_heads, kv_len in shapes:
        time = _timer(batch, heads, kv_heads, kv_len, page)
        chosen = heuristic_splits(batch, heads, kv_heads, kv_len)
        for tile in tiles:
            for count in sorted({*splits, chosen}):
                try:
                    row = time(count, tile)
                except Exception as exc:  # a tile that does not compile or fit: recorded, the study goes on
                    row = dict(batch=batch, heads=heads, kv_heads=kv_heads, kv_len=kv_len, splits=count,
                               error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                rows.append({**row, "block_n": tile[0], "warps": tile[1], "stages": tile[2],
                             "heuristic": count == chosen})
        frame = pd.DataFrame(rows)
        frame["vs_best"] = frame["us"] / frame.groupby(["batch", "heads", "kv_len"])["us"].transform("min")
        if save:
            save(frame)
    return frame


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        batch, heads, kv_heads, kv_len = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is BATCH,HEADS,KV_HEADS,KV_LEN (four integers), not {text!r}")
    if min(batch, heads, kv_heads, kv_len) < 1 or heads % kv_heads:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive and heads a multiple of kv_heads")
    return batch, heads, kv_heads, kv_len


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--study", choices=("splits", "tiles", "both"), default="splits")
    parser.add_argument("--page-size", type=int, default=0, help="a paged cache of pages of this many keys")
    parser.add_argument("--shape", action="append", type=_shape, metavar="BATCH,HEADS,KV_HEADS,KV_LEN",
                        help="study these shapes instead of the study's own (repeat the option for several)")
    args = parser.parse_args(argv)
    from fa2bench.run import hardware
    from fa2bench.run.results import write_meta
    from fa2bench.run.runner import environment_meta

    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**environment_meta("cuda"), "study": f"decode {args.study}", "page_size": args.page_size,
            "ceilings": hardware.measure_ceilings()}
    write_meta(args.out, meta)
    copy_gbps = 1e3 * (meta["ceilings"].get("copy_tb_per_s") or float("nan"))
    def saver(csv):
        def save(frame):
            frame.assign(pct_copy_bw=100 * frame["gbps"] / copy_gbps).to_csv(args.out / csv, index=False)
        return save

    for name, csv, run in (("splits", CSV, study), ("tiles", TILES_CSV, tile_study)):
        if args.study in (name, "both"):
            shapes = {"shapes": tuple(args.shape)} if args.shape else {}
            frame = run(save=saver(csv), page=args.page_size, **shapes)
            print(frame[frame["vs_best"] == 1].to_string(index=False))


if __name__ == "__main__":
    main()
