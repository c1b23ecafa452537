"""Standard attention in Triton: S and P materialised in HBM (the baseline of the FlashAttention papers).

Algorithm
    FlashAttention (Dao et al., 2022), Algorithm 0 ("standard attention implementation") and its standard
    backward pass (Algorithm 3, Appendix B), written as separate kernels that each read their inputs
    from HBM and write their output back to HBM:

    forward     S = Q Kᵀ · sm_scale          matmul            (batch, heads, seqlen_q, seqlen_k), q's dtype
                P = softmax(S)               softmax           same shape and dtype; S is freed after it
                O = P V                      matmul
    backward    dV = Pᵀ dO                   matmul            (P is what forward saves, not S)
                dP = dO Vᵀ                   matmul            (batch, heads, seqlen_q, seqlen_k)
                dS = P ∘ (dP - rowsum(P ∘ dP))   softmax_bwd   same shape; dP is freed after it
                dQ = dS K · sm_scale         matmul
                dK = dSᵀ Q · sm_scale        matmul

    One generic batched matmul kernel serves all five products: every operand is passed with its four
    strides, so Kᵀ, Vᵀ, Pᵀ, dSᵀ are free views and (b, s, h, d) inputs need no copy. GQA/MQA is a head map
    inside the kernel (query head h reads kv head h // group); dK and dV reduce over the query heads of a
    group inside one program, in a fixed order (no atomics, deterministic). The softmax runs in fp32 in
    registers, one block of rows per program: a single pass when a row fits one block, otherwise a looped
    two-pass softmax (online max / sum, then normalise and write). Rows that see no key get P = 0.
    The softmax gradient takes its row sums from the stored P and dP, as the standard backward and eager
    PyTorch do, not from rowsum(dO ∘ O) (FlashAttention's shortcut, equal in exact
    arithmetic): with one visible key dS is then exactly 0, as in the reference.

HBM
    O(N²) per head: each of S, P, dP, dS holds batch · heads · seqlen_q · seqlen_k elements of the input
    dtype (2 bytes for fp16/bf16; rows padded to 16 elements for aligned access). Forward peaks at S + P and
    keeps P for backward; backward peaks at P + dP + dS.
    At long sequences the allocation fails with torch.cuda.OutOfMemoryError, which is left to propagate
    (that failure is the point of the baseline).

Difference from the neighbour, kernels/flash1.py
    FlashAttention-1 tiles Q, K, V into SRAM and fuses all of the above into one forward and one backward
    kernel with an online softmax, so S and P never reach HBM (memory O(N), recomputing P in backward).
    Here every intermediate makes an HBM round trip, which is what the FlashAttention speedups are measured
    against. Causal masking is applied in the softmax only; the matmuls stay dense, as in eager PyTorch, so
    causal attention costs as much as full attention here.

Supported / unsupported
    fp16, bf16, fp32 (IEEE fp32 matmuls; tf32=True for TF32); head dim 1..256 (padded to a power of two by masks);
    any seqlen_q, seqlen_k; causal aligned to the bottom-right corner; any strides. No dropout, no attention
    bias or ALiBi, no variable-length (packed) batches, no KV cache.

Tested on: the CPU through Triton's interpreter (fp16, fp32), tests/test_kernels.py; every kernel and config
also compiled ahead of time for sm_90 with Triton 3.9 (fp16/bf16: 3-stage cp.async + wgmma, no spills); on the
GPU, an NVIDIA H100 80GB HBM3 with Triton 3.6 and torch 2.11 passes tests/test_kernels_gpu.py (fp16 and bf16 up to
seqlen 8k, head dims 64/128/256, GQA/MQA, every autotune config forced, repeated runs bit-equal).
"""
from __future__ import annotations

from . import _common  # noqa: F401  (first: importing it picks the CPU interpreter before Triton loads)
import torch
import triton
import triton.language as tl

from . import configs as spaces
from ._common import (LOG2E, all_cached, autotune, check_inputs, check_scale, config_forcer, describe_config,
                      dot_precision, ieee_configs, interpreting, launch_tuned)


# Shape classes of the five matmuls, part of the autotune key (each prefers other tiles and layouts).
QK, PV, PTV = 0, 1, 2  # S, dP: reduce over head dim | O, dQ: reduce over keys | dV, dK: over queries (Pᵀ)
_CLASS_NAMES = {QK: "qk", PV: "pv", PTV: "ptv"}

