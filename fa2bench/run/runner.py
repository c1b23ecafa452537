"""Runs points: each not already in the results store is run and its row appended at once (``run_points``,
the one loop). How one point runs is the caller's: a sweep's (``sweep_points``) runs ``point.run_point``, with
``RunOptions.isolate`` in a worker process (``fa2bench.run.worker``), so a crash, a broken CUDA context or a
hang costs one point (``error`` / ``timeout``), not the sweep; the ring's runs a collective that every rank
of its process group calls in lockstep (``fa2bench.distributed.ringbench``). Also the run's provenance for
meta.json (``collect_meta``, ``git_state``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import sys
from dataclasses import asdict
from typing import Callable, Iterable, Iterator

import torch

from fa2bench.run import hardware
from fa2bench.run.point import RunOptions, run_point
from fa2bench.run.provenance import git_state
from fa2bench.run.results import RunWriter
from fa2bench.core.presets import Point, SweepSpec


RunOne = Callable[[Point], dict]  # how one point runs: its row, a failure being a row with a status


def run_points(points: Iterable[Point], writer, run_one: RunOne,
               on_point: Callable[[Point, dict | None], None] | None = None) -> int:
    """The one loop every kind of point goes through (a sweep's, a sharded sweep's share, the ring's
    collectives): each point not already in ``writer.done`` is run (``run_one(point)``, which records a failure
    as a row with its status) and its row appended at once (``writer.append``). Returns rows written.

    ``on_point(point, row)`` is called after each point (row None when skipped on resume)."""
    written = 0
    for point in points:
        if point.key() in writer.done:
            if on_point:
                on_point(point, None)
            continue
        row = run_one(point)
        writer.append(row)
        written += 1
        if on_point:
            on_point(point, row)
    return written


@contextlib.contextmanager
def sweep_points(opts: RunOptions, device_peaks: dict, meta: dict | None = None) -> Iterator[RunOne]:
    """How a sweep runs one point: ``point.run_point`` in this process, or with ``opts.isolate`` in a
    ``fa2bench.run.worker.Worker``, restarted after a crash, a broken CUDA context or a point past
    ``opts.point_timeout_s`` (closed when the block ends). ``meta``: the run's meta.json, whose measured copy
    rate fills each row's pct_copy_bw."""
    copy_rate = ((meta or {}).get("ceilings") or {}).get("copy_tb_per_s")
    if opts.copy_tb_per_s is None and copy_rate:
        opts = dataclasses.replace(opts, copy_tb_per_s=copy_rate)
    if not opts.isolate:
        yield lambda point: run_point(point, opts, device_peaks)
        return
    from fa2bench.run.worker import Worker

    # the worker uses this process's GPU (a torchrun rank's own, say), not GPU 0
    pinned = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    with Worker(opts.plugins, cuda_device=pinned) as worker:
        yield lambda point: worker.run(point, opts, device_peaks, opts.point_timeout_s)


def run_sweep(points: Iterable[Point], writer: RunWriter, opts: RunOptions, device_peaks: dict,
              on_point: Callable[[Point, dict | None], None] | None = None) -> int:
    """``run_points`` with the sweep's way of running a point (``sweep_points``). Returns rows written."""
    with sweep_points(opts, device_peaks, getattr(writer, "meta", None)) as run_one:
        return run_points(points, writer, run_one, on_point)


def collect_meta(spec: SweepSpec, providers_run: tuple[str, ...], opts: RunOptions,
                 peaks: dict[str, hardware.PeakInfo]) -> dict:
    """Everything needed to trust and reproduce a run, for meta.json."""
    any_peak = next(iter(peaks.values()))
    return {
        **environment_meta(opts.device),
        "sweep": {**asdict(spec), "providers": list(providers_run)},
        "options": asdict(opts),
        "peak": {"tflops_by_dtype": {d: p.tflops for d, p in peaks.items()}, "source": any_peak.source,
                 "matched": any_peak.matched, "a100_tflops": hardware.A100_PEAK_TFLOPS},
    }


KERNEL_ENV_PREFIX = "FA2_"  # environment variables that switch the kernels' code (kernels/flash2.py: FA2_FWD_FLAT, ...)


def kernel_env() -> dict[str, str]:
    """The kernel switches set in this process's environment (``FA2_*``): a run's rows are those kernels'."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(KERNEL_ENV_PREFIX)}


def environment_meta(device: str) -> dict:
    """Where and from what a measurement came (start time, command line, GPUs, versions, commit and whether the
    tree was dirty, the kernel switches set in the environment): the part of meta.json that every tool writing
    results shares."""
    return {
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "device": device,
        "kernel_env": kernel_env(),
        "interpreter": device == "cpu",
        "gpus": hardware.gpu_info(),
        "versions": hardware.software_versions(),
        "git": git_state(),
    }
