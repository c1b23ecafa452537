"""Peak memory of one call against sequence length: measured, and the algorithm's theoretical footprint."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fa2bench.core import iomodel
from fa2bench.core.presets import Shape
from fa2bench.read.plots.common import (NothingToPlot, label, color, ordered_providers, title, one_group, modes_of,
    panel_title, new_figure, log2_seqlen_axis, legend, provider_handles)




def memory(frame: pd.DataFrame, meta: dict | None = None) -> Figure:
    """Peak memory of one call against sequence length, log-log, one panel per (mode, head dim): measured
    (solid) and the algorithm's theoretical footprint (dashed, ``iomodel.theoretical_footprint_mb``); oom
    points are crosses above the dotted line. Non-causal points when the run has them (masking does not
    change what a call allocates), else causal ones."""
    frame = one_group(frame)
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    causal = not (~frame["causal"]).any()
    frame = frame[frame["causal"] == causal].copy()
    ok = frame[(frame["status"] == "ok") & (frame["peak_mem_mb"] > 0)]
    if ok.empty:
        raise NothingToPlot("no peak-memory measurements (peak_mem_mb is measured on CUDA only)")
    frame["model_mb"] = [_footprint_mb(r) for r in frame.itertuples()]
    names = ordered_providers(frame)
    modes = modes_of(frame)
    headdims = sorted(set(int(d) for d in frame["headdim"]))
    seqlens = sorted(frame["seqlen_q"].unique())
    modelled = frame.loc[frame["model_mb"] > 0, "model_mb"]
    lo = min(float(ok["peak_mem_mb"].min()), float(modelled.min()) if len(modelled) else math.inf)
    hi = max(float(ok["peak_mem_mb"].max()), float(modelled.max()) if len(modelled) else 0.0)
    oom_y = hi * 2.5
    fig, axes = new_figure(len(modes), len(headdims), 3.8, 3.0)
    for i, mode in enumerate(modes):
        for j, d in enumerate(headdims):
            ax = axes[i, j]
            panel = frame[(frame["mode"] == mode) & (frame["headdim"] == d)]
            for p in names:
                mine = panel[panel["provider"] == p]
                good = mine[(mine["status"] == "ok") & (mine["peak_mem_mb"] > 0)]
                line = good.groupby("seqlen_q")["peak_mem_mb"].max()
                if len(line):
                    ax.plot(line.index, line.values, marker="o", markersize=3.5, color=color(p), linewidth=1.4)
                model = mine[mine["model_mb"] > 0].groupby("seqlen_q")["model_mb"].max()
                if len(model):
                    ax.plot(model.index, model.values, color=color(p), linewidth=1.0, linestyle="--", alpha=0.8)
                oom = sorted(mine.loc[mine["status"] == "oom", "seqlen_q"].unique())
                if oom:
                    ax.scatter(oom, [oom_y] * len(oom), marker="x", s=40, color=color(p), linewidths=1.8, zorder=3)
            if (frame["status"] == "oom").any():
                ax.axhline(hi * 1.6, color="#999999", linewidth=0.7, linestyle=":")
            log2_seqlen_axis(ax, seqlens)
            ax.set_yscale("log")
            ax.set_ylim(lo / 2, oom_y * 1.8)
            ax.set_title(panel_title(mode, d, causal if causal else None), fontsize=9)
            ax.grid(alpha=0.3, which="major")
            if j == 0:
                ax.set_ylabel("peak memory of one call (MiB)")
            if i == len(modes) - 1:
                ax.set_xlabel("sequence length")
    drawn = [p for p in names if p in set(ok["provider"]) or
             ((frame["provider"] == p) & (frame["status"] == "oom")).any()]
    handles = provider_handles(drawn, "line")
    if (frame["model_mb"] > 0).any():
        handles.append(Line2D([], [], color="#444444", linestyle="--", linewidth=1.0,
                              label="theoretical footprint (model)"))
    if (frame["status"] == "oom").any():
        handles.append(Line2D([], [], color="#444444", marker="x", linestyle="none",
                              label="out of memory (above the dotted line)"))
    legend(fig, handles, ncol=min(len(handles), 4))
    fig.suptitle(title("Peak memory", frame, meta), fontsize=11)
    return fig



def _footprint_mb(row) -> float:
    """The modelled footprint of a results row (NaN for a provider the model does not cover)."""
    if not iomodel.modelled(row.provider):
        return np.nan
    return iomodel.theoretical_footprint_mb(row.provider, Shape.from_row(row), row.mode, row.dtype)
