"""Nsight Compute (``ncu``) on one point: counters per call of a provider's kernels.

``run_ncu(point, out_dir)`` runs ncu on a child process (``python -m fa2bench.profiling.ncu child ...``) that warms the
provider up (compilation, autotuning) and then calls it ``calls`` times between ``cudaProfilerStart`` and
``cudaProfilerStop``; ncu runs with ``--profile-from-start off``, so only those calls are profiled, with
``--clock-control none`` (the GPU's own clocks, as in the sweep) and ``--cache-control all`` (caches flushed
before each kernel, like ``do_bench``'s L2 flush). Every kernel of a call is profiled (the naive provider
launches three per forward, five per backward) and the counters are summed per call. The raw report, its CSV
export and ncu's log stay in ``out_dir``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from fa2bench.core import providers, variants
from fa2bench.core.presets import Point, Shape


class ProfileError(Exception):
    """A profile that cannot be taken (no ncu, ncu failed, nothing profiled): one line for the CLI."""


# column -> candidate metrics, first available wins. The tensor pipe: sm__pipe_tensor_cycles_active counts
# every tensor-core instruction class (HMMA on Ampere, also Hopper's warpgroup GMMA, which Triton emits for
# tl.dot on sm_90); the HMMA-only metric is the fallback for older ncu versions.
METRICS = {
    "dram_read_bytes": ("dram__bytes_read.sum",),
    "dram_write_bytes": ("dram__bytes_write.sum",),
    "l2_bytes": ("lts__t_bytes.sum",),
    "duration_ns": ("gpu__time_duration.sum",),
    "occupancy_pct": ("sm__warps_active.avg.pct_of_peak_sustained_active",),
    "tensor_pct": ("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
                   "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"),
    "sm_pct": ("sm__throughput.avg.pct_of_peak_sustained_elapsed",),
    "l2_hit_pct": ("lts__t_sector_hit_rate.pct",),
}
SUMMED = ("dram_read_bytes", "dram_write_bytes", "l2_bytes", "duration_ns")  # the rest: duration-weighted
CHILD_TAG = "FA2BENCH_PROFILE_CHILD"
_UNITS = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "tbyte": 1e12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9}


def run_in_group(cmd: Sequence[str], *, timeout: float | None = None, env: dict | None = None,
                 **_ignored) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a new process group, so that a timeout or
    Ctrl-C kills ncu *and* the Python process it profiles (which would otherwise keep the GPU)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def find_ncu() -> str | None:
    return shutil.which("ncu")


def metric_base(metric: str) -> str:
    return metric.split(".", 1)[0]


def parse_query_metrics(text: str) -> set[str]:
    """Base metric names in ``ncu --query-metrics`` output (the first word of each table line)."""
    return {m.group(1) for m in re.finditer(r"^\s*([a-z][a-z0-9]*__[a-z0-9_]+)\b", text, re.MULTILINE)}


def select_metrics(available: set[str] | None) -> dict[str, str]:
    """column -> metric: the first candidate ncu offers (the first of each when ``available`` is unknown)."""
    chosen = {}
    for column, candidates in METRICS.items():
        pick = next((m for m in candidates if available is None or metric_base(m) in available), None)
        if pick:
            chosen[column] = pick
    return chosen


def child_args(point: Point, calls: int, warmup: int) -> list[str]:
    s = point.shape
    return ["-m", "fa2bench.profiling.ncu", "child", "--provider", point.provider, "--mode", point.mode,
            "--dtype", point.dtype, "--batch", str(s.batch), "--heads", str(s.heads), "--kv-heads",
            str(s.kv_heads), "--seqlen-q", str(s.seqlen_q), "--seqlen-k", str(s.seqlen_k), "--headdim",
            str(s.headdim), "--causal", "on" if s.causal else "off", "--page-size", str(s.page_size), "--ragged",
            "on" if s.ragged else "off", "--variant", s.variant, "--calls", str(calls), "--warmup", str(warmup)]


def ncu_command(ncu: str, point: Point, report: Path, metrics: Iterable[str], calls: int = 1, warmup: int = 3,
                python: str = sys.executable) -> list[str]:
    """The ncu command that profiles ``calls`` calls of ``point`` into ``report`` (.ncu-rep is appended)."""
    return [ncu, "--clock-control", "none", "--cache-control", "all", "--target-processes", "all",
            "--profile-from-start", "off", "--metrics", ",".join(metrics), "--force-overwrite",
            "--export", str(report), python, *child_args(point, calls, warmup)]


def export_command(ncu: str, report: Path) -> list[str]:
    """Re-read a saved report as CSV: one row per kernel, metrics in base units."""
    return [ncu, "--import", str(report), "--csv", "--page", "raw", "--print-units", "base"]


def _number(text: str, unit: str = "") -> float | None:
    text = (text or "").strip().replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return value * _UNITS.get(unit.strip().lower(), 1)


def parse_ncu_csv(text: str, metrics: dict[str, str]) -> list[dict]:
    """One dict per profiled kernel launch: id, kernel and each ``metrics`` column (bytes, ns, %).

    Reads ncu's raw page (a wide table: a header of metric names, a row of units, one row per kernel) and
    the details page (a long table with Metric Name / Metric Unit / Metric Value). Lines ncu prints
    before the table (``==PROF==`` and the like) are skipped.
    """
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("==")]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    start = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if start is None:
        return []
    header, body = rows[start], rows[start + 1:]
    if "Metric Name" in header:
        return _parse_long(header, body, metrics)
    col = {name: i for i, name in enumerate(header)}
    name_at, id_at = col["Kernel Name"], col.get("ID")
    units = [""] * len(header)
    if body and not body[0][name_at].strip():  # the units row names no kernel
        units, body = body[0], body[1:]
    kernels = []
    for n, r in enumerate(body):
        if len(r) < len(header):
            continue
        entry = {"id": int(_number(r[id_at]) or 0) if id_at is not None else n, "kernel": r[name_at]}
        for column, metric in metrics.items():
            i = col.get(metric)
            entry[column] = _number(r[i], units[i]) if i is not None else None
        kernels.append(entry)
    return kernels


def _parse_long(header: list[str], body: list[list[str]], metrics: dict[str, str]) -> list[dict]:
    col = {name: i for i, name in enumerate(header)}
    by_metric = {metric: column for column, metric in metrics.items()}
    kernels: dict[str, dict] = {}
    for r in body:
        if len(r) < len(header):
            continue
        kid = r[col["ID"]]
        entry = kernels.setdefault(kid, {"id": int(_number(kid) or 0), "kernel": r[col["Kernel Name"]],
                                         **{c: None for c in metrics}})
        column = by_metric.get(r[col["Metric Name"]])
        if column:
            entry[column] = _number(r[col["Metric Value"]], r[col["Metric Unit"]])
    return sorted(kernels.values(), key=lambda k: k["id"])


def _weighted(rows: list[dict], column: str) -> float | None:
    pairs = [(r[column], r.get("duration_ns") or 0.0) for r in rows if r.get(column) is not None]
    if not pairs:
        return None
    weight = sum(w for _, w in pairs)
    if weight <= 0:
        return sum(v for v, _ in pairs) / len(pairs)
    return sum(v * w for v, w in pairs) / weight


def per_call(kernels: list[dict], calls: int) -> dict:
    """Counters of one call: byte and time columns summed over its kernels; percentages weighted by time."""
    out: dict = {"kernels_per_call": len(kernels) / calls}
    for column in METRICS:
        if column in SUMMED:
            values = [k[column] for k in kernels if k.get(column) is not None]
            out[column] = sum(values) / calls if values else None
        else:
            out[column] = _weighted(kernels, column)
    read, write = out.get("dram_read_bytes"), out.get("dram_write_bytes")
    out["dram_bytes"] = read + write if read is not None and write is not None else None
    return out


def by_kernel(kernels: list[dict], calls: int) -> list[dict]:
    """Counters per kernel name, per call (launches, bytes and time summed; percentages weighted by time)."""
    groups: dict[str, list[dict]] = {}
    for k in kernels:
        groups.setdefault(k["kernel"], []).append(k)
    return [{"kernel": name, **per_call(rows, calls)} for name, rows in groups.items()]


@dataclass
class NcuResult:
    point: Point
    kernels: list[dict]  # one dict per profiled launch
    summary: dict  # per call
    config: str  # the provider's config in the child
    report: Path
    csv: Path
    log: Path
    calls: int
    metrics: tuple[str, ...] = ()  # what ncu collected


def query_metrics(ncu: str, run=run_in_group) -> set[str] | None:
    """The base metrics this ncu offers on this GPU, or None when the query gives nothing readable."""
    try:
        done = run([ncu, "--query-metrics"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    names = parse_query_metrics(done.stdout or "")
    return names or None


def rejected_metrics(output: str, metrics: dict[str, str]) -> dict[str, str]:
    """The requested metrics that ncu's error lines name (a metric this ncu or GPU does not know)."""
    errors = "\n".join(line for line in output.splitlines() if "==ERROR==" in line)
    return {c: m for c, m in metrics.items() if m in errors or metric_base(m) in errors}


