"""FlashAttention-3-style backward for Hopper (sm_90) in Gluon: the backward of the ``fa3`` provider.

FlashAttention-2's backward (``kernels/flash2.py``: Delta = rowsum(dO * O), a dK/dV kernel, a separate dQ kernel, no
atomics) rebuilt with rung 8's Hopper machinery (``kernels/fa3.py``), after Shah et al., "FlashAttention-3" (2024),
Section 3 and Appendix B.1:

- **dK/dV kernel** (``_fa3_dkdv_kernel``): one CTA per (block of ``BLOCK_N`` = 128 keys, batch x kv head). A
  1-warp TMA producer partition loads the CTA's K and V block once, then streams the query blocks that see it
  (every query head of the GQA group in turn) through a ring of ``STAGES`` Q and dO buffers (``q_ready``,
  ``do_ready`` completed by the TMA engine, ``q_empty`` arrived by the consumers). The consumer partition (8 warps:
  two warpgroups of 64 keys each, so each holds half of dK and dV) works transposed, keys on the rows:
  S^T = K Q^T and dP^T = V dO^T (wgmma, both operands in shared memory, issued together), P^T = exp2(S^T * scale -
  L), dV += P^T dO (wgmma, P^T from registers), dS^T = P^T * (dP^T - Delta), dK += dS^T Q (dS^T from registers).
  The softmax statistics L and Delta of the block's query rows are loaded from global memory (L2) by the
  consumers, one value per thread, and spread to the columns through shared memory (a TMA row of them would need
  seqlen_q % 4 == 0). dK and dV are stored once, dK scaled by sm_scale.
- **dQ kernel** (``_fa3_dq_kernel``): one CTA per (block of 128 query rows, batch x head), Q and dO loaded once,
  K/V blocks of 64 keys streamed through a ring as in the forward (``k_ready``, ``v_ready``, ``kv_empty``); two
  consumer warpgroups of 64 rows each: S = Q K^T and dP = dO V^T, P = exp2(S * scale - L), dS = P * (dP - Delta),
  dQ += dS K. Deterministic (no atomics): repeated runs are bit-equal. It recomputes S and dP, two of the
  backward's seven matmuls (fa2's choice too).
- **dQ by atomics** (``fa3_backward(deterministic=False)``, provider ``fa3``'s backward; ``fa3-deterministic``
  keeps the dQ kernel above): instead of the dQ kernel,
  the dK/dV kernel (``ATOMIC_DQ``) stores dS^T to shared memory and computes each step's dQ_i = dS K by wgmma (the
  64 query rows as M, the head dim split between the two warpgroups), added with fp32 ``atomic_add`` (SASS REDG)
  into a zeroed buffer, scaled and cast at the end: five matmuls, not seven, and not bit-reproducible. Gluon 3.6's
  ``tma`` module has no reduce-add copy (FA3's route), so these are 32 (d128) or 16 (d64) atomics per thread per
  step. That route measured slower than the dQ kernel (docs/fa3.md section 8); with ``DQ_ATOMICS = "tma"`` (the
  default) the step's dQ tile goes to shared memory instead and one TMA reduce-add (``tma_reduce_add``: Gluon 3.6's
  builder has the op, 3.9 exports it as ``tma.async_atomic_add``; SASS UTMAREDG, as cuDNN's backward) adds it to
  the fp32 dQ; the wgmma for dQ is issued after dV and dK are done (their operands' registers freed) and the
  exponent is clamped at 0 instead of masking keys past seqlen_k (no register-heavy mask; a zero row of K adds 0).
- Register reallocation as in the forward: the producer warp gives its registers up (``worker_num_regs`` 24),
  the consumers rise to 240 (``setmaxnreg``).

What it is not (yet): not persistent (one CTA per tile, causal tiles with the most work launched first), no
ping-pong between the two consumer warpgroups, no overlap of the exponentials with the wgmmas beyond issuing
S^T and dP^T together (P^T is computed while dP^T runs). The backward is the same for all three forward kernels (rungs
8, 9, and the fa3-overlap attempt): it needs only O and the log-sum-exp, which all three store alike.

Conventions (fa2's): L is the forward's log2-domain log-sum-exp (+inf for a row that sees no key, which makes
its P exactly 0); causal aligned bottom-right (query i sees keys j <= i + seqlen_k - seqlen_q); GQA's dK, dV are
the sums over the query heads of the group; any sequence lengths (rows past the end load as TMA's zeros; query rows
past seqlen_q get L = +inf, so P = 0; keys past seqlen_k are masked in the dQ kernel and never stored by the dK/dV
kernel); fp16 and bf16; head dims 64 and 128; sm_90 only.

Tested: compiles for sm_90 under Triton 3.6 on a CPU machine (tests/test_fa3.py). Not run on a GPU when written.
"""
from __future__ import annotations

from ._common import check_inputs, check_scale, launch_preprocess  # first: the interpreter switch

import torch  # noqa: E402,I001
import triton  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton._C.libtriton import ir  # noqa: E402
from triton.experimental.gluon.language._core import builtin  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,  # noqa: E402
                                                             warpgroup_mma, warpgroup_mma_wait)

from . import fa3  # noqa: E402
from ._common import bwd_preprocess  # noqa: E402
from .fa3 import (LOG2E, _kv_blocks, _last, _tma_heads, seen_keys, smem_layout, thread_barrier,  # noqa: E402
                  tma_load, unsupported)

CONSUMER_WARPS = 8  # two consumer warpgroups; the producer warp comes on top
PRODUCER_REGS = gl.constexpr(24)  # the producer warp's registers under setmaxnreg
# How fa3_backward(deterministic=False) adds each step's dQ tile into the fp32 dQ: "tma", one TMA reduce-add
# (cp.reduce.async.bulk.tensor, SASS UTMAREDG: what cuDNN's and FA3's backwards do) of the tile staged in shared
# memory; "redg", fp32 atomics from registers (SASS REDG, 32 per thread per step at d128: measured slower than the
# dQ kernel, docs/fa3.md section 8). A module switch so both can be timed in one process.
DQ_ATOMICS = "tma"
# Query rows per dK/dV step, by (head dim, causal). At head dim 64 two studies (docs/fa3.md sections 17-18) beat the
# 64-row steps in every cell of an A/B (H100, `results/h100-fa3-bwd-tiles-ab`): 128 rows per step (the same
# barriers, statistics loads and reduce-add per step for twice the rows, each warpgroup's S^T and dP^T wgmmas 128
# wide, as FlashAttention-3's head-dim-64 backward tiles it) 1.09-1.27x, the larger gain and so the default under
# the causal mask; and the TMA-dQ route's steps overlapped (``_dkdv_steps_pipelined``: each step's S^T and dP^T
# under the previous step's dQ) 1.07-1.17x, the steadier of the two without the mask (128 rows there: 0.93-1.12x).
# At head dim 128 neither fits (128 rows: 295 KB of shared memory; overlapped: spills and serialised wgmmas).
DKDV_BLOCK_M = {(64, False): 64, (64, True): 128, (128, False): 64, (128, True): 64}
DKDV_PIPELINE = {(64, False): True, (64, True): False, (128, False): False, (128, True): False}
# The study of docs/fa3.md section 21 (the TMA-dQ route's steps that are not overlapped): each step issues dV's, dQ's
# and dK's wgmmas in that order (dK's dS^T read from shared memory, where dQ's already is, not from a register copy)
# and stages dQ's tile and hands it to the reduce-add while dK's runs, instead of after all three. Off until an A/B
# on the GPU says otherwise (tools/fa3_bwd_tiles_ab.py, variant dq-first).
DKDV_DQ_FIRST = {(64, False): False, (64, True): False, (128, False): False, (128, True): False}

