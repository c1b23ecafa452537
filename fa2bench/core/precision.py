"""Matmul precision per point: ``fp32`` means IEEE fp32, ``tf32`` means fp32 inputs with matmuls on TF32
tensor cores (10-bit mantissa operands, fp32 accumulate).

PyTorch's global switches (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``)
are set for a point's duration only and restored after, so a tf32 point never leaks TF32 into the fp32 points
around it; fa2bench's own kernels read ``tf32_enabled()`` and get it as their ``tf32`` keyword. Importing this
module imports no torch (the provider registry imports it, and listing providers stays light).
"""
from __future__ import annotations

import contextlib
import contextvars

_TF32 = contextvars.ContextVar("fa2bench_tf32", default=False)
# the torch dtype of each input dtype name (fa2bench.core.presets.DTYPES); tf32 points take fp32 inputs
TORCH_DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "tf32": "float32"}


def torch_dtype(name: str):
    """The torch dtype of the inputs of a ``name`` point (fp16, bf16, fp32, tf32); torch is imported here."""
    import torch

    return getattr(torch, TORCH_DTYPE_NAMES[name])


@contextlib.contextmanager
def matmul_precision(dtype: str):
    """Inside: TF32 matmuls if ``dtype`` is "tf32", none otherwise (true fp32 for an fp32 point)."""
    import torch

    tf32 = dtype == "tf32"
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    token = _TF32.set(tf32)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        _TF32.reset(token)


def tf32_enabled() -> bool:
    """Whether the point running now asked for TF32 matmuls."""
    return _TF32.get()
