"""kernels/decode.py's two ways of merging split-KV partials, in one process: in the same launch, by the last
split of each tile to arrive (``merge="last"``, the default), against a second launch (``merge="kernel"``,
``_combine_kernel``). One CSV row per (shape, page size, merge), graph timer, L2 cold, on the decode preset's
shapes that split (batch x KV heads below the SM count).

    python tools/decode_merge_ab.py --out results/<name> [--batch 1,4] [--heads 32,64] [--kv 1024,4096,16384]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from decode_paged_ab import DEVICE, ints, timer

MERGES = ("kernel", "last")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=ints, default=[1, 4])
    ap.add_argument("--heads", type=ints, default=[32, 64])
    ap.add_argument("--kv", type=ints, default=[1024, 4096, 16384])
    ap.add_argument("--pages", type=ints, default=[0, 64])
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--rep-ms", type=float, default=50.0)
    a = ap.parse_args(argv)
    from fa2bench.kernels import decode
    from fa2bench.run.results import write_meta
    from fa2bench.run.runner import environment_meta

    a.out.mkdir(parents=True, exist_ok=True)
    write_meta(a.out, {**environment_meta(DEVICE), "study": "decode split merge: same launch against a second one",
                       "args": {k: str(v) for k, v in vars(a).items()}})
    rows, start = [], time.time()
    for batch in a.batch:
        for heads in a.heads:
            for kv_len in a.kv:
                for page in a.pages:
                    time_it = timer(decode, batch, heads, a.kv_heads, kv_len, page, a.rep_ms)
                    for merge in MERGES:
                        rows.append({**time_it(merge=merge), "merge": merge})
                pd.DataFrame(rows).to_csv(a.out / "decode_merge_ab.csv", index=False)
        print(f"batch {batch}: {time.time() - start:.0f} s", flush=True)
    frame = pd.DataFrame(rows)
    table = frame.pivot_table(index=["batch", "heads", "kv_len", "page_size"], columns="merge", values="us")
    pd.set_option("display.width", 200)
    print(table.assign(last_over_kernel=table["last"] / table["kernel"]).round(3).to_string())
    print(f"{time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
