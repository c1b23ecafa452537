"""fp32 means fp32 accuracy, tf32 is its own dtype: a provider that computes fp32 in TF32 is `wrong` at fp32
and `ok` at tf32; PyTorch's TF32 switches are on for a tf32 point only; fa2bench's kernels get tf32=..."""
import torch

from fa2bench.core import precision, providers
from fa2bench.core.presets import DTYPES, Point, Shape
from fa2bench.core.reference import attention_ref
from fa2bench.run.point import RunOptions, run_point

SHAPE = Shape(batch=1, heads=2, kv_heads=2, seqlen_q=64, seqlen_k=64, headdim=32, causal=False)
OPTS = RunOptions(device="cpu", rep_ms=1, warmup_ms=0)


def to_tf32(x):
    """Round fp32 to TF32's 10 mantissa bits (what a TF32 tensor core does to its operands)."""
    bits = x.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return x + (rounded - x).detach()  # TF32 values, gradients of the identity


def _register(monkeypatch, name, fn):
    monkeypatch.setitem(providers.REGISTRY, name, providers.Provider(
        name=name, label=name, color="k", kind="baseline", description="test double",
        make=lambda shape: fn, devices=frozenset({"cpu", "cuda"})))
    return name


def test_a_provider_computing_in_tf32_is_wrong_as_fp32_and_ok_as_tf32(monkeypatch):
    def tf32_inside(q, k, v):
        return attention_ref(to_tf32(q), to_tf32(k), to_tf32(v), upcast=False)

    name = _register(monkeypatch, "silent-tf32", tf32_inside)
    for mode in ("fwd", "bwd"):
        as_fp32 = run_point(Point(name, mode, "fp32", SHAPE), OPTS, {})
        assert as_fp32["status"] == "wrong", as_fp32
        assert as_fp32["max_rel_error"] > 1e-4
        assert run_point(Point(name, mode, "tf32", SHAPE), OPTS, {})["status"] == "ok"
    assert run_point(Point("torch-eager", "bwd", "fp32", SHAPE), OPTS, {})["status"] == "ok"  # true fp32 passes


def test_pytorch_tf32_switches_are_on_only_during_a_tf32_point(monkeypatch):
    seen = []

    def record(q, k, v):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                     precision.tf32_enabled()))
        return attention_ref(q, k, v, upcast=False)

    name = _register(monkeypatch, "record", record)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    assert run_point(Point(name, "fwd", "tf32", SHAPE), OPTS, {})["status"] == "ok"
    assert seen and set(seen) == {(True, True, True)}
    seen.clear()
    assert run_point(Point(name, "fwd", "fp32", SHAPE), OPTS, {})["status"] == "ok"
    assert set(seen) == {(False, False, False)}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_our_kernels_get_the_tf32_keyword_when_they_take_it():
    calls = []

    def new_kernel(q, k, v, causal=False, tf32=False):
        calls.append(tf32)
        return q

    def old_kernel(q, k, v, causal=False):
        calls.append("no keyword")
        return q

    q = torch.zeros(1)
    with precision.matmul_precision("tf32"):
        providers._call_kernel(new_kernel, False, q, q, q)
        providers._call_kernel(old_kernel, False, q, q, q)
    with precision.matmul_precision("fp32"):
        providers._call_kernel(new_kernel, False, q, q, q)
    assert calls == [True, "no keyword", False]


def test_tf32_is_a_dtype_every_fp32_capable_provider_accepts():
    assert "tf32" in DTYPES
    for name in ("naive", "fa1", "fa2", "torch-eager", "sdpa-math", "sdpa-efficient"):
        assert "tf32" in providers.get(name).dtypes
    assert providers.get("sdpa-flash").unsupported_reason(SHAPE, "tf32", "fwd", "cuda") is not None
