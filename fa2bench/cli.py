"""The fa2bench command line: thin Typer shells over the library (``fa2bench.api``, ``profile``, ``ncu``,
``iostudy``, ``plots``, ``markdown``, ``compare``, ``export``, ``e2e``, ``distributed``). Importing this module
imports no torch: ``fa2bench --help`` is quick. Bad input is one line on stderr and exit code 2.
"""
from __future__ import annotations

import dataclasses
import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fa2bench.read import display

from fa2bench.spec import providers
from fa2bench.e2e.configs import MODELS as E2E_MODELS
from fa2bench.e2e.schema import PARALLEL as E2E_PARALLEL
from fa2bench.spec.flops import MODES
from fa2bench.spec.presets import DTYPES, PRESETS, SpecError

app = typer.Typer(no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  help="Benchmark and profile attention kernels around FlashAttention-2.")


def _choices(name: str, values) -> type[Enum]:
    """A str Enum of ``values`` (Typer lists them in --help and completes them)."""
    return Enum(name, {v: v for v in values}, type=str)


Preset = _choices("Preset", PRESETS)
Causal = _choices("Causal", ("off", "on", "both"))
ProviderName = _choices("ProviderName", providers.names())
Mode = _choices("Mode", MODES)
Dtype = _choices("Dtype", DTYPES)
ExportFormat = _choices("ExportFormat", ("github-benchmark",))
Metric = _choices("Metric", ("ms", "tflops"))

# --- options shared by the commands, declared once -------------------------------------------------------

SHAPE, RUN, OUTPUT = "Shape", "Run", "Output"


def _opt(kind, help: str, panel: str):
    """An optional option of type ``kind`` in the help panel ``panel`` (Typer names it after the parameter)."""
    return Annotated[Optional[kind], typer.Option(help=help, rich_help_panel=panel)]


Seqlen = _opt(str, "Sequence lengths: 512,1024, 512..16384 (doubling) or 64:256:64.", SHAPE)
SeqlenK = _opt(str, "Key/value lengths for cross-attention (default: = seqlen).", SHAPE)
Headdim = _opt(str, "Head dimensions, e.g. 64,128.", SHAPE)
Batch = _opt(str, "Batch sizes (instead of --tokens).", SHAPE)
Tokens = _opt(int, "Tokens per batch: batch = tokens // seqlen.", SHAPE)
Heads = _opt(str, "Query heads (instead of --hidden).", SHAPE)
Hidden = _opt(int, "Hidden size: heads = hidden // headdim.", SHAPE)
KvHeads = _opt(str, "Key/value heads for GQA/MQA (default: = heads).", SHAPE)
CausalFlag = Annotated[Optional[bool], typer.Option("--causal/--no-causal", help="Causal masking.",
                                                    rich_help_panel=SHAPE)]
OneMode = Annotated[Mode, typer.Option(help="Pass to run.", rich_help_panel=SHAPE)]
OneDtype = Annotated[Dtype, typer.Option(help="Input dtype.", rich_help_panel=SHAPE)]
RunDir = Annotated[Path, typer.Argument(help="A results folder (written by `fa2bench sweep`).")]
Formats = Annotated[str, typer.Option("--format", help="Comma-separated figure formats: png, svg, pdf.",
                                      rich_help_panel=OUTPUT)]


def _shape_options(**given) -> dict:
    """The shape options the user gave (None: not given), keyed as ``fa2bench.spec.config`` fields."""
    return {k: v for k, v in given.items() if v is not None}


def out(stderr: bool = False):
    return display.console(stderr)


