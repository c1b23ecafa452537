"""The end-to-end run drawn and tabulated like the FlashAttention-2 paper's Table 1: training TFLOP/s per GPU
for each provider at each (model, seqlen), with the paper's A100 numbers beside them for reference.

Reads only a results frame (``results.load_run``) and its meta.json, like ``plots`` and ``report``:
``is_e2e`` recognises an e2e folder, ``plot_run`` draws ``figures/e2e-throughput.<format>``, ``write_report``
writes ``report.md``. Labels and colours come from the provider registry (through ``plots``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fa2bench.read import plots
from fa2bench.e2e.configs import PAPER_TABLE1, PAPER_TABLE1_COLUMNS, PAPER_TABLE1_SOURCE
from fa2bench.e2e.schema import KIND, MODE
from fa2bench.read.markdown import FIGURES_DIR, REPORT_NAME, md_table, metadata_section

FIGURE = "e2e-throughput"
PAPER_SHADES = ("#d9d9d9", "#a6a6a6", "#737373")  # the paper's three columns, light to dark


def is_e2e(frame: pd.DataFrame) -> bool:
    """Whether a loaded run is an e2e run: meta.json says so, or (no meta.json) its rows are training rows."""
    meta = frame.attrs.get("meta") or {}
    if meta.get("kind"):
        return meta["kind"] == KIND
    return "model" in frame and len(frame) > 0 and (frame["mode"] == MODE).all()


def _models(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["model"]))


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row["status"] != "ok":
        return plots.MARKS.get(row["status"], str(row["status"]))
    return f"{row['tflops']:.0f}" if row["tflops"] >= 10 else f"{row['tflops']:.3g}"


def _rows(frame: pd.DataFrame) -> dict[tuple, dict]:
    """(model, seqlen, provider) -> the latest row (a resumed run may hold one twice)."""
    return {(r["model"], int(r["seqlen_q"]), r["provider"]): r for r in frame.to_dict("records")}


def table1(frame: pd.DataFrame) -> str:
    """Markdown: one row per (model, seqlen), TFLOP/s per provider, then the paper's A100 numbers."""
    names = plots.ordered_providers(frame)
    rows = _rows(frame)
    lines = []
    for model in _models(frame):
        for n in sorted(frame.loc[frame["model"] == model, "seqlen_q"].unique()):
            paper = PAPER_TABLE1.get((model, int(n)))
            lines.append([model, plots.seqlen_label(int(n))] + [_cell(rows.get((model, int(n), p))) for p in names]
                         + ([f"{v:.0f}" for v in paper] if paper else ["-"] * 3))
    headers = (["model", "seqlen"] + [f"{plots.label(p)}" for p in names]
               + [f"paper A100: {c}" for c in PAPER_TABLE1_COLUMNS])
    return md_table(lines, headers, "ll" + "r" * (len(names) + 3))


def _num(value, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if not math.isfinite(v) else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.{digits}g}")


def details(frame: pd.DataFrame) -> str:
    """Markdown: every configuration's measurements and settings."""
    lines = []
    for r in frame.to_dict("records"):
        ok = r["status"] == "ok"
        lines.append([r["model"], plots.seqlen_label(int(r["seqlen_q"])), plots.label(r["provider"]),
                      r["status"] if ok else f"**{r['status']}**",
                      f"{int(r['micro_batch'])} x {int(r['grad_accum'])}", "on" if str(r["checkpointing"]) in (
                          "True", "true", "1") else "off",
                      _num(r["ms"]) + (f" ({_num(r['ms_p20'])}-{_num(r['ms_p80'])})" if ok else ""),
                      _num(r["tokens_per_s"]), _num(r["tflops"]), _num(r["pct_a100_peak"]),
                      _num(r["pct_device_peak"]), _num(r["peak_mem_mb"] / 1024 if ok else float("nan")),
                      _num(r["energy_per_token_j"] * 1e3 if ok else float("nan")),
                      _num(r["power_w"]), "yes" if str(r["throttled"]) in ("True", "true", "1", "1.0") else "",
                      str(r["error"] or "")[:160]])
    return md_table(lines, ["model", "seqlen", "provider", "status", "micro-batch x accum", "ckpt",
                            "step ms (p20-p80)", "tokens/s", "TFLOP/s", "% A100", "% device", "peak GiB",
                            "mJ/token", "W", "throttled", "error"], "llllll" + "r" * 8 + "ll")


