"""How fast, and compared with what: throughput bars (the FlashAttention-2 paper's Figures 4-6), the speedup of
FlashAttention-2 over every other provider, and the fraction-of-peak heatmaps."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from fa2bench.core import providers
from fa2bench.read import display
from fa2bench.read.summary import speedup as speedup_table
from fa2bench.read.plots.common import (MODE_TITLES, MARKS, MARK_KEY, NothingToPlot, gpu_name, device_peak, a100_peak,
    label, color, ordered_providers, seqlen_label, title, tidy, one_group, grid, one_mode, causal_by_headdim,
    panel_title, new_figure, log2_seqlen_axis, legend, provider_handles, note_handle)




def throughput(frame: pd.DataFrame, meta: dict | None = None, mode: str | None = None) -> Figure:
    """Paper-style grouped bars for one mode (default: the run's first): TFLOP/s per provider and sequence
    length, one panel per (causal, head dim), lines at the A100 peak and this GPU's peak."""
    frame = one_group(frame)
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    frame, mode = one_mode(frame, mode)
    names = ordered_providers(frame)
    rows, cols = causal_by_headdim(frame)
    seqlens = sorted(frame["seqlen_q"].unique())
    ok = frame[frame["status"] == "ok"]
    top_bar = float(ok["tflops"].max()) if ok["tflops"].notna().any() else 0.0
    dtype = frame["dtype"].iloc[0]
    peaks = [(a100_peak(meta), "A100 peak", "#555555", ":")]
    dev = device_peak(meta, dtype)
    if dev:
        matched = (meta.get("peak") or {}).get("matched") or gpu_name(meta)
        peaks.append((dev, f"{matched} peak", "#000000", "--"))
    shown = [p for p in peaks if top_bar > 0 and p[0] <= 4 * top_bar]  # a CPU run's bars would vanish
    off_scale = [p for p in peaks if p not in shown]
    ymax = max([top_bar] + [p[0] for p in shown]) * 1.15 or 1.0

    width = 0.84 / max(len(names), 1)
    fig, axes = new_figure(len(rows), len(cols), max(3.6, 0.11 * len(names) * len(seqlens) + 1.0), 3.0)
    for i, causal in enumerate(rows):
        for j, d in enumerate(cols):
            ax = axes[i, j]
            panel = frame[(frame["headdim"] == d) & (frame["causal"] == causal)]
            for k, p in enumerate(names):
                mine = panel[panel["provider"] == p].drop_duplicates("seqlen_q", keep="last").set_index("seqlen_q")
                for x, n in enumerate(seqlens):
                    if n not in mine.index:
                        continue
                    row = mine.loc[n]
                    pos = x - 0.42 + width * (k + 0.5)
                    if row["status"] == "ok" and math.isfinite(row["tflops"]):
                        ax.bar(pos, row["tflops"], width, color=color(p), edgecolor="white", linewidth=0.3)
                        ax.text(pos, row["tflops"] + ymax * 0.01, display.bar_value(row["tflops"]), rotation=90,
                                ha="center", va="bottom", fontsize=6)
                    else:
                        ax.text(pos, ymax * 0.015, MARKS.get(row["status"], row["status"] or "?"), rotation=90,
                                ha="center", va="bottom", fontsize=6, color=color(p), fontweight="bold")
            for value, _, c, style in shown:
                ax.axhline(value, color=c, linestyle=style, linewidth=1)
            ax.set_ylim(0, ymax)
            ax.set_xticks(range(len(seqlens)), [seqlen_label(n) for n in seqlens])
            ax.set_xlim(-0.5, len(seqlens) - 0.5)
            ax.set_title(panel_title(None, d, causal), fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            if j == 0:
                ax.set_ylabel("TFLOP/s")
            if i == len(rows) - 1:
                ax.set_xlabel("sequence length")
    handles = provider_handles(names)
    handles += [Line2D([], [], color=c, linestyle=s, label=f"{n} {v:.0f} TFLOP/s") for v, n, c, s in shown]
    handles += [note_handle(f"{n} {v:.0f} TFLOP/s (off scale)") for v, n, _, _ in off_scale]
    if (frame["status"] != "ok").any():
        handles.append(note_handle(MARK_KEY))
    legend(fig, handles, ncol=min(len(handles), 4))
    fig.suptitle(title(f"Attention {MODE_TITLES.get(mode, mode)} throughput", frame, meta), fontsize=11)
    return fig


# --- speedup --------------------------------------------------------------------------------------------


def speedups(frame: pd.DataFrame, subject: str | None = None) -> pd.DataFrame:
    """How many times faster ``subject`` (default: the registry's subject, fa2) is than each other provider,
    per point where both are ok. Columns: the shape columns, baseline, speedup."""
    frame = tidy(frame)
    subject = subject or providers.with_role("subject")
    parts = []
    for other in ordered_providers(frame):
        if other == subject:
            continue
        table = speedup_table(frame, over=other)
        table = table[table["provider"] == subject].drop(columns="provider").assign(baseline=other)
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["baseline", "speedup"])


def speedup(frame: pd.DataFrame, meta: dict | None = None, subject: str | None = None) -> Figure:
    """``subject`` (default: the registry's subject, fa2) over every other provider, by sequence length; one
    panel per (mode, d, causal)."""
    frame = one_group(frame)
    subject = subject or providers.with_role("subject")
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    if not ((frame["provider"] == subject) & (frame["status"] == "ok")).any():
        raise NothingToPlot(f"{subject} has no ok points")
    table = speedups(frame, subject)
    if table.empty:
        raise NothingToPlot(f"no other provider is ok where {subject} is")
    modes, cols = grid(frame)
    seqlens = sorted(frame["seqlen_q"].unique())
    baselines = [p for p in ordered_providers(frame) if p in set(table["baseline"])]
    lo, hi = float(table["speedup"].min()), float(table["speedup"].max())
    fig, axes = new_figure(len(modes), len(cols), 3.6, 3.0)
    for i, mode in enumerate(modes):
        for j, (d, causal) in enumerate(cols):
            ax = axes[i, j]
            panel = table[(table["mode"] == mode) & (table["headdim"] == d) & (table["causal"] == causal)]
            for b in baselines:
                line = panel[panel["baseline"] == b].groupby("seqlen_q")["speedup"].mean()
                if len(line):
                    ax.plot(line.index, line.values, marker="o", markersize=3.5, color=color(b), linewidth=1.4)
            ax.axhline(1.0, color="black", linewidth=0.8)
            log2_seqlen_axis(ax, seqlens)
            ax.set_yscale("log", base=2)
            ax.set_ylim(min(lo, 1.0) / 1.3, max(hi, 1.0) * 1.3)
            ax.yaxis.set_major_locator(LogLocator(base=2))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: display.ratio_label(v)))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(panel_title(mode, d, causal), fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(f"speedup of {subject}")
            if i == len(modes) - 1:
                ax.set_xlabel("sequence length")
    handles = [Line2D([], [], color=color(b), marker="o", label=f"vs {label(b)}") for b in baselines]
    legend(fig, handles)
    fig.suptitle(title(f"Speedup of {label(subject)} (above 1×: {subject} is faster)", frame, meta), fontsize=11)
    return fig


# --- fraction of peak -----------------------------------------------------------------------------------


def fraction_of_peak(frame: pd.DataFrame, meta: dict | None = None, mode: str | None = None) -> Figure:
    """Heatmaps of % of peak, provider x sequence length, for one mode (default: the run's first), one panel
    per (causal, head dim); the device's peak when known, else the A100's (the colour bar says which)."""
    frame = one_group(frame)
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    frame, mode = one_mode(frame, mode)
    ok = frame[frame["status"] == "ok"]
    column, which = "pct_device_peak", f"% of {gpu_name(meta)} peak"
    if not ok[column].notna().any():
        column, which = "pct_a100_peak", "% of A100 peak (this device's peak is unknown)"
    if not ok[column].notna().any():
        raise NothingToPlot("no ok points with a TFLOP/s figure")
    names = ordered_providers(frame)
    rows, cols = causal_by_headdim(frame)
    seqlens = sorted(frame["seqlen_q"].unique())
    vmax = float(ok[column].max())
    vmax = 100.0 if vmax > 50 else vmax if vmax > 0 else 1.0
    fig, axes = new_figure(len(rows), len(cols), 0.55 * len(seqlens) + 2.2, 0.26 * len(names) + 1.0)
    image = None
    for i, causal in enumerate(rows):
        for j, d in enumerate(cols):
            ax = axes[i, j]
            panel = frame[(frame["headdim"] == d) & (frame["causal"] == causal)]
            values = np.full((len(names), len(seqlens)), np.nan)
            for r in panel.itertuples():
                y, x = names.index(r.provider), seqlens.index(r.seqlen_q)
                value = getattr(r, column)
                if r.status == "ok" and math.isfinite(value):
                    values[y, x] = value
                    ax.text(x, y, display.bar_value(value), ha="center", va="center", fontsize=7,
                            color="white" if value < 0.6 * vmax else "black")
                else:
                    ax.add_patch(_cell(x, y))
                    ax.text(x, y, MARKS.get(r.status, r.status), ha="center", va="center", fontsize=7,
                            color="#444444")
            image = ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
            ax.set_xticks(range(len(seqlens)), [seqlen_label(n) for n in seqlens], fontsize=8)
            ax.set_yticks(range(len(names)), [label(p) for p in names] if j == 0 else [], fontsize=8)
            ax.set_title(panel_title(None, d, causal), fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("sequence length")
    fig.colorbar(image, ax=axes, shrink=0.9, label=which)
    fig.suptitle(title(f"Fraction of peak, {MODE_TITLES.get(mode, mode)}", frame, meta), fontsize=11)
    if (frame["status"] != "ok").any():
        legend(fig, [note_handle(MARK_KEY)], ncol=1)
    return fig


def _cell(x, y):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="#e6e6e6", edgecolor="white")
