"""The fa2bench command line: thin Typer commands over the library."""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import shutil
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Benchmark and profile attention kernels around FlashAttention-2.")
_WIDTH = shutil.get_terminal_size(fallback=(160, 40)).columns  # wide tables when output is not a terminal
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


class Preset(str, Enum):
    paper = "paper"
    quick = "quick"
    smoke = "smoke"


class CausalChoice(str, Enum):
    off = "off"
    on = "on"
    both = "both"


def fail(message: str, code: int = 2) -> None:
    """One clear line on stderr and a non-zero exit (2: usage error)."""
    err_console.print(f"[bold red]fa2bench: error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- sweep ----------------------------------------------------------------------------------------------


@app.command()
def sweep(
    preset: Annotated[Optional[Preset], typer.Option(help="Named sweep; options below override its fields. "
                      "Default: quick on a GPU, smoke without one.")] = None,
    seqlen: Annotated[Optional[str], typer.Option(help="Sequence lengths: 512,1024 or 512..16384 (doubling).")] = None,
    seqlen_k: Annotated[Optional[str], typer.Option(help="Key/value lengths for cross-attention "
                        "(default: same as --seqlen).")] = None,
    headdim: Annotated[Optional[str], typer.Option(help="Head dimensions, e.g. 64,128.")] = None,
    batch: Annotated[Optional[str], typer.Option(help="Batch sizes (instead of --tokens).")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="Tokens per batch: batch = tokens // seqlen.")] = None,
    heads: Annotated[Optional[str], typer.Option(help="Query heads (instead of --hidden).")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="Hidden size: heads = hidden // headdim.")] = None,
    kv_heads: Annotated[Optional[str], typer.Option(help="Key/value heads for GQA/MQA (default: = heads).")] = None,
    causal: Annotated[Optional[CausalChoice], typer.Option(help="Causal masking.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="fp16,bf16,fp32.")] = None,
    mode: Annotated[Optional[str], typer.Option(help="fwd,bwd,fwd_bwd.")] = None,
    provider: Annotated[Optional[str], typer.Option(help="Providers (see `fa2bench providers`); "
                        "default: every provider available here.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Results folder (default results/<UTC time>-<gpu>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished points.")] = False,
    check: Annotated[bool, typer.Option(help="Check every point against the reference before timing.")] = True,
    warmup_ms: Annotated[float, typer.Option(help="Warm-up budget per point (ms).")] = 25.0,
    rep_ms: Annotated[float, typer.Option(help="Timing budget per point (ms).")] = 100.0,
    peak_tflops: Annotated[Optional[float], typer.Option(help="Override this GPU's peak TFLOP/s.")] = None,
    ceilings: Annotated[bool, typer.Option(help="Measure matmul and copy ceilings into meta.json (GPU).")] = True,
    gpus: Annotated[Optional[str], typer.Option(help="Shard the points over N GPUs (or 'all') under torchrun; "
                    "one merged results folder (docs/multigpu.md).")] = None,
):
    """Sweep shapes x providers x modes x dtypes; check, time and write one row per point."""
    from fa2bench import hardware, providers, runner
    from fa2bench.flops import MODES
    from fa2bench.presets import DTYPES, SpecError, SweepSpec, parse_ints, parse_names
    from fa2bench.results import ResultsError, RunWriter, read_meta, write_meta

    gpu = _has_cuda()
    device = "cuda" if gpu else "cpu"
    try:
        spec = SweepSpec.from_name((preset.value if preset else None) or ("quick" if gpu else "smoke"))
        ints = {name: parse_ints(value, opt) for name, value, opt in (
            ("seqlens", seqlen, "seqlen"), ("seqlens_k", seqlen_k, "seqlen-k"), ("headdims", headdim, "headdim"),
            ("batch", batch, "batch"), ("heads", heads, "heads"), ("kv_heads", kv_heads, "kv-heads"))
            if value is not None}
        # --batch and --tokens (like --heads and --hidden) replace each other
        if batch is not None:
            spec = dataclasses.replace(spec, tokens=None)
        if tokens is not None:
            spec = dataclasses.replace(spec, batch=(), tokens=tokens)
        if heads is not None:
            spec = dataclasses.replace(spec, hidden=None)
        if hidden is not None:
            spec = dataclasses.replace(spec, heads=(), hidden=hidden)
        spec = spec.replace(
            **ints,
            causal={"off": (False,), "on": (True,), "both": (False, True)}[causal.value] if causal else None,
            dtypes=parse_names(dtype, "dtype", DTYPES) if dtype else None,
            modes=parse_names(mode, "mode", MODES) if mode else None,
            providers=parse_names(provider, "provider", providers.names()) if provider else None,
        )
        spec.validate()
        if peak_tflops is not None and not (peak_tflops > 0 and math.isfinite(peak_tflops)):
            raise SpecError("--peak-tflops must be a positive number")
        if warmup_ms < 0 or rep_ms <= 0:
            raise SpecError("--warmup-ms must be >= 0 and --rep-ms > 0")
        chosen = spec.providers or tuple(n for n in providers.names()
                                         if providers.get(n).availability(device) is None)
        for d in spec.headdims:
            if not any(d <= providers.get(n).max_headdim for n in chosen):
                raise SpecError(f"head dim {d} is supported by none of the chosen providers "
                                f"({', '.join(chosen)})")
    except SpecError as exc:
        fail(str(exc))
    if resume and out is None:
        fail("--resume needs --out DIR (the run to continue)")

    unavailable = {n: providers.get(n).availability(device) for n in chosen}
    for name, why in unavailable.items():
        if why:
            err_console.print(f"[yellow]note:[/] provider {name} is unavailable here ({why}); "
                              "its points are recorded as unsupported")
    if not gpu:
        console.print(Panel("No CUDA GPU: Triton kernels run through the CPU interpreter and PyTorch on the "
                            "CPU.\nThese timings are NOT GPU performance; they only prove the pipeline works.",
                            title="NO GPU", style="bold red"))

    device_name = hardware.cuda_device_name()
    peaks = {d: hardware.device_peak(device_name, d, peak_tflops) for d in spec.dtypes}
    out = out or Path("results") / f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{_slug(device_name)}"
    opts = runner.RunOptions(device=device, check=check, warmup_ms=warmup_ms, rep_ms=rep_ms,
                             peak_tflops=peak_tflops)
    if gpus is not None or _under_torchrun():  # sharded over GPUs: fa2bench.distributed
        _sharded_sweep(spec, chosen, opts, peaks, out, resume, gpus)
        return
    try:
        writer = RunWriter(out, resume=resume)
        meta = runner.collect_meta(spec, chosen, opts, peaks)
        earlier = read_meta(out) if resume else {}
        if earlier:  # a resumed run keeps its first metadata and lists each continuation
            meta = {**earlier, "resumed": earlier.get("resumed", []) + [
                {k: meta[k] for k in ("started_utc", "argv", "git", "versions", "gpus")}]}
        elif gpu and ceilings:
            meta["ceilings"] = hardware.measure_ceilings()  # achievable matmul and copy rates, for rooflines
        write_meta(out, meta)
    except ResultsError as exc:
        fail(str(exc))
    points = spec.points(chosen)
    peak_note = next(iter(peaks.values()))
    console.print(f"[bold]{len(points)} points[/] ({len(writer.done)} already done) on "
                  f"{device_name or 'CPU (Triton interpreter)'} -> {out}")
    console.print(f"device peak: {peak_note.tflops or 'unknown'} TFLOP/s ({peak_note.source})", highlight=False)

    interrupted = False
    try:
        _run_with_progress(points, writer, opts, {d: p.tflops for d, p in peaks.items()})
    except KeyboardInterrupt:
        interrupted = True
    frame = writer.finish() if writer.csv_path.exists() else None
    meta["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    meta["complete"] = not interrupted
    write_meta(out, meta)
    if frame is not None:
        _print_summary(frame)
        _warn_throttled(frame)
    if interrupted:
        err_console.print(f"interrupted: finished points are saved in {out}; continue with "
                          f"--out {out} --resume")
        raise typer.Exit(130)
    console.print(f"results: {out}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ring(
    ctx: typer.Context,
    gpus: Annotated[str, typer.Option(help="GPU counts, one torchrun job each: 1,2,4.")] = "1,2,4",
    out: Annotated[Path, typer.Option(help="Results folder (ring.csv, scaling.csv, scaling.png).")] = Path(
        "results/ring"),
):
    """Context-parallel attention over GPUs: ring-fa2 against all-gather K/V and PyTorch's context_parallel.

    Other options go to `python -m fa2bench.distributed.ringbench run` (--seqlen, --heads, --kv-heads,
    --headdim, --dtype, --causal, --mode, --method, --reps); see docs/multigpu.md."""
    import torch

    from fa2bench.distributed import ringbench
    from fa2bench.presets import SpecError

    try:
        code = ringbench.scaling_run(gpus, out, list(ctx.args), torch.cuda.device_count(), echo=console.print)
    except SpecError as exc:
        fail(str(exc))
    if code:
        raise typer.Exit(code)


def _under_torchrun() -> bool:
    from fa2bench.distributed import launch

    return launch.under_torchrun()


def _sharded_sweep(spec, chosen, opts, peaks, out, resume, gpus) -> None:
    """--gpus N: launch torchrun and merge; under torchrun: run this rank's share (rank 0 merges)."""
    import sys

    import torch

    from fa2bench import runner
    from fa2bench.distributed import launch, shard, sweep as dsweep

    try:
        if not _under_torchrun():
            code = dsweep.launch_and_merge(gpus, out, sys.argv[1:], torch.cuda.device_count(), echo=console.print)
        else:
            report = dsweep.rank_main(
                spec.points(chosen), out, resume, lambda: runner.collect_meta(spec, chosen, opts, peaks),
                lambda p: runner.run_point(p, opts, {d: pk.tflops for d, pk in peaks.items()}))
            if report is not None:  # rank 0: the merged run's summary
                from fa2bench.results import load_run

                _print_summary(load_run(out))
                console.print(shard.describe(report, out), highlight=False)
            code = 1 if report is not None and report.missing else 0
    except (launch.LaunchError, shard.ShardError) as exc:
        fail(str(exc))
    if code:
        raise typer.Exit(code)


def _slug(device_name: str | None) -> str:
    if not device_name:
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower().replace("nvidia", "")).strip("-")


def _run_with_progress(points, writer, opts, device_peaks) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from fa2bench import runner

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("sweep", total=len(points))

        def on_point(point, row):
            progress.advance(task)
            progress.update(task, description=f"{point.provider:>14} {point.mode:>7} {point.shape.label()}")
            if row and row["status"] in ("wrong", "error"):
                progress.console.print(f"[red]{row['status']}[/] {point.provider} {point.mode} {point.dtype} "
                                       f"{point.shape.label()}: {row['error']}", highlight=False)

        runner.run_sweep(points, writer, opts, device_peaks, on_point=on_point)


def _print_summary(frame) -> None:
    from fa2bench.summary import headline

    table = Table(title="Summary (best point per provider and mode)")
    for col in ("provider", "mode", "dtype", "ok/points", "best TFLOP/s", "% A100 peak", "% device peak",
                "x naive"):
        table.add_column(col, justify="left" if col in ("provider", "mode", "dtype") else "right",
                         no_wrap=col in ("provider", "mode"))
    for r in headline(frame).to_dict("records"):
        table.add_row(r["provider"], r["mode"], r["dtype"], f"{r['ok']}/{r['points']}", _num(r["best_tflops"]),
                      _num(r["pct_a100_peak"], "%"), _num(r["pct_device_peak"], "%"), _num(r["speedup_vs_naive"], "x"))
    console.print(table)
    counts = frame["status"].value_counts().to_dict()
    console.print("statuses: " + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)


def _num(value, suffix: str = "") -> str:
    try:
        if value is None or math.isnan(float(value)):
            return "-"
    except (TypeError, ValueError):
        return "-"
    return f"{float(value):.1f}{suffix}" if float(value) >= 10 else f"{float(value):.2f}{suffix}"


# --- providers, info -----------------------------------------------------------------------------------


@app.command("providers")
def list_providers():
    """Every provider, whether it is available here, and why not."""
    from fa2bench import providers

    device = "cuda" if _has_cuda() else "cpu"
    table = Table(title=f"Providers (device: {device})")
    for col in ("name", "kind", "available", "dtypes", "max head dim", "description"):
        table.add_column(col, no_wrap=col in ("name", "kind"))
    for name in providers.names():
        p = providers.get(name)
        why = p.availability(device)
        table.add_row(name, p.kind, "yes" if why is None else f"no: {why}", ",".join(sorted(p.dtypes)),
                      str(p.max_headdim) if p.max_headdim < 1 << 20 else "any", p.description)
    console.print(table)


@app.command()
def info(
    measure: Annotated[bool, typer.Option(help="Time a large matmul and a large copy: achievable ceilings.")] = False,
    peak_tflops: Annotated[Optional[float], typer.Option(help="Override this GPU's peak TFLOP/s.")] = None,
):
    """GPU(s), driver, versions, and the peak fa2bench uses for this GPU."""
    from fa2bench import hardware

    versions = hardware.software_versions()
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), highlight=False)
    gpus = hardware.gpu_info()
    if not gpus:
        console.print("No CUDA GPU found. `fa2bench sweep` will run the smoke preset through Triton's CPU "
                      "interpreter; its timings are not GPU performance.")
        return
    for g in gpus:
        console.print(", ".join(f"{k}={v}" for k, v in g.items()), highlight=False)
    for d in ("fp16", "bf16", "fp32"):
        peak = hardware.device_peak(gpus[0]["name"], d, peak_tflops)
        console.print(f"peak {d}: {peak.tflops or 'unknown'} TFLOP/s, {peak.matched or ''} ({peak.source})",
                      highlight=False)
    console.print(f"A100 yardstick: {hardware.A100_PEAK_TFLOPS} TFLOP/s fp16/bf16")
    if measure:
        for k, v in hardware.measure_ceilings().items():
            console.print(f"measured {k}: {v:.1f}", highlight=False)


