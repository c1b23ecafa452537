"""The library behind the command line: run a sweep, and read, plot, report, compare and export runs.

``sweep`` runs in two steps that the CLI shows between: ``plan_sweep`` resolves the spec and its overrides,
the providers, the output folder and the peaks (every bad input is a ``SpecError`` before anything runs);
``execute`` writes meta.json, runs the points (rows appended as they finish), merges the metadata of a resumed
run, measures the GPU's ceilings and records completion. Ctrl-C ends a sweep early: the points done are kept
and the ``Run`` says ``complete=False``.

Reading, plotting, reporting, comparing and exporting never import torch or Triton.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import pandas as pd

from fa2bench import config
from fa2bench.presets import Point, SpecError, SweepSpec
from fa2bench.results import CSV_NAME, META_NAME, PARQUET_NAME, ResultsError, load_run, read_meta, write_meta

if TYPE_CHECKING:
    from fa2bench.compare import Comparison
    from fa2bench.hardware import PeakInfo
    from fa2bench.plots import Plotted

RUN_ENV = "FA2BENCH_RUN"
OnPoint = Callable[[Point, "dict | None"], None]


@dataclass(frozen=True)
class Run:
    """A results folder and its table (``frame.attrs["meta"]`` is meta.json)."""
    path: Path
    frame: pd.DataFrame = field(repr=False)
    complete: bool = True

    @property
    def meta(self) -> dict:
        return self.frame.attrs.get("meta", {})

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        frame = load_run(path)
        return cls(Path(frame.attrs["run_dir"]), frame, frame.attrs["meta"].get("complete", True) is not False)


@dataclass(frozen=True)
class SweepPlan:
    """A sweep resolved and validated, not yet run."""
    spec: SweepSpec
    providers: tuple[str, ...]  # the providers to run
    unavailable: dict[str, str]  # provider -> why it cannot run here (its points are recorded as unsupported)
    out: Path
    resume: bool
    device: str  # "cuda" or "cpu"
    device_name: str | None
    peaks: dict[str, "PeakInfo"]
    run_options: dict[str, Any]  # check, warmup_ms, rep_ms, peak_tflops, ceilings

    @property
    def points(self) -> list[Point]:
        return self.spec.points(self.providers)


def stamp(now: dt.datetime | None = None) -> str:
    """The UTC time that names output folders, e.g. 20261126T123000Z."""
    return f"{now or dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


def default_out(device_name: str | None, prefix: str = "") -> Path:
    """``results/<prefix><UTC time>-<gpu>``: where a run goes when no folder is named."""
    return Path("results") / f"{prefix}{stamp()}-{slug(device_name)}"


def slug(device_name: str | None) -> str:
    if not device_name:
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower().replace("nvidia", "")).strip("-")


def plan_sweep(spec: SweepSpec | str | None = None, *, out: str | Path | None = None, resume: bool = False,
               **options) -> SweepPlan:
    """Resolve a sweep: ``spec`` (a SweepSpec, a preset name, or None: quick on a GPU, smoke without) with
    ``options`` on top (the fields of ``fa2bench.config``: seqlen=[1024], provider=["fa2"], rep_ms=50, ...).
    Raises ``SpecError`` (one line) for anything that cannot run."""
    from fa2bench import device, hardware, providers

    options = config.normalise(options)
    out = options.pop("out", out)
    resume = bool(options.pop("resume", resume))
    base = spec if spec is not None else ("quick" if device.has_cuda() else "smoke")
    resolved = config.spec_from(options, base)
    run_options = config.run_options(options)
    if resume and out is None:
        raise SpecError("--resume needs --out DIR (the run to continue)")
    where = device.name()
    chosen = resolved.providers or tuple(n for n in providers.names()
                                         if providers.get(n).availability(where) is None)
    for d in resolved.headdims:
        if not any(d <= providers.get(n).max_headdim for n in chosen):
            raise SpecError(f"head dim {d} is supported by none of the chosen providers ({', '.join(chosen)})")
    unavailable = {n: why for n in chosen if (why := providers.get(n).availability(where))}
    device_name = hardware.cuda_device_name()
    peaks = {d: hardware.device_peak(device_name, d, run_options["peak_tflops"]) for d in resolved.dtypes}
    return SweepPlan(resolved, chosen, unavailable, Path(out) if out else default_out(device_name), resume, where,
                     device_name, peaks, run_options)


def execute(plan: SweepPlan, on_point: OnPoint | None = None) -> Run:
    """Run a planned sweep into ``plan.out``; ``on_point(point, row)`` after each point (row None when a
    resumed run already has it). Raises ``ResultsError`` when the folder cannot be written."""
    from fa2bench import hardware, runner
    from fa2bench.results import RunWriter

    opts = runner.RunOptions(device=plan.device, check=plan.run_options["check"],
                             warmup_ms=plan.run_options["warmup_ms"], rep_ms=plan.run_options["rep_ms"],
                             peak_tflops=plan.run_options["peak_tflops"])
    writer = RunWriter(plan.out, resume=plan.resume)
    earlier = read_meta(plan.out) if plan.resume else {}
    meta = merge_meta(earlier, runner.collect_meta(plan.spec, plan.providers, opts, plan.peaks))
    if not earlier and plan.device == "cuda" and plan.run_options["ceilings"]:
        meta["ceilings"] = hardware.measure_ceilings()  # achievable matmul and copy rates, for rooflines
    write_meta(plan.out, meta)
    complete = True
    try:
        runner.run_sweep(plan.points, writer, opts, {d: p.tflops for d, p in plan.peaks.items()}, on_point=on_point)
    except KeyboardInterrupt:
        complete = False
    frame = writer.finish() if writer.csv_path.exists() else pd.DataFrame()
    meta.update(finished_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), complete=complete)
    write_meta(plan.out, meta)
    frame.attrs.update(meta=meta, run_dir=str(plan.out))
    return Run(plan.out, frame, complete)


def merge_meta(earlier: dict, meta: dict) -> dict:
    """A resumed run keeps its first metadata and lists each continuation (start, argv, git, versions, GPUs)."""
    if not earlier:
        return meta
    return {**earlier, "resumed": earlier.get("resumed", []) + [
        {k: meta[k] for k in ("started_utc", "argv", "git", "versions", "gpus")}]}


def sweep(spec: SweepSpec | str | None = None, *, out: str | Path | None = None, resume: bool = False,
          on_point: OnPoint | None = None, **overrides) -> Run:
    """Run a sweep and return its ``Run``: ``spec`` (a SweepSpec or preset name; default quick on a GPU, smoke
    without) with keyword ``overrides`` named like ``fa2bench sweep``'s options (``seqlen=[1024, 4096]``,
    ``headdim=[64]``, ``provider=["fa2"]``, ``mode=["fwd"]``, ``causal="on"``, ``rep_ms=50``, ...).
    ``out`` defaults to ``results/<UTC time>-<gpu>``; ``resume=True`` continues the run in ``out``."""
    return execute(plan_sweep(spec, out=out, resume=resume, **overrides), on_point)


# --- reading runs ----------------------------------------------------------------------------------------


def _frame(run) -> pd.DataFrame:
    """A loaded results frame from a Run, a DataFrame or a folder."""
    if isinstance(run, Run):
        return run.frame
    if isinstance(run, pd.DataFrame):
        return run
    return load_run(run)


def plot_run(run, out: str | Path | None = None, formats: Iterable[str] = ("png",), kinds=None) -> "Plotted":
    """Draw a run's figures (a Run, a results frame or a folder) into ``out`` (default: the run's
    ``figures/``); see ``plots.plot_run``."""
    from fa2bench import plots

    frame = _frame(run)
    if out is None:
        if not frame.attrs.get("run_dir"):
            raise ValueError("this frame has no run folder: pass out=")
        out = Path(frame.attrs["run_dir"]) / "figures"
    return plots.plot_run(frame, out, tuple(formats), **({"kinds": tuple(kinds)} if kinds else {}))


def report(run, formats: Iterable[str] = ("png",)) -> Path:
    """Write ``report.md`` (and its figures) into a run's folder (a Run or a folder); returns its path."""
    from fa2bench.markdown import write_report

    return write_report(run.path if isinstance(run, Run) else run, tuple(formats))


