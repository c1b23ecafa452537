"""Runs sweep points: each not already in the results store is run (``point.run_point``) and its row appended
at once. With ``RunOptions.isolate`` the points run in a worker process (``fa2bench.run.worker``), so a
crash, a broken CUDA context or a hang costs one point (``error`` / ``timeout``), not the sweep. Also the
run's provenance for meta.json (``collect_meta``, ``git_state``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from dataclasses import asdict
from typing import Callable, Iterable

import torch

from fa2bench.run import hardware
from fa2bench.run.point import RunOptions, run_point
from fa2bench.run.provenance import git_state
from fa2bench.run.results import RunWriter
from fa2bench.core.presets import Point, SweepSpec


def run_sweep(points: Iterable[Point], writer: RunWriter, opts: RunOptions, device_peaks: dict,
              on_point: Callable[[Point, dict | None], None] | None = None) -> int:
    """Run each point not already in ``writer.done`` and append its row at once. Returns rows written.

    ``on_point(point, row)`` is called after each point (row None when skipped on resume). With
    ``opts.isolate`` the points run in a ``fa2bench.run.worker.Worker``, restarted after a crash, a broken CUDA
    context or a point past ``opts.point_timeout_s``.
    """
    written = 0
    worker = None
    copy_rate = ((getattr(writer, "meta", None) or {}).get("ceilings") or {}).get("copy_tb_per_s")
    if opts.copy_tb_per_s is None and copy_rate:  # the run's measured copy rate, for each row's pct_copy_bw
        opts = dataclasses.replace(opts, copy_tb_per_s=copy_rate)
    if opts.isolate:
        from fa2bench.run.worker import Worker

        # the worker uses this process's GPU (a torchrun rank's own, say), not GPU 0
        pinned = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        worker = Worker(opts.plugins, cuda_device=pinned)
    try:
        for point in points:
            if point.key() in writer.done:
                if on_point:
                    on_point(point, None)
                continue
            if worker is not None:
                row = worker.run(point, opts, device_peaks, opts.point_timeout_s)
            else:
                row = run_point(point, opts, device_peaks)
            writer.append(row)
            written += 1
            if on_point:
                on_point(point, row)
    finally:
        if worker is not None:
            worker.close()
    return written


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


def environment_meta(device: str) -> dict:
    """Where and from what a measurement came (start time, command line, GPUs, versions, commit and whether the
    tree was dirty): the part of meta.json that every tool writing results shares."""
    return {
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "device": device,
        "interpreter": device == "cpu",
        "gpus": hardware.gpu_info(),
        "versions": hardware.software_versions(),
        "git": git_state(),
    }
