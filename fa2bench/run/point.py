"""One sweep point: estimate its memory, set up the provider, check it against the reference, time it, and
turn the outcome into one results row. A failing point (unsupported, wrong, out of memory, an exception)
becomes a row with that status. Each point runs under its dtype's matmul precision
(``fa2bench.core.precision``: TF32 for tf32 points only). ``runner`` runs many, in-process or in a
``worker`` process.

Besides TFLOP/s a row carries ``us`` (the median in microseconds), ``gbps`` (the compulsory bytes of the point,
``iomodel.compulsory_bytes`` or for decode ``decode.compulsory_bytes``, over that time) and ``pct_copy_bw`` (gbps
against the copy rate the run measured into meta.json's ``ceilings``). Decode points (mode ``decode``) get a KV
cache (``decode_ref.make_inputs``), are checked by ``decode_ref.check_decode`` and ask for the timer in
``PREFERRED_TIMER`` (CUDA-graph replay) unless ``--timer`` names another; the row's ``timer`` says which
timer ran.
"""
from __future__ import annotations

import datetime as dt
import gc
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from fa2bench.run import hardware, telemetry, timing

from fa2bench.core import decode, iomodel, memory, precision, providers
from fa2bench.core.config import RUN_OPTIONS
from fa2bench.core.decode_ref import attention_shape, check_decode, decode_adapter, make_inputs as make_decode_inputs
from fa2bench.core.flops import DECODE, attended_pairs, attention_flops, tflops
from fa2bench.core.presets import Point, Shape, SweepSpec
from fa2bench.core.reference import check_attention

# The timer a mode's points ask fa2bench.run.timing for: a decode call takes tens of microseconds, where launch
# overhead and the host dominate what per-call events see, so it is timed by CUDA-graph replay (over fresh
# caches, so L2 stays cold).
PREFERRED_TIMER = {DECODE: "graph"}


@dataclass(frozen=True)
class RunOptions:
    """How points run; the defaults are the sweep's (``fa2bench.core.config.RUN_OPTIONS``)."""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    check: bool = RUN_OPTIONS["check"]
    warmup_ms: float = RUN_OPTIONS["warmup_ms"]
    rep_ms: float = RUN_OPTIONS["rep_ms"]
    peak_tflops: float | None = RUN_OPTIONS["peak_tflops"]  # override of the device peak
    isolate: bool = False  # run points in a worker process (fa2bench.run.worker)
    point_timeout_s: float = RUN_OPTIONS["point_timeout"]  # with isolate: a point running longer is killed
    plugins: tuple[str, ...] = ()  # modules the worker imports first (they may register providers)
    target_spread: float = timing.TARGET_SPREAD  # GPU: repeat until (p80 - p20) / median is at most this ...
    max_ms: float = timing.MAX_MS  # ... or this much measuring time has passed
    copy_tb_per_s: float | None = None  # the run's measured copy rate (meta.json ceilings), for pct_copy_bw
    timer: str = "auto"  # timing.TIMERS; a provider's own ``timer`` wins

    @classmethod
    def of(cls, device: str, run_options: dict) -> "RunOptions":
        """The options of a resolved sweep (``config.run_options`` with isolate and plugins settled)."""
        return cls(device=device, check=run_options["check"], warmup_ms=run_options["warmup_ms"],
                   rep_ms=run_options["rep_ms"], peak_tflops=run_options["peak_tflops"],
                   isolate=run_options["isolate"], point_timeout_s=run_options["point_timeout"],
                   timer=run_options["timer"], plugins=run_options.get("plugins", ()))


def make_inputs(shape: Shape, dtype: str, device: str, requires_grad: bool = False, layout: str = "bhsd"):
    """Fresh N(0, 1) q, k, v seen as (batch, heads, seq, headdim), never zeros; ``layout`` "bshd" lays them out
    in memory as (batch, seq, heads, headdim) (a provider's ``layout``: packed varlen batches are then views)."""
    dt_ = precision.torch_dtype(dtype)

    def one(heads, seqlen):
        if layout == "bshd":
            t = torch.randn(shape.batch, seqlen, heads, shape.headdim, dtype=dt_, device=device).transpose(1, 2)
            return t.requires_grad_(requires_grad)
        return torch.randn(shape.batch, heads, seqlen, shape.headdim, dtype=dt_, device=device,
                           requires_grad=requires_grad)

    return one(shape.heads, shape.seqlen_q), one(shape.kv_heads, shape.seqlen_k), one(shape.kv_heads, shape.seqlen_k)


