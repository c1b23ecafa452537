"""FlashAttention (v1) in Triton: Algorithm 1 (forward) and the appendix backward (Algorithm 4, no dropout) of
Dao, Fu, Ermon, Rudra, Ré, "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness" (2022),
kept faithful in loop order and parallelism, so that the suite can measure what FlashAttention-2 changes.

    o = flash1_attention(q, k, v, causal=False, sm_scale=None)

q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim), any strides; GQA/MQA (query
head h reads kv head h // (heads // kv_heads)); headdim 1..256 (padded to BLOCK_D, a power of two >= 16);
fp16, bf16, fp32 (fp32 tl.dot runs as tf32 on the GPU); fp32 accumulation; differentiable.

Forward (Algorithm 1). One program per (batch, head), nothing else in parallel. The OUTER loop runs over K/V
blocks j (K_j, V_j loaded once and kept on chip), the INNER loop over Q blocks i. For each (j, i) the program
loads Q_i and the running O_i, l_i, m_i from HBM, computes S_ij = Q_i K_j^T, the block's row max m~_ij, the new
m_new = max(m_i, m~_ij) and l_new = e^{m_i - m_new} l_i + rowsum(e^{S_ij - m_new}), and writes back

    O_i = diag(l_new)^-1 (diag(l_i) e^{m_i - m_new} O_i + e^{S_ij - m_new} V_j),    l_i = l_new,  m_i = m_new

so O is normalised at every step. (e^{m~_ij - m_new} P~_ij is computed in one step as e^{S_ij - m_new}, the
form FlashAttention-2's paper uses to restate Algorithm 1; it is the same quantity.) O lives in an fp32 HBM
scratch while j runs; the LAST K/V block a Q block sees writes it in the output dtype straight into the output
(no separate cast). l and m are stored separately, as fp32 (batch, heads, seqlen_q) buffers; m is kept in
log2 units (exponents use exp2 with qk_scale = sm_scale * log2(e)). The first K/V block starts O, l, m afresh
instead of loading them, so every launch is idempotent. Causal masking is aligned to the bottom-right corner
(query i sees keys j <= i + seqlen_k - seqlen_q): for each K/V block the inner loop skips the Q blocks that
cannot see it and masks only the Q blocks on the diagonal band; rows that see no key output zeros.

Backward (Algorithm 4 without dropout). One program per (batch, kv head), looping over the query heads of its
group, so dK and dV need no atomics. Outer loop over K/V blocks (dK_j, dV_j accumulated on chip), inner loop
over Q blocks: P = diag(l_i)^-1 e^{S_ij - m_i} is recomputed from Q_i, K_j and the stored l, m; dV_j += P^T dO_i;
dP = dO_i V_j^T; dS = P * (dP - D_i); dK_j += dS^T Q_i * scale; dQ_i += dS K_j * scale is read-modified-written
in an fp32 HBM scratch, and the last K/V block a Q block sees writes dQ_i in the input dtype. D = rowsum(dO * O)
is computed once by a small preprocessing kernel ("bwd_preprocess") instead of inside the inner loop as in
Algorithm 4 (one read of O instead of one per K/V block), as an fp32 row sum of the elementwise product, as
FlashAttention does.

The trap: O, l, m (forward) and dQ (backward) are stored to HBM and loaded back by the same program one K/V
block later. Triton does not order a global store and a later global load between different threads of one
program (the load may use another layout than the store; triton-lang/triton issue #10924), so a
tl.debug_barrier() ends every K/V block: within one K/V block each Q block is read and written once, and the
barrier orders those writes before the next block's reads.

Differences from its neighbour, kernels/flash2.py (FlashAttention-2): FA2 is parallel over Q blocks too (grid
over batch * heads * Q blocks), puts Q in the OUTER loop and K/V in the inner one, keeps an unscaled
accumulator in registers and divides by l once at the end, stores only the log-sum-exp, skips causal blocks
wholesale, and computes dQ in a separate kernel. Here O, l, m make a round trip through HBM per (K/V, Q) block
pair and only batch * heads programs run, which under-fills a 132-SM H100 at small batch * heads: that is the
algorithm being measured.

Not supported: dropout, attention bias / ALiBi, sliding windows, variable-length (packed) batches, KV cache,
head dims above 256. Tested on: the CPU through Triton's interpreter (tests/test_kernels.py, fp16 and fp32, every
autotune config forced); every config also compiled offline for sm_90 (Triton 3.6 and 3.9) to check shared memory
and register spills; on the GPU, an NVIDIA H100 80GB HBM3 with Triton 3.6 and torch 2.11 passes
tests/test_kernels_gpu.py (fp16 and bf16 up to seqlen 8k, head dims 64/128/256, GQA/MQA, every autotune config
forced, repeated runs bit-equal: the debug barriers hold).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from ._common import check_inputs, config_forcer, default_scale, describe_config, interpreting, tune_bench

# ----------------------------------------------------------------------------------------------------------------
# Tiles of (rows, head dim), masked only where the sizes are ragged


@triton.jit
def _load_tile(ptrs, offs_r, n_rows, offs_d, HEAD_DIM: tl.constexpr, EVEN_R: tl.constexpr, EVEN_D: tl.constexpr):
    if EVEN_R & EVEN_D:
        x = tl.load(ptrs)
    elif EVEN_R:
        x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    elif EVEN_D:
        x = tl.load(ptrs, mask=offs_r[:, None] < n_rows, other=0.0)
    else:
        x = tl.load(ptrs, mask=(offs_r[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    return x


@triton.jit
def _store_tile(ptrs, x, offs_r, n_rows, offs_d, HEAD_DIM: tl.constexpr, EVEN_R: tl.constexpr,
                EVEN_D: tl.constexpr):
    if EVEN_R & EVEN_D:
        tl.store(ptrs, x)
    elif EVEN_R:
        tl.store(ptrs, x, mask=offs_d[None, :] < HEAD_DIM)
    elif EVEN_D:
        tl.store(ptrs, x, mask=offs_r[:, None] < n_rows)
    else:
        tl.store(ptrs, x, mask=(offs_r[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


# ----------------------------------------------------------------------------------------------------------------
# Forward inner loop: one K/V block j against the Q blocks [lo, hi)


@triton.jit
def _attn_fwd_inner(kT, v, start_n, lo, hi,
                    Q, stride_qm, stride_qk, Out, stride_om, stride_ok, Acc, L, M,
                    qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    CAUSAL: tl.constexpr, MASK: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr):
    off_diag = N_CTX_K - N_CTX_Q
    seen = start_n > 0  # has an earlier K/V block written O, l, m? (else start them afresh)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = tl.multiple_of(start_m, BLOCK_M) + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_CTX_Q
        q = _load_tile(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qk,
                       offs_m, N_CTX_Q, offs_d, HEAD_DIM, EVEN_M, EVEN_D)
        # running statistics and normalised output of these rows, from HBM
        m_i = tl.load(M + offs_m, mask=row_ok & seen, other=float("-inf"))
        l_i = tl.load(L + offs_m, mask=row_ok & seen, other=0.0)
        acc_ptrs = Acc + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        acc = tl.load(acc_ptrs, mask=seen & row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        # S_ij, in log2 units
        qk = tl.dot(q, kT) * qk_scale
        if MASK:
            if CAUSAL:
                qk = tl.where(offs_n[None, :] <= offs_m[:, None] + off_diag, qk, float("-inf"))
            else:
                qk = tl.where(offs_n[None, :] < N_CTX_K, qk, float("-inf"))
        m_ij = tl.max(qk, 1)  # the block's row max, m~_ij
        m_new = tl.maximum(m_i, m_ij)
        if MASK:  # a row that has seen no key yet keeps m = -inf: subtract 0 instead, so P = 0, not NaN
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_sub = m_new
        p = tl.exp2(qk - m_sub[:, None])  # e^{m~_ij - m_new} P~_ij
        alpha = tl.exp2(m_i - m_sub)
        l_new = alpha * l_i + tl.sum(p, 1)
        # O_i <- diag(l_new)^-1 (diag(l_i) e^{m_i - m_new} O_i + e^{S_ij - m_new} V_j), as written
        pv = tl.dot(p.to(v.dtype), v)
        if MASK:
            # a row that has seen no key has l = 0 and a zero accumulator: it stays (and outputs) zero
            inv_l = 1.0 / tl.where(l_new > 0.0, l_new, 1.0)
        else:
            inv_l = 1.0 / l_new
        acc = acc * (alpha * l_i * inv_l)[:, None] + pv * inv_l[:, None]
        tl.store(L + offs_m, l_new, mask=row_ok)
        tl.store(M + offs_m, m_new, mask=row_ok)
        # the last K/V block this Q block sees writes the output; earlier ones the fp32 scratch
        is_last = start_n + BLOCK_N >= N_CTX_K
        if CAUSAL:
            is_last = is_last | (start_m + BLOCK_M - 1 + off_diag < start_n + BLOCK_N)
        if is_last:
            _store_tile(Out + offs_m[:, None] * stride_om + offs_d[None, :] * stride_ok,
                        acc.to(Out.dtype.element_ty), offs_m, N_CTX_Q, offs_d, HEAD_DIM, EVEN_M, EVEN_D)
        else:
            _store_tile(acc_ptrs, acc, offs_m, N_CTX_Q, offs_d, HEAD_DIM, EVEN_M, EVEN_D)


# ----------------------------------------------------------------------------------------------------------------
# Autotune space: (BLOCK_M, BLOCK_N, num_warps, num_stages) per head-dim bucket, and the named filter

# Chosen from offline sm_90 compiles (registers, spills, shared memory) of a wider candidate set. FA1 reads and
# writes the fp32 O (forward) and dQ (backward) scratch once per K/V block, so its HBM traffic falls as 1/BLOCK_N:
# large BLOCK_N is preferred, and small BLOCK_M where that avoids register spills.
_FWD_SPACE = {
    64: [(128, 64, 8, 2), (128, 128, 8, 2), (64, 128, 8, 2), (64, 64, 4, 3)],
    128: [(128, 64, 8, 2), (64, 128, 8, 2), (32, 128, 8, 2), (32, 64, 4, 2)],
    256: [(32, 128, 8, 2), (32, 64, 8, 2), (16, 128, 4, 2), (64, 64, 8, 2)],
}
_BWD_SPACE = {
    64: [(32, 128, 8, 2), (16, 128, 8, 2), (64, 64, 8, 2), (32, 64, 4, 2)],
    128: [(16, 128, 8, 2), (32, 64, 8, 2), (64, 32, 8, 2), (32, 128, 8, 2)],
    256: [(32, 32, 8, 2), (16, 32, 8, 2), (64, 32, 8, 1), (16, 64, 8, 2)],
}
# used only where nothing in the bucket fits in shared memory (fp32 at large head dims)
_FALLBACK = (32, 32, 4, 1)
# conservative shared-memory budget per program (H100: 227 KiB), for the estimates below
_SMEM_BUDGET = 200 * 1024


def _bucket(block_d: int) -> int:
    return 64 if block_d <= 64 else block_d


def _as_config(t) -> triton.Config:
    block_m, block_n, warps, stages = t
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


def _shape_of(cfg: triton.Config):
    return (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)


def _all_configs(space) -> list[triton.Config]:
    shapes = list(dict.fromkeys([t for ts in space.values() for t in ts] + [_FALLBACK]))
    return [_as_config(t) for t in shapes]


def _smem_fwd(t, block_d, esize):
    """K_j, V_j resident; Q_i pipelined over num_stages buffers; O_i's fp32 tile through a layout conversion."""
    block_m, block_n, _, stages = t
    return (2 * block_n + max(stages, 1) * block_m) * block_d * esize + block_m * block_d * 4


