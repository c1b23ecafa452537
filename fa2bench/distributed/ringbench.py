"""The context-parallel scaling benchmark: ring attention against its peers on 1, 2, 4 ... GPUs.

``fa2bench ring`` (``execute``) runs once per world size under torchrun, into one folder; its ranks enter as a
sharded sweep's do, through the same command under torchrun (rank 0 appends rows to ``ring.csv`` as they finish;
``ringcalls`` holds what every rank runs, ``ringcheck`` the gradient check, ``ringreport`` the scaling report)::

    fa2bench ring --gpus 1,2,4 --out R --seqlen 65536..262144   # a torchrun job per GPU count, then the report
    torchrun --standalone --nproc-per-node 4 -m fa2bench ring --out R --seqlen 65536   # one world size by hand
    python -m fa2bench.distributed.ringreport R      # scaling.csv and scaling.png again
    fa2bench ring --gpus 4 --check --out R           # gradients (check.csv)

Every rank draws the same full Q, K, V (one seed) and keeps its zig-zag shard. For each point it first checks
the output on a slice (the last rows of each local chunk, one K/V head group) against a float32 reference over
the whole sequence, with the single-GPU fa2 kernel's error on the same slice as the yardstick (the same
``2 x baseline + floor`` gate as the sweep); then it times the call (median of ``--reps``, each bracketed by a
barrier; the slowest rank's median counts). For ``ring-fa2`` it also times the same schedule with every
transfer skipped (compute only) and the transfers alone (comm only):
communication hidden = (compute + comm - total) / comm, clipped to 0..100%.

Columns of ring.csv (written through the results store, ``fa2bench.run.results``; a job skips the points the
folder already holds): ``COLUMNS``. TFLOP/s per GPU = FLOPs of the whole attention (fa2bench's model) / time /
world size; scaling efficiency (report) = time on 1 GPU / (N x time on N GPUs), per method (all-gather
shares ring-fa2's one-GPU time: on one GPU both are one fa2 call). Memory per GPU = the method's peak beyond
what the rank held before the timed calls, plus the rank's own Q, K, V (and dO) shards.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from fa2bench.core.config import CAUSAL
from fa2bench.core.flops import attention_flops
from fa2bench.core.precision import torch_dtype
from fa2bench.core.presets import SpecError, parse_ints
from fa2bench.distributed import blocks, launch, ring
from fa2bench.distributed.ringcalls import (CpSdpa, cp_layout, cp_options_text, full_inputs, max_over_ranks,
                                            method_call, check_slice, time_call, zigzag_segments, sync)
from fa2bench.distributed.ringcheck import check_gradients
from fa2bench.distributed.ringreport import CSV_NAME, report
from fa2bench.run.point import first_line
from fa2bench.run.results import ResultsError, RunWriter, row_key

# ring.csv in the results store's terms: the sweep's key columns (provider = the method, seqlen_q = seqlen_k = the
# sequence over all ranks), the world size, then what the benchmark measures
KEY = ("provider", "world_size", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim",
       "causal")
COLUMNS = (*KEY, "status", "error", "ms", "ms_p20", "ms_p80", "ms_compute", "ms_comm", "comm_hidden_pct", "flops",
           "tflops_per_gpu", "peak_mem_gb", "max_rel_error", "baseline_rel_error", "impl", "gpu")
DTYPES = ("fp16", "bf16", "fp32")


# --- points ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RingPoint:
    """One row of ring.csv to measure at this world size (the shape's batch, heads and head dim are the run's)."""
    method: str
    mode: str
    dtype: str
    seqlen: int
    causal: bool


def ring_points(methods, seqlens, dtypes, causals, modes, world: int) -> list[RingPoint]:
    """The points of a run at ``world`` ranks, methods outermost (PyTorch's experimental one runs last);
    all-gather is left out on one GPU, where it is ring-fa2 (one fa2 call on the whole sequence)."""
    return [RingPoint(m, mode, dtype, seqlen, causal)
            for m, seqlen, dtype, causal, mode in itertools.product(methods, seqlens, dtypes, causals, modes)
            if not (m == "allgather-fa2" and world == 1)]


def key_fields(method, mode, dtype, batch, heads, kv_heads, seqlen, headdim, causal, world) -> dict:
    """A ring point's key columns (``KEY``) as a row of the results store holds them."""
    return {"provider": method, "world_size": world, "mode": mode, "dtype": dtype, "batch": batch, "heads": heads,
            "kv_heads": kv_heads, "seqlen_q": seqlen, "seqlen_k": seqlen, "headdim": headdim, "causal": causal}


def ring_key(row: dict) -> tuple:
    """A ring.csv row's identity: the sweep's point key and the world size (finished points are skipped)."""
    return (*row_key(row), int(row["world_size"]))


def run_point(method, mode, dtype, batch, heads, kv_heads, seqlen, headdim, causal, impl, reps, warmup):
    """One row of ring.csv (every rank calls this; every rank returns the same row)."""
    me = launch.current()
    world = dist.get_world_size()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    row = {**key_fields(method, mode, dtype, batch, heads, kv_heads, seqlen, headdim, causal, world), "status": "ok",
           "error": "", "impl": impl, "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "flops": attention_flops(batch, heads, seqlen, seqlen, headdim, causal, mode)}
    if seqlen % (2 * world):
        return {**row, "status": "unsupported", "error": f"seqlen {seqlen} is not a multiple of 2 x {world}"}
    if method == "cp-sdpa" and (device != "cuda" or dtype == "fp32"):
        return {**row, "status": "unsupported", "error": "PyTorch's context parallelism needs CUDA SDPA "
                "(flash backend: fp16/bf16)"}
    try:
        q, k, v, do = full_inputs(batch, heads, kv_heads, seqlen, headdim, torch_dtype(dtype), device)
        shards = [ring.zigzag_shard(t, me.rank, world) for t in (q, k, v, do)]
        backward = mode != "fwd"
        segments = zigzag_segments(seqlen, me.rank, world)
        if method == "cp-sdpa":
            row["impl"] = cp_options_text()
        if method == "cp-sdpa" and world > 1:
            cp = CpSdpa(q, k, v, do, world)
            with cp as local:
                segments = cp_layout(local[0], q, me.rank, world)
                row.update(_measure(method, causal, impl, local, backward, reps, warmup, q, k, v, segments,
                                    world))
        else:
            if method == "cp-sdpa":  # one GPU: plain SDPA flash on the whole sequence (GQA repeated)
                group = heads // kv_heads
                shards = [shards[0], shards[1].repeat_interleave(group, 1), shards[2].repeat_interleave(group, 1),
                          shards[3]]
            row.update(_measure(method, causal, impl, shards, backward, reps, warmup, q, k, v, segments, world))
        if row["status"] == "ok":
            row["tflops_per_gpu"] = row["flops"] / (row["ms"] * 1e-3) / 1e12 / world
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="oom", error=first_line(exc))
    except Exception as exc:  # recorded; the next point runs
        row.update(status="error", error=f"{type(exc).__name__}: {first_line(exc)}")
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def _measure(method, causal, impl, local, backward, reps, warmup, q, k, v, segments, world) -> dict:
    ql, kl, vl, dol = (t.detach() for t in local)
    fn = method_call(method, causal, impl)
    out = {}
    with torch.no_grad():
        o = fn(ql, kl, vl)
    err, base = check_slice(o, q, k, v, causal, segments, impl)
    from fa2bench.core.reference import FACTOR, FLOOR

    out.update(max_rel_error=err, baseline_rel_error=base)
    if not err <= FACTOR * base + FLOOR[q.dtype]:
        return {**out, "status": "wrong", "error": f"o: rel err {err:.2e} (tol {FACTOR * base + FLOOR[q.dtype]:.2e})"}
    del o
    leaves = [t.clone().requires_grad_(backward) for t in (ql, kl, vl)]

    def timed(f):
        if not backward:
            return lambda: f(*leaves)
        return lambda: f(*leaves).backward(dol)

    if torch.cuda.is_available():
        sync()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    ms, p20, p80 = time_call(timed(fn), reps, warmup, leaves if backward else ())
    out.update(ms=ms, ms_p20=p20, ms_p80=p80)
    if torch.cuda.is_available():  # the method's own peak beyond what was held, plus this rank's input shards
        shards = sum(t.numel() * t.element_size() for t in (ql, kl, vl) + ((dol,) if backward else ()))
        out["peak_mem_gb"] = max_over_ranks((torch.cuda.max_memory_allocated() - held + shards) / 2**30)
    if method == "ring-fa2" and world > 1:
        compute = time_call(timed(method_call(method, causal, impl, communicate=False)), reps, 1,
                            leaves if backward else ())[0]
        comm = time_call(lambda: _comm_only(kl, vl, backward), reps, 1)[0]
        hidden = (compute + comm - ms) / comm if comm > 0 else float("nan")
        out.update(ms_compute=compute, ms_comm=comm, comm_hidden_pct=100.0 * min(1.0, max(0.0, hidden)))
    return out


def _comm_only(k, v, backward):
    """The ring's transfers alone: K/V world-1 times (forward; again in backward) and, in backward, the fp32
    dK/dV accumulators world times."""
    ring.ring_exchange_only([k, v])
    if backward:
        ring.ring_exchange_only([k, v])
        acc = [torch.zeros(k.shape, dtype=torch.float32, device=k.device) for _ in range(2)]
        ring.ring_exchange_only(acc, rounds=dist.get_world_size())



# --- results folder ----------------------------------------------------------------------------------------


def open_store(out: Path, csv_name: str = CSV_NAME, columns: tuple[str, ...] = COLUMNS) -> RunWriter:
    """ring.csv (or check.csv) through the results store, continued by every world size's job: rows appended
    and fsynced as they finish, damaged rows set aside, finished points known (``writer.done``)."""
    path = Path(out) / csv_name
    if path.exists() and "method" in path.open(encoding="utf-8", errors="replace").readline().split(","):
        raise ResultsError(f"{path} was written by an older fa2bench (a method column, read by `ringbench "
                           "report` only): choose another --out")
    return RunWriter(out, resume=True, csv_name=csv_name, columns=columns, key=ring_key)


def write_meta(out: Path, options: dict) -> None:
    """meta.json (through the results store): one entry per world size run into this folder (GPUs, versions,
    commit, options)."""
    from fa2bench.run import hardware, results, runner
    meta = results.read_meta(out) or {"kind": "ring", "runs": []}
    meta["runs"].append({
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv, "world_size": dist.get_world_size(), "gpus": hardware.gpu_info(),
        "versions": hardware.software_versions(), "git": runner.git_state(),
        "env": {k: os.environ.get(k) for k in launch.MULTICAST_OFF},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}})
    results.write_meta(out, meta)


