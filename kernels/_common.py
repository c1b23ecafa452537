"""The shared kernel core: input checks, tile I/O (64-bit pointers or TMA), the bwd Delta kernel, config machinery.

Every kernel takes q: (batch, heads, seqlen_q, headdim) and k, v: (batch, kv_heads, seqlen_k, headdim) in any
strides, and raises ValueError naming the problem for anything it cannot run. Every kernel module imports this
one before Triton: importing it switches on Triton's CPU interpreter where there is no GPU.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fa2bench.core import device as _device

_device.prepare_triton()  # before Triton is imported: Triton's CPU interpreter when torch sees no CUDA GPU

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from .configs import IEEE_MAX_TILE  # noqa: E402

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


TUNE_WARMUP_MS = 5  # the tuner's warm-up per candidate, before its 20 ms of timed calls
TUNE_WARMUP_ENV = "FA2_TUNE_WARMUP_MS"  # overrides it for every autotuner (a study's switch; recorded in kernel_env)


def env_number(name: str, default, parse=float, unit: str = "a number"):
    """The environment variable ``name`` read by ``parse``, ``default`` when unset or blank; a value ``parse``
    cannot read is a ValueError of one line naming the variable and ``unit``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return parse(text)
    except ValueError:
        raise ValueError(f"{name} must be {unit}, got {text!r}") from None


def tune_warmup_ms() -> float:
    """The tuner's warm-up per candidate: FA2_TUNE_WARMUP_MS if set, else TUNE_WARMUP_MS."""
    value = env_number(TUNE_WARMUP_ENV, TUNE_WARMUP_MS, float, "a number of milliseconds")
    if value < 0:
        raise ValueError(f"{TUNE_WARMUP_ENV} must be at least 0, got {value:g}")
    return value


def tune_bench(kernel_call, quantiles):
    """The autotuners' timer: Triton's do_bench on short budgets (``tune_warmup_ms()`` of warm-up, 5 by default,
    then 20 ms of repetitions).

    The default budgets (25 + 100 ms per config) would spend minutes of a sweep choosing configs; a ranking
    needs far fewer repetitions than a reported measurement. A longer warm-up runs each candidate until the card
    reaches the clock it holds that kernel at (at its power cap, a kernel that draws more power runs slower than a
    cool card shows: docs/variants.md section 4).
    """
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=tune_warmup_ms(), rep=20, quantiles=quantiles)


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


def ieee_configs(configs, block_m="BLOCK_M", block_n="BLOCK_N"):
    """The configs an IEEE-fp32 launch may use: the first one whose score tile is at most IEEE_MAX_TILE (FMA dot
    products keep both operands in registers: configs.IEEE_MAX_TILE says why)."""
    small = [c for c in configs if c.kwargs[block_m] * c.kwargs[block_n] <= IEEE_MAX_TILE]
    return small[:1]


# ----------------------------------------------------------------------------------------------------------------
# Autotuning once, not every run: Triton's on-disk autotune cache, with what its key misses added
#
# ``triton.autotune(..., cache_results=True)`` stores each decision (every candidate's time) as
# ``<kernel name>.autotune.json`` in Triton's cache directory (TRITON_CACHE_DIR, default ~/.triton/cache) and reads
# it back instead of searching (Triton 3.6 and 3.9: ``Autotuner.check_disk_cache``; never under the interpreter).
# Its key hashes Triton's version and its compiler, language and libtriton files (``triton_key``); the backend
# (ptxas version and GPU architecture, e.g. sm_90); the kernel's source and every @jit function it calls, its line
# and the constexpr globals it reads (``JITFunction.cache_key``); Triton's cache-invalidating environment
# variables; the autotune key's values with every tensor argument's dtype; and the pruned configs (so what the
# filter kept, not the filter's code). It misses the GPU model (an H100 and an H200 are both sm_90), the driver
# and torch (whose events and L2 flush our timer uses): ``machine_key`` adds them.

# One cache directory for the whole process. TorchInductor (FlexAttention's compiler) sets TRITON_CACHE_DIR to its
# own folder (/tmp/torchinductor_$USER/triton/0) when it builds its first kernel, if the variable is unset; every
# later Triton lookup of ours then looks there. Whether that happens depends on whether Inductor compiled in this
# process or in its compile workers, so a sweep's first run and its second looked in different folders after the
# first flex point and the second run searched again (results/h200-default-second). Setting the variable to the
# folder Triton would use anyway, before anything else runs, keeps Triton, Inductor and us on one folder.
os.environ.setdefault("TRITON_CACHE_DIR", triton.knobs.cache.dir)

_TUNERS: list = []  # every autotuner built by ``autotune`` (clear_autotune_files removes their files)
COMPILE_THREADS = int(os.environ.get("FA2BENCH_COMPILE_THREADS", min(8, os.cpu_count() or 1)))


