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
- ``decode_bandwidth``: how close to the memory limit does decoding get? Decode rows only (drawn for runs that
  have them; the other kinds leave decode rows out): % of the run's measured copy bandwidth (``pct_copy_bw``;
  achieved GB/s when no ceiling was measured) against KV length, a panel per (heads, page size), a line per
  (provider, batch).

Labels and colours come from ``providers.REGISTRY``. A run with several dtypes (or several workloads at one
(mode, head dim, causal, seqlen), e.g. ``--batch 1,8``) is drawn once per group: ``split(frame)``; the files
are then suffixed with the group (``throughput-bf16.png``). Figures are built with ``matplotlib.figure.Figure``
(rendered by Agg, never through pyplot), so nothing global is touched and nothing needs closing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from fa2bench.read import display

from fa2bench.run import hardware

from fa2bench.core import iomodel, providers
from fa2bench.core.flops import DECODE, MODES
from fa2bench.core.presets import Shape
from fa2bench.read.summary import speedup as speedup_table

MODE_TITLES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}
MARKS = {"oom": "OOM", "unsupported": "n/a", "error": "error", "wrong": "wrong", "timeout": "timeout"}  # how a non-ok point reads
MARK_KEY = "OOM: out of memory, n/a: unsupported, error / wrong: see report"
FORMATS = ("png", "svg", "pdf")
DPI = 130

class NothingToPlot(Exception):
    """This figure has no data in this run; the message says why (``plot_run`` records it and goes on)."""


# --- what the run is -------------------------------------------------------------------------------------


def gpu_name(meta: dict) -> str:
    gpus = meta.get("gpus") or []
    if gpus and gpus[0].get("name"):
        return gpus[0]["name"]
    return "CPU (Triton interpreter)" if meta.get("interpreter") or meta.get("device") == "cpu" else "unknown GPU"


@dataclass(frozen=True)
class Ceilings:
    """The roofline's roofs for one dtype: compute (TFLOP/s) and bandwidth (TB/s), each with its source."""
    compute_tflops: float | None
    compute_source: str
    bandwidth_tbs: float | None
    bandwidth_source: str
    datasheet_tflops: float | None = None  # drawn faintly when the compute roof is a measured one


def ceilings(meta: dict, dtype: str) -> Ceilings:
    """Measured ceilings from meta.json's ``ceilings`` (``fa2bench sweep`` on a GPU) when present, else the
    datasheet: the peak recorded in meta.json (or hardware's table) and ``hardware.HBM_TB_PER_S``."""
    measured = meta.get("ceilings") or {}
    name = (meta.get("gpus") or [{}])[0].get("name")
    datasheet = device_peak(meta, dtype)
    compute, compute_src = datasheet, "datasheet"
    if measured.get(f"matmul_{dtype}_tflops"):
        compute, compute_src = float(measured[f"matmul_{dtype}_tflops"]), f"measured {dtype} matmul"
    bw, bw_src = None, "unknown"
    if measured.get("copy_tb_per_s"):
        bw, bw_src = float(measured["copy_tb_per_s"]), "measured copy"
    elif hardware.hbm_bandwidth(name):
        bw, bw_src = hardware.hbm_bandwidth(name)[0], "datasheet"
    return Ceilings(compute, compute_src, bw, bw_src, datasheet if compute_src != "datasheet" else None)


def device_peak(meta: dict, dtype: str) -> float | None:
    """This GPU's peak TFLOP/s for ``dtype``: as recorded by the sweep, else from hardware's table."""
    recorded = ((meta.get("peak") or {}).get("tflops_by_dtype") or {}).get(dtype)
    if recorded:
        return float(recorded)
    name = (meta.get("gpus") or [{}])[0].get("name")
    return hardware.device_peak(name, dtype).tflops if name else None


def a100_peak(meta: dict) -> float:
    return float((meta.get("peak") or {}).get("a100_tflops") or hardware.A100_PEAK_TFLOPS)


def label(provider: str) -> str:
    return providers.REGISTRY[provider].label if provider in providers.REGISTRY else provider


def color(provider: str) -> str:
    return providers.REGISTRY[provider].color if provider in providers.REGISTRY else "#444444"


