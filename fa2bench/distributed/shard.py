"""Sweeps sharded over ranks: points balanced by estimated cost, one results file per rank, one merged folder.

Layout of a sharded run folder::

    OUT/plan.csv              every point of the sweep and the rank it was given (rewritten on resume)
    OUT/rank{r}/results.csv   rank r's rows, appended and flushed as each point finishes
    OUT/rank{r}/meta.json     rank r's GPU (name, clocks, power limit), host and share of the plan
    OUT/results.csv|parquet   the merge: every rank's rows, one per point, with a ``rank`` column
    OUT/missing.csv           points of the plan that no rank finished (absent when there are none)
    OUT/meta.json             the run's metadata plus ``distributed``: world size, per-rank GPUs, the merge

A rank that dies loses only the point it was running; the merge (run by rank 0 at the end, by the
``--gpus`` launcher after torchrun exits, or by ``python -m fa2bench.distributed.shard OUT``) names the
points that are missing, and ``--resume`` runs exactly those, on however many ranks the new run has.
"""
from __future__ import annotations

import heapq
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from fa2bench.core.flops import attention_flops
from fa2bench.core.presets import KEY_COLUMNS, Point, Shape
from fa2bench.run.results import (COLUMNS, CSV_NAME, PARQUET_NAME, ResultsError, RunWriter, continue_meta,
                                  describe_damage, read_csv, read_meta, rerun_refused, row_key, write_meta)

PLAN_NAME, MISSING_NAME = "plan.csv", "missing.csv"
# Cost model, in estimated seconds: every point pays a fixed price (reference check, warm-up and timing
# budgets, telemetry window), plus its FLOPs at a rate typical of the slower providers on a recent GPU.
FIXED_S = 0.5
ASSUMED_FLOP_PER_S = 1e14


class ShardError(ResultsError):
    """A sharded run that cannot go on as asked (a usage error, like any results folder that cannot be used)."""


def estimated_seconds(point: Point, device: str = "cuda") -> float:
    """How long ``point`` should take: nothing if its provider declares it unsupported, else the fixed price
    plus its FLOPs at ``ASSUMED_FLOP_PER_S``."""
    from fa2bench.core import providers
    s = point.shape
    if point.provider in providers.REGISTRY and providers.get(point.provider).unsupported_reason(
            s, point.dtype, point.mode, device):
        return 0.0
    flops = attention_flops(s.batch, s.heads, s.seqlen_q, s.seqlen_k, s.headdim, s.causal, point.mode)
    return FIXED_S + flops / ASSUMED_FLOP_PER_S


