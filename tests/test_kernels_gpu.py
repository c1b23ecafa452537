"""The kernels on a real GPU: fp16 and bf16 at realistic sizes, every autotune config, determinism."""
import pytest
import torch

from fa2bench.reference import check_attention
from tests.kernel_cases import KERNELS, MODULES, make_qkv, shape_id

pytestmark = pytest.mark.gpu

GPU_SHAPES = [
    (2, 8, 8, 1024, 1024, 64),
    (1, 8, 2, 2048, 2048, 128),  # GQA
    (1, 4, 4, 1000, 1500, 256),  # ragged, seqlen_q != seqlen_k
    (1, 2, 2, 8192, 8192, 128),
    (1, 4, 1, 4097, 4097, 64),  # MQA, one past a block boundary
]


@pytest.mark.parametrize("shape", GPU_SHAPES, ids=shape_id)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
def test_gpu_output_and_gradients_match_reference(kernel, dtype, causal, shape):
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


@pytest.mark.parametrize("kernel", KERNELS)
def test_repeated_runs_are_bit_equal(kernel):
    """Every kernel here is deterministic by design (no atomics): outputs and gradients repeat exactly."""
    q, k, v = make_qkv((2, 8, 4, 2048, 2048, 128), torch.bfloat16, "cuda")
    do = torch.randn_like(q)

    def run():
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        o = KERNELS[kernel](*leaves, causal=True)
        o.backward(do)
        return [o.detach()] + [t.grad for t in leaves]

    first = run()
    for _ in range(3):
        for a, b in zip(first, run()):
            assert torch.equal(a, b)
