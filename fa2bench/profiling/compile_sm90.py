"""Compile fa2's kernels for a GPU target without a GPU (Triton's bundled ptxas) and print each config's
registers, spills and shared memory: compile errors and register pressure found on the CPU machine, before any
device time is spent.

    python -m fa2bench.profiling.compile_sm90 --kernel fwd --headdim 128 --tma --configs 128x64w4s3,128x128w8s2
    python -m fa2bench.profiling.compile_sm90 --kernel bwd_dq --headdim 64 --causal --variants window,softcap,docs

Sequence lengths stay runtime ints in these kernels, so one compile per (kernel, switches, config) covers all.
``compile_gluon`` does the same for a Gluon kernel (``triton.experimental.gluon``, Triton >= 3.6), whose source
class differs, and ``sass`` disassembles a compiled kernel (to look for HGMMA or SETMAXNREG):

    python -m fa2bench.profiling.compile_sm90 --kernel fa3 --headdim 128 --causal
    python -m fa2bench.profiling.compile_sm90 --kernel fa3-bwd --headdim 128 --causal   # fa3's dK/dV and dQ kernels
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import warnings

os.environ.pop("TRITON_INTERPRET", None)
warnings.filterwarnings("ignore", message="triton was imported before fa2bench")

import triton  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fa2bench.kernels import flash2  # noqa: E402
from fa2bench.kernels.configs import block_d  # noqa: E402

POINTERS = {  # pointer arguments and their element types (fp16 inputs; statistics in fp32)
    "fwd": {"Q": "fp16", "K": "fp16", "V": "fp16", "LSE": "fp32", "LSUM": "fp32", "Out": "fp16"},
    "bwd_dkdv": {"Q": "fp16", "K": "fp16", "V": "fp16", "DO": "fp16", "DK": "fp16", "DV": "fp16", "LSE": "fp32",
                 "LSUM": "fp32", "Delta": "fp32"},
    "bwd_dq": {"Q": "fp16", "K": "fp16", "V": "fp16", "DO": "fp16", "DQ": "fp16", "LSE": "fp32", "LSUM": "fp32",
               "Delta": "fp32"},
}
VARIANTS = {  # fa2's variant switches (flash2.Mods), the runtime arguments each one uses and their types
    "window": ("WINDOW", {}),
    "softcap": ("SOFTCAP", {"softcap": "fp32"}),
    "alibi": ("ALIBI", {"ALIBI_SLOPES": "*fp32"}),
    "docs": ("DOCS", {"DOC_START": "*i32", "DOC_END": "*i32"}),
    "varlen": ("VARLEN", {"CU_SEQLENS_Q": "*i32", "CU_SEQLENS_K": "*i32", "BLOCKS_Q": "*i32", "BLOCKS_K": "*i32"}),
}
# what a launch passes for the arguments of switches that are off
UNUSED = {"softcap": 0.0, "ALIBI_SLOPES": None, "DOC_START": None, "DOC_END": None, "CU_SEQLENS_Q": None,
          "CU_SEQLENS_K": None, "BLOCKS_Q": None, "BLOCKS_K": None}


parse = flash2.tile_config  # '128x64w4s3' -> its triton.Config


def fa2_launch_ints(kernel: str, headdim: int, shape: tuple[int, ...], variants: tuple[str, ...] = ()) -> dict:
    """The int arguments a launch of fa2's ``kernel`` passes for ``shape`` = (batch, heads, kv heads, seqlen_q,
    seqlen_k) on contiguous (batch, heads, rows, head dim) tensors; the band (win_left, win_right) as the variants
    preset's: (4096, 0) with a window, (2 * seqlen_k, 0) with documents, (0, 0) without either."""
    batch, heads, kv_heads, n_q, n_k = shape
    rows = {"q": (heads, n_q), "o": (heads, n_q), "do": (heads, n_q), "dq": (heads, n_q),
            "k": (kv_heads, n_k), "v": (kv_heads, n_k), "dk": (kv_heads, n_k), "dv": (kv_heads, n_k)}
    left = 4096 if "window" in variants else 2 * n_k if "docs" in variants else 0
    ints = dict(H=heads, GROUP=heads // kv_heads, N_CTX_Q=n_q, N_CTX_K=n_k, N_CTX_Q_BUCKET=triton.next_power_of_2(n_q),
                N_CTX_K_BUCKET=triton.next_power_of_2(n_k), win_left=left, win_right=0)
    for name in flash2.JIT_KERNELS[kernel].arg_names:
        if name.startswith("stride_") and name[-1] in "zhmn":
            h, n = rows[name[len("stride_"):-1]]
            ints[name] = {"z": h * n * headdim, "h": n * headdim, "m": headdim, "n": headdim}[name[-1]]
    return {k: v for k, v in ints.items() if k in flash2.JIT_KERNELS[kernel].arg_names}


