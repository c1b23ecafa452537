"""fa2bench's Triton kernels (every one in the provider registry: naive, the ablation ladder fa1 .. fa2) compute
attention: output and all three gradients match a float64 reference.

Runs on the CPU through Triton's interpreter (fp16 and fp32; the interpreter's bf16 dot is wrong, so bf16 is
tested on the GPU only, in test_kernels_gpu.py).
"""
import math

import pytest
import torch

from fa2bench.core import providers
from fa2bench.core.reference import attention_ref, check_attention, rel_error
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
# fp32 on a few shapes (the interpreter's fp32 arithmetic is the same code path as fp16's)
FP32_SHAPES = [SHAPES[1], SHAPES[5], SHAPES[7]]
CASES = ([(torch.float16, s) for s in SHAPES] + [(torch.float32, s) for s in FP32_SHAPES])


# The fast lane (-m "not slow") runs every test on naive, fa1 and fa2, and on the ladder's other rungs (which
# share fa1's or fa2's code) only three shapes of the reference comparison (ragged, causal alignment, GQA);
# CI runs every case.
FAST_KERNELS = ("naive", "fa1", "fa2")
FAST_SHAPES = (SHAPES[1], SHAPES[4], SHAPES[6])
KERNEL_PARAMS = [pytest.param(k, marks=[] if k in FAST_KERNELS else [pytest.mark.slow]) for k in KERNELS]


def _kernel_cases():
    for kernel in KERNELS:
        for dtype, shape in CASES:
            slow = kernel not in FAST_KERNELS and shape not in FAST_SHAPES
            yield pytest.param(kernel, dtype, shape, marks=[pytest.mark.slow] if slow else [],
                               id=f"{kernel}-{str(dtype)[6:]}-{shape_id(shape)}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kernel,dtype,shape", list(_kernel_cases()))
def test_output_and_gradients_match_reference(kernel, dtype, causal, shape):
    q, k, v = make_qkv(shape, dtype, DEVICE)
    verdict = check_attention(lambda q, k, v, c: KERNELS[kernel](q, k, v, causal=c), q, k, v, causal)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_non_contiguous_inputs(kernel):
    """A (batch, seq, heads, dim) tensor viewed with .transpose(1, 2) works as is."""
    q, k, v = make_qkv((2, 4, 2, 45, 70, 64), torch.float16, DEVICE, bshd=True)
    assert not q.is_contiguous()
    verdict = check_attention(lambda q, k, v, c: KERNELS[kernel](q, k, v, causal=c), q, k, v, True)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_output_keeps_shape_and_dtype_and_custom_scale(kernel):
    q, k, v = make_qkv((1, 2, 1, 33, 20, 64), torch.float16, DEVICE)
    o = KERNELS[kernel](q, k, v, causal=False, sm_scale=0.3)
    assert o.shape == q.shape and o.dtype == q.dtype
    s = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * 0.3, dim=-1)
    ref = s @ v.double()
    assert (o.double() - ref).abs().max() <= 4e-3 * ref.abs().max()


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
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
@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_bad_input_raises_value_error_naming_the_problem(kernel, case):
    args, message = _bad_inputs()[case]
    with pytest.raises(ValueError, match=message):
        KERNELS[kernel](*args)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_long_ragged_sequence(kernel, causal):
    """seqlen 1025: many blocks, one past a block boundary (fa1-split splits here: one head, 1025 rows)."""
    q, k, v = make_qkv((1, 1, 1, 1025, 1025, 16), torch.float16, DEVICE)
    verdict = check_attention(lambda q, k, v, c: KERNELS[kernel](q, k, v, causal=c), q, k, v, causal)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("sm_scale", [0.0, -0.125, math.nan, math.inf], ids=str)