def ordered_providers(frame: pd.DataFrame) -> list[str]:
    """Providers of the frame in registry order (unknown ones, from another version, last)."""
    present = list(dict.fromkeys(frame["provider"]))
    return [p for p in providers.REGISTRY if p in present] + [p for p in present if p not in providers.REGISTRY]


def seqlen_label(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(int(n))


def describe_workload(frame: pd.DataFrame) -> str:
    """batch·seqlen, heads and anything unusual (GQA, cross-attention), in a few words."""
    parts = []
    tokens = (frame["batch"] * frame["seqlen_q"]).unique()
    if len(tokens) == 1:
        parts.append(f"batch·seqlen = {seqlen_label(tokens[0])}")
    else:
        batch = frame["batch"].unique()
        parts.append(f"batch {batch[0]}" if len(batch) == 1 else f"batch {min(batch)}-{max(batch)}")
    hidden = (frame["heads"] * frame["headdim"]).unique()
    heads = frame["heads"].unique()
    parts.append(f"{heads[0]} heads" if len(heads) == 1 else f"hidden {hidden[0]}" if len(hidden) == 1
                 else f"{min(heads)}-{max(heads)} heads")
    if (frame["kv_heads"] != frame["heads"]).any():
        parts.append("kv heads " + ",".join(map(str, sorted(frame["kv_heads"].unique()))))
    if (frame["seqlen_k"] != frame["seqlen_q"]).any():
        parts.append("seqlen_k " + ",".join(seqlen_label(n) for n in sorted(frame["seqlen_k"].unique())))
    return ", ".join(parts)


def _title(what: str, frame: pd.DataFrame, meta: dict) -> str:
    dtype = ",".join(dict.fromkeys(frame["dtype"]))
    title = f"{what} · {gpu_name(meta)} · {dtype} · {describe_workload(frame)}"
    if not (meta.get("gpus") or []) and (meta.get("interpreter") or meta.get("device") == "cpu"):
        title += "\n(CPU run: these timings are not GPU performance)"
    return title


# --- one figure per group ---------------------------------------------------------------------------------

_PANEL = ["mode", "headdim", "causal", "seqlen_q", "provider"]
_WORKLOAD = ["batch", "heads", "kv_heads", "seqlen_k"]


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain dtypes (pandas' nullable strings and NA become str and NaN) so the figures can compute freely."""
    out = frame.copy()
    for col in ("provider", "mode", "dtype", "status", "error", "config"):
        if col in out:
            out[col] = out[col].astype(object).where(out[col].notna(), "").astype(str)
    for col in ("ms", "ms_p20", "ms_p80", "flops", "tflops", "pct_a100_peak", "pct_device_peak", "peak_mem_mb"):
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    for col in ("batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim"):
        out[col] = pd.to_numeric(out[col], errors="coerce").fillna(0).astype(int)
    out["causal"] = out["causal"].astype(bool)
    out.attrs = dict(frame.attrs)
    return out


def split(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The frame cut into groups that each make one figure of a kind: one per dtype, and within a dtype one
    per workload when a (mode, head dim, causal, seqlen, provider) was run with several. Keys name the
    groups ("" when there is only one); each group keeps the run's attrs."""
    frame = tidy(frame)
    groups: dict[str, pd.DataFrame] = {}
    for dtype, by_dtype in frame.groupby("dtype", sort=False):
        varying = [c for c in _WORKLOAD if (by_dtype.groupby(_PANEL)[c].nunique() > 1).any()]
        parts = by_dtype.groupby(varying, sort=True) if varying else [((), by_dtype)]
        for values, group in parts:
            values = values if isinstance(values, tuple) else (values,)
            name = "-".join([dtype] + [f"{c[0] if c != 'kv_heads' else 'kv'}{v}" for c, v in zip(varying, values)])
            group = group.copy()
            group.attrs = dict(frame.attrs)
            groups[name] = group
    if len(groups) == 1:
        return {"": next(iter(groups.values()))}
    return groups


def _one_group(frame: pd.DataFrame) -> pd.DataFrame:
    groups = split(frame)
    if len(groups) > 1:
        raise ValueError(f"this frame holds {len(groups)} groups ({', '.join(groups)}); draw one at a time: "
                         "plots.split(frame)[name]")
    return next(iter(groups.values()))


def modes_of(frame: pd.DataFrame) -> list[str]:
    return [m for m in MODES if m in set(frame["mode"])] + sorted(set(frame["mode"]) - set(MODES))


def _grid(frame: pd.DataFrame) -> tuple[list[str], list[tuple[int, bool]]]:
    """Panel rows (modes) and columns (head dim, causal) present in the frame."""
    cols = sorted({(int(d), bool(c)) for d, c in zip(frame["headdim"], frame["causal"])})
    return modes_of(frame), cols


def _one_mode(frame: pd.DataFrame, mode: str | None) -> tuple[pd.DataFrame, str]:
    """The rows of ``mode`` (default: the first mode of the run, in fwd, bwd, fwd_bwd order)."""
    present = modes_of(frame)
    if not present:
        raise NothingToPlot("the run has no rows")
    mode = mode or present[0]
    if mode not in present:
        raise NothingToPlot(f"the run has no {mode} points")
    return frame[frame["mode"] == mode], mode


def _causal_by_headdim(frame: pd.DataFrame) -> tuple[list[bool], list[int]]:
    """Panel rows (non-causal, causal) and columns (head dims) of a one-mode figure."""
    return sorted(set(frame["causal"])), sorted(set(int(d) for d in frame["headdim"]))


def _panel_title(mode: str | None, headdim: int, causal: bool | None) -> str:
    parts = [MODE_TITLES.get(mode, mode)] if mode else []
    parts.append(f"head dim {headdim}")
    if causal is not None:
        parts.append("causal" if causal else "non-causal")
    return ", ".join(parts)


def _figure(nrows: int, ncols: int, panel_w: float, panel_h: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(panel_w * ncols, 8.0), panel_h * nrows + 1.3), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _log2_seqlen_axis(ax, seqlens) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(seqlens), [seqlen_label(n) for n in seqlens])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(seqlens) / 1.3, max(seqlens) * 1.3)


def _legend(fig: Figure, handles: list, ncol: int | None = None) -> None:
    """One legend for the figure, under the panels; as many columns as the figure's width holds."""
    fits = max(1, int(fig.get_figwidth() / 3.3))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(ncol or 5, fits, len(handles)), fontsize=8,
               frameon=False)


