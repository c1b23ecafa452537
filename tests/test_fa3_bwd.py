"""fa3's backward with dQ added by TMA reduce-adds (kernels/fa3_bwd.py, ``DQ_ATOMICS = "tma"``): the dK/dV kernel
computes each step's dQ tile (dS K, the fifth matmul) and adds it into the fp32 dQ with one TMA reduce-add from
shared memory (SASS UTMAREDG, as cuDNN's backward), instead of the dQ kernel that recomputes S and dP (two more
matmuls) or per-element fp32 atomics (REDG, measured slower: docs/fa3.md section 8).

On the CPU: the kernel compiles for sm_90 with UTMAREDG and no REDG, within its recorded spill budgets (the stack,
and the local loads and stores inside the step loop: none there at the default tiles under Triton 3.6), and within
an H100's shared memory; so does the study of 128 query rows per step at head dim 64 (``DKDV_BLOCK_M``). On a
Hopper GPU (``-m gpu``): dQ, dK, dV against the float64 reference through check_attention's gate, on the shapes of
tests/test_fa3.py (GQA/MQA, ragged and unequal lengths, one query row, rows that see no key), fp16 and bf16, causal
or not, at the default tiles and at 128 query rows per step.
"""
import re

import pytest
import torch

from tests import fresh
from tests.kernel_cases import make_qkv, shape_id
from tests.test_fa3 import SHAPES, _gluon_hopper_problem, _hopper

# (head dim, causal, dtype, query rows per dK/dV step, steps overlapped): the default tiles, and the two studies at
# head dim 64 (128 rows; the steps overlapped)
CASES = [(128, True, "fp16", 64, False), (128, False, "bf16", 64, False), (64, True, "bf16", 64, False),
         (64, False, "fp16", 64, False), (64, True, "fp16", 128, False), (64, False, "bf16", 128, False),
         (64, True, "bf16", 64, True), (64, False, "fp16", 64, True)]


def _budget(headdim: int, causal: bool, block_m: int) -> tuple[int, int, int]:  # (the overlapped steps: as 64 rows)
    """(spill-stack bytes, local loads, local stores inside the step loop) the TMA-dQ dK/dV kernel may have,
    recorded so they cannot grow. Under Triton 3.6 (the GPU image's), 64 query rows per step: a stack of 0 at d64
    and 8 at d128 (48 causal), all of it the query-head loop's, none in the step loop; 128 rows at d64: 16 B (48
    causal, with two reloads per step). Newer Tritons' ptxas: 24 B (32 causal) at d128 with one reload per step
    (two causal) in 3.9's step loop; 128 rows at d64 112 B with 14 reloads and 4 stores per step (96 causal, 12
    reloads)."""
    import triton

    old = triton.__version__.startswith("3.6.")
    if block_m == 128:
        if old:
            return (48, 2, 0) if causal else (16, 0, 0)
        return (96, 12, 0) if causal else (112, 14, 4)
    if headdim == 64:
        return 0, 0, 0
    if old:
        return (48 if causal else 8), 0, 0
    return (32, 2, 0) if causal else (24, 1, 0)


def _compile(headdim: int, causal: bool, dtype: str, block_m: int, pipeline: bool, dq_first: bool = False,
             seqlen: int = 0) -> dict:
    """Resources and SASS of the TMA-dQ dK/dV kernel, compiled in a fresh process (this one may have imported the
    kernels under Triton's interpreter); with ``seqlen`` the build a launch of the paper's shape at that length
    compiles, else every int a plain i32."""
    code = ("import json, sys; from fa2bench.profiling import compile_sm90 as c; "
            "from fa2bench.core.presets import paper_shape; d, n = int(sys.argv[1]), int(sys.argv[7]); "
            "k = c.compile_fa3_bwd(d, sys.argv[2] == '1', sys.argv[3], tma_dq=True, block_m=int(sys.argv[4]), "
            "pipeline=sys.argv[5] == '1', dq_first=sys.argv[6] == '1', shape=paper_shape(d, n) if n else None); "
            "print(json.dumps({'resources': c.resources(k), 'sass': c.sass(k)}))")
    return fresh.json_of(code, headdim, int(causal), dtype, block_m, int(pipeline), int(dq_first), seqlen)