@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_sm_scale_must_be_finite_and_positive(kernel, sm_scale):
    """One rule for every kernel: a softmax scale is finite and positive; anything else is a ValueError."""
    q, k, v = make_qkv((1, 1, 1, 16, 16, 16), torch.float16, DEVICE)
    with pytest.raises(ValueError, match="sm_scale must be a finite positive number"):
        KERNELS[kernel](q, k, v, sm_scale=sm_scale)


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_fp32_is_fp32_accurate_and_tf32_is_a_keyword(kernel):
    """fp32 inputs give fp32 accuracy (IEEE dot products by default); ``tf32=True`` is accepted by every kernel.

    The CPU interpreter computes every fp32 dot in IEEE fp32, so that TF32 really is less accurate is tested on
    the GPU (test_kernels_gpu.py); here: the keyword exists, and the default result is within fp32 rounding.
    """
    q, k, v = make_qkv((1, 2, 1, 33, 40, 32), torch.float32, DEVICE)
    ref = attention_ref(q, k, v, causal=True)
    for tf32 in (False, True):
        o = KERNELS[kernel](q, k, v, causal=True, tf32=tf32)
        assert rel_error(o, ref) < 1e-5


# Rows 8M elements apart: past row 256 the offsets pass 2**31 elements. 300 rows, head dim 16; q, k, v and dO sit
# side by side in one lazily allocated buffer (about 9 GB of address space, a few hundred pages touched), starting
# 2**31 elements in, so that a wrapped 32-bit offset reads wrong (untouched, zero) memory instead of crashing.
_ROW_STRIDE, _ROWS, _D, _BASE = 2**23, 300, 16, 2**31


@pytest.fixture(scope="module")
def far_rows():
    buf = torch.empty(_BASE + _ROWS * _ROW_STRIDE, dtype=torch.float16)
    view = buf.as_strided((1, 1, _ROWS, 4 * _D), (0, 0, _ROW_STRIDE, 1), storage_offset=_BASE)
    view.copy_(torch.randn(view.shape, generator=torch.Generator().manual_seed(0)).half())
    return tuple(view[..., i * _D:(i + 1) * _D] for i in range(4))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_offsets_past_2_31_elements_are_64_bit(kernel, causal, far_rows):
    """Strided inputs whose rows lie past 2**31 elements give exactly what contiguous copies of them give."""
    q, k, v, do = far_rows
    assert q.stride(2) * (q.shape[2] - 1) > 2**31

    def run(tensors):
        leaves = [t.detach().requires_grad_() for t in tensors[:3]]
        o = KERNELS[kernel](*leaves, causal=causal)
        o.backward(tensors[3])
        return [o.detach()] + [t.grad for t in leaves]

    far = run(far_rows)
    near = run([t.contiguous() for t in far_rows])
    for name, a, b in zip(("o", "dq", "dk", "dv"), far, near):
        assert torch.equal(a, b), f"{name} differs: max {(a.float() - b.float()).abs().max().item()}"


def test_fa1_split_uses_flash_attn_v1_heuristics():
    """The worked example of v1's comment (48 batch x heads, 108 SMs: 2 splits beat 3), and the backward's choice."""
    from fa2bench.kernels.flash1 import bwd_splits, fwd_splits

    assert fwd_splits(48, n_qblocks=3, sms=108) == 2
    assert fwd_splits(48, n_qblocks=16, sms=108) == 9  # 432 programs: exactly 4 waves
    assert fwd_splits(16, n_qblocks=128, sms=132) == 8  # 128 of 132 SMs busy
    assert fwd_splits(1024, n_qblocks=64, sms=132) == 1  # batch x heads fills the GPU alone
    assert bwd_splits(16, seqlen_k=16384, block_n=128, causal=False, sms=132) == 128  # one split per K/V block
    assert bwd_splits(1024, seqlen_k=1024, block_n=128, causal=False, sms=132) == 1
    assert bwd_splits(1024, seqlen_k=2048, block_n=128, causal=True, sms=132) == 16  # causal: >= 10 blocks


def test_ladder_is_ordered_by_rung():
    assert providers.ladder() == ("fa1", "fa1-split", "r3-swap", "r4-defer", "r5-seqpar", "r6-skip", "fa2", "fa3",
                                  "fa3-pingpong", "fa3-overlap")
    assert [providers.get(n).rung for n in providers.ladder()] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
