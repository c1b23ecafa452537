"""``fa2bench sweep --gpus N|all`` and ``torchrun ... -m fa2bench sweep``: the two halves of a sharded sweep.

The CLI resolves the sweep as usual, then hands over here: without torchrun, ``launch_and_merge`` re-runs the
same command line under torchrun and merges the rank files once torchrun exits, whatever its exit status
(so a rank that died still leaves a merged folder naming its missing points); under torchrun, ``rank_main``
runs this rank's share (``shard.run_sharded``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

from fa2bench.distributed import launch, shard
from fa2bench.presets import Point


def launch_and_merge(gpus: str, out: Path, argv: Sequence[str], available_gpus: int,
                     echo: Callable[[str], None] = print) -> int:
    """Run ``argv`` (the fa2bench command line, without the program name) on ``gpus`` ranks under torchrun,
    writing into ``out``, then merge. Returns the exit status: torchrun's if it failed, 1 if points are
    missing, else 0."""
    nproc = launch.resolve_gpus(gpus, available_gpus)
    args = launch.strip_option(list(argv), "--gpus")
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    echo(f"launching {nproc} rank(s): torchrun --standalone --nproc-per-node={nproc} -m fa2bench "
         + " ".join(args))
    code = launch.run_torchrun(nproc, args)
    if not shard.has_results(out):
        echo(f"no rank wrote results in {out} (torchrun exit status {code})")
        return code or 1
    report = shard.merge(out)
    echo(shard.describe(report, out))
    if code:
        echo(f"torchrun exited with status {code}; finished points are saved: continue with "
             f"--out {out} --resume")
        return code
    return 1 if report.missing else 0


def rank_main(points: Sequence[Point], out: Path | None, resume: bool, make_meta: Callable[[], dict],
              run_point: Callable[[Point], dict], echo: Callable[[str], None] = print) -> shard.MergeReport | None:
    """This torchrun rank's share of the sweep, one log line per point; rank 0 returns the merge."""
    me = launch.current()

    def run_share(mine: list[Point], writer) -> None:
        for i, point in enumerate(mine, 1):
            row = run_point(point)
            writer.append(row)
            extra = f": {row['error']}" if row["status"] in ("wrong", "error") else ""
            ms = f" {row['ms']:.3f} ms" if row.get("ms") is not None else ""
            echo(f"[rank {me.rank}] {i}/{len(mine)} {row['status']}{ms} {point.provider} {point.mode} "
                 f"{point.dtype} {point.shape.label()}{extra}")
            sys.stdout.flush()

    return shard.run_sharded(points, out, resume, make_meta, run_share, log=echo)
