"""The end-to-end benchmark: train a GPT with each attention provider and measure steps after warm-up.

For each (model, seqlen, provider): build the model (same seed, so the same weights for every provider), check
one step's loss and gradients against the float64 reference (``check.StartCheck`` on a two-layer, two-head
model with the same head dim), then run ``warmup`` optimizer steps (compilation and Triton autotuning happen
there) and ``steps`` timed ones. bf16 autocast on a GPU (fp32 on the CPU), AdamW, synthetic token batches. A
step is ``grad_accum`` micro-batches of ``micro_batch`` sequences, forward and backward, then the optimizer.

Recorded per configuration, one results row (``schema.E2E_COLUMNS``): step time (median, 20th and 80th percentiles,
the timed steps as ``samples``, ``noisy`` below the sweep's minimum of 5: ``run.timing.summarise``), tokens/s,
model TFLOP/s by the paper's formula (``e2e.flops``) as % of the A100's 312 and of this GPU's peak, peak memory,
loss of the first and last step, and NVML telemetry over the timed steps (power, energy per step and per token,
throttling). A configuration that runs out of memory is retried with half the micro-batch (and
twice the accumulation, so tokens per step stay the same) when ``shrink_on_oom``; when even one sequence does
not fit it is recorded ``oom``, and the run goes on. Statuses and failure classification are the sweep's
(``runner``). Data parallel (``fa2bench e2e --gpus N``, ``e2e.dp``): every rank runs ``run_config`` with its
``dp.Group``, which wraps the model and makes the ranks agree on failures (``settled``).
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from fa2bench.run import hardware, point, runner, telemetry, timing

from fa2bench.core import providers
from fa2bench.e2e.check import StartCheck, attention_shape, autocast, make_attention, run_dtype
from fa2bench.e2e.configs import MODELS, ConfigError, GPTConfig
from fa2bench.e2e.flops import flops_per_step
from fa2bench.e2e.model import GPT
from fa2bench.e2e.schema import E2E_COLUMNS, KIND, MODE, PARALLEL, SINGLE, e2e_key
from fa2bench.core.flops import tflops
from fa2bench.run.results import RunWriter

MAX_TOKENS_PER_MICRO_BATCH = 16384  # the default micro-batch: at most 16k tokens (8 x 2k, 2 x 8k)
MEMORY_FRACTION = 0.8  # of the GPU's memory that the default micro-batch may plan to use
CHECK_SEQLEN, CHECK_BATCH, CHECK_LAYERS, CHECK_HEADS, CHECK_VOCAB = 128, 2, 2, 2, 256


@dataclass(frozen=True)
class E2ESpec:
    models: tuple[str, ...]
    seqlens: tuple[int, ...]
    providers: tuple[str, ...]
    steps: int = 5
    warmup: int = 2
    micro_batch: int | None = None  # None: the largest that the memory estimate fits (``plan``)
    tokens_per_step: int | None = None  # None: one micro-batch per step
    checkpointing: bool | None = None  # None: only when one sequence does not fit without it
    shrink_on_oom: bool = True
    check: bool = True
    lr: float = 2e-4
    seed: int = 0
    gpus: int | None = None  # None: one process; N: N ranks under torchrun, data parallel (``e2e.dp``)
    parallel: str | None = None  # with gpus: "ddp" (DistributedDataParallel) or "fsdp" (FSDP2's fully_shard)

    def validate(self) -> None:
        if not self.models or not self.seqlens or not self.providers:
            raise ConfigError("give at least one model, sequence length and provider")
        for name in self.models:
            GPTConfig.from_name(name)
        for name in self.providers:
            if name not in providers.names():
                raise ConfigError(f"unknown provider {name!r}; known: {', '.join(providers.names())}")
        if any(n < 1 for n in self.seqlens):
            raise ConfigError("sequence lengths must be positive")
        if self.steps < 1 or self.warmup < 1:
            raise ConfigError("--steps and --warmup must be >= 1 (the first step compiles and autotunes)")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError("--micro-batch must be >= 1")
        if self.tokens_per_step is not None:
            for n in self.seqlens:
                mb = self.micro_batch or 1
                if self.tokens_per_step % (mb * n):
                    raise ConfigError(f"--tokens-per-step {self.tokens_per_step} is not a multiple of micro-batch "
                                      f"x seqlen ({mb} x {n})")
        if not self.lr > 0:
            raise ConfigError("--lr must be positive")
        if self.parallel not in (None, *PARALLEL):
            raise ConfigError(f"--parallel: expected one of {', '.join(PARALLEL)}, got {self.parallel!r}")
        if self.gpus is not None and self.gpus < 1:
            raise ConfigError(f"--gpus must be at least 1, got {self.gpus}")

    def key(self, configuration: tuple) -> tuple:
        """A configuration's identity in a results folder (``schema.e2e_key`` of its row)."""
        return (*configuration, self.gpus or 1, self.parallel or SINGLE)

    def configurations(self):
        return [(m, n, p) for m in self.models for n in self.seqlens for p in self.providers]


