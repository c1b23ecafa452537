"""fa3 (kernels/fa3.py): rung 8's Hopper forward in Gluon, rung 9's ping-pong variant (fa3-pingpong) and rung 10
(fa3-overlap: the softmax under the warpgroup's own P V); and their one backward (kernels/fa3_bwd.py: a dK/dV
kernel and a dQ kernel).

On the CPU: the kernels compile for sm_90 (Gluon does not run in the interpreter) with wgmma, TMA and register
reallocation in their SASS and no spills; the provider and the functions refuse what they cannot run, in one line.
On a Hopper GPU (``-m gpu``): output and log-sum-exp against the float64 reference, fp16 and bf16, head dims 64
and 128, causal or not, GQA/MQA, ragged and unequal lengths; repeated runs bit-equal; the same for dQ, dK, dV of
the backward. A wrong mbarrier phase hangs rather than fails: each GPU test has a 60 s limit (pytest-timeout, on
the GPU image).
"""
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fa2bench.core import providers
from fa2bench.core.presets import Shape
from fa2bench.core.reference import attention_ref, check_attention
from fa2bench.profiling.sass import step_loops
from tests import fresh
from tests.kernel_cases import make_qkv, shape_id

ROOT = Path(__file__).resolve().parents[1]


def _gluon_hopper_problem() -> str | None:
    """Why this Triton cannot compile fa3 (None if it can): Gluon's Hopper API arrived in Triton 3.6."""
    try:
        from triton.experimental.gluon.language.nvidia.hopper import tma, warpgroup_mma  # noqa: F401
    except ImportError as exc:
        return f"this Triton has no Gluon Hopper API ({exc})"
    return None


def _stack_budget(on_triton36: int, newer: int) -> int:
    """Spill-stack bytes a compiled kernel may have: its budget under Triton 3.6 (the GPU image's, where the kernels
    run), or the largest a newer Triton's bundled ptxas was seen to need (recorded, not to grow)."""
    import triton

    return on_triton36 if triton.__version__.startswith("3.6.") else newer


def _paper_shape_args(args: tuple[str, ...], seqlen: int = 4096) -> tuple[str, str]:
    """``--shape`` of the paper's shape at ``seqlen`` for the head dim in ``args``: the kernel a launch compiles."""
    from fa2bench.core.presets import paper_shape

    return "--shape", ",".join(map(str, paper_shape(int(args[args.index("--headdim") + 1]), seqlen)))


def compile_fa3(*args: str, kernel: str = "fa3") -> str:
    out = fresh.python("-m", "fa2bench.profiling.compile_sm90", "--kernel", kernel, *args)
    return out.stdout + out.stderr[-2000:] * (out.returncode != 0)


@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("rung", ["8", "9", "10"])
@pytest.mark.parametrize("args", [("--headdim", "128", "--causal"), ("--headdim", "64", "--dtype", "bf16")],
                         ids=["d128-fp16-causal", "d64-bf16-full"])
def test_compiles_for_sm90_with_wgmma_tma_and_register_reallocation(args, rung):
    """Each forward rung as a launch of the paper's shape at 4k compiles it (ints divisible by 16, as the GPU runs
    it): HGMMA, UTMALDG and USETMAXREG in the SASS, TMA stores (UTMASTG) where O goes out by TMA copies (rung 9's
    default at d128, ``fa3.O_TMA``), no spills under Triton 3.6 (the GPU image's), shared memory within an H100's.
    A newer ptxas, recorded, not to grow: Triton 3.9 keeps 64 B of rung 9 (8 B before its O went out by TMA
    copies at d128, docs/fa3.md section 25) and 48 B of rung 10 at d128 causal (per-tile scalars).
    Compiled with plain ints these builds kept up to 16 B (3.6) and 184 B (3.9) of rung 9's three consumers at d64:
    the launch build has none."""
    out = compile_fa3(*args, "--rung", rung, *_paper_shape_args(args))
    assert "FAILED" not in out and "sass HGMMA,USETMAXREG,UTMALDG" in out, out
    assert ("UTMASTG" in out) == (rung == "9" and "128" in args), out
    assert int(out.split("stack ")[1].split()[0]) <= _stack_budget(0, {"8": 0, "9": 64, "10": 48}[rung]), out
    smem = int(out.split("smem ")[1].split()[0])
    assert smem <= 227 * 1024, out  # fits an H100's shared memory per block


