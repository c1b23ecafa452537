"""The shared kernel core: input checks, tile I/O with 64-bit offsets, the bwd Delta kernel, config machinery.

Every kernel takes q: (batch, heads, seqlen_q, headdim) and k, v: (batch, kv_heads, seqlen_k, headdim) in any
strides, and raises ValueError naming the problem for anything it cannot run.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import triton
import triton.language as tl

from fa2bench.core.presets import Shape

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): exp(x) = exp2(x * LOG2E); every kernel folds it into qk_scale

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEADDIM = 256


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> Shape:
    """The shape of valid inputs (the suite's one ``Shape``); a ValueError naming the problem otherwise."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, seqlen, headdim), got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"inputs are on {q.device}; the Triton kernels need a CUDA device "
                         "(or TRITON_INTERPRET=1 for the CPU interpreter)")
    batch, heads, seqlen_q, headdim = q.shape
    kb, kv_heads, seqlen_k, kd = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if kb != batch:
        raise ValueError(f"q has batch {batch} but k, v have batch {kb}")
    if kd != headdim:
        raise ValueError(f"q has head dim {headdim} but k, v have head dim {kd}")
    if min(batch, heads, seqlen_q, kv_heads, seqlen_k) < 1:
        raise ValueError(f"empty input: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    if not 1 <= headdim <= MAX_HEADDIM:
        raise ValueError(f"head dim {headdim} is not supported (1..{MAX_HEADDIM})")
    return Shape(batch, heads, kv_heads, seqlen_q, seqlen_k, headdim, causal)


def default_scale(headdim: int, sm_scale: float | None) -> float:
    return 1.0 / math.sqrt(headdim) if sm_scale is None else float(sm_scale)


def tune_bench(kernel_call, quantiles):
    """The autotuners' timer: Triton's do_bench on short budgets (5 ms warm-up, 20 ms of repetitions).

    The default budgets (25 + 100 ms per config) would spend minutes of a sweep choosing configs; a ranking
    needs far fewer repetitions than a reported measurement.
    """
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def describe_config(cfg) -> str:
    """A config as ``last_config()`` reports it: "BLOCK_M=128 BLOCK_N=64 w8 s3"."""
    tiles = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{tiles} w{cfg.num_warps} s{cfg.num_stages}"


def config_forcer(forced: dict, tuned: tuple[str, ...]):
    """The ``forced_configs(**by_kernel)`` context manager of a kernel module: while it is open, the named
    autotuned kernels (of ``tuned``) launch with exactly the given configs (recorded in ``forced``)."""

    @contextlib.contextmanager
    def forced_configs(**by_kernel):
        unknown = sorted(set(by_kernel) - set(tuned))
        if unknown:
            raise ValueError(f"no autotuned kernel named {unknown}; autotuned kernels: {list(tuned)}")
        saved = dict(forced)
        forced.update(by_kernel)
        try:
            yield
        finally:
            forced.clear()
            forced.update(saved)

    return forced_configs


# ----------------------------------------------------------------------------------------------------------------
# Scalar checks shared by every kernel's public function


def check_scale(headdim: int, sm_scale: float | None) -> float:
    """The softmax scale to use: headdim ** -0.5 by default; otherwise it must be finite and positive.

    One rule for every kernel: a scale is a softmax temperature (1 / sqrt(d) in the papers); zero, negative,
    NaN and infinite scales are rejected rather than computed.
    """
    scale = default_scale(headdim, sm_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"sm_scale must be a finite positive number, got {sm_scale}")
    return scale


def dot_precision(dtype: torch.dtype, tf32: bool) -> str:
    """``input_precision`` of every ``tl.dot``: IEEE fp32 for fp32 inputs unless ``tf32``; fp16/bf16 ignore it."""
    if dtype == torch.float32 and not tf32:
        return "ieee"
    return "tf32"


# IEEE fp32 dot products run on FMA units, not tensor cores: Triton keeps both operands in registers and unrolls the
# product, so large tiles spill and take minutes to compile (an fa2 forward at 128 x 64 x 128: about 2 minutes).
# For fp32 inputs without tf32, the kernels keep tiles of at most this many scores and only the first such config.
IEEE_MAX_TILE = 64 * 64


def ieee_configs(configs, block_m="BLOCK_M", block_n="BLOCK_N"):
    """The configs an IEEE-fp32 launch may use: the first one whose score tile is at most IEEE_MAX_TILE."""
    small = [c for c in configs if c.kwargs[block_m] * c.kwargs[block_n] <= IEEE_MAX_TILE]
    return small[:1]


# ----------------------------------------------------------------------------------------------------------------
# Config machinery shared by the kernel modules: autotuned, forced, or (interpreter) the first pruned config


class Launcher:
    """Launches a kernel module's autotuned kernels by name and remembers the configs used.

    ``kernels`` maps names to ``triton.autotune`` objects; ``prune`` maps the same names to their
    ``early_config_prune`` filters. Under the CPU interpreter (which cannot benchmark) the first config that
    survives the filter runs; inside ``forced_configs(name=cfg)`` exactly that config runs.
    """

    def __init__(self, kernels: dict, prune: dict):
        self.kernels, self.prune = kernels, prune
        self.forced: dict = {}
        self.last: dict = {}
        self.forced_configs = config_forcer(self.forced, tuple(kernels))

    def launch(self, name: str, grid, *args, **kwargs):
        kernel = self.kernels[name]
        cfg = self.forced.get(name)
        if cfg is None and interpreting():
            named = {**dict(zip(kernel.arg_names, args)), **kwargs}
            cfg = self.prune[name](kernel.configs, named)[0]
        if cfg is None:
            kernel[grid](*args, **kwargs)
            cfg = kernel.best_config
        else:
            kernel.fn[grid](*args, **kwargs, **cfg.all_kwargs())
        self.last[name] = cfg
        return cfg

    def last_config(self) -> str:
        """The configs of the most recent launches, e.g. "fwd: BLOCK_M=128 BLOCK_N=64 w8 s2 | bwd: ..."."""
        return " | ".join(f"{name}: {describe_config(self.last[name])}" for name in self.kernels if name in self.last)


# ----------------------------------------------------------------------------------------------------------------
# Tile I/O shared by the flash kernels: (rows, BLOCK_D) tiles with 64-bit row offsets


@triton.jit
def tile_ptrs(base, rows, stride_r, offs_d, stride_d):
    """Pointers to a (rows, head dim) tile. Row offsets are 64-bit: rows * stride_r passes 2**31 elements in a
    (batch, seq, heads, dim) layout with heads * dim = 16384 beyond 131072 tokens."""
    return base + rows.to(tl.int64)[:, None] * stride_r + offs_d[None, :] * stride_d


@triton.jit
def load_tile(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_ROWS: tl.constexpr):
    """Load a (rows, BLOCK_D) tile: rows past n_rows masked only when MASK_ROWS, the padded head dim only if any."""
    if MASK_ROWS:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def store_tile(ptrs, x, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               MASK_ROWS: tl.constexpr):
    if MASK_ROWS:
        if HEAD_DIM == BLOCK_D:
            tl.store(ptrs, x, mask=rows[:, None] < n_rows)
        else:
            tl.store(ptrs, x, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))
    else:
        if HEAD_DIM == BLOCK_D:
            tl.store(ptrs, x)
        else:
            tl.store(ptrs, x, mask=offs_d[None, :] < HEAD_DIM)


