"""The results store: one tidy row per (shape, provider, mode, dtype), written as each point finishes.

A run folder holds ``results.csv`` (appended and flushed row by row, so a crash or Ctrl-C loses nothing and
``--resume`` skips what is there), ``results.parquet`` (written when the sweep ends) and ``meta.json``
(machine, versions, commit, the sweep as resolved). ``load_run`` reads a folder back into a DataFrame;
plots, reports, comparisons and notebooks read runs only through it.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from fa2bench import telemetry
from fa2bench.presets import KEY_COLUMNS

STATUSES = ("ok", "wrong", "oom", "unsupported", "error")
COLUMNS = KEY_COLUMNS + (
    "status", "error", "ms", "ms_p20", "ms_p80", "flops", "tflops", "pct_a100_peak", "pct_device_peak",
    "max_rel_error", "peak_mem_mb", "config",
) + telemetry.COLUMNS
CSV_NAME, PARQUET_NAME, META_NAME = "results.csv", "results.parquet", "meta.json"


class ResultsError(Exception):
    """A results folder that cannot be read or written (a usage error for the CLI)."""


class RunWriter:
    """Appends rows to ``results.csv`` in ``out_dir`` as points finish.

    ``columns`` and ``key`` (a row's identity for ``--resume``) default to the sweep's; other kinds of run
    (``fa2bench e2e``) pass their own."""

    def __init__(self, out_dir: Path, resume: bool = False, columns: tuple[str, ...] = COLUMNS,
                 key: Callable[[dict], tuple] | None = None):
        self.out_dir = Path(out_dir)
        self.columns = columns
        self.csv_path = self.out_dir / CSV_NAME
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe = self.out_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ResultsError(f"cannot write to results folder {self.out_dir}: {exc.strerror or exc}") from None
        if self.csv_path.exists() and not resume:
            raise ResultsError(f"{self.out_dir} already holds results; pass --resume to continue it, "
                               "or choose another --out")
        self.done = _finished_keys(self.csv_path, key or row_key) if resume else set()

    def append(self, row: dict) -> None:
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({c: _cell(row.get(c)) for c in self.columns})
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> pd.DataFrame:
        """Write results.parquet from the CSV and return the table."""
        frame = read_csv(self.csv_path)
        frame.to_parquet(self.out_dir / PARQUET_NAME, index=False)
        return frame

    def start(self, meta: dict) -> dict:
        """Write meta.json for a run starting now and return it; a resumed run keeps its first metadata and
        lists each continuation (its start, argv, commit, versions, GPUs) under ``resumed``."""
        earlier = read_meta(self.out_dir) if self.done or self.csv_path.exists() else {}
        if earlier:
            meta = {**earlier, "resumed": earlier.get("resumed", []) + [
                {k: meta.get(k) for k in ("started_utc", "argv", "git", "versions", "gpus")}]}
        write_meta(self.out_dir, meta)
        return meta

    def close(self, meta: dict, complete: bool) -> pd.DataFrame | None:
        """End the run: results.parquet (when any row was written) and meta.json with ``finished_utc`` and
        ``complete`` (False after an interruption). Returns the table, or None without rows."""
        frame = self.finish() if self.csv_path.exists() else None
        meta["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        meta["complete"] = complete
        write_meta(self.out_dir, meta)
        return frame


def _cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def read_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"error": "string", "config": "string", "throttle_reason": "string",
                                     "provider": "string", "mode": "string", "dtype": "string",
                                     "status": "string"}, keep_default_na=False, na_values=[""])
    missing = [c for c in KEY_COLUMNS + ("status",) if c not in frame]
    if missing:
        raise ResultsError(f"{path} is not a fa2bench results file (no {', '.join(missing)} column)")
    for col in COLUMNS:
        if col not in frame:
            frame[col] = pd.NA
    frame["causal"] = frame["causal"].map(_as_bool).astype(bool)
    frame["error"] = frame["error"].fillna("")
    return frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]]


def _as_bool(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _finished_keys(csv_path: Path, key: Callable[[dict], tuple]) -> set[tuple]:
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return set()
    frame = read_csv(csv_path)
    return {key(r) for r in frame.to_dict("records")}


def row_key(row: dict) -> tuple:
    """The point key of a results row (same order as ``Point.key``)."""
    return tuple(_as_bool(row[c]) if c == "causal" else (int(row[c]) if c not in ("provider", "mode", "dtype")
                 else str(row[c])) for c in KEY_COLUMNS)


def write_meta(out_dir: Path, meta: dict) -> None:
    path = Path(out_dir) / META_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / META_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from None


def load_run(path: str | Path) -> pd.DataFrame:
    """Load a run folder (or its results.csv / results.parquet) as a DataFrame; ``.attrs["meta"]`` holds
    meta.json and ``.attrs["run_dir"]`` the folder."""
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    if not path.exists():
        raise ResultsError(f"no results folder at {path}")
    csv_path, parquet_path = run_dir / CSV_NAME, run_dir / PARQUET_NAME
    try:
        if path.suffix == ".parquet" or (path.is_dir() and parquet_path.exists() and (
                not csv_path.exists() or parquet_path.stat().st_mtime >= csv_path.stat().st_mtime)):
            frame = pd.read_parquet(parquet_path if path.is_dir() else path)
        elif csv_path.exists() or path.suffix == ".csv":
            frame = read_csv(csv_path if path.is_dir() else path)
        else:
            raise ResultsError(f"{run_dir} holds no {CSV_NAME} or {PARQUET_NAME}: not a fa2bench results folder")
    except ResultsError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise ResultsError(f"cannot read results in {run_dir}: {exc}") from None
    frame.attrs["meta"] = read_meta(run_dir)
    frame.attrs["run_dir"] = str(run_dir)
    return frame
