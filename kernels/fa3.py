"""FlashAttention-3-style forward for Hopper (sm_90) in Gluon: the ablation ladder's rung 8.

What rung 8 adds to FA2 (rung 7, ``kernels/flash2.py``), after Shah et al., "FlashAttention-3: Fast and Accurate
Attention with Asynchrony and Low-precision" (2024), Section 3.1:

- **Warp specialisation with a TMA producer.** ``gl.warp_specialize`` splits each CTA into a *producer*
  partition (1 warp, 24 registers) that only issues TMA copies, and a *consumer* partition (8 warps: two
  warpgroups of 64 query rows each) that only runs wgmma and the softmax. Hopper's ``setmaxnreg`` gives the
  registers the producer does not need to the consumers (SASS ``USETMAXREG``).
- **An mbarrier-guarded shared-memory ring.** K and V blocks stream through ``STAGES`` shared-memory stages;
  each stage has a ``k_ready`` and a ``v_ready`` barrier (the TMA engine arrives with the byte count the
  producer announced, so QK^T can start before V has landed) and a ``kv_empty`` barrier that the consumers
  arrive on once P V has read the stage. Q has two buffers, so the next tile's Q loads under this tile's loop.
- **wgmma.** S = Q K^T reads Q and K from shared memory; O += P V takes P from registers (the accumulator
  layout converts to the A-operand layout in registers) and V from shared memory.
- **A persistent grid.** One CTA per SM walks the (query block, batch x head) tiles with a stride of the grid
  size; causal tiles are ordered longest first (the last query blocks of every head before the first).

What it keeps from FA2: the online softmax in the log2 domain with ``qk_scale = sm_scale * log2(e)`` folded in,
deferred normalisation (one division at the end), the log-sum-exp stored as ``L = m + log2(l)`` (fp32, shape
(batch, heads, seqlen_q)), causal masking aligned bottom-right (query i sees keys j <= i + seqlen_k - seqlen_q),
the loop split into unmasked blocks and masked blocks (the diagonal band and the ragged last block of K), blocks
above the diagonal never visited, and a row that sees no key giving O = 0 and L = +inf.

Rung 9 (``_fa3_pp_fwd_kernel``, provider ``fa3-pingpong``): the two consumer warpgroups become two 4-warp partitions
with their own 64-row Q slices, whose wgmma groups (P_{j-1} V_{j-1} with S_j) alternate through two ``turn``
mbarriers, so one's softmax runs under the other's GEMMs. At head dim 64 a 64 x 128 block's softmax outlasts one
warpgroup's two GEMMs, so rung 9 runs three consumer warpgroups there (192-row tiles, the turns round robin, 160
registers each; FA3 also runs three at d64), under the causal mask from 4k query rows; each warpgroup computes only
the K/V blocks its own rows see and passes the others (``_skip_blocks``). Without the causal mask a tile's last
P V goes into the next tile's first group, with its S_0 (``_boundary_group``, ``FUSE``). Rung 10, the same kernel
with ``OVERLAP`` (provider ``fa3-overlap``): FA3's intra-warpgroup overlap. S_j is issued first and waited for alone
before the softmax of block j, which runs under the warpgroup's own P_{j-1} V_{j-1}; P goes to that wgmma through
shared memory (two buffers per warpgroup), because with P in registers ptxas waits for the P V before the first
exponential (it writes the next P into the registers the in-flight wgmma reads: docs/fa3.md, sections 5 and 9).
Backward: ``kernels/fa3_bwd.py`` (Gluon dK/dV and dQ kernels), the same for every rung; the differentiable
``*_attention`` functions live there too, on top of this module's ``fa3_forward``.

Layout and limits: q (batch, heads, seqlen_q, headdim), k and v (batch, kv_heads, seqlen_k, headdim), heads a
multiple of kv_heads (GQA/MQA); fp16 or bf16; head dim 64 or 128; any sequence lengths; an H100/H200 (sm_90).
Inputs are viewed as 3-D (batch * heads, seqlen, headdim) for host-side TMA descriptors with [1, rows, headdim]
blocks (made contiguous first if they are not), so rows past the end of a head's sequence load as TMA's zeros;
keys past seqlen_k are also masked to -inf. Query rows past seqlen_q are computed and never stored. O is written
through masked pointer stores, except by rung 9 at head dim 128, which stages each warpgroup's O tile in shared memory
and writes it with one TMA copy (``O_TMA``; docs/fa3.md section 25: 1.02-1.11x the pointer stores' speed there).

Tested: compiles for sm_90 under Triton 3.6 on a CPU machine (tests/test_fa3.py; SASS has HGMMA, UTMALDG and
USETMAXREG; rung 10's exponentials between its two wgmma waits). Rungs 8 and 9 run on an H200 (docs/fa3.md);
rung 10 as rebuilt with P in shared memory had not run on a GPU when written.
"""
from __future__ import annotations

from ._common import check_inputs, check_scale  # first: Triton's interpreter switch, before Triton is imported

import functools  # noqa: E402,I001

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (  # noqa: E402
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

# Triton 3.6 names the TMA load async_copy_global_to_shared and the store async_copy_shared_to_global; later
# versions call them async_load and async_store
tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
# Triton 3.6 names the CTA barrier (a partition's, inside warp_specialize) thread_barrier; later versions barrier
thread_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier
LOG2E = 1.4426950408889634
HEAD_DIMS = (64, 128)
DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}
PP_CONSUMER_REGS = gl.constexpr(240)  # the worker consumer warpgroup's registers under setmaxnreg (rungs 9, 10)
PP3_CONSUMER_REGS = gl.constexpr(160)  # each worker consumer's with three consumer warpgroups (rung 9, d64)


# ----------------------------------------------------------------------------------------------------------------
# Work shared by both partitions: which tile, which K/V blocks


@gluon.jit
def _tile(t, n_m, BH, BAND, CAUSAL: gl.constexpr):
    """Tile ``t`` -> (query block, batch * head). Causal: the heads in bands of ``BAND`` (``causal_band``), each
    band's query blocks from the last (longest) down, every head of the band at one block before the next block
    (longest first balances the CTAs; the band keeps the K/V that CTAs running together read within L2);
    otherwise the heads outer, so CTAs running together share K and V."""
    if CAUSAL:
        span = BAND * n_m
        band = t // span
        r = t - band * span
        width = gl.minimum(BAND, BH - band * BAND)
        return n_m - 1 - r // width, band * BAND + r % width
    else:
        return t % n_m, t // n_m


@gluon.jit
def _slot(r, CAUSAL: gl.constexpr):
    """This CTA's place in round ``r`` of the persistent walk (round r runs tiles r * grid ... r * grid + grid - 1):
    its program id, and under the causal mask every other round in reverse (a snake), so that a CTA that took a
    long tile in one round takes a short one in the next (``causal_band`` simulates the same walk)."""
    pid = gl.program_id(0)
    if CAUSAL:
        pid = pid + (r % 2) * (gl.num_programs(0) - 1 - 2 * pid)
    return pid


@gluon.jit
def _rounds(n_tiles, CAUSAL: gl.constexpr):
    """How many rounds of the walk give this CTA a tile: every full round, and the last, partial one if this CTA's
    slot there is below the tiles left."""
    full = n_tiles // gl.num_programs(0)
    return full + gl.where(_slot(full, CAUSAL) < n_tiles - full * gl.num_programs(0), 1, 0)


