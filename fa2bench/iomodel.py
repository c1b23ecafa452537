"""HBM traffic models per algorithm (placeholder: compulsory bytes only; the profiling issue refines it)."""
from __future__ import annotations

from fa2bench.presets import Shape

DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


def hbm_bytes(provider: str, shape: Shape, mode: str, dtype: str) -> float:
    """Modelled HBM bytes of one call of ``provider`` on ``shape`` in ``mode`` (placeholder: compulsory)."""
    e = DTYPE_BYTES[dtype]
    q = shape.batch * shape.heads * shape.seqlen_q * shape.headdim
    kv = shape.batch * shape.kv_heads * shape.seqlen_k * shape.headdim
    fwd = e * (2 * q + 2 * kv)
    return {"fwd": fwd, "bwd": 2 * fwd, "fwd_bwd": 3 * fwd}[mode]
