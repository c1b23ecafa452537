"""One point, in depth: Triton kernel resources, a torch.profiler trace, Nsight Compute counters, and the
measured IO-complexity study.

- ``kernel_resources(provider)``: registers per thread, spills, shared memory, warps, stages and tile sizes of
  every compiled variant of a Triton provider's kernels (the ``TRITON_KERNELS`` of its module), read from
  Triton's compiled-kernel cache; the variants the autotuner chose are marked.
- ``trace(call, path)``: a Kineto (torch.profiler) Chrome trace of a few calls and ``kernel_table`` of the
  GPU kernels they launched.
- ``run_ncu(point, out_dir)``: Nsight Compute (``ncu``) on a child process (``python -m fa2bench.profile
  child ...``) that warms the provider up (compilation, autotuning) and then calls it ``calls`` times between
  ``cudaProfilerStart`` and ``cudaProfilerStop``; ncu runs with ``--profile-from-start off``, so only those
  calls are profiled, with ``--clock-control none`` (the GPU's own clocks, as in the sweep) and
  ``--cache-control all`` (caches flushed before each kernel, like ``do_bench``'s L2 flush). Every kernel of
  a call is profiled (the naive provider launches three per forward, five per backward) and the counters
  are summed per call.
- ``io_study(...)``: ``run_ncu`` across sequence lengths and providers, measured DRAM bytes next to
  ``iomodel.hbm_bytes`` in a CSV and a log-log figure.
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
from typing import Callable, Iterable, Sequence

from fa2bench import iomodel, providers
from fa2bench.presets import Point, Shape, SpecError


class ProfileError(Exception):
    """A profile that cannot be taken (no ncu, ncu failed, nothing profiled): one line for the CLI."""


def resolve_shape(seqlen: int, headdim: int, causal: bool, *, seqlen_k: int | None = None,
                  batch: int | None = None, tokens: int | None = None, heads: int | None = None,
                  hidden: int | None = None, kv_heads: int | None = None) -> Shape:
    """One shape as the sweep builds it: batch (or tokens // seqlen, default 16384 tokens) and heads (or
    hidden // headdim, default hidden 2048), as in the FlashAttention-2 paper's sweep."""
    if batch is not None and tokens is not None:
        raise SpecError("give at most one of --batch and --tokens")
    if heads is not None and hidden is not None:
        raise SpecError("give at most one of --heads and --hidden")
    for name, value in (("--seqlen", seqlen), ("--headdim", headdim), ("--seqlen-k", seqlen_k),
                        ("--batch", batch), ("--tokens", tokens), ("--heads", heads), ("--hidden", hidden),
                        ("--kv-heads", kv_heads)):
        if value is not None and value < 1:
            raise SpecError(f"{name} must be positive, got {value}")
    if batch is None:
        tokens = tokens or 16384
        if tokens < seqlen:
            raise SpecError(f"--tokens {tokens} is smaller than seqlen {seqlen} (batch would be 0)")
        batch = tokens // seqlen
    if heads is None:
        hidden = hidden or 2048
        if hidden % headdim:
            raise SpecError(f"--hidden {hidden} is not a multiple of head dim {headdim}")
        heads = hidden // headdim
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise SpecError(f"--kv-heads {kv_heads} does not divide the number of heads {heads}")
    return Shape(batch, heads, kv_heads, seqlen, seqlen_k or seqlen, headdim, causal)


# --- calling one point ---------------------------------------------------------------------------------


def prepare(point: Point, device: str = "cuda"):
    """``(call, grads)`` for ``point`` as the runner times it, after one call (compilation, autotuning)."""
    from fa2bench import runner

    fn = providers.get(point.provider).make(point.shape)
    q, k, v = runner.make_inputs(point.shape, point.dtype, device, requires_grad=point.mode != "fwd")
    call, grads = runner.timed_call(fn, q, k, v, point.mode)
    _call(call, grads)
    return call, grads


def _call(call, grads) -> None:
    for t in grads or ():
        t.grad = None
    call()


def release_memory() -> None:
    """Return this process's cached GPU memory to the driver (before a child process needs it)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- Triton kernel resources ---------------------------------------------------------------------------


def _chain(kernel) -> list:
    """``kernel`` and every object under it: ``triton.autotune`` and ``triton.heuristics`` wrappers keep the one
    below as ``.fn``, down to the @triton.jit JITFunction (whose own ``.fn`` is the plain Python function)."""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:  # pragma: no cover - Triton is a dependency
        JITFunction = ()
    chain, seen = [], set()
    while kernel is not None and id(kernel) not in seen and len(chain) < 16:
        seen.add(id(kernel))
        chain.append(kernel)
        if isinstance(kernel, JITFunction) or hasattr(kernel, "device_caches"):
            break
        kernel = getattr(kernel, "fn", None)
    return chain


def unwrap_jit(kernel):
    """The @triton.jit function under autotune / heuristics wrappers (each keeps the one below as ``.fn``)."""
    return _chain(kernel)[-1]


def _resolved(kernel):
    """A CompiledKernel, or None: an async compilation's future is taken once it is done, never waited for."""
    if hasattr(kernel, "metadata"):
        return kernel
    done = getattr(kernel, "done", None)
    if callable(done) and hasattr(kernel, "result"):
        try:
            return _resolved(kernel.result()) if done() else None
        except Exception:  # a compilation that failed
            return None
    return None


def _tables(obj) -> list[dict]:
    """The dicts of compiled kernels ``obj`` keeps: ``device_caches`` (Triton 3.x: per device a tuple
    ``(kernel_cache, kernel_key_cache, target, backend, binder)``, the first mapping a specialisation key to
    its CompiledKernel) or ``cache`` (older Triton: per device a dict key -> CompiledKernel)."""
    tables = []
    for attr in ("device_caches", "cache"):
        caches = getattr(obj, attr, None)
        if not isinstance(caches, dict):
            continue
        for entry in list(caches.values()):
            table = entry[0] if isinstance(entry, (tuple, list)) and entry else entry
            if isinstance(table, dict):
                tables.append(table)
    return tables


def compiled_kernels(kernel) -> list:
    """Every compiled variant of a kernel (a JITFunction, or autotune / heuristics wrappers around one) found in
    Triton's in-memory caches, whichever layout this Triton uses. The autotuner and the forced-config path
    both launch the same JITFunction, so its cache holds the variants of every config that ran."""
    found, seen = [], set()
    for obj in _chain(kernel):
        for table in _tables(obj):
            for value in list(table.values()):
                compiled = _resolved(value)  # skips an autotuner's Configs and compilations still under way
                if compiled is not None and id(compiled) not in seen:
                    seen.add(id(compiled))
                    found.append(compiled)
    return found


def _constants(compiled) -> dict:
    """The constexpr arguments a variant was compiled with, by name (Triton 3 keys them by (index,))."""
    src = getattr(compiled, "src", None)
    consts = getattr(src, "constants", None) or {}
    names = getattr(getattr(src, "fn", None), "arg_names", None) or []
    out = {}
    for key, value in consts.items():
        value = getattr(value, "value", value)  # a tl.constexpr
        if isinstance(key, tuple) and len(key) == 1 and isinstance(key[0], int) and key[0] < len(names):
            out[names[key[0]]] = value
        elif isinstance(key, str):
            out[key] = value
    return out


def _tiles(consts: dict) -> dict:
    return {k: v for k, v in consts.items() if k.startswith("BLOCK_") and isinstance(v, int)}


def _config_key(tiles: dict, warps, stages) -> tuple:
    return tuple(sorted(tiles.items())), warps, stages


def _matches(key: tuple, consts: dict, warps, stages) -> bool:
    """Whether a compiled variant is the config ``key``: same warps and stages, and every tile the config sets
    has the same value among the variant's constexprs. A subset test: the kernel is also compiled with tiles
    no config sets (fa2's ``BLOCK_D``, the padded head dim, passed by the launcher)."""
    tiles, k_warps, k_stages = key
    return k_warps == warps and k_stages == stages and all(consts.get(k) == v for k, v in tiles)


def _chosen(kernel) -> set[tuple]:
    """The configs an autotuner picked (its per-key cache and best_config), as comparable keys."""
    configs = []
    for obj in _chain(kernel)[:-1]:  # the wrappers; the JITFunction's own cache holds compiled kernels
        configs.extend(c for c in (getattr(obj, "cache", None) or {}).values() if hasattr(c, "kwargs"))
        best = getattr(obj, "best_config", None)
        if best is not None:
            configs.append(best)
    return {_config_key({k: v for k, v in c.kwargs.items() if k.startswith("BLOCK_")}, c.num_warps, c.num_stages)
            for c in configs if hasattr(c, "kwargs")}


_CONFIG = re.compile(r"((?:BLOCK_\w+=\d+\s+)+)w(\d+)\s+s(\d+)")


def config_keys(config: str | None) -> set[tuple]:
    """Configs named in a provider's config string (``"fwd: BLOCK_M=128 BLOCK_N=64 w4 s3 | ..."``), as keys
    comparable with compiled variants: launches that bypass the autotuner (forced configs) are found too."""
    keys = set()
    for match in _CONFIG.finditer(config or ""):
        tiles = {k: int(v) for k, v in re.findall(r"(BLOCK_\w+)=(\d+)", match.group(1))}
        keys.add(_config_key(tiles, int(match.group(2)), int(match.group(3))))
    return keys


def describe_compiled(compiled) -> dict:
    """Registers, spills, shared memory, warps, stages and tiles of one compiled variant. Triton sets
    ``n_regs`` and ``n_spills`` only when it loads the binary (``_init_handles``, on the first launch): a
    variant that was compiled but never launched is loaded here, which needs the driver."""
    if getattr(compiled, "n_regs", None) is None and hasattr(compiled, "_init_handles"):
        try:
            compiled._init_handles()
        except Exception:  # no driver, or a variant too large to load (OutOfResources)
            pass
    meta = compiled.metadata
    consts = _constants(compiled)
    tiles = _tiles(consts)
    return {
        "function": getattr(meta, "name", getattr(compiled, "name", "?")),
        "regs": getattr(compiled, "n_regs", None),
        "spills": getattr(compiled, "n_spills", None),
        "shared_bytes": getattr(meta, "shared", None),
        "warps": getattr(meta, "num_warps", None),
        "stages": getattr(meta, "num_stages", None),
        "tiles": " ".join(f"{k}={v}" for k, v in sorted(tiles.items())),
        "_consts": consts,
    }


def resources_of(kernels: dict, config: str | None = None) -> list[dict]:
    """One row per compiled variant of each kernel in ``{name: jit or autotuned kernel}``. ``chosen``: for an
    autotuned kernel, the variants of the configs it picked or that ``config`` (the provider's config string)
    names; for a kernel that is not autotuned, every variant."""
    named = config_keys(config)
    rows = []
    for name, kernel in kernels.items():
        autotuned = any(hasattr(obj, "configs") for obj in _chain(kernel)[:-1])
        picked = (_chosen(kernel) | named) if autotuned else set()
        for compiled in compiled_kernels(kernel):
            row = describe_compiled(compiled)
            consts = row.pop("_consts")
            chosen = any(_matches(key, consts, row["warps"], row["stages"]) for key in picked)
            rows.append({"kernel": name, **row, "autotuned": autotuned, "chosen": chosen if autotuned else True})
    return rows


def kernel_resources(provider: str, chosen_only: bool = True) -> list[dict]:
    """Resources of a Triton provider's compiled kernels (after it has run); [] for other providers."""
    if provider not in providers.triton_providers():
        return []
    module = providers.kernel_module(provider)
    rows = resources_of(module.TRITON_KERNELS, module.last_config())
    return [r for r in rows if r["chosen"]] if chosen_only else rows


# --- torch.profiler trace ------------------------------------------------------------------------------

_TRACE_KINDS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}


