"""PyTorch's attention as providers: eager PyTorch, SDPA pinned to each backend, FlexAttention, the flash-attn
package and ``torch.nn.attention.varlen.varlen_attn``. Each factory is collected in ``PROVIDERS`` with its fields and
added to the one registry by ``fa2bench.core.providers``, which imports this module (this module does not import the
registry). Imports no torch until a factory runs.
"""
from __future__ import annotations

import functools
import inspect

from fa2bench.core import device, variant_mods
from fa2bench.core import variants as _variants
from fa2bench.core.memory import EAGER_WORKSPACE, MATH_WORKSPACE, streaming_workspace
from fa2bench.core.presets import DTYPES, Shape
from fa2bench.core.providers_common import ALL_VARIANT_PARTS, AttnFn, Unsupported, variant_kwargs

# (make, fields) in registration order: fa2bench.core.providers registers each as register(make, **fields)
PROVIDERS: list[tuple] = []


def _provider(**fields):
    """``register``'s decorator form, collected here for the registry."""

    def add(make):
        PROVIDERS.append((make, fields))
        return make

    return add


@_provider(name="torch-eager", label="PyTorch eager", color="#8c564b", kind="baseline",
            devices=frozenset({"cuda", "cpu"}), max_headdim=1 << 30, io_model="standard",
            workspace_bytes=EAGER_WORKSPACE, decode="adapted", variants=ALL_VARIANT_PARTS,
            description="standard attention in eager PyTorch: matmul, softmax in fp32, matmul")
def _torch_eager(shape: Shape) -> AttnFn:
    from fa2bench.core.reference import attention_ref, causal_mask

    if shape.variant != _variants.DENSE:
        return functools.partial(attention_ref, causal=shape.causal, upcast=False,
                                 **variant_kwargs(shape, device.name()))
    mask = causal_mask(shape.seqlen_q, shape.seqlen_k, device.name()) if shape.causal else None
    return functools.partial(attention_ref, causal=shape.causal, upcast=False, mask=mask)


def _sdpa(backend_name: str):
    def make(shape: Shape) -> AttnFn:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.nn.functional import scaled_dot_product_attention

        if shape.causal and shape.seqlen_q != shape.seqlen_k and shape.variant == _variants.DENSE:
            raise Unsupported("SDPA's is_causal is aligned top-left; fa2bench's causal is bottom-right")
        backend = getattr(SDPBackend, backend_name)
        gqa = shape.kv_heads != shape.heads
        if shape.variant != _variants.DENSE:
            mask = variant_mods.sdpa_mask(shape, variant_kwargs(shape, device.name()), device.name())
            cast = {}  # an additive bias in q's dtype, cast once (the first call is outside the timed region)

            group = shape.heads // shape.kv_heads

            def masked(q, k, v):
                m = mask if mask.dtype == torch.bool else cast.setdefault(q.dtype, mask.to(q.dtype))
                if gqa:  # as users run a mask with GQA (transformers' repeat_kv): SDPA's fused backends take an
                    # attn_mask or enable_gqa, not both; the copies are in the timed call, as they are for users
                    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
                with sdpa_kernel([backend]):
                    return scaled_dot_product_attention(q, k, v, attn_mask=m)

            return masked

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
    _provider(name=_name, label=_label, color=_color, kind="vendor", description=_desc,
               dtypes=frozenset(_dtypes), max_headdim=1 << 30, decode="adapted",
               devices=frozenset({"cuda", "cpu"}) if _backend == "MATH" else frozenset({"cuda"}),
               io_model="standard" if _backend == "MATH" else "fa2-atomic", io_model_assumed=_backend != "MATH",
               workspace_bytes=MATH_WORKSPACE if _backend == "MATH" else streaming_workspace,
               # an explicit attn_mask runs on the efficient and math backends only; softcap has no mask form
               variants=frozenset({"window", "alibi", "docs"}) if _backend in ("EFFICIENT_ATTENTION", "MATH")
               else frozenset(), config=lambda b=_backend: b)(_sdpa(_backend))


@_provider(name="flex", label="FlexAttention", color="#17becf", kind="vendor", io_model="fa2", io_model_assumed=True,
            decode="adapted", variants=ALL_VARIANT_PARTS, config=lambda: _flex_recompiles(),
            description="torch.nn.attention.flex_attention, compiled (compilation outside the timed region); "
                        "variants as mask_mod and score_mod, the block mask built in set-up")
def _flex(shape: Shape) -> AttnFn:
    """Compiled flex_attention with a block mask built here: none (dense), causal, or the variant's."""
    from torch.nn.attention.flex_attention import create_block_mask

    compiled = _compiled_flex()
    extra = variant_kwargs(shape, device.name())
    if shape.variant != _variants.DENSE:  # a variant as FlexAttention data
        mask_mod, score_mod = variant_mods.flex_mods(shape, extra)
    elif shape.causal:
        offset, score_mod = shape.seqlen_k - shape.seqlen_q, None

        def mask_mod(b, h, q_idx, kv_idx):  # causal, aligned bottom-right
            return kv_idx <= q_idx + offset
    else:
        return functools.partial(_call_flex, compiled, None, shape.kv_heads != shape.heads)
    block_mask = create_block_mask(mask_mod, shape.batch if "doc_ids" in extra else None, None, shape.seqlen_q,
                                   shape.seqlen_k, device=device.name())
    return functools.partial(_call_flex, compiled, block_mask, shape.kv_heads != shape.heads, score_mod=score_mod)


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


def _call_flex(compiled, block_mask, gqa, q, k, v, score_mod=None):
    return compiled(q, k, v, block_mask=block_mask, enable_gqa=gqa, score_mod=score_mod)


