"""Compile kernels/decode.py's split kernel for sm_90 on the CPU and count, in its TTGIR, the asynchronous copies
(cp.async: ``ttg.async_copy_global_to_local``) and waits the software pipeliner put in, plus registers, spills and
shared memory: whether the paged path's K/V loads are multi-buffered like the contiguous path's.

    PYTHONPATH=. /work/venv36/bin/python tools/decode_ttgir.py --page 0,64 --block-n 64,128 --stages 2,3

``--stages`` are the plan's K/V stages, Triton's ``num_stages`` on either layout. Each line gives, per K/V loop,
(async copies, async waits, synchronous tt.loads), the K/V buffers Triton allocated, and how many block-table
entries each step loads (one for a block inside one page, one per key row for a block spanning pages).
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import warnings

os.environ.pop("TRITON_INTERPRET", None)
warnings.filterwarnings("ignore", message="triton was imported before fa2bench")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fa2bench.kernels import decode  # noqa: E402
from fa2bench.profiling.compile_sm90 import resources  # noqa: E402

PTRS = {"Q": "dt", "K": "dt", "V": "dt", "KD": "dt", "VD": "dt", "Out": "dt", "OPart": "fp32", "LsePart": "fp32",
        "SeqlensK": "i32", "BlockTable": "i32"}


def compile_decode(page: int, block_n: int, stages: int, warps: int = 4, block_m: int = 16, group: int = 4,
                   split: bool = True, causal: bool = True, dtype: str = "bf16", headdim: int = 128):
    fn = decode._decode_kernel
    consts = dict(GROUP=group, CAUSAL=causal, PAGED=page > 0, PAGE_SIZE=page or 1, SPLIT=split, TMA=False,
                  HEAD_DIM=headdim, BLOCK_D=headdim, BLOCK_M=block_m, BLOCK_N=block_n, DOT_PRECISION="ieee")
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in PTRS:
            sig[name] = "*" + (dtype if PTRS[name] == "dt" else PTRS[name])
        elif name == "qk_scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    # what a real launch specialises: 16-byte-aligned pointers and strides divisible by 16 (d128 caches, tables of
    # a multiple of 16 pages); without these hints Triton cannot vectorise the loads nor use cp.async at all
    aligned = [i for i, n in enumerate(fn.arg_names) if n not in consts and (n in PTRS or n.startswith("stride_"))]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def loop_stats(ttgir: str) -> list[dict]:
    """Per scf.for in the TTGIR: async copies, commit groups and waits inside it, plain global loads, and the
    block-table entries those loads read per step (``table_ids``: 1 for a block inside one page)."""
    out = []
    lines = ttgir.splitlines()
    for i, line in enumerate(lines):
        if "scf.for" not in line:
            continue
        depth, body = 0, []
        for ln in lines[i:]:
            depth += ln.count("{") - ln.count("}")
            body.append(ln)
            if depth <= 0 and len(body) > 1:
                break
        text = "\n".join(body)
        ids = sum(int(n or 1) for n in re.findall(r"= tt\.load [^\n]*?: (?:tensor<(\d+)x)?!tt\.ptr<i32>", text))
        out.append(dict(line=i, async_copy=text.count("ttg.async_copy_global_to_local"),
                        async_wait=text.count("ttg.async_wait"), tt_load=len(re.findall(r"= tt\.load ", text)),
                        table_ids=ids, local_alloc=text.count("ttg.local_alloc")))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--page", default="0,64", help="page sizes (0: contiguous)")
    ap.add_argument("--block-n", default="64,128")
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--block-m", type=int, default=16)
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--dump", help="write each TTGIR and PTX under this folder")
    a = ap.parse_args()
    for page, bn, st in itertools.product(*(map(int, s.split(",")) for s in (a.page, a.block_n, a.stages))):
        try:
            k = compile_decode(page, bn, st, a.warps, a.block_m, dtype=a.dtype, headdim=a.headdim)
        except Exception as e:  # noqa: BLE001
            print(f"page={page:<3} BLOCK_N={bn:<3} s{st}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        ttgir = k.asm["ttgir"]
        loops = loop_stats(ttgir)
        bufs = sorted(set(re.findall(r"%[kv]_\d+ = ttg.local_alloc : \(\) -> !ttg.memdesc<(\d+)x", ttgir)))
        print(f"page={page:<3} BLOCK_N={bn:<3} s{st} w{a.warps} d{a.headdim}: {resources(k)} "
              f"K/V buffers {','.join(bufs)} "
              f"loops={[(l['async_copy'], l['async_wait'], l['tt_load']) for l in loops]} "
              f"table ids per step {','.join(str(l['table_ids']) for l in loops)}")
        if a.dump:
            os.makedirs(a.dump, exist_ok=True)
            stem = f"{a.dump}/p{page}_n{bn}_ns{st}"
            open(stem + ".ttgir", "w").write(ttgir)
            open(stem + ".ptx", "w").write(k.asm["ptx"])


if __name__ == "__main__":
    main()
