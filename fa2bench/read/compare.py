"""Two runs side by side: per-point time ratios and the regressions among them (a CI or nightly gate).

Runs are joined on the point key (provider, mode, dtype, batch, heads, kv_heads, seqlen_q, seqlen_k, headdim,
causal). For a point ok in both, ``ratio = ms_B / ms_A`` (medians). The verdict:

- ``regression``: B is slower by more than the threshold (``ratio - 1 > threshold``) AND by more than the
  noise: the spreads do not overlap, B's 20th percentile above A's 80th (the middle 60% of B's timings all
  lie above the middle 60% of A's). Without a recorded spread in either run the threshold alone decides.
- ``faster``: the mirror image (``1 / ratio - 1 > threshold`` and A's p20 above B's p80).
- ``noise``: beyond the threshold but within the spreads, or timings that cannot be trusted: a spread wider
  than ``MAX_SPREAD`` of the median in either run ((p80 - p20) / median: the machine was too noisy to resolve
  the change), or a run through the CPU interpreter (its timings are not GPU performance and swing by 100x
  with what else the machine runs); ``same``: within the threshold.
- ``broken``: ok in A, ``wrong``/``error``/``oom`` in B (counted as a regression); ``fixed``: the reverse;
  ``not ok``: ok in neither (or unsupported in one: another environment, not a regression).

Runs from different GPUs, software versions or devices compare with warnings (``Comparison.warnings``). A point
timed with another timer in B than in A (plain against graph: ``Comparison.retimed``) compares the timers as well
as the code: a plain timer that times the host reads slower than the graph over the same kernels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fa2bench.core.presets import KEY_COLUMNS, KEY_DEFAULTS

REGRESSIONS = ("regression", "broken")
MAX_SPREAD = 0.25  # a run whose (p80 - p20) / median is wider than this cannot gate a change
VERDICT_ORDER = ("broken", "regression", "noise", "faster", "fixed", "same", "not ok")
_BROKEN = ("wrong", "error", "oom", "timeout")
_VERSIONS = ("torch", "triton", "cuda", "cudnn", "flash_attn")


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per shared point: keys, A and B timings and statuses, ratio, verdict
    warnings: list[str] = field(default_factory=list)
    only_a: int = 0  # points in A only
    only_b: int = 0
    threshold: float = 0.05

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["verdict"].isin(REGRESSIONS)]

    @property
    def retimed(self) -> pd.DataFrame:
        """Points ok in both runs but timed with different timers (runs that record the timer)."""
        return self.table[self.table["retimed"]]

    @property
    def counts(self) -> dict[str, int]:
        counts = self.table["verdict"].value_counts()
        return {v: int(counts[v]) for v in VERDICT_ORDER if v in counts}


def _points(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per point key (a resumed run may hold a point twice: the later row wins)."""
    keep = list(KEY_COLUMNS) + ["status", "error", "ms", "ms_p20", "ms_p80", "timer"]
    out = frame[[c for c in keep if c in frame]].copy()
    if "timer" not in out:  # a run from before the timer column
        out["timer"] = ""
    for col in ("provider", "mode", "dtype", "status", "timer"):
        out[col] = out[col].astype(object).where(out[col].notna(), "").astype(str)
    for col in ("ms", "ms_p20", "ms_p80"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    for col in ("batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("int64")
    out["causal"] = out["causal"].astype(bool)
    for col, default in KEY_DEFAULTS.items():  # frames from before decode points: the defaults
        out[col] = [default if pd.isna(v) else v for v in out[col]] if col in out else default
    out["page_size"] = out["page_size"].astype("int64")
    out["ragged"] = out["ragged"].astype(bool)
    return out.drop_duplicates(list(KEY_COLUMNS), keep="last")


def verdict(row, threshold: float, trusted: bool = True, max_spread: float = MAX_SPREAD) -> str:
    """The verdict of one joined row (see the module docstring); ``trusted=False``: timings never gate."""
    a, b = row["status_a"], row["status_b"]
    if a == "ok" and b == "ok":
        ratio = row["ratio"]
        if not np.isfinite(ratio):
            return "not ok"
        no_spread = any(not np.isfinite(row[c]) for c in ("ms_p20_a", "ms_p80_a", "ms_p20_b", "ms_p80_b"))
        wide = not no_spread and max((row["ms_p80_a"] - row["ms_p20_a"]) / row["ms_a"],
                                     (row["ms_p80_b"] - row["ms_p20_b"]) / row["ms_b"]) > max_spread
        if ratio - 1 > threshold:
            clear = no_spread or row["ms_p20_b"] > row["ms_p80_a"]
            return "regression" if clear and trusted and not wide else "noise"
        if 1 / ratio - 1 > threshold:
            clear = no_spread or row["ms_p20_a"] > row["ms_p80_b"]
            return "faster" if clear and trusted and not wide else "noise"
        return "same"
    if a == "ok" and b in _BROKEN:
        return "broken"
    if b == "ok" and a in _BROKEN:
        return "fixed"
    return "not ok"


def compare(a: pd.DataFrame, b: pd.DataFrame, threshold: float = 0.05) -> Comparison:
    """Join runs ``a`` (the baseline) and ``b`` (the candidate) on the point key; see the module docstring."""
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    pa, pb = _points(a), _points(b)
    keys = list(KEY_COLUMNS)
    table = pa.merge(pb, on=keys, how="inner", suffixes=("_a", "_b"))
    table["ratio"] = table["ms_b"] / table["ms_a"]
    ok = (table["status_a"] == "ok") & (table["status_b"] == "ok")
    known = (table["timer_a"] != "") & (table["timer_b"] != "")
    table["retimed"] = ok & known & (table["timer_a"] != table["timer_b"])
    trusted = not (interpreted(a.attrs.get("meta", {})) or interpreted(b.attrs.get("meta", {})))
    table["verdict"] = [verdict(r, threshold, trusted) for r in table.to_dict("records")] if len(table) else []
    table["_order"] = table["verdict"].map({v: i for i, v in enumerate(VERDICT_ORDER)})
    table = table.sort_values(["_order", "ratio"], ascending=[True, False], kind="stable").drop(columns="_order")
    joined = table[keys].apply(tuple, axis=1) if len(table) else pd.Series([], dtype=object)
    only_a = len(pa) - len(joined)
    only_b = len(pb) - len(joined)
    return Comparison(table.reset_index(drop=True), environment_warnings(a.attrs.get("meta", {}),
                                                                         b.attrs.get("meta", {})),
                      only_a, only_b, threshold)


def interpreted(meta: dict) -> bool:
    """Whether a run went through Triton's CPU interpreter (its timings are not GPU performance)."""
    return bool(meta.get("interpreter")) or meta.get("device") == "cpu"


def _gpu(meta: dict) -> str:
    gpus = meta.get("gpus") or []
    if gpus and gpus[0].get("name"):
        return gpus[0]["name"]
    return "CPU (Triton interpreter)" if meta.get("device") == "cpu" or meta.get("interpreter") else "unknown"


def environment_warnings(meta_a: dict, meta_b: dict) -> list[str]:
    """Why the two runs may not be comparable: GPU, device, software versions, modified trees."""
    out = []
    if not meta_a or not meta_b:
        out.append("a run has no meta.json: its GPU and versions are unknown")
        return out
    gpu_a, gpu_b = _gpu(meta_a), _gpu(meta_b)
    if gpu_a != gpu_b:
        out.append(f"different GPUs: A ran on {gpu_a}, B on {gpu_b}; ratios compare machines, not code")
    elif "CPU" in gpu_a:
        out.append("CPU-interpreter runs: their timings are not GPU performance (slowdowns are reported as "
                   "noise, never as regressions)")
    va, vb = meta_a.get("versions") or {}, meta_b.get("versions") or {}
    changed = [f"{k} {va.get(k)} -> {vb.get(k)}" for k in _VERSIONS if va.get(k) != vb.get(k)
               and (va.get(k) or vb.get(k))]
    if changed:
        out.append("different versions: " + ", ".join(changed))
    for name, meta in (("A", meta_a), ("B", meta_b)):
        if (meta.get("git") or {}).get("dirty"):
            out.append(f"run {name} was made from a tree with uncommitted changes")
        if meta.get("complete") is False:
            out.append(f"run {name} was interrupted (a partial run)")
    return out