def fail(message: str, code: int = 2) -> None:
    """One clear line on stderr and a non-zero exit (2: usage error)."""
    out(stderr=True).print(f"[bold red]fa2bench: error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    out(stderr=True).print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _no_gpu(console, what: str) -> None:
    """The loud panel of a run without a GPU: ``what`` runs instead, and its timings are no GPU's."""
    from rich.panel import Panel

    console.print(Panel(f"No CUDA GPU: {what}.\nThese timings are NOT GPU performance; they only prove the "
                        "pipeline works.", title="NO GPU", style="bold red"))


def _has_cuda() -> bool:
    from fa2bench.spec import device
    return device.has_cuda()


# --- sweep ----------------------------------------------------------------------------------------------


@app.command()
def sweep(
    config: Annotated[Optional[Path], typer.Option(help="A sweep file (TOML, or YAML with PyYAML) with the same "
                      "fields as these options; options given here win.")] = None,
    preset: Annotated[Optional[Preset], typer.Option(help="Named sweep; the options override its fields. "
                      "Default: quick on a GPU, smoke without one.")] = None,
    seqlen: Seqlen = None, seqlen_k: SeqlenK = None, headdim: Headdim = None, batch: Batch = None,
    tokens: Tokens = None, heads: Heads = None, hidden: Hidden = None, kv_heads: KvHeads = None,
    causal: _opt(Causal, "Causal masking.", SHAPE) = None,
    dtype: Annotated[Optional[str], typer.Option(help="Dtypes: " + ",".join(DTYPES) + " (tf32: fp32 inputs, "
                                                 "TF32 matmuls).", rich_help_panel=SHAPE)] = None,
    mode: Annotated[Optional[str], typer.Option(help="Passes: " + ",".join(MODES) + ".",
                                                rich_help_panel=SHAPE)] = None,
    provider: Annotated[Optional[str], typer.Option(help="Providers (see `fa2bench providers`); default: every "
                        "provider available here.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Results folder (default results/<UTC "
                       "time>-<gpu>).", rich_help_panel=OUTPUT)] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue the run in --out, "
                      "skipping finished points.", rich_help_panel=OUTPUT)] = None,
    extend: Annotated[Optional[bool], typer.Option("--extend/--no-extend", help="With --resume: add a different "
                      "sweep's points to the run (meta.json records every sweep).", rich_help_panel=OUTPUT)] = None,
    check: Annotated[Optional[bool], typer.Option("--check/--no-check", help="Check every point against the "
                     "reference before timing (default: check).", rich_help_panel=RUN)] = None,
    isolate: Annotated[Optional[bool], typer.Option("--isolate/--no-isolate", help="Run points in a worker "
                       "process that is restarted after a crash, a fatal CUDA error or a hang (default: on with "
                       "a GPU, off without one).", rich_help_panel=RUN)] = None,
    point_timeout: _opt(float, "With --isolate: seconds one point may take (set-up, check, compilation, timing) "
                               "before its worker is killed and it is recorded `timeout` (default 600).", RUN) = None,
    warmup_ms: _opt(float, "Warm-up budget per point (ms, default 25).", RUN) = None,
    rep_ms: _opt(float, "Timing budget per point (ms, default 100).", RUN) = None,
    peak_tflops: _opt(float, "Override this GPU's peak TFLOP/s.", RUN) = None,
    ceilings: Annotated[Optional[bool], typer.Option("--ceilings/--no-ceilings", help="Measure matmul and copy "
                        "ceilings into meta.json (GPU; default: measure).", rich_help_panel=RUN)] = None,
    gpus: _opt(str, "Shard the points over N GPUs (or 'all') under torchrun, one merged results folder "
                    "(docs/multigpu.md).", RUN) = None,
    clear_autotune_cache: Annotated[bool, typer.Option("--clear-autotune-cache", help="Forget fa2bench's kernels' "
                                    "autotune decisions (kept on disk across runs) before sweeping, so every config "
                                    "is searched again.", rich_help_panel=RUN)] = False,
):
    """Sweep shapes x providers x modes x dtypes; check, time and write one row per point."""
    from fa2bench import api
    from fa2bench.spec import config as sweep_config
    from fa2bench.run.results import ResultsError
    from fa2bench.run.worker import WorkerError

    given = _shape_options(preset=preset, seqlen=seqlen, seqlen_k=seqlen_k, headdim=headdim, batch=batch,
                           tokens=tokens, heads=heads, hidden=hidden, kv_heads=kv_heads, causal=causal, dtype=dtype,
                           mode=mode, provider=provider, out=out_dir, resume=resume, extend=extend, check=check,
                           isolate=isolate, point_timeout=point_timeout, warmup_ms=warmup_ms, rep_ms=rep_ms,
                           peak_tflops=peak_tflops, ceilings=ceilings, gpus=gpus)
    try:
        options = sweep_config.merge(sweep_config.load(config) if config else {},
                                     {k: getattr(v, "value", v) for k, v in given.items()})
        plan = api.plan_sweep(**options)
    except SpecError as exc:
        fail(str(exc))
    leader = plan.rank is None or plan.rank.is_leader  # under torchrun, rank 0 speaks for the run
    for name, why in plan.unavailable.items():
        if leader:
            out(stderr=True).print(f"[yellow]note:[/] provider {name} is unavailable here ({why}); its points are "
                                   "recorded as unsupported", highlight=False)
    console = out()
    if plan.device == "cpu" and leader:
        _no_gpu(console, "Triton kernels run through the CPU interpreter and PyTorch on the CPU")
    if clear_autotune_cache and plan.rank is None:  # once, before any rank or worker tunes
        from fa2bench.kernels import clear_autotune_cache as clear

        console.print(f"cleared {clear()} autotune results", highlight=False)
    try:
        if plan.sharded:  # --gpus N, or a rank under torchrun: log lines instead of a progress bar
            run = api.execute(plan, on_message=lambda line: console.print(line, markup=False, highlight=False,
                                                                           soft_wrap=True))
        else:
            run = _run_with_progress(plan, console)
    except ResultsError as exc:
        fail(str(exc))
    except WorkerError as exc:  # the worker process cannot even start
        fail(f"{exc}; finished points are saved in {plan.out}")
    if not leader:
        raise typer.Exit(0 if run.complete else 130)
    if len(run.frame) and plan.gpus is None:  # a launcher leaves the summary to rank 0
        _print_summary(run.frame, console)
        _warn_throttled(run.frame)
    if run.merged is not None:
        from fa2bench.distributed.shard import describe

        console.print(describe(run.merged, run.path), markup=False, highlight=False)
        if run.merged.missing:
            raise typer.Exit(1)
    if not run.complete:
        out(stderr=True).print(f"interrupted: finished points are saved in {run.path}; continue with "
                               f"--out {run.path} --resume", highlight=False)
        raise typer.Exit(130)
    console.print(f"results: {run.path}", highlight=False)