if hasattr(tma, "async_atomic_add"):  # the public name in later Gluon (3.9)
    tma_reduce_add = tma.async_atomic_add
else:
    @builtin
    def tma_reduce_add(tensor_desc, coord, src, _semantic=None):
        """Add the shared-memory tile ``src`` into global memory at ``coord`` of ``tensor_desc`` (TMA reduce-add,
        asynchronous: ``tma.store_wait`` before ``src`` is written again). Triton 3.6's Gluon builder has the op
        (``ttng.async_tma_reduce``), its ``tma`` module not yet the function: this is 3.9's ``async_atomic_add``."""
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord,
                                                  src.handle)


def tiles(headdim: int, causal: bool = False, block_m: int | None = None, pipeline: bool | None = None,
          tma_dq: bool = True, dq_first: bool | None = None) -> dict:
    """dK/dV kernel: 128 keys x ``DKDV_BLOCK_M[headdim, causal]`` query rows per step, ``STAGES`` Q and dO
    buffers (d128: K, V 64 KiB + 2 x 32 KiB); dQ kernel: 128 query rows x 64 keys per step, ``DQ_STAGES`` K/V
    stages (d128: Q, dO 64 KiB + 2 x 32 KiB). The dK/dV accumulators' registers set the tiles (64 + 64 per thread at
    d128). ``LEAN_STATS`` with 128 query rows: the softmax statistics, one value per query column and so 32
    registers per thread each there, are held for the shortest time: L is spread to the columns after S^T's wait,
    and Delta starts dP^T's accumulator (the wgmma computes dP^T - Delta) instead of being subtracted after it.
    Held as at 64 rows they spilled in the step loop (Triton 3.6: 20 stores and 27 reloads per step at head dim
    64, none this way). ``PIPELINE``: the TMA-dQ route's steps overlapped (``_dkdv_steps_pipelined``). ``block_m``
    and ``pipeline`` override ``DKDV_BLOCK_M`` and ``DKDV_PIPELINE``, which are the TMA-dQ route's (``tma_dq``); the
    other routes keep 64 rows (the dQ-kernel route's 128-row step spills: 3 local accesses per step as launched).
    ``DQ_FIRST`` (``dq_first`` overrides ``DKDV_DQ_FIRST``): the TMA-dQ route's steps that are not overlapped issue
    dQ's wgmma before dK's and reduce its tile while dK's runs."""
    block_m = block_m or (DKDV_BLOCK_M[headdim, bool(causal)] if tma_dq else 64)
    if pipeline is None:  # the default where it fits (64 rows at head dim 64)
        pipeline = DKDV_PIPELINE[headdim, bool(causal)] and tma_dq and block_m * headdim <= 64 * 64
    if block_m not in (64, 128) or block_m * headdim > 128 * 64:
        raise ValueError(f"fa3 backward: {block_m} query rows per dK/dV step at head dim {headdim} (64, or 128 at 64)")
    if pipeline and block_m * headdim > 64 * 64:
        raise ValueError(f"fa3 backward: overlapped steps at {block_m} query rows and head dim {headdim} (only 64, 64)")
    if dq_first is None:
        dq_first = DKDV_DQ_FIRST[headdim, bool(causal)] and tma_dq and not pipeline
    if dq_first and (pipeline or not tma_dq):
        raise ValueError("fa3 backward: dQ first is a step of the TMA-dQ route that is not overlapped")
    return dict(BLOCK_N=128, BLOCK_M=block_m, STAGES=2, LEAN_STATS=block_m > 64, PIPELINE=pipeline,
                DQ_FIRST=dq_first, DQ_BLOCK_M=128, DQ_BLOCK_N=64, DQ_STAGES=2)


# ----------------------------------------------------------------------------------------------------------------
# dK/dV: K and V of one block stay in shared memory; Q and dO blocks stream past them


