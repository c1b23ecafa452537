"""Reading runs: `fa2bench plot`, `report`, `compare` and `export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from fa2bench.cli.common import app, ExportFormat, Metric, OUTPUT, RunDir, Formats, out, fail, warn
from fa2bench.cli.render import print_comparison


# --- plot, report, compare, export ------------------------------------------------------------------------


def _formats(text: str) -> tuple[str, ...]:
    from fa2bench.read.plots import parse_formats

    try:
        return parse_formats(text)
    except ValueError as exc:
        fail(str(exc))


def _load(run_dir: Path):
    from fa2bench.run.results import ResultsError, load_run

    try:
        frame = load_run(run_dir)
    except ResultsError as exc:
        fail(str(exc))
    damaged = frame.attrs.get("damaged") or []
    if damaged:
        warn(f"{run_dir}: {len(damaged)} damaged row(s) of results.csv left out ({'; '.join(damaged[:3])})")
    return frame


@app.command("plot")
def plot_run(
    run_dir: RunDir,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the figures (default "
                       "RUN_DIR/figures).", rich_help_panel=OUTPUT)] = None,
    fmt: Formats = "png",
):
    """Figures of a run: throughput bars, speedups, fraction of peak, peak memory, roofline (a ring run: its
    scaling figure)."""
    from fa2bench import api
    from fa2bench.distributed import ringreport
    from fa2bench.run.results import ResultsError

    formats = _formats(fmt)
    try:
        ring = ringreport.is_ring(run_dir)
    except ResultsError as exc:
        fail(str(exc))
    frame = None if ring else _load(run_dir)
    folder = out_dir or (Path(run_dir) if ring else Path(frame.attrs["run_dir"])) / "figures"
    try:
        plotted = api.plot_run(run_dir if ring else frame, folder, formats)
    except ResultsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write figures to {folder}: {exc.strerror or exc}")
    console = out()
    for kind, files in plotted.files.items():
        console.print(f"{kind}: " + ", ".join(str(f) for f in files), highlight=False)
    for kind, why in plotted.skipped.items():
        console.print(f"[yellow]{kind}: not drawn[/] ({why})", highlight=False)


@app.command("report")
def report_run(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A results folder (of `fa2bench sweep`, `e2e` "
                       "or `ring`).")] = None,
    fmt: Formats = "png",
    readme: Annotated[bool, typer.Option("--readme", help="Instead: rewrite the marked result blocks of README.md "
                      "and docs/*.md from the runs under results/ (run from the repository root).")] = False,
):
    """RUN_DIR/report.md: metadata, headline table, speedups, failed points and the figures."""
    from fa2bench import api
    from fa2bench.run.results import ResultsError

    if readme:
        if run_dir is not None:
            fail("--readme rewrites README.md and docs/*.md from results/: give no RUN_DIR")
        _readme()
        return
    if run_dir is None:
        fail("give a RUN_DIR (or --readme)")
    formats = _formats(fmt)
    try:
        path = api.report(run_dir, formats)
    except ResultsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the report in {run_dir}: {exc.strerror or exc}")
    out().print(f"report: {path}", highlight=False)


def _readme() -> None:
    from fa2bench import docnumbers

    if not Path("README.md").exists() or not Path("results").is_dir():
        fail("--readme: run it from the repository root (README.md and results/ not found here)")
    paths = [Path("README.md"), *sorted(Path("docs").glob("*.md"))]
    try:
        changed = docnumbers.update(paths, "results", ".")
    except (ValueError, KeyError, OSError) as exc:
        fail(f"--readme: {exc}")
    out().print(f"{len(changed)} of {len(paths)} files rewritten" + (f": {', '.join(map(str, changed))}"
                if changed else ""), highlight=False)


@app.command("compare")
def compare_runs(
    run_a: Annotated[Path, typer.Argument(help="Baseline results folder.")],
    run_b: Annotated[Path, typer.Argument(help="Candidate results folder.")],
    threshold: Annotated[float, typer.Option(help="Slowdown (B/A - 1) that counts as a regression when it also "
                                             "exceeds the measured noise.")] = 0.05,
    changes_only: Annotated[bool, typer.Option(help="List only points whose verdict is not `same`.")] = False,
):
    """Per-point time ratios of RUN_B over RUN_A; exit 1 if B regressed beyond threshold and noise."""
    from fa2bench import api

    if not threshold >= 0:
        fail("--threshold must be >= 0")
    result = api.compare_runs(_load(run_a), _load(run_b), threshold)
    for warning in result.warnings:
        warn(warning)
    if result.table.empty:
        fail(f"{run_a} and {run_b} share no points (provider, mode, dtype, shape): nothing to compare")
    print_comparison(result, run_a, run_b, threshold, changes_only)
    if len(result.regressions):
        kinds = result.regressions["verdict"].value_counts()
        out(stderr=True).print(f"[bold red]{len(result.regressions)} regression(s):[/] "
                               f"{kinds.get('regression', 0)} slower beyond {threshold:.0%} and the measured noise, "
                               f"{kinds.get('broken', 0)} broken (ok in A, wrong/error/oom/timeout in B)",
                               highlight=False)
        raise typer.Exit(1)




@app.command("export")
def export_run(
    run_dir: RunDir,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="github-benchmark: the JSON list "
                   "benchmark-action/github-action-benchmark reads.")] = ExportFormat["github-benchmark"],
    metric: Annotated[Metric, typer.Option(help="ms (the median time; tool customSmallerIsBetter) or tflops "
                      "(customBiggerIsBetter).")] = Metric.ms,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the JSON here (default: stdout).",
                        rich_help_panel=OUTPUT)] = None,
):
    """A run's ok points as JSON for CI trend charts (one entry per point: name, unit, value, range, extra)."""
    from fa2bench import api

    entries = api.export_run(_load(run_dir), fmt.value, metric.value)
    text = json.dumps(entries, indent=2) + "\n"
    if out_file is None:
        typer.echo(text, nl=False)
        return
    try:
        out_file.write_text(text)
    except OSError as exc:
        fail(f"cannot write {out_file}: {exc.strerror or exc}")
    out(stderr=True).print(f"{len(entries)} points -> {out_file}", highlight=False)
