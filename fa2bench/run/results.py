"""The results store: one tidy row per (shape, provider, mode, dtype), written as each point finishes.

A run folder holds ``results.csv`` (appended and flushed row by row, so a crash or Ctrl-C loses nothing and
``--resume`` skips what is there), ``results.parquet`` (written when the sweep ends) and ``meta.json``
(machine, versions, commit, the sweep as resolved). One writer at a time: a ``RunWriter`` holds an exclusive
lock on its folder (``.fa2bench.lock``, released by ``close``) and a second writer is refused with one line.
``load_run`` reads a folder back into a DataFrame; plots, reports, comparisons and notebooks read runs only through it.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from filelock import FileLock, Timeout

from fa2bench.run import telemetry
from fa2bench.core.presets import KEY_COLUMNS, KEY_DEFAULTS

STATUSES = ("ok", "wrong", "oom", "unsupported", "error", "timeout")
COLUMNS = KEY_COLUMNS + (
    "status", "error", "ms", "ms_p20", "ms_p80", "reps", "flops", "tflops", "pct_a100_peak", "pct_device_peak",
    "max_rel_error", "peak_mem_mb", "config",
    "config_cached",  # True: every autotuned config came from the disk cache; False: searched in this run
    "us", "gbps", "pct_copy_bw",  # latency; compulsory bytes / time, against the measured copy rate
    # the timing's own record (fa2bench.run.timing): samples behind the quantiles, (p80 - p20) / median, the
    # timer, and noisy = the spread stayed above the target (the row stays ok); empty in runs before them
    "samples", "spread", "timer", "noisy",
) + telemetry.COLUMNS + (
    "point_s",  # wall time the point took: check, compile/autotune, timing, telemetry (where a sweep's time goes)
    "setup_s", "timing_s",  # of point_s: set-up (provider, inputs, check, first call: compile/autotune), timing
)
# columns that hold text (every other one must be empty or a number); other tables go through this store too:
# "report" is the IO study's ncu report path, "model", "note", "checkpointing" and "parallel" are e2e rows'
# (fa2bench.e2e.schema), "impl", "gpu" and "detail" ring rows' (fa2bench.distributed.ringbench)
_TEXT_COLUMNS = ("provider", "mode", "dtype", "causal", "ragged", "variant", "status", "error", "config",
                 "config_cached",
                 "throttle_reason", "throttled", "timer", "noisy", "report", "model", "note", "checkpointing",
                 "parallel", "impl", "gpu", "detail")
CSV_NAME, PARQUET_NAME, META_NAME = "results.csv", "results.parquet", "meta.json"
# Nsight Compute's DRAM bytes per point (fa2bench.profiling.iostudy), in a run folder or its own
IO_STUDY_CSV = "io_study.csv"
LOCK_NAME = ".fa2bench.lock"
DAMAGED_NAME = "results.csv.damaged"  # rows dropped on resume, kept for inspection (<table>.damaged for others)


class ResultsError(Exception):
    """A results folder that cannot be read or written (a usage error for the CLI)."""


class RunWriter:
    """Appends rows to ``results.csv`` in ``out_dir`` as points finish.

    A table is described by ``columns`` and ``key`` (a row's identity for ``--resume``, or None for a row of
    the table that is not one of this run's points: a ring row of another world size), by default the sweep's;
    other tables of the same store pass their own: ``csv_name`` names another file (the IO study's
    ``io_study.csv``), and another kind of run (``fa2bench e2e``) writes its own columns into results.csv.
    ``RunWriter.start`` begins a run (meta.json checked and written), ``close`` ends it.
    """

    def __init__(self, out_dir: Path, resume: bool = False, *, csv_name: str = CSV_NAME,
                 columns: tuple[str, ...] = COLUMNS, key: Callable[[dict], tuple | None] | None = None):
        self.out_dir = Path(out_dir)
        self.csv_path = self.out_dir / csv_name
        self.columns = tuple(columns)
        self.meta: dict | None = None  # the run's meta.json, once ``start`` wrote it
        self.resumed = False  # whether ``start`` continued a run recorded in the folder
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            probe = self.out_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ResultsError(f"cannot write to results folder {self.out_dir}: {exc.strerror or exc}") from None
        self._lock = lock_folder(self.out_dir)
        if self.csv_path.exists() and not resume:
            raise ResultsError(rerun_refused(self.out_dir))
        self.dropped: list[Damage] = repair_csv(self.csv_path) if resume else []
        self.done = _finished_keys(self.csv_path, key or row_key) if resume else set()

    @classmethod
    def start(cls, out_dir: Path, meta: dict, resume: bool = False, extend: bool = False,
              **table) -> "RunWriter":
        """Begin a run in ``out_dir``: with ``resume``, ``meta`` is checked against the folder's meta.json
        (``continue_meta``: a different sweep is refused unless ``extend``) before anything in the folder is
        touched; then the writer opens (damaged rows dropped, finished keys read) and meta.json is written.
        ``table``: ``csv_name``, ``columns``, ``key`` as for ``RunWriter``. The metadata is ``writer.meta``."""
        earlier = read_meta(out_dir) if resume else {}
        meta = continue_meta(earlier, meta, extend)
        writer = cls(out_dir, resume, **table)
        writer.meta, writer.resumed = meta, bool(earlier)
        writer.save_meta()
        return writer

    def save_meta(self) -> None:
        """Write ``self.meta`` to meta.json (after ``start``, when something is added to it)."""
        write_meta(self.out_dir, self.meta)

    def append(self, row: dict) -> None:
        """Append one row and fsync it; a failing write (a full disk) is a ResultsError, one line."""
        try:
            new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
            columns = self.columns if new else self._columns()
            with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow({c: _cell(row.get(c)) for c in columns})
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise ResultsError(f"cannot write results to {self.csv_path}: {exc.strerror or exc} (the rows before "
                               "this one are saved; free space and continue with --resume)") from None

    def _columns(self) -> tuple[str, ...]:
        """The header of the file being continued (a run written by an older fa2bench keeps its columns)."""
        with open(self.csv_path, newline="", encoding="utf-8", errors="replace") as f:
            return tuple(next(csv.reader(f)))

    def finish(self) -> pd.DataFrame:
        """Write results.parquet from the CSV and return the table."""
        frame = read_csv(self.csv_path)
        frame.to_parquet(self.out_dir / PARQUET_NAME, index=False)
        return frame

    def close(self, complete: bool) -> pd.DataFrame | None:
        """End a run begun with ``start``: results.parquet (when any row was written) and meta.json with
        ``finished_utc`` and ``complete`` (False after an interruption). Returns the table, or None without
        rows."""
        try:
            frame = self.finish() if self.csv_path.exists() else None
            self.meta.update(finished_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             complete=complete)
            self.save_meta()
        except OSError as exc:
            raise ResultsError(f"cannot finish the run in {self.out_dir}: {exc.strerror or exc}") from None
        finally:
            self.release()
        return frame

    def release(self) -> None:
        """Give up the folder's lock (``close`` does; a writer that never closes releases when collected)."""
        self._lock.release()


def lock_folder(out_dir: Path) -> FileLock:
    """The exclusive lock on a results folder, held; ResultsError (one line) when another writer holds it."""
    lock = FileLock(str(Path(out_dir) / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ResultsError(f"another fa2bench run is writing {out_dir} (it holds {LOCK_NAME}); wait for it to "
                           "finish, or choose another --out") from None
    return lock


def rerun_refused(out_dir: Path) -> str:
    """Why a run may not write into ``out_dir``, which already holds results, without --resume."""
    return f"{out_dir} already holds results; pass --resume to continue it, or choose another --out"


def _cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def read_csv(path: Path) -> pd.DataFrame:
    """A results.csv as a DataFrame; damaged rows (see ``scan_csv``) are left out and described in
    ``.attrs["damaged"]``."""
    header, good, damaged = scan_csv(path)
    if not header:
        raise ResultsError(f"{path} is empty: not a fa2bench results file")
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(header)
    text.writelines(line + "\n" for line in good)
    text.seek(0)
    frame = _parse_csv(text)
    frame.attrs["damaged"] = [d.describe() for d in damaged]
    return frame


def _parse_csv(source) -> pd.DataFrame:
    frame = pd.read_csv(source, dtype={"error": "string", "config": "string", "throttle_reason": "string",
                                     "timer": "string",
                                     "provider": "string", "mode": "string", "dtype": "string",
                                     "variant": "string", "status": "string"}, keep_default_na=False, na_values=[""])
    for col in COLUMNS:
        if col not in frame:
            frame[col] = pd.NA
    for col, default in KEY_DEFAULTS.items():  # a file (or row) from before decode points: the defaults
        frame[col] = [default if pd.isna(v) else v for v in frame[col]]
    frame["page_size"] = frame["page_size"].astype(int)
    frame["ragged"] = frame["ragged"].map(_as_bool).astype(bool)
    frame["variant"] = frame["variant"].astype("string")
    frame["causal"] = frame["causal"].map(_as_bool).astype(bool)
    frame["error"] = frame["error"].fillna("")
    return frame[list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]]


def _as_bool(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


@dataclass(frozen=True)
class Damage:
    """A results.csv row that cannot be trusted: where it is, why, and its raw bytes."""
    line: int  # 1-based line number in the file
    reason: str
    raw: bytes

    def describe(self) -> str:
        return f"line {self.line}: {self.reason}"


def scan_csv(path: Path) -> tuple[list[str], list[str], list[Damage]]:
    """Read results.csv without trusting it: ``(header, good rows as text, damaged rows)``.

    Every complete row ends with a newline (``RunWriter.append`` writes and fsyncs whole rows), so a last line
    without one was cut mid-write (a crash, a full disk). A row is also damaged if it is not UTF-8 text, does
    not have one field per column, or has a key, status or number that does not parse. A file whose header
    is not fa2bench's raises ResultsError.
    """
    data = Path(path).read_bytes()
    records = _records(data)
    if not records:
        return [], [], []
    first_line, first = records[0]
    try:
        header = next(csv.reader([first.decode("utf-8").rstrip("\r\n")]))
    except (UnicodeDecodeError, csv.Error):
        raise ResultsError(f"{path} is not a fa2bench results file (its first line is not a CSV header)") from None
    missing = [c for c in KEY_COLUMNS + ("status",) if c not in header and c not in KEY_DEFAULTS]
    if missing:
        raise ResultsError(f"{path} is not a fa2bench results file (no {', '.join(missing)} column)")
    good, damaged = [], []
    for number, raw in records[1:]:
        reason = _row_problem(raw, header)
        if reason:
            damaged.append(Damage(number, reason, raw))
        else:
            good.append(raw.decode("utf-8").rstrip("\r\n"))
    return header, good, damaged


def _records(data: bytes) -> list[tuple[int, bytes]]:
    """Split into CSV records (a quoted field may hold a newline), each with the line number it starts on;
    a record keeps its trailing newline, so a cut last record is recognisable."""
    out, start, line, number = [], 0, 1, 1
    pending = b""
    for chunk in data.splitlines(keepends=True):
        if not pending:
            number = line
        pending += chunk
        line += 1
        if pending.count(b'"') % 2 == 0:
            out.append((number, pending))
            pending = b""
    if pending:
        out.append((number, pending))
    return [(n, r) for n, r in out if r.strip(b"\r\n") or not r.endswith(b"\n")]


def _row_problem(raw: bytes, header: list[str]) -> str | None:
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return f"stray bytes, not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
    if not raw.endswith(b"\n"):
        return "cut off mid-row (no line end: the write did not finish)"
    try:
        fields = next(csv.reader([text]))
    except csv.Error as exc:
        return f"not a CSV row ({exc})"
    if len(fields) != len(header):
        return f"{len(fields)} fields where the header has {len(header)}"
    row = dict(zip(header, fields))
    for col in KEY_COLUMNS:
        value = row.get(col, "")
        if col == "variant":
            continue  # any spelling (read back through fa2bench.core.variants)
        if col in KEY_DEFAULTS:
            if value and value.strip().lower() not in ("true", "false", "1", "0") and not value.isdigit():
                return f"{col} is {value!r}"
        elif col in ("provider", "mode", "dtype"):
            if not value:
                return f"empty {col}"
        elif col == "causal":
            if value.strip().lower() not in ("true", "false", "1", "0"):
                return f"causal is {value!r}"
        elif not value.isdigit() or int(value) < 1:
            return f"{col} is {value!r}, not a positive whole number"
    if row["status"] not in STATUSES:
        return f"unknown status {row['status']!r}"
    for col, value in row.items():
        if col in _TEXT_COLUMNS or col in KEY_COLUMNS or value == "":
            continue
        try:
            float(value)
        except ValueError:
            return f"{col} is {value!r}, not a number"
    return None


def repair_csv(csv_path: Path) -> list[Damage]:
    """Drop damaged rows (``scan_csv``) from ``csv_path`` so that resume re-runs their points; the dropped
    bytes are appended to results.csv.damaged beside it. Returns what was dropped."""
    csv_path = Path(csv_path)
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return []
    header, good, damaged = scan_csv(csv_path)
    if not damaged:
        return []
    with open(_damaged_path(csv_path), "ab") as f:
        for d in damaged:
            f.write(d.raw if d.raw.endswith(b"\n") else d.raw + b"\n")
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(header)
        for line in good:
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(csv_path)
    return damaged


def _damaged_path(csv_path: Path) -> Path:
    """Where the rows dropped from ``csv_path`` go: results.csv.damaged beside results.csv."""
    return Path(csv_path).with_name(Path(csv_path).name + ".damaged")


def _finished_keys(csv_path: Path, key: Callable[[dict], tuple | None]) -> set[tuple]:
    """The keys of the rows in ``csv_path`` (a key of None: a row that is not one of this run's points)."""
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return set()
    frame = read_csv(csv_path)
    return {k for r in frame.to_dict("records") if (k := key(r)) is not None}


def row_key(row: dict) -> tuple:
    """The point key of a results row (same order as ``Point.key``)."""
    def value(c):
        v = row.get(c, KEY_DEFAULTS.get(c))
        if c in KEY_DEFAULTS and (v is None or v is pd.NA or v != v or v == ""):
            v = KEY_DEFAULTS[c]
        if c in ("causal", "ragged"):
            return _as_bool(v)
        return str(v) if c in ("provider", "mode", "dtype", "variant") else int(v)

    return tuple(value(c) for c in KEY_COLUMNS)


def write_meta(out_dir: Path, meta: dict) -> None:
    path = Path(out_dir) / META_NAME
    tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc.strerror or exc}") from None


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
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ResultsError(f"load_run needs a results folder or file, got {path!r}")
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    if not path.exists():
        raise ResultsError(f"no results folder at {path}")
    csv_path, parquet_path = run_dir / CSV_NAME, run_dir / PARQUET_NAME
    try:
        if path.suffix == ".parquet" or (path.is_dir() and parquet_path.exists() and (
                not csv_path.exists() or parquet_path.stat().st_mtime >= csv_path.stat().st_mtime)):
            frame = pd.read_parquet(parquet_path if path.is_dir() else path)
            for col, default in KEY_DEFAULTS.items():  # written before decode points existed
                if col not in frame:
                    frame[col] = default
        elif csv_path.exists() or path.suffix == ".csv":
            frame = read_csv(csv_path if path.is_dir() else path)
        else:
            raise ResultsError(f"{run_dir} holds no {CSV_NAME} or {PARQUET_NAME}: not a fa2bench results folder")
    except ResultsError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise ResultsError(f"cannot read results in {run_dir}: {exc}") from None
    if "ms_p20" in frame:  # a sweep table written before a column existed: the column, empty
        for col in COLUMNS:
            if col not in frame:
                frame[col] = pd.NA
    frame.attrs["meta"] = read_meta(run_dir)
    frame.attrs["run_dir"] = str(run_dir)
    return frame


# --- continuing a run (--resume) -------------------------------------------------------------------------


def sweep_difference(old: dict, new: dict) -> str | None:
    """What differs between two resolved sweeps (meta.json's ``sweep``), as 'seqlens 64,97 -> 64,128; ...';
    None when they are the same sweep."""
    old, new = json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str))

    def show(value):
        if isinstance(value, list):
            return ",".join(map(str, value)) or "(default)"
        return "(default)" if value is None else str(value)

    def differs(key):  # a field one fa2bench version records and another lacks counts only if it is set
        if key not in old or key not in new:
            return (old.get(key) or new.get(key)) not in (None, [], "", False)
        return old[key] != new[key]

    diffs = [f"{key} {show(old.get(key))} -> {show(new.get(key))}" for key in list(dict.fromkeys([*old, *new]))
             if differs(key)]
    return "; ".join(diffs) or None