@app.command()
def ring(
    gpus: Annotated[str, typer.Option(help="GPU counts, one torchrun job each: 1,2,4.", rich_help_panel=RUN)] = "1,2,4",
    seqlen: _opt(str, "Sequence lengths over all GPUs, e.g. 65536..262144 (the default) or "
                      "65536,131072.", SHAPE) = None,
    batch: _opt(int, "Batch size (default 1).", SHAPE) = None,
    heads: _opt(int, "Query heads (default 16).", SHAPE) = None,
    kv_heads: _opt(int, "Key/value heads for GQA (default: = heads).", SHAPE) = None,
    headdim: _opt(int, "Head dimension (default 128).", SHAPE) = None,
    dtype: _opt(str, "Dtypes: fp16, bf16, fp32 (default bf16).", SHAPE) = None,
    causal: _opt(Causal, "Causal masking (default on).", SHAPE) = None,
    mode: _opt(str, "Passes: fwd, fwd_bwd (default both).", SHAPE) = None,
    method: _opt(str, "Methods: ring-fa2, allgather-fa2, cp-sdpa (default: all).", RUN) = None,
    reps: _opt(int, "Timed calls per point (default 3).", RUN) = None,
    warmup: _opt(int, "Untimed calls first (default 1).", RUN) = None,
    impl: _opt(str, "Block kernel: fa2 (default with CUDA) or ref (PyTorch; the default without).", RUN) = None,
    tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Autotune fa2 on every world size (default: its "
                    "first config, no tuning).", rich_help_panel=RUN)] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Results folder (ring.csv, scaling.csv, scaling.png).",
                                          rich_help_panel=OUTPUT)] = Path("results/ring"),
):
    """Context-parallel attention over GPUs: ring-fa2 against all-gather K/V and PyTorch's context_parallel
    (time, TFLOP/s per GPU, scaling efficiency, communication hidden; docs/multigpu.md)."""
    from fa2bench.distributed import ringbench

    console = out()
    try:
        code = ringbench.scaling_run(gpus, out_dir, dict(
            seqlen=seqlen, batch=batch, heads=heads, kv_heads=kv_heads, headdim=headdim, dtype=dtype,
            causal=causal.value if causal else None, mode=mode, method=method, reps=reps, warmup=warmup, impl=impl,
            tune=tune), echo=lambda line: console.print(line, markup=False, highlight=False))
    except SpecError as exc:
        fail(str(exc))
    if code:
        raise typer.Exit(code)


def _run_with_progress(plan, console):
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


def _print_summary(frame, console) -> None:
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


def _warn_throttled(frame) -> None:
    from fa2bench.run.telemetry import throttle_summary

    note = throttle_summary(frame)
    if note:
        warn(note)


# --- providers, info -----------------------------------------------------------------------------------


@app.command("providers")
def list_providers():
    """Every provider, whether it is available here, and why not."""
    from fa2bench.spec import device
    where = device.name()
    rows = []
    for name in providers.names():
        p = providers.get(name)
        why = p.availability(where)
        rows.append((name, p.kind, "yes" if why is None else f"no: {why}", ",".join(sorted(p.dtypes)),
                     str(p.max_headdim) if p.max_headdim < 1 << 20 else "any", p.description))
    cols = ("name", "kind", "available", "dtypes", "max head dim", "description")
    out().print(display.table(f"Providers (device: {where})", cols, rows, left=cols, no_wrap=("name", "kind")))


