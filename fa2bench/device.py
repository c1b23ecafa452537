"""Which device does the work, and Triton's CPU interpreter when there is none.

Triton reads ``TRITON_INTERPRET`` once, when it is first imported. fa2bench imports neither torch nor Triton
until work needs them (``import fa2bench``, reading, plotting and comparing runs never do): every path that
imports Triton (the kernels package, the runner, software versions, kernel resources) calls
``prepare_triton()`` first, which switches the interpreter on when torch sees no CUDA GPU. A value the user
set wins.
"""
from __future__ import annotations

import functools
import os


@functools.cache
def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def name() -> str:
    """"cuda" or "cpu": where sweeps run."""
    return "cuda" if has_cuda() else "cpu"


def prepare_triton() -> None:
    """Without CUDA, run Triton kernels through Triton's CPU interpreter (call before Triton is imported)."""
    if not has_cuda():
        os.environ.setdefault("TRITON_INTERPRET", "1")