@functools.cache
def _machine_key(device_index: int) -> str:
    props = torch.cuda.get_device_properties(device_index)
    return (f"{props.name} sm_{props.major}{props.minor} {props.multi_processor_count} SMs, torch {torch.__version__}"
            f" cuda {torch.version.cuda}")


def machine_key() -> str:
    """What a timing depends on that Triton's autotune key leaves out: the current GPU's model and SM count, the
    CUDA and torch versions ("cpu" and torch's version without a GPU)."""
    if not torch.cuda.is_available():
        return f"cpu, torch {torch.__version__}"
    return _machine_key(torch.cuda.current_device())


def autotune(configs, key, prune, **kwargs):
    """``triton.autotune`` as every fa2bench kernel uses it: our timer (``tune_bench``), the named filter
    ``prune``, decisions kept on disk under Triton's key plus ``machine_key()``, and a search's candidates compiled
    in parallel first. ``kwargs`` go to ``triton.autotune`` (reset_to_zero, ...)."""
    def decorate(fn):
        tuner = triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune},
                                do_bench=tune_bench, cache_results=True, **kwargs)(fn)
        _persist(tuner)
        _TUNERS.append(tuner)
        return tuner

    return decorate


def _persist(tuner) -> None:
    """Route the tuner's disk lookup through ``machine_key`` and record which configs came back from disk."""
    lookup = tuner.check_disk_cache  # Triton's own; called only when the key is not in memory yet
    tuner.from_disk = []  # Config objects read back from disk: a launch whose best_config is one of them was cached
    tuner.pending = None  # (grid, args, kwargs) of the launch in progress, for _precompile

    def check_disk_cache(tuning_key, configs, bench_fn):
        warmup = tune_warmup_ms()  # another warm-up makes another decision (the default's keys stay as they were)
        extended = (*tuning_key, machine_key(), *(() if warmup == TUNE_WARMUP_MS else (f"tune warm-up {warmup} ms",)))

        def search():
            _precompile(tuner, configs)
            bench_fn()  # Triton's search: times every config, keeps the best under tuning_key

        if not lookup(extended, configs, search):
            return False
        tuner.cache[tuning_key] = tuner.cache.pop(extended)
        tuner.from_disk.append(tuner.cache[tuning_key])
        return True

    tuner.check_disk_cache = check_disk_cache


def _precompile(tuner, configs) -> None:
    """Compile the configs a search is about to time, in parallel (``triton.AsyncCompileMode`` on a thread pool;
    ptxas runs as a subprocess), so that the search only times them. Best effort: a config that fails to compile
    here is compiled, and skipped, by the search itself."""
    if tuner.pending is None or len(configs) < 2 or COMPILE_THREADS < 2:
        return
    grid, args, kwargs = tuner.pending
    try:
        with ThreadPoolExecutor(COMPILE_THREADS) as pool, triton.AsyncCompileMode(pool, ignore_errors=True):
            for cfg in configs:
                tuner.fn.run(*args, grid=grid, warmup=True, **kwargs, **cfg.all_kwargs())
    except Exception:  # noqa: BLE001  (an optimisation only: the search compiles whatever is missing)
        pass


def launch_tuned(tuner, grid, *args, **kwargs):
    """Launch an ``autotune``d kernel: ``(config, cached)``, cached saying whether the config came from the disk
    cache (False: a search in this process found it)."""
    tuner.pending = (grid, args, kwargs)
    try:
        tuner[grid](*args, **kwargs)
    finally:
        tuner.pending = None
    cfg = tuner.best_config
    return cfg, any(cfg is c for c in tuner.from_disk)


def all_cached(flags) -> bool | None:
    """Whether every autotuned launch among ``flags`` (None: not autotuned) took its config from the disk cache;
    None when none was autotuned."""
    known = [f for f in flags if f is not None]
    return all(known) if known else None


def clear_autotune_files() -> int:
    """Delete the on-disk decisions of every autotuner built so far (compiled kernels stay) and forget the
    in-memory ones: the next launch of each key searches again. Returns the number of files removed."""
    names = {f"{tuner.base_fn.__name__[:150]}.autotune.json" for tuner in _TUNERS}
    removed = 0
    for name in names:
        for path in glob.glob(os.path.join(glob.escape(triton.knobs.cache.dir), "*", name)):
            os.remove(path)
            removed += 1
    for tuner in _TUNERS:
        tuner.cache.clear()
        tuner.from_disk.clear()
    return removed


# ----------------------------------------------------------------------------------------------------------------
# Config machinery shared by the kernel modules: autotuned, forced, or (interpreter) the first pruned config


