"""How one ring point runs (``run_point``, the collective every rank calls with the same point): the same full
inputs on every rank (one seed), each method's call on zig-zag shards, the output checked on a slice (the last
rows of each local chunk, one K/V head group) against a float32 reference over the whole sequence with the
single-GPU fa2 kernel's error on the same slice as the yardstick (the sweep's ``2 x baseline + floor`` gate),
then timed: the median of ``reps`` calls, each between barriers, the slowest rank's median. For ring-fa2 the
same schedule is also timed with every transfer skipped (compute) and the transfers alone (comm):
communication hidden = (compute + comm - total) / comm, clipped to 0..100%. ``ringbench`` runs points with it
through the runner; ``ringcheck`` checks gradients."""
from __future__ import annotations

import functools
import math
import time

import torch
import torch.distributed as dist

from fa2bench.core.flops import attention_flops
from fa2bench.core.precision import torch_dtype
from fa2bench.core.presets import Point
from fa2bench.distributed import blocks, ring
from fa2bench.distributed.methods import METHODS
from fa2bench.run.point import first_line
from fa2bench.run.timing import summarise

CHECK_ROWS = 128  # query rows per local chunk compared with the reference


# --- inputs and calls --------------------------------------------------------------------------------------


def full_inputs(batch, heads, kv_heads, seqlen, headdim, dtype, device, seed=0):
    """The same full q, k, v, dO on every rank (one seed)."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def draw(h):
        return torch.randn(batch, h, seqlen, headdim, generator=gen, device=device, dtype=torch.float32).to(dtype)

    return draw(heads), draw(kv_heads), draw(kv_heads), draw(heads)


def method_call(method: str, causal: bool, impl: str, communicate: bool = True):
    """fn(q, k, v) -> this rank's output shard, for zig-zag shards."""
    if method == "ring-fa2":
        return lambda q, k, v: ring.ring_attention(q, k, v, causal, impl=impl, communicate=communicate)
    if method == "allgather-fa2":
        return lambda q, k, v: ring.allgather_attention(q, k, v, causal, impl=impl)
    if method == "cp-sdpa":
        return _sdpa_local(causal)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _sdpa_local(causal):
    """SDPA pinned to its flash backend; inside ``context_parallel`` PyTorch turns it into its ring (it
    replaces ``torch.nn.functional.scaled_dot_product_attention``, so look it up at each call)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def fn(q, k, v):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return fn


def cp_options_text() -> str:
    """How PyTorch's context parallelism is set up in this version (load balancing, K/V rotation)."""
    try:
        from torch.distributed.tensor.experimental._attention import _cp_options
    except ImportError:
        return "sdpa-flash"
    fields = ("enable_load_balance", "rotate_method", "convert_to_f32")
    return "sdpa-flash " + " ".join(f"{f}={getattr(_cp_options, f)}" for f in fields if hasattr(_cp_options, f))