def _pinned_configs(impl: str, headdim: int):
    """With ``--no-tune``: launch fa2 with the first candidate config of each kernel (no autotuning: each
    world size gives new sequence-length buckets, and every rank would tune again)."""
    if impl != "fa2":
        return contextlib.nullcontext()
    from fa2bench.kernels import flash2

    return flash2.forced_configs(**{name: cfgs[0] for name, cfgs in flash2.configs(headdim).items()})



# --- entry points ------------------------------------------------------------------------------------------


GPUS = "1,2,4"  # the world sizes of a scaling run
# the options of a run and their defaults; a gradient check (``check``) defaults to CHECK_DEFAULTS
CHECK_DEFAULTS = {"seqlen": "8192", "causal": "both"}
RUN_OPTIONS = {"seqlen": "65536..262144", "batch": 1, "heads": 16, "kv_heads": None, "headdim": 128, "dtype": "bf16",
               "causal": "on", "mode": "fwd,fwd_bwd", "method": ",".join(ring.METHODS), "reps": 3, "warmup": 1,
               "impl": None, "tune": False}


def resolve(seqlen: str, dtype: str, causal: str, heads: int, kv_heads: int | None, batch: int = 1,
            headdim: int = 128, mode: str | None = None, method: str | None = None, reps: int = 1,
            warmup: int = 0, impl: str | None = None, **_) -> dict:
    """The benchmark's options parsed and checked (a SpecError names the option): seqlens, dtypes, causals,
    kv_heads, modes and methods (None: not a ``run``)."""
    if causal not in CAUSAL:
        raise SpecError(f"--causal: expected off, on or both, got {causal!r}")
    if impl is not None and impl not in blocks.IMPLS:
        raise SpecError(f"--impl: unknown {impl!r}; choose from {', '.join(blocks.IMPLS)}")
    for name, value, least in (("batch", batch, 1), ("heads", heads, 1), ("kv-heads", kv_heads or 1, 1),
                               ("headdim", headdim, 1), ("reps", reps, 1), ("warmup", warmup, 0)):
        if value < least:
            raise SpecError(f"--{name} must be at least {least}, got {value}")
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise SpecError(f"--kv-heads {kv_heads} does not divide --heads {heads}")
    return {"seqlens": parse_ints(seqlen, "seqlen"), "dtypes": _names(dtype, DTYPES, "dtype"),
            "causals": CAUSAL[causal], "kv_heads": kv_heads,
            "modes": _names(mode, ("fwd", "fwd_bwd"), "mode") if mode is not None else None,
            "methods": _names(method, tuple(ring.METHODS), "method") if method is not None else None}


