"""Data-parallel end-to-end training: ``fa2bench e2e --gpus N`` (the FlashAttention-2 paper's Table 1 ran on 8 GPUs).

Two halves, as for sharded sweeps (``fa2bench.distributed``): without torchrun, ``launch_ranks`` runs the
planned e2e run as ``fa2bench e2e`` arguments (``rank_command``) under ``torchrun --standalone
--nproc-per-node N`` (``distributed.launch``: NVLink multicast off in every process); under torchrun,
``run_ranks`` trains every configuration on every rank with the model wrapped in PyTorch's own data
parallelism: ``DistributedDataParallel`` (``ddp``, the default) or FSDP2's ``fully_shard`` per block and at the
root (``fsdp``). NCCL on GPUs, gloo on the CPU.

Every rank builds the model from the same seed (the same weights; DDP also broadcasts rank 0's) and trains
on its own synthetic batch (``train.data_seed``: rank 0's is a one-process run's). Tokens per step, TFLOP/s
and memory are per GPU, as in a one-GPU run; ``global_tokens_per_s`` is all GPUs'. A step's time is the
slowest rank's (each rank times each step; the per-step maximum over ranks, then the median).

Failures: the ranks agree (``Group.settle``, an all-gather of each rank's status) after the start check and
after the probe step, the first warm-up step, which runs without collectives under DDP (``no_sync``; its
gradients are then zeroed before the optimizer step, so the replicas stay equal); so one rank's out of memory
there is every rank's ``oom`` (retried with a smaller micro-batch, as on one GPU) and no rank waits in a
collective for one that left. Rank 0 alone writes the results folder (``results.csv`` row by row,
``meta.json`` with each rank's GPU under ``distributed``); resume works as for a one-GPU run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.distributed as dist

from fa2bench.distributed import launch
from fa2bench.e2e import train
from fa2bench.e2e.schema import KIND


class Group:
    """This rank's side of a data-parallel run: wrapping the model, the probe step and the agreements."""

    def __init__(self, me: launch.Rank, parallel: str, device: str):
        self.me, self.parallel, self.device = me, parallel, device

    @property
    def rank(self) -> int:
        return self.me.rank

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.parallel == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device, (self.me.world_size,))
            for block in model.blocks:
                fully_shard(block, mesh=mesh)
            return fully_shard(model, mesh=mesh)
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.cuda.current_device()] if self.device == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def probe_step(self, trainer: train.Trainer, batches) -> float:
        """The first warm-up step. DDP: forward and backward without gradient all-reduce (``no_sync``), then
        the optimizer step on zeroed gradients (its state is allocated; only weight decay moves the weights,
        equally on every rank). FSDP's forward gathers parameters, so its probe is an ordinary step."""
        if self.parallel == "fsdp":
            return trainer.step(batches)
        trainer.optimizer.zero_grad(set_to_none=True)
        with trainer.model.no_sync():
            loss = trainer.backward(batches)
        for p in trainer.model.parameters():
            if p.grad is not None:
                p.grad.zero_()
        trainer.optimizer.step()
        return float(loss)

    def settle(self, failed: dict | None) -> None:
        """Every rank's status (None: fine, else a row's status and error); when any rank failed, every rank
        raises the first failing rank's ``train.Failure``."""
        everyone = self._gather(failed)
        for r, f in enumerate(everyone):
            if f is not None:
                raise train.Failure(f["status"], _on_rank(r, f["error"]))

    def slowest(self, values: list[float]) -> list[float]:
        """``values`` element by element, the largest over ranks."""
        return [max(column) for column in zip(*self._gather(list(values)))]

    def barrier(self) -> None:
        dist.barrier()

    def agree(self, row: dict) -> dict:
        """The row rank 0 writes: rank 0's when every rank has the same status, else the first failing rank's
        (a failure after the probe, on one rank only)."""
        rows = self._gather(row)
        if len({(r["status"], r["error"]) for r in rows}) == 1:
            return rows[0]
        r = next(i for i, x in enumerate(rows) if x["status"] != "ok")
        return {**rows[r], "error": _on_rank(r, rows[r]["error"])}

    def _gather(self, value) -> list:
        out = [None] * self.me.world_size
        dist.all_gather_object(out, value)
        return out


