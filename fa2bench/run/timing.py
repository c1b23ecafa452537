"""Timing one call: median and 20th/80th percentiles, repeated until the spread is small or time runs out.

On a GPU each batch of measurements is ``triton.testing.do_bench``: CUDA events around each call, the L2
cache flushed before every call, ``grad_to_none`` so backward passes don't accumulate, and warm-up and
repetition budgets in milliseconds. Batches are added until the relative spread (p80 - p20) / median of all
measurements is at most ``target_spread`` or ``max_ms`` of measuring has passed: nvbench's stopping
criterion (a noise target with a time cap), with the interquantile range instead of a standard deviation. The
number of measurements is recorded (``reps``), so a point that hit the cap with a wide spread says so. The
caller runs the function once before (compilation and autotuning stay out of the timing). On the CPU (the
interpreter smoke run) a plain wall-clock loop stands in; its numbers are not GPU performance.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

TARGET_SPREAD = 0.03  # (p80 - p20) / median at which a GPU point stops repeating
MAX_MS = 500.0  # measuring time a GPU point may spend trying to reach it


@dataclass(frozen=True)
class Timing:
    ms: float  # median
    ms_p20: float
    ms_p80: float
    reps: int = 0  # measurements behind the quantiles

    @property
    def spread(self) -> float:
        """Relative spread (p80 - p20) / median."""
        return (self.ms_p80 - self.ms_p20) / self.ms if self.ms > 0 else float("inf")


def summarise(times: Sequence[float]) -> Timing:
    """Median, 20th and 80th percentiles (linear interpolation) of ``times`` in ms."""
    if len(times) == 1:
        return Timing(times[0], times[0], times[0], 1)
    q = statistics.quantiles(times, n=10, method="inclusive")
    return Timing(statistics.median(times), q[1], q[7], len(times))


def until_stable(batch: Callable[[], Sequence[float]], target_spread: float = TARGET_SPREAD,
                 max_ms: float = MAX_MS, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Call ``batch()`` (one batch of measurements in ms) until the spread of all of them is at most
    ``target_spread`` or ``max_ms`` of wall time has passed; at least one batch."""
    start = clock()
    times = list(batch())
    while summarise(times).spread > target_spread and (clock() - start) * 1e3 < max_ms:
        times.extend(batch())
    return summarise(times)


def bench(fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] | None = None,
          warmup_ms: float = 25, rep_ms: float = 100, target_spread: float = TARGET_SPREAD,
          max_ms: float = MAX_MS) -> Timing:
    if torch.cuda.is_available():
        from triton.testing import do_bench

        warm = [warmup_ms]

        def batch():
            times = do_bench(fn, warmup=warm[0], rep=rep_ms, grad_to_none=grad_to_none, return_mode="all")
            warm[0] = 0  # warm already: later batches only measure
            return times

        return until_stable(batch, target_spread, max(max_ms, rep_ms))
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
    return summarise(times)


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