def kernel_table(trace_json: dict, calls: int) -> list[dict]:
    """GPU activity of a Chrome trace by name: kind, launches per call, total and mean time (us), share."""
    by_name: dict[tuple[str, str], list[float]] = {}
    for ev in trace_json.get("traceEvents", []):
        kind = _TRACE_KINDS.get(str(ev.get("cat", "")).lower())
        if kind is None or ev.get("ph") != "X":
            continue
        by_name.setdefault((kind, ev.get("name", "?")), []).append(float(ev.get("dur", 0.0)))
    total = sum(sum(d) for d in by_name.values()) or 1.0
    rows = [{"name": name, "kind": kind, "per_call": len(d) / calls, "total_us": sum(d),
             "mean_us": sum(d) / len(d), "share_pct": 100.0 * sum(d) / total}
            for (kind, name), d in by_name.items()]
    return sorted(rows, key=lambda r: -r["total_us"])


def trace(call, path: Path, calls: int = 5, grads=None) -> list[dict]:
    """Profile ``calls`` calls with torch.profiler, write the Chrome trace to ``path``, return its kernel table."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    _call(call, grads)
    _synchronize()
    with profile(activities=activities) as prof:
        for i in range(calls):
            with record_function(f"fa2bench call {i}"):
                _call(call, grads)
        _synchronize()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    return kernel_table(json.loads(path.read_text()), calls)


# --- Nsight Compute ------------------------------------------------------------------------------------

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
    return ["-m", "fa2bench.profile", "child", "--provider", point.provider, "--mode", point.mode,
            "--dtype", point.dtype, "--batch", str(s.batch), "--heads", str(s.heads), "--kv-heads",
            str(s.kv_heads), "--seqlen-q", str(s.seqlen_q), "--seqlen-k", str(s.seqlen_k), "--headdim",
            str(s.headdim), "--causal" if s.causal else "--no-causal", "--calls", str(calls), "--warmup",
            str(warmup)]


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


def child_main(argv: Sequence[str] | None = None) -> int:
    """The process ncu profiles: warm up (compile, autotune), then ``calls`` calls inside cudaProfilerStart /
    cudaProfilerStop, then one ``FA2BENCH_PROFILE_CHILD {json}`` line (the provider's config, or the error)."""
    parser = argparse.ArgumentParser(prog="python -m fa2bench.profile child")
    for name in ("--provider", "--mode", "--dtype"):
        parser.add_argument(name, required=True)
    for name in ("--batch", "--heads", "--kv-heads", "--seqlen-q", "--seqlen-k", "--headdim"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    a = parser.parse_args(argv)
    import torch

    shape = Shape.from_row(a)
    point = Point(a.provider, a.mode, a.dtype, shape)
    try:
        call, grads = prepare(point)
        for _ in range(max(a.warmup - 1, 0)):
            _call(call, grads)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()  # cudaProfilerStart: ncu --profile-from-start off profiles from here
        for _ in range(a.calls):
            _call(call, grads)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    except Exception as exc:  # reported to the parent on one line
        print(CHILD_TAG + json.dumps({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}),
              flush=True)
        return 1
    print(CHILD_TAG + json.dumps({"config": providers.get(a.provider).config(), "calls": a.calls}), flush=True)
    return 0


# --- the IO-complexity study ---------------------------------------------------------------------------

STUDY_CSV, STUDY_FIGURE = "io_study.csv", "io_study.png"
STUDY_COLUMNS = (
    "provider", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim", "causal",
    "status", "error", "config", "kernels_per_call", "dram_read_bytes", "dram_write_bytes", "dram_bytes",
    "model_bytes", "compulsory_bytes", "measured_over_model", "l2_bytes", "duration_ms", "occupancy_pct",
    "tensor_pct", "sm_pct", "l2_hit_pct", "report",
)


def study_row(result: NcuResult) -> dict:
    """A study row: measured DRAM bytes per call next to the HBM model for the config that ran."""
    p, s = result.point, result.point.shape
    model = (iomodel.hbm_bytes(p.provider, s, p.mode, p.dtype, config=result.config)
             if p.provider in iomodel.ALGORITHMS else None)
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


def _append(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STUDY_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in STUDY_COLUMNS})


def load_study(out_dir: Path):
    """The study table of ``out_dir`` (empty when there is none)."""
    import pandas as pd

    path = Path(out_dir) / STUDY_CSV
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(STUDY_COLUMNS))
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""],
                        dtype={"error": "string", "config": "string", "report": "string"})
    frame["causal"] = frame["causal"].astype(str).str.lower().isin(["true", "1"])
    return frame


