"""Timing one call: median and 20th/80th percentiles over at least ``MIN_SAMPLES`` samples, more while the
spread is above its target and the budget allows, and a ``noisy`` flag when the target was not reached.

Stopping rule (nvbench's noise target with a time cap, the interquantile range instead of a standard
deviation): samples are collected in batches until there are at least ``MIN_SAMPLES`` of them *and* either the
relative spread (p80 - p20) / median is at most ``target_spread`` or ``max_ms`` of measuring has passed. The
minimum is kept even past the cap: a long point times fewer calls, never one (a single sample has spread 0 by
construction and would "meet" any target). A point that stops at the cap above its target is ``noisy``; its row
stays ``ok`` with ``noisy=True`` (the numbers are real, but a reader must not trust them to the target).

Timers (``timer=``):

- ``plain``: CUDA events around each call, the L2 cache flushed (a buffer of twice the L2 size zeroed) before
  every call, ``grad_to_none`` reset between calls; one sample is one call. Honest while the call is long
  against the host's launch gap and the event resolution (about 0.5 us), the reason for ``auto``'s threshold.
- ``graph``: the calls captured once in a CUDA graph and replayed; one sample is one replay divided by the calls
  in it. L2 is kept cold by *rotating inputs*: the graph holds one call over each of several copies of the
  inputs (``rotate``), enough that the bytes between two uses of one copy exceed the L2 size, so every call reads
  its inputs from HBM without a flush kernel inside the graph whose time would have to be subtracted. Without
  copies the inputs stay hot in L2 and the timing says so (``timer = "graph-warm"``). A backward is captured
  like any call: its copies are made (forward included) on the capture stream, since autograd runs each
  backward op on its forward's stream, and each captured call starts from reset gradients, as under ``plain``.
  A call that cannot be captured (host synchronisation, a non-capturable library) falls back to ``plain``, with
  the process as it was (``_after_failed_capture``).
- ``auto`` (the default): ``plain`` first; when its median is below ``GRAPH_BELOW_MS`` (100 us), or when the
  host takes at least ``HOST_BOUND`` (half) of that median to issue one timed call, the point is timed again with
  ``graph``. Below ~100 us the few microseconds of host launch overhead per call (Python, the provider's wrapper,
  autograd) and the event's own cost are a visible share of what is measured; and at any length, a host that
  issues a call more slowly than the GPU runs it (the L2 flush before each call is its only head start) leaves
  the GPU waiting between the two events, so the plain timer times the host. A graph replays the same kernels
  with no host in between. ``HOST_BOUND`` is a bound, not a tuned value: half leaves the flush and jitter their
  share before the GPU can run dry.
  ``GRAPH_BELOW_MS`` is a bound, not a tuned value: on the CPU side ``launch_overhead_us`` measures what a
  Python call costs here, and ``tests/test_timing.py`` (gpu) prints how far the two timers disagree.
- On the CPU (the interpreter smoke run) a wall-clock loop stands in (``timer = "cpu"``); its numbers are no
  GPU's performance.

``bench(fn, timer=...)`` is the one entry point (sweep points and the decode work use it); the caller runs the
function once before (compilation and autotuning stay out of the timing).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from fa2bench.core.presets import TIMERS

TARGET_SPREAD = 0.03  # (p80 - p20) / median at which a point stops repeating
MAX_MS = 500.0  # measuring time a point may spend trying to reach it
MIN_SAMPLES = 5  # no point rests on fewer samples, whatever its length
GRAPH_BELOW_MS = 0.1  # auto: a plain median below this is re-timed with the graph timer
HOST_BOUND = 0.5  # auto: so is one whose host issue time per call is at least this share of the plain median
GRAPH_CALLS_MAX = 256  # calls captured in one graph (copies x repeats), to bound capture time and memory


@dataclass(frozen=True)
class Timing:
    ms: float  # median of the samples
    ms_p20: float
    ms_p80: float
    reps: int = 0  # timed calls behind the samples (a graph sample holds many calls)
    samples: int = 0  # independent measurements the quantiles are over
    timer: str = ""  # plain, graph, graph-warm or cpu
    noisy: bool = False  # the spread stayed above the target when the budget ran out

    @property
    def spread(self) -> float:
        """Relative spread (p80 - p20) / median."""
        return (self.ms_p80 - self.ms_p20) / self.ms if self.ms > 0 else float("inf")

    def row(self) -> dict:
        """The results columns of this timing."""
        return {"ms": self.ms, "ms_p20": self.ms_p20, "ms_p80": self.ms_p80, "reps": self.reps,
                "samples": self.samples, "spread": self.spread, "timer": self.timer, "noisy": self.noisy}


def summarise(times: Sequence[float], calls_per_sample: int = 1, timer: str = "",
              target_spread: float | None = None) -> Timing:
    """Median, 20th and 80th percentiles (linear interpolation) of ``times`` in ms; ``noisy`` when fewer than
    ``MIN_SAMPLES`` or (with ``target_spread``) a wider spread."""
    if not times:
        raise ValueError("no samples to summarise")
    if len(times) == 1:
        t = Timing(times[0], times[0], times[0], calls_per_sample, 1, timer)
    else:
        q = statistics.quantiles(times, n=10, method="inclusive")
        t = Timing(statistics.median(times), q[1], q[7], len(times) * calls_per_sample, len(times), timer)
    noisy = t.samples < MIN_SAMPLES or (target_spread is not None and t.spread > target_spread)
    return Timing(t.ms, t.ms_p20, t.ms_p80, t.reps, t.samples, timer, noisy)


def until_stable(batch: Callable[[int], Sequence[float]], target_spread: float = TARGET_SPREAD,
                 max_ms: float = MAX_MS, clock: Callable[[], float] = time.perf_counter,
                 min_samples: int = MIN_SAMPLES, calls_per_sample: int = 1, timer: str = "") -> Timing:
    """The stopping rule. ``batch(n)`` returns at least one new sample (ms), ``n`` the samples still missing to
    the minimum (a hint: a batcher may return more). Batches are added while there are fewer than
    ``min_samples`` samples, or while the spread is above ``target_spread`` and less than ``max_ms`` of wall
    time has passed."""
    start = clock()
    times: list[float] = []
    while True:
        new = list(batch(max(1, min_samples - len(times))))
        if not new:
            raise RuntimeError("a timing batch returned no samples")
        times.extend(new)
        if len(times) < min_samples:
            continue
        if summarise(times).spread <= target_spread or (clock() - start) * 1e3 >= max_ms:
            break
    return summarise(times, calls_per_sample, timer, target_spread)


Rotate = Callable[[int], Sequence[tuple[Callable[[], object], Sequence[torch.Tensor] | None]]]


def bench(fn: Callable[[], object], grad_to_none: Sequence[torch.Tensor] | None = None, *,
          timer: str = "auto", rotate: Rotate | None = None, input_bytes: int = 0, rep_ms: float = 100,
          target_spread: float = TARGET_SPREAD, max_ms: float = MAX_MS, warmup_ms: float = 25) -> Timing:
    """Time ``fn`` (run once already) with ``timer`` (``TIMERS``). For the graph timer's input rotation,
    ``rotate(n)`` returns ``n`` more ``(call, grad_to_none)`` pairs, the same call over fresh copies of its
    inputs (``input_bytes`` each; ``rotation_copies`` says how many are needed); without it the graph's inputs
    stay in L2. ``rep_ms`` sizes one batch of samples, ``max_ms`` caps the measuring of a noisy point (never
    below ``rep_ms``)."""
    if timer not in TIMERS:
        raise ValueError(f"timer must be one of {', '.join(TIMERS)}, got {timer!r}")
    max_ms = max(max_ms, rep_ms)
    if not torch.cuda.is_available():
        return _bench_cpu(fn, grad_to_none, rep_ms, target_spread, max_ms)
    flush = _l2_flusher()
    _warm(fn, grad_to_none, flush, warmup_ms)
    plain = None
    if timer in ("plain", "auto"):
        plain = until_stable(lambda n: _plain_batch(fn, grad_to_none, flush, n, rep_ms), target_spread, max_ms,
                             timer="plain")
        # the host's issue time only matters (and costs calls to measure) where the median alone keeps plain
        host_ms = 0.0 if timer == "plain" or use_graph(plain.ms) else host_issue_ms(fn, grad_to_none, flush)
        if timer == "plain" or not use_graph(plain.ms, host_ms):
            return plain
    stream = torch.cuda.current_stream()
    try:
        return _bench_graph(fn, grad_to_none, rotate, input_bytes, rep_ms, target_spread, max_ms)
    except Exception:  # not capturable: the plain timer is the honest fallback
        _after_failed_capture(stream)
        return plain or until_stable(lambda n: _plain_batch(fn, grad_to_none, flush, n, rep_ms), target_spread,
                                     max_ms, timer="plain")


def _after_failed_capture(stream: torch.cuda.Stream) -> None:
    """Leave the process as it was before a capture that failed. torch's ``graph`` context skips both its
    epilogues when the capture ends in an error: the capture stream stays current, and every CUDA generator
    stays in capture mode, so the next ``torch.randn`` fails with "Offset increment outside graph capture"
    (every later point of a sweep did). A generator pointed at a clone of its own state (same seed and offset,
    not capturing) is usable again."""
    torch.cuda.set_stream(stream)
    torch.cuda.synchronize()
    for generator in torch.cuda.default_generators:
        generator.graphsafe_set_state(generator.clone_state())


def use_graph(plain_ms: float, host_ms: float = 0.0, threshold_ms: float = GRAPH_BELOW_MS) -> bool:
    """``auto``'s choice: re-time with the graph timer when the plain median is below ``threshold_ms``, or when
    the host's time to issue one call (``host_ms``) is at least ``HOST_BOUND`` of it (the GPU waits for it)."""
    return math.isfinite(plain_ms) and (plain_ms < threshold_ms or host_ms >= HOST_BOUND * plain_ms)