def compile_one(kernel: str, cfg: triton.Config, headdim: int, causal: bool, tma: bool, dtype: str = "fp16",
                capability: int = 90, variants: tuple[str, ...] = (), flat: bool | None = None,
                shape: tuple[int, ...] | None = None):
    """fa2's ``kernel`` at ``cfg`` compiled for sm_<capability>. Without ``shape`` every int is a plain i32 and no
    pointer is aligned; with it (batch, heads, kv heads, seqlen_q, seqlen_k), the build a launch of that shape makes
    (``launch_specialisation``: ints equal to 1 constant, multiples of 16 and the pointers marked divisible by 16),
    whose registers and spills are the GPU's."""
    fn = flash2.JIT_KERNELS[kernel]
    switches = {flag: name in variants for name, (flag, _) in VARIANTS.items()}
    if flat is None:  # as a launch decides it (flash2.flat_loops), the one-loop kernel or the three-stage loops
        flat = flash2.flat_switches(kernel, switches)
    used = {arg: t for name in variants for arg, t in VARIANTS[name][1].items()}
    consts = dict(HEAD_DIM=headdim, BLOCK_D=block_d(headdim), CAUSAL=causal, DEFER=True, SEQ_PAR=True, SKIP=True,
                  FLAT=flat, DOT_PRECISION="tf32", TMA=tma, **switches, **cfg.kwargs)
    consts.update({arg: value for arg, value in UNUSED.items() if arg not in used and value is None})
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}
    sig = {}
    for name in fn.arg_names:
        if name in used:
            sig[name] = used[name]
        elif name == "softcap":
            sig[name] = "fp32"
        elif name in consts:
            sig[name] = "constexpr"
        elif name in POINTERS[kernel]:
            t = POINTERS[kernel][name]
            sig[name] = "*" + (dtype if t == "fp16" else t)
        elif name == "sm_scale":
            sig[name] = "fp32"
        elif name.startswith("stride_") and name[-1] in "kd":  # the head dim's stride: 1 (TMA needs it)
            sig[name] = "constexpr"
            consts[name] = 1
        else:
            sig[name] = "i32"
    attrs = {}
    if shape is not None:
        pointers = tuple(name for name, t in sig.items() if t.startswith("*"))
        fixed, attrs = launch_specialisation(fn, fa2_launch_ints(kernel, headdim, shape, variants), pointers)
        for name, value in fixed.items():
            sig[name], consts[name] = "constexpr", value
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                    attrs={(fn.arg_names.index(k),): BaseBackend.parse_attr(v) for k, v in attrs.items()})
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages))


