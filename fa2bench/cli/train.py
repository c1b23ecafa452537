"""`fa2bench ablate` and `fa2bench e2e`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fa2bench.cli.common import (
    app, choices, Causal, SHAPE, RUN, OUTPUT, option, Seqlen, Headdim, Batch, Tokens, Heads, Hidden,
    shape_options, out, fail, warn, no_gpu, SpecError, E2E_MODELS, E2E_PARALLEL)
from fa2bench.cli.render import run_with_progress


# --- e2e ------------------------------------------------------------------------------------------------

MODEL = "Model"


@app.command("ablate")
def ablate(
    seqlen: Seqlen = None, headdim: Headdim = None, batch: Batch = None, tokens: Tokens = None,
    heads: Heads = None, hidden: Hidden = None,
    causal: option(Causal, "Causal masking (default: both).", SHAPE) = None,
    dtype: option(str, "Dtypes (default fp16; fp32 without a GPU).", SHAPE) = None,
    mode: option(str, "Passes (default: fwd,bwd).", SHAPE) = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Results folder (default results/ablation-<UTC "
                       "time>-<gpu>).", rich_help_panel=OUTPUT)] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume/--no-resume", help="Continue the run in --out.",
                      rich_help_panel=OUTPUT)] = None,
    rep_ms: option(float, "Timing budget per point (ms, default 100).", RUN) = None,
):
    """The FA1 -> FA2 ablation ladder (`providers.ladder()`) over the paper's shapes at head dims 64 and 128,
    causal both, fwd and bwd: an ordinary results folder, one waterfall figure per (mode, head dim, causal) and
    RUN/ablation.md beside the paper's claims. Without a GPU, a smoke version through the interpreter (the
    smoke preset at seqlen 64 in fp32, about 15 s) into an ignored results/ablation-...-cpu folder."""
    from fa2bench import api
    from fa2bench.read import ablation
    from fa2bench.run.results import ResultsError

    given = shape_options(seqlen=seqlen, headdim=headdim, batch=batch, tokens=tokens, heads=heads, hidden=hidden,
                          causal=causal, dtype=dtype, mode=mode, rep_ms=rep_ms)
    try:
        plan = api.plan_ablation(out_dir, bool(resume), **{k: getattr(v, "value", v) for k, v in given.items()})
    except SpecError as exc:
        fail(str(exc))
    console = out()
    if plan.device == "cpu":
        no_gpu(console, "the ladder runs at the smoke preset's tiny shapes, Triton kernels through the CPU "
               "interpreter")
    try:
        run = run_with_progress(plan, console)
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
    seqlen: option(str, "Context lengths, e.g. 2048,8192 (default: 2048,8192 on a GPU, 64 without "
                      "one).", MODEL) = None,
    provider: option(str, "Attention providers (see `fa2bench providers`); default: every provider available "
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
    micro_batch: option(int, "Sequences per micro-batch (default: the largest that fits, at most 16k "
                           "tokens).", RUN) = None,
    tokens_per_step: option(int, "Tokens per optimizer step, by gradient accumulation (default: one "
                               "micro-batch).", RUN) = None,
    checkpointing: Annotated[Optional[bool], typer.Option("--checkpointing/--no-checkpointing", help="Gradient "
                             "checkpointing per block (default: only where one sequence does not fit).",
                             rich_help_panel=RUN)] = None,
    shrink_on_oom: Annotated[bool, typer.Option(help="On out of memory, halve the micro-batch (same tokens per "
                             "step) and retry.", rich_help_panel=RUN)] = True,
    check: Annotated[bool, typer.Option(help="Check loss and gradients against a float64 model first.",
                                        rich_help_panel=RUN)] = True,
    peak_tflops: option(float, "Override this GPU's peak TFLOP/s.", RUN) = None,
    gpus: option(str, "Train data parallel on N GPUs (or 'all') under torchrun; TFLOP/s stay per GPU "
                    "(docs/e2e.md).", RUN) = None,
    parallel: option(choices("Parallel", E2E_PARALLEL), "With --gpus: ddp (DistributedDataParallel, the "
                   "default) or fsdp (FSDP2).", RUN) = None,
):
    """GPT training throughput with each attention provider (the FlashAttention-2 paper's Table 1)."""
    from fa2bench.e2e import execute_e2e, plan_e2e
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
        no_gpu(console, "the model trains on the CPU in fp32, Triton kernels through the interpreter")
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
        code = execute_e2e(plan, on_row, echo=lambda line: console.print(line, markup=False, highlight=False))
        if plan.gpus is not None:  # the launcher: rank 0 said where the results are
            raise typer.Exit(code)
        if not leader:
            return
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
