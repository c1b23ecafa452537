"""Figures of a run, from its results frame alone (``results.load_run``): no runner, no kernel.

Five kinds, each answering one question:

- ``throughput``: how fast? The FlashAttention-2 paper's Figures 4-6: one panel per (mode, head dim,
  causal), sequence length on x, grouped bars per provider, TFLOP/s on y with the value on each bar, lines at
  the A100 peak and this GPU's peak. Points that did not run (oom, unsupported, error, wrong) are labelled
  at their slot, never drawn as zero.
- ``speedup``: compared with what? FlashAttention-2 (Triton) over every other provider, by sequence length.
- ``fraction_of_peak``: how close to the limit? % of this GPU's peak, provider x sequence length.
- ``memory``: peak memory of one call against sequence length on log axes, oom points marked.
- ``roofline``: arithmetic intensity (FLOPs / modelled HBM bytes, ``iomodel.hbm_bytes``) against TFLOP/s,
  under this GPU's compute and bandwidth ceilings (measured ones from meta.json when the sweep took them,
  else datasheet numbers; the legend names the source).
- ``decode_bandwidth``, ``decode_latency``: how close to the memory limit does decoding get, and how long does a
  call take? Decode rows only (``decode``).

Labels and colours come from ``providers.REGISTRY``. A run with several dtypes (or several workloads at one
(mode, head dim, causal, seqlen), e.g. ``--batch 1,8``) is drawn once per group: ``split(frame)``; the files
are then suffixed with the group (``throughput-bf16.png``).

One module per figure family (``bars``: throughput, speedup, fraction of peak; ``memory``; ``roofline``;
``iostudy``; ``decode``) over ``common`` (what every figure shares); this module draws them all (``plot_run``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from fa2bench.core.flops import DECODE
from fa2bench.read.plots.bars import fraction_of_peak, speedup, speedups, throughput
from fa2bench.read.plots.common import (DPI, FORMATS, MARKS, MODE_TITLES, Ceilings, NothingToPlot, a100_peak,
                                        ceilings, color, describe_workload, device_peak, gpu_name, label, modes_of,
                                        ordered_providers, seqlen_label, split, tidy)
from fa2bench.read.plots.decode import decode_bandwidth, decode_latency
from fa2bench.read.plots.iostudy import io_study, save_io_study
from fa2bench.read.plots.memory import memory
from fa2bench.read.plots.roofline import intensity, measured_intensity, roofline

__all__ = ["DPI", "FIGURES", "FIGURE_TITLES", "FORMATS", "MARKS", "MODE_TITLES", "PER_MODE", "Ceilings",
           "NothingToPlot", "Plotted", "a100_peak", "ceilings", "color", "decode_bandwidth", "decode_latency",
           "describe_workload", "device_peak",
           "fraction_of_peak", "gpu_name", "intensity", "io_study", "label", "memory", "modes_of",
           "measured_intensity", "ordered_providers", "parse_formats", "plot_run", "roofline", "save_io_study",
           "seqlen_label", "speedup", "speedups", "split", "throughput", "tidy"]


FIGURES: dict[str, Callable[..., Figure]] = {
    "throughput": throughput, "speedup": speedup, "fraction_of_peak": fraction_of_peak, "memory": memory,
    "roofline": roofline, "decode_bandwidth": decode_bandwidth, "decode_latency": decode_latency,
}
WHOLE_RUN = ("decode_bandwidth", "decode_latency")  # drawn once per dtype over the decode rows, not per workload group
PER_MODE = ("throughput", "fraction_of_peak")  # one file per mode: <kind>-<mode>[-<group>].<format>
FIGURE_TITLES = {"throughput": "Throughput", "speedup": "Speedup of FlashAttention-2",
                 "fraction_of_peak": "Fraction of peak", "memory": "Peak memory", "roofline": "Roofline",
                 "decode_bandwidth": "Decode bandwidth utilisation", "decode_latency": "Decode latency"}


@dataclass
class Plotted:
    """What ``plot_run`` wrote: files per figure kind, and why a kind (or a group of it) was not drawn."""
    files: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"--format: unknown {bad[0]!r}" if bad else "--format: nothing given"
                         f"; choose from {', '.join(FORMATS)}")
    return formats


def plot_run(frame: pd.DataFrame, out_dir: str | Path, formats=("png",), kinds=tuple(FIGURES)) -> Plotted:
    """Draw every figure kind for every group of the run into ``out_dir`` as ``<kind>[-<group>].<format>``
    (throughput and fraction of peak: one file per mode, ``<kind>-<mode>[-<group>].<format>``).

    A kind without data is recorded in ``skipped`` with the reason; no figure kind stops the others. An e2e run
    (``fa2bench e2e``) has its own figure (``e2e.figures.plot_run``; ``api.plot_run`` picks)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = Plotted()
    meta = frame.attrs.get("meta", {})
    decoding = frame[frame["mode"] == DECODE] if len(frame) else frame
    training = frame[frame["mode"] != DECODE] if len(frame) else frame
    training.attrs = decoding.attrs = dict(frame.attrs)
    groups = split(training) if len(training) else {}
    for kind in [k for k in kinds if k in WHOLE_RUN]:
        if decoding.empty:  # drawn only for runs with decode rows: a training run's report does not mention it
            if not len(frame):
                result.skipped[kind] = "the run has no rows"
            continue
        for dtype, rows in decoding.groupby("dtype", sort=False):
            rows.attrs = dict(frame.attrs)
            try:
                fig = FIGURES[kind](rows, meta)
            except NothingToPlot as exc:
                result.skipped[kind] = str(exc)
                continue
            for fmt in formats:
                path = out_dir / f"{kind}-{dtype}.{fmt}"
                fig.savefig(path, format=fmt, bbox_inches="tight")
                result.files.setdefault(kind, []).append(path)
    kinds = [k for k in kinds if k not in WHOLE_RUN]
    if not groups:
        why = "the run has only decode rows" if len(frame) else "the run has no rows"
        result.skipped.update({kind: why for kind in kinds})
        return result
    for kind in kinds:
        reasons = []
        for name, group in groups.items():
            for mode in modes_of(group) if kind in PER_MODE else [None]:
                where = "-".join(filter(None, [mode, name]))
                try:
                    fig = FIGURES[kind](group, meta, mode=mode) if mode else FIGURES[kind](group, meta)
                except NothingToPlot as exc:
                    reasons.append(f"{where}: {exc}" if where else str(exc))
                    continue
                stem = f"{kind}-{where}" if where else kind
                for fmt in formats:
                    path = out_dir / f"{stem}.{fmt}"
                    fig.savefig(path, format=fmt, bbox_inches="tight")
                    result.files.setdefault(kind, []).append(path)
        if reasons:
            result.skipped[kind] = "; ".join(reasons)
    return result