def _step_loop(sass: str) -> list[str]:
    """The instructions of the loop that issues the TMA reduce-add: from the target of the first backward branch
    after UTMAREDG to that branch."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    red = next(addr for addr, text in ins if "UTMAREDG" in text)
    for addr, text in ins:
        jump = re.search(r"\bBRA (0x[0-9a-f]+)", text)
        if addr > red and jump and int(jump.group(1), 16) < red:
            start = int(jump.group(1), 16)
            return [text for a, text in ins if start <= a <= addr]
    raise AssertionError("no loop around UTMAREDG")


@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("headdim,causal,dtype,block_m,pipeline", CASES,
                         ids=[f"d{d}-{t}-{'causal' if c else 'full'}-m{m}{'-pipelined' * p}"
                              for d, c, t, m, p in CASES])
def test_tma_dq_kernel_reduces_by_tma_within_its_spill_budget(headdim, causal, dtype, block_m, pipeline):
    out = _compile(headdim, causal, dtype, block_m, pipeline)
    sass, res = out["sass"], out["resources"]
    assert "UTMAREDG" in sass and "HGMMA" in sass, res
    assert not re.search(r"\bREDG\b", sass), "per-element fp32 atomics in the TMA route"
    stack, loads, stores = _budget(headdim, causal, block_m)
    assert int(res.split("stack ")[1].split()[0]) <= stack, res
    assert int(res.split("smem ")[1].split()[0]) <= 227 * 1024, res
    loop = _step_loop(sass)
    # one reduce-add per step (overlapped: one in each branch, with the next step's S^T and dP^T or without)
    assert sum("UTMAREDG" in text for text in loop) == 1 + pipeline, "one reduce-add per step"
    if pipeline:  # the overlap survived ptxas: the dQ wgmma waited for with the next step's two still in flight
        assert "WARPGROUP.DEPBAR.LE gsb0, 0x2" in "\n".join(loop), "the steps' wgmmas serialised"
    assert sum("HGMMA" in text and "gsb0" in text for text in loop) >= 5, "the five wgmma groups of a step"
    spills = [text for text in loop if re.search(r"\bSTL\b", text)]
    assert len(spills) <= stores, spills
    reloads = [text for text in loop if re.search(r"\bLDL\b", text)]
    assert len(reloads) <= loads, reloads


@pytest.mark.skipif(_gluon_hopper_problem() is not None, reason=str(_gluon_hopper_problem()))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dq_first_reduces_dq_while_dks_wgmma_runs_within_its_spill_budget(causal):
    """The dQ-first study at head dim 128 (``DKDV_DQ_FIRST``, docs/fa3.md section 21), as a launch of the paper's
    shape at 4k compiles it: in each step dV's, dQ's and dK's wgmmas go out in that order, dK's dS^T from shared
    memory, and the reduce-add is issued before the wait for dK's (the step's last full wait comes after UTMAREDG,
    where the default waits for everything before dQ's tile is staged). Local loads and stores in the step loop,
    recorded so they cannot grow: none under Triton 3.6 (the GPU image's); under newer Tritons' ptxas (3.9) 6
    reloads and 1 store without the mask, none with it."""
    import triton

    loop = _step_loop(_compile(128, causal, "fp16", 64, False, dq_first=True, seqlen=4096)["sass"])
    reduce_at = next(i for i, text in enumerate(loop) if "UTMAREDG" in text)
    assert any("WARPGROUP.DEPBAR.LE gsb0, 0x0" in text for text in loop[reduce_at:]), "dK waited before the reduce"
    assert sum("UTMAREDG" in text for text in loop) == 1
    assert any(re.search(r"HGMMA.64x128x16.F32 R\d+, gdesc", text) for text in loop), "dK's dS^T not from smem"
    old = triton.__version__.startswith("3.6.")
    loads, stores = (0, 0) if old or causal else (6, 1)
    assert sum(bool(re.search(r"\bLDL\b", text)) for text in loop) <= loads
    assert sum(bool(re.search(r"\bSTL\b", text)) for text in loop) <= stores


def test_dq_first_is_a_step_of_the_tma_dq_route_that_is_not_overlapped():
    from fa2bench.kernels import fa3_bwd

    assert not any(fa3_bwd.tiles(d, c)["DQ_FIRST"] for d in (64, 128) for c in (False, True))  # off until measured
    assert fa3_bwd.tiles(128, True, dq_first=True)["DQ_FIRST"]
    with pytest.raises(ValueError, match="dQ first"):
        fa3_bwd.tiles(64, False, 64, True, dq_first=True)
    with pytest.raises(ValueError, match="dQ first"):
        fa3_bwd.tiles(128, False, tma_dq=False, dq_first=True)


# --- on a Hopper GPU ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_tma_dq_gradients_match_the_float64_reference(shape, dtype, causal, monkeypatch):
    """fa3 (its dQ by the TMA route): ragged lengths (rows past seqlen_q must fall outside the TMA box, not into
    the next head's dQ), keys past seqlen_k (zero rows of K under a clamped exponent), GQA's heads each adding into
    their own dQ, rows that see no key; through the same gate as fa3 (not bit-reproducible, so no repeat check)."""
    from fa2bench.core.reference import check_attention
    from fa2bench.kernels import fa3_attention, fa3_bwd

    monkeypatch.setattr(fa3_bwd, "DQ_ATOMICS", "tma")
    q, k, v = make_qkv(shape, dtype, "cuda")
    verdict = check_attention(lambda q, k, v, c: fa3_attention(q, k, v, causal=c), q, k, v, causal)
    assert verdict.ok, verdict.detail
    assert "TMA reduce-add" in fa3_bwd._last["bwd"], fa3_bwd._last["bwd"]


def test_the_head_dim_64_studies_fit_only_there_and_128_rows_hold_the_statistics_briefly():
    from fa2bench.kernels import fa3_bwd

    assert fa3_bwd.tiles(64, causal=True)["BLOCK_M"] == fa3_bwd.DKDV_BLOCK_M[64, True] == 128  # measured faster
    assert fa3_bwd.tiles(64)["PIPELINE"] and not fa3_bwd.tiles(64, causal=True)["PIPELINE"]
    assert fa3_bwd.tiles(128)["BLOCK_M"] == fa3_bwd.tiles(128, causal=True)["BLOCK_M"] == 64
    assert fa3_bwd.tiles(64, False, 128)["LEAN_STATS"] and not fa3_bwd.tiles(64, False, 64)["LEAN_STATS"]
    with pytest.raises(ValueError, match="head dim 128"):
        fa3_bwd.tiles(128, False, 128)
    assert fa3_bwd.tiles(64, False, 64, True)["PIPELINE"] and not fa3_bwd.tiles(64, False, 64, False)["PIPELINE"]
    with pytest.raises(ValueError, match="overlapped"):
        fa3_bwd.tiles(128, False, 64, True)


STUDIES = [(128, False, False), (128, False, True), (64, True, False)]  # (query rows, overlapped, deterministic)


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("block_m,pipeline,deterministic", STUDIES,
                         ids=["m128-tma-dq", "m128-dq-kernel", "m64-pipelined"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[-1] == 64] + [(2, 4, 2, 700, 1100, 64)], ids=shape_id)
def test_the_head_dim_64_studies_give_the_float64_reference_gradients(shape, dtype, causal, block_m, pipeline,
                                                                      deterministic, monkeypatch):
    """The head-dim-64 study tiles through the same gate as the default tiles: 128 query rows per step
    (``DKDV_BLOCK_M``: Delta in dP^T's accumulator, a 128-row dQ tile per reduce-add) by both dQ routes, and the
    TMA-dQ route's steps overlapped (``DKDV_PIPELINE``: each step's S^T and dP^T issued under the previous step's
    dQ)."""
    from fa2bench.core.reference import check_attention
    from fa2bench.kernels import fa3_attention, fa3_bwd, fa3_deterministic_attention

    monkeypatch.setattr(fa3_bwd, "DQ_ATOMICS", "tma")
    monkeypatch.setattr(fa3_bwd, "DKDV_BLOCK_M", {**fa3_bwd.DKDV_BLOCK_M, (64, causal): block_m})
    monkeypatch.setattr(fa3_bwd, "DKDV_PIPELINE", {**fa3_bwd.DKDV_PIPELINE, (64, causal): pipeline})
    attention = fa3_deterministic_attention if deterministic else fa3_attention
    q, k, v = make_qkv(shape, dtype, "cuda")
    verdict = check_attention(lambda q, k, v, c: attention(q, k, v, causal=c), q, k, v, causal)
    assert verdict.ok, verdict.detail
    config = fa3_bwd._last["bwd"]
    assert f"BLOCK_M={block_m}" in config and ("pipelined" in config) == pipeline, config


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[-1] == 128] + [(2, 4, 2, 700, 1100, 128)], ids=shape_id)
def test_the_dq_first_study_gives_the_float64_reference_gradients(shape, dtype, causal, monkeypatch):
    """The dQ-first steps (``DKDV_DQ_FIRST`` at head dim 128: dK's dS^T from shared memory, dQ's tile reduced
    while dK's wgmma runs) through the same gate as the default steps."""
    from fa2bench.core.reference import check_attention
    from fa2bench.kernels import fa3_attention, fa3_bwd

    monkeypatch.setattr(fa3_bwd, "DQ_ATOMICS", "tma")
    monkeypatch.setattr(fa3_bwd, "DKDV_DQ_FIRST", {**fa3_bwd.DKDV_DQ_FIRST, (128, causal): True})
    q, k, v = make_qkv(shape, dtype, "cuda")
    verdict = check_attention(lambda q, k, v, c: fa3_attention(q, k, v, causal=c), q, k, v, causal)
    assert verdict.ok, verdict.detail
    assert "dq-first" in fa3_bwd._last["bwd"], fa3_bwd._last["bwd"]


@pytest.mark.gpu
@pytest.mark.timeout(60)
@pytest.mark.skipif(not _hopper(), reason="needs a Hopper GPU (sm_90)")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_tma_dq_route_agrees_with_the_dq_kernel(causal, monkeypatch):
    """Same inputs, both routes: dK and dV come from the same dK/dV loop (the clamp changes no real key's P), so
    they agree to rounding; dQ summed in another order agrees to fp32 accumulation error."""
    from fa2bench.kernels import fa3_bwd
    from fa2bench.kernels.fa3 import fa3_forward

    monkeypatch.setattr(fa3_bwd, "DQ_ATOMICS", "tma")
    q, k, v = make_qkv((2, 8, 4, 1000, 1000, 128), torch.float16, "cuda")
    do = torch.randn_like(q)
    o, lse = fa3_forward(q, k, v, causal)
    ref = fa3_bwd.fa3_backward(q, k, v, o, lse, do, causal, deterministic=True)
    got = fa3_bwd.fa3_backward(q, k, v, o, lse, do, causal, deterministic=False)
    for name, a, b in zip(("dq", "dk", "dv"), got, ref):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=name)
