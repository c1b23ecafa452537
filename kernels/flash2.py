"""FlashAttention-2 in Triton: forward and backward, causal, GQA/MQA, any strides, head dim 1..256.

Implements Algorithms 1 (forward) and 2 (backward) of Tri Dao, "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning" (2023).

Forward (Algorithm 1). The grid is (Q blocks of seqlen_q) x (batch * heads): sequence parallelism, so long
sequences fill the GPU even at batch 1. A program loads its block of Q once (it stays on chip), loops over
the blocks of K and V and keeps the running row max ``m_i``, the running row sum ``l_i`` and an *unscaled*
fp32 accumulator ``acc``. For each block it rescales ``acc`` and ``l_i`` by ``exp2(m_old - m_new)`` and adds
``P @ V``; the division by ``l_i`` is deferred to one division at the end. Scores use ``exp2`` with
``qk_scale = sm_scale * log2(e)`` folded in. Only the log-sum-exp is stored, one fp32 per row, shape
(batch, heads, seqlen_q), in the **log2 domain**: ``L = m_i + log2(l_i) = log2(sum_j exp2(qk_scale * q.k_j))``
(the natural-log LSE times log2(e)), so that backward recomputes ``P = exp2(qk_scale * q.k - L)``.

Causal masking is aligned to the bottom-right corner (query i sees keys j <= i + seqlen_k - seqlen_q). Each
loop is split in two stages: the K/V blocks every row of the Q block sees in full run without any mask, then
the few blocks crossing the diagonal (and the ragged last block of K) run masked; blocks entirely above the
diagonal are never visited (the loop bound stops early). Causal Q blocks are scheduled longest first. A row
that sees no key (seqlen_q > seqlen_k) outputs 0 and stores L = +inf, so backward's ``exp2(s - L)`` is exactly
0 for it: zero gradients, no NaN (the running max starts at a finite -1e30, never -inf - -inf).

Backward (Algorithm 2), three kernels, none with atomics:
1. ``bwd_preprocess``: ``Delta = rowsum(dO * O)`` in fp32.
2. ``bwd_dkdv``: grid (K/V blocks) x (batch * kv_heads). A program keeps its K and V block on chip, loops over
   the query heads of its GQA group and, for each, over the Q blocks that can see this K/V block (those fully
   masked by causal are skipped; the diagonal band and the ragged last Q block run masked), recomputes P from
   Q, K and L, and accumulates dK and dV in fp32 on chip; both are written once.
3. ``bwd_dq``: grid (Q blocks) x (batch * heads), loops over the K/V blocks a Q block sees and accumulates dQ on
   chip, written once. dQ uses this second kernel rather than atomic adds from the dK/dV kernel (the paper's
   Algorithm 2 adds dQ_i to HBM with atomics) for determinism: repeated runs are bit-equal, and there is no
   fp32 dQ scratch buffer to zero and convert afterwards. The cost is recomputing Q K^T and dP = dO V^T a
   second time. Adding dQ from the dK/dV kernel instead (fp32 atomics, or TMA reductions) measured no faster on
   an H100 and was removed (docs/performance.md keeps the numbers). The dQ kernel waits for Delta only, so it runs
   on a second stream beside the dK/dV kernel (``dq_beside_dkdv``; ``FA2_BWD_STREAMS=0`` runs them in turn).

How it differs from its neighbour, ``kernels/flash1.py`` (FlashAttention-1 style, Dao et al. 2022): FA1 keeps
the output normalised inside the loop (rescaling O by l_old / l_new every block) and stores both l and m;
it loops over K/V blocks in the outer loop and Q blocks in the inner loop, re-reading and re-writing O in HBM;
and it is parallel over batch * heads only. FA2 swaps the loops (Q outer, K/V inner), keeps O on chip
unnormalised until the end, stores one log-sum-exp per row, and also parallelises over the sequence.

Everything is accumulated in fp32; P and dS are cast to the input dtype for the tensor-core matmuls. Head dims
that are not powers of two are padded to ``BLOCK_D = max(16, next_power_of_2(headdim))`` with masks on d.
Forward and both backward kernels are autotuned per head dim (keys: head dim, causal, dtype and the power-of-
two bucket of each sequence length; sequence lengths stay runtime ints, so no recompiles per length).

The ablation ladder's rungs 3-6 (kernels/ladder.py) are these kernels with compile-time switches turned off:
``DEFER`` (off: the accumulator stays normalised, rescaled by l_old / l_new every block as FA1 does, and m and l
are stored separately, backward recomputing P = exp2(s - m) / l), ``SEQ_PAR`` (off: one program per (batch, head)
walks its Q blocks, and per (batch, kv head) its K/V blocks in the backward) and ``SKIP`` (off: every block is
visited and masked under causal masking, no unmasked fast path). FA2 runs with all three on. Tile I/O with 64-bit
row offsets, the Delta kernel and the config machinery are shared with the other kernels (kernels/_common.py).
fp32 inputs run IEEE fp32 dot products unless ``tf32=True``; ``sm_scale`` must be finite and positive.

Variants (issue 18), compile-time switches of the same three kernels, forward and backward; all off, each kernel's
instructions are the dense/causal kernel's (only three unused scalar parameters are added):
- ``WINDOW``: sliding window ``(left, right)``, query i (aligned i' = i + seqlen_k - seqlen_q) sees keys
  [i' - left, i' + right]. ``DOCS``: document masking for self-attention; a host pre-pass turns ``doc_ids`` into each
  token's document start and end, which give the block ranges and the mask (same document = same start). With either,
  ``_band`` gives each Q block (forward, dQ) its K/V range and each K/V block (dK/dV) its Q range, both as masked edge
  blocks around unmasked middle blocks; blocks outside are skipped, as causal skipping does (kernels/tiles.py counts
  the visited tiles on the host).
- ``SOFTCAP``: s = softcap * tanh(s / softcap), backward through dS_raw = dS * (1 - tanh^2). ``ALIBI``: s - slope_h *
  |i' - j|, the bias computed in-kernel from one slope per query head. Both apply in every stage, masked or not.
- ``VARLEN``: packed batches (``flash2_varlen_attention``): the grid is (blocks of all sequences) x heads, each
  program reads its (sequence, block) from a table built once per cu_seqlens tensor (``varlen_blocks``, the last
  blocks first) and its sequence's rows from cu_seqlens; statistics are (heads, total_q).

One-loop kernels (``FA2_FWD_FLAT``, ``FA2_BWD_FLAT``, ``FA2_DQ_FLAT``, read at every launch; default 1): the forward
and dQ kernels walk their three stages in one loop and the dK/dV kernel every (query head of its GQA group, Q block)
step in one loop, each step deciding whether it is masked; the per-head, per-stage loops of the staged kernels restart
Triton's software pipeline (an exposed load, a drained MMA) up to 3 x GROUP times per program, which weighs where the
loops are a few steps long (documents, window edges). The backward's steps run in the same order, so the same sums.
``1``: for windows, documents and packed batches, but not every backward kernel of a window (``flat_switches``);
``all``: every launch; ``0``: none (tools/bench_bwd_flat.py times 0, 1 and all in one process).

Not supported: dropout, arbitrary attention bias tensors, paged or cached KV, returning the LSE or the softmax, FP8,
zero or negative ``sm_scale``; documents with varlen (one packed sequence per document does the same); TMA tiles
for packed batches (they take the pointer path).

Hopper: with ``Variant(tma=...)`` the kernels move their Q, K, V, O and dO tiles through device-side tensor
descriptors (TMA; rows past a sequence and a padded head dim read as zeros, so unmasked stages need no masks)
instead of 64-bit pointer tiles, which also frees the registers those pointers take. The choice is made once per
matrix (``head_source``) and the algorithm reads and writes tiles through the same four loaders either way
(kernels/_common.py). fa2 (``tma="auto"``) uses TMA where it measured faster on an H100: the backward kernels at
head dims <= 64 on sm_90+ (1.15x at d64); the forward and larger head dims stay on pointers (TMA measured 2-7%
slower there). Layouts TMA cannot address (fp32, a non-contiguous head dim, unaligned strides) fall back to
pointers. Triton's warp specialisation of the forward loop compiled on sm_90 but did not partition it; it was
removed with the atomic dQ paths.

Tested on: the CPU through Triton 3.9's interpreter (tests/test_kernels.py: fp16 and fp32, ragged and unequal
sequence lengths, GQA/MQA, head dims 16..256, causal and not, non-contiguous inputs); on the GPU, an NVIDIA H100
80GB HBM3 with Triton 3.6 and torch 2.11 passes tests/test_kernels_gpu.py (fp16 and bf16 up to seqlen 8k, head
dims 64/128/256, GQA/MQA, every autotune config forced, repeated runs bit-equal; every Variant path at
d64/128/256 in fp16 and bf16, every config on the TMA path). Those GPU runs predate the tile-loader redesign,
which compiles for sm_90 (`python -m fa2bench.profiling.compile_sm90`, Triton 3.6) to the same registers and spills
as before.
Autotune spaces and the shared-memory budget live in kernels/configs.py (read by the IO model too).
"""
from __future__ import annotations

import functools
import math
import os
import weakref
from dataclasses import dataclass

from . import _common  # noqa: F401  (first: importing it picks the CPU interpreter before Triton loads)
import torch
import triton
import triton.language as tl

from . import configs as spaces
from ._common import (LOG2E, Launcher, advance, autotune, bwd_preprocess, check_inputs, check_scale, dot_precision,
                      ensure_tma_allocator, env_number, head_source, ieee_configs, launch_preprocess, load_rows,
                      load_tile, row_cursor, store_rows, tile_ptrs, tma_layout_ok)
from .configs import block_d


# ----------------------------------------------------------------------------------------------------------------
# Shared by the three kernels: which blocks a program computes, and which K/V blocks a Q block sees
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _program_blocks(n_blocks, varlen_block, SEQ_PAR: tl.constexpr, LONGEST_FIRST: tl.constexpr,
                    VARLEN: tl.constexpr):
    """(first, count) of the blocks this program computes: its own one when SEQ_PAR (LONGEST_FIRST: in reverse
    order, so that under causal masking the blocks that see the most keys start first), otherwise all of them in
    turn (rungs 3-4: one program per (batch, head)); VARLEN: ``varlen_block``, its block of a packed batch."""
    if VARLEN:
        return varlen_block, 1
    elif SEQ_PAR:
        if LONGEST_FIRST:
            return tl.num_programs(0) - 1 - tl.program_id(0), 1
        else:
            return tl.program_id(0), 1
    else:
        return 0, n_blocks