@app.command()
def info(
    measure: Annotated[bool, typer.Option(help="Time a large matmul and a large copy: achievable ceilings.")] = False,
    peak_tflops: Annotated[Optional[float], typer.Option(help="Override this GPU's peak TFLOP/s.")] = None,
):
    """GPU(s), driver, versions, and the peak fa2bench uses for this GPU."""
    from fa2bench.run import hardware
    console = out()
    versions = hardware.software_versions()
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), highlight=False)
    gpus = hardware.gpu_info()
    if not gpus:
        console.print("No CUDA GPU found. `fa2bench sweep` will run the smoke preset through Triton's CPU "
                      "interpreter; its timings are not GPU performance.")
        return
    for g in gpus:
        console.print(", ".join(f"{k}={v}" for k, v in g.items()), highlight=False)
    for d in DTYPES:
        peak = hardware.device_peak(gpus[0]["name"], d, peak_tflops)
        console.print(f"peak {d}: {peak.tflops or 'unknown'} TFLOP/s, {peak.matched or ''} ({peak.source})",
                      highlight=False)
    hbm = hardware.hbm_bandwidth(gpus[0]["name"])
    if hbm:
        console.print(f"HBM bandwidth: {hbm[0]} TB/s ({hbm[1]})", highlight=False)
    console.print(f"A100 yardstick: {hardware.A100_PEAK_TFLOPS} TFLOP/s fp16/bf16")
    if measure:
        for k, v in hardware.measure_ceilings().items():
            console.print(f"measured {k}: {v:.1f}", highlight=False)


# --- profile, profile-io -------------------------------------------------------------------------------


def _needs_gpu_and_ncu(command: str, want_ncu: bool) -> str | None:
    """Fail with one line without a GPU, or without ncu when it is wanted; the ncu path otherwise."""
    from fa2bench.profiling import ncu
    if not _has_cuda():
        fail(f"`fa2bench {command}` needs a CUDA GPU and torch sees none (the Triton interpreter cannot be "
             "profiled)")
    found = ncu.find_ncu() if want_ncu else None
    if want_ncu and not found:
        fail("Nsight Compute's `ncu` is not on PATH (needed for --ncu and profile-io); install Nsight Compute "
             "or add its folder to PATH")
    return found


@app.command("profile")
def profile_point(
    provider: Annotated[ProviderName, typer.Option(help="Provider to profile (see `fa2bench providers`).")],
    seqlen: Seqlen = None, seqlen_k: SeqlenK = None, headdim: Headdim = None, batch: Batch = None,
    tokens: Tokens = None, heads: Heads = None, hidden: Hidden = None, kv_heads: KvHeads = None,
    causal: CausalFlag = None, mode: OneMode = Mode.fwd, dtype: OneDtype = Dtype.fp16,
    ncu: Annotated[bool, typer.Option("--ncu", help="Nsight Compute counters of the provider's kernels "
                                       "(DRAM bytes, occupancy, tensor pipe, SM throughput, L2 hit rate).")] = False,
    trace: _opt(Path, "Write a torch.profiler Chrome trace to this file.", OUTPUT) = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the ncu report (default results/"
                       "profile/<UTC time>-<provider>-<mode>-s<seqlen>).", rich_help_panel=OUTPUT)] = None,
    trace_calls: Annotated[int, typer.Option(help="Calls recorded in the trace.")] = 5,
    ncu_calls: Annotated[int, typer.Option(help="Calls profiled by ncu (counters are per call).")] = 1,
):
    """One point in depth: timing, telemetry, Triton kernel resources, HBM model; --trace, --ncu.

    Shape defaults: seqlen 4096, head dim 128, the paper's 16k tokens and hidden size 2048, not causal."""
    from fa2bench.spec import config, iomodel
    from fa2bench.profiling import ncu as nsight
    from fa2bench.profiling import profile as prof
    try:
        spec = config.spec_from(_shape_options(seqlen=seqlen, seqlen_k=seqlen_k, headdim=headdim, batch=batch,
                                               tokens=tokens, heads=heads, hidden=hidden, kv_heads=kv_heads,
                                               causal=causal, mode=mode.value, dtype=dtype.value,
                                               provider=provider.value), prof.POINT_DEFAULTS)
        points = spec.points()
        if len(points) != 1:
            raise SpecError(f"`fa2bench profile` takes one point; these options give {len(points)} (use "
                            "profile-io or sweep for several)")
        if trace_calls < 1 or ncu_calls < 1:
            raise SpecError("--trace-calls and --ncu-calls must be at least 1")
    except SpecError as exc:
        fail(str(exc))
    point = points[0]
    ncu_path = _needs_gpu_and_ncu("profile", ncu)
    reason = providers.get(point.provider).unsupported_reason(point.shape, point.dtype, point.mode, "cuda")
    if reason:
        fail(f"{point.provider} cannot run {point.mode} {point.dtype} {point.shape.label()}: {reason}")
    from fa2bench.run.hardware import cuda_device_name

    console = out()
    console.print(f"[bold]profile[/] {point.provider} {point.mode} {point.dtype} {point.shape.label()} on "
                  f"{cuda_device_name()}", highlight=False)
    try:
        measured = prof.measure(point)
    except prof.PointFailed as exc:
        fail(str(exc))
    console.print(f"time {measured.timing.ms:.4f} ms (p20 {measured.timing.ms_p20:.4f}, p80 "
                  f"{measured.timing.ms_p80:.4f}), {measured.tflops:.1f} TFLOP/s", highlight=False)
    if measured.config:
        console.print(f"config: {measured.config}", highlight=False)
    tel = measured.telemetry
    if tel.get("power_w") is not None or tel.get("sm_clock_mhz") is not None:
        console.print("telemetry: " + ", ".join(f"{k}={display.num(v) if isinstance(v, float) else v}"
                                                for k, v in tel.items()), highlight=False)
    if measured.model_bytes is not None:
        name = point.provider
        console.print(f"HBM model ({iomodel.algorithm(name)}{' (assumed FA2-like)' if iomodel.assumed(name) else ''}"
                      f"): {display.gb(measured.model_bytes)} per call, "
                      f"{measured.model_bytes / (measured.timing.ms * 1e-3) / 1e12:.2f} TB/s at this time; "
                      f"compulsory {display.gb(measured.compulsory_bytes)}; footprint model "
                      f"{measured.footprint_mb:.1f} MiB", highlight=False)
    _print_resources(point.provider, prof.kernel_resources(point.provider), console)
    if trace is not None:
        _print_trace(prof.trace(measured.call, trace, trace_calls, measured.grads), trace, trace_calls, console)
    if ncu:
        folder = out_dir or prof.default_out(point)
        measured = measured.release()  # the child ncu profiles needs the GPU memory this process still caches
        try:
            result = nsight.run_ncu(point, folder, ncu=ncu_path, calls=ncu_calls)
        except nsight.ProfileError as exc:
            fail(str(exc))
        _print_ncu(nsight.by_kernel(result.kernels, result.calls), result.summary, console)
        if iomodel.modelled(point.provider) and result.summary.get("dram_bytes") is not None:
            model = iomodel.hbm_bytes(point.provider, point.shape, point.mode, point.dtype, config=result.config)
            console.print(f"DRAM measured {display.gb(result.summary['dram_bytes'])} per call vs model "
                          f"{display.gb(model)}", highlight=False)
        console.print(f"ncu report: {result.report} (CSV {result.csv}, log {result.log})", highlight=False)


