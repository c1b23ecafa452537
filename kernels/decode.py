"""FlashAttention-2 specialised for decoding: a few new queries per sequence against a long KV cache.

The algorithm is FA2's forward (kernels/flash2.py, Dao 2023, Algorithm 1): online softmax over K/V blocks in
the log2 domain (``qk_scale = sm_scale * log2(e)``, ``exp2``), an unscaled fp32 accumulator divided once at the
end, one log-sum-exp per row. What changes for decoding, where seqlen_q is 1-16 and FA2's parallelism over
query blocks has nothing to split:

1. **GQA packing.** The query heads of one KV group share K and V, so one program takes all of them: its tile
   has ``q_len * group`` rows (row r is query ``r // group`` of head ``kv_head * group + r % group``) and K/V
   are read once per group, not once per query head. Tiles of more than 128 rows (MQA with many heads) are
   split over extra programs (``m_tiles``).
2. **Split-KV (flash-decoding).** The grid is (splits, batch * kv_heads, m_tiles). Split s of a cache of ``n``
   K/V blocks per sequence (its capacity) takes the contiguous blocks ``[s * ceil(n / S), (s + 1) * ceil(n / S))``
   that the sequence's length reaches (a shorter sequence leaves its last splits empty); it writes its
   partial output, *normalised by its own row sum*, in fp32 and its log-sum-exp ``L_s`` (log2 domain; -inf for
   a split with no key). A second kernel (``_combine_kernel``, one program per output row) merges them:
   ``O = sum_s 2^(L_s - L) O_s`` with ``L = log2 sum_s 2^L_s``. With one split the first kernel writes O
   itself and no combine runs.
3. **Tiles and splits** (``plan``: ``choose_tile``, ``num_splits_heuristic``), from a measured study
   (results/h200-decode-tiles): 128-key blocks, 3 stages, one program per SM when the cache gives every SM a
   block, else 64-key blocks, 2 stages, two per SM (32-key blocks, 3 stages for a short cache with two programs
   per SM or more); then as many splits as keep the grid within one wave of
   resident programs, ``splits = (per_sm * sm_count) // (batch * kv_heads * m_tiles)``, at least one block
   each (n_blocks from the cache's capacity, not the lengths, so no host sync), at most 128, 1 when the grid
   already fills a wave. A second wave of splits costs more than it hides: at batch 1 and 16k keys, 16 splits
   ran in 23 us and 32 in 29 us. ``num_splits=`` forces a count and ``tiles=`` a tiling (the studies use them).
   A paged cache gets the contiguous cache's tiles.
4. **Ragged and paged caches.** Each sequence has its own length (``seqlens_k``, int32); blocks past it are
   never visited. The cache is either contiguous, (batch, kv_len, kv_heads, head_dim), or paged,
   (num_pages, page_size, kv_heads, head_dim) with a ``block_table`` (batch, max_pages_per_seq) int32: page
   ``p`` of sequence ``b`` holds its keys ``[p * page_size, (p + 1) * page_size)``. Both layouts index a key by
   (page or batch, row, kv head): the constexpr ``PAGED`` switch only changes where a key row is. A block inside
   one page (``BLOCK_N <= page_size``) reads one table entry, its rows offset from that page's start as a
   contiguous cache's from its sequence's; a block spanning pages reads one entry per key row. Page sizes:
   powers of two from 16 to 256.
   The table is read a block ahead: each step loads the next block's page ids while its own K/V come in, and a
   split's first ids load beside its sequence's length. So no K/V address waits on a table load of its own
   step, and Triton's pipeliner buffers paged K/V blocks as deeply as contiguous ones at the same
   ``num_stages`` (tools/decode_ttgir.py; before, a table load in the K/V loads' own step took a share of the
   pipeline's stages and the paged launch asked for ``2 * stages - 1``).
5. **K/V as TMA boxes** (``tma``; the default, TMA_DEFAULT, is what its study's rule keeps; where it can be: a
   power-of-two head dim, caches contiguous in memory). A block is one (BLOCK_N, head_dim) box of the cache viewed as
   (rows, kv_heads * head_dim), at its sequence's row (contiguous) or its page's (paged), loaded by the Hopper
   tensor-memory accelerator through Triton's descriptor loads and pipelined on mbarriers, instead of 16 bytes a
   thread through ``cp.async``. A box reads whole blocks, rows past a sequence's length too: V's are zeroed before PV
   (K's are masked out of the scores). A box never spans pages, so with TMA a page of 64 keys or more caps the block
   (``plan``); smaller pages, and blocks that span pages, keep pointer loads. Nsight Compute put the loss against
   cuDNN at equal grids and bytes in how the loads are issued (docs/performance.md).
6. **Causal, bottom-right.** Query i of q_len sees keys ``j <= seqlen - q_len + i``; keys
   ``< seqlen - q_len + 1`` are seen by every row and run without a mask, the rest (the last block or two) run
   masked, as in FA2's two-stage loop. ``causal=False`` lets every query see the whole sequence.

q and the output are (batch, q_len, heads, head_dim), the cache's token-major layout (FlashInfer's and
vLLM's); any strides. fp16, bf16, fp32 (IEEE dot products unless ``tf32``). Not supported: backward, softcap,
windows, FP8 caches, page sizes that are not powers of two. Written for Triton 3.6 and newer (sm_90).
"""
from __future__ import annotations

