"""How PyTorch's providers express an attention variant (fa2bench.core.variants): an explicit ``attn_mask`` for
SDPA, ``mask_mod`` and ``score_mod`` for FlexAttention. Both are built from bottom-right aligned positions
(query i at i + seqlen_k - seqlen_q), from the variant's kernel keywords (``variants.kernel_kwargs``), once, in
a provider's set-up; neither shares code with fa2's kernels or with the float64 reference's scores.
"""
from __future__ import annotations

from fa2bench.core.presets import Shape


def sdpa_mask(shape: Shape, extra: dict, device_name: str):
    """SDPA's ``attn_mask``: boolean (batch or 1, 1, sq, sk) for causal, window and documents; with ALiBi an
    additive float bias (-slope_h |i' - j|, -inf where masked) of (batch or 1, heads, sq, sk). Softcap has no
    mask form (the SDPA providers do not declare it)."""
    import torch

    allowed = _allowed(shape, extra.get("window"), extra.get("doc_ids"), device_name)
    if "alibi_slopes" not in extra:
        return allowed
    pos = torch.arange(shape.seqlen_q, device=allowed.device)[:, None] + (shape.seqlen_k - shape.seqlen_q)
    distance = (pos - torch.arange(shape.seqlen_k, device=allowed.device)[None, :]).abs().float()
    bias = -extra["alibi_slopes"][None, :, None, None] * distance
    return bias.masked_fill(~allowed, float("-inf"))


def _allowed(shape: Shape, window, doc_ids, device_name: str):
    """The pairs attended, as diagonal bands (tril/triu offsets from the bottom-right aligned diagonal) and blocks
    of ones per document (torch.block_diag), written apart from the reference's position comparisons so that the
    check of an SDPA point does not share its mask."""
    import torch

    offset = shape.seqlen_k - shape.seqlen_q
    allowed = torch.ones(shape.seqlen_q, shape.seqlen_k, dtype=torch.bool, device=device_name)
    if shape.causal:
        allowed = allowed.tril(offset)
    if window is not None:
        allowed = allowed.tril(offset + window[1]).triu(offset - window[0])
    allowed = allowed[None, None]
    if doc_ids is not None:
        blocks = [torch.block_diag(*(torch.ones(n, n, dtype=torch.bool, device=device_name)
                                     for n in torch.unique_consecutive(row, return_counts=True)[1].tolist()))
                  for row in doc_ids]
        allowed = allowed & torch.stack(blocks)[:, None]
    return allowed


def flex_mods(shape: Shape, extra: dict):
    """(mask_mod, score_mod) for FlexAttention: mask_mod keeps causal, window and document pairs (for the block
    mask); score_mod (None without softcap or ALiBi) applies softcap, then ALiBi, to the scaled score."""
    import torch

    offset = shape.seqlen_k - shape.seqlen_q
    window, softcap = extra.get("window"), extra.get("softcap")
    slopes, docs = extra.get("alibi_slopes"), extra.get("doc_ids")

    def mask_mod(b, h, q_idx, kv_idx):
        pos = q_idx + offset
        keep = kv_idx >= 0
        if shape.causal:
            keep = keep & (kv_idx <= pos)
        if window is not None:
            keep = keep & (kv_idx >= pos - window[0]) & (kv_idx <= pos + window[1])
        if docs is not None:
            keep = keep & (docs[b, q_idx] == docs[b, kv_idx])
        return keep

    if softcap is None and slopes is None:
        return mask_mod, None

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if slopes is not None:
            score = score - slopes[h] * (q_idx + offset - kv_idx).abs()
        return score

    return mask_mod, score_mod