@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("args", [("--headdim", "128"), ("--headdim", "64")], ids=["d128-full", "d64-full"])
def test_rung9_writes_o_by_tma_copies_within_shared_memory_and_without_spills(args):
    """Rung 9 with ``O_TMA`` (the epilogue study, docs/fa3.md section 25; the default at d128), as a launch of the
    paper's shape at 4k compiles it: TMA stores (UTMASTG) in the SASS, shared memory within an H100's with the two
    16 KiB O buffers at d128 (224 KiB with Q's and the K/V ring), and no spills. d128 causal is the test above's."""
    out = compile_fa3(*args, "--rung", "9", "--o-tma", *_paper_shape_args(args))
    assert "FAILED" not in out and "UTMASTG" in out, out
    assert int(out.split("stack ")[1].split()[0]) == 0, out
    assert int(out.split("smem ")[1].split()[0]) <= 227 * 1024, out


def _compiled_asm(headdim: int, causal: bool, rung: int, consumers: int = 0, seqlen: int = 0) -> dict:
    """PTX and SASS of a forward rung (``consumers``: rungs 9/10's consumer warpgroups, 0 for ``fa3.tiles``'
    choice), compiled in a fresh process (this one may have imported the kernels under Triton's interpreter); with
    ``seqlen`` as a launch of the paper's shape at that length compiles it (its ints divisible by 16, as the GPU runs
    it), else with plain ints."""
    code = ("import json, sys; from fa2bench.profiling import compile_sm90; "
            "from fa2bench.core.presets import paper_shape; d = int(sys.argv[1]); "
            "k = compile_sm90.compile_fa3(d, sys.argv[2] == '1', rung=int(sys.argv[3]), "
            "consumers=int(sys.argv[4]) or None, shape=paper_shape(d, int(sys.argv[5]))); "
            "print(json.dumps({'ptx': k.asm['ptx'], 'sass': compile_sm90.sass(k)}))")
    return fresh.json_of(code, headdim, int(causal), rung, consumers, seqlen)


