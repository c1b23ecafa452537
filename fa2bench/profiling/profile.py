"""One point in depth: Triton kernel resources and a torch.profiler trace (Nsight Compute is ``ncu.py``, the
measured IO study ``iostudy.py``).

- ``prepare(point)``: the call the runner times, after one call (compilation, autotuning).
- ``kernel_resources(provider)``: registers per thread, spills, shared memory, warps, stages and tile sizes of
  every compiled variant of a Triton provider's kernels (the ``TRITON_KERNELS`` of its module), read from
  Triton's compiled-kernel cache; the variants the autotuner chose are marked.
- ``trace(call, path)``: a Kineto (torch.profiler) Chrome trace of a few calls and ``kernel_table`` of the
  GPU kernels they launched.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fa2bench.core import device, providers
from fa2bench.core.presets import PRESETS, Point
from fa2bench.core.variants import DENSE

if TYPE_CHECKING:
    from fa2bench.run.timing import Timing

# A profiled point unless told otherwise: the paper's workload (its tokens and hidden size) at one shape;
# the IO study's sequence lengths.
POINT_DEFAULTS = dataclasses.replace(PRESETS["paper"], seqlens=(4096,), headdims=(128,), causal=(False,),
                                     modes=("fwd",))
IO_SEQLENS = "1024..16384"


def plan_point(**options) -> Point:
    """The one point ``fa2bench profile`` measures: ``options`` (the fields of ``fa2bench.core.config``) over
    ``POINT_DEFAULTS``; a SpecError (one line) when they give more or fewer than one point."""
    from fa2bench.core import config
    from fa2bench.core.presets import SpecError

    points = config.spec_from(options, POINT_DEFAULTS).points()
    if len(points) != 1:
        raise SpecError(f"`fa2bench profile` takes one point; these options give {len(points)} (use profile-io or "
                        "sweep for several)")
    return points[0]


class PointFailed(Exception):
    """The provider failed on the profiled point: one line, like a sweep row's error."""


@dataclass
class Measured:
    """One point measured as the sweep does, with the HBM model beside it; ``call`` and ``grads`` stay alive
    for a trace until ``release()``."""
    point: Point
    call: Callable[[], object] | None
    grads: list | None
    timing: "Timing"
    flops: int
    tflops: float
    config: str
    telemetry: dict
    model_bytes: float | None  # None when the registry gives the provider no byte model
    compulsory_bytes: float
    footprint_mb: float | None

    def release(self) -> "Measured":
        """Drop the call and its tensors and return the cached GPU memory (before a child process needs it)."""
        self.call = self.grads = None
        release_memory()
        return self


