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

Backward (Algorithm 2), three kernels, none with atomics (by default):
1. ``bwd_preprocess``: ``Delta = rowsum(dO * O)`` in fp32.
2. ``bwd_dkdv``: grid (K/V blocks) x (batch * kv_heads). A program keeps its K and V block on chip, loops over
   the query heads of its GQA group and, for each, over the Q blocks that can see this K/V block (those fully
   masked by causal are skipped; the diagonal band and the ragged last Q block run masked), recomputes P from
   Q, K and L, and accumulates dK and dV in fp32 on chip; both are written once.
3. ``bwd_dq``: grid (Q blocks) x (batch * heads), loops over the K/V blocks a Q block sees and accumulates dQ on
   chip, written once. dQ uses this second kernel rather than atomic adds from the dK/dV kernel (the paper's
   Algorithm 2 adds dQ_i to HBM with atomics) for determinism: repeated runs are bit-equal, and there is no
   fp32 dQ scratch buffer to zero and convert afterwards. The cost is recomputing Q K^T and dP = dO V^T a
   second time. ``Variant(dq="atomic")`` (relaxed fp32 atomics) and ``dq="tma-reduce"`` (TMA reductions) add dQ
   from the dK/dV kernel instead; both measured no faster on an H100 (docs/performance.md) and are not fa2's.

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

Not supported: dropout, ALiBi or any attention bias, sliding windows / local attention, softcapping,
variable-length (packed) batches, paged or cached KV, returning the LSE or the softmax, FP8, zero or negative
``sm_scale``.

Hopper: with ``Variant(tma=...)`` the kernels move their Q, K, V, O and dO tiles through device-side tensor
descriptors (TMA; rows past a sequence and a padded head dim read as zeros, so unmasked stages need no masks)
instead of 64-bit pointer tiles, which also frees the registers those pointers take. fa2 (``tma="auto"``) uses
them where they measured faster on an H100: the backward kernels at head dims <= 64 on sm_90+ (1.15x at d64);
the forward and larger head dims stay on pointers (TMA measured 2-7% slower there). Layouts TMA cannot address
(fp32, a non-contiguous head dim, unaligned strides) fall back to pointers. ``warp_specialize`` asks Triton 3.6
to warp-specialise the forward loop; on sm_90 it compiles (8 warps) but does not partition the loop.

Tested on: the CPU through Triton 3.9's interpreter (tests/test_kernels.py: fp16 and fp32, ragged and unequal
sequence lengths, GQA/MQA, head dims 16..256, causal and not, non-contiguous inputs); on the GPU, an NVIDIA H100
80GB HBM3 with Triton 3.6 and torch 2.11 passes tests/test_kernels_gpu.py (fp16 and bf16 up to seqlen 8k, head
dims 64/128/256, GQA/MQA, every autotune config forced, repeated runs bit-equal; every Variant path at
d64/128/256 in fp16 and bf16, every config on the TMA path).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (LOG2E, Launcher, atomic_add_tile, block_d, bwd_preprocess, check_inputs, check_scale,
                      dot_precision, ensure_tma_allocator, ieee_configs, interpreting, launch_preprocess, load_tile,
                      store_tile, tile_desc, tile_ptrs, tma_layout_ok, tune_bench)


