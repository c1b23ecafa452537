"""Which device does the work, and Triton's CPU interpreter when there is none.

Triton reads ``TRITON_INTERPRET`` once, when it is first imported. fa2bench imports neither torch nor Triton
until work needs them (``import fa2bench``, reading, plotting and comparing runs never do): every path that
imports Triton (the kernels package, the runner, software versions, kernel resources) calls
``prepare_triton()`` first, which switches the interpreter on when torch sees no CUDA GPU. A value the user
set wins. If the user's script imported Triton itself before that, without ``TRITON_INTERPRET=1``, the kernels
would fail later with a cryptic InterpreterError: this is said once, in one line (a RuntimeWarning), and
fa2bench's kernel providers report it as the reason they are unavailable (``interpreter_problem()``).
"""
from __future__ import annotations

import functools
import os
import sys
import warnings

# Why fa2bench's Triton kernels cannot run in this process (None when they can); see prepare_triton.
INTERPRETER_PROBLEM: str | None = None


@functools.cache
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cuda_count() -> int:
    """How many CUDA GPUs torch sees here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if has_cuda() else 0


def name() -> str:
    """"cuda" or "cpu": where sweeps run."""
    return "cuda" if has_cuda() else "cpu"


def prepare_triton() -> None:
    """Without CUDA, run Triton kernels through Triton's CPU interpreter (call before Triton is imported)."""
    global INTERPRETER_PROBLEM
    if INTERPRETER_PROBLEM or os.environ.get("TRITON_INTERPRET") or has_cuda():
        return
    if "triton" in sys.modules:
        INTERPRETER_PROBLEM = ("triton was imported before fa2bench without TRITON_INTERPRET=1, so fa2bench's "
                               "Triton kernels cannot run on this CPU; import fa2bench.kernels first or set "
                               "TRITON_INTERPRET=1")
        warnings.warn(INTERPRETER_PROBLEM, RuntimeWarning, stacklevel=2)
        return
    os.environ["TRITON_INTERPRET"] = "1"


def interpreter_problem() -> str | None:
    """Why fa2bench's Triton kernels cannot run on the CPU in this process (None when they can)."""
    prepare_triton()
    return INTERPRETER_PROBLEM


SM_NAMES = {90: "a Hopper"}  # GPU architectures by compute capability, as messages name them


def device_is_sm(sm: int, device: str) -> bool:
    """Whether ``device`` ("cuda" or "cpu") is a CUDA GPU of compute capability ``sm`` (90: 9.0)."""
    if device != "cuda":
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() == divmod(sm, 10)
