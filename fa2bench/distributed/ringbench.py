"""The context-parallel scaling benchmark: ring attention against its peers on 1, 2, 4 ... GPUs, as points through
the same plan -> runner -> results store -> report path as a sweep.

``plan_ring`` resolves the options into a ``RingPlan``: its points are the sweep's ``Point``s (provider = the
method, the shape over all ranks, planned by ``SweepSpec``), the folder, and where it runs. ``execute_ring``
runs it: without torchrun, one torchrun job per GPU count into one folder, then the report (``ringreport``);
in a process torchrun started (one of those jobs' ranks, or one started by hand), this rank's part of that world
size: ``runner.run_points`` (the sweep's loop) over the plan's points, where running one point is a collective
every rank calls in lockstep (``ringcalls.run_point``; with ``--check``, ``ringcheck.check_gradients``), and
rank 0 appends each row to the results store (``launch.LeaderWriter``)::

    fa2bench ring --gpus 1,2,4 --out R --seqlen 65536..262144   # a torchrun job per GPU count, then the report
    torchrun --standalone --nproc-per-node 4 -m fa2bench ring --out R --seqlen 65536   # one world size by hand
    fa2bench report R                                # report.md, scaling.csv and scaling.png again
    fa2bench ring --gpus 4 --check --out R           # gradients (check.csv)

A ring point is not a sweep point sharded over ranks (``shard``): its shape is over all ranks and every rank
runs it, so nothing is assigned per rank and nothing is merged; nor can it run in a worker process with a
timeout (``worker``): its ranks must call every collective together in one process group, and a rank stopped
alone would leave the others waiting. A point that fails on every rank alike (unsupported, wrong, out of
memory, an exception) is a row with its status and the run goes on; a hang or a rank that dies ends the world
size's job at the process group's timeout, and running the job again continues it (a job skips the points the
folder holds at its world size).

Columns of ring.csv (``COLUMNS``): the sweep's key columns (provider = the method, seqlen_q = seqlen_k = the
sequence over all ranks), the world size, then what the benchmark measures. TFLOP/s per GPU = FLOPs of the whole
attention (fa2bench's model) / time / world size; memory per GPU = the method's peak beyond what the rank held
before the timed calls, plus the rank's own Q, K, V (and dO) shards; ``ringcalls`` says how a point is checked
and timed, ``ringreport`` how scaling efficiency and communication hidden are computed.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from fa2bench.core.config import CAUSAL
from fa2bench.core.presets import Point, SpecError, SweepSpec, parse_ints
from fa2bench.distributed import blocks, launch
from fa2bench.distributed.methods import METHODS
from fa2bench.distributed.ringreport import CSV_NAME, KIND, report
from fa2bench.run.results import ResultsError, RunWriter, row_key

# ring.csv in the results store's terms: the sweep's key columns, the world size, then what the benchmark measures
KEY = ("provider", "world_size", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim",
       "causal")
COLUMNS = (*KEY, "status", "error", "ms", "ms_p20", "ms_p80", "ms_compute", "ms_comm", "comm_hidden_pct", "flops",
           "tflops_per_gpu", "peak_mem_gb", "max_rel_error", "baseline_rel_error", "impl", "gpu")
CHECK_NAME, CHECK_COLUMNS = "check.csv", (*KEY, "impl", "status", "max_rel_error", "detail")
DTYPES = ("fp16", "bf16", "fp32")
CHECK_METHODS = ("ring-fa2", "allgather-fa2")  # what --check checks (PyTorch's own is not fa2bench's to check)


# --- options and the plan ------------------------------------------------------------------------------------


GPUS = "1,2,4"  # the world sizes of a scaling run
# the options of a run and their defaults; a gradient check (``check``) defaults to CHECK_DEFAULTS
CHECK_DEFAULTS = {"seqlen": "8192", "causal": "both"}
RUN_OPTIONS = {"seqlen": "65536..262144", "batch": 1, "heads": 16, "kv_heads": None, "headdim": 128, "dtype": "bf16",
               "causal": "on", "mode": "fwd,fwd_bwd", "method": ",".join(METHODS), "reps": 3, "warmup": 1,
               "impl": None, "tune": False}


def resolve(seqlen: str, dtype: str, causal: str, heads: int, kv_heads: int | None, batch: int, headdim: int,
            mode: str, method: str, reps: int, warmup: int, impl: str | None, **_) -> dict:
    """The benchmark's options parsed and checked (a SpecError names the option): seqlens, dtypes, causals,
    kv_heads, modes and methods."""
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
            "modes": _names(mode, ("fwd", "fwd_bwd"), "mode"), "methods": _names(method, tuple(METHODS), "method")}


def run_args(**options) -> list[str]:
    """``fa2bench ring``'s arguments for ``options`` (a plan's, or named like ``RUN_OPTIONS``; None or absent:
    the default): what each job's ranks are given."""
    options = {**RUN_OPTIONS, **{k: v for k, v in options.items() if v is not None}}
    args = []
    for key, value in options.items():
        if key == "tune":
            args += ["--tune"] if value else []
        elif value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _names(text, allowed, what):
    values = [t.strip() for t in text.split(",") if t.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise SpecError(f"--{what}: unknown {bad[0]!r}; choose from {', '.join(allowed)}" if bad else
                        f"--{what}: nothing given")
    return values


@dataclass(frozen=True)
class RingPlan:
    """A ring run resolved and validated, not yet run."""
    spec: SweepSpec  # the shapes over all ranks, dtypes and modes
    methods: tuple[str, ...]  # the providers of its points
    out: Path
    options: dict  # every option (named like ``RUN_OPTIONS``), defaults filled in
    check: bool = False  # check gradients (check.csv) instead of timing (ring.csv)
    worlds: tuple[int, ...] = ()  # launch one torchrun job per GPU count ...
    rank: launch.Rank | None = None  # ... or run this rank's part of one (a process torchrun started)

    def points(self, world: int) -> list[Point]:
        """The points at ``world`` ranks: methods outermost, so PyTorch's experimental one runs last (a
        collective cannot be isolated: a crash costs the points after it), each method's in sweep order;
        all-gather is left out of timing on one GPU, where it is ring-fa2 (one fa2 call)."""
        return [p for m in self.methods if self.check or not (m == "allgather-fa2" and world == 1)
                for p in self.spec.points((m,))]


def plan_ring(gpus: str | None = None, out: str | Path = "results/ring", check: bool = False,
              **options) -> RingPlan:
    """Resolve ``fa2bench ring``: ``options`` named like ``RUN_OPTIONS`` (None or absent: the default; with
    ``check``, ``CHECK_DEFAULTS`` first, and the points are ``CHECK_METHODS``' forward and backward at
    kv_heads = heads and at the given kv_heads); ``gpus`` the GPU counts to launch ("1,2,4", the default), refused
    in a process torchrun started. Raises ``SpecError`` (one line) for anything that cannot run."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = set(given) - set(RUN_OPTIONS)
    if unknown:
        raise SpecError(f"unknown ring option(s): {', '.join(sorted(unknown))}")
    options = {**RUN_OPTIONS, **(CHECK_DEFAULTS if check else {}), **given}
    parsed = resolve(**options)
    heads = options["heads"]
    spec = SweepSpec(seqlens=parsed["seqlens"], headdims=(options["headdim"],), batch=(options["batch"],),
                     heads=(heads,), kv_heads=tuple(dict.fromkeys((heads, parsed["kv_heads"]))) if check else
                     (parsed["kv_heads"],), causal=parsed["causals"], dtypes=tuple(parsed["dtypes"]),
                     modes=("fwd_bwd",) if check else tuple(parsed["modes"]))
    spec.validate()
    methods = CHECK_METHODS if check else tuple(parsed["methods"])
    if launch.under_torchrun():
        if gpus is not None:
            raise SpecError("--gpus starts torchrun, and this process already runs under torchrun: leave --gpus out "
                            "(the ranks share every ring point)")
        return RingPlan(spec, methods, Path(out), options, check, rank=launch.current())
    return RingPlan(spec, methods, Path(out), options, check, worlds=parse_ints(gpus or GPUS, "gpus"))


# --- running it ------------------------------------------------------------------------------------------------


def execute_ring(plan: RingPlan, echo: Callable[[str], None] = print, available_gpus: int | None = None) -> int:
    """Run ``plan`` where it was placed: this rank's part (``rank_run``), or one torchrun job per GPU count and
    then the report (``scaling_run``). Returns 0, or the first failing job's exit status (the check: 1 when a
    gradient is wrong)."""
    if plan.rank is not None:
        return rank_run(plan, echo)
    return scaling_run(plan, available_gpus, echo)


def scaling_run(plan: RingPlan, available_gpus: int | None = None, echo: Callable[[str], None] = print) -> int:
    """One torchrun job per GPU count of ``plan``, each running ``fa2bench ring`` with the plan's options
    (``run_args``; ``--check``: the gradient check) into its folder, then the report."""
    import torch

    if available_gpus is None:
        available_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    too_many = [n for n in plan.worlds if available_gpus and n > available_gpus]
    if too_many:
        raise SpecError(f"--gpus {too_many[0]}: only {available_gpus} CUDA GPU(s) here")
    if not available_gpus:  # the CPU would take minutes per point, at lengths that need hundreds of GB
        raise SpecError("no CUDA GPU here: `fa2bench ring` times attention over GPUs (docs/multigpu.md); without "
                        "one, `fa2bench sweep` runs the kernels through the interpreter and `python -m pytest "
                        "tests/test_distributed.py` checks ring attention over CPU processes")
    worst = 0
    for n in plan.worlds:
        echo(f"--- {n} GPU(s)")
        code = launch.run_torchrun(n, ["ring", "--out", str(plan.out), *run_args(**plan.options),
                                       *(["--check"] if plan.check else [])])
        worst = worst or code
        if code == 130:
            break
    if not plan.check and (plan.out / CSV_NAME).exists():
        report(plan.out)
    return worst


def rank_run(plan: RingPlan, echo: Callable[[str], None] = print) -> int:
    """This rank's part of one world size's job (every rank calls it under torchrun): the plan's points not
    yet in the folder at this world size, through ``runner.run_points``, each a collective; rank 0 writes the
    rows and meta.json and echoes a line per point. Returns 0, or with ``check`` 1 when a gradient is wrong."""
    import torch

    from fa2bench.run import runner

    failed = []
    with launch.process_group(timeout_s=300.0) as me:
        impl = plan.options["impl"] or ("fa2" if torch.cuda.is_available() else "ref")
        store = launch.LeaderWriter(me, lambda: open_store(plan.out, me.world_size, plan.check, plan.options))

        def on_point(point: Point, row: dict | None) -> None:
            if row is not None:
                failed.extend([point] if row["status"] != "ok" else [])
                if me.is_leader:
                    echo(_line(row))

        try:
            with collective_points(plan, impl) as run_one:
                runner.run_points(plan.points(me.world_size), store, run_one, on_point)
        finally:
            store.release()
    return 1 if plan.check and failed else 0


@contextlib.contextmanager
def collective_points(plan: RingPlan, impl: str) -> Iterator[Callable[[Point], dict]]:
    """How a ring point runs, for ``runner.run_points``: a collective (``ringcalls.run_point``, or with
    ``check`` ``ringcheck.check_gradients``) that every rank calls with the same point; fa2 launched with its
    first config of each kernel unless ``tune``."""
    from fa2bench.distributed import ringcalls, ringcheck

    o = plan.options
    with contextlib.nullcontext() if o["tune"] else _pinned_configs(impl, o["headdim"]):
        if plan.check:
            yield lambda point: ringcheck.check_gradients(point, impl)
        else:
            yield lambda point: ringcalls.run_point(point, impl, o["reps"], o["warmup"])


def _pinned_configs(impl: str, headdim: int):
    """With ``--no-tune``: launch fa2 with the first candidate config of each kernel (no autotuning: each
    world size gives new sequence-length buckets, and every rank would tune again)."""
    if impl != "fa2":
        return contextlib.nullcontext()
    from fa2bench.kernels import flash2

    return flash2.forced_configs(**{name: cfgs[0] for name, cfgs in flash2.configs(headdim).items()})


# --- the results folder ------------------------------------------------------------------------------------------


def ring_key(world: int) -> Callable[[dict], tuple | None]:
    """A ring.csv row's identity for a job at ``world`` ranks: its point's key when it was measured at that
    world size (a finished point, skipped), else None (another job's row, not one of its points)."""
    return lambda row: row_key(row) if int(row["world_size"]) == world else None


def open_store(out: Path, world: int, check: bool = False, options: dict | None = None) -> RunWriter:
    """ring.csv (check.csv with ``check``) through the results store, continued by every world size's job: rows
    appended and fsynced as they finish, damaged rows set aside, the points finished at ``world`` ranks known
    (``writer.done``); with ``options``, the run recorded in meta.json (``write_meta``)."""
    csv_name, columns = (CHECK_NAME, CHECK_COLUMNS) if check else (CSV_NAME, COLUMNS)
    path = Path(out) / csv_name
    if path.exists() and "method" in path.open(encoding="utf-8", errors="replace").readline().split(","):
        raise ResultsError(f"{path} was written by an older fa2bench (a method column, read by `fa2bench "
                           "report` only): choose another --out")
    writer = RunWriter(out, resume=True, csv_name=csv_name, columns=columns, key=ring_key(world))
    if options is not None:
        write_meta(out, world, {**options, "check": check})
    return writer


def write_meta(out: Path, world: int, options: dict) -> None:
    """meta.json (through the results store): one entry per world size run into this folder (GPUs, versions,
    commit, options)."""
    from fa2bench.run import hardware, results
    from fa2bench.run.provenance import git_state

    meta = results.read_meta(out) or {"kind": KIND, "runs": []}
    meta["runs"].append({
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv, "world_size": world, "gpus": hardware.gpu_info(),
        "versions": hardware.software_versions(), "git": git_state(),
        "env": {k: os.environ.get(k) for k in launch.MULTICAST_OFF},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}})
    results.write_meta(out, meta)


def _line(row: dict) -> str:
    """One row as the terminal shows it."""
    head = (f"{row['status']:>5} {row['provider']:>13} x{row['world_size']} {row['mode']:>7} {row['dtype']} "
            f"s{row['seqlen_q']} h{row['heads']}/kv{row['kv_heads']}{' causal' if row['causal'] else ''}")
    if "detail" in row:  # a gradient check
        return f"{head}: max rel err {row['max_rel_error']:.2e}"
    cells = [f"{row['ms']:.2f} ms" if row.get("ms") is not None else "-"]
    for col, fmt in (("tflops_per_gpu", "{:.0f} TFLOP/s/GPU"), ("comm_hidden_pct", "hidden {:.0f}%"),
                     ("peak_mem_gb", "{:.1f} GB")):
        if row.get(col) is not None:
            cells.append(fmt.format(row[col]))
    return f"{head} {' '.join(cells)} {row['error'] if row.get('error') else ''}".rstrip()
