"""HBM traffic and memory footprint models per attention algorithm: pure functions of a point.

The FlashAttention paper (Dao et al. 2022, Theorem 2) counts HBM accesses: Θ(Nd + N²) for standard attention,
Θ(N²d²/M) for FlashAttention with on-chip memory M. ``hbm_bytes`` turns that into bytes for one call of a
provider, following what each algorithm reads and writes when nothing but its on-chip tiles is reused (no
L2 cache: every load the algorithm issues goes to HBM). A GPU's L2 (50 MB on an H100) catches part of the
re-reads, so DRAM counters (``fa2bench profile --ncu``) may read *below* the model; the gap is the result.
``compulsory_bytes`` is the floor every algorithm pays (inputs read once, outputs written once).

Notation: e bytes per element of the input dtype, B batch, H query heads, Hkv key/value heads, N = seqlen_q,
Nk = seqlen_k, d head dim; "rows" = B·H·N, "scores" = B·H·N·Nk. Statistics (l, m, log-sum-exp, Delta) and
scratch accumulators are fp32. Tiles: BLOCK_M query rows, BLOCK_N keys.

standard (naive, torch-eager, sdpa-math): Algorithm 0 and its backward (Algorithm 3), each step a kernel
    that reads its operands from HBM and writes its result back:
    fwd  S = QKᵀ (read Q, K; write S), P = softmax(S) (read S; write P), O = PV (read P, V; write O):
         e·(2·|Q| + 2·|K| + 4·scores)
    bwd  dV = Pᵀ dO, dP = dO Vᵀ, dS = P∘(dP - rowsum(P∘dP)), dQ = dS K, dK = dSᵀ Q, P saved by forward:
         e·(4·|Q| + 4·|K| + 7·scores)
    Causal masking does not change it (the matmuls stay dense). Not counted: eager PyTorch's extra
    elementwise passes (scale, mask, fp32 casts), and the re-read of S (fwd) or P, dP (bwd) by the naive
    kernel's two-pass softmax for rows longer than 4096 keys: the model is a lower bound for those.
fa1 (FlashAttention-1, Algorithm 1; our kernels/flash1.py): per (batch, head), K/V blocks outer, Q blocks
    inner. K and V are read once; for every visited (K/V block, Q block) pair Q_i is read and l_i, m_i
    (fp32) written; from the second pair on, the running O_i (an fp32 scratch), l_i and m_i are read back
    first, and O_i is re-written (fp32) except by the last pair, which writes O in the input dtype. Q and O
    are re-read once per K/V block: Θ(N²d/BLOCK_N) = Θ(N²d²/M). Backward (Algorithm 4): K, V read and dK, dV
    written once per kv head; per visited pair Q_i, dO_i, l_i, m_i, Delta_i read and the fp32 dQ_i scratch
    read-modified-written (the last pair writes dQ); plus the Delta = rowsum(dO∘O) preprocessing pass.
fa2 (FlashAttention-2, Algorithms 1-2; our kernels/flash2.py): Q blocks outer, K/V inner; Q read and O, LSE
    written once; K and V re-read once per Q block: 2·N·Nk·d·e/BLOCK_M per head, Θ(N²d/BLOCK_M); causal
    skips the blocks above the diagonal, about halving the re-reads. Backward: preprocessing (read O, dO;
    write Delta); dK/dV kernel (K, V read and dK, dV written once per kv head; per K/V block, the Q, dO rows
    that see it, with their LSE and Delta); dQ kernel (Q, dO, LSE, Delta read and dQ written once; K, V
    re-read once per Q block). flex is assumed to follow this model.
fa2-atomic (sdpa-flash, flash-attn, sdpa-cudnn, sdpa-efficient: an ASSUMPTION, their kernels are not ours
    to read): forward as fa2; backward as the FlashAttention-2 paper's Algorithm 2, K/V blocks outer and
    dQ accumulated into an fp32 buffer (a read-modify-write per visited pair), then converted to dQ.

Block sizes default to the first candidate of each of our kernels' autotune space (BLOCK_M=128, BLOCK_N=64
for the forward pass at head dim 128); pass the ``config`` column of a results row (``"fwd: BLOCK_M=128
BLOCK_N=64 w8 s3 | bwd_dkdv: ..."``) or ``blocks`` to use what the autotuner chose.

``theoretical_footprint_mb`` is the memory one call allocates beyond its inputs (and, for bwd, beyond what
the forward pass saved), comparable with the ``peak_mem_mb`` column.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

from fa2bench.kernels import configs
from fa2bench.core import providers
from fa2bench.core.flops import MODES
from fa2bench.core.presets import Shape

DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "tf32": 4}
F32 = 4  # statistics and scratch accumulators

Blocks = Mapping[str, tuple[int, int]]  # kernel name -> (BLOCK_M, BLOCK_N)


def modelled(provider: str) -> bool:
    """Whether the registry gives ``provider`` an HBM byte model (its ``io_model``)."""
    p = providers.REGISTRY.get(provider)
    return p is not None and p.io_model is not None


def assumed(provider: str) -> bool:
    """Whether ``provider``'s byte model is an assumption (a kernel that is not ours to read)."""
    return modelled(provider) and providers.get(provider).io_model_assumed


