"""What the compiled kernels are, without a GPU: each build's registers, spill stack and shared memory and the
count of each SASS opcode (HGMMA, MUFU, LDL, STL, BAR, PRMT, ...) and the length of each step loop (the innermost
loops that run exponentials, in instructions), compiled for sm_90 with Triton's bundled ptxas
(``fa2bench.profiling.compile_sm90``), written to a JSON file; with ``--against`` an earlier file, what changed.
Run it before and after a change that should not change the compiled code (a refactor), in a Triton 3.6 venv to
match the GPU image:

    python tools/kernel_fingerprint.py /tmp/before.json                         # at the old commit
    python tools/kernel_fingerprint.py /tmp/after.json --against /tmp/before.json

Builds: fa3's forward (rungs 8, 9, 10; d64, d128; causal both; rung 9's three-consumer causal tile), fa3's two
backward kernels (d64, d128, causal both), each as a launch of the paper's shape at ``--seqlen`` compiles it (16k
tokens, hidden 2048: ints equal to 1 constant, multiples of 16 and pointers marked divisible by 16, so the output
stores are as wide as the GPU's; ``--seqlen 0``: every int a plain i32 and no pointer aligned, the builds before
2026-12-05), and fa2's three kernels at d64 and d128, causal both, dense and with each variant switch, at one
config each (``--fa2-configs all``: every autotune candidate; about 9x longer), each as a launch builds it: the
one-loop kernel for windows, documents and packed batches, except the backward kernels ``flash2.flat_switches``
keeps staged (a window's dQ kernel where documents or packing do not cut it; both backward kernels of a window with
softcap); files written before 2026-12-05 hold the three-stage loops there.
A Gluon kernel's SASS is also compared byte for byte (its sha1). A Triton kernel's is not: its instruction
schedule moves with its source lines (the same kernel with a comment line added above it compiled to another
schedule, same registers, stack and opcode counts), so for fa2 the resources and counts are the check.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fa2bench.profiling import compile_sm90 as c  # noqa: E402  (before fa2bench.kernels: no interpreter)
from fa2bench.core.presets import paper_shape  # noqa: E402
from fa2bench.profiling.sass import step_loops  # noqa: E402

OPCODE = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_]*)", re.M)
FA2_VARIANTS = ((), ("window", "softcap"), ("alibi",), ("docs",), ("varlen",))


def fingerprint(kernel, gluon: bool) -> dict:
    text = c.sass(kernel)
    regs, stack, smem = re.findall(r"regs (\S+) stack (\S+) smem (\S+)", c.resources(kernel))[0]
    body = "\n".join(line for line in text.splitlines() if "Function :" not in line and ".text." not in line)
    return dict(regs=regs, stack=stack, smem=smem, ops=dict(sorted(collections.Counter(OPCODE.findall(text)).items())),
                loops=sorted(len(loop) for loop in step_loops(text)),
                sha1=hashlib.sha1(body.encode()).hexdigest()[:16] if gluon else None)


def builds(groups: set[str], fa2_configs: str, seqlen: int):
    """(name, thunk that compiles it, is Gluon) for each build of the groups."""
    if "fa3" in groups:
        for rung in (8, 9, 10):
            for d in (64, 128):
                for causal in (False, True):
                    yield (f"fa3 r{rung} d{d}{' causal' * causal}",
                           lambda rung=rung, d=d, causal=causal:
                           c.compile_fa3(d, causal, rung=rung, shape=paper_shape(d, seqlen)), True)
        yield ("fa3 r9 d64 causal 3 consumers",
               lambda: c.compile_fa3(64, True, rung=9, consumers=3, shape=paper_shape(64, seqlen)), True)
    if "fa3-bwd" in groups:
        for d in (64, 128):
            for causal in (False, True):
                yield (f"fa3 dkdv d{d}{' causal' * causal}",
                       lambda d=d, causal=causal: c.compile_fa3_bwd(d, causal, tma_dq=True,
                                                                    shape=paper_shape(d, seqlen)), True)
                yield (f"fa3 dq d{d}{' causal' * causal}",
                       lambda d=d, causal=causal: c.compile_fa3_bwd(d, causal, kernel="bwd_dq",
                                                                    shape=paper_shape(d, seqlen)), True)
    if "fa2" in groups:
        from fa2bench.kernels import flash2

        for kernel, configs in flash2._CANDIDATES.items():
            for cfg in configs if fa2_configs == "all" else configs[:1]:
                tile = f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']}w{cfg.num_warps}s{cfg.num_stages}"
                for d in (64, 128):
                    for variants in FA2_VARIANTS:
                        for causal in (False, True):
                            yield (f"fa2 {kernel} {tile} d{d} {'+'.join(variants) or 'dense'}{' causal' * causal}",
                                   lambda kernel=kernel, cfg=cfg, d=d, causal=causal, variants=variants:
                                   c.compile_one(kernel, cfg, d, causal, False, variants=variants), False)


def differences(old: dict, new: dict) -> list[str]:
    lines = [f"only before: {name}" for name in old if name not in new]
    lines += [f"only after: {name}" for name in new if name not in old]
    for name in (n for n in new if n in old):
        a, b = old[name], new[name]
        changed = [f"{key} {a.get(key)} -> {b.get(key)}" for key in ("regs", "stack", "smem", "loops")
                   if a.get(key) != b.get(key)]
        ops = sorted(set(a["ops"]) | set(b["ops"]))
        changed += [f"{op} {a['ops'].get(op, 0)} -> {b['ops'].get(op, 0)}" for op in ops
                    if a["ops"].get(op, 0) != b["ops"].get(op, 0)]
        if a["sha1"] != b["sha1"] and not changed:
            changed.append("same counts, other SASS")
        if changed:
            lines.append(f"{name}: " + ", ".join(changed))
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--groups", default="fa3,fa3-bwd,fa2", help="any of fa3, fa3-bwd, fa2")
    ap.add_argument("--fa2-configs", choices=("first", "all"), default="first")
    ap.add_argument("--seqlen", type=int, default=2048, help="fa3's builds as a launch of the paper's shape at this "
                    "length compiles them; 0: plain ints, no pointer aligned")
    ap.add_argument("--against", type=Path, help="an earlier file: print what changed")
    a = ap.parse_args(argv)
    result = {}
    for name, build, gluon in builds(set(a.groups.split(",")), a.fa2_configs, a.seqlen):
        try:
            result[name] = fingerprint(build(), gluon)
        except Exception as exc:  # a build that fails is part of the picture
            result[name] = dict(regs="-", stack="-", smem="-", ops={}, loops=[], sha1=None, error=c.root_cause(exc))
        print(name, {k: v for k, v in result[name].items() if k != "ops"}, flush=True)
    a.out.write_text(json.dumps(result, indent=1))
    if a.against:
        lines = differences(json.loads(a.against.read_text()), result)
        print("\n".join(lines) if lines else f"no difference from {a.against} in {len(result)} builds")


if __name__ == "__main__":
    main()
