"""Which (Q block, K block) tiles fa2's forward visits, in plain Python (no torch, no Triton): the block ranges of
kernels/flash2.py's ``_kv_stages`` (causal) and ``_band`` (window, documents) walked on the host, so the FLOP and
IO models and a reader can see what block skipping saves for a shape, a block size and a variant.

Query row i (aligned position i' = i + seqlen_k - seqlen_q) sees keys j with i' - left <= j <= i' + right (window;
right = 0 under causal) and, with documents, j in i's document. Both bounds grow with i, so the keys a Q block sees
form one range: from its first row's lowest key to its last row's highest, visited block by block.
"""
from __future__ import annotations


def _doc_bounds(doc_lengths: list[int]) -> tuple[list[int], list[int]]:
    """(start, end) of each token's document, for documents of these lengths laid end to end."""
    starts, ends, at = [], [], 0
    for n in doc_lengths:
        starts += [at] * n
        ends += [at + n] * n
        at += n
    return starts, ends


def visited_blocks(seqlen_q: int, seqlen_k: int, block_m: int, block_n: int, causal: bool = False,
                   window: tuple[int, int] | None = None, doc_lengths: list[int] | None = None) -> list[range]:
    """For each Q block, the K blocks (indices) the forward visits."""
    if doc_lengths is not None and (seqlen_q != seqlen_k or sum(doc_lengths) != seqlen_q):
        raise ValueError("documents need seqlen_q == seqlen_k == sum(doc_lengths)")
    big = seqlen_q + seqlen_k
    left, right = window if window is not None else (big, big)
    if causal:
        right = 0
    diag = seqlen_k - seqlen_q
    starts, ends = _doc_bounds(doc_lengths) if doc_lengths is not None else (None, None)
    out = []
    for m0 in range(0, seqlen_q, block_m):
        first, last = m0, min(m0 + block_m, seqlen_q) - 1
        lo = first + diag - left  # the first row's lowest key
        hi = last + diag + right + 1  # past the last row's highest key
        if starts is not None:
            lo, hi = max(lo, starts[first]), min(hi, ends[last])
        lo, hi = max(lo, 0), min(max(hi, 0), seqlen_k)
        out.append(range(lo // block_n, -(-hi // block_n)) if hi > lo else range(0))
    return out


def tile_fraction(seqlen_q: int, seqlen_k: int, block_m: int, block_n: int, causal: bool = False,
                  window: tuple[int, int] | None = None, doc_lengths: list[int] | None = None) -> float:
    """The fraction of the (Q block, K block) tiles the forward visits (1.0: dense; about 0.5: long causal)."""
    n_tiles = -(-seqlen_q // block_m) * -(-seqlen_k // block_n)
    blocks = visited_blocks(seqlen_q, seqlen_k, block_m, block_n, causal, window, doc_lengths)
    return sum(len(r) for r in blocks) / n_tiles