def algorithm(provider: str) -> str:
    """The byte model a provider follows (its registry ``io_model``): standard, fa1, fa2 or fa2-atomic."""
    if not modelled(provider):
        known = ", ".join(n for n in providers.names() if modelled(n))
        raise ValueError(f"no HBM model for provider {provider!r}; modelled: {known}")
    return providers.get(provider).io_model


def default_blocks(algo: str, headdim: int) -> dict[str, tuple[int, int]]:
    """The first fp16/bf16 autotune candidate of each of our kernels (read from kernels/configs.py, the space the
    kernels tune over), or an assumed tiling for kernels that are not ours (fa2-atomic)."""
    if algo == "fa2-atomic":
        return {"fwd": (128, 64), "bwd": (64, 128)}
    return configs.first_tiles(algo, headdim)


_SEGMENT = re.compile(r"^\s*([\w-]+)\s*:(.*)$")


def parse_blocks(config) -> dict[str, tuple[int, int]]:
    """``"fwd: BLOCK_M=128 BLOCK_N=64 w8 s3 | bwd: ..."`` -> ``{"fwd": (128, 64), ...}`` (the first BLOCK_M
    and BLOCK_N of each segment; segments without both are skipped)."""
    out: dict[str, tuple[int, int]] = {}
    if not isinstance(config, str):  # None, or a missing cell read back as NaN
        return out
    for part in config.split("|"):
        match = _SEGMENT.match(part)
        if not match:
            continue
        bm = re.search(r"BLOCK_M=(\d+)", match.group(2))
        bn = re.search(r"BLOCK_N=(\d+)", match.group(2))
        if bm and bn:
            out[match.group(1)] = (int(bm.group(1)), int(bn.group(1)))
    return out


# --- counting helpers (per batch x head) ---------------------------------------------------------------


def _q_blocks(n_q: int, block_m: int):
    """(index, rows) of each Q block; the last may be ragged."""
    return [(i, min(block_m, n_q - i * block_m)) for i in range(math.ceil(n_q / block_m))]


def _keys_seen(i: int, block_m: int, n_q: int, n_k: int, causal: bool) -> int:
    """Keys the K/V loop of Q block i runs up to: all, or (causal, bottom-right) the block's last diagonal."""
    if not causal:
        return n_k
    return min(max(i * block_m + block_m + n_k - n_q, 0), n_k)


def _kv_steps(i: int, block_m: int, block_n: int, n_q: int, n_k: int, causal: bool) -> int:
    """K/V blocks that Q block i visits."""
    return math.ceil(_keys_seen(i, block_m, n_q, n_k, causal) / block_n)


def _keys_loaded(i: int, block_m: int, block_n: int, n_q: int, n_k: int, causal: bool) -> int:
    """Keys loaded for Q block i: whole visited blocks, clipped at seqlen_k (masked loads fetch nothing)."""
    return min(_kv_steps(i, block_m, block_n, n_q, n_k, causal) * block_n, n_k)


# --- the models: named terms in bytes ------------------------------------------------------------------


def _sizes(shape: Shape, dtype: str):
    e = DTYPE_BYTES[dtype]
    bh = shape.batch * shape.heads
    q = bh * shape.seqlen_q * shape.headdim  # elements of Q (= O, dO, dQ)
    kv = shape.batch * shape.kv_heads * shape.seqlen_k * shape.headdim  # elements of K (= V, dK, dV)
    return e, bh, q, kv


def _standard(shape: Shape, dtype: str, pass_: str, blocks: Blocks) -> dict[str, int]:
    e, bh, q, kv = _sizes(shape, dtype)
    scores = bh * shape.seqlen_q * shape.seqlen_k
    if pass_ == "fwd":
        return {"q": 2 * e * q, "kv": 2 * e * kv, "scores": 4 * e * scores}
    return {"q": 4 * e * q, "kv": 4 * e * kv, "scores": 7 * e * scores}