def _smem_bwd(t, block_d, esize):
    """K_j, V_j resident; Q_i, dO_i pipelined; dQ_i's fp32 tile converted; dS transposed through shared memory;
    the dK_j, dV_j epilogue converts a (BLOCK_N, BLOCK_D) fp32 tile (in halves)."""
    block_m, block_n, _, stages = t
    return ((2 * block_n + 2 * max(stages, 1) * block_m) * block_d * esize + block_m * block_d * 4
            + block_m * block_n * esize + block_n * block_d * 2)


def _keep(configs, space, smem, block_d, esize):
    by_shape = {_shape_of(c): c for c in configs}
    kept = [by_shape[t] for t in space[_bucket(block_d)]
            if t in by_shape and smem(t, block_d, esize) <= _SMEM_BUDGET]
    return kept or [c for c in configs if _shape_of(c) == _FALLBACK]


def _prune_fwd_configs(configs, named_args, **kwargs):
    """The forward's configs for this head-dim bucket that fit in shared memory at this dtype."""
    args = {**named_args, **kwargs}
    return _keep(configs, _FWD_SPACE, _smem_fwd, args["BLOCK_D"], args["Q"].element_size())


def _prune_bwd_configs(configs, named_args, **kwargs):
    """The backward's configs for this head-dim bucket that fit in shared memory at this dtype."""
    args = {**named_args, **kwargs}
    return _keep(configs, _BWD_SPACE, _smem_bwd, args["BLOCK_D"], args["Q"].element_size())


