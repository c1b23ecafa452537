"""Triton attention kernels: naive (materialised S and P), FlashAttention-1-style and FlashAttention-2.

All three share one API::

    o = flash2_attention(q, k, v, causal=False, sm_scale=None)

q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim); differentiable.
Without a CUDA device, Triton's CPU interpreter is switched on before Triton is imported.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .naive import naive_attention  # noqa: E402
from .flash1 import flash1_attention  # noqa: E402
from .flash2 import flash2_attention  # noqa: E402

__all__ = ["naive_attention", "flash1_attention", "flash2_attention"]