@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("rung", [9, 10])
def test_pingpong_kernels_give_each_consumer_warpgroup_240_registers(rung):
    """Rungs 9/10: two consumer partitions at 240 registers and the producer at 24 (65,536 = 128 x (240 + 240 +
    24) + spare). Rung 9 waits for every wgmma group at once and takes P V's A operand (P) from registers."""
    import re

    asm = _compiled_asm(128, False, rung)
    assert {"240", "24"} <= set(re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", asm["ptx"]))
    waits = set(re.findall(r"wgmma\.wait_group\.sync\.aligned (\d+)", asm["ptx"]))
    assert waits == ({"0"} if rung == 9 else {"0", "1"})
    register_a = re.findall(r"HGMMA\.\S+ R\d+, R\d+, gdesc", asm["sass"])  # A from registers: P V with P in registers
    assert bool(register_a) == (rung == 9)


@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_rung9_at_head_dim_64_runs_three_consumer_warpgroups_without_spills_in_their_steps(causal):
    """Rung 9 at d64: three consumer partitions (the default one and two 4-warp workers) at 160-168 registers
    each and the producer at 24, within 65,536 (4 warpgroups x 128 threads); a 192-row tile. ptxas keeps a few
    per-tile scalars on the stack (Triton 3.6: 16 B; 3.8: up to 16 B; 3.9: up to 168 B since the boundary group,
    104 B before), stored and reloaded outside the block loops: no local memory inside any consumer's step loop
    (two per consumer: the unmasked and the masked blocks) under Triton 3.6, the GPU image's (and 3.8); 3.9's
    ptxas was seen to keep up to 22 local accesses in a masked loop, none in the unmasked ones (recorded, not to
    grow). Compiled as a launch of the paper's shape at 4k compiles it (where three consumers run): there one
    consumer's masked loop keeps 14 local accesses under Triton 3.6 (12 with the two-compare mask of before, whose
    check compiled plain ints and so saw none; Triton 3.9: up to 38; recorded, not to grow)."""
    from fa2bench.kernels import fa3

    assert fa3.tiles(64, 9)["CONSUMERS"] == 3 and fa3.tiles(64, 9)["BLOCK_M"] == 192
    assert fa3.tiles(64, 9, causal=True, seqlen_q=fa3.THREE_CAUSAL_FROM)["CONSUMERS"] == 3
    # two where three measured slower (the causal mask on short sequences) and where three do not fit (d128) or
    # are not built (rung 10)
    assert [fa3.tiles(64, 9, causal=True, seqlen_q=fa3.THREE_CAUSAL_FROM - 1)["CONSUMERS"],
            fa3.tiles(128, 9)["CONSUMERS"], fa3.tiles(64, 10)["CONSUMERS"]] == [2, 2, 2]
    asm = _compiled_asm(64, causal, 9, consumers=3, seqlen=fa3.THREE_CAUSAL_FROM)
    # the default partition: up to 256 while it sets up, then down to 168; the two workers up to 160; the producer
    # down to 24 (128 x (168 + 2 x 160 + 24) = 65,536)
    regs = re.findall(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)", asm["ptx"])
    assert {("dec", "168"), ("inc", "160"), ("dec", "24")} <= set(regs), regs
    loops = step_loops(asm["sass"])  # the consumers' per-block steps
    assert len(loops) == 6, len(loops)  # 3 consumers x (unmasked, masked)
    local = sorted(sum(bool(re.search(r"\b(LDL|STL)\b", text)) for text in body) for body in loops)
    # (Triton 3.9, plain ints: 22 since masked scores are scaled with the unmasked ones, 20 since the boundary group)
    assert local[:3] == [0, 0, 0] and local[-1] <= _stack_budget(14 if causal else 0, 38), \
        f"local memory in the step loops: {local}"


@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("headdim,causal", [(128, False), (64, True)], ids=["d128-full", "d64-causal"])
def test_rung10_softmax_runs_under_its_own_pv_in_the_sass(headdim, causal):
    """Rung 10 (FA3's intra-warpgroup overlap) as the SASS orders it: in every step, after the wait for S_j alone
    (WARPGROUP.DEPBAR.LE gsb0, 0x1) come all of block j's exponentials (64 per thread: a 64 x 128 tile over 128
    threads) and P_j's store to shared memory, and only then the wait for P_{j-1} V_{j-1} (gsb0, 0x0). With P in
    registers ptxas put that wait before the first exponential (it packs P_j into the registers the in-flight
    P V reads; docs/fa3.md sections 5 and 9), so this failing means the overlap is gone."""
    sass = _compiled_asm(headdim, causal, 10)["sass"].splitlines()
    firsts = [i for i, line in enumerate(sass) if "WARPGROUP.DEPBAR.LE gsb0, 0x1" in line]
    assert len(firsts) == 4  # two warpgroups x (unmasked, masked) loops
    for i in firsts:
        nxt = next(j for j in range(i + 1, len(sass)) if "WARPGROUP.DEPBAR.LE gsb0, 0x0" in sass[j])
        between = sass[i:nxt]
        assert sum("MUFU.EX2" in line for line in between) >= 64, "the softmax does not run under P V"
        assert any("STSM" in line or " STS" in line for line in between), "P_j is not stored under P V"


@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("args", [("--headdim", "128", "--causal"), ("--headdim", "128", "--dtype", "bf16"),
                                  ("--headdim", "64", "--causal", "--dtype", "bf16"), ("--headdim", "64")],
                         ids=["d128-fp16-causal", "d128-bf16-full", "d64-bf16-causal", "d64-fp16-full"])
def test_backward_compiles_for_sm90_with_wgmma_tma_and_register_reallocation(args):
    """Both backward kernels (dK/dV, dQ) as a launch of the paper's shape at 4k compiles them: HGMMA, UTMALDG and
    USETMAXREG in the SASS, no spills under Triton 3.6, the GPU image's (the dK/dV kernel's two accumulators take
    128 of the consumers' 240 registers at head dim 128: it spilled until its statistics and its causal mask were
    rearranged, docs/fa3.md section 7; Triton 3.9's ptxas spills 8 B of it at d128 causal, which must not grow),
    shared memory within an H100's."""
    out = compile_fa3(*args, *_paper_shape_args(args), kernel="fa3-bwd")
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("fa3 bwd_")}
    assert set(lines) == {"bwd_dkdv", "bwd_dq"}, out
    for line in lines.values():
        assert "FAILED" not in line and "sass HGMMA,USETMAXREG,UTMALDG" in line, out
        assert int(line.split("stack ")[1].split()[0]) <= _stack_budget(0, 8), out
        assert int(line.split("smem ")[1].split()[0]) <= 227 * 1024, out


