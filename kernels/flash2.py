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
   second time.

How it differs from its neighbour, ``kernels/flash1.py`` (FlashAttention-1 style, Dao et al. 2022): FA1 keeps
the output normalised inside the loop (rescaling O by l_old / l_new every block) and stores both l and m;
it loops over K/V blocks in the outer loop and Q blocks in the inner loop, re-reading and re-writing O in HBM;
and it is parallel over batch * heads only. FA2 swaps the loops (Q outer, K/V inner), keeps O on chip
unnormalised until the end, stores one log-sum-exp per row, and also parallelises over the sequence.

Everything is accumulated in fp32; P and dS are cast to the input dtype for the tensor-core matmuls. Head dims
that are not powers of two are padded to ``BLOCK_D = max(16, next_power_of_2(headdim))`` with masks on d.
Forward and both backward kernels are autotuned per head dim (keys: head dim, causal, dtype and the power-of-
two bucket of each sequence length; sequence lengths stay runtime ints, so no recompiles per length).

Not supported: dropout, ALiBi or any attention bias, sliding windows / local attention, softcapping,
variable-length (packed) batches, paged or cached KV, returning the LSE or the softmax, FP8, negative
``sm_scale``. The Hopper-only paths of Triton's tutorial (tensor descriptors / TMA, warp specialisation) are
deliberately not used: plain pointer loads with masks only, Triton >= 3.6.

Tested on: the CPU through Triton 3.9's interpreter (tests/test_kernels.py: fp16 and fp32, ragged and unequal
sequence lengths, GQA/MQA, head dims 16..256, causal and not, non-contiguous inputs); on the GPU, an NVIDIA H100
80GB HBM3 with Triton 3.6 and torch 2.11 passes tests/test_kernels_gpu.py (fp16 and bf16 up to seqlen 8k, head
dims 64/128/256, GQA/MQA, every autotune config forced, repeated runs bit-equal).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import check_inputs, config_forcer, default_scale, describe_config, interpreting, tune_bench


# ----------------------------------------------------------------------------------------------------------------
# Tile loads and the forward inner loop
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               MASK_ROWS: tl.constexpr):
    """Load a (rows, BLOCK_D) tile: rows past n_rows only when MASK_ROWS, the padded head dim only if any."""
    if MASK_ROWS:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def _store_tile(ptrs, x, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    if HEAD_DIM == BLOCK_D:
        tl.store(ptrs, x, mask=rows[:, None] < n_rows)
    else:
        tl.store(ptrs, x, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, lo, hi,
                    offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    MASK: tl.constexpr, CAUSAL: tl.constexpr):
    """One stage of Algorithm 1's inner loop over K/V blocks [lo, hi): online softmax, acc left unscaled.

    MASK=False: every row sees every key of these blocks (no mask at all). MASK=True: the ragged end of K and,
    if CAUSAL, the diagonal band (query i sees key j iff j <= i + diag).
    """
    k_ptrs += tl.cast(lo, tl.int64) * stride_kn
    v_ptrs += tl.cast(lo, tl.int64) * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_ptrs, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK)
        qk = tl.dot(q, tl.trans(k))
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
        # rescale the running sum and the unnormalised accumulator to the new max
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _load_tile(v_ptrs, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_ij
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


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
    _cfg(32, 128, 4, 3), _cfg(64, 128, 8, 3), _cfg(32, 128, 8, 3), _cfg(64, 64, 4, 3), _cfg(32, 64, 4, 4),
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

SMEM_BUDGET = 200 * 1024  # bytes; H100 has 228 KB of shared memory per SM (227 KB usable by one block)
MAX_TILE_FP32_PER_THREAD = 192  # fp32 accumulator/score values per thread (of 255 registers) before spilling
MAX_CONFIGS = 6  # per kernel and head dim: each one costs a compile and a benchmark on the GPU


def fits_on_h100(kernel: str, conf: triton.Config, headdim: int, elt: int = 2) -> bool:
    """The named filter: keep a config whose tiles fit the H100's shared memory and registers.

    Shared memory: the tiles that stay on chip plus ``num_stages`` copies of the tiles streamed by the loop.
    Registers: fp32 accumulators plus the fp32 score tiles, spread over the program's threads.
    """
    bm, bn, d = conf.kwargs["BLOCK_M"], conf.kwargs["BLOCK_N"], max(16, triton.next_power_of_2(headdim))
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


def _pruned(kernel: str, configs: list[triton.Config], headdim: int, elt: int = 2) -> list[triton.Config]:
    kept = [c for c in configs if fits_on_h100(kernel, c, headdim, elt)][:MAX_CONFIGS]
    return kept or [_FALLBACK[kernel]]


def _early_prune(kernel):
    def prune(configs, named_args, **kwargs):
        headdim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
        return _pruned(kernel, configs, headdim, named_args["Q"].element_size())
    prune.__name__ = f"prune_{kernel}"
    return prune


_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "N_CTX_Q_BUCKET", "N_CTX_K_BUCKET"]  # dtypes join the key automatically


