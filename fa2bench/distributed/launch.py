"""The torchrun environment, starting torchrun for ``--gpus N`` (sweep, e2e, ring), ``dispatch``: where a
planned run goes (launch the ranks, run as a rank, or run alone), the process group every rank leaves together
(``process_group``), and the results store as the ranks of a collective run share it (``LeaderWriter``).

fa2bench does not launch ranks itself: ``--gpus N`` runs the sweep as planned (``SweepPlan.command``, the
resolved sweep as ``fa2bench sweep`` arguments) under ``python -m torch.distributed.run --standalone
--nproc-per-node N``. Every process fa2bench starts runs with NVLink multicast off in NCCL, PyTorch and NVSHMEM
(``MULTICAST_OFF``): lent multi-GPU hosts require it, and nothing here needs multicast.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

if TYPE_CHECKING:
    from fa2bench.run.results import RunWriter

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

T = TypeVar("T")


class LaunchError(ValueError):
    """A distributed run that cannot start as asked (a usage error)."""


@dataclass(frozen=True)
class Rank:
    """Where this process sits in a torchrun job (rank 0 of 1 outside torchrun)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def current() -> Rank:
    """This process's place, from the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK)."""
    env = os.environ
    try:
        return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    except ValueError:
        raise LaunchError("RANK, WORLD_SIZE or LOCAL_RANK is not a whole number") from None


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def pin_local_gpu() -> None:
    """Under torchrun, make this rank's GPU (local rank modulo the GPUs visible) the current device before
    anything touches CUDA, so no rank opens a context on GPU 0 by accident."""
    if not under_torchrun():
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(current().local_rank % torch.cuda.device_count())


def resolve_gpus(text: str, available: int) -> int:
    """``--gpus N|all`` -> a process count. Without CUDA, N CPU processes (gloo) are allowed, 'all' is not."""
    text = text.strip().lower()
    if text == "all":
        if available < 1:
            raise LaunchError("--gpus all: no CUDA GPU here (give a number to run that many CPU processes)")
        return available
    try:
        n = int(text)
    except ValueError:
        raise LaunchError(f"--gpus: expected a number or 'all', got {text!r}") from None
    if n < 1:
        raise LaunchError(f"--gpus must be at least 1, got {n}")
    if available and n > available:
        raise LaunchError(f"--gpus {n}: only {available} CUDA GPU(s) here")
    return n


def place(gpus: str | int | None, together: str) -> tuple[Rank | None, int | None]:
    """Where a run asked for ``--gpus`` (None: not given) goes: ``(this rank, None)`` in a process torchrun
    started, ``(None, N)`` to launch N ranks, ``(None, None)`` for one process. ``together`` says what the ranks
    do, for the refusal of ``--gpus`` under torchrun (a LaunchError, as for a bad count)."""
    if under_torchrun():
        if gpus is not None:
            raise LaunchError("--gpus starts torchrun, and this process already runs under torchrun: leave --gpus "
                              f"out ({together})")
        return current(), None
    if gpus is None:
        return None, None
    from fa2bench.core import device
    return None, resolve_gpus(str(gpus), device.cuda_count())


def dispatch(gpus: int | None, rank: Rank | None, *, launcher: Callable[[], T], as_rank: Callable[[], T],
             alone: Callable[[], T]) -> T:
    """The one way a planned run goes where ``place`` put it: ``launcher()`` starts ``gpus`` ranks under
    torchrun, ``as_rank()`` runs this rank's share in a process torchrun started, ``alone()`` runs it all here."""
    if gpus is not None:
        return launcher()
    if rank is not None:
        return as_rank()
    return alone()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process fa2bench starts: ours, multicast forced off, plus ``extra``."""
    return {**os.environ, **(extra or {}), **MULTICAST_OFF}


def torchrun_argv(nproc: int, module_args: list[str], module: str = "fa2bench") -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m <module> <module_args>``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", module, *module_args]


def strip_option(argv: list[str], option: str, takes_value: bool = True) -> list[str]:
    """``argv`` without ``option`` (``--gpus 4`` or ``--gpus=4``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == option:
            skip = takes_value
            continue
        if takes_value and arg.startswith(option + "="):
            continue
        out.append(arg)
    return out


def run_torchrun(nproc: int, module_args: list[str], module: str = "fa2bench", grace_s: float = 60.0) -> int:
    """Run ``module`` under torchrun and return its exit status (the workers' output goes to ours).

    On Ctrl-C (which the workers get too) wait up to ``grace_s`` for them to stop, then return 130."""
    child = subprocess.Popen(torchrun_argv(nproc, module_args, module), env=child_env())
    try:
        return child.wait()
    except KeyboardInterrupt:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return 130


def init_process_group(backend: str | None = None, timeout_s: float = 1800.0):
    """Join the torchrun job's process group once (``backend`` default: NCCL with CUDA, else gloo); pin this
    rank's GPU first (local rank modulo the GPUs visible)."""
    import torch
    import torch.distributed as dist

    for key, value in MULTICAST_OFF.items():  # NCCL reads them when the communicator is made
        os.environ[key] = value
    me = current()
    if torch.cuda.is_available():
        torch.cuda.set_device(me.local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        kwargs = {"device_id": torch.device("cuda", torch.cuda.current_device())} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s), **kwargs)
    return me


@contextlib.contextmanager
def process_group(backend: str | None = None, timeout_s: float = 1800.0) -> Iterator[Rank]:
    """``init_process_group`` for the body, then every rank leaves together: a barrier where the body ended
    normally (under gloo, a rank that tore its group down while rank 0 was still writing aborted at exit now and
    then: "terminate called without an active exception"), and the group destroyed however it ended (after an
    error no barrier: the other ranks may never reach it)."""
    import torch.distributed as dist

    me = init_process_group(backend, timeout_s)
    try:
        yield me
        dist.barrier()
    finally:
        dist.destroy_process_group()


class LeaderWriter:
    """The results store as the ranks of a collective run see it (every rank runs every point together): rank
    0 opens the folder (``open_writer()``, a ``RunWriter``) and appends each row, the other ranks' ``append``
    does nothing; every rank gets rank 0's ``done``, so all skip the same finished points and run the rest in
    lockstep; a folder that cannot be used (a ResultsError on rank 0) is raised on every rank. Call it on every
    rank of an initialised process group; ``release`` gives the folder up."""

    def __init__(self, me: Rank, open_writer: Callable[[], "RunWriter"]):
        import torch.distributed as dist

        from fa2bench.run.results import ResultsError

        self.writer, box = None, [None, None]
        if me.is_leader:
            try:
                self.writer = open_writer()
                box = [None, list(self.writer.done)]
            except ResultsError as exc:
                box = [str(exc), None]
        dist.broadcast_object_list(box, src=0)
        if box[0]:
            raise ResultsError(box[0])
        self.done = set(box[1])

    def append(self, row: dict) -> None:
        if self.writer is not None:
            self.writer.append(row)

    def release(self) -> None:
        if self.writer is not None:
            self.writer.release()
