"""What Gluon (Triton >= 3.6) expresses on sm_90: one tiny kernel per Hopper feature, each compiled for an H100/H200
on this CPU machine, printing OK with what the SASS shows, or FAILED with the compiler's own last line.

    python3 tools/gluon_probes.py            # all probes

The findings are written up in docs/fa3.md; kernels/fa3.py is built from the features that pass here.
"""
from __future__ import annotations

import os
import re
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,  # noqa: E402
                                                              warpgroup_mma, warpgroup_mma_wait)

from compile_sm90 import compile_gluon, resources, root_cause, sass  # noqa: E402

TILE = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
TILE3 = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=3)
TILE_LAYOUT = gl.constexpr(TILE)


def desc(block, layout=TILE, dtype="fp16") -> str:
    """The signature string of a host-side Gluon tensor descriptor argument."""
    return f"tensordesc<{dtype}[{', '.join(map(str, block))}],{layout!r}>"


@gluon.jit
def wgmma_tma_probe(a_desc, b_desc, out_ptr, num_warps: gl.constexpr):
    """One TMA load of A [64, 64] and B [64, 64] behind an mbarrier, one async wgmma, a masked pointer store."""
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    a = gl.allocate_shared_memory(a_desc.dtype, a_desc.block_type.shape, a_desc.layout)
    b = gl.allocate_shared_memory(b_desc.dtype, b_desc.block_type.shape, b_desc.layout)
    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(a_desc, [0, 0], bar, a)
    tma.async_copy_global_to_shared(b_desc, [0, 0], bar, b)
    mbarrier.wait(bar, phase=0)
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, 64, 16])
    acc = gl.zeros([64, 64], gl.float32, layout)
    acc = warpgroup_mma(a, b.permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    rows = gl.arange(0, 64, gl.SliceLayout(1, layout))
    cols = gl.arange(0, 64, gl.SliceLayout(0, layout))
    gl.store(out_ptr + rows[:, None] * 64 + cols[None, :], acc)


@gluon.jit
def _ws_consumer(a_bufs, b_bufs, ready, empty, out_ptr, n_iters, num_warps: gl.constexpr):
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, 64, 16])
    acc = gl.zeros([128, 64], gl.float32, layout)
    for i in range(n_iters):
        s = i % 2
        mbarrier.wait(ready.index(s), (i // 2) & 1)
        acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index(s), count=1)
    rows = gl.arange(0, 128, gl.SliceLayout(1, layout))
    cols = gl.arange(0, 64, gl.SliceLayout(0, layout))
    gl.store(out_ptr + rows[:, None] * 64 + cols[None, :], acc)


@gluon.jit
def _ws_producer(a_desc, b_desc, a_bufs, b_bufs, ready, empty, n_iters):
    for i in range(n_iters):
        s = i % 2
        mbarrier.wait(empty.index(s), ((i // 2) & 1) ^ 1)
        mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(a_desc, [0, i * 64], ready.index(s), a_bufs.index(s))
        tma.async_copy_global_to_shared(b_desc, [0, i * 64], ready.index(s), b_bufs.index(s))


@gluon.jit
def warp_specialize_probe(a_desc, b_desc, out_ptr, n_iters, num_warps: gl.constexpr):
    """A 1-warp TMA producer (24 registers) feeding a 2-stage ring to an 8-warp wgmma consumer."""
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [2] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [2] + b_desc.block_type.shape, b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(2):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    gl.warp_specialize([
        (_ws_consumer, (a_bufs, b_bufs, ready, empty, out_ptr, n_iters, num_warps)),
        (_ws_producer, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, n_iters)),
    ], [1], [24])


@gluon.jit
def persistent_device_desc_probe(x_ptr, out_ptr, rows, n_tiles, num_warps: gl.constexpr):
    """A persistent loop over tiles (grid = SM count, stride num_programs) with a device-side descriptor."""
    layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    x_desc = tma.make_tensor_descriptor(x_ptr, [rows, 64], [64, 1], [64, 64], layout)
    buf = gl.allocate_shared_memory(gl.float16, [64, 64], layout)
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    reg: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    phase = 0
    for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
        mbarrier.expect(bar, x_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(x_desc, [t * 64, 0], bar, buf)
        mbarrier.wait(bar, phase)
        phase ^= 1
        x = buf.load(reg)
        r = gl.arange(0, 64, gl.SliceLayout(1, reg))
        c = gl.arange(0, 64, gl.SliceLayout(0, reg))
        gl.store(out_ptr + (t * 64 + r)[:, None] * 64 + c[None, :], x * 2)
        gl.thread_barrier()
        fence_async_shared()


@gluon.jit
def rank3_desc_probe(a_desc, b_desc, out_ptr, num_warps: gl.constexpr):
    """A rank-3 descriptor (head, row, dim) with block [1, 64, 64], its tile reshaped to 2-D for wgmma: rows past
    one head's end would read TMA's zeros instead of the next head's rows."""
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    a = gl.allocate_shared_memory(a_desc.dtype, a_desc.block_type.shape, a_desc.layout)
    b = gl.allocate_shared_memory(b_desc.dtype, b_desc.block_type.shape, b_desc.layout)
    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(a_desc, [0, 0, 0], bar, a)
    tma.async_copy_global_to_shared(b_desc, [0, 0, 0], bar, b)
    mbarrier.wait(bar, phase=0)
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, 64, 16])
    acc = warpgroup_mma(a.reshape([64, 64]), b.reshape([64, 64]).permute((1, 0)),
                        gl.zeros([64, 64], gl.float32, layout))
    rows = gl.arange(0, 64, gl.SliceLayout(1, layout))
    cols = gl.arange(0, 64, gl.SliceLayout(0, layout))
    gl.store(out_ptr + rows[:, None] * 64 + cols[None, :], acc)


@gluon.jit
def _mma_worker(a_smem, out_ptr):
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    acc = warpgroup_mma(a_smem, a_smem.permute((1, 0)), gl.zeros([64, 64], gl.float32, layout))
    rows = gl.arange(0, 64, gl.SliceLayout(1, layout))
    cols = gl.arange(0, 64, gl.SliceLayout(0, layout))
    gl.store(out_ptr + rows[:, None] * 64 + cols[None, :], acc)


@gluon.jit
def _idle(a_smem, out_ptr):
    pass


@gluon.jit
def wgmma_in_worker_probe(out_ptr, num_warps: gl.constexpr):
    """wgmma in a 4-warp worker partition with 232 registers, as a second consumer warpgroup (ping-pong) needs."""
    a_smem = gl.allocate_shared_memory(gl.float16, [64, 64], TILE_LAYOUT)
    gl.warp_specialize([(_idle, (a_smem, out_ptr)), (_mma_worker, (a_smem, out_ptr))], [4], [232])


@gluon.jit
def _use_tensor(x):
    gl.static_print(x)


@gluon.jit
def tensor_to_worker_probe(out_ptr, num_warps: gl.constexpr):
    """A register tensor passed to a worker partition (the tutorial says only the default partition may)."""
    x = gl.arange(0, 128, gl.BlockedLayout([1], [32], [num_warps], [0]))
    gl.warp_specialize([(_use_tensor, (x,)), (_use_tensor, (x,))], [1], [24])


PROBES = {
    "wgmma+tma+mbarrier": (wgmma_tma_probe, dict(a_desc=desc([64, 64]), b_desc=desc([64, 64]), out_ptr="*fp32"),
                           dict(num_warps=4), 4, {}),
    "warp_specialize(1 producer warp, 24 regs)": (
        warp_specialize_probe, dict(a_desc=desc([128, 64]), b_desc=desc([64, 64]), out_ptr="*fp32", n_iters="i32"),
        dict(num_warps=8), 8, dict(maxnreg=168)),
    "persistent + device-side descriptor": (
        persistent_device_desc_probe, dict(x_ptr="*fp16", out_ptr="*fp16", rows="i32", n_tiles="i32"),
        dict(num_warps=4), 4, {}),
    "rank-3 descriptor, tile reshaped to 2-D for wgmma": (
        rank3_desc_probe, dict(a_desc=desc([1, 64, 64], TILE3), b_desc=desc([1, 64, 64], TILE3), out_ptr="*fp32"),
        dict(num_warps=4), 4, {}),
    "wgmma in a 4-warp worker partition (232 regs)": (wgmma_in_worker_probe, dict(out_ptr="*fp32"),
                                                      dict(num_warps=4), 4, {}),
    "register tensor passed to a worker partition": (tensor_to_worker_probe, dict(out_ptr="*fp32"),
                                                     dict(num_warps=4), 4, {}),
}


def main() -> None:
    for name, (fn, sig, consts, warps, opts) in PROBES.items():
        try:
            k = compile_gluon(fn, sig, consts, warps, **opts)
            code = sass(k)
            seen = sorted({m for m in re.findall(r"\b(HGMMA|USETMAXREG|UTMALDG|SYNCS)\S*", code)})
            print(f"{name}: OK {resources(k)}; SASS has {', '.join(seen) or 'none of HGMMA/USETMAXREG/UTMALDG'}",
                  flush=True)
        except Exception as exc:
            print(f"{name}: FAILED {root_cause(exc)}", flush=True)


if __name__ == "__main__":
    main()
