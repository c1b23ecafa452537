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
# Rounding floor, relative to max|ref|: two units in the last place of fp16 and bf16. float32 is held to fp32
# accuracy: 2^-16 (1.5e-5), three times the largest fp32 error measured on an H100 (2026-11-26: fa2 forward 5.0e-6,
# PyTorch eager's own backward 4.0e-6 at seqlen 4096; the interpreter's IEEE kernels 9e-7), yet 100x below what
# TF32 operands (10 mantissa bits) produce there (2.8e-3 to 4.6e-3): a kernel that silently computes fp32 in TF32
# fails. A tf32 point gets four TF32 units: Triton's TF32 dots measured 2-5x the error of PyTorch's TF32 matmuls
# on the same H100 run (cuBLAS rounds fp32 operands to TF32; Triton's conversion appears to truncate).
FLOOR = {torch.float16: 2 * 2.0**-10, torch.bfloat16: 2 * 2.0**-7, torch.float32: 2.0**-16}
TF32_FLOOR = 4 * 2.0**-10


def causal_mask(seqlen_q: int, seqlen_k: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bottom-right aligned causal mask: query i sees keys j <= i + seqlen_k - seqlen_q.

    Returns ``(masked, live)``: ``masked`` (seqlen_q, seqlen_k) is True where a score is set to -inf;
    ``live`` (seqlen_q, 1) is 1.0 for rows that see at least one key and 0.0 for those that see none (their
    output is zero), or None when every row sees a key.
    """
    rows = torch.arange(seqlen_q, device=device)[:, None]
    cols = torch.arange(seqlen_k, device=device)[None, :]
    allowed = cols <= rows + (seqlen_k - seqlen_q)
    if seqlen_q <= seqlen_k:
        return ~allowed, None
    live = allowed.any(dim=-1, keepdim=True)
    return ~(allowed | ~live), live.float()  # dead rows keep finite scores, then are zeroed


def variant_allowed(seqlen_q: int, seqlen_k: int, causal: bool, window: tuple[int, int] | None,
                    doc_ids: torch.Tensor | None, device) -> torch.Tensor:
    """Which (query, key) pairs a variant attends, from positions alone: (batch or 1, 1, seqlen_q, seqlen_k) bool.

    Query i sits at i' = i + seqlen_k - seqlen_q; causal keeps j <= i', a window (left, right) keeps
    i' - left <= j <= i' + right, documents (doc_ids (batch, seqlen), self-attention) keep j in i's document."""
    pos = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    cols = torch.arange(seqlen_k, device=device)[None, :]
    allowed = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if causal:
        allowed &= cols <= pos
    if window is not None:
        allowed &= (cols >= pos - window[0]) & (cols <= pos + window[1])
    allowed = allowed[None, None]
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    return allowed


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  sm_scale: float | None = None, upcast: bool = True, dtype: torch.dtype = torch.float64,
                  mask: tuple[torch.Tensor, torch.Tensor | None] | None = None, *,
                  window: tuple[int, int] | None = None, softcap: float | None = None,
                  alibi_slopes: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Standard attention, softmax(q kᵀ · scale) v, written plainly.

    Layout (batch, heads, seqlen, headdim); k, v may have fewer heads (GQA/MQA: query head h reads kv head
    h // group). Causal masking is aligned to the bottom-right corner (``causal_mask``; pass a precomputed
    one as ``mask``) and a row that sees no key outputs zeros. With ``upcast`` the computation runs in
    ``dtype`` (float64 by default); without it, in the inputs' own dtype with the softmax in float32, as a
    user's eager code would, and the result has q's dtype.

    Variants (fa2bench.core.variants; the kernels' keywords): ``softcap`` c turns a score s into c tanh(s / c),
    ``alibi_slopes`` (one per query head) subtract slope_h |i' - j|, then ``window`` and ``doc_ids`` mask
    (``variant_allowed``); a row that sees no key outputs zeros and passes back no gradient.
    """
    if window is not None or softcap is not None or alibi_slopes is not None or doc_ids is not None:
        return _variant_ref(q, k, v, causal, sm_scale, upcast, dtype, window, softcap, alibi_slopes, doc_ids)
    scores, v = _scores(q, k, v, sm_scale, upcast, dtype)
    live = None
    if causal:
        masked, live = mask if mask is not None else causal_mask(q.shape[-2], k.shape[-2], q.device)
        scores = scores.masked_fill(masked, float("-inf"))
    probs = torch.softmax(scores if upcast else scores.float(), dim=-1)
    if live is not None:
        probs = probs * live
    return torch.matmul(probs.to(v.dtype), v)


def _scores(q, k, v, sm_scale, upcast, dtype):
    """(S = q k^T * scale, v) with K/V repeated over each GQA group, in ``dtype`` when ``upcast``."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    if upcast:
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    return torch.matmul(q, k.transpose(-2, -1)) * scale, v


def _variant_ref(q, k, v, causal, sm_scale, upcast, dtype, window, softcap, alibi_slopes, doc_ids):
    scores, v = _scores(q, k, v, sm_scale, upcast, dtype)
    if not upcast:
        scores = scores.float()
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    seqlen_q, seqlen_k = q.shape[-2], k.shape[-2]
    if alibi_slopes is not None:
        pos = torch.arange(seqlen_q, device=q.device)[:, None] + (seqlen_k - seqlen_q)
        distance = (pos - torch.arange(seqlen_k, device=q.device)[None, :]).abs().to(scores.dtype)
        scores = scores - alibi_slopes.to(scores.dtype)[None, :, None, None] * distance
    allowed = variant_allowed(seqlen_q, seqlen_k, causal, window, doc_ids, q.device)
    live = allowed.any(dim=-1, keepdim=True)
    # dead rows keep finite scores (no NaN through softmax), then are zeroed: zero output, zero gradient
    probs = torch.softmax(scores.masked_fill(~allowed & live, float("-inf")), dim=-1) * live
    return torch.matmul(probs.to(v.dtype), v)


def rel_error(x: torch.Tensor, ref: torch.Tensor, scale: float | None = None) -> float:
    """max|x - ref| / scale (default max|ref|), in float64; inf if x has NaN or inf."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return math.inf
    scale = ref.abs().max().item() if scale is None else scale
    return (x - ref).abs().max().item() / max(scale, 1e-30)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    max_rel_error: float
    detail: str  # the failing tensors, or the one closest to its tolerance


def judge(outputs: dict[str, torch.Tensor], refs: dict[str, torch.Tensor],
          baselines: dict[str, torch.Tensor], dtype: torch.dtype, floor: float | None = None) -> Verdict:
    """Gate each named tensor: rel_error(out) <= FACTOR * rel_error(baseline) + floor (default FLOOR[dtype]).

    Errors are relative to max|ref| of the tensor; a reference that is exactly zero (dq and dk when each
    query sees a single key) is measured against the largest scale among the checked tensors instead.
    """
    scales = {name: ref.abs().max().item() for name, ref in refs.items()}
    fallback = max(scales.values(), default=1.0)
    worst_ratio, worst, failures, max_err = -1.0, "", [], 0.0
    for name, ref in refs.items():
        scale = scales[name] or fallback
        err = rel_error(outputs[name], ref, scale)
        tol = FACTOR * rel_error(baselines[name], ref, scale) + (FLOOR[dtype] if floor is None else floor)
        max_err = max(max_err, err)
        line = f"{name}: rel err {err:.2e} (tol {tol:.2e})"
        if not err <= tol:
            failures.append(line)
        if err / tol > worst_ratio:
            worst_ratio, worst = err / tol, line
    return Verdict(not failures, max_err, "; ".join(failures) if failures else worst)


def _sliced(kwargs: dict, q_part: tuple) -> dict:
    out = dict(kwargs)
    if "alibi_slopes" in out:
        out["alibi_slopes"] = out["alibi_slopes"][q_part[1]]
    if "doc_ids" in out:
        out["doc_ids"] = out["doc_ids"][q_part[0]]
    return out


# Score-matrix elements (batch * heads * seqlen_q * seqlen_k) above which only a slice is compared, and
# above which the reference runs in float32 rather than float64 (to bound its memory and time).
FULL_CHECK_LIMIT = 2**26


def check_attention(fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    backward: bool = True, ref_dtype: torch.dtype | None = None, tf32: bool = False,
                    variant_kwargs: dict | None = None) -> Verdict:
    """Run ``fn(q, k, v, causal)`` (and its backward with a random dO) and gate it against the reference.

    Inputs are used as given (the caller draws them fresh). The reference runs in ``ref_dtype`` on the same
    device, the baseline in the inputs' dtype. For large inputs ``fn`` still runs on everything, but only
    batch 0 and the query heads of the first key/value head are compared (heads and batches are independent,
    so the slice of the full result must equal the result of the slice). ``tf32``: float32 inputs whose
    matmuls may use TF32 (the floor is TF32's; the caller enables TF32 for the baseline too).
    ``variant_kwargs``: the variant's keywords (``variants.kernel_kwargs``) for the reference and the baseline,
    sliced with the inputs (alibi_slopes by query head, doc_ids by batch).
    """
    leaves = [t.detach().clone().requires_grad_(backward) for t in (q, k, v)]
    out = fn(*leaves, causal)
    do = torch.randn_like(out) if backward else None
    if backward:
        out.backward(do)
    batch, heads, seqlen_q, _ = q.shape
    kv_heads, seqlen_k = k.shape[1], k.shape[2]
    whole = (slice(None), slice(None))
    sliced = batch * heads * seqlen_q * seqlen_k > FULL_CHECK_LIMIT
    q_part = (slice(0, 1), slice(0, heads // kv_heads)) if sliced else whole
    kv_part = (slice(0, 1), slice(0, 1)) if sliced else whole
    outputs = {"o": out.detach()[q_part]}
    if backward:
        outputs.update(dq=leaves[0].grad[q_part], dk=leaves[1].grad[kv_part], dv=leaves[2].grad[kv_part])
    if ref_dtype is None:
        checked = q[q_part].shape[0] * q[q_part].shape[1] * seqlen_q * seqlen_k
        ref_dtype = torch.float64 if checked <= FULL_CHECK_LIMIT else torch.float32

    def run_ref(**kw):
        ins = [t[part].detach().clone().requires_grad_(backward)
               for t, part in ((q, q_part), (k, kv_part), (v, kv_part))]
        o = attention_ref(*ins, causal=causal, **kw, **_sliced(variant_kwargs or {}, q_part))
        res = {"o": o.detach()}
        if backward:
            o.backward(do[q_part].to(o.dtype))
            res.update(dq=ins[0].grad, dk=ins[1].grad, dv=ins[2].grad)
        return res

    refs = run_ref(upcast=True, dtype=ref_dtype)
    baselines = run_ref(upcast=False)
    return judge(outputs, refs, baselines, q.dtype, floor=TF32_FLOOR if tf32 else None)
