"""A run's Markdown report (``report.md`` in the run folder): metadata, headline table, speedups, the points
that failed, and the figures (``plots.plot_run`` into ``figures/``, linked by relative paths so the report
renders on GitHub).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from fa2bench.read import display
from fa2bench.core.presets import Shape
from fa2bench.read.summary import geomean, noisy_note

REPORT_NAME, FIGURES_DIR = "report.md", "figures"


# --- Markdown --------------------------------------------------------------------------------------------


def md_table(rows: list[list], headers: list[str], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one letter per column (l or r)."""
    align = align or "l" * len(headers)
    rule = "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"
    return "\n".join([_row(headers), rule] + [_row(r) for r in rows])


def _row(cells) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ").strip()


def shape_label(row: dict) -> str:
    return Shape.from_row(row).label()


# --- sections --------------------------------------------------------------------------------------------


def metadata_section(frame: pd.DataFrame, meta: dict) -> str:
    from fa2bench.read import plots
    gpus = meta.get("gpus") or []
    gpu = plots.gpu_name(meta)
    if gpus:
        extra = {k: gpus[0].get(k) for k in ("sms", "memory_gib", "driver", "max_sm_clock_mhz", "power_limit_w")}
        details = ", ".join(f"{k} {v}" for k, v in extra.items() if v is not None)
        gpu += f" ({details})" if details else ""
        if len(gpus) > 1:
            gpu += f"; {len(gpus)} GPUs, the first one used"
    peak = meta.get("peak") or {}
    peaks = ", ".join(f"{d} {display.sig(v)}" for d, v in (peak.get("tflops_by_dtype") or {}).items() if v)
    git = meta.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items() if v)
    sweep = meta.get("sweep") or {}
    sweep_text = "; ".join(f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}"
                           for k, v in sweep.items() if v not in (None, [], ""))
    counts = frame["status"].value_counts()
    statuses = ", ".join(f"{k} {v}" for k, v in counts.items())
    ceilings = meta.get("ceilings") or {}
    rows = [
        ["GPU", gpu],
        ["device peak (TFLOP/s)", f"{peaks or 'unknown'} ({peak.get('source', 'unknown source')})"],
        ["measured ceilings", ", ".join(f"{k} {display.sig(v)}" for k, v in ceilings.items()) or "not measured"],
        ["started / finished (UTC)", f"{meta.get('started_utc', '?')} / {meta.get('finished_utc', 'not finished')}"
         + ("" if meta.get("complete", True) else " (interrupted: partial run)")],
        ["commit", commit],
        ["versions", versions or "unknown"],
        ["sweep", sweep_text or "unknown"],
        ["command", f"`{' '.join(meta['argv'])}`" if meta.get("argv") else "unknown"],
        ["points", f"{len(frame)}: {statuses}"],
    ]
    noisy = noisy_note(frame)
    if noisy:
        rows.append(["noisy", noisy])
    if meta.get("resumed"):
        rows.append(["resumed", f"{len(meta['resumed'])} time(s)"])
    text = md_table(rows, ["", ""])
    if meta.get("interpreter") or meta.get("device") == "cpu":
        text = ("> **CPU run.** No CUDA GPU: Triton kernels ran through the CPU interpreter and PyTorch on the CPU. "
                "These timings are not GPU performance; they only show that the pipeline works.\n\n" + text)
    return text


