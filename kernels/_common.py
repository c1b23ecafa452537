"""Input checks and small helpers shared by the three attention kernels.

Every kernel takes q: (batch, heads, seqlen_q, headdim) and k, v: (batch, kv_heads, seqlen_k, headdim) in any
strides, and raises ValueError naming the problem for anything it cannot run.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEADDIM = 256


@dataclass(frozen=True)
class AttnShape:
    batch: int
    heads: int
    kv_heads: int
    seqlen_q: int
    seqlen_k: int
    headdim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 for MHA, heads for MQA)."""
        return self.heads // self.kv_heads


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttnShape:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seqlen, headdim), got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"inputs are on {q.device}; the Triton kernels need a CUDA device "
                         "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    batch, heads, seqlen_q, headdim = q.shape
    kb, kv_heads, seqlen_k, kd = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if kb != batch:
        raise ValueError(f"q has batch {batch} but k, v have batch {kb}")
    if kd != headdim:
        raise ValueError(f"q has head dim {headdim} but k, v have head dim {kd}")
    if min(batch, heads, seqlen_q, kv_heads, seqlen_k) < 1:
        raise ValueError(f"empty input: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    if not 1 <= headdim <= MAX_HEADDIM:
        raise ValueError(f"head dim {headdim} is not supported (1..{MAX_HEADDIM})")
    return AttnShape(batch, heads, kv_heads, seqlen_q, seqlen_k, headdim)


def default_scale(headdim: int, sm_scale: float | None) -> float:
    return 1.0 / math.sqrt(headdim) if sm_scale is None else float(sm_scale)


def tune_bench(kernel_call, quantiles):
    """The autotuners' timer: Triton's do_bench on short budgets (5 ms warm-up, 20 ms of repetitions).

    The default budgets (25 + 100 ms per config) would spend minutes of a sweep choosing configs; a ranking
    needs far fewer repetitions than a reported measurement.
    """
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def describe_config(cfg) -> str:
    """A config as ``last_config()`` reports it: "BLOCK_M=128 BLOCK_N=64 w8 s3"."""
    tiles = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{tiles} w{cfg.num_warps} s{cfg.num_stages}"


def config_forcer(forced: dict, tuned: tuple[str, ...]):
    """The ``forced_configs(**by_kernel)`` context manager of a kernel module: while it is open, the named
    autotuned kernels (of ``tuned``) launch with exactly the given configs (recorded in ``forced``)."""

    @contextlib.contextmanager
    def forced_configs(**by_kernel):
        unknown = sorted(set(by_kernel) - set(tuned))
        if unknown:
            raise ValueError(f"no autotuned kernel named {unknown}; autotuned kernels: {list(tuned)}")
        saved = dict(forced)
        forced.update(by_kernel)
        try:
            yield
        finally:
            forced.clear()
            forced.update(saved)

    return forced_configs