@triton.jit
def tile_desc(base, n_rows, stride_r, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """A tensor descriptor (TMA on Hopper) over one (batch, head)'s (rows, head dim) matrix, moved in (BLOCK_R,
    BLOCK_D) tiles: loads past the last row or the head dim read zeros, stores and reductions there are dropped.
    The head dim must be contiguous and ``base`` and ``stride_r`` 16-byte aligned (``tma_layout_ok``)."""
    return tl.make_tensor_descriptor(base, shape=[n_rows, HEAD_DIM], strides=[stride_r, 1],
                                     block_shape=[BLOCK_R, BLOCK_D])


@triton.jit
def atomic_add_tile(ptrs, x, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    MASK_ROWS: tl.constexpr):
    """Add a (rows, BLOCK_D) fp32 tile into memory with relaxed atomics (no ordering: only the sum matters)."""
    if MASK_ROWS:
        if HEAD_DIM == BLOCK_D:
            tl.atomic_add(ptrs, x, mask=rows[:, None] < n_rows, sem="relaxed")
        else:
            tl.atomic_add(ptrs, x, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), sem="relaxed")
    else:
        if HEAD_DIM == BLOCK_D:
            tl.atomic_add(ptrs, x, sem="relaxed")
        else:
            tl.atomic_add(ptrs, x, mask=offs_d[None, :] < HEAD_DIM, sem="relaxed")