@dataclass(frozen=True)
class E2EOptions:
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    peak_tflops: float | None = None  # override of this GPU's peak


@dataclass(frozen=True)
class E2EPlan:
    """An e2e run resolved and validated (``plan_e2e``), not yet run."""
    spec: E2ESpec
    out: Path
    resume: bool
    extend: bool
    opts: E2EOptions
    device_name: str | None
    gpus: int | None = None  # launch the run on this many ranks under torchrun (``dp.launch_ranks``)
    rank: object = None  # this process is a rank of a torchrun job (a ``launch.Rank``): ``dp.run_ranks``


def plan_e2e(model=None, seqlen=None, provider=None, *, out: str | Path | None = None, resume: bool = False,
             extend: bool = False, peak_tflops: float | None = None, gpus: str | int | None = None,
             parallel: str | None = None, **fields) -> E2EPlan:
    """Resolve an e2e run: ``model``, ``seqlen`` and ``provider`` as lists or text as on the command line
    (default: gpt-1.3b at 2048,8192 on a GPU, gpt-tiny at 64 without one; every provider available here), the
    other ``E2ESpec`` fields as keywords (steps, warmup, micro_batch, tokens_per_step, checkpointing, ...).
    ``out`` defaults to ``results/e2e-<UTC time>-<gpu>``. Every bad input is a ``SpecError`` (one line) before
    anything runs. ``gpus`` (N or 'all') runs it data parallel (``parallel``: ddp, the default, or fsdp) on N
    ranks under torchrun; a process that torchrun started plans as one of the ranks."""
    from fa2bench.core import config, device
    from fa2bench.run.results import default_out
    from fa2bench.distributed import launch
    from fa2bench.core.presets import SpecError, parse_ints, parse_names

    def text(value) -> str:
        return value if isinstance(value, str) else ",".join(map(str, value))

    gpu = device.has_cuda()
    where = "cuda" if gpu else "cpu"
    models = parse_names(text(model), "model", tuple(MODELS)) if model else (("gpt-1.3b",) if gpu else ("gpt-tiny",))
    big = [m for m in models if MODELS[m].params() > 10**8]
    if big and not gpu:
        raise SpecError(f"model {big[0]} needs a CUDA GPU; without one, use gpt-tiny")
    chosen = parse_names(text(provider), "provider", providers.names()) if provider else tuple(
        n for n in providers.names() if providers.get(n).availability(where) is None
        and providers.get(n).runs_mode("fwd_bwd") and providers.get(n).runs_variant("dense"))
    try:
        rank, launched = launch.place(gpus, "the job's ranks train together")
    except launch.LaunchError as exc:
        raise SpecError(str(exc)) from None
    if rank is not None or launched is not None:
        fields.update(gpus=rank.world_size if rank is not None else launched, parallel=parallel or PARALLEL[0])
    elif parallel is not None:
        raise SpecError("--parallel needs --gpus N (data parallelism over N GPUs)")
    for name in ("checkpointing", "shrink_on_oom", "check"):  # booleans as strictly as a sweep's
        if fields.get(name) is not None:
            fields[name] = config.flag(name, fields[name])
    spec = E2ESpec(models=models, seqlens=parse_ints(text(seqlen) if seqlen else ("2048,8192" if gpu else "64"),
                                                     "seqlen"), providers=chosen, **fields)
    spec.validate()
    peak = config.run_options({"peak_tflops": peak_tflops})["peak_tflops"]  # the sweep's validation
    out, resume, extend = config.out_folder(out), config.flag("resume", resume), config.flag("extend", extend)
    if resume and out is None:
        raise SpecError("--resume needs --out DIR (the run to continue)")
    if extend and not resume:
        raise SpecError("--extend needs --resume (it extends an existing run)")
    device_name = hardware.cuda_device_name()
    if rank is not None and out is None:
        raise SpecError("every rank of a data-parallel run needs the same --out DIR")
    return E2EPlan(spec, out or default_out(device_name, prefix="e2e-"), resume, extend,
                   E2EOptions(device=where, peak_tflops=peak), device_name, launched, rank)


