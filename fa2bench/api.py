"""The library behind the command line: run a sweep, and read, plot, report, compare and export runs.

``sweep`` runs in two steps that the CLI shows between: ``plan_sweep`` resolves the spec and its overrides,
the providers, the output folder and the peaks (every bad input is a ``SpecError`` before anything runs);
``execute`` checks a resumed folder (damaged rows of results.csv dropped and re-run, a different sweep refused
unless ``extend``), writes meta.json, runs the points (rows appended as they finish; in a worker process with
``isolate``, so a crash or a hang costs one point), merges the metadata of a resumed run, measures the GPU's
ceilings and records completion. Ctrl-C or SIGTERM ends a sweep early: the points done are kept and the ``Run``
says ``complete=False``.

A sharded sweep (``gpus=N``, ``fa2bench sweep --gpus N``) goes through the same two steps: ``plan_sweep``
resolves it once and ``execute`` runs it as ``fa2bench sweep`` on N ranks under torchrun, then merges one
folder; a process started by torchrun (``torchrun -m fa2bench sweep ...``) plans as a rank and runs its share
of the points (``fa2bench.distributed``), with the same checks, metadata and worker isolation as one process.

Reading, plotting, reporting, comparing and exporting never import torch or Triton.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import pandas as pd

from fa2bench.core import config
from fa2bench.core.presets import Point, SpecError, SweepSpec
from fa2bench.run.results import (CSV_NAME, META_NAME, PARQUET_NAME, Damage, ResultsError, default_out, load_run,
                                  read_meta, slug, stamp)

if TYPE_CHECKING:
    from fa2bench.read.compare import Comparison
    from fa2bench.distributed.launch import Rank
    from fa2bench.distributed.shard import MergeReport
    from fa2bench.run.hardware import PeakInfo
    from fa2bench.read.plots import Plotted

RUN_ENV = "FA2BENCH_RUN"
OnPoint = Callable[[Point, "dict | None"], None]
OnStart = Callable[["Started"], None]


@dataclass(frozen=True)
class Run:
    """A results folder and its table (``frame.attrs["meta"]`` is meta.json)."""
    path: Path
    frame: pd.DataFrame = field(repr=False)
    complete: bool = True
    merged: "MergeReport | None" = None  # a sharded sweep (its launcher, or rank 0): how the ranks' rows merged

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
    run_options: dict[str, Any]  # check, warmup_ms, rep_ms, peak_tflops, ceilings, isolate, point_timeout, timer,
    # plugins
    extend: bool = False  # with resume: add a different sweep's points to the run
    gpus: int | None = None  # shard the points over this many ranks, launched under torchrun
    command: tuple[str, ...] = ()  # with gpus: the resolved sweep as the ranks' `fa2bench` arguments
    rank: "Rank | None" = None  # this process is a rank of a torchrun job: it runs its share of the points

    @property
    def points(self) -> list[Point]:
        return self.spec.points(self.providers)

    @property
    def sharded(self) -> bool:
        return self.gpus is not None or self.rank is not None


@dataclass(frozen=True)
class Started:
    """What ``execute`` found in the folder before running the first point."""
    done: int  # this sweep's points the folder already holds (skipped)
    dropped: tuple[Damage, ...]  # damaged rows of results.csv dropped to be re-run (kept in results.csv.damaged)
    csv_path: Path


def default_preset() -> str:
    """The preset a sweep runs when given none: ``default`` on a GPU (about a minute), ``smoke`` without one."""
    from fa2bench.core import device

    return "default" if device.has_cuda() else "smoke"


def plan_sweep(spec: SweepSpec | str | None = None, *, out: str | Path | None = None, resume: bool = False,
               extend: bool = False, **options) -> SweepPlan:
    """Resolve a sweep: ``spec`` (a SweepSpec, a preset name, or None: default on a GPU, smoke without) with
    ``options`` on top (the fields of ``fa2bench.core.config``: seqlen=[1024], provider=["fa2"], rep_ms=50,
    gpus=4, ...). Raises ``SpecError`` (one line) for anything that cannot run."""
    from fa2bench.core import device, providers
    from fa2bench.run import hardware
    from fa2bench.distributed import launch

    options = config.normalise(options)
    out = config.out_folder(options.pop("out", out))
    resume = config.flag("resume", options.pop("resume", resume))
    extend = config.flag("extend", options.pop("extend", extend))
    gpus = options.pop("gpus", None)
    if resume and out is None:
        raise SpecError("--resume needs --out DIR (the run to continue)")
    if extend and not resume:
        raise SpecError("--extend needs --resume (it extends an existing run)")
    recorded = _recorded(out) if resume else {}
    if recorded:  # the run's own sweep and run options are the base; options given must agree with them
        options = _agree(options, recorded["options"])
    base = spec if spec is not None else recorded.get("spec") or default_preset()
    resolved = config.spec_from(options, base)
    run_options = config.run_options(options)
    where = device.name()
    chosen = resolved.providers or tuple(n for n in providers.names()
                                         if providers.get(n).availability(where) is None
                                         and any(providers.get(n).runs_mode(m) for m in resolved.modes)
                                         and any(providers.get(n).runs_variant(v) for v in resolved.variants))
    for d in resolved.headdims:
        if not any(d <= providers.get(n).max_headdim for n in chosen):
            raise SpecError(f"head dim {d} is supported by none of the chosen providers ({', '.join(chosen)})")
    outside = _isolation(run_options, chosen, where)
    if "point_timeout" in options and not run_options["isolate"]:
        raise SpecError("--point-timeout works with --isolate only (a point in this process cannot be stopped); "
                        "add --isolate or leave --point-timeout out")
    command = ()
    try:
        rank, gpus = launch.place(gpus, "the job's ranks share the points")
    except launch.LaunchError as exc:
        raise SpecError(str(exc)) from None
    if gpus is not None and outside:
        raise SpecError(f"provider {', '.join(outside)} is registered outside fa2bench, and the ranks of a sharded "
                        "sweep (--gpus) run `fa2bench sweep`, which does not import it")
    unavailable = {n: why for n in chosen if (why := providers.get(n).availability(where))}
    device_name = hardware.cuda_device_name()
    peaks = {d: hardware.device_peak(device_name, d, run_options["peak_tflops"]) for d in resolved.dtypes}
    out = out or default_out(device_name)
    if gpus is not None:  # the ranks resolve exactly this sweep
        given = {k: v for k, v in run_options.items() if k != "plugins" and v is not None
                 and not (k == "point_timeout" and not run_options["isolate"])}
        command = ("sweep", *config.command_line({**config.spec_fields(resolved, chosen), **given, "out": out,
                                                  **({"resume": True} if resume else {}),
                                                  **({"extend": True} if extend else {})}))
    return SweepPlan(resolved, chosen, unavailable, out, resume, where, device_name, peaks, run_options, extend,
                     gpus, command, rank)


def plan_ablation(out: str | Path | None = None, resume: bool = False, **options) -> SweepPlan:
    """Plan the FA1 -> FA2 ablation ladder (``providers.ladder()``): the paper's shapes at head dims 64 and
    128, causal both, fwd and bwd, in fp16, into ``results/ablation-<UTC time>-<gpu>``; without a GPU the
    smoke preset at seqlen 64 in fp32 through the interpreter (the paper's shapes would take it hours).
    ``options`` (the fields of ``fa2bench.core.config``) override these; run it with ``execute``."""
    import dataclasses

    from fa2bench.core import device, providers

    cpu = not device.has_cuda()
    given = {k: v for k, v in options.items() if v is not None}
    out = config.out_folder(out)
    if config.flag("resume", resume) and out is not None and _recorded(out):  # the run's recorded sweep is the
        return plan_sweep(out=out, resume=True, **given)  # base, not the ladder's defaults: the hint works
    ladder = {"seqlen": "64"} if cpu else {}
    ladder.update(causal="both", dtype="fp32" if cpu else "fp16", mode="fwd,bwd",
                  provider=",".join(providers.ladder()))
    plan = plan_sweep("smoke" if cpu else "paper", out=out, resume=resume, **{**ladder, **given})
    if out is None:  # name the folder for what it is
        plan = dataclasses.replace(plan, out=plan.out.with_name("ablation-" + plan.out.name))
    return plan


RESUMED_OPTIONS = ("check", "warmup_ms", "rep_ms", "timer")  # run options a resumed run keeps from its meta.json


def _recorded(out: Path) -> dict:
    """What a run folder recorded of its sweep (the last one: an extended run's newest) for ``--resume``:
    ``spec`` (a SweepSpec) and the run ``options`` it was measured with; {} when there is none."""
    import dataclasses

    meta = read_meta(out) if out.is_dir() else {}
    sweeps = meta.get("sweeps") or ([meta["sweep"]] if meta.get("sweep") else [])
    if not sweeps or meta.get("kind", "sweep") != "sweep":
        return {}
    names = {f.name for f in dataclasses.fields(SweepSpec)}
    try:
        spec = SweepSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in sweeps[-1].items() if k in names})
    except TypeError:
        return {}
    options = meta.get("options") or {}
    return {"spec": spec, "options": {k: options[k] for k in RESUMED_OPTIONS if k in options}}


def _agree(options: dict, recorded: dict) -> dict:
    """``options`` with the resumed run's recorded run options filled in; one given that differs is refused by
    name (rows timed two ways would share one table)."""
    given = config.run_options(options)
    differ = [f"--{k.replace('_', '-')} {given[k]} (the run has {v})" for k, v in recorded.items()
              if k in options and given[k] != v]
    if differ:
        raise SpecError(f"--resume with run options other than the run's own: {'; '.join(differ)}; leave them out "
                        "to continue the run as it was measured, or choose another --out")
    return {**{k: v for k, v in recorded.items()}, **options}


def _isolation(run_options: dict, chosen: tuple[str, ...], where: str) -> list[str]:
    """Resolve ``isolate`` (default: a worker process on a GPU, in-process without one) and the ``plugins`` the
    worker imports first: the modules of providers registered outside fa2bench (``register_provider``). A
    provider defined in ``__main__`` (a notebook's, a script's) cannot be imported by a worker: by default such
    a sweep runs in-process, and asking for isolation is a SpecError. Returns the providers registered outside
    fa2bench."""
    from fa2bench.core import providers
    modules = {n: getattr(providers.get(n).make, "__module__", None) or "__main__" for n in chosen}
    local = [n for n, m in modules.items() if m == "__main__"]
    if run_options["isolate"] is None:
        run_options["isolate"] = where == "cuda" and not local
    elif run_options["isolate"] and local:
        raise SpecError(f"provider {', '.join(local)} is defined in __main__, which a worker process cannot import: "
                        "run it with --no-isolate (isolate=False), or register it in an importable module")
    run_options["plugins"] = tuple(sorted({m for m in modules.values()
                                           if m != "__main__" and m.split(".")[0] != "fa2bench"}))
    return [n for n, m in modules.items() if m.split(".")[0] != "fa2bench"]


def execute(plan: SweepPlan, on_point: OnPoint | None = None, on_start: OnStart | None = None,
            on_message: Callable[[str], None] | None = None) -> Run:
    """Run a planned sweep into ``plan.out``; ``on_start(started)`` once the folder is checked, before the first
    point (``Started``: points already done, damaged rows dropped); ``on_point(point, row)`` after each point
    (row None when a resumed run already has it). Raises ``ResultsError`` when the folder cannot be written or
    holds a different sweep (without ``plan.extend``), and ``worker.WorkerError`` (after saving what finished)
    when the worker process cannot start.

    A sharded sweep reports through ``on_message`` (torchrun's command line, each rank's share and points, the
    merge) instead of ``on_start``; its ``Run.merged`` (the launcher's, rank 0's) says what was merged and
    which points are missing (then ``complete=False``: ``resume`` runs them)."""
    from fa2bench.distributed import launch
    from fa2bench.run import hardware, runner
    from fa2bench.run.point import RunOptions
    from fa2bench.run.results import continue_meta, rerun_refused

    opts = RunOptions.of(plan.device, plan.run_options)
    meta = runner.collect_meta(plan.spec, plan.providers, opts, plan.peaks)
    peaks = {d: p.tflops for d, p in plan.peaks.items()}

    def with_ceilings(meta: dict, resumed: bool) -> dict:
        """A new run on a GPU records the achievable matmul and copy rates, for rooflines."""
        if not resumed and plan.device == "cuda" and plan.run_options["ceilings"]:
            meta["ceilings"] = hardware.measure_ceilings()
        return meta

    def launcher() -> Run:  # the folder is checked here first, as rank 0 will
        from fa2bench.distributed import shard

        if shard.has_results(plan.out) and not plan.resume:
            raise ResultsError(rerun_refused(plan.out))
        continue_meta(read_meta(plan.out) if plan.resume else {}, meta, plan.extend)
        return _launch(plan, on_message or _quiet)

    return launch.dispatch(
        plan.gpus, plan.rank, launcher=launcher,
        as_rank=lambda: _run_rank(plan, opts, peaks, lambda resumed: with_ceilings(meta, resumed), on_point,
                                  on_message or _quiet),
        alone=lambda: _run_alone(plan, opts, peaks, meta, with_ceilings, on_point, on_start))


def _run_alone(plan: SweepPlan, opts, peaks: dict, meta: dict, with_ceilings: Callable[[dict, bool], dict],
               on_point: OnPoint | None, on_start: OnStart | None) -> Run:
    """The sweep in this process: a resumed run keeps its first metadata and lists each continuation (and
    sweep), checked before the folder is touched."""
    from fa2bench.run import runner
    from fa2bench.run.results import RunWriter, count_done
    from fa2bench.run.worker import WorkerError

    writer = RunWriter.start(plan.out, meta, resume=plan.resume, extend=plan.extend)
    if not writer.resumed:
        with_ceilings(writer.meta, resumed=False)
        writer.save_meta()
    points = plan.points
    if on_start:
        on_start(Started(count_done((p.key() for p in points), writer.done), tuple(writer.dropped),
                         writer.csv_path))
    complete, broken = True, None
    try:
        with _sigterm_as_interrupt():
            runner.run_sweep(points, writer, opts, peaks, on_point=on_point)
    except KeyboardInterrupt:
        complete = False
    except WorkerError as exc:  # the worker process cannot even start: stop with what is finished saved
        complete, broken = False, exc
    except BaseException:  # a full disk (ResultsError), a bug: the folder's lock goes with the run
        writer.release()
        raise
    frame = writer.close(complete)
    if broken is not None:
        raise broken
    frame = pd.DataFrame() if frame is None else frame
    frame.attrs.update(meta=writer.meta, run_dir=str(plan.out))
    return Run(plan.out, frame, complete)


def _quiet(message: str) -> None:
    pass


def _launch(plan: SweepPlan, echo: Callable[[str], None]) -> Run:
    """``plan.gpus`` ranks under torchrun, then the merged folder (after Ctrl-C too: what finished is kept)."""
    from fa2bench.distributed import sweep as dsweep

    code, merged = dsweep.launch_and_merge(plan.gpus, plan.out, plan.command, echo=echo)
    if merged is None:
        raise ResultsError(f"no rank wrote results in {plan.out} (torchrun exit status {code})")
    if code:
        echo(f"torchrun exited with status {code}")
    run = Run.load(plan.out)
    return Run(run.path, run.frame, complete=code != 130 and not merged.missing, merged=merged)


def _run_rank(plan: SweepPlan, opts, peaks: dict, make_meta: Callable[[bool], dict], on_point: OnPoint | None,
              echo: Callable[[str], None]) -> Run:
    """This torchrun rank's share of the points (through the runner, isolated as planned); rank 0 merges."""
    from fa2bench.run import runner
    from fa2bench.distributed import sweep as dsweep

    def run_share(points, writer, log_point) -> None:
        def each(point, row):
            log_point(point, row)
            if on_point:
                on_point(point, row)

        runner.run_sweep(points, writer, opts, peaks, on_point=each)

    try:
        with _sigterm_as_interrupt():
            merged = dsweep.rank_main(plan.points, plan.out, plan.resume, make_meta, run_share, plan.extend, echo)
    except KeyboardInterrupt:
        return Run(plan.out, pd.DataFrame(), complete=False)
    if merged is None:  # not rank 0: rank 0 reports the merged run
        return Run(plan.out, pd.DataFrame())
    run = Run.load(plan.out)
    return Run(run.path, run.frame, complete=not merged.missing, merged=merged)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (what `timeout`, schedulers and `kill` send) ends a sweep like Ctrl-C: finished rows are
    flushed, the run is marked incomplete and the caller can say how to resume."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def sweep(spec: SweepSpec | str | None = None, *, out: str | Path | None = None, resume: bool = False,
          extend: bool = False, on_point: OnPoint | None = None, **overrides) -> Run:
    """Run a sweep and return its ``Run``: ``spec`` (a SweepSpec or preset name; default: the default preset on a
    GPU, smoke without) with keyword ``overrides`` named like ``fa2bench sweep``'s options (``seqlen=[1024, 4096]``,
    ``headdim=[64]``, ``provider=["fa2"]``, ``mode=["fwd"]``, ``causal="on"``, ``variant=["window4096"]``,
    ``rep_ms=50``, ``isolate=False``, ``point_timeout=60``, ``timer="graph"``, ...). ``out`` defaults to
    ``results/<UTC time>-<gpu>``; ``resume=True`` continues the run in ``out`` (``extend=True`` adds a different
    sweep's points to it)."""
    return execute(plan_sweep(spec, out=out, resume=resume, extend=extend, **overrides), on_point)


# --- reading runs ----------------------------------------------------------------------------------------


def _frame(run) -> pd.DataFrame:
    """A loaded results frame from a Run, a DataFrame or a folder."""
    if isinstance(run, Run):
        return run.frame
    if isinstance(run, pd.DataFrame):
        return run
    return load_run(run)


def _table(run, who: str) -> pd.DataFrame:
    """``_frame(run)``, refused in one line (naming ``who``) when it lacks a results table's key columns, status
    or ms (a frame built by hand, another table)."""
    from fa2bench.core.presets import KEY_COLUMNS

    frame = _frame(run)
    missing = [c for c in (*KEY_COLUMNS, "status", "ms") if c not in frame]
    if missing:
        raise ResultsError(f"{who} is not a results table (no {', '.join(missing)} column)")
    return frame


def plot_run(run, out: str | Path | None = None, formats: Iterable[str] = ("png",), kinds=None) -> "Plotted":
    """Draw a run's figures (a Run, a results frame or a folder) into ``out`` (default: the run's
    ``figures/``); see ``plots.plot_run``. A ring run's folder: its scaling figure (``ringreport.write_figure``)."""
    from fa2bench.distributed import ringreport
    from fa2bench.e2e import figures as e2e_figures
    from fa2bench.read import plots

    if isinstance(run, (str, Path)) and ringreport.is_ring(Path(run)):
        folder = Path(out) if out is not None else Path(run) / "figures"
        files = ringreport.write_figure(Path(run), folder, tuple(formats))
        return plots.Plotted({"scaling": files} if files else {}, {} if files else {"scaling": "no point ran"})
    frame = _frame(run)
    if out is None:
        if not frame.attrs.get("run_dir"):
            raise ValueError("this frame has no run folder: pass out=")
        out = Path(frame.attrs["run_dir"]) / "figures"
    if e2e_figures.is_e2e(frame):  # an `fa2bench e2e` run: the Table-1 figure
        return e2e_figures.plot_run(frame, out, tuple(formats))
    return plots.plot_run(frame, out, tuple(formats), **({"kinds": tuple(kinds)} if kinds else {}))


def report(run, formats: Iterable[str] = ("png",)) -> Path:
    """Write ``report.md`` (and its figures) into a run's folder (a Run or a folder); returns its path. Each kind
    of run has its report: a sweep's (``read.markdown``), an e2e run's (``e2e.figures``), a ring run's
    (``distributed.ringreport``: scaling.csv and its figure too)."""
    from fa2bench.distributed import ringreport
    from fa2bench.e2e import figures as e2e_figures
    from fa2bench.read.markdown import write_report

    if isinstance(run, pd.DataFrame):  # a loaded run knows its folder; a frame built by hand has none
        if not run.attrs.get("run_dir"):
            raise ResultsError("report writes report.md into a run folder: pass a Run or a folder (this DataFrame "
                               "has no run folder)")
        run = run.attrs["run_dir"]
    path = run.path if isinstance(run, Run) else run
    if ringreport.is_ring(path):  # an `fa2bench ring` run: the scaling report
        return ringreport.write_report(Path(path), tuple(formats))
    if e2e_figures.is_e2e(load_run(path)):  # an `fa2bench e2e` run: the Table-1 report
        return e2e_figures.write_report(load_run(path), tuple(formats))
    return write_report(path, tuple(formats))


def compare_runs(a, b, threshold: float = 0.05) -> "Comparison":
    """Run B against baseline A (each a Run, a results frame or a folder); see ``fa2bench.read.compare``."""
    from fa2bench.read.compare import compare

    return compare(_table(a, "compare_runs: run a"), _table(b, "compare_runs: run b"), threshold)


def export_run(run, format: str = "github-benchmark", metric: str = "ms") -> list[dict]:
    """A run's ok points in an exchange format (github-benchmark: the JSON list github-action-benchmark
    reads); see ``fa2bench.read.export``."""
    from fa2bench.read import export
    return export.export(_table(run, "export_run: the run"), format, metric)


def find_run(root: str | Path = "results", env: str = RUN_ENV, kind: str | None = "sweep") -> Path | None:
    """``$FA2BENCH_RUN`` when set, else the newest run folder of ``kind`` directly under ``root`` (see
    ``list_runs``), newest by meta.json's ``started_utc``; None when there is none."""
    named = os.environ.get(env)
    if named:
        if not Path(named).exists():
            raise ResultsError(f"${env} names {named}, which does not exist")
        return Path(named)
    return next(iter(list_runs(root, kind)), None)


def list_runs(root: str | Path = "results", kind: str | None = "sweep") -> list[Path]:
    """Run folders directly under ``root`` (meta.json and results), newest first; only those of ``kind``
    (meta.json's ``kind``: "sweep" when absent, "e2e" for ``fa2bench e2e``, "ring" for ``fa2bench ring``, whose
    rows are ring.csv), or every kind with None, so a committed e2e run is never taken for the newest sweep."""
    from fa2bench.distributed import ringreport

    root = Path(root)
    if not root.is_dir():
        return []
    found, rows = [], (CSV_NAME, PARQUET_NAME, ringreport.CSV_NAME)
    for folder in root.iterdir():
        if not (folder / META_NAME).exists() or not any((folder / name).exists() for name in rows):
            continue
        try:
            meta = read_meta(folder)
        except ResultsError:
            continue
        if kind is not None and ("ring" if ringreport.is_ring(folder, meta) else meta.get("kind", "sweep")) != kind:
            continue
        # a ring run's meta.json has one entry per job: the first job's start
        started = meta.get("started_utc") or (meta.get("runs") or [{}])[0].get("started_utc")
        found.append((str(started or ""), folder.stat().st_mtime, folder))
    return [f for *_, f in sorted(found, reverse=True)]
