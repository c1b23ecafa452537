"""Time one of fa2's autotuned kernels at forced tiles, per provider, with the SM clock each timing ran at: is a
provider slower because of its kernel or because the card clocked it down, and which tile is fastest over a sweep
point's time rather than the autotuner's 20 ms?

    python tools/tiles_ab.py         # the forward: fa2 (padded document mask) and fa2-varlen, bf16, d128, 8k docs
    python tools/tiles_ab.py --tiles 64x64w4s3,128x128w8s3 --rounds 6 --out results/<name>
    python tools/tiles_ab.py --kernel bwd_dkdv --providers fa2 --variant window4096 --tiles 64x128w8s2,64x64w8s2

``--kernel`` (fwd, bwd_dkdv or bwd_dq) picks the kernel whose tiles are forced; for a backward kernel the timed call
is the backward alone on one forward graph (as the sweep times mode bwd), the other kernels at the autotuner's picks
(the same in every arm), and each provider's arms are checked against its first tile on dQ, dK and dV. The tool
was named fwd_tiles_ab.py, writing ``fwd_tiles_ab.csv``, before the backward kernels came in (session 31).

Every (provider, tile) pair is one arm; the arms run ``--rounds`` times, each round's order rotated by one, so every
arm is timed at every position (a kernel that heats the card at its power cap slows what runs after it). Each arm
is timed as the sweep times a point (``fa2bench.run.timing.bench``, the plain timer, L2 flushed) inside an NVML
window (``fa2bench.run.telemetry.Window``). The rows keep each round; the summary prints each arm's median ms, mean
SM clock and throttled fraction, the speed over the first provider at the same tile, and ``ms_at_max_clock`` (the
time scaled to the card's highest clock seen at that shape: what is left of a difference once the clock is taken
out). ``--paper --seqlen 2048,4096 --dtype fp16,bf16 --causal both`` runs the paper preset's shapes, one after another.
``--out DIR`` writes ``tiles_ab.csv`` (each row with the tiles its kernels launched with) beside a tool-written
meta.json.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd
import torch

from fa2bench.core import providers
from fa2bench.core.presets import Shape, paper_shape, parse_ints
from fa2bench.kernels import flash2
from fa2bench.run import telemetry, timing
from fa2bench.run.point import make_inputs, timed_call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--providers", default="fa2,fa2-varlen", help="fa2's providers to time (the first the baseline)")
    ap.add_argument("--kernel", default="fwd", choices=["fwd", "bwd_dkdv", "bwd_dq"], help="whose tiles are forced")
    ap.add_argument("--tiles", default="64x64w4s3,128x128w8s3,128x64w8s3",
                    help="tiles BLOCK_MxBLOCK_NwWARPSsSTAGES, comma-separated (bwd_dkdv: BLOCK_N keys per program, "
                    "BLOCK_M rows per step, written as the configs name them: 64x128w8s2 is BLOCK_M 64, BLOCK_N 128)")
    ap.add_argument("--variant", default="docs")
    ap.add_argument("--seqlen", default="8192", help="sequence lengths, comma-separated")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--paper", action="store_true", help="the paper preset's batch and heads at each length and "
                    "head dim (presets.paper_shape) instead of --batch, --heads, --kv-heads")
    ap.add_argument("--headdim", type=int, default=128)
    ap.add_argument("--dtype", default="bf16", help="bf16, fp16 or both, comma-separated")
    ap.add_argument("--causal", default="on", choices=["on", "off", "both"])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--device", default="cuda", help="cuda; cpu runs the interpreter (TRITON_INTERPRET=1): a check")
    ap.add_argument("--out", type=Path, help="a folder for the rows (CSV) and meta.json")
    a = ap.parse_args()
    try:
        configs = {tile: flash2.tile_config(tile) for tile in a.tiles.split(",") if tile}
        names = [name for name in a.providers.split(",") if name]
        made = {name: providers.get(name) for name in names}
        seqlens = parse_ints(a.seqlen, "--seqlen")
        dtypes = [t for t in a.dtype.split(",") if t]
        if not set(dtypes) <= {"bf16", "fp16"}:
            raise ValueError(f"--dtype takes bf16 and fp16, got {a.dtype!r}")
    except (ValueError, KeyError) as exc:
        raise SystemExit(f"tiles_ab: {exc}") from None
    if a.out:
        from fa2bench.run.results import write_meta
        from fa2bench.run.runner import environment_meta

        a.out.mkdir(parents=True, exist_ok=True)
        write_meta(a.out, {**environment_meta(a.device), "study": f"fa2's {a.kernel} kernel at forced tiles, per "
                           "provider, with the SM clock", "args": {k: str(v) for k, v in vars(a).items()}})
    rows = []
    for n in seqlens:
        batch, heads, kv_heads = paper_shape(a.headdim, n)[:3] if a.paper else (a.batch, a.heads, a.kv_heads)
        for dtype in dtypes:
            for causal in {"on": [True], "off": [False], "both": [False, True]}[a.causal]:
                shape = Shape(batch, heads, kv_heads, n, n, a.headdim, causal, variant=a.variant)
                rows += study(shape, dtype, made, configs, a.rounds, a.device, a.kernel)
                if a.out:
                    pd.DataFrame(rows).to_csv(a.out / "tiles_ab.csv", index=False)


def study(shape: Shape, dtype: str, made: dict, configs: dict, rounds: int, device: str,
          kernel: str = "fwd") -> list[dict]:
    """Every (provider, tile) arm at one shape, ``rounds`` times in rotated order, ``kernel``'s tiles forced;
    prints the summary, returns rows."""
    names, mode = list(made), "fwd" if kernel == "fwd" else "bwd"
    torch.manual_seed(0)
    qkv = make_inputs(shape, dtype, device)  # one set of inputs, laid out as each provider takes them
    calls = {}
    for name, provider in made.items():
        q, k, v = (laid_out(t, provider.layout).detach().requires_grad_(mode == "bwd") for t in qkv)
        calls[name] = timed_call(provider.make(shape), q, k, v, mode)  # (call, [q, k, v] for bwd, else None)
    arms = [(name, tile) for tile in configs for name in names]
    outs, launched = {}, {}
    for name, tile in arms:  # compile every arm and check each agrees with the first, before any timing
        call, grads = calls[name]
        with flash2.forced_configs(**{kernel: configs[tile]}):
            if grads is None:
                outs[name, tile] = [call().float()]
            else:
                for t in grads:
                    t.grad = None
                call()
                outs[name, tile] = [t.grad.float() for t in grads]
        launched[name, tile] = flash2.last_config()  # every kernel's tile as launched, the forced one among them
    # the forward's arms share their inputs; each provider's backward draws its own dO, so its arms are checked
    # against its own first tile
    first = {name: outs[arms[0] if mode == "fwd" else (name, arms[0][1])] for name in names}
    worst = max((o - f).abs().max().item() for (name, _), out in outs.items() for o, f in zip(out, first[name]))
    against = "the first arm" if mode == "fwd" else "its provider's first tile"
    print(f"{shape.label()} {dtype} {kernel}; arms {arms}; max |out - out({against})| = {worst:.3e}", flush=True)
    rows = []
    for r in range(rounds):
        for name, tile in arms[r % len(arms):] + arms[:r % len(arms)]:
            call, grads = calls[name]
            with flash2.forced_configs(**{kernel: configs[tile]}):
                with telemetry.Window() as window:
                    t = timing.bench(call, grads, timer="plain")
            rows.append(dict(seqlen=shape.seqlen_q, batch=shape.batch, heads=shape.heads, kv_heads=shape.kv_heads,
                             headdim=shape.headdim, causal=shape.causal, dtype=dtype, variant=shape.variant,
                             kernel=kernel, provider=name, tile=tile, config=launched[name, tile], round=r,
                             **t.row(), **window.columns(t.ms, None)))
    df = pd.DataFrame(rows)
    top = df.sm_clock_mhz.max()
    df["ms_at_max_clock"] = df.ms * df.sm_clock_mhz / top
    summary = df.groupby(["tile", "provider"], sort=False).agg(
        ms=("ms", "median"), clock=("sm_clock_mhz", "mean"), throttled=("throttled_frac", "mean"),
        ms_at_max_clock=("ms_at_max_clock", "median")).reset_index()
    base = summary[summary.provider == names[0]].set_index("tile")
    first_tile = summary.set_index(["provider", "tile"]).ms
    summary["speed_vs_first"] = [base.ms[t] / ms for t, ms in zip(summary.tile, summary.ms)]
    summary["speed_vs_first_tile"] = [first_tile[p, arms[0][1]] / ms for p, ms in zip(summary.provider, summary.ms)]
    summary["speed_vs_first_at_max_clock"] = [base.ms_at_max_clock[t] / ms
                                              for t, ms in zip(summary.tile, summary.ms_at_max_clock)]
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"), flush=True)
    print(f"median over rounds; clock = mean SM MHz in the timing window; highest clock seen {top:.0f} MHz; "
          f"{statistics.median(df.spread):.3f} median spread", flush=True)
    return df.to_dict("records")


def laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same (batch, heads, seq, d) values in ``layout``'s memory order ("bshd": tokens outermost)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2) if layout == "bshd" else t


if __name__ == "__main__":
    main()
