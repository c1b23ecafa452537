"""Triton attention kernels: naive (materialised S and P), FlashAttention-1-style and FlashAttention-2.

All three share one API::

    o = flash2_attention(q, k, v, causal=False, sm_scale=None)

q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim); differentiable.
Without a CUDA device, ``fa2bench.device.prepare_triton`` (below) switches on Triton's CPU interpreter before
Triton is imported.
"""
from fa2bench import device as _device

_device.prepare_triton()
from .flash1 import flash1_attention
from .flash2 import flash2_attention
from .naive import naive_attention

__all__ = ["naive_attention", "flash1_attention", "flash2_attention"]
