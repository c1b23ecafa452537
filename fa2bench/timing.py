"""Timing one call: median and 20th/80th percentiles.

On a GPU this is ``triton.testing.do_bench``: CUDA events around each call, the L2 cache flushed before
every call, ``grad_to_none`` so backward passes don't accumulate, and warm-up and repetition budgets in
milliseconds. The caller runs the function once before (compilation and autotuning stay out of the timing).
On the CPU (the interpreter smoke run) a plain wall-clock loop stands in; its numbers are not GPU performance.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class Timing:
    ms: float  # median
    ms_p20: float
    ms_p80: float


def bench(fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] | None = None,
          warmup_ms: float = 25, rep_ms: float = 100) -> Timing:
    if torch.cuda.is_available():
        from triton.testing import do_bench

        median, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none,
                                    quantiles=[0.5, 0.2, 0.8])
        return Timing(median, p20, p80)
    return _bench_cpu(fn, grad_to_none, rep_ms)


def _bench_cpu(fn, grad_to_none, rep_ms: float, min_reps: int = 3, max_reps: int = 50) -> Timing:
    times: list[float] = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() < deadline):
        for t in grad_to_none or ():
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive")
    return Timing(statistics.median(times), q[1], q[7])


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Peak memory allocated by one call beyond what was allocated before it (MiB); NaN without CUDA."""
    if not torch.cuda.is_available():
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
