"""What fa3's one-process A/B studies share (``fa3_band_ab.py``, ``fa3_consumers_ab.py``): their command line, the
paper's shapes (16k tokens per batch, hidden 2048) with fresh inputs, meta.json, and one timed row per variant
(the suite's timer, L2 flushed before each call, TFLOP/s from the suite's FLOP count)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parser(doc: str, headdim: list[int]) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seqlen", type=ints, default=[2048, 4096, 8192, 16384])
    ap.add_argument("--headdim", type=ints, default=headdim)
    ap.add_argument("--dtype", default="fp16,bf16")
    ap.add_argument("--rep-ms", type=float, default=50.0)
    return ap


def paper_inputs(a: argparse.Namespace, study: str):
    """meta.json into ``a.out``, then (dtype name, head dim, seqlen, batch, heads, q, k, v) for each of the
    study's shapes, fresh random inputs each."""
    import torch

    from fa2bench.core import precision
    from fa2bench.core.presets import paper_shape
    from fa2bench.run.results import write_meta
    from fa2bench.run.runner import environment_meta

    a.out.mkdir(parents=True, exist_ok=True)
    write_meta(a.out, {**environment_meta("cuda"), "study": study, "args": {k: str(v) for k, v in vars(a).items()}})
    for dtype_name in a.dtype.split(","):
        dtype = precision.torch_dtype(dtype_name)
        for headdim in a.headdim:
            for seqlen in a.seqlen:
                batch, heads = paper_shape(headdim, seqlen)[:2]
                q, k, v = (torch.randn(batch, heads, seqlen, headdim, device="cuda", dtype=dtype) for _ in range(3))
                yield dtype_name, headdim, seqlen, batch, heads, q, k, v


class Rows(list):
    """The study's rows, each printed as it is timed and the CSV rewritten after every shape."""

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.start = path, time.time()

    def time(self, run, flops: float, rep_ms: float, config: str | None = None, timer: str = "plain",
             rotate=None, input_bytes: int = 0, **labels) -> None:
        """Time ``run`` and add its row; ``config`` defaults to fa3's latest launch (``fa3.last_config``).
        ``timer``, ``rotate`` and ``input_bytes`` as ``fa2bench.run.timing.bench`` takes them (the plain timer by
        default; the graph timer keeps L2 cold only through ``rotate``)."""
        from fa2bench.core.flops import tflops
        from fa2bench.kernels import fa3
        from fa2bench.run.timing import bench

        run()
        t = bench(run, timer=timer, rotate=rotate, input_bytes=input_bytes, rep_ms=rep_ms)
        self.append(dict(**labels, config=config or fa3.last_config(), timer=t.timer, ms=t.ms, spread=t.spread,
                         noisy=t.noisy, tflops=tflops(flops, t.ms)))
        print(self[-1], f"{time.time() - self.start:.0f} s", flush=True)

    def save(self):
        import pandas as pd

        frame = pd.DataFrame(self)
        frame.to_csv(self.path, index=False)
        return frame
