"""Gradients of context-parallel attention against the one-GPU kernel (``fa2bench ring --check``): every rank's
shard of O, dQ, dK and dV gated like a sweep point, with the one-GPU kernel's error as the yardstick."""
from __future__ import annotations

import torch
import torch.distributed as dist

from fa2bench.core.precision import torch_dtype
from fa2bench.core.presets import Point
from fa2bench.distributed import ring
from fa2bench.distributed.ringcalls import full_inputs, max_over_ranks, method_call


def check_gradients(point: Point, impl: str) -> dict:
    """Forward and backward of ``point``'s method (its provider) on this rank's shards, gated against a float32
    reference on the query heads of the first K/V head (every rank its own shard), with the one-GPU kernel
    (``impl`` on the whole sequence) as the baseline. A collective: every rank calls it with the same point and
    returns the same row, the worst rank's verdict."""
    from fa2bench.core.reference import attention_ref, judge

    method, dtype, s = point.provider, point.dtype, point.shape
    batch, heads, kv_heads, seqlen, headdim, causal = s.batch, s.heads, s.kv_heads, s.seqlen_q, s.headdim, s.causal
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v, do = full_inputs(batch, heads, kv_heads, seqlen, headdim, torch_dtype(dtype), device, seed=1)
    group = heads // kv_heads
    qs, ks, vs = (slice(None), slice(0, group)), (slice(None), slice(0, 1)), (slice(None), slice(0, 1))

    def grads(fn, q_, k_, v_, do_, upcast=None):
        leaves = [t.detach().clone().requires_grad_() for t in (q_, k_, v_)]
        o = fn(*leaves)
        o.backward(do_.to(o.dtype))
        return {"o": o.detach(), "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}

    shard = lambda t: ring.zigzag_shard(t, rank, world)  # noqa: E731
    mine = grads(method_call(method, causal, impl), *(shard(t) for t in (q, k, v, do)))
    ref = grads(lambda a, b, c: attention_ref(a, b, c, causal=causal, upcast=True, dtype=torch.float32),
                q[qs], k[ks], v[vs], do[qs])
    one = grads(lambda a, b, c: _one_gpu(a, b, c, causal, impl), q[qs], k[ks], v[vs], do[qs])
    parts = {"o": qs, "dq": qs, "dk": ks, "dv": vs}
    outputs = {n: mine[n][parts[n]] for n in parts}
    refs = {n: shard(ref[n]) for n in parts}
    baselines = {n: shard(one[n]) for n in parts}
    verdict = judge(outputs, refs, baselines, q.dtype)
    worst = max_over_ranks(verdict.max_rel_error)
    ok = max_over_ranks(0.0 if verdict.ok else 1.0) == 0.0
    details = [None] * world
    dist.all_gather_object(details, verdict.detail)
    return {**point.fields(), "world_size": world, "impl": impl, "status": "ok" if ok else "wrong",
            "max_rel_error": worst,
            "detail": " | ".join(f"rank {r}: {d}" for r, d in enumerate(details))}


def _one_gpu(q, k, v, causal, impl):
    if impl == "fa2":
        from fa2bench.kernels import flash2_attention

        return flash2_attention(q, k, v, causal=causal)
    from fa2bench.core.reference import attention_ref

    return attention_ref(q, k, v, causal=causal, upcast=False)