def timed_call(fn, q, k, v, mode: str):
    """The zero-argument call to time for ``mode`` and the tensors whose .grad must be reset between calls.

    bwd times the backward alone (``o.backward(do, retain_graph=True)`` on one forward graph), fwd_bwd both.
    """
    if mode == "fwd":
        return (lambda: fn(q, k, v)), None
    o = fn(q, k, v)
    do = torch.randn_like(o)
    if mode == "bwd":
        return (lambda: o.backward(do, retain_graph=True)), [q, k, v]
    return (lambda: fn(q, k, v).backward(do)), [q, k, v]


def _rotation(fn, point: Point, device: str, layout: str = "bhsd") -> timing.Rotate:
    """``n`` more timed calls of ``point``, each over fresh inputs (the graph timer's L2 rotation)."""
    def rotate(n: int):
        calls = []
        for _ in range(n):
            q, k, v = make_inputs(point.shape, point.dtype, device, point.mode != "fwd", layout)
            calls.append(timed_call(fn, q, k, v, point.mode))
        return calls

    return rotate


def _input_bytes(*tensors) -> int:
    """Bytes one call reads at least (its inputs; backward reads about as much again)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def base_row(point: Point) -> dict:
    """The row of ``point`` before it runs: its key, status ok and its FLOP count."""
    shape = point.shape
    if point.mode == DECODE:  # ragged batches: each sequence's own length
        pairs = sum(attended_pairs(shape.seqlen_q, n, shape.causal)
                    for n in decode.kv_lengths(shape.batch, shape.seqlen_q, shape.seqlen_k, shape.ragged))
        flops = 4 * shape.heads * pairs * shape.headdim
    else:
        flops = attention_flops(shape.batch, shape.heads, shape.seqlen_q, shape.seqlen_k, shape.headdim,
                                shape.causal, point.mode, shape.variant)
    return {**point.fields(), "status": "ok", "error": "", "flops": flops}


def compulsory_bytes(point: Point) -> float:
    """The bytes any algorithm must move for ``point`` (decode: K and V of every attended key once, Q, O)."""
    s = point.shape
    if point.mode == DECODE:
        return float(decode.compulsory_bytes(s.batch, s.heads, s.kv_heads, s.seqlen_q, s.seqlen_k, s.headdim,
                                             s.ragged, iomodel.DTYPE_BYTES[point.dtype]))
    return iomodel.compulsory_bytes(s, point.mode, point.dtype)


def bandwidth_columns(point: Point, ms: float, copy_tb_per_s: float | None) -> dict:
    """``us``, ``gbps`` (compulsory bytes over the time) and ``pct_copy_bw`` (of the measured copy rate)."""
    gbps = compulsory_bytes(point) / (ms * 1e-3) / 1e9
    return {"us": ms * 1e3, "gbps": gbps,
            "pct_copy_bw": 100.0 * gbps / (copy_tb_per_s * 1e3) if copy_tb_per_s else float("nan")}


def cuda_context_error() -> str | None:
    """Why this process's CUDA context is unusable (a sticky error such as an illegal memory access), or None."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    try:
        torch.cuda.synchronize()
        torch.ones(1, device="cuda").add_(1).item()
    except Exception as exc:  # RuntimeError / torch.AcceleratorError, by torch version
        return first_line(exc)
    return None


def run_point(point: Point, opts: RunOptions, device_peaks: dict[str, float | None]) -> dict:
    """One results row for ``point``; ``device_peaks`` maps dtype to this GPU's peak TFLOP/s. ``point_s`` is
    the wall time it took, everything included (the check, compilation and autotuning, timing, telemetry);
    a point that got as far as timing splits it into ``setup_s`` (provider, inputs, check, first call: where
    compilation and autotuning happen) and ``timing_s`` (the timed calls and telemetry)."""
    start = time.perf_counter()
    row = _run_point(point, opts, device_peaks)
    return {**row, "point_s": round(time.perf_counter() - start, 3)}


