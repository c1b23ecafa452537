"""The roofline: arithmetic intensity (FLOPs per modelled HBM byte) against achieved TFLOP/s under this GPU's
compute and bandwidth ceilings.

The byte model counts no L2 reuse, so a kernel whose tiles hit L2 (fa2's K/V across neighbouring query blocks)
can sit above the HBM roof at its modelled intensity. Where the run's folder also holds an IO study
(``io_study.csv``: Nsight Compute's DRAM bytes, ``fa2bench profile-io --out`` the run's folder), each measured
point is drawn a second time, hollow, at its measured intensity, joined to its modelled twin by a thin line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from fa2bench.core import iomodel
from fa2bench.core.flops import MODES
from fa2bench.core.presets import KEY_COLUMNS, KEY_DEFAULTS, Shape
from fa2bench.run.results import IO_STUDY_CSV, read_csv
from fa2bench.read.plots.common import (MODE_TITLES, NothingToPlot, ceilings, label, color, ordered_providers, title,
    tidy, one_group, new_figure, legend, provider_handles, note_handle)


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


def measured_intensity(points: pd.DataFrame, run_dir: str | None) -> pd.DataFrame:
    """``points`` (from ``intensity``) that the IO study in ``run_dir`` measured, with ``measured_intensity``
    (FLOPs per DRAM byte Nsight Compute counted)."""
    study = Path(run_dir or "") / IO_STUDY_CSV
    if not run_dir or not study.exists():
        return points.iloc[0:0].assign(measured_intensity=[])
    bytes_ = read_csv(study)
    bytes_ = bytes_[(bytes_["status"] == "ok") & (bytes_["dram_bytes"] > 0)]
    keys = [k for k in KEY_COLUMNS if k in bytes_ and k in points]
    def filled(frame):  # key columns a run written before they existed lacks: their defaults
        return frame.assign(**{k: frame[k].astype(object).fillna(v).astype(type(v))
                               for k, v in KEY_DEFAULTS.items() if k in keys})

    both = filled(points).merge(filled(bytes_[keys + ["dram_bytes"]]).drop_duplicates(keys, keep="last"), on=keys)
    return both.assign(measured_intensity=both["flops"] / both["dram_bytes"])


def roofline(frame: pd.DataFrame, meta: dict | None = None) -> Figure:
    """Arithmetic intensity against achieved TFLOP/s, one panel per mode, under the compute and bandwidth
    ceilings of this GPU. Marker: circle non-causal, triangle causal; size grows with sequence length."""
    frame = one_group(frame)
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    points = intensity(frame)
    if points.empty:
        raise NothingToPlot("no ok points of a provider with an HBM byte model")
    measured = measured_intensity(points, frame.attrs.get("run_dir"))
    dtype = frame["dtype"].iloc[0]
    roof = ceilings(meta, dtype)
    modes = [m for m in MODES if m in set(points["mode"])]
    names = ordered_providers(points)
    seqlens = sorted(points["seqlen_q"].unique())
    size = {n: 14 + 40 * k / max(len(seqlens) - 1, 1) for k, n in enumerate(seqlens)}
    xs_all = pd.concat([points["intensity"], measured["measured_intensity"]])
    x_lo, x_hi = float(xs_all.min()) / 3, float(xs_all.max()) * 3
    y_values = [float(points["tflops"].max()), roof.compute_tflops or 0, roof.datasheet_tflops or 0]
    if roof.compute_tflops and roof.bandwidth_tbs:
        ridge = roof.compute_tflops / roof.bandwidth_tbs
        x_lo, x_hi = min(x_lo, ridge / 4), max(x_hi, ridge * 4)
    y_hi = max(y_values) * 2
    y_lo = min(float(points["tflops"].min()) / 3, (roof.bandwidth_tbs or np.inf) * x_lo)
    fig, axes = new_figure(1, len(modes), 4.6, 3.8)
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
                seen = measured[(measured["mode"] == mode) & (measured["provider"] == p)
                                & (measured["causal"] == causal)]
                for r in seen.itertuples():
                    ax.plot([r.intensity, r.measured_intensity], [r.tflops, r.tflops], color=color(p), lw=0.5,
                            alpha=0.6)
                if len(seen):
                    ax.scatter(seen["measured_intensity"], seen["tflops"], s=[size[n] for n in seen["seqlen_q"]],
                               marker=marker, facecolors="none", edgecolors=color(p), linewidths=0.9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # 1-2-5 steps as plain numbers: "2×10³×4×10" labels ran together
            axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5), numticks=12))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_hi)
        ax.set_title(MODE_TITLES.get(mode, mode), fontsize=9)
        ax.set_xlabel("arithmetic intensity (FLOPs per modelled HBM byte)")
        ax.grid(alpha=0.3, which="major")
        if j == 0:
            ax.set_ylabel("achieved TFLOP/s")
    handles = provider_handles(names, "line")
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
        handles.append(note_handle("no ceilings known for this device"))
    handles += [Line2D([], [], color="#444444", marker="o", linestyle="none", label="non-causal"),
                Line2D([], [], color="#444444", marker="^", linestyle="none", label="causal"),
                note_handle("larger marker: longer sequence")]
    if len(measured):
        handles.append(Line2D([], [], color="#444444", marker="o", markerfacecolor="none", linestyle="none",
                              label="hollow: at the DRAM bytes Nsight Compute measured"))
    if roof.bandwidth_tbs:
        handles.append(note_handle("the byte model counts no L2 reuse: points may sit above the HBM roof"))
    legend(fig, handles, ncol=4)
    fig.suptitle(title("Roofline", frame, meta), fontsize=11)
    return fig
