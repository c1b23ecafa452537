"""Blocks from the H100 runs: the top sweep (fa2 against cuDNN and flash), the FA1 -> FA2 ablation, e2e's Table 1,
and fa3's dQ-first study."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from fa2bench.docnumbers.data import ABLATION, DQ_FIRST_AB, E2E, NAMES, TOP, kilo, load, ok_rows, read_meta
from fa2bench.read.summary import geomean, ratio_table, speedup


# --- results/h100-top ------------------------------------------------------------------------------------


def top_points(root: Path) -> str:
    frame = load(root, TOP)
    wrong = int((frame["status"] == "wrong").sum())
    throttled = frame[frame["throttled"].astype(str) == "True"]
    share = {p: 100 * (throttled["provider"] == p).sum() / (frame["provider"] == p).sum()
             for p in ("sdpa-cudnn", "fa2")}
    return (f"{len(ok_rows(frame))} ok of {len(frame)}, {wrong or 'none'} wrong. In the telemetry window sampled right "
            f"after each point's timed calls (not during them), the GPU was at its software power cap for "
            f"{len(throttled)} of them (the `throttled` column): {share['sdpa-cudnn']:.0f}% of cuDNN's points, "
            f"{share['fa2']:.0f}% of fa2's. {_few_samples(frame)}")


def _few_samples(frame: pd.DataFrame) -> str:
    """How many ok points of a run from before the stopping rule rest on fewer timed calls than it now asks."""
    from fa2bench.run.timing import MIN_SAMPLES

    calls = pd.to_numeric(ok_rows(frame)["reps"], errors="coerce")
    return (f"{int((calls < MIN_SAMPLES).sum())} ok points rest on fewer than {MIN_SAMPLES} timed calls "
            f"({int((calls == 1).sum())} on one; the run predates the suite's minimum of {MIN_SAMPLES} samples).")


def versus_cudnn(root: Path, run: str, dtype: str = "fp16") -> tuple[pd.DataFrame, list[int], pd.DataFrame]:
    """A run's ``dtype`` points, its sequence lengths of 2k and longer, and fa2 / cuDNN over those per (mode,
    causal, head dim) (``ratio_table``: median, min, max, points)."""
    frame = load(root, run)
    frame = frame[frame["dtype"] == dtype]
    longer = sorted(n for n in frame["seqlen_q"].unique() if n >= 2048)
    return frame, longer, ratio_table(frame, "fa2", "sdpa-cudnn", longer).set_index(["mode", "causal", "headdim"])


def top_table(root: Path, run: str = TOP) -> str:
    """fp16 TFLOP/s of fa2, cuDNN and flash at 4k and 16k, and fa2/cuDNN's median over 2k and longer, naming
    the lengths it covers."""
    frame, longer, ratios = versus_cudnn(root, run)
    speed = speedup(frame, "sdpa-cudnn")
    ok = ok_rows(frame).set_index(["provider", "mode", "causal", "headdim", "seqlen_q"])["tflops"]
    head = ["mode", "head dim", "causal"] + [f"{NAMES[p]} {kilo(n)}" for p in NAMES for n in (4096, 16384)]
    head.append(f"fa2 / cuDNN (median, {kilo(longer[0])}-{kilo(longer[-1])})")
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | --- |" + " ---: |" * (len(head) - 3)]
    for mode in ("fwd", "bwd"):
        for d in sorted(frame["headdim"].unique()):
            for causal in (False, True):
                cells = [mode, str(d), "yes" if causal else "no"]
                for p in NAMES:
                    cells += [f"{ok[(p, mode, causal, d, n)]:.0f}" if (p, mode, causal, d, n) in ok.index else "-"
                              for n in (4096, 16384)]
                mine = speed[(speed["provider"] == "fa2") & (speed["mode"] == mode) & (speed["causal"] == causal)
                             & (speed["headdim"] == d) & speed["seqlen_q"].isin(longer)]["seqlen_q"]
                cell = f"{ratios.loc[(mode, causal, d), 'median']:.2f}"
                if mine.max() != longer[-1]:
                    cell += f" ({kilo(mine.min())}-{kilo(mine.max())})"
                cells.append(cell)
                lines.append("| " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n"



def top_versus(root: Path) -> str:
    """fa2 against each other provider over every shared point, the best points, and the best forward points
    as a share of the run's measured fp16 matmul ceiling."""
    frame = load(root, TOP)
    speed = speedup(frame, "fa2")
    parts = []
    for other, name in (("sdpa-flash", "`sdpa-flash`"), ("flex", "FlexAttention"), ("sdpa-cudnn", "cuDNN")):
        s = 1 / speed.loc[speed["provider"] == other, "speedup"]
        parts.append(f"{geomean(s):.2f}x the speed of {name} ({s.min():.2f}x to {s.max():.2f}x)")
    best = ok_rows(frame[frame["dtype"] == "fp16"]).groupby(["provider", "mode"])["tflops"].max()
    shown = [("fa2", "`fa2`"), ("sdpa-cudnn", "cuDNN"), ("flex", "FlexAttention"), ("sdpa-flash", "`sdpa-flash`"),
             ("sdpa-efficient", "`sdpa-efficient`"), ("fa1", "`fa1`")]
    bests = ", ".join(f"{name} {best[(p, 'fwd')]:.0f} / {best[(p, 'bwd')]:.0f}" for p, name in shown)
    ceiling = read_meta(root, TOP)["ceilings"]["matmul_fp16_tflops"]
    fwd16 = ok_rows(frame[(frame["mode"] == "fwd") & (frame["dtype"] == "fp16")]).groupby("provider")["tflops"].max()
    return (f"Over every shared point (fp16 and bf16, head dims 64-256, geometric mean): `fa2` runs at "
            f"{'; '.join(parts)}. Best fp16 points (TFLOP/s, fwd / bwd): {bests}. In fp16 the best forward points are "
            f"{100 * fwd16['sdpa-cudnn'] / ceiling:.0f}% (cuDNN) and {100 * fwd16['fa2'] / ceiling:.0f}% (`fa2`) of "
            f"this run's measured ceiling, its fp16 matmul rate ({ceiling:.0f} TFLOP/s: meta.json's "
            f"`ceilings.matmul_fp16_tflops`, one 8192³ `torch.matmul` timed at the start of the run).")