def _why_ncu_failed(output: str, code: int) -> str:
    if "ERR_NVGPUCTRPERM" in output:
        return ("ncu may not read the GPU's performance counters (ERR_NVGPUCTRPERM): run as root or allow "
                "profiling for all users (NVreg_RestrictProfilingToAdminUsers=0)")
    errors = [line.strip() for line in output.splitlines() if "==ERROR==" in line or "Error" in line]
    return f"ncu exited with code {code}: {errors[-1] if errors else 'see the log'}"


def run_ncu(point: Point, out_dir: Path, *, ncu: str | None = None, calls: int = 1, warmup: int = 3,
            metrics: dict[str, str] | None = None, run=run_in_group, timeout_s: float = 540) -> NcuResult:
    """Profile ``calls`` calls of ``point`` under ncu; the raw report, its CSV and ncu's log go to ``out_dir``."""
    ncu = ncu or find_ncu()
    if not ncu:
        raise ProfileError("Nsight Compute's `ncu` is not on PATH; install Nsight Compute or add it to PATH")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics or select_metrics(query_metrics(ncu, run))
    from fa2bench.run.results import write_meta
    from fa2bench.run.runner import environment_meta

    write_meta(out_dir, {**environment_meta("cuda"), "kind": "ncu", "point": point.fields(), "calls": calls,
                         "warmup": warmup, "metrics": metrics})
    stem = out_dir / "report"
    report, csv_path, log = stem.with_suffix(".ncu-rep"), stem.with_suffix(".csv"), out_dir / "ncu.log"
    for attempt in range(2):
        command = ncu_command(ncu, point, stem, metrics.values(), calls, warmup)
        try:
            done = run(command, capture_output=True, text=True, timeout=timeout_s, env={**os.environ})
        except subprocess.TimeoutExpired:
            raise ProfileError(f"ncu took longer than {timeout_s:.0f} s for {point.provider} "
                               f"{point.shape.label()}") from None
        output = (done.stdout or "") + (done.stderr or "")
        log.write_text("$ " + " ".join(command) + "\n" + output)
        rejected = rejected_metrics(output, metrics) if done.returncode else {}
        if not rejected or attempt or len(rejected) == len(metrics):
            break
        metrics = {c: m for c, m in metrics.items() if c not in rejected}  # ask again without them
    child = _child_report(output)
    if child.get("error"):
        raise ProfileError(f"{point.provider} failed under ncu: {child['error']}")
    if done.returncode != 0:
        raise ProfileError(_why_ncu_failed(output, done.returncode) + f" (log: {log})")
    if not report.exists():
        raise ProfileError(f"ncu wrote no report (log: {log})")
    exported = run(export_command(ncu, report), capture_output=True, text=True, timeout=300)
    csv_path.write_text(exported.stdout or "")
    if exported.returncode != 0:
        raise ProfileError(f"ncu could not export {report}: {(exported.stderr or '').strip()[-300:]}")
    kernels = parse_ncu_csv(exported.stdout or "", metrics)
    if not kernels:
        raise ProfileError(f"ncu profiled no kernel of {point.provider} (log: {log})")
    return NcuResult(point, kernels, per_call(kernels, calls), child.get("config", ""), report, csv_path, log,
                     calls, tuple(metrics.values()))


