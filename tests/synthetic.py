"""Results frames for tests of what reads runs (plots, report, compare), without running a kernel.

``results_frame`` builds a plausible H100 run in the tidy schema of ``fa2bench.run.results``: every provider
reaches a fixed fraction of the device peak that grows with sequence length, the spread (p20, p80) is a few
per cent around the median, naive runs out of memory at the longest sequence, flash-attn is not installed
(unsupported everywhere), and one point is ``wrong`` and one ``error``. ``committed_run`` is the run the
tests and the notebook read from disk, pinned by name.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from fa2bench.core.flops import attention_flops
from fa2bench.run.hardware import A100_PEAK_TFLOPS
from fa2bench.run.results import COLUMNS, RunWriter, write_meta

REPO = Path(__file__).resolve().parents[1]
H100 = "NVIDIA H100 80GB HBM3"
H100_PEAK = 989.4
PROVIDERS = ("naive", "fa1", "fa2", "sdpa-flash", "torch-eager", "flash-attn")
# Fraction of the device peak reached at the longest sequence, per provider and pass.
EFFICIENCY = {"naive": (0.04, 0.03), "fa1": (0.25, 0.18), "fa2": (0.38, 0.30), "sdpa-flash": (0.40, 0.33),
              "torch-eager": (0.09, 0.07), "fa2-other": (0.2, 0.15)}
WRONG = ("fa1", "bwd", 128, True, 1024)  # provider, mode, headdim, causal, seqlen
ERROR = ("fa2", "bwd", 64, False, 4096)


def results_frame(*, providers=PROVIDERS, seqlens=(512, 1024, 2048, 4096), headdims=(64, 128),
                  causal=(False, True), modes=("fwd", "bwd"), dtypes=("fp16",), tokens=16384, hidden=2048,
                  gpu: str | None = H100, spread=0.02, seed=0, ceilings: dict | None = None) -> pd.DataFrame:
    """A synthetic run (batch = tokens // seqlen, heads = hidden // headdim, like the paper's sweep);
    ``.attrs["meta"]`` looks like meta.json. ``gpu=None`` makes a CPU-interpreter run (no device peak)."""
    rng = np.random.default_rng(seed)
    peak = H100_PEAK if gpu else None
    rows = []
    for dtype in dtypes:
        for d in headdims:
            for n in seqlens:
                for c in causal:
                    for mode in modes:
                        for p in providers:
                            rows.append(_row(p, mode, dtype, tokens // n, hidden // d, n, d, c, peak, spread, rng,
                                             longest=max(seqlens)))
    frame = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = np.nan
    frame = frame[list(COLUMNS)]
    frame.attrs["meta"] = meta(gpu, dtypes, providers, seqlens, headdims, modes, ceilings)
    return frame


def _row(provider, mode, dtype, batch, heads, n, d, causal, peak, spread, rng, longest):
    row = {"provider": provider, "mode": mode, "dtype": dtype, "batch": batch, "heads": heads, "kv_heads": heads,
           "seqlen_q": n, "seqlen_k": n, "headdim": d, "causal": causal, "status": "ok", "error": "",
           "flops": attention_flops(batch, heads, n, n, d, causal, mode)}
    if provider == "flash-attn":
        return {**row, "status": "unsupported", "error": "the 'flash_attn' package is not installed"}
    if provider == "naive" and n == longest:
        return {**row, "status": "oom", "error": "CUDA out of memory. Tried to allocate 8.00 GiB"}
    if (provider, mode, d, causal, n) == ERROR:
        return {**row, "status": "error", "error": "RuntimeError: triton compilation failed | out of resources"}
    fwd_eff, bwd_eff = EFFICIENCY.get(provider, EFFICIENCY["fa2-other"])
    eff = (fwd_eff if mode == "fwd" else bwd_eff) * (0.55 + 0.45 * math.log2(n) / math.log2(longest))
    tflops = eff * (peak or 0.05)  # a CPU run reaches a few hundredths of a TFLOP/s
    ms = row["flops"] / (tflops * 1e12) * 1e3 * (1 + rng.uniform(-spread, spread) / 4)
    e = 4 if dtype == "fp32" else 2
    bh = batch * heads
    scores = {"naive": 2, "torch-eager": 3}.get(provider, 0) * e * bh * n * n  # S and P (eager: fp32 softmax too)
    mem = scores + (6 if provider == "fa1" else 4) * e * bh * n * d
    row.update(ms=ms, ms_p20=ms * (1 - spread), ms_p80=ms * (1 + spread), tflops=row["flops"] / (ms * 1e9),
               max_rel_error=1e-3, peak_mem_mb=mem / 2**20 if peak else np.nan,
               config="fwd: BLOCK_M=128 BLOCK_N=64 w8 s3" if provider in ("fa1", "fa2") else "")
    row["pct_a100_peak"] = 100 * row["tflops"] / A100_PEAK_TFLOPS
    row["pct_device_peak"] = 100 * row["tflops"] / peak if peak else np.nan
    if (provider, mode, d, causal, n) == WRONG:
        row.update(status="wrong", error="dq: max rel error 0.31 > tolerance 0.02", max_rel_error=0.31)
    return row


def meta(gpu, dtypes=("fp16",), providers=PROVIDERS, seqlens=(), headdims=(), modes=(), ceilings=None) -> dict:
    out = {
        "started_utc": "2025-01-01T00:00:00+00:00", "finished_utc": "2025-01-01T01:00:00+00:00", "complete": True,
        "argv": ["fa2bench", "sweep", "--preset", "paper"], "device": "cuda" if gpu else "cpu",
        "interpreter": gpu is None, "gpus": [{"index": 0, "name": gpu, "sms": 132}] if gpu else [],
        "versions": {"fa2bench": "0.1.0", "torch": "2.6.0", "triton": "3.2.0", "cuda": "12.4"},
        "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        "sweep": {"seqlens": list(seqlens), "headdims": list(headdims), "dtypes": list(dtypes),
                  "modes": list(modes), "providers": list(providers)},
        "peak": {"tflops_by_dtype": {d: (H100_PEAK if gpu else None) for d in dtypes},
                 "source": "NVIDIA H100 datasheet" if gpu else "no GPU: no device peak",
                 "matched": "H100 SXM5" if gpu else None, "a100_tflops": A100_PEAK_TFLOPS},
    }
    if ceilings:
        out["ceilings"] = ceilings
    return out


def write_run(frame: pd.DataFrame, run_dir: Path) -> Path:
    """Write ``frame`` as a run folder (results.csv, results.parquet, meta.json), as a sweep would."""
    writer = RunWriter(run_dir)
    for row in frame.to_dict("records"):
        writer.append(row)
    writer.finish()
    write_meta(run_dir, frame.attrs.get("meta", {}))
    return Path(run_dir)


# --- the run on disk that tests and the notebook read ----------------------------------------------------

COMMITTED_RUN = REPO / "results" / "h100-quick"  # pinned: committing another run changes nothing the tests see


def committed_run() -> Path:
    """A real run committed under results/ (the H100 quick sweep), pinned by name."""
    if not (COMMITTED_RUN / "meta.json").exists():
        raise FileNotFoundError(f"the pinned fixture run {COMMITTED_RUN} is missing")
    return COMMITTED_RUN


def copy_of_committed_run(dest: Path) -> Path:
    """A scratch copy of ``committed_run()`` (tests write figures and reports into it, never into results/)."""
    return Path(shutil.copytree(committed_run(), dest / "run",
                                ignore=shutil.ignore_patterns("figures", "report.md")))
