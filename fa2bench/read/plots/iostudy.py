"""The measured IO study (``fa2bench profile-io``): ncu's DRAM bytes against the HBM byte model."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from fa2bench.core import iomodel, providers
from fa2bench.read.plots.common import (NothingToPlot, label, color)




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
