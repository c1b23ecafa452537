"""Attention variants (issue 18): what people train with besides dense attention, as one frozen description.

A ``Variant`` is data, as FlexAttention's mask_mod/score_mod are: a sliding ``window`` (left, right), a logit
``softcap``, ``alibi`` biases, packed ``docs`` (a document mask), or a combination (Gemma 2: causal + window +
softcap). Causal stays the shape's own flag. The whole suite shares it: the spelling in results rows and on the
command line (``format``/``parse``), the float64 reference (``fa2bench.core.reference``), the FLOP model (attended
pairs only, ``attended_pairs``), the providers (which parts each can express) and the kernel keywords.

Conventions (the kernels' and the reference's): query i is aligned to key position i' = i + seqlen_k - seqlen_q
(bottom-right, as causal is); s = sm_scale q.k; softcap: s = c tanh(s / c); ALiBi: s -= slope_h |i' - j| with
one slope per query head (``alibi_slopes``); then masks: causal j <= i'; window i' - left <= j <= i' + right;
docs: j in the same document as i (self-attention only). A query that sees no key outputs zeros.

Spellings, joined by ``+`` in this order: ``dense`` (nothing), ``window4096`` (left = right = 4096; with causal
the right side hides nothing more), ``window4096:0`` (left, right), ``softcap50``, ``alibi``, ``docs`` (document
lengths drawn from the seeded ``mixed`` distribution, ``DOC_MIXES``) or ``docs:512/256/256`` (explicit lengths,
summing to the sequence). Imports no torch unless a tensor is asked for.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

DENSE = "dense"
# Named document-length mixes: the lengths a packed training batch draws from (seeded, so every provider, the
# reference and the FLOP model see the same documents). "mixed": mostly short documents and a few long ones.
DOC_MIXES = {"mixed": (128, 256, 256, 512, 512, 1024, 2048, 4096)}
DOC_SEED = 18


class VariantError(ValueError):
    """A variant that cannot be spelled or run as asked: a usage error with one clear line."""


@dataclass(frozen=True)
class Variant:
    window: tuple[int, int] | None = None  # (left, right) keys around the aligned query position
    softcap: float | None = None  # s = softcap * tanh(s / softcap)
    alibi: bool = False  # s -= slope_h * |i' - j| (alibi_slopes)
    docs: str | tuple[int, ...] | None = None  # a DOC_MIXES name, or explicit document lengths

    def __post_init__(self):
        problem = self._problem()
        if problem:
            raise VariantError(problem)

    def _problem(self) -> str | None:
        if self.window is not None:
            if len(self.window) != 2 or any(not isinstance(w, int) or isinstance(w, bool) or w < 0
                                            for w in self.window):
                return f"window must be two whole numbers >= 0 (left, right), got {self.window!r}"
        if self.softcap is not None:
            if isinstance(self.softcap, bool) or not isinstance(self.softcap, (int, float)) or \
                    not (math.isfinite(self.softcap) and self.softcap > 0):
                return f"softcap must be a finite number > 0, got {self.softcap!r}"
        if isinstance(self.docs, str) and self.docs not in DOC_MIXES:
            return f"unknown document mix {self.docs!r}; choose one of {', '.join(DOC_MIXES)} or give lengths"
        if isinstance(self.docs, tuple) and (not self.docs or any(not isinstance(n, int) or n < 1
                                                                  for n in self.docs)):
            return f"document lengths must be whole numbers >= 1, got {self.docs!r}"
        return None

    @property
    def is_dense(self) -> bool:
        return self == Variant()

    def features(self) -> frozenset[str]:
        """The parts it uses, by name (what a provider declares it can express): window, softcap, alibi, docs."""
        return frozenset(name for name, on in (("window", self.window is not None),
                                               ("softcap", self.softcap is not None),
                                               ("alibi", self.alibi), ("docs", self.docs is not None)) if on)

    def __str__(self) -> str:
        return format_variant(self)


def format_variant(variant: Variant) -> str:
    """The canonical spelling (``parse(format_variant(v)) == v``)."""
    parts = []
    if variant.window is not None:
        left, right = variant.window
        parts.append(f"window{left}" if left == right else f"window{left}:{right}")
    if variant.softcap is not None:
        parts.append(f"softcap{variant.softcap:g}")
    if variant.alibi:
        parts.append("alibi")
    if isinstance(variant.docs, str):
        parts.append("docs" if variant.docs == "mixed" else f"docs:{variant.docs}")
    elif variant.docs is not None:
        parts.append("docs:" + "/".join(map(str, variant.docs)))
    return "+".join(parts) or DENSE


def parse(text: str) -> Variant:
    """A spelling (see the module docstring) as a Variant; a VariantError (one line) for anything else."""
    text = str(text).strip()
    if text in ("", DENSE):
        return Variant()
    fields: dict = {}

    def once(name, value):
        if name in fields:
            raise VariantError(f"variant {text!r}: {name} given twice")
        fields[name] = value

    for part in text.split("+"):
        part = part.strip()
        try:
            if part.startswith("window"):
                sides = part[len("window"):].split(":")
                if len(sides) > 2:
                    raise ValueError
                left = int(sides[0])
                once("window", (left, int(sides[1]) if len(sides) == 2 else left))
            elif part.startswith("softcap"):
                once("softcap", float(part[len("softcap"):]))
            elif part == "alibi":
                once("alibi", True)
            elif part == "docs":
                once("docs", "mixed")
            elif part.startswith("docs:"):
                spec = part[len("docs:"):]
                once("docs", spec if spec in DOC_MIXES else tuple(int(n) for n in spec.split("/")))
            else:
                raise VariantError(f"unknown variant part {part!r} in {text!r}; use dense, window<N>[:<M>], "
                                   "softcap<X>, alibi, docs[:mix or a/b/c] joined by +")
        except ValueError as exc:
            if isinstance(exc, VariantError):
                raise
            raise VariantError(f"cannot read variant part {part!r} in {text!r} (e.g. window4096, window256:0, "
                               "softcap50, docs:512/512)") from None
    return Variant(**fields)


def canonical(text: str) -> str:
    return format_variant(parse(text))


def parse_list(text: str) -> tuple[str, ...]:
    """'dense,window4096+softcap50' -> canonical spellings, each once (a comma list, as other options)."""
    values = tuple(dict.fromkeys(canonical(p) for p in str(text).split(",") if p.strip()))
    if not values:
        raise VariantError("--variant: nothing given")
    return values


# --- per shape: whether it can run, its documents, its attended pairs ---------------------------------------


def shape_problem(variant: Variant, seqlen_q: int, seqlen_k: int, heads: int) -> str | None:
    """Why ``variant`` cannot run at this shape (None if it can)."""
    if variant.docs is not None:
        if seqlen_q != seqlen_k:
            return f"variant {variant}: document masks are for self-attention (seqlen_q {seqlen_q} != " \
                   f"seqlen_k {seqlen_k})"
        if isinstance(variant.docs, tuple) and sum(variant.docs) != seqlen_q:
            return f"variant {variant}: document lengths sum to {sum(variant.docs)}, not the sequence " \
                   f"length {seqlen_q}"
    if variant.alibi and heads < 1:
        return f"variant {variant}: ALiBi needs at least one head"
    return None


def doc_lengths(variant: Variant, batch: int, seqlen: int) -> list[list[int]]:
    """The document lengths of each sequence of the batch (each sums to ``seqlen``): the explicit lengths, or
    lengths drawn from the named mix with a seed per sequence, the last document cut to fit."""
    if variant.docs is None:
        return [[seqlen] for _ in range(batch)]
    if isinstance(variant.docs, tuple):
        return [list(variant.docs) for _ in range(batch)]
    choices = DOC_MIXES[variant.docs]
    out = []
    for b in range(batch):
        rng, lengths, left = random.Random(DOC_SEED * 1000 + b), [], seqlen
        while left:
            n = min(rng.choice(choices), left)
            lengths.append(n)
            left -= n
        out.append(lengths)
    return out


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi's geometric slopes, one per query head (Press et al. 2022; BLOOM's ``build_alibi_tensor``): for a
    power of two n, 2^(-8 i / n) for i = 1..n; otherwise the n' = 2^floor(log2 n) slopes of n', then every other
    slope of 2 n' (its odd-numbered ones) until there are n."""
    if heads < 1:
        raise VariantError(f"ALiBi needs at least one head, got {heads}")

    def power_of_two(n):
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    closest = 2 ** int(math.floor(math.log2(heads)))
    slopes = power_of_two(closest)
    if closest < heads:
        slopes += power_of_two(2 * closest)[0::2][:heads - closest]
    return slopes


