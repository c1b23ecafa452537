"""Paged against contiguous decode caches, before and after a change to kernels/decode.py (issue 19's "paged costs
<= 10% over contiguous at page size >= 64"): one CSV row per (shape, page size, kernel), graph timer, L2 cold.

    python tools/decode_paged_ab.py --out results/_scratch/decode-paged-ab [--before 5f64b9d]

``before`` is kernels/decode.py as of a git revision, loaded beside today's (same package, so its relative
imports resolve); ``after`` is the working tree's. A contiguous cache is timed with today's kernel only, and
each paged row carries its time over that one (``vs_contiguous``); where a change moves the contiguous launch too,
``--tiles``' ``plan before`` and ``plan after`` rows time both kernels' contiguous launches.
``--tiles`` (repeatable) adds rows on contiguous caches (or paged ones, ``--tile-pages``) for a tile study: each
kernel's own plan, and fixed (BLOCK_N, warps, stages) tilings of today's kernel at the split count the plan gives
each tiling. ``--tma`` times today's rows with TMA boxes and with pointer loads, ``--cudnn`` adds sdpa-cudnn.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEVICE = "cuda"  # a CPU dry run of the script's plumbing sets "cpu" (with TRITON_INTERPRET=1)


def load_before(rev: str, folder: Path):
    """kernels/decode.py at ``rev`` as the module fa2bench.kernels._decode_before."""
    import fa2bench.kernels  # noqa: F401  (the package its relative imports resolve against)

    if Path(rev).is_file():  # a saved copy (a machine without the repository's history)
        source = Path(rev).read_text()
    else:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:kernels/decode.py"], check=True,
                                capture_output=True, text=True).stdout
    path = folder / "_decode_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fa2bench.kernels._decode_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def timer(module, batch: int, heads: int, kv_heads: int, kv_len: int, page: int, rep_ms: float):
    """time(tiles=None) -> row: ``module.decode_attention`` on fresh caches of this shape, graph timer, L2 cold."""
    import torch

    from fa2bench.core.decode import compulsory_bytes
    from fa2bench.core.decode_ref import make_inputs
    from fa2bench.run.timing import bench

    nbytes = compulsory_bytes(batch, heads, kv_heads, 1, kv_len, 128, False, 2)

    def inputs():
        return make_inputs(batch, heads, kv_heads, 1, kv_len, 128, page, False, torch.bfloat16 if DEVICE == "cuda"
                           else torch.float16, DEVICE)

    def time_it(tiles=None, lengths=True, provider=None, **options) -> dict:
        """``module``'s kernel (``lengths=False``: called without seqlens_k; ``options``: more keyword arguments,
        e.g. ``tma=True``), or ``provider`` as the sweep runs it."""
        if provider is not None:
            from fa2bench.core import providers
            from fa2bench.core.decode_ref import attention_shape, decode_adapter
            from fa2bench.core.presets import Shape

            run = decode_adapter(providers.get(provider).make(attention_shape(
                Shape(batch, heads, kv_heads, 1, kv_len, 128, True, page_size=page))))
        else:
            def run(c):
                return module.decode_attention(c.q, c.k_cache, c.v_cache, c.seqlens_k if lengths else None,
                                               c.block_table, validate=False, tiles=tiles, **options)

        cache = inputs()
        try:
            run(cache)
        except Exception as exc:  # a tiling that cannot launch (shared memory): a row that says so
            return dict(batch=batch, heads=heads, kv_heads=kv_heads, kv_len=kv_len, page_size=page,
                        error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        t = bench(lambda: run(cache), timer="graph", input_bytes=nbytes, rep_ms=rep_ms,
                  rotate=lambda n: [((lambda c=c: run(c)), None) for c in (inputs() for _ in range(n))])
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return dict(batch=batch, heads=heads, kv_heads=kv_heads, kv_len=kv_len, page_size=page, us=t.ms * 1e3,
                    gbps=nbytes / (t.ms * 1e-3) / 1e9, spread=t.spread, noisy=t.noisy, timer=t.timer,
                    config=provider or module.last_config())

    return time_it


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--before", default="5f64b9d",
                    help="git revision of the kernel to compare against, or a file holding it")
    ap.add_argument("--batch", type=ints, default=[1, 4, 16, 64])
    ap.add_argument("--kv", type=ints, default=[4096, 16384, 131072])
    ap.add_argument("--pages", type=ints, default=[64, 128, 256])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--max-gib", type=float, default=4.0, help="skip shapes whose K and V exceed this")
    ap.add_argument("--rep-ms", type=float, default=50.0)
    ap.add_argument("--tiles", action="append", default=[], help="tile study (repeatable): BATCH,...:KV:BN/W/S,... "
                                                                "e.g. 4,16,64,256:1024:128/4/3,128/4/4,64/4/2,64/4/3")
    ap.add_argument("--no-lengths", action="store_true", help="tile study: also today's plan called without "
                    "seqlens_k (uniform lengths)")
    ap.add_argument("--cudnn", action="store_true", help="tile study: also sdpa-cudnn as the sweep runs it")
    ap.add_argument("--tile-pages", type=ints, default=[0], help="the tile study's caches: 0 contiguous, else "
                    "paged in pages of this many keys (default 0)")
    ap.add_argument("--tma", action="store_true", help="today's rows again with tma=True and with tma=False")
    a = ap.parse_args(argv)
    from fa2bench.kernels import decode as after

    a.out.mkdir(parents=True, exist_ok=True)
    from fa2bench.run.results import write_meta
    from fa2bench.run.runner import environment_meta

    meta = {**environment_meta(DEVICE), "study": "decode paged against contiguous, kernel before and after",
            "before": a.before, "args": {k: str(v) for k, v in vars(a).items()}}
    write_meta(a.out, meta)
    rows, start = [], time.time()

    def save():
        frame = pd.DataFrame(rows)
        frame.to_csv(a.out / "decode_paged_ab.csv", index=False)
        return frame

    with tempfile.TemporaryDirectory() as folder:
        before = load_before(a.before, Path(folder))
        for batch in a.batch:
            for kv_len in a.kv:
                if 2 * batch * kv_len * a.kv_heads * 128 * 2 > a.max_gib * 2**30:
                    continue
                base = timer(after, batch, a.heads, a.kv_heads, kv_len, 0, a.rep_ms)()
                rows.append({**base, "kernel": "contiguous", "vs_contiguous": 1.0})
                for page in a.pages:
                    for name, module in (("before", before), ("after", after)):
                        row = timer(module, batch, a.heads, a.kv_heads, kv_len, page, a.rep_ms)()
                        rows.append({**row, "kernel": name, "vs_contiguous": row.get("us", float("nan")) / base["us"]})
                    if a.tma:
                        for tma in (True, False):
                            row = timer(after, batch, a.heads, a.kv_heads, kv_len, page, a.rep_ms)(tma=tma)
                            rows.append({**row, "kernel": f"after, {'tma' if tma else 'pointers'}",
                                         "vs_contiguous": row.get("us", float("nan")) / base["us"]})
                save()
                print(f"batch {batch} kv {kv_len}: {time.time() - start:.0f} s", flush=True)
        for study, page in ((study, page) for study in a.tiles for page in a.tile_pages):
            batches, kv_len, tiles = study.split(":")
            for batch in ints(batches):
                time_it = timer(after, batch, a.heads, a.kv_heads, int(kv_len), page, a.rep_ms)
                rows.append({**timer(before, batch, a.heads, a.kv_heads, int(kv_len), page, a.rep_ms)(),
                             "kernel": "plan before"})
                rows.append({**time_it(), "kernel": "plan after"})
                if a.tma:
                    rows.append({**time_it(tma=True), "kernel": "plan after, tma"})
                    rows.append({**time_it(tma=False), "kernel": "plan after, pointers"})
                if a.no_lengths:
                    rows.append({**time_it(lengths=False), "kernel": "plan after, no lengths"})
                if a.cudnn:
                    rows.append({**time_it(provider="sdpa-cudnn"), "kernel": "sdpa-cudnn"})
                for tile in tiles.split(","):
                    tiling = tuple(ints(tile.replace("/", ",")))
                    rows.append({**time_it(tiling), "kernel": f"tiles {tile}"})
                    if a.tma:
                        for tma in (True, False):
                            rows.append({**time_it(tiling, tma=tma),
                                         "kernel": f"tiles {tile}, {'tma' if tma else 'pointers'}"})
                save()
    frame = save()
    pd.set_option("display.width", 200)
    columns = ["batch", "kv_len", "page_size", "kernel", "us", "vs_contiguous", "config"]
    print(frame.reindex(columns=columns).to_string(index=False))  # a tile study alone has no paged rows
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