def compile_gluon(fn, signature: dict, constexprs: dict, num_warps: int, capability: int = 90,
                  attrs: dict | None = None, **options):
    """Compile the Gluon kernel ``fn`` for ``sm_<capability>``: ``signature`` maps each runtime argument to its
    Triton type string (``"*fp16"``, ``"i32"``, ``"tensordesc<fp16[128, 64],NVMMASharedLayout(...)>"``),
    ``constexprs`` maps the compile-time arguments to their values, ``attrs`` (optional) runtime arguments to
    their specialisation string (``"D"``: divisible by 16), as ``launch_specialisation`` gives them."""
    from triton.experimental.gluon._runtime import GluonASTSource
    sig = {name: ("constexpr" if name in constexprs else signature[name]) for name in fn.arg_names}
    src = GluonASTSource(fn=fn, signature=sig,
                         constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
                         attrs={(fn.arg_names.index(k),): BaseBackend.parse_attr(v) for k, v in (attrs or {}).items()})
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=dict(num_warps=num_warps, **options))


def launch_specialisation(fn, ints: dict, pointers: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """What a launch of ``fn`` compiles for these runtime int values, by Triton's own rule (``native_specialize_impl``
    with the kernel's ``do_not_specialize`` flags, as the JIT calls it): an int equal to 1 becomes the constant 1,
    one divisible by 16 gets ``tt.divisibility = 16``; torch's pointers are 16-byte aligned (also ``"D"``). Returns
    (constexprs, attrs) for ``compile_gluon``. A kernel compiled without this is the launch's only where every int
    is > 1 and not a multiple of 16: fa3-overlap's seqlen_q = 1 kernel crashed ptxas on the H200."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    params = {p.name: p for p in fn.params}
    constexprs, attrs = {}, {name: "D" for name in pointers}
    for name, value in ints.items():
        kind, attr = native_specialize_impl(CUDABackend, value, False, not params[name].do_not_specialize,
                                            not params[name].do_not_specialize_on_alignment)
        if kind == "constexpr":
            constexprs[name] = value
        elif attr:
            attrs[name] = attr
    return constexprs, attrs


def cuobjdump(kernel, option: str) -> str:
    """The bundled cuobjdump's output for a compiled kernel's cubin (``option``: ``--dump-sass``, ...)."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([tool, option, f.name], capture_output=True, text=True).stdout


def sass(kernel) -> str:
    """The SASS of a compiled kernel, from the bundled cuobjdump."""
    return cuobjdump(kernel, "--dump-sass")


def fa3_launch_ints(batch: int, heads: int, kv_heads: int, seqlen_q: int, seqlen_k: int, headdim: int = 128,
                    causal: bool = False, sms: int = 132, l2_bytes: int = 60 * 2**20, rung: int = 8,
                    consumers: int | None = None) -> dict:
    """The runtime ints fa3_forward passes rung ``rung``'s forward kernel for this shape (``fa3.launch_ints``; an
    H200's SM count and L2 unless told)."""
    from fa2bench.kernels import fa3

    return fa3.launch_ints(batch, heads, heads // kv_heads, seqlen_q, seqlen_k, headdim, causal, sms, l2_bytes,
                           rung=rung, consumers=consumers)


def compile_fa3(headdim: int, causal: bool, dtype: str = "fp16", capability: int = 90, rung: int = 8,
                shape: tuple[int, ...] | None = None, consumers: int | None = None, o_tma: bool | None = None):
    """Rung ``rung``'s Gluon forward (kernels/fa3.py: 8, 9 ping-pong, 10 overlap) for ``sm_<capability>`` at its
    tiles for ``headdim``; with ``shape`` (batch, heads, kv_heads, seqlen_q, seqlen_k) specialised as a launch of
    that shape would be (``launch_specialisation``), else with every int a plain i32; ``consumers`` overrides
    rungs 9/10's consumer warpgroups (``fa3.tiles``), ``o_tma`` rung 9's epilogue (``fa3.O_TMA``)."""
    import torch

    from fa2bench.kernels import fa3

    # the tiles a launch of this shape takes (seqlen_q is the shape's 4th): its consumer count for the two below
    cfg = fa3.tiles(headdim, rung, consumers, causal, shape[3] if shape is not None else 0)
    consumers = cfg["CONSUMERS"]
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]

    def desc(rows: int) -> str:
        return f"tensordesc<{dtype}[1, {rows}, {headdim}],{fa3.smem_layout([1, rows, headdim], torch_dtype)!r}>"

    sig = dict(q_desc=desc(cfg["Q_ROWS"]), k_desc=desc(cfg["BLOCK_N"]), v_desc=desc(cfg["BLOCK_N"]),
               **({"o_desc": desc(cfg["Q_ROWS"])} if rung > 8 else {}), O="*" + dtype, LSE="*fp32",
               qk_scale="fp32", H="i32", GROUP="i32", N_CTX_Q="i32", N_CTX_K="i32", n_tiles="i32", BAND="i32",
               **({"FUSE": "i32"} if rung > 8 else {}))
    fn, consts = fa3.forward_kernel(rung, headdim, causal, consumers, o_tma)
    ints, attrs = {}, {}
    if shape is not None:
        ints, attrs = launch_specialisation(fn, fa3_launch_ints(*shape, headdim, causal, rung=rung,
                                                                   consumers=consumers), pointers=("O", "LSE"))
    return compile_gluon(fn, sig, {**consts, **ints}, consts["num_warps"], capability, attrs=attrs)


