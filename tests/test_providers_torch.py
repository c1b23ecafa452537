"""PyTorch's providers in their own module (``fa2bench.core.providers_torch``), registered by the one registry, and
``torch-varlen``: PyTorch's own ``torch.nn.attention.varlen.varlen_attn`` on the packed documents fa2-varlen runs,
as specs. Without a GPU its calls go through a float64 stand-in with varlen_attn's signature and FlashAttention's
window semantics (written here from positions alone); on a GPU the real one is gated against the float64 reference.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from fa2bench.core import providers, providers_common, providers_torch
from fa2bench.core.flops import MODES, attention_flops
from fa2bench.core.presets import Point, Shape
from fa2bench.core.reference import attention_ref, check_attention
from fa2bench.run.point import base_row, make_inputs
from tests.conftest import DEVICE

TORCH_PROVIDERS = ("torch-eager", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "flex", "flash-attn",
                   "torch-varlen")


def shape(variant="docs:16/24", causal=True, kv_heads=4, n=40):
    return Shape(batch=2, heads=4, kv_heads=kv_heads, seqlen_q=n, seqlen_k=n, headdim=8, causal=causal,
                 variant=variant)


# ---- the split: one registry, imports one way ----------------------------------------------------------------------
def test_importing_the_registry_registers_every_provider_in_its_order():
    assert providers.names() == ("naive", "fa1", "fa1-split", "r3-swap", "r4-defer", "r5-seqpar", "r6-skip", "fa2",
                                 "fa2-varlen", "fa3", "fa3-deterministic", "fa3-pingpong", "fa3-overlap",
                                 *TORCH_PROVIDERS, "fa2-decode")
    assert all(providers.get(n).make.__module__ == "fa2bench.core.providers_torch" for n in TORCH_PROVIDERS)
    assert [make for make, _ in providers_torch.PROVIDERS] == [providers.get(n).make for n in TORCH_PROVIDERS]


def imports(module) -> set[str]:
    """The modules ``module`` imports, anywhere in it (``from a import b`` counts as a and a.b)."""
    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_provider_modules_do_not_import_the_registry_and_what_they_share_is_the_registrys():
    for module in (providers_torch, providers_common):
        assert "fa2bench.core.providers" not in imports(module), module.__name__
    assert "fa2bench.core.providers_torch" in imports(providers)
    assert providers.Unsupported is providers_common.Unsupported is providers_torch.Unsupported
    assert providers.variant_kwargs is providers_common.variant_kwargs
    assert providers.ALL_VARIANT_PARTS is providers_common.ALL_VARIANT_PARTS


def test_no_provider_module_is_over_500_lines():
    for path in Path(providers.__file__).parent.glob("providers*.py"):
        assert len(path.read_text().splitlines()) <= 500, path.name


# ---- torch-varlen: what it is and what it refuses -------------------------------------------------------------------
def test_torch_varlen_is_a_pytorch_provider_beside_fa2_varlen():
    p, ours = providers.get("torch-varlen"), providers.get("fa2-varlen")
    assert p.kind == "vendor" and "varlen_attn" in p.label and "varlen_attn" in p.description
    assert (p.needs_variant, p.layout) == (ours.needs_variant, ours.layout) == ("docs", "bshd")
    assert p.dtypes == {"fp16", "bf16"} and p.variants == {"docs", "window"} and p.devices == {"cuda"}
    assert p.io_model == "fa2-atomic" and p.io_model_assumed and p.modes == set(MODES) and not p.decode
    assert not p.runs_variant("dense") and not p.runs_variant("window256") and p.runs_variant("window256+docs")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["docs", "window64:0+docs"])
def test_torch_varlen_counts_the_flops_fa2_varlen_counts(mode, variant):
    s = Shape(batch=2, heads=8, kv_heads=2, seqlen_q=2048, seqlen_k=2048, headdim=64, causal=True, variant=variant)
    rows = [base_row(Point(name, mode, "bf16", s)) for name in ("torch-varlen", "fa2-varlen")]
    assert rows[0]["flops"] == rows[1]["flops"] == attention_flops(2, 8, 2048, 2048, 64, True, mode, variant)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's reason")
def test_torch_varlen_is_unavailable_without_a_gpu_and_says_so():
    p = providers.get("torch-varlen")
    assert p.availability("cpu") == "needs a CUDA GPU"
    assert p.unsupported_reason(shape(), "fp16", "fwd", "cpu") == "needs a CUDA GPU"


def test_a_torch_without_varlen_attn_is_named_with_its_version(monkeypatch):
    import sys

    p = providers.get("torch-varlen")
    providers_torch._varlen_lacks.cache_clear()
    try:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "torch.nn.attention.varlen", None)  # the import fails, as on torch 2.9
            why = providers_torch._varlen_lacks()
            assert why == f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn (torch 2.10 and " \
                          "later)"
            assert dataclasses.replace(p, devices=frozenset({"cuda", "cpu"})).availability("cpu") == why
            with pytest.raises(providers.Unsupported) as err:
                p.make(shape())
            assert str(err.value) == why
    finally:
        providers_torch._varlen_lacks.cache_clear()
    assert providers_torch._varlen_lacks() is None  # this machine's torch has it


@pytest.mark.parametrize("dtype, variant, mode, reason", [
    ("fp32", "docs:16/24", "fwd", "dtype fp32 not supported (supports bf16, fp16)"),
    ("tf32", "docs:16/24", "fwd", "dtype tf32 not supported (supports bf16, fp16)"),
    ("fp16", "softcap5+docs:16/24", "fwd", "cannot express variant softcap"),
    ("fp16", "alibi+docs:16/24", "bwd", "cannot express variant alibi"),
    ("bf16", "window8+softcap5+alibi+docs:16/24", "fwd", "cannot express variant alibi, softcap"),
    ("fp16", "docs:16/24", "decode", "no decode path"),
])
def test_torch_varlen_refuses_what_varlen_attn_cannot_do_in_one_line(dtype, variant, mode, reason):
    assert providers.get("torch-varlen").unsupported_reason(shape(variant), dtype, mode, "cuda") == reason


@pytest.mark.parametrize("variant, reason", [("dense", "runs packed documents only (a docs variant)"),
                                             ("window8", "runs packed documents only (a docs variant)"),
                                             ("softcap5+docs:16/24", "cannot express variant softcap")])
def test_torch_varlen_built_for_a_point_it_cannot_run_is_unsupported_in_one_line(variant, reason):
    with pytest.raises(providers.Unsupported) as err:
        providers.get("torch-varlen").make(shape(variant))
    assert str(err.value) == reason


# ---- torch-varlen's calls, through a stand-in of varlen_attn ------------------------------------------------------
def flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal, window, gqa):
    """FlashAttention's varlen semantics on (tokens, heads, d), per sequence, in float64: query i sees key j when
    j <= i (causal), and i - left <= j <= i + right for a window (-1: no bound on that side)."""
    outs = []
    for b in range(len(cu_q) - 1):
        qs, ks, vs = q[cu_q[b]:cu_q[b + 1]], k[cu_k[b]:cu_k[b + 1]], v[cu_k[b]:cu_k[b + 1]]
        assert qs.shape[0] <= max_q and ks.shape[0] <= max_k
        if gqa:
            ks, vs = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (ks, vs))
        assert ks.shape[1] == qs.shape[1], "varlen_attn without enable_gqa takes as many K/V heads as Q heads"
        i, j = torch.arange(qs.shape[0])[:, None], torch.arange(ks.shape[0])[None, :]
        left, right = window
        keep = ((j >= i - left) | (left < 0)) & ((j <= i + right) | (right < 0)) & ((j <= i) | (not causal))
        s = torch.einsum("qhd,khd->hqk", qs.double(), ks.double()) / qs.shape[-1] ** 0.5
        p = s.masked_fill(~keep, float("-inf")).softmax(-1)
        outs.append(torch.einsum("hqk,khd->qhd", p, vs.double()))
    return torch.cat(outs)


def varlen_new(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
               window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    """torch 2.12+'s signature: causal is window_size (-1, 0), GQA by enable_gqa."""
    return flash_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, tuple(window_size) == (-1, 0),
                        window_size, enable_gqa)


def varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.10's signature: is_causal, no window, no GQA."""
    return flash_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, (-1, -1), False)


@pytest.fixture
def stand_in(monkeypatch):
    from torch.nn.attention import varlen

    def use(fn):
        monkeypatch.setattr(varlen, "varlen_attn", fn)
        monkeypatch.setattr(varlen, "_can_use_cudnn", lambda **kw: False, raising=False)

    return use


@pytest.mark.parametrize("variant", ["docs:16/24", "docs:1/38/1", "window5:0+docs:16/24", "window3:2+docs:16/24",
                                     "docs"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_torch_varlen_packs_the_documents_and_matches_the_reference(stand_in, variant, causal, kv_heads):
    stand_in(varlen_new)
    s = shape(variant, causal, kv_heads=kv_heads, n=300 if variant == "docs" else 40)  # "docs": 128-4096 tokens
    q, k, v = (t.double() for t in make_inputs(s, "fp32", "cpu", False, "bshd"))
    got = providers.get("torch-varlen").make(s)(q, k, v)
    assert got.shape == q.shape
    ref = attention_ref(q, k, v, causal, **providers.variant_kwargs(s, "cpu"))
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)
    assert providers.get("torch-varlen").config().startswith("flash")


def test_torch_varlen_gradients_reach_the_token_major_inputs(stand_in):
    stand_in(varlen_new)
    s = shape("window5:0+docs:16/24", True, kv_heads=2)
    q, k, v = (t.detach().double().requires_grad_() for t in make_inputs(s, "fp32", "cpu", False, "bshd"))
    do = torch.randn(q.shape, dtype=torch.float64)
    grads = torch.autograd.grad(providers.get("torch-varlen").make(s)(q, k, v), (q, k, v), do)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ref = attention_ref(*leaves, True, **providers.variant_kwargs(s, "cpu"))
    for got, want in zip(grads, torch.autograd.grad(ref, leaves, do)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_torch_2_10s_varlen_attn_runs_causal_documents_and_refuses_windows_and_gqa_in_one_line(stand_in):
    stand_in(varlen_2_10)
    s = shape("docs:16/24", True)
    q, k, v = (t.double() for t in make_inputs(s, "fp32", "cpu", False, "bshd"))
    got = providers.get("torch-varlen").make(s)(q, k, v)
    torch.testing.assert_close(got, attention_ref(q, k, v, True, **providers.variant_kwargs(s, "cpu")))
    assert "is_causal=True" in providers.get("torch-varlen").config()
    for s, reason in ((shape("window5:0+docs:16/24"), "has no sliding window (no window_size)"),
                      (shape(kv_heads=2), "takes as many K/V heads as query heads (no enable_gqa)")):
        with pytest.raises(providers.Unsupported) as err:
            providers.get("torch-varlen").make(s)
        assert str(err.value) == f"torch {torch.__version__}'s varlen_attn {reason}"


# ---- the GPU: the real varlen_attn against the float64 reference ----------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("variant", ["docs", "docs:1/700/1300/33/6", "window256:0+docs"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("kv_heads", [8, 2], ids=["mha", "gqa"])
def test_torch_varlen_on_the_gpu_forward_and_backward(dtype, variant, causal, kv_heads):
    p = providers.get("torch-varlen")
    assert p.availability("cuda") is None, p.availability("cuda")
    s = Shape(batch=2, heads=8, kv_heads=kv_heads, seqlen_q=2040, seqlen_k=2040, headdim=128, causal=causal,
              variant=variant)
    try:
        fn = p.make(s)
    except providers.Unsupported as exc:  # a window or GQA the installed torch's varlen_attn lacks
        assert "window" in variant or kv_heads != 8, exc
        pytest.skip(str(exc))
    q, k, v = make_inputs(s, dtype, DEVICE, False, p.layout)
    verdict = check_attention(lambda q, k, v, c: fn(q, k, v), q, k, v, causal,
                              variant_kwargs=providers.variant_kwargs(s, DEVICE))
    assert verdict.ok, verdict.detail