def compare_runs(a, b, threshold: float = 0.05) -> "Comparison":
    """Run B against baseline A (each a Run, a results frame or a folder); see ``fa2bench.compare``."""
    from fa2bench.compare import compare

    return compare(_frame(a), _frame(b), threshold)


def export_run(run, format: str = "github-benchmark", metric: str = "ms") -> list[dict]:
    """A run's ok points in an exchange format (github-benchmark: the JSON list github-action-benchmark
    reads); see ``fa2bench.export``."""
    from fa2bench import export

    return export.export(_frame(run), format, metric)


def find_run(root: str | Path = "results", env: str = RUN_ENV) -> Path | None:
    """``$FA2BENCH_RUN`` when set, else the newest run folder directly under ``root`` (one with meta.json and
    results), newest by meta.json's ``started_utc``; None when there is none."""
    named = os.environ.get(env)
    if named:
        if not Path(named).exists():
            raise ResultsError(f"${env} names {named}, which does not exist")
        return Path(named)
    return next(iter(list_runs(root)), None)


def list_runs(root: str | Path = "results") -> list[Path]:
    """Run folders directly under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if not (folder / META_NAME).exists() or not ((folder / CSV_NAME).exists() or (folder / PARQUET_NAME).exists()):
            continue
        try:
            started = str(read_meta(folder).get("started_utc") or "")
        except ResultsError:
            continue
        found.append((started, folder.stat().st_mtime, folder))
    return [f for *_, f in sorted(found, reverse=True)]