def cp_layout(local_q, q, rank, world):
    """Which rows of the sequence PyTorch gave this rank: head-tail (= zig-zag) when it balances the load,
    else one contiguous chunk."""
    n = q.shape[2]
    if torch.equal(local_q, ring.zigzag_shard(q, rank, world)):
        return zigzag_segments(n, rank, world)
    if torch.equal(local_q, q.chunk(world, dim=2)[rank]):
        return [(0, rank * (n // world), n // world)]
    raise RuntimeError("cannot tell how context_parallel sharded the sequence (neither zig-zag nor contiguous)")


@functools.cache
def _mesh(world: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cuda", (world,))


class CpSdpa:
    """PyTorch's context parallelism around the timed calls: shards the full buffers (head-tail = zig-zag
    order) and patches SDPA while open. K/V heads are repeated for GQA (SDPA's flash op has no GQA)."""

    def __init__(self, q, k, v, do, world):
        from torch.distributed.tensor.experimental import context_parallel

        group = q.shape[1] // k.shape[1]
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        self.buffers = [q.clone(), k.clone(), v.clone(), do.clone()]
        mesh = _mesh(world)
        self.ctx = context_parallel(mesh, buffers=self.buffers, buffer_seq_dims=[2, 2, 2, 2],
                                    no_restore_buffers=set(self.buffers))

    def __enter__(self):
        self.ctx.__enter__()
        return self.buffers

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


# --- timing ------------------------------------------------------------------------------------------------


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_call(call, reps: int, warmup: int, grads=()) -> tuple[float, float, float]:
    """(median, p20, p80) in ms of ``call`` on this rank, every repetition between barriers, and the slowest
    rank's values (all-reduced MAX)."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        for t in grads:
            t.grad = None
        sync()
        dist.barrier()
        start = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    timing = summarise(times, timer="barrier")  # the suite's statistics (fa2bench.run.timing)
    stats = torch.tensor([timing.ms, timing.ms_p20, timing.ms_p80], dtype=torch.float64,
                         device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    return tuple(stats.tolist())


def max_over_ranks(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


# --- correctness on a slice --------------------------------------------------------------------------------


def zigzag_segments(n: int, rank: int, world: int) -> list[tuple[int, int, int]]:
    """(local start, global start, length) of the runs of a zig-zag shard of a sequence of ``n``."""
    c = n // (2 * world)
    return [(0, rank * c, c), (c, (2 * world - 1 - rank) * c, c)]


def check_slice(o_local, q, k, v, causal, segments, impl):
    """(error of o_local, error of one-GPU fa2) on the last CHECK_ROWS rows of each run of the local shard
    (``segments``), query heads of the first K/V head, batch 0; both relative to a float32 reference over the
    whole sequence. Every rank gets the worst rank's values."""
    from fa2bench.core.reference import attention_ref, rel_error

    n = q.shape[2]
    group = q.shape[1] // k.shape[1]
    worst, worst_base = 0.0, 0.0
    for local_start, global_start, length in segments:
        m = min(CHECK_ROWS, length)
        end = global_start + length  # checked: global rows end-m .. end-1
        keys = slice(0, end) if causal else slice(0, n)
        qs = q[:1, :group, end - m:end]
        ks, vs = k[:1, :1, keys], v[:1, :1, keys]
        ref = attention_ref(qs, ks, vs, causal=causal, upcast=True, dtype=torch.float32)
        mine = o_local[:1, :group, local_start + length - m:local_start + length]
        base, _ = blocks.forward(qs, ks, vs, causal, 1.0 / math.sqrt(q.shape[-1]), impl)
        scale = ref.abs().max().item()
        worst = max(worst, rel_error(mine, ref, scale))
        worst_base = max(worst_base, rel_error(base, ref, scale))
    return max_over_ranks(worst), max_over_ranks(worst_base)


# --- one point -------------------------------------------------------------------------------------------


def run_point(point: Point, impl: str, reps: int, warmup: int) -> dict:
    """One row of ring.csv: ``point`` (provider = the method, its shape the sequence over all ranks) as a
    collective. Every rank of the process group calls this with the same point; every rank returns the same
    row (the slowest rank's times, the worst rank's errors). A failure is a row with its status."""
    method, mode, dtype, s = point.provider, point.mode, point.dtype, point.shape
    batch, heads, kv_heads, seqlen, headdim, causal = s.batch, s.heads, s.kv_heads, s.seqlen_q, s.headdim, s.causal
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    row = {**point.fields(), "world_size": world, "status": "ok", "error": "", "impl": impl,
           "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "flops": attention_flops(batch, heads, seqlen, seqlen, headdim, causal, mode)}
    if seqlen % (2 * world):
        return {**row, "status": "unsupported", "error": f"seqlen {seqlen} is not a multiple of 2 x {world}"}
    if method == "cp-sdpa" and (device != "cuda" or dtype == "fp32"):
        return {**row, "status": "unsupported", "error": "PyTorch's context parallelism needs CUDA SDPA "
                "(flash backend: fp16/bf16)"}
    try:
        q, k, v, do = full_inputs(batch, heads, kv_heads, seqlen, headdim, torch_dtype(dtype), device)
        shards = [ring.zigzag_shard(t, rank, world) for t in (q, k, v, do)]
        backward = mode != "fwd"
        segments = zigzag_segments(seqlen, rank, world)
        if method == "cp-sdpa":
            row["impl"] = cp_options_text()
        if method == "cp-sdpa" and world > 1:
            cp = CpSdpa(q, k, v, do, world)
            with cp as local:
                segments = cp_layout(local[0], q, rank, world)
                row.update(_measure(method, causal, impl, local, backward, reps, warmup, q, k, v, segments,
                                    world))
        else:
            if method == "cp-sdpa":  # one GPU: plain SDPA flash on the whole sequence (GQA repeated)
                group = heads // kv_heads
                shards = [shards[0], shards[1].repeat_interleave(group, 1), shards[2].repeat_interleave(group, 1),
                          shards[3]]
            row.update(_measure(method, causal, impl, shards, backward, reps, warmup, q, k, v, segments, world))
        if row["status"] == "ok":
            row["tflops_per_gpu"] = row["flops"] / (row["ms"] * 1e-3) / 1e12 / world
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="oom", error=first_line(exc))
    except Exception as exc:  # recorded; the next point runs
        row.update(status="error", error=f"{type(exc).__name__}: {first_line(exc)}")
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def _measure(method, causal, impl, local, backward, reps, warmup, q, k, v, segments, world) -> dict:
    ql, kl, vl, dol = (t.detach() for t in local)
    fn = method_call(method, causal, impl)
    out = {}
    with torch.no_grad():
        o = fn(ql, kl, vl)
    err, base = check_slice(o, q, k, v, causal, segments, impl)
    from fa2bench.core.reference import FACTOR, FLOOR

    out.update(max_rel_error=err, baseline_rel_error=base)
    if not err <= FACTOR * base + FLOOR[q.dtype]:
        return {**out, "status": "wrong", "error": f"o: rel err {err:.2e} (tol {FACTOR * base + FLOOR[q.dtype]:.2e})"}
    del o
    leaves = [t.clone().requires_grad_(backward) for t in (ql, kl, vl)]

    def timed(f):
        if not backward:
            return lambda: f(*leaves)
        return lambda: f(*leaves).backward(dol)

    if torch.cuda.is_available():
        sync()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    ms, p20, p80 = time_call(timed(fn), reps, warmup, leaves if backward else ())
    out.update(ms=ms, ms_p20=p20, ms_p80=p80)
    if torch.cuda.is_available():  # the method's own peak beyond what was held, plus this rank's input shards
        shards = sum(t.numel() * t.element_size() for t in (ql, kl, vl) + ((dol,) if backward else ()))
        out["peak_mem_gb"] = max_over_ranks((torch.cuda.max_memory_allocated() - held + shards) / 2**30)
    if method == "ring-fa2" and world > 1:
        compute = time_call(timed(method_call(method, causal, impl, communicate=False)), reps, 1,
                            leaves if backward else ())[0]
        comm = time_call(lambda: _comm_only(kl, vl, backward), reps, 1)[0]
        hidden = (compute + comm - ms) / comm if comm > 0 else float("nan")
        out.update(ms_compute=compute, ms_comm=comm, comm_hidden_pct=100.0 * min(1.0, max(0.0, hidden)))
    return out


def _comm_only(k, v, backward):
    """The ring's transfers alone: K/V world-1 times (forward; again in backward) and, in backward, the fp32
    dK/dV accumulators world times."""
    ring.ring_exchange_only([k, v])
    if backward:
        ring.ring_exchange_only([k, v])
        acc = [torch.zeros(k.shape, dtype=torch.float32, device=k.device) for _ in range(2)]
        ring.ring_exchange_only(acc, rounds=dist.get_world_size())
