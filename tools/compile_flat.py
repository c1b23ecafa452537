"""Compile fa2's kernels for sm_90 with the one-loop switch FLAT off and on (the CPU, no GPU): registers,
spill stack and shared memory side by side, per config and variant set.

    python tools/compile_flat.py --kernel bwd_dkdv --variants docs --configs 64x128w8s2,64x128w8s3

``fa2bench.profiling.compile_sm90`` does not pass FLAT (it would compile it as a runtime int, i.e. both loops in one
kernel); this passes it as a compile-time constant through the config's kwargs, as a launch does.
"""
from __future__ import annotations

import argparse

import triton

from fa2bench.profiling import compile_sm90 as c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", default="bwd_dkdv", choices=["fwd", "bwd_dkdv", "bwd_dq"])
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--full", action="store_true", help="not causal")
    ap.add_argument("--tma", action="store_true")
    ap.add_argument("--variants", default="docs")
    ap.add_argument("--configs", default="64x128w8s2")
    a = ap.parse_args()
    variants = tuple(v for v in a.variants.split(",") if v)
    for spec in a.configs.split(","):
        base = c.parse(spec)
        for flat in (False, True):
            cfg = triton.Config({**base.kwargs, "FLAT": flat}, num_warps=base.num_warps, num_stages=base.num_stages)
            name = f"{a.kernel} d{a.headdim} {spec} {'+'.join(variants) or 'dense'} FLAT={int(flat)}"
            try:
                k = c.compile_one(a.kernel, cfg, a.headdim, not a.full, a.tma, a.dtype, variants=variants)
                print(f"{name}: {c.resources(k)}", flush=True)
            except Exception as exc:  # noqa: BLE001 (one line per failed compile)
                print(f"{name}: FAILED {c.root_cause(exc)}", flush=True)


if __name__ == "__main__":
    main()