@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("args,stack", [(("--headdim", "128", "--causal"), (0, 8)),
                                        (("--headdim", "64", "--dtype", "bf16"), (0, 0))],
                         ids=["d128-fp16-causal", "d64-bf16-full"])
def test_atomic_dq_variant_compiles_with_fp32_reductions(args, stack):
    """The dK/dV kernel that also adds dQ by per-element atomics (DQ_ATOMICS = "redg"), as a launch of the paper's
    shape at 4k compiles it: REDG (fp32 reductions) in the SASS; no spills under Triton 3.6 (its plain-int build
    spilled 64 B at d128 causal, docs/fa3.md section 7) and at most Triton 3.9's 8 B there (152 B plain), which
    must not grow."""
    out = compile_fa3(*args, "--atomic-dq", *_paper_shape_args(args), kernel="fa3-bwd")
    assert out.startswith("fa3 bwd_dkdv") and "sass HGMMA,REDG,USETMAXREG,UTMALDG" in out, out
    assert int(out.split("stack ")[1].split()[0]) <= _stack_budget(*stack), out
    assert int(out.split("smem ")[1].split()[0]) <= 227 * 1024, out


@pytest.mark.parametrize("name,rung,function,modes", [("fa3", 8, "fa3_attention", {"fwd", "bwd", "fwd_bwd"}),
                                                      ("fa3-deterministic", None, "fa3_deterministic_attention",
                                                       {"bwd", "fwd_bwd"}),
                                                      ("fa3-pingpong", 9, "fa3_pingpong_attention",
                                                       {"fwd", "fwd_bwd"}),
                                                      ("fa3-overlap", 10, "fa3_overlap_attention",
                                                       {"fwd", "fwd_bwd"})])
def test_providers_are_their_rungs_and_hopper_only(name, rung, function, modes):
    """fa3 runs the backward (kernels/fa3_bwd.py); the other forward rungs share it, so they run fwd and fwd_bwd
    (their forward, then that backward) but not bwd alone: a rung-9 bwd point would time rung 8's backward kernels."""
    p = providers.get(name)
    assert (p.rung, p.kind, p.module, p.function, set(p.modes)) == (rung, "ours", "fa3", function, modes)
    assert p.availability("cpu") == "needs a Hopper GPU (sm_90)"
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        assert p.availability("cuda") == "needs a Hopper GPU (sm_90)"
    gpu = "cuda"
    assert p.unsupported_reason(Shape(1, 2, 2, 64, 64, 96, False), "fp16", "bwd" if "fwd" not in modes else "fwd",
                                gpu) in ("head dim 96 not supported (64, 128)", p.availability(gpu))
    for mode in {"fwd", "bwd"} - modes:
        assert p.unsupported_reason(Shape(1, 2, 2, 64, 64, 64, False), "fp16", mode, gpu) in (
            f"mode {mode} not supported", p.availability(gpu))