def compile_fa3_bwd(headdim: int, causal: bool, dtype: str = "fp16", capability: int = 90, kernel: str = "bwd_dkdv",
                    atomic_dq: bool = False, tma_dq: bool = False, block_m: int | None = None,
                    pipeline: bool | None = None, shape: tuple[int, ...] | None = None, dq_first: bool | None = None):
    """fa3's Gluon backward kernel ``kernel`` (kernels/fa3_bwd.py: ``bwd_dkdv`` or ``bwd_dq``) for
    ``sm_<capability>`` at its tiles; ``atomic_dq``: the dK/dV kernel that also adds dQ with fp32 atomics;
    ``tma_dq``: that kernel adding dQ by TMA reduce-adds instead (fa3_bwd.DQ_ATOMICS "tma"); ``block_m``: the dK/dV
    kernel's query rows per step (default ``fa3_bwd.DKDV_BLOCK_M``); ``pipeline``: its TMA-dQ steps overlapped
    (default ``fa3_bwd.DKDV_PIPELINE``); ``dq_first``: its TMA-dQ steps with dQ's wgmma before dK's (default
    ``fa3_bwd.DKDV_DQ_FIRST``); ``shape`` (batch, heads, kv_heads, seqlen_q, seqlen_k): specialised as a
    launch of that shape would be (``launch_specialisation``), else every int a plain i32 and no pointer aligned."""
    from triton.experimental.gluon import language as gl

    import torch

    from fa2bench.kernels import fa3, fa3_bwd

    cfg = fa3_bwd.tiles(headdim, causal, block_m, pipeline, tma_dq, dq_first)
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]

    def desc(rows: int) -> str:
        return f"tensordesc<{dtype}[1, {rows}, {headdim}],{fa3.smem_layout([1, rows, headdim], torch_dtype)!r}>"

    if kernel == "bwd_dkdv":
        q_rows, k_rows, stages = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["STAGES"]
        dq_block = [1, q_rows, headdim]
        dq_desc = (f"tensordesc<fp32{dq_block},{gl.NVMMASharedLayout.get_default_for(dq_block, gl.float32)!r}>"
                   if tma_dq else desc(q_rows))  # the fp32 dQ's tiles (unused without tma_dq)
        out = dict(DK="*" + dtype, DV="*" + dtype, DQ="*fp32", dq_desc=dq_desc)
        consts = dict(ATOMIC_DQ=atomic_dq or tma_dq, DQ_TMA=tma_dq, LEAN_STATS=cfg["LEAN_STATS"],
                      PIPELINE=cfg["PIPELINE"] and tma_dq, DQ_FIRST=cfg["DQ_FIRST"])  # tiles: dQ first only with tma_dq
    else:
        q_rows, k_rows, stages = cfg["DQ_BLOCK_M"], cfg["DQ_BLOCK_N"], cfg["DQ_STAGES"]
        out, consts = dict(DQ="*" + dtype), {}
    sig = dict(q_desc=desc(q_rows), do_desc=desc(q_rows), k_desc=desc(k_rows), v_desc=desc(k_rows),
               LSE="*fp32", Delta="*fp32", sm_scale="fp32", qk_scale="fp32", H="i32", GROUP="i32", N_CTX_Q="i32",
               N_CTX_K="i32", **out)
    fn = fa3_bwd.TRITON_KERNELS[kernel]
    ints, attrs = {}, {}
    if shape is not None:
        batch, heads, kv_heads, seqlen_q, seqlen_k = shape
        pointers = tuple(name for name in sig if sig[name].startswith("*"))
        ints, attrs = launch_specialisation(fn, dict(H=heads, GROUP=heads // kv_heads, N_CTX_Q=seqlen_q,
                                                     N_CTX_K=seqlen_k), pointers=pointers)
    return compile_gluon(fn, sig, dict(CAUSAL=causal, STAGES=stages, num_warps=fa3_bwd.CONSUMER_WARPS, **consts,
                                       **ints), fa3_bwd.CONSUMER_WARPS, capability, attrs=attrs)