def _flex_recompiles() -> str:
    """Dynamo's recompile count so far (torch._dynamo.utils.counters), for the row's config column."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return ""
    n = sum(counters["recompiles"].values()) if "recompiles" in counters else 0
    return f"recompiles={n}"


@_provider(name="flash-attn", label="flash-attn (CUDA)", color="#e377c2", kind="vendor", requires="flash_attn",
            io_model="fa2-atomic", io_model_assumed=True,
            dtypes=frozenset({"fp16", "bf16"}),
            description="Dao-AILab's flash-attn package (FlashAttention-2 CUDA kernels), when installed; not "
                        "installed on the GPU image, so its points (dense and variants) are unsupported there")
def _flash_attn(shape: Shape) -> AttnFn:
    from flash_attn import flash_attn_func

    def fn(q, k, v):  # flash-attn wants (batch, seq, heads, dim): transposed views, no copies
        o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=shape.causal)
        return o.transpose(1, 2)

    return fn


# --- varlen_attn: PyTorch's own packed (cu_seqlens) attention -------------------------------------------------------

_VARLEN_PARTS = frozenset({"docs", "window"})  # window where the installed torch takes window_size
_VARLEN_LAST = {"config": ""}  # the keywords and kernels of the latest call, for the row's config column


@functools.cache
def _varlen_lacks() -> str | None:
    """Why the installed torch cannot run varlen_attn (None: it can). It came in torch 2.10."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn (torch 2.10 and later)"
    return None


def _varlen_keywords(params, causal: bool, window, gqa: bool, version: str) -> dict:
    """varlen_attn's keywords for causal, a window (left, right) and GQA, in the installed torch's spelling:
    ``is_causal`` (torch 2.10) or ``window_size`` ((-1, 0) is causal, (left, 0) causal within a window: causal
    hides the window's right side); ``enable_gqa`` for fewer K/V heads. Unsupported when this torch lacks one."""
    keywords = {}
    if window is None:
        if "is_causal" in params:
            keywords["is_causal"] = causal
        elif causal:
            keywords["window_size"] = (-1, 0)
    elif "window_size" not in params:
        raise Unsupported(f"torch {version}'s varlen_attn has no sliding window (no window_size)")
    else:
        keywords["window_size"] = (window[0], 0 if causal else window[1])
    if gqa:
        if "enable_gqa" not in params:
            raise Unsupported(f"torch {version}'s varlen_attn takes as many K/V heads as query heads (no enable_gqa)")
        keywords["enable_gqa"] = True
    return keywords


def _varlen_kernels(varlen, q, k, v, longest: int, keywords: dict) -> str:
    """Which kernels varlen_attn picks for these inputs, by its own private test (``_can_use_cudnn``, in recent
    torch): "cudnn" or "flash"; "" when this torch cannot tell."""
    test = getattr(varlen, "_can_use_cudnn", None)
    if test is None:
        return ""
    known = {"query": q, "key": k, "value": v, "max_q": longest, "enable_gqa": keywords.get("enable_gqa", False),
             "window_size": list(keywords.get("window_size", (-1, -1)))}
    try:
        params = inspect.signature(test).parameters
        return "cudnn" if test(**{n: known[n] for n in params if n in known}) else "flash"
    except Exception:  # a private test of another torch's shape: say nothing rather than guess
        return ""


@_provider(name="torch-varlen", label="PyTorch varlen_attn", color="#b8860b", kind="vendor", io_model="fa2-atomic",
           io_model_assumed=True, dtypes=frozenset({"fp16", "bf16"}), variants=_VARLEN_PARTS, needs_variant="docs",
           layout="bshd", lacks=_varlen_lacks, config=lambda: _VARLEN_LAST["config"],
           description="torch.nn.attention.varlen.varlen_attn (torch 2.10 and later) on packed documents: every "
                       "document one sequence of cu_seqlens, as fa2-varlen; torch runs its FlashAttention-2 varlen "
                       "kernel (or cuDNN's where it picks it); docs variants only, windows and GQA where the installed "
                       "torch takes window_size and enable_gqa; no softcap or ALiBi")
def _torch_varlen(shape: Shape) -> AttnFn:
    variant = _variants.parse(shape.variant)
    if variant.docs is None:
        raise Unsupported("runs packed documents only (a docs variant)")
    missing = sorted(variant.features() - _VARLEN_PARTS)
    if missing:
        raise Unsupported(f"cannot express variant {', '.join(missing)}")
    why = _varlen_lacks()
    if why:
        raise Unsupported(why)
    import torch
    from torch.nn.attention import varlen

    keywords = _varlen_keywords(inspect.signature(varlen.varlen_attn).parameters, shape.causal, variant.window,
                                shape.kv_heads != shape.heads, torch.__version__)
    cu, longest = _variants.cu_seqlens(variant, shape.batch, shape.seqlen_q, device.name())
    said = ", ".join(f"{k}={v}" for k, v in keywords.items())
    _VARLEN_LAST["config"] = said
    first = [True]

    def call(q, k, v):
        def packed(t):  # a view of the (batch, seq, heads, d) memory the sweep hands it (layout "bshd")
            return t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])

        q_, k_, v_ = packed(q), packed(k), packed(v)
        if first[0]:  # the first call is outside the timed region
            first[0] = False
            kernels = _varlen_kernels(varlen, q_, k_, v_, longest, keywords)
            _VARLEN_LAST["config"] = ", ".join(filter(None, (kernels, said)))
        o = varlen.varlen_attn(q_, k_, v_, cu, cu, longest, longest, **keywords)
        return o.reshape(shape.batch, shape.seqlen_q, shape.heads, shape.headdim).transpose(1, 2)

    return call