def figure(frame: pd.DataFrame, meta: dict | None = None) -> Figure:
    """One panel per model: grouped bars of TFLOP/s per provider at each seqlen, the paper's A100 numbers as
    grey bars beside them; a configuration that did not run is marked at its slot."""
    meta = meta if meta is not None else frame.attrs.get("meta", {})
    models, names = _models(frame), plots.ordered_providers(frame)
    rows = _rows(frame)
    ok = frame[frame["status"] == "ok"]
    paper_max = max((max(PAPER_TABLE1.get((m, int(n)), (0,))) for m in models
                     for n in frame.loc[frame["model"] == m, "seqlen_q"].unique()), default=0)
    slots = len(names) + 3
    max_seqlens = int(frame.groupby("model")["seqlen_q"].nunique().max())
    ymax = max([float(ok["tflops"].max()) if ok["tflops"].notna().any() else 0.0, paper_max]) * 1.18 or 1.0
    fig = Figure(figsize=(max(6.0, 1.0 + 0.2 * slots * max_seqlens * len(models)), 4.0), dpi=plots.DPI,
                 layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    width = 0.86 / slots
    for ax, model in zip(axes, models):
        seqlens = sorted(int(n) for n in frame.loc[frame["model"] == model, "seqlen_q"].unique())
        for x, n in enumerate(seqlens):
            for k, p in enumerate(names):
                row = rows.get((model, n, p))
                pos = x - 0.43 + width * (k + 0.5)
                if row is None:
                    continue
                if row["status"] == "ok" and math.isfinite(row["tflops"]):
                    ax.bar(pos, row["tflops"], width, color=plots.color(p), edgecolor="white", linewidth=0.3)
                    ax.text(pos, row["tflops"] + ymax * 0.01, _cell(row), rotation=90, ha="center", va="bottom",
                            fontsize=6)
                else:
                    ax.text(pos, ymax * 0.015, _cell(row), rotation=90, ha="center", va="bottom", fontsize=6,
                            color=plots.color(p), fontweight="bold")
            for k, value in enumerate(PAPER_TABLE1.get((model, n), ())):
                pos = x - 0.43 + width * (len(names) + k + 0.5)
                ax.bar(pos, value, width, color=PAPER_SHADES[k], hatch="///", edgecolor="white", linewidth=0.3)
                ax.text(pos, value + ymax * 0.01, f"{value:.0f}", rotation=90, ha="center", va="bottom", fontsize=6,
                        color="#555555")
        ax.set_xticks(range(len(seqlens)), [plots.seqlen_label(n) for n in seqlens])
        ax.set_xlim(-0.5, len(seqlens) - 0.5)
        ax.set_ylim(0, ymax)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("sequence length")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_ylabel("model TFLOP/s per GPU")
    handles = [Patch(color=plots.color(p), label=plots.label(p)) for p in names]
    handles += [Patch(facecolor=s, hatch="///", edgecolor="white", label=f"paper (A100): {c}")
                for s, c in zip(PAPER_SHADES, PAPER_TABLE1_COLUMNS)]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    dtype = ", ".join(dict.fromkeys(frame["dtype"]))
    fig.suptitle(f"GPT training throughput by attention provider, {plots.gpu_name(meta)} ({dtype})", fontsize=10)
    return fig


def plot_run(frame: pd.DataFrame, out_dir: str | Path, formats=("png",)) -> "plots.Plotted":
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = plots.Plotted()
    if not len(frame):
        result.skipped[FIGURE] = "the run has no rows"
        return result
    fig = figure(frame)
    for fmt in formats:
        path = out_dir / f"{FIGURE}.{fmt}"
        fig.savefig(path, format=fmt, bbox_inches="tight")
        result.files.setdefault(FIGURE, []).append(path)
    return result


def render(frame: pd.DataFrame, plotted=None, run_dir: Path | None = None) -> str:
    meta = frame.attrs.get("meta", {})
    run_dir = Path(run_dir or frame.attrs.get("run_dir") or ".")
    sections = [f"# fa2bench end-to-end run `{run_dir.name}`",
                f"GPT training throughput with each attention provider, {plots.gpu_name(meta)}.",
                "## Run", metadata_section(frame, meta)]
    if len(frame):
        sections += [
            "## Model TFLOP/s per GPU (the paper's Table 1 layout)",
            "FLOPs per sequence = 6 · seqlen · params + 12 · layers · hidden · seqlen² (forward and backward, "
            "attention counted in full although causal, recomputation not counted), as in FlashAttention-2 "
            f"Section 4.2. Paper columns: {PAPER_TABLE1_SOURCE}; its A100s are not this GPU, they are printed "
            "for reference only. OOM: out of memory, n/a: unsupported.",
            table1(frame), "## Every configuration", details(frame)]
    if plotted is not None:
        figs = [f for f in plotted.files.get(FIGURE, []) if f.suffix in (".png", ".svg")][:1]
        sections += ["## Figure"] + [f"![{f.stem}]({os.path.relpath(f, run_dir).replace(os.sep, '/')})"
                                     for f in figs]
    return "\n\n".join(sections) + "\n"


def write_report(frame: pd.DataFrame, formats=("png",)) -> Path:
    """Draw the figure into ``figures/`` and write ``report.md`` in the run folder of ``frame``."""
    run_dir = Path(frame.attrs["run_dir"])
    plotted = plot_run(frame, run_dir / FIGURES_DIR, formats)
    path = run_dir / REPORT_NAME
    path.write_text(render(frame, plotted, run_dir))
    return path