# --- profile, profile-io (fa2bench/profile.py) -----------------------------------------------------------


def _warn_throttled(frame) -> None:
    from fa2bench.telemetry import throttle_summary

    note = throttle_summary(frame)
    if note:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False)


def _gb(value) -> str:
    try:
        return "-" if value is None or math.isnan(float(value)) else f"{float(value) / 1e9:.3f} GB"
    except (TypeError, ValueError):
        return "-"


def _point_options(provider, mode, dtype):
    from fa2bench import providers
    from fa2bench.flops import MODES
    from fa2bench.presets import DTYPES, SpecError

    if provider not in providers.names():
        raise SpecError(f"--provider: unknown {provider!r}; choose from {', '.join(providers.names())}")
    if mode not in MODES:
        raise SpecError(f"--mode: unknown {mode!r}; choose from {', '.join(MODES)}")
    if dtype not in DTYPES:
        raise SpecError(f"--dtype: unknown {dtype!r}; choose from {', '.join(DTYPES)}")


def _needs_gpu_and_ncu(command: str, want_ncu: bool) -> str | None:
    """Fail with one line without a GPU, or without ncu when it is wanted; the ncu path otherwise."""
    from fa2bench import profile as prof

    if not _has_cuda():
        fail(f"`fa2bench {command}` needs a CUDA GPU and torch sees none (the Triton interpreter cannot be "
             "profiled)")
    found = prof.find_ncu() if want_ncu else None
    if want_ncu and not found:
        fail("Nsight Compute's `ncu` is not on PATH (needed for --ncu and profile-io); install Nsight Compute "
             "or add its folder to PATH")
    return found


