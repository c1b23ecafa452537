"""The kernels on a real GPU (every one in the registry, so every rung of the ablation ladder): fp16 and bf16 at
realistic sizes, every autotune config, determinism, IEEE fp32 vs TF32, offsets past 2**31 elements."""
import dataclasses

import pytest
import torch

from fa2bench.kernels import flash2
from fa2bench.core.reference import attention_ref, check_attention, rel_error
from tests.kernel_cases import KERNELS, MODULES, expected_paths, make_qkv, recorded_launches, shape_id

pytestmark = pytest.mark.gpu

GPU_SHAPES = [
    (2, 8, 8, 1024, 1024, 64),
    (1, 8, 2, 2048, 2048, 128),  # GQA
    (1, 4, 4, 1000, 1500, 256),  # ragged, seqlen_q != seqlen_k
    (1, 2, 2, 8192, 8192, 128),
    (1, 4, 1, 4097, 4097, 64),  # MQA, one past a block boundary
]


# the ladder's rungs without sequence parallelism (same kernels as fa2's, which run every shape)
ONE_PROGRAM_PER_HEAD = {"r3-swap", "r4-defer"}


@pytest.mark.parametrize("shape", GPU_SHAPES, ids=shape_id)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
def test_gpu_output_and_gradients_match_reference(kernel, dtype, causal, shape):
    if kernel in ONE_PROGRAM_PER_HEAD and shape[0] * shape[1] * shape[3] >= 16384:
        pytest.skip("rungs 3-4 run one program per (batch, head): minutes per call at 8k tokens on 2 heads")
    q, k, v = make_qkv(shape, dtype, "cuda")
    ref_dtype = torch.float64 if shape[3] * shape[4] * shape[1] <= 2**26 else torch.float32
    verdict = check_attention(lambda q, k, v, c: KERNELS[kernel](q, k, v, causal=c), q, k, v, causal,
                              ref_dtype=ref_dtype)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("headdim", [64, 128])
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_autotune_config_is_correct(kernel, headdim):
    module = MODULES[kernel]
    q, k, v = make_qkv((1, 4, 2, 1000, 1111, headdim), torch.float16, "cuda")
    tried = 0
    for name, cfgs in module.configs(headdim).items():
        for cfg in cfgs:
            with module.forced_configs(**{name: cfg}):
                verdict = check_attention(lambda q, k, v, c: KERNELS[kernel](q, k, v, causal=c),
                                          q, k, v, True)
            assert verdict.ok, f"{name} {cfg}: {verdict.detail}"
            tried += 1
    assert tried > 0 or kernel == "naive"


# fa1-split's backward adds dQ from several programs with fp32 atomics (as flash-attn v1 did): dQ may differ in
# the last bits between runs; everything else is deterministic by design
NONDETERMINISTIC = {"fa1-split": {"dq"}}


@pytest.mark.parametrize("kernel", KERNELS)
def test_repeated_runs_are_bit_equal(kernel):
    """Outputs and gradients repeat exactly (where no atomics are used by design; those stay close)."""
    q, k, v = make_qkv((2, 8, 4, 2048, 2048, 128), torch.bfloat16, "cuda")
    do = torch.randn_like(q)

    def run():
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        o = KERNELS[kernel](*leaves, causal=True)
        o.backward(do)
        return [o.detach()] + [t.grad for t in leaves]

    first = run()
    loose = NONDETERMINISTIC.get(kernel, set())
    for _ in range(3):
        for name, a, b in zip(("o", "dq", "dk", "dv"), first, run()):
            if name in loose:
                assert rel_error(a, b) < 1e-2, name
            else:
                assert torch.equal(a, b), name


@pytest.mark.parametrize("kernel", KERNELS)
def test_fp32_is_ieee_and_tf32_is_tf32(kernel):
    """fp32 inputs: IEEE dot products by default (PyTorch-fp32-level error); tf32=True is measurably coarser."""
    q, k, v = make_qkv((1, 4, 4, 512, 512, 32), torch.float32, "cuda")  # small head dim: FMA dots compile slowly
    ref = attention_ref(q, k, v, causal=True)
    ieee = rel_error(KERNELS[kernel](q, k, v, causal=True), ref)
    tf32 = rel_error(KERNELS[kernel](q, k, v, causal=True, tf32=True), ref)
    assert ieee < 2e-5, f"fp32 error {ieee:.1e}"
    assert tf32 > 4 * ieee, f"tf32 error {tf32:.1e} vs fp32 {ieee:.1e}"