def _child_report(output: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith(CHILD_TAG):
            try:
                return json.loads(line[len(CHILD_TAG):])
            except json.JSONDecodeError:
                return {}
    return {}


def parse_child(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Point]:
    """The child's arguments (``child_args`` less its first three) and the point they name."""
    parser = argparse.ArgumentParser(prog="python -m fa2bench.profiling.ncu child")
    for name in ("--provider", "--mode", "--dtype"):
        parser.add_argument(name, required=True)
    for name in ("--batch", "--heads", "--kv-heads", "--seqlen-q", "--seqlen-k", "--headdim"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--causal", choices=("off", "on"), default="off")  # one point: fa2bench's spelling
    parser.add_argument("--page-size", type=int, default=0)
    parser.add_argument("--ragged", choices=("off", "on"), default="off")
    parser.add_argument("--variant", default=variants.DENSE)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    a = parser.parse_args(argv)
    a.causal, a.ragged = a.causal == "on", a.ragged == "on"
    return a, Point(a.provider, a.mode, a.dtype, Shape.from_row(vars(a)))


def child_main(argv: Sequence[str] | None = None) -> int:
    """The process ncu profiles: warm up (compile, autotune), then ``calls`` calls inside cudaProfilerStart /
    cudaProfilerStop, then one ``FA2BENCH_PROFILE_CHILD {json}`` line (the provider's config, or the error)."""
    a, point = parse_child(argv)
    import torch

    from fa2bench.profiling.profile import call_once, prepare

    try:
        call, grads = prepare(point)
        for _ in range(max(a.warmup - 1, 0)):
            call_once(call, grads)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()  # cudaProfilerStart: ncu --profile-from-start off profiles from here
        for _ in range(a.calls):
            call_once(call, grads)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    except Exception as exc:  # reported to the parent on one line
        print(CHILD_TAG + json.dumps({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}),
              flush=True)
        return 1
    print(CHILD_TAG + json.dumps({"config": providers.get(a.provider).config(), "calls": a.calls}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "child":
        print("usage: python -m fa2bench.profiling.ncu child --provider ... (the process `fa2bench profile --ncu` "
              "runs under Nsight Compute)", file=sys.stderr)
        return 2
    return child_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
