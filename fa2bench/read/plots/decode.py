"""How close to the memory limit does decoding get, and how long does a step take? Decode rows only (drawn for runs
that have them; the other figure kinds leave decode rows out), against KV length, a panel per (heads, page size),
a line per (provider, batch): ``decode_bandwidth``, % of the run's measured copy bandwidth (``pct_copy_bw``;
achieved GB/s when no ceiling was measured), and ``decode_latency``, microseconds per call (``us``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from fa2bench.core.flops import DECODE
from fa2bench.read.plots.common import (NothingToPlot, color, legend, new_figure, ordered_providers,
                                        provider_handles, seqlen_label, tidy, title)

_BATCH_MARKERS = "os^Dv<>ph*"
_Y_LABELS = {"pct_copy_bw": "% of measured copy bandwidth", "gbps": "GB/s (compulsory bytes)",
             "us": "microseconds per call"}


def decode_bandwidth(frame: pd.DataFrame, meta: dict | None = None) -> Figure:
    """% of the measured copy bandwidth (or GB/s) of decode points against KV length; see the module docstring."""
    return _decode_figure(frame, meta, latency=False)


def decode_latency(frame: pd.DataFrame, meta: dict | None = None) -> Figure:
    """Microseconds per decode call against KV length (log-log); see the module docstring."""
    return _decode_figure(frame, meta, latency=True)


def _decode_figure(frame: pd.DataFrame, meta: dict | None, latency: bool) -> Figure:
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    rows = tidy(frame)
    rows = rows[(rows["mode"] == DECODE) & (rows["status"] == "ok")].copy()
    if rows.empty:
        raise NothingToPlot("no decode point ran")
    for col, default in (("page_size", 0), ("ragged", False), ("pct_copy_bw", np.nan), ("gbps", np.nan)):
        rows[col] = rows[col] if col in rows else default
    rows["page_size"] = pd.to_numeric(rows["page_size"], errors="coerce").fillna(0).astype(int)
    metric = "pct_copy_bw" if pd.to_numeric(rows["pct_copy_bw"], errors="coerce").notna().any() else "gbps"
    metric = "us" if latency else metric
    rows[metric] = pd.to_numeric(rows[metric], errors="coerce")
    heads = sorted({(h, kv) for h, kv in zip(rows["heads"], rows["kv_heads"])})
    pages = sorted(set(rows["page_size"]))
    fig, axes = new_figure(len(pages), len(heads), 5.0, 3.6)
    batches = sorted(set(rows["batch"]))
    for i, page in enumerate(pages):
        for j, (h, kv) in enumerate(heads):
            ax = axes[i][j]
            panel = rows[(rows["page_size"] == page) & (rows["heads"] == h) & (rows["kv_heads"] == kv)]
            for (name, batch, ragged, _), line in panel.groupby(["provider", "batch", "ragged", "seqlen_q"]):
                line = line.sort_values("seqlen_k")
                ax.plot(line["seqlen_k"], line[metric], color=color(name), linestyle="--" if ragged else "-",
                        marker=_BATCH_MARKERS[batches.index(batch) % len(_BATCH_MARKERS)], markersize=4)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: seqlen_label(int(x))))
            ax.set_title(f"h{h}/kv{kv}, {f'pages of {page}' if page else 'contiguous'}", fontsize=9)
            ax.set_xlabel("KV length")
            ax.set_ylabel(_Y_LABELS[metric])
            if latency:
                ax.set_yscale("log")
            if metric == "pct_copy_bw":
                ax.axhline(100, color="#444444", linewidth=0.8, linestyle=":")
            ax.grid(True, alpha=0.3)
    handles = provider_handles(ordered_providers(rows), kind="line")
    handles += [Line2D([], [], color="#444444", marker=_BATCH_MARKERS[k % len(_BATCH_MARKERS)], linestyle="none",
                       label=f"batch {b}") for k, b in enumerate(batches)]
    if rows["ragged"].astype(bool).any():
        handles.append(Line2D([], [], color="#444444", linestyle="--", label="ragged lengths"))
    legend(fig, handles)
    fig.suptitle(title("Decode latency" if latency else "Decode bandwidth utilisation", rows, meta), fontsize=11)
    return fig
