"""What a sweep measures: shapes, points and the named presets, as frozen dataclasses.

A ``Point`` is one (shape, provider, mode, dtype); a ``SweepSpec`` expands into points. Presets follow
nanoGPT's ``from_name`` habit: ``SweepSpec.from_name("paper")`` is the FlashAttention-2 paper's sweep
(Section 4.1: seqlen 512..16k, head dim 64 and 128, hidden 2048, 16k tokens per batch, causal and not,
forward, backward and both).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fa2bench.core.flops import MODES

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

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @classmethod
    def from_row(cls, row) -> "Shape":
        """The shape of a results row: a dict (``to_dict("records")``) or a named tuple (``itertuples``)."""
        get = row.__getitem__ if isinstance(row, dict) else lambda name: getattr(row, name)
        return cls(*(int(get(f)) for f in ("batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim")),
                   bool(get("causal")))

    def label(self) -> str:
        gqa = f"/kv{self.kv_heads}" if self.kv_heads != self.heads else ""
        sk = f"x{self.seqlen_k}" if self.seqlen_k != self.seqlen_q else ""
        return (f"b{self.batch} h{self.heads}{gqa} s{self.seqlen_q}{sk} d{self.headdim}"
                f"{' causal' if self.causal else ''}")


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
                s.headdim, s.causal)

    def fields(self) -> dict:
        return {"provider": self.provider, "mode": self.mode, "dtype": self.dtype, **dataclasses.asdict(self.shape)}


KEY_COLUMNS = ("provider", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim",
               "causal")


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

    @staticmethod
    def from_name(name: str) -> "SweepSpec":
        if name not in PRESETS:
            raise SpecError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return PRESETS[name]

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
            if m not in MODES:
                raise SpecError(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
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
                                    out.append(Shape(batch, heads, kv, seqlen, seqlen_k, headdim, causal))
        return out

    def points(self, providers: tuple[str, ...] | None = None) -> list[Point]:
        """Shapes outer, providers inner: a sweep cut short still compares every provider on what it did."""
        names = providers if providers is not None else self.providers
        return [Point(p, mode, dtype, shape) for shape in self.shapes() for dtype in self.dtypes
                for mode in self.modes for p in names]


PRESETS = {
    "paper": SweepSpec(seqlens=(512, 1024, 2048, 4096, 8192, 16384), headdims=(64, 128), tokens=16384,
                       hidden=2048),
    "quick": SweepSpec(seqlens=(1024, 4096), headdims=(64, 128), tokens=16384, hidden=2048,
                       modes=("fwd", "bwd")),
    # Tiny shapes that the Triton CPU interpreter gets through in seconds (what CI and a GPU-less laptop run).
    "smoke": SweepSpec(seqlens=(64, 97), headdims=(32,), batch=(1,), heads=(2,), dtypes=("fp32",),
                       modes=("fwd", "bwd")),
}


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