def _fa1(shape: Shape, dtype: str, pass_: str, blocks: Blocks) -> dict[str, int]:
    e, bh, q, kv = _sizes(shape, dtype)
    n, nk, d, causal = shape.seqlen_q, shape.seqlen_k, shape.headdim, shape.causal
    bm, bn = blocks[pass_]
    q_rows = rescaled = dead = 0  # Q rows read (one per visited pair); of them re-read; rows seeing no key
    for i, rows in _q_blocks(n, bm):
        steps = _kv_steps(i, bm, bn, n, nk, causal)
        q_rows += steps * rows
        rescaled += max(steps - 1, 0) * rows
        dead += rows if steps == 0 else 0  # causal with seqlen_q > seqlen_k: zeros written, no pair
    if pass_ == "fwd":
        return {
            "kv": 2 * e * kv * shape.group,  # one program per query head reads its kv head once
            "q": bh * q_rows * d * e,
            "o": bh * (2 * rescaled * d * F32 + n * d * e),  # fp32 scratch read + written; O written once
            "stats": bh * 2 * F32 * (q_rows + rescaled + dead),  # l, m written per pair, read back
        }
    return {
        "preprocess": 2 * e * q + F32 * bh * n,
        "kv": 4 * e * kv,  # K, V read, dK, dV written, once per kv head
        "q": bh * q_rows * 2 * d * e,  # Q and dO per visited pair
        "stats": bh * q_rows * 3 * F32,  # l, m, Delta per visited pair
        "dq": bh * (2 * rescaled * d * F32 + n * d * e),
    }


def _fa2_forward(shape: Shape, dtype: str, blocks: Blocks) -> dict[str, int]:
    e, bh, q, kv = _sizes(shape, dtype)
    n, nk, d, causal = shape.seqlen_q, shape.seqlen_k, shape.headdim, shape.causal
    bm, bn = blocks["fwd"]
    keys = sum(_keys_loaded(i, bm, bn, n, nk, causal) for i, _ in _q_blocks(n, bm))
    return {"q": e * q, "o": e * q, "stats": F32 * bh * n, "kv": bh * 2 * keys * d * e}


def _fa2_backward(shape: Shape, dtype: str, blocks: Blocks) -> dict[str, int]:
    e, bh, q, kv = _sizes(shape, dtype)
    n, nk, d, causal = shape.seqlen_q, shape.seqlen_k, shape.headdim, shape.causal
    # dK/dV kernel: per K/V block, the query rows that see it (row-exact start under causal masking)
    _, bn = blocks["bwd_dkdv"]
    rows_seen = 0
    for j in range(math.ceil(nk / bn)):
        rows_seen += n - min(max(j * bn - (nk - n), 0), n) if causal else n
    # dQ kernel: Q blocks outer, K/V re-read per Q block as in the forward pass
    bm, bn_dq = blocks["bwd_dq"]
    keys = sum(_keys_loaded(i, bm, bn_dq, n, nk, causal) for i, _ in _q_blocks(n, bm))
    return {
        "preprocess": 2 * e * q + F32 * bh * n,
        "dkdv_kv": 4 * e * kv,
        "dkdv_q": bh * rows_seen * (2 * d * e + 2 * F32),  # Q, dO, LSE, Delta
        "dq_q": 2 * e * q + 2 * F32 * bh * n + e * q,  # Q, dO, LSE, Delta read; dQ written
        "dq_kv": bh * 2 * keys * d * e,
    }


def _fa2_atomic_backward(shape: Shape, dtype: str, blocks: Blocks) -> dict[str, int]:
    e, bh, q, kv = _sizes(shape, dtype)
    n, nk, d, causal = shape.seqlen_q, shape.seqlen_k, shape.headdim, shape.causal
    bm, bn = blocks["bwd"]
    pair_rows = sum(_kv_steps(i, bm, bn, n, nk, causal) * rows for i, rows in _q_blocks(n, bm))
    return {
        "preprocess": 2 * e * q + F32 * bh * n + F32 * q,  # Delta; the fp32 dQ buffer zeroed
        "kv": 4 * e * kv,
        "q": bh * pair_rows * (2 * d * e + 2 * F32),  # Q, dO, LSE, Delta per visited pair
        "dq": bh * pair_rows * 2 * d * F32 + F32 * q + e * q,  # fp32 read-modify-write, then converted
    }


def _fa2_family(backward):
    """A model whose forward pass is FA2's and whose backward pass is ``backward``."""

    def model(shape: Shape, dtype: str, pass_: str, blocks: Blocks) -> dict[str, int]:
        return _fa2_forward(shape, dtype, blocks) if pass_ == "fwd" else backward(shape, dtype, blocks)

    return model


_MODELS = {"standard": _standard, "fa1": _fa1, "fa2": _fa2_family(_fa2_backward),
           "fa2-atomic": _fa2_family(_fa2_atomic_backward)}


