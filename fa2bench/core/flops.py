"""The FLOPs model: one pure function, the same count for every provider.

Following the FlashAttention-2 paper (Section 4.1): the forward pass does two matmuls of
2 * seqlen_q * seqlen_k * headdim FLOPs each per (batch, head), so 4 * b * h * sq * sk * d; with causal
masking only the unmasked (query, key) pairs count (about half). The backward pass counts 2.5 times the
forward (five matmuls instead of two); forward + backward, 3.5 times. Softmax and masking are not counted.
``decode`` is a forward pass of 1-16 queries per sequence against a KV cache (fa2bench.core.decode), counted as
``fwd``; attention variants (fa2bench.core.variants) count only the pairs they attend (a window of w at seqlen
n about n * w, documents the sum over documents), for every provider alike; softcap's tanh and ALiBi's add are
element-wise work on the score like softmax and are not counted (they are not matmul FLOPs). Report tables show
the dense-equivalent rate beside it (``read.markdown``). Decode is memory-bound, so its headline is bandwidth (``gbps``,
``pct_copy_bw``), not TFLOP/s.
"""
from __future__ import annotations

MODES = ("fwd", "bwd", "fwd_bwd")  # the training passes: what a sweep runs unless told otherwise
DECODE = "decode"
ALL_MODES = MODES + (DECODE,)
# FLOPs per (query, key) pair per unit of head dim: forward 4, backward 2.5 x 4, both 3.5 x 4.
_PER_PAIR = {"fwd": 4, "bwd": 10, "fwd_bwd": 14, DECODE: 4}


def attended_pairs(seqlen_q: int, seqlen_k: int, causal: bool) -> int:
    """(query, key) pairs that attention computes.

    Causal masking is aligned to the bottom-right corner (FlashAttention >= 2.1): query i sees keys
    j <= i + seqlen_k - seqlen_q, so row i has clamp(i + seqlen_k - seqlen_q + 1, 0, seqlen_k) keys.
    """
    if not causal:
        return seqlen_q * seqlen_k
    offset = seqlen_k - seqlen_q
    total = 0
    # rows with a partial view of the keys see i + offset + 1 keys; the rest see none or all of them
    first = max(0, -offset)  # first row that sees at least one key
    last = min(seqlen_q, seqlen_k - offset)  # rows before this see fewer than seqlen_k keys
    if last > first:
        n = last - first
        total += n * (first + offset + 1) + n * (n - 1) // 2
    total += max(0, seqlen_q - max(last, first)) * seqlen_k
    return total


def attention_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, headdim: int, causal: bool,
                    mode: str, variant: str = "dense") -> int:
    """FLOPs of one attention call in ``mode`` (fwd, bwd or fwd_bwd); kv_heads do not change the count; a
    ``variant`` spelling counts its attended pairs only."""
    if mode not in _PER_PAIR:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(ALL_MODES)}")
    if variant != "dense":
        from fa2bench.core import variants

        pairs = variants.attended_pairs(variants.parse(variant), batch, seqlen_q, seqlen_k, causal)
        return _PER_PAIR[mode] * heads * pairs * headdim
    return _PER_PAIR[mode] * batch * heads * attended_pairs(seqlen_q, seqlen_k, causal) * headdim


def tflops(flops: int, ms: float) -> float:
    """Achieved TFLOP/s of ``flops`` done in ``ms`` milliseconds."""
    return flops / (ms * 1e-3) / 1e12
