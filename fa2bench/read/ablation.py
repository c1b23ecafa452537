"""The FA1 -> FA2 ablation ladder, read from a results frame: what each optimisation buys.

Each rung of the ladder is a provider of the registry (``providers.ladder()``, ordered by ``Provider.rung``),
so an ablation run is an ordinary sweep over those providers. This module only reads its results: per point,
each rung's TFLOP/s and its speedup over the rung it builds on, with the spread of both timings, and the
waterfall figure and the markdown report that put them beside the FlashAttention-2 paper's claims.

The rung a step is measured against: rung 1 (``fa1``, Algorithm 1 as published) is the root; rung 2
(``fa1-split``, FlashAttention-1 as released) is a side step from rung 1; rung 3 (loops swapped) builds on
rung 1, and every later rung on the one before it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fa2bench.read.plots import color, gpu_name, label
from fa2bench.read.summary import geomean

POINT = ["dtype", "mode", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim", "causal"]
PANEL = ["dtype", "mode", "headdim", "causal"]
SIDE_STEP = 2  # fa1-split: the released FA1, measured against rung 1 and not built on
# The FlashAttention-2 paper (Dao, 2023), section 1 and Figures 4-6, on an A100 (312 TFLOP/s fp16/bf16).
PAPER_CLAIMS = (
    ("FlashAttention-1 reaches 25-40% of the A100's peak (forward)", "fa1-split", (25, 40)),
    ("FlashAttention-2 reaches 50-73% of the A100's peak (forward)", "fa2", (50, 73)),
)
PAPER_SPEEDUP = "FlashAttention-2 is about 2x faster than FlashAttention-1 (1.7-3.0x in Figures 4-6)"


def ladder_rungs() -> dict[str, int]:
    """Provider name -> rung, in ladder order (from the registry)."""
    from fa2bench.core import providers
    return {name: providers.get(name).rung for name in providers.ladder()}


def base_rung(rung: int) -> int | None:
    """The rung that ``rung`` is measured against (None for the root)."""
    if rung <= 1:
        return None
    return 1 if rung in (SIDE_STEP, SIDE_STEP + 1) else rung - 1


def steps(frame: pd.DataFrame, rungs: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per (point, rung) that ran ok: TFLOP/s, % of peaks, and the speedup over its base rung with
    the spread bounds (base p20 / own p80 .. base p80 / own p20). Columns: POINT, provider, rung, ms, tflops,
    pct_device_peak, pct_matmul_ceiling, base, speedup, speedup_lo, speedup_hi."""
    rungs = rungs or ladder_rungs()
    ok = frame[(frame["status"] == "ok") & frame["provider"].isin(list(rungs))].copy()
    ok["rung"] = ok["provider"].map(rungs)
    ceilings = (frame.attrs.get("meta") or {}).get("ceilings") or {}
    ok["pct_matmul_ceiling"] = [
        100 * t / c if (c := ceilings.get(f"matmul_{d}_tflops")) else np.nan for t, d in zip(ok["tflops"], ok["dtype"])]
    ok["base_rung"] = ok["rung"].map(lambda r: base_rung(r) or 0)
    base = ok[POINT + ["rung", "provider", "ms", "ms_p20", "ms_p80"]].rename(columns={
        "rung": "base_rung", "provider": "base", "ms": "base_ms", "ms_p20": "base_p20", "ms_p80": "base_p80"})
    out = ok.merge(base, on=POINT + ["base_rung"], how="left")
    out["speedup"] = out["base_ms"] / out["ms"]
    out["speedup_lo"] = out["base_p20"] / out["ms_p80"]
    out["speedup_hi"] = out["base_p80"] / out["ms_p20"]
    columns = POINT + ["provider", "rung", "ms", "tflops", "pct_device_peak", "pct_matmul_ceiling", "base",
                       "speedup", "speedup_lo", "speedup_hi"]
    return out[columns].sort_values(POINT + ["rung"]).reset_index(drop=True)


