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

Not in rung 8 (later rungs, not built yet): ping-pong scheduling of the two consumer warpgroups (rung 9) and
overlap of the softmax with the next block's QK^T inside a warpgroup (rung 10); each consumer iteration here
waits for its own wgmma. Backward: none (``fa3_attention`` refuses inputs that require grad).

Layout and limits: q (batch, heads, seqlen_q, headdim), k and v (batch, kv_heads, seqlen_k, headdim), heads a
multiple of kv_heads (GQA/MQA); fp16 or bf16; head dim 64 or 128; any sequence lengths; an H100/H200 (sm_90).
Inputs are viewed as 3-D (batch * heads, seqlen, headdim) for host-side TMA descriptors with [1, rows, headdim]
blocks (made contiguous first if they are not), so rows past the end of a head's sequence load as TMA's zeros;
keys past seqlen_k are also masked to -inf. Query rows past seqlen_q are computed and never stored. O is written
through masked pointer stores.

Tested: compiles for sm_90 under Triton 3.6 on a CPU machine (tests/test_fa3.py; SASS has HGMMA, UTMALDG and
USETMAXREG). Not yet run on a GPU at the time of writing: see docs/fa3.md.
"""
from __future__ import annotations

from ._common import check_inputs, check_scale  # first: Triton's interpreter switch, before Triton is imported

import torch  # noqa: E402,I001
import triton  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait  # noqa: E402

# Triton 3.6 names the TMA load async_copy_global_to_shared; later versions call it async_load
tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
LOG2E = 1.4426950408889634
HEAD_DIMS = (64, 128)
DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


# ----------------------------------------------------------------------------------------------------------------
# Work shared by both partitions: which tile, which K/V blocks


@gluon.jit
def _tile(t, n_m, BH, CAUSAL: gl.constexpr):
    """Tile ``t`` -> (query block, batch * head). Causal: query blocks from the last (longest) down, every head
    at one block before the next block; otherwise the heads outer, so CTAs running together share K and V."""
    if CAUSAL:
        return n_m - 1 - t // BH, t % BH
    else:
        return t % n_m, t // n_m


@gluon.jit
def _kv_blocks(m0, N_CTX_Q, N_CTX_K, CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """(blocks every row of the query block [m0, m0 + BLOCK_M) sees in full, blocks it sees at all)."""
    if CAUSAL:
        diag = N_CTX_K - N_CTX_Q
        n_full = gl.maximum(gl.minimum(m0 + diag + 1, N_CTX_K), 0) // BLOCK_N
        hi = gl.maximum(gl.minimum(m0 + BLOCK_M + diag, N_CTX_K), 0)
    else:
        n_full = N_CTX_K // BLOCK_N
        hi = N_CTX_K
    return n_full, gl.cdiv(hi, BLOCK_N)


# ----------------------------------------------------------------------------------------------------------------
# Producer partition: one warp issuing TMA copies


@gluon.jit
def _producer(q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty,
              H, GROUP, N_CTX_Q, N_CTX_K, n_tiles, CAUSAL: gl.constexpr, STAGES: gl.constexpr):
    BLOCK_M: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    n_m = gl.cdiv(N_CTX_Q, BLOCK_M)
    BH = n_tiles // n_m
    it = 0  # K/V blocks issued so far: stage it % STAGES, its use number it // STAGES
    done = 0  # tiles issued so far: Q buffer done % 2
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        mb, bh = _tile(t, n_m, BH, CAUSAL)
        m0 = mb * BLOCK_M
        n_full, n_blocks = _kv_blocks(m0, N_CTX_Q, N_CTX_K, CAUSAL, BLOCK_M, BLOCK_N)
        kv_bh = bh // H * (H // GROUP) + bh % H // GROUP  # batch * kv_heads index of query head bh
        qb = done % 2
        mbarrier.wait(q_empty.index(qb), (done // 2 & 1) ^ 1)  # a fresh barrier passes phase 1 at once
        mbarrier.expect(q_ready.index(qb), q_desc.block_type.nbytes)
        tma_load(q_desc, [bh, m0, 0], q_ready.index(qb), q_bufs.index(qb))
        for j in range(n_blocks):
            s = it % STAGES
            mbarrier.wait(kv_empty.index(s), (it // STAGES & 1) ^ 1)
            mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
            tma_load(k_desc, [kv_bh, j * BLOCK_N, 0], k_ready.index(s), k_bufs.index(s))
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
        if MASK:
            cols = j * BLOCK_N + gl.arange(0, BLOCK_N, gl.SliceLayout(0, s_layout))
            keep = cols[None, :] < N_CTX_K
            if CAUSAL:
                rows = m0 + gl.arange(0, BLOCK_M, gl.SliceLayout(1, s_layout))
                keep = keep & (cols[None, :] <= rows[:, None] + (N_CTX_K - N_CTX_Q))
            qk = gl.where(keep, qk * qk_scale, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(qk, 1))
            qk = qk - m_new[:, None]
        else:
            m_new = gl.maximum(m_i, gl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_new[:, None]
        p = gl.exp2(qk)
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, 1)
        m_i = m_new
        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
        p = gl.convert_layout(p.to(v_bufs.dtype), p_layout)
        mbarrier.wait(v_ready.index(s), phase)
        acc = warpgroup_mma(p, v_bufs.index(s).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(kv_empty.index(s), count=1)
        it += 1
    return acc, m_i, l_i, it


@gluon.jit
def _consumer(q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, O, LSE, qk_scale,
              N_CTX_Q, N_CTX_K, n_tiles, CAUSAL: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    BLOCK_M: gl.constexpr = q_bufs.shape[2]
    HEAD_DIM: gl.constexpr = q_bufs.shape[3]
    BLOCK_N: gl.constexpr = k_bufs.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    n_m = gl.cdiv(N_CTX_Q, BLOCK_M)
    BH = n_tiles // n_m
    it = 0
    done = 0
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        mb, bh = _tile(t, n_m, BH, CAUSAL)
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
        # epilogue: one division per row; a row that saw no key has l = 0: O = 0, L = +inf
        seen = l_i > 0.0
        lse = gl.where(seen, m_i + gl.log2(gl.where(seen, l_i, 1.0)), float("inf"))
        inv_l = gl.convert_layout(1.0 / gl.where(seen, l_i, 1.0), o_rows)
        out = (acc * inv_l[:, None]).to(q_bufs.dtype)
        rows = m0 + gl.arange(0, BLOCK_M, o_rows)
        cols = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, o_layout))
        row_off = (bh * N_CTX_Q + rows).to(gl.int64) * HEAD_DIM
        gl.store(O + row_off[:, None] + cols[None, :], out, mask=(rows < N_CTX_Q)[:, None])
        lse_rows = m0 + gl.arange(0, BLOCK_M, s_rows)
        gl.store(LSE + bh.to(gl.int64) * N_CTX_Q + lse_rows, lse, mask=lse_rows < N_CTX_Q)


# ----------------------------------------------------------------------------------------------------------------
# The kernel: shared memory, barriers, and the two partitions


@gluon.jit
def _fa3_fwd_kernel(q_desc, k_desc, v_desc, O, LSE, qk_scale, H, GROUP, N_CTX_Q, N_CTX_K, n_tiles,
                    CAUSAL: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = q_desc.dtype
    q_bufs = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=1)
    gl.warp_specialize([
        (_consumer, (q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty, O, LSE, qk_scale,
                     N_CTX_Q, N_CTX_K, n_tiles, CAUSAL, STAGES, num_warps)),
        (_producer, (q_desc, k_desc, v_desc, q_bufs, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty,
                     H, GROUP, N_CTX_Q, N_CTX_K, n_tiles, CAUSAL, STAGES)),
    ], [1], [24])


# ----------------------------------------------------------------------------------------------------------------
# Host side


TRITON_KERNELS = {"fwd": _fa3_fwd_kernel}  # every kernel a launch runs (for profiling)
NUM_WARPS = 8  # the consumer partition: two warpgroups; the producer warp comes on top


def tiles(headdim: int) -> dict:
    """Tile sizes and ring depth per head dim (shared memory: 2 Q buffers + STAGES x (K + V) stages, fp16/bf16):
    d64: 128 x 128, 3 stages (128 KiB); d128: 128 x 128, 2 stages (192 KiB)."""
    return dict(BLOCK_M=128, BLOCK_N=128, STAGES=3 if headdim <= 64 else 2)


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
                sm_scale: float | None = None):
    """Rung 8's forward: ``(o, lse)``, lse the log2-domain log-sum-exp (fp32, (batch, heads, seqlen_q), +inf for
    a row that sees no key), the same convention as ``flash2_forward``."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    shape = check_inputs(q, k, v)
    scale = check_scale(shape.headdim, sm_scale)
    reason = unsupported(q, k, v)
    if reason:
        raise ValueError(f"fa3: {reason}")
    cfg = tiles(shape.headdim)
    bm, bn, d = cfg["BLOCK_M"], cfg["BLOCK_N"], shape.headdim
    q3, k3, v3 = _tma_heads(q), _tma_heads(k), _tma_heads(v)
    q_desc = TensorDescriptor.from_tensor(q3, [1, bm, d], smem_layout([1, bm, d], q.dtype))
    k_desc = TensorDescriptor.from_tensor(k3, [1, bn, d], smem_layout([1, bn, d], q.dtype))
    v_desc = TensorDescriptor.from_tensor(v3, [1, bn, d], smem_layout([1, bn, d], q.dtype))
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    n_tiles = triton.cdiv(shape.seqlen_q, bm) * shape.batch * shape.heads
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    _fa3_fwd_kernel[(min(sms, n_tiles),)](
        q_desc, k_desc, v_desc, o, lse, scale * LOG2E, shape.heads, shape.group, shape.seqlen_q, shape.seqlen_k,
        n_tiles, CAUSAL=bool(causal), STAGES=cfg["STAGES"], num_warps=NUM_WARPS)
    _last["fwd"] = f"BLOCK_M={bm} BLOCK_N={bn} STAGES={cfg['STAGES']} w{NUM_WARPS}+1"
    return o, lse


def fa3_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  sm_scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * sm_scale) v with rung 8's Hopper forward (forward only: inputs that require grad under
    autograd are refused). Layout (batch, heads, seq, headdim); causal aligned bottom-right."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("fa3 is forward-only (no backward yet): call it under torch.no_grad() or detach inputs")
    return fa3_forward(q, k, v, causal, sm_scale)[0]
