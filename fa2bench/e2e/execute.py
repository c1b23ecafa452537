"""Run a planned e2e run (``plan_e2e``) where it was placed: alone, as one rank of a torchrun job, or by
launching its ranks (``launch.dispatch``, the same three ways as a sweep)."""
from __future__ import annotations

from typing import Callable

from fa2bench.distributed import launch
from fa2bench.e2e import train

OnRow = Callable[[tuple, "dict | None"], None]


def execute_e2e(plan: train.E2EPlan, on_row: OnRow | None = None, echo: Callable[[str], None] = print) -> int:
    """Run ``plan`` into ``plan.out`` and return its exit status: 0, or torchrun's when it launched ranks (rank
    0 then says where the results are). ``on_row(configuration, row)`` after each configuration (row None
    when a resumed run already has it). Raises ``ResultsError`` for a folder that cannot be written or holds
    another spec, and lets Ctrl-C through (finished configurations are saved)."""
    def launcher() -> int:
        from fa2bench.e2e import dp

        return dp.launch_ranks(plan, echo=echo)

    def as_rank() -> int:
        from fa2bench.e2e import dp

        dp.run_ranks(plan.spec, plan.out, resume=plan.resume, opts=plan.opts, on_row=on_row, extend=plan.extend)
        return 0

    def alone() -> int:
        train.run_e2e(plan.spec, plan.out, resume=plan.resume, opts=plan.opts, on_row=on_row, extend=plan.extend)
        return 0

    return launch.dispatch(plan.gpus, plan.rank, launcher=launcher, as_rank=as_rank, alone=alone)
