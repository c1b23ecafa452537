"""Every kernel's autotune space and the shared-memory budget, in one place that imports neither torch nor Triton.

The kernels (naive.py, flash1.py, flash2.py, ladder.py) build their ``triton.Config`` lists from these tuples and
prune them with these fit rules; the IO model (``fa2bench/spec/iomodel.py``) reads the same tiles through
``first_tiles`` for its default block sizes, so the two cannot drift apart.

A tile is ``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` (the naive matmul's ``(BLOCK_M, BLOCK_N, BLOCK_K,
num_warps, num_stages)``). Lists are best-guess first: a pruned list keeps its order, and the CPU interpreter (which
cannot benchmark) runs its first entry.
"""
from __future__ import annotations

import re

# Shared memory one program may use, for every estimate below: an H100 or H200 gives a block up to 227 KiB;
# 3 KiB stay for what the estimates leave out (Triton's barriers and reduction scratch).
SMEM_BUDGET = 224 * 1024
# fp32 accumulator and score values per thread (of 255 registers) before ptxas spills (fa2's register rule).
MAX_TILE_FP32_PER_THREAD = 192
# fa2's autotune candidates kept per kernel and head dim: each one costs a compile and a benchmark on the GPU.
MAX_CONFIGS = 6
# IEEE fp32 dot products run on FMA units, not tensor cores: Triton keeps both operands in registers and unrolls the
# product, so large tiles spill and take minutes to compile (an fa2 forward at 128 x 64 x 128: about 2 minutes).
# For fp32 inputs without tf32, the kernels keep tiles of at most this many scores and only the first such config.
IEEE_MAX_TILE = 64 * 64


def block_d(headdim: int) -> int:
    """Head dims are padded to a power of two >= 16 (masked on d)."""
    return max(16, 1 << (max(headdim, 1) - 1).bit_length())


def parse_tile(spec: str) -> tuple[int, int, int, int]:
    """A tile as the tools write it, ``BLOCK_MxBLOCK_NwWARPSsSTAGES`` ('64x128w8s2' -> (64, 128, 8, 2)); anything
    else is a ValueError naming the form."""
    m = re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)", spec.strip())
    if m is None:
        raise ValueError(f"a tile is BLOCK_MxBLOCK_NwWARPSsSTAGES, e.g. 64x128w8s2; got {spec!r}")
    bm, bn, warps, stages = map(int, m.groups())
    return bm, bn, warps, stages


def fits_smem(nbytes: int) -> bool:
    return nbytes <= SMEM_BUDGET


# ----------------------------------------------------------------------------------------------------------------
# FlashAttention-2 (flash2.py) and the ablation ladder (ladder.py)
# ----------------------------------------------------------------------------------------------------------------
# Large tiles suit head dims <= 128; head dim 256 falls through to the small ones at the end.
FA2 = {
    # BLOCK_M query rows per program, BLOCK_N keys per step
    "fwd": [(128, 64, 4, 3), (128, 128, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 2),
            (128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 3)],
    # BLOCK_N keys per program, BLOCK_M query rows per step
    "bwd_dkdv": [(32, 128, 4, 3), (64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 4),
                 (32, 64, 8, 2), (64, 64, 8, 2), (32, 32, 4, 2)],
    # BLOCK_M query rows per program, BLOCK_N keys per step
    "bwd_dq": [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3), (64, 32, 4, 4), (64, 32, 4, 2),
               (128, 32, 8, 2), (64, 64, 8, 2)],
}
# The smallest BLOCK_M the forward of a document mask (padded, DOCS, or packed, VARLEN) may autotune to, per head dim.
# At head dim 128 the autotuner's 20 ms per candidate put 64x64 w4 s3 first on an H100 (for the packed batch 0.857 ms
# against 0.870-0.885 for the 128-row tiles), yet over a sweep point's seconds that tile ran both paths 1.04-1.09x
# slower than 128x128 w8 s3 at 8k and 32k, bf16 and fp16 (results/h100-varlen-tiles-8k, -32k,
# h100-fwd-tiles-docs-32k-fp16; docs/variants.md section 4). The dense forward keeps its tiles (h100-fwd-tiles-dense-*).
DOCS_FWD_MIN_BLOCK_M = {128: 128}  # read by flash2.fwd_min_block_m


