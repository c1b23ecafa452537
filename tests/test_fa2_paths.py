"""fa2's tile paths (issue 9) on the CPU interpreter: tiles moved by portable pointers or by TMA tensor
descriptors (kernels/_common.py's loaders) match the float64 reference (output and all three gradients), and each
test also checks which path really ran.

The interpreter never takes ``tma="auto"``'s TMA path, so these tests force ``tma="on"``. fp32 inputs and layouts
TMA cannot address must fall back to the portable path silently and still be right. bf16 runs on the GPU
(test_kernels_gpu.py).
"""
import dataclasses

import pytest
import torch

from fa2bench.kernels import flash2
from fa2bench.kernels._common import tma_layout_ok
from fa2bench.core.reference import check_attention
from tests.conftest import DEVICE
from tests.kernel_cases import expected_paths, make_qkv, recorded_launches, shape_id

FA2 = flash2.FA2
TMA = {"portable": "off", "tma": "on"}

# (batch, heads, kv_heads, seqlen_q, seqlen_k, headdim)
SHAPES = [
    (1, 1, 1, 1, 1, 64),  # one query, one key
    (2, 2, 2, 17, 17, 32),  # ragged, under one block
    (1, 2, 2, 97, 97, 64),  # ragged, past one block
    (1, 2, 2, 97, 130, 64),  # seqlen_q < seqlen_k: causal aligned to the bottom-right corner
    (1, 2, 2, 130, 17, 32),  # seqlen_q > seqlen_k: under causal the first rows see no key
    (2, 4, 2, 33, 65, 64),  # GQA
    (1, 4, 1, 65, 33, 128),  # MQA
    (1, 2, 2, 45, 70, 80),  # head dim padded to 128 (TMA: the descriptor's zero fill past head dim)
    (1, 1, 1, 130, 130, 128),  # just past a power of two
]
FP32_SHAPES = [SHAPES[1], SHAPES[4], SHAPES[7]]


def variant(tma: str) -> flash2.Variant:
    return dataclasses.replace(FA2, tma=tma)


def run_checked(var: flash2.Variant, q, k, v, causal: bool, prepare=lambda t: t):
    """check_attention on ``var`` (inputs passed through ``prepare`` inside the differentiated function), and the
    path switches each kernel was launched with."""
    with recorded_launches(var.launcher) as paths:
        verdict = check_attention(
            lambda q, k, v, c: flash2.run_variant(var, prepare(q), prepare(k), prepare(v), c, None, False),
            q, k, v, causal)
    return verdict, paths


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("tma", TMA)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_every_path_matches_reference_fp16(shape, tma, causal):
    q, k, v = make_qkv(shape, torch.float16, DEVICE)
    verdict, paths = run_checked(variant(TMA[tma]), q, k, v, causal)
    assert verdict.ok, verdict.detail
    assert paths == expected_paths(tma == "tma")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", FP32_SHAPES, ids=shape_id)
def test_fp32_with_tma_on_runs_the_portable_path_and_is_right(shape, causal):
    """TMA moves fp16/bf16 tiles only: fp32 inputs with tma="on" silently take the pointer path, at fp32 accuracy."""
    q, k, v = make_qkv(shape, torch.float32, DEVICE)
    verdict, paths = run_checked(variant("on"), q, k, v, causal)
    assert verdict.ok, verdict.detail
    assert paths == expected_paths(False)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_non_contiguous_bshd_view_takes_tma(causal):
    """A (batch, seq, heads, dim) tensor viewed as (batch, heads, seq, dim): strides TMA can address, so TMA runs."""
    q, k, v = make_qkv((2, 4, 2, 45, 70, 64), torch.float16, DEVICE, bshd=True)
    assert not q.is_contiguous() and tma_layout_ok(q, k, v)
    verdict, paths = run_checked(variant("on"), q, k, v, causal)
    assert verdict.ok, verdict.detail
    assert paths == expected_paths(True)


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` whose data starts one element into its buffer: not 16-byte aligned (differentiable)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    return buf.copy_(t)


def test_misaligned_base_falls_back_to_portable():
    q, k, v = make_qkv((1, 2, 1, 33, 40, 64), torch.float16, DEVICE)
    assert not tma_layout_ok(misaligned(q))
    # check_attention clones its inputs (aligned again): misalign them inside the differentiated function
    verdict, paths = run_checked(variant("on"), q, k, v, True, prepare=misaligned)
    assert verdict.ok, verdict.detail
    assert paths == expected_paths(False)


def test_head_dim_under_16_bytes_falls_back_to_portable():
    """Head dim 4 in fp16 is 8 bytes a row: under TMA's 16-byte minimum box width."""
    q, k, v = make_qkv((1, 2, 2, 33, 33, 4), torch.float16, DEVICE)
    verdict, paths = run_checked(variant("on"), q, k, v, True)
    assert verdict.ok, verdict.detail
    assert paths == expected_paths(False)


def test_fa2_auto_never_takes_tma_on_the_interpreter():
    q, k, v = make_qkv((1, 2, 2, 33, 40, 64), torch.float16, DEVICE)
    assert FA2.tma == "auto"
    verdict, paths = run_checked(FA2, q, k, v, True)
    assert verdict.ok, verdict.detail
    assert paths == expected_paths(False)


@pytest.mark.parametrize("rung", [3, 6])
def test_ladder_rungs_take_the_tma_loaders_too(rung):
    """The loaders serve every switch setting: rung 3 (no DEFER, SEQ_PAR, SKIP) and rung 6 on TMA descriptors."""
    from fa2bench.kernels import ladder

    q, k, v = make_qkv((1, 4, 2, 97, 70, 64), torch.float16, DEVICE)
    verdict, paths = run_checked(dataclasses.replace(ladder.RUNGS[rung], tma="on"), q, k, v, True)
    assert verdict.ok, verdict.detail
    assert paths == expected_paths(True)


# ---- kernels._common.tma_layout_ok: TMA's layout rules --------------------------------------------------------
def _t(*shape, dtype=torch.float16):
    return torch.randn(*shape, dtype=dtype)


def test_tma_layout_ok_accepts_aligned_contiguous_tensors():
    assert tma_layout_ok(_t(1, 2, 33, 64))
    assert tma_layout_ok(_t(2, 4, 17, 80), _t(2, 2, 9, 80))  # 160-byte rows
    assert tma_layout_ok(_t(1, 2, 5, 32, dtype=torch.float32))
    assert tma_layout_ok(_t(2, 45, 4, 64).transpose(1, 2))  # (b, s, h, d) viewed as (b, h, s, d)


def test_tma_layout_ok_rejects_a_misaligned_base():
    t = _t(1, 2, 33, 64)
    assert t.data_ptr() % 16 == 0
    assert not tma_layout_ok(misaligned(t))
    assert not tma_layout_ok(t, misaligned(t))  # one bad tensor is enough


def test_tma_layout_ok_rejects_a_non_unit_last_stride():
    t = _t(1, 2, 33, 128)[..., ::2]  # head dim 64 with stride 2
    assert t.stride(-1) == 2
    assert not tma_layout_ok(t)
    assert not tma_layout_ok(_t(1, 2, 64, 33).transpose(-1, -2))


def test_tma_layout_ok_rejects_rows_not_16_byte_aligned_or_narrower_than_16_bytes():
    assert not tma_layout_ok(_t(1, 2, 33, 12))  # 24-byte row stride
    assert not tma_layout_ok(_t(1, 2, 33, 4))  # 8-byte rows