def assign(points: Sequence[Point], world_size: int,
           cost: Callable[[Point], float] = estimated_seconds) -> list[list[Point]]:
    """Split ``points`` over ``world_size`` ranks: longest first onto the least-loaded rank (LPT, within 4/3
    of the best makespan); each rank then runs its share in sweep order. Deterministic: every rank computes
    the same plan on its own."""
    if world_size < 1:
        raise ShardError(f"world size must be at least 1, got {world_size}")
    costs = [cost(p) for p in points]
    loads = [(0.0, r) for r in range(world_size)]
    heapq.heapify(loads)
    owner = [0] * len(points)
    for i in sorted(range(len(points)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(loads)
        owner[i] = r
        heapq.heappush(loads, (load + costs[i], r))
    return [[p for p, o in zip(points, owner) if o == r] for r in range(world_size)]


def rank_dir(out: Path, rank: int) -> Path:
    return Path(out) / f"rank{rank}"


def rank_dirs(out: Path) -> list[tuple[int, Path]]:
    """(rank, folder) of every rank folder in ``out`` that holds a results file, by rank."""
    found = []
    for d in Path(out).glob("rank*"):
        suffix = d.name[4:]
        if d.is_dir() and suffix.isdigit() and (d / CSV_NAME).exists():
            found.append((int(suffix), d))
    return sorted(found)


def done_keys(out: Path) -> set[tuple]:
    """Keys of every point finished in ``out``: the merged results and every rank's own file."""
    keys: set[tuple] = set()
    for path in [Path(out) / CSV_NAME] + [d / CSV_NAME for _, d in rank_dirs(out)]:
        if path.exists() and path.stat().st_size:
            keys |= {row_key(r) for r in read_csv(path)[list(KEY_COLUMNS)].to_dict("records")}
    return keys


def has_results(out: Path) -> bool:
    return (Path(out) / CSV_NAME).exists() or bool(rank_dirs(out))


def write_plan(out: Path, points: Sequence[Point], shares: Sequence[Sequence[Point]], done: set[tuple]) -> None:
    """plan.csv: one row per point of the sweep with its rank (or ``done`` when finished before this run)."""
    owner = {p.key(): r for r, share in enumerate(shares) for p in share}
    rows = [{**p.fields(), "rank": owner.get(p.key(), ""), "done_before": p.key() in done,
             "est_s": round(estimated_seconds(p), 3)} for p in points]
    _write_frame(pd.DataFrame(rows, columns=list(KEY_COLUMNS) + ["rank", "done_before", "est_s"]),
                 Path(out) / PLAN_NAME)


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


@dataclass(frozen=True)
class MergeReport:
    rows: int
    by_rank: dict[int, int]
    missing: tuple[str, ...]  # labels of planned points no rank finished
    duplicates: int  # points finished by more than one rank (the first row is kept)


def merge(out: Path) -> MergeReport:
    """Merge every rank's rows (and rows already merged earlier) into ``out``'s results.csv and .parquet,
    name the planned points no rank finished in missing.csv and record the merge in meta.json."""
    out = Path(out)
    frames = []
    merged = out / CSV_NAME
    if merged.exists() and merged.stat().st_size:
        earlier = read_csv(merged)
        if "rank" not in earlier:
            earlier["rank"] = pd.NA
        frames.append(earlier)
    for r, d in rank_dirs(out):
        frame = read_csv(d / CSV_NAME)
        frame["rank"] = r
        frames.append(frame)
    if not frames:
        raise ShardError(f"{out} holds no results of any rank (no rank*/{CSV_NAME})")
    table = pd.concat(frames, ignore_index=True)
    keys = [row_key(r) for r in table[list(KEY_COLUMNS)].to_dict("records")]
    table["_key"] = keys
    # rows merged before are repeated in their rank file: count a duplicate only across different ranks
    firsts = table.drop_duplicates("_key", keep="first")
    duplicates = int(table.drop_duplicates(["_key", "rank"]).duplicated("_key").sum())
    table = firsts.drop(columns="_key")
    table = table[list(COLUMNS) + ["rank"] + [c for c in table.columns if c not in COLUMNS and c != "rank"]]
    table["rank"] = table["rank"].astype("Int64")
    _write_frame(table, merged)
    table.to_parquet(out / PARQUET_NAME, index=False)

    missing_rows = []
    plan_path = out / PLAN_NAME
    if plan_path.exists():
        plan = pd.read_csv(plan_path, keep_default_na=False)
        finished = set(keys)
        for r in plan.to_dict("records"):
            if row_key(r) not in finished:
                missing_rows.append(r)
    missing_path = out / MISSING_NAME
    if missing_rows:
        _write_frame(pd.DataFrame(missing_rows), missing_path)
    elif missing_path.exists():
        missing_path.unlink()
    labels = tuple(_label(r) for r in missing_rows)
    by_rank = {int(r): int(n) for r, n in table["rank"].value_counts(dropna=True).sort_index().items()}
    report = MergeReport(rows=len(table), by_rank=by_rank, missing=labels, duplicates=duplicates)

    meta = read_meta(out)
    dist_meta = meta.setdefault("distributed", {})
    dist_meta["ranks"] = [read_meta(d) for _, d in rank_dirs(out)]
    dist_meta["merge"] = {"rows": report.rows, "rows_by_rank": {str(k): v for k, v in by_rank.items()},
                          "missing": len(labels), "missing_points": list(labels[:50]),
                          "duplicates": duplicates}
    meta["complete"] = not labels
    write_meta(out, meta)
    return report


def _label(row: dict) -> str:
    return f"{row['provider']} {row['mode']} {row['dtype']} {Shape.from_row(row).label()}"


# --- one rank's part ------------------------------------------------------------------------------------


def rank_meta(rank, share: Sequence[Point]) -> dict:
    """This rank's GPU as NVML and torch see it (name, SMs, clocks, power limit), host and share."""
    import torch

    from fa2bench.run import hardware
    gpu = None
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        gpu = next((g for g in hardware.gpu_info() if g["index"] == index), None)
    return {"rank": rank.rank, "local_rank": rank.local_rank, "world_size": rank.world_size,
            "host": socket.gethostname(), "gpu": gpu, "points": len(share),
            "est_s": round(sum(estimated_seconds(p) for p in share), 1)}


def run_sharded(points: Sequence[Point], out: Path | None, resume: bool, make_meta: Callable[[bool], dict],
                run_share: Callable[[list[Point], RunWriter], None], log=print,
                extend: bool = False) -> MergeReport | None:
    """This rank's part of a sharded sweep under torchrun; rank 0 returns the merge, the others None.

    Rank 0 checks the folder first, before any rank touches it: ``make_meta(resumed)`` is the run's meta.json
    (``resumed``: the folder already records a run), continued as every resumed run is (``continue_meta``: a
    different sweep is refused unless ``extend``); a problem ends every rank with a ShardError.
    ``run_share(points, writer)`` runs this rank's points and appends their rows (``runner.run_sweep``, with
    its worker process when the sweep isolates points).
    """
    import torch.distributed as dist

    from fa2bench.distributed import launch

    with launch.process_group("gloo", timeout_s=6 * 3600.0) as me:  # the sweep exchanges only small objects
        box = [str(out) if out is not None else None, None]
        meta = None
        if me.is_leader:
            box[1], meta = _check_out(Path(box[0]), resume, make_meta, extend) if box[0] else (
                "a sharded sweep needs --out on every rank", None)
        dist.broadcast_object_list(box, src=0)
        if box[1]:
            raise ShardError(box[1])
        out = Path(box[0])
        done = done_keys(out) if resume else set()
        remaining = [p for p in points if p.key() not in done]
        shares = assign(remaining, me.world_size)
        dist.barrier()  # everyone has read what was done before rank 0 writes the plan
        if me.is_leader:
            write_plan(out, points, shares, done)
            meta["distributed"] = {"world_size": me.world_size, "backend": "torchrun",
                                   "cost_model": f"{FIXED_S} s + FLOPs / {ASSUMED_FLOP_PER_S:g} FLOP/s"}
            meta["complete"] = False  # until a merge finds every point
            write_meta(out, meta)
        mine = shares[me.rank]
        writer = RunWriter(rank_dir(out, me.rank), resume=True)
        if writer.dropped:
            log(f"[rank {me.rank}] {describe_damage(writer.dropped, writer.csv_path)}")
        write_meta(writer.out_dir, rank_meta(me, mine))
        log(f"[rank {me.rank}/{me.world_size}] {len(mine)} of {len(remaining)} points "
            f"({len(done)} done before), about {sum(map(estimated_seconds, mine)):.0f} s")
        run_share(mine, writer)
        dist.barrier()
        return merge(out) if me.is_leader else None


def _check_out(out: Path, resume: bool, make_meta: Callable[[bool], dict],
               extend: bool) -> tuple[str | None, dict | None]:
    """Rank 0's check of the folder, before anything in it is touched: (the problem or None, the run's meta)."""
    if has_results(out) and not resume:
        return rerun_refused(out), None
    try:
        earlier = read_meta(out) if resume else {}
        meta = continue_meta(earlier, make_meta(bool(earlier)), extend)
    except ResultsError as exc:
        return str(exc), None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot write to results folder {out}: {exc.strerror or exc}", None
    return None, meta


def describe(report: MergeReport, out: Path) -> str:
    """A few lines on a merge, for the terminal."""
    ranks = ", ".join(f"rank {r}: {n}" for r, n in report.by_rank.items())
    lines = [f"merged {report.rows} rows ({ranks}) -> {out}"]
    if report.duplicates:
        lines.append(f"{report.duplicates} points were finished by more than one rank; the first row is kept")
    if report.missing:
        shown = "; ".join(report.missing[:10]) + (" ..." if len(report.missing) > 10 else "")
        lines.append(f"{len(report.missing)} planned points are missing (listed in {out / MISSING_NAME}): "
                     f"{shown}; run again with --resume to finish them")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m fa2bench.distributed.shard OUT``: merge a sharded run folder by hand (after a crash)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fa2bench.distributed.shard RUN_DIR", file=sys.stderr)
        return 2
    try:
        report = merge(Path(args[0]))
    except (ShardError, OSError) as exc:
        print(f"fa2bench: error: {exc}", file=sys.stderr)
        return 2
    print(describe(report, Path(args[0])))
    return 1 if report.missing else 0


if __name__ == "__main__":
    sys.exit(main())