def continue_meta(earlier: dict, meta: dict, extend: bool = False) -> dict:
    """meta.json for a run continued with --resume: the first run's record, each continuation listed under
    ``resumed``, and every sweep that wrote into the folder under ``sweeps``.

    A sweep other than those already recorded raises ResultsError naming the difference, unless ``extend``
    (the run is then explicitly extended with the new sweep's points); so does another kind of run (meta.json's
    ``kind``: absent for a sweep, "e2e" for ``fa2bench e2e``, whose ``sweep`` is its E2ESpec).
    """
    if not earlier:
        return meta
    kinds = earlier.get("kind", "sweep"), meta.get("kind", "sweep")
    if kinds[0] != kinds[1]:
        raise ResultsError(f"--resume of a {kinds[0]} run with `fa2bench {kinds[1]}`: the folder holds another kind "
                           "of run; choose another --out")
    devices = earlier.get("device"), meta.get("device")
    if None not in devices and devices[0] != devices[1]:
        raise ResultsError(f"--resume of a run measured on {devices[0]} from a {devices[1]} machine: its rows would "
                           f"mix {devices[1]} timings into a {devices[0]} run; resume it on a {devices[0]} machine, or "
                           "choose another --out")
    envs = earlier.get("kernel_env"), meta.get("kernel_env")  # runs before session 23 did not record it
    if None not in envs and envs[0] != envs[1]:
        said = [", ".join(f"{k}={v}" for k, v in env.items()) or "no kernel switch set" for env in envs]
        raise ResultsError(f"--resume with {said[1]} where the run was measured with {said[0]}: its rows would mix two "
                           "builds of the kernels; set the environment as before, or choose another --out")
    kernels = [(m.get("git") or {}).get("kernels_hash") for m in (earlier, meta)]  # recorded since session 33
    if None not in kernels and kernels[0] != kernels[1]:
        commits = [(m.get("git") or {}).get("commit") or "an unknown commit" for m in (earlier, meta)]
        raise ResultsError(f"--resume with other kernel sources than the run was measured with (kernels/ at "
                           f"{commits[1][:12]} differs from {commits[0][:12]}'s): its rows would mix two builds of "
                           "the kernels or their defaults; resume at the run's commit, or choose another --out")
    sweeps = earlier.get("sweeps") or ([earlier["sweep"]] if earlier.get("sweep") else [])
    new = meta.get("sweep")
    known = not sweeps or new is None or any(sweep_difference(s, new) is None for s in sweeps)
    if not known and not extend:
        raise ResultsError(f"--resume with a different sweep than the one this folder holds ("
                           f"{sweep_difference(sweeps[-1], new)}); pass --extend to add these points to the run, "
                           "or choose another --out")
    entry = {k: meta[k] for k in ("started_utc", "argv", "git", "versions", "gpus") if k in meta}
    out = {**earlier, "resumed": earlier.get("resumed", []) + [{**entry, "extended": not known}]}
    if sweeps:
        out["sweeps"] = sweeps + ([new] if not known else [])
    return out


def describe_damage(damaged: list[Damage], csv_path: Path) -> str:
    """One line for the user: which rows of results.csv were dropped and where their bytes went."""
    shown = "; ".join(d.describe() for d in damaged[:3]) + ("; ..." if len(damaged) > 3 else "")
    return (f"dropped {len(damaged)} damaged row(s) from {csv_path} ({shown}); their points will be re-run, "
            f"the bytes are kept in {_damaged_path(csv_path)}")


def count_done(point_keys, done: set) -> int:
    """How many of this sweep's points the folder already holds."""
    return sum(1 for key in point_keys if key in done)


# --- where runs go ----------------------------------------------------------------------------------------


def stamp(now: dt.datetime | None = None) -> str:
    """The UTC time that names output folders, e.g. 20261126T123000Z."""
    return f"{now or dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"


def default_out(device_name: str | None, prefix: str = "") -> Path:
    """``results/<prefix><UTC time>-<gpu>``: where a run goes when no folder is named."""
    return Path("results") / f"{prefix}{stamp()}-{slug(device_name)}"


def slug(device_name: str | None) -> str:
    if not device_name:
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower().replace("nvidia", "")).strip("-")
