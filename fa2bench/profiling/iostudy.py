"""IO complexity, measured: Nsight Compute's DRAM bytes per call against ``iomodel.hbm_bytes``, across points.

``io_study(points, out_dir)`` profiles each point with ``ncu.run_ncu`` and appends one row to
``out_dir/io_study.csv`` through the results store as it finishes (a point already ``ok`` there is skipped,
so a study can be run a provider at a time into one folder; a failing point is a row with status ``error``
and the study goes on); raw reports go to ``out_dir/ncu/<provider>-s<N>/`` and the figure
(``plots.io_study``), redrawn from the whole table, to ``out_dir/io_study.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from fa2bench.core import iomodel

from fa2bench.profiling import ncu
from fa2bench.core.presets import KEY_COLUMNS, Point
from fa2bench.run.results import IO_STUDY_CSV, RunWriter, read_csv, row_key
from fa2bench.run.runner import environment_meta

STUDY_CSV, STUDY_FIGURE = IO_STUDY_CSV, "io_study.png"
STUDY_COLUMNS = KEY_COLUMNS + (
    "status", "error", "config", "kernels_per_call", "dram_read_bytes", "dram_write_bytes", "dram_bytes",
    "model_bytes", "compulsory_bytes", "measured_over_model", "l2_bytes", "duration_ms", "occupancy_pct",
    "tensor_pct", "sm_pct", "l2_hit_pct", "report",
)


def study_row(result: ncu.NcuResult) -> dict:
    """A study row: measured DRAM bytes per call next to the HBM model for the config that ran."""
    p, s = result.point, result.point.shape
    model = (iomodel.hbm_bytes(p.provider, s, p.mode, p.dtype, config=result.config)
             if iomodel.modelled(p.provider) else None)
    m = result.summary
    return {**p.fields(), "status": "ok", "error": "", "config": result.config,
            "kernels_per_call": m["kernels_per_call"], "dram_read_bytes": m["dram_read_bytes"],
            "dram_write_bytes": m["dram_write_bytes"], "dram_bytes": m["dram_bytes"], "model_bytes": model,
            "compulsory_bytes": iomodel.compulsory_bytes(s, p.mode, p.dtype),
            "measured_over_model": m["dram_bytes"] / model if m["dram_bytes"] is not None and model else None,
            "l2_bytes": m["l2_bytes"],
            "duration_ms": m["duration_ns"] / 1e6 if m["duration_ns"] is not None else None,
            "occupancy_pct": m["occupancy_pct"], "tensor_pct": m["tensor_pct"], "sm_pct": m["sm_pct"],
            "l2_hit_pct": m["l2_hit_pct"], "report": str(result.report)}


def load_study(out_dir: str | Path):
    """The study table of ``out_dir`` (empty when there is none)."""
    import pandas as pd

    path = Path(out_dir) / STUDY_CSV
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(STUDY_COLUMNS))
    frame = read_csv(path)
    return frame[[c for c in STUDY_COLUMNS if c in frame]]


def io_study(points: Sequence[Point], out_dir: str | Path, *, calls: int = 1, warmup: int = 3,
             ncu_path: str | None = None, run=ncu.run_in_group, on_point: Callable[[Point, dict], None] | None = None,
             timeout_s: float = 540):
    """Measured DRAM bytes (ncu) against the HBM model for each point, a provider at a time; returns the table.
    See the module docstring."""
    from fa2bench.read import plots
    out_dir = Path(out_dir)
    ncu_path = ncu_path or ncu.find_ncu()
    if not ncu_path:
        raise ncu.ProfileError("Nsight Compute's `ncu` is not on PATH; install Nsight Compute or add it to PATH")
    writer = RunWriter.start(out_dir, {**environment_meta("cuda"), "kind": "io-study"}, resume=True,
                             csv_name=STUDY_CSV, columns=STUDY_COLUMNS)
    try:
        done = {row_key(r) for r in load_study(out_dir).to_dict("records") if r.get("status") == "ok"}
        order = list(dict.fromkeys(p.provider for p in points))
        metrics = ncu.select_metrics(ncu.query_metrics(ncu_path, run))
        for point in sorted(points, key=lambda p: order.index(p.provider)):
            if point.key() in done:
                continue
            try:
                result = ncu.run_ncu(point, out_dir / "ncu" / f"{point.provider}-s{point.shape.seqlen_q}",
                                     ncu=ncu_path, calls=calls, warmup=warmup, metrics=metrics, run=run,
                                     timeout_s=timeout_s)
                row = study_row(result)
            except ncu.ProfileError as exc:
                row = {**point.fields(), "status": "error", "error": str(exc)}
            writer.append(row)
            if on_point:
                on_point(point, row)
    finally:
        writer.release()  # the folder's lock, for the next study in this process
    frame = load_study(out_dir)
    plots.save_io_study(frame, out_dir / STUDY_FIGURE)
    return frame
