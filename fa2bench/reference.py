"""Reference attention and the correctness gate every kernel and sweep point goes through.

The gate follows flash-attention's tests: a kernel's error against a high-precision reference may be at most
``FACTOR`` times the error of plain low-precision PyTorch on the same inputs, plus a rounding floor of a few
units in the last place of the dtype. Errors are relative to the largest magnitude of the reference tensor, so
the gate scales with dtype and size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FACTOR = 2.0
# Rounding floor, relative to max|ref|: two units in the last place of the dtype. float32 is given tf32's unit
# because Triton's default fp32 dot (like cuBLAS with TF32 on) rounds operands to 10 mantissa bits.
FLOOR = {torch.float16: 2 * 2.0**-10, torch.bfloat16: 2 * 2.0**-7, torch.float32: 2 * 2.0**-10}


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  sm_scale: float | None = None, upcast: bool = True,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard attention, softmax(q kᵀ · scale) v, written plainly.

    Layout (batch, heads, seqlen, headdim); k, v may have fewer heads (GQA/MQA: query head h reads kv head
    h // group). Causal masking is aligned to the bottom-right corner: query i sees keys j <= i + sk - sq, and a
    row that sees no key outputs zeros. With ``upcast`` the computation runs in ``dtype`` (float64 by default);
    without it, in the inputs' own dtype with the softmax in float32, as a user's eager code would.
    The result has q's dtype only when not upcast.
    """
    headdim = q.shape[-1]
    scale = 1.0 / math.sqrt(headdim) if sm_scale is None else sm_scale
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if upcast:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        sq, sk = q.shape[-2], k.shape[-2]
        rows = torch.arange(sq, device=q.device)[:, None]
        cols = torch.arange(sk, device=q.device)[None, :]
        allowed = cols <= rows + (sk - sq)
        live = allowed.any(dim=-1, keepdim=True)  # rows that see at least one key
        scores = scores.masked_fill(~(allowed | ~live), float("-inf"))
        probs = torch.softmax(scores.float() if not upcast else scores, dim=-1) * live
    else:
        probs = torch.softmax(scores.float() if not upcast else scores, dim=-1)
    return torch.matmul(probs.to(v.dtype), v)


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max|x - ref| / max|ref|, in float64; inf if x has NaN/inf where ref is finite."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return math.inf
    scale = ref.abs().max().item()
    return (x - ref).abs().max().item() / max(scale, 1e-30)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    max_rel_error: float
    detail: str  # the worst tensor, its error and the tolerance


def judge(outputs: dict[str, torch.Tensor], refs: dict[str, torch.Tensor],
          baselines: dict[str, torch.Tensor], dtype: torch.dtype) -> Verdict:
    """Gate each named tensor: rel_error(out) <= FACTOR * rel_error(baseline) + FLOOR[dtype]."""
    worst_ratio, worst, failures = -1.0, "", []
    max_err = 0.0
    for name, ref in refs.items():
        err = rel_error(outputs[name], ref)
        tol = FACTOR * rel_error(baselines[name], ref) + FLOOR[dtype]
        max_err = max(max_err, err)
        line = f"{name}: rel err {err:.2e} (tol {tol:.2e})"
        if not err <= tol:
            failures.append(line)
        if err / tol > worst_ratio:
            worst_ratio, worst = err / tol, line
    return Verdict(not failures, max_err, "; ".join(failures) if failures else worst)


def check_attention(fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    backward: bool = True, ref_dtype: torch.dtype = torch.float64) -> Verdict:
    """Run ``fn(q, k, v, causal)`` (and its backward with a random dO) and gate it against the reference.

    Inputs are used as given (the caller draws them fresh); the reference runs in ``ref_dtype`` on the same
    device, the baseline in the inputs' dtype.
    """
    leaves = [t.detach().clone().requires_grad_(backward) for t in (q, k, v)]
    out = fn(*leaves, causal)
    outputs = {"o": out.detach()}
    do = torch.randn_like(out) if backward else None
    if backward:
        out.backward(do)
        outputs.update(dq=leaves[0].grad, dk=leaves[1].grad, dv=leaves[2].grad)

    def run_ref(**kw):
        ins = [t.detach().clone().requires_grad_(backward) for t in (q, k, v)]
        o = attention_ref(*ins, causal=causal, **kw)
        res = {"o": o.detach()}
        if backward:
            o.backward(do.to(o.dtype))
            res.update(dq=ins[0].grad, dk=ins[1].grad, dv=ins[2].grad)
        return res

    refs = run_ref(upcast=True, dtype=ref_dtype)
    baselines = run_ref(upcast=False)
    return judge(outputs, refs, baselines, q.dtype)