@triton.jit
def _kv_stages(start_m, N_CTX_Q, N_CTX_K, CAUSAL: tl.constexpr, SKIP: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """The K/V rows Q block start_m visits, split at lo: [0, lo) are seen in full by every row of the block (run
    without a mask), [lo, hi) cross the causal diagonal or end ragged (run masked); keys from hi on are never
    visited. Without SKIP (rungs 3-5) every block is visited and masked."""
    diag = N_CTX_K - N_CTX_Q  # query i sees keys j <= i + diag (bottom-right aligned)
    if SKIP:
        if CAUSAL:
            lo = tl.minimum(tl.maximum(start_m * BLOCK_M + diag + 1, 0) // BLOCK_N, N_CTX_K // BLOCK_N) * BLOCK_N
            hi = tl.minimum(tl.maximum(start_m * BLOCK_M + BLOCK_M + diag, 0), N_CTX_K)
        else:
            lo = (N_CTX_K // BLOCK_N) * BLOCK_N  # full blocks, then the ragged last one
            hi = N_CTX_K
    else:
        lo = 0
        hi = N_CTX_K
    return lo, hi


# ----------------------------------------------------------------------------------------------------------------
# Attention variants, compile-time switches of the same kernels: WINDOW (sliding window), DOCS (document masking),
# SOFTCAP (tanh score capping), ALIBI (linear position bias). All off: the code is the dense/causal kernel's.
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _band(first, last, n_other, shift, before, after, DS, DE, DOCS: tl.constexpr, BLOCK: tl.constexpr):
    """Rows first..last (one block) attend, on the other axis (length n_other), the y with
    x + shift - before <= y <= x + shift + after and, with DOCS, y in x's document [DS[x], DE[x]). Both bounds grow
    with x, so the block's stages are (lo, full_lo, full_hi, hi), in whole BLOCKs: [lo, full_lo) masked,
    [full_lo, full_hi) seen in full by every row (no mask), [full_hi, hi) masked; the rest is skipped."""
    lo = first + shift - before  # the first row's lowest key
    full_lo = last + shift - before  # the last row's lowest key
    full_hi = first + shift + after + 1  # past the first row's highest key
    hi = last + shift + after + 1  # past the last row's highest key
    if DOCS:
        lo = tl.maximum(lo, tl.load(DS + first))
        full_lo = tl.maximum(full_lo, tl.load(DS + last))
        full_hi = tl.minimum(full_hi, tl.load(DE + first))
        hi = tl.minimum(hi, tl.load(DE + last))
    hi = tl.minimum(tl.maximum(hi, 0), n_other)
    lo = tl.minimum(tl.maximum(lo, 0), n_other) // BLOCK * BLOCK
    full_lo = tl.minimum(tl.maximum((tl.maximum(full_lo, 0) + BLOCK - 1) // BLOCK * BLOCK, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, 0), n_other // BLOCK * BLOCK) // BLOCK * BLOCK  # ragged end: masked
    full_hi = tl.maximum(full_hi, full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def _variant_args(sm_scale, win_left, win_right, softcap, ALIBI_SLOPES, DOC_START, DOC_END, off_z, off_h, n_ctx,
                  ALIBI: tl.constexpr, DOCS: tl.constexpr):
    """``mods``, the variants' runtime values for query head off_h of batch off_z: (sm_scale, window left, window
    right, softcap, this head's ALiBi slope, this batch's document starts, its document ends). Entries of switches
    that are off are placeholders (never None: a tuple of a compiled kernel cannot carry it)."""
    slope = sm_scale
    if ALIBI:
        slope = tl.load(ALIBI_SLOPES + off_h)
    ds = off_z
    de = off_z
    if DOCS:
        ds = DOC_START + off_z * n_ctx
        de = DOC_END + off_z * n_ctx
    return sm_scale, win_left, win_right, softcap, slope, ds, de


@triton.jit
def _packed(CU_SEQLENS, off_z):
    """(first row, length) of sequence off_z of a packed batch."""
    start = tl.load(CU_SEQLENS + off_z)
    return start.to(tl.int64), tl.load(CU_SEQLENS + off_z + 1) - start


@triton.jit
def _varlen_block(BLOCKS, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """(sequence, block) of a packed batch that this program computes: entry program_id(0) of the table for
    blocks of BLOCK rows (``varlen_blocks``: every block of every sequence, the last blocks first; REVERSE: the
    first blocks first). The grid covers exactly the blocks there are."""
    tl.static_assert(BLOCK <= 128)  # VARLEN_BLOCKS
    if BLOCK <= 16:
        table = 0
    elif BLOCK <= 32:
        table = 1
    elif BLOCK <= 64:
        table = 2
    else:
        table = 3
    pid = tl.program_id(0)
    if REVERSE:
        pid = tl.num_programs(0) - 1 - pid
    at = BLOCKS + tl.load(BLOCKS + table) + 2 * pid
    return tl.load(at).to(tl.int64), tl.load(at + 1)


@triton.jit
def _varlen_program(BLOCKS, CU_SEQLENS_Q, CU_SEQLENS_K, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """This program's place in a packed batch: (sequence, block, first query row, query rows, first key row, key
    rows) for its entry of the block table (``_varlen_block``)."""
    off_z, start = _varlen_block(BLOCKS, REVERSE, BLOCK)
    q_start, n_q = _packed(CU_SEQLENS_Q, off_z)
    k_start, n_k = _packed(CU_SEQLENS_K, off_z)
    return off_z, start, q_start, n_q, k_start, n_k


@triton.jit
def _query_program(H, GROUP, N_CTX_Q, N_CTX_K, BLOCKS_Q, CU_SEQLENS_Q, CU_SEQLENS_K, BLOCK_M: tl.constexpr,
                   VARLEN: tl.constexpr):
    """Who a forward or dQ program is (grid: query blocks x batch * heads): (batch, head, kv head (GQA: query
    head h reads kv head h // GROUP), first row of its statistics, query rows, key rows, first query row and
    first key row of its sequence, its query block). Without VARLEN the last three are 0 (the block comes from
    ``_program_blocks``); with it the program computes block ``block`` of sequence ``batch`` of a packed batch
    (batch strides 0; grid: the packed batch's blocks x heads; the statistics are (heads, total_q)).
    """
    off_hz = tl.program_id(1)
    off_z = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    off_hkv = off_h // GROUP
    rows = off_hz.to(tl.int64) * N_CTX_Q
    q_start = 0
    k_start = 0
    block = 0
    if VARLEN:
        off_z, block, q_start, n_q, k_start, N_CTX_K = _varlen_program(BLOCKS_Q, CU_SEQLENS_Q, CU_SEQLENS_K, False,
                                                                        BLOCK_M)
        rows = off_h * N_CTX_Q + q_start
        N_CTX_Q = n_q
    return off_z, off_h, off_hkv, rows, N_CTX_Q, N_CTX_K, q_start, k_start, block


@triton.jit
def _tanh(x):
    """tanh in fp32 from exp2 (Triton has none); a short series near 0, where 1 - exp(-2|x|) would cancel."""
    ax = tl.abs(x)
    e = tl.math.exp2(ax * (-2.0 * 1.4426950408889634))  # exp(-2|x|)
    far = (1.0 - e) / (1.0 + e)
    x2 = x * x
    near = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    return tl.where(ax < 0.125, near, tl.where(x < 0, -far, far))


@triton.jit
def _score_mod(qk, r, c, sm_scale, diag, softcap, slope, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr):
    """Scores of the dot products qk in the log2 domain, query rows r and key columns c broadcast against qk:
    s = sm_scale q.k; softcap * tanh(s / softcap) (SOFTCAP); minus slope * |r + diag - c| (ALIBI, the bias computed
    here, never stored). Also dS_raw / dS = 1 - tanh^2, softcap's derivative (only meaningful with SOFTCAP)."""
    s = qk * sm_scale
    dtanh = s
    if SOFTCAP:
        t = _tanh(s / softcap)
        s = softcap * t
        dtanh = 1.0 - t * t
    if ALIBI:
        s = s - slope * tl.abs(r + diag - c).to(tl.float32)
    return s * LOG2E, dtanh


@triton.jit
def _doc_starts(mods, idx, n, other, DOCS: tl.constexpr):
    """With DOCS, the document start of each position idx (``other`` past n); otherwise idx (a placeholder)."""
    if DOCS:
        return tl.load(mods[5] + idx, mask=idx < n, other=other)
    else:
        return idx


@triton.jit
def _keep(in_range, r, c, diag, mods, ds_r, ds_c, CAUSAL: tl.constexpr, WINDOW: tl.constexpr, DOCS: tl.constexpr):
    """The mask of a masked block, query rows r against key columns c (broadcast against each other): in range,
    causal (c <= r + diag), in the window (c in [r' - left, r' + right], r' = r + diag) and in the same document
    (document starts ds_r and ds_c equal)."""
    keep = in_range
    if CAUSAL:
        keep = keep & (c <= r + diag)
    if WINDOW:
        keep = keep & (c >= r + diag - mods[1]) & (c <= r + diag + mods[2])
    if DOCS:
        keep = keep & (ds_r == ds_c)
    return keep


@triton.jit
def _keep_keys(offs_m, cols, N_CTX_K, diag, mods, ds_q, CAUSAL: tl.constexpr, WINDOW: tl.constexpr,
               DOCS: tl.constexpr):
    """_keep for a step of the forward loops: Q rows offs_m (document starts ds_q) against the key columns cols of
    this step, those past N_CTX_K out of range. The dQ and dK/dV loops spell this call out: through a helper,
    ptxas (which reads the line info Triton emits) compiled two of their softcap kernels differently."""
    return _keep(cols[None, :] < N_CTX_K, offs_m[:, None], cols[None, :], diag, mods, ds_q[:, None],
                 _doc_starts(mods, cols, N_CTX_K, -1, DOCS)[None, :], CAUSAL, WINDOW, DOCS)


@triton.jit
def _scores(qk, r, c, sm_scale, qk_scale, diag, softcap, slope, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr):
    """The scores in the log2 domain and softcap's derivative, as _score_mod gives them; without a score mod,
    qk * qk_scale (qk_scale = sm_scale * log2(e): one multiply, which fuses with the - m or - L that follows) and a
    placeholder derivative."""
    if SOFTCAP or ALIBI:
        return _score_mod(qk, r, c, sm_scale, diag, softcap, slope, SOFTCAP, ALIBI)
    else:
        return qk * qk_scale, qk


# ----------------------------------------------------------------------------------------------------------------
# Forward (Algorithm 1): the inner loop over K/V blocks, one Q block, the kernel
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, K, V, lo, hi, offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K, mods, ds_q,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
                    CAUSAL: tl.constexpr, DEFER: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
                    WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DOCS: tl.constexpr):
    """K/V rows [lo, hi) against one Q block: the online softmax (Algorithm 1, lines 6-10).

    MASK=False: every row sees every key of these blocks (no mask at all). MASK=True: the ragged end of K and,
    if CAUSAL, the diagonal band. DEFER: acc stays unscaled (FA2); otherwise acc stays normalised, rescaled by
    l_old / l_new every block (FA1's update, rung 3). Variants: ``mods`` = (sm_scale, left, right, softcap, slope,
    doc starts of K, -), ds_q the document starts of the block's rows (_score_mod, _keep).
    """
    k_cur = row_cursor(K, lo + offs_n, offs_d, TMA)
    v_cur = row_cursor(V, lo + offs_n, offs_d, TMA)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = load_rows(k_cur, start_n, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK, TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # S_ij = Q_i K_j^T
        if SOFTCAP or ALIBI:  # the score in the log2 domain, scaled already
            qk, _ = _score_mod(qk, offs_m[:, None], cols[None, :], mods[0], diag, mods[3], mods[4], SOFTCAP, ALIBI)
            scale = 1.0
        else:
            scale = qk_scale
        if MASK:
            qk = tl.where(_keep_keys(offs_m, cols, N_CTX_K, diag, mods, ds_q, CAUSAL, WINDOW, DOCS), qk * scale,
                          float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_ij[:, None]
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * scale)
            qk = qk * scale - m_ij[:, None]
        p = tl.math.exp2(qk)  # P~_ij = exp(S_ij - m_ij)
        alpha = tl.math.exp2(m_i - m_ij)
        l_new = l_i * alpha + tl.sum(p, 1)
        v = load_rows(v_cur, start_n, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK, TMA)
        if DEFER:  # O_i <- diag(e^{m_old - m_new}) O_i + P~_ij V_j: unnormalised
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        else:  # O_i <- diag(l_new)^-1 (diag(l_i) alpha O_i + P V_j): normalised at every step
            inv_l = 1.0 / tl.where(l_new > 0.0, l_new, 1.0)
            pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            acc = acc * (alpha * l_i * inv_l)[:, None] + pv * inv_l[:, None]
        l_i = l_new
        m_i = m_ij
        k_cur = advance(k_cur, K, BLOCK_N, TMA)
        v_cur = advance(v_cur, V, BLOCK_N, TMA)
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_flat(acc, l_i, m_i, q, K, V, lo, full_lo, full_hi, hi, offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                   mods, ds_q, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, WINDOW: tl.constexpr,
                   SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DOCS: tl.constexpr):
    """_attn_fwd_inner's stages in ONE loop (FLAT, FA2's deferred normalisation only): K/V rows [lo, hi), each step
    masked when it lies before full_lo or from full_hi on, so the software pipeline starts once per program. Loads
    read clamped rows without bounds checks (TMA: zeros past the end); the ragged last step is always masked."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        cols_in = tl.minimum(cols, N_CTX_K - 1)  # in bounds: past the end, the last key again (masked below)
        k = load_rows(row_cursor(K, cols_in, offs_d, TMA), start_n, cols_in, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, False,
                      TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # S_ij = Q_i K_j^T
        qk, _ = _scores(qk, offs_m[:, None], cols[None, :], mods[0], qk_scale, diag, mods[3], mods[4], SOFTCAP, ALIBI)
        if (start_n < full_lo) | (start_n >= full_hi):  # a masked step
            qk = tl.where(_keep_keys(offs_m, cols, N_CTX_K, diag, mods, ds_q, CAUSAL, WINDOW, DOCS), qk,
                          float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_ij[:, None])  # P~_ij = exp(S_ij - m_ij)
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_rows(row_cursor(V, cols_in, offs_d, TMA), start_n, cols_in, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, False,
                      TMA)
        acc = acc * alpha[:, None]  # O_i <- diag(e^{m_old - m_new}) O_i + P~_ij V_j: unnormalised
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_block(start_m, Q, K, V, O, LSE, LSUM, sm_scale, N_CTX_Q, N_CTX_K, mods,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr,
                    SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                    DOCS: tl.constexpr, FLAT: tl.constexpr):
    """Q block start_m of one (batch, head) against every K/V block it sees (Algorithm 1, lines 3-15): writes
    O_i and the statistics. Q, K, V, O are tile sources of this (batch, head); LSE, LSUM point at its rows."""
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # q stays on chip throughout
    q = load_rows(row_cursor(Q, offs_m, offs_d, TMA), start_m * BLOCK_M, offs_m, N_CTX_Q, offs_d, HEAD_DIM,
                  BLOCK_D, True, TMA)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30  # finite: a fully masked block gives no -inf - -inf
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E
    diag = N_CTX_K - N_CTX_Q
    ds_q = _doc_starts(mods, offs_m, N_CTX_Q, -1, DOCS)  # a key is in a row's document iff their starts are equal
    # the K/V blocks this Q block sees: masked [lo, full_lo), unmasked [full_lo, full_hi), masked [full_hi, hi)
    if WINDOW or DOCS:  # the K/V blocks the band of this Q block touches: masked edges around an unmasked middle
        lo, full_lo, full_hi, hi = _band(start_m * BLOCK_M, tl.minimum(start_m * BLOCK_M + BLOCK_M, N_CTX_Q) - 1,
                                         N_CTX_K, diag, mods[1], mods[2], mods[5], mods[6], DOCS, BLOCK_N)
    else:
        full_hi, hi = _kv_stages(start_m, N_CTX_Q, N_CTX_K, CAUSAL, SKIP, BLOCK_M, BLOCK_N)
        lo = 0
        full_lo = 0
    if FLAT and DEFER:  # the stages in one loop
        acc, l_i, m_i = _attn_fwd_flat(acc, l_i, m_i, q, K, V, lo, full_lo, full_hi, hi, offs_m, offs_n, offs_d,
                                       qk_scale, diag, N_CTX_K, mods, ds_q, HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL,
                                       DOT_PRECISION, TMA, WINDOW, SOFTCAP, ALIBI, DOCS)
    else:  # one loop per stage: the near masked edge, the blocks seen in full without a mask, the masked rest
        if WINDOW or DOCS:
            acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, lo, full_lo, offs_m, offs_n, offs_d, qk_scale,
                                            diag, N_CTX_K, mods, ds_q, HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, DEFER,
                                            DOT_PRECISION, TMA, WINDOW, SOFTCAP, ALIBI, DOCS)
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, full_lo, full_hi, offs_m, offs_n, offs_d, qk_scale,
                                        diag, N_CTX_K, mods, ds_q, HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, DEFER,
                                        DOT_PRECISION, TMA, WINDOW, SOFTCAP, ALIBI, DOCS)
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, full_hi, hi, offs_m, offs_n, offs_d, qk_scale, diag,
                                        N_CTX_K, mods, ds_q, HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, DEFER,
                                        DOT_PRECISION, TMA, WINDOW, SOFTCAP, ALIBI, DOCS)
    # rows that saw no key output 0 and store statistics for which backward's P is exactly 0
    dead = l_i == 0.0
    l_i = tl.where(dead, 1.0, l_i)
    if DEFER:  # one division per row; only the log-sum-exp is stored
        acc = acc / l_i[:, None]
        tl.store(LSE + offs_m, tl.where(dead, float("inf"), m_i + tl.math.log2(l_i)), mask=offs_m < N_CTX_Q)
    else:  # acc is already normalised; m and l are stored separately, as FA1 does
        tl.store(LSE + offs_m, tl.where(dead, float("inf"), m_i), mask=offs_m < N_CTX_Q)
        tl.store(LSUM + offs_m, l_i, mask=offs_m < N_CTX_Q)
    store_rows(row_cursor(O, offs_m, offs_d, TMA), acc.to(q.dtype), start_m * BLOCK_M, offs_m, N_CTX_Q, offs_d,
               HEAD_DIM, BLOCK_D, TMA)


@triton.jit
def _attn_fwd_kernel(Q, K, V, sm_scale, LSE, LSUM, Out,
                     stride_qz, stride_qh, stride_qm, stride_qk,
                     stride_kz, stride_kh, stride_kn, stride_kk,
                     stride_vz, stride_vh, stride_vn, stride_vk,
                     stride_oz, stride_oh, stride_om, stride_ok,
                     H, GROUP, N_CTX_Q, N_CTX_K, N_CTX_Q_BUCKET, N_CTX_K_BUCKET,
                     win_left, win_right, softcap, ALIBI_SLOPES, DOC_START, DOC_END, CU_SEQLENS_Q, CU_SEQLENS_K,
                     BLOCKS_Q, BLOCKS_K,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                     DEFER: tl.constexpr, SEQ_PAR: tl.constexpr, SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr,
                     SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DOCS: tl.constexpr, VARLEN: tl.constexpr,
                     FLAT: tl.constexpr):
    off_z, off_h, off_hkv, rows, N_CTX_Q, N_CTX_K, q_start, k_start, start = _query_program(
        H, GROUP, N_CTX_Q, N_CTX_K, BLOCKS_Q, CU_SEQLENS_Q, CU_SEQLENS_K, BLOCK_M, VARLEN)
    if VARLEN:
        Q += q_start * stride_qm
        Out += q_start * stride_om
        K += k_start * stride_kn
        V += k_start * stride_vn
    mods = _variant_args(sm_scale, win_left, win_right, softcap, ALIBI_SLOPES, DOC_START, DOC_END, off_z, off_h,
                         N_CTX_K, ALIBI, DOCS)
    Qs = head_source(Q, (stride_qz, stride_qh, stride_qm, stride_qk), off_z, off_h, N_CTX_Q, HEAD_DIM, BLOCK_M,
                     BLOCK_D, TMA)
    Ks = head_source(K, (stride_kz, stride_kh, stride_kn, stride_kk), off_z, off_hkv, N_CTX_K, HEAD_DIM, BLOCK_N,
                     BLOCK_D, TMA)
    Vs = head_source(V, (stride_vz, stride_vh, stride_vn, stride_vk), off_z, off_hkv, N_CTX_K, HEAD_DIM, BLOCK_N,
                     BLOCK_D, TMA)
    Os = head_source(Out, (stride_oz, stride_oh, stride_om, stride_ok), off_z, off_h, N_CTX_Q, HEAD_DIM, BLOCK_M,
                     BLOCK_D, TMA)
    first, count = _program_blocks(tl.cdiv(N_CTX_Q, BLOCK_M), start, SEQ_PAR, CAUSAL, VARLEN)
    for i in range(count):
        _attn_fwd_block(first + i, Qs, Ks, Vs, Os, LSE + rows, LSUM + rows, sm_scale, N_CTX_Q, N_CTX_K, mods,
                        HEAD_DIM, BLOCK_D, CAUSAL, DEFER, SKIP, DOT_PRECISION, TMA, BLOCK_M, BLOCK_N, WINDOW, SOFTCAP,
                        ALIBI, DOCS, FLAT)


# ----------------------------------------------------------------------------------------------------------------
# Backward (Algorithm 2): dK, dV per K/V block (Q blocks inner); dQ per Q block (K/V blocks inner)
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, LSE, LSUM, Delta, lo, hi, offs_n, offs_m0, offs_d, sm_scale, diag,
                         N_CTX_Q, mods, ds_k, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         MASK: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                         ALIBI: tl.constexpr, DOCS: tl.constexpr):
    """Q rows [lo, hi) against one K/V block, everything transposed (keys on the rows): accumulate dK_j, dV_j
    (Algorithm 2, lines 11-20; dQ is left to the dQ kernel).

    MASK=False: every row is in range and sees every key of the block. MASK=True: rows past seqlen_q and,
    if CAUSAL, the diagonal band.
    """
    qk_scale = sm_scale * LOG2E
    q_cur = row_cursor(Q, lo + offs_m0, offs_d, TMA)
    do_cur = row_cursor(DO, lo + offs_m0, offs_d, TMA)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q = load_rows(q_cur, start_m, offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK, TMA)
        if MASK:
            lse = tl.load(LSE + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
        else:
            lse = tl.load(LSE + offs_m)
        # recompute P^T = exp2(qk_scale * K Q^T - L) from the stored statistics
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        # dP^T = V dO^T before P^T: its wgmmas overlap P^T's exponentials (docs/variants.md section 4)
        do = load_rows(do_cur, start_m, offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK, TMA)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        sT, dtanhT = _scores(qkT, offs_m[None, :], offs_n[:, None], sm_scale, qk_scale, diag, mods[3], mods[4], SOFTCAP,
                             ALIBI)
        pT = tl.math.exp2(sT - lse[None, :])
        if not DEFER:  # rung 3 stores m and l: P = exp2(s - m) / l
            pT = pT * (1.0 / tl.load(LSUM + offs_m, mask=offs_m < N_CTX_Q, other=1.0))[None, :]
        if MASK:  # transposed: keys on the rows
            keep = _keep(offs_m[None, :] < N_CTX_Q, offs_m[None, :], offs_n[:, None], diag, mods,
                         _doc_starts(mods, offs_m, N_CTX_Q, -1, DOCS)[None, :], ds_k[:, None], CAUSAL, WINDOW, DOCS)
            pT = tl.where(keep, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # dV_j += P^T dO_i
        if MASK:
            delta = tl.load(Delta + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
        else:
            delta = tl.load(Delta + offs_m)
        # dS^T = P^T * (dP^T - Delta)
        dsT = pT * (dpT - delta[None, :])
        if SOFTCAP:  # through the tanh: dS_raw = dS * (1 - tanh^2)
            dsT = dsT * dtanhT
        dsT = dsT.to(q.dtype)
        dk = tl.dot(dsT, q, dk, input_precision=DOT_PRECISION)  # dK_j += dS^T Q_i (sm_scale at the end)
        q_cur = advance(q_cur, Q, BLOCK_M, TMA)
        do_cur = advance(do_cur, DO, BLOCK_M, TMA)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_flat(dk, dv, k, v, Q, q_strides, DO, do_strides, LSE, LSUM, Delta, lo, full_lo, full_hi, hi,
                        off_z, off_hkv, H, GROUP, N_CTX_Q, stats, offs_n, offs_m0, offs_d, sm_scale, diag, mods, ds_k,
                        ALIBI_SLOPES, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                        CAUSAL: tl.constexpr, DEFER: tl.constexpr, DOT_PRECISION: tl.constexpr, WINDOW: tl.constexpr,
                        SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DOCS: tl.constexpr, VARLEN: tl.constexpr):
    """_attn_bwd_dkdv_inner's steps for every query head of the GQA group, in ONE loop (FLAT): step it is row block
    it % n_steps of the group's head it // n_steps. The per-head, per-stage loops restart the software pipeline
    (an exposed load) up to 3 * GROUP times per program; where the variant's loops are a few steps long (documents,
    window edges) those restarts are a large share of the program. Each step decides whether it is masked (rows
    [lo, full_lo) and [full_hi, hi)); loads read clamped rows without bounds checks (the rows past seqlen_q are in
    the ragged last step, always masked). Pointer tiles only (the per-step head changes the base)."""
    qk_scale = sm_scale * LOG2E
    n_steps = tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_M)
    Qz = Q + off_z * q_strides[0]
    DOz = DO + off_z * do_strides[0]
    slope = mods[4]
    for it in range(GROUP * n_steps):
        g = it // n_steps
        start_m = lo + (it - g * n_steps) * BLOCK_M
        off_h = off_hkv * GROUP + g
        if VARLEN:
            srow = stats[0] + off_h * stats[1]
        else:
            srow = (off_z * H + off_h) * N_CTX_Q  # this query head's statistics
        if ALIBI:
            slope = tl.load(ALIBI_SLOPES + off_h)
        offs_m = start_m + offs_m0
        rows = tl.minimum(offs_m, N_CTX_Q - 1)  # in bounds: past the end, the last row again (masked below)
        q = load_tile(tile_ptrs(Qz + off_h * q_strides[1], rows, q_strides[2], offs_d, q_strides[3]), rows, N_CTX_Q,
                      offs_d, HEAD_DIM, BLOCK_D, False)
        lse = tl.load(LSE + srow + rows)
        # recompute P^T = exp2(qk_scale * K Q^T - L) from the stored statistics
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        # dP^T = V dO^T before P^T, as in _attn_bwd_dkdv_inner
        do = load_tile(tile_ptrs(DOz + off_h * do_strides[1], rows, do_strides[2], offs_d, do_strides[3]), rows,
                       N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, False)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        sT, dtanhT = _scores(qkT, offs_m[None, :], offs_n[:, None], sm_scale, qk_scale, diag, mods[3], slope, SOFTCAP,
                             ALIBI)
        pT = tl.math.exp2(sT - lse[None, :])
        if not DEFER:  # rung 3 stores m and l: P = exp2(s - m) / l
            pT = pT * (1.0 / tl.load(LSUM + srow + rows))[None, :]
        if (start_m < full_lo) | (start_m >= full_hi):  # a masked step; transposed: keys on the rows
            keep = _keep(offs_m[None, :] < N_CTX_Q, offs_m[None, :], offs_n[:, None], diag, mods,
                         _doc_starts(mods, offs_m, N_CTX_Q, -1, DOCS)[None, :], ds_k[:, None], CAUSAL, WINDOW, DOCS)
            pT = tl.where(keep, pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # dV_j += P^T dO_i
        delta = tl.load(Delta + srow + rows)
        # dS^T = P^T * (dP^T - Delta)
        dsT = pT * (dpT - delta[None, :])
        if SOFTCAP:  # through the tanh: dS_raw = dS * (1 - tanh^2)
            dsT = dsT * dtanhT
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)  # dK_j += dS^T Q_i (sm_scale at the end)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_block(start_n, Q, q_strides, DO, do_strides, K, V, DK, DV, LSE, LSUM, Delta, sm_scale, off_z,
                         off_hkv, H, GROUP, N_CTX_Q, N_CTX_K, stats, mods, ALIBI_SLOPES, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr, SKIP: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DOCS: tl.constexpr,
                         VARLEN: tl.constexpr, FLAT: tl.constexpr):
    """K/V block start_n of one (batch, kv head) against the rows of every query head of its GQA group that see
    it (Algorithm 2, lines 5-23): writes dK_j and dV_j once. K, V, DK, DV are pointer sources of this (batch, kv
    head); Q and dO are found per query head from their (z, h, row, d) strides. VARLEN: stats = (first row, rows
    per head) of the statistics; mods: _variant_args's of the group's first query head (the ALiBi slope is loaded
    per query head)."""
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    # k and v stay on chip throughout
    k = load_rows(row_cursor(K, offs_n, offs_d, False), start_n * BLOCK_N, offs_n, N_CTX_K, offs_d, HEAD_DIM,
                  BLOCK_D, True, False)
    v = load_rows(row_cursor(V, offs_n, offs_d, False), start_n * BLOCK_N, offs_n, N_CTX_K, offs_d, HEAD_DIM,
                  BLOCK_D, True, False)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    diag = N_CTX_K - N_CTX_Q  # query i sees keys j <= i + diag
    ds_k = _doc_starts(mods, offs_n, N_CTX_K, -2, DOCS)  # -2: keys past the end match no row
    if WINDOW or DOCS:  # the Q rows that see this block: i sees key j iff j - diag - right <= i <= j - diag + left
        lo, mid, end, stop = _band(start_n * BLOCK_N, tl.minimum(start_n * BLOCK_N + BLOCK_N, N_CTX_K) - 1, N_CTX_Q,
                                   -diag, mods[2], mods[1], mods[5], mods[6], DOCS, BLOCK_M)
    elif SKIP:
        if CAUSAL:
            # rows before lo see no key of this block (skipped); rows from full see all of it. [lo, mid) is the
            # masked band, rounded up to whole steps of BLOCK_M.
            lo = tl.maximum(start_n * BLOCK_N - diag, 0)
            full = tl.maximum(start_n * BLOCK_N + BLOCK_N - 1 - diag, 0)
            mid = lo + (full - lo + BLOCK_M - 1) // BLOCK_M * BLOCK_M
        else:
            lo = 0
            mid = 0
    else:  # rungs 3-5: every Q block is visited, every one masked
        lo = 0
        mid = tl.cdiv(N_CTX_Q, BLOCK_M) * BLOCK_M
    if not (WINDOW or DOCS):
        # [mid, end): whole unmasked steps; [end, N_CTX_Q): the ragged last step, masked
        end = mid + tl.maximum(N_CTX_Q - mid, 0) // BLOCK_M * BLOCK_M
        stop = N_CTX_Q
    if FLAT and not TMA:  # every (head, row block) step of the group in one loop
        dk, dv = _attn_bwd_dkdv_flat(dk, dv, k, v, Q, q_strides, DO, do_strides, LSE, LSUM, Delta, lo, mid, end, stop,
                                     off_z, off_hkv, H, GROUP, N_CTX_Q, stats, offs_n, offs_m0, offs_d, sm_scale, diag,
                                     mods, ds_k, ALIBI_SLOPES, HEAD_DIM, BLOCK_D, BLOCK_M, CAUSAL, DEFER,
                                     DOT_PRECISION, WINDOW, SOFTCAP, ALIBI, DOCS, VARLEN)
    else:
        for g in range(GROUP):  # the query heads sharing this kv head
            off_h = off_hkv * GROUP + g
            if VARLEN:
                rows = stats[0] + off_h * stats[1]
            else:
                rows = (off_z * H + off_h) * N_CTX_Q  # this query head's statistics
            if ALIBI:
                mods = (mods[0], mods[1], mods[2], mods[3], tl.load(ALIBI_SLOPES + off_h), mods[5], mods[6])
            Qh = head_source(Q, q_strides, off_z, off_h, N_CTX_Q, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
            DOh = head_source(DO, do_strides, off_z, off_h, N_CTX_Q, HEAD_DIM, BLOCK_M, BLOCK_D, TMA)
            for stage in tl.static_range(3):  # the masked band, the unmasked rows, the ragged last step
                if stage == 0:
                    s_lo, s_hi = lo, mid
                elif stage == 1:
                    s_lo, s_hi = mid, end
                else:
                    s_lo, s_hi = end, stop
                dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Qh, DOh, LSE + rows, LSUM + rows, Delta + rows, s_lo, s_hi,
                                              offs_n, offs_m0, offs_d, sm_scale, diag, N_CTX_Q, mods, ds_k, HEAD_DIM,
                                              BLOCK_D, BLOCK_M, stage != 1, CAUSAL, DEFER, DOT_PRECISION, TMA, WINDOW,
                                              SOFTCAP, ALIBI, DOCS)
    dk *= sm_scale  # S = sm_scale * Q K^T
    store_rows(row_cursor(DK, offs_n, offs_d, False), dk.to(k.dtype), start_n * BLOCK_N, offs_n, N_CTX_K, offs_d,
               HEAD_DIM, BLOCK_D, False)
    store_rows(row_cursor(DV, offs_n, offs_d, False), dv.to(v.dtype), start_n * BLOCK_N, offs_n, N_CTX_K, offs_d,
               HEAD_DIM, BLOCK_D, False)


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, sm_scale, DO, DK, DV, LSE, LSUM, Delta,
                          stride_qz, stride_qh, stride_qm, stride_qk,
                          stride_kz, stride_kh, stride_kn, stride_kk,
                          stride_vz, stride_vh, stride_vn, stride_vk,
                          stride_doz, stride_doh, stride_dom, stride_dok,
                          stride_dkz, stride_dkh, stride_dkn, stride_dkk,
                          stride_dvz, stride_dvh, stride_dvn, stride_dvk,
                          H, GROUP, N_CTX_Q, N_CTX_K, N_CTX_Q_BUCKET, N_CTX_K_BUCKET,
                          win_left, win_right, softcap, ALIBI_SLOPES, DOC_START, DOC_END, CU_SEQLENS_Q, CU_SEQLENS_K,
                          BLOCKS_Q, BLOCKS_K,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                          DEFER: tl.constexpr, SEQ_PAR: tl.constexpr, SKIP: tl.constexpr,
                          DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DOCS: tl.constexpr,
                          VARLEN: tl.constexpr, FLAT: tl.constexpr):
    off_hkvz = tl.program_id(1)  # over batch * kv_heads
    H_KV = H // GROUP
    off_z = (off_hkvz // H_KV).to(tl.int64)
    off_hkv = (off_hkvz % H_KV).to(tl.int64)
    stats = (0, 0)
    start = 0
    if VARLEN:  # as in the forward kernel (first blocks first: under causal masking they see the most rows)
        off_z, start, q_start, n_q, k_start, N_CTX_K = _varlen_program(BLOCKS_K, CU_SEQLENS_Q, CU_SEQLENS_K, True,
                                                                        BLOCK_N)
        stats = (q_start, N_CTX_Q)
        N_CTX_Q = n_q
        Q += q_start * stride_qm
        DO += q_start * stride_dom
        K += k_start * stride_kn
        V += k_start * stride_vn
        DK += k_start * stride_dkn
        DV += k_start * stride_dvn
    # K, V, dK, dV: pointers (the resident tiles are loaded and stored once)
    Ks = head_source(K, (stride_kz, stride_kh, stride_kn, stride_kk), off_z, off_hkv, N_CTX_K, HEAD_DIM, BLOCK_N,
                     BLOCK_D, False)
    Vs = head_source(V, (stride_vz, stride_vh, stride_vn, stride_vk), off_z, off_hkv, N_CTX_K, HEAD_DIM, BLOCK_N,
                     BLOCK_D, False)
    DKs = head_source(DK, (stride_dkz, stride_dkh, stride_dkn, stride_dkk), off_z, off_hkv, N_CTX_K, HEAD_DIM,
                      BLOCK_N, BLOCK_D, False)
    DVs = head_source(DV, (stride_dvz, stride_dvh, stride_dvn, stride_dvk), off_z, off_hkv, N_CTX_K, HEAD_DIM,
                      BLOCK_N, BLOCK_D, False)
    first, count = _program_blocks(tl.cdiv(N_CTX_K, BLOCK_N), start, SEQ_PAR, False, VARLEN)
    mods = _variant_args(sm_scale, win_left, win_right, softcap, ALIBI_SLOPES, DOC_START, DOC_END, off_z,
                         off_hkv * GROUP, N_CTX_K, ALIBI, DOCS)
    for i in range(count):
        _attn_bwd_dkdv_block(first + i, Q, (stride_qz, stride_qh, stride_qm, stride_qk), DO,
                             (stride_doz, stride_doh, stride_dom, stride_dok), Ks, Vs, DKs, DVs, LSE, LSUM, Delta,
                             sm_scale, off_z, off_hkv, H, GROUP, N_CTX_Q, N_CTX_K, stats, mods, ALIBI_SLOPES, HEAD_DIM,
                             BLOCK_D, CAUSAL, DEFER, SKIP, DOT_PRECISION, TMA, BLOCK_M, BLOCK_N, WINDOW, SOFTCAP,
                             ALIBI, DOCS, VARLEN, FLAT)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, inv_l, delta, K, V, lo, hi, offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                       mods, ds_q, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                       MASK: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       TMA: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                       DOCS: tl.constexpr):
    """K/V rows [lo, hi) against one Q block: accumulate dQ_i += dS_ij K_j (Algorithm 2, line 21, without atomics).
    Masks as in _attn_fwd_inner."""
    k_cur = row_cursor(K, lo + offs_n, offs_d, TMA)
    v_cur = row_cursor(V, lo + offs_n, offs_d, TMA)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = load_rows(k_cur, start_n, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK, TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        s, dtanh = _scores(qk, offs_m[:, None], cols[None, :], mods[0], qk_scale, diag, mods[3], mods[4], SOFTCAP,
                           ALIBI)
        p = tl.math.exp2(s - lse[:, None])
        if not DEFER:
            p = p * inv_l[:, None]
        if MASK:
            keep = _keep(cols[None, :] < N_CTX_K, offs_m[:, None], cols[None, :], diag, mods, ds_q[:, None],
                         _doc_starts(mods, cols, N_CTX_K, -1, DOCS)[None, :], CAUSAL, WINDOW, DOCS)
            p = tl.where(keep, p, 0.0)
        v = load_rows(v_cur, start_n, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK, TMA)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:  # through the tanh: dS_raw = dS * (1 - tanh^2)
            ds = ds * dtanh
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
        k_cur = advance(k_cur, K, BLOCK_N, TMA)
        v_cur = advance(v_cur, V, BLOCK_N, TMA)
    return dq


@triton.jit
def _attn_bwd_dq_flat(dq, q, do, lse, inv_l, delta, K, V, lo, full_lo, full_hi, hi, offs_m, offs_n, offs_d, qk_scale,
                      diag, N_CTX_K, mods, ds_q, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                      CAUSAL: tl.constexpr, DEFER: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
                      WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DOCS: tl.constexpr):
    """_attn_bwd_dq_inner's three stages in ONE loop (FLAT): K/V rows [lo, hi), each step masked when it lies
    before full_lo or from full_hi on, so the software pipeline starts once per program, not once per stage. Loads
    read clamped rows without bounds checks (TMA: zeros past the end); the ragged last step is always masked.
    dP = dO V^T is issued before P and the mask branch: the branch would otherwise keep the compiler from starting
    that matmul while the exponentials run, as it does in the staged loops (their SASS interleaves the two)."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        cols_in = tl.minimum(cols, N_CTX_K - 1)  # in bounds: past the end, the last key again (masked below)
        k = load_rows(row_cursor(K, cols_in, offs_d, TMA), start_n, cols_in, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, False,
                      TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        v = load_rows(row_cursor(V, cols_in, offs_d, TMA), start_n, cols_in, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, False,
                      TMA)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        s, dtanh = _scores(qk, offs_m[:, None], cols[None, :], mods[0], qk_scale, diag, mods[3], mods[4], SOFTCAP,
                           ALIBI)
        p = tl.math.exp2(s - lse[:, None])
        if not DEFER:
            p = p * inv_l[:, None]
        if (start_n < full_lo) | (start_n >= full_hi):  # a masked step
            keep = _keep(cols[None, :] < N_CTX_K, offs_m[:, None], cols[None, :], diag, mods, ds_q[:, None],
                         _doc_starts(mods, cols, N_CTX_K, -1, DOCS)[None, :], CAUSAL, WINDOW, DOCS)
            p = tl.where(keep, p, 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:  # through the tanh: dS_raw = dS * (1 - tanh^2)
            ds = ds * dtanh
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_block(start_m, Q, K, V, DO, DQ, LSE, LSUM, Delta, sm_scale, N_CTX_Q, N_CTX_K, mods,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr,
                       SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr, SOFTCAP: tl.constexpr,
                       ALIBI: tl.constexpr, DOCS: tl.constexpr, FLAT: tl.constexpr):
    """Q block start_m of one (batch, head) against every K/V block it sees: writes dQ_i once. Sources and
    statistics as in _attn_fwd_block; DQ is a pointer source."""
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # q, dO, the statistics and Delta stay on chip throughout
    q = load_rows(row_cursor(Q, offs_m, offs_d, TMA), start_m * BLOCK_M, offs_m, N_CTX_Q, offs_d, HEAD_DIM,
                  BLOCK_D, True, TMA)
    do = load_rows(row_cursor(DO, offs_m, offs_d, TMA), start_m * BLOCK_M, offs_m, N_CTX_Q, offs_d, HEAD_DIM,
                   BLOCK_D, True, TMA)
    lse = tl.load(LSE + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
    if DEFER:
        inv_l = lse  # unused
    else:
        inv_l = 1.0 / tl.load(LSUM + offs_m, mask=offs_m < N_CTX_Q, other=1.0)
    delta = tl.load(Delta + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E
    diag = N_CTX_K - N_CTX_Q
    ds_q = _doc_starts(mods, offs_m, N_CTX_Q, -1, DOCS)
    # the K/V blocks this Q block sees: masked [lo, full_lo), unmasked [full_lo, full_hi), masked [full_hi, hi)
    if WINDOW or DOCS:
        lo, full_lo, full_hi, hi = _band(start_m * BLOCK_M, tl.minimum(start_m * BLOCK_M + BLOCK_M, N_CTX_Q) - 1,
                                         N_CTX_K, diag, mods[1], mods[2], mods[5], mods[6], DOCS, BLOCK_N)
    else:
        full_hi, hi = _kv_stages(start_m, N_CTX_Q, N_CTX_K, CAUSAL, SKIP, BLOCK_M, BLOCK_N)
        lo = 0
        full_lo = 0
    if FLAT:  # the stages in one loop
        dq = _attn_bwd_dq_flat(dq, q, do, lse, inv_l, delta, K, V, lo, full_lo, full_hi, hi, offs_m, offs_n, offs_d,
                               qk_scale, diag, N_CTX_K, mods, ds_q, HEAD_DIM, BLOCK_D, BLOCK_N, CAUSAL, DEFER,
                               DOT_PRECISION, TMA, WINDOW, SOFTCAP, ALIBI, DOCS)
    else:  # the forward's stages, one loop each
        if WINDOW or DOCS:
            dq = _attn_bwd_dq_inner(dq, q, do, lse, inv_l, delta, K, V, lo, full_lo, offs_m, offs_n, offs_d,
                                    qk_scale, diag, N_CTX_K, mods, ds_q, HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL,
                                    DEFER, DOT_PRECISION, TMA, WINDOW, SOFTCAP, ALIBI, DOCS)
        dq = _attn_bwd_dq_inner(dq, q, do, lse, inv_l, delta, K, V, full_lo, full_hi, offs_m, offs_n, offs_d,
                                qk_scale, diag, N_CTX_K, mods, ds_q, HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, DEFER,
                                DOT_PRECISION, TMA, WINDOW, SOFTCAP, ALIBI, DOCS)
        dq = _attn_bwd_dq_inner(dq, q, do, lse, inv_l, delta, K, V, full_hi, hi, offs_m, offs_n, offs_d, qk_scale,
                                diag, N_CTX_K, mods, ds_q, HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, DEFER,
                                DOT_PRECISION, TMA, WINDOW, SOFTCAP, ALIBI, DOCS)
    dq *= sm_scale  # S = sm_scale * Q K^T
    store_rows(row_cursor(DQ, offs_m, offs_d, False), dq.to(q.dtype), start_m * BLOCK_M, offs_m, N_CTX_Q, offs_d,
               HEAD_DIM, BLOCK_D, False)


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, sm_scale, DO, DQ, LSE, LSUM, Delta,
                        stride_qz, stride_qh, stride_qm, stride_qk,
                        stride_kz, stride_kh, stride_kn, stride_kk,
                        stride_vz, stride_vh, stride_vn, stride_vk,
                        stride_doz, stride_doh, stride_dom, stride_dok,
                        stride_dqz, stride_dqh, stride_dqm, stride_dqk,
                        H, GROUP, N_CTX_Q, N_CTX_K, N_CTX_Q_BUCKET, N_CTX_K_BUCKET,
                        win_left, win_right, softcap, ALIBI_SLOPES, DOC_START, DOC_END, CU_SEQLENS_Q, CU_SEQLENS_K,
                        BLOCKS_Q, BLOCKS_K,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                        DEFER: tl.constexpr, SEQ_PAR: tl.constexpr, SKIP: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, DOCS: tl.constexpr,
                        VARLEN: tl.constexpr, FLAT: tl.constexpr):
    off_z, off_h, off_hkv, rows, N_CTX_Q, N_CTX_K, q_start, k_start, start = _query_program(
        H, GROUP, N_CTX_Q, N_CTX_K, BLOCKS_Q, CU_SEQLENS_Q, CU_SEQLENS_K, BLOCK_M, VARLEN)
    if VARLEN:
        Q += q_start * stride_qm
        DO += q_start * stride_dom
        DQ += q_start * stride_dqm
        K += k_start * stride_kn
        V += k_start * stride_vn
    mods = _variant_args(sm_scale, win_left, win_right, softcap, ALIBI_SLOPES, DOC_START, DOC_END, off_z, off_h,
                         N_CTX_K, ALIBI, DOCS)
    Qs = head_source(Q, (stride_qz, stride_qh, stride_qm, stride_qk), off_z, off_h, N_CTX_Q, HEAD_DIM, BLOCK_M,
                     BLOCK_D, TMA)
    Ks = head_source(K, (stride_kz, stride_kh, stride_kn, stride_kk), off_z, off_hkv, N_CTX_K, HEAD_DIM, BLOCK_N,
                     BLOCK_D, TMA)
    Vs = head_source(V, (stride_vz, stride_vh, stride_vn, stride_vk), off_z, off_hkv, N_CTX_K, HEAD_DIM, BLOCK_N,
                     BLOCK_D, TMA)
    DOs = head_source(DO, (stride_doz, stride_doh, stride_dom, stride_dok), off_z, off_h, N_CTX_Q, HEAD_DIM,
                      BLOCK_M, BLOCK_D, TMA)
    DQs = head_source(DQ, (stride_dqz, stride_dqh, stride_dqm, stride_dqk), off_z, off_h, N_CTX_Q, HEAD_DIM,
                      BLOCK_M, BLOCK_D, False)
    first, count = _program_blocks(tl.cdiv(N_CTX_Q, BLOCK_M), start, SEQ_PAR, CAUSAL, VARLEN)
    for i in range(count):
        _attn_bwd_dq_block(first + i, Qs, Ks, Vs, DOs, DQs, LSE + rows, LSUM + rows, Delta + rows, sm_scale,
                           N_CTX_Q, N_CTX_K, mods, HEAD_DIM, BLOCK_D, CAUSAL, DEFER, SKIP, DOT_PRECISION, TMA, BLOCK_M,
                           BLOCK_N, WINDOW, SOFTCAP, ALIBI, DOCS, FLAT)


JIT_KERNELS = {"fwd": _attn_fwd_kernel, "bwd_dkdv": _attn_bwd_dkdv_kernel, "bwd_dq": _attn_bwd_dq_kernel}

# ----------------------------------------------------------------------------------------------------------------
# Autotune configs (kernels/spaces.py) and the named filter that prunes them
# ----------------------------------------------------------------------------------------------------------------
def _config(tile) -> triton.Config:
    block_m, block_n, warps, stages = tile
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


def tile_config(spec: str) -> triton.Config:
    """The config of a tile written '64x128w8s2' (``configs.parse_tile``: ValueError for anything else)."""
    return _config(spaces.parse_tile(spec))


def _tile(conf: triton.Config) -> tuple:
    return conf.kwargs["BLOCK_M"], conf.kwargs["BLOCK_N"], conf.num_warps, conf.num_stages


def candidates(tiles: dict) -> dict[str, list[triton.Config]]:
    """{kernel: [triton.Config]} of a tile table of kernels/configs.py (FA2, LADDER)."""
    return {name: [_config(t) for t in ts] for name, ts in tiles.items()}


_CANDIDATES = candidates(spaces.FA2)


def pruned(kernel: str, confs: list[triton.Config], headdim: int, elt: int = 2,
           limit: int = spaces.MAX_CONFIGS) -> list[triton.Config]:
    """The first ``limit`` of ``confs`` that fit shared memory and registers (configs.fa2_fits), or the fallback."""
    kept = [c for c in confs if spaces.fa2_fits(kernel, _tile(c), headdim, elt)][:limit]
    return kept or [_config(spaces.FA2_FALLBACK[kernel])]


def early_prune(kernel):
    def prune(confs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        elt = args["Q"].element_size()
        if args.get("DOT_PRECISION") == "ieee":  # FMA dot products: one small config (configs.IEEE_MAX_TILE)
            return ieee_configs(pruned(kernel, confs, args["HEAD_DIM"], elt, limit=len(confs))) or [
                _config(spaces.FA2_FALLBACK[kernel])]
        kept = pruned(kernel, confs, args["HEAD_DIM"], elt)
        if kernel == "fwd":  # less the tiles of fewer rows than the forward may run
            floor = fwd_min_block_m(args["HEAD_DIM"], bool(args.get("DOCS") or args.get("VARLEN")))
            kept = [c for c in kept if c.kwargs["BLOCK_M"] >= floor] or kept
        return kept
    prune.__name__ = f"prune_{kernel}"
    return prune


FWD_MIN_BLOCK_M_ENV = "FA2_FWD_MIN_BLOCK_M"  # a study's switch (recorded in meta.json's kernel_env)


def fwd_min_block_m(headdim: int, docs: bool) -> int:
    """The fewest query rows a forward tile may have: configs.DOCS_FWD_MIN_BLOCK_M for a document mask (padded or
    packed), raised for every variant by FA2_FWD_MIN_BLOCK_M where set."""
    study = env_number(FWD_MIN_BLOCK_M_ENV, 0, int, "a whole number of rows")
    return max(study, spaces.DOCS_FWD_MIN_BLOCK_M.get(headdim, 0) if docs else 0)


# dtypes join the key automatically; the rung switches and the dot precision are part of it
TUNE_KEY = ["HEAD_DIM", "CAUSAL", "DEFER", "SEQ_PAR", "SKIP", "DOT_PRECISION", "TMA", "N_CTX_Q_BUCKET",
            "N_CTX_K_BUCKET", "WINDOW", "SOFTCAP", "ALIBI", "DOCS", "VARLEN", "FLAT"]


def autotuned(tiles: dict, prune=early_prune) -> dict:
    """The three kernels, each autotuned over the tiles ``tiles[name]`` (a table of kernels/configs.py) with the
    filter ``prune(name)`` (default: the named filter)."""
    confs = candidates(tiles)
    return {name: autotune(confs[name], [key for key in TUNE_KEY if key in JIT_KERNELS[name].arg_names],
                           prune(name))(JIT_KERNELS[name])
            for name in JIT_KERNELS}


def tuned_launcher(tiles: dict) -> Launcher:
    """The three kernels autotuned over ``tiles`` (``autotuned``) behind one Launcher (``.kernels`` holds them)."""
    tuned = autotuned(tiles)
    return Launcher(tuned, {name: early_prune(name) for name in tuned})


_LAUNCHER = tuned_launcher(spaces.FA2)
_AUTOTUNED = _LAUNCHER.kernels
TRITON_KERNELS = {**_AUTOTUNED, "bwd_preprocess": bwd_preprocess}  # every kernel a launch runs (for profiling)
forced_configs, last_config, config_cached = _LAUNCHER.forced_configs, _LAUNCHER.last_config, _LAUNCHER.config_cached


def configs(headdim: int) -> dict[str, list[triton.Config]]:
    """The autotune space after pruning, per autotuned kernel, for fp16/bf16 inputs of this head dim, dense (a
    document mask's forward also drops the tiles under ``fwd_min_block_m``, as ``early_prune`` does at launch)."""
    return {name: pruned(name, cands, headdim) for name, cands in _CANDIDATES.items()}


# ----------------------------------------------------------------------------------------------------------------
# autograd.Function and the public entry point
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """Compile-time switches of the kernels above (the ablation ladder's rungs 3-6 turn the first three off), the
    Hopper tile path, and the launcher (autotune space) they run with."""
    defer: bool = True  # unscaled accumulator, one division at the end, log-sum-exp only
    seq_par: bool = True  # grid over Q blocks (forward, dQ) and K/V blocks (dK, dV) too
    skip: bool = True  # causal blocks above the diagonal skipped; unmasked / masked stages
    launcher: Launcher = _LAUNCHER
    # Tensor descriptors (TMA) for the tiles: "on" (every kernel), "off", or "auto": where they measured faster on
    # an H100 (docs/performance.md): the backward kernels at head dims <= TMA_AUTO_MAX_HEADDIM on sm_90+.
    tma: str = "off"
    # The dQ kernel on a second stream beside the dK/dV kernel (``dq_beside_dkdv``): a scheduling choice, not one of
    # the paper's changes, so the ladder's rungs run without it and it does not blur their steps.
    dq_stream: bool = True


FA2 = Variant(tma="auto")
TMA_AUTO_MAX_HEADDIM = 64


def _bucket(n: int) -> int:
    return triton.next_power_of_2(n)


def _use_tma(variant: Variant, backward: bool, *tensors: torch.Tensor) -> bool:
    """Whether this launch moves tiles through tensor descriptors: asked for, fp16/bf16, and a layout TMA can
    address; "auto" only for the backward at small head dims on a Hopper-or-newer GPU (the interpreter takes
    "on" only)."""
    if variant.tma == "off" or tensors[0].dtype == torch.float32 or not tma_layout_ok(*tensors):
        return False
    if variant.tma == "auto":
        return (backward and tensors[0].shape[-1] <= TMA_AUTO_MAX_HEADDIM and tensors[0].is_cuda
                and torch.cuda.get_device_capability(tensors[0].device)[0] >= 9)
    return True


@dataclass(frozen=True)
class Mods:
    """An attention variant as the kernels take it: the compile-time switches (``switches()``) and the runtime
    arguments (``args()``, in the kernels' order). Built by ``mods`` from the public arguments; ``DENSE`` is none."""
    window: tuple[int, int] | None = None  # (left, right), already clamped and with right = 0 under causal
    softcap: float | None = None
    alibi_slopes: torch.Tensor | None = None
    doc_bounds: tuple[torch.Tensor, torch.Tensor] | None = None  # (start, end) of each token's document
    cu_seqlens: tuple[torch.Tensor, torch.Tensor] | None = None  # packed batches (varlen)
    blocks: tuple[torch.Tensor, torch.Tensor] | None = None  # their block tables, Q and K side (varlen_blocks)
    band: tuple[int, int] = (0, 0)  # (left, right) the kernels use for block ranges (WINDOW or DOCS)

    def switches(self) -> dict:
        return dict(WINDOW=self.window is not None, SOFTCAP=self.softcap is not None,
                    ALIBI=self.alibi_slopes is not None, DOCS=self.doc_bounds is not None,
                    VARLEN=self.cu_seqlens is not None)

    def args(self) -> tuple:
        docs = self.doc_bounds or (None, None)
        cu = self.cu_seqlens or (None, None)
        blocks = self.blocks or (None, None)
        return (*self.band, 0.0 if self.softcap is None else self.softcap, self.alibi_slopes, *docs, *cu, *blocks)


DENSE = Mods()


def _meta(headdim, causal, precision, variant, mods: Mods = DENSE) -> dict:
    return dict(HEAD_DIM=headdim, BLOCK_D=block_d(headdim), CAUSAL=causal, DEFER=variant.defer,
                SEQ_PAR=variant.seq_par, SKIP=variant.skip, DOT_PRECISION=precision, **mods.switches())


def _strides(t: torch.Tensor, packed) -> tuple:
    """A (batch, heads, rows, d) tensor's strides; a packed batch's (1, heads, total, d) view has batch stride 0."""
    return t.stride() if packed is None else (0, *t.stride()[1:])


# The one-loop kernels (FLAT), switchable at launch for timing old against new in one process, per kernel
# (``flat_env``): 0 (the per-stage loops), 1, the default (one loop where the variant masks many steps: windows,
# documents, packed batches; but a window's backward keeps some staged loops, where the one loop measured slower:
# ``flat_switches``, docs/variants.md section 4), all (every launch).
FLAT_ENV = "FA2_BWD_FLAT"
DQ_FLAT_ENV = "FA2_DQ_FLAT"
FWD_FLAT_ENV = "FA2_FWD_FLAT"


def flat_env(kernel: str) -> str:
    """The environment variable that switches ``kernel``'s one loop (a JIT_KERNELS name): FA2_FWD_FLAT for the
    forward, FA2_BWD_FLAT for both backward kernels, FA2_DQ_FLAT for the dQ kernel's instead when it is set."""
    if kernel == "fwd":
        return FWD_FLAT_ENV
    if kernel == "bwd_dq" and os.environ.get(DQ_FLAT_ENV, "").strip():
        return DQ_FLAT_ENV
    return FLAT_ENV


def flat_backward(mods: "Mods") -> tuple[bool, bool]:
    """Whether this backward's dK/dV and dQ kernels run their one loops (``flat_loops``)."""
    return flat_loops("bwd_dkdv", mods), flat_loops("bwd_dq", mods)


def flat_loops(kernel: str, mods: "Mods") -> bool:
    """Whether a launch of ``kernel`` (a JIT_KERNELS name) runs its one loop, by ``flat_env(kernel)`` (0, 1 or all,
    read at every launch)."""
    return flat_switches(kernel, mods.switches())


def flat_switches(kernel: str, switches: dict) -> bool:
    """``flat_loops`` by the variant's compile-time switches (``Mods.switches``). At 1 (the default): windows,
    documents and packed batches run the one loops, except where it measured slower (docs/variants.md section 4):
    a window with softcap keeps both backward kernels staged, and a window that documents or packing do not cut
    keeps its dQ kernel staged."""
    env = flat_env(kernel)
    mode = os.environ.get(env, "1").strip().lower()
    if mode not in ("0", "1", "all"):
        raise ValueError(f"{env} must be 0, 1 or all, got {mode!r}")
    if mode == "all":
        return True
    cut = switches["DOCS"] or switches["VARLEN"]
    window, softcap = switches["WINDOW"], switches["SOFTCAP"]
    staged = {"fwd": False, "bwd_dkdv": window and softcap, "bwd_dq": window and (softcap or not cut)}[kernel]
    return mode == "1" and (window or cut) and not staged


STREAMS_ENV = "FA2_BWD_STREAMS"


def dq_beside_dkdv(q: torch.Tensor) -> torch.cuda.Stream | None:
    """The stream the dQ kernel runs on beside the dK/dV kernel (FA2_BWD_STREAMS=1, the default, on a CUDA device),
    or None: both on the caller's stream, one after the other (FA2_BWD_STREAMS=0, or no CUDA device). The two
    kernels read the same inputs and write disjoint outputs, so on a second stream the dQ kernel's programs can take
    the SMs the dK/dV kernel's last wave leaves idle, as FlexAttention's one launch for both roles does: backward
    1.017-1.037x on an H100, the same bits (results/h100-dq-streams-ab, docs/variants.md section 3)."""
    mode = os.environ.get(STREAMS_ENV, "1").strip()
    if mode not in ("0", "1"):
        raise ValueError(f"{STREAMS_ENV} must be 0 or 1, got {mode!r}")
    if mode == "0" or not q.is_cuda:
        return None
    return _side_stream(q.device.index if q.device.index is not None else torch.cuda.current_device())


@functools.cache
def _side_stream(device: int) -> torch.cuda.Stream:
    """One side stream per device, made on first use (outside any graph capture: the warm-up call comes first)."""
    return torch.cuda.Stream(device)


def _forward(q, k, v, sm_scale, meta, variant, mods: Mods = DENSE, packed=None):
    """Launch the forward: (o, lse, lsum); lse in the log2 domain (the running max m when not variant.defer,
    with lsum = l; lsum is lse itself when variant.defer). ``packed``: a packed batch's ``Packed``, whose q, k, v are
    (1, heads, total, d) views."""
    Z, H, N_CTX_Q, HEAD_DIM = q.shape
    H_KV, N_CTX_K = k.shape[1], k.shape[2]
    max_q, max_k = (N_CTX_Q, N_CTX_K) if packed is None else (packed.max_q, packed.max_k)
    o = torch.empty_like(q)
    f32 = dict(device=q.device, dtype=torch.float32)
    lse = torch.empty(q.shape[:3], **f32)
    lsum = lse if variant.defer else torch.empty(q.shape[:3], **f32)
    tma = packed is None and _use_tma(variant, False, q, k, v, o)
    if tma:
        ensure_tma_allocator()

    def grid(META):
        if packed is not None:  # every block of every sequence, once
            return (packed.blocks_q[META["BLOCK_M"]], H)
        return (triton.cdiv(max_q, META["BLOCK_M"]) if variant.seq_par else 1, Z * H)

    variant.launcher.launch("fwd", grid, q, k, v, sm_scale, lse, lsum, o,
                            *_strides(q, packed), *_strides(k, packed), *_strides(v, packed), *_strides(o, packed),
                            H, H // H_KV, N_CTX_Q, N_CTX_K, _bucket(max_q), _bucket(max_k), *mods.args(), **meta,
                            TMA=tma, FLAT=flat_loops("fwd", mods))
    return o, lse, lsum


def _backward(q, k, v, o, lse, lsum, do, sm_scale, meta, variant, mods: Mods = DENSE, packed=None):
    """Launch the backward (Delta, then dK/dV and dQ, the dQ kernel on a second stream: ``dq_beside_dkdv``):
    (dq, dk, dv). lse and lsum are indexed as contiguous rows. ``packed`` as in _forward."""
    Z, H, N_CTX_Q, HEAD_DIM = q.shape
    H_KV, N_CTX_K = k.shape[1], k.shape[2]
    max_q, max_k = (N_CTX_Q, N_CTX_K) if packed is None else (packed.max_q, packed.max_k)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    tail = (H, H // H_KV, N_CTX_Q, N_CTX_K, _bucket(max_q), _bucket(max_k), *mods.args())
    launch_preprocess(o, do, delta, meta["BLOCK_D"])
    tma = packed is None and _use_tma(variant, True, q, k, v, do)
    if tma:
        ensure_tma_allocator()

    def grid_dkdv(META):
        if packed is not None:
            return (packed.blocks_k[META["BLOCK_N"]], H_KV)
        return (triton.cdiv(max_k, META["BLOCK_N"]) if variant.seq_par else 1, Z * H_KV)

    st = [_strides(t, packed) for t in (q, k, v, do, dk, dv, dq)]
    flat_dkdv, flat_dq = flat_backward(mods)
    side = dq_beside_dkdv(q) if variant.dq_stream else None
    if side is not None:  # the dQ kernel waits for Delta only, not for the dK/dV kernel
        side.wait_stream(torch.cuda.current_stream())
    variant.launcher.launch("bwd_dkdv", grid_dkdv, q, k, v, sm_scale, do, dk, dv, lse, lsum, delta,
                            *st[0], *st[1], *st[2], *st[3], *st[4], *st[5], *tail, **meta, TMA=tma, FLAT=flat_dkdv)

    def grid_dq(META):
        if packed is not None:
            return (packed.blocks_q[META["BLOCK_M"]], H)
        return (triton.cdiv(max_q, META["BLOCK_M"]) if variant.seq_par else 1, Z * H)

    def launch_dq():
        variant.launcher.launch("bwd_dq", grid_dq, q, k, v, sm_scale, do, dq, lse, lsum, delta,
                                *st[0], *st[1], *st[2], *st[3], *st[6], *tail, **meta, TMA=tma, FLAT=flat_dq)

    if side is None:
        launch_dq()
    else:
        with torch.cuda.stream(side):
            launch_dq()
        torch.cuda.current_stream().wait_stream(side)  # the caller's stream sees dQ written before it runs on
    return dq, dk, dv


class _attention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, precision, variant, mods=DENSE, packed=None):
        meta = _meta(q.shape[-1], causal, precision, variant, mods)
        o, lse, lsum = _forward(q, k, v, sm_scale, meta, variant, mods, packed)
        ctx.save_for_backward(q, k, v, o, lse, lsum)
        ctx.sm_scale, ctx.meta, ctx.variant, ctx.mods, ctx.packed = sm_scale, meta, variant, mods, packed
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, lsum = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, lsum, do, ctx.sm_scale, ctx.meta, ctx.variant, ctx.mods, ctx.packed)
        return dq, dk, dv, None, None, None, None, None, None


def flash2_forward(q, k, v, causal: bool = False, sm_scale: float | None = None, tf32: bool = False):
    """FlashAttention-2's forward outside autograd, for callers that merge partial results (ring attention):
    ``(o, lse)``, lse the log-sum-exp in the log2 domain (``log2(sum_j exp2(sm_scale * log2(e) * q.k_j))``),
    fp32 of shape (batch, heads, seqlen_q), +inf for a row that sees no key."""
    shape = check_inputs(q, k, v)
    meta = _meta(shape.headdim, bool(causal), dot_precision(q.dtype, tf32), FA2)
    o, lse, _ = _forward(q, k, v, check_scale(shape.headdim, sm_scale), meta, FA2)
    return o, lse


def flash2_backward(q, k, v, o, lse, do, causal: bool = False, sm_scale: float | None = None, tf32: bool = False):
    """FlashAttention-2's backward outside autograd: ``(dq, dk, dv)`` of the attention whose output is ``o``,
    given its log2-domain ``lse`` (from ``flash2_forward``, or the merged LSE of a ring: P is recomputed as
    exp2(s - lse), so o and lse must be the final ones) and the output gradient ``do``."""
    shape = check_inputs(q, k, v)
    meta = _meta(shape.headdim, bool(causal), dot_precision(q.dtype, tf32), FA2)
    lse = lse.float().contiguous()
    return _backward(q, k, v, o, lse, lse, do.contiguous(), check_scale(shape.headdim, sm_scale), meta, FA2)


def run_variant(variant: Variant, q, k, v, causal, sm_scale, tf32) -> torch.Tensor:
    """Check the inputs and run the kernels with ``variant``'s switches (shared by fa2 and the ladder)."""
    shape = check_inputs(q, k, v)
    scale = check_scale(shape.headdim, sm_scale)
    return _attention.apply(q, k, v, bool(causal), scale, dot_precision(q.dtype, tf32), variant)


def _check_window(window) -> tuple[int, int] | None:
    if window is None:
        return None
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(w, int) and not isinstance(w, bool) for w in window)):
        raise ValueError(f"window must be a pair of ints (left, right), got {window!r}")
    if min(window) < 0:
        raise ValueError(f"window sizes must be >= 0, got {tuple(window)}")
    return int(window[0]), int(window[1])


def _check_softcap(softcap) -> float | None:
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not (math.isfinite(softcap)
                                                                                   and softcap > 0):
        raise ValueError(f"softcap must be a finite number > 0, got {softcap!r}")
    return float(softcap)


def _check_alibi(slopes, heads: int, device) -> torch.Tensor | None:
    if slopes is None:
        return None
    if not isinstance(slopes, torch.Tensor) or slopes.dtype != torch.float32 or tuple(slopes.shape) != (heads,):
        what = f"{tuple(slopes.shape)} {slopes.dtype}" if isinstance(slopes, torch.Tensor) else type(slopes).__name__
        raise ValueError(f"alibi_slopes must be a float32 tensor of shape ({heads},) (one slope per query head), "
                         f"got {what}")
    if slopes.device != device:
        raise ValueError(f"alibi_slopes must be on {device}, got {slopes.device}")
    return slopes.contiguous()


class _Memo:
    """The last value computed from one index tensor (doc_ids, cu_seqlens): a model passes the same one to every
    layer, and checking it reads it on the host (a sync that would stall the GPU each call). Recomputed when a
    different tensor, the same one modified in place (its version), or other arguments (``key``) come."""

    def __init__(self):
        self.ref, self.stamp, self.value = None, None, None

    def get(self, t, key, compute):
        if not isinstance(t, torch.Tensor):
            return compute()
        stamp = (t._version, key)
        if self.ref is None or self.ref() is not t or self.stamp != stamp:
            self.ref, self.stamp, self.value = None, None, None
            self.value = compute()  # raises before anything is remembered
            self.ref, self.stamp = weakref.ref(t), stamp
        return self.value


_DOCS_MEMO, _CU_MEMO_Q, _CU_MEMO_K = _Memo(), _Memo(), _Memo()


def _doc_bounds(doc_ids, batch: int, seqlen_q: int, seqlen_k: int, device) -> tuple | None:
    """``_find_doc_bounds``, remembered for the last doc_ids tensor (no sync when the same one comes again)."""
    if doc_ids is None:
        return None
    return _DOCS_MEMO.get(doc_ids, (batch, seqlen_q, seqlen_k, str(device)),
                          lambda: _find_doc_bounds(doc_ids, batch, seqlen_q, seqlen_k, device))


def _find_doc_bounds(doc_ids, batch: int, seqlen_q: int, seqlen_k: int, device) -> tuple:
    """The start and end (int32, (batch, seqlen)) of each token's document: the kernels' per-block document
    ranges (a token attends keys in [start, end) only) and their mask (same document iff same start)."""
    if seqlen_q != seqlen_k:
        raise ValueError(f"doc_ids needs self-attention (seqlen_q == seqlen_k), got {seqlen_q} and {seqlen_k}")
    if (not isinstance(doc_ids, torch.Tensor) or doc_ids.dtype != torch.int32
            or tuple(doc_ids.shape) != (batch, seqlen_q)):
        what = f"{tuple(doc_ids.shape)} {doc_ids.dtype}" if isinstance(doc_ids, torch.Tensor) else type(doc_ids)
        raise ValueError(f"doc_ids must be an int32 tensor of shape (batch, seqlen) = ({batch}, {seqlen_q}), "
                         f"got {what}")
    if doc_ids.device != device:
        raise ValueError(f"doc_ids must be on {device}, got {doc_ids.device}")
    if bool((doc_ids[:, 1:] < doc_ids[:, :-1]).any()):
        raise ValueError("doc_ids must be non-decreasing along each row")
    pos = torch.arange(seqlen_q, device=device, dtype=torch.int32).expand(batch, seqlen_q)
    first = torch.ones_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, 0).cummax(1).values
    end = torch.where(last, pos + 1, seqlen_q).flip(1).cummin(1).values.flip(1)
    return start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


def mods(causal, seqlen_q, seqlen_k, heads, batch, device, window=None, softcap=None, alibi_slopes=None,
         doc_ids=None, cu_seqlens=None, blocks=None) -> Mods:
    """The checked ``Mods`` of the public arguments (ValueError naming the problem otherwise); ``device`` a
    torch.device or its name."""
    device = torch.device(device)
    window = _check_window(window)
    softcap = _check_softcap(softcap)
    alibi_slopes = _check_alibi(alibi_slopes, heads, device)
    docs = _doc_bounds(doc_ids, batch, seqlen_q, seqlen_k, device)
    big = seqlen_q + seqlen_k  # a window side this wide is no limit
    left, right = (big, big) if window is None else (min(window[0], big), min(window[1], big))
    if causal:
        right = min(right, 0)
    return Mods(None if window is None else (left, right), softcap, alibi_slopes, docs, cu_seqlens, blocks,
                (left, right))


def flash2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     sm_scale: float | None = None, tf32: bool = False, *, window: tuple[int, int] | None = None,
                     softcap: float | None = None, alibi_slopes: torch.Tensor | None = None,
                     doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v with FlashAttention-2; differentiable in q, k and v.

    q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim), any strides, fp16, bf16 or
    fp32. Causal masking is aligned to the bottom-right corner. sm_scale defaults to headdim ** -0.5 and must be
    finite and positive. fp32 inputs run IEEE fp32 dot products unless ``tf32`` (ignored for fp16/bf16).

    Variants (compile-time specialisations of the same kernels; positions aligned as causal is, i' = i + seqlen_k
    - seqlen_q): ``window=(left, right)``: query i sees keys j in [i' - left, i' + right]; ``softcap``: scores s
    become softcap * tanh(s / softcap); ``alibi_slopes`` (float32, (heads,)): s - slope_h * |i' - j|; ``doc_ids``
    (int32, (batch, seqlen), non-decreasing rows, self-attention only): query i sees key j only within its document.
    A row that sees no key outputs zeros.
    """
    shape = check_inputs(q, k, v)
    scale = check_scale(shape.headdim, sm_scale)
    m = mods(causal, shape.seqlen_q, shape.seqlen_k, shape.heads, shape.batch, q.device, window, softcap,
             alibi_slopes, doc_ids)
    return _attention.apply(q, k, v, bool(causal), scale, dot_precision(q.dtype, tf32), FA2, m)


VARLEN_BLOCKS = (16, 32, 64, 128)  # the block sizes a packed batch's block tables serve (every tile's BLOCK_M/N)


def varlen_blocks(lengths: list[int], device) -> tuple[torch.Tensor, dict[int, int]]:
    """The block tables of a packed batch of sequences of these lengths, one per size in VARLEN_BLOCKS: every
    (sequence, block) pair, the last blocks of all sequences first (under causal masking they see the most keys),
    as one int32 tensor (a header of each table's offset, then the pairs), and each table's length (the grid)."""
    header, pairs, counts = [], [], {}
    for size in VARLEN_BLOCKS:
        table = sorted(((seq, b) for seq, n in enumerate(lengths) for b in range(-(-n // size))), key=lambda p: -p[1])
        header.append(len(VARLEN_BLOCKS) + len(pairs))
        pairs += [x for pair in table for x in pair]
        counts[size] = len(table)
    return torch.tensor(header + pairs, dtype=torch.int32, device=device), counts


@dataclass(frozen=True)
class Packed:
    """A packed batch as the launches need it: its longest sequences (autotune buckets) and its block counts per
    block size (grids)."""
    max_q: int
    max_k: int
    blocks_q: dict
    blocks_k: dict


def _check_cu_seqlens(cu, name: str, total: int, max_seqlen: int, device, memo: _Memo):
    """(batch size, block tables, their lengths) of a valid cu_seqlens (int32 prefix sums from 0 to total);
    ValueError otherwise. Remembered for the last tensor checked (``memo``): no sync when the same one comes
    again."""
    return memo.get(cu, (name, total, max_seqlen, str(device)),
                    lambda: _find_cu_batch(cu, name, total, max_seqlen, device))


def _find_cu_batch(cu, name: str, total: int, max_seqlen: int, device):
    if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be a 1-D int32 tensor (batch + 1,), got "
                         f"{tuple(cu.shape) if isinstance(cu, torch.Tensor) else type(cu).__name__}")
    if cu.device != device:
        raise ValueError(f"{name} must be on {device}, got {cu.device}")
    lengths = (cu[1:] - cu[:-1]).tolist()
    if int(cu[0]) != 0 or int(cu[-1]) != total or min(lengths) < 0:
        raise ValueError(f"{name} must start at 0, never decrease and end at the packed length {total}, got "
                         f"{cu.tolist()}")
    if not isinstance(max_seqlen, int) or max_seqlen < max(lengths) or max_seqlen < 1:
        raise ValueError(f"max_seqlen for {name} must be an int >= its longest sequence ({max(lengths)}), "
                         f"got {max_seqlen!r}")
    return (cu.numel() - 1, *varlen_blocks(lengths, device))


def flash2_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int,
                            causal: bool = False, sm_scale: float | None = None, *,
                            window: tuple[int, int] | None = None, softcap: float | None = None,
                            alibi_slopes: torch.Tensor | None = None) -> torch.Tensor:
    """FlashAttention-2 over a packed batch of sequences of different lengths, with no padding: q (total_q, heads,
    d), k and v (total_k, kv_heads, d); sequence b is rows cu_seqlens_q[b]:cu_seqlens_q[b+1] of q against rows
    cu_seqlens_k[b]:cu_seqlens_k[b+1] of k and v (int32 prefix sums starting at 0). Causal, window, softcap and
    ALiBi as in ``flash2_attention``, aligned per sequence. Differentiable in q, k and v."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} must be 3-D (total, heads, headdim), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    qv, kv, vv = (t.unsqueeze(0).transpose(1, 2) for t in (q, k, v))  # (1, heads, total, d) views
    shape = check_inputs(qv, kv, vv)
    batch, blocks_q, counts_q = _check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q.shape[0], max_seqlen_q, q.device,
                                                  _CU_MEMO_Q)
    batch_k, blocks_k, counts_k = _check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", k.shape[0], max_seqlen_k, q.device,
                                                    _CU_MEMO_K)
    if batch_k != batch:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have one length, got {cu_seqlens_q.numel()} and "
                         f"{cu_seqlens_k.numel()}")
    scale = check_scale(shape.headdim, sm_scale)
    m = mods(causal, max_seqlen_q, max_seqlen_k, shape.heads, batch, q.device, window, softcap, alibi_slopes,
             cu_seqlens=(cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()), blocks=(blocks_q, blocks_k))
    o = _attention.apply(qv, kv, vv, bool(causal), scale, dot_precision(q.dtype, False), FA2, m,
                         Packed(max_seqlen_q, max_seqlen_k, counts_q, counts_k))
    return o.transpose(1, 2).squeeze(0)
