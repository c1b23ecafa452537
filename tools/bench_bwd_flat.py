"""Time fa2's forward and backward with the one-loop kernels off and on (FA2_FWD_FLAT and FA2_BWD_FLAT = 0 / 1 / all)
in one process, per variant: the A/B for the flat forward, dK/dV and dQ loops (kernels/flash2.py, ``flat_loops``), on
the same inputs and tiles.

    python tools/bench_bwd_flat.py                      # bf16, d128, batch 4 x 16 heads / 8 KV heads, 8k, causal
    python tools/bench_bwd_flat.py --seqlen 32768 --batch 1 --autotune

Tiles are forced to the autotuner's picks in results/h200-variants-2 (dK/dV 64x128 w8 s2, dQ 128x64 w8 s3) unless
``--autotune``, so both modes run the same tiles and no time goes to tuning; ``--tiles bwd_dkdv=64x128w8s3`` (comma-
separated, per kernel: fwd, bwd_dkdv, bwd_dq) forces others. Prints one line per (variant, mode): median forward ms,
median backward ms (dK/dV + dQ + Delta, from autograd.grad), and speed against the first mode (columns ``*_vs_first``;
the runs up to results/h100-dq-hybrid named them ``*_vs_0``; since session 33 also round by round, ``*_by_round``:
two calls' A/Bs disagreed there, and the rounds show a run's own spread); with ``--out DIR`` the same rows go to
``bench_bwd_flat.csv`` there, beside a tool-written meta.json (GPU, versions, commit), so the numbers are a results
run rather than a console log. ``--modes 0,1,1/dq0`` times other modes (``/dqD`` sets FA2_DQ_FLAT, the dQ kernel's own
switch; ``--dq-mode D`` sets it in every mode; ``1+s`` runs the dQ kernel on a second stream beside the dK/dV
kernel, FA2_BWD_STREAMS=1). ``--rounds R`` times the modes R times, each round's order rotated by
one, and keeps each mode's median: a kernel that heats the card at its power cap reads slower when timed later
(docs/variants.md section 4), and rotation gives every mode every position.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from fa2bench.core import variants as V
from fa2bench.kernels import flash2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="dense,window4096,docs,window4096+softcap50")
    ap.add_argument("--seqlen", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--autotune", action="store_true", help="let each mode autotune instead of forcing the tiles")
    ap.add_argument("--modes", default="0,1,all", help="the modes to time, the first the baseline: F sets "
                    "FA2_FWD_FLAT and FA2_BWD_FLAT to F, F/dqD also FA2_DQ_FLAT to D (e.g. 0,1,1/dq0)")
    ap.add_argument("--rounds", type=int, default=1, help="time the modes this many times, each round in the "
                    "order rotated by one (0, 1, all; 1, all, 0; ...), and keep each mode's median over the rounds")
    ap.add_argument("--tiles", default="", help="forced tiles per kernel, e.g. bwd_dkdv=64x128w8s3,bwd_dq=128x64w8s2 "
                    "(the others keep the defaults)")
    ap.add_argument("--dq-mode", choices=["0", "1", "all"], help="hold the dQ kernel's loop (FA2_DQ_FLAT) at this "
                    "mode in every mode that does not set it")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, help="a folder for the rows (CSV) and meta.json")
    a = ap.parse_args()
    rows = []
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    envs = {mode: mode_env(mode, a.dq_mode) for mode in modes}
    base, last = modes[0], modes[-1]
    caller = {key: os.environ.get(key) for key in envs[base]}  # the switches as the caller set them
    if a.out:
        from fa2bench.run.results import write_meta
        from fa2bench.run.runner import environment_meta

        a.out.mkdir(parents=True, exist_ok=True)
        write_meta(a.out, {**environment_meta(a.device), "study": "fa2 one-loop (FLAT) kernels off and on, per variant",
                           "args": {k: str(v) for k, v in vars(a).items()}})
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    dev = a.device

    def forced():
        if a.autotune:
            return contextlib.nullcontext()
        return flash2.forced_configs(**{kernel: tile_config(t) for kernel, t in tiles.items()})
    tiles = dict(fwd="128x64w4s3", bwd_dkdv="64x128w8s2", bwd_dq="128x64w8s3")
    for item in filter(None, a.tiles.split(",")):
        kernel, _, tile = item.partition("=")
        if kernel not in tiles:
            raise SystemExit(f"--tiles: {item!r} names no kernel; use {', '.join(tiles)}=BLOCK_MxBLOCK_NwWARPSsSTAGES")
        tile_config(tile)  # one clear line for a malformed tile, before any GPU work
        tiles[kernel] = tile
    torch.manual_seed(0)
    shape = (a.batch, a.heads, a.kv_heads, a.seqlen, a.headdim)
    print(f"shape (batch, heads, kv heads, seqlen, d) {shape} {a.dtype} causal; tiles "
          f"{'autotuned' if a.autotune else f'forced {tiles}'}"
          f"{f'; dQ held at FA2_DQ_FLAT={a.dq_mode}' if a.dq_mode else ''}; modes {modes}", flush=True)
    for name in a.variants.split(","):
        variant = V.parse(name)
        kwargs = V.kernel_kwargs(variant, a.batch, a.heads, a.seqlen, dev)
        q = torch.randn(a.batch, a.heads, a.seqlen, a.headdim, device=dev, dtype=dtype, requires_grad=True)
        k, v = (torch.randn(a.batch, a.kv_heads, a.seqlen, a.headdim, device=dev, dtype=dtype, requires_grad=True)
                for _ in range(2))
        with forced():
            o = flash2.flash2_attention(q, k, v, True, **kwargs)
        do = torch.randn_like(o)
        outs, grads = {}, {}
        for mode in modes:  # outputs and gradients, and each mode's autotuning, before any timing
            os.environ.update(envs[mode])
            with forced():
                outs[mode] = flash2.flash2_attention(q, k, v, True, **kwargs).detach()
                grads[mode] = torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
        samples = {mode: ([], []) for mode in modes}  # (forward ms, backward ms) per round
        for r in range(a.rounds):
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                os.environ.update(envs[mode])
                with forced():
                    samples[mode][0].append(do_bench(lambda: flash2.flash2_attention(q, k, v, True, **kwargs),
                                                     warmup=100, rep=1000, return_mode="median"))
                    samples[mode][1].append(do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
                                                     warmup=100, rep=1000, return_mode="median"))
        restore(caller)
        fwd = {mode: statistics.median(f) for mode, (f, _) in samples.items()}
        times = {mode: statistics.median(b) for mode, (_, b) in samples.items()}
        diff = max((a_ - b_).abs().max().item() for a_, b_ in zip(grads[last], grads[base]))

        def by_round(mode: str, which: int) -> str:  # the first mode's time over this mode's, round by round
            return " ".join(f"{x / y:.3f}" for x, y in zip(samples[base][which], samples[mode][which]))

        for mode in modes:
            rows.append(dict(variant=name, flat=mode, rounds=a.rounds, fwd_ms=fwd[mode], bwd_ms=times[mode],
                             fwd_speed_vs_first=fwd[base] / fwd[mode], bwd_speed_vs_first=times[base] / times[mode],
                             fwd_speed_by_round=by_round(mode, 0), bwd_speed_by_round=by_round(mode, 1),
                             max_grad_diff_last_vs_first=diff,
                             dq_mode=envs[mode][flash2.DQ_FLAT_ENV] or envs[mode][flash2.FLAT_ENV],
                             streams=envs[mode][flash2.STREAMS_ENV],
                             tiles="autotuned" if a.autotune else " ".join(f"{k}={t}" for k, t in tiles.items())))
            print(f"{name:24s} FLAT={mode:7s} fwd {fwd[mode]:8.3f} ms x{fwd[base] / fwd[mode]:.3f}   bwd "
                  f"{times[mode]:8.3f} ms x{times[base] / times[mode]:.3f}  (speed vs {base}; bwd by round "
                  f"{by_round(mode, 1)})", flush=True)
        print(f"{name:24s} max |o({last}) - o({base})| = {(outs[last] - outs[base]).abs().max().item():.3e}, "
              f"max |grad({last}) - grad({base})| = {diff:.3e}", flush=True)
        if a.out:
            import pandas as pd

            pd.DataFrame(rows).to_csv(a.out / "bench_bwd_flat.csv", index=False)


def mode_env(mode: str, dq_mode: str | None) -> dict[str, str]:
    """The switches a mode sets: '1' -> FA2_FWD_FLAT = FA2_BWD_FLAT = 1 (FA2_DQ_FLAT = dq_mode, or unset: the dQ
    kernel follows FA2_BWD_FLAT); '1/dq0' -> the same with FA2_DQ_FLAT = 0; a trailing '+s' (e.g. '1+s') also runs
    the dQ kernel on a second stream beside the dK/dV kernel (FA2_BWD_STREAMS = 1; 0 otherwise)."""
    loops, plus, streams = mode.partition("+")
    flat, _, dq = loops.partition("/dq")
    if flat not in ("0", "1", "all") or (dq or "0") not in ("0", "1", "all") or (plus and streams != "s"):
        raise SystemExit(f"a mode is 0, 1 or all, optionally with /dq0, /dq1 or /dqall, then optionally +s; "
                         f"got {mode!r}")
    return {flash2.FLAT_ENV: flat, flash2.FWD_FLAT_ENV: flat, flash2.DQ_FLAT_ENV: dq or dq_mode or "",
            flash2.STREAMS_ENV: "1" if plus else "0"}


def restore(env: dict[str, str | None]) -> None:
    """Put the variables of ``env`` back as it holds them (None: unset)."""
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def tile_config(text: str) -> triton.Config:
    """``flash2.tile_config``, with one clear line (not a traceback) for a tile it cannot read."""
    try:
        return flash2.tile_config(text)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None

if __name__ == "__main__":
    main()