def _print_resources(provider: str, rows: list[dict], console) -> None:
    if provider not in providers.triton_providers():
        console.print("kernel resources: read from Triton's compiled kernels, for fa2bench's own providers ("
                      f"{', '.join(providers.triton_providers())}) only", highlight=False)
    if not rows:
        return
    cols = ("kernel", "function", "tiles", "warps", "stages", "regs", "spills", "shared_bytes")
    console.print(display.table("Triton kernels (compiled variants in use)", cols,
                                [["-" if r[c] is None else r[c] for c in cols] for r in rows],
                                left=("kernel", "function", "tiles")))


def _print_trace(rows: list[dict], path: Path, calls: int, console) -> None:
    if not rows:
        console.print(f"trace: {path} (no GPU activity recorded)", highlight=False)
        return
    console.print(display.table(
        f"GPU activity over {calls} calls (trace: {path})", ("name", "kind", "per call", "mean us", "total us",
                                                              "share"),
        [(r["name"], r["kind"], f"{r['per_call']:g}", f"{r['mean_us']:.1f}", f"{r['total_us']:.1f}",
          f"{r['share_pct']:.1f}%") for r in rows], left=("name", "kind"), fold=True))


def _print_ncu(kernels: list[dict], total: dict, console) -> None:
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


@app.command("profile-io")
def profile_io(
    provider: Annotated[str, typer.Option(help="Providers, e.g. naive,fa1,fa2.")] = "naive,fa1,fa2",
    seqlen: Seqlen = None, headdim: Headdim = None, batch: Batch = None, tokens: Tokens = None,
    heads: Heads = None, hidden: Hidden = None, causal: CausalFlag = None, mode: OneMode = Mode.fwd,
    dtype: OneDtype = Dtype.fp16,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Study folder; points already ok there are "
                       "skipped (default results/io-<UTC time>-<gpu>).", rich_help_panel=OUTPUT)] = None,
    calls: Annotated[int, typer.Option(help="Calls profiled per point (counters are per call).")] = 1,
    timeout_s: Annotated[int, typer.Option(help="Limit for one point under ncu (seconds).")] = 540,
):
    """IO complexity, measured: DRAM bytes per call (ncu) against the HBM model across sequence lengths.

    Shape defaults: seqlen 1024..16384, head dim 128, the paper's 16k tokens and hidden size 2048."""
    from fa2bench import api
    from fa2bench.spec import config
    from fa2bench.run import hardware
    from fa2bench.profiling import iostudy
    from fa2bench.profiling import ncu as nsight
    from fa2bench.profiling import profile as prof
    try:
        spec = config.spec_from(_shape_options(seqlen=seqlen or prof.IO_SEQLENS, headdim=headdim, batch=batch,
                                               tokens=tokens, heads=heads, hidden=hidden, causal=causal,
                                               mode=mode.value, dtype=dtype.value, provider=provider),
                                prof.POINT_DEFAULTS)
        points = spec.points()
        if len({(p.provider, p.shape.seqlen_q) for p in points}) != len(points):
            raise SpecError("profile-io varies the sequence length: give one value for each other shape option")
        if calls < 1 or timeout_s < 1:
            raise SpecError("--calls and --timeout-s must be at least 1")
    except SpecError as exc:
        fail(str(exc))
    ncu_path = _needs_gpu_and_ncu("profile-io", True)
    folder = out_dir or api.default_out(hardware.cuda_device_name(), prefix="io-")
    console = out()
    lengths = ", ".join(map(str, spec.seqlens))
    console.print(f"[bold]IO study[/] {', '.join(spec.providers)} x seqlen {lengths}, {points[0].shape.label()} "
                  f"{mode.value} {dtype.value} -> {folder}", highlight=False)

    def on_point(point, row):
        status = row["status"] if row["status"] != "ok" else (
            f"ok: DRAM {display.gb(row['dram_bytes'])}, model {display.gb(row['model_bytes'])}")
        console.print(f"  {point.provider:>6} s{point.shape.seqlen_q:<6} {status} {row.get('error') or ''}",
                      highlight=False)

    try:
        frame = iostudy.io_study(points, folder, calls=calls, ncu_path=ncu_path, on_point=on_point,
                                 timeout_s=timeout_s)
    except nsight.ProfileError as exc:
        fail(str(exc))
    rows = [(r["provider"], r["seqlen_q"], f"{r['batch']} x {r['heads']}", display.gb(r["dram_bytes"]),
             display.gb(r["model_bytes"]), display.num(r["measured_over_model"], "x"),
             display.gb(r["compulsory_bytes"]), display.num(r["l2_hit_pct"], "%"), r["status"])
            for r in frame.to_dict("records")]
    console.print(display.table("DRAM bytes per call: measured (ncu) vs model",
                                ("provider", "seqlen", "batch x heads", "measured", "model", "measured/model",
                                 "compulsory", "L2 hit", "status"), rows, left=("provider", "status")))
    console.print(f"table: {folder / iostudy.STUDY_CSV}; figure: {folder / iostudy.STUDY_FIGURE}; reports: "
                  f"{folder / 'ncu'}", highlight=False)


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
    """Figures of a run: throughput bars, speedups, fraction of peak, peak memory, roofline."""
    from fa2bench import api

    formats = _formats(fmt)
    frame = _load(run_dir)
    folder = out_dir or Path(frame.attrs["run_dir"]) / "figures"
    try:
        plotted = api.plot_run(frame, folder, formats)
    except OSError as exc:
        fail(f"cannot write figures to {folder}: {exc.strerror or exc}")
    console = out()
    for kind, files in plotted.files.items():
        console.print(f"{kind}: " + ", ".join(str(f) for f in files), highlight=False)
    for kind, why in plotted.skipped.items():
        console.print(f"[yellow]{kind}: not drawn[/] ({why})", highlight=False)


