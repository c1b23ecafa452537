"""Decode points described without torch: which KV lengths a point's batch has, which page sizes exist, what a
decode shape may be, and the bytes a decode call must move.

A decode point is a ``Shape`` with ``seqlen_q`` = queries per sequence (1-16: one new token, or a few under
speculative decoding), ``seqlen_k`` = the KV length, ``page_size`` (0: a contiguous cache) and ``ragged``.
Ragged batches have fixed, evenly spread lengths (``kv_lengths``) so that every provider and the byte model
see the same batch: sequence b of B holds ``ceil(seqlen_k * (b + 1) / B)`` keys (at least seqlen_q), from
about seqlen_k / B up to seqlen_k; a batch of one is seqlen_k long.
"""
from __future__ import annotations

import math

PAGE_SIZES = (16, 32, 64, 128, 256)  # what kernels/decode.py tiles (powers of two; the K/V block divides them)
MAX_QUERIES = 16


def kv_lengths(batch: int, seqlen_q: int, seqlen_k: int, ragged: bool) -> list[int]:
    """The KV length of each sequence of a decode point (see the module docstring)."""
    if not ragged:
        return [seqlen_k] * batch
    return [max(seqlen_q, math.ceil(seqlen_k * (b + 1) / batch)) for b in range(batch)]


def shape_problem(seqlen_q: int, seqlen_k: int, page_size: int, causal: bool) -> str | None:
    """Why a decode shape cannot be run (None if it can)."""
    if not 1 <= seqlen_q <= MAX_QUERIES:
        return f"decode takes 1..{MAX_QUERIES} queries per sequence, got seqlen {seqlen_q}"
    if causal and seqlen_q > seqlen_k:
        return f"causal decoding of {seqlen_q} queries needs a KV length >= {seqlen_q}, got {seqlen_k}"
    if page_size and page_size not in PAGE_SIZES:
        return f"page size {page_size} cannot be tiled; choose 0 (contiguous) or one of " \
               f"{', '.join(map(str, PAGE_SIZES))}"
    return None


def compulsory_bytes(batch: int, heads: int, kv_heads: int, seqlen_q: int, seqlen_k: int, headdim: int,
                     ragged: bool, elt: int) -> int:
    """Bytes a decode call must move: K and V of every attended key once (per KV head: GQA packing reads a
    group's keys once), Q read and O written once. The block table and lengths (a few bytes per page) are left
    out. Bottom-right causal masking hides no key from the last query, so every key of a sequence counts."""
    keys = sum(kv_lengths(batch, seqlen_q, seqlen_k, ragged))
    return elt * (2 * keys * kv_heads * headdim + 2 * batch * seqlen_q * heads * headdim)