# Used only when no candidate fits (fp32 inputs, whose tiles take twice the memory, at head dim 256).
FA2_FALLBACK = {"fwd": (64, 32, 4, 1), "bwd_dkdv": (16, 32, 4, 1), "bwd_dq": (32, 32, 4, 1)}
# One small list for every rung and head dim, so that the ladder isolates the algorithm, not the tuning.
LADDER = {
    "fwd": [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2)],
    "bwd_dkdv": [(32, 64, 4, 2), (64, 64, 8, 2), (32, 128, 8, 2)],
    "bwd_dq": [(64, 32, 4, 2), (128, 64, 8, 2), (64, 64, 4, 2)],
}


def fa2_fits(kernel: str, tile: tuple, headdim: int, elt: int = 2) -> bool:
    """Whether an fa2 (or ladder) tile fits the shared memory budget and the registers.

    Shared memory: the tiles that stay on chip plus ``num_stages`` copies of the tiles streamed by the loop, at
    ``elt`` bytes per element (4 for fp32 inputs). Registers: fp32 accumulators plus the fp32 score tiles,
    spread over the program's threads.
    """
    bm, bn, warps, stages = tile
    d, threads, stages = block_d(headdim), 32 * warps, max(stages, 1)
    if kernel == "fwd":  # Q stays; K, V stream. acc (BM x D) and S/P (BM x BN)
        smem = elt * (bm * d + stages * 2 * bn * d)
        regs = (bm * d + bm * bn) / threads
    elif kernel == "bwd_dkdv":  # K, V stay; Q, dO stream. dK, dV (BN x D) and P^T, dS^T (BN x BM)
        smem = elt * (2 * bn * d + stages * 2 * bm * d)
        regs = (2 * bn * d + 2 * bn * bm) / threads
    elif kernel == "bwd_dq":  # Q, dO stay; K, V stream. dQ (BM x D) and P, dS (BM x BN)
        smem = elt * (2 * bm * d + stages * 2 * bn * d)
        regs = (bm * d + 2 * bm * bn) / threads
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return fits_smem(smem) and regs <= MAX_TILE_FP32_PER_THREAD


def fa2_space(kernel: str, tiles: list, headdim: int, elt: int = 2, limit: int = MAX_CONFIGS) -> list:
    """The first ``limit`` of ``tiles`` that fit, or fa2's fallback tile when none does."""
    return [t for t in tiles if fa2_fits(kernel, t, headdim, elt)][:limit] or [FA2_FALLBACK[kernel]]


# ----------------------------------------------------------------------------------------------------------------
# FlashAttention-1 (flash1.py): one list per head-dim bucket
# ----------------------------------------------------------------------------------------------------------------
# Chosen from offline sm_90 compiles (registers, spills, shared memory) of a wider candidate set. FA1 reads and
# writes the fp32 O (forward) and dQ (backward) scratch once per K/V block, so its HBM traffic falls as 1/BLOCK_N:
# large BLOCK_N is preferred, and small BLOCK_M where that avoids register spills.
FA1 = {
    "fwd": {
        64: [(128, 64, 8, 2), (128, 128, 8, 2), (64, 128, 8, 2), (64, 64, 4, 3)],
        128: [(128, 64, 8, 2), (64, 128, 8, 2), (32, 128, 8, 2), (32, 64, 4, 2)],
        256: [(32, 128, 8, 2), (32, 64, 8, 2), (16, 128, 4, 2), (64, 64, 8, 2)],
    },
    "bwd": {
        64: [(32, 128, 8, 2), (16, 128, 8, 2), (64, 64, 8, 2), (32, 64, 4, 2)],
        128: [(16, 128, 8, 2), (32, 64, 8, 2), (64, 32, 8, 2), (32, 128, 8, 2)],
        256: [(32, 32, 8, 2), (16, 32, 8, 2), (64, 32, 8, 1), (16, 64, 8, 2)],
    },
}
# Used only where nothing in the bucket fits in shared memory (fp32 at large head dims).
FA1_FALLBACK = (32, 32, 4, 1)