# Rows of S per softmax program: a row longer than this is handled by the looped two-pass softmax. The
# interpreter uses a short block so that the CPU tests exercise the loop.
_ROW_BLOCK_GPU, _ROW_BLOCK_INTERPRETER = 4096, 64


# ----------------------------------------------------------------------------------------------------------
# Inner loop of the matmul: acc += A[rows, :K] @ B[:K, cols]
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(ptrs, mask_r, mask_c, EVEN_R: tl.constexpr, EVEN_C: tl.constexpr):
    if EVEN_R & EVEN_C:
        x = tl.load(ptrs)
    elif EVEN_R:
        x = tl.load(ptrs, mask=mask_c[None, :], other=0.0)
    elif EVEN_C:
        x = tl.load(ptrs, mask=mask_r[:, None], other=0.0)
    else:
        x = tl.load(ptrs, mask=mask_r[:, None] & mask_c[None, :], other=0.0)
    return x


@triton.jit
def _matmul_inner(acc, a_ptrs, b_ptrs, mask_m, mask_n, K, stride_ak, stride_bk,
                  BLOCK_K: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    offs_k = tl.arange(0, BLOCK_K)
    for start_k in range(0, K, BLOCK_K):
        mask_k = offs_k < K - start_k
        a = _load_tile(a_ptrs, mask_m, mask_k, EVEN_M, EVEN_K)
        b = _load_tile(b_ptrs, mask_k, mask_n, EVEN_K, EVEN_N)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)  # operands in the input dtype, fp32 accumulate
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc


# ----------------------------------------------------------------------------------------------------------
# Autotune space of the matmul and its named filter
# ----------------------------------------------------------------------------------------------------------
_MATMUL_CONFIGS = [  # kernels/configs.py: NAIVE_MATMUL
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
    for bm, bn, bk, warps, stages in spaces.NAIVE_MATMUL
]


def _matmul_space(configs, m_bucket: int, n_bucket: int, k_bucket: int, elem_bytes: int):
    """The configs whose tiles fit the problem, shared memory and the registers (configs.naive_matmul_fits)."""
    return [cfg for cfg in configs
            if spaces.naive_matmul_fits((cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"],
                                         cfg.num_warps, cfg.num_stages), m_bucket, n_bucket, k_bucket, elem_bytes)]


def _prune_matmul_configs(configs, named_args, **kwargs):
    """Named early_config_prune filter of the matmul autotuner (the key is a function of its inputs)."""
    args = {**named_args, **kwargs}
    kept = _matmul_space(configs, args["M_BUCKET"], args["N_BUCKET"], args["K_BUCKET"], args["A"].element_size())
    if args.get("DOT_PRECISION") == "ieee":  # FMA dot products: one small config (_common.IEEE_MAX_TILE)
        kept = ieee_configs(kept)
    return kept


def configs(headdim: int) -> dict[str, list[triton.Config]]:
    """The matmul configs a (fp16/bf16, long-sequence) problem of this head dim may autotune over."""
    d, n = max(16, triton.next_power_of_2(headdim)), 4096
    union = set()
    for m_b, n_b, k_b in ((n, n, d), (n, d, n)):  # QK class; PV and PTV classes
        union.update(id(cfg) for cfg in _matmul_space(_MATMUL_CONFIGS, m_b, n_b, k_b, 2))
    return {"matmul": [cfg for cfg in _MATMUL_CONFIGS if id(cfg) in union]}