# ----------------------------------------------------------------------------------------------------------------
# Forward: the inner loop over K/V blocks and one Q block
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_kk, stride_vn, stride_vk, lo, hi,
                    offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    MASK: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    TMA: tl.constexpr, WS: tl.constexpr):
    """One stage of Algorithm 1's inner loop over K/V blocks [lo, hi): online softmax.

    MASK=False: every row sees every key of these blocks (no mask at all). MASK=True: the ragged end of K and,
    if CAUSAL, the diagonal band (query i sees key j iff j <= i + diag). DEFER: acc stays unscaled (FA2);
    otherwise acc stays normalised, rescaled by l_old / l_new every block (FA1's update, rung 3).
    TMA: K and V are tensor descriptors (rows past seqlen_k and the padded head dim load as zeros); otherwise
    base pointers. WS: ask Triton to warp-specialise the loop (producer and consumer warps).
    """
    if not TMA:  # 64-bit pointers to the first block, advanced by 64-bit steps
        k_ptrs = tile_ptrs(K, lo + offs_n, stride_kn, offs_d, stride_kk)
        v_ptrs = tile_ptrs(V, lo + offs_n, stride_vn, offs_d, stride_vk)
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
        cols = start_n + offs_n
        if TMA:
            k = K.load([start_n, 0])
        else:
            k = load_tile(k_ptrs, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASK:
            keep = cols[None, :] < N_CTX_K
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk * qk_scale, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_ij[:, None]
        else:
            m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_ij[:, None]
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_ij)
        l_new = l_i * alpha + tl.sum(p, 1)
        if TMA:
            v = V.load([start_n, 0])
        else:
            v = load_tile(v_ptrs, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK)
        if DEFER:  # rescale the unnormalised accumulator to the new max
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        else:  # O_i <- diag(l_new)^-1 (diag(l_i) alpha O_i + P V_j): normalised at every step
            inv_l = 1.0 / tl.where(l_new > 0.0, l_new, 1.0)
            pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            acc = acc * (alpha * l_i * inv_l)[:, None] + pv * inv_l[:, None]
        l_i = l_new
        m_i = m_ij
        if not TMA:
            k_ptrs += tl.cast(stride_kn, tl.int64) * BLOCK_N
            v_ptrs += tl.cast(stride_vn, tl.int64) * BLOCK_N
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_block(start_m, Q, K, V, O, LSE, LSUM, off_hz, sm_scale,
                    stride_qm, stride_qk, stride_kn, stride_kk, stride_vn, stride_vk, stride_om, stride_ok,
                    N_CTX_Q, N_CTX_K,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr,
                    SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    TMA: tl.constexpr, WS: tl.constexpr):
    """Q block start_m of one (batch, head) against every K/V block it sees; writes O and the statistics.
    TMA: Q, K, V and O are tensor descriptors of this (batch, head); otherwise base pointers."""
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # q stays on chip throughout
    if TMA:
        q = Q.load([start_m * BLOCK_M, 0])
    else:
        q = load_tile(tile_ptrs(Q, offs_m, stride_qm, offs_d, stride_qk), offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D,
                      True)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30  # finite: a fully masked block gives no -inf - -inf
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E
    diag = N_CTX_K - N_CTX_Q  # query i sees keys j <= i + diag (bottom-right aligned)
    if SKIP:
        if CAUSAL:
            # [0, lo): blocks the block's first row sees in full; [lo, hi): the diagonal band; past hi: skipped
            lo = tl.minimum(tl.maximum(start_m * BLOCK_M + diag + 1, 0) // BLOCK_N, N_CTX_K // BLOCK_N) * BLOCK_N
            hi = tl.minimum(tl.maximum(start_m * BLOCK_M + BLOCK_M + diag, 0), N_CTX_K)
        else:
            lo = (N_CTX_K // BLOCK_N) * BLOCK_N  # full blocks, then the ragged last one
            hi = N_CTX_K
    else:  # rungs 3-5: every K/V block is visited, every one masked
        lo = 0
        hi = N_CTX_K
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_kk, stride_vn, stride_vk, 0, lo,
                                    offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                                    HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, DEFER, DOT_PRECISION, TMA, WS)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, K, V, stride_kn, stride_kk, stride_vn, stride_vk, lo, hi,
                                    offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                                    HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, DEFER, DOT_PRECISION, TMA, WS)
    # rows that saw no key output 0 and store statistics for which backward's P is exactly 0
    dead = l_i == 0.0
    l_i = tl.where(dead, 1.0, l_i)
    row_ptrs = off_hz.to(tl.int64) * N_CTX_Q + offs_m
    if DEFER:  # one division per row; only the log-sum-exp is stored
        acc = acc / l_i[:, None]
        tl.store(LSE + row_ptrs, tl.where(dead, float("inf"), m_i + tl.math.log2(l_i)), mask=offs_m < N_CTX_Q)
    else:  # acc is already normalised; m and l are stored separately, as FA1 does
        tl.store(LSE + row_ptrs, tl.where(dead, float("inf"), m_i), mask=offs_m < N_CTX_Q)
        tl.store(LSUM + row_ptrs, l_i, mask=offs_m < N_CTX_Q)
    if TMA:  # rows past seqlen_q and the padded head dim are clipped by the descriptor
        O.store([start_m * BLOCK_M, 0], acc.to(q.dtype))
    else:
        store_tile(tile_ptrs(O, offs_m, stride_om, offs_d, stride_ok), acc.to(O.dtype.element_ty),
                   offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, True)


