"""What every figure of a run shares: the run's GPU and ceilings, provider labels and colours, the cut of a run
into groups that each make one figure, and the panel, axis and legend helpers.

Figures are built with ``matplotlib.figure.Figure`` (rendered by Agg, never through pyplot), so nothing global is
touched and nothing needs closing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

from fa2bench.core import providers
from fa2bench.core.flops import MODES
from fa2bench.run import hardware

MODE_TITLES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}
# how a non-ok point reads
MARKS = {"oom": "OOM", "unsupported": "n/a", "error": "error", "wrong": "wrong", "timeout": "timeout"}
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


def title(what: str, frame: pd.DataFrame, meta: dict) -> str:
    dtype = ",".join(dict.fromkeys(frame["dtype"]))
    title = f"{what} · {gpu_name(meta)} · {dtype} · {describe_workload(frame)}"
    if not (meta.get("gpus") or []) and (meta.get("interpreter") or meta.get("device") == "cpu"):
        title += "\n(CPU run: these timings are not GPU performance)"
    return title


# --- one figure per group ---------------------------------------------------------------------------------

_PANEL = ["mode", "headdim", "causal", "seqlen_q", "provider"]
_WORKLOAD = ["batch", "heads", "kv_heads", "seqlen_k", "variant"]  # variant: one figure (of panels) per variant


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
    variant = out["variant"] if "variant" in out else pd.Series("dense", index=out.index)
    out["variant"] = variant.astype(object).where(variant.notna() & (variant.astype(str) != ""), "dense").astype(str)
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
            name = "-".join([dtype] + [str(v).replace("+", "_").replace(":", "-").replace("/", "-") if c == "variant"
                                       else f"{c[0] if c != 'kv_heads' else 'kv'}{v}" for c, v in zip(varying, values)])
            group = group.copy()
            group.attrs = dict(frame.attrs)
            groups[name] = group
    if len(groups) == 1:
        return {"": next(iter(groups.values()))}
    return groups


def one_group(frame: pd.DataFrame) -> pd.DataFrame:
    groups = split(frame)
    if len(groups) > 1:
        raise ValueError(f"this frame holds {len(groups)} groups ({', '.join(groups)}); draw one at a time: "
                         "plots.split(frame)[name]")
    return next(iter(groups.values()))


def modes_of(frame: pd.DataFrame) -> list[str]:
    return [m for m in MODES if m in set(frame["mode"])] + sorted(set(frame["mode"]) - set(MODES))


def grid(frame: pd.DataFrame) -> tuple[list[str], list[tuple[int, bool]]]:
    """Panel rows (modes) and columns (head dim, causal) present in the frame."""
    cols = sorted({(int(d), bool(c)) for d, c in zip(frame["headdim"], frame["causal"])})
    return modes_of(frame), cols


def one_mode(frame: pd.DataFrame, mode: str | None) -> tuple[pd.DataFrame, str]:
    """The rows of ``mode`` (default: the first mode of the run, in fwd, bwd, fwd_bwd order)."""
    present = modes_of(frame)
    if not present:
        raise NothingToPlot("the run has no rows")
    mode = mode or present[0]
    if mode not in present:
        raise NothingToPlot(f"the run has no {mode} points")
    return frame[frame["mode"] == mode], mode


def causal_by_headdim(frame: pd.DataFrame) -> tuple[list[bool], list[int]]:
    """Panel rows (non-causal, causal) and columns (head dims) of a one-mode figure."""
    return sorted(set(frame["causal"])), sorted(set(int(d) for d in frame["headdim"]))


def panel_title(mode: str | None, headdim: int, causal: bool | None) -> str:
    parts = [MODE_TITLES.get(mode, mode)] if mode else []
    parts.append(f"head dim {headdim}")
    if causal is not None:
        parts.append("causal" if causal else "non-causal")
    return ", ".join(parts)


def new_figure(nrows: int, ncols: int, panel_w: float, panel_h: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(panel_w * ncols, 8.0), panel_h * nrows + 1.3), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def log2_seqlen_axis(ax, seqlens) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(seqlens), [seqlen_label(n) for n in seqlens])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(seqlens) / 1.3, max(seqlens) * 1.3)


def legend(fig: Figure, handles: list, ncol: int | None = None) -> None:
    """One legend for the figure, under the panels; as many columns as the figure's width holds."""
    fits = max(1, int(fig.get_figwidth() / 3.3))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(ncol or 5, fits, len(handles)), fontsize=8,
               frameon=False)


def provider_handles(names, kind: str = "patch") -> list:
    if kind == "patch":
        return [Patch(facecolor=color(p), label=label(p)) for p in names]
    return [Line2D([], [], color=color(p), marker="o", label=label(p)) for p in names]


def note_handle(text: str) -> Line2D:
    return Line2D([], [], linestyle="none", label=text)
