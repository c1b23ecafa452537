"""Context-parallel attention across ranks: zig-zag sharding, ring attention, and the all-gather baseline.

The sequence is split over the ranks of a process group. With causal masking a plain split is unbalanced
(the last rank's queries see every key, the first rank's almost none), so the sequence is cut into
``2 * world`` chunks and rank r holds chunks r and 2*world-1-r (zig-zag): every rank then does the same work.

``ring_attention`` (method ``ring-fa2``): each rank keeps its Q shard and passes its K/V shard around the
ring with asynchronous point-to-point sends (``batch_isend_irecv``). At step s a rank holds the K/V of rank
(r - s) mod world; it starts sending that K/V on to rank r+1 and receiving the next one from rank r-1, then
runs the FlashAttention-2 forward on the block it holds while the transfer is in flight, and folds the
block's output into its running output through their log-sum-exps. Under zig-zag sharding, step 0 is
causal on the rank's own shard, and every later step is one unmasked block of half the work: if the K/V
came from a lower rank, all local queries against its first chunk; from a higher rank, the local second
chunk of queries against all of it. The backward walks the same ring: dQ accumulates locally, and dK/dV
accumulators travel with the K/V they belong to (fp32), arriving home after a full turn.

``allgather_attention`` (method ``allgather-fa2``): all-gather K and V, then each rank's two Q chunks
attend to the keys before them (bottom-right-aligned causal masking makes a prefix exactly right); the
backward reduce-scatters dK and dV. Simple, and its memory grows with the whole sequence.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from fa2bench.distributed import blocks


# --- zig-zag sharding --------------------------------------------------------------------------------------


def zigzag_shard(x: torch.Tensor, rank: int, world: int, dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s shard of ``x`` along ``dim``: chunks ``rank`` and ``2*world-1-rank`` of ``2*world``."""
    n = x.shape[dim]
    if n % (2 * world):
        raise ValueError(f"sequence length {n} is not a multiple of 2 x {world} ranks (zig-zag sharding)")
    chunks = x.chunk(2 * world, dim=dim)
    return torch.cat([chunks[rank], chunks[2 * world - 1 - rank]], dim=dim).contiguous()


def zigzag_unshard(shards: list[torch.Tensor], dim: int = 2) -> torch.Tensor:
    """The full tensor from every rank's zig-zag shard (in rank order)."""
    world = len(shards)
    chunks: list[torch.Tensor | None] = [None] * (2 * world)
    for r, shard in enumerate(shards):
        first, second = shard.chunk(2, dim=dim)
        chunks[r], chunks[2 * world - 1 - r] = first, second
    return torch.cat(chunks, dim=dim)


def gather_zigzag(x: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather every rank's zig-zag shard ``x`` and return the full tensor (no autograd)."""
    world = dist.get_world_size(group)
    shards = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(shards, x.contiguous(), group=group)
    return zigzag_unshard(shards)


# --- the ring ----------------------------------------------------------------------------------------------


class _Ring:
    """Peers and the asynchronous exchange of one ring step: send to rank+1, receive from rank-1."""

    def __init__(self, group, communicate: bool = True):
        self.group = group
        self.world = dist.get_world_size(group) if dist.is_initialized() else 1
        self.rank = dist.get_rank(group) if dist.is_initialized() else 0
        self.communicate = communicate

        def global_rank(r):
            return r if group is None else dist.get_global_rank(group, r)

        self.next, self.prev = global_rank((self.rank + 1) % self.world), global_rank((self.rank - 1) % self.world)

    def start(self, tensors: list[torch.Tensor]):
        """Begin sending ``tensors`` to the next rank and receiving their like from the previous one."""
        if not self.communicate or self.world == 1:  # compute-only timing (or alone): keep what we have
            return tensors, []
        recv = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group) for t in recv]
        return recv, dist.batch_isend_irecv(ops)

    @staticmethod
    def wait(works) -> None:
        for w in works:
            w.wait()