# --- results/h100-ablation -------------------------------------------------------------------------------


def _fa2_over(table: pd.DataFrame, over: str) -> pd.Series:
    from fa2bench.read.ablation import POINT

    a = table[table["provider"] == "fa2"].set_index(POINT)
    b = table[table["provider"] == over].set_index(POINT)
    both = a.index.intersection(b.index)
    return (b.loc[both, "ms"] / a.loc[both, "ms"])


def ablation_versus(root: Path, run: str = ABLATION) -> str:
    from fa2bench.read.ablation import steps

    table = steps(load(root, run))
    split = _fa2_over(table, "fa1-split")
    modes = split.groupby(level="mode").apply(geomean)
    return (f"`fa2` is **{geomean(split):.1f}x faster** (geometric mean over {len(split)} points; "
            f"{split.min():.1f}x to {split.max():.1f}x; forward {modes['fwd']:.1f}x, backward {modes['bwd']:.1f}x)")


def ablation_fa1(root: Path, run: str = ABLATION) -> str:
    from fa2bench.read.ablation import POINT, steps
    from fa2bench.run.timing import MIN_SAMPLES

    frame = load(root, run)
    plain = _fa2_over(steps(frame), "fa1")
    worst = plain.idxmax()
    calls = frame.set_index(["provider", *POINT])["reps"]
    fa1, fa2 = (int(calls[(p, *worst)]) for p in ("fa1", "fa2"))
    where = dict(zip(POINT, worst))
    point = f"{where['mode']} at {kilo(where['seqlen_q'])} tokens, head dim {where['headdim']}"
    rests = f"{fa1} timed call{'s' * (fa1 != 1)} of fa1 and {fa2} of fa2"
    if fa1 < MIN_SAMPLES:
        rests += ": the run predates the suite's minimum of five samples"
    return f"it is {geomean(plain):.1f}x, up to {plain.max():.0f}x ({point}; that point rests on {rests})"


CHANGES = {3: "Q outer, K/V inner, O on chip (from `fa1`)", 4: "+ deferred normalisation, LSE only",
           5: "+ sequence parallelism", 6: "+ causal block skipping", 7: "tuned (`fa2`)",
           8: "+ TMA producer warp, wgmma consumers, persistent grid (`fa3`, Gluon)",
           9: "+ ping-pong consumer warpgroups (`fa3-pingpong`)",
           10: "+ softmax under the warpgroup's own P V, P through shared memory (`fa3-overlap`)"}