def _window_pairs_row(lo: int, hi: int, n_keys: int) -> int:
    return max(0, min(hi, n_keys - 1) - max(lo, 0) + 1)


def attended_pairs(variant: Variant, batch: int, seqlen_q: int, seqlen_k: int, causal: bool) -> int:
    """(query, key) pairs the variant attends over the whole batch (not per sequence), counted row by row from
    the masks' bounds: every row's key interval is [lo, hi] (window, causal) intersected with its document.
    Softcap and ALiBi hide no pair."""
    offset = seqlen_k - seqlen_q
    left, right = variant.window if variant.window is not None else (seqlen_k, seqlen_k)
    total = 0
    for lengths in doc_lengths(variant, batch, seqlen_q) if variant.docs is not None else [None]:
        starts = [0] if lengths is None else [sum(lengths[:i]) for i in range(len(lengths))]
        spans = [(0, seqlen_k)] if lengths is None else list(zip(starts, (s + n for s, n in zip(starts, lengths))))
        for doc_start, doc_end in spans:
            rows = range(doc_start, doc_end) if lengths is not None else range(seqlen_q)
            for i in rows:
                pos = i + offset
                lo, hi = max(pos - left, doc_start), min(pos + right, doc_end - 1)
                if causal:
                    hi = min(hi, pos)
                total += _window_pairs_row(lo, hi, doc_end)
    return total * (batch if variant.docs is None else 1)


