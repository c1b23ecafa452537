"""How the commands show results in the terminal: progress, the summary, kernel resources, traces, ncu
counters and comparisons."""

from __future__ import annotations

from pathlib import Path

from fa2bench.cli.common import out, warn, display, providers


def run_with_progress(plan, console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from fa2bench import api
    from fa2bench.run.results import describe_damage

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("sweep", total=len(plan.points))

        def on_start(started):
            if started.dropped:
                warn(describe_damage(list(started.dropped), started.csv_path))
            peak = next(iter(plan.peaks.values()))
            progress.console.print(f"[bold]{len(plan.points)} points[/] ({started.done} already done) on "
                                   f"{plan.device_name or 'CPU (Triton interpreter)'} -> {plan.out}",
                                   highlight=False)
            progress.console.print(f"device peak: {peak.tflops or 'unknown'} TFLOP/s ({peak.source})",
                                   highlight=False)

        def on_point(point, row):
            progress.advance(task)
            progress.update(task, description=f"{point.provider:>14} {point.mode:>7} {point.shape.label()}")
            if row and row["status"] in ("wrong", "error", "timeout"):
                progress.console.print(f"[red]{row['status']}[/] {point.provider} {point.mode} {point.dtype} "
                                       f"{point.shape.label()}: {row['error']}", highlight=False)

        return api.execute(plan, on_point, on_start)


def print_summary(frame, console) -> None:
    from fa2bench.read.summary import headline

    table = headline(frame)
    baseline = next(c for c in table.columns if c.startswith("speedup_vs_"))
    rows = [(r["provider"], r["mode"], r["dtype"], f"{r['ok']}/{r['points']}", display.num(r["best_tflops"]),
             display.num(r["pct_a100_peak"], "%"), display.num(r["pct_device_peak"], "%"),
             display.num(r[baseline], "x")) for r in table.to_dict("records")]
    console.print(display.table("Summary (best point per provider and mode)",
                                ("provider", "mode", "dtype", "ok/points", "best TFLOP/s", "% A100 peak",
                                 "% device peak", f"x {baseline.removeprefix('speedup_vs_')}"), rows,
                                left=("provider", "mode", "dtype"), no_wrap=("provider", "mode")))
    counts = frame["status"].value_counts().to_dict()
    console.print("statuses: " + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)


def warn_throttled(frame) -> None:
    from fa2bench.run.telemetry import throttle_summary

    note = throttle_summary(frame)
    if note:
        warn(note)


def print_resources(provider: str, rows: list[dict], console) -> None:
    if provider not in providers.triton_providers():
        console.print("kernel resources: read from Triton's compiled kernels, for fa2bench's own providers ("
                      f"{', '.join(providers.triton_providers())}) only", highlight=False)
    if not rows:
        return
    cols = ("kernel", "function", "tiles", "warps", "stages", "regs", "spills", "shared_bytes")
    console.print(display.table("Triton kernels (compiled variants in use)", cols,
                                [["-" if r[c] is None else r[c] for c in cols] for r in rows],
                                left=("kernel", "function", "tiles")))


def print_trace(rows: list[dict], path: Path, calls: int, console) -> None:
    if not rows:
        console.print(f"trace: {path} (no GPU activity recorded)", highlight=False)
        return
    console.print(display.table(
        f"GPU activity over {calls} calls (trace: {path})", ("name", "kind", "per call", "mean us", "total us",
                                                              "share"),
        [(r["name"], r["kind"], f"{r['per_call']:g}", f"{r['mean_us']:.1f}", f"{r['total_us']:.1f}",
          f"{r['share_pct']:.1f}%") for r in rows], left=("name", "kind"), fold=True))


def print_ncu(kernels: list[dict], total: dict, console) -> None:
    def row(name, m):
        time_us = m.get("duration_ns") / 1e3 if m.get("duration_ns") is not None else None
        return (name, f"{m['kernels_per_call']:g}", display.num(time_us), display.gb(m.get("dram_read_bytes")),
                display.gb(m.get("dram_write_bytes")), display.num(m.get("occupancy_pct"), "%"),
                display.num(m.get("tensor_pct"), "%"), display.num(m.get("sm_pct"), "%"),
                display.num(m.get("l2_hit_pct"), "%"))

    cols = ("kernel", "launches", "time us", "DRAM read", "DRAM write", "occupancy", "tensor pipe", "SM thru",
            "L2 hit")
    rows = [row(k["kernel"], k) for k in kernels] + [row("[bold]all kernels[/]", total)]
    console.print(display.table("Nsight Compute, per call", cols, rows, left=("kernel",), fold=True))


def print_comparison(result, run_a, run_b, threshold, changes_only) -> None:
    from fa2bench.read import compare
    from fa2bench.read.markdown import shape_label

    styles = {"broken": "bold red", "regression": "bold red", "noise": "yellow", "faster": "green",
              "fixed": "green", "not ok": "dim"}
    rows = []
    for r in result.table.to_dict("records"):
        if changes_only and r["verdict"] == "same":
            continue
        style = styles.get(r["verdict"], "")
        rows.append((f"[{style}]{r['verdict']}[/]" if style else r["verdict"], r["provider"], r["mode"], r["dtype"],
                     shape_label(r), timing_cell(r, "a"), timing_cell(r, "b"), f"{r['ratio']:.3g}x" if r["ratio"] > 0 else "-"))
    cols = ("verdict", "provider", "mode", "dtype", "shape", "A ms (p20-p80)", "B ms (p20-p80)", "B/A")
    console = out()
    console.print(display.table(f"B/A time per point (B: {run_b}, A: {run_a}; threshold {threshold:.0%}; noise: "
                                f"spreads overlap or wider than {compare.MAX_SPREAD:.0%}, or CPU-interpreter runs)",
                                cols, rows, left=cols[:5], no_wrap=cols))
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    console.print(f"{len(result.table)} shared points: {counts}; {result.only_a} only in A, {result.only_b} only "
                  "in B", highlight=False)


def timing_cell(row: dict, side: str) -> str:
    """'median (p20-p80)' in ms of run ``side`` ("a" or "b"), or its status when it did not run."""
    if row[f"status_{side}"] != "ok":
        return row[f"status_{side}"]
    return (f"{display.ms(row[f'ms_{side}'])} ({display.ms(row[f'ms_p20_{side}'])}-"
            f"{display.ms(row[f'ms_p80_{side}'])})")


def print_next_steps(run_dir, console) -> None:
    """What to run after a sweep: its figures and report, the ablation ladder, the paper's sweep."""
    console.print(f"next: `fa2bench plot {run_dir}` and `fa2bench report {run_dir}` (figures, report.md); "
                  "`fa2bench ablate` (what each step from FlashAttention-1 to -2 buys); "
                  "`fa2bench sweep --preset paper` (the paper's shapes); `fa2bench sweep --help` for the rest",
                  highlight=False, markup=False, soft_wrap=True)