def headline_section(frame: pd.DataFrame) -> str:
    from fa2bench.read import plots
    from fa2bench.read.summary import headline

    table = headline(frame)
    baseline_col = next(c for c in table.columns if c.startswith("speedup_vs_"))
    order = {p: i for i, p in enumerate(plots.ordered_providers(frame))}
    modes = {m: i for i, m in enumerate(plots.modes_of(frame))}
    table = table.assign(_o=table["provider"].map(order), _m=table["mode"].map(modes))
    table = table.sort_values(["_m", "dtype", "_o"], kind="stable")
    rows = [[plots.label(r["provider"]), r["mode"], r["dtype"], f"{r['ok']}/{r['points']}",
             display.sig(r["best_tflops"]), display.sig(r["pct_a100_peak"], "%"),
             display.sig(r["pct_device_peak"], "%"), display.sig(r[baseline_col], "×")]
            for r in table.to_dict("records")]
    return md_table(rows, ["provider", "mode", "dtype", "ok/points", "best TFLOP/s", "% A100 peak",
                           "% device peak", f"× {baseline_col.removeprefix('speedup_vs_')} (geomean)"], "lllrrrrr")


def variants_section(frame: pd.DataFrame) -> str:
    """Per variant, provider, mode and dtype: the best attended-pairs TFLOP/s (the FLOPs the variant does, the
    row's ``tflops``) and beside it the dense-equivalent rate (the dense attention FLOPs of the same shape over
    the same time: how fast the variant is as a replacement for dense attention). Computed here only."""
    from fa2bench.core.flops import attention_flops
    from fa2bench.read import plots

    ok = frame[(frame["status"] == "ok") & frame["tflops"].notna()].copy()
    if ok.empty:
        return "No ok points."
    dense = [attention_flops(r["batch"], r["heads"], r["seqlen_q"], r["seqlen_k"], r["headdim"], r["causal"],
                             r["mode"]) for r in ok.to_dict("records")]
    ok["tflops_dense_equiv"] = ok["tflops"] * pd.Series(dense, index=ok.index, dtype=float) / ok["flops"].astype(float)
    order = {p: i for i, p in enumerate(plots.ordered_providers(frame))}
    rows = []
    for (variant, mode, dtype, provider), group in sorted(
            ok.groupby(["variant", "mode", "dtype", "provider"]),
            key=lambda kv: (kv[0][0] != "dense", kv[0][0], kv[0][1], kv[0][2], order.get(kv[0][3], 0))):
        best = group.loc[group["tflops"].idxmax()]
        rows.append([f"`{variant}`", plots.label(provider), mode, dtype, display.sig(best["tflops"]),
                     display.sig(best["tflops_dense_equiv"]), shape_label(best.to_dict())])
    return ("TFLOP/s count the (query, key) pairs a variant attends; dense-equivalent TFLOP/s count the dense "
            "attention of the same shape over the same time.\n\n"
            + md_table(rows, ["variant", "provider", "mode", "dtype", "best TFLOP/s (attended)",
                              "dense-equivalent TFLOP/s", "at"], "llllrrl"))


def speedup_section(frame: pd.DataFrame, subject: str | None = None) -> str:
    """Per mode and dtype: the subject's speedup over each other provider by sequence length (geometric mean
    over head dims, causal and workloads) and over all."""
    from fa2bench.read import plots
    from fa2bench.core import providers
    subject = subject or providers.with_role("subject")
    table = plots.speedups(frame, subject)
    if table.empty:
        return f"No speedups: {subject} and another provider are never both ok on the same point."
    parts = [f"How many times faster {plots.label(subject)} is than each provider (geometric mean over head dims "
             "and causal; above 1: faster)."]
    for (mode, dtype), group in table.groupby(["mode", "dtype"], sort=False):
        seqlens = sorted(group["seqlen_q"].unique())
        rows = []
        for b in [p for p in plots.ordered_providers(frame) if p in set(group["baseline"])]:
            mine = group[group["baseline"] == b]
            by_n = mine.groupby("seqlen_q")["speedup"].apply(geomean)
            rows.append([f"vs {plots.label(b)}"] + [display.sig(by_n.get(n), "×") for n in seqlens]
                        + [display.sig(geomean(mine["speedup"]), "×")])
        parts.append(f"**{mode}, {dtype}**\n\n" + md_table(
            rows, ["seqlen"] + [plots.seqlen_label(n) for n in seqlens] + ["all"], "l" + "r" * (len(seqlens) + 1)))
    return "\n\n".join(parts)