def _step_block(step: int, src: int, rank: int, causal: bool, n_local: int):
    """Which part of the local Q and the held K/V block step ``step`` computes, under zig-zag sharding:
    (q rows slice, k/v rows slice, causal) or None when nothing is attended."""
    everything = slice(0, n_local)
    if not causal:
        return everything, everything, False
    if step == 0:
        return everything, everything, True
    half = n_local // 2
    if src < rank:  # K/V chunks src (before both local chunks) and 2w-1-src (after both): first half only
        return everything, slice(0, half), False
    return slice(half, n_local), everything, False  # src > rank: only the local second chunk sees it, fully


class _RingAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, impl, group, communicate):
        ring = _Ring(group, communicate)
        n = q.shape[2]
        if causal and n % 2:
            raise ValueError(f"causal ring attention needs an even local sequence (zig-zag halves), got {n}")
        acc = _accumulator(q.dtype)
        out = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=acc, device=q.device)
        kv = [k.contiguous(), v.contiguous()]
        for step in range(ring.world):
            nxt, works = ring.start(kv) if step < ring.world - 1 else (None, [])
            rows, cols, blk_causal = _step_block(step, (ring.rank - step) % ring.world, ring.rank, causal, n)
            o_blk, lse_blk = blocks.forward(q[:, :, rows], kv[0][:, :, cols], kv[1][:, :, cols], blk_causal,
                                            scale, impl)
            if step == 0:
                out[:, :, rows] = o_blk.to(acc)
                lse[:, :, rows] = lse_blk
            else:
                blocks.merge(out[:, :, rows], lse[:, :, rows], o_blk, lse_blk)
            ring.wait(works)
            if nxt is not None:
                kv = nxt
        o = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale, ctx.impl, ctx.group, ctx.communicate = causal, scale, impl, group, communicate
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        ring = _Ring(ctx.group, ctx.communicate)
        n = q.shape[2]
        do = do.contiguous()
        acc = _accumulator(q.dtype)
        dq = torch.zeros(q.shape, dtype=acc, device=q.device)
        kv = [k.contiguous(), v.contiguous()]
        dkv_works, dkv_recv = [], None
        for step in range(ring.world):
            nxt, kv_works = ring.start(kv) if step < ring.world - 1 else (None, [])
            rows, cols, blk_causal = _step_block(step, (ring.rank - step) % ring.world, ring.rank, ctx.causal, n)
            dq_blk, dk_blk, dv_blk = blocks.backward(q[:, :, rows], kv[0][:, :, cols], kv[1][:, :, cols],
                                                     o[:, :, rows], lse[:, :, rows], do[:, :, rows], blk_causal,
                                                     ctx.scale, ctx.impl)
            dq[:, :, rows] += dq_blk.to(acc)
            if step == 0:
                dkv = [torch.zeros(k.shape, dtype=acc, device=k.device) for _ in range(2)]
            else:  # the accumulators of the K/V we hold arrive from the previous rank
                ring.wait(dkv_works)
                dkv = dkv_recv
            dkv[0][:, :, cols] += dk_blk.to(acc)
            dkv[1][:, :, cols] += dv_blk.to(acc)
            dkv_recv, dkv_works = ring.start(dkv)  # on to the next rank; after the last step, home
            ring.wait(kv_works)
            if nxt is not None:
                kv = nxt
        ring.wait(dkv_works)
        dk, dv = dkv_recv
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """Partial outputs, LSEs and gradients accumulate in fp32 (fp64 for fp64 inputs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def ring_attention(q, k, v, causal: bool = False, sm_scale: float | None = None, impl: str = "fa2", group=None,
                   communicate: bool = True) -> torch.Tensor:
    """Attention of this rank's zig-zag shards q (batch, heads, n, d) and k, v (batch, kv_heads, n, d) against
    the whole sequence held by the ranks of ``group``; returns this rank's shard of the output.
    Differentiable. ``communicate=False`` skips every transfer (a compute-only timing, wrong results)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    return _RingAttention.apply(q, k, v, bool(causal), scale, impl, group, communicate)