def resources(kernel) -> str:
    """Registers, spill stores and shared memory of a compiled kernel, from cuobjdump on its cubin."""
    out = cuobjdump(kernel, "--dump-resource-usage")
    regs = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return (f"regs {regs.group(1) if regs else '?'} stack {stack.group(1) if stack else '?'} "
            f"smem {kernel.metadata.shared}")


def root_cause(exc: BaseException) -> str:
    """The innermost exception of a chain (Triton wraps a failure once per nested @jit call), as one line."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="fwd", choices=[*flash2.JIT_KERNELS, "fa3", "fa3-bwd"],
                    help="fa3-bwd: fa3's two Gluon backward kernels (dK/dV, dQ), one line each")
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--tma", action="store_true")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--rung", type=int, default=8, choices=(8, 9, 10), help="fa3's rung (--kernel fa3)")
    ap.add_argument("--shape", default="", help="BATCH,HEADS,KV_HEADS,SEQLEN_Q,SEQLEN_K: compile the kernel a launch "
                    "of this shape compiles (ints equal to 1 constant, multiples of 16 marked; fa2: contiguous "
                    "tensors, the variants preset's band)")
    ap.add_argument("--atomic-dq", action="store_true",
                    help="--kernel fa3-bwd: the dK/dV kernel that adds dQ with fp32 atomics (no dQ kernel)")
    ap.add_argument("--tma-dq", action="store_true",
                    help="--kernel fa3-bwd: the dK/dV kernel that adds dQ by TMA reduce-adds (no dQ kernel)")
    ap.add_argument("--block-m", type=int, help="--kernel fa3-bwd: the dK/dV kernel's query rows per step "
                    "(default: fa3_bwd.DKDV_BLOCK_M)")
    ap.add_argument("--pipeline", action=argparse.BooleanOptionalAction,
                    help="--kernel fa3-bwd --tma-dq: the dK/dV steps overlapped, or not "
                    "(default: fa3_bwd.DKDV_PIPELINE)")
    ap.add_argument("--dq-first", action=argparse.BooleanOptionalAction,
                    help="--kernel fa3-bwd --tma-dq: the dK/dV steps with dQ's wgmma before dK's, or not "
                    "(default: fa3_bwd.DKDV_DQ_FIRST)")
    ap.add_argument("--o-tma", action=argparse.BooleanOptionalAction,
                    help="--kernel fa3 --rung 9: O written through shared memory and TMA copies, or by pointer "
                    "stores (default: fa3.O_TMA)")
    ap.add_argument("--configs", default="", help="comma list like 128x64w4s3; default: the candidate list")
    ap.add_argument("--variants", default="", help=f"fa2's variant switches to turn on, comma list of {list(VARIANTS)}")
    ap.add_argument("--flat", action=argparse.BooleanOptionalAction,
                    help="fa2's one-loop kernel (FLAT) or the three-stage loops (default: as a launch decides, "
                    "flash2.flat_switches: one loop for windows, documents and packed batches, but some backward "
                    "kernels of a window)")
    a = ap.parse_args()
    variants = tuple(v for v in a.variants.split(",") if v)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    shape = tuple(int(x) for x in a.shape.split(",")) if a.shape else None
    if a.kernel == "fa3-bwd":  # two Gluon kernels (one with --atomic-dq), tiles fixed
        steps = ({True: " pipelined", False: " not pipelined", None: ""}[a.pipeline]
                 + {True: " dq-first", False: " not dq-first", None: ""}[a.dq_first])
        for kernel in ("bwd_dkdv",) if a.atomic_dq or a.tma_dq else ("bwd_dkdv", "bwd_dq"):
            name = (f"fa3 {kernel} d{a.headdim} {a.dtype}{' causal' if a.causal else ''}{' atomic-dq' * a.atomic_dq}"
                    f"{' tma-dq' * a.tma_dq}{f' block-m {a.block_m}' * bool(a.block_m)}{steps}"
                    f"{f' shape {a.shape}' * bool(shape)}")
            try:
                k = compile_fa3_bwd(a.headdim, a.causal, a.dtype, kernel=kernel, atomic_dq=a.atomic_dq,
                                    tma_dq=a.tma_dq, block_m=a.block_m, pipeline=a.pipeline, shape=shape,
                                    dq_first=a.dq_first)
                units = sorted(set(re.findall(r"\b(HGMMA|REDG|USETMAXREG|UTMALDG|UTMAREDG)", sass(k))))
                print(f"{name}: {resources(k)} sass {','.join(units)}", flush=True)
            except Exception as exc:
                print(f"{name}: FAILED {root_cause(exc)}", flush=True)
        return
    if a.kernel == "fa3":  # one Gluon kernel, its tiles fixed per head dim
        name = (f"fa3 rung {a.rung} d{a.headdim} {a.dtype}{' causal' if a.causal else ''}"
                f"{f' shape {a.shape}' * bool(shape)}{' o-tma' * bool(a.o_tma)}")
        try:
            k = compile_fa3(a.headdim, a.causal, a.dtype, rung=a.rung, shape=shape, o_tma=a.o_tma)
            units = sorted(set(re.findall(r"\b(HGMMA|USETMAXREG|UTMALDG|UTMASTG)", sass(k))))
            print(f"{name}: {resources(k)} sass {','.join(units)}", flush=True)
        except Exception as exc:
            print(f"{name}: FAILED {root_cause(exc)}", flush=True)
        return
    cfgs = [parse(c) for c in a.configs.split(",") if c] or flash2._CANDIDATES[a.kernel]
    for cfg in cfgs:
        name = f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']}w{cfg.num_warps}s{cfg.num_stages}"
        try:
            k = compile_one(a.kernel, cfg, a.headdim, a.causal, a.tma, a.dtype, variants=variants, flat=a.flat,
                            shape=shape)
            flat = {True: " flat", False: " staged", None: ""}[a.flat]
            print(f"{a.kernel} d{a.headdim} {name} {'+'.join(variants) or 'dense'}{flat}"
                  f"{f' shape {a.shape}' * bool(shape)}: {resources(k)}", flush=True)
        except Exception as exc:
            print(f"{a.kernel} d{a.headdim} {name}: FAILED {root_cause(exc)}", flush=True)


if __name__ == "__main__":
    main()