def short_and_long(seqlens, short: int = 2048) -> tuple[int, ...]:
    """The sequence lengths a waterfall shows: ``short`` (or the nearest run) and the longest (one if equal)."""
    seqlens = sorted(set(int(s) for s in seqlens))
    nearest = min(seqlens, key=lambda s: (abs(math.log2(s) - math.log2(short)), s))
    return (nearest, seqlens[-1]) if nearest != seqlens[-1] else (nearest,)


def waterfall(table: pd.DataFrame, panel: tuple, seqlens: tuple[int, ...], gpu: str = "") -> Figure:
    """One figure for one (dtype, mode, head dim, causal): for each of the two sequence lengths, a bar per
    rung (TFLOP/s) in ladder order, each labelled with its speedup over its base rung and the spread."""
    dtype, mode, headdim, causal = panel
    fig = Figure(figsize=(6.5 * len(seqlens), 4.4), layout="constrained")
    axes = fig.subplots(1, len(seqlens), squeeze=False)[0]
    sub = table[(table["dtype"] == dtype) & (table["mode"] == mode) & (table["headdim"] == headdim)
                & (table["causal"] == causal)]
    top = max(sub["tflops"].max() if len(sub) else 1.0, 1e-9)
    for ax, n in zip(axes, seqlens):
        rows = sub[sub["seqlen_q"] == n].sort_values("rung")
        x = np.arange(len(rows))
        bars = ax.bar(x, rows["tflops"], color=[color(p) for p in rows["provider"]],
                      hatch=["//" if r == SIDE_STEP else "" for r in rows["rung"]], edgecolor="white")
        for bar, (_, row) in zip(bars, rows.iterrows()):
            text = f"{row['tflops']:.3g}"
            if pd.notna(row["speedup"]):
                text += f"\n×{row['speedup']:.2f}\n[{row['speedup_lo']:.2f}, {row['speedup_hi']:.2f}]"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, [f"{r}: {label(p)}" for r, p in zip(rows["rung"], rows["provider"])], rotation=30,
                      ha="right", fontsize=7)
        batch = int(rows["batch"].iloc[0]) if len(rows) else 0
        heads = int(rows["heads"].iloc[0]) if len(rows) else 0
        ax.set_title(f"seqlen {n} (batch {batch} x {heads} heads)", fontsize=9)
        ax.set_ylim(0, top * 1.35)
        ax.set_ylabel("TFLOP/s")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"FA1 -> FA2 ablation, {mode}, d={headdim}, {'causal' if causal else 'non-causal'}, {dtype}"
                 f"{' on ' + gpu if gpu else ''}\n(×: speedup over the rung it builds on, [p20/p80 bounds];"
                 " hatched: FA1 as released, a side step from rung 1)", fontsize=9)
    return fig


def panels(table: pd.DataFrame) -> list[tuple]:
    return [tuple(p) for p in table[PANEL].drop_duplicates().sort_values(PANEL).itertuples(index=False)]


def figure_name(panel: tuple) -> str:
    dtype, mode, headdim, causal = panel
    return f"ablation-{mode}-d{headdim}-{'causal' if causal else 'full'}-{dtype}.png"


def _fmt(value, digits: int = 0, suffix: str = "") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}{suffix}"


def _step_cell(row) -> str:
    if pd.isna(row["speedup"]):
        return "—"
    return f"{row['speedup']:.2f}x [{row['speedup_lo']:.2f}, {row['speedup_hi']:.2f}]"