def configs(headdim: int) -> dict[str, list[triton.Config]]:
    """The autotune space after pruning, per autotuned kernel, for fp16/bf16 inputs of this head dim."""
    return {name: _pruned(name, cands, headdim) for name, cands in _CANDIDATES.items()}


# ----------------------------------------------------------------------------------------------------------------
# Forward kernel
# ----------------------------------------------------------------------------------------------------------------
@triton.autotune(configs=_FWD_CANDIDATES, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _early_prune("fwd")},
                 do_bench=tune_bench)
@triton.jit
def _attn_fwd(Q, K, V, sm_scale, LSE, Out,
              stride_qz, stride_qh, stride_qm, stride_qk,
              stride_kz, stride_kh, stride_kn, stride_kk,
              stride_vz, stride_vh, stride_vn, stride_vk,
              stride_oz, stride_oh, stride_om, stride_ok,
              H, GROUP, N_CTX_Q, N_CTX_K, N_CTX_Q_BUCKET, N_CTX_K_BUCKET,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    if CAUSAL:  # the last Q blocks see the most keys: start them first
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    off_hz = tl.program_id(1)
    off_z = off_hz // H
    off_h = off_hz % H
    off_hkv = off_h // GROUP  # GQA: query head h reads kv head h // GROUP
    q_base = Q + off_z.to(tl.int64) * stride_qz + off_h.to(tl.int64) * stride_qh
    k_base = K + off_z.to(tl.int64) * stride_kz + off_hkv.to(tl.int64) * stride_kh
    v_base = V + off_z.to(tl.int64) * stride_vz + off_hkv.to(tl.int64) * stride_vh
    o_base = Out + off_z.to(tl.int64) * stride_oz + off_h.to(tl.int64) * stride_oh

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # q stays on chip throughout
    q = _load_tile(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qk, offs_m, N_CTX_Q, offs_d,
                   HEAD_DIM, BLOCK_D, True)
    k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kk
    v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vk
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30  # finite: a fully masked block gives no -inf - -inf
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # log2(e)

    diag = N_CTX_K - N_CTX_Q  # query i sees keys j <= i + diag (bottom-right aligned)
    if CAUSAL:
        # [0, lo): blocks the block's first row sees in full; [lo, hi): the diagonal band; past hi: skipped
        lo = tl.minimum(tl.maximum(start_m * BLOCK_M + diag + 1, 0) // BLOCK_N, N_CTX_K // BLOCK_N) * BLOCK_N
        hi = tl.minimum(tl.maximum(start_m * BLOCK_M + BLOCK_M + diag, 0), N_CTX_K)
    else:
        lo = (N_CTX_K // BLOCK_N) * BLOCK_N  # full blocks, then the ragged last one
        hi = N_CTX_K
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, lo,
                                    offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                                    HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, lo, hi,
                                    offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                                    HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL)

    # deferred normalisation: one division per row; rows that saw no key output 0 and store L = +inf
    dead = l_i == 0.0
    l_i = tl.where(dead, 1.0, l_i)
    acc = acc / l_i[:, None]
    lse = tl.where(dead, float("inf"), m_i + tl.math.log2(l_i))
    tl.store(LSE + off_hz.to(tl.int64) * N_CTX_Q + offs_m, lse, mask=offs_m < N_CTX_Q)
    _store_tile(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_ok, acc.to(Out.dtype.element_ty),
                offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D)


# ----------------------------------------------------------------------------------------------------------------
# Backward kernels
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _attn_bwd_preprocess(O, DO, Delta,
                         stride_oz, stride_oh, stride_om, stride_ok,
                         stride_doz, stride_doh, stride_dom, stride_dok,
                         H, N_CTX_Q,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """Delta_i = rowsum(dO_i * O_i), in fp32."""
    start_m = tl.program_id(0)
    off_hz = tl.program_id(1)
    off_z = off_hz // H
    off_h = off_hz % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(O + off_z.to(tl.int64) * stride_oz + off_h.to(tl.int64) * stride_oh
                   + offs_m[:, None] * stride_om + offs_d[None, :] * stride_ok,
                   offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, True)
    do = _load_tile(DO + off_z.to(tl.int64) * stride_doz + off_h.to(tl.int64) * stride_doh
                    + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dok,
                    offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(Delta + off_hz.to(tl.int64) * N_CTX_Q + offs_m, delta, mask=offs_m < N_CTX_Q)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptrs, delta_ptrs, stride_qm, stride_dom, lo, hi,
                         offs_n, offs_m0, offs_d, qk_scale, diag, N_CTX_Q,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         MASK: tl.constexpr, CAUSAL: tl.constexpr):
    """Q rows [lo, hi) against one K/V block, everything transposed (keys on the rows): accumulate dK, dV.

    MASK=False: every row is in range and sees every key of the block. MASK=True: rows past seqlen_q and,
    if CAUSAL, the diagonal band.
    """
    q_ptrs += tl.cast(lo, tl.int64) * stride_qm
    do_ptrs += tl.cast(lo, tl.int64) * stride_dom
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q = _load_tile(q_ptrs, offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK)
        if MASK:
            lse = tl.load(lse_ptrs + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
        else:
            lse = tl.load(lse_ptrs + offs_m)
        # recompute P^T = exp2(qk_scale * K Q^T - L) from the stored log-sum-exp
        qkT = tl.dot(k, tl.trans(q))
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if MASK:
            keep = offs_m[None, :] < N_CTX_Q
            if CAUSAL:
                keep = keep & (offs_n[:, None] <= offs_m[None, :] + diag)
            pT = tl.where(keep, pT, 0.0)
        do = _load_tile(do_ptrs, offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK)
        dv = tl.dot(pT.to(do.dtype), do, dv)
        if MASK:
            delta = tl.load(delta_ptrs + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
        else:
            delta = tl.load(delta_ptrs + offs_m)
        # dS^T = P^T * (dP^T - Delta), dP^T = V dO^T
        dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk)
        q_ptrs += BLOCK_M * stride_qm
        do_ptrs += BLOCK_M * stride_dom
    return dk, dv


@triton.autotune(configs=_DKDV_CANDIDATES, key=_TUNE_KEY,
                 prune_configs_by={"early_config_prune": _early_prune("bwd_dkdv")}, do_bench=tune_bench)
@triton.jit
def _attn_bwd_dkdv(Q, K, V, sm_scale, DO, DK, DV, LSE, Delta,
                   stride_qz, stride_qh, stride_qm, stride_qk,
                   stride_kz, stride_kh, stride_kn, stride_kk,
                   stride_vz, stride_vh, stride_vn, stride_vk,
                   stride_doz, stride_doh, stride_dom, stride_dok,
                   stride_dkz, stride_dkh, stride_dkn, stride_dkk,
                   stride_dvz, stride_dvh, stride_dvn, stride_dvk,
                   H, GROUP, N_CTX_Q, N_CTX_K, N_CTX_Q_BUCKET, N_CTX_K_BUCKET,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_n = tl.program_id(0)
    off_hkvz = tl.program_id(1)  # over batch * kv_heads
    H_KV = H // GROUP
    off_z = off_hkvz // H_KV
    off_hkv = off_hkvz % H_KV

    offs_n = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    # k and v stay on chip throughout
    k = _load_tile(K + off_z.to(tl.int64) * stride_kz + off_hkv.to(tl.int64) * stride_kh
                   + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kk,
                   offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, True)
    v = _load_tile(V + off_z.to(tl.int64) * stride_vz + off_hkv.to(tl.int64) * stride_vh
                   + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vk,
                   offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, True)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # log2(e)

    diag = N_CTX_K - N_CTX_Q  # query i sees keys j <= i + diag
    if CAUSAL:
        # rows before lo see no key of this block (skipped); rows from full see all of it. [lo, mid) is the
        # masked band, rounded up to whole steps of BLOCK_M.
        lo = tl.maximum(start_n * BLOCK_N - diag, 0)
        full = tl.maximum(start_n * BLOCK_N + BLOCK_N - 1 - diag, 0)
        mid = lo + (full - lo + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    else:
        lo = 0
        mid = 0
    # [mid, end): whole unmasked steps; [end, N_CTX_Q): the ragged last step, masked
    end = mid + tl.maximum(N_CTX_Q - mid, 0) // BLOCK_M * BLOCK_M

    for g in range(GROUP):  # the query heads sharing this kv head
        off_h = off_hkv * GROUP + g
        off_hz = off_z * H + off_h
        q_ptrs = (Q + off_z.to(tl.int64) * stride_qz + off_h.to(tl.int64) * stride_qh
                  + offs_m0[:, None] * stride_qm + offs_d[None, :] * stride_qk)
        do_ptrs = (DO + off_z.to(tl.int64) * stride_doz + off_h.to(tl.int64) * stride_doh
                   + offs_m0[:, None] * stride_dom + offs_d[None, :] * stride_dok)
        lse_ptrs = LSE + off_hz.to(tl.int64) * N_CTX_Q
        delta_ptrs = Delta + off_hz.to(tl.int64) * N_CTX_Q
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptrs, delta_ptrs, stride_qm, stride_dom,
                                      lo, mid, offs_n, offs_m0, offs_d, qk_scale, diag, N_CTX_Q,
                                      HEAD_DIM, BLOCK_D, BLOCK_M, True, CAUSAL)
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptrs, delta_ptrs, stride_qm, stride_dom,
                                      mid, end, offs_n, offs_m0, offs_d, qk_scale, diag, N_CTX_Q,
                                      HEAD_DIM, BLOCK_D, BLOCK_M, False, CAUSAL)
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptrs, delta_ptrs, stride_qm, stride_dom,
                                      end, N_CTX_Q, offs_n, offs_m0, offs_d, qk_scale, diag, N_CTX_Q,
                                      HEAD_DIM, BLOCK_D, BLOCK_M, True, CAUSAL)

    dk *= sm_scale  # S = sm_scale * Q K^T
    _store_tile(DK + off_z.to(tl.int64) * stride_dkz + off_hkv.to(tl.int64) * stride_dkh
                + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkk,
                dk.to(DK.dtype.element_ty), offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D)
    _store_tile(DV + off_z.to(tl.int64) * stride_dvz + off_hkv.to(tl.int64) * stride_dvh
                + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvk,
                dv.to(DV.dtype.element_ty), offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, lo, hi,
                       offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K,
                       HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                       MASK: tl.constexpr, CAUSAL: tl.constexpr):
    """K/V blocks [lo, hi) against one Q block: accumulate dQ. Masks as in _attn_fwd_inner."""
    k_ptrs += tl.cast(lo, tl.int64) * stride_kn
    v_ptrs += tl.cast(lo, tl.int64) * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_ptrs, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK)
        qk = tl.dot(q, tl.trans(k))
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASK:
            keep = cols[None, :] < N_CTX_K
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        v = _load_tile(v_ptrs, cols, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return dq


@triton.autotune(configs=_DQ_CANDIDATES, key=_TUNE_KEY,
                 prune_configs_by={"early_config_prune": _early_prune("bwd_dq")}, do_bench=tune_bench)
@triton.jit
def _attn_bwd_dq(Q, K, V, sm_scale, DO, DQ, LSE, Delta,
                 stride_qz, stride_qh, stride_qm, stride_qk,
                 stride_kz, stride_kh, stride_kn, stride_kk,
                 stride_vz, stride_vh, stride_vn, stride_vk,
                 stride_doz, stride_doh, stride_dom, stride_dok,
                 stride_dqz, stride_dqh, stride_dqm, stride_dqk,
                 H, GROUP, N_CTX_Q, N_CTX_K, N_CTX_Q_BUCKET, N_CTX_K_BUCKET,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    if CAUSAL:
        start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        start_m = tl.program_id(0)
    off_hz = tl.program_id(1)
    off_z = off_hz // H
    off_h = off_hz % H
    off_hkv = off_h // GROUP

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # q, dO, L and Delta stay on chip throughout
    q = _load_tile(Q + off_z.to(tl.int64) * stride_qz + off_h.to(tl.int64) * stride_qh
                   + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qk,
                   offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, True)
    do = _load_tile(DO + off_z.to(tl.int64) * stride_doz + off_h.to(tl.int64) * stride_doh
                    + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dok,
                    offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, True)
    lse = tl.load(LSE + off_hz.to(tl.int64) * N_CTX_Q + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
    delta = tl.load(Delta + off_hz.to(tl.int64) * N_CTX_Q + offs_m, mask=offs_m < N_CTX_Q, other=0.0)
    k_ptrs = (K + off_z.to(tl.int64) * stride_kz + off_hkv.to(tl.int64) * stride_kh
              + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kk)
    v_ptrs = (V + off_z.to(tl.int64) * stride_vz + off_hkv.to(tl.int64) * stride_vh
              + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vk)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # log2(e)

    diag = N_CTX_K - N_CTX_Q
    if CAUSAL:  # the same stages as the forward pass
        lo = tl.minimum(tl.maximum(start_m * BLOCK_M + diag + 1, 0) // BLOCK_N, N_CTX_K // BLOCK_N) * BLOCK_N
        hi = tl.minimum(tl.maximum(start_m * BLOCK_M + BLOCK_M + diag, 0), N_CTX_K)
    else:
        lo = (N_CTX_K // BLOCK_N) * BLOCK_N
        hi = N_CTX_K
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, lo,
                            offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K, HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL)
    dq = _attn_bwd_dq_inner(dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, lo, hi,
                            offs_m, offs_n, offs_d, qk_scale, diag, N_CTX_K, HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL)

    dq *= sm_scale  # S = sm_scale * Q K^T
    _store_tile(DQ + off_z.to(tl.int64) * stride_dqz + off_h.to(tl.int64) * stride_dqh
                + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqk,
                dq.to(DQ.dtype.element_ty), offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D)


TRITON_KERNELS = {
    "fwd": _attn_fwd,
    "bwd_preprocess": _attn_bwd_preprocess,
    "bwd_dkdv": _attn_bwd_dkdv,
    "bwd_dq": _attn_bwd_dq,
}
PREPROCESS_BLOCK_M = 64  # bwd_preprocess is memory-bound and not tuned

# ----------------------------------------------------------------------------------------------------------------
# Launching: autotuned, or one forced config (also the CPU interpreter's path: the autotuner cannot benchmark)
# ----------------------------------------------------------------------------------------------------------------
_FORCED: dict[str, triton.Config] = {}
_LAST: dict[str, str] = {}
forced_configs = config_forcer(_FORCED, tuple(_CANDIDATES))


def last_config() -> str:
    """The configs of the most recent forward and backward launches, e.g. 'fwd: BLOCK_M=128 ... | bwd_dkdv: ...'."""
    return " | ".join(f"{name}: {_LAST[name]}" for name in _CANDIDATES if name in _LAST)


def _launch(name, grid, args, headdim, elt, **kwargs):
    kernel = TRITON_KERNELS[name]
    conf = _FORCED.get(name)
    if conf is None and interpreting():
        conf = _pruned(name, _CANDIDATES[name], headdim, elt)[0]
    if conf is None:
        kernel[grid](*args, **kwargs)
        conf = kernel.best_config
    else:
        kernel.fn[grid](*args, **kwargs, **conf.all_kwargs())
    _LAST[name] = describe_config(conf)


def _bucket(n: int) -> int:
    return triton.next_power_of_2(n)


# ----------------------------------------------------------------------------------------------------------------
# autograd.Function and the public entry point
# ----------------------------------------------------------------------------------------------------------------
class _attention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale):
        Z, H, N_CTX_Q, HEAD_DIM = q.shape
        H_KV, N_CTX_K = k.shape[1], k.shape[2]
        BLOCK_D = max(16, triton.next_power_of_2(HEAD_DIM))
        o = torch.empty_like(q)
        lse = torch.empty((Z, H, N_CTX_Q), device=q.device, dtype=torch.float32)  # log2 domain
        meta = dict(HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D, CAUSAL=causal)

        def grid(META):
            return (triton.cdiv(N_CTX_Q, META["BLOCK_M"]), Z * H)

        _launch("fwd", grid,
                (q, k, v, sm_scale, lse, o, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
                 H, H // H_KV, N_CTX_Q, N_CTX_K, _bucket(N_CTX_Q), _bucket(N_CTX_K)),
                HEAD_DIM, q.element_size(), **meta)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        Z, H, N_CTX_Q, HEAD_DIM = q.shape
        H_KV, N_CTX_K = k.shape[1], k.shape[2]
        BLOCK_D = max(16, triton.next_power_of_2(HEAD_DIM))
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        delta = torch.empty_like(lse)
        meta = dict(HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D, CAUSAL=ctx.causal)
        tail = (H, H // H_KV, N_CTX_Q, N_CTX_K, _bucket(N_CTX_Q), _bucket(N_CTX_K))

        _attn_bwd_preprocess[(triton.cdiv(N_CTX_Q, PREPROCESS_BLOCK_M), Z * H)](
            o, do, delta, *o.stride(), *do.stride(), H, N_CTX_Q,
            HEAD_DIM=HEAD_DIM, BLOCK_D=BLOCK_D, BLOCK_M=PREPROCESS_BLOCK_M, num_warps=4 if BLOCK_D <= 64 else 8)

        def grid_dkdv(META):
            return (triton.cdiv(N_CTX_K, META["BLOCK_N"]), Z * H_KV)

        _launch("bwd_dkdv", grid_dkdv,
                (q, k, v, ctx.sm_scale, do, dk, dv, lse, delta, *q.stride(), *k.stride(), *v.stride(),
                 *do.stride(), *dk.stride(), *dv.stride(), *tail),
                HEAD_DIM, q.element_size(), **meta)

        def grid_dq(META):
            return (triton.cdiv(N_CTX_Q, META["BLOCK_M"]), Z * H)

        _launch("bwd_dq", grid_dq,
                (q, k, v, ctx.sm_scale, do, dq, lse, delta, *q.stride(), *k.stride(), *v.stride(),
                 *do.stride(), *dq.stride(), *tail),
                HEAD_DIM, q.element_size(), **meta)
        return dq, dk, dv, None, None


def flash2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     sm_scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v with FlashAttention-2; differentiable in q, k and v.

    q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim), any strides, fp16, bf16 or
    fp32. Causal masking is aligned to the bottom-right corner. sm_scale defaults to headdim ** -0.5.
    """
    shape = check_inputs(q, k, v)
    sm_scale = default_scale(shape.headdim, sm_scale)
    if not (math.isfinite(sm_scale) and sm_scale >= 0):
        raise ValueError(f"sm_scale must be a finite non-negative number, got {sm_scale}")
    return _attention.apply(q, k, v, bool(causal), sm_scale)