@pytest.mark.big_memory
@pytest.mark.parametrize("kernel", KERNELS)
def test_rows_past_2_31_elements(kernel):
    """(batch, seq, heads, dim) inputs with heads * dim = 16384 and 131200 tokens: rows past 2**31 elements are
    read, and O, dQ written, at the right place (one forced config per kernel keeps it short)."""
    module = MODULES[kernel]
    seq, heads, d, keys = 131200, 128, 128, 16
    q = torch.randn(1, seq, heads, d, dtype=torch.float16, device="cuda").transpose(1, 2)
    k, v = (torch.randn(1, keys, heads, d, dtype=torch.float16, device="cuda").transpose(1, 2) for _ in range(2))
    do = torch.randn_like(q)
    assert q.stride(2) * (seq - 1) > 2**31
    first = {name: cfgs[0] for name, cfgs in module.configs(d).items()}
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    with module.forced_configs(**first):
        o = KERNELS[kernel](*leaves)
        o.backward(do)
    tail = slice(seq - 256, seq)  # rows past 2**31 elements; rows are independent without a causal mask
    ref_leaves = [t[:, :1].detach().float().requires_grad_() for t in (q, k, v)]
    ref = attention_ref(*ref_leaves, upcast=True, dtype=torch.float32)
    ref.backward(do[:, :1].float())
    assert rel_error(o[:, :1, tail], ref[:, :, tail]) < 1e-2
    assert rel_error(leaves[0].grad[:, :1, tail], ref_leaves[0].grad[:, :, tail]) < 1e-2
    assert rel_error(leaves[1].grad[:, :1], ref_leaves[1].grad) < 1e-2


# ---- fa2's tile paths (issue 9): pointers or TMA descriptors
FA2_PATH_SHAPES = [(1, 8, 2, 2048, 2048, 64), (1, 8, 2, 2048, 2048, 128), (1, 4, 4, 1000, 1500, 256)]


def _fa2_path(tma: str) -> flash2.Variant:
    if tma == "on" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA tensor descriptors need sm_90 or newer")
    return dataclasses.replace(flash2.FA2, tma=tma)


@pytest.mark.parametrize("shape", FA2_PATH_SHAPES, ids=shape_id)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tma", ["off", "on"], ids=["portable", "tma"])
def test_gpu_fa2_paths_match_reference(tma, dtype, causal, shape):
    """Each path right at realistic sizes. One config per kernel (the first the filter keeps), not autotuning: 24
    cases would compile many configs; every config is tested on its own below (head dims 64 and 128)."""
    variant = _fa2_path(tma)
    q, k, v = make_qkv(shape, dtype, "cuda")
    ref_dtype = torch.float64 if shape[3] * shape[4] * shape[1] <= 2**26 else torch.float32
    first = {name: cfgs[0] for name, cfgs in flash2.configs(shape[-1]).items()}
    with flash2.forced_configs(**first), recorded_launches(variant.launcher) as paths:
        verdict = check_attention(lambda q, k, v, c: flash2.run_variant(variant, q, k, v, c, None, False),
                                  q, k, v, causal, ref_dtype=ref_dtype)
    assert verdict.ok, verdict.detail
    assert paths == expected_paths(tma == "on")


@pytest.mark.parametrize("headdim", [64, 128])
def test_every_autotune_config_is_correct_on_the_tma_path(headdim):
    """tma="on": each config the autotuner may pick, forced one kernel at a time, compiles and is right."""
    variant = _fa2_path("on")
    q, k, v = make_qkv((1, 4, 2, 1000, 1111, headdim), torch.float16, "cuda")
    space = flash2.configs(headdim)
    first = {name: cfgs[0] for name, cfgs in space.items()}  # the other kernels: no autotuning in between
    tried = 0
    for name, cfgs in space.items():
        for cfg in cfgs:
            with flash2.forced_configs(**{**first, name: cfg}), recorded_launches(variant.launcher) as paths:
                verdict = check_attention(lambda q, k, v, c: flash2.run_variant(variant, q, k, v, c, None, False),
                                          q, k, v, True)
            assert verdict.ok, f"{name} {cfg}: {verdict.detail}"
            assert paths == expected_paths(True), f"{name} {cfg}"
            tried += 1
    assert tried > 0


@pytest.mark.parametrize("variant", [{}, {"window": (1024, 0)}], ids=["dense", "window"])
def test_dq_on_a_second_stream_gives_the_same_bits_eagerly_and_from_a_graph(variant, monkeypatch):
    """FA2_BWD_STREAMS=1 runs the dQ kernel on a second stream beside the dK/dV kernel: the same kernels, so the
    same gradients to the bit, called eagerly and replayed from a CUDA graph (as the graph timer captures a
    backward: its forward on the capture stream, since autograd runs each backward op on its forward's stream)."""
    q, k, v = (t.requires_grad_() for t in make_qkv((2, 8, 4, 4096, 4096, 128), torch.bfloat16, "cuda"))
    capture = torch.cuda.Stream()
    capture.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(capture):
        o = flash2.flash2_attention(q, k, v, True, **variant)
        do = torch.randn_like(o)
        monkeypatch.setenv(flash2.STREAMS_ENV, "0")
        alone = torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
        monkeypatch.setenv(flash2.STREAMS_ENV, "1")
        beside = torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
    torch.cuda.current_stream().wait_stream(capture)
    assert all(torch.equal(a, b) for a, b in zip(alone, beside))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=capture):
        replayed = torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
    for g in replayed:
        g.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(alone, replayed))


def test_dq_runs_beside_dkdv_by_default(monkeypatch):
    """On a CUDA device the backward's dQ kernel runs on its second stream unless FA2_BWD_STREAMS=0."""
    q = torch.zeros(1, 1, 8, 16, device="cuda")
    monkeypatch.delenv(flash2.STREAMS_ENV, raising=False)
    assert isinstance(flash2.dq_beside_dkdv(q), torch.cuda.Stream)
    monkeypatch.setenv(flash2.STREAMS_ENV, "0")
    assert flash2.dq_beside_dkdv(q) is None