def report(frame: pd.DataFrame, table: pd.DataFrame, figures: dict[tuple, str], short: int = 2048) -> str:
    """The ablation's markdown: per panel, each rung at a short and a long sequence; the paper's claims
    beside the measurement; and FA2 over FA1 (as released and as published)."""
    gpu = _gpu(frame)
    lines = [f"# FA1 -> FA2 ablation on {gpu}", "",
             "Each rung adds one change to the rung it builds on (rung 2, FlashAttention-1 as released, is a "
             "side step from rung 1). Speedups are median time ratios; the bracket is the range the p20/p80 "
             "spreads of both timings allow. % peak is of this GPU's dense tensor-core peak; % matmul is of the "
             "matmul throughput measured on this GPU in the same run (meta.json `ceilings`).", ""]
    for panel in panels(table):
        dtype, mode, headdim, causal = panel
        sub = table[(table[PANEL] == pd.Series(panel, index=PANEL)).all(axis=1)]
        pair = short_and_long(sub["seqlen_q"], short)
        lines += [f"## {mode}, head dim {headdim}, {'causal' if causal else 'non-causal'}, {dtype}", ""]
        header = ["rung", "provider"]
        for n in pair:
            header += [f"TFLOP/s @{n}", f"% peak @{n}", f"% matmul @{n}", f"step @{n}"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
        for rung, group in sub.groupby("rung"):
            cells = [str(rung), f"`{group['provider'].iloc[0]}`"]
            for n in pair:
                at = group[group["seqlen_q"] == n]
                if len(at):
                    r = at.iloc[0]
                    cells += [f"{r['tflops']:.3g}", _fmt(r["pct_device_peak"], 0, "%"),
                              _fmt(r["pct_matmul_ceiling"], 0, "%"), _step_cell(r)]
                else:
                    cells += ["—"] * 4
            lines.append("| " + " | ".join(cells) + " |")
        if panel in figures:
            lines += ["", f"![{mode} d={headdim} causal={causal}]({figures[panel]})"]
        lines.append("")
    lines += ["## Against the paper's claims", "", *claims(table), ""]
    return "\n".join(lines)


def claims(table: pd.DataFrame) -> list[str]:
    """The paper's A100 claims, each beside what this run measured (forward, % of the A100's 312 TFLOP/s)."""
    from fa2bench.run.hardware import A100_PEAK_TFLOPS

    out = []
    fwd = table[table["mode"] == "fwd"]
    for text, provider, (lo, hi) in PAPER_CLAIMS:
        mine = fwd[fwd["provider"] == provider]["tflops"]
        if len(mine):
            span = 100 * mine / A100_PEAK_TFLOPS
            out.append(f"- Paper: {text}. Here, `{provider}` forward: {span.min():.0f}-{span.max():.0f}% of the "
                       f"A100's peak ({mine.min():.0f}-{mine.max():.0f} TFLOP/s on this GPU).")
    for over in ("fa1-split", "fa1"):
        ratio = ratios(table, "fa2", over)
        if len(ratio):
            out.append(f"- Paper: {PAPER_SPEEDUP}. Here, `fa2` over `{over}`: {geomean(ratio):.2f}x geometric mean "
                       f"({ratio.min():.2f}x to {ratio.max():.2f}x over {len(ratio)} points).")
    return out


def ratios(table: pd.DataFrame, subject: str, over: str) -> pd.Series:
    """Per point where both ran ok: time of ``over`` / time of ``subject``."""
    a = table[table["provider"] == subject].set_index(POINT)["ms"]
    b = table[table["provider"] == over].set_index(POINT)["ms"]
    both = a.index.intersection(b.index)
    return (b.loc[both] / a.loc[both]).reset_index(drop=True)


def _gpu(frame: pd.DataFrame) -> str:
    return gpu_name(frame.attrs.get("meta") or {})


def write(run_dir: str | Path, frame: pd.DataFrame, short: int = 2048) -> Path:
    """Draw the waterfalls into ``run_dir/figures`` and write ``run_dir/ablation.md``; returns the report."""
    run_dir = Path(run_dir)
    table = steps(frame) if len(frame) else frame
    if table.empty:
        raise ValueError(f"{run_dir}: no ladder provider ran ok; run `fa2bench ablate` first")
    gpu = _gpu(frame)
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    figures = {}
    for panel in panels(table):
        sub = table[(table[PANEL] == pd.Series(panel, index=PANEL)).all(axis=1)]
        name = figure_name(panel)
        waterfall(table, panel, short_and_long(sub["seqlen_q"], short), gpu).savefig(run_dir / "figures" / name,
                                                                                     dpi=130)
        figures[panel] = f"figures/{name}"
    table.to_csv(run_dir / "ablation_steps.csv", index=False)
    path = run_dir / "ablation.md"
    path.write_text(report(frame, table, figures, short))
    return path