@app.command("report")
def report_run(run_dir: RunDir, fmt: Formats = "png"):
    """RUN_DIR/report.md: metadata, headline table, speedups, failed points and the figures."""
    from fa2bench import api
    from fa2bench.run.results import ResultsError

    formats = _formats(fmt)
    try:
        path = api.report(run_dir, formats)
    except ResultsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the report in {run_dir}: {exc.strerror or exc}")
    out().print(f"report: {path}", highlight=False)


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
    _print_comparison(result, run_a, run_b, threshold, changes_only)
    if len(result.regressions):
        kinds = result.regressions["verdict"].value_counts()
        out(stderr=True).print(f"[bold red]{len(result.regressions)} regression(s):[/] "
                               f"{kinds.get('regression', 0)} slower beyond {threshold:.0%} and the measured noise, "
                               f"{kinds.get('broken', 0)} broken (ok in A, wrong/error/oom/timeout in B)",
                               highlight=False)
        raise typer.Exit(1)


def _print_comparison(result, run_a, run_b, threshold, changes_only) -> None:
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
                     shape_label(r), _timing(r, "a"), _timing(r, "b"), f"{r['ratio']:.3g}x" if r["ratio"] > 0 else "-"))
    cols = ("verdict", "provider", "mode", "dtype", "shape", "A ms (p20-p80)", "B ms (p20-p80)", "B/A")
    console = out()
    console.print(display.table(f"B/A time per point (B: {run_b}, A: {run_a}; threshold {threshold:.0%}; noise: "
                                f"spreads overlap or wider than {compare.MAX_SPREAD:.0%}, or CPU-interpreter runs)",
                                cols, rows, left=cols[:5], no_wrap=cols))
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    console.print(f"{len(result.table)} shared points: {counts}; {result.only_a} only in A, {result.only_b} only "
                  "in B", highlight=False)