def fa1_bucket(headdim: int) -> int:
    d = block_d(headdim)
    return 64 if d <= 64 else d


def fa1_smem(kernel: str, tile: tuple, headdim: int, esize: int) -> int:
    """Shared-memory estimate of an fa1 tile.

    fwd: K_j, V_j resident; Q_i pipelined over num_stages buffers; O_i's fp32 tile through a layout conversion.
    bwd: as fwd with dO_i pipelined too and dQ_i's fp32 tile converted; dS transposed through shared memory; the
    dK_j, dV_j epilogue converts a (BLOCK_N, BLOCK_D) fp32 tile (in halves).
    """
    bm, bn, _, stages = tile
    d, stages = block_d(headdim), max(stages, 1)
    if kernel == "fwd":
        return (2 * bn + stages * bm) * d * esize + bm * d * 4
    if kernel == "bwd":
        return (2 * bn + 2 * stages * bm) * d * esize + bm * d * 4 + bm * bn * esize + bn * d * 2
    raise ValueError(f"unknown kernel {kernel!r}")


def fa1_all(kernel: str) -> list:
    """Every fa1 tile of any bucket and the fallback, once each: the autotuner's list."""
    return list(dict.fromkeys([t for ts in FA1[kernel].values() for t in ts] + [FA1_FALLBACK]))


def fa1_space(kernel: str, headdim: int, esize: int = 2) -> list:
    """This head dim's bucket, minus the tiles over the shared-memory budget (may be empty: then the fallback)."""
    return [t for t in FA1[kernel][fa1_bucket(headdim)] if fits_smem(fa1_smem(kernel, t, headdim, esize))]


# ----------------------------------------------------------------------------------------------------------------
# The naive kernels' matmul (naive.py): (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
# ----------------------------------------------------------------------------------------------------------------
NAIVE_MATMUL = [
    (128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (128, 64, 64, 4, 3), (128, 64, 32, 4, 4), (128, 256, 32, 8, 3),
    (64, 64, 32, 4, 4),  # always kept
]


def naive_matmul_fits(tile: tuple, m_bucket: int, n_bucket: int, k_bucket: int, elem_bytes: int) -> bool:
    """A matmul tile that does not overshoot the (power-of-two) problem, whose pipelined A and B tiles fit shared
    memory, and which does not spill registers."""
    bm, bn, bk, warps, stages = tile
    if bm > max(64, m_bucket) or bn > max(64, n_bucket) or bk > max(32, k_bucket):
        return False
    if not fits_smem(stages * (bm * bk + bk * bn) * elem_bytes):
        return False
    # fp32 (tf32) operands: ptxas spills registers beyond 128x64x32 tiles on 4 warps
    return not (elem_bytes == 4 and warps == 4 and bm * (bn + bk) > 128 * (64 + 32))


# ----------------------------------------------------------------------------------------------------------------
# What the IO model reads
# ----------------------------------------------------------------------------------------------------------------
def first_tiles(algo: str, headdim: int) -> dict[str, tuple[int, int]]:
    """``{kernel: (BLOCK_M, BLOCK_N)}`` of the first fp16/bf16 candidate that survives pruning, per autotuned kernel
    of ``algo`` ("fa1" or "fa2"; {} for anything else): the interpreter's choice and the autotuner's first try."""
    if algo == "fa1":
        return {k: (fa1_space(k, headdim) or [FA1_FALLBACK])[0][:2] for k in FA1}
    if algo == "fa2":
        return {k: fa2_space(k, tiles, headdim)[0][:2] for k, tiles in FA2.items()}
    return {}