_HEURISTICS = {
    "EVEN_M": lambda args: args["N_CTX_Q"] % args["BLOCK_M"] == 0,
    "EVEN_N": lambda args: args["N_CTX_K"] % args["BLOCK_N"] == 0,
    "EVEN_D": lambda args: args["HEAD_DIM"] == args["BLOCK_D"],
}
# tuned per head dim, causal, dtype (the autotuner adds the tensors' dtypes) and a power-of-two seqlen bucket
_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "SEQ_BUCKET"]


# ----------------------------------------------------------------------------------------------------------------
# Forward kernel: one program per (batch, head); K/V blocks outer, Q blocks inner


@triton.autotune(configs=_all_configs(_FWD_SPACE), key=_TUNE_KEY,
                 prune_configs_by={"early_config_prune": _prune_fwd_configs}, do_bench=tune_bench)
@triton.heuristics(_HEURISTICS)
@triton.jit(do_not_specialize=["SEQ_BUCKET"])
def _attn_fwd(Q, K, V, sm_scale, Out, Acc, L, M,
              stride_qz, stride_qh, stride_qm, stride_qk,
              stride_kz, stride_kh, stride_kn, stride_kk,
              stride_vz, stride_vh, stride_vn, stride_vk,
              stride_oz, stride_oh, stride_om, stride_ok,
              Z, H, N_CTX_Q, N_CTX_K, GROUP, SEQ_BUCKET,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr):
    pid = tl.program_id(0)
    off_z = (pid // H).to(tl.int64)
    off_h = (pid % H).to(tl.int64)
    off_hk = off_h // GROUP
    Q += off_z * stride_qz + off_h * stride_qh
    K += off_z * stride_kz + off_hk * stride_kh
    V += off_z * stride_vz + off_hk * stride_vh
    Out += off_z * stride_oz + off_h * stride_oh
    row0 = (off_z * H + off_h) * N_CTX_Q  # l, m: (Z, H, N_CTX_Q); O scratch: (Z, H, N_CTX_Q, HEAD_DIM)
    L += row0
    M += row0
    Acc += row0 * HEAD_DIM
    qk_scale = sm_scale * 1.44269504  # 1/ln(2): the loop uses exp2
    offs_d = tl.arange(0, BLOCK_D)
    off_diag = N_CTX_K - N_CTX_Q
    if CAUSAL:
        # Q blocks whose rows all see no key (seqlen_q > seqlen_k): zero output, l = 0, m = -inf
        for start_m in range(0, tl.maximum(-off_diag, 0) // BLOCK_M * BLOCK_M, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            _store_tile(Out + offs_m[:, None] * stride_om + offs_d[None, :] * stride_ok,
                        tl.zeros([BLOCK_M, BLOCK_D], dtype=Out.dtype.element_ty),
                        offs_m, N_CTX_Q, offs_d, HEAD_DIM, True, EVEN_D)
            tl.store(L + offs_m, tl.zeros([BLOCK_M], dtype=tl.float32))
            tl.store(M + offs_m, tl.full([BLOCK_M], float("-inf"), dtype=tl.float32))
    for start_n in range(0, N_CTX_K, BLOCK_N):
        offs_n = tl.multiple_of(start_n, BLOCK_N) + tl.arange(0, BLOCK_N)
        # K_j, V_j stay on chip for the whole inner loop
        kT = tl.trans(_load_tile(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kk,
                                 offs_n, N_CTX_K, offs_d, HEAD_DIM, EVEN_N, EVEN_D))
        v = _load_tile(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vk,
                       offs_n, N_CTX_K, offs_d, HEAD_DIM, EVEN_N, EVEN_D)
        if CAUSAL:
            # Q blocks before lo cannot see K/V block j; those in [lo, mid) straddle the diagonal (masked);
            # those from mid on see all of it (no mask)
            lo = tl.maximum(start_n - off_diag, 0) // BLOCK_M * BLOCK_M
            mid = (tl.maximum(start_n + BLOCK_N - 1 - off_diag, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
            mask_hi = tl.minimum(mid, N_CTX_Q)
        else:  # every Q block sees block j; mask only the ragged last K/V block
            lo = 0
            mid = 0
            if not EVEN_N:
                mid = (start_n + BLOCK_N > N_CTX_K).to(tl.int32) * N_CTX_Q
            mask_hi = mid
        _attn_fwd_inner(kT, v, start_n, lo, mask_hi,
                        Q, stride_qm, stride_qk, Out, stride_om, stride_ok, Acc, L, M,
                        qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                        HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, True, EVEN_M, EVEN_D)
        _attn_fwd_inner(kT, v, start_n, mid, N_CTX_Q,
                        Q, stride_qm, stride_qk, Out, stride_om, stride_ok, Acc, L, M,
                        qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                        HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, False, EVEN_M, EVEN_D)
        # O, l, m written for block j are read back for block j + 1, maybe by other threads (issue #10924)
        tl.debug_barrier()


# ----------------------------------------------------------------------------------------------------------------
# Backward: D = rowsum(dO * O) once, then one program per (batch, kv head); K/V blocks outer, Q blocks inner


@triton.jit
def _attn_bwd_preprocess(O, DO, Delta,
                         stride_oz, stride_oh, stride_om, stride_ok,
                         stride_doz, stride_doh, stride_dom, stride_dok,
                         H, N_CTX_Q,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    off_zh = tl.program_id(1)
    off_z = (off_zh // H).to(tl.int64)
    off_h = (off_zh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < N_CTX_Q) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + off_z * stride_oz + off_h * stride_oh + offs_m[:, None] * stride_om
                + offs_d[None, :] * stride_ok, mask=mask, other=0.0)
    do = tl.load(DO + off_z * stride_doz + off_h * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :] * stride_dok, mask=mask, other=0.0)
    # D_i = rowsum(dO_i * O_i), in fp32
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + off_zh.to(tl.int64) * N_CTX_Q + offs_m, delta, mask=offs_m < N_CTX_Q)


@triton.jit
def _attn_bwd_inner(dk, dv, k, v, start_n, lo, hi,
                    Q, stride_qm, stride_qk, DO, stride_dom, stride_dok, DQ, stride_dqm, stride_dqk,
                    DQacc, L, M, Delta,
                    sm_scale, qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    CAUSAL: tl.constexpr, MASK: tl.constexpr, EVEN_M: tl.constexpr, EVEN_D: tl.constexpr):
    off_diag = N_CTX_K - N_CTX_Q
    seen = start_n > 0  # has an earlier K/V block written dQ_i? (else start it at zero)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = tl.multiple_of(start_m, BLOCK_M) + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_CTX_Q
        q = _load_tile(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qk,
                       offs_m, N_CTX_Q, offs_d, HEAD_DIM, EVEN_M, EVEN_D)
        do = _load_tile(DO + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dok,
                        offs_m, N_CTX_Q, offs_d, HEAD_DIM, EVEN_M, EVEN_D)
        # padded rows: m = +inf, l = 1, so P = 0 there
        m_i = tl.load(M + offs_m, mask=row_ok, other=float("inf"))
        l_i = tl.load(L + offs_m, mask=row_ok, other=1.0)
        Di = tl.load(Delta + offs_m, mask=row_ok, other=0.0)
        dq_ptrs = DQacc + offs_m[:, None] * HEAD_DIM + offs_d[None, :]
        dq = tl.load(dq_ptrs, mask=seen & row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        # S_ij^T, in log2 units; keys along rows, queries along columns
        qkT = tl.dot(k, tl.trans(q)) * qk_scale
        if MASK:
            if CAUSAL:
                qkT = tl.where(offs_n[:, None] <= offs_m[None, :] + off_diag, qkT, float("-inf"))
            else:
                qkT = tl.where(offs_n[:, None] < N_CTX_K, qkT, float("-inf"))
            # rows that see no key at all (l = 0, m = -inf): P = 0
            dead = l_i == 0.0
            m_i = tl.where(dead, float("inf"), m_i)
            l_i = tl.where(dead, 1.0, l_i)
        # P_ij = diag(l_i)^-1 e^{S_ij - m_i}, recomputed
        pT = tl.exp2(qkT - m_i[None, :]) * (1.0 / l_i)[None, :]
        dv += tl.dot(pT.to(do.dtype), do)
        dpT = tl.dot(v, tl.trans(do))
        dsT = (pT * (dpT - Di[None, :])).to(q.dtype)
        dk += tl.dot(dsT, q)
        # dQ_i += dS_ij K_j (times sm_scale when written out), read-modified-written in HBM
        dq = tl.dot(tl.trans(dsT), k, dq)
        is_last = start_n + BLOCK_N >= N_CTX_K
        if CAUSAL:
            is_last = is_last | (start_m + BLOCK_M - 1 + off_diag < start_n + BLOCK_N)
        # the scaled, cast dQ_i is formed outside the branch: Triton 3.6's sm_90 pipeliner fails ("Failures have
        # been detected while processing an MLIR pass pipeline" in TritonGPUPipeline) when arithmetic on the
        # async wgmma result sits inside the scf.if (BLOCK_M = 64 configs); only the stores are conditional
        dq_out = (dq * sm_scale).to(DQ.dtype.element_ty)
        if is_last:
            _store_tile(DQ + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqk,
                        dq_out, offs_m, N_CTX_Q, offs_d, HEAD_DIM, EVEN_M, EVEN_D)
        else:
            _store_tile(dq_ptrs, dq, offs_m, N_CTX_Q, offs_d, HEAD_DIM, EVEN_M, EVEN_D)
    return dk, dv


@triton.autotune(configs=_all_configs(_BWD_SPACE), key=_TUNE_KEY,
                 prune_configs_by={"early_config_prune": _prune_bwd_configs}, do_bench=tune_bench)
@triton.heuristics(_HEURISTICS)
@triton.jit(do_not_specialize=["SEQ_BUCKET"])
def _attn_bwd(Q, K, V, sm_scale, DO, DQ, DK, DV, DQacc, L, M, Delta,
              stride_qz, stride_qh, stride_qm, stride_qk,
              stride_kz, stride_kh, stride_kn, stride_kk,
              stride_vz, stride_vh, stride_vn, stride_vk,
              stride_doz, stride_doh, stride_dom, stride_dok,
              stride_dqz, stride_dqh, stride_dqm, stride_dqk,
              stride_dkz, stride_dkh, stride_dkn, stride_dkk,
              stride_dvz, stride_dvh, stride_dvn, stride_dvk,
              Z, H, N_CTX_Q, N_CTX_K, GROUP, SEQ_BUCKET,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr):
    H_KV = H // GROUP
    pid = tl.program_id(0)
    off_z = (pid // H_KV).to(tl.int64)
    off_hk = (pid % H_KV).to(tl.int64)
    K += off_z * stride_kz + off_hk * stride_kh
    V += off_z * stride_vz + off_hk * stride_vh
    DK += off_z * stride_dkz + off_hk * stride_dkh
    DV += off_z * stride_dvz + off_hk * stride_dvh
    qk_scale = sm_scale * 1.44269504  # 1/ln(2): the loop uses exp2
    offs_d = tl.arange(0, BLOCK_D)
    off_diag = N_CTX_K - N_CTX_Q
    if CAUSAL:
        # Q blocks whose rows all see no key (seqlen_q > seqlen_k): zero gradient
        for g in range(0, GROUP):
            off_h = off_hk * GROUP + g
            for start_m in range(0, tl.maximum(-off_diag, 0) // BLOCK_M * BLOCK_M, BLOCK_M):
                offs_m = start_m + tl.arange(0, BLOCK_M)
                _store_tile(DQ + off_z * stride_dqz + off_h * stride_dqh + offs_m[:, None] * stride_dqm
                            + offs_d[None, :] * stride_dqk, tl.zeros([BLOCK_M, BLOCK_D], dtype=DQ.dtype.element_ty),
                            offs_m, N_CTX_Q, offs_d, HEAD_DIM, True, EVEN_D)
    for start_n in range(0, N_CTX_K, BLOCK_N):
        offs_n = tl.multiple_of(start_n, BLOCK_N) + tl.arange(0, BLOCK_N)
        # K_j, V_j on chip; dK_j, dV_j accumulate on chip over every Q block of every query head of the group
        k = _load_tile(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kk,
                       offs_n, N_CTX_K, offs_d, HEAD_DIM, EVEN_N, EVEN_D)
        v = _load_tile(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vk,
                       offs_n, N_CTX_K, offs_d, HEAD_DIM, EVEN_N, EVEN_D)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        if CAUSAL:  # as in the forward: skip [0, lo), mask [lo, mid), no mask from mid on
            lo = tl.maximum(start_n - off_diag, 0) // BLOCK_M * BLOCK_M
            mid = (tl.maximum(start_n + BLOCK_N - 1 - off_diag, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
            mask_hi = tl.minimum(mid, N_CTX_Q)
        else:  # mask only the ragged last K/V block
            lo = 0
            mid = 0
            if not EVEN_N:
                mid = (start_n + BLOCK_N > N_CTX_K).to(tl.int32) * N_CTX_Q
            mask_hi = mid
        for g in range(0, GROUP):
            off_h = off_hk * GROUP + g
            row0 = (off_z * H + off_h) * N_CTX_Q  # l, m, D: (Z, H, N_CTX_Q); dQ scratch: (Z, H, N_CTX_Q, HEAD_DIM)
            Qh = Q + off_z * stride_qz + off_h * stride_qh
            DOh = DO + off_z * stride_doz + off_h * stride_doh
            DQh = DQ + off_z * stride_dqz + off_h * stride_dqh
            dk, dv = _attn_bwd_inner(dk, dv, k, v, start_n, lo, mask_hi,
                                     Qh, stride_qm, stride_qk, DOh, stride_dom, stride_dok, DQh, stride_dqm,
                                     stride_dqk, DQacc + row0 * HEAD_DIM, L + row0, M + row0, Delta + row0,
                                     sm_scale, qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                                     HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, True, EVEN_M, EVEN_D)
            dk, dv = _attn_bwd_inner(dk, dv, k, v, start_n, mid, N_CTX_Q,
                                     Qh, stride_qm, stride_qk, DOh, stride_dom, stride_dok, DQh, stride_dqm,
                                     stride_dqk, DQacc + row0 * HEAD_DIM, L + row0, M + row0, Delta + row0,
                                     sm_scale, qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                                     HEAD_DIM, BLOCK_M, BLOCK_N, CAUSAL, False, EVEN_M, EVEN_D)
        _store_tile(DK + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkk,
                    (dk * sm_scale).to(DK.dtype.element_ty), offs_n, N_CTX_K, offs_d, HEAD_DIM, EVEN_N, EVEN_D)
        _store_tile(DV + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvk,
                    dv.to(DV.dtype.element_ty), offs_n, N_CTX_K, offs_d, HEAD_DIM, EVEN_N, EVEN_D)
        # dQ written for block j is read back for block j + 1, maybe by other threads (issue #10924)
        tl.debug_barrier()


TRITON_KERNELS = {"fwd": _attn_fwd, "bwd_preprocess": _attn_bwd_preprocess, "bwd": _attn_bwd}
_AUTOTUNED = ("fwd", "bwd")
_PRUNE = {"fwd": _prune_fwd_configs, "bwd": _prune_bwd_configs}


# ----------------------------------------------------------------------------------------------------------------
# Launching: autotuned, forced, or (under the interpreter) the first config of the pruned list

_FORCED: dict[str, triton.Config] = {}
_LAST: dict[str, triton.Config] = {}
forced_configs = config_forcer(_FORCED, tuple(_AUTOTUNED))


def configs(headdim: int) -> dict[str, list[triton.Config]]:
    """The autotune space of each autotuned kernel after pruning, for this head dim (fp16/bf16 inputs)."""
    probe = {"BLOCK_D": _block_d(headdim), "Q": torch.empty(0, dtype=torch.float16)}
    return {name: _PRUNE[name](TRITON_KERNELS[name].configs, {}, **probe) for name in _AUTOTUNED}


def last_config() -> str:
    """The configs the most recent launches used, e.g. "fwd: BLOCK_M=128 BLOCK_N=64 w8 s2 | bwd: ..."."""
    return " | ".join(f"{name}: {describe_config(cfg)}" for name, cfg in _LAST.items())


def _block_d(headdim: int) -> int:
    return max(16, triton.next_power_of_2(headdim))


def _launch(name: str, grid, args: dict) -> None:
    kernel = TRITON_KERNELS[name]
    cfg = _FORCED.get(name)
    if cfg is None and interpreting():  # the autotuner cannot benchmark under the interpreter
        cfg = _PRUNE[name](kernel.configs, {}, **args)[0]
    if cfg is None:
        kernel[grid](**args)
        cfg = kernel.best_config
    else:
        kernel.fn[grid](**args, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _LAST[name] = cfg


def _strides(prefix: str, t: torch.Tensor, names=("z", "h", "m", "k")) -> dict:
    return {f"stride_{prefix}{n}": s for n, s in zip(names, t.stride())}


class _FlashAttention1(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale):
        shape = check_inputs(q, k, v)
        scale = default_scale(shape.headdim, sm_scale)
        Z, H, N_CTX_Q, HEAD_DIM = q.shape
        N_CTX_K = k.shape[2]
        o = torch.empty_like(q)
        f32 = dict(device=q.device, dtype=torch.float32)
        acc = torch.empty((Z, H, N_CTX_Q, HEAD_DIM), **f32)  # normalised O between K/V blocks
        l = torch.empty((Z, H, N_CTX_Q), **f32)  # noqa: E741
        m = torch.empty((Z, H, N_CTX_Q), **f32)
        common = dict(Z=Z, H=H, N_CTX_Q=N_CTX_Q, N_CTX_K=N_CTX_K, GROUP=shape.group,
                      SEQ_BUCKET=triton.next_power_of_2(max(N_CTX_Q, N_CTX_K)),
                      HEAD_DIM=HEAD_DIM, BLOCK_D=_block_d(HEAD_DIM), CAUSAL=bool(causal))
        _launch("fwd", (Z * H,), dict(
            Q=q, K=k, V=v, sm_scale=scale, Out=o, Acc=acc, L=l, M=m,
            **_strides("q", q), **_strides("k", k, "zhnk"), **_strides("v", v, "zhnk"), **_strides("o", o),
            **common))
        ctx.save_for_backward(q, k, v, o, l, m)
        ctx.sm_scale, ctx.common = scale, common
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, l, m = ctx.saved_tensors
        common = ctx.common
        Z, H, N_CTX_Q, HEAD_DIM = q.shape
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        f32 = dict(device=q.device, dtype=torch.float32)
        delta = torch.empty((Z, H, N_CTX_Q), **f32)
        dq_acc = torch.empty((Z, H, N_CTX_Q, HEAD_DIM), **f32)  # dQ between K/V blocks
        block_d = common["BLOCK_D"]
        block_m = 64
        TRITON_KERNELS["bwd_preprocess"][(triton.cdiv(N_CTX_Q, block_m), Z * H)](
            o, do, delta, *o.stride(), *do.stride(), H, N_CTX_Q,
            HEAD_DIM=HEAD_DIM, BLOCK_D=block_d, BLOCK_M=block_m, num_warps=4)
        _launch("bwd", (Z * k.shape[1],), dict(
            Q=q, K=k, V=v, sm_scale=ctx.sm_scale, DO=do, DQ=dq, DK=dk, DV=dv, DQacc=dq_acc, L=l, M=m, Delta=delta,
            **_strides("q", q), **_strides("k", k, "zhnk"), **_strides("v", v, "zhnk"), **_strides("do", do),
            **_strides("dq", dq), **_strides("dk", dk, "zhnk"), **_strides("dv", dv, "zhnk"),
            **common))
        return dq, dk, dv, None, None


def flash1_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     sm_scale: float | None = None) -> torch.Tensor:
    """FlashAttention-1 attention, softmax(q k^T * sm_scale) v; see the module docstring."""
    check_inputs(q, k, v)
    return _FlashAttention1.apply(q, k, v, causal, sm_scale)