def _run_point(point: Point, opts: RunOptions, device_peaks: dict[str, float | None]) -> dict:
    provider = providers.get(point.provider)
    shape = point.shape
    row = base_row(point)
    reason = provider.unsupported_reason(shape, point.dtype, point.mode, opts.device)
    if reason:
        return {**row, "status": "unsupported", "error": reason}
    mem_mode = "fwd" if point.mode == DECODE else point.mode
    too_big = memory.wont_fit(memory.point_bytes(shape, point.dtype, mem_mode, provider.workspace_bytes, opts.check),
                              memory.available_bytes(opts.device))
    if too_big:  # recorded without allocating anything
        return {**row, "status": "oom", "error": too_big}
    with precision.matmul_precision(point.dtype):  # tf32: TF32 matmuls for this point only
        if point.mode == DECODE:
            return _check_and_time_decode(point, provider, row, opts, device_peaks)
        return _check_and_time(point, provider, row, opts, device_peaks)


def _check_and_time(point: Point, provider: providers.Provider, row: dict, opts: RunOptions,
                    device_peaks: dict[str, float | None]) -> dict:
    shape = point.shape
    caught: list[warnings.WarningMessage] = []
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn = provider.make(shape)
            backward = point.mode != "fwd"
            if opts.check:
                q, k, v = make_inputs(shape, point.dtype, opts.device, layout=provider.layout)
                verdict = check_attention(lambda q, k, v, causal: fn(q, k, v), q, k, v, shape.causal,
                                          backward=backward, tf32=point.dtype == "tf32",
                                          variant_kwargs=providers.variant_kwargs(shape, opts.device))
                row["max_rel_error"] = verdict.max_rel_error
                del q, k, v
                if not verdict.ok:
                    return {**row, "status": "wrong", "error": verdict.detail}
            q, k, v = make_inputs(shape, point.dtype, opts.device, backward, provider.layout)
            call, grads = timed_call(fn, q, k, v, point.mode)
            call()  # compilation and autotuning happen here, outside the timed region
        return _timed(row, point, provider, opts, device_peaks, started, call, grads, provider.timer or opts.timer,
                      _rotation(fn, point, opts.device, provider.layout), _input_bytes(q, k, v))
    except Exception as exc:  # recorded, and the sweep goes on
        return {**row, **classify(exc, caught)}
    finally:
        release()


def decode_call(point: Point, provider: providers.Provider, device: str):
    """``(fn, inputs)`` for a decode point: ``fn(cache)`` runs the provider on a cache, ``inputs()`` draws a fresh
    cache (contiguous or paged, uniform or ragged) of the point's shape."""
    shape = point.shape

    def inputs():
        return make_decode_inputs(shape.batch, shape.heads, shape.kv_heads, shape.seqlen_q, shape.seqlen_k,
                                  shape.headdim, shape.page_size, shape.ragged, precision.torch_dtype(point.dtype),
                                  device)

    if provider.decode == "native":
        return provider.make(shape), inputs
    return decode_adapter(provider.make(attention_shape(shape))), inputs


def _check_and_time_decode(point: Point, provider: providers.Provider, row: dict, opts: RunOptions,
                           device_peaks: dict[str, float | None]) -> dict:
    """A decode point: a fresh KV cache (contiguous or paged, uniform or ragged), the check against the decode
    reference, then the preferred timer on another fresh cache."""
    shape = point.shape
    caught: list[warnings.WarningMessage] = []
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn, inputs = decode_call(point, provider, opts.device)
            if opts.check:
                verdict = check_decode(fn, inputs(), shape.causal, tf32=point.dtype == "tf32")
                row["max_rel_error"] = verdict.max_rel_error
                if not verdict.ok:
                    return {**row, "status": "wrong", "error": verdict.detail}
            cache = inputs()

            def call():
                return fn(cache)

            call()  # compilation happens here, outside the timed region

        def rotate(n: int):  # the graph timer's L2 rotation: the same call over fresh caches
            return [((lambda c=c: fn(c)), None) for c in (inputs() for _ in range(n))]

        return _timed(row, point, provider, opts, device_peaks, started, call, None,
                      provider.timer or _decode_timer(point, opts), rotate,
                      _input_bytes(cache.q, cache.k_cache, cache.v_cache))
    except Exception as exc:  # recorded, and the sweep goes on
        return {**row, **classify(exc, caught)}
    finally:
        release()