from typing import NamedTuple

from ._common import LOG2E, MAX_HEADDIM, check_scale, dot_precision, interpreting  # first: the interpreter
from .configs import SMEM_BUDGET, block_d

import torch  # noqa: E402,I001
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

PAGE_SIZES = (16, 32, 64, 128, 256)
MAX_SPLITS = 128
MAX_TILE_ROWS = 128  # q_len * group rows per program at most; more go to extra programs
TMA_DEFAULT = True  # K/V blocks as TMA boxes where they can be (decode_attention's ``tma``), by the rule of its
# one-process A/B (docs/performance.md, "K/V through TMA boxes")
INTERPRETER_SMS = 8  # the SM count the heuristic assumes on the CPU interpreter (so its split path runs in tests)


# ----------------------------------------------------------------------------------------------------------------
# The split kernel: one (split, batch, kv head, row tile) per program
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _page_ids(table_row, start, offs_n, CAPACITY, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """The page of the block at ``start`` (int64; 0 past the table's capacity): one id when the block lies inside
    one page (``BLOCK_N <= PAGE_SIZE``), else one per key row."""
    if BLOCK_N <= PAGE_SIZE:
        ids = tl.load(table_row + start // PAGE_SIZE, mask=start < CAPACITY, other=0)
    else:
        cols = start + offs_n
        ids = tl.load(table_row + cols // PAGE_SIZE, mask=cols < CAPACITY, other=0)
    return ids.to(tl.int64)


@triton.jit
def _paged_offsets(pages, cols, offs_d, stride_b, stride_n, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Offsets of the block's key rows ``cols`` in a paged cache, from ``_page_ids``'s ids."""
    in_page = (cols % PAGE_SIZE).to(tl.int64)[:, None] * stride_n + offs_d[None, :]
    if BLOCK_N <= PAGE_SIZE:
        offsets = pages * stride_b + in_page
    else:
        offsets = pages[:, None] * stride_b + in_page
    return offsets


@triton.jit
def _decode_inner(acc, l_i, m_i, pages, q, K, V, KD, VD, table_row, lo, hi, limit, seqlen, off_b, off_hkv, offs_n,
                  offs_d, qk_scale, stride_kb, stride_kn, stride_vb, stride_vn, CAPACITY,
                  PAGE_SIZE: tl.constexpr, PAGED: tl.constexpr, TMA: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online softmax over the K/V blocks [lo, hi) of one sequence. MASK=False: every row sees every key here.
    MASK=True: row r sees key j iff j <= limit[r] (limit < seqlen: the ragged end and the causal band).
    PAGED: ``pages`` holds the page ids of block ``lo``'s key rows; each step loads the next block's while this
    one's K/V come in, and the ids of block ``hi`` are returned (unused otherwise)."""
    d_ok = offs_d[None, :] < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        # TMA: the block is one box of the cache viewed as (pages or batch * rows, kv_heads * head_dim), at ``row``
        if PAGED:  # the block's page (or each row's, where it spans pages), read from the table a block ahead
            if TMA:  # BLOCK_N <= PAGE_SIZE: one page
                row = (pages * PAGE_SIZE + start_n % PAGE_SIZE).to(tl.int32)
            else:
                k_off = _paged_offsets(pages, cols, offs_d, stride_kb, stride_kn, PAGE_SIZE, BLOCK_N)
                v_off = _paged_offsets(pages, cols, offs_d, stride_vb, stride_vn, PAGE_SIZE, BLOCK_N)
            pages = _page_ids(table_row, start_n + BLOCK_N, offs_n, CAPACITY, PAGE_SIZE, BLOCK_N)
        elif TMA:
            row = (off_b * CAPACITY + start_n).to(tl.int32)
        else:
            k_off = off_b * stride_kb + cols.to(tl.int64)[:, None] * stride_kn + offs_d[None, :]
            v_off = off_b * stride_vb + cols.to(tl.int64)[:, None] * stride_vn + offs_d[None, :]
        if MASK:
            live = (cols[:, None] < seqlen) & d_ok
        else:
            live = d_ok
        if TMA:
            k = KD.load([row, off_hkv * HEAD_DIM])
        else:
            k = tl.load(K + k_off, mask=live, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASK:
            qk = tl.where(cols[None, :] <= limit[:, None], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        if MASK:  # a row that has seen no key yet keeps m = -inf: shift it by 0 so exp2 gives 0, not NaN
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            shift = m_new
        p = tl.math.exp2(qk - shift[:, None])
        alpha = tl.math.exp2(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        if TMA:
            v = VD.load([row, off_hkv * HEAD_DIM])
            if MASK:  # a box reads past the length: those rows must not reach the sum (p is 0, the row may be NaN)
                v = tl.where(cols[:, None] < seqlen, v, 0.0)
        else:
            v = tl.load(V + v_off, mask=live, other=0.0)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i, pages


@triton.jit
def _decode_kernel(Q, K, V, KD, VD, Out, OPart, LsePart, SeqlensK, BlockTable, qk_scale,
                   stride_qb, stride_qm, stride_qh, stride_kb, stride_kn, stride_kh, stride_vb, stride_vn, stride_vh,
                   stride_ob, stride_om, stride_oh, stride_tb,
                   BATCH, HEADS, KV_HEADS, Q_LEN, NUM_SPLITS, CAPACITY,
                   GROUP: tl.constexpr, CAUSAL: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
                   SPLIT: tl.constexpr, TMA: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    split = tl.program_id(0)
    off_b = tl.program_id(1) // KV_HEADS
    off_hkv = tl.program_id(1) % KV_HEADS
    offs_r = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # packed rows: (query, head in the group)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_idx = offs_r // GROUP
    head = off_hkv * GROUP + offs_r % GROUP
    row_ok = offs_r < Q_LEN * GROUP
    # split s takes the blocks [s * per_split, (s + 1) * per_split) of the cache's capacity, cut at the sequence's
    # length (empty past it): where a split starts does not wait for the length, so a paged cache's first page ids
    # load beside it
    per_split = tl.cdiv(tl.cdiv(CAPACITY, BLOCK_N), NUM_SPLITS)
    if PAGED:
        table_row = BlockTable + off_b.to(tl.int64) * stride_tb
        pages = _page_ids(table_row, split * per_split * BLOCK_N, offs_n, CAPACITY, PAGE_SIZE, BLOCK_N)
    else:
        table_row = BlockTable
        pages = offs_n.to(tl.int64)  # unused
    seqlen = tl.load(SeqlensK + off_b)
    off_b = off_b.to(tl.int64)
    n_blocks = tl.cdiv(seqlen, BLOCK_N)
    lo = tl.minimum(split * per_split, n_blocks) * BLOCK_N
    hi = tl.minimum((split + 1) * per_split, n_blocks) * BLOCK_N
    # keys every row sees (no mask) end at full_end; row r sees keys <= limit[r]
    if CAUSAL:
        limit = seqlen - Q_LEN + q_idx
        full_end = (seqlen - Q_LEN + 1) // BLOCK_N * BLOCK_N
    else:
        limit = tl.zeros([BLOCK_M], dtype=tl.int32) + seqlen - 1
        full_end = seqlen // BLOCK_N * BLOCK_N
    limit = tl.minimum(limit, seqlen - 1)
    mid = tl.minimum(tl.maximum(full_end, lo), hi)

    d_ok = offs_d[None, :] < HEAD_DIM
    q_off = off_b * stride_qb + q_idx[:, None] * stride_qm + head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(Q + q_off, mask=row_ok[:, None] & d_ok, other=0.0)  # q stays on chip throughout
    K += off_hkv * stride_kh
    V += off_hkv * stride_vh

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, l_i, m_i, pages = _decode_inner(acc, l_i, m_i, pages, q, K, V, KD, VD, table_row, lo, mid, limit, seqlen,
                                         off_b, off_hkv, offs_n, offs_d, qk_scale, stride_kb, stride_kn, stride_vb,
                                         stride_vn, CAPACITY, PAGE_SIZE, PAGED, TMA, HEAD_DIM, BLOCK_D, BLOCK_N, False,
                                         DOT_PRECISION)
    acc, l_i, m_i, pages = _decode_inner(acc, l_i, m_i, pages, q, K, V, KD, VD, table_row, mid, hi, limit, seqlen,
                                         off_b, off_hkv, offs_n, offs_d, qk_scale, stride_kb, stride_kn, stride_vb,
                                         stride_vn, CAPACITY, PAGE_SIZE, PAGED, TMA, HEAD_DIM, BLOCK_D, BLOCK_N, True,
                                         DOT_PRECISION)
    seen = l_i > 0.0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    mask = row_ok[:, None] & d_ok
    if SPLIT:  # partial O (normalised by its own sum) and its log-sum-exp, fp32, (splits, batch, q_len, heads)
        row = ((split * BATCH + off_b) * Q_LEN + q_idx).to(tl.int64) * HEADS + head
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(LsePart + row, lse, mask=row_ok)
        tl.store(OPart + row[:, None] * HEAD_DIM + offs_d[None, :], o, mask=mask)
    else:
        o_off = off_b * stride_ob + q_idx[:, None] * stride_om + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(Out + o_off, o.to(Out.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# The combine kernel: merge the splits of one output row by their log-sum-exps
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _combine_kernel(OPart, LsePart, Out, stride_ob, stride_om, stride_oh, ROWS, HEADS, Q_LEN, NUM_SPLITS,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    row = tl.program_id(0)  # (batch, query, head), flattened
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    lse = tl.load(LsePart + offs_s.to(tl.int64) * ROWS + row, mask=offs_s < NUM_SPLITS, other=float("-inf"))
    lse_max = tl.max(lse, 0)  # finite: every row sees at least one key in some split
    w = tl.math.exp2(lse - lse_max)
    w = w / tl.sum(w, 0)
    parts = tl.load(OPart + (offs_s.to(tl.int64)[:, None] * ROWS + row) * HEAD_DIM + offs_d[None, :],
                    mask=(offs_s[:, None] < NUM_SPLITS) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    o = tl.sum(parts * w[:, None], 0)
    off_b = row // (Q_LEN * HEADS)
    off_m = row // HEADS % Q_LEN
    off_h = row % HEADS
    tl.store(Out + off_b.to(tl.int64) * stride_ob + off_m * stride_om + off_h * stride_oh + offs_d,
             o.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)


# ----------------------------------------------------------------------------------------------------------------
# Host side: checks, the heuristic, launches
# ----------------------------------------------------------------------------------------------------------------
_last_config = ""


def last_config() -> str:
    """Tiles, warps, stages and splits of the latest launch (the results row's ``config``)."""
    return _last_config


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (INTERPRETER_SMS on the CPU interpreter)."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_tile(programs: int, capacity: int, elt: int, block_d: int, sms: int) -> tuple[int, int]:
    """(BLOCK_N, stages) for a decode launch of ``programs`` (batch * kv_heads * m_tiles) over ``capacity`` keys;
    ``stages`` is the depth of the K/V software pipeline, Triton's ``num_stages`` (at BLOCK_M 16, Triton keeps
    ``stages - 1`` K and V buffers), the same on either layout.

    Measured on an H200 (bf16, d128, one query; docs/performance.md, "Decode: tiles and splits"):
    - 128-key blocks with 3 stages (one program per SM, two 64 KiB K/V buffers) stream fastest once every SM
      gets at least one block (results/h200-decode-tiles); when the cache is too short for that, 64-key blocks
      with 2 stages (two programs per SM) give the splits more blocks to share. fp32 keeps 32-key blocks.
    - A short cache (at most 8 blocks of 128 keys) with at most half as many programs as SMs: 64-key blocks,
      2 stages, split; where the programs come to about one per SM (more than half the SMs, fewer than twice
      them), 128/3 with no split is fastest. 1k keys (results/h200-decode-tiles-1k): batch 64, 65 us against 73 us
      for 128/3; batch 4 (32 programs, 8 splits), 11.3 us against 12.0 us for 128/3 with 4 splits; batch 16
      (128 programs), 128/3 20.9 us, every 64-key tiling 21.1 us or more.
    - Splits of at most two 128-key blocks (batch 1 at 4k keys: 16 splits of 32 blocks): 64-key blocks, 3
      stages, at the same split count (one program per SM). On an H100 (results/h100-decode-tiles-short and
      -paged64) 12.5-12.7 us contiguous and 13.2-13.4 us paged against 13.3 and 15.3 us for 128/3; 32 splits of
      64-key blocks 14.3 us paged.
    - A short cache with at least two programs per SM: 32-key blocks, 3 stages (four programs resident per SM).
      At batch 64 with 64 query heads (results/h200-decode-tiles-64h) 32/4/3 takes 67.2 us against 78.7 us for
      64/4/2; with 32 heads (h200-decode-tiles-1k) 66.1 against 65.3 at batch 64 and 247.2 against 248.2 at 256:
      the one tiling within 1.2% of the best at all three shapes.
    - A paged cache takes the same tiles (with TMA, ``plan`` caps the block at a page of 64 keys or more): a
      block larger than a page reads several through pointer loads (each key row finds its own), and with the
      K/V loads buffered as deeply as the contiguous path's nothing in the tiling depends on the page. Earlier,
      page-capped blocks cost 1.02-1.26x the contiguous time and 128-key blocks at too few stages 1.4-1.6x at
      small batches (results/h200-decode-v2, -v3): those paged launches had one K/V buffer, not two.
    The stages shrink to fit the shared-memory budget (head dim 256: 64-key blocks, 2 stages)."""
    blocks = triton.cdiv(capacity, 128)  # 128-key blocks per sequence
    if elt >= 4:
        block_n, stages = 32, 3
    elif programs * blocks < sms:
        block_n, stages = 64, 2
    elif capacity <= 8 * 128 and programs >= 2 * sms:
        block_n, stages = 32, 3
    elif capacity <= 8 * 128 and programs <= sms // 2:
        block_n, stages = 64, 2
    elif block_d <= 128 and 1 < (splits := num_splits_heuristic(programs, blocks, sms)) and blocks <= 2 * splits:
        block_n, stages = 64, 3  # splits of at most two 128-key blocks: four of 64, one program per SM
    else:
        block_n, stages = 128, 3
    while stages * 2 * block_n * block_d * elt > SMEM_BUDGET:  # fewer stages down to 2, then smaller blocks
        if stages > 2 or block_n <= 16:
            stages -= 1
        else:
            block_n //= 2
    return block_n, stages


def num_splits_heuristic(programs: int, n_blocks: int, sms: int, per_sm: int = 1) -> int:
    """Splits per sequence: as many as keep every program in the first wave (``per_sm`` resident programs per
    SM: 1 for 128-key tiles and 64-key ones at 3 stages, 2 for the other smaller ones), at least one K/V block
    each, at most MAX_SPLITS; 1 when ``programs`` (batch * kv_heads * m_tiles) already fill a wave."""
    return max(1, min(per_sm * sms // programs, n_blocks, MAX_SPLITS))


class Plan(NamedTuple):
    """One decode launch: the row tile and how many there are per KV group, the key block, the pipeline stages,
    the warps and the splits per sequence."""
    block_m: int
    m_tiles: int
    block_n: int
    stages: int
    warps: int
    splits: int
    tma: bool = False  # K/V blocks as TMA boxes (each inside one page where the cache is paged)


def plan(batch: int, q_len: int, heads: int, kv_heads: int, headdim: int, capacity: int, elt: int, sms: int,
         num_splits: int | None = None, tiles: tuple[int, int, int] | None = None, page: int = 0,
         tma: bool = False) -> Plan:
    """The launch ``decode_attention`` makes for a cache of ``capacity`` keys per sequence (contiguous, or paged
    in pages of ``page`` keys) of ``elt``-byte elements on ``sms`` SMs; the split study asks it the same question.

    GQA-packed rows in tiles of at most MAX_TILE_ROWS, ``choose_tile``'s key block and stages, and
    ``num_splits_heuristic``'s count with one resident program per SM for 128-key blocks and for 64-key blocks at
    3 stages, two for the other smaller ones.
    A paged cache takes the contiguous cache's tiles, except that where its K/V blocks are read as TMA boxes
    (``tma``: the caller has checked that the cache can be) a block never spans pages of 64 keys or more: such
    pages cap it (a box is one page's rows). The plan reads through TMA where every block lies inside one page.
    ``tiles`` = (BLOCK_N, warps, stages) overrides the tiling (a block larger than a page spans several: the
    kernel finds each key row's page, through pointer loads), ``num_splits`` the count. ``stages`` counts the K/V
    pipeline's stages (the launch's ``num_stages``)."""
    rows = q_len * (heads // kv_heads)
    block_m = min(MAX_TILE_ROWS, max(16, triton.next_power_of_2(rows)))
    m_tiles = triton.cdiv(rows, block_m)
    programs = batch * kv_heads * m_tiles
    block_n, stages = choose_tile(programs, capacity, elt, block_d(headdim), sms)
    warps = 4 if block_m <= 64 else 8  # a 128-row tile keeps a 128 x d fp32 accumulator
    if tma and page >= 64:
        block_n = min(block_n, page)
    if tiles:
        block_n = tiles[0]
        warps, stages = tiles[1], tiles[2]
    per_sm = 1 if block_n >= 128 or (block_n, stages) == (64, 3) else 2
    splits = int(num_splits) if num_splits is not None else num_splits_heuristic(
        programs, triton.cdiv(capacity, block_n), sms, per_sm=per_sm)
    return Plan(block_m, m_tiles, block_n, stages, warps, splits, tma and (not page or block_n <= page))


def _check(q, k_cache, v_cache, seqlens_k, block_table, causal, num_splits):
    """Shapes, dtypes and devices (no host sync): ValueError with one line naming the problem."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype) or q.dtype not in (torch.float16, torch.bfloat16,
                                                                         torch.float32):
        raise ValueError(f"q, k_cache, v_cache must share one of float16, bfloat16, float32; got "
                         f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"inputs are on {q.device}; the decode kernel needs a CUDA device (or TRITON_INTERPRET=1)")
    if tuple(k_cache.shape) != tuple(v_cache.shape):
        raise ValueError(f"k_cache and v_cache must have one shape, got {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    batch, q_len, heads, headdim = q.shape
    _, page, kv_heads, kd = k_cache.shape
    if kd != headdim or not 1 <= headdim <= MAX_HEADDIM:
        raise ValueError(f"head dims must match and lie in 1..{MAX_HEADDIM}: q has {headdim}, the cache {kd}")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of the cache's kv heads ({kv_heads})")
    if not 1 <= q_len <= 16:
        raise ValueError(f"decode takes 1..16 queries per sequence, got q_len {q_len}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("q, k_cache and v_cache need a contiguous last (head) dim")
    if num_splits is not None and not 1 <= int(num_splits) <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in 1..{MAX_SPLITS}, got {num_splits}")
    if seqlens_k is not None and (seqlens_k.dtype != torch.int32 or tuple(seqlens_k.shape) != (batch,)):
        raise ValueError(f"seqlens_k must be int32 of shape ({batch},), got {seqlens_k.dtype} "
                         f"{tuple(seqlens_k.shape)}")
    if block_table is None:
        if k_cache.shape[0] != batch:
            raise ValueError(f"a contiguous cache needs batch {batch} first, got {tuple(k_cache.shape)}")
        return
    if seqlens_k is None:
        raise ValueError("a paged cache (block_table given) needs seqlens_k")
    if page not in PAGE_SIZES:
        raise ValueError(f"page size {page} cannot be tiled; supported: {', '.join(map(str, PAGE_SIZES))}")
    if block_table.dtype != torch.int32 or block_table.dim() != 2 or block_table.shape[0] != batch:
        raise ValueError(f"block_table must be int32 of shape ({batch}, max_pages_per_seq), got "
                         f"{block_table.dtype} {tuple(block_table.shape)}")


def _check_values(q, k_cache, seqlens_k, block_table, causal):
    """What depends on the values (one host sync): lengths within the cache and pages inside it."""
    q_len = q.shape[1]
    lens = seqlens_k.cpu()
    capacity = k_cache.shape[1] * (block_table.shape[1] if block_table is not None else 1)
    if int(lens.max()) > capacity:
        raise ValueError(f"seqlens_k up to {int(lens.max())} exceed the cache's capacity of {capacity} per sequence")
    low = q_len if causal else 1
    if int(lens.min()) < low:
        raise ValueError(f"seqlens_k down to {int(lens.min())}: causal decoding of {q_len} queries needs "
                         f"kv length >= q_len" if causal else f"seqlens_k must be >= 1, got {int(lens.min())}")
    if block_table is not None:
        pages = (lens + k_cache.shape[1] - 1) // k_cache.shape[1]
        table = block_table.cpu()
        used = torch.arange(table.shape[1])[None, :] < pages[:, None]
        bad = used & ((table < 0) | (table >= k_cache.shape[0]))
        if bool(bad.any()):
            b, p = (int(x) for x in bad.nonzero()[0])
            raise ValueError(f"block_table[{b}, {p}] = {int(table[b, p])} is outside the cache's "
                             f"{k_cache.shape[0]} pages")


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     seqlens_k: torch.Tensor | None = None, block_table: torch.Tensor | None = None, *,
                     causal: bool = True, sm_scale: float | None = None, num_splits: int | None = None,
                     tf32: bool = False, validate: bool = True, tiles: tuple[int, int, int] | None = None,
                     tma: bool | None = None) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v for decoding, split over the keys; returns (batch, q_len, heads, head_dim).

    q: (batch, q_len <= 16, heads, head_dim). Contiguous cache (block_table None): k_cache, v_cache
    (batch, kv_len, kv_heads, head_dim), seqlens_k (batch,) int32 or None for kv_len everywhere. Paged cache:
    (num_pages, page_size, kv_heads, head_dim) with block_table (batch, max_pages_per_seq) int32 and
    seqlens_k. Causal masking is aligned bottom-right. ``num_splits`` forces the split count (default: the
    heuristic). ``validate`` checks lengths and table entries against the cache (one host sync; a caller that
    built them itself, or a CUDA-graph capture, passes False). ``tiles`` = (BLOCK_N, warps, stages) overrides
    the kernel's tiling (a study of the choice: fa2bench.profiling.decode_splits); a block larger than a page
    spans several, and ``stages`` counts K/V pipeline stages on either layout. ``tma`` (default TMA_DEFAULT)
    reads each K/V block as one TMA box where it can: head_dim a power of two, caches contiguous in memory, a
    block inside one page; elsewhere pointer loads.
    """
    _check(q, k_cache, v_cache, seqlens_k, block_table, causal, num_splits)
    batch, q_len, heads, headdim = q.shape
    kv_heads = k_cache.shape[2]
    group = heads // kv_heads
    paged = block_table is not None
    if seqlens_k is None:
        seqlens_k = torch.full((batch,), k_cache.shape[1], dtype=torch.int32, device=q.device)
    if validate:
        _check_values(q, k_cache, seqlens_k, block_table, bool(causal))
    scale = check_scale(headdim, sm_scale)
    precision = dot_precision(q.dtype, tf32)
    page = k_cache.shape[1] if paged else 0
    capacity = k_cache.shape[1] * (block_table.shape[1] if paged else 1)
    BLOCK_D = block_d(headdim)
    tma = ((TMA_DEFAULT if tma is None else bool(tma)) and headdim == BLOCK_D and k_cache.is_contiguous()
           and v_cache.is_contiguous())
    block_m, m_tiles, block_n, stages, warps, splits, tma = plan(
        batch, q_len, heads, kv_heads, headdim, capacity, q.element_size(), sm_count(q.device), num_splits, tiles,
        page, tma)
    out = torch.empty_like(q)
    f32 = dict(device=q.device, dtype=torch.float32)
    o_part = torch.empty((splits, batch, q_len, heads, headdim) if splits > 1 else (1,), **f32)
    lse_part = torch.empty((splits, batch, q_len, heads) if splits > 1 else (1,), **f32)
    table = block_table if paged else seqlens_k  # unread when not PAGED
    kd, vd = k_cache, v_cache  # unread unless TMA
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        kd, vd = (TensorDescriptor.from_tensor(c.view(-1, kv_heads * headdim), [block_n, BLOCK_D])
                  for c in (k_cache, v_cache))
    _decode_kernel[(splits, batch * kv_heads, m_tiles)](
        q, k_cache, v_cache, kd, vd, out, o_part, lse_part, seqlens_k, table, scale * 1.4426950408889634,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1), out.stride(2),
        table.stride(0), batch, heads, kv_heads, q_len, splits, capacity,
        GROUP=group, CAUSAL=bool(causal), PAGED=paged, PAGE_SIZE=page or 1,
        SPLIT=splits > 1, TMA=tma, HEAD_DIM=headdim, BLOCK_D=BLOCK_D, BLOCK_M=block_m, BLOCK_N=block_n,
        DOT_PRECISION=precision, num_warps=warps, num_stages=stages)
    if splits > 1:
        _combine_kernel[(batch * q_len * heads,)](
            o_part, lse_part, out, out.stride(0), out.stride(1), out.stride(2), batch * q_len * heads, heads, q_len,
            splits, HEAD_DIM=headdim, BLOCK_D=BLOCK_D, BLOCK_S=max(2, triton.next_power_of_2(splits)), num_warps=4)
    global _last_config
    _last_config = (f"decode: BLOCK_M={block_m} BLOCK_N={block_n} w{warps} s{stages} splits={splits}"
                    f"{' tma' if tma else ''}"
                    f"{f' page={page}' if paged else ''}")
    return out