def ablation_steps(root: Path, run: str = ABLATION) -> str:
    """Speedup of each rung over the one before, head dim 128, at 2k and 16k ("-": the rung does not run that
    mode: rungs 9 and 10 have no backward of their own)."""
    from fa2bench.read.ablation import steps

    table = steps(load(root, run))
    table = table[(table["headdim"] == 128) & table["seqlen_q"].isin([2048, 16384])]
    columns = [("fwd", False), ("fwd", True), ("bwd", False), ("bwd", True)]
    lines = ["| rung | change | fwd | fwd causal | bwd | bwd causal |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for rung in sorted(set(table["rung"]) & set(CHANGES)):
        cells = []
        for mode, causal in columns:
            mine = table[(table["rung"] == rung) & (table["mode"] == mode) & (table["causal"] == causal)]
            by_n = mine.set_index("seqlen_q")["speedup"]
            cells.append(" / ".join(f"{by_n[n]:.2f}" if n in by_n.index else "-" for n in (2048, 16384)))
        lines.append(f"| {rung} | {CHANGES[rung]} | " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n"


# --- results/h100-e2e -------------------------------------------------------------------------------------


def e2e_tokens(root: Path) -> str:
    """Tokens per optimizer step, the common count and the (model, seqlen) points that differ from it."""
    frame = ok_rows(load(root, E2E))
    per = frame.groupby(["model", "seqlen_q"])["tokens_per_step"].max().astype(int)
    common = int(per.mode().iloc[0])
    others = [f"{n:,} for {model.upper().replace('GPT-', 'GPT-')} at {kilo(int(s))}" for (model, s), n in per.items()
              if n != common]
    return f"{common:,} tokens per step" + (f" ({', '.join(others)})" if others else "")


def e2e_table(root: Path) -> str:
    from fa2bench.e2e.figures import table1

    return "\n" + table1(load(root, E2E)).strip("\n") + "\n"


def e2e_versus(root: Path) -> str:
    frame = ok_rows(load(root, E2E))
    t = frame.pivot_table(index=["model", "seqlen_q"], columns="provider", values="tflops")
    flash, cudnn = t["fa2"] / t["sdpa-flash"], t["fa2"] / t["sdpa-cudnn"]
    split = t["fa1-split"] / t["fa2"]
    short = split[split.index.get_level_values("seqlen_q") == 2048]
    long = split[split.index.get_level_values("seqlen_q") == 8192]
    return (f"`fa2` trains {flash.min():.2f}-{flash.max():.2f}x faster than `sdpa-flash` and at "
            f"{cudnn.min():.2f}-{cudnn.max():.2f}x of `sdpa-cudnn`; `fa1-split` reaches {long.min():.2f}-"
            f"{long.max():.2f}x of `fa2` at 8k and {short.min():.2f}-{short.max():.2f}x at 2k, where attention is "
            f"a smaller share of the step.")


# --- results/h100-fa3-dqfirst-ab* --------------------------------------------------------------------------


def fa3_dq_first(root: Path) -> str:
    """fa3's d128 dQ-first study (docs/fa3.md section 22), one-process A/B runs of ``tools/fa3_bwd_tiles_ab.py``:
    dQ-first's speed over the default (the default's time over dQ-first's) per (dtype, mask, length), run by run;
    each run's geometric mean; how many cells have a median over the runs of at least 1.02x (the study's rule); and
    fa3 / cuDNN in the same runs."""
    frames = [pd.read_csv(root / run / "fa3_bwd_tiles_ab.csv").assign(run=i) for i, run in enumerate(DQ_FIRST_AB)]
    ms = pd.concat(frames).pivot_table(index=["dtype", "causal", "seqlen", "run"], columns="variant", values="ms")
    speed = ms["m64"] / ms["dq-first"]
    lengths = sorted(set(speed.index.get_level_values("seqlen")))
    lines = ["| dtype | mask | " + " | ".join(kilo(n) for n in lengths) + " |",
             "| --- | --- |" + " ---: |" * len(lengths)]
    for (dtype, causal), sub in speed.groupby(level=["dtype", "causal"]):
        cells = [" / ".join(f"{r:.3f}" for r in sub.xs(n, level="seqlen")) for n in lengths]
        lines.append(f"| {dtype} | {'causal' if causal else 'full'} | " + " | ".join(cells) + " |")
    means = ", ".join(f"{geomean(sub):.3f}" for _, sub in speed.groupby(level="run"))
    medians = speed.groupby(level=["dtype", "causal", "seqlen"]).median()
    under = ", ".join(f"{dtype} {'causal' if causal else 'full'} {kilo(n)} {m:.3f}"
                      for (dtype, causal, n), m in medians[medians < 1.02].items())
    versus = {v: (ms["cudnn"] / ms[v]).groupby(level=["dtype", "causal"]).median() for v in ("m64", "dq-first")}
    runs = ", ".join(f"[`{run}`](../results/{run})" for run in DQ_FIRST_AB)
    below = f" (below it: {under})" if under else ""
    return (f"\n{runs}, dQ-first's speed over the default's (above 1 dQ-first is faster), run by run:\n\n"
            + "\n".join(lines) + f"\n\nGeometric mean per run: {means}. Cells whose median over the runs is at "
            f"least 1.02x: {int((medians >= 1.02).sum())} of {len(medians)}{below}. fa3 / cuDNN in the same runs "
            f"(medians per dtype and mask): default {versus['m64'].min():.2f}-{versus['m64'].max():.2f}, dQ-first "
            f"{versus['dq-first'].min():.2f}-{versus['dq-first'].max():.2f}.\n")
