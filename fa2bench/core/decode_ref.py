"""The decode reference and its correctness gate, and the inputs of a decode point.

``decode_ref`` is written to share nothing with kernels/decode.py's index arithmetic: it gathers each
sequence's keys from its pages with a plain Python loop over the pages (``gather_kv``), then runs textbook
attention per sequence with an explicit bottom-right causal mask built from a comparison of positions, in
float64 by default. ``check_decode`` gates a provider's output against it as ``reference.judge`` does for
training shapes: at most ``FACTOR`` times the error of low-precision PyTorch on the same inputs, plus the
dtype's rounding floor.

``make_inputs`` builds a decode point's cache: a contiguous (batch, kv_len, kv_heads, head_dim) cache, or
pages (num_pages, page_size, kv_heads, head_dim) handed out to the sequences in random order, with one spare
page that no sequence references and ``-1`` in the table beyond each sequence's last page.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fa2bench.core.decode import kv_lengths
from fa2bench.core.presets import Shape
from fa2bench.core.reference import FLOOR, TF32_FLOOR, Verdict, judge


@dataclass
class DecodeInputs:
    q: torch.Tensor  # (batch, q_len, heads, head_dim)
    k_cache: torch.Tensor  # contiguous (batch, kv_len, kv_heads, d) or paged (num_pages, page_size, kv_heads, d)
    v_cache: torch.Tensor
    seqlens_k: torch.Tensor  # (batch,) int32
    block_table: torch.Tensor | None = None  # (batch, max_pages_per_seq) int32 when paged

    @property
    def paged(self) -> bool:
        return self.block_table is not None


def make_inputs(batch: int, heads: int, kv_heads: int, q_len: int, kv_len: int, headdim: int, page_size: int,
                ragged: bool, dtype: torch.dtype, device) -> DecodeInputs:
    """Fresh N(0, 1) q and cache for a decode point (``page_size`` 0: contiguous); lengths from ``kv_lengths``."""
    lengths = kv_lengths(batch, q_len, kv_len, ragged)
    q = torch.randn(batch, q_len, heads, headdim, dtype=dtype, device=device)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    if not page_size:
        k, v = (torch.randn(batch, kv_len, kv_heads, headdim, dtype=dtype, device=device) for _ in range(2))
        return DecodeInputs(q, k, v, seqlens)
    width = math.ceil(kv_len / page_size)
    counts = [math.ceil(n / page_size) for n in lengths]
    num_pages = sum(counts) + 1  # one spare page, referenced by no sequence
    order = torch.randperm(num_pages).tolist()
    table = torch.full((batch, width), -1, dtype=torch.int32)
    start = 0
    for b, count in enumerate(counts):
        table[b, :count] = torch.tensor(order[start:start + count], dtype=torch.int32)
        start += count
    k, v = (torch.randn(num_pages, page_size, kv_heads, headdim, dtype=dtype, device=device) for _ in range(2))
    return DecodeInputs(q, k, v, seqlens, table.to(device))


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor | None, b: int, length: int) -> torch.Tensor:
    """Sequence b's first ``length`` keys (or values), (length, kv_heads, d): page by page from the table."""
    if block_table is None:
        return cache[b, :length]
    page_size = cache.shape[1]
    pages = []
    for p in range(math.ceil(length / page_size)):
        pages.append(cache[int(block_table[b, p])])
    return torch.cat(pages)[:length]


def decode_ref(inputs: DecodeInputs, causal: bool = True, sm_scale: float | None = None, upcast: bool = True,
               dtype: torch.dtype = torch.float64, sequences: list[int] | None = None) -> torch.Tensor:
    """Attention of each sequence's queries over its keys, (len(sequences), q_len, heads, d); query i of q_len
    sees key j iff j <= kv_len - q_len + i (causal). ``upcast``: in ``dtype``; otherwise in the inputs' dtype
    with the softmax in float32 (the baseline that sets the tolerance). ``sequences``: which (default all)."""
    q = inputs.q
    batch, q_len, heads, headdim = q.shape
    scale = 1.0 / math.sqrt(headdim) if sm_scale is None else sm_scale
    kv_heads = inputs.k_cache.shape[2]
    chosen = list(range(batch)) if sequences is None else sequences
    outs = []
    for b in chosen:
        length = int(inputs.seqlens_k[b])
        k = gather_kv(inputs.k_cache, inputs.block_table, b, length)
        v = gather_kv(inputs.v_cache, inputs.block_table, b, length)
        qb = q[b].reshape(q_len, kv_heads, heads // kv_heads, headdim)  # head h = kv head h // group
        if upcast:
            qb, k, v = qb.to(dtype), k.to(dtype), v.to(dtype)
        scores = torch.einsum("ihgd,jhd->hgij", qb, k) * scale  # (kv_heads, group, q_len, length)
        if causal:
            query_pos = torch.arange(q_len, device=q.device)[:, None] + (length - q_len)
            key_pos = torch.arange(length, device=q.device)[None, :]
            scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
        probs = torch.softmax(scores if upcast else scores.float(), dim=-1).to(v.dtype)
        outs.append(torch.einsum("hgij,jhd->ihgd", probs, v).reshape(q_len, heads, headdim))
    return torch.stack(outs)


# Keys (summed over the checked sequences) times heads above which only the first and the last (longest)
# sequence are compared: the reference's float64 copies of them stay around a gigabyte.
FULL_CHECK_KEYS = 2**22


def check_decode(fn, inputs: DecodeInputs, causal: bool = True, tf32: bool = False) -> Verdict:
    """Run ``fn(inputs)`` once and gate its output against ``decode_ref`` (float64) with ``reference.judge``;
    large batches are judged on their first and last sequence (sequences are independent)."""
    out = fn(inputs).detach()
    batch, heads = inputs.q.shape[0], inputs.q.shape[2]
    keys = int(inputs.seqlens_k.sum()) * heads
    sequences = list(range(batch)) if keys <= FULL_CHECK_KEYS or batch <= 2 else [0, batch - 1]
    ref = decode_ref(inputs, causal, sequences=sequences)
    base = decode_ref(inputs, causal, upcast=False, sequences=sequences)
    floor = TF32_FLOOR if tf32 else FLOOR[inputs.q.dtype]
    return judge({"o": out[sequences]}, {"o": ref}, {"o": base}, inputs.q.dtype, floor=floor)


def decode_adapter(fn):
    """``fn(q, k, v)`` (batch, heads, seq, head_dim) as a decode ``fn(inputs)``: views of a contiguous cache
    (batch, kv_len, kv_heads, d) of uniform lengths, transposed without a copy; o back in (batch, q_len, heads, d)."""

    def call(inputs):
        o = fn(inputs.q.transpose(1, 2), inputs.k_cache.transpose(1, 2), inputs.v_cache.transpose(1, 2))
        return o.transpose(1, 2)

    return call


def attention_shape(shape: Shape) -> Shape:
    """The training-style shape a decode point asks an adapted provider for: one query needs no causal mask
    (bottom-right alignment lets it see every key), so q_len 1 is non-causal and SDPA's top-left is_causal,
    which differs from bottom-right only when q_len > 1, is never asked for it."""
    return Shape(shape.batch, shape.heads, shape.kv_heads, shape.seqlen_q, shape.seqlen_k, shape.headdim,
                 shape.causal and shape.seqlen_q > 1)