def run_args(**options) -> list[str]:
    """``run``'s command-line arguments for ``options`` (named like ``RUN_OPTIONS``; None or absent: the
    default), checked first (``resolve``), so a bad value is a SpecError before any job starts."""
    options = {**RUN_OPTIONS, **{k: v for k, v in options.items() if v is not None}}
    unknown = set(options) - set(RUN_OPTIONS)
    if unknown:
        raise SpecError(f"unknown ring option(s): {', '.join(sorted(unknown))}")
    resolve(**options)
    args = []
    for key, value in options.items():
        if key == "tune":
            args += ["--tune"] if value else []
        elif value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def execute(gpus: str | None, out: Path, options: dict, check: bool = False, echo=print) -> int:
    """``fa2bench ring``: without torchrun, one torchrun job per GPU count in ``gpus`` (default ``GPUS``), each
    running ``fa2bench ring`` with ``options`` into ``out`` (``scaling_run``); in a process torchrun started (one
    of those jobs' ranks, or one started by hand), this rank's part of that world size (``rank_run``)."""
    if launch.under_torchrun():
        if gpus is not None:
            raise SpecError("--gpus starts torchrun, and this process already runs under torchrun: leave --gpus out "
                            "(the ranks share every ring point)")
        return rank_run(out, options, check, echo)
    return scaling_run(gpus or GPUS, out, options, check, echo=echo)


