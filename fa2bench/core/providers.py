"""The one registry of attention providers: our Triton kernels and what users would pick instead.

fa2bench's own Triton kernels are registered here; PyTorch's attention (eager, SDPA, FlexAttention, flash-attn,
varlen_attn) is written in ``fa2bench.core.providers_torch`` and registered here from its ``PROVIDERS``, so that
importing this module registers every provider and imports run one way (the provider modules never import the
registry; what they share is in ``fa2bench.core.providers_common``, re-exported here).

A provider is a factory: ``make(shape)`` does the set-up (masks, compilation handles, backend pinning) and
returns ``fn(q, k, v) -> o`` for layout (batch, heads, seq, headdim); the runner times ``fn`` alone. Each
provider declares what it supports, so unsupported points are recorded as ``unsupported`` without running.
CLI choices, plot colours and labels and test parametrisation all come from ``REGISTRY``.

Decode points (mode ``decode``, fa2bench.core.decode) hand a provider a KV cache, not (q, k, v): a provider
with ``decode="native"`` (fa2-decode) is built by ``make(shape)`` into ``fn(inputs: DecodeInputs) -> o`` of shape
(batch, q_len, heads, head_dim) and reads contiguous and paged caches and ragged lengths itself; one with
``decode="adapted"`` keeps its ``fn(q, k, v)``, called on (batch, heads, seq, head_dim) views of a contiguous
cache of uniform lengths (``decode_ref.decode_adapter``): paged or ragged points are ``unsupported`` for it, with the
reason.
"""
from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field
from typing import Callable

from fa2bench.core import device, precision, providers_torch
from fa2bench.core.device import SM_NAMES, device_is_sm, interpreter_problem as _interpreter_problem
from fa2bench.core.flops import DECODE, MODES
from fa2bench.core.memory import NAIVE_WORKSPACE, streaming_workspace
from fa2bench.core.presets import DTYPES, TIMERS, Shape
from fa2bench.core import variants as _variants
from fa2bench.core.providers_common import ALL_VARIANT_PARTS, AttnFn, Unsupported, variant_kwargs