def _timing(row: dict, side: str) -> str:
    """'median (p20-p80)' in ms of run ``side`` ("a" or "b"), or its status when it did not run."""
    if row[f"status_{side}"] != "ok":
        return row[f"status_{side}"]
    return (f"{display.ms(row[f'ms_{side}'])} ({display.ms(row[f'ms_p20_{side}'])}-"
            f"{display.ms(row[f'ms_p80_{side}'])})")


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


# --- e2e ------------------------------------------------------------------------------------------------

MODEL = "Model"


@app.command("ablate")
def ablate(
    seqlen: Seqlen = None, headdim: Headdim = None, batch: Batch = None, tokens: Tokens = None,
    heads: Heads = None, hidden: Hidden = None,
    causal: _opt(Causal, "Causal masking (default: both).", SHAPE) = None,
    dtype: _opt(str, "Dtypes (default fp16).", SHAPE) = None,
    mode: _opt(str, "Passes (default: fwd,bwd).", SHAPE) = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Results folder (default results/ablation-<UTC "
                       "time>-<gpu>).", rich_help_panel=OUTPUT)] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue the run in --out.",
                      rich_help_panel=OUTPUT)] = None,
    rep_ms: _opt(float, "Timing budget per point (ms, default 100).", RUN) = None,
):
    """The FA1 -> FA2 ablation ladder (`providers.ladder()`) over the paper's shapes at head dims 64 and 128,
    causal both, fwd and bwd: an ordinary results folder, one waterfall figure per (mode, head dim, causal) and
    RUN/ablation.md beside the paper's claims."""
    from fa2bench import api
    from fa2bench.read import ablation
    from fa2bench.spec import providers
    from fa2bench.run.results import ResultsError

    given = _shape_options(preset="paper", seqlen=seqlen, headdim=headdim, batch=batch, tokens=tokens, heads=heads,
                           hidden=hidden, causal=causal or "both", dtype=dtype or "fp16", mode=mode or "fwd,bwd",
                           provider=",".join(providers.ladder()), out=out_dir, resume=resume, rep_ms=rep_ms)
    try:
        plan = api.plan_sweep(**{k: getattr(v, "value", v) for k, v in given.items()})
    except SpecError as exc:
        fail(str(exc))
    if out_dir is None:  # name the folder for what it is
        plan = dataclasses.replace(plan, out=plan.out.with_name("ablation-" + plan.out.name))
    console = out()
    if plan.device == "cpu":
        _no_gpu(console, "Triton kernels run through the CPU interpreter")
    try:
        run = _run_with_progress(plan, console)
    except ResultsError as exc:
        fail(str(exc))
    try:
        path = ablation.write(run.path, run.frame)
        console.print(f"ablation: {path}", highlight=False)
    except ValueError as exc:
        warn(str(exc))
    if not run.complete:
        out(stderr=True).print(f"interrupted: finished points are saved in {run.path}; continue with "
                               f"--out {run.path} --resume", highlight=False)
        raise typer.Exit(130)


