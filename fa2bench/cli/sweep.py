"""`fa2bench sweep` and `fa2bench ring`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fa2bench.cli.common import (
    app, Preset, Causal, SHAPE, RUN, OUTPUT, option, Seqlen, SeqlenK, Headdim, Batch, Tokens, Heads, Hidden,
    KvHeads, shape_options, out, fail, warn, no_gpu, choices, DTYPES, MODES, SpecError, providers)
from fa2bench.cli.render import print_next, print_summary, print_time_split, run_with_progress, warn_untrusted
from fa2bench.core.presets import TIMERS

Timer = choices("Timer", TIMERS)


# --- sweep ----------------------------------------------------------------------------------------------


@app.command()
def sweep(
    config: Annotated[Optional[Path], typer.Option(help="A sweep file (TOML, or YAML with PyYAML) with the same "
                      "fields as these options; options given here win.")] = None,
    preset: Annotated[Optional[Preset], typer.Option(help="Named sweep; the options override its fields. "
                      "Default: default (fa2 against its fastest peers, about a minute) on a GPU, smoke "
                      "without one.")] = None,
    seqlen: Seqlen = None, seqlen_k: SeqlenK = None, headdim: Headdim = None, batch: Batch = None,
    tokens: Tokens = None, heads: Heads = None, hidden: Hidden = None, kv_heads: KvHeads = None,
    causal: option(Causal, "Causal masking.", SHAPE) = None,
    page_size: option(str, "Decode: KV-cache page sizes, 0 for a contiguous cache (e.g. 0,16,64,256).", SHAPE) = None,
    ragged: option(Causal, "Decode: KV lengths spread over the batch (on), uniform (off) or both.", SHAPE) = None,
    variant: option(str, "Attention variants, comma list: dense, window4096[:0], softcap50, alibi, docs[:512/512], "
                         "joined by + (e.g. window4096+softcap50).", SHAPE) = None,
    max_kv_tokens: option(int, "Leave out shapes with batch x seqlen-k above this (0: no cap).", SHAPE) = None,
    dtype: Annotated[Optional[str], typer.Option(help="Dtypes: " + ",".join(DTYPES) + " (tf32: fp32 inputs, "
                                                 "TF32 matmuls).", rich_help_panel=SHAPE)] = None,
    mode: Annotated[Optional[str], typer.Option(help="Passes: " + ",".join(MODES) + ", decode.",
                                                rich_help_panel=SHAPE)] = None,
    provider: Annotated[Optional[str], typer.Option(help="Providers (see `fa2bench providers`); default: the "
                        "preset's (default preset: fa2, sdpa-cudnn, sdpa-flash, flex, naive), else every provider "
                        "available here.")] = None,
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
    point_timeout: option(float, "With --isolate: seconds one point may take (set-up, check, compilation, timing) "
                               "before its worker is killed and it is recorded `timeout` (default 600).", RUN) = None,
    warmup_ms: option(float, "Warm-up budget per point (ms, default 25).", RUN) = None,
    rep_ms: option(float, "Timing budget per point (ms, default 100).", RUN) = None,
    peak_tflops: option(float, "Override this GPU's peak TFLOP/s.", RUN) = None,
    timer: option(Timer, "How points are timed: plain (CUDA events per call, L2 flushed), graph (CUDA-graph "
                         "replay over rotated inputs) or auto (graph where a call is under 100 us; the default).",
                  RUN) = None,
    ceilings: Annotated[Optional[bool], typer.Option("--ceilings/--no-ceilings", help="Measure matmul and copy "
                        "ceilings into meta.json (GPU; default: measure).", rich_help_panel=RUN)] = None,
    gpus: option(str, "Shard the points over N GPUs (or 'all') under torchrun, one merged results folder "
                    "(docs/multigpu.md).", RUN) = None,
    clear_autotune_cache: Annotated[bool, typer.Option("--clear-autotune-cache", help="Forget fa2bench's kernels' "
                                    "autotune decisions (kept on disk across runs) before sweeping, so every config "
                                    "is searched again.", rich_help_panel=RUN)] = False,
):
    """Sweep shapes x providers x modes x dtypes; check, time and write one row per point."""
    from fa2bench import api
    from fa2bench.core import config as sweep_config
    from fa2bench.run.results import ResultsError
    from fa2bench.run.worker import WorkerError

    given = shape_options(preset=preset, seqlen=seqlen, seqlen_k=seqlen_k, headdim=headdim, batch=batch,
                           tokens=tokens, heads=heads, hidden=hidden, kv_heads=kv_heads, causal=causal,
                           page_size=page_size, ragged=ragged, variant=variant, max_kv_tokens=max_kv_tokens,
                           dtype=dtype, mode=mode, provider=provider, out=out_dir, resume=resume, extend=extend,
                           check=check, isolate=isolate, point_timeout=point_timeout, warmup_ms=warmup_ms,
                           rep_ms=rep_ms, peak_tflops=peak_tflops, ceilings=ceilings, gpus=gpus, timer=timer)
    try:
        options = sweep_config.merge(sweep_config.load(config) if config else {},
                                     {k: getattr(v, "value", v) for k, v in given.items()})
        plan = api.plan_sweep(**options)
    except (SpecError, ResultsError) as exc:
        fail(str(exc))
    leader = plan.rank is None or plan.rank.is_leader  # under torchrun, rank 0 speaks for the run
    for name, why in plan.unavailable.items():
        if leader:
            out(stderr=True).print(f"[yellow]note:[/] provider {name} is unavailable here ({why}); its points are "
                                   "recorded as unsupported", highlight=False)
    console = out()
    if plan.gpus is not None and plan.device == "cpu":
        warn(f"no CUDA GPU here: --gpus {plan.gpus} runs {plan.gpus} CPU processes (gloo), not GPUs")
    if plan.device == "cpu" and leader:
        no_gpu(console, "Triton kernels run through the CPU interpreter and PyTorch on the CPU")
    if clear_autotune_cache and plan.rank is None:  # once, before any rank or worker tunes
        from fa2bench.kernels import clear_autotune_cache as clear

        console.print(f"cleared {clear()} autotune results", highlight=False)
    try:
        if plan.sharded:  # --gpus N, or a rank under torchrun: log lines instead of a progress bar
            run = api.execute(plan, on_message=lambda line: console.print(line, markup=False, highlight=False,
                                                                           soft_wrap=True))
        else:
            run = run_with_progress(plan, console)
    except ResultsError as exc:
        fail(str(exc))
    except WorkerError as exc:  # the worker process cannot even start
        fail(f"{exc}; finished points are saved in {plan.out}")
    if not leader:
        raise typer.Exit(0 if run.complete else 130)
    if run.complete and len(run.frame) and (run.frame["status"] == "unsupported").all():
        fail(f"every point of this sweep is unsupported here ({run.frame['error'].iloc[0]}); `fa2bench providers` "
             f"says what runs on this machine (rows: {run.path})", code=1)
    if len(run.frame) and plan.gpus is None:  # a launcher leaves the summary to rank 0
        print_summary(run.frame, console)
        print_time_split(run.frame, console)
        warn_untrusted(run.frame)
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
    print_next(run.path, console)


@app.command()
def ring(
    gpus: option(str, "GPU counts, one torchrun job each (default 1,2,4; left out in a process torchrun "
                      "started).", RUN) = None,
    seqlen: option(str, "Sequence lengths over all GPUs, e.g. 65536..262144 (the default) or "
                      "65536,131072.", SHAPE) = None,
    batch: option(int, "Batch size (default 1).", SHAPE) = None,
    heads: option(int, "Query heads (default 16).", SHAPE) = None,
    kv_heads: option(int, "Key/value heads for GQA (default: = heads).", SHAPE) = None,
    headdim: option(int, "Head dimension (default 128).", SHAPE) = None,
    dtype: option(str, "Dtypes: fp16, bf16, fp32 (default bf16).", SHAPE) = None,
    causal: option(Causal, "Causal masking (default on).", SHAPE) = None,
    mode: option(str, "Passes: fwd, fwd_bwd (default both).", SHAPE) = None,
    method: option(str, "Methods: ring-fa2, allgather-fa2, cp-sdpa (default: all).", RUN) = None,
    reps: option(int, "Timed calls per point (default 3).", RUN) = None,
    warmup: option(int, "Untimed calls first (default 1).", RUN) = None,
    impl: option(str, "Block kernel: fa2 (default with CUDA) or ref (PyTorch; the default without).", RUN) = None,
    tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Autotune fa2 on every world size (default: its "
                    "first config, no tuning).", rich_help_panel=RUN)] = False,
    check: Annotated[bool, typer.Option("--check", help="Check the gradients of ring-fa2 and allgather-fa2 against "
                     "the one-GPU kernel (check.csv; default seqlen 8192, causal both) instead of timing.",
                     rich_help_panel=RUN)] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="Results folder (ring.csv, scaling.csv, scaling.png).",
                                          rich_help_panel=OUTPUT)] = Path("results/ring"),
):
    """Context-parallel attention over GPUs: ring-fa2 against all-gather K/V and PyTorch's context_parallel
    (time, TFLOP/s per GPU, scaling efficiency, communication hidden; docs/multigpu.md)."""
    from fa2bench.distributed import ringbench
    from fa2bench.run.results import ResultsError

    console = out()
    try:
        plan = ringbench.plan_ring(gpus, out_dir, check, seqlen=seqlen, batch=batch, heads=heads, kv_heads=kv_heads,
                                   headdim=headdim, dtype=dtype, causal=causal.value if causal else None, mode=mode,
                                   method=method, reps=reps, warmup=warmup, impl=impl, tune=tune)
        code = ringbench.execute_ring(plan, echo=lambda line: console.print(line, markup=False, highlight=False))
    except (SpecError, ResultsError) as exc:
        fail(str(exc))
    if code:
        raise typer.Exit(code)