# ----------------------------------------------------------------------------------------------------------
# Forward kernels: batched matmul (also used in backward) and row softmax
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _matmul_kernel(A, B, C, alpha,
                   stride_az, stride_ah, stride_am, stride_ak,
                   stride_bz, stride_bh, stride_bk, stride_bn,
                   stride_cz, stride_ch, stride_cm, stride_cn,
                   H_C, RED, A_DIV, B_DIV, M, N, K,
                   SHAPE_CLASS, M_BUCKET, N_BUCKET, K_BUCKET,  # autotune key only
                   DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr):
    """C[z, h] = alpha · Σ_{g < RED} A[z, (h·RED + g) // A_DIV] @ B[z, (h·RED + g) // B_DIV].

    RED = 1 and B_DIV = group map a query head to its kv head; RED = group reduces dK, dV over a group.
    """
    pid = tl.program_id(0)
    off_zh = tl.program_id(1)
    off_z = off_zh // H_C
    off_h = off_zh % H_C
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # column tiles of one row block run next to each other: its A rows are read once from HBM
    start_m = (pid // num_pid_n) * BLOCK_M
    start_n = (pid % num_pid_n) * BLOCK_N
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = start_m + offs_m < M
    mask_n = start_n + offs_n < N
    # 64-bit tile bases: batch · heads · N² elements can exceed 2³¹
    A += off_z.to(tl.int64) * stride_az + start_m.to(tl.int64) * stride_am
    B += off_z.to(tl.int64) * stride_bz + start_n.to(tl.int64) * stride_bn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for g in range(0, RED):
        head = off_h * RED + g
        a_ptrs = (A + (head // A_DIV).to(tl.int64) * stride_ah
                  + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak)
        b_ptrs = (B + (head // B_DIV).to(tl.int64) * stride_bh
                  + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn)
        acc = _matmul_inner(acc, a_ptrs, b_ptrs, mask_m, mask_n, K, stride_ak, stride_bk,
                            BLOCK_K, EVEN_M, EVEN_N, EVEN_K, DOT_PRECISION)
    c = (acc * alpha).to(C.dtype.element_ty)
    C += (off_z.to(tl.int64) * stride_cz + off_h.to(tl.int64) * stride_ch
          + start_m.to(tl.int64) * stride_cm + start_n.to(tl.int64) * stride_cn)
    c_ptrs = C + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    if EVEN_M & EVEN_N:
        tl.store(c_ptrs, c)
    else:
        tl.store(c_ptrs, c, mask=mask_m[:, None] & mask_n[None, :])


_matmul = triton.heuristics({
    "EVEN_M": lambda args: args["M"] % args["BLOCK_M"] == 0,
    "EVEN_N": lambda args: args["N"] % args["BLOCK_N"] == 0,
    "EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0,
})(_matmul_kernel)
_matmul_autotuned = autotune(_MATMUL_CONFIGS, ["SHAPE_CLASS", "M_BUCKET", "N_BUCKET", "K_BUCKET", "DOT_PRECISION"],
                             _prune_matmul_configs)(_matmul)  # the tensors' dtypes join the key (Triton adds them)


@triton.jit
def _load_scores(s_ptrs, start_n, stride_sn, offs_m, offs_n, row_ok, N_CTX_Q, N_CTX_K, CAUSAL: tl.constexpr):
    """Keys start_n.. of S for BLOCK_M queries, in fp32, -inf where a query may not see the key."""
    cols = start_n + offs_n
    visible = row_ok[:, None] & (cols < N_CTX_K)[None, :]
    if CAUSAL:  # bottom-right aligned: query i sees keys j <= i + N_CTX_K - N_CTX_Q
        visible = visible & (cols[None, :] <= offs_m[:, None] + (N_CTX_K - N_CTX_Q))
    s = tl.load(s_ptrs + start_n * stride_sn, mask=visible, other=float("-inf"))
    return s.to(tl.float32)


@triton.jit
def _softmax_kernel(S, P,
                    stride_sz, stride_sh, stride_sm, stride_sn,
                    stride_pz, stride_ph, stride_pm, stride_pn,
                    H, N_CTX_Q, N_CTX_K,
                    CAUSAL: tl.constexpr, ONE_PASS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """P = softmax(S) over the key axis for BLOCK_M rows of one head; rows that see no key get zeros."""
    start_m = tl.program_id(0) * BLOCK_M
    off_zh = tl.program_id(1)
    off_z = off_zh // H
    off_h = off_zh % H
    S += off_z.to(tl.int64) * stride_sz + off_h.to(tl.int64) * stride_sh + start_m.to(tl.int64) * stride_sm
    P += off_z.to(tl.int64) * stride_pz + off_h.to(tl.int64) * stride_ph + start_m.to(tl.int64) * stride_pm
    offs_m = start_m + tl.arange(0, BLOCK_M)  # query index, for the causal mask
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = offs_m < N_CTX_Q
    s_ptrs = S + tl.arange(0, BLOCK_M)[:, None] * stride_sm + offs_n[None, :] * stride_sn
    p_ptrs = P + tl.arange(0, BLOCK_M)[:, None] * stride_pm + offs_n[None, :] * stride_pn
    if ONE_PASS:  # the whole row is in registers: read S once, write P once
        s = _load_scores(s_ptrs, 0, stride_sn, offs_m, offs_n, row_ok, N_CTX_Q, N_CTX_K, CAUSAL)
        m_i = tl.max(s, 1)
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)  # a row with no key: keep exp2 finite (all zeros)
        p = tl.exp2((s - m_i[:, None]) * LOG2E)
        l_i = tl.sum(p, 1)
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
        p = p / l_i[:, None]
        tl.store(p_ptrs, p.to(P.dtype.element_ty), mask=row_ok[:, None] & (offs_n < N_CTX_K)[None, :])
    else:
        # pass 1: running max m_i and running sum l_i (rescaled when the max grows)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, N_CTX_K, BLOCK_N):
            s = _load_scores(s_ptrs, start_n, stride_sn, offs_m, offs_n, row_ok, N_CTX_Q, N_CTX_K, CAUSAL)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp2((m_i - m_safe) * LOG2E) + tl.sum(tl.exp2((s - m_safe[:, None]) * LOG2E), 1)
            m_i = m_new
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
        # pass 2: normalise and write P (zeros where masked)
        for start_n in range(0, N_CTX_K, BLOCK_N):
            s = _load_scores(s_ptrs, start_n, stride_sn, offs_m, offs_n, row_ok, N_CTX_Q, N_CTX_K, CAUSAL)
            p = tl.exp2((s - m_i[:, None]) * LOG2E) / l_i[:, None]
            tl.store(p_ptrs + start_n * stride_pn, p.to(P.dtype.element_ty),
                     mask=row_ok[:, None] & (start_n + offs_n < N_CTX_K)[None, :])


# ----------------------------------------------------------------------------------------------------------
# Backward kernel: dS = P ∘ (dP - rowsum(P ∘ dP)), the softmax gradient (the matmuls are shared)
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _softmax_bwd_kernel(P, DP, DS,
                        stride_pz, stride_ph, stride_pm, stride_pn,
                        stride_dpz, stride_dph, stride_dpm, stride_dpn,
                        stride_dsz, stride_dsh, stride_dsm, stride_dsn,
                        H, N_CTX_Q, N_CTX_K,
                        ONE_PASS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dS for BLOCK_M rows of one head; masked keys and rows that see no key have P = 0, hence dS = 0."""
    start_m = tl.program_id(0) * BLOCK_M
    off_zh = tl.program_id(1)
    off_z = off_zh // H
    off_h = off_zh % H
    P += off_z.to(tl.int64) * stride_pz + off_h.to(tl.int64) * stride_ph + start_m.to(tl.int64) * stride_pm
    DP += (off_z.to(tl.int64) * stride_dpz + off_h.to(tl.int64) * stride_dph
           + start_m.to(tl.int64) * stride_dpm)
    DS += (off_z.to(tl.int64) * stride_dsz + off_h.to(tl.int64) * stride_dsh
           + start_m.to(tl.int64) * stride_dsm)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = start_m + offs_m < N_CTX_Q
    p_ptrs = P + offs_m[:, None] * stride_pm + offs_n[None, :] * stride_pn
    dp_ptrs = DP + offs_m[:, None] * stride_dpm + offs_n[None, :] * stride_dpn
    ds_ptrs = DS + offs_m[:, None] * stride_dsm + offs_n[None, :] * stride_dsn
    if ONE_PASS:  # the whole row is in registers: read P and dP once
        mask = row_ok[:, None] & (offs_n < N_CTX_K)[None, :]
        p = tl.load(p_ptrs, mask=mask, other=0.0).to(tl.float32)
        dp = tl.load(dp_ptrs, mask=mask, other=0.0).to(tl.float32)
        delta = tl.sum(p * dp, 1)
        tl.store(ds_ptrs, (p * (dp - delta[:, None])).to(DS.dtype.element_ty), mask=mask)
    else:
        # pass 1: delta_i = rowsum(P_i ∘ dP_i) in fp32
        delta = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start_n in range(0, N_CTX_K, BLOCK_N):
            mask = row_ok[:, None] & (start_n + offs_n < N_CTX_K)[None, :]
            p = tl.load(p_ptrs + start_n * stride_pn, mask=mask, other=0.0).to(tl.float32)
            dp = tl.load(dp_ptrs + start_n * stride_dpn, mask=mask, other=0.0).to(tl.float32)
            delta += tl.sum(p * dp, 1)
        # pass 2: dS = P ∘ (dP - delta)
        for start_n in range(0, N_CTX_K, BLOCK_N):
            mask = row_ok[:, None] & (start_n + offs_n < N_CTX_K)[None, :]
            p = tl.load(p_ptrs + start_n * stride_pn, mask=mask, other=0.0).to(tl.float32)
            dp = tl.load(dp_ptrs + start_n * stride_dpn, mask=mask, other=0.0).to(tl.float32)
            tl.store(ds_ptrs + start_n * stride_dsn, (p * (dp - delta[:, None])).to(DS.dtype.element_ty),
                     mask=mask)


TRITON_KERNELS = {
    "matmul": _matmul_autotuned,  # the autotuner; its .fn chain leads to the @triton.jit _matmul_kernel
    "softmax": _softmax_kernel,
    "softmax_bwd": _softmax_bwd_kernel,
}

# ----------------------------------------------------------------------------------------------------------
# Launchers, config forcing and reporting
# ----------------------------------------------------------------------------------------------------------
_FORCED: dict[str, triton.Config] = {}
_LAST: dict[str, str] = {}
_CACHED: dict[str, bool | None] = {}  # phase -> whether its matmuls' configs came from the disk cache
forced_configs = config_forcer(_FORCED, ("matmul",))


def last_config() -> str:
    """The configs of the most recent forward and backward launches ("" before the first)."""
    return " | ".join(f"{phase}: {_LAST[phase]}" for phase in ("fwd", "bwd") if phase in _LAST)


def config_cached() -> bool | None:
    """Whether the matmul configs of the launches since the last call all came from the disk cache (None: not
    tuned); reading resets it (``Launcher.config_cached``)."""
    flags = list(_CACHED.values())
    _CACHED.clear()
    return all_cached(flags)


def _launch_matmul(name, a, b, c, alpha, shape_class, precision, cached, red=1, a_div=1, b_div=1) -> str:
    """c[z, h] = alpha · Σ_g a[z, (h·red + g) // a_div] @ b[z, (h·red + g) // b_div]; all 4-D, any strides.
    Appends to ``cached`` whether an autotuned config came from the disk cache (None when forced or
    interpreted)."""
    Z, H_C, M, N = c.shape
    K = a.shape[3]
    args = (a, b, c, alpha, *a.stride(), *b.stride(), *c.stride(), H_C, red, a_div, b_div, M, N, K,
            shape_class, triton.next_power_of_2(M), triton.next_power_of_2(N), triton.next_power_of_2(K))

    def grid(META):
        return (triton.cdiv(M, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]), Z * H_C)

    cfg = _FORCED.get("matmul")
    if cfg is None and interpreting():  # the interpreter cannot benchmark: first config of the pruned list
        cfg = _matmul_space(_MATMUL_CONFIGS, *args[-3:], a.element_size())[0]
    if cfg is not None:
        _matmul[grid](*args, DOT_PRECISION=precision, **cfg.kwargs, num_warps=cfg.num_warps,
                      num_stages=cfg.num_stages)
        cached.append(None)
    else:
        cfg, from_disk = launch_tuned(_matmul_autotuned, grid, *args, DOT_PRECISION=precision)
        cached.append(from_disk)
    return f"{name}[{_CLASS_NAMES[shape_class]}] {describe_config(cfg)}"


def _row_blocks(n_ctx_k: int, interpret: bool):
    """BLOCK_M rows x BLOCK_N keys per softmax program (about 4K elements), and its warps."""
    cap = _ROW_BLOCK_INTERPRETER if interpret else _ROW_BLOCK_GPU
    block_n = min(max(16, triton.next_power_of_2(n_ctx_k)), cap)
    block_m = max(1, min(16, 4096 // block_n))
    return block_m, block_n, 4 if block_m * block_n <= 2048 else 8


def _scores_buffer(q, n_ctx_k):
    """An empty (Z, H, N_CTX_Q, N_CTX_K) tensor whose rows start 16-element aligned (vector loads/stores)."""
    Z, H, N_CTX_Q, _ = q.shape
    padded = triton.cdiv(n_ctx_k, 16) * 16
    return torch.empty((Z, H, N_CTX_Q, padded), dtype=q.dtype, device=q.device)[..., :n_ctx_k]


def _launch_softmax(s, p, causal) -> str:
    Z, H, N_CTX_Q, N_CTX_K = s.shape
    BLOCK_M, BLOCK_N, num_warps = _row_blocks(N_CTX_K, interpreting())
    grid = (triton.cdiv(N_CTX_Q, BLOCK_M), Z * H)
    _softmax_kernel[grid](s, p, *s.stride(), *p.stride(), H, N_CTX_Q, N_CTX_K,
                          CAUSAL=causal, ONE_PASS=N_CTX_K <= BLOCK_N, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                          num_warps=num_warps)
    return f"P[softmax] BLOCK_M={BLOCK_M} BLOCK_N={BLOCK_N} w{num_warps}"


def _launch_softmax_bwd(p, dp, ds) -> str:
    Z, H, N_CTX_Q, N_CTX_K = p.shape
    BLOCK_M, BLOCK_N, num_warps = _row_blocks(N_CTX_K, interpreting())
    grid = (triton.cdiv(N_CTX_Q, BLOCK_M), Z * H)
    _softmax_bwd_kernel[grid](p, dp, ds, *p.stride(), *dp.stride(), *ds.stride(), H, N_CTX_Q, N_CTX_K,
                              ONE_PASS=N_CTX_K <= BLOCK_N, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                              num_warps=num_warps)
    return f"dS[softmax_bwd] BLOCK_M={BLOCK_M} BLOCK_N={BLOCK_N} w{num_warps}"


# ----------------------------------------------------------------------------------------------------------
# Autograd function and the public entry point
# ----------------------------------------------------------------------------------------------------------
class _attention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale, precision):
        Z, H, N_CTX_Q, HEAD_DIM = q.shape
        N_CTX_K = k.shape[2]
        group = H // k.shape[1]
        s = _scores_buffer(q, N_CTX_K)
        cached = []
        used = [_launch_matmul("S", q, k.transpose(2, 3), s, sm_scale, QK, precision, cached, b_div=group)]
        p = _scores_buffer(q, N_CTX_K)
        used.append(_launch_softmax(s, p, causal))
        del s
        o = torch.empty((Z, H, N_CTX_Q, HEAD_DIM), dtype=q.dtype, device=q.device)
        used.append(_launch_matmul("O", p, v, o, 1.0, PV, precision, cached, b_div=group))
        _LAST["fwd"], _CACHED["fwd"] = ", ".join(used), all_cached(cached)
        ctx.save_for_backward(q, k, v, p)  # P, not S; O is not needed
        ctx.sm_scale = sm_scale
        ctx.group = group
        ctx.precision = precision
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, p = ctx.saved_tensors
        sm_scale, group, precision = ctx.sm_scale, ctx.group, ctx.precision
        dv = torch.empty(k.shape, dtype=v.dtype, device=v.device)
        cached = []
        used = [_launch_matmul("dV", p.transpose(2, 3), do, dv, 1.0, PTV, precision, cached, red=group)]
        dp = _scores_buffer(q, k.shape[2])
        used.append(_launch_matmul("dP", do, v.transpose(2, 3), dp, 1.0, QK, precision, cached, b_div=group))
        ds = _scores_buffer(q, k.shape[2])
        used.append(_launch_softmax_bwd(p, dp, ds))
        del dp
        dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        used.append(_launch_matmul("dQ", ds, k, dq, sm_scale, PV, precision, cached, b_div=group))
        dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        used.append(_launch_matmul("dK", ds.transpose(2, 3), q, dk, sm_scale, PTV, precision, cached, red=group))
        _LAST["bwd"], _CACHED["bwd"] = ", ".join(used), all_cached(cached)
        return dq, dk, dv, None, None, None


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    sm_scale: float | None = None, tf32: bool = False) -> torch.Tensor:
    """Standard attention softmax(q kᵀ · sm_scale) v with S and P materialised; differentiable.

    q: (batch, heads, seqlen_q, headdim); k, v: (batch, kv_heads, seqlen_k, headdim), any strides. sm_scale must
    be finite and positive; fp32 inputs run IEEE fp32 dot products unless ``tf32`` (ignored for fp16/bf16).
    """
    shape = check_inputs(q, k, v)
    return _attention.apply(q, k, v, bool(causal), check_scale(shape.headdim, sm_scale),
                            dot_precision(q.dtype, tf32))
