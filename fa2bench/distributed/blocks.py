"""Attention on one (Q block, K/V block) pair, returning the output and its log-sum-exp, and its backward.

Ring attention computes a rank's output from several K/V blocks and merges the partial results through their
log-sum-exps; its backward needs each block's gradients given the *final* output and log-sum-exp. These two
functions are that interface, with two implementations:

- ``fa2``: fa2bench's FlashAttention-2 Triton kernels through their entry points outside autograd,
  ``flash2_forward(q, k, v, causal, sm_scale) -> (o, lse_log2)`` and
  ``flash2_backward(q, k, v, o, lse_log2, do, causal, sm_scale) -> (dq, dk, dv)``.
- ``ref``: plain PyTorch in float32 (float64 for float64 inputs) on any device: the CPU tests' kernel.

Conventions (those of the fa2 kernel): layout (batch, heads, seq, headdim), k/v may have fewer heads (GQA),
causal masking aligned to the bottom-right corner, and the LSE stored in the **log2 domain**,
``lse = log2(sum_j exp2(scale * log2(e) * q.k_j))`` (natural-log LSE times log2(e)), fp32, (batch, heads, seq).
"""
from __future__ import annotations

import math

import torch

LOG2E = 1.0 / math.log(2.0)
IMPLS = ("fa2", "ref")


def forward(q, k, v, causal: bool, scale: float, impl: str = "fa2"):
    """(o, lse): o in q's dtype, lse in the log2 domain (fp32; fp64 for fp64 inputs with ``ref``)."""
    if impl == "fa2":
        return _fa2_forward(q, k, v, causal, scale)
    if impl == "ref":
        return _ref_forward(q, k, v, causal, scale)
    raise ValueError(f"unknown block implementation {impl!r}; choose from {', '.join(IMPLS)}")


def backward(q, k, v, o, lse, do, causal: bool, scale: float, impl: str = "fa2"):
    """(dq, dk, dv) of this block, given the final ``o`` and ``lse`` of these query rows (over every K/V
    block they attend to): then P = exp2(scale * log2(e) * q.k - lse) is this block's slice of the global
    softmax and Delta = rowsum(dO * O) is global too, so block gradients simply add up."""
    if impl == "fa2":
        return _fa2_backward(q, k, v, o, lse, do, causal, scale)
    if impl == "ref":
        return _ref_backward(q, k, v, o, lse, do, causal, scale)
    raise ValueError(f"unknown block implementation {impl!r}; choose from {', '.join(IMPLS)}")


def merge(o, lse, o_blk, lse_blk):
    """Fold a block's (o_blk, lse_blk) into the running (o, lse) in place: o fp32, both log2-domain LSEs.

    lse_new = log2(2^lse + 2^lse_blk); o = o * 2^(lse - lse_new) + o_blk * 2^(lse_blk - lse_new).
    """
    new = torch.maximum(lse, lse_blk)
    new = new + torch.log2(torch.exp2(lse - new) + torch.exp2(lse_blk - new))
    o.mul_(torch.exp2(lse - new).unsqueeze(-1)).add_(o_blk.to(o.dtype) * torch.exp2(lse_blk - new).unsqueeze(-1))
    lse.copy_(new)


# --- fa2: the Triton kernels -------------------------------------------------------------------------------


def _fa2_forward(q, k, v, causal, scale):
    from fa2bench.kernels.flash2 import flash2_forward

    return flash2_forward(q, k, v, causal=causal, sm_scale=scale)


def _fa2_backward(q, k, v, o, lse, do, causal, scale):
    from fa2bench.kernels.flash2 import flash2_backward

    return flash2_backward(q, k, v, o, lse, do, causal=causal, sm_scale=scale)


# --- ref: plain PyTorch ------------------------------------------------------------------------------------


def _upcast(t):
    return t.double() if t.dtype == torch.float64 else t.float()


def _scores(q, k, causal, scale):
    """Scores in the log2 domain (scale * log2(e) * q.k), masked bottom-right when causal; k expanded for GQA."""
    group = q.shape[1] // k.shape[1]
    kx = _upcast(k).repeat_interleave(group, dim=1) if group > 1 else _upcast(k)
    s = torch.matmul(_upcast(q), kx.transpose(-2, -1)) * (scale * LOG2E)
    if causal:
        sq, sk = q.shape[-2], k.shape[-2]
        rows = torch.arange(sq, device=q.device)[:, None]
        cols = torch.arange(sk, device=q.device)[None, :]
        s = s.masked_fill(cols > rows + (sk - sq), float("-inf"))
    return s, group


def _ref_forward(q, k, v, causal, scale):
    s, group = _scores(q, k, causal, scale)
    m = s.amax(dim=-1, keepdim=True).clamp_min(-1e30)  # a row that sees no key: m finite, l = 0
    p = torch.exp2(s - m)
    l_ = p.sum(dim=-1, keepdim=True)
    vx = _upcast(v).repeat_interleave(group, dim=1) if group > 1 else _upcast(v)
    o = torch.matmul(p, vx) / l_.clamp_min(1e-30)
    lse = (m + torch.log2(l_)).squeeze(-1)
    lse = torch.where(l_.squeeze(-1) > 0, lse, torch.full_like(lse, float("inf")))  # as the kernel: +inf
    return o.to(q.dtype), lse


def _ref_backward(q, k, v, o, lse, do, causal, scale):
    s, group = _scores(q, k, causal, scale)
    p = torch.exp2(s - lse.to(s.dtype).unsqueeze(-1))
    dox, ox = _upcast(do), _upcast(o)
    vx = _upcast(v).repeat_interleave(group, dim=1) if group > 1 else _upcast(v)
    kx = _upcast(k).repeat_interleave(group, dim=1) if group > 1 else _upcast(k)
    dv = torch.matmul(p.transpose(-2, -1), dox)
    dp = torch.matmul(dox, vx.transpose(-2, -1))
    delta = (dox * ox).sum(dim=-1, keepdim=True)
    ds = p * (dp - delta)
    dq = torch.matmul(ds, kx) * scale
    dk = torch.matmul(ds.transpose(-2, -1), _upcast(q)) * scale
    if group > 1:  # sum the query heads of each K/V head's group
        b, h, n, d = dk.shape
        dk = dk.view(b, h // group, group, n, d).sum(dim=2)
        dv = dv.view(b, h // group, group, n, d).sum(dim=2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
