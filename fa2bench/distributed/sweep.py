"""``fa2bench sweep --gpus N|all`` and ``torchrun ... -m fa2bench sweep``: the two halves of a sharded sweep.

``fa2bench.api`` plans the sweep as usual (``plan_sweep``: ``SweepPlan.gpus`` to launch, ``SweepPlan.rank``
under torchrun) and hands over here from ``execute``: without torchrun, ``launch_and_merge`` runs the sweep as
``fa2bench sweep`` arguments (``SweepPlan.command``) under torchrun and merges the rank files once torchrun
exits, whatever its exit status (so a rank that died still leaves a merged folder naming its missing points);
under torchrun, ``rank_main`` runs this rank's share (``shard.run_sharded``) through the runner, in a worker
process when the sweep isolates points.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from fa2bench.distributed import launch, shard
from fa2bench.core.presets import Point


def launch_and_merge(nproc: int, out: Path, args: Sequence[str],
                     echo: Callable[[str], None] = print) -> tuple[int, shard.MergeReport | None]:
    """Run ``fa2bench <args>`` on ``nproc`` ranks under torchrun (``args`` write into ``out``), then merge
    ``out``. Returns torchrun's exit status (130 after Ctrl-C) and the merge (None when no rank wrote
    results)."""
    echo(f"launching {nproc} rank(s): torchrun --standalone --nproc-per-node={nproc} -m fa2bench "
         + " ".join(args))
    code = launch.run_torchrun(nproc, list(args))
    if not shard.has_results(out):
        return code, None
    return code, shard.merge(out)


def point_line(rank: int, i: int, n: int, point: Point, row: dict) -> str:
    """One rank's log line for a finished point."""
    extra = f": {row['error']}" if row["status"] in ("wrong", "error", "timeout") else ""
    ms = f" {row['ms']:.3f} ms" if row.get("ms") is not None else ""
    return (f"[rank {rank}] {i}/{n} {row['status']}{ms} {point.provider} {point.mode} {point.dtype} "
            f"{point.shape.label()}{extra}")


def rank_main(points: Sequence[Point], out: Path | None, resume: bool, make_meta: Callable[[bool], dict],
              run_share: Callable[[list[Point], object, Callable], None], extend: bool = False,
              echo: Callable[[str], None] = print) -> shard.MergeReport | None:
    """This torchrun rank's share of the sweep, one log line per point; rank 0 returns the merge.

    ``run_share(points, writer, on_point)`` runs the points (``runner.run_sweep``) and calls ``on_point(point,
    row)`` after each."""
    me = launch.current()

    def share(mine: list[Point], writer) -> None:
        finished = [0]

        def on_point(point: Point, row: dict | None) -> None:
            finished[0] += 1
            if row is not None:
                echo(point_line(me.rank, finished[0], len(mine), point, row))

        run_share(mine, writer, on_point)

    return shard.run_sharded(points, out, resume, make_meta, share, log=echo, extend=extend)