LAYOUTS = ("bhsd", "bshd")  # the memory orders a provider's inputs come in (Provider.layout)


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
    # whether the latest launch's autotuned configs came from the disk cache (None: nothing autotuned)
    config_cached: Callable[[], bool | None] = field(default=lambda: None)
    module: str | None = None  # the fa2bench.kernels module with its Triton kernels (fa2bench's own providers)
    io_model: str | None = None  # the HBM byte model it follows (iomodel: standard, fa1, fa2, fa2-atomic)
    io_model_assumed: bool = False  # True when that model is assumed (a kernel that is not ours to read)
    roles: frozenset = frozenset()  # "subject" (what figures and speedups are about), "speedup-baseline"
    # bytes the provider allocates beyond q, k, v, o (and gradients): workspace_bytes(shape, dtype, mode)
    workspace_bytes: Callable[[Shape, str, str], int] = streaming_workspace
    rung: int | None = None  # place on the FA1 -> FA2 ablation ladder (1..7; fa1-split is 2, a side step)
    function: str | None = None  # the public fa2bench.kernels function of one of fa2bench's own providers
    sm: int | None = None  # the one GPU architecture it runs on (90: Hopper), None for any
    headdims: frozenset | None = None  # the head dims it supports, when not every one up to max_headdim
    decode: str = ""  # how it runs decode points: "native", "adapted" (contiguous uniform caches only) or ""
    timer: str | None = None  # a timer this provider's points need (presets.TIMERS); None: the sweep's choice
    needs_variant: str | None = None  # a variant part without which it has nothing to run ("docs": fa2-varlen)
    # the memory order of the inputs it is handed, always seen as (batch, heads, seq, headdim) views: "bhsd", or
    # "bshd" (tokens outermost: a packed (tokens, heads, headdim) batch is then a view, as varlen users hold it)
    layout: str = "bhsd"
    # the parts of attention variants it can express (variants.Variant.features: window, softcap, alibi, docs)
    variants: frozenset = frozenset()
    # what the installed software lacks for it, as a reason (None: nothing), checked after ``requires`` (torch
    # without varlen_attn)
    lacks: Callable[[], str | None] | None = None

    def __post_init__(self):
        if self.timer is not None and self.timer not in TIMERS:
            raise ValueError(f"provider {self.name!r}: timer must be one of {', '.join(TIMERS)} or None, "
                             f"got {self.timer!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"provider {self.name!r}: layout must be one of {', '.join(LAYOUTS)}, got "
                             f"{self.layout!r}")
        if not _is_colour(self.color):
            raise ValueError(f"provider {self.name!r}: color {self.color!r} is not a colour (use '#rrggbb' or "
                             "a matplotlib colour name)")

    def availability(self, device: str) -> str | None:
        """None if usable on ``device`` ("cuda" or "cpu"), else why not."""
        if self.sm is not None and not device_is_sm(self.sm, device):
            return f"needs {SM_NAMES.get(self.sm, 'an')} GPU (sm_{self.sm})"
        if device not in self.devices:
            return "needs a CUDA GPU" if device == "cpu" else f"does not run on {device}"
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"the {self.requires!r} package is not installed"
        if self.lacks is not None and (why := self.lacks()):
            return why
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
        if self.headdims is not None and shape.headdim not in self.headdims:
            return f"head dim {shape.headdim} not supported ({', '.join(map(str, sorted(self.headdims)))})"
        if shape.variant != _variants.DENSE:
            missing = sorted(_variants.parse(shape.variant).features() - self.variants)
            if missing:
                return f"cannot express variant {', '.join(missing)}"
        if mode == DECODE:
            return self._decode_reason(shape)
        if mode not in self.modes:
            return f"mode {mode} not supported"
        return None

    def runs_mode(self, mode: str) -> bool:
        """Whether it has a path for ``mode`` at all (a sweep's default providers are those that run one of its
        modes: fa2-decode stays out of training sweeps, the training-only kernels out of decode sweeps)."""
        return bool(self.decode) if mode == DECODE else mode in self.modes

    def runs_variant(self, variant: str) -> bool:
        """Whether it has a path for points of this variant at all (a sweep's default providers are those that
        run one of its variants: fa2-varlen stays out of sweeps without packed documents)."""
        return self.needs_variant is None or self.needs_variant in _variants.parse(variant).features()

    def _decode_reason(self, shape: Shape) -> str | None:
        if not self.decode:
            return "no decode path"
        if self.decode == "adapted" and shape.page_size:
            return "cannot read a paged KV cache (it takes one contiguous K and V per sequence)"
        if self.decode == "adapted" and shape.ragged:
            return "takes one KV length for the whole batch (no per-sequence lengths)"
        return None


def _is_colour(value) -> bool:
    """A colour plots can draw: '#rgb', '#rrggbb(aa)', or a name matplotlib knows (when it is installed)."""
    if not isinstance(value, str):
        return False
    if re.fullmatch(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})", value):
        return True
    try:
        from matplotlib.colors import is_color_like
    except ImportError:
        return False
    return is_color_like(value)


REGISTRY: dict[str, Provider] = {}


def register(make: Callable[[Shape], AttnFn] | None = None, /, **fields):
    """Add a provider to the registry: ``register(make, name=..., label=..., color=..., kind=..., description=...,
    devices=frozenset({"cuda", "cpu"}), ...)``, or the same fields as a decorator of ``make``. ``make(shape)`` does
    the set-up and returns ``fn(q, k, v) -> o`` (layout batch, heads, seq, headdim)."""

    def add(make):
        provider = Provider(make=make, **fields)
        if provider.name in REGISTRY:
            raise ValueError(f"provider {provider.name!r} registered twice")
        REGISTRY[provider.name] = provider
        return make

    return add if make is None else add(make)


register_provider = register  # its public name (fa2bench.register_provider)


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
    """The providers whose kernels are fa2bench's own Triton kernels with the attention API ``fn(q, k, v)``
    (fa2-decode, which takes a KV cache, is not among them)."""
    return tuple(n for n, p in REGISTRY.items() if p.module is not None and p.decode != "native")


