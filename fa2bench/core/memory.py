"""Will a point fit? Its memory, estimated before anything is allocated, and the sizes no machine can hold.

A point's estimate is its tensors (q, k, v, the output, and for backward dO and the three gradients) and the
provider's own workspace (``Provider.workspace_bytes``: a streaming kernel keeps O(N) row statistics, one that
materialises the score matrix S and probabilities P needs O(N^2)) or the correctness check's reference
(float64, on at most ``reference.FULL_CHECK_LIMIT`` score elements), whichever is larger. The runner records a point
whose estimate exceeds the free memory of its device as ``oom`` without trying it: an allocation that would fail (or, on
the CPU, send the machine into swap) is not worth attempting.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from fa2bench.core.presets import Shape, SpecError

BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "tf32": 4}
F32 = 4
MAX_DIM = 2**31 - 1  # one tensor dimension (CUDA grids and PyTorch's 32-bit index paths stop here)
MAX_FLOPS = 2**62  # a point's FLOP count must fit int64 (results columns): ~4.6e18, over an hour on any GPU
# Estimates are lower bounds, so a point is skipped only when even its lower bound exceeds the free memory: a
# point that might fit is tried (and recorded oom if it does not).
FIT_FRACTION = 1.0


def _sizes(shape: Shape, dtype: str) -> tuple[int, int, int, int]:
    """(bytes per element, batch x heads, elements of q (= of o), elements of k (= of v))."""
    return (BYTES.get(dtype, 4), shape.batch * shape.heads, shape.batch * shape.heads * shape.seqlen_q * shape.headdim,
            shape.batch * shape.kv_heads * shape.seqlen_k * shape.headdim)


def streaming_workspace(shape: Shape, dtype: str, mode: str) -> int:
    """A FlashAttention-style kernel: fp32 row statistics only (the log-sum-exp; in backward also Delta). The
    registry's default; a lower bound (fa1 also keeps an fp32 O, some backward passes an fp32 dQ)."""
    rows = shape.batch * shape.heads * shape.seqlen_q
    return F32 * rows * (1 if mode == "fwd" else 2)


@dataclass(frozen=True)
class Materialising:
    """Workspace of standard attention, which writes the score matrix S (and P, and their gradients) to memory:
    ``forward`` (``backward``) times the bytes of one S in the input dtype, for a forward (a backward, or a
    forward and backward) call. The multiples are lower bounds measured on an H100 (``peak_mem_mb`` of the
    committed paper sweep at 4k-16k tokens): naive (Triton) S and P in the forward, dP and dS with P kept in the
    backward: 2 and 3; eager PyTorch (scaled and masked copies, an fp32 softmax, autograd's saved tensors): 5
    and 8; SDPA's math backend: 4 and 6."""
    forward: float
    backward: float

    def __call__(self, shape: Shape, dtype: str, mode: str) -> int:
        e, bh, _, _ = _sizes(shape, dtype)
        scores = e * bh * shape.seqlen_q * shape.seqlen_k
        return int((self.forward if mode == "fwd" else self.backward) * scores)


NAIVE_WORKSPACE = Materialising(forward=2, backward=3)
EAGER_WORKSPACE = Materialising(forward=5, backward=8)
MATH_WORKSPACE = Materialising(forward=4, backward=6)


def tensor_bytes(shape: Shape, dtype: str, mode: str) -> int:
    """q, k, v and the output; for backward also dO and dq, dk, dv."""
    e, _, q, kv = _sizes(shape, dtype)
    forward = e * (2 * q + 2 * kv)
    return forward if mode == "fwd" else 2 * forward


def reference_bytes(shape: Shape) -> int:
    """The float64 reference of the correctness check, on a slice when the point is large."""
    from fa2bench.core.reference import FULL_CHECK_LIMIT

    scores = min(shape.batch * shape.heads * shape.seqlen_q * shape.seqlen_k, FULL_CHECK_LIMIT)
    return 8 * 3 * scores  # scores, probabilities and their gradient


def point_bytes(shape: Shape, dtype: str, mode: str, workspace, check: bool = True) -> int:
    """Estimated peak memory of one point: its tensors plus the larger of the provider's
    ``workspace(shape, dtype, mode)`` and (with ``check``) the reference, which runs after the provider's
    workspace is freed."""
    return tensor_bytes(shape, dtype, mode) + max(workspace(shape, dtype, mode),
                                                   reference_bytes(shape) if check else 0)


def available_bytes(device: str) -> int | None:
    """Free memory of ``device`` ("cuda": the current GPU; "cpu": MemAvailable), or None if unknown."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def wont_fit(needed: int, free: int | None) -> str | None:
    """Why a point needing ``needed`` bytes is not tried with ``free`` bytes free, or None."""
    if free is None or needed <= FIT_FRACTION * free:
        return None
    return (f"needs an estimated {gib(needed)} (inputs, outputs, gradients, workspace, check) and only "
            f"{gib(free)} is free on this device: not run")


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n < 2**40 * 10 else f"{n / 2**40:.0f} TiB"


def check_sizes(shapes) -> None:
    """Refuse sizes no machine can hold (SpecError, at parse time): a dimension past 2^31 - 1, or a point
    whose FLOP count does not fit 64 bits."""
    from fa2bench.core.flops import attention_flops

    names = {"batch": "--batch", "heads": "--heads", "kv_heads": "--kv-heads", "seqlen_q": "--seqlen",
             "seqlen_k": "--seqlen-k", "headdim": "--headdim"}
    for shape in shapes:
        for attr, option in names.items():
            if getattr(shape, attr) > MAX_DIM:
                raise SpecError(f"{option} {getattr(shape, attr)} is beyond what any GPU can hold "
                                f"(one dimension is at most {MAX_DIM})")
        flops = attention_flops(shape.batch, shape.heads, shape.seqlen_q, shape.seqlen_k, shape.headdim,
                                False, "fwd_bwd")
        if flops >= MAX_FLOPS:
            raise SpecError(f"shape {shape.label()} is beyond what any GPU can run ({flops:.2e} FLOPs per call)")