@gluon.jit
def _q_blocks(n0, N_CTX_Q, N_CTX_K, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """The query blocks that see keys [n0, n0 + BLOCK_N): [lo, mid) masked (the diagonal band), [mid, hi) whole."""
    hi = gl.cdiv(N_CTX_Q, BLOCK_M)
    if CAUSAL:
        diag = N_CTX_K - N_CTX_Q  # query i sees key j iff j <= i + diag
        lo = gl.minimum(gl.maximum(n0 - diag, 0) // BLOCK_M, hi)
        full = gl.maximum(n0 + BLOCK_N - 1 - diag, 0)  # the first row that sees every key of the block
        mid = gl.minimum(gl.maximum(gl.cdiv(full, BLOCK_M), lo), hi)
    else:
        lo = hi * 0
        mid = lo
    return lo, mid, hi


@gluon.jit
def _first_q_head(bhkv, H, GROUP):
    """batch * heads index of the first query head of kv head ``bhkv`` (batch * kv_heads index)."""
    H_KV = H // GROUP
    return bhkv // H_KV * H + bhkv % H_KV * GROUP


@gluon.jit
def _dkdv_producer(q_desc, do_desc, k_desc, v_desc, q_bufs, do_bufs, k_buf, v_buf, kv_ready, q_ready, do_ready,
                   q_empty, H, GROUP, N_CTX_Q, N_CTX_K, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    n0 = gl.program_id(0) * BLOCK_N
    bhkv = gl.program_id(1)
    mbarrier.expect(kv_ready.index(0), k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma_load(k_desc, [bhkv, n0, 0], kv_ready.index(0), k_buf)
    tma_load(v_desc, [bhkv, n0, 0], kv_ready.index(0), v_buf)
    lo, mid, hi = _q_blocks(n0, N_CTX_Q, N_CTX_K, CAUSAL, BLOCK_M, BLOCK_N)
    bh0 = _first_q_head(bhkv, H, GROUP)
    it = 0  # Q/dO blocks issued so far: stage it % STAGES, its use number it // STAGES
    for g in range(GROUP):
        for mb in range(lo, hi):
            s = it % STAGES
            mbarrier.wait(q_empty.index(s), (it // STAGES & 1) ^ 1)  # a fresh barrier passes phase 1 at once
            mbarrier.expect(q_ready.index(s), q_desc.block_type.nbytes)
            tma_load(q_desc, [bh0 + g, mb * BLOCK_M, 0], q_ready.index(s), q_bufs.index(s))
            mbarrier.expect(do_ready.index(s), do_desc.block_type.nbytes)
            tma_load(do_desc, [bh0 + g, mb * BLOCK_M, 0], do_ready.index(s), do_bufs.index(s))
            it += 1


@gluon.jit
def _diagonal(pt, n0, mb, N_CTX_Q, N_CTX_K):
    """P^T of keys n0.. (rows) and query block ``mb`` (columns) with the causal mask (key k sees query q iff
    k <= q + seqlen_k - seqlen_q). As one limit per key on the query's offset in the block (the forward's form,
    ``seen_keys``) the 64-row step was 29 instructions shorter at d64 as launched, but the 128-row step kept 34
    local accesses per step (none this way) and the plain-int builds spilled at d128 causal."""
    s_layout: gl.constexpr = pt.type.layout
    BLOCK_N: gl.constexpr = pt.shape[0]
    BLOCK_M: gl.constexpr = pt.shape[1]
    keys = n0 + gl.arange(0, BLOCK_N, gl.SliceLayout(1, s_layout))
    cols = mb * BLOCK_M + gl.arange(0, BLOCK_M, gl.SliceLayout(0, s_layout))
    return gl.where(keys[:, None] <= cols[None, :] + (N_CTX_K - N_CTX_Q), pt, 0.0)


@gluon.jit
def _dkdv_steps(dk, dv, k, v, q_bufs, do_bufs, q_ready, do_ready, q_empty, lse_row, delta_row, dq_rows, ds_smem,
                dq_desc, dq_smem, bh, it, lo, mid, hi, n0, qk_scale, N_CTX_Q, N_CTX_K, s_layout: gl.constexpr,
                MASK: gl.constexpr, STAGES: gl.constexpr, ATOMIC_DQ: gl.constexpr, DQ_TMA: gl.constexpr,
                LEAN_STATS: gl.constexpr, DQ_FIRST: gl.constexpr):
    """Query blocks [lo, hi) of one query head against the CTA's keys (transposed: keys on the rows). MASK (causal):
    blocks [lo, mid) are the diagonal band, masked under a runtime branch (two loops, masked and unmasked, as in
    the forward, spilled at head dim 128). Rows past seqlen_q need no mask: their L is +inf, so P = 0. Delta is
    spread to the columns only after P (its registers are not live across the S^T wgmma: d128 spilled).
    ATOMIC_DQ: dS^T also goes to shared memory, dQ_i = dS K by wgmma (M = the step's query rows, the head dim split
    between the warpgroups) and fp32 atomic adds into ``dq_rows`` (this query head's fp32 dQ rows), or with DQ_TMA
    the tile staged in ``dq_smem`` and added by one TMA reduce-add at rows of query head ``bh`` of ``dq_desc``.
    LEAN_STATS (``tiles``): L spread to the columns after S^T's wait, and dP^T's wgmma started from -Delta.
    DQ_FIRST (with DQ_TMA, ``tiles``): dQ's wgmma before dK's (dS^T from shared memory), its tile staged and
    reduced while dK's runs."""
    BLOCK_M: gl.constexpr = q_bufs.shape[2]
    HEAD_DIM: gl.constexpr = q_bufs.shape[3]
    BLOCK_N: gl.constexpr = k.shape[0]
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dk.type.layout, k_width=2)
    q_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
    # the statistics are loaded one per thread and spread to the columns through shared memory: loaded straight
    # into q_cols, each thread holds 16 64-bit pointers per vector, which LLVM hoists out of the loop (spills)
    flat: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    for mb in range(lo, hi):
        s = it % STAGES
        phase = it // STAGES & 1
        rows_1 = mb * BLOCK_M + gl.arange(0, BLOCK_M, flat)
        if LEAN_STATS:  # L goes to the columns after S^T's wait (below)
            lse_1 = gl.load(lse_row + rows_1, mask=rows_1 < N_CTX_Q, other=float("inf"))
        else:
            lse = gl.convert_layout(gl.load(lse_row + rows_1, mask=rows_1 < N_CTX_Q, other=float("inf")), q_cols)
        delta_1 = gl.load(delta_row + rows_1, mask=rows_1 < N_CTX_Q, other=0.0)
        mbarrier.wait(q_ready.index(s), phase)
        q = q_bufs.index(s).reshape([BLOCK_M, HEAD_DIM])
        zeros = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
        st = warpgroup_mma(k, q.permute((1, 0)), zeros, use_acc=False, is_async=True)  # S^T = K Q^T
        mbarrier.wait(do_ready.index(s), phase)
        do = do_bufs.index(s).reshape([BLOCK_M, HEAD_DIM])
        if LEAN_STATS:  # dP^T - Delta = V dO^T - Delta: Delta starts the accumulator
            dpt = warpgroup_mma(v, do.permute((1, 0)), zeros - gl.convert_layout(delta_1, q_cols)[None, :],
                                is_async=True)
        else:
            dpt = warpgroup_mma(v, do.permute((1, 0)), zeros, use_acc=False, is_async=True)  # dP^T = V dO^T
        st = warpgroup_mma_wait(num_outstanding=1, deps=(st,))
        if LEAN_STATS:
            lse = gl.convert_layout(lse_1, q_cols)
        if DQ_TMA:  # exponent <= 0 (P <= 1, as it is for every real key): a key past seqlen_k (a zero row of K)
            pt = gl.exp2(gl.minimum(st * qk_scale - lse[None, :], 0.0))  # then has a finite P and adds 0 to dQ
        else:
            pt = gl.exp2(st * qk_scale - lse[None, :])
        if MASK:
            if mb < mid:  # the diagonal band
                pt = _diagonal(pt, n0, mb, N_CTX_Q, N_CTX_K)
        if ATOMIC_DQ and not DQ_TMA:
            if n0 + BLOCK_N > N_CTX_K:  # keys past the end: their P may overflow, and dQ sums over the keys
                keys = n0 + gl.arange(0, BLOCK_N, gl.SliceLayout(1, s_layout))
                pt = gl.where(keys[:, None] < N_CTX_K, pt, 0.0)
        if LEAN_STATS:
            dpt = warpgroup_mma_wait(num_outstanding=0, deps=(dpt,))
            ds = (pt * dpt).to(q_bufs.dtype)  # dS^T
        else:
            delta = gl.convert_layout(delta_1, q_cols)
            dpt = warpgroup_mma_wait(num_outstanding=0, deps=(dpt,))
            ds = (pt * (dpt - delta[None, :])).to(q_bufs.dtype)  # dS^T
        if DQ_FIRST:  # P^T's operand before the barrier, so its fp32 registers are free across it
            pa = gl.convert_layout(pt.to(q_bufs.dtype), a_layout)
        if ATOMIC_DQ:
            ds_smem.store(ds)
            fence_async_shared()
            if DQ_TMA:  # the previous step's reduce has read dq_smem (long done: it had the whole S^T/dP^T phase)
                tma.store_wait(0)
            thread_barrier()  # both warpgroups' halves of dS^T are in shared memory (and dq_smem is free)
        if DQ_FIRST:  # dQ_i = dS K before dK's wgmma, so dK's runs while dQ's tile is staged and reduced
            dv = warpgroup_mma(pa, do, dv, is_async=True)  # dV += P^T dO
            dq = _dq_issue(ds_smem, k)
            dk = warpgroup_mma(ds_smem, q, dk, is_async=True)  # dK += dS^T Q, dS^T from shared memory
            dv, dq, pa = warpgroup_mma_wait(num_outstanding=1, deps=(dv, dq, pa))
            _dq_reduce(dq, dq_smem, dq_desc, bh, mb * BLOCK_M)
            dk = warpgroup_mma_wait(num_outstanding=0, deps=(dk,))
            mbarrier.arrive(q_empty.index(s), count=1)
        else:
            dsa = gl.convert_layout(ds, a_layout)
            pa = gl.convert_layout(pt.to(q_bufs.dtype), a_layout)
            dv = warpgroup_mma(pa, do, dv, is_async=True)  # dV += P^T dO
            dk = warpgroup_mma(dsa, q, dk, is_async=True)  # dK += dS^T Q (sm_scale at the end)
            if DQ_TMA:
                # dV and dK first, so P^T's and dS^T's registers are free before dQ's tile is allocated (all at once
                # they are 64 + 64 + 32 + 16 + 16 per thread at d128: spilled); the stage is free once they are done
                dv, dk, pa, dsa = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, pa, dsa))
                mbarrier.arrive(q_empty.index(s), count=1)
                dq = _dq_issue(ds_smem, k)
                _dq_reduce(warpgroup_mma_wait(num_outstanding=0, deps=(dq,)), dq_smem, dq_desc, bh, mb * BLOCK_M)
            elif ATOMIC_DQ:
                dq = _dq_issue(ds_smem, k)
                dv, dk, dq, pa, dsa = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, dq, pa, dsa))
                rows = mb * BLOCK_M + gl.arange(0, BLOCK_M, gl.SliceLayout(1, dq.type.layout))
                d_cols = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, dq.type.layout))
                gl.atomic_add(dq_rows + (rows * HEAD_DIM)[:, None] + d_cols[None, :], dq,
                              mask=(rows < N_CTX_Q)[:, None], sem="relaxed")
                mbarrier.arrive(q_empty.index(s), count=1)
            else:
                dv, dk, pa, dsa = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, pa, dsa))
                mbarrier.arrive(q_empty.index(s), count=1)
        it += 1
    return dk, dv, it