@triton.jit
def _attn_fwd_kernel(Q, K, V, sm_scale, LSE, LSUM, Out,
                     stride_qz, stride_qh, stride_qm, stride_qk,
                     stride_kz, stride_kh, stride_kn, stride_kk,
                     stride_vz, stride_vh, stride_vn, stride_vk,
                     stride_oz, stride_oh, stride_om, stride_ok,
                     H, GROUP, N_CTX_Q, N_CTX_K, N_CTX_Q_BUCKET, N_CTX_K_BUCKET,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                     DEFER: tl.constexpr, SEQ_PAR: tl.constexpr, SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr,
                     TMA: tl.constexpr, WS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    off_hz = tl.program_id(1)
    off_z = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    off_hkv = off_h // GROUP  # GQA: query head h reads kv head h // GROUP
    Q += off_z * stride_qz + off_h * stride_qh
    K += off_z * stride_kz + off_hkv * stride_kh
    V += off_z * stride_vz + off_hkv * stride_vh
    Out += off_z * stride_oz + off_h * stride_oh
    if TMA:  # Hopper: tiles move by TMA through descriptors of this (batch, head)
        Q = tile_desc(Q, N_CTX_Q, stride_qm, HEAD_DIM, BLOCK_M, BLOCK_D)
        K = tile_desc(K, N_CTX_K, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_D)
        V = tile_desc(V, N_CTX_K, stride_vn, HEAD_DIM, BLOCK_N, BLOCK_D)
        Out = tile_desc(Out, N_CTX_Q, stride_om, HEAD_DIM, BLOCK_M, BLOCK_D)
    if SEQ_PAR:  # one program per Q block; causal: the last Q blocks see the most keys, start them first
        if CAUSAL:
            start_m = tl.num_programs(0) - 1 - tl.program_id(0)
        else:
            start_m = tl.program_id(0)
        _attn_fwd_block(start_m, Q, K, V, Out, LSE, LSUM, off_hz, sm_scale,
                        stride_qm, stride_qk, stride_kn, stride_kk, stride_vn, stride_vk, stride_om, stride_ok,
                        N_CTX_Q, N_CTX_K, HEAD_DIM, BLOCK_D, CAUSAL, DEFER, SKIP, DOT_PRECISION, BLOCK_M, BLOCK_N,
                        TMA, WS)
    else:  # rungs 3-4: one program per (batch, head) walks its Q blocks in turn
        for start_m in range(0, tl.cdiv(N_CTX_Q, BLOCK_M)):
            _attn_fwd_block(start_m, Q, K, V, Out, LSE, LSUM, off_hz, sm_scale,
                            stride_qm, stride_qk, stride_kn, stride_kk, stride_vn, stride_vk, stride_om, stride_ok,
                            N_CTX_Q, N_CTX_K, HEAD_DIM, BLOCK_D, CAUSAL, DEFER, SKIP, DOT_PRECISION, BLOCK_M, BLOCK_N,
                            TMA, WS)


# ----------------------------------------------------------------------------------------------------------------
# Backward: dK, dV per K/V block; dQ per Q block
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, Q, DO, DQ, stride_qm, stride_qk, stride_dom, stride_dok, stride_dqm, stride_dqk,
                         LSE, LSUM, Delta, lo, hi, offs_n, offs_m0, offs_d, sm_scale, diag, N_CTX_Q,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         MASK: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr,
                         DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, DQ_MODE: tl.constexpr):
    """Q rows [lo, hi) against one K/V block, everything transposed (keys on the rows): accumulate dK, dV.

    MASK=False: every row is in range and sees every key of the block. MASK=True: rows past seqlen_q and,
    if CAUSAL, the diagonal band. TMA: Q and dO are tensor descriptors. DQ_MODE 1 and 2 also add this block's
    share of dQ, sm_scale * dS K, into the fp32 buffer DQ (1: relaxed atomics through pointers; 2: a TMA
    reduction through the descriptor DQ); DQ_MODE 0 leaves dQ to the dQ kernel.
    """
    qk_scale = sm_scale * LOG2E
    if not TMA:
        q_ptrs = tile_ptrs(Q, lo + offs_m0, stride_qm, offs_d, stride_qk)
        do_ptrs = tile_ptrs(DO, lo + offs_m0, stride_dom, offs_d, stride_dok)
    if DQ_MODE == 1:
        dq_ptrs = tile_ptrs(DQ, lo + offs_m0, stride_dqm, offs_d, stride_dqk)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        if TMA:
            q = Q.load([start_m, 0])
        else:
            q = load_tile(q_ptrs, offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK)
        if MASK:
            lse = tl.load(LSE + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
        else:
            lse = tl.load(LSE + offs_m)
        # recompute P^T = exp2(qk_scale * K Q^T - L) from the stored statistics
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if not DEFER:  # rung 3 stores m and l: P = exp2(s - m) / l
            pT = pT * (1.0 / tl.load(LSUM + offs_m, mask=offs_m < N_CTX_Q, other=1.0))[None, :]
        if MASK:
            keep = offs_m[None, :] < N_CTX_Q
            if CAUSAL:
                keep = keep & (offs_n[:, None] <= offs_m[None, :] + diag)
            pT = tl.where(keep, pT, 0.0)
        if TMA:
            do = DO.load([start_m, 0])
        else:
            do = load_tile(do_ptrs, offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        if MASK:
            delta = tl.load(Delta + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
        else:
            delta = tl.load(Delta + offs_m)
        # dS^T = P^T * (dP^T - Delta), dP^T = V dO^T
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = (pT * (dpT - delta[None, :])).to(q.dtype)
        dk = tl.dot(dsT, q, dk, input_precision=DOT_PRECISION)
        if DQ_MODE != 0:  # dQ_i += sm_scale * dS_ij K_j (Algorithm 2, line 21)
            dq = tl.dot(tl.trans(dsT), k, input_precision=DOT_PRECISION) * sm_scale
            if DQ_MODE == 1:
                atomic_add_tile(dq_ptrs, dq, offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK)
                dq_ptrs += tl.cast(stride_dqm, tl.int64) * BLOCK_M
            else:
                DQ.atomic_add([start_m, 0], dq)
        if not TMA:
            q_ptrs += tl.cast(stride_qm, tl.int64) * BLOCK_M
            do_ptrs += tl.cast(stride_dom, tl.int64) * BLOCK_M
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_block(start_n, Q, K, V, DO, DK, DV, DQ, LSE, LSUM, Delta, sm_scale, off_z, off_hkv,
                         stride_qz, stride_qh, stride_qm, stride_qk, stride_kn, stride_kk, stride_vn, stride_vk,
                         stride_doz, stride_doh, stride_dom, stride_dok, stride_dkn, stride_dkk,
                         stride_dvn, stride_dvk, stride_dqz, stride_dqh, stride_dqm, stride_dqk, H, GROUP, N_CTX_Q,
                         N_CTX_K, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                         DEFER: tl.constexpr, SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
                         DQ_MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    # k and v stay on chip throughout
    k = load_tile(tile_ptrs(K, offs_n, stride_kn, offs_d, stride_kk), offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, True)
    v = load_tile(tile_ptrs(V, offs_n, stride_vn, offs_d, stride_vk), offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    diag = N_CTX_K - N_CTX_Q  # query i sees keys j <= i + diag
    if SKIP:
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
    # [mid, end): whole unmasked steps; [end, N_CTX_Q): the ragged last step, masked
    end = mid + tl.maximum(N_CTX_Q - mid, 0) // BLOCK_M * BLOCK_M
    for g in range(GROUP):  # the query heads sharing this kv head
        off_h = off_hkv * GROUP + g
        off_hz = off_z * H + off_h
        Qh = Q + off_z * stride_qz + off_h * stride_qh
        DOh = DO + off_z * stride_doz + off_h * stride_doh
        DQh = DQ + off_z * stride_dqz + off_h * stride_dqh
        if TMA:
            Qh = tile_desc(Qh, N_CTX_Q, stride_qm, HEAD_DIM, BLOCK_M, BLOCK_D)
            DOh = tile_desc(DOh, N_CTX_Q, stride_dom, HEAD_DIM, BLOCK_M, BLOCK_D)
        if DQ_MODE == 2:
            DQh = tile_desc(DQh, N_CTX_Q, stride_dqm, HEAD_DIM, BLOCK_M, BLOCK_D)
        rows = off_hz * N_CTX_Q
        for stage in tl.static_range(3):  # the masked band, the unmasked rows, the ragged last step
            if stage == 0:
                s_lo, s_hi = lo, mid
            elif stage == 1:
                s_lo, s_hi = mid, end
            else:
                s_lo, s_hi = end, N_CTX_Q
            dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, Qh, DOh, DQh, stride_qm, stride_qk, stride_dom, stride_dok,
                                          stride_dqm, stride_dqk, LSE + rows, LSUM + rows, Delta + rows, s_lo, s_hi,
                                          offs_n, offs_m0, offs_d, sm_scale, diag, N_CTX_Q, HEAD_DIM, BLOCK_D,
                                          BLOCK_M, stage != 1, CAUSAL, DEFER, DOT_PRECISION, TMA, DQ_MODE)
    dk *= sm_scale  # S = sm_scale * Q K^T
    store_tile(tile_ptrs(DK, offs_n, stride_dkn, offs_d, stride_dkk), dk.to(DK.dtype.element_ty),
               offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, True)
    store_tile(tile_ptrs(DV, offs_n, stride_dvn, offs_d, stride_dvk), dv.to(DV.dtype.element_ty),
               offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, True)


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, sm_scale, DO, DK, DV, DQ, LSE, LSUM, Delta,
                          stride_qz, stride_qh, stride_qm, stride_qk,
                          stride_kz, stride_kh, stride_kn, stride_kk,
                          stride_vz, stride_vh, stride_vn, stride_vk,
                          stride_doz, stride_doh, stride_dom, stride_dok,
                          stride_dkz, stride_dkh, stride_dkn, stride_dkk,
                          stride_dvz, stride_dvh, stride_dvn, stride_dvk,
                          stride_dqz, stride_dqh, stride_dqm, stride_dqk,
                          H, GROUP, N_CTX_Q, N_CTX_K, N_CTX_Q_BUCKET, N_CTX_K_BUCKET,
                          HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                          DEFER: tl.constexpr, SEQ_PAR: tl.constexpr, SKIP: tl.constexpr,
                          DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, WS: tl.constexpr, DQ_MODE: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    off_hkvz = tl.program_id(1)  # over batch * kv_heads
    H_KV = H // GROUP
    off_z = (off_hkvz // H_KV).to(tl.int64)
    off_hkv = (off_hkvz % H_KV).to(tl.int64)
    K += off_z * stride_kz + off_hkv * stride_kh
    V += off_z * stride_vz + off_hkv * stride_vh
    DK += off_z * stride_dkz + off_hkv * stride_dkh
    DV += off_z * stride_dvz + off_hkv * stride_dvh
    if SEQ_PAR:  # one program per K/V block
        _attn_bwd_dkdv_block(tl.program_id(0), Q, K, V, DO, DK, DV, DQ, LSE, LSUM, Delta, sm_scale, off_z, off_hkv,
                             stride_qz, stride_qh, stride_qm, stride_qk, stride_kn, stride_kk, stride_vn, stride_vk,
                             stride_doz, stride_doh, stride_dom, stride_dok, stride_dkn, stride_dkk,
                             stride_dvn, stride_dvk, stride_dqz, stride_dqh, stride_dqm, stride_dqk, H, GROUP,
                             N_CTX_Q, N_CTX_K, HEAD_DIM, BLOCK_D, CAUSAL, DEFER, SKIP, DOT_PRECISION, TMA, DQ_MODE,
                             BLOCK_M, BLOCK_N)
    else:  # rungs 3-4: one program per (batch, kv head) walks its K/V blocks in turn
        for start_n in range(0, tl.cdiv(N_CTX_K, BLOCK_N)):
            _attn_bwd_dkdv_block(start_n, Q, K, V, DO, DK, DV, DQ, LSE, LSUM, Delta, sm_scale, off_z, off_hkv,
                                 stride_qz, stride_qh, stride_qm, stride_qk, stride_kn, stride_kk, stride_vn,
                                 stride_vk, stride_doz, stride_doh, stride_dom, stride_dok, stride_dkn, stride_dkk,
                                 stride_dvn, stride_dvk, stride_dqz, stride_dqh, stride_dqm, stride_dqk, H, GROUP,
                                 N_CTX_Q, N_CTX_K, HEAD_DIM, BLOCK_D, CAUSAL, DEFER, SKIP, DOT_PRECISION, TMA,
                                 DQ_MODE, BLOCK_M, BLOCK_N)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, inv_l, delta, K, V, stride_kn, stride_kk, stride_vn, stride_vk, lo, hi,
                       offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                       MASK: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr, DOT_PRECISION: tl.constexpr,
                       TMA: tl.constexpr):
    """K/V blocks [lo, hi) against one Q block: accumulate dQ. Masks and TMA as in _attn_fwd_inner."""
    if not TMA:
        k_ptrs = tile_ptrs(K, lo + offs_n, stride_kn, offs_d, stride_kk)
        v_ptrs = tile_ptrs(V, lo + offs_n, stride_vn, offs_d, stride_vk)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if TMA:
            k = K.load([start_n, 0])
        else:
            k = load_tile(k_ptrs, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if not DEFER:
            p = p * inv_l[:, None]
        if MASK:
            keep = cols[None, :] < N_CTX_K
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        if TMA:
            v = V.load([start_n, 0])
        else:
            v = load_tile(v_ptrs, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
        if not TMA:
            k_ptrs += tl.cast(stride_kn, tl.int64) * BLOCK_N
            v_ptrs += tl.cast(stride_vn, tl.int64) * BLOCK_N
    return dq


@triton.jit
def _attn_bwd_dq_block(start_m, Q, K, V, DO, DQ, LSE, LSUM, Delta, sm_scale, off_hz,
                       stride_qm, stride_qk, stride_kn, stride_kk, stride_vn, stride_vk,
                       stride_dom, stride_dok, stride_dqm, stride_dqk, N_CTX_Q, N_CTX_K,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, DEFER: tl.constexpr,
                       SKIP: tl.constexpr, DOT_PRECISION: tl.constexpr, TMA: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # q, dO, the statistics and Delta stay on chip throughout
    if TMA:
        q = Q.load([start_m * BLOCK_M, 0])
        do = DO.load([start_m * BLOCK_M, 0])
    else:
        q = load_tile(tile_ptrs(Q, offs_m, stride_qm, offs_d, stride_qk), offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D,
                      True)
        do = load_tile(tile_ptrs(DO, offs_m, stride_dom, offs_d, stride_dok), offs_m, N_CTX_Q, offs_d,
                       HEAD_DIM, BLOCK_D, True)
    rows = off_hz.to(tl.int64) * N_CTX_Q + offs_m
    lse = tl.load(LSE + rows, mask=offs_m < N_CTX_Q, other=0.0)
    if DEFER:
        inv_l = lse  # unused
    else:
        inv_l = 1.0 / tl.load(LSUM + rows, mask=offs_m < N_CTX_Q, other=1.0)
    delta = tl.load(Delta + rows, mask=offs_m < N_CTX_Q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * LOG2E
    diag = N_CTX_K - N_CTX_Q
    if SKIP:  # the same stages as the forward pass
        if CAUSAL:
            lo = tl.minimum(tl.maximum(start_m * BLOCK_M + diag + 1, 0) // BLOCK_N, N_CTX_K // BLOCK_N) * BLOCK_N
            hi = tl.minimum(tl.maximum(start_m * BLOCK_M + BLOCK_M + diag, 0), N_CTX_K)
        else:
            lo = (N_CTX_K // BLOCK_N) * BLOCK_N
            hi = N_CTX_K
    else:
        lo = 0
        hi = N_CTX_K
    dq = _attn_bwd_dq_inner(dq, q, do, lse, inv_l, delta, K, V, stride_kn, stride_kk, stride_vn, stride_vk, 0, lo,
                            offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K, HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL,
                            DEFER, DOT_PRECISION, TMA)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, inv_l, delta, K, V, stride_kn, stride_kk, stride_vn, stride_vk, lo, hi,
                            offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K, HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL,
                            DEFER, DOT_PRECISION, TMA)
    dq *= sm_scale  # S = sm_scale * Q K^T
    store_tile(tile_ptrs(DQ, offs_m, stride_dqm, offs_d, stride_dqk), dq.to(DQ.dtype.element_ty),
               offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, True)


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, sm_scale, DO, DQ, LSE, LSUM, Delta,
                        stride_qz, stride_qh, stride_qm, stride_qk,
                        stride_kz, stride_kh, stride_kn, stride_kk,
                        stride_vz, stride_vh, stride_vn, stride_vk,
                        stride_doz, stride_doh, stride_dom, stride_dok,
                        stride_dqz, stride_dqh, stride_dqm, stride_dqk,
                        H, GROUP, N_CTX_Q, N_CTX_K, N_CTX_Q_BUCKET, N_CTX_K_BUCKET,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                        DEFER: tl.constexpr, SEQ_PAR: tl.constexpr, SKIP: tl.constexpr,
                        DOT_PRECISION: tl.constexpr, TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    off_hz = tl.program_id(1)
    off_z = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    off_hkv = off_h // GROUP
    Q += off_z * stride_qz + off_h * stride_qh
    K += off_z * stride_kz + off_hkv * stride_kh
    V += off_z * stride_vz + off_hkv * stride_vh
    DO += off_z * stride_doz + off_h * stride_doh
    DQ += off_z * stride_dqz + off_h * stride_dqh
    if TMA:
        Q = tile_desc(Q, N_CTX_Q, stride_qm, HEAD_DIM, BLOCK_M, BLOCK_D)
        DO = tile_desc(DO, N_CTX_Q, stride_dom, HEAD_DIM, BLOCK_M, BLOCK_D)
        K = tile_desc(K, N_CTX_K, stride_kn, HEAD_DIM, BLOCK_N, BLOCK_D)
        V = tile_desc(V, N_CTX_K, stride_vn, HEAD_DIM, BLOCK_N, BLOCK_D)
    if SEQ_PAR:
        if CAUSAL:
            start_m = tl.num_programs(0) - 1 - tl.program_id(0)
        else:
            start_m = tl.program_id(0)
        _attn_bwd_dq_block(start_m, Q, K, V, DO, DQ, LSE, LSUM, Delta, sm_scale, off_hz,
                           stride_qm, stride_qk, stride_kn, stride_kk, stride_vn, stride_vk,
                           stride_dom, stride_dok, stride_dqm, stride_dqk, N_CTX_Q, N_CTX_K,
                           HEAD_DIM, BLOCK_D, CAUSAL, DEFER, SKIP, DOT_PRECISION, TMA, BLOCK_M, BLOCK_N)
    else:
        for start_m in range(0, tl.cdiv(N_CTX_Q, BLOCK_M)):
            _attn_bwd_dq_block(start_m, Q, K, V, DO, DQ, LSE, LSUM, Delta, sm_scale, off_hz,
                               stride_qm, stride_qk, stride_kn, stride_kk, stride_vn, stride_vk,
                               stride_dom, stride_dok, stride_dqm, stride_dqk, N_CTX_Q, N_CTX_K,
                               HEAD_DIM, BLOCK_D, CAUSAL, DEFER, SKIP, DOT_PRECISION, TMA, BLOCK_M, BLOCK_N)


JIT_KERNELS = {"fwd": _attn_fwd_kernel, "bwd_dkdv": _attn_bwd_dkdv_kernel, "bwd_dq": _attn_bwd_dq_kernel}

# ----------------------------------------------------------------------------------------------------------------
# Autotune configs and the named filter that prunes them
# ----------------------------------------------------------------------------------------------------------------
def _cfg(block_m, block_n, warps, stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# Candidates, best-guess first: the filter keeps the first MAX_CONFIGS that fit, and the CPU interpreter runs
# the first of those. Large tiles suit head dims <= 128; head dim 256 falls through to the small ones at the end.
# fwd: BLOCK_M query rows per program, BLOCK_N keys per step.
_FWD_CANDIDATES = [
    _cfg(128, 64, 4, 3), _cfg(128, 128, 8, 2), _cfg(128, 64, 8, 3), _cfg(64, 64, 4, 3), _cfg(128, 128, 8, 3),
    _cfg(128, 64, 8, 2), _cfg(128, 32, 8, 2), _cfg(64, 64, 4, 2), _cfg(64, 32, 4, 3),
]
# bwd_dkdv: BLOCK_N keys per program, BLOCK_M query rows per step.
_DKDV_CANDIDATES = [
    _cfg(32, 128, 4, 3), _cfg(64, 128, 8, 2), _cfg(64, 128, 8, 3), _cfg(32, 128, 8, 3), _cfg(64, 64, 4, 3), _cfg(32, 64, 4, 4),
    _cfg(32, 64, 8, 2), _cfg(64, 64, 8, 2), _cfg(32, 32, 4, 2),
]
# bwd_dq: BLOCK_M query rows per program, BLOCK_N keys per step.
_DQ_CANDIDATES = [
    _cfg(128, 32, 4, 3), _cfg(128, 64, 8, 3), _cfg(64, 64, 4, 3), _cfg(128, 32, 8, 3), _cfg(64, 32, 4, 4),
    _cfg(64, 32, 4, 2), _cfg(128, 32, 8, 2), _cfg(64, 64, 8, 2),
]
_CANDIDATES = {"fwd": _FWD_CANDIDATES, "bwd_dkdv": _DKDV_CANDIDATES, "bwd_dq": _DQ_CANDIDATES}
# Used only when no candidate fits (fp32 inputs, whose tiles take twice the memory, at head dim 256).
_FALLBACK = {"fwd": _cfg(64, 32, 4, 1), "bwd_dkdv": _cfg(16, 32, 4, 1), "bwd_dq": _cfg(32, 32, 4, 1)}

SMEM_BUDGET = 224 * 1024  # bytes; H100 has 228 KB of shared memory per SM (227 KB usable by one block)
MAX_TILE_FP32_PER_THREAD = 192  # fp32 accumulator/score values per thread (of 255 registers) before spilling
MAX_CONFIGS = 6  # per kernel and head dim: each one costs a compile and a benchmark on the GPU


def fits_on_h100(kernel: str, conf: triton.Config, headdim: int, elt: int = 2) -> bool:
    """The named filter: keep a config whose tiles fit the H100's shared memory and registers.

    Shared memory: the tiles that stay on chip plus ``num_stages`` copies of the tiles streamed by the loop, at
    ``elt`` bytes per element (4 for fp32 inputs). Registers: fp32 accumulators plus the fp32 score tiles,
    spread over the program's threads.
    """
    bm, bn, d = conf.kwargs["BLOCK_M"], conf.kwargs["BLOCK_N"], block_d(headdim)
    threads = 32 * conf.num_warps
    stages = max(conf.num_stages, 1)
    if kernel == "fwd":  # Q stays; K, V stream. acc (BM x D) and S/P (BM x BN)
        smem = elt * (bm * d + stages * 2 * bn * d)
        regs = (bm * d + bm * bn) / threads
    elif kernel == "bwd_dkdv":  # K, V stay; Q, dO stream. dK, dV (BN x D) and P^T, dS^T (BN x BM)
        smem = elt * (2 * bn * d + stages * 2 * bm * d)
        regs = (2 * bn * d + 2 * bn * bm) / threads
    elif kernel == "bwd_dq":  # Q, dO stay; K, V stream. dQ (BM x D) and P, dS (BM x BN)
        smem = elt * (2 * bm * d + stages * 2 * bn * d)
        regs = (bm * d + 2 * bm * bn) / threads
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return smem <= SMEM_BUDGET and regs <= MAX_TILE_FP32_PER_THREAD


def pruned(kernel: str, configs: list[triton.Config], headdim: int, elt: int = 2,
           limit: int = MAX_CONFIGS) -> list[triton.Config]:
    kept = [c for c in configs if fits_on_h100(kernel, c, headdim, elt)][:limit]
    return kept or [_FALLBACK[kernel]]


def early_prune(kernel):
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        elt = args["Q"].element_size()
        if args.get("DOT_PRECISION") == "ieee":  # FMA dot products: one small config (_common.IEEE_MAX_TILE)
            return ieee_configs(pruned(kernel, configs, args["HEAD_DIM"], elt, limit=len(configs))) or [
                _FALLBACK[kernel]]
        return pruned(kernel, configs, args["HEAD_DIM"], elt)
    prune.__name__ = f"prune_{kernel}"
    return prune


# dtypes join the key automatically; the rung switches and the dot precision are part of it
TUNE_KEY = ["HEAD_DIM", "CAUSAL", "DEFER", "SEQ_PAR", "SKIP", "DOT_PRECISION", "TMA", "WS", "DQ_MODE", "N_CTX_Q_BUCKET",
            "N_CTX_K_BUCKET"]


def autotuned(candidates: dict, prune=early_prune) -> dict:
    """The three kernels, each autotuned over ``candidates[name]`` with the filter ``prune(name)`` (default: the
    named filter)."""
    return {name: triton.autotune(configs=candidates[name],
                                  key=[key for key in TUNE_KEY if key in JIT_KERNELS[name].arg_names],
                                  prune_configs_by={"early_config_prune": prune(name)},
                                  reset_to_zero=["DQ"] if name == "bwd_dkdv" else None,  # dQ accumulates
                                  do_bench=tune_bench)(JIT_KERNELS[name])
            for name in JIT_KERNELS}


_AUTOTUNED = autotuned(_CANDIDATES)
_LAUNCHER = Launcher(_AUTOTUNED, {name: early_prune(name) for name in _AUTOTUNED})
TRITON_KERNELS = {**_AUTOTUNED, "bwd_preprocess": bwd_preprocess}  # every kernel a launch runs (for profiling)
forced_configs = _LAUNCHER.forced_configs
last_config = _LAUNCHER.last_config


def configs(headdim: int) -> dict[str, list[triton.Config]]:
    """The autotune space after pruning, per autotuned kernel, for fp16/bf16 inputs of this head dim."""
    return {name: pruned(name, cands, headdim) for name, cands in _CANDIDATES.items()}


# ----------------------------------------------------------------------------------------------------------------
# autograd.Function and the public entry point
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """Compile-time switches of the kernels above (the ablation ladder's rungs 3-6 turn the first three off),
    the Hopper paths, and the launcher (autotune space) they run with."""
    defer: bool = True  # unscaled accumulator, one division at the end, log-sum-exp only
    seq_par: bool = True  # grid over Q blocks (forward, dQ) and K/V blocks (dK, dV) too
    skip: bool = True  # causal blocks above the diagonal skipped; unmasked / masked stages
    launcher: Launcher = _LAUNCHER
    # Tensor descriptors (TMA) for the tiles: "on" (every kernel), "off", or "auto": where they measured faster on
    # an H100 (docs/performance.md): the backward kernels at head dims <= TMA_AUTO_MAX_HEADDIM on sm_90+.
    tma: str = "off"
    warp_specialize: bool = False  # Triton's automatic warp specialisation of the forward's K/V loop (TMA only)
    dq: str = "kernel"  # dQ: "kernel" (its own kernel, deterministic), "atomic" (fp32 atomics from the dK/dV
    #                     kernel), "tma-reduce" (fp32 TMA reductions from the dK/dV kernel; needs TMA)


FA2 = Variant(tma="auto")
TMA_AUTO_MAX_HEADDIM = 64
DQ_MODES = {"kernel": 0, "atomic": 1, "tma-reduce": 2}


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


def _meta(headdim, causal, precision, variant) -> dict:
    return dict(HEAD_DIM=headdim, BLOCK_D=block_d(headdim), CAUSAL=causal, DEFER=variant.defer,
                SEQ_PAR=variant.seq_par, SKIP=variant.skip, DOT_PRECISION=precision)


def _forward(q, k, v, sm_scale, meta, variant):
    """Launch the forward: (o, lse, lsum); lse in the log2 domain (the running max m when not variant.defer,
    with lsum = l; lsum is lse itself when variant.defer)."""
    Z, H, N_CTX_Q, HEAD_DIM = q.shape
    H_KV, N_CTX_K = k.shape[1], k.shape[2]
    o = torch.empty_like(q)
    f32 = dict(device=q.device, dtype=torch.float32)
    lse = torch.empty((Z, H, N_CTX_Q), **f32)
    lsum = lse if variant.defer else torch.empty((Z, H, N_CTX_Q), **f32)
    tma = _use_tma(variant, False, q, k, v, o)
    if tma:
        ensure_tma_allocator()

    def grid(META):
        return (triton.cdiv(N_CTX_Q, META["BLOCK_M"]) if variant.seq_par else 1, Z * H)

    variant.launcher.launch("fwd", grid, q, k, v, sm_scale, lse, lsum, o,
                            *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                            H, H // H_KV, N_CTX_Q, N_CTX_K, _bucket(N_CTX_Q), _bucket(N_CTX_K), **meta,
                            TMA=tma, WS=tma and variant.warp_specialize)
    return o, lse, lsum


def _backward(q, k, v, o, lse, lsum, do, sm_scale, meta, variant):
    """Launch the backward (Delta, dK/dV with or without dQ, then dQ): (dq, dk, dv). lse and lsum are indexed as
    contiguous rows."""
    Z, H, N_CTX_Q, HEAD_DIM = q.shape
    H_KV, N_CTX_K = k.shape[1], k.shape[2]
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    tail = (H, H // H_KV, N_CTX_Q, N_CTX_K, _bucket(N_CTX_Q), _bucket(N_CTX_K))
    launch_preprocess(o, do, delta, meta["BLOCK_D"])
    tma = _use_tma(variant, True, q, k, v, do)
    dq_mode = DQ_MODES[variant.dq] if variant.seq_par else 0
    # dQ accumulates in fp32 from many programs; the dQ kernel writes it once in the input dtype
    dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32) if dq_mode else torch.empty_like(q)
    if dq_mode == 2 and (interpreting() or not (tma and tma_layout_ok(dq))):
        dq_mode = 1  # TMA reductions need descriptors (and a GPU: the interpreter lacks them); atomics add the same
    if tma or dq_mode == 2:
        ensure_tma_allocator()

    def grid_dkdv(META):
        return (triton.cdiv(N_CTX_K, META["BLOCK_N"]) if variant.seq_par else 1, Z * H_KV)

    variant.launcher.launch("bwd_dkdv", grid_dkdv, q, k, v, sm_scale, do, dk, dv, dq, lse, lsum, delta,
                            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
                            *dq.stride(), *tail, **meta, TMA=tma, WS=False, DQ_MODE=dq_mode)
    if dq_mode:
        return dq.to(q.dtype), dk, dv

    def grid_dq(META):
        return (triton.cdiv(N_CTX_Q, META["BLOCK_M"]) if variant.seq_par else 1, Z * H)

    variant.launcher.launch("bwd_dq", grid_dq, q, k, v, sm_scale, do, dq, lse, lsum, delta,
                            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(), *tail, **meta,
                            TMA=tma)
    return dq, dk, dv


class _attention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, precision, variant):
        meta = _meta(q.shape[-1], causal, precision, variant)
        o, lse, lsum = _forward(q, k, v, sm_scale, meta, variant)
        ctx.save_for_backward(q, k, v, o, lse, lsum)
        ctx.sm_scale, ctx.meta, ctx.variant = sm_scale, meta, variant
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, lsum = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, lsum, do, ctx.sm_scale, ctx.meta, ctx.variant)
        return dq, dk, dv, None, None, None, None


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


def flash2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     sm_scale: float | None = None, tf32: bool = False) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v with FlashAttention-2; differentiable in q, k and v.

    q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim), any strides, fp16, bf16 or
    fp32. Causal masking is aligned to the bottom-right corner. sm_scale defaults to headdim ** -0.5 and must be
    finite and positive. fp32 inputs run IEEE fp32 dot products unless ``tf32`` (ignored for fp16/bf16).
    """
    return run_variant(FA2, q, k, v, causal, sm_scale, tf32)