# --- what fits -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    note: str  # how the defaults were picked


def estimate_bytes(config: GPTConfig, seqlen: int, micro_batch: int, checkpointing: bool) -> float:
    """A rough training-memory estimate with memory-efficient attention (nothing quadratic in seqlen).

    18 bytes per parameter (fp32 weights, gradients and AdamW's two moments, autocast's bf16 weight copies);
    activations of 40 · hidden bytes per token per layer (what this block saves under bf16 autocast: the fp32
    inputs of both LayerNorms, bf16 copies of the matmul inputs, Q, K, V, the attention output and the MLP's
    hidden layer before and after GELU; Korthikanti et al., 2022, "Reducing Activation Recomputation in Large
    Transformer Models", count 34 · hidden for a bf16 residual stream without dropout masks), or with
    checkpointing the fp32 block inputs (4 · hidden) plus one layer's activations; the logits in bf16 and fp32
    with their gradient (10 bytes per token per vocabulary entry).
    """
    tokens = micro_batch * seqlen
    per_layer = 40 * config.hidden * tokens
    acts = (4 * config.hidden * tokens * config.layers + per_layer) if checkpointing else per_layer * config.layers
    return 18 * config.params(seqlen) + acts + 10 * config.vocab * tokens


def plan(config: GPTConfig, seqlen: int, spec: E2ESpec, memory_bytes: float | None) -> Plan:
    """Micro-batch, accumulation and checkpointing for one (model, seqlen): the spec's where it names them,
    else the largest power-of-two micro-batch of at most 16k tokens (dividing the sequences of a step) that
    ``estimate_bytes`` fits in 80% of the GPU's memory (checkpointing only if one sequence does not fit without
    it). Without a GPU, one sequence."""
    notes = []
    if memory_bytes and spec.parallel == "ddp":  # DDP's gradient buckets: one more fp32 copy of the gradients
        memory_bytes -= 4 * config.params(seqlen)
        notes.append("DDP's gradient buckets (4 bytes per parameter) set aside")
    checkpointing = spec.checkpointing
    if checkpointing is None:
        checkpointing = bool(memory_bytes) and estimate_bytes(config, seqlen, 1, False) > MEMORY_FRACTION * memory_bytes
        notes.append(f"checkpointing {'on: one sequence does not fit without it' if checkpointing else 'off'}")
    micro_batch = spec.micro_batch
    if micro_batch is None:
        micro_batch = 1
        if memory_bytes:
            sequences = (spec.tokens_per_step or MAX_TOKENS_PER_MICRO_BATCH) // seqlen  # per step
            while (2 * micro_batch * seqlen <= MAX_TOKENS_PER_MICRO_BATCH and sequences % (2 * micro_batch) == 0
                   and estimate_bytes(
                    config, seqlen, 2 * micro_batch, checkpointing) <= MEMORY_FRACTION * memory_bytes):
                micro_batch *= 2
            notes.append(f"micro-batch {micro_batch}: the largest power of two <= 16k tokens that the memory "
                         f"estimate fits in {MEMORY_FRACTION:.0%} of {memory_bytes / 2**30:.0f} GiB")
        else:
            notes.append("micro-batch 1 (no GPU)")
    tokens_per_step = spec.tokens_per_step or micro_batch * seqlen
    return Plan(micro_batch, max(1, tokens_per_step // (micro_batch * seqlen)), checkpointing, "; ".join(notes))


# --- one configuration -----------------------------------------------------------------------------------


def synthetic_batch(vocab: int, seqlen: int, batch: int, device: str, generator: torch.Generator,
                    period: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets. Uniform random tokens by default; with ``period``, each sequence repeats
    its first ``period`` random tokens (a task attention can learn: copy the token ``period`` places back)."""
    if period is None:
        tokens = torch.randint(0, vocab, (batch, seqlen + 1), generator=generator)
    else:
        head = torch.randint(0, vocab, (batch, period), generator=generator)
        tokens = head.repeat(1, (seqlen + 1 + period - 1) // period)[:, :seqlen + 1]
    tokens = tokens.to(device)
    return tokens[:, :-1], tokens[:, 1:]


class Trainer:
    """A model, its AdamW optimizer and one step of ``grad_accum`` micro-batches."""

    def __init__(self, config: GPTConfig, seqlen: int, attn, device: str, checkpointing: bool = False,
                 lr: float = 2e-4, seed: int = 0, wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        torch.manual_seed(seed)
        with torch.device(device):
            self.model = GPT(config, seqlen, attn, checkpointing=checkpointing)
        if wrap is not None:  # data parallelism (``dp.Group.wrap``): before the optimizer sees the parameters
            self.model = wrap(self.model)
        self.device = device
        fused = {"fused": True} if device == "cuda" else {}
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                                           **fused)

    def step(self, batches) -> float:
        """One optimizer step over ``batches`` (a list of (inputs, targets)); returns the mean loss (a sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        total = self.backward(batches)
        self.optimizer.step()
        return float(total)

    def backward(self, batches) -> torch.Tensor:
        """Forward and backward of every micro-batch, gradients accumulated; the mean loss (no sync)."""
        total = torch.zeros((), device=self.device)
        for inputs, targets in batches:
            with autocast(self.device):
                loss = self.model(inputs, targets) / len(batches)
            loss.backward()
            total += loss.detach()
        return total


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure_steps(trainer: Trainer, batches, warmup: int, steps: int, flops: int, group=None) -> dict:
    """Warm-up steps, then ``steps`` timed ones under NVML telemetry: step times and the telemetry columns.

    Under data parallelism (``group``, a ``dp.Group``), the first warm-up step is the group's probe (every rank
    agrees that it ran before any rank enters a collective of the training step), the timed steps start after
    a barrier, each step's time is the slowest rank's, and the peak memory the largest rank's."""
    device = trainer.device
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loss_first = trainer.step(batches) if group is None else settled(group, lambda: group.probe_step(trainer, batches))
    for _ in range(warmup - 1):  # the first warm-up step (above) is the one that compiles
        trainer.step(batches)
    if group is not None:
        group.barrier()
    nvml = telemetry.current_device()
    sampler = telemetry.Sampler(nvml).start() if nvml is not None else None
    energy_start = nvml.energy_mj() if nvml is not None else None
    times, loss = [], loss_first
    start = time.perf_counter()
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = trainer.step(batches)  # returns a Python float: synchronises
        times.append((time.perf_counter() - t0) * 1e3)
    elapsed = time.perf_counter() - start
    if group is not None:
        times = group.slowest(times)
    energy_end = nvml.energy_mj() if nvml is not None else None
    tel = telemetry.empty()
    if sampler is not None:
        energy = (energy_end - energy_start) / 1e3 if energy_start is not None and energy_end is not None else None
        tel = telemetry.summarise(sampler.stop(), elapsed, elapsed * 1e3 / steps, flops, energy)  # per step: mean
    timed = timing.summarise(times, timer="step")  # the sweep's statistics: noisy below its minimum of samples
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    if group is not None and device == "cuda":
        peak = max(group.slowest([peak]))
    return {**timed.row(), "loss_first": loss_first, "loss_last": loss, "peak_mem_mb": peak, **tel}


def _checked(provider: str, config: GPTConfig, device: str, seed: int, cache: dict):
    """The start-of-training verdict for ``provider`` on a small model with ``config``'s head dim (two heads,
    two layers; the reference and baseline are cached per head dim, the verdict per provider)."""
    if (provider, config.headdim) not in cache:
        if config.headdim not in cache:
            small = dataclasses.replace(config, name=f"{config.name}-check", layers=CHECK_LAYERS,
                                        hidden=CHECK_HEADS * config.headdim, heads=CHECK_HEADS, vocab=CHECK_VOCAB)
            cache[config.headdim] = StartCheck(small, CHECK_SEQLEN, CHECK_BATCH, device, seed)
        cache[(provider, config.headdim)] = cache[config.headdim].verdict(provider)
    return cache[(provider, config.headdim)]


class Failure(Exception):
    """A configuration that cannot be timed, with the status and error its row records (a wrong start check;
    under data parallelism, another rank's failure)."""

    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status, self.error = status, error


def failure(exc: Exception, caught=()) -> dict:
    """The status and error of a row for ``exc`` (``caught``: warnings recorded while it ran)."""
    if isinstance(exc, Failure):
        return {"status": exc.status, "error": exc.error}
    return point.classify(exc, caught)


def settled(group, fn: Callable, caught=()):
    """``fn()``; under data parallelism every rank then agrees (``group.settle``) before going on: when any
    rank failed, every rank raises that rank's ``Failure``, so no rank waits in a collective for one that left."""
    if group is None:
        return fn()
    try:
        result, failed = fn(), None
    except Exception as exc:
        result, failed = None, failure(exc, caught)
    group.settle(failed)
    return result


def _start_check(provider: str, config: GPTConfig, device: str, seed: int, cache: dict, row: dict) -> None:
    verdict = _checked(provider, config, device, seed, cache)
    row["max_rel_error"] = verdict.max_rel_error
    if not verdict.ok:
        raise Failure("wrong", verdict.detail)


def _is_oom(exc: Exception) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (isinstance(exc, Failure) and exc.status == "oom")


def run_config(model: str, seqlen: int, provider: str, spec: E2ESpec, opts: E2EOptions,
               device_peak: float | None, memory_bytes: float | None, check_cache: dict | None = None,
               group=None) -> dict:
    """One results row for (model, seqlen, provider); under data parallelism (``group``, a ``dp.Group``) this
    rank's row, the step time already the slowest rank's."""
    config = GPTConfig.from_name(model)
    p = plan(config, seqlen, spec, memory_bytes)
    dtype = run_dtype(opts.device)
    row = {"provider": provider, "mode": MODE, "dtype": dtype, "model": model, "layers": config.layers,
           "hidden": config.hidden, "params": config.params(seqlen), "warmup": spec.warmup, "steps": spec.steps,
           "gpus": spec.gpus or 1, "parallel": spec.parallel or SINGLE, "status": "ok", "error": "", "note": p.note}
    micro_batch, grad_accum = p.micro_batch, p.grad_accum
    tokens_per_step = micro_batch * grad_accum * seqlen
    shape = attention_shape(config, seqlen, micro_batch)
    row.update({k: v for k, v in dataclasses.asdict(shape).items()}, micro_batch=micro_batch,
               grad_accum=grad_accum, tokens_per_step=tokens_per_step, checkpointing=p.checkpointing,
               flops=flops_per_step(config, seqlen, tokens_per_step // seqlen))
    reason = providers.get(provider).unsupported_reason(shape, dtype, "fwd_bwd", opts.device)
    if reason:
        return {**row, "status": "unsupported", "error": reason}
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if spec.check:  # on every rank under data parallelism, which then agree
                cache = check_cache if check_cache is not None else {}
                settled(group, lambda: _start_check(provider, config, opts.device, spec.seed, cache, row), caught)
            while True:
                try:
                    measured = _train(config, seqlen, provider, micro_batch, grad_accum, p.checkpointing, spec,
                                      opts.device, row["flops"], group)
                    break
                except (torch.cuda.OutOfMemoryError, Failure) as exc:
                    if not _is_oom(exc) or not spec.shrink_on_oom or micro_batch == 1:
                        raise
                # out of the except clause, the exception's frames (and the model they hold) can be freed
                point.release()
                micro_batch, grad_accum = micro_batch // 2, grad_accum * 2
                row["note"] += f"; out of memory at micro-batch {2 * micro_batch}, retried with {micro_batch}"
        row.update(measured, batch=micro_batch, micro_batch=micro_batch, grad_accum=grad_accum)
        achieved = tflops(row["flops"], row["ms"])
        row.update(tflops=achieved, tokens_per_s=tokens_per_step / (row["ms"] * 1e-3),
                   global_tokens_per_s=row["gpus"] * tokens_per_step / (row["ms"] * 1e-3),
                   pct_a100_peak=hardware.pct_of(achieved, hardware.A100_PEAK_TFLOPS),
                   pct_device_peak=hardware.pct_of(achieved, device_peak),
                   energy_per_token_j=row["energy_j"] / tokens_per_step if row.get("energy_j") else None)
        return row
    except Exception as exc:  # recorded, and the run goes on
        return {**row, **failure(exc, caught)}
    finally:
        point.release()


def data_seed(seed: int, rank: int = 0) -> int:
    """The synthetic batches' seed: rank 0 (and a one-process run) ``seed + 1``, each other rank its own."""
    return seed + 1 + rank


def _train(config, seqlen, provider, micro_batch, grad_accum, checkpointing, spec, device, flops,
           group=None) -> dict:
    attn = make_attention(provider, config, seqlen, micro_batch)
    trainer = Trainer(config, seqlen, attn, device, checkpointing=checkpointing, lr=spec.lr, seed=spec.seed,
                      wrap=group.wrap if group is not None else None)  # the same seed: the same weights everywhere
    try:
        gen = torch.Generator().manual_seed(data_seed(spec.seed, group.rank if group is not None else 0))
        batches = [synthetic_batch(config.vocab, seqlen, micro_batch, device, gen) for _ in range(grad_accum)]
        return measure_steps(trainer, batches, spec.warmup, spec.steps, flops, group)
    finally:
        del trainer


# --- a run ----------------------------------------------------------------------------------------------


def this_peak(opts: E2EOptions) -> hardware.PeakInfo:
    return hardware.device_peak(hardware.cuda_device_name(), run_dtype(opts.device), opts.peak_tflops)


def device_memory(opts: E2EOptions) -> int | None:
    """This process's GPU memory (bytes), None on the CPU."""
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if opts.device == "cuda" else None


def start_writer(spec: E2ESpec, opts: E2EOptions, peak: hardware.PeakInfo, out: str | Path, resume: bool,
                 extend: bool, **extra_meta) -> RunWriter:
    """The run's results folder opened (``RunWriter.start``: resume and extend checked) and meta.json written
    (``kind: e2e``, the model configurations, ``extra_meta``)."""
    meta = runner.collect_meta(spec, spec.providers, opts, {run_dtype(opts.device): peak})
    meta.update(kind=KIND, models={m: dataclasses.asdict(MODELS[m]) for m in spec.models}, **extra_meta)
    return RunWriter.start(Path(out), meta, resume=resume, extend=extend, columns=E2E_COLUMNS, key=e2e_key)


def run_e2e(spec: E2ESpec, out: str | Path, resume: bool = False, opts: E2EOptions | None = None,
            on_row: Callable[[tuple, dict | None], None] | None = None, extend: bool = False) -> pd.DataFrame | None:
    """Run every (model, seqlen, provider) of ``spec`` not already in ``out`` (with ``resume``), appending each
    row (``schema.E2E_COLUMNS``) to ``out``/results.csv as it finishes; meta.json records the run (``kind:
    e2e``); results.parquet is written at the end (also after Ctrl-C, which is then re-raised). Returns the
    run's table. As for sweeps, a resume with another spec is refused unless ``extend`` (``results.RunWriter.start``).

    ``on_row(configuration, row)`` is called after each configuration (row None when skipped on resume).
    """
    spec.validate()
    opts = opts or E2EOptions()
    peak = this_peak(opts)
    writer = start_writer(spec, opts, peak, out, resume, extend)
    memory = device_memory(opts)
    cache: dict = {}
    interrupted = False
    try:
        for configuration in spec.configurations():
            if spec.key(configuration) in writer.done:
                if on_row:
                    on_row(configuration, None)
                continue
            row = run_config(*configuration, spec, opts, peak.tflops, memory, cache)
            writer.append(row)
            if on_row:
                on_row(configuration, row)
    except KeyboardInterrupt:
        interrupted = True
    frame = writer.close(complete=not interrupted)
    if interrupted:
        raise KeyboardInterrupt
    return frame