@gluon.jit
def _dkdv_issue(k, v, q_bufs, do_bufs, q_ready, do_ready, lse_row, delta_row, it, mb, N_CTX_Q,
                s_layout: gl.constexpr, STAGES: gl.constexpr, LEAN_STATS: gl.constexpr):
    """Step ``it`` (query block ``mb``): load its rows' L and Delta (one per thread) and issue S^T = K Q^T and dP^T =
    V dO^T (dP^T - Delta with LEAN_STATS) once its Q and dO have landed. Returns (S^T, dP^T, L, Delta), the two
    wgmmas in flight."""
    BLOCK_M: gl.constexpr = q_bufs.shape[2]
    HEAD_DIM: gl.constexpr = q_bufs.shape[3]
    BLOCK_N: gl.constexpr = k.shape[0]
    flat: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    s = it % STAGES
    phase = it // STAGES & 1
    rows_1 = mb * BLOCK_M + gl.arange(0, BLOCK_M, flat)
    lse_1 = gl.load(lse_row + rows_1, mask=rows_1 < N_CTX_Q, other=float("inf"))
    delta_1 = gl.load(delta_row + rows_1, mask=rows_1 < N_CTX_Q, other=0.0)
    zeros = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
    mbarrier.wait(q_ready.index(s), phase)
    st = warpgroup_mma(k, q_bufs.index(s).reshape([BLOCK_M, HEAD_DIM]).permute((1, 0)), zeros, use_acc=False,
                       is_async=True)
    mbarrier.wait(do_ready.index(s), phase)
    do_t = do_bufs.index(s).reshape([BLOCK_M, HEAD_DIM]).permute((1, 0))
    if LEAN_STATS:
        dpt = warpgroup_mma(v, do_t, zeros - gl.convert_layout(delta_1, gl.SliceLayout(0, s_layout))[None, :],
                            is_async=True)
    else:
        dpt = warpgroup_mma(v, do_t, zeros, use_acc=False, is_async=True)
    return st, dpt, lse_1, delta_1


@gluon.jit
def _dq_issue(ds_smem, k):
    """Issue dQ_i = dS K, dS read as the transpose of the step's dS^T in shared memory (M = the step's query rows,
    the head dim split between the two consumer warpgroups); returns the wgmma in flight."""
    BLOCK_M: gl.constexpr = ds_smem.shape[1]
    HEAD_DIM: gl.constexpr = k.shape[1]
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps() // 2, 2],
                                                     instr_shape=[16, HEAD_DIM // 2, 16])
    return warpgroup_mma(ds_smem.permute((1, 0)), k, gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, layout),
                         use_acc=False, is_async=True)


@gluon.jit
def _dq_reduce(dq, dq_smem, dq_desc, bh, m0):
    """Stage step's dQ tile (rows m0.. of query head ``bh``) in shared memory and add it into the fp32 dQ with one TMA
    reduce-add (rows past seqlen_q fall outside the head's box)."""
    dq_smem.reshape(dq.shape).store(dq)
    fence_async_shared()
    thread_barrier()  # the whole tile is in shared memory before one thread issues the reduce
    tma_reduce_add(dq_desc, [bh, m0, 0], dq_smem)


