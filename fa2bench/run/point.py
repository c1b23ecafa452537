"""One sweep point: estimate its memory, set up the provider, check it against the reference, time it, and
turn the outcome into one results row. A failing point (unsupported, wrong, out of memory, an exception)
becomes a row with that status. Each point runs under its dtype's matmul precision
(``fa2bench.core.precision``: TF32 for tf32 points only). ``runner`` runs many, in-process or in a
``worker`` process.
"""
from __future__ import annotations

import datetime as dt
import gc
import os
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from fa2bench.run import hardware, telemetry, timing

from fa2bench.core import memory, precision, providers
from fa2bench.core.config import RUN_OPTIONS
from fa2bench.core.flops import attention_flops, tflops
from fa2bench.core.presets import Point, Shape, SweepSpec
from fa2bench.core.reference import check_attention


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

    @classmethod
    def of(cls, device: str, run_options: dict) -> "RunOptions":
        """The options of a resolved sweep (``config.run_options`` with isolate and plugins settled)."""
        return cls(device=device, check=run_options["check"], warmup_ms=run_options["warmup_ms"],
                   rep_ms=run_options["rep_ms"], peak_tflops=run_options["peak_tflops"],
                   isolate=run_options["isolate"], point_timeout_s=run_options["point_timeout"],
                   plugins=run_options.get("plugins", ()))


def make_inputs(shape: Shape, dtype: str, device: str, requires_grad: bool = False):
    """Fresh N(0, 1) q, k, v in layout (batch, heads, seq, headdim); never zeros."""
    dt_ = precision.torch_dtype(dtype)

    def one(heads, seqlen):
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


def base_row(point: Point) -> dict:
    """The row of ``point`` before it runs: its key, status ok and its FLOP count."""
    shape = point.shape
    return {**point.fields(), "status": "ok", "error": "",
            "flops": attention_flops(shape.batch, shape.heads, shape.seqlen_q, shape.seqlen_k, shape.headdim,
                                     shape.causal, point.mode)}


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
    the wall time it took, everything included (the check, compilation and autotuning, timing, telemetry)."""
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
    too_big = memory.wont_fit(memory.point_bytes(shape, point.dtype, point.mode, provider.workspace_bytes, opts.check),
                              memory.available_bytes(opts.device))
    if too_big:  # recorded without allocating anything
        return {**row, "status": "oom", "error": too_big}
    with precision.matmul_precision(point.dtype):  # tf32: TF32 matmuls for this point only
        return _check_and_time(point, provider, row, opts, device_peaks)


def _check_and_time(point: Point, provider: providers.Provider, row: dict, opts: RunOptions,
                    device_peaks: dict[str, float | None]) -> dict:
    shape = point.shape
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn = provider.make(shape)
            backward = point.mode != "fwd"
            if opts.check:
                q, k, v = make_inputs(shape, point.dtype, opts.device)
                verdict = check_attention(lambda q, k, v, causal: fn(q, k, v), q, k, v, shape.causal,
                                          backward=backward, tf32=point.dtype == "tf32")
                row["max_rel_error"] = verdict.max_rel_error
                del q, k, v
                if not verdict.ok:
                    return {**row, "status": "wrong", "error": verdict.detail}
            q, k, v = make_inputs(shape, point.dtype, opts.device, requires_grad=backward)
            call, grads = timed_call(fn, q, k, v, point.mode)
            call()  # compilation and autotuning happen here, outside the timed region
        measured = timing.bench(call, grads, opts.warmup_ms, opts.rep_ms, opts.target_spread, opts.max_ms)
        achieved = tflops(row["flops"], measured.ms)
        row.update(ms=measured.ms, ms_p20=measured.ms_p20, ms_p80=measured.ms_p80, reps=measured.reps,
                   tflops=achieved,
                   pct_a100_peak=hardware.pct_of(achieved, hardware.A100_PEAK_TFLOPS),
                   pct_device_peak=hardware.pct_of(achieved, device_peaks.get(point.dtype)),
                   peak_mem_mb=timing.peak_memory_mb(call), config=provider.config())
        row.update(telemetry.measure(call, measured.ms, row["flops"], grad_to_none=grads))
        return row
    except Exception as exc:  # recorded, and the sweep goes on
        return {**row, **classify(exc, caught)}
    finally:
        release()


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
        reasons = [str(w.message).splitlines()[0] for w in caught if "kernel not used" in str(w.message)
                   or "because" in str(w.message)]
        return {"status": "unsupported", "error": "; ".join(reasons) or first_line(exc)}
    if "out of memory" in text.lower():
        return {"status": "oom", "error": first_line(exc)}
    return {"status": "error", "error": f"{type(exc).__name__}: {first_line(exc)}"}


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