def _on_rank(rank: int, error: str) -> str:
    return error if error.startswith("rank ") else f"rank {rank}: {error}"


def _rank_gpu(me: launch.Rank) -> dict:
    """This rank's host and GPU (NVML's name, clocks, power limit) for meta.json."""
    from fa2bench.distributed import shard

    return {k: v for k, v in shard.rank_meta(me, []).items() if k not in ("points", "est_s")}


def run_ranks(spec: train.E2ESpec, out: str | Path, resume: bool = False, opts: train.E2EOptions | None = None,
              on_row: Callable[[tuple, dict | None], None] | None = None, extend: bool = False) -> pd.DataFrame | None:
    """This torchrun rank's part of a data-parallel e2e run; rank 0 writes the folder and returns its table
    (the other ranks None). ``on_row`` is called on rank 0 only."""
    spec.validate()
    opts = opts or train.E2EOptions()
    with launch.process_group() as me:  # NCCL with CUDA, gloo without
        group = Group(me, spec.parallel or "ddp", opts.device)
        ranks = group._gather(_rank_gpu(me))
        peak = train.this_peak(opts)
        distributed = {"world_size": me.world_size, "parallel": group.parallel, "backend": dist.get_backend(),
                       "step_time": "per step the slowest rank's, then the median", "ranks": ranks}
        store = launch.LeaderWriter(me, lambda: train.start_writer(spec, opts, peak, out, resume, extend,
                                                                   distributed=distributed))
        memory, cache, interrupted = train.device_memory(opts), {}, False
        try:
            for configuration in spec.configurations():
                if spec.key(configuration) in store.done:
                    if on_row and me.is_leader:
                        on_row(configuration, None)
                    continue
                row = group.agree(train.run_config(*configuration, spec, opts, peak.tflops, memory, cache, group))
                store.append(row)
                if on_row and me.is_leader:
                    on_row(configuration, row)
        except KeyboardInterrupt:
            interrupted = True
        frame = store.writer.close(complete=not interrupted) if store.writer is not None else None
        if interrupted:
            raise KeyboardInterrupt
        return frame


# --- the launcher ------------------------------------------------------------------------------------------


def rank_command(plan: train.E2EPlan) -> list[str]:
    """The planned run as the ranks' ``fa2bench`` arguments (``--gpus`` left out: torchrun says how many)."""
    s = plan.spec
    args = ["e2e", "--model", ",".join(s.models), "--seqlen", ",".join(map(str, s.seqlens)),
            "--provider", ",".join(s.providers), "--out", str(plan.out), "--steps", str(s.steps),
            "--warmup", str(s.warmup), "--parallel", s.parallel or "ddp",
            "--shrink-on-oom" if s.shrink_on_oom else "--no-shrink-on-oom", "--check" if s.check else "--no-check"]
    for option, value in (("--micro-batch", s.micro_batch), ("--tokens-per-step", s.tokens_per_step),
                          ("--peak-tflops", plan.opts.peak_tflops)):
        if value is not None:
            args += [option, str(value)]
    if s.checkpointing is not None:
        args.append("--checkpointing" if s.checkpointing else "--no-checkpointing")
    return args + ["--resume"] * plan.resume + ["--extend"] * plan.extend


def launch_ranks(plan: train.E2EPlan, echo: Callable[[str], None] = print) -> int:
    """Run ``plan`` on ``plan.gpus`` ranks under torchrun; torchrun's exit status (130 after Ctrl-C). A folder
    that holds results without ``resume``, or another run's with it, is refused here, before torchrun starts
    (``ResultsError``)."""
    from fa2bench.run.results import CSV_NAME, ResultsError, continue_meta, read_meta, rerun_refused

    if (Path(plan.out) / CSV_NAME).exists() and not plan.resume:
        raise ResultsError(rerun_refused(plan.out))
    if plan.resume:  # what rank 0 will check first (another spec needs --extend), before any rank starts
        continue_meta(read_meta(plan.out), {"kind": KIND, "sweep": dataclasses.asdict(plan.spec)}, plan.extend)
    args = rank_command(plan)
    echo(f"launching {plan.gpus} rank(s) ({plan.spec.parallel}): torchrun --standalone "
         f"--nproc-per-node={plan.gpus} -m fa2bench " + " ".join(args))
    return launch.run_torchrun(plan.gpus, args)