@gluon.jit
def _dkdv_steps_pipelined(dk, dv, k, v, q_bufs, do_bufs, q_ready, do_ready, q_empty, lse_row, delta_row, ds_smem,
                          dq_desc, dq_smem, bh, it, lo, mid, hi, n0, qk_scale, N_CTX_Q, N_CTX_K,
                          s_layout: gl.constexpr, MASK: gl.constexpr, STAGES: gl.constexpr,
                          LEAN_STATS: gl.constexpr):
    """``_dkdv_steps`` by the TMA-dQ route with the steps overlapped (PIPELINE, ``tiles``): step i+1's S^T and dP^T
    are issued right after step i's dQ wgmma, so they run while step i's dQ tile is waited for, staged in shared
    memory and handed to the reduce-add, instead of after it (the first step's before the loop). Each wgmma is
    waited for in the branch that issued it (Gluon's in-flight accumulators do not cross a branch or an iteration).
    The arithmetic is ``_dkdv_steps``'."""
    BLOCK_M: gl.constexpr = q_bufs.shape[2]
    HEAD_DIM: gl.constexpr = q_bufs.shape[3]
    BLOCK_N: gl.constexpr = k.shape[0]
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dk.type.layout, k_width=2)
    q_cols: gl.constexpr = gl.SliceLayout(0, s_layout)
    flat: gl.constexpr = gl.BlockedLayout([1], [32], [gl.num_warps()], [0])
    st = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
    dpt = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
    lse_1 = gl.zeros([BLOCK_M], gl.float32, flat)
    delta_1 = gl.zeros([BLOCK_M], gl.float32, flat)
    if lo < hi:
        st_f, dpt_f, lse_1, delta_1 = _dkdv_issue(k, v, q_bufs, do_bufs, q_ready, do_ready, lse_row, delta_row, it,
                                                  lo, N_CTX_Q, s_layout, STAGES, LEAN_STATS)
        st, dpt = warpgroup_mma_wait(num_outstanding=0, deps=(st_f, dpt_f))
    for mb in range(lo, hi):
        s = it % STAGES
        q = q_bufs.index(s).reshape([BLOCK_M, HEAD_DIM])
        do = do_bufs.index(s).reshape([BLOCK_M, HEAD_DIM])
        lse = gl.convert_layout(lse_1, q_cols)
        pt = gl.exp2(gl.minimum(st * qk_scale - lse[None, :], 0.0))  # as _dkdv_steps' TMA route
        if MASK:
            if mb < mid:  # the diagonal band
                pt = _diagonal(pt, n0, mb, N_CTX_Q, N_CTX_K)
        if LEAN_STATS:
            ds = (pt * dpt).to(q_bufs.dtype)  # dS^T (dP^T - Delta from the wgmma)
        else:
            ds = (pt * (dpt - gl.convert_layout(delta_1, q_cols)[None, :])).to(q_bufs.dtype)  # dS^T
        ds_smem.store(ds)
        fence_async_shared()
        tma.store_wait(0)  # the previous step's reduce has read dq_smem
        thread_barrier()  # both warpgroups' halves of dS^T are in shared memory (and dq_smem is free)
        dsa = gl.convert_layout(ds, a_layout)
        pa = gl.convert_layout(pt.to(q_bufs.dtype), a_layout)
        dv = warpgroup_mma(pa, do, dv, is_async=True)  # dV += P^T dO
        dk = warpgroup_mma(dsa, q, dk, is_async=True)  # dK += dS^T Q (sm_scale at the end)
        dv, dk, pa, dsa = warpgroup_mma_wait(num_outstanding=0, deps=(dv, dk, pa, dsa))
        mbarrier.arrive(q_empty.index(s), count=1)
        dq_f = _dq_issue(ds_smem, k)
        if mb + 1 < hi:  # the next step's S^T and dP^T run under this step's dQ and its reduce-add
            st_f, dpt_f, lse_1, delta_1 = _dkdv_issue(k, v, q_bufs, do_bufs, q_ready, do_ready, lse_row, delta_row,
                                                      it + 1, mb + 1, N_CTX_Q, s_layout, STAGES, LEAN_STATS)
            _dq_reduce(warpgroup_mma_wait(num_outstanding=2, deps=(dq_f,)), dq_smem, dq_desc, bh, mb * BLOCK_M)
            st, dpt = warpgroup_mma_wait(num_outstanding=0, deps=(st_f, dpt_f))
        else:
            _dq_reduce(warpgroup_mma_wait(num_outstanding=0, deps=(dq_f,)), dq_smem, dq_desc, bh, mb * BLOCK_M)
        it += 1
    return dk, dv, it