def test_unsupported_inputs_are_one_line_errors():
    from fa2bench.kernels import fa3_attention, fa3_pingpong_attention
    from fa2bench.kernels.fa3 import fa3_forward
    from fa2bench.kernels.fa3_bwd import fa3_backward

    h = torch.randn(1, 2, 16, 96, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^fa3-pingpong: head dim 96 not supported \(64, 128\)$"):
        fa3_pingpong_attention(h, h, h)
    with pytest.raises(ValueError, match=r"^fa3: rung 11 not built \(8, 9, 10\)$"):
        fa3_forward(h, h, h, rung=11)
    q = torch.randn(1, 2, 16, 64)
    with pytest.raises(ValueError, match=r"^fa3: dtype torch.float32 not supported \(fp16, bf16\)$"):
        fa3_attention(q, q, q)
    h = torch.randn(1, 2, 16, 96, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"^fa3: head dim 96 not supported \(64, 128\)$"):
        fa3_attention(h, h, h)
    with pytest.raises(ValueError, match=r"^fa3 backward: head dim 96 not supported \(64, 128\)$"):
        fa3_backward(h, h, h, h, torch.zeros(1, 2, 16), h)
    g = torch.randn(1, 2, 16, 64, dtype=torch.float16, requires_grad=True)  # differentiable now: refused on the CPU
    with pytest.raises(ValueError, match=r"^fa3: needs a Hopper GPU \(sm_90\)$"):
        fa3_attention(g, g, g)
    with pytest.raises(ValueError, match=r"^fa3 backward: needs a Hopper GPU \(sm_90\)$"):
        fa3_backward(g, g, g, g, torch.zeros(1, 2, 16), g)


@pytest.mark.parametrize("n_m,bh,band", [(16, 128, 12), (16, 128, 128), (5, 7, 3), (1, 9, 4), (64, 2, 1)])
def test_causal_order_visits_every_tile_once_longest_first_in_each_band(n_m, bh, band):
    from fa2bench.kernels.fa3 import causal_order

    mb, head = causal_order(n_m, bh, band)
    assert sorted(zip(mb.tolist(), head.tolist())) == [(m, h) for m in range(n_m) for h in range(bh)]
    for start in range(0, bh, band):  # a band is a run of tiles of its own heads, query blocks descending
        run = slice(start * n_m, min(start + band, bh) * n_m)
        assert set(head[run].tolist()) == set(range(start, min(start + band, bh)))
        assert (np.diff(mb[run]) <= 0).all()


def test_the_walk_reverses_every_other_round_and_counts_the_heads_a_round_reads():
    """Two CTAs, two rounds: round 1 runs backwards (``_slot``), so the long tile of round 1 goes to the CTA that
    took round 0's short one; a round reads the K/V of the distinct heads among its tiles."""
    from fa2bench.kernels.fa3 import heads_in_flight, walk_balance

    assert walk_balance(np.array([3.0, 1.0, 3.0, 1.0]), 2) == 1.0  # CTA 0: 3 + 1, CTA 1: 1 + 3
    assert walk_balance(np.array([3.0, 1.0, 1.0, 3.0]), 2) == pytest.approx(4 / 6)  # CTA 0: 3 + 3, CTA 1: 1 + 1
    assert walk_balance(np.array([2.0, 2.0, 2.0]), 2) == pytest.approx(3 / 4)  # a partial last round
    assert heads_in_flight(np.array([0, 0, 1, 2, 2, 2]), 3) == 2


def test_causal_band_keeps_a_2k_sweep_in_l2_and_a_long_one_balanced():
    """Paper shapes on an H200 (132 SMs, 60 MiB L2), d128 fp16: at 2k (128 heads of 1 MiB K/V each) a band of
    heads whose K/V fit in half the L2; at 16k (16 heads of 8 MiB) one head per band would leave CTAs idle (the
    stride-132 walk of 128 query blocks), so every head shares the sweep, as before bands."""
    from fa2bench.kernels.fa3 import causal_band, launch_ints

    mib = 2**20
    short = launch_ints(8, 16, 1, 2048, 2048, 128, True, 132, 60 * mib)
    assert 1 < short["BAND"] < 128 and short["BAND"] * 1 * mib <= 30 * mib
    assert launch_ints(1, 16, 1, 16384, 16384, 128, True, 132, 60 * mib)["BAND"] == 16
    assert launch_ints(8, 16, 1, 2048, 2048, 128, False, 132, 60 * mib)["BAND"] == 1
    # nothing fits (no L2) and everything fits (a huge one) reduce the rule to the same: the best-balanced band
    best_balanced = causal_band(16, 128, 132, mib, 10**12, 2048, 2048, 128)
    assert causal_band(16, 128, 132, mib, 0, 2048, 2048, 128) == best_balanced
    assert causal_band(128, 16, 132, 8 * mib, 0, 16384, 16384, 128) == 16


def test_three_consumer_causal_tiles_take_narrow_bands():
    """Rung 9's 192-row causal tiles (d64 from 4k query rows) take at most THREE_BAND_MAX heads per band, where
    causal_band would take every head at 8k and 16k; two-consumer tiles keep causal_band's pick."""
    from fa2bench.kernels.fa3 import THREE_BAND_MAX, causal_band, launch_ints

    mib = 2**20
    for seqlen in (4096, 8192, 16384):
        ints = launch_ints(16384 // seqlen, 32, 1, seqlen, seqlen, 64, True, 132, 60 * mib, rung=9)
        n_m = -(-seqlen // 192)
        assert ints["n_tiles"] == n_m * 16384 // seqlen * 32  # 192-row tiles: three consumers
        picked = causal_band(n_m, 16384 // seqlen * 32, 132, 2 * seqlen * 64 * 2, 60 * mib, seqlen, seqlen, 192)
        assert ints["BAND"] == min(picked, THREE_BAND_MAX)
    assert launch_ints(1, 32, 1, 16384, 16384, 64, True, 132, 60 * mib, rung=9)["BAND"] == THREE_BAND_MAX < 32
    two = launch_ints(8, 32, 1, 2048, 2048, 64, True, 132, 60 * mib, rung=9)  # 2k: two consumers, 128-row tiles
    assert two["BAND"] == causal_band(16, 256, 132, 2 * 2048 * 64 * 2, 60 * mib, 2048, 2048, 128) > THREE_BAND_MAX


# --- on a Hopper GPU ---------------------------------------------------------------------------------------------

SHAPES = [  # (batch, heads, kv_heads, seqlen_q, seqlen_k, headdim)
    (1, 2, 2, 128, 128, 64),  # one tile
    (2, 4, 2, 333, 517, 128),  # GQA, ragged, seqlen_q < seqlen_k
    (1, 4, 1, 1000, 77, 64),  # MQA, seqlen_q > seqlen_k: under causal the first rows see no key
    (1, 2, 2, 77, 1000, 128),  # a short query block against many keys
    (2, 3, 3, 1, 129, 64),  # one query row
    (2, 8, 4, 2048, 2048, 128),  # 256 tiles: more than one per SM of the persistent grid
]



@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("rung", ["9", "10"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_every_gpu_test_shape_compiles_as_its_launch_specialises_it(shape, rung):
    """The kernel a launch of each GPU test shape compiles (Triton makes an int argument equal to 1 a constant and
    marks multiples of 16), not only the all-i32 one: rung 10's kernel for seqlen_q = 1 without the causal mask
    crashed ptxas on the H200 (SIGSEGV), which the all-i32 compiles above did not show. No spills under Triton
    3.6 but rung 9's per-tile scalars at d64. A newer ptxas: at most the 8 B recorded above, except rung 10 at
    d128 for 77 query rows against 1000 keys, where Triton 3.9's keeps 64 B since its consumers pass the blocks
    their rows do not see (``_skip_blocks``): 62 local accesses, one in each consumer's masked step loop
    (recorded, not to grow; Triton 3.6: none)."""
    batch, heads, kv_heads, seqlen_q, seqlen_k, headdim = shape
    out = compile_fa3("--headdim", str(headdim), "--rung", rung, "--shape",
                      ",".join(map(str, (batch, heads, kv_heads, seqlen_q, seqlen_k))))
    assert "FAILED" not in out and "sass HGMMA,USETMAXREG,UTMALDG" in out, out
    three = rung == "9" and headdim == 64  # three consumers: a few per-tile scalars on the stack (test above)
    newer = 168 if three else 64 if rung == "10" and headdim == 128 else 8  # 3-consumer: 104 before the boundary group
    assert int(out.split("stack ")[1].split()[0]) <= _stack_budget(16 if three else 0, newer), out


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def lse_ref(q, k, causal):
    """log2(sum_j exp(q.k_j / sqrt(d))) in float64, +inf for a row that sees no key (written independently of
    the kernel: full score matrix, torch.logsumexp)."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    s = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:  # bottom-right aligned; a row that sees no key is all -inf (causal_mask keeps such rows finite)
        rows = torch.arange(q.shape[2], device=q.device)[:, None]
        cols = torch.arange(k.shape[2], device=q.device)[None, :]
        s = s.masked_fill(cols > rows + (k.shape[2] - q.shape[2]), float("-inf"))
    lse = torch.logsumexp(s, dim=-1) / math.log(2)
    return torch.where(torch.isfinite(lse), lse, torch.full_like(lse, float("inf")))


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("rung, o_tma", [(8, None), (9, False), (9, True), (10, None)],
                         ids=["fa3", "fa3-pingpong-stores", "fa3-pingpong-tma", "fa3-overlap"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_output_and_lse_match_the_float64_reference(shape, dtype, causal, rung, o_tma):
    """Each rung's O and LSE on every GPU test shape, rung 9 with either epilogue (``o_tma``: O through pointer
    stores, or through shared memory and TMA copies, whose bounds leave out rows past seqlen_q), and the same bits
    when run again."""
    from fa2bench.kernels.fa3 import fa3_forward

    def run(q, k, v, c):
        return fa3_forward(q, k, v, causal=c, rung=rung, o_tma=o_tma)

    q, k, v = make_qkv(shape, dtype, "cuda")
    verdict = check_attention(lambda q, k, v, c: run(q, k, v, c)[0], q, k, v, causal, backward=False)
    assert verdict.ok, verdict.detail
    o, lse = run(q, k, v, causal)
    torch.testing.assert_close(lse.double(), lse_ref(q, k, causal), atol=1e-3, rtol=1e-5)
    o2, lse2 = run(q, k, v, causal)
    assert torch.equal(o, o2) and torch.equal(lse, lse2), "repeated runs differ"


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("headdim", [64, 128])
@pytest.mark.parametrize("rung", [8, 9])
@pytest.mark.parametrize("band", [1, 3, 8])
def test_every_causal_band_gives_the_reference_output(band, rung, headdim):
    """The band only reorders tiles: any band (here 1, 3 and all 8 heads of 2 x 4) computes the same O and LSE
    (rung 9 at d64: 192-row tiles of three consumers)."""
    from fa2bench.kernels.fa3 import fa3_forward

    q, k, v = make_qkv((2, 4, 2, 1000, 1000, headdim), torch.float16, "cuda")
    o, lse = fa3_forward(q, k, v, causal=True, rung=rung, band=band)
    verdict = check_attention(lambda q, k, v, c: fa3_forward(q, k, v, causal=c, rung=rung, band=band)[0], q, k, v,
                              True, backward=False)
    assert verdict.ok, verdict.detail
    torch.testing.assert_close(lse.double(), lse_ref(q, k, True), atol=1e-3, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("rung", [9, 10])
@pytest.mark.parametrize("fuse", [0, 1], ids=["last-pv-alone", "boundary-group"])
@pytest.mark.parametrize("shape", [(2, 4, 2, 333, 517, 128), (1, 4, 1, 1000, 77, 64), (2, 3, 3, 700, 700, 64)],
                         ids=shape_id)
def test_both_tile_boundaries_give_the_reference_output(shape, fuse, rung, causal):
    """A tile's last P V alone or in the next tile's first group (``FUSE``, whichever the launch would pick): the
    same O and LSE, with and without the mask, where warpgroups see unequal blocks (causal, ragged) and rows see
    no key (seqlen_q > seqlen_k), over several tiles per CTA."""
    from fa2bench.kernels.fa3 import fa3_forward

    q, k, v = make_qkv(shape, torch.float16, "cuda")
    o, lse = fa3_forward(q, k, v, causal=causal, rung=rung, fuse=fuse)
    verdict = check_attention(lambda q, k, v, c: fa3_forward(q, k, v, causal=c, rung=rung, fuse=fuse)[0], q, k, v,
                              causal, backward=False)
    assert verdict.ok, verdict.detail
    torch.testing.assert_close(lse.double(), lse_ref(q, k, causal), atol=1e-3, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[-1] == 64], ids=shape_id)
def test_rung9_with_the_other_consumer_count_at_head_dim_64_gives_the_reference_output(shape, causal):
    """The consumer count rung 9 does not pick at d64 on these shorter sequences (two without the mask, three
    with it), which ``consumers`` keeps for the A/B (tools/fa3_consumers_ab.py), still computes attention."""
    from fa2bench.kernels.fa3 import fa3_forward

    other = 3 if causal else 2
    q, k, v = make_qkv(shape, torch.float16, "cuda")
    verdict = check_attention(lambda q, k, v, c: fa3_forward(q, k, v, causal=c, rung=9, consumers=other)[0], q, k,
                              v, causal, backward=False)
    assert verdict.ok, verdict.detail


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("shape", [(1, 2, 1, 4100, 4100, 64), (2, 2, 2, 4097, 6000, 64), (1, 2, 2, 4224, 300, 64)],
                         ids=shape_id)
def test_rung9_under_the_mask_from_4k_rows_runs_three_consumers_and_gives_the_reference_output(shape):
    """From THREE_CAUSAL_FROM query rows the causal d64 forward takes 192-row tiles of three consumers, whose
    warpgroups pass the blocks past their own diagonals and, in a ragged last tile, every block for rows past
    seqlen_q (here 4100 = 21 x 192 + 68: the second warpgroup keeps 4 rows, the third none); with seqlen_q >
    seqlen_k the first rows see no key (O = 0, L = +inf)."""
    from fa2bench.kernels import fa3

    q, k, v = make_qkv(shape, torch.float16, "cuda")
    o, lse = fa3.fa3_forward(q, k, v, causal=True, rung=9)
    assert "BLOCK_M=192" in fa3.last_config()
    verdict = check_attention(lambda q, k, v, c: fa3.fa3_forward(q, k, v, causal=c, rung=9)[0], q, k, v, True,
                              backward=False)
    assert verdict.ok, verdict.detail
    torch.testing.assert_close(lse.double(), lse_ref(q, k, True), atol=1e-3, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("name", ["fa3", "fa3-pingpong", "fa3-overlap"])
def test_non_contiguous_inputs_and_custom_scale(name):
    import fa2bench.kernels as kernels

    q, k, v = make_qkv((2, 4, 2, 300, 300, 128), torch.float16, "cuda", bshd=True)
    o = getattr(kernels, providers.get(name).function)(q, k, v, causal=True, sm_scale=0.05)
    ref = attention_ref(q, k, v, causal=True, sm_scale=0.05).to(o.dtype)
    torch.testing.assert_close(o, ref, atol=2e-3, rtol=0)


# --- the backward on a Hopper GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_gradients_match_the_float64_reference(shape, dtype, causal):
    """dQ, dK, dV (and O) of fa3-deterministic against the float64 reference, through check_attention's gate (the
    kernel's error at most a small multiple of plain PyTorch's in the same dtype); GQA's dK, dV summed over the
    group; repeated backward passes bit-equal (dQ from its own kernel, no atomics)."""
    from fa2bench.kernels import fa3_deterministic_attention

    q, k, v = make_qkv(shape, dtype, "cuda")
    verdict = check_attention(lambda q, k, v, c: fa3_deterministic_attention(q, k, v, causal=c), q, k, v, causal)
    assert verdict.ok, verdict.detail
    grads = []
    do = torch.randn(q.shape, dtype=dtype, device="cuda")
    for _ in range(2):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        fa3_deterministic_attention(*leaves, causal=causal).backward(do)
        grads.append([t.grad for t in leaves])
    assert all(torch.equal(a, b) for a, b in zip(*grads)), "repeated backward passes differ"


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("name", ["fa3", "fa3-pingpong", "fa3-deterministic"])
def test_backward_of_non_contiguous_inputs_with_custom_scale(name):
    """(b, s, h, d) inputs viewed as (b, h, s, d) and a scale that is not 1/sqrt(d), through the same gate as
    check_attention (float64 reference, plain fp16 PyTorch as the baseline); the rung-9 forward shares the
    backward."""
    import fa2bench.kernels as kernels
    from fa2bench.core.reference import judge

    fn = getattr(kernels, providers.get(name).function)
    q, k, v = make_qkv((2, 4, 2, 300, 300, 128), torch.float16, "cuda", bshd=True)
    do = torch.randn(q.shape, dtype=q.dtype, device="cuda")

    def run(f, **kw):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        o = f(*leaves, causal=True, sm_scale=0.05, **kw)
        o.backward(do.to(o.dtype))
        return dict(o=o.detach(), dq=leaves[0].grad, dk=leaves[1].grad, dv=leaves[2].grad)

    verdict = judge(run(fn), run(attention_ref, upcast=True), run(attention_ref, upcast=False), q.dtype)
    assert verdict.ok, verdict.detail