# --- kernel keywords -----------------------------------------------------------------------------------------


def kernel_kwargs(variant: Variant, batch: int, heads: int, seqlen: int, device) -> dict:
    """The keywords of ``flash2_attention`` (and of the reference) for ``variant``: window, softcap, alibi_slopes
    (float32, one per query head), doc_ids (batch, seqlen) int32 — only those the variant uses."""
    import torch

    kwargs: dict = {}
    if variant.window is not None:
        kwargs["window"] = variant.window
    if variant.softcap is not None:
        kwargs["softcap"] = float(variant.softcap)
    if variant.alibi:
        kwargs["alibi_slopes"] = torch.tensor(alibi_slopes(heads), dtype=torch.float32, device=device)
    if variant.docs is not None:
        kwargs["doc_ids"] = torch.tensor([[d for d, n in enumerate(lengths) for _ in range(n)]
                                          for lengths in doc_lengths(variant, batch, seqlen)],
                                         dtype=torch.int32, device=device)
    return kwargs


def cu_seqlens(variant: Variant, batch: int, seqlen: int, device):
    """Packed documents as varlen sequences: int32 prefix sums over every document of every sequence
    (batch element b's documents follow b - 1's), and the longest document."""
    import torch

    lengths = [n for row in doc_lengths(variant, batch, seqlen) for n in row]
    prefix = [0]
    for n in lengths:
        prefix.append(prefix[-1] + n)
    return torch.tensor(prefix, dtype=torch.int32, device=device), max(lengths)
