"""FlashAttention (v1) in Triton: Algorithm 1 (forward) and the appendix backward (Algorithm 4, no dropout) of
Dao, Fu, Ermon, Rudra, Ré, "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness" (2022),
kept faithful in loop order and parallelism, so that the suite can measure what FlashAttention-2 changes.

    o = flash1_attention(q, k, v, causal=False, sm_scale=None, tf32=False)        # Algorithm 1 as published
    o = flash1_split_attention(q, k, v, causal=False, sm_scale=None, tf32=False)  # as released (flash-attn v1)

q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim), any strides; GQA/MQA (query
head h reads kv head h // (heads // kv_heads)); headdim 1..256 (padded to BLOCK_D, a power of two >= 16);
fp16, bf16, fp32 (IEEE fp32 dot products unless tf32=True); fp32 accumulation; differentiable; sm_scale finite
and positive (default headdim ** -0.5). Shared pieces (tile I/O with 64-bit row offsets, the Delta kernel, config
machinery) live in kernels/_common.py.

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

fa1-split (flash1_split_attention): FlashAttention-1 as released, the honest baseline for "FA2 vs FA1". The
flash-attn v1 CUDA code splits the same algorithm over extra thread blocks when batch x heads is small. Read:
Dao-AILab/flash-attention v1, csrc/flash_attn/src/fmha_fwd_launch_template.h (num_splits_heuristic_fwd,
run_fmha_fwd_loop) and fmha_bwd_launch_template.h (num_splits_heuristic_bwd, run_fmha_bwd_loop). Implemented here:
the forward grid is (batch * heads, splits), splits = fwd_splits(): the fewest splits (1..min(30, Q blocks)) whose
wave efficiency n_waves / ceil(n_waves) is within 95% of the best, as v1 (whose max_splits expression,
"seqlen_q + M - 1 / M", is min(30, seqlen_q + M) by precedence; we use the intended Q-block count); each split
runs the loop nest above over a contiguous share of the Q blocks (our choice: the stored v1 sources did not show
the kernel's assignment). The backward is v1's choice between no split and one program per K/V block
(bwd_splits(): wave efficiency, discounted by 1 + BLOCK_N / seqlen_k, causal by half that and always from 10
blocks); with a split, every program adds its dS K to a zeroed fp32 dQ buffer with atomics (v1's dq_tmp, so dQ is
not bit-reproducible) that is scaled and cast after the kernel. CTAs per SM are taken as 1 (v1 asks CUDA's
occupancy calculator; Triton has no occupancy before compiling); SMs are the GPU's (132 without a GPU).

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

import math

from . import _common  # noqa: F401  (first: importing it picks the CPU interpreter before Triton loads)
import torch
import triton
import triton.language as tl

from . import configs as spaces
from ._common import (LOG2E, Launcher, autotune, bwd_preprocess, check_inputs, check_scale, dot_precision,
                      ieee_configs, launch_preprocess, load_tile, store_tile, tile_ptrs)
from .configs import block_d

# ----------------------------------------------------------------------------------------------------------------
# Forward inner loop: one K/V block j against the Q blocks [lo, hi)


@triton.jit
def _attn_fwd_inner(kT, v, start_n, lo, hi,
                    Q, stride_qm, stride_qk, Out, stride_om, stride_ok, Acc, L, M,
                    qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    CAUSAL: tl.constexpr, MASK: tl.constexpr, MASK_M: tl.constexpr, DOT_PRECISION: tl.constexpr):
    off_diag = N_CTX_K - N_CTX_Q
    seen = start_n > 0  # has an earlier K/V block written O, l, m? (else start them afresh)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = tl.multiple_of(start_m, BLOCK_M) + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_CTX_Q
        q = load_tile(tile_ptrs(Q, offs_m, stride_qm, offs_d, stride_qk), offs_m, N_CTX_Q, offs_d,
                      HEAD_DIM, BLOCK_D, MASK_M)
        # running statistics and normalised output of these rows, from HBM
        m_i = tl.load(M + offs_m, mask=row_ok & seen, other=float("-inf"))
        l_i = tl.load(L + offs_m, mask=row_ok & seen, other=0.0)
        acc_ptrs = tile_ptrs(Acc, offs_m, HEAD_DIM, offs_d, 1)
        acc = tl.load(acc_ptrs, mask=seen & row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        # S_ij, in log2 units
        qk = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale
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
        pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
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
            store_tile(tile_ptrs(Out, offs_m, stride_om, offs_d, stride_ok), acc.to(Out.dtype.element_ty),
                       offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK_M)
        else:
            store_tile(acc_ptrs, acc, offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK_M)


# ----------------------------------------------------------------------------------------------------------------
# Autotune space (kernels/configs.py: FA1, one list per head-dim bucket) and the named filter


def _as_config(t) -> triton.Config:
    block_m, block_n, warps, stages = t
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


def _shape_of(cfg: triton.Config):
    return (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)


def _keep(kernel, configs, headdim, esize, precision):
    """The configs of ``kernel``'s head-dim bucket that fit in shared memory at this dtype (one small one for
    IEEE fp32), or the fallback."""
    by_shape = {_shape_of(c): c for c in configs}
    kept = [by_shape[t] for t in spaces.fa1_space(kernel, headdim, esize) if t in by_shape]
    if precision == "ieee":  # FMA dot products: one small config (configs.IEEE_MAX_TILE)
        kept = ieee_configs(kept)
    return kept or [by_shape[spaces.FA1_FALLBACK]]


def _prune_fwd_configs(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    return _keep("fwd", configs, args["BLOCK_D"], args["Q"].element_size(), args.get("DOT_PRECISION"))


def _prune_bwd_configs(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    return _keep("bwd", configs, args["BLOCK_D"], args["Q"].element_size(), args.get("DOT_PRECISION"))


# ----------------------------------------------------------------------------------------------------------------
# fa1-split: FlashAttention-1 as released splits its work over extra programs when batch x heads is small


H100_SMS = 132  # used when no GPU is present (CPU interpreter), so the CPU tests take the H100's decisions
_V1_MAX_SPLITS = 30


def num_sms() -> int:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return H100_SMS


def fwd_splits(batch_nheads: int, n_qblocks: int, sms: int, ctas_per_sm: int = 1) -> int:
    """flash-attn v1's ``num_splits_heuristic_fwd``: the fewest splits whose wave efficiency (programs / SM
    slots, over whole waves) is within 95% of the best, trying 1..min(30, Q blocks) splits."""
    max_splits = max(1, min(_V1_MAX_SPLITS, n_qblocks))
    eff = []
    for splits in range(1, max_splits + 1):
        waves = batch_nheads * splits / (sms * ctas_per_sm)
        eff.append(waves / math.ceil(waves))
    best = max(eff)
    return next(s for s, e in enumerate(eff, start=1) if e > 0.95 * best)


def bwd_splits(batch_nheads: int, seqlen_k: int, block_n: int, causal: bool, sms: int, ctas_per_sm: int = 1) -> int:
    """flash-attn v1's ``num_splits_heuristic_bwd``: 1, or one split per K/V block when that fills the GPU
    better (discounted by 1 + block_n / seqlen_k for the dQ round trip; causal prefers it from 10 blocks on)."""
    waves_1 = batch_nheads / (sms * ctas_per_sm)
    eff_1 = waves_1 / math.ceil(waves_1)
    parallel = max(1, seqlen_k // block_n)
    waves_p = batch_nheads * parallel / (sms * ctas_per_sm)
    eff_p = waves_p / math.ceil(waves_p)
    if causal:
        if parallel >= 10:
            return parallel
        discount = 1 + 0.5 * block_n / seqlen_k
    else:
        discount = 1 + block_n / seqlen_k
    return 1 if eff_1 >= eff_p / discount else parallel


def _bwd_split_count(args) -> int:
    if not args["SPLIT"]:
        return 1
    return bwd_splits(args["Z"] * (args["H"] // args["GROUP"]), args["N_CTX_K"], args["BLOCK_N"],
                      bool(args["CAUSAL"]), args["NUM_SMS"])


@triton.jit
def _split_rows(n_ctx, BLOCK: tl.constexpr):
    """This program's rows [lo, hi) of ``n_ctx``: a contiguous share of the ``BLOCK``-row blocks, split over the
    programs of grid axis 1 (all of them without a split)."""
    chunk = tl.cdiv(tl.cdiv(n_ctx, BLOCK), tl.num_programs(1)) * BLOCK
    lo = tl.program_id(1) * chunk
    return lo, tl.minimum(lo + chunk, n_ctx)


_HEURISTICS = {
    "MASK_M": lambda args: args["N_CTX_Q"] % args["BLOCK_M"] != 0,
    "MASK_N": lambda args: args["N_CTX_K"] % args["BLOCK_N"] != 0,
}
_BWD_HEURISTICS = {**_HEURISTICS, "ATOMIC_DQ": lambda args: _bwd_split_count(args) > 1}
# tuned per head dim, causal, split, dtype (the autotuner adds the tensors' dtypes) and a power-of-two seqlen bucket
_TUNE_KEY = ["HEAD_DIM", "CAUSAL", "SPLIT", "DOT_PRECISION", "SEQ_BUCKET"]


# ----------------------------------------------------------------------------------------------------------------
# Forward kernel: one program per (batch, head) and split; K/V blocks outer, Q blocks (of the split) inner


@autotune([_as_config(t) for t in spaces.fa1_all("fwd")], _TUNE_KEY, _prune_fwd_configs)
@triton.heuristics(_HEURISTICS)
@triton.jit(do_not_specialize=["SEQ_BUCKET"])
def _attn_fwd(Q, K, V, sm_scale, Out, Acc, L, M,
              stride_qz, stride_qh, stride_qm, stride_qk,
              stride_kz, stride_kh, stride_kn, stride_kk,
              stride_vz, stride_vh, stride_vn, stride_vk,
              stride_oz, stride_oh, stride_om, stride_ok,
              Z, H, N_CTX_Q, N_CTX_K, GROUP, SEQ_BUCKET, NUM_SMS,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, SPLIT: tl.constexpr,
              DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              MASK_M: tl.constexpr, MASK_N: tl.constexpr):
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
    q_lo, q_hi = _split_rows(N_CTX_Q, BLOCK_M)  # this program's Q rows (all of them without a split)
    qk_scale = sm_scale * LOG2E  # the loop uses exp2
    offs_d = tl.arange(0, BLOCK_D)
    off_diag = N_CTX_K - N_CTX_Q
    if CAUSAL:
        # Q blocks whose rows all see no key (seqlen_q > seqlen_k): zero output, l = 0, m = -inf
        for start_m in range(q_lo, tl.minimum(tl.maximum(-off_diag, 0) // BLOCK_M * BLOCK_M, q_hi), BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            store_tile(tile_ptrs(Out, offs_m, stride_om, offs_d, stride_ok),
                       tl.zeros([BLOCK_M, BLOCK_D], dtype=Out.dtype.element_ty),
                       offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, False)
            tl.store(L + offs_m, tl.zeros([BLOCK_M], dtype=tl.float32))
            tl.store(M + offs_m, tl.full([BLOCK_M], float("-inf"), dtype=tl.float32))
    for start_n in range(0, N_CTX_K, BLOCK_N):
        offs_n = tl.multiple_of(start_n, BLOCK_N) + tl.arange(0, BLOCK_N)
        # K_j, V_j stay on chip for the whole inner loop
        kT = tl.trans(load_tile(tile_ptrs(K, offs_n, stride_kn, offs_d, stride_kk), offs_n, N_CTX_K, offs_d,
                                HEAD_DIM, BLOCK_D, MASK_N))
        v = load_tile(tile_ptrs(V, offs_n, stride_vn, offs_d, stride_vk), offs_n, N_CTX_K, offs_d,
                      HEAD_DIM, BLOCK_D, MASK_N)
        if CAUSAL:
            # Q blocks before lo cannot see K/V block j; those in [lo, mid) straddle the diagonal (masked);
            # those from mid on see all of it (no mask)
            lo = tl.maximum(start_n - off_diag, 0) // BLOCK_M * BLOCK_M
            mid = (tl.maximum(start_n + BLOCK_N - 1 - off_diag, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
            mask_hi = tl.minimum(mid, N_CTX_Q)
        else:  # every Q block sees block j; mask only the ragged last K/V block
            lo = 0
            mid = 0
            if MASK_N:
                mid = (start_n + BLOCK_N > N_CTX_K).to(tl.int32) * N_CTX_Q
            mask_hi = mid
        _attn_fwd_inner(kT, v, start_n, tl.maximum(lo, q_lo), tl.minimum(mask_hi, q_hi),
                        Q, stride_qm, stride_qk, Out, stride_om, stride_ok, Acc, L, M,
                        qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, True, MASK_M, DOT_PRECISION)
        _attn_fwd_inner(kT, v, start_n, tl.maximum(mid, q_lo), q_hi,
                        Q, stride_qm, stride_qk, Out, stride_om, stride_ok, Acc, L, M,
                        qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                        HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, False, MASK_M, DOT_PRECISION)
        # O, l, m written for block j are read back for block j + 1, maybe by other threads (issue #10924)
        tl.debug_barrier()


# ----------------------------------------------------------------------------------------------------------------
# Backward: D = rowsum(dO * O) once (_common.bwd_preprocess), then one program per (batch, kv head) and split;
# K/V blocks (of the split) outer, Q blocks inner


@triton.jit
def _attn_bwd_inner(dk, dv, k, v, start_n, lo, hi,
                    Q, stride_qm, stride_qk, DO, stride_dom, stride_dok, DQ, stride_dqm, stride_dqk,
                    DQacc, L, M, Delta,
                    sm_scale, qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    CAUSAL: tl.constexpr, MASK: tl.constexpr, MASK_M: tl.constexpr, ATOMIC_DQ: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    off_diag = N_CTX_K - N_CTX_Q
    seen = start_n > 0  # has an earlier K/V block written dQ_i? (else start it at zero)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = tl.multiple_of(start_m, BLOCK_M) + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N_CTX_Q
        q = load_tile(tile_ptrs(Q, offs_m, stride_qm, offs_d, stride_qk), offs_m, N_CTX_Q, offs_d,
                      HEAD_DIM, BLOCK_D, MASK_M)
        do = load_tile(tile_ptrs(DO, offs_m, stride_dom, offs_d, stride_dok), offs_m, N_CTX_Q, offs_d,
                       HEAD_DIM, BLOCK_D, MASK_M)
        # padded rows: m = +inf, l = 1, so P = 0 there
        m_i = tl.load(M + offs_m, mask=row_ok, other=float("inf"))
        l_i = tl.load(L + offs_m, mask=row_ok, other=1.0)
        Di = tl.load(Delta + offs_m, mask=row_ok, other=0.0)
        dq_ptrs = tile_ptrs(DQacc, offs_m, HEAD_DIM, offs_d, 1)
        dq_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
        # S_ij^T, in log2 units; keys along rows, queries along columns
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
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
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = (pT * (dpT - Di[None, :])).to(q.dtype)
        dk += tl.dot(dsT, q, input_precision=DOT_PRECISION)
        if ATOMIC_DQ:  # fa1-split's backward: other programs add to the same dQ_i (v1's fp32 dq_tmp)
            tl.atomic_add(dq_ptrs, tl.dot(tl.trans(dsT), k, input_precision=DOT_PRECISION), mask=dq_mask)
        else:
            # dQ_i += dS_ij K_j (times sm_scale when written out), read-modified-written in HBM
            dq = tl.load(dq_ptrs, mask=seen & dq_mask, other=0.0)
            dq = tl.dot(tl.trans(dsT), k, dq, input_precision=DOT_PRECISION)
            is_last = start_n + BLOCK_N >= N_CTX_K
            if CAUSAL:
                is_last = is_last | (start_m + BLOCK_M - 1 + off_diag < start_n + BLOCK_N)
            # the scaled, cast dQ_i is formed outside the branch: Triton 3.6's sm_90 pipeliner fails ("Failures
            # have been detected while processing an MLIR pass pipeline" in TritonGPUPipeline) when arithmetic on
            # the async wgmma result sits inside the scf.if (BLOCK_M = 64 configs); only the stores are conditional
            dq_out = (dq * sm_scale).to(DQ.dtype.element_ty)
            if is_last:
                store_tile(tile_ptrs(DQ, offs_m, stride_dqm, offs_d, stride_dqk), dq_out, offs_m, N_CTX_Q, offs_d,
                           HEAD_DIM, BLOCK_D, MASK_M)
            else:
                store_tile(dq_ptrs, dq, offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, MASK_M)
    return dk, dv


@autotune([_as_config(t) for t in spaces.fa1_all("bwd")], _TUNE_KEY, _prune_bwd_configs, reset_to_zero=["DQacc"])
@triton.heuristics(_BWD_HEURISTICS)
@triton.jit(do_not_specialize=["SEQ_BUCKET"])
def _attn_bwd(Q, K, V, sm_scale, DO, DQ, DK, DV, DQacc, L, M, Delta,
              stride_qz, stride_qh, stride_qm, stride_qk,
              stride_kz, stride_kh, stride_kn, stride_kk,
              stride_vz, stride_vh, stride_vn, stride_vk,
              stride_doz, stride_doh, stride_dom, stride_dok,
              stride_dqz, stride_dqh, stride_dqm, stride_dqk,
              stride_dkz, stride_dkh, stride_dkn, stride_dkk,
              stride_dvz, stride_dvh, stride_dvn, stride_dvk,
              Z, H, N_CTX_Q, N_CTX_K, GROUP, SEQ_BUCKET, NUM_SMS,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, SPLIT: tl.constexpr,
              DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              MASK_M: tl.constexpr, MASK_N: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    H_KV = H // GROUP
    pid = tl.program_id(0)
    off_z = (pid // H_KV).to(tl.int64)
    off_hk = (pid % H_KV).to(tl.int64)
    K += off_z * stride_kz + off_hk * stride_kh
    V += off_z * stride_vz + off_hk * stride_vh
    DK += off_z * stride_dkz + off_hk * stride_dkh
    DV += off_z * stride_dvz + off_hk * stride_dvh
    n_lo, n_hi = _split_rows(N_CTX_K, BLOCK_N)  # this program's K/V rows (all of them without a split)
    qk_scale = sm_scale * LOG2E  # the loop uses exp2
    offs_d = tl.arange(0, BLOCK_D)
    off_diag = N_CTX_K - N_CTX_Q
    if CAUSAL:
        if not ATOMIC_DQ:  # (with atomics, dQ comes from the zeroed fp32 buffer: zero there)
            # Q blocks whose rows all see no key (seqlen_q > seqlen_k): zero gradient
            for g in range(0, GROUP):
                off_h = off_hk * GROUP + g
                for start_m in range(0, tl.maximum(-off_diag, 0) // BLOCK_M * BLOCK_M, BLOCK_M):
                    offs_m = start_m + tl.arange(0, BLOCK_M)
                    store_tile(tile_ptrs(DQ + off_z * stride_dqz + off_h * stride_dqh, offs_m, stride_dqm, offs_d,
                                         stride_dqk), tl.zeros([BLOCK_M, BLOCK_D], dtype=DQ.dtype.element_ty),
                               offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, False)
    for start_n in range(n_lo, n_hi, BLOCK_N):
        offs_n = tl.multiple_of(start_n, BLOCK_N) + tl.arange(0, BLOCK_N)
        # K_j, V_j on chip; dK_j, dV_j accumulate on chip over every Q block of every query head of the group
        k = load_tile(tile_ptrs(K, offs_n, stride_kn, offs_d, stride_kk), offs_n, N_CTX_K, offs_d,
                      HEAD_DIM, BLOCK_D, MASK_N)
        v = load_tile(tile_ptrs(V, offs_n, stride_vn, offs_d, stride_vk), offs_n, N_CTX_K, offs_d,
                      HEAD_DIM, BLOCK_D, MASK_N)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        if CAUSAL:  # as in the forward: skip [0, lo), mask [lo, mid), no mask from mid on
            lo = tl.maximum(start_n - off_diag, 0) // BLOCK_M * BLOCK_M
            mid = (tl.maximum(start_n + BLOCK_N - 1 - off_diag, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
            mask_hi = tl.minimum(mid, N_CTX_Q)
        else:  # mask only the ragged last K/V block
            lo = 0
            mid = 0
            if MASK_N:
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
                                     HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, True, MASK_M, ATOMIC_DQ,
                                     DOT_PRECISION)
            dk, dv = _attn_bwd_inner(dk, dv, k, v, start_n, mid, N_CTX_Q,
                                     Qh, stride_qm, stride_qk, DOh, stride_dom, stride_dok, DQh, stride_dqm,
                                     stride_dqk, DQacc + row0 * HEAD_DIM, L + row0, M + row0, Delta + row0,
                                     sm_scale, qk_scale, N_CTX_Q, N_CTX_K, offs_n, offs_d,
                                     HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, CAUSAL, False, MASK_M, ATOMIC_DQ,
                                     DOT_PRECISION)
        store_tile(tile_ptrs(DK, offs_n, stride_dkn, offs_d, stride_dkk), (dk * sm_scale).to(DK.dtype.element_ty),
                   offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK_N)
        store_tile(tile_ptrs(DV, offs_n, stride_dvn, offs_d, stride_dvk), dv.to(DV.dtype.element_ty),
                   offs_n, N_CTX_K, offs_d, HEAD_DIM, BLOCK_D, MASK_N)
        # dQ written for block j is read back for block j + 1, maybe by other threads (issue #10924)
        tl.debug_barrier()


_AUTOTUNED = {"fwd": _attn_fwd, "bwd": _attn_bwd}
_PRUNE = {"fwd": _prune_fwd_configs, "bwd": _prune_bwd_configs}
_LAUNCHER = Launcher(_AUTOTUNED, _PRUNE)
TRITON_KERNELS = {**_AUTOTUNED, "bwd_preprocess": bwd_preprocess}  # every kernel a launch runs (for profiling)
forced_configs = _LAUNCHER.forced_configs
last_config = _LAUNCHER.last_config
config_cached = _LAUNCHER.config_cached


def configs(headdim: int) -> dict[str, list[triton.Config]]:
    """The autotune space of each autotuned kernel after pruning, for this head dim (fp16/bf16 inputs)."""
    probe = {"BLOCK_D": block_d(headdim), "Q": torch.empty(0, dtype=torch.float16)}
    return {name: _PRUNE[name](_AUTOTUNED[name].configs, {}, **probe) for name in _AUTOTUNED}


def _strides(prefix: str, t: torch.Tensor, names=("z", "h", "m", "k")) -> dict:
    return {f"stride_{prefix}{n}": s for n, s in zip(names, t.stride())}


class _FlashAttention1(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, precision, split):
        Z, H, N_CTX_Q, HEAD_DIM = q.shape
        N_CTX_K = k.shape[2]
        o = torch.empty_like(q)
        f32 = dict(device=q.device, dtype=torch.float32)
        acc = torch.empty((Z, H, N_CTX_Q, HEAD_DIM), **f32)  # normalised O between K/V blocks
        l = torch.empty((Z, H, N_CTX_Q), **f32)  # noqa: E741
        m = torch.empty((Z, H, N_CTX_Q), **f32)
        sms = num_sms()
        common = dict(Z=Z, H=H, N_CTX_Q=N_CTX_Q, N_CTX_K=N_CTX_K, GROUP=H // k.shape[1],
                      SEQ_BUCKET=triton.next_power_of_2(max(N_CTX_Q, N_CTX_K)), NUM_SMS=sms,
                      HEAD_DIM=HEAD_DIM, BLOCK_D=block_d(HEAD_DIM), CAUSAL=bool(causal), SPLIT=split,
                      DOT_PRECISION=precision)

        def grid(META):
            splits = fwd_splits(Z * H, triton.cdiv(N_CTX_Q, META["BLOCK_M"]), sms) if split else 1
            return (Z * H, splits)

        _LAUNCHER.launch("fwd", grid, Q=q, K=k, V=v, sm_scale=scale, Out=o, Acc=acc, L=l, M=m,
                         **_strides("q", q), **_strides("k", k, "zhnk"), **_strides("v", v, "zhnk"),
                         **_strides("o", o), **common)
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
        # dQ between K/V blocks; with a split, the zeroed sum that every split adds to (v1's dq_tmp)
        dq_acc = (torch.zeros if common["SPLIT"] else torch.empty)((Z, H, N_CTX_Q, HEAD_DIM), **f32)
        launch_preprocess(o, do, delta, common["BLOCK_D"])
        args = dict(Q=q, K=k, V=v, sm_scale=ctx.sm_scale, DO=do, DQ=dq, DK=dk, DV=dv, DQacc=dq_acc, L=l, M=m,
                    Delta=delta, **_strides("q", q), **_strides("k", k, "zhnk"), **_strides("v", v, "zhnk"),
                    **_strides("do", do), **_strides("dq", dq), **_strides("dk", dk, "zhnk"),
                    **_strides("dv", dv, "zhnk"), **common)

        def grid(META):
            return (Z * k.shape[1], _bwd_split_count({**args, **META}))

        cfg = _LAUNCHER.launch("bwd", grid, **args)
        if _bwd_split_count({**args, **cfg.kwargs}) > 1:  # v1: "copy dq_tmp to dq"
            dq.copy_(dq_acc * ctx.sm_scale)
        return dq, dk, dv, None, None, None, None


def _run(q, k, v, causal, sm_scale, tf32, split):
    shape = check_inputs(q, k, v)
    scale = check_scale(shape.headdim, sm_scale)
    return _FlashAttention1.apply(q, k, v, bool(causal), scale, dot_precision(q.dtype, tf32), split)


def flash1_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     sm_scale: float | None = None, tf32: bool = False) -> torch.Tensor:
    """FlashAttention-1 attention, softmax(q k^T * sm_scale) v, one program per (batch, head); see the module
    docstring. fp32 inputs run IEEE fp32 dot products unless ``tf32`` (ignored for fp16/bf16)."""
    return _run(q, k, v, causal, sm_scale, tf32, False)


def flash1_split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                           sm_scale: float | None = None, tf32: bool = False) -> torch.Tensor:
    """FlashAttention-1 as released (flash-attn v1): flash1_attention with its work split over extra programs
    when batch x heads is small (forward over Q blocks, backward over K/V blocks); see the module docstring."""
    return _run(q, k, v, causal, sm_scale, tf32, True)