def tma_layout_ok(*tensors: torch.Tensor) -> bool:
    """Whether tensor descriptors can address these (batch, heads, seqlen, headdim) tensors: contiguous head
    dim, every other stride and the base address 16-byte aligned (TMA's rules)."""
    for t in tensors:
        elt = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any((s * elt) % 16 for s in t.stride()[:-1]):
            return False
        if t.shape[-1] * elt < 16:
            return False
    return True


def _torch_scratch(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cpu" if interpreting() else "cuda")


def ensure_tma_allocator() -> None:
    """Device-side tensor descriptors live in a scratch buffer Triton asks its allocator for: use PyTorch's.
    Set before every launch: Triton keeps the allocator in a ContextVar, which autograd's backward thread does
    not inherit from the thread that ran the forward."""
    triton.set_allocator(_torch_scratch)


@triton.jit
def bwd_preprocess(O, DO, Delta,
                   stride_oz, stride_oh, stride_om, stride_ok,
                   stride_doz, stride_doh, stride_dom, stride_dok,
                   H, N_CTX_Q,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """Delta_i = rowsum(dO_i * O_i) in fp32, one (Q block, batch * head) per program; Delta is (Z, H, N_CTX_Q)."""
    off_hz = tl.program_id(1)
    off_z = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = load_tile(tile_ptrs(O + off_z * stride_oz + off_h * stride_oh, offs_m, stride_om, offs_d, stride_ok),
                  offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, True)
    do = load_tile(tile_ptrs(DO + off_z * stride_doz + off_h * stride_doh, offs_m, stride_dom, offs_d, stride_dok),
                   offs_m, N_CTX_Q, offs_d, HEAD_DIM, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + off_hz.to(tl.int64) * N_CTX_Q + offs_m, delta, mask=offs_m < N_CTX_Q)


PREPROCESS_BLOCK_M = 64  # bwd_preprocess is memory-bound and not tuned


def launch_preprocess(o: torch.Tensor, do: torch.Tensor, delta: torch.Tensor, block_d: int) -> None:
    Z, H, N_CTX_Q, HEAD_DIM = o.shape
    bwd_preprocess[(triton.cdiv(N_CTX_Q, PREPROCESS_BLOCK_M), Z * H)](
        o, do, delta, *o.stride(), *do.stride(), H, N_CTX_Q,
        HEAD_DIM=HEAD_DIM, BLOCK_D=block_d, BLOCK_M=PREPROCESS_BLOCK_M, num_warps=4 if block_d <= 64 else 8)


def block_d(headdim: int) -> int:
    """Head dims are padded to a power of two >= 16 (masked on d)."""
    return max(16, triton.next_power_of_2(headdim))


def smem_fits(elems_per_stage: int, resident: int, stages: int, esize: int, budget: int = 200 * 1024) -> bool:
    """Shared memory estimate: tiles resident for the whole program plus num_stages copies of the streamed ones."""
    return (resident + max(stages, 1) * elems_per_stage) * esize <= budget