def measure(point: Point) -> Measured:
    """Time ``point`` (``timing.bench``), take its telemetry, and put the HBM model beside it."""
    from fa2bench.core import iomodel
    from fa2bench.run import telemetry, timing
    from fa2bench.core.flops import tflops
    from fa2bench.run.point import base_row

    try:
        call, grads = prepare(point)
        with telemetry.Window() as window:  # NVML over the timed calls themselves
            measured = timing.bench(call, grads)
    except Exception as exc:
        raise PointFailed(f"{point.provider} failed on this point: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from None
    s = point.shape
    flops = base_row(point)["flops"]  # the sweep's count: a variant's attended pairs only
    config = providers.get(point.provider).config()
    modelled = iomodel.modelled(point.provider) and s.variant == DENSE  # the HBM model knows dense attention only
    return Measured(
        point, call, grads, measured, flops, tflops(flops, measured.ms), config,
        window.columns(measured.ms, flops),
        iomodel.hbm_bytes(point.provider, s, point.mode, point.dtype, config=config) if modelled else None,
        iomodel.compulsory_bytes(s, point.mode, point.dtype),
        iomodel.theoretical_footprint_mb(point.provider, s, point.mode, point.dtype) if modelled else None)


def default_out(point: Point) -> Path:
    """``results/profile/<UTC time>-<provider>-<mode>-s<seqlen>``: where ``profile --ncu`` puts its report."""
    from fa2bench.run.results import stamp

    return Path("results") / "profile" / f"{stamp()}-{point.provider}-{point.mode}-s{point.shape.seqlen_q}"


# --- calling one point ---------------------------------------------------------------------------------


def prepare(point: Point, device: str = "cuda"):
    """``(call, grads)`` for ``point`` as the runner times it, after one call (compilation, autotuning)."""
    from fa2bench.run.point import decode_call, make_inputs, timed_call

    provider = providers.get(point.provider)
    if point.mode == "decode":  # fn(cache) on a KV cache, as the runner times it
        fn, inputs = decode_call(point, provider, device)
        cache = inputs()
        call_once(lambda: fn(cache), None)
        return (lambda: fn(cache)), None
    fn = provider.make(point.shape)
    q, k, v = make_inputs(point.shape, point.dtype, device, point.mode != "fwd", provider.layout)
    call, grads = timed_call(fn, q, k, v, point.mode)
    call_once(call, grads)
    return call, grads


def call_once(call, grads) -> None:
    for t in grads or ():
        t.grad = None
    call()


def release_memory() -> None:
    """Return this process's cached GPU memory to the driver (before a child process needs it)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- Triton kernel resources ---------------------------------------------------------------------------


def _chain(kernel) -> list:
    """``kernel`` and every object under it: ``triton.autotune`` and ``triton.heuristics`` wrappers keep the one
    below as ``.fn``, down to the @triton.jit JITFunction (whose own ``.fn`` is the plain Python function)."""
    try:
        device.prepare_triton()
        from triton.runtime.jit import JITFunction
    except ImportError:  # pragma: no cover - Triton is a dependency
        JITFunction = ()
    chain, seen = [], set()
    while kernel is not None and id(kernel) not in seen and len(chain) < 16:
        seen.add(id(kernel))
        chain.append(kernel)
        if isinstance(kernel, JITFunction) or hasattr(kernel, "device_caches"):
            break
        kernel = getattr(kernel, "fn", None)
    return chain


def unwrap_jit(kernel):
    """The @triton.jit function under autotune / heuristics wrappers (each keeps the one below as ``.fn``)."""
    return _chain(kernel)[-1]


def _resolved(kernel):
    """A CompiledKernel, or None: an async compilation's future is taken once it is done, never waited for."""
    if hasattr(kernel, "metadata"):
        return kernel
    done = getattr(kernel, "done", None)
    if callable(done) and hasattr(kernel, "result"):
        try:
            return _resolved(kernel.result()) if done() else None
        except Exception:  # a compilation that failed
            return None
    return None


def _tables(obj) -> list[dict]:
    """The dicts of compiled kernels ``obj`` keeps: ``device_caches`` (Triton 3.x: per device a tuple
    ``(kernel_cache, kernel_key_cache, target, backend, binder)``, the first mapping a specialisation key to
    its CompiledKernel) or ``cache`` (older Triton: per device a dict key -> CompiledKernel)."""
    tables = []
    for attr in ("device_caches", "cache"):
        caches = getattr(obj, attr, None)
        if not isinstance(caches, dict):
            continue
        for entry in list(caches.values()):
            table = entry[0] if isinstance(entry, (tuple, list)) and entry else entry
            if isinstance(table, dict):
                tables.append(table)
    return tables


def compiled_kernels(kernel) -> list:
    """Every compiled variant of a kernel (a JITFunction, or autotune / heuristics wrappers around one) found in
    Triton's in-memory caches, whichever layout this Triton uses. The autotuner and the forced-config path
    both launch the same JITFunction, so its cache holds the variants of every config that ran."""
    found, seen = [], set()
    for obj in _chain(kernel):
        for table in _tables(obj):
            for value in list(table.values()):
                compiled = _resolved(value)  # skips an autotuner's Configs and compilations still under way
                if compiled is not None and id(compiled) not in seen:
                    seen.add(id(compiled))
                    found.append(compiled)
    return found


def _constants(compiled) -> dict:
    """The constexpr arguments a variant was compiled with, by name (Triton 3 keys them by (index,))."""
    src = getattr(compiled, "src", None)
    consts = getattr(src, "constants", None) or {}
    names = getattr(getattr(src, "fn", None), "arg_names", None) or []
    out = {}
    for key, value in consts.items():
        value = getattr(value, "value", value)  # a tl.constexpr
        if isinstance(key, tuple) and len(key) == 1 and isinstance(key[0], int) and key[0] < len(names):
            out[names[key[0]]] = value
        elif isinstance(key, str):
            out[key] = value
    return out


def _tiles(consts: dict) -> dict:
    return {k: v for k, v in consts.items() if k.startswith("BLOCK_") and isinstance(v, int)}


def _config_key(tiles: dict, warps, stages) -> tuple:
    return tuple(sorted(tiles.items())), warps, stages


def _matches(key: tuple, consts: dict, warps, stages) -> bool:
    """Whether a compiled variant is the config ``key``: same warps and stages, and every tile the config sets
    has the same value among the variant's constexprs. A subset test: the kernel is also compiled with tiles
    no config sets (fa2's ``BLOCK_D``, the padded head dim, passed by the launcher)."""
    tiles, k_warps, k_stages = key
    return k_warps == warps and k_stages == stages and all(consts.get(k) == v for k, v in tiles)


def _chosen(kernel) -> set[tuple]:
    """The configs an autotuner picked (its per-key cache and best_config), as comparable keys."""
    configs = []
    for obj in _chain(kernel)[:-1]:  # the wrappers; the JITFunction's own cache holds compiled kernels
        configs.extend(c for c in (getattr(obj, "cache", None) or {}).values() if hasattr(c, "kwargs"))
        best = getattr(obj, "best_config", None)
        if best is not None:
            configs.append(best)
    return {_config_key({k: v for k, v in c.kwargs.items() if k.startswith("BLOCK_")}, c.num_warps, c.num_stages)
            for c in configs if hasattr(c, "kwargs")}


_CONFIG = re.compile(r"((?:BLOCK_\w+=\d+\s+)+)w(\d+)\s+s(\d+)")


def config_keys(config: str | None) -> set[tuple]:
    """Configs named in a provider's config string (``"fwd: BLOCK_M=128 BLOCK_N=64 w4 s3 | ..."``), as keys
    comparable with compiled variants: launches that bypass the autotuner (forced configs) are found too."""
    keys = set()
    for match in _CONFIG.finditer(config or ""):
        tiles = {k: int(v) for k, v in re.findall(r"(BLOCK_\w+)=(\d+)", match.group(1))}
        keys.add(_config_key(tiles, int(match.group(2)), int(match.group(3))))
    return keys


def describe_compiled(compiled) -> dict:
    """Registers, spills, shared memory, warps, stages and tiles of one compiled variant. Triton sets
    ``n_regs`` and ``n_spills`` only when it loads the binary (``_init_handles``, on the first launch): a
    variant that was compiled but never launched is loaded here, which needs the driver."""
    if getattr(compiled, "n_regs", None) is None and hasattr(compiled, "_init_handles"):
        try:
            compiled._init_handles()
        except Exception:  # no driver, or a variant too large to load (OutOfResources)
            pass
    meta = compiled.metadata
    consts = _constants(compiled)
    tiles = _tiles(consts)
    return {
        "function": getattr(meta, "name", getattr(compiled, "name", "?")),
        "regs": getattr(compiled, "n_regs", None),
        "spills": getattr(compiled, "n_spills", None),
        "shared_bytes": getattr(meta, "shared", None),
        "warps": getattr(meta, "num_warps", None),
        "stages": getattr(meta, "num_stages", None),
        "tiles": " ".join(f"{k}={v}" for k, v in sorted(tiles.items())),
        "_consts": consts,
    }


def resources_of(kernels: dict, config: str | None = None) -> list[dict]:
    """One row per compiled variant of each kernel in ``{name: jit or autotuned kernel}``. ``chosen``: for an
    autotuned kernel, the variants of the configs it picked or that ``config`` (the provider's config string)
    names; for a kernel that is not autotuned, every variant."""
    named = config_keys(config)
    rows = []
    for name, kernel in kernels.items():
        autotuned = any(hasattr(obj, "configs") for obj in _chain(kernel)[:-1])
        picked = (_chosen(kernel) | named) if autotuned else set()
        for compiled in compiled_kernels(kernel):
            row = describe_compiled(compiled)
            consts = row.pop("_consts")
            chosen = any(_matches(key, consts, row["warps"], row["stages"]) for key in picked)
            rows.append({"kernel": name, **row, "autotuned": autotuned, "chosen": chosen if autotuned else True})
    return rows


def kernel_resources(provider: str, chosen_only: bool = True) -> list[dict]:
    """Resources of a Triton provider's compiled kernels (after it has run); [] for other providers."""
    if provider not in providers.triton_providers():
        return []
    module = providers.kernel_module(provider)
    rows = resources_of(module.TRITON_KERNELS, module.last_config())
    return [r for r in rows if r["chosen"]] if chosen_only else rows


# --- torch.profiler trace ------------------------------------------------------------------------------

_TRACE_KINDS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}