def io_study(providers_: Sequence[str], seqlens: Sequence[int], headdim: int, out_dir: Path, *,
             causal: bool = False, mode: str = "fwd", dtype: str = "fp16", batch: int | None = None,
             tokens: int | None = None, heads: int | None = None, hidden: int | None = None,
             calls: int = 1, warmup: int = 3, ncu: str | None = None, run=run_in_group,
             on_point: Callable[[Point, dict], None] | None = None, timeout_s: float = 540):
    """Measured DRAM bytes (ncu) against ``iomodel.hbm_bytes`` for each provider and sequence length.

    Rows go to ``out_dir/io_study.csv`` as each point finishes (a point already ``ok`` there is skipped, so a
    study can be run a provider at a time into one folder); raw reports to ``out_dir/ncu/<provider>-s<N>/``;
    the figure, redrawn from the whole table, to ``out_dir/io_study.png``. A failing point is a row with
    status ``error`` and the study goes on. Returns the table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ncu = ncu or find_ncu()
    if not ncu:
        raise ProfileError("Nsight Compute's `ncu` is not on PATH; install Nsight Compute or add it to PATH")
    existing = load_study(out_dir)
    done = {(r["provider"], int(r["seqlen_q"]), int(r["headdim"]), bool(r["causal"]), r["mode"], r["dtype"])
            for r in existing.to_dict("records") if r.get("status") == "ok"}
    shapes = {n: resolve_shape(n, headdim, causal, batch=batch, tokens=tokens, heads=heads, hidden=hidden)
              for n in seqlens}  # a bad size fails here, before any profiling
    metrics = select_metrics(query_metrics(ncu, run))
    for provider in providers_:
        for seqlen in seqlens:
            point = Point(provider, mode, dtype, shapes[seqlen])
            if (provider, seqlen, headdim, causal, mode, dtype) in done:
                continue
            try:
                result = run_ncu(point, out_dir / "ncu" / f"{provider}-s{seqlen}", ncu=ncu, calls=calls,
                                 warmup=warmup, metrics=metrics, run=run, timeout_s=timeout_s)
                row = study_row(result)
            except ProfileError as exc:
                row = {**point.fields(), "status": "error", "error": str(exc)}
            _append(out_dir / STUDY_CSV, row)
            if on_point:
                on_point(point, row)
    frame = load_study(out_dir)
    plot_io(frame, out_dir / STUDY_FIGURE)
    return frame


def plot_io(frame, path: Path) -> Path | None:
    """Log-log figure: measured DRAM bytes per (batch x head) against sequence length, with the model
    (dashed, same colour), the L2 request bytes where ncu gave them (crosses: what the kernels asked of the
    memory system before L2 filtered it) and the compulsory floor (grey, dotted). None when no point is ok."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from fa2bench import providers

    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    if not len(ok):
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    per_head = ok["batch"].astype(float) * ok["heads"].astype(float)
    ok = ok.assign(measured=ok["dram_bytes"].astype(float) / per_head, model=ok["model_bytes"] / per_head,
                   floor=ok["compulsory_bytes"] / per_head, l2=ok["l2_bytes"].astype(float) / per_head)
    for name, group in ok.groupby("provider", sort=False):
        group = group.sort_values("seqlen_q")
        known = name in providers.REGISTRY
        color = providers.get(name).color if known else None
        label = providers.get(name).label if known else name
        line, = ax.plot(group["seqlen_q"], group["measured"], "o-", color=color, label=f"{label}: DRAM (ncu)")
        if group["l2"].notna().any():
            ax.plot(group["seqlen_q"], group["l2"], "x", color=line.get_color(), alpha=0.7,
                    label=f"{label}: L2 requests (ncu)")
        ax.plot(group["seqlen_q"], group["model"], "--", color=line.get_color(), alpha=0.8,
                label=f"{label}: model ({iomodel.algorithm(name) if name in iomodel.ALGORITHMS else '?'})")
    floor = ok.groupby("seqlen_q")["floor"].max().sort_index()
    ax.plot(floor.index, floor.values, ":", color="0.5", label="compulsory (Q, K, V read, O written once)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sorted(ok["seqlen_q"].unique()))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    first = ok.iloc[0]
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("HBM bytes per call per (batch x head)")
    ax.set_title(f"DRAM traffic, ncu vs model: {first['mode']} {first['dtype']}, d={first['headdim']}"
                 f"{', causal' if first['causal'] else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "child":
        print("usage: python -m fa2bench.profile child --provider ... (the process `fa2bench profile --ncu` "
              "runs under Nsight Compute)", file=sys.stderr)
        return 2
    return child_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