def problems_section(frame: pd.DataFrame) -> str:
    from fa2bench.read import plots
    bad = frame[frame["status"].isin(["wrong", "error"])]
    parts = []
    if len(bad):
        rows = [[plots.label(r["provider"]), r["mode"], r["dtype"], shape_label(r), f"**{r['status']}**",
                 str(r["error"])[:300]] for r in bad.to_dict("records")]
        parts.append(f"{len(bad)} point(s) gave a wrong result or failed:\n\n"
                     + md_table(rows, ["provider", "mode", "dtype", "shape", "status", "error"]))
    else:
        parts.append("No `wrong` or `error` points.")
    skipped = frame[frame["status"].isin(["oom", "unsupported"])]
    if len(skipped):
        rows = []
        for (p, status), group in skipped.groupby(["provider", "status"], sort=False):
            reasons = list(dict.fromkeys(str(e)[:160] for e in group["error"] if str(e)))
            why = "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
            rows.append([plots.label(p), status, len(group), why])
        parts.append("Points not run (out of memory or unsupported):\n\n"
                     + md_table(rows, ["provider", "status", "points", "why"], "llrl"))
    return "\n\n".join(parts)


def figures_section(plotted, run_dir: Path) -> str:
    from fa2bench.read import plots
    parts = []
    for kind in plots.FIGURES:
        files = [f for f in plotted.files.get(kind, []) if f.suffix in (".png", ".svg")]
        if not files and kind not in plotted.skipped:
            continue
        parts.append(f"### {plots.FIGURE_TITLES[kind]}")
        seen = set()
        for f in files:
            if f.stem in seen:  # one format per figure is enough for the page
                continue
            seen.add(f.stem)
            rel = os.path.relpath(f, run_dir).replace(os.sep, "/")
            parts.append(f"![{f.stem}]({rel})")
        if kind in plotted.skipped:
            parts.append(f"_Not drawn: {plotted.skipped[kind]}._")
    return "\n\n".join(parts)


# --- the report ------------------------------------------------------------------------------------------


def render(frame: pd.DataFrame, plotted=None, run_dir: Path | None = None) -> str:
    """The report's Markdown for a loaded run; ``plotted`` (``plots.plot_run``'s result) adds the figures."""
    from fa2bench.read import plots
    frame = plots.tidy(frame)
    meta = frame.attrs.get("meta", {})
    run_dir = Path(run_dir or frame.attrs.get("run_dir") or ".")
    sections = [
        f"# fa2bench run `{run_dir.name}`",
        f"{plots.gpu_name(meta)} · {', '.join(dict.fromkeys(frame['dtype']))} · "
        f"{plots.describe_workload(frame) if len(frame) else 'no points'}",
        "## Run", metadata_section(frame, meta),
    ]
    if len(frame):
        sections += ["## Headline (best point per provider and mode)", headline_section(frame),
                     "## Speedups", speedup_section(frame),
                     *(["## Attention variants", variants_section(frame)]
                       if (frame["variant"] != "dense").any() else []),
                     "## Failures", problems_section(frame)]
    if plotted is not None:
        sections += ["## Figures", figures_section(plotted, run_dir) or "_No figures._"]
    return "\n\n".join(sections) + "\n"


def write_report(run_dir: str | Path, formats=("png",)) -> Path:
    """Load the sweep in ``run_dir``, draw its figures into ``figures/`` and write ``report.md`` there (an e2e
    run has its own report, ``e2e.figures.write_report``; ``api.report`` picks)."""
    from fa2bench.read import plots
    from fa2bench.run.results import load_run

    frame = load_run(run_dir)
    run_dir = Path(frame.attrs["run_dir"])
    plotted = plots.plot_run(frame, run_dir / FIGURES_DIR, formats=formats)
    path = run_dir / REPORT_NAME
    path.write_text(render(frame, plotted, run_dir))
    return path