def ring_exchange_only(tensors: list[torch.Tensor], group=None, rounds: int | None = None) -> None:
    """Ring transfers alone (default world-1 rounds of ``tensors``): what ring attention hides behind compute."""
    ring = _Ring(group)
    held = [t.contiguous() for t in tensors]
    for _ in range(ring.world - 1 if rounds is None else rounds):
        held, works = ring.start(held)
        ring.wait(works)


# --- the all-gather baseline -------------------------------------------------------------------------------


class _AllGatherAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, impl, group):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        k_all, v_all = gather_zigzag(k, group), gather_zigzag(v, group)
        parts = _allgather_parts(q.shape[2], world, rank, causal)
        outs, lses = [], []
        for rows, keys in parts:
            o_p, lse_p = blocks.forward(q[:, :, rows], k_all[:, :, keys], v_all[:, :, keys], causal, scale, impl)
            outs.append(o_p)
            lses.append(lse_p)
        o, lse = torch.cat(outs, dim=2), torch.cat(lses, dim=2)
        ctx.save_for_backward(q, k_all, v_all, o, lse)
        ctx.causal, ctx.scale, ctx.impl, ctx.group = causal, scale, impl, group
        return o

    @staticmethod
    def backward(ctx, do):
        q, k_all, v_all, o, lse = ctx.saved_tensors
        group = ctx.group
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        do = do.contiguous()
        dq = torch.empty_like(q)
        dk_all = torch.zeros(k_all.shape, dtype=_accumulator(q.dtype), device=q.device)
        dv_all = torch.zeros_like(dk_all)
        for rows, keys in _allgather_parts(q.shape[2], world, rank, ctx.causal):
            dq_p, dk_p, dv_p = blocks.backward(q[:, :, rows], k_all[:, :, keys], v_all[:, :, keys], o[:, :, rows],
                                               lse[:, :, rows], do[:, :, rows], ctx.causal, ctx.scale, ctx.impl)
            dq[:, :, rows] = dq_p
            dk_all[:, :, keys] += dk_p.to(dk_all.dtype)
            dv_all[:, :, keys] += dv_p.to(dv_all.dtype)
        dk = _reduce_scatter_zigzag(dk_all, group).to(k_all.dtype)
        dv = _reduce_scatter_zigzag(dv_all, group).to(v_all.dtype)
        return dq, dk, dv, None, None, None, None


def _allgather_parts(n_local: int, world: int, rank: int, causal: bool):
    """(local query rows, global key rows) pairs: with causal masking each local chunk sees the prefix of the
    sequence up to its own end (bottom-right alignment makes the mask exact)."""
    if not causal:
        return [(slice(0, n_local), slice(0, n_local * world))]
    c = n_local // 2
    return [(slice(0, c), slice(0, (rank + 1) * c)), (slice(c, n_local), slice(0, (2 * world - rank) * c))]


def _reduce_scatter_zigzag(full: torch.Tensor, group) -> torch.Tensor:
    """Sum ``full`` (sequence order) over ranks and return this rank's zig-zag shard of the sum."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    stacked = torch.stack([zigzag_shard(full, r, world) for r in range(world)])
    if dist.get_backend(group) == "nccl":
        mine = torch.empty_like(stacked[0])
        dist.reduce_scatter_tensor(mine, stacked, group=group)
        return mine
    dist.all_reduce(stacked, group=group)  # gloo has no reduce-scatter
    return stacked[rank]


def allgather_attention(q, k, v, causal: bool = False, sm_scale: float | None = None, impl: str = "fa2",
                        group=None) -> torch.Tensor:
    """Like ``ring_attention`` (zig-zag shards in, this rank's output shard out), by all-gathering K/V."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    return _AllGatherAttention.apply(q, k, v, bool(causal), scale, impl, group)