def host_issue_ms(fn, grad_to_none, flush, calls: int = 10) -> float:
    """Host time to issue one timed call (gradients reset, L2 flush, the call) without waiting for the GPU, ms."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        _reset(grad_to_none)
        flush()
        fn()
    issued = (time.perf_counter() - start) * 1e3 / calls
    torch.cuda.synchronize()
    return issued


def rotation_copies(input_bytes: int, l2_bytes: int, limit: int = GRAPH_CALLS_MAX) -> int:
    """How many copies of the inputs keep L2 cold when calls rotate through them: enough that the other
    copies' bytes exceed twice the L2 size (at least 1; at most ``limit``; 1 when ``input_bytes`` is unknown)."""
    if input_bytes <= 0 or l2_bytes <= 0:
        return 1
    return int(min(limit, 1 + math.ceil(2 * l2_bytes / input_bytes)))


def l2_bytes() -> int:
    """This GPU's L2 size (0 without CUDA)."""
    if not torch.cuda.is_available():
        return 0
    return int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or 0)


def launch_overhead_us(calls: int = 2000) -> float:
    """Host cost of one Python call through a closure and a lambda, in microseconds (the floor under any
    per-call host overhead; a provider's wrapper and a kernel launch add to it)."""
    fn = (lambda x: x)
    start = time.perf_counter()
    for _ in range(calls):
        fn(None)
    return (time.perf_counter() - start) / calls * 1e6


