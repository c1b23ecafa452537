"""Triton attention kernels: naive (materialised S and P), FlashAttention-1-style (as published and split as
released), the ablation ladder's rungs 3-6, FlashAttention-2, and rung 8's Hopper forward in Gluon (fa3), rung 9's
ping-pong variant of it (fa3-pingpong, rung 9) and rung 10 (fa3-overlap: the softmax under its own P V).

All share one API::

    o = flash2_attention(q, k, v, causal=False, sm_scale=None, tf32=False)

q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim); differentiable. Decoding
against a KV cache has its own API, ``decode_attention`` (kernels/decode.py); ``fa3_attention`` (kernels/fa3.py,
Gluon, Hopper only) has its backward in kernels/fa3_bwd.py.
The functions load lazily (PEP 562), so ``fa2bench.kernels.configs`` (the autotune spaces, which the IO model
reads) imports neither torch nor Triton. Every kernel module imports ``_common`` first, which, without a CUDA
device, switches on Triton's CPU interpreter (``fa2bench.core.device.prepare_triton``) before Triton is imported.
Autotune decisions persist on disk across runs (``_common.autotune``); ``clear_autotune_cache()`` forgets them.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"naive_attention": "naive", "flash1_attention": "flash1", "flash1_split_attention": "flash1",
            "r3_attention": "ladder", "r4_attention": "ladder", "r5_attention": "ladder", "r6_attention": "ladder",
            "flash2_attention": "flash2", "flash2_varlen_attention": "flash2",
            "fa3_attention": "fa3_bwd", "fa3_deterministic_attention": "fa3_bwd",
            "fa3_pingpong_attention": "fa3_bwd", "fa3_overlap_attention": "fa3_bwd", "decode_attention": "decode"}
__all__ = [*_EXPORTS, "clear_autotune_cache"]
_MODULES = ("naive", "flash1", "flash2", "ladder")


def clear_autotune_cache() -> int:
    """Forget every autotune decision of fa2bench's kernels, on disk (Triton's cache directory: TRITON_CACHE_DIR,
    default ~/.triton/cache; compiled kernels stay) and in this process: the next launch of each kernel searches
    its configs again. Returns the number of files removed."""
    for module in _MODULES:
        importlib.import_module(f".{module}", __name__)
    return importlib.import_module("._common", __name__).clear_autotune_files()


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(list(globals()) + __all__)