def kernel_table(trace_json: dict, calls: int) -> list[dict]:
    """GPU activity of a Chrome trace by name: kind, launches per call, total and mean time (us), share."""
    by_name: dict[tuple[str, str], list[float]] = {}
    for ev in trace_json.get("traceEvents", []):
        kind = _TRACE_KINDS.get(str(ev.get("cat", "")).lower())
        if kind is None or ev.get("ph") != "X":
            continue
        by_name.setdefault((kind, ev.get("name", "?")), []).append(float(ev.get("dur", 0.0)))
    total = sum(sum(d) for d in by_name.values()) or 1.0
    rows = [{"name": name, "kind": kind, "per_call": len(d) / calls, "total_us": sum(d),
             "mean_us": sum(d) / len(d), "share_pct": 100.0 * sum(d) / total}
            for (kind, name), d in by_name.items()]
    return sorted(rows, key=lambda r: -r["total_us"])


def trace(call, path: Path, calls: int = 5, grads=None) -> list[dict]:
    """Profile ``calls`` calls with torch.profiler, write the Chrome trace to ``path``, return its kernel table."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    call_once(call, grads)
    _synchronize()
    with profile(activities=activities) as prof:
        for i in range(calls):
            with record_function(f"fa2bench call {i}"):
                call_once(call, grads)
        _synchronize()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    return kernel_table(json.loads(path.read_text()), calls)