@gluon.jit
def _store_rows(ptr, acc, bh, r0, N_ROWS, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Rows r0.. of head ``bh`` of a contiguous (batch * heads, N_ROWS, HEAD_DIM) tensor, rows past N_ROWS left."""
    layout: gl.constexpr = acc.type.layout
    rows = r0 + gl.arange(0, ROWS, gl.SliceLayout(1, layout))
    cols = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, layout))
    off = (bh * N_ROWS + rows).to(gl.int64) * HEAD_DIM
    gl.store(ptr + off[:, None] + cols[None, :], acc, mask=(rows < N_ROWS)[:, None])


@gluon.jit
def _dkdv_consumer(q_bufs, do_bufs, k_buf, v_buf, ds_smem, dq_desc, dq_smem, kv_ready, q_ready, do_ready, q_empty, DK,
                   DV, DQ, LSE, Delta, sm_scale, qk_scale, H, GROUP, N_CTX_Q, N_CTX_K, CAUSAL: gl.constexpr,
                   STAGES: gl.constexpr, ATOMIC_DQ: gl.constexpr, DQ_TMA: gl.constexpr, LEAN_STATS: gl.constexpr,
                   PIPELINE: gl.constexpr, DQ_FIRST: gl.constexpr, num_warps: gl.constexpr):
    BLOCK_M: gl.constexpr = q_bufs.shape[2]
    HEAD_DIM: gl.constexpr = q_bufs.shape[3]
    BLOCK_N: gl.constexpr = k_buf.shape[1]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    n0 = gl.program_id(0) * BLOCK_N
    bhkv = gl.program_id(1)
    lo, mid, hi = _q_blocks(n0, N_CTX_Q, N_CTX_K, CAUSAL, BLOCK_M, BLOCK_N)
    bh0 = _first_q_head(bhkv, H, GROUP)
    dk = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, o_layout)
    dv = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, o_layout)
    mbarrier.wait(kv_ready.index(0), 0)
    k = k_buf.reshape([BLOCK_N, HEAD_DIM])
    v = v_buf.reshape([BLOCK_N, HEAD_DIM])
    it = 0
    for g in range(GROUP):  # the query heads sharing this kv head: dK, dV are their sums
        row0 = (bh0 + g).to(gl.int64) * N_CTX_Q  # this query head's statistics
        if PIPELINE:
            dk, dv, it = _dkdv_steps_pipelined(dk, dv, k, v, q_bufs, do_bufs, q_ready, do_ready, q_empty, LSE + row0,
                                               Delta + row0, ds_smem, dq_desc, dq_smem, bh0 + g, it, lo, mid, hi, n0,
                                               qk_scale, N_CTX_Q, N_CTX_K, s_layout, CAUSAL, STAGES, LEAN_STATS)
        else:
            dk, dv, it = _dkdv_steps(dk, dv, k, v, q_bufs, do_bufs, q_ready, do_ready, q_empty, LSE + row0,
                                     Delta + row0, DQ + row0 * HEAD_DIM, ds_smem, dq_desc, dq_smem, bh0 + g, it, lo,
                                     mid, hi, n0, qk_scale, N_CTX_Q, N_CTX_K, s_layout, CAUSAL, STAGES, ATOMIC_DQ,
                                     DQ_TMA, LEAN_STATS, DQ_FIRST)
    if DQ_TMA:
        tma.store_wait(0)  # the last reduce has read dq_smem before the CTA's shared memory is given up
    _store_rows(DK, (dk * sm_scale).to(q_bufs.dtype), bhkv, n0, N_CTX_K, BLOCK_N, HEAD_DIM)
    _store_rows(DV, dv.to(q_bufs.dtype), bhkv, n0, N_CTX_K, BLOCK_N, HEAD_DIM)


@gluon.jit
def _fa3_dkdv_kernel(q_desc, do_desc, k_desc, v_desc, dq_desc, DK, DV, DQ, LSE, Delta, sm_scale, qk_scale, H, GROUP,
                     N_CTX_Q, N_CTX_K, CAUSAL: gl.constexpr, STAGES: gl.constexpr, ATOMIC_DQ: gl.constexpr,
                     DQ_TMA: gl.constexpr, LEAN_STATS: gl.constexpr, PIPELINE: gl.constexpr,
                     DQ_FIRST: gl.constexpr, num_warps: gl.constexpr):
    """Grid (key blocks, batch * kv_heads). Shared memory: K and V of the block, STAGES Q and dO buffers (and, with
    ATOMIC_DQ, one dS^T tile; DQ is then the zeroed fp32 dQ, unscaled; otherwise unused). DQ_TMA (with ATOMIC_DQ):
    dQ added through ``dq_desc`` (the same fp32 dQ, blocks of BLOCK_M rows) from one fp32 tile in shared memory
    instead of atomics on ``DQ``; otherwise ``dq_desc`` is unused."""
    dtype: gl.constexpr = q_desc.dtype
    q_bufs = gl.allocate_shared_memory(dtype, [STAGES] + q_desc.block_type.shape, q_desc.layout)
    do_bufs = gl.allocate_shared_memory(dtype, [STAGES] + do_desc.block_type.shape, do_desc.layout)
    k_buf = gl.allocate_shared_memory(dtype, k_desc.block_type.shape, k_desc.layout)
    v_buf = gl.allocate_shared_memory(dtype, v_desc.block_type.shape, v_desc.layout)
    if ATOMIC_DQ:
        ds_shape: gl.constexpr = [k_desc.block_type.shape[1], q_desc.block_type.shape[1]]
        ds_smem = gl.allocate_shared_memory(dtype, ds_shape, gl.NVMMASharedLayout.get_default_for(ds_shape, dtype))
    else:
        ds_smem = k_buf  # unused
    if DQ_TMA:
        dq_smem = gl.allocate_shared_memory(dq_desc.dtype, dq_desc.block_type.shape, dq_desc.layout)
    else:
        dq_smem = k_buf  # unused
    kv_ready = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    do_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_ready.index(0), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(do_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
    gl.warp_specialize([  # (tuples written inline: bound to a name first, their constexprs become tensors)
        (_dkdv_consumer, (q_bufs, do_bufs, k_buf, v_buf, ds_smem, dq_desc, dq_smem, kv_ready, q_ready, do_ready,
                          q_empty, DK, DV, DQ, LSE, Delta, sm_scale, qk_scale, H, GROUP, N_CTX_Q, N_CTX_K, CAUSAL,
                          STAGES, ATOMIC_DQ, DQ_TMA, LEAN_STATS, PIPELINE, DQ_FIRST, num_warps)),
        (_dkdv_producer, (q_desc, do_desc, k_desc, v_desc, q_bufs, do_bufs, k_buf, v_buf, kv_ready, q_ready,
                          do_ready, q_empty, H, GROUP, N_CTX_Q, N_CTX_K, CAUSAL, STAGES)),
    ], [1], [PRODUCER_REGS])


# ----------------------------------------------------------------------------------------------------------------
# dQ: Q and dO of one block stay in shared memory; K and V blocks stream past them (the forward's loop)


@gluon.jit
def _dq_block_index(CAUSAL: gl.constexpr, N_CTX_Q, BLOCK_M: gl.constexpr):
    """This CTA's query block: under causal masking the last (longest) blocks are launched first."""
    if CAUSAL:
        return gl.cdiv(N_CTX_Q, BLOCK_M) - 1 - gl.program_id(0)
    else:
        return gl.program_id(0)


@gluon.jit
def _dq_producer(q_desc, do_desc, k_desc, v_desc, q_buf, do_buf, k_bufs, v_bufs, q_ready, k_ready, v_ready,
                 kv_empty, H, GROUP, N_CTX_Q, N_CTX_K, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    m0 = _dq_block_index(CAUSAL, N_CTX_Q, BLOCK_M) * BLOCK_M
    bh = gl.program_id(1)
    kv_bh = bh // H * (H // GROUP) + bh % H // GROUP  # batch * kv_heads index of query head bh
    mbarrier.expect(q_ready.index(0), q_desc.block_type.nbytes + do_desc.block_type.nbytes)
    tma_load(q_desc, [bh, m0, 0], q_ready.index(0), q_buf)
    tma_load(do_desc, [bh, m0, 0], q_ready.index(0), do_buf)
    n_full, n_blocks = _kv_blocks(m0, N_CTX_Q, N_CTX_K, CAUSAL, BLOCK_M, BLOCK_N)
    for j in range(n_blocks):
        s = j % STAGES
        mbarrier.wait(kv_empty.index(s), (j // STAGES & 1) ^ 1)
        mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
        tma_load(k_desc, [kv_bh, j * BLOCK_N, 0], k_ready.index(s), k_bufs.index(s))
        mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
        tma_load(v_desc, [kv_bh, j * BLOCK_N, 0], v_ready.index(s), v_bufs.index(s))


@gluon.jit
def _dq_steps(dq, q, do, lse, delta, k_bufs, v_bufs, k_ready, v_ready, kv_empty, lo, hi, m0, qk_scale, N_CTX_Q,
              N_CTX_K, s_layout: gl.constexpr, MASK: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    """K/V blocks [lo, hi) against the CTA's query rows. MASK: keys past seqlen_k and, if CAUSAL, the diagonal."""
    BLOCK_M: gl.constexpr = q.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.shape[2]
    HEAD_DIM: gl.constexpr = k_bufs.shape[3]
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dq.type.layout, k_width=2)
    for j in range(lo, hi):
        s = j % STAGES
        phase = j // STAGES & 1
        mbarrier.wait(k_ready.index(s), phase)
        k = k_bufs.index(s).reshape([BLOCK_N, HEAD_DIM])
        zeros = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
        qk = warpgroup_mma(q, k.permute((1, 0)), zeros, use_acc=False, is_async=True)  # S = Q K^T
        mbarrier.wait(v_ready.index(s), phase)
        v = v_bufs.index(s).reshape([BLOCK_N, HEAD_DIM])
        dp = warpgroup_mma(do, v.permute((1, 0)), zeros, use_acc=False, is_async=True)  # dP = dO V^T
        qk = warpgroup_mma_wait(num_outstanding=1, deps=(qk,))
        p = gl.exp2(qk * qk_scale - lse[:, None])
        if MASK:
            p = gl.where(seen_keys(m0, j, N_CTX_Q, N_CTX_K, BLOCK_M, BLOCK_N, CAUSAL, s_layout), p, 0.0)
        dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
        dsa = gl.convert_layout((p * (dp - delta[:, None])).to(k_bufs.dtype), a_layout)  # dS
        dq = warpgroup_mma(dsa, k, dq, is_async=True)  # dQ += dS K (sm_scale at the end)
        dq, dsa = warpgroup_mma_wait(num_outstanding=0, deps=(dq, dsa))
        mbarrier.arrive(kv_empty.index(s), count=1)
    return dq


@gluon.jit
def _dq_consumer(q_buf, do_buf, k_bufs, v_bufs, q_ready, k_ready, v_ready, kv_empty, DQ, LSE, Delta, sm_scale,
                 qk_scale, N_CTX_Q, N_CTX_K, CAUSAL: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    BLOCK_M: gl.constexpr = q_buf.shape[1]
    HEAD_DIM: gl.constexpr = q_buf.shape[2]
    BLOCK_N: gl.constexpr = k_bufs.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    m0 = _dq_block_index(CAUSAL, N_CTX_Q, BLOCK_M) * BLOCK_M
    bh = gl.program_id(1)
    n_full, n_blocks = _kv_blocks(m0, N_CTX_Q, N_CTX_K, CAUSAL, BLOCK_M, BLOCK_N)
    rows = m0 + gl.arange(0, BLOCK_M, gl.SliceLayout(1, s_layout))
    row0 = bh.to(gl.int64) * N_CTX_Q
    lse = gl.load(LSE + row0 + rows, mask=rows < N_CTX_Q, other=float("inf"))
    delta = gl.load(Delta + row0 + rows, mask=rows < N_CTX_Q, other=0.0)
    dq = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
    mbarrier.wait(q_ready.index(0), 0)
    q = q_buf.reshape([BLOCK_M, HEAD_DIM])
    do = do_buf.reshape([BLOCK_M, HEAD_DIM])
    dq = _dq_steps(dq, q, do, lse, delta, k_bufs, v_bufs, k_ready, v_ready, kv_empty, 0, n_full, m0, qk_scale,
                   N_CTX_Q, N_CTX_K, s_layout, False, CAUSAL, STAGES)
    dq = _dq_steps(dq, q, do, lse, delta, k_bufs, v_bufs, k_ready, v_ready, kv_empty, n_full, n_blocks, m0,
                   qk_scale, N_CTX_Q, N_CTX_K, s_layout, True, CAUSAL, STAGES)
    _store_rows(DQ, (dq * sm_scale).to(q_buf.dtype), bh, m0, N_CTX_Q, BLOCK_M, HEAD_DIM)


@gluon.jit
def _fa3_dq_kernel(q_desc, do_desc, k_desc, v_desc, DQ, LSE, Delta, sm_scale, qk_scale, H, GROUP, N_CTX_Q, N_CTX_K,
                   CAUSAL: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """Grid (query blocks, batch * heads). Shared memory: Q and dO of the block, STAGES K and V buffers."""
    dtype: gl.constexpr = q_desc.dtype
    q_buf = gl.allocate_shared_memory(dtype, q_desc.block_type.shape, q_desc.layout)
    do_buf = gl.allocate_shared_memory(dtype, do_desc.block_type.shape, do_desc.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready.index(0), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=1)
    gl.warp_specialize([
        (_dq_consumer, (q_buf, do_buf, k_bufs, v_bufs, q_ready, k_ready, v_ready, kv_empty, DQ, LSE, Delta, sm_scale,
                        qk_scale, N_CTX_Q, N_CTX_K, CAUSAL, STAGES, num_warps)),
        (_dq_producer, (q_desc, do_desc, k_desc, v_desc, q_buf, do_buf, k_bufs, v_bufs, q_ready, k_ready, v_ready,
                        kv_empty, H, GROUP, N_CTX_Q, N_CTX_K, CAUSAL, STAGES)),
    ], [1], [PRODUCER_REGS])


# ----------------------------------------------------------------------------------------------------------------
# Host side


TRITON_KERNELS = {"bwd_dkdv": _fa3_dkdv_kernel, "bwd_dq": _fa3_dq_kernel}  # with fa2's Delta kernel first
# listed with the forward's too: profiling reads the provider module's (fa3's) kernels; this module is imported by
# the first backward, before any of its kernels is compiled
fa3.TRITON_KERNELS.update(TRITON_KERNELS, bwd_preprocess=bwd_preprocess)


def fa3_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                 do: torch.Tensor, causal: bool = False, sm_scale: float | None = None, deterministic: bool = True):
    """``(dq, dk, dv)`` of the attention whose output is ``o``, given its log2-domain ``lse`` (fp32, (batch,
    heads, seqlen_q), from ``fa3_forward`` or ``flash2_forward``) and the output gradient ``do``.
    ``deterministic``: dQ from its own kernel (bit-equal runs); otherwise the dK/dV kernel adds each step's dQ
    into a zeroed fp32 buffer with atomics (two matmuls fewer, summation order left to the hardware), scaled and
    cast afterwards."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    shape = check_inputs(q, k, v)
    scale = check_scale(shape.headdim, sm_scale)
    reason = unsupported(q, k, v)
    if reason:
        raise ValueError(f"fa3 backward: {reason}")
    d = shape.headdim
    q3, k3, v3, do3 = _tma_heads(q), _tma_heads(k), _tma_heads(v), _tma_heads(do)
    lse = lse.float().contiguous()
    delta = torch.empty_like(lse)
    launch_preprocess(o, do, delta, d)  # Delta = rowsum(dO * O), fa2's Triton kernel

    def desc(t, rows):
        return TensorDescriptor.from_tensor(t, [1, rows, d], smem_layout([1, rows, d], q.dtype))

    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=q.device, dtype=q.dtype)
    dv = torch.empty(v.shape, device=q.device, dtype=q.dtype)
    tail = (scale, scale * LOG2E, shape.heads, shape.group, shape.seqlen_q, shape.seqlen_k)
    dq_acc = delta if deterministic else torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    if DQ_ATOMICS not in ("tma", "redg"):
        raise ValueError(f"fa3 backward: DQ_ATOMICS must be 'tma' or 'redg', not {DQ_ATOMICS!r}")
    dq_tma = not deterministic and DQ_ATOMICS == "tma"
    cfg = tiles(d, causal, tma_dq=dq_tma)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    if dq_tma:  # the fp32 dQ as (batch * heads, seqlen_q, d), BLOCK_M-row tiles
        block = [1, bm, d]
        dq_desc = TensorDescriptor.from_tensor(dq_acc.view(-1, shape.seqlen_q, d), block,
                                               gl.NVMMASharedLayout.get_default_for(block, gl.float32))
    else:
        dq_desc = desc(q3, bm)  # unused
    _fa3_dkdv_kernel[(triton.cdiv(shape.seqlen_k, bn), shape.batch * shape.kv_heads)](
        desc(q3, bm), desc(do3, bm), desc(k3, bn), desc(v3, bn), dq_desc, dk, dv, dq_acc, lse, delta, *tail,
        CAUSAL=bool(causal), STAGES=cfg["STAGES"], ATOMIC_DQ=not deterministic, DQ_TMA=dq_tma,
        LEAN_STATS=cfg["LEAN_STATS"], PIPELINE=cfg["PIPELINE"], DQ_FIRST=cfg["DQ_FIRST"], num_warps=CONSUMER_WARPS)
    config = (f"dkdv BLOCK_N={bn} BLOCK_M={bm} STAGES={cfg['STAGES']} w{CONSUMER_WARPS}+1"
              f"{' pipelined' if cfg['PIPELINE'] else ''}{' dq-first' if cfg['DQ_FIRST'] else ''}")
    if deterministic:
        qm, kn = cfg["DQ_BLOCK_M"], cfg["DQ_BLOCK_N"]
        _fa3_dq_kernel[(triton.cdiv(shape.seqlen_q, qm), shape.batch * shape.heads)](
            desc(q3, qm), desc(do3, qm), desc(k3, kn), desc(v3, kn), dq, lse, delta, *tail, CAUSAL=bool(causal),
            STAGES=cfg["DQ_STAGES"], num_warps=CONSUMER_WARPS)
        config += f", dq BLOCK_M={qm} BLOCK_N={kn} STAGES={cfg['DQ_STAGES']} w{CONSUMER_WARPS}+1"
    else:
        torch.mul(dq_acc, scale, out=dq)  # scaled and cast in one pass
        config += " + dq by fp32 TMA reduce-add" if dq_tma else " + dq by fp32 atomics"
    _last["bwd"] = config
    return dq, dk, dv


class Fa3Attention(torch.autograd.Function):
    """The forward of rung ``rung`` (kernels/fa3.py) and this module's backward (the same for every rung)."""

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, rung, deterministic=True):
        o, lse = fa3.fa3_forward(q, k, v, causal, sm_scale, rung)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.sm_scale, ctx.deterministic = causal, sm_scale, deterministic
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = fa3_backward(q, k, v, o, lse, do, ctx.causal, ctx.sm_scale, ctx.deterministic)
        return dq, dk, dv, None, None, None, None


# --- the differentiable entry points: a rung's forward (kernels/fa3.py) with this module's backward ----------


def _attention(q, k, v, causal, sm_scale, rung: int, deterministic: bool = False) -> torch.Tensor:
    """Rung ``rung``'s forward; differentiable through ``kernels/fa3_bwd.py``'s backward (the same for every rung)
    when autograd needs it: dQ added into fp32 by the dK/dV kernel (TMA reduce-add, the faster route measured:
    docs/fa3.md section 9), or with ``deterministic`` from its own kernel (bit-equal runs, two matmuls more)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return Fa3Attention.apply(q, k, v, bool(causal), sm_scale, rung, deterministic)
    return fa3.fa3_forward(q, k, v, causal, sm_scale, rung)[0]


def fa3_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  sm_scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v with rung 8's Hopper forward, differentiable (the Gluon backward of
    ``kernels/fa3_bwd.py``, dQ by TMA reduce-add: not bit-reproducible). Layout (batch, heads, seq, headdim);
    causal aligned bottom-right."""
    return _attention(q, k, v, causal, sm_scale, rung=8)


def fa3_deterministic_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                                sm_scale: float | None = None) -> torch.Tensor:
    """As ``fa3_attention`` with dQ from its own kernel in the backward (recomputes S and dP; repeated backward
    passes are bit-equal)."""
    return _attention(q, k, v, causal, sm_scale, rung=8, deterministic=True)


def fa3_pingpong_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                           sm_scale: float | None = None) -> torch.Tensor:
    """As ``fa3_attention`` with rung 9's forward: two consumer warpgroups in ping-pong (backward: fa3's)."""
    return _attention(q, k, v, causal, sm_scale, rung=9)


def fa3_overlap_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                          sm_scale: float | None = None) -> torch.Tensor:
    """As ``fa3_attention`` with rung 10's forward: ping-pong plus the softmax overlapped with P V (backward:
    fa3's)."""
    return _attention(q, k, v, causal, sm_scale, rung=10)
