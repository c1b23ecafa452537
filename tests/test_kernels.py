"""The three Triton kernels compute attention: output and all three gradients match a float64 reference.

Runs on the CPU through Triton's interpreter (fp16 and fp32; the interpreter's bf16 dot is wrong, so bf16 is
tested on the GPU only, in test_kernels_gpu.py).
"""
import math

import pytest
import torch

from fa2bench.reference import check_attention
from tests.conftest import DEVICE
from tests.kernel_cases import KERNELS, make_qkv, shape_id

# (batch, heads, kv_heads, seqlen_q, seqlen_k, headdim)
SHAPES = [
    (1, 1, 1, 1, 1, 16),  # one query, one key
    (2, 2, 2, 17, 17, 32),  # ragged, under one block
    (1, 2, 2, 97, 97, 64),
    (1, 1, 1, 130, 130, 128),  # just past a power of two
    (1, 2, 2, 97, 130, 64),  # seqlen_q < seqlen_k: causal aligned to the bottom-right corner
    (1, 2, 2, 130, 17, 32),  # seqlen_q > seqlen_k: under causal the first rows see no key
    (2, 4, 2, 33, 65, 64),  # GQA
    (1, 4, 1, 65, 33, 96),  # MQA, and a head dim that is not a power of two
    (1, 1, 1, 40, 40, 256),
]
DTYPES = [torch.float16, torch.float32]


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
def test_output_and_gradients_match_reference(kernel, dtype, causal, shape):
    q, k, v = make_qkv(shape, dtype, DEVICE)
    verdict = check_attention(lambda q, k, v, c: KERNELS[kernel](q, k, v, causal=c), q, k, v, causal)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("kernel", KERNELS)
def test_non_contiguous_inputs(kernel):
    """A (batch, seq, heads, dim) tensor viewed with .transpose(1, 2) works as is."""
    q, k, v = make_qkv((2, 4, 2, 45, 70, 64), torch.float16, DEVICE, bshd=True)
    assert not q.is_contiguous()
    verdict = check_attention(lambda q, k, v, c: KERNELS[kernel](q, k, v, causal=c), q, k, v, True)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("kernel", KERNELS)
def test_output_keeps_shape_and_dtype_and_custom_scale(kernel):
    q, k, v = make_qkv((1, 2, 1, 33, 20, 64), torch.float16, DEVICE)
    o = KERNELS[kernel](q, k, v, causal=False, sm_scale=0.3)
    assert o.shape == q.shape and o.dtype == q.dtype
    s = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * 0.3, dim=-1)
    ref = s @ v.double()
    assert (o.double() - ref).abs().max() <= 4e-3 * ref.abs().max()


@pytest.mark.parametrize("kernel", KERNELS)
def test_checker_rejects_a_wrong_kernel(kernel):
    """The gate is not vacuous: a kernel with the mask flipped or a 5% wrong scale fails it."""
    shape = (1, 2, 2, 64, 64, 32)
    q, k, v = make_qkv(shape, torch.float16, DEVICE)
    fn = KERNELS[kernel]
    flipped = check_attention(lambda q, k, v, c: fn(q, k, v, causal=not c), q, k, v, True)
    assert not flipped.ok
    bad_scale = check_attention(
        lambda q, k, v, c: fn(q, k, v, causal=c, sm_scale=1.05 / math.sqrt(32)), q, k, v, False)
    assert not bad_scale.ok


def _bad_inputs():
    t = lambda *s, dt=torch.float16: torch.randn(*s, dtype=dt, device=DEVICE)  # noqa: E731
    return {
        "q is 3-D": ((t(2, 16, 32), t(1, 2, 16, 32), t(1, 2, 16, 32)), "4-D"),
        "k and v differ": ((t(1, 2, 16, 32), t(1, 2, 16, 32), t(1, 2, 17, 32)), "one shape"),
        "batch differs": ((t(2, 2, 16, 32), t(1, 2, 16, 32), t(1, 2, 16, 32)), "batch"),
        "head dim differs": ((t(1, 2, 16, 32), t(1, 2, 16, 64), t(1, 2, 16, 64)), "head dim"),
        "heads not a multiple": ((t(1, 3, 16, 32), t(1, 2, 16, 32), t(1, 2, 16, 32)), "multiple"),
        "int dtype": ((t(1, 2, 16, 32).to(torch.int32),) * 3, "dtype"),
        "mixed dtypes": ((t(1, 2, 16, 32), t(1, 2, 16, 32, dt=torch.float32), t(1, 2, 16, 32)), "dtype"),
        "head dim too large": ((t(1, 1, 4, 512), t(1, 1, 4, 512), t(1, 1, 4, 512)), "head dim"),
        "empty sequence": ((t(1, 2, 0, 32), t(1, 2, 16, 32), t(1, 2, 16, 32)), "empty"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
@pytest.mark.parametrize("kernel", KERNELS)
def test_bad_input_raises_value_error_naming_the_problem(kernel, case):
    args, message = _bad_inputs()[case]
    with pytest.raises(ValueError, match=message):
        KERNELS[kernel](*args)