def _decode_timer(point: Point, opts: RunOptions) -> str:
    """The sweep's ``--timer`` when it names one; under ``auto`` the mode's preferred timer."""
    return PREFERRED_TIMER.get(point.mode, "auto") if opts.timer == "auto" else opts.timer


def _timed(row: dict, point: Point, provider: providers.Provider, opts: RunOptions, device_peaks: dict,
           started: float, call, grads, timer: str, rotate, input_bytes: int) -> dict:
    """The set-up (begun at ``started``) is over: time ``call`` with ``timer`` while NVML samples the GPU, and fill
    the row with the timing, throughput, bandwidth, config and telemetry of those calls."""
    row["setup_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    with telemetry.Window() as window:  # NVML sampled while the timed calls run
        measured = timing.bench(call, grads, timer=timer, rotate=rotate, input_bytes=input_bytes,
                                warmup_ms=opts.warmup_ms, rep_ms=opts.rep_ms, target_spread=opts.target_spread,
                                max_ms=opts.max_ms)
    achieved = tflops(row["flops"], measured.ms)
    row.update(**measured.row(), tflops=achieved,
               pct_a100_peak=hardware.pct_of(achieved, hardware.A100_PEAK_TFLOPS),
               pct_device_peak=hardware.pct_of(achieved, device_peaks.get(point.dtype)),
               peak_mem_mb=timing.peak_memory_mb(call), config=provider.config(),
               **bandwidth_columns(point, measured.ms, opts.copy_tb_per_s),
               config_cached=provider.config_cached())
    row.update(window.columns(measured.ms, row["flops"]))
    row["timing_s"] = round(time.perf_counter() - started, 3)
    return row


def classify(exc: Exception, caught) -> dict:
    """The status and error of a failure (``caught``: the warnings recorded while it ran): a provider's
    ``Unsupported`` or a pinned SDPA backend's refusal is unsupported, out of memory is oom, anything else error.
    Shared with ``fa2bench.e2e``."""
    if isinstance(exc, providers.Unsupported):
        return {"status": "unsupported", "error": str(exc)}
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return {"status": "oom", "error": first_line(exc)}
    text = str(exc)
    if "No available kernel" in text:  # a pinned SDPA backend refused the point; its warnings say why
        said = ""
        for reason in sdpa_reasons(caught):  # "<backend> kernel not used because:" reads on into its checks
            said += (" " if said.endswith(":") else "; " if said else "") + reason
        return {"status": "unsupported", "error": said or first_line(exc)}
    if "out of memory" in text.lower():
        return {"status": "oom", "error": first_line(exc)}
    return {"status": "error", "error": f"{type(exc).__name__}: {first_line(exc)}"}


def sdpa_reasons(caught) -> list[str]:
    """SDPA's reasons for refusing a point, from its warnings: each backend's "<name> kernel not used because:"
    and the checks that failed after it, without the "(Triggered internally at ...)" source locations."""
    reasons = []
    for w in caught:
        message = str(w.message)
        if "Triggered internally" not in message or "sdp_utils" not in message:
            continue
        line = re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", message).strip().splitlines()
        if line and line[0] not in reasons:
            reasons.append(line[0])
    return reasons


def first_line(exc: Exception, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, for a results row's ``error``."""
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def release() -> None:
    """Free what a finished point (or e2e configuration) held: its objects, then PyTorch's cached GPU memory."""
    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.empty_cache()
        except Exception:  # a sticky CUDA error: the point's row already says so, the worker will be replaced
            pass