def _ours(module: str, function: str, **kwargs):
    def make(shape: Shape) -> AttnFn:
        device.prepare_triton()
        fn = getattr(importlib.import_module("fa2bench.kernels"), function)
        extra = variant_kwargs(shape, device.name())
        _require_keywords(fn, extra, kwargs["name"])
        return functools.partial(_call_kernel, fn, shape.causal, extra=extra)

    register(**{"kind": "ours", "devices": frozenset({"cuda", "cpu"}), "module": module, "function": function,
                "config": lambda: _kernel_module(module).last_config(),
                "config_cached": lambda: getattr(_kernel_module(module), "config_cached", lambda: None)(),
                **kwargs})(make)


def _call_kernel(fn, causal, q, k, v, extra=None):
    """fa2bench's kernel ``fn`` with the point's matmul precision (``tf32=True`` for a tf32 point; a kernel
    without the keyword is called without it) and the variant's keywords ``extra``."""
    if _takes(fn, "tf32"):
        return fn(q, k, v, causal=causal, tf32=precision.tf32_enabled(), **(extra or {}))
    return fn(q, k, v, causal=causal, **(extra or {}))


@functools.cache
def _takes(fn, keyword: str) -> bool:
    import inspect

    return keyword in inspect.signature(fn).parameters


# the kernel keyword that carries each part of a variant (variants.kernel_kwargs)
_KEYWORD_PART = {"window": "window", "softcap": "softcap", "alibi_slopes": "alibi", "doc_ids": "docs"}


def _require_keywords(fn, extra: dict, name: str) -> None:
    """Unsupported ("<name> kernel lacks variant X") when the installed kernel ``fn`` lacks a keyword of ``extra``."""
    lacking = [_KEYWORD_PART.get(kw, kw) for kw in extra if fn is None or not _takes(fn, kw)]
    if lacking:
        raise Unsupported(f"{name.split('-')[0]} kernel lacks variant {', '.join(lacking)}")


_ours("naive", "naive_attention", name="naive", label="Naive (Triton)", color="#7f7f7f", io_model="standard",
      decode="adapted",
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
      rung=7, roles=frozenset({"subject"}), variants=ALL_VARIANT_PARTS,
      description="FlashAttention-2's algorithm in Triton: sequence parallel, deferred rescaling")


@register(name="fa2-varlen", label="FA2 varlen (Triton)", color="#8b0000", kind="ours", io_model="fa2",
          devices=frozenset({"cuda", "cpu"}), variants=ALL_VARIANT_PARTS, needs_variant="docs",
          config=lambda: _kernel_module("flash2").last_config(),  # no module: not fn(q, k, v) of the kernels
          layout="bshd",
          description="fa2 on packed documents: every document one variable-length sequence (cu_seqlens), no "
                      "padding and no masked tiles across documents; docs variants only (inputs held as "
                      "(tokens, heads, d), as varlen users hold them: the packing is a view)")
def _fa2_varlen(shape: Shape) -> AttnFn:
    device.prepare_triton()
    variant = _variants.parse(shape.variant)
    if variant.docs is None:
        raise Unsupported("runs packed documents only (a docs variant)")
    fn = getattr(importlib.import_module("fa2bench.kernels"), "flash2_varlen_attention", None)
    extra = {k: v for k, v in variant_kwargs(shape, device.name()).items() if k != "doc_ids"}
    if fn is None:
        raise Unsupported("fa2 kernel lacks variant docs (no flash2_varlen_attention)")
    _require_keywords(fn, extra, "fa2")
    cu, longest = _variants.cu_seqlens(variant, shape.batch, shape.seqlen_q, device.name())

    def call(q, k, v):
        def packed(t):  # a view of the (batch, seq, heads, d) memory the sweep hands it (layout "bshd")
            return t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])

        o = fn(packed(q), packed(k), packed(v), cu, cu, longest, longest, causal=shape.causal, **extra)
        return o.reshape(shape.batch, shape.seqlen_q, shape.heads, shape.headdim).transpose(1, 2)

    return call


# fa3's kernels are Gluon (Triton's Hopper dialect), Hopper only: not run by the interpreter. fa3 runs the backward
# too (kernels/fa3_bwd.py, the same for every forward rung); fa3-pingpong and fa3-overlap (rungs 9, 10) run fwd and
# fwd_bwd (their own forward, then that backward) but not bwd alone, which would time rung 8's backward kernels
# under their name.
def _fp32_dq_workspace(shape: Shape, dtype: str, mode: str) -> int:
    """streaming_workspace plus the fp32 dQ that atomics accumulate into (backward)."""
    extra = 0 if mode == "fwd" else 4 * shape.batch * shape.heads * shape.seqlen_q * shape.headdim
    return streaming_workspace(shape, dtype, mode) + extra