# --- GPU timers -------------------------------------------------------------------------------------------


def _reset(grad_to_none) -> None:
    for t in grad_to_none or ():
        t.grad = None


def _l2_flusher() -> Callable[[], None]:
    buffer = torch.empty(max(2 * l2_bytes(), 64 << 20) // 4, dtype=torch.int32, device="cuda")
    return buffer.zero_


def _warm(fn, grad_to_none, flush, warmup_ms: float) -> None:
    deadline = time.perf_counter() + warmup_ms / 1e3
    while True:
        _reset(grad_to_none)
        flush()
        fn()
        torch.cuda.synchronize()
        if time.perf_counter() >= deadline:
            return


def _plain_batch(fn, grad_to_none, flush, at_least: int, rep_ms: float) -> list[float]:
    """One call per sample, L2 flushed before each: enough calls to fill ``rep_ms`` (estimated from the
    first), at least ``at_least``."""
    def one() -> tuple:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _reset(grad_to_none)
        flush()
        start.record()
        fn()
        end.record()
        return start, end

    first = one()
    torch.cuda.synchronize()
    times = [first[0].elapsed_time(first[1])]
    more = max(at_least - 1, int(rep_ms / max(times[0], 1e-3)) - 1)
    events = [one() for _ in range(min(more, 10_000))]
    torch.cuda.synchronize()
    return times + [s.elapsed_time(e) for s, e in events]


def _bench_graph(fn, grad_to_none, rotate: Rotate | None, input_bytes: int, rep_ms: float, target_spread: float,
                 max_ms: float) -> Timing:
    """Capture one call over each input copy (repeated to at least 8 calls), replay, divide."""
    wanted = rotation_copies(input_bytes, l2_bytes())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # capture needs a side stream; so do the calls' inputs and forward graphs,
        # since autograd runs each backward op on its forward's stream: a forward run on the default stream puts
        # the backward there, outside the capture
        pairs = list(rotate(wanted)) if rotate is not None else [(fn, grad_to_none)]
        for f, grads in pairs:  # warm-up
            _reset(grads)
            f()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    name = "graph-warm" if len(pairs) < wanted else "graph"  # too few copies: inputs hot in L2 between calls
    calls = pairs * max(1, math.ceil(8 / len(pairs)))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for f, grads in calls:
            _reset(grads)  # as the plain timer does: each backward assigns fresh gradients; without it the repeats
            f()  # added theirs to the last ones, captured add kernels that read ~10% slower at 1k-2k tokens
    graph.replay()
    torch.cuda.synchronize()

    def batch(at_least: int) -> list[float]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        first = start.elapsed_time(end)
        out = [first / len(calls)]
        for _ in range(max(at_least - 1, min(1000, int(rep_ms / max(first, 1e-3)) - 1))):
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize()  # one replay per sample: the event pair brackets the graph alone
            out.append(start.elapsed_time(end) / len(calls))
        return out

    return until_stable(batch, target_spread, max_ms, calls_per_sample=len(calls), timer=name)


def _bench_cpu(fn, grad_to_none, rep_ms: float, target_spread: float, max_ms: float) -> Timing:
    def batch(at_least: int) -> list[float]:
        times: list[float] = []
        deadline = time.perf_counter() + rep_ms / 1e3
        while len(times) < at_least or (len(times) < 50 and time.perf_counter() < deadline):
            _reset(grad_to_none)
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return times

    return until_stable(batch, target_spread, max_ms, timer="cpu")


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
