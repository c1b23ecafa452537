"""How the commands show results in the terminal: progress, the summary, kernel resources, traces, ncu
counters and comparisons."""

from __future__ import annotations

from pathlib import Path

from fa2bench.cli.common import out, warn, display, providers


class Tally:
    """Where a running sweep's time goes, and an ETA from it.

    Points differ by a factor of ten or more (a Triton kernel compiling and autotuning against an SDPA call), so
    a moving average of speed (rich's TimeRemainingColumn) swings with whichever provider ran last. Here each
    remaining point is predicted by the mean ``point_s`` of its provider's points so far (the mean of all points
    so far for a provider not yet seen): honest once every provider has run once, which in a sweep ordered
    shapes-outer is after the first shape.
    """

    def __init__(self, points):
        self.points = list(points)
        self.next = 0  # index of the next point to finish
        self.setup_s = self.timing_s = self.other_s = 0.0
        self.by_provider: dict[str, list[float]] = {}

    def add(self, point, row: dict | None) -> None:
        self.next += 1
        if row is None:  # done before (resume): costs nothing now
            return
        spent = number(row.get("point_s")) or 0.0
        self.by_provider.setdefault(point.provider, []).append(spent)
        setup, timing = number(row.get("setup_s")), number(row.get("timing_s"))
        if setup is not None and timing is not None:
            self.setup_s += setup
            self.timing_s += timing
            self.other_s += max(spent - setup - timing, 0.0)
        else:  # unsupported, wrong, failed: no timed calls
            self.other_s += spent

    def eta_s(self) -> float | None:
        """Seconds the points left should take, or None before any point ran."""
        seen = [s for spent in self.by_provider.values() for s in spent]
        if not seen:
            return None
        overall = sum(seen) / len(seen)
        means = {p: sum(v) / len(v) for p, v in self.by_provider.items()}
        return sum(means.get(p.provider, overall) for p in self.points[self.next:])

    def split(self) -> str:
        return f"set-up {clock(self.setup_s)} · timing {clock(self.timing_s)}"


def number(value) -> float | None:
    """A row's cell as a float, None when empty or NaN."""
    return None if value is None or value != value else float(value)


def clock(seconds: float | None) -> str:
    """12 s, 3:05, 1:02:09; '?' for None."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def run_with_progress(plan, console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fa2bench import api
    from fa2bench.run.results import describe_damage

    tally = Tally(plan.points)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta {task.fields[eta]}  ({task.fields[split]})"))
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("sweep", total=len(plan.points), eta="?", split=tally.split())

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
            tally.add(point, row)
            progress.advance(task)
            progress.update(task, description=f"{point.provider:>14} {point.mode:>7} {point.shape.label()}",
                            eta=clock(tally.eta_s()), split=tally.split())
            if row and row["status"] in ("wrong", "error", "timeout"):
                progress.console.print(f"[red]{row['status']}[/] {point.provider} {point.mode} {point.dtype} "
                                       f"{point.shape.label()}: {row['error']}", highlight=False)

        return api.execute(plan, on_point, on_start)


def print_time_split(frame, console) -> None:
    """How long the run's points took, summed over its rows: set-up (check, compilation, autotuning), timing
    (timed calls, telemetry) and the rest (points that were not timed, clean-up). Silent for runs written
    before rows carried the split."""
    if not {"point_s", "setup_s", "timing_s"} <= set(frame.columns) or frame["point_s"].isna().all():
        return
    total, setup, timing = (float(frame[c].fillna(0).sum()) for c in ("point_s", "setup_s", "timing_s"))
    console.print(f"time in points: {clock(total)} = set-up {clock(setup)} (check, compile, autotune) + timing "
                  f"{clock(timing)} + other {clock(max(total - setup - timing, 0.0))} (points not timed, "
                  "clean-up)", highlight=False)


def print_next(run_path, console) -> None:
    """What to run after a sweep, one command a line."""
    steps = ((f"fa2bench plot {run_path}", "figures of this run"),
             ("fa2bench ablate", "the FA1 -> FA2 ladder, rung by rung"),
             ("fa2bench sweep --preset paper", "the paper's full sweep, every provider"))
    width = max(len(command) for command, _ in steps)
    console.print("next:", highlight=False)
    for command, why in steps:
        console.print(f"  {command:<{width}}  # {why}", highlight=False, markup=False, soft_wrap=True)


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


def warn_untrusted(frame) -> None:
    """Warn of ok points whose timings a reader must not trust to the target: noisy or throttled ones."""
    from fa2bench.read.summary import noisy_note
    from fa2bench.run.telemetry import throttle_summary

    for note in (noisy_note(frame), throttle_summary(frame)):
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
                     shape_label(r), timing_cell(r, "a"), timing_cell(r, "b"),
                     f"{r['ratio']:.3g}x" if r["ratio"] > 0 else "-"))
    cols = ("verdict", "provider", "mode", "dtype", "shape", "A ms (p20-p80)", "B ms (p20-p80)", "B/A")
    console = out()
    console.print(display.table(f"B/A time per point (B: {run_b}, A: {run_a}; threshold {threshold:.0%}; noise: "
                                f"spreads overlap or wider than {compare.MAX_SPREAD:.0%}, or CPU-interpreter runs)",
                                cols, rows, left=cols[:5], no_wrap=cols))
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    console.print(f"{len(result.table)} shared points: {counts}; {result.only_a} only in A, {result.only_b} only "
                  "in B", highlight=False)
    retimed = result.retimed
    if len(retimed):
        pairs = (retimed["timer_a"] + " -> " + retimed["timer_b"]).value_counts()
        console.print(f"{len(retimed)} of them timed with another timer in B ("
                      + ", ".join(f"{k}: {v}" for k, v in pairs.items()) + "): their ratios compare the timers as "
                      "well as the code (marked * in B's column)", highlight=False)


def timing_cell(row: dict, side: str) -> str:
    """'median (p20-p80)' in ms of run ``side`` ("a" or "b"), or its status when it did not run."""
    if row[f"status_{side}"] != "ok":
        return row[f"status_{side}"]
    return (f"{display.ms(row[f'ms_{side}'])} ({display.ms(row[f'ms_p20_{side}'])}-"
            f"{display.ms(row[f'ms_p80_{side}'])})" + (f" {row['timer_b']}*" if side == "b" and row["retimed"] else ""))