def _provider_handles(names, kind: str = "patch") -> list:
    if kind == "patch":
        return [Patch(facecolor=color(p), label=label(p)) for p in names]
    return [Line2D([], [], color=color(p), marker="o", label=label(p)) for p in names]


def _note_handle(text: str) -> Line2D:
    return Line2D([], [], linestyle="none", label=text)


# --- throughput -----------------------------------------------------------------------------------------


def throughput(frame: pd.DataFrame, meta: dict | None = None, mode: str | None = None) -> Figure:
    """Paper-style grouped bars for one mode (default: the run's first): TFLOP/s per provider and sequence
    length, one panel per (causal, head dim), lines at the A100 peak and this GPU's peak."""
    frame = _one_group(frame)
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    frame, mode = _one_mode(frame, mode)
    names = ordered_providers(frame)
    rows, cols = _causal_by_headdim(frame)
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
    fig, axes = _figure(len(rows), len(cols), max(3.6, 0.11 * len(names) * len(seqlens) + 1.0), 3.0)
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
            ax.set_title(_panel_title(None, d, causal), fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            if j == 0:
                ax.set_ylabel("TFLOP/s")
            if i == len(rows) - 1:
                ax.set_xlabel("sequence length")
    handles = _provider_handles(names)
    handles += [Line2D([], [], color=c, linestyle=s, label=f"{n} {v:.0f} TFLOP/s") for v, n, c, s in shown]
    handles += [_note_handle(f"{n} {v:.0f} TFLOP/s (off scale)") for v, n, _, _ in off_scale]
    if (frame["status"] != "ok").any():
        handles.append(_note_handle(MARK_KEY))
    _legend(fig, handles, ncol=min(len(handles), 4))
    fig.suptitle(_title(f"Attention {MODE_TITLES.get(mode, mode)} throughput", frame, meta), fontsize=11)
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
    frame = _one_group(frame)
    subject = subject or providers.with_role("subject")
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    if not ((frame["provider"] == subject) & (frame["status"] == "ok")).any():
        raise NothingToPlot(f"{subject} has no ok points")
    table = speedups(frame, subject)
    if table.empty:
        raise NothingToPlot(f"no other provider is ok where {subject} is")
    modes, cols = _grid(frame)
    seqlens = sorted(frame["seqlen_q"].unique())
    baselines = [p for p in ordered_providers(frame) if p in set(table["baseline"])]
    lo, hi = float(table["speedup"].min()), float(table["speedup"].max())
    fig, axes = _figure(len(modes), len(cols), 3.6, 3.0)
    for i, mode in enumerate(modes):
        for j, (d, causal) in enumerate(cols):
            ax = axes[i, j]
            panel = table[(table["mode"] == mode) & (table["headdim"] == d) & (table["causal"] == causal)]
            for b in baselines:
                line = panel[panel["baseline"] == b].groupby("seqlen_q")["speedup"].mean()
                if len(line):
                    ax.plot(line.index, line.values, marker="o", markersize=3.5, color=color(b), linewidth=1.4)
            ax.axhline(1.0, color="black", linewidth=0.8)
            _log2_seqlen_axis(ax, seqlens)
            ax.set_yscale("log", base=2)
            ax.set_ylim(min(lo, 1.0) / 1.3, max(hi, 1.0) * 1.3)
            ax.yaxis.set_major_locator(LogLocator(base=2))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: display.ratio_label(v)))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(_panel_title(mode, d, causal), fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(f"speedup of {subject}")
            if i == len(modes) - 1:
                ax.set_xlabel("sequence length")
    handles = [Line2D([], [], color=color(b), marker="o", label=f"vs {label(b)}") for b in baselines]
    _legend(fig, handles)
    fig.suptitle(_title(f"Speedup of {label(subject)} (above 1×: {subject} is faster)", frame, meta), fontsize=11)
    return fig


# --- fraction of peak -----------------------------------------------------------------------------------


def fraction_of_peak(frame: pd.DataFrame, meta: dict | None = None, mode: str | None = None) -> Figure:
    """Heatmaps of % of peak, provider x sequence length, for one mode (default: the run's first), one panel
    per (causal, head dim); the device's peak when known, else the A100's (the colour bar says which)."""
    frame = _one_group(frame)
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    frame, mode = _one_mode(frame, mode)
    ok = frame[frame["status"] == "ok"]
    column, which = "pct_device_peak", f"% of {gpu_name(meta)} peak"
    if not ok[column].notna().any():
        column, which = "pct_a100_peak", "% of A100 peak (this device's peak is unknown)"
    if not ok[column].notna().any():
        raise NothingToPlot("no ok points with a TFLOP/s figure")
    names = ordered_providers(frame)
    rows, cols = _causal_by_headdim(frame)
    seqlens = sorted(frame["seqlen_q"].unique())
    vmax = float(ok[column].max())
    vmax = 100.0 if vmax > 50 else vmax if vmax > 0 else 1.0
    fig, axes = _figure(len(rows), len(cols), 0.55 * len(seqlens) + 2.2, 0.26 * len(names) + 1.0)
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
            ax.set_title(_panel_title(None, d, causal), fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("sequence length")
    fig.colorbar(image, ax=axes, shrink=0.9, label=which)
    fig.suptitle(_title(f"Fraction of peak, {MODE_TITLES.get(mode, mode)}", frame, meta), fontsize=11)
    if (frame["status"] != "ok").any():
        _legend(fig, [_note_handle(MARK_KEY)], ncol=1)
    return fig


def _cell(x, y):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor="#e6e6e6", edgecolor="white")


# --- memory ---------------------------------------------------------------------------------------------


def memory(frame: pd.DataFrame, meta: dict | None = None) -> Figure:
    """Peak memory of one call against sequence length, log-log, one panel per (mode, head dim): measured
    (solid) and the algorithm's theoretical footprint (dashed, ``iomodel.theoretical_footprint_mb``); oom
    points are crosses above the dotted line. Non-causal points when the run has them (masking does not
    change what a call allocates), else causal ones."""
    frame = _one_group(frame)
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
    fig, axes = _figure(len(modes), len(headdims), 3.8, 3.0)
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
            _log2_seqlen_axis(ax, seqlens)
            ax.set_yscale("log")
            ax.set_ylim(lo / 2, oom_y * 1.8)
            ax.set_title(_panel_title(mode, d, causal if causal else None), fontsize=9)
            ax.grid(alpha=0.3, which="major")
            if j == 0:
                ax.set_ylabel("peak memory of one call (MiB)")
            if i == len(modes) - 1:
                ax.set_xlabel("sequence length")
    drawn = [p for p in names if p in set(ok["provider"]) or
             ((frame["provider"] == p) & (frame["status"] == "oom")).any()]
    handles = _provider_handles(drawn, "line")
    if (frame["model_mb"] > 0).any():
        handles.append(Line2D([], [], color="#444444", linestyle="--", linewidth=1.0,
                              label="theoretical footprint (model)"))
    if (frame["status"] == "oom").any():
        handles.append(Line2D([], [], color="#444444", marker="x", linestyle="none",
                              label="out of memory (above the dotted line)"))
    _legend(fig, handles, ncol=min(len(handles), 4))
    fig.suptitle(_title("Peak memory", frame, meta), fontsize=11)
    return fig


# --- roofline -------------------------------------------------------------------------------------------


def _footprint_mb(row) -> float:
    """The modelled footprint of a results row (NaN for a provider the model does not cover)."""
    if not iomodel.modelled(row.provider):
        return np.nan
    return iomodel.theoretical_footprint_mb(row.provider, Shape.from_row(row), row.mode, row.dtype)


def intensity(frame: pd.DataFrame) -> pd.DataFrame:
    """The ok rows with ``hbm_bytes`` (``iomodel.hbm_bytes``, per the row's provider, mode and config) and
    ``intensity`` (FLOPs per HBM byte); providers without a byte model are left out."""
    ok = tidy(frame)
    ok = ok[(ok["status"] == "ok") & (ok["tflops"] > 0)].copy()
    modelled = []
    for r in ok.itertuples():
        try:
            modelled.append(iomodel.hbm_bytes(r.provider, Shape.from_row(r), r.mode, r.dtype, config=r.config or None))
        except (ValueError, KeyError):  # a provider the byte model does not cover
            modelled.append(np.nan)
    ok["hbm_bytes"] = modelled
    ok = ok[ok["hbm_bytes"] > 0]
    ok["intensity"] = ok["flops"] / ok["hbm_bytes"]
    return ok


def roofline(frame: pd.DataFrame, meta: dict | None = None) -> Figure:
    """Arithmetic intensity against achieved TFLOP/s, one panel per mode, under the compute and bandwidth
    ceilings of this GPU. Marker: circle non-causal, triangle causal; size grows with sequence length."""
    frame = _one_group(frame)
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    points = intensity(frame)
    if points.empty:
        raise NothingToPlot("no ok points of a provider with an HBM byte model")
    dtype = frame["dtype"].iloc[0]
    roof = ceilings(meta, dtype)
    modes = [m for m in MODES if m in set(points["mode"])]
    names = ordered_providers(points)
    seqlens = sorted(points["seqlen_q"].unique())
    size = {n: 14 + 40 * k / max(len(seqlens) - 1, 1) for k, n in enumerate(seqlens)}
    x_lo, x_hi = float(points["intensity"].min()) / 3, float(points["intensity"].max()) * 3
    y_values = [float(points["tflops"].max()), roof.compute_tflops or 0, roof.datasheet_tflops or 0]
    if roof.compute_tflops and roof.bandwidth_tbs:
        ridge = roof.compute_tflops / roof.bandwidth_tbs
        x_lo, x_hi = min(x_lo, ridge / 4), max(x_hi, ridge * 4)
    y_hi = max(y_values) * 2
    y_lo = min(float(points["tflops"].min()) / 3, (roof.bandwidth_tbs or np.inf) * x_lo)
    fig, axes = _figure(1, len(modes), 4.6, 3.8)
    xs = np.geomspace(x_lo, x_hi, 200)
    for j, mode in enumerate(modes):
        ax = axes[0, j]
        if roof.bandwidth_tbs:
            bw = roof.bandwidth_tbs * xs
            ax.plot(xs, np.minimum(bw, roof.compute_tflops) if roof.compute_tflops else bw, color="black", lw=1.2)
        if roof.compute_tflops:
            ax.axhline(roof.compute_tflops, color="black", lw=0.6, ls="--")
        if roof.datasheet_tflops:
            ax.axhline(roof.datasheet_tflops, color="#888888", lw=0.8, ls=":")
        panel = points[points["mode"] == mode]
        for p in names:
            for causal, marker in ((False, "o"), (True, "^")):
                mine = panel[(panel["provider"] == p) & (panel["causal"] == causal)]
                if len(mine):
                    ax.scatter(mine["intensity"], mine["tflops"], s=[size[n] for n in mine["seqlen_q"]],
                               marker=marker, color=color(p), alpha=0.8, edgecolors="white", linewidths=0.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_title(MODE_TITLES.get(mode, mode), fontsize=9)
        ax.set_xlabel("arithmetic intensity (FLOPs per modelled HBM byte)")
        ax.grid(alpha=0.3, which="major")
        if j == 0:
            ax.set_ylabel("achieved TFLOP/s")
    handles = _provider_handles(names, "line")
    if roof.bandwidth_tbs:
        handles.append(Line2D([], [], color="black", lw=1.2,
                              label=f"HBM {roof.bandwidth_tbs:.2f} TB/s ({roof.bandwidth_source})"))
    if roof.compute_tflops:
        handles.append(Line2D([], [], color="black", lw=0.6, ls="--",
                              label=f"compute {roof.compute_tflops:.0f} TFLOP/s ({roof.compute_source})"))
    if roof.datasheet_tflops:
        handles.append(Line2D([], [], color="#888888", lw=0.8, ls=":",
                              label=f"datasheet peak {roof.datasheet_tflops:.0f} TFLOP/s"))
    if not (roof.bandwidth_tbs or roof.compute_tflops):
        handles.append(_note_handle("no ceilings known for this device"))
    handles += [Line2D([], [], color="#444444", marker="o", linestyle="none", label="non-causal"),
                Line2D([], [], color="#444444", marker="^", linestyle="none", label="causal"),
                _note_handle("larger marker: longer sequence")]
    if roof.bandwidth_tbs:
        handles.append(_note_handle("the byte model counts no L2 reuse: points may sit above the HBM roof"))
    _legend(fig, handles, ncol=4)
    fig.suptitle(_title("Roofline", frame, meta), fontsize=11)
    return fig


# --- decoding: bandwidth utilisation ---------------------------------------------------------------------

_BATCH_MARKERS = "os^Dv<>ph*"


def decode_bandwidth(frame: pd.DataFrame, meta: dict | None = None) -> Figure:
    """% of the measured copy bandwidth (or GB/s) of decode points against KV length; see the module docstring."""
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    rows = tidy(frame)
    rows = rows[(rows["mode"] == DECODE) & (rows["status"] == "ok")].copy()
    if rows.empty:
        raise NothingToPlot("no decode point ran")
    for col, default in (("page_size", 0), ("ragged", False), ("pct_copy_bw", np.nan), ("gbps", np.nan)):
        rows[col] = rows[col] if col in rows else default
    rows["page_size"] = pd.to_numeric(rows["page_size"], errors="coerce").fillna(0).astype(int)
    metric = "pct_copy_bw" if pd.to_numeric(rows["pct_copy_bw"], errors="coerce").notna().any() else "gbps"
    rows[metric] = pd.to_numeric(rows[metric], errors="coerce")
    heads = sorted({(h, kv) for h, kv in zip(rows["heads"], rows["kv_heads"])})
    pages = sorted(set(rows["page_size"]))
    fig, axes = _figure(len(pages), len(heads), 5.0, 3.6)
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
            ax.set_ylabel("% of measured copy bandwidth" if metric == "pct_copy_bw" else "GB/s (compulsory bytes)")
            if metric == "pct_copy_bw":
                ax.axhline(100, color="#444444", linewidth=0.8, linestyle=":")
            ax.grid(True, alpha=0.3)
    handles = _provider_handles(ordered_providers(rows), kind="line")
    handles += [Line2D([], [], color="#444444", marker=_BATCH_MARKERS[k % len(_BATCH_MARKERS)], linestyle="none",
                       label=f"batch {b}") for k, b in enumerate(batches)]
    if rows["ragged"].astype(bool).any():
        handles.append(Line2D([], [], color="#444444", linestyle="--", label="ragged lengths"))
    _legend(fig, handles)
    fig.suptitle(_title("Decode bandwidth utilisation", rows, meta), fontsize=11)
    return fig


# --- all figures of a run -------------------------------------------------------------------------------

FIGURES: dict[str, Callable[..., Figure]] = {
    "throughput": throughput, "speedup": speedup, "fraction_of_peak": fraction_of_peak, "memory": memory,
    "roofline": roofline, "decode_bandwidth": decode_bandwidth,
}
WHOLE_RUN = ("decode_bandwidth",)  # drawn once per dtype over the decode rows, not per workload group
PER_MODE = ("throughput", "fraction_of_peak")  # one file per mode: <kind>-<mode>[-<group>].<format>
FIGURE_TITLES = {"throughput": "Throughput", "speedup": "Speedup of FlashAttention-2",
                 "fraction_of_peak": "Fraction of peak", "memory": "Peak memory", "roofline": "Roofline",
                 "decode_bandwidth": "Decode bandwidth utilisation"}


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


# --- the measured IO study (fa2bench profile-io) ---------------------------------------------------------


def io_study(frame: pd.DataFrame) -> Figure:
    """Log-log figure of an IO study (``iostudy.load_study``): measured DRAM bytes per (batch x head) against
    sequence length, with the model (dashed, same colour), the L2 request bytes where ncu gave them (crosses:
    what the kernels asked of the memory system before L2 filtered it) and the compulsory floor (grey,
    dotted)."""
    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    if not len(ok):
        raise NothingToPlot("no ok points in the study")
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    per_head = ok["batch"].astype(float) * ok["heads"].astype(float)
    ok = ok.assign(measured=ok["dram_bytes"].astype(float) / per_head, model=ok["model_bytes"] / per_head,
                   floor=ok["compulsory_bytes"] / per_head, l2=ok["l2_bytes"].astype(float) / per_head)
    for name, group in ok.groupby("provider", sort=False):
        group = group.sort_values("seqlen_q")
        known = name in providers.REGISTRY
        line, = ax.plot(group["seqlen_q"], group["measured"], "o-", color=color(name) if known else None,
                        label=f"{label(name)}: DRAM (ncu)")
        if group["l2"].notna().any():
            ax.plot(group["seqlen_q"], group["l2"], "x", color=line.get_color(), alpha=0.7,
                    label=f"{label(name)}: L2 requests (ncu)")
        ax.plot(group["seqlen_q"], group["model"], "--", color=line.get_color(), alpha=0.8,
                label=f"{label(name)}: model ({iomodel.algorithm(name) if iomodel.modelled(name) else '?'})")
    floor = ok.groupby("seqlen_q")["floor"].max().sort_index()
    ax.plot(floor.index, floor.values, ":", color="0.5", label="compulsory (Q, K, V read, O written once)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(ok["seqlen_q"].unique()))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    first = ok.iloc[0]
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("HBM bytes per call per (batch x head)")
    ax.set_title(f"DRAM traffic, ncu vs model: {first['mode']} {first['dtype']}, d={first['headdim']}"
                 f"{', causal' if first['causal'] else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_io_study(frame: pd.DataFrame, path: str | Path) -> Path | None:
    """``io_study(frame)`` as a PNG at ``path`` (150 dpi); None when no point is ok."""
    try:
        fig = io_study(frame)
    except NothingToPlot:
        return None
    fig.savefig(Path(path), dpi=150)
    return Path(path)