@app.command("e2e")
def e2e_run(
    model: Annotated[Optional[str], typer.Option(help="Models: " + ", ".join(E2E_MODELS) + " (default: gpt-1.3b on "
                     "a GPU, gpt-tiny without one).", rich_help_panel=MODEL)] = None,
    seqlen: _opt(str, "Context lengths, e.g. 2048,8192 (default: 2048,8192 on a GPU, 64 without "
                      "one).", MODEL) = None,
    provider: _opt(str, "Attention providers (see `fa2bench providers`); default: every provider available "
                        "here.", MODEL) = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Results folder (default results/e2e-<UTC "
                       "time>-<gpu>).", rich_help_panel=OUTPUT)] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue the run in --out, skipping "
                      "finished configurations.", rich_help_panel=OUTPUT)] = False,
    extend: Annotated[bool, typer.Option("--extend/--no-extend", help="With --resume: add configurations of "
                      "another spec to the run (meta.json records every spec).", rich_help_panel=OUTPUT)] = False,
    steps: Annotated[int, typer.Option(help="Timed optimizer steps per configuration.", rich_help_panel=RUN)] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed steps first (compilation, autotuning).",
                                        rich_help_panel=RUN)] = 2,
    micro_batch: _opt(int, "Sequences per micro-batch (default: the largest that fits, at most 16k "
                           "tokens).", RUN) = None,
    tokens_per_step: _opt(int, "Tokens per optimizer step, by gradient accumulation (default: one "
                               "micro-batch).", RUN) = None,
    checkpointing: Annotated[Optional[bool], typer.Option("--checkpointing/--no-checkpointing", help="Gradient "
                             "checkpointing per block (default: only where one sequence does not fit).",
                             rich_help_panel=RUN)] = None,
    shrink_on_oom: Annotated[bool, typer.Option(help="On out of memory, halve the micro-batch (same tokens per "
                             "step) and retry.", rich_help_panel=RUN)] = True,
    check: Annotated[bool, typer.Option(help="Check loss and gradients against a float64 model first.",
                                        rich_help_panel=RUN)] = True,
    peak_tflops: _opt(float, "Override this GPU's peak TFLOP/s.", RUN) = None,
    gpus: _opt(str, "Train data parallel on N GPUs (or 'all') under torchrun; TFLOP/s stay per GPU "
                    "(docs/e2e.md).", RUN) = None,
    parallel: _opt(_choices("Parallel", E2E_PARALLEL), "With --gpus: ddp (DistributedDataParallel, the "
                   "default) or fsdp (FSDP2).", RUN) = None,
):
    """GPT training throughput with each attention provider (the FlashAttention-2 paper's Table 1)."""
    from fa2bench.e2e import plan_e2e, run_e2e
    from fa2bench.run.results import ResultsError

    try:
        plan = plan_e2e(model, seqlen, provider, out=out_dir, resume=resume, extend=extend, peak_tflops=peak_tflops,
                        steps=steps, warmup=warmup, micro_batch=micro_batch, tokens_per_step=tokens_per_step,
                        checkpointing=checkpointing, shrink_on_oom=shrink_on_oom, check=check, gpus=gpus,
                        parallel=getattr(parallel, "value", parallel))
    except SpecError as exc:
        fail(str(exc))
    console = out()
    leader = plan.rank is None or plan.rank.is_leader  # under torchrun, rank 0 speaks for the run
    if plan.opts.device == "cpu" and plan.rank is None:
        _no_gpu(console, "the model trains on the CPU in fp32, Triton kernels through the interpreter")
    if leader and plan.gpus is None:  # a launcher leaves it to rank 0
        where = f" x {plan.spec.gpus} ({plan.spec.parallel})" if plan.spec.gpus else ""
        console.print(f"[bold]{len(plan.spec.configurations())} configurations[/] (model x seqlen x provider) on "
                      f"{plan.device_name or 'CPU'}{where} -> {plan.out}", highlight=False)

    def on_row(configuration, row):
        name = " ".join(map(str, configuration))
        if row is None:
            console.print(f"  {name}: done before (resume)", highlight=False)
        elif row["status"] == "ok":
            console.print(f"  {name}: {row['tflops']:.4g} TFLOP/s, {row['tokens_per_s']:.4g} tokens/s, step "
                          f"{row['ms']:.4g} ms, micro-batch {row['micro_batch']} x {row['grad_accum']}"
                          f"{', checkpointing' if row['checkpointing'] else ''}", highlight=False)
        else:
            console.print(f"  {name}: [red]{row['status']}[/] {row['error']}", highlight=False)

    try:
        if plan.gpus is not None:  # --gpus N: the same run on N ranks under torchrun, rank 0 reports
            from fa2bench.e2e import dp

            code = dp.launch_ranks(plan, echo=lambda line: console.print(line, markup=False, highlight=False))
            raise typer.Exit(code)  # rank 0 said where the results are
        elif plan.rank is not None:
            from fa2bench.e2e import dp

            dp.run_ranks(plan.spec, plan.out, resume=plan.resume, opts=plan.opts, on_row=on_row, extend=plan.extend)
            if not leader:
                return
        else:
            run_e2e(plan.spec, plan.out, resume=plan.resume, opts=plan.opts, on_row=on_row, extend=plan.extend)
    except ResultsError as exc:
        if not leader:  # rank 0 says it once
            raise typer.Exit(2)
        fail(str(exc))
    except KeyboardInterrupt:
        out(stderr=True).print(f"interrupted: finished configurations are saved in {plan.out}; continue with "
                               f"--out {plan.out} --resume", highlight=False)
        raise typer.Exit(130)
    console.print(f"results: {plan.out} (`fa2bench report {plan.out}` writes the Table-1 report and figure)",
                  highlight=False)
