"""`fa2bench profile` and `fa2bench profile-io`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fa2bench.cli.common import (
    app, ProviderName, Mode, Dtype, OUTPUT, option, Seqlen, SeqlenK, Headdim, Batch, Tokens, Heads, Hidden,
    KvHeads, CausalOption, OneMode, OneDtype, shape_options, out, fail, has_cuda, SpecError, display, providers)
from fa2bench.cli.render import print_resources, print_trace, print_ncu


# --- profile, profile-io -------------------------------------------------------------------------------


def _needs_gpu_and_ncu(command: str, want_ncu: bool) -> str | None:
    """Fail with one line without a GPU, or without ncu when it is wanted; the ncu path otherwise."""
    from fa2bench.profiling import ncu
    if not has_cuda():
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
    causal: CausalOption = None, mode: OneMode = Mode.fwd, dtype: OneDtype = Dtype.fp16,
    variant: Annotated[Optional[str], typer.Option(help="Attention variant, e.g. docs, window4096+softcap50 "
                                                   "(`fa2bench sweep --help`).")] = None,
    ncu: Annotated[bool, typer.Option("--ncu", help="Nsight Compute counters of the provider's kernels "
                                       "(DRAM bytes, occupancy, tensor pipe, SM throughput, L2 hit rate).")] = False,
    trace: option(Path, "Write a torch.profiler Chrome trace to this file.", OUTPUT) = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the ncu report (default results/"
                       "profile/<UTC time>-<provider>-<mode>-s<seqlen>).", rich_help_panel=OUTPUT)] = None,
    trace_calls: Annotated[int, typer.Option(help="Calls recorded in the trace.")] = 5,
    ncu_calls: Annotated[int, typer.Option(help="Calls profiled by ncu (counters are per call).")] = 1,
):
    """One point in depth: timing, telemetry, Triton kernel resources, HBM model; --trace, --ncu.

    Shape defaults: seqlen 4096, head dim 128, the paper's 16k tokens and hidden size 2048, not causal."""
    from fa2bench.core import iomodel
    from fa2bench.profiling import ncu as nsight
    from fa2bench.profiling import profile as prof
    try:
        point = prof.plan_point(**shape_options(seqlen=seqlen, seqlen_k=seqlen_k, headdim=headdim, batch=batch,
                                                tokens=tokens, heads=heads, hidden=hidden, kv_heads=kv_heads,
                                                causal=getattr(causal, "value", None), mode=mode.value,
                                                dtype=dtype.value, provider=provider.value, variant=variant))
        if trace_calls < 1 or ncu_calls < 1:
            raise SpecError("--trace-calls and --ncu-calls must be at least 1")
    except SpecError as exc:
        fail(str(exc))
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
    print_resources(point.provider, prof.kernel_resources(point.provider), console)
    if trace is not None:
        print_trace(prof.trace(measured.call, trace, trace_calls, measured.grads), trace, trace_calls, console)
    if ncu:
        folder = out_dir or prof.default_out(point)
        measured = measured.release()  # the child ncu profiles needs the GPU memory this process still caches
        try:
            result = nsight.run_ncu(point, folder, ncu=ncu_path, calls=ncu_calls)
        except nsight.ProfileError as exc:
            fail(str(exc))
        print_ncu(nsight.by_kernel(result.kernels, result.calls), result.summary, console)
        if iomodel.modelled(point.provider) and result.summary.get("dram_bytes") is not None:
            model = iomodel.hbm_bytes(point.provider, point.shape, point.mode, point.dtype, config=result.config)
            console.print(f"DRAM measured {display.gb(result.summary['dram_bytes'])} per call vs model "
                          f"{display.gb(model)}", highlight=False)
        console.print(f"ncu report: {result.report} (CSV {result.csv}, log {result.log})", highlight=False)




@app.command("profile-io")
def profile_io(
    provider: Annotated[str, typer.Option(help="Providers, e.g. naive,fa1,fa2.")] = "naive,fa1,fa2",
    seqlen: Seqlen = None, headdim: Headdim = None, batch: Batch = None, tokens: Tokens = None,
    heads: Heads = None, hidden: Hidden = None, causal: CausalOption = None, mode: OneMode = Mode.fwd,
    dtype: OneDtype = Dtype.fp16,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Study folder; points already ok there are "
                       "skipped (default results/io-<UTC time>-<gpu>).", rich_help_panel=OUTPUT)] = None,
    calls: Annotated[int, typer.Option(help="Calls profiled per point (counters are per call).")] = 1,
    timeout_s: Annotated[int, typer.Option(help="Limit for one point under ncu (seconds).")] = 540,
):
    """IO complexity, measured: DRAM bytes per call (ncu) against the HBM model across sequence lengths.

    Shape defaults: seqlen 1024..16384, head dim 128, the paper's 16k tokens and hidden size 2048."""
    from fa2bench import api
    from fa2bench.core import config
    from fa2bench.run import hardware
    from fa2bench.profiling import iostudy
    from fa2bench.profiling import ncu as nsight
    from fa2bench.profiling import profile as prof
    try:
        spec = config.spec_from(shape_options(seqlen=seqlen or prof.IO_SEQLENS, headdim=headdim, batch=batch,
                                               tokens=tokens, heads=heads, hidden=hidden,
                                               causal=getattr(causal, "value", None),
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
    from fa2bench.run.results import default_out

    folder = out_dir or default_out(hardware.cuda_device_name(), prefix="io-")
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