_FA3 = dict(io_model="fa2", devices=frozenset({"cuda"}), sm=90, dtypes=frozenset({"fp16", "bf16"}),
            headdims=frozenset({64, 128}), max_headdim=128, modes=frozenset({"fwd", "fwd_bwd"}),
            workspace_bytes=_fp32_dq_workspace)
_ours("fa3", "fa3_attention", name="fa3", label="R8: + TMA producer, wgmma consumers (Gluon)", color="#e377c2",
      rung=8, **{**_FA3, "modes": frozenset({"fwd", "bwd", "fwd_bwd"})},
      description="ablation rung 8: persistent, warp-specialised (TMA producer warp, two wgmma consumer "
                  "warpgroups, mbarrier K/V ring, setmaxnreg); Hopper. Backward: the same machinery (not "
                  "persistent): a dK/dV kernel that also adds dQ into fp32 by TMA reduce-add (not "
                  "bit-reproducible)")


# Not a rung: fa3 with the deterministic dQ route (issue 23: "dQ by the cheapest measured route, deterministic
# mode kept available"; the TMA reduce-add route measured 1.03-1.10x its speed, docs/fa3.md section 9)
_ours("fa3", "fa3_deterministic_attention", name="fa3-deterministic", label="R8, dQ by its own kernel (Gluon)",
      color="#ce6dbd", **{**_FA3, "modes": frozenset({"bwd", "fwd_bwd"})},
      description="fa3 (rung 8) whose backward computes dQ in a separate kernel that recomputes S and dP (two "
                  "matmuls more than fa3's TMA reduce-add route): repeated backward passes are bit-equal")
_ours("fa3", "fa3_pingpong_attention", name="fa3-pingpong", label="R9: + ping-pong consumer warpgroups (Gluon)",
      color="#c49c94", rung=9, **_FA3,
      description="ablation rung 9: rung 8 with two 4-warp consumer partitions (64 rows each) whose wgmma "
                  "groups alternate through mbarriers, so one's softmax runs under the other's matmuls")
# Rung 10 since P reaches P V through shared memory: with P in registers ptxas put the P V wait above the softmax's
# exp2s; now the SASS runs them between the two waits (docs/fa3.md section 9; tests/test_fa3.py checks the order).
_ours("fa3", "fa3_overlap_attention", name="fa3-overlap", label="R10: + softmax under its own P V (Gluon)",
      color="#9c755f", rung=10, **_FA3,
      description="ablation rung 10: rung 9 with S_j and P_{j-1} V issued together and only S_j waited for "
                  "before the softmax, which runs under the warpgroup's own P V (FA3's intra-warpgroup "
                  "overlap; P through shared memory, two buffers per warpgroup)")


# --- PyTorch ---------------------------------------------------------------------------------------------


# eager PyTorch, SDPA per backend, FlexAttention, flash-attn and varlen_attn (fa2bench.core.providers_torch)
for _make, _fields in providers_torch.PROVIDERS:
    register(_make, **_fields)


# --- decoding against a KV cache (issue 19) ----------------------------------------------------------------


@register(name="fa2-decode", label="FA2 decode (Triton)", color="#ff9896", kind="ours",
          devices=frozenset({"cuda", "cpu"}), module="decode", function="decode_attention",
          modes=frozenset({DECODE}), decode="native", config=lambda: _kernel_module("decode").last_config(),
          description="FA2 specialised for decoding: GQA-packed tiles, split-KV with an LSE combine, paged KV")
def _fa2_decode(shape: Shape):
    device.prepare_triton()
    from fa2bench.kernels.decode import decode_attention

    def fn(inputs):  # the point built the lengths and table itself: no host-side validation in the timed call
        return decode_attention(inputs.q, inputs.k_cache, inputs.v_cache, inputs.seqlens_k, inputs.block_table,
                                causal=shape.causal, tf32=precision.tf32_enabled(), validate=False)

    return fn
