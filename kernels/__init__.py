"""Triton attention kernels: naive (materialised S and P), FlashAttention-1-style (as published and split as
released), the ablation ladder's rungs 3-6, FlashAttention-2, and rung 8's Hopper forward in Gluon (fa3), rung 9's
ping-pong variant of it (fa3-pingpong) and an attempt at rung 10 (fa3-overlap).

All share one API::

    o = flash2_attention(q, k, v, causal=False, sm_scale=None, tf32=False)

q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim); differentiable.
Without a CUDA device, ``fa2bench.core.device.prepare_triton`` (below) switches on Triton's CPU interpreter before
Triton is imported.
"""
from fa2bench.core import device as _device
_device.prepare_triton()
from .flash1 import flash1_attention, flash1_split_attention
from .fa3 import fa3_attention, fa3_overlap_attention, fa3_pingpong_attention
from .flash2 import flash2_attention
from .ladder import r3_attention, r4_attention, r5_attention, r6_attention
from .naive import naive_attention

__all__ = ["naive_attention", "flash1_attention", "flash1_split_attention", "r3_attention", "r4_attention",
           "r5_attention", "r6_attention", "flash2_attention", "fa3_attention",
           "fa3_pingpong_attention", "fa3_overlap_attention"]