@app.command("profile")
def profile_point(
    provider: Annotated[str, typer.Option(help="Provider to profile (see `fa2bench providers`).")],
    seqlen: Annotated[int, typer.Option(help="Query sequence length.")] = 4096,
    headdim: Annotated[int, typer.Option(help="Head dimension.")] = 128,
    causal: Annotated[bool, typer.Option(help="Causal masking.")] = False,
    mode: Annotated[str, typer.Option(help="fwd, bwd or fwd_bwd.")] = "fwd",
    dtype: Annotated[str, typer.Option(help="fp16, bf16 or fp32.")] = "fp16",
    seqlen_k: Annotated[Optional[int], typer.Option(help="Key/value length (default: --seqlen).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Batch size (instead of --tokens).")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="batch = tokens // seqlen (default 16384).")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Query heads (instead of --hidden).")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="heads = hidden // headdim (default 2048).")] = None,
    kv_heads: Annotated[Optional[int], typer.Option(help="Key/value heads (default: = heads).")] = None,
    ncu: Annotated[bool, typer.Option("--ncu", help="Nsight Compute counters of the provider's kernels "
                                       "(DRAM bytes, occupancy, tensor pipe, SM throughput, L2 hit rate).")] = False,
    trace: Annotated[Optional[Path], typer.Option(help="Write a torch.profiler Chrome trace to this file.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the ncu report (default "
                                                "results/profile/<UTC time>-<provider>-<mode>-s<seqlen>).")] = None,
    trace_calls: Annotated[int, typer.Option(help="Calls recorded in the trace.")] = 5,
    ncu_calls: Annotated[int, typer.Option(help="Calls profiled by ncu (counters are per call).")] = 1,
):
    """One point in depth: timing, telemetry, Triton kernel resources, HBM model; --trace, --ncu."""
    from fa2bench import iomodel, providers, telemetry, timing
    from fa2bench import profile as prof
    from fa2bench.flops import attention_flops, tflops
    from fa2bench.presets import Point, SpecError

    try:
        _point_options(provider, mode, dtype)
        shape = prof.resolve_shape(seqlen, headdim, causal, seqlen_k=seqlen_k, batch=batch, tokens=tokens,
                                   heads=heads, hidden=hidden, kv_heads=kv_heads)
        if trace_calls < 1 or ncu_calls < 1:
            raise SpecError("--trace-calls and --ncu-calls must be at least 1")
    except SpecError as exc:
        fail(str(exc))
    ncu_path = _needs_gpu_and_ncu("profile", ncu)
    reason = providers.get(provider).unsupported_reason(shape, dtype, mode, "cuda")
    if reason:
        fail(f"{provider} cannot run {mode} {dtype} {shape.label()}: {reason}")
    point = Point(provider, mode, dtype, shape)
    from fa2bench.hardware import cuda_device_name

    console.print(f"[bold]profile[/] {provider} {mode} {dtype} {shape.label()} on {cuda_device_name()}",
                  highlight=False)
    try:
        call, grads = prof.prepare(point)
        measured = timing.bench(call, grads)
    except Exception as exc:  # the provider itself failed: one line, like a sweep row's error
        fail(f"{provider} failed on this point: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")
    flops = attention_flops(shape.batch, shape.heads, shape.seqlen_q, shape.seqlen_k, shape.headdim, causal, mode)
    config = providers.get(provider).config()
    console.print(f"time {measured.ms:.4f} ms (p20 {measured.ms_p20:.4f}, p80 {measured.ms_p80:.4f}), "
                  f"{tflops(flops, measured.ms):.1f} TFLOP/s", highlight=False)
    if config:
        console.print(f"config: {config}", highlight=False)
    tel = telemetry.measure(call, measured.ms, flops, grad_to_none=grads)
    if tel.get("power_w") is not None or tel.get("sm_clock_mhz") is not None:
        console.print("telemetry: " + ", ".join(f"{k}={_num(v) if isinstance(v, float) else v}"
                                                for k, v in tel.items()), highlight=False)
    model = None
    if provider in iomodel.ALGORITHMS:
        model = iomodel.hbm_bytes(provider, shape, mode, dtype, config=config)
        assumed = " (assumed FA2-like)" if provider in iomodel.ASSUMED else ""
        console.print(f"HBM model ({iomodel.algorithm(provider)}{assumed}): {_gb(model)} per call, "
                      f"{model / (measured.ms * 1e-3) / 1e12:.2f} TB/s at this time; compulsory "
                      f"{_gb(iomodel.compulsory_bytes(shape, mode, dtype))}; footprint model "
                      f"{iomodel.theoretical_footprint_mb(provider, shape, mode, dtype):.1f} MiB", highlight=False)

    _print_resources(provider, prof.kernel_resources(provider))
    if trace is not None:
        _print_trace(prof.trace(call, trace, trace_calls, grads), trace, trace_calls)

    if ncu:
        folder = out or Path("results") / "profile" / (
            f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{provider}-{mode}-s{seqlen}")
        del call, grads
        prof.release_memory()  # the child ncu profiles needs the GPU memory this process still caches
        try:
            result = prof.run_ncu(point, folder, ncu=ncu_path, calls=ncu_calls)
        except prof.ProfileError as exc:
            fail(str(exc))
        _print_ncu(prof.by_kernel(result.kernels, result.calls), result.summary)
        if model and result.summary.get("dram_bytes") is not None:
            console.print(f"DRAM measured {_gb(result.summary['dram_bytes'])} per call vs model "
                          f"{_gb(iomodel.hbm_bytes(provider, shape, mode, dtype, config=result.config))}",
                          highlight=False)
        console.print(f"ncu report: {result.report} (CSV {result.csv}, log {result.log})", highlight=False)


def _print_resources(provider: str, rows: list[dict]) -> None:
    from fa2bench import providers

    if provider not in providers.triton_providers():
        console.print("kernel resources: read from Triton's compiled kernels, for fa2bench's own providers ("
                      f"{', '.join(providers.triton_providers())}) only", highlight=False)
    if not rows:
        return
    cols = ("kernel", "function", "tiles", "warps", "stages", "regs", "spills", "shared_bytes")
    table = Table(title="Triton kernels (compiled variants in use)")
    for col in cols:
        table.add_column(col, justify="left" if col in ("kernel", "function", "tiles") else "right")
    for r in rows:
        table.add_row(*("-" if r[c] is None else str(r[c]) for c in cols))
    console.print(table)


def _print_trace(rows: list[dict], path: Path, calls: int) -> None:
    if not rows:
        console.print(f"trace: {path} (no GPU activity recorded)", highlight=False)
        return
    table = Table(title=f"GPU activity over {calls} calls (trace: {path})")
    for col in ("name", "kind", "per call", "mean us", "total us", "share"):
        table.add_column(col, justify="left" if col in ("name", "kind") else "right", overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["kind"], f"{r['per_call']:g}", f"{r['mean_us']:.1f}", f"{r['total_us']:.1f}",
                      f"{r['share_pct']:.1f}%")
    console.print(table)


def _print_ncu(kernels: list[dict], total: dict) -> None:
    table = Table(title="Nsight Compute, per call")
    cols = ("kernel", "launches", "time us", "DRAM read", "DRAM write", "occupancy", "tensor pipe", "SM thru",
            "L2 hit")
    for col in cols:
        table.add_column(col, justify="left" if col == "kernel" else "right", overflow="fold")

    def row(name, m):
        time_us = m.get("duration_ns") / 1e3 if m.get("duration_ns") is not None else None
        return (name, f"{m['kernels_per_call']:g}", _num(time_us), _gb(m.get("dram_read_bytes")),
                _gb(m.get("dram_write_bytes")), _num(m.get("occupancy_pct"), "%"), _num(m.get("tensor_pct"), "%"),
                _num(m.get("sm_pct"), "%"), _num(m.get("l2_hit_pct"), "%"))

    for k in kernels:
        table.add_row(*row(k["kernel"], k))
    table.add_row(*row("[bold]all kernels[/]", total))
    console.print(table)


@app.command("profile-io")
def profile_io(
    provider: Annotated[str, typer.Option(help="Providers, e.g. naive,fa1,fa2.")] = "naive,fa1,fa2",
    seqlen: Annotated[str, typer.Option(help="Sequence lengths: 1024..16384 (doubling) or 1024,2048.")] = "1024..16384",
    headdim: Annotated[int, typer.Option(help="Head dimension.")] = 128,
    causal: Annotated[bool, typer.Option(help="Causal masking.")] = False,
    mode: Annotated[str, typer.Option(help="fwd, bwd or fwd_bwd.")] = "fwd",
    dtype: Annotated[str, typer.Option(help="fp16, bf16 or fp32.")] = "fp16",
    batch: Annotated[Optional[int], typer.Option(help="Batch size (instead of --tokens).")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="batch = tokens // seqlen (default 16384).")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Query heads (instead of --hidden).")] = None,
    hidden: Annotated[Optional[int], typer.Option(help="heads = hidden // headdim (default 2048).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Study folder; points already ok there are skipped "
                                                "(default results/io-<UTC time>-<gpu>).")] = None,
    calls: Annotated[int, typer.Option(help="Calls profiled per point (counters are per call).")] = 1,
    timeout_s: Annotated[int, typer.Option(help="Limit for one point under ncu (seconds).")] = 540,
):
    """IO complexity, measured: DRAM bytes per call (ncu) against the HBM model across sequence lengths."""
    from fa2bench import hardware, providers
    from fa2bench import profile as prof
    from fa2bench.presets import SpecError, parse_ints, parse_names

    try:
        names = parse_names(provider, "provider", providers.names())
        lengths = parse_ints(seqlen, "seqlen")
        for name in names:
            _point_options(name, mode, dtype)
        for n in lengths:
            prof.resolve_shape(n, headdim, causal, batch=batch, tokens=tokens, heads=heads, hidden=hidden)
        if calls < 1 or timeout_s < 1:
            raise SpecError("--calls and --timeout-s must be at least 1")
    except SpecError as exc:
        fail(str(exc))
    ncu_path = _needs_gpu_and_ncu("profile-io", True)
    out = out or Path("results") / (f"io-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-"
                                     f"{_slug(hardware.cuda_device_name())}")
    console.print(f"[bold]IO study[/] {', '.join(names)} x seqlen {', '.join(map(str, lengths))}, d={headdim}, "
                  f"{mode} {dtype}{' causal' if causal else ''} -> {out}", highlight=False)

    def on_point(point, row):
        status = row["status"] if row["status"] != "ok" else (
            f"ok: DRAM {_gb(row['dram_bytes'])}, model {_gb(row['model_bytes'])}")
        console.print(f"  {point.provider:>6} s{point.shape.seqlen_q:<6} {status} {row.get('error') or ''}",
                      highlight=False)

    try:
        frame = prof.io_study(names, lengths, headdim, out, causal=causal, mode=mode, dtype=dtype, batch=batch,
                              tokens=tokens, heads=heads, hidden=hidden, calls=calls, ncu=ncu_path,
                              on_point=on_point, timeout_s=timeout_s)
    except prof.ProfileError as exc:
        fail(str(exc))
    table = Table(title="DRAM bytes per call: measured (ncu) vs model")
    for col in ("provider", "seqlen", "batch x heads", "measured", "model", "measured/model", "compulsory",
                "L2 hit", "status"):
        table.add_column(col, justify="left" if col in ("provider", "status") else "right")
    for r in frame.to_dict("records"):
        table.add_row(str(r["provider"]), str(r["seqlen_q"]), f"{r['batch']} x {r['heads']}", _gb(r["dram_bytes"]),
                      _gb(r["model_bytes"]), _num(r["measured_over_model"], "x"), _gb(r["compulsory_bytes"]),
                      _num(r["l2_hit_pct"], "%"), str(r["status"]))
    console.print(table)
    console.print(f"table: {out / prof.STUDY_CSV}; figure: {out / prof.STUDY_FIGURE}; reports: {out / 'ncu'}",
                  highlight=False)


# --- plot, report, compare (fa2bench/plots.py, report.py, compare.py) ------------------------------------


def _formats(text: str) -> tuple[str, ...]:
    from fa2bench.plots import parse_formats

    try:
        return parse_formats(text)
    except ValueError as exc:
        fail(str(exc))


def _load(run_dir: Path):
    from fa2bench.results import ResultsError, load_run

    try:
        return load_run(run_dir)
    except ResultsError as exc:
        fail(str(exc))


@app.command("plot")
def plot_run(
    run_dir: Annotated[Path, typer.Argument(help="A results folder (written by `fa2bench sweep`).")],
    out: Annotated[Optional[Path], typer.Option(help="Folder for the figures (default RUN_DIR/figures).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Comma-separated formats: png, svg, pdf.")] = "png",
):
    """Figures of a run: throughput bars, speedups, fraction of peak, peak memory, roofline."""
    from fa2bench import plots

    formats = _formats(fmt)
    frame = _load(run_dir)
    out = out or Path(frame.attrs["run_dir"]) / "figures"
    try:
        plotted = plots.plot_run(frame, out, formats)
    except OSError as exc:
        fail(f"cannot write figures to {out}: {exc.strerror or exc}")
    for kind, files in plotted.files.items():
        console.print(f"{kind}: " + ", ".join(str(f) for f in files), highlight=False)
    for kind, why in plotted.skipped.items():
        console.print(f"[yellow]{kind}: not drawn[/] ({why})", highlight=False)


@app.command("report")
def report_run(
    run_dir: Annotated[Path, typer.Argument(help="A results folder (written by `fa2bench sweep`).")],
    fmt: Annotated[str, typer.Option("--format", help="Figure formats (the report shows the first).")] = "png",
):
    """RUN_DIR/report.md: metadata, headline table, speedups, failed points and the figures."""
    from fa2bench.report import write_report
    from fa2bench.results import ResultsError

    formats = _formats(fmt)
    try:
        path = write_report(run_dir, formats)
    except ResultsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the report in {run_dir}: {exc.strerror or exc}")
    console.print(f"report: {path}", highlight=False)


@app.command("compare")
def compare_runs(
    run_a: Annotated[Path, typer.Argument(help="Baseline results folder.")],
    run_b: Annotated[Path, typer.Argument(help="Candidate results folder.")],
    threshold: Annotated[float, typer.Option(help="Slowdown (B/A - 1) that counts as a regression when it also "
                                             "exceeds the measured noise.")] = 0.05,
    changes_only: Annotated[bool, typer.Option(help="List only points whose verdict is not `same`.")] = False,
):
    """Per-point time ratios of RUN_B over RUN_A; exit 1 if B regressed beyond threshold and noise."""
    from fa2bench import compare
    from fa2bench.report import shape_label

    if not threshold >= 0:
        fail("--threshold must be >= 0")
    a, b = _load(run_a), _load(run_b)
    result = compare.compare(a, b, threshold)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if result.table.empty:
        fail(f"{run_a} and {run_b} share no points (provider, mode, dtype, shape): nothing to compare")
    styles = {"broken": "bold red", "regression": "bold red", "noise": "yellow", "faster": "green",
              "fixed": "green", "not ok": "dim"}
    table = Table(title=f"B/A time per point (B: {run_b}, A: {run_a}; threshold {threshold:.0%}, noise: "
                        "B p20 > A p80)")
    for col in ("verdict", "provider", "mode", "dtype", "shape", "A ms (p20-p80)", "B ms (p20-p80)", "B/A"):
        table.add_column(col, justify="right" if col in ("B/A",) or "ms" in col else "left", no_wrap=True)
    for r in result.table.to_dict("records"):
        if changes_only and r["verdict"] == "same":
            continue
        style = styles.get(r["verdict"], "")
        table.add_row(f"[{style}]{r['verdict']}[/]" if style else r["verdict"], r["provider"], r["mode"], r["dtype"],
                      shape_label(r), _timing(r, "a"), _timing(r, "b"),
                      f"{r['ratio']:.3g}x" if r["ratio"] > 0 else "-")
    console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    console.print(f"{len(result.table)} shared points: {counts}; {result.only_a} only in A, {result.only_b} only "
                  "in B", highlight=False)
    if len(result.regressions):
        kinds = result.regressions["verdict"].value_counts()
        err_console.print(f"[bold red]{len(result.regressions)} regression(s):[/] {kinds.get('regression', 0)} "
                          f"slower beyond {threshold:.0%} and the measured noise, {kinds.get('broken', 0)} broken "
                          "(ok in A, wrong/error/oom in B)", highlight=False)
        raise typer.Exit(1)


def _timing(row: dict, side: str) -> str:
    """'median (p20-p80)' in ms of run ``side`` ("a" or "b"), or its status when it did not run."""
    if row[f"status_{side}"] != "ok":
        return row[f"status_{side}"]
    return f"{_ms(row[f'ms_{side}'])} ({_ms(row[f'ms_p20_{side}'])}-{_ms(row[f'ms_p80_{side}'])})"


def _ms(value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{v:.4g}"