def scaling_run(gpus: str, out: Path, options: dict, check: bool = False, available_gpus: int | None = None,
                echo=print) -> int:
    """One torchrun job per GPU count in ``gpus`` ("1,2,4"), each running ``fa2bench ring`` with ``options``
    (``run_args``; ``--check``: the gradient check) into ``out``, then the report. Returns 0, or the first
    failing job's exit status."""
    worlds = parse_ints(gpus, "gpus")
    if available_gpus is None:
        available_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    too_many = [n for n in worlds if available_gpus and n > available_gpus]
    if too_many:
        raise SpecError(f"--gpus {too_many[0]}: only {available_gpus} CUDA GPU(s) here")
    given = {k: v for k, v in options.items() if v is not None}
    args = run_args(**({**CHECK_DEFAULTS, **given} if check else given))
    if not available_gpus:  # the CPU would take minutes per point, at lengths that need hundreds of GB
        raise SpecError("no CUDA GPU here: `fa2bench ring` times attention over GPUs (docs/multigpu.md); without "
                        "one, `fa2bench sweep` runs the kernels through the interpreter and `python -m pytest "
                        "tests/test_distributed.py` checks ring attention over CPU processes")
    worst = 0
    for n in worlds:
        echo(f"--- {n} GPU(s)")
        code = launch.run_torchrun(n, ["ring", "--out", str(out), *args, *(["--check"] if check else [])])
        worst = worst or code
        if code == 130:
            break
    if not check and (out / CSV_NAME).exists():
        report(out)
    return worst


