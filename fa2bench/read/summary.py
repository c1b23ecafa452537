"""Derived tables over a results frame: speedups and the headline table. Pure functions of the frame."""
from __future__ import annotations

import numpy as np
import pandas as pd

from fa2bench.core import providers
SHAPE_COLUMNS = ["mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim", "causal"]


def geomean(values) -> float:
    """Geometric mean of the positive values (NaN when there are none): how speedups are averaged."""
    values = np.asarray(values, dtype=float)
    values = values[values > 0]
    return float(np.exp(np.log(values).mean())) if len(values) else float("nan")


def noisy_note(frame: pd.DataFrame) -> str | None:
    """One line on the ok points a reader must not trust to the timing target (the ``noisy`` column,
    ``fa2bench.run.timing``), or None when there are none (or the run predates the column)."""
    if "noisy" not in frame or not len(frame):
        return None
    ok = frame[frame["status"] == "ok"]
    noisy = ok[ok["noisy"].astype(str).str.lower() == "true"]
    if not len(noisy):
        return None
    widest = pd.to_numeric(noisy["spread"], errors="coerce").max() if "spread" in noisy else np.nan
    return (f"{len(noisy)} of {len(ok)} ok points are noisy: their spread (p80 - p20) / median stayed above the "
            f"target until the time cap{f' (up to {100 * widest:.0f}%)' if widest == widest else ''}, or too few "
            "samples were timed; the noisy column marks them")


def speedup(frame: pd.DataFrame, over: str) -> pd.DataFrame:
    """Per point: how many times faster each provider is than ``over`` on the same shape, mode and dtype
    (both ``ok``). Columns: the shape columns, provider, speedup."""
    ok = frame[frame["status"] == "ok"]
    base = ok[ok["provider"] == over][SHAPE_COLUMNS + ["ms"]].rename(columns={"ms": "base_ms"})
    joined = ok[ok["provider"] != over].merge(base, on=SHAPE_COLUMNS)
    joined["speedup"] = joined["base_ms"] / joined["ms"]
    return joined[SHAPE_COLUMNS + ["provider", "speedup"]]


def headline(frame: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """One row per (provider, mode, dtype): points ok of points run, best TFLOP/s with its % of the A100 and
    device peaks, and the geometric-mean speedup over ``baseline`` (default: the registry's speedup baseline,
    naive) on shared ok points."""
    baseline = baseline or providers.with_role("speedup-baseline")
    rows = []
    speed = speedup(frame, baseline) if (frame["provider"] == baseline).any() else None
    for (provider, mode, dtype), group in frame.groupby(["provider", "mode", "dtype"], sort=False):
        ok = group[group["status"] == "ok"]
        best = ok.loc[ok["tflops"].idxmax()] if len(ok) else None
        row = {"provider": provider, "mode": mode, "dtype": dtype, "ok": len(ok), "points": len(group),
               "best_tflops": best["tflops"] if best is not None else np.nan,
               "pct_a100_peak": best["pct_a100_peak"] if best is not None else np.nan,
               "pct_device_peak": best["pct_device_peak"] if best is not None else np.nan,
               f"speedup_vs_{baseline}": np.nan}
        if speed is not None:
            mine = speed[(speed["provider"] == provider) & (speed["mode"] == mode) & (speed["dtype"] == dtype)]
            if len(mine):
                row[f"speedup_vs_{baseline}"] = geomean(mine["speedup"])
        rows.append(row)
    return pd.DataFrame(rows)


def ratio_table(frame: pd.DataFrame, provider: str, over: str, seqlens=None) -> pd.DataFrame:
    """``provider``'s speed relative to ``over`` (time of ``over`` / time of ``provider``, so >1 is faster) per
    (mode, causal, headdim, dtype), summarised over the sequence lengths ``seqlens`` (default: all) of the
    points where both ran ok: median, min, max and the number of points. Like for like: same shape, mode, dtype."""
    speed = speedup(frame, over)
    speed = speed[speed["provider"] == provider]
    if seqlens is not None:
        speed = speed[speed["seqlen_q"].isin(list(seqlens))]
    keys = ["mode", "causal", "headdim", "dtype"]
    out = speed.groupby(keys)["speedup"].agg(["median", "min", "max", "count"]).reset_index()
    return out.rename(columns={"count": "points"})