class Launcher:
    """Launches a kernel module's autotuned kernels by name and remembers the configs used.

    ``kernels`` maps names to ``autotune``d kernels; ``prune`` maps the same names to their
    ``early_config_prune`` filters. Under the CPU interpreter (which cannot benchmark) the first config that
    survives the filter runs; inside ``forced_configs(name=cfg)`` exactly that config runs.
    """

    def __init__(self, kernels: dict, prune: dict):
        self.kernels, self.prune = kernels, prune
        self.forced: dict = {}
        self.last: dict = {}
        self.cached: dict = {}  # name -> whether its latest config came from the disk cache (None: not autotuned)
        self.forced_configs = config_forcer(self.forced, tuple(kernels))

    def launch(self, name: str, grid, *args, **kwargs):
        kernel = self.kernels[name]
        cfg, cached = self.forced.get(name), None
        if cfg is None and interpreting():
            named = {**dict(zip(kernel.arg_names, args)), **kwargs}
            cfg = self.prune[name](kernel.configs, named)[0]
        if cfg is None:
            cfg, cached = launch_tuned(kernel, grid, *args, **kwargs)
        else:
            kernel.fn[grid](*args, **kwargs, **cfg.all_kwargs())
        self.last[name], self.cached[name] = cfg, cached
        return cfg

    def last_config(self) -> str:
        """The configs of the most recent launches, e.g. "fwd: BLOCK_M=128 BLOCK_N=64 w8 s2 | bwd: ..."."""
        return " | ".join(f"{name}: {describe_config(self.last[name])}" for name in self.kernels if name in self.last)

    def config_cached(self) -> bool | None:
        """Whether the configs of the launches since the last call all came from the disk cache (None: none
        autotuned). Reading resets it, so a sweep row speaks for its own point, not for an earlier one's kernels
        (a bwd point's dK/dV and dQ flags used to stay in every later fwd row)."""
        flags = list(self.cached.values())
        self.cached.clear()
        return all_cached(flags)


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


# ----------------------------------------------------------------------------------------------------------------
# Tile loaders: a kernel moves each (rows, head dim) matrix through 64-bit pointers or, on Hopper, a tensor
# descriptor (TMA), chosen once per matrix by the constexpr TMA; the algorithm's code calls the same four helpers
# either way. A *source* is the tuple (base or descriptor, row stride, head-dim stride); a *cursor* is where a
# loop over row blocks stands: a tile of pointers advanced by one block per step, or the descriptor itself.


@triton.jit
def head_source(base, strides, off_z, off_h, n_rows, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr,
                BLOCK_D: tl.constexpr, TMA: tl.constexpr):
    """The source of one (batch, head)'s (n_rows, HEAD_DIM) matrix of a (batch, heads, rows, head dim) tensor with
    ``strides`` (z, h, row, d), moved in (BLOCK_R, BLOCK_D) tiles. TMA: a tensor descriptor, whose loads past the
    last row or the head dim read zeros and whose stores there are dropped; the head dim must be contiguous and
    the base and row stride 16-byte aligned (``tma_layout_ok``)."""
    base += off_z * strides[0] + off_h * strides[1]
    if TMA:
        desc = tl.make_tensor_descriptor(base, shape=[n_rows, HEAD_DIM], strides=[strides[2], 1],
                                         block_shape=[BLOCK_R, BLOCK_D])
        return desc, strides[2], strides[3]
    else:
        return base, strides[2], strides[3]


@triton.jit
def row_cursor(src, rows, offs_d, TMA: tl.constexpr):
    """A cursor at the tile whose rows are ``rows``."""
    if TMA:
        return src[0]
    else:
        return tile_ptrs(src[0], rows, src[1], offs_d, src[2])


@triton.jit
def advance(cursor, src, BLOCK_R: tl.constexpr, TMA: tl.constexpr):
    """The cursor BLOCK_R rows further on (64-bit steps)."""
    if TMA:
        return cursor
    else:
        return cursor + tl.cast(src[1], tl.int64) * BLOCK_R


@triton.jit
def load_rows(cursor, row0, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              MASK_ROWS: tl.constexpr, TMA: tl.constexpr):
    """The (rows, BLOCK_D) tile at the cursor, rows = row0 + arange: rows past n_rows and the padded head dim
    read as zeros (by masks only where MASK_ROWS and a padded head dim need them; TMA fills them itself)."""
    if TMA:
        return cursor.load([row0, 0])
    else:
        return load_tile(cursor, rows, n_rows, offs_d, HEAD_DIM, BLOCK_D, MASK_ROWS)


@triton.jit
def store_rows(cursor, x, row0, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               TMA: tl.constexpr):
    """Store the (rows, BLOCK_D) tile x at the cursor; rows past n_rows and the padded head dim are dropped."""
    if TMA:
        cursor.store([row0, 0], x)
    else:
        store_tile(cursor, x, rows, n_rows, offs_d, HEAD_DIM, BLOCK_D, True)


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