def _names(text, allowed, what):
    values = [t.strip() for t in text.split(",") if t.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise SpecError(f"--{what}: unknown {bad[0]!r}; choose from {', '.join(allowed)}" if bad else
                        f"--{what}: nothing given")
    return values


def rank_run(out: Path, options: dict, check: bool = False, echo=print) -> int:
    """This rank's part of one world size's job (every rank calls it under torchrun): the ring points of
    ``options`` (named like ``RUN_OPTIONS``; None or absent: the default) not yet in ``out``'s ring.csv, or with
    ``check`` the gradient check into check.csv; rank 0 writes the rows and meta.json. Returns the exit status."""
    given = {k: v for k, v in options.items() if v is not None}
    options = {**RUN_OPTIONS, **(CHECK_DEFAULTS if check else {}), **given}
    parsed = resolve(**{**options, **({"mode": None, "method": None, "reps": 1, "warmup": 0} if check else {})})
    seqlens, dtypes, causals, kv_heads = parsed["seqlens"], parsed["dtypes"], parsed["causals"], parsed["kv_heads"]
    batch, heads, headdim = options["batch"], options["heads"], options["headdim"]
    with launch.process_group(timeout_s=300.0) as me:
        impl = options["impl"] or ("fa2" if torch.cuda.is_available() else "ref")
        writer = None
        try:
            if me.is_leader:
                writer = open_store(out, *(("check.csv", CHECK_COLUMNS) if check else ()))
                write_meta(out, {**options, "check": check})
            with _pinned_configs(impl, headdim) if not options["tune"] else contextlib.nullcontext():
                if check:
                    return _run_checks(seqlens, dtypes, causals, batch, heads, kv_heads, headdim, impl, writer, echo)
                done = [writer.done if writer else None]
                dist.broadcast_object_list(done, src=0)  # every rank skips the same finished points
                for point in ring_points(parsed["methods"], seqlens, dtypes, causals, parsed["modes"],
                                         me.world_size):
                    fields = (point.method, point.mode, point.dtype, batch, heads, kv_heads, point.seqlen, headdim,
                              point.causal)
                    if ring_key(key_fields(*fields, me.world_size)) in done[0]:
                        continue
                    row = run_point(*fields, impl, options["reps"], options["warmup"])
                    if writer:
                        writer.append(row)
                        echo(_line(row))
            return 0
        finally:
            if writer:
                writer.release()


CHECK_COLUMNS = (*KEY, "impl", "status", "max_rel_error", "detail")


def _run_checks(seqlens, dtypes, causals, batch, heads, kv_heads, headdim, impl, writer, echo) -> int:
    failed = 0
    for seqlen, dtype, causal, kv, method in itertools.product(seqlens, dtypes, causals,
                                                                dict.fromkeys((heads, kv_heads)),
                                                                ("ring-fa2", "allgather-fa2")):
        row = check_gradients(seqlen, heads, kv, headdim, dtype, causal, impl, method, batch)
        failed += row["status"] != "ok"
        if writer:
            writer.append(row)
            echo(f"{row['status']:>5} {method} x{row['world_size']} {dtype} s{seqlen} h{heads}/kv{kv} "
                 f"{'causal' if causal else 'full'}: max rel err {row['max_rel_error']:.2e}")
    return 1 if failed else 0


def _line(row) -> str:
    ms = f"{row['ms']:.2f} ms" if row.get("ms") is not None else "-"
    tf = f"{row['tflops_per_gpu']:.0f} TFLOP/s/GPU" if row.get("tflops_per_gpu") is not None else ""
    hid = f"hidden {row['comm_hidden_pct']:.0f}%" if row.get("comm_hidden_pct") is not None else ""
    mem = f"{row['peak_mem_gb']:.1f} GB" if row.get("peak_mem_gb") is not None else ""
    return (f"{row['status']:>5} {row['provider']:>13} x{row['world_size']} {row['mode']:>7} {row['dtype']} "
            f"s{row['seqlen_q']}{' causal' if row['causal'] else ''} {ms} {tf} {hid} {mem} {row['error']}")