def hbm_terms(provider: str, shape: Shape, mode: str, dtype: str, *, config: str | None = None,
              blocks: Blocks | None = None) -> dict[str, int]:
    """The model's bytes of one call by term ("fwd.q", "fwd.kv", "bwd.dq", ...); they sum to ``hbm_bytes``."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    algo = algorithm(provider)
    tiles = {**default_blocks(algo, shape.headdim), **parse_blocks(config), **(blocks or {})}
    passes = ("fwd", "bwd") if mode == "fwd_bwd" else (mode,)
    out: dict[str, int] = {}
    for pass_ in passes:
        for name, value in _MODELS[algo](shape, dtype, pass_, tiles).items():
            out[f"{pass_}.{name}"] = int(value)
    return out


def hbm_bytes(provider: str, shape: Shape, mode: str, dtype: str, *, config: str | None = None,
              blocks: Blocks | None = None) -> float:
    """Modelled HBM bytes of one call of ``provider`` on ``shape`` in ``mode`` (see the module docstring).

    ``config``: a results row's config string, whose BLOCK_M/BLOCK_N per kernel override the defaults;
    ``blocks``: explicit ``{kernel: (BLOCK_M, BLOCK_N)}`` (kernels: fwd, bwd for fa1 and fa2-atomic; fwd,
    bwd_dkdv, bwd_dq for fa2), applied last.
    """
    return float(sum(hbm_terms(provider, shape, mode, dtype, config=config, blocks=blocks).values()))


def compulsory_bytes(shape: Shape, mode: str, dtype: str) -> float:
    """The floor of any algorithm: fwd reads Q, K, V and writes O; bwd reads Q, K, V, O, dO and writes dQ, dK,
    dV; fwd_bwd is both passes, as the runner times it. Query rows that see no key (causal with seqlen_q >
    seqlen_k) need not be read: their outputs are zeros, only written."""
    e, _, q, kv = _sizes(shape, dtype)
    live = q * (min(shape.seqlen_q, shape.seqlen_k) if shape.causal else shape.seqlen_q) // shape.seqlen_q
    per_pass = {"fwd": e * (live + q + 2 * kv), "bwd": e * (3 * live + q + 4 * kv)}
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return float(per_pass["fwd"] + per_pass["bwd"] if mode == "fwd_bwd" else per_pass[mode])


# --- memory footprint ------------------------------------------------------------------------------------


def _footprint_bytes(algo: str, shape: Shape, dtype: str) -> dict[str, int]:
    """Per algorithm: fwd (allocated by a forward call), saved (what forward keeps for backward, part of fwd),
    bwd (allocated by a backward call, including dQ, dK, dV)."""
    e, bh, q, kv = _sizes(shape, dtype)
    rows = bh * shape.seqlen_q
    grads = e * (q + 2 * kv)
    if algo == "standard":
        scores = e * bh * shape.seqlen_q * shape.seqlen_k
        return {"fwd": 2 * scores + e * q, "saved": scores + e * q, "bwd": 2 * scores + grads}  # S, P | dP, dS
    if algo == "fa1":
        return {"fwd": e * q + F32 * q + 2 * F32 * rows, "saved": e * q + 2 * F32 * rows,  # O, fp32 O, l, m
                "bwd": F32 * rows + F32 * q + grads}  # Delta, fp32 dQ scratch
    if algo == "fa2":
        return {"fwd": e * q + F32 * rows, "saved": e * q + F32 * rows, "bwd": F32 * rows + grads}  # O, LSE
    return {"fwd": e * q + F32 * rows, "saved": e * q + F32 * rows, "bwd": F32 * rows + F32 * q + grads}


def theoretical_footprint_mb(provider: str, shape: Shape, mode: str, dtype: str) -> float:
    """Memory (MiB) one call allocates at its peak beyond its inputs, comparable with ``peak_mem_mb``.

    standard: forward holds S and P (input dtype) and O; backward dP, dS and the gradients. fa1: O, its fp32
    scratch and l, m; backward Delta, the fp32 dQ scratch and the gradients. fa2: O and the log-sum-exp;
    backward Delta and the gradients (fa2-atomic adds its fp32 dQ buffer). fwd_bwd: the larger of the forward
    and (what the forward saved + the backward). Eager PyTorch's fp32 softmax buffers are not counted.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    parts = _footprint_bytes(algorithm(provider), shape, dtype)
    if mode == "fwd":
        total = parts["fwd"]
    elif mode == "bwd":
        total = parts["bwd"]
    else:
        total = max(parts["fwd"], parts["saved"] + parts["bwd"])
    return total / 2**20