@gluon.jit
def _kv_blocks(m0, N_CTX_Q, N_CTX_K, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """(blocks every row of the query block [m0, m0 + BLOCK_M) sees in full, blocks its rows below seqlen_q see
    at all: none for a block of rows wholly past seqlen_q, such as a consumer warpgroup's slice of a last tile)."""
    if CAUSAL:
        diag = N_CTX_K - N_CTX_Q
        n_full = gl.maximum(gl.minimum(m0 + diag + 1, N_CTX_K), 0) // BLOCK_N
        hi = gl.maximum(gl.minimum(gl.minimum(m0 + BLOCK_M, N_CTX_Q) + diag, N_CTX_K), 0)
    else:
        n_full = N_CTX_K // BLOCK_N
        hi = gl.where(m0 < N_CTX_Q, N_CTX_K, 0)
    return n_full, gl.cdiv(hi, BLOCK_N)


# ----------------------------------------------------------------------------------------------------------------
# Producer partition: one warp issuing TMA copies


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty,
              H, GROUP, N_CTX_Q, N_CTX_K, n_tiles, BAND, CAUSAL: gl.constexpr, STAGES: gl.constexpr,
              Q_PARTS: gl.constexpr = 1, Q_BUFS: gl.constexpr = 2):
    """Per tile: its Q (in ``Q_PARTS`` row slices, one per consumer partition, behind one barrier, into buffer
    ``done % Q_BUFS``), then every K/V block the tile sees, K and V behind separate barriers. ``kv_empty`` has
    one barrier per stage (rung 8: K and V freed together) or two (rungs 9, 10: K's at ``s``, V's at
    ``STAGES + s``, freed separately)."""
    Q_ROWS: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_M: gl.constexpr = Q_ROWS * Q_PARTS
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    n_m = gl.cdiv(N_CTX_Q, BLOCK_M)
    BH = n_tiles // n_m
    it = 0  # K/V blocks issued so far: stage it % STAGES, its use number it // STAGES
    done = 0  # tiles issued so far: Q buffer done % Q_BUFS
    for r in range(0, _rounds(n_tiles, CAUSAL)):
        t = r * gl.num_programs(0) + _slot(r, CAUSAL)
        mb, bh = _tile(t, n_m, BH, BAND, CAUSAL)
        m0 = mb * BLOCK_M
        n_full, n_blocks = _kv_blocks(m0, N_CTX_Q, N_CTX_K, CAUSAL, BLOCK_M, BLOCK_N)
        kv_bh = bh // H * (H // GROUP) + bh % H // GROUP  # batch * kv_heads index of query head bh
        qb = done % Q_BUFS
        mbarrier.wait(q_empty.index(qb), (done // Q_BUFS & 1) ^ 1)  # a fresh barrier passes phase 1 at once
        mbarrier.expect(q_ready.index(qb), Q_PARTS * q_desc.block_type.nbytes)
        for h in gl.static_range(Q_PARTS):
            tma_load(q_desc, [bh, m0 + h * Q_ROWS, 0], q_ready.index(qb), q_bufs.index(qb * Q_PARTS + h))
        for j in range(n_blocks):
            s = it % STAGES
            mbarrier.wait(kv_empty.index(s), (it // STAGES & 1) ^ 1)
            mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
            tma_load(k_desc, [kv_bh, j * BLOCK_N, 0], k_ready.index(s), k_bufs.index(s))
            if kv_empty.shape[0] > STAGES:
                mbarrier.wait(kv_empty.index(STAGES + s), (it // STAGES & 1) ^ 1)
            mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
            tma_load(v_desc, [kv_bh, j * BLOCK_N, 0], v_ready.index(s), v_bufs.index(s))
            it += 1
        done += 1


# ----------------------------------------------------------------------------------------------------------------
# Consumer partition: two warpgroups running wgmma and the online softmax


@gluon.jit
def _attend(acc, m_i, l_i, q, k_bufs, v_bufs, k_ready, v_ready, kv_empty, it, lo, hi, m0, qk_scale,
            N_CTX_Q, N_CTX_K, s_layout: gl.constexpr, p_layout: gl.constexpr, MASK: gl.constexpr,
            CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    """K/V blocks [lo, hi) of one query tile: online softmax with deferred normalisation (FA2's update).
    MASK: mask keys past seqlen_k and, if CAUSAL, above the diagonal; else no mask at all."""
    BLOCK_M: gl.constexpr = q.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.shape[2]
    HEAD_DIM: gl.constexpr = k_bufs.shape[3]
    o_rows: gl.constexpr = gl.SliceLayout(1, acc.type.layout)
    for j in range(lo, hi):
        s = it % STAGES
        phase = it // STAGES & 1
        mbarrier.wait(k_ready.index(s), phase)
        k = k_bufs.index(s).reshape([BLOCK_N, HEAD_DIM])
        qk = warpgroup_mma(q, k.permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout),
                           use_acc=False, is_async=True)
        qk = warpgroup_mma_wait(num_outstanding=0, deps=(qk,))
        p, m_i, l_i, alpha = _softmax_step(qk, m_i, l_i, j, m0, qk_scale, N_CTX_Q, N_CTX_K, MASK, CAUSAL)
        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
        p = gl.convert_layout(p.to(v_bufs.dtype), p_layout)
        mbarrier.wait(v_ready.index(s), phase)
        acc = warpgroup_mma(p, v_bufs.index(s).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(kv_empty.index(s), count=1)
        it += 1
    return acc, m_i, l_i, it


@gluon.jit
def _normalise(acc, m_i, l_i, DTYPE: gl.constexpr):
    """One division per row (a row that saw no key has l = 0: O = 0, L = +inf): (O in ``DTYPE``, L)."""
    o_rows: gl.constexpr = gl.SliceLayout(1, acc.type.layout)
    seen = l_i > 0.0
    lse = gl.where(seen, m_i + gl.log2(gl.where(seen, l_i, 1.0)), float("inf"))
    inv_l = gl.convert_layout(1.0 / gl.where(seen, l_i, 1.0), o_rows)
    return (acc * inv_l[:, None]).to(DTYPE), lse


@gluon.jit
def _store_lse(lse, LSE, bh, r0, N_CTX_Q, ROWS: gl.constexpr):
    lse_rows = r0 + gl.arange(0, ROWS, lse.type.layout)
    gl.store(LSE + bh.to(gl.int64) * N_CTX_Q + lse_rows, lse, mask=lse_rows < N_CTX_Q)


@gluon.jit
def _epilogue(acc, m_i, l_i, O, LSE, bh, r0, N_CTX_Q, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr,
              DTYPE: gl.constexpr):
    """Rows r0.. of O and L, O through masked pointer stores from the accumulator's registers."""
    o_layout: gl.constexpr = acc.type.layout
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    out, lse = _normalise(acc, m_i, l_i, DTYPE)
    rows = r0 + gl.arange(0, ROWS, o_rows)
    cols = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, o_layout))
    row_off = (bh * N_CTX_Q + rows).to(gl.int64) * HEAD_DIM
    gl.store(O + row_off[:, None] + cols[None, :], out, mask=(rows < N_CTX_Q)[:, None])
    _store_lse(lse, LSE, bh, r0, N_CTX_Q, ROWS)


@gluon.jit
def _epilogue_tma(acc, m_i, l_i, o_desc, o_smem, LSE, bh, r0, N_CTX_Q):
    """Rows r0.. of O and L, O staged in this warpgroup's shared buffer ``o_smem`` and written by one TMA copy
    (rows past seqlen_q fall outside the descriptor and are not written), which runs on while the warpgroup goes on
    to its next turn (``O_TMA``). The buffer is written again only after the copy before has read it."""
    ROWS: gl.constexpr = o_smem.shape[1]
    HEAD_DIM: gl.constexpr = o_smem.shape[2]
    out, lse = _normalise(acc, m_i, l_i, o_smem.dtype)
    tma.store_wait(0)  # in the thread that issued the last copy (a tile ago) ...
    thread_barrier()  # ... before any thread of the warpgroup writes its buffer
    o_smem.reshape([ROWS, HEAD_DIM]).store(out)
    fence_async_shared()
    thread_barrier()  # the whole tile is in shared memory before one thread issues the copy
    tma_store(o_desc, [bh, r0, 0], o_smem)
    _store_lse(lse, LSE, bh, r0, N_CTX_Q, ROWS)


@gluon.jit
def _finish(acc, m_i, l_i, O, o_desc, o_smem, LSE, bh, r0, N_CTX_Q, O_TMA: gl.constexpr):
    """A warpgroup's epilogue for its rows r0.. of a tile: O by TMA (``O_TMA``) or by pointer stores."""
    if O_TMA:
        _epilogue_tma(acc, m_i, l_i, o_desc, o_smem, LSE, bh, r0, N_CTX_Q)
    else:
        _epilogue(acc, m_i, l_i, O, LSE, bh, r0, N_CTX_Q, acc.shape[0], acc.shape[1], o_smem.dtype)


@gluon.jit
def _consumer(q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, O, LSE, qk_scale,
              N_CTX_Q, N_CTX_K, n_tiles, BAND, CAUSAL: gl.constexpr, STAGES: gl.constexpr,
              num_warps: gl.constexpr):
    BLOCK_M: gl.constexpr = q_bufs.shape[2]
    HEAD_DIM: gl.constexpr = q_bufs.shape[3]
    BLOCK_N: gl.constexpr = k_bufs.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    n_m = gl.cdiv(N_CTX_Q, BLOCK_M)
    BH = n_tiles // n_m
    it = 0
    done = 0
    for r in range(0, _rounds(n_tiles, CAUSAL)):
        t = r * gl.num_programs(0) + _slot(r, CAUSAL)
        mb, bh = _tile(t, n_m, BH, BAND, CAUSAL)
        m0 = mb * BLOCK_M
        n_full, n_blocks = _kv_blocks(m0, N_CTX_Q, N_CTX_K, CAUSAL, BLOCK_M, BLOCK_N)
        qb = done % 2
        mbarrier.wait(q_ready.index(qb), done // 2 & 1)
        q = q_bufs.index(qb).reshape([BLOCK_M, HEAD_DIM])
        m_i = gl.full([BLOCK_M], -1.0e30, gl.float32, s_rows)  # finite: never -inf - -inf
        l_i = gl.zeros([BLOCK_M], gl.float32, s_rows)
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)
        acc, m_i, l_i, it = _attend(acc, m_i, l_i, q, k_bufs, v_bufs, k_ready, v_ready, kv_empty, it, 0, n_full,
                                    m0, qk_scale, N_CTX_Q, N_CTX_K, s_layout, p_layout, False, CAUSAL, STAGES)
        acc, m_i, l_i, it = _attend(acc, m_i, l_i, q, k_bufs, v_bufs, k_ready, v_ready, kv_empty, it, n_full,
                                    n_blocks, m0, qk_scale, N_CTX_Q, N_CTX_K, s_layout, p_layout, True, CAUSAL,
                                    STAGES)
        mbarrier.arrive(q_empty.index(qb), count=1)
        done += 1
        _epilogue(acc, m_i, l_i, O, LSE, bh, m0, N_CTX_Q, BLOCK_M, HEAD_DIM, q_bufs.dtype)


# ----------------------------------------------------------------------------------------------------------------
# The kernel: shared memory, barriers, and the two partitions


@gluon.jit
def _buffers(q_desc, k_desc, v_desc, STAGES: gl.constexpr, CONSUMERS: gl.constexpr, Q_BUFS: gl.constexpr = 2):
    """The shared memory the producer fills and the consumers read: ``Q_BUFS`` Q tiles (two: the next tile's Q
    loads under this tile's loop), a ring of ``STAGES`` K and V blocks, and their mbarriers: ``*_ready`` completed
    by the TMA loads, ``q_empty`` and ``kv_empty`` by each of the ``CONSUMERS`` consumer partitions that read the
    buffer. Rung 8 has one consumer partition; rungs 9 and 10 have two or three (``CONSUMERS`` > 1), each with its
    own Q slice of a tile, and one ``turn`` barrier each that orders their wgmma groups (returned last); K's and
    V's halves of a stage are freed apart there (``kv_empty`` 2 x STAGES), as a block's K is done with one step
    before its V."""
    dtype: gl.constexpr = q_desc.dtype
    KV_EMPTY: gl.constexpr = STAGES if CONSUMERS == 1 else 2 * STAGES
    q_bufs = gl.allocate_shared_memory(dtype, [Q_BUFS * CONSUMERS] + q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [Q_BUFS, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [Q_BUFS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [KV_EMPTY, 1], mbarrier.MBarrierLayout())
    if CONSUMERS > 1:
        turn = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(Q_BUFS):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=CONSUMERS)
    if CONSUMERS > 1:
        for i in gl.static_range(CONSUMERS):
            mbarrier.init(turn.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
    for i in gl.static_range(KV_EMPTY):
        mbarrier.init(kv_empty.index(i), count=CONSUMERS)
    if CONSUMERS > 1:
        return q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, turn
    else:
        return q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty


@gluon.jit(do_not_specialize=["BAND"])
def _fa3_fwd_kernel(q_desc, k_desc, v_desc, O, LSE, qk_scale, H, GROUP, N_CTX_Q, N_CTX_K, n_tiles, BAND,
                    CAUSAL: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty = _buffers(
        q_desc, k_desc, v_desc, STAGES, CONSUMERS=1)
    gl.warp_specialize([
        (_consumer, (q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, O, LSE, qk_scale,
                     N_CTX_Q, N_CTX_K, n_tiles, BAND, CAUSAL, STAGES, num_warps)),
        (_producer, (q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty,
                     H, GROUP, N_CTX_Q, N_CTX_K, n_tiles, BAND, CAUSAL, STAGES)),
    ], [1], [24])


# ----------------------------------------------------------------------------------------------------------------
# Rungs 9 and 10: two consumer partitions of one warpgroup each, taking turns at the tensor cores


@gluon.jit
def seen_keys(r0, j, N_CTX_Q, N_CTX_K, ROWS: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr,
              s_layout: gl.constexpr):
    """Which keys of block ``j`` the rows [r0, r0 + ROWS) see (keys past seqlen_k none; with CAUSAL, those up to
    the diagonal, aligned bottom-right), in ``s_layout`` ([1, BLOCK_N] without CAUSAL). Under CAUSAL one compare
    per score, of the key's offset in the block against one limit per row: the keys' and the diagonal's tests as
    two compares per score took 861 instructions per masked step at d64 as a launch compiles it (lengths divisible
    by 16: ptxas 12.8 turned them into bit-mask arithmetic), this 562."""
    offs = gl.arange(0, BLOCK_N, gl.SliceLayout(0, s_layout))
    if CAUSAL:
        rows = r0 + gl.arange(0, ROWS, gl.SliceLayout(1, s_layout))
        last = N_CTX_K - 1 - j * BLOCK_N  # the last key, as an offset in the block
        keep = offs[None, :] <= gl.minimum(rows + (N_CTX_K - N_CTX_Q - j * BLOCK_N), last)[:, None]
    else:
        keep = (j * BLOCK_N + offs < N_CTX_K)[None, :]
    return keep


@gluon.jit
def _softmax_step(qk, m_i, l_i, j, r0, qk_scale, N_CTX_Q, N_CTX_K, MASK: gl.constexpr, CAUSAL: gl.constexpr):
    """One block's online-softmax update (FA2's, log2 domain) on the scores ``qk`` of rows [r0, r0 + rows) and
    keys of block ``j``: (P, new m, new l, alpha = the factor that rescales O to the new m)."""
    s_layout: gl.constexpr = qk.type.layout
    ROWS: gl.constexpr = qk.shape[0]
    BLOCK_N: gl.constexpr = qk.shape[1]
    if MASK:  # scaled below with the unmasked scores: -inf * qk_scale - m = -inf
        qk = gl.where(seen_keys(r0, j, N_CTX_Q, N_CTX_K, ROWS, BLOCK_N, CAUSAL, s_layout), qk, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(qk, 1) * qk_scale)
    qk = qk * qk_scale - m_new[:, None]
    p = gl.exp2(qk)
    alpha = gl.exp2(m_i - m_new)
    return p, m_new, l_i * alpha + gl.sum(p, 1), alpha


@gluon.jit
def _my_turn(turn, g, WG: gl.constexpr):
    """Wait until this warpgroup may issue its ``g``-th group of wgmmas: the groups of the consumer partitions
    take turns in order, warpgroup 0 first (a fresh barrier passes a wait on phase 1 at once)."""
    mbarrier.wait(turn.index(WG), (g & 1) ^ (1 if WG == 0 else 0))


@gluon.jit
def _pass_turn(turn, WG: gl.constexpr):
    """Hand the tensor cores to the next consumer warpgroup (this one's wgmmas are issued)."""
    mbarrier.arrive(turn.index((WG + 1) % turn.shape[0]), count=1)


@gluon.jit
def _release(kv_empty, it, it0, STAGES: gl.constexpr):
    """Give the producer back the V of block ``it - 2`` once its P V has been waited for (blocks ``it0 + 1``
    on; block ``it - 1``'s V is still in use). Done at the top of the next step, not right after that wait: ptxas
    hoists an mbarrier arrive, and the wgmma wait before it, above the softmax in the same basic block, which
    would undo rung 10's overlap (seen in the SASS: WARPGROUP.DEPBAR.LE gsb0, 0x0 ahead of every MUFU.EX2)."""
    mbarrier.arrive(kv_empty.index(STAGES + (it + STAGES - 2) % STAGES), count=1, pred=it >= it0 + 2)


@gluon.jit
def _stage_p(p, p_bufs, it, dtype: gl.constexpr, p_layout: gl.constexpr, OVERLAP: gl.constexpr, WG: gl.constexpr):
    """Block ``it``'s P (fp32, the S layout) as the P V wgmma will take it. Rung 9: in registers, in the
    A-operand layout. Rung 10: stored to this warpgroup's shared buffer ``it % 2`` (the other buffer may still be
    read by the P V in flight), fenced for the wgmma's async proxy. Why not registers there: with P in registers
    ptxas packs the next P into the registers the in-flight P V reads, so it waits for that P V before the first
    exponential (docs/fa3.md section 9); from shared memory the in-flight wgmma holds only the O accumulator."""
    if OVERLAP:
        buf = p_bufs.index(WG * 2 + it % 2)
        buf.store(p.to(dtype))
        fence_async_shared()
        return buf
    else:
        return gl.convert_layout(p.to(dtype), p_layout)


@gluon.jit
def _pp_blocks(acc, m_i, l_i, p, q, k_bufs, v_bufs, p_bufs, k_ready, v_ready, kv_empty, turn, it, it0, g, lo, hi,
               r0, qk_scale, N_CTX_Q, N_CTX_K, MASK: gl.constexpr, CAUSAL: gl.constexpr, STAGES: gl.constexpr,
               OVERLAP: gl.constexpr, WG: gl.constexpr):
    """K/V blocks [lo, hi) of one warpgroup's rows. On entry ``p`` holds block lo-1's P (for the rows' current
    max; registers for rung 9, a shared buffer for rung 10, see ``_stage_p``) and ``acc`` O without it. Each
    step issues, in this warpgroup's turn, O += P_{j-1} V_{j-1} and S_j = Q K_j^T as one group (ping-pong: the
    other warpgroup's group runs while this one does its softmax). OVERLAP (rung 10): S_j is issued first and
    only S_j is waited for before the softmax of block j, so the softmax (and P_j's store) runs under this
    warpgroup's own P V; without it (rung 9) both are waited for first. ``it0``: the counter of the tile's
    block 0 (see ``_release``)."""
    BLOCK_N: gl.constexpr = k_bufs.shape[2]
    HEAD_DIM: gl.constexpr = k_bufs.shape[3]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    ROWS: gl.constexpr = q.shape[0]
    o_rows: gl.constexpr = gl.SliceLayout(1, acc.type.layout)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc.type.layout, k_width=2)
    for j in range(lo, hi):
        _release(kv_empty, it, it0, STAGES)
        s = it % STAGES
        s_prev = (it - 1) % STAGES
        mbarrier.wait(k_ready.index(s), it // STAGES & 1)
        mbarrier.wait(v_ready.index(s_prev), (it - 1) // STAGES & 1)
        k = k_bufs.index(s).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0))
        v = v_bufs.index(s_prev).reshape([BLOCK_N, HEAD_DIM])
        zeros = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
        _my_turn(turn, g, WG)
        if OVERLAP:
            qk = warpgroup_mma(q, k, zeros, use_acc=False, is_async=True)
            acc = warpgroup_mma(p, v, acc, is_async=True)
            _pass_turn(turn, WG)
            qk = warpgroup_mma_wait(num_outstanding=1, deps=(qk,))
        else:
            acc = warpgroup_mma(p, v, acc, is_async=True)
            qk = warpgroup_mma(q, k, zeros, use_acc=False, is_async=True)
            _pass_turn(turn, WG)
            acc, qk = warpgroup_mma_wait(num_outstanding=0, deps=(acc, qk))
        # K_j has been read: its half of the stage is free now, a step before V_j's (with 2 stages, freeing
        # them together left the producer to load K_{j+1} only once the consumer already waited for it)
        mbarrier.arrive(kv_empty.index(s), count=1)
        g += 1
        p_new, m_i, l_i, alpha = _softmax_step(qk, m_i, l_i, j, r0, qk_scale, N_CTX_Q, N_CTX_K, MASK, CAUSAL)
        p_new = _stage_p(p_new, p_bufs, it, v_bufs.dtype, p_layout, OVERLAP, WG)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
        p = p_new
        it += 1
    return acc, m_i, l_i, p, it, g


@gluon.jit
def _free_block(k_ready, v_ready, kv_empty, it, STAGES: gl.constexpr):
    """Free block ``it``, which this warpgroup's rows do not see, in both halves of its stage, once it has landed
    (freeing a stage earlier would count toward its previous use)."""
    s = it % STAGES
    mbarrier.wait(k_ready.index(s), it // STAGES & 1)
    mbarrier.arrive(kv_empty.index(s), count=1)
    mbarrier.wait(v_ready.index(s), it // STAGES & 1)
    mbarrier.arrive(kv_empty.index(STAGES + s), count=1)
    return it + 1


@gluon.jit
def _skip_blocks(k_ready, v_ready, kv_empty, turn, it, g, n_own, n_blocks, FUSE, STAGES: gl.constexpr,
                 WG: gl.constexpr):
    """A warpgroup whose rows see ``n_own`` of the tile's ``n_blocks`` K/V blocks (fewer under the causal mask,
    none where its rows lie past seqlen_q) computes only those and passes the rest. With FUSE a tile takes
    n_blocks groups of every warpgroup (at least one: its boundary group, ``_boundary_group``); a warpgroup's own
    part is groups 0 ... n_own (its last P V alone in group n_own) or, where it sees every block, 0 ... n_own - 1
    (its last P V goes into the next boundary group). Without FUSE every last P V goes alone and a tile takes
    n_blocks + 1 groups. Here the warpgroup takes the turns of the groups left without issuing a wgmma, freeing at
    each the dead block before it, and then (FUSE) the last dead block. Each wait is one the warpgroup would make
    in that turn if it computed the block, so the turns cannot deadlock."""
    first = gl.where(n_own > 0, n_own + 1, 1)
    for j in range(first, n_blocks + 1 - FUSE):
        it = _free_block(k_ready, v_ready, kv_empty, it, STAGES)
        _my_turn(turn, g, WG)
        _pass_turn(turn, WG)
        g += 1
    if (FUSE > 0) & (n_own < n_blocks):
        it = _free_block(k_ready, v_ready, kv_empty, it, STAGES)
    return it, g


@gluon.jit
def _boundary_group(acc, p, q, k_bufs, v_bufs, p_bufs, k_ready, v_ready, kv_empty, turn, it, it0, g,
                    s_layout: gl.constexpr, LAST_PV: gl.constexpr, FIRST_S: gl.constexpr, STAGES: gl.constexpr,
                    OVERLAP: gl.constexpr, WG: gl.constexpr):
    """One turn at a tile boundary: the last P V of the tile before (LAST_PV; ``p`` its last P, ``it0`` its first
    block's counter) with S_0 = Q K_0^T of this tile (FIRST_S), both waited for. One group where there were two
    half groups, each with only the other warpgroups' halves under its softmax or epilogue (docs/fa3.md section
    16). Rung 10 takes that P from its shared buffer by index (block ``it - 1``'s, ``_stage_p``): carried out of
    the tile's branch and across the tile loop as a shared-memory descriptor, it read the wrong buffer on the GPU.
    Returns (O, S_0, turns taken)."""
    ROWS: gl.constexpr = q.shape[0]
    BLOCK_N: gl.constexpr = k_bufs.shape[2]
    HEAD_DIM: gl.constexpr = k_bufs.shape[3]
    qk = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    s = it % STAGES
    s_prev = (it - 1) % STAGES
    if LAST_PV:
        _release(kv_empty, it, it0, STAGES)
        mbarrier.wait(v_ready.index(s_prev), (it - 1) // STAGES & 1)
    if FIRST_S:
        mbarrier.wait(k_ready.index(s), it // STAGES & 1)
    _my_turn(turn, g, WG)
    if LAST_PV:
        if OVERLAP:
            p = p_bufs.index(WG * 2 + (it - 1) % 2)
        acc = warpgroup_mma(p, v_bufs.index(s_prev).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
    if FIRST_S:
        qk = warpgroup_mma(q, k_bufs.index(s).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), qk, use_acc=False,
                           is_async=True)
    _pass_turn(turn, WG)
    if LAST_PV:
        if FIRST_S:
            acc, qk = warpgroup_mma_wait(num_outstanding=0, deps=(acc, qk))
        else:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(kv_empty.index(STAGES + s_prev), count=1)
    if FIRST_S:
        if not LAST_PV:
            qk = warpgroup_mma_wait(num_outstanding=0, deps=(qk,))
        mbarrier.arrive(kv_empty.index(s), count=1)
    return acc, qk, g + 1


@gluon.jit
def _pp_consumer(q_bufs, k_bufs, v_bufs, p_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, turn, O, o_desc,
                 o_bufs, LSE, qk_scale, N_CTX_Q, N_CTX_K, n_tiles, BAND, FUSE, CAUSAL: gl.constexpr,
                 STAGES: gl.constexpr, OVERLAP: gl.constexpr, O_TMA: gl.constexpr, WG: gl.constexpr):
    """One consumer warpgroup (4 warps): rows [WG * 64, WG * 64 + 64) of every tile of CONSUMERS x 64 rows (one
    ``turn`` barrier per consumer), its own Q slice, the K/V ring shared with the other warpgroups (each arrives
    once on each ``kv_empty``). All walk the same K/V blocks (the tile's), so their turn counters stay in step;
    a warpgroup computes only the blocks its own rows see and passes the rest (``_skip_blocks``: under the causal
    mask, and for a slice of rows past seqlen_q). A tile starts with its boundary group: with FUSE (a runtime
    int, 1 or 0: ``launch_ints``), the last P V of the tile before, if this warpgroup's rows there saw every block
    (``pend``; its epilogue follows that group), with this tile's S_0; one more pass after the last tile issues the
    last P V alone. Without FUSE every last P V goes alone, in its own group (FUSE is not a constexpr: with the
    branches folded away, Triton 3.6 fails to lower the causal kernel: the assertion of the note at the epilogue).
    ``p_bufs``: rung 10's P buffers (two per warpgroup; unused by rung 9); ``o_bufs``: with O_TMA, each warpgroup's
    buffer for its O tile on the way out (``_epilogue_tma``)."""
    ROWS: gl.constexpr = q_bufs.shape[2]
    HEAD_DIM: gl.constexpr = q_bufs.shape[3]
    BLOCK_N: gl.constexpr = k_bufs.shape[2]
    CONSUMERS: gl.constexpr = turn.shape[0]
    BLOCK_M: gl.constexpr = CONSUMERS * ROWS
    Q_BUFS: gl.constexpr = q_bufs.shape[0] // CONSUMERS
    DTYPE: gl.constexpr = q_bufs.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_smem = o_bufs.index(WG)
    n_m = gl.cdiv(N_CTX_Q, BLOCK_M)
    BH = n_tiles // n_m
    rounds = _rounds(n_tiles, CAUSAL)
    it = 0  # K/V blocks consumed so far (the producer's count)
    g = 0  # wgmma groups this warpgroup has issued (its turns)
    done = 0
    pend = 0  # 1: the last tile's last P V waits for this tile's boundary group (its rows saw every block)
    it0 = 0  # the counter of the last tile's block 0 (see ``_release``)
    bh_p = 0  # the last tile's batch * head and first row
    r0_p = 0
    m_i = gl.full([ROWS], -1.0e30, gl.float32, s_rows)
    l_i = gl.zeros([ROWS], gl.float32, s_rows)
    acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
    p = _stage_p(gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout), p_bufs, 0, DTYPE, p_layout, OVERLAP, WG)
    for r in range(0, rounds + 1):  # the last pass takes no tile: its boundary group ends the last tile
        live = r < rounds
        t = r * gl.num_programs(0) + _slot(r, CAUSAL)
        mb, bh = _tile(t, n_m, BH, BAND, CAUSAL)
        m0 = mb * BLOCK_M
        r0 = m0 + WG * ROWS
        n_full, n_own = _kv_blocks(r0, N_CTX_Q, N_CTX_K, CAUSAL, ROWS, BLOCK_N)  # this warpgroup's rows
        _, n_blocks = _kv_blocks(m0, N_CTX_Q, N_CTX_K, CAUSAL, BLOCK_M, BLOCK_N)  # the tile's
        n_own = gl.where(live, n_own, 0)
        n_blocks = gl.where(live, n_blocks, 0)
        qb = done % Q_BUFS
        mbarrier.wait(q_ready.index(qb), done // Q_BUFS & 1, pred=live)
        q = q_bufs.index(qb * CONSUMERS + WG).reshape([ROWS, HEAD_DIM])
        # the boundary group: the last tile's last P V if it waits (pend), this tile's S_0 if its rows see a block
        if pend > 0:
            if n_own > 0:
                acc, qk, g = _boundary_group(acc, p, q, k_bufs, v_bufs, p_bufs, k_ready, v_ready, kv_empty, turn,
                                             it, it0, g, s_layout, True, True, STAGES, OVERLAP, WG)
            else:
                acc, qk, g = _boundary_group(acc, p, q, k_bufs, v_bufs, p_bufs, k_ready, v_ready, kv_empty, turn,
                                             it, it0, g, s_layout, True, False, STAGES, OVERLAP, WG)
        else:
            if n_own > 0:
                acc, qk, g = _boundary_group(acc, p, q, k_bufs, v_bufs, p_bufs, k_ready, v_ready, kv_empty, turn,
                                             it, it0, g, s_layout, False, True, STAGES, OVERLAP, WG)
            else:
                acc, qk, g = _boundary_group(acc, p, q, k_bufs, v_bufs, p_bufs, k_ready, v_ready, kv_empty, turn,
                                             it, it0, g, s_layout, False, False, STAGES, OVERLAP, WG)
        # block 0's softmax (masked: it may hold the diagonal or the ragged end), then the last tile's epilogue:
        # in this order the last tile's O waits beside P_0, not beside S_0 (three consumers spilled otherwise)
        m_0 = gl.full([ROWS], -1.0e30, gl.float32, s_rows)  # finite: never -inf - -inf
        l_0 = gl.zeros([ROWS], gl.float32, s_rows)
        if n_own > 0:
            if n_full > 0:  # every row sees all of block 0 (every tile but a causal walk's first): no mask
                p_0, m_0, l_0, a_0 = _softmax_step(qk, m_0, l_0, 0, r0, qk_scale, N_CTX_Q, N_CTX_K, False, CAUSAL)
            else:
                p_0, m_0, l_0, a_0 = _softmax_step(qk, m_0, l_0, 0, r0, qk_scale, N_CTX_Q, N_CTX_K, True, CAUSAL)
            p = _stage_p(p_0, p_bufs, it, DTYPE, p_layout, OVERLAP, WG)
        if pend > 0:
            _finish(acc, m_i, l_i, O, o_desc, o_smem, LSE, bh_p, r0_p, N_CTX_Q, O_TMA)
        m_i = m_0
        l_i = l_0
        acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
        if n_own > 0:
            it0 = it
            it += 1
            acc, m_i, l_i, p, it, g = _pp_blocks(acc, m_i, l_i, p, q, k_bufs, v_bufs, p_bufs, k_ready, v_ready,
                                                 kv_empty, turn, it, it0, g, 1, n_full, r0, qk_scale, N_CTX_Q,
                                                 N_CTX_K, False, CAUSAL, STAGES, OVERLAP, WG)
            acc, m_i, l_i, p, it, g = _pp_blocks(acc, m_i, l_i, p, q, k_bufs, v_bufs, p_bufs, k_ready, v_ready,
                                                 kv_empty, turn, it, it0, g, gl.maximum(n_full, 1), n_own, r0,
                                                 qk_scale, N_CTX_Q, N_CTX_K, True, CAUSAL, STAGES, OVERLAP, WG)
        # every S of the tile has been waited for: Q's buffer is free
        mbarrier.arrive(q_empty.index(qb), count=1, pred=live)
        # rows that saw every block of the tile leave their last P V to the next boundary group; the others end
        # here: their last P V alone if the tile goes on without them, then the epilogue (O = 0, L = +inf for rows
        # that see no key: past their diagonal, or past seqlen_q). (The epilogue sits at this level, not inside
        # the branch above: nested there, Triton 3.6's lowering to LLVM fails an assertion.)
        pend = gl.where((n_own > 0) & (n_own == n_blocks) & (FUSE > 0), 1, 0)
        if (n_own > 0) & (pend == 0):
            acc, no_s, g = _boundary_group(acc, p, q, k_bufs, v_bufs, p_bufs, k_ready, v_ready, kv_empty, turn,
                                           it, it0, g, s_layout, True, False, STAGES, OVERLAP, WG)
        if live & (pend == 0):
            _finish(acc, m_i, l_i, O, o_desc, o_smem, LSE, bh, r0, N_CTX_Q, O_TMA)
        bh_p = bh
        r0_p = r0
        # the tile's blocks no row of this warpgroup's own sees (past its diagonal, or its rows past seqlen_q)
        it, g = _skip_blocks(k_ready, v_ready, kv_empty, turn, it, g, n_own, n_blocks, FUSE, STAGES, WG)
        done += 1
    if O_TMA:
        tma.store_wait(0)  # the last copy has read its buffer before the CTA's shared memory is given up


# seqlen_q is not specialised: Triton would compile a seqlen_q of 1 as the constant 1, and for rung 10 without the
# causal mask that kernel crashes ptxas (SIGSEGV in the ptxas of Triton 3.6 and 3.9, CUDA 12.8 and 12.9; not
# at -O0); tests/test_fa3.py compiles each test shape as its launch specialises it
@gluon.jit(do_not_specialize=["N_CTX_Q", "BAND", "FUSE"])
def _fa3_pp_fwd_kernel(q_desc, k_desc, v_desc, o_desc, O, LSE, qk_scale, H, GROUP, N_CTX_Q, N_CTX_K, n_tiles, BAND,
                       FUSE, CAUSAL: gl.constexpr, STAGES: gl.constexpr, OVERLAP: gl.constexpr,
                       CONSUMERS: gl.constexpr, O_TMA: gl.constexpr, num_warps: gl.constexpr):
    """Rung 9 (OVERLAP=False) and rung 10 (OVERLAP=True): the default partition and one or two 4-warp workers are
    the CONSUMERS consumer warpgroups (64 rows each of a tile of CONSUMERS x 64 rows), a 1-warp worker the TMA
    producer. Q descriptor blocks are 64 rows (one warpgroup's slice); two Q buffers of CONSUMERS slices each.
    Three consumers (rung 9 at head dim 64, ``tiles``) take turns round robin: with 64-row slices a softmax takes
    longer than one warpgroup's two GEMMs there, and two other warpgroups' GEMMs hide it where one did not; each
    then gets 160 registers, where two get 240. Rung 10 adds two 64 x BLOCK_N P buffers per warpgroup (64 KiB at
    fp16, two consumers); at head dim 128 that only fits with one Q buffer (224 KiB in all). O_TMA (rung 9; by
    default at head dim 128, ``O_TMA``) writes O through one 64-row shared buffer per warpgroup and a TMA copy
    (``o_desc``: O's 64-row blocks, as Q's) instead of pointer stores: 32 KiB at head dim 128 (224 KiB in all)."""
    ROWS: gl.constexpr = q_desc.block_type.shape[1]
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[2]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    Q_BUFS: gl.constexpr = 1 if OVERLAP and HEAD_DIM > 64 else 2
    q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, turn = _buffers(
        q_desc, k_desc, v_desc, STAGES, CONSUMERS, Q_BUFS)
    if OVERLAP:
        p_bufs = gl.allocate_shared_memory(q_desc.dtype, [2 * CONSUMERS, ROWS, BLOCK_N],
                                           gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16))
    else:
        p_bufs = v_bufs  # a stand-in (warp_specialize takes no None): rung 9 keeps P in registers
    if O_TMA:
        o_bufs = gl.allocate_shared_memory(o_desc.dtype, [CONSUMERS] + o_desc.block_type.shape, o_desc.layout)
    else:
        o_bufs = q_bufs  # a stand-in: O goes out through pointer stores
    # (a tuple bound to a name first would turn the constexprs in it into tensors: each call spells its list out)
    if CONSUMERS == 3:
        gl.warp_specialize([
            (_pp_consumer, (q_bufs, k_bufs, v_bufs, p_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, turn,
                            O, o_desc, o_bufs, LSE, qk_scale, N_CTX_Q, N_CTX_K, n_tiles, BAND, FUSE, CAUSAL,
                            STAGES, OVERLAP, O_TMA, 0)),
            (_pp_consumer, (q_bufs, k_bufs, v_bufs, p_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, turn,
                            O, o_desc, o_bufs, LSE, qk_scale, N_CTX_Q, N_CTX_K, n_tiles, BAND, FUSE, CAUSAL,
                            STAGES, OVERLAP, O_TMA, 1)),
            (_pp_consumer, (q_bufs, k_bufs, v_bufs, p_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, turn,
                            O, o_desc, o_bufs, LSE, qk_scale, N_CTX_Q, N_CTX_K, n_tiles, BAND, FUSE, CAUSAL,
                            STAGES, OVERLAP, O_TMA, 2)),
            (_producer, (q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready,
                         kv_empty, H, GROUP, N_CTX_Q, N_CTX_K, n_tiles, BAND, CAUSAL, STAGES, 3, Q_BUFS)),
        ], [4, 4, 1], [PP3_CONSUMER_REGS, PP3_CONSUMER_REGS, 24])
    else:
        gl.warp_specialize([
            (_pp_consumer, (q_bufs, k_bufs, v_bufs, p_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, turn,
                            O, o_desc, o_bufs, LSE, qk_scale, N_CTX_Q, N_CTX_K, n_tiles, BAND, FUSE, CAUSAL,
                            STAGES, OVERLAP, O_TMA, 0)),
            (_pp_consumer, (q_bufs, k_bufs, v_bufs, p_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, turn,
                            O, o_desc, o_bufs, LSE, qk_scale, N_CTX_Q, N_CTX_K, n_tiles, BAND, FUSE, CAUSAL,
                            STAGES, OVERLAP, O_TMA, 1)),
            (_producer, (q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready,
                         kv_empty, H, GROUP, N_CTX_Q, N_CTX_K, n_tiles, BAND, CAUSAL, STAGES, 2, Q_BUFS)),
        ], [4, 1], [PP_CONSUMER_REGS, 24])


# ----------------------------------------------------------------------------------------------------------------
# Host side


TRITON_KERNELS = {"fwd": _fa3_fwd_kernel, "fwd_pp": _fa3_pp_fwd_kernel}  # every kernel a launch runs
NUM_WARPS = 8  # rung 8's consumer partition: two warpgroups; the producer warp comes on top
PP_NUM_WARPS = 4  # rungs 9, 10: the default partition is one consumer warpgroup; the other and the producer on top
RUNGS = {8: "fa3", 9: "fa3-pingpong", 10: "fa3-overlap"}


THREE_CAUSAL_FROM = 4096  # rung 9 at d64 under the causal mask: three consumers from this many query rows


def tiles(headdim: int, rung: int = 8, consumers: int | None = None, causal: bool = False,
          seqlen_q: int = 0) -> dict:
    """Tile sizes and ring depth per head dim (shared memory: 2 Q buffers + STAGES x (K + V) stages, fp16/bf16):
    d64: 128 x 128, 3 stages (128 KiB); d128: 128 x 128, 2 stages (192 KiB). Rungs 9 and 10 split the query
    rows into 64-row slices (Q_ROWS), one per consumer warpgroup (CONSUMERS of them; rung 8 has one consumer
    partition): two, and three for rung 9 at d64 (192-row tiles, 144 KiB) without the causal mask, and under it
    from THREE_CAUSAL_FROM query rows. Three / two, in one process, once each warpgroup skips the blocks its rows
    do not see (``_skip_blocks``): without the mask 1.10-1.17x; under it 0.92x at 2k, 1.01-1.03x at 4k, 1.00-1.05x
    at 8k, 1.08x at 16k (results/h200-fa3-consumers-ab-3; before the skip, h200-fa3-consumers-ab: 0.87x at 2k).
    Rung 10 adds 64 KiB of P buffers and, at d128, keeps one Q buffer (the kernel decides: 192 KiB at
    d64, 224 KiB at d128). ``consumers`` overrides the count (studies and tests)."""
    stages = 3 if headdim <= 64 else 2
    if rung == 8:
        return dict(BLOCK_M=128, BLOCK_N=128, STAGES=stages, Q_ROWS=128, CONSUMERS=1)
    three = rung == 9 and headdim <= 64 and (not causal or seqlen_q >= THREE_CAUSAL_FROM)
    consumers = consumers or (3 if three else 2)
    return dict(BLOCK_M=64 * consumers, BLOCK_N=128, STAGES=stages, Q_ROWS=64, CONSUMERS=consumers)


def _tile_blocks(n_m: int, seqlen_q: int, seqlen_k: int, block_m: int, block_n: int = 128) -> np.ndarray:
    """K/V blocks each causal query block visits (``_kv_blocks``'s count, on the host)."""
    hi = np.clip(np.minimum(np.arange(n_m) * block_m + block_m, seqlen_q) + seqlen_k - seqlen_q, 0, seqlen_k)
    return -(-hi // block_n)


def causal_order(n_m: int, bh: int, band: int) -> tuple[np.ndarray, np.ndarray]:
    """``_tile``'s causal order on the host: (query block, batch * head) of tiles 0, 1, ..."""
    t = np.arange(n_m * bh)
    start = t // (band * n_m) * band  # the band's first head
    r = t - start * n_m
    width = np.minimum(band, bh - start)
    return n_m - 1 - r // width, start + r % width


def walk_balance(cost: np.ndarray, grid: int) -> float:
    """How evenly the persistent grid's walk spreads tiles of these costs (in tile order) over its CTAs: the mean
    over the largest of the CTAs' sums, when the tiles go out in rounds of ``grid``, every other round in reverse
    (``_slot``). 1.0: every CTA finishes together."""
    t = np.arange(len(cost))
    cta = np.where(t // grid % 2 == 1, grid - 1 - t % grid, t % grid)
    per_cta = np.bincount(cta, weights=cost, minlength=grid)
    return float(per_cta.mean() / per_cta.max())


def heads_in_flight(head: np.ndarray, grid: int) -> int:
    """The most (batch, head)s whose K/V one round of the walk reads (``head``: each tile's, in tile order)."""
    return max(len(np.unique(head[i:i + grid])) for i in range(0, len(head), grid))


@functools.lru_cache(maxsize=256)
def causal_band(n_m: int, bh: int, sms: int, kv_head_bytes: int, l2_bytes: int, seqlen_q: int, seqlen_k: int,
                block_m: int, per_tile: float = 1.0) -> int:
    """How many heads share one causal sweep (``_tile``'s ``BAND``): the persistent grid walks the tiles in
    rounds of ``grid``, every other round in reverse (``_slot``), so the order decides both the balance (each
    CTA's sum of blocks, plus ``per_tile`` for a tile's prologue and epilogue) and how many heads' K and V the
    CTAs running together read. With every head in one band (the longest-first order over all heads), a 2k-token
    causal forward had 128 heads in flight and read DRAM at 68% of its peak against cuDNN's 20% (ncu,
    docs/fa3.md section 12). The band is the best-balanced one whose heads' K/V fit in half the L2, unless no
    such band comes within 10% of the best balance over all bands. ``block_m``: the tile's query rows."""
    cost = _tile_blocks(n_m, seqlen_q, seqlen_k, block_m).astype(float) + per_tile
    grid = min(sms, n_m * bh)
    best = {}
    for band in sorted({*range(1, min(bh, 64) + 1), bh}):
        mb, head = causal_order(n_m, bh, band)
        best[band] = (walk_balance(cost[mb], grid), heads_in_flight(head, grid) * kv_head_bytes <= l2_bytes // 2)
    top = max(b for b, _ in best.values())
    fits = [band for band, (b, ok) in best.items() if ok and b >= 0.9 * top]
    return max(fits or best, key=lambda band: (best[band][0], -band))


# rung 9's causal tiles of three consumers (d64, from 4k query rows): at most this many heads per band. Chosen
# from three A/Bs on the H200 (fp16, paper shapes; results/h200-fa3-band3-ab, -band4-ab, -band5-ab), where band 8
# was within 0-5% of the best band at 4k, 8k and 16k and above causal_band's pick (24, 64, 32 heads) by 2-6% at
# 4k and 8k and 1-7% at 16k (in the two A/Bs that timed the pick): the walk's simulated balance, which makes the
# rule pick wide bands there, is worth less than the L2 hits of a narrow one (docs/fa3.md section 16). The sweep
# after it (results/h200-fa3-fwd-6) ran 4k level with the pick's run before. At d128 the rule's picks measured well.
THREE_BAND_MAX = 8

# rungs 9 and 10: a tile's last P V in the next tile's first group (1) or alone (0). On the H200 (docs/fa3.md
# section 16) the fused boundary ran d128 full 0.958 -> 0.990x cuDNN (fp16 medians) and d64 full 1.047 -> 1.079x;
# under the causal mask it did not help at d128 and cost d64 4-5% at 4k-8k (three consumers with unequal blocks)
FUSE_FULL, FUSE_CAUSAL = 1, 0

# rung 9: each warpgroup's O tile out through a shared buffer and one TMA copy (True), or through pointer stores from
# its registers (False). On at d128 by the rule of docs/fa3.md section 25 (on an H100, four rounds of each epilogue in
# one process: at least 1.005x the pointer stores' speed in six of eight cells, none below 0.995x): without the mask
# 1.02-1.09x (results/h100-fa3-epilogue-ab-2), under it 1.00-1.11x (-ab-3). Off at d64, where the rule failed by a
# cell (three consumers without the mask: 0.995x at bf16 16k in -ab-3, 0.974x in -ab-2; under the mask five of eight)
O_TMA = {(64, False): False, (64, True): False, (128, False): True, (128, True): True}


def launch_ints(batch: int, heads: int, group: int, seqlen_q: int, seqlen_k: int, headdim: int, causal: bool,
                sms: int, l2_bytes: int, elt: int = 2, rung: int = 8, consumers: int | None = None) -> dict:
    """Rung ``rung``'s forward kernel's runtime ints after ``qk_scale``, in their order: H, GROUP, N_CTX_Q,
    N_CTX_K, n_tiles (query blocks x batch x heads) and BAND (``causal_band``; 1 without the mask, where it is
    not read); rungs 9 and 10 also FUSE (``FUSE_FULL``, ``FUSE_CAUSAL``)."""
    cfg = tiles(headdim, rung, consumers, causal, seqlen_q)
    block_m = cfg["BLOCK_M"]
    n_m = triton.cdiv(seqlen_q, block_m)
    band = causal_band(n_m, batch * heads, sms, 2 * seqlen_k * headdim * elt, l2_bytes, seqlen_q, seqlen_k,
                       block_m) if causal else 1
    if cfg["CONSUMERS"] == 3:
        band = min(band, THREE_BAND_MAX)
    ints = dict(H=heads, GROUP=group, N_CTX_Q=seqlen_q, N_CTX_K=seqlen_k, n_tiles=n_m * batch * heads, BAND=band)
    return ints if rung == 8 else {**ints, "FUSE": FUSE_FULL if not causal else FUSE_CAUSAL}


def forward_kernel(rung: int, headdim: int, causal: bool, consumers: int | None = None,
                   o_tma: bool | None = None) -> tuple:
    """Rung ``rung``'s forward kernel and its compile-time arguments (constexprs and warps), as ``fa3_forward``
    launches it and ``compile_sm90`` compiles it (``consumers`` None: ``tiles``' count at short sequences;
    ``o_tma`` None: ``O_TMA``'s choice; rung 9 only, rung 10's shared memory has no room for the buffers)."""
    cfg = tiles(headdim, rung, consumers, causal)
    if rung == 8:
        return _fa3_fwd_kernel, dict(CAUSAL=causal, STAGES=cfg["STAGES"], num_warps=NUM_WARPS)
    o_tma = rung == 9 and (O_TMA[headdim, causal] if o_tma is None else o_tma)
    return _fa3_pp_fwd_kernel, dict(CAUSAL=causal, STAGES=cfg["STAGES"], OVERLAP=rung == 10,
                                    CONSUMERS=cfg["CONSUMERS"], O_TMA=o_tma, num_warps=PP_NUM_WARPS)


def smem_layout(block: list[int], dtype: torch.dtype) -> gl.NVMMASharedLayout:
    return gl.NVMMASharedLayout.get_default_for(block, DTYPES[dtype])


_last: dict = {}


def last_config() -> str:
    """The tiles of the most recent launch, e.g. "fwd: BLOCK_M=128 BLOCK_N=128 STAGES=2 w8+1"."""
    return " | ".join(f"{k}: {v}" for k, v in _last.items())


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why fa3 cannot run these inputs (None if it can): dtype, head dim, device."""
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} not supported (fp16, bf16)"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim {q.shape[-1]} not supported ({', '.join(map(str, HEAD_DIMS))})"
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] != 9:
        return "needs a Hopper GPU (sm_90)"
    return None


def _tma_heads(t: torch.Tensor) -> torch.Tensor:
    """``t`` as (batch * heads, seqlen, headdim), contiguous and 16-byte aligned, as host TMA descriptors need."""
    if not t.is_contiguous() or t.data_ptr() % 16:
        t = t.clone(memory_format=torch.contiguous_format)
    return t.view(-1, t.shape[-2], t.shape[-1])


def fa3_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                sm_scale: float | None = None, rung: int = 8, band: int | None = None,
                consumers: int | None = None, fuse: int | None = None, o_tma: bool | None = None):
    """The forward of rung ``rung`` (8: one 8-warp consumer partition; 9: ping-pong of two 4-warp consumer
    partitions, three at head dim 64 (under the mask from 4k query rows); 10: ping-pong of two plus the softmax
    overlapped with the warpgroup's own P V, P through shared memory):
    ``(o, lse)``, lse the log2-domain log-sum-exp (fp32, (batch, heads, seqlen_q), +inf for a row that sees no
    key), the same convention as ``flash2_forward``. ``band`` overrides ``causal_band``, ``consumers`` the
    consumer warpgroups of rungs 9 and 10 (``tiles``), ``fuse`` their FUSE, ``o_tma`` rung 9's ``O_TMA`` (tests and
    studies)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    name = RUNGS.get(rung)
    if name is None:
        raise ValueError(f"fa3: rung {rung} not built ({', '.join(map(str, RUNGS))})")
    shape = check_inputs(q, k, v)
    scale = check_scale(shape.headdim, sm_scale)
    reason = unsupported(q, k, v)
    if reason:
        raise ValueError(f"{name}: {reason}")
    cfg = tiles(shape.headdim, rung, consumers, bool(causal), shape.seqlen_q)
    consumers = cfg["CONSUMERS"]  # the launch's count, for the two helpers below
    bm, bn, qr, d = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["Q_ROWS"], shape.headdim
    q3, k3, v3 = _tma_heads(q), _tma_heads(k), _tma_heads(v)
    q_desc = TensorDescriptor.from_tensor(q3, [1, qr, d], smem_layout([1, qr, d], q.dtype))
    k_desc = TensorDescriptor.from_tensor(k3, [1, bn, d], smem_layout([1, bn, d], q.dtype))
    v_desc = TensorDescriptor.from_tensor(v3, [1, bn, d], smem_layout([1, bn, d], q.dtype))
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    props = torch.cuda.get_device_properties(q.device)
    ints = launch_ints(shape.batch, shape.heads, shape.group, shape.seqlen_q, shape.seqlen_k, shape.headdim,
                       bool(causal), props.multi_processor_count, props.L2_cache_size, rung=rung,
                       consumers=consumers)
    if band is not None:
        ints["BAND"] = band
    if fuse is not None and rung > 8:
        ints["FUSE"] = fuse
    grid = (min(props.multi_processor_count, ints["n_tiles"]),)
    kernel, consts = forward_kernel(rung, shape.headdim, bool(causal), consumers, o_tma)
    descs = (q_desc, k_desc, v_desc)
    if rung > 8:  # O's descriptor, where the kernel writes through it (else Q's as a stand-in of the same type)
        descs += (TensorDescriptor.from_tensor(o.view(-1, shape.seqlen_q, d), [1, qr, d],
                                               smem_layout([1, qr, d], q.dtype)) if consts["O_TMA"] else q_desc,)
    args = (*descs, o, lse, scale * LOG2E, *ints.values())
    kernel[grid](*args, **consts)
    warps = f"w{NUM_WARPS}+1" if rung == 8 else f"w{PP_NUM_WARPS}" + f"+{PP_NUM_WARPS}" * (cfg["CONSUMERS"] - 1) + "+1"
    order = f" band={ints['BAND']}" if causal else ""
    epilogue = " o_tma" if consts.get("O_TMA") else ""
    _last["fwd"] = f"{name} BLOCK_M={bm} BLOCK_N={bn} STAGES={cfg['STAGES']} {warps}{order}{epilogue}"
    return o, lse
