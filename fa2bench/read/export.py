"""A run in exchange formats for other tools.

``github-benchmark``: the JSON list that benchmark-action/github-action-benchmark reads with its
``customSmallerIsBetter`` tool (``metric="ms"``, the median time) or ``customBiggerIsBetter`` (``metric="tflops"``):
one entry ``{"name", "unit", "value", "range", "extra"}`` per ok point, named by provider, mode, dtype and shape,
so that a CI job can chart each point's trend across commits. Points that did not run have no value and are
left out.
"""
from __future__ import annotations

import pandas as pd

from fa2bench.read import display
from fa2bench.core.presets import Shape

FORMATS = ("github-benchmark",)
METRICS = {"ms": ("ms", "customSmallerIsBetter"), "tflops": ("TFLOP/s", "customBiggerIsBetter")}


def point_name(row: dict) -> str:
    return f"{row['provider']} {row['mode']} {row['dtype']} {Shape.from_row(row).label()}"


def github_benchmark(frame: pd.DataFrame, metric: str = "ms") -> list[dict]:
    """One entry per ok point: ``value`` the median time (ms) or TFLOP/s, ``range`` the p20-p80 spread of the
    time, ``extra`` the other measure, the GPU and the commit."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    meta = frame.attrs.get("meta", {})
    gpus = meta.get("gpus") or []
    gpu = gpus[0].get("name") if gpus else "CPU (Triton interpreter)"
    commit = ((meta.get("git") or {}).get("commit") or "unknown")[:12]
    entries = []
    for row in frame[frame["status"] == "ok"].to_dict("records"):
        value = display.finite(row["ms"] if metric == "ms" else row["tflops"])
        if value is None:
            continue
        spread = f"{display.ms(row.get('ms_p20'))}-{display.ms(row.get('ms_p80'))} ms"
        other = (f"{display.num(row.get('tflops'))} TFLOP/s" if metric == "ms"
                 else f"{display.ms(row.get('ms'))} ms")
        entries.append({"name": point_name(row), "unit": METRICS[metric][0], "value": value,
                        "range": f"p20-p80 {spread}", "extra": f"{other}; {gpu}; commit {commit}"})
    return entries


def export(frame: pd.DataFrame, format: str = "github-benchmark", metric: str = "ms") -> list[dict]:
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    return github_benchmark(frame, metric)
