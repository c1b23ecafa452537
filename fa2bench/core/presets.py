"""What a sweep measures: shapes, points and the named presets, as frozen dataclasses.

A ``Point`` is one (shape, provider, mode, dtype); a ``SweepSpec`` expands into points. Presets follow
nanoGPT's ``from_name`` habit: ``SweepSpec.from_name("paper")`` is the FlashAttention-2 paper's sweep
(Section 4.1: seqlen 512..16k, head dim 64 and 128, hidden 2048, 16k tokens per batch, causal and not,
forward, backward and both). The ``decode`` preset is inference: 1 query per sequence against a KV cache of
1k-128k keys (fa2bench.core.decode), Llama-3-8B-like and 70B-like heads, contiguous and paged caches.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fa2bench.core import decode, variants
from fa2bench.core.flops import ALL_MODES, DECODE, MODES

DTYPES = ("fp16", "bf16", "fp32", "tf32")  # tf32: fp32 inputs, matmuls on TF32 tensor cores
TIMERS = ("auto", "plain", "graph")  # how a point is timed (fa2bench.run.timing says what each does)


class SpecError(ValueError):
    """A sweep that cannot be run as asked (bad sizes or combinations): a usage error."""


@dataclass(frozen=True)
class Shape:
    batch: int
    heads: int
    kv_heads: int
    seqlen_q: int
    seqlen_k: int
    headdim: int
    causal: bool
    page_size: int = 0  # decode: tokens per KV-cache page, 0 for a contiguous cache
    ragged: bool = False  # decode: KV lengths spread over the batch (fa2bench.core.decode.kv_lengths)
    variant: str = variants.DENSE  # an attention variant's canonical spelling (fa2bench.core.variants)

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @classmethod
    def from_row(cls, row) -> "Shape":
        """The shape of a results row: a dict (``to_dict("records")``) or a named tuple (``itertuples``)."""
        get = row.__getitem__ if isinstance(row, dict) else lambda name: getattr(row, name)
        def extra(name, default):  # absent from rows written before decode points existed
            try:
                value = get(name)
            except (KeyError, AttributeError):
                return default
            return default if value is None or value != value else value  # None / NaN: the default

        return cls(*(int(get(f)) for f in ("batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim")),
                   bool(get("causal")), int(extra("page_size", 0)), str(extra("ragged", False)).lower()
                   in ("true", "1"), str(extra("variant", variants.DENSE)) or variants.DENSE)

    def label(self) -> str:
        gqa = f"/kv{self.kv_heads}" if self.kv_heads != self.heads else ""
        sk = f"x{self.seqlen_k}" if self.seqlen_k != self.seqlen_q else ""
        cache = (f" page{self.page_size}" if self.page_size else "") + (" ragged" if self.ragged else "")
        variant = f" {self.variant}" if self.variant != variants.DENSE else ""
        return (f"b{self.batch} h{self.heads}{gqa} s{self.seqlen_q}{sk} d{self.headdim}"
                f"{' causal' if self.causal else ''}{cache}{variant}")


@dataclass(frozen=True)
class Point:
    provider: str
    mode: str
    dtype: str
    shape: Shape

    def key(self) -> tuple:
        """Identity of a point in a results table (resume and compare join on it)."""
        s = self.shape
        return (self.provider, self.mode, self.dtype, s.batch, s.heads, s.kv_heads, s.seqlen_q, s.seqlen_k,
                s.headdim, s.causal, s.page_size, s.ragged, s.variant)

    def fields(self) -> dict:
        return {"provider": self.provider, "mode": self.mode, "dtype": self.dtype, **dataclasses.asdict(self.shape)}


KEY_COLUMNS = ("provider", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim",
               "causal", "page_size", "ragged", "variant")
# key columns a results file written before decode points (or variants) existed lacks: read as these defaults
KEY_DEFAULTS = {"page_size": 0, "ragged": False, "variant": variants.DENSE}


@dataclass(frozen=True)
class SweepSpec:
    seqlens: tuple[int, ...]
    headdims: tuple[int, ...]
    batch: tuple[int, ...] = ()  # explicit batch sizes, or ...
    tokens: int | None = None  # ... batch = tokens // seqlen (the paper keeps 16k tokens per batch)
    heads: tuple[int, ...] = ()  # explicit head counts, or ...
    hidden: int | None = None  # ... heads = hidden // headdim (the paper's hidden size is 2048)
    kv_heads: tuple[int, ...] = ()  # GQA/MQA key/value heads; () means as many as query heads
    seqlens_k: tuple[int, ...] = ()  # cross-attention key lengths; () means seqlen_k = seqlen_q
    causal: tuple[bool, ...] = (False, True)
    dtypes: tuple[str, ...] = ("fp16",)
    modes: tuple[str, ...] = MODES
    providers: tuple[str, ...] = field(default=())  # () means every provider available here
    page_sizes: tuple[int, ...] = (0,)  # decode: KV-cache page sizes, 0 for a contiguous cache
    ragged: tuple[bool, ...] = (False,)  # decode: uniform KV lengths, ragged ones, or both
    variants: tuple[str, ...] = (variants.DENSE,)  # attention variants' spellings (fa2bench.core.variants)
    max_kv_tokens: int | None = None  # skip shapes with batch * seqlen_k above this (a grid pruned to fit)

    @staticmethod
    def from_name(name: str) -> "SweepSpec":
        if name not in PRESETS:
            raise SpecError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name]

    def predicted_s(self, providers: tuple[str, ...] | None = None) -> float | None:
        """Predicted wall time on a fresh H200 from ``POINT_COST_S`` (issue 21's measured seconds per point),
        start-up included; None when a provider's cost is not known."""
        names = providers if providers is not None else self.providers
        if not names or any(n not in POINT_COST_S for n in names):
            return None
        per_shape = len(self.dtypes) * len(self.modes) * sum(POINT_COST_S[n] for n in names)
        return STARTUP_S + len(self.shapes()) * per_shape

    def replace(self, **changes) -> "SweepSpec":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def validate(self) -> None:
        def positive(name, values):
            if any(v < 1 for v in values):
                raise SpecError(f"{name} must be positive, got {', '.join(map(str, values))}")

        options = {"seqlens": "--seqlen", "headdims": "--headdim", "batch": "--batch", "heads": "--heads",
                   "kv_heads": "--kv-heads", "seqlens_k": "--seqlen-k", "tokens": "--tokens", "hidden": "--hidden"}
        for attr, option in options.items():
            value = getattr(self, attr)
            positive(option, value if isinstance(value, tuple) else [] if value is None else [value])
        if not self.seqlens or not self.headdims:
            raise SpecError("a sweep needs at least one seqlen and one head dim")
        if bool(self.batch) == (self.tokens is not None):
            raise SpecError("give exactly one of --batch and --tokens")
        if bool(self.heads) == (self.hidden is not None):
            raise SpecError("give exactly one of --heads and --hidden")
        for d in self.dtypes:
            if d not in DTYPES:
                raise SpecError(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
        for m in self.modes:
            if m not in ALL_MODES:
                raise SpecError(f"unknown mode {m!r}; choose from {', '.join(ALL_MODES)}")
        self._validate_decode()
        self._validate_variants()
        if self.tokens is not None and self.tokens < max(self.seqlens):
            raise SpecError(f"--tokens {self.tokens} is smaller than seqlen {max(self.seqlens)} (batch would be 0)")
        if self.hidden is not None:
            bad = [d for d in self.headdims if self.hidden % d]
            if bad:
                raise SpecError(f"--hidden {self.hidden} is not a multiple of head dim {bad[0]}")
        for shape_heads in self._heads_options():
            for kv in self.kv_heads:
                if shape_heads % kv:
                    raise SpecError(f"--kv-heads {kv} does not divide the number of heads {shape_heads}")

    def _validate_decode(self) -> None:
        paged_or_ragged = any(self.page_sizes) or any(self.ragged)
        if paged_or_ragged and any(m != DECODE for m in self.modes):
            raise SpecError("--page-size and --ragged describe a KV cache: use them with --mode decode only")
        if DECODE not in self.modes:
            return
        for seqlen in self.seqlens:
            for seqlen_k in self.seqlens_k or (seqlen,):
                for page_size in self.page_sizes:
                    problem = decode.shape_problem(seqlen, seqlen_k, page_size, any(self.causal))
                    if problem:
                        raise SpecError(problem)

    def _validate_variants(self) -> None:
        try:
            parsed = [variants.parse(v) for v in self.variants]
        except variants.VariantError as exc:
            raise SpecError(str(exc)) from None
        if any(not v.is_dense for v in parsed) and DECODE in self.modes:
            raise SpecError("--variant describes training attention: use it with fwd, bwd or fwd_bwd, not decode")
        for seqlen in self.seqlens:
            for seqlen_k in self.seqlens_k or (seqlen,):
                for v in parsed:
                    problem = variants.shape_problem(v, seqlen, seqlen_k, 1)
                    if problem:
                        raise SpecError(problem)

    def _heads_options(self) -> list[int]:
        if self.heads:
            return list(self.heads)
        return [self.hidden // d for d in self.headdims]

    def shapes(self) -> list[Shape]:
        self.validate()
        out = []
        for headdim in self.headdims:
            for seqlen in self.seqlens:
                for seqlen_k in self.seqlens_k or (seqlen,):
                    for batch in self.batch or (self.tokens // seqlen,):
                        for heads in self.heads or (self.hidden // headdim,):
                            for kv in self.kv_heads or (heads,):
                                for causal in self.causal:
                                    for page_size in self.page_sizes:
                                        for ragged in self.ragged:
                                            out.extend(Shape(batch, heads, kv, seqlen, seqlen_k, headdim, causal,
                                                             page_size, ragged, variant)
                                                       for variant in self.variants)
        if self.max_kv_tokens is not None:
            out = [s for s in out if s.batch * s.seqlen_k <= self.max_kv_tokens]
        return out

    def points(self, providers: tuple[str, ...] | None = None) -> list[Point]:
        """Shapes outer, providers inner: a sweep cut short still compares every provider on what it did."""
        names = providers if providers is not None else self.providers
        return [Point(p, mode, dtype, shape) for shape in self.shapes() for dtype in self.dtypes
                for mode in self.modes for p in names]


# The default question, "how fast is attention here, against what I would use instead?", answered in about a
# minute on a fresh GPU: fa2, the fastest peers (cuDNN and FlashAttention-2 through SDPA, FlexAttention) and the
# naive baseline (the summary's speedups are over it), at one long-context training shape (16 heads of 128,
# 4 x 4096 tokens, causal: what a GPT layer runs), forward and backward, checked as every sweep is.
# Predicted on an H200 from issue 21's measured cost per point (mostly compilation and autotuning on a fresh
# machine): fa2 2 x 6 s + flex 2 x 4 s + naive 2 x 7.5 s (what quick's 13 minutes leave for it) + SDPA
# 4 x 1.2 s = 40 s of points, plus about 10 s of start-up (imports, ceilings, the worker) = about 50 s.
# Each further shape costs about 40 s more: `--causal both` makes it about 90 s.
DEFAULT_PROVIDERS = ("fa2", "sdpa-cudnn", "sdpa-flash", "flex", "naive")
POINT_COST_S = {"fa2": 6.0, "flex": 4.0, "naive": 7.5, "sdpa-cudnn": 1.2, "sdpa-flash": 1.2}
STARTUP_S = 10.0

PRESETS = {
    "default": SweepSpec(seqlens=(4096,), headdims=(128,), tokens=16384, hidden=2048, causal=(True,),
                         modes=("fwd", "bwd"), providers=DEFAULT_PROVIDERS),
    "paper": SweepSpec(seqlens=(512, 1024, 2048, 4096, 8192, 16384), headdims=(64, 128), tokens=16384,
                       hidden=2048),
    # Every provider, the ladder's rungs among them, at eight shapes: about 13 minutes on a fresh H200.
    "quick": SweepSpec(seqlens=(1024, 4096), headdims=(64, 128), tokens=16384, hidden=2048,
                       modes=("fwd", "bwd")),
    # Tiny shapes that the Triton CPU interpreter gets through in seconds (what CI and a GPU-less laptop run).
    "smoke": SweepSpec(seqlens=(64, 97), headdims=(32,), batch=(1,), heads=(2,), dtypes=("fp32",),
                       modes=("fwd", "bwd")),
    # Decoding (issue 19): one new token per sequence; Llama-3-8B-like (32 query / 8 KV heads) and 70B-like
    # (64 / 8) attention, d128, bf16; batch x KV length pruned to 2M cached tokens per point (8 GiB of K and V), so
    # b64 stops at 16k and b256 at 4k; contiguous and 64-token pages (other page sizes: --page-size).
    "decode": SweepSpec(seqlens=(1,), seqlens_k=(1024, 4096, 16384, 65536, 131072), headdims=(128,),
                        batch=(1, 4, 16, 64, 256), heads=(32, 64), kv_heads=(8,), causal=(True,), dtypes=("bf16",),
                        modes=(DECODE,), page_sizes=(0, 64), max_kv_tokens=2**21),
    # Attention variants (issue 18) at Gemma-2-like (16 query / 8 KV heads of 256) and Mistral-like (GQA, d128)
    # training shapes: causal, bf16 (fp16 with --dtype), 32k tokens per batch at seqlen 8k and 32k; dense as the
    # yardstick beside a 4096-token sliding window (Mistral), window + softcap 50 (Gemma 2) and packed documents of
    # mixed lengths (fa2-varlen runs those). 2 head dims x 2 seqlens x 4 variants x 2 modes x 4 providers = 128
    # points, of which fa2-varlen's non-document ones and SDPA's softcap ones are recorded unsupported at once.
    "variants": SweepSpec(seqlens=(8192, 32768), headdims=(128, 256), tokens=32768, heads=(16,), kv_heads=(8,),
                          causal=(True,), dtypes=("bf16",), modes=("fwd", "bwd"),
                          variants=("dense", "window4096", "window4096+softcap50", "docs"),
                          providers=("fa2", "fa2-varlen", "flex", "sdpa-efficient")),
}


def paper_shape(headdim: int, seqlen: int) -> tuple[int, int, int, int, int] | None:
    """(batch, heads, kv_heads, seqlen_q, seqlen_k) of the paper preset at ``seqlen`` (its tokens per batch and
    hidden size; None for 0): what the studies of one shape run, and the shape a kernel is compiled as a launch of."""
    if not seqlen:
        return None
    spec = PRESETS["paper"]
    heads = spec.hidden // headdim
    return (max(1, spec.tokens // seqlen), heads, heads, seqlen, seqlen)


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    """'512,1024' -> (512, 1024); '512..4096' -> powers of two from 512 to 4096; '64:256:64' -> 64, 128, ... 256."""
    values: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if ".." in part:
                lo, hi = (int(x) for x in part.split(".."))
                if lo < 1 or hi < lo:
                    raise SpecError(f"--{name}: range {part!r} must go up from a positive start")
                v = lo
                while v <= hi:
                    values.append(v)
                    v *= 2
            elif ":" in part:
                lo, hi, step = (int(x) for x in part.split(":"))
                if step < 1 or hi < lo:
                    raise SpecError(f"--{name}: range {part!r} needs start <= stop and a positive step")
                values.extend(range(lo, hi + 1, step))
            else:
                values.append(int(part))
    except ValueError as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(f"--{name}: cannot read {text!r} as whole numbers (use 512,1024 or 512..16384)") from None
    if not values:
        raise SpecError(f"--{name}: no values in {text!r}")
    if any(v < 1 for v in values):
        raise SpecError(f"--{name} must be positive, got {text!r}")
    return tuple(dict.fromkeys(values))


def parse_names(text: str, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise SpecError(f"--{name}: unknown {unknown[0]!r}; choose from {', '.join(allowed)}")
    if not values:
        raise SpecError(f"--{name}: nothing given")
    return values
