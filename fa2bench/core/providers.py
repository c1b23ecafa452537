"""The one registry of attention providers: our Triton kernels and what users would pick instead.

A provider is a factory: ``make(shape)`` does the set-up (masks, compilation handles, backend pinning) and
returns ``fn(q, k, v) -> o`` for layout (batch, heads, seq, headdim); the runner times ``fn`` alone. Each
provider declares what it supports, so unsupported points are recorded as ``unsupported`` without running.
CLI choices, plot colours and labels and test parametrisation all come from ``REGISTRY``.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from fa2bench.core import device, precision
from fa2bench.core.device import interpreter_problem as _interpreter_problem
from fa2bench.core.flops import MODES
from fa2bench.core.memory import EAGER_WORKSPACE, MATH_WORKSPACE, NAIVE_WORKSPACE, streaming_workspace
from fa2bench.core.presets import DTYPES, Shape

if TYPE_CHECKING:  # the registry imports no torch: listing providers and drawing figures stay light
    import torch

AttnFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


class Unsupported(Exception):
    """This provider cannot run this point; the message says why."""


@dataclass(frozen=True)
class Provider:
    name: str
    label: str
    color: str
    kind: str  # "ours" (fa2bench's Triton kernels), "vendor" (PyTorch, flash-attn), "baseline"
    description: str
    make: Callable[[Shape], AttnFn]
    devices: frozenset = frozenset({"cuda"})
    dtypes: frozenset = frozenset(DTYPES)
    max_headdim: int = 256
    modes: frozenset = frozenset(MODES)
    requires: str | None = None  # a module that must be importable
    config: Callable[[], str] = field(default=lambda: "")  # the autotuned config of the latest launch
    module: str | None = None  # the fa2bench.kernels module with its Triton kernels (fa2bench's own providers)
    io_model: str | None = None  # the HBM byte model it follows (iomodel: standard, fa1, fa2, fa2-atomic)
    io_model_assumed: bool = False  # True when that model is assumed (a kernel that is not ours to read)
    roles: frozenset = frozenset()  # "subject" (what figures and speedups are about), "speedup-baseline"
    # bytes the provider allocates beyond q, k, v, o (and gradients): workspace_bytes(shape, dtype, mode)
    workspace_bytes: Callable[[Shape, str, str], int] = streaming_workspace
    rung: int | None = None  # place on the FA1 -> FA2 ablation ladder (1..7; fa1-split is 2, a side step)
    function: str | None = None  # the public fa2bench.kernels function of one of fa2bench's own providers

    def availability(self, device: str) -> str | None:
        """None if usable on ``device`` ("cuda" or "cpu"), else why not."""
        if device not in self.devices:
            return "needs a CUDA GPU" if device == "cpu" else f"does not run on {device}"
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"the {self.requires!r} package is not installed"
        if self.module is not None and device == "cpu":
            return _interpreter_problem()
        return None

    def unsupported_reason(self, shape: Shape, dtype: str, mode: str, device: str) -> str | None:
        """Why this provider does not support the point, from its declared limits (None if it may)."""
        reason = self.availability(device)
        if reason:
            return reason
        if dtype not in self.dtypes:
            return f"dtype {dtype} not supported (supports {', '.join(sorted(self.dtypes))})"
        if dtype == "bf16" and device == "cpu" and self.kind == "ours":
            return "the Triton CPU interpreter computes wrong bf16 dot products"
        if shape.headdim > self.max_headdim:
            return f"head dim {shape.headdim} > {self.max_headdim}"
        if mode not in self.modes:
            return f"mode {mode} not supported"
        return None


REGISTRY: dict[str, Provider] = {}


def register(**kwargs):
    """Decorator: register the decorated factory ``make(shape) -> fn(q, k, v)`` as a provider."""

    def wrap(make):
        provider = Provider(make=make, **kwargs)
        if provider.name in REGISTRY:
            raise ValueError(f"provider {provider.name!r} registered twice")
        REGISTRY[provider.name] = provider
        return make

    return wrap


def get(name: str) -> Provider:
    if name not in REGISTRY:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def with_role(role: str) -> str:
    """The provider that plays ``role``: "subject" (the speedup figure and the report are about it) or
    "speedup-baseline" (the headline table's speedups are over it)."""
    return next(n for n, p in REGISTRY.items() if role in p.roles)


def register_provider(make: Callable[[Shape], AttnFn] | None = None, /, **fields):
    """Add a provider to the registry: ``register_provider(make, name=..., label=..., color=..., kind=...,
    description=..., devices=frozenset({"cuda", "cpu"}), ...)``, or the same fields as a decorator.
    ``make(shape)`` does the set-up and returns ``fn(q, k, v) -> o`` (layout batch, heads, seq, headdim)."""
    if make is None:
        return register(**fields)
    return register(**fields)(make)


# --- fa2bench's own Triton kernels ----------------------------------------------------------------------


def _kernel_module(name: str):
    device.prepare_triton()
    return importlib.import_module(f"fa2bench.kernels.{name}")


def kernel_module(name: str):
    """The fa2bench.kernels module of one of fa2bench's own providers (TRITON_KERNELS, last_config, ...)."""
    module = get(name).module
    if module is None:
        raise KeyError(f"provider {name!r} has no Triton kernels of fa2bench's")
    return _kernel_module(module)


def ladder() -> tuple[str, ...]:
    """The providers of the FA1 -> FA2 ablation ladder, ordered by rung (docs/ablation.md)."""
    return tuple(sorted((n for n, p in REGISTRY.items() if p.rung is not None), key=lambda n: REGISTRY[n].rung))


def triton_providers() -> tuple[str, ...]:
    """The providers whose kernels are fa2bench's own Triton kernels."""
    return tuple(n for n, p in REGISTRY.items() if p.module is not None)


def _ours(module: str, function: str, **kwargs):
    def make(shape: Shape) -> AttnFn:
        device.prepare_triton()
        fn = getattr(importlib.import_module("fa2bench.kernels"), function)
        return functools.partial(_call_kernel, fn, shape.causal)

    register(kind="ours", devices=frozenset({"cuda", "cpu"}), module=module, function=function,
             config=lambda: _kernel_module(module).last_config(), **kwargs)(make)


def _call_kernel(fn, causal, q, k, v):
    """fa2bench's kernel ``fn`` with the point's matmul precision: ``tf32=True`` for a tf32 point (a kernel
    without the keyword is called without it)."""
    if _takes_tf32(fn):
        return fn(q, k, v, causal=causal, tf32=precision.tf32_enabled())
    return fn(q, k, v, causal=causal)


@functools.cache
def _takes_tf32(fn) -> bool:
    import inspect

    return "tf32" in inspect.signature(fn).parameters


_ours("naive", "naive_attention", name="naive", label="Naive (Triton)", color="#7f7f7f", io_model="standard",
      roles=frozenset({"speedup-baseline"}), workspace_bytes=NAIVE_WORKSPACE,
      description="standard attention in Triton kernels that write S and P to HBM")
_ours("flash1", "flash1_attention", name="fa1", label="FlashAttention-1 (Triton)", color="#1f77b4", io_model="fa1",
      rung=1, description="FlashAttention-1's algorithm in Triton: K/V outer loop, parallel over batch x heads")
# fa1-split moves the bytes fa1 does (its atomic dQ adds aside). Rungs 3-6 follow fa2's loop order; rungs 3-5 also
# load the K/V blocks above the causal diagonal (visited and masked), which the fa2 model, counting only the blocks
# a row sees, leaves out.
_ours("flash1", "flash1_split_attention", name="fa1-split", label="FlashAttention-1 as released (Triton)",
      color="#aec7e8", rung=2, io_model="fa1",
      description="fa1 split over extra programs at small batch x heads, as flash-attn v1 does")
_ours("ladder", "r3_attention", name="r3-swap", label="R3: Q outer loop", color="#c5b0d5", rung=3, io_model="fa2",
      description="ablation rung 3: Q outer, K/V inner, O on chip, normalised every step")
_ours("ladder", "r4_attention", name="r4-defer", label="R4: + deferred normalisation", color="#9edae5", rung=4,
      io_model="fa2", description="ablation rung 4: rung 3 + one division at the end, log-sum-exp only")
_ours("ladder", "r5_attention", name="r5-seqpar", label="R5: + sequence parallelism", color="#dbdb8d", rung=5,
      io_model="fa2", description="ablation rung 5: rung 4 + sequence parallelism (FA2's algorithm, untuned)")
_ours("ladder", "r6_attention", name="r6-skip", label="R6: + causal block skipping", color="#f7b6d2", rung=6,
      io_model="fa2", description="ablation rung 6: rung 5 + causal block skipping, unmasked off-diagonal")
_ours("flash2", "flash2_attention", name="fa2", label="FlashAttention-2 (Triton)", color="#d62728", io_model="fa2",
      rung=7, roles=frozenset({"subject"}),
      description="FlashAttention-2's algorithm in Triton: sequence parallel, deferred rescaling")


# --- PyTorch ---------------------------------------------------------------------------------------------


@register(name="torch-eager", label="PyTorch eager", color="#8c564b", kind="baseline",
          devices=frozenset({"cuda", "cpu"}), max_headdim=1 << 30, io_model="standard",
          workspace_bytes=EAGER_WORKSPACE,
          description="standard attention in eager PyTorch: matmul, softmax in fp32, matmul")
def _torch_eager(shape: Shape) -> AttnFn:
    from fa2bench.core.reference import attention_ref, causal_mask

    mask = causal_mask(shape.seqlen_q, shape.seqlen_k, device.name()) if shape.causal else None
    return functools.partial(attention_ref, causal=shape.causal, upcast=False, mask=mask)


def _sdpa(backend_name: str):
    def make(shape: Shape) -> AttnFn:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention

        if shape.causal and shape.seqlen_q != shape.seqlen_k:
            raise Unsupported("SDPA's is_causal is aligned top-left; fa2bench's causal is bottom-right")
        backend = getattr(SDPBackend, backend_name)
        gqa = shape.kv_heads != shape.heads

        def fn(q, k, v):
            with sdpa_kernel([backend]):  # exactly one backend: a refusal raises, never falls back
                return scaled_dot_product_attention(q, k, v, is_causal=shape.causal, enable_gqa=gqa)

        return fn

    return make


_SDPA = {
    "sdpa-flash": ("FLASH_ATTENTION", "SDPA flash", "#ff7f0e", {"fp16", "bf16"},
                   "PyTorch SDPA pinned to its FlashAttention-2 CUDA backend"),
    "sdpa-cudnn": ("CUDNN_ATTENTION", "SDPA cuDNN", "#2ca02c", {"fp16", "bf16"},
                   "PyTorch SDPA pinned to its cuDNN attention backend"),
    "sdpa-efficient": ("EFFICIENT_ATTENTION", "SDPA mem-efficient", "#9467bd", set(DTYPES),
                       "PyTorch SDPA pinned to its memory-efficient (xFormers) backend"),
    "sdpa-math": ("MATH", "SDPA math", "#bcbd22", set(DTYPES),
                  "PyTorch SDPA pinned to its math (reference) backend"),
}
for _name, (_backend, _label, _color, _dtypes, _desc) in _SDPA.items():
    register(name=_name, label=_label, color=_color, kind="vendor", description=_desc,
             dtypes=frozenset(_dtypes), max_headdim=1 << 30,
             devices=frozenset({"cuda", "cpu"}) if _backend == "MATH" else frozenset({"cuda"}),
             io_model="standard" if _backend == "MATH" else "fa2-atomic", io_model_assumed=_backend != "MATH",
             workspace_bytes=MATH_WORKSPACE if _backend == "MATH" else streaming_workspace)(_sdpa(_backend))


@register(name="flex", label="FlexAttention", color="#17becf", kind="vendor", io_model="fa2", io_model_assumed=True,
          description="torch.nn.attention.flex_attention, compiled (compilation outside the timed region)")
def _flex(shape: Shape) -> AttnFn:
    from torch.nn.attention.flex_attention import create_block_mask

    compiled = _compiled_flex()
    block_mask = None
    if shape.causal:
        offset = shape.seqlen_k - shape.seqlen_q

        def bottom_right(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx + offset

        block_mask = create_block_mask(bottom_right, None, None, shape.seqlen_q, shape.seqlen_k, device="cuda")
    gqa = shape.kv_heads != shape.heads
    return functools.partial(_call_flex, compiled, block_mask, gqa)


@functools.cache
def _compiled_flex():
    import torch._dynamo.config
    import torch._functorch.config
    from torch.nn.attention.flex_attention import flex_attention

    # A sweep compiles one graph per shape: allow many, rather than falling back to (slow) eager flex.
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 1024)
    # Timing the backward alone reuses one forward graph (retain_graph=True), which donated buffers forbid.
    torch._functorch.config.donated_buffer = False
    return torch.compile(flex_attention, dynamic=False)


def _call_flex(compiled, block_mask, gqa, q, k, v):
    return compiled(q, k, v, block_mask=block_mask, enable_gqa=gqa)


@register(name="flash-attn", label="flash-attn (CUDA)", color="#e377c2", kind="vendor", requires="flash_attn",
          io_model="fa2-atomic", io_model_assumed=True,
          dtypes=frozenset({"fp16", "bf16"}),
          description="Dao-AILab's flash-attn package (FlashAttention-2 CUDA kernels), when installed")
def _flash_attn(shape: Shape) -> AttnFn:
    from flash_attn import flash_attn_func

    def fn(q, k, v):  # flash-attn wants (batch, seq, heads, dim): transposed views, no copies
        o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=shape.causal)
        return o.transpose(1, 2)

    return fn
