"""Numbers in the docs that cannot drift: README.md (and docs/*.md) quote results only inside marked blocks,
``<!-- fa2bench:begin NAME -->`` ... ``<!-- fa2bench:end NAME -->``, whose text ``BLOCKS[NAME]`` computes from
the committed runs under ``results/``. ``render`` rewrites the blocks of a text (``fa2bench report --readme``);
``stale`` lists the blocks whose text is not what the data gives (``tests/test_docs_numbers.py``).

A block is a table or a whole sentence, so the words around a number cannot say something the number does not.
It reads every kind of run (sweeps, the ablation, e2e's Table 1), so it sits above ``read`` and ``e2e``.
"The measured ceiling" of a run is the one in its meta.json: ``ceilings.matmul_<dtype>_tflops``, the median
time of one 8192 x 8192 x 8192 ``torch.matmul`` timed at the start of that run (``hardware.measure_ceilings``).
No block reads a legacy folder (one without a tool-written meta.json; ``results/README.md``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from fa2bench.read.summary import SHAPE_COLUMNS, geomean, ratio_table, speedup

BEGIN, END = "<!-- fa2bench:begin {} -->", "<!-- fa2bench:end {} -->"
_BLOCK = re.compile(r"<!-- fa2bench:begin ([\w-]+) -->(.*?)<!-- fa2bench:end \1 -->", re.S)
TOP, E2E, ABLATION = "h100-top", "h100-e2e", "h100-ablation"
FIRST, SECOND = "h200-default-run1", "h200-default-run2"  # issue 21: the default sweep twice on a fresh machine
DECODE, SPLITS = "h200-decode-v2", "h200-decode-splits-v2"  # the decode preset and split study, tiles retuned
DECODE_BEFORE, PLAIN = "h200-decode", "h200-decode-plain"  # before the retuning; the plain-timer subset of it
VARIANTS = "h200-variants"  # issue 18: the variants preset, fp16 and bf16
HEADLINE = "h200-headline"  # issue 20: the paper's shapes at d64-256 on the H200, six providers
NAMES = {"fa2": "fa2", "sdpa-cudnn": "cuDNN", "sdpa-flash": "flash"}


def _load(root: Path, run: str) -> pd.DataFrame:
    from fa2bench.run.results import load_run

    frame = load_run(root / run)
    keys = [c for c in ("provider", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim",
                        "causal", "page_size", "ragged", "variant", "model") if c in frame]
    return frame.drop_duplicates(keys, keep="last").reset_index(drop=True)


def _meta(root: Path, run: str) -> dict:
    return json.loads((root / run / "meta.json").read_text())


def _k(n: int) -> str:
    return f"{n // 1024}k"


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"]


# --- results/h100-top ------------------------------------------------------------------------------------


def top_points(root: Path) -> str:
    frame = _load(root, TOP)
    wrong = int((frame["status"] == "wrong").sum())
    throttled = frame[frame["throttled"].astype(str) == "True"]
    share = {p: 100 * (throttled["provider"] == p).sum() / (frame["provider"] == p).sum() for p in ("sdpa-cudnn", "fa2")}
    return (f"{len(_ok(frame))} ok of {len(frame)}, {wrong or 'none'} wrong. In the telemetry window sampled right "
            f"after each point's timed calls (not during them), the GPU was at its software power cap for "
            f"{len(throttled)} of them (the `throttled` column): {share['sdpa-cudnn']:.0f}% of cuDNN's points, "
            f"{share['fa2']:.0f}% of fa2's. {_few_samples(frame)}")


def _few_samples(frame: pd.DataFrame) -> str:
    """How many ok points of a run from before the stopping rule rest on fewer timed calls than it now asks."""
    from fa2bench.run.timing import MIN_SAMPLES

    calls = pd.to_numeric(_ok(frame)["reps"], errors="coerce")
    return (f"{int((calls < MIN_SAMPLES).sum())} ok points rest on fewer than {MIN_SAMPLES} timed calls "
            f"({int((calls == 1).sum())} on one; the run predates the suite's minimum of {MIN_SAMPLES} samples).")


def _versus_cudnn(root: Path, run: str) -> tuple[pd.DataFrame, list[int], pd.DataFrame]:
    """A run's fp16 points, its sequence lengths of 2k and longer, and fa2 / cuDNN over those per (mode, causal,
    head dim) (``ratio_table``: median, min, max, points)."""
    frame = _load(root, run)
    frame = frame[frame["dtype"] == "fp16"]
    longer = sorted(n for n in frame["seqlen_q"].unique() if n >= 2048)
    return frame, longer, ratio_table(frame, "fa2", "sdpa-cudnn", longer).set_index(["mode", "causal", "headdim"])


def top_table(root: Path, run: str = TOP) -> str:
    """fp16 TFLOP/s of fa2, cuDNN and flash at 4k and 16k, and fa2/cuDNN's median over 2k and longer, naming
    the lengths it covers."""
    frame, longer, ratios = _versus_cudnn(root, run)
    speed = speedup(frame, "sdpa-cudnn")
    ok = _ok(frame).set_index(["provider", "mode", "causal", "headdim", "seqlen_q"])["tflops"]
    head = ["mode", "head dim", "causal"] + [f"{NAMES[p]} {_k(n)}" for p in NAMES for n in (4096, 16384)]
    head.append(f"fa2 / cuDNN (median, {_k(longer[0])}-{_k(longer[-1])})")
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
                    cell += f" ({_k(mine.min())}-{_k(mine.max())})"
                cells.append(cell)
                lines.append("| " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n"


def headline_table(root: Path) -> str:
    """``top_table`` of the H200 headline run, and what stands behind it (points, noisy ones, whether complete)."""
    frame = _load(root, HEADLINE)
    fp16 = _ok(frame[frame["dtype"] == "fp16"])
    noisy = fp16[fp16["noisy"].astype(str) == "True"]
    done = "complete" if _meta(root, HEADLINE).get("complete") else "not yet complete: its bf16 half is unfinished"
    apart = (_versus_cudnn(root, HEADLINE)[2]["median"] - _versus_cudnn(root, TOP)[2]["median"]).abs().dropna()
    return (top_table(root, HEADLINE) + f"\n{len(fp16)} fp16 points ok (the run is {done}); {len(noisy)} of them "
            f"`noisy` (spread above 3% at the time cap), {int((noisy['provider'] == 'fa2').sum())} of those fa2's. "
            f"The fa2 / cuDNN medians differ from the H100 run's (`{TOP}`, above) by at most {apart.max():.2f} "
            f"over the {len(apart)} rows.\n")


def top_versus(root: Path) -> str:
    """fa2 against each other provider over every shared point, the best points, and the best forward points
    as a share of the run's measured fp16 matmul ceiling."""
    frame = _load(root, TOP)
    speed = speedup(frame, "fa2")
    parts = []
    for other, name in (("sdpa-flash", "`sdpa-flash`"), ("flex", "FlexAttention"), ("sdpa-cudnn", "cuDNN")):
        s = 1 / speed.loc[speed["provider"] == other, "speedup"]
        parts.append(f"{geomean(s):.2f}x the speed of {name} ({s.min():.2f}x to {s.max():.2f}x)")
    best = _ok(frame[frame["dtype"] == "fp16"]).groupby(["provider", "mode"])["tflops"].max()
    shown = [("fa2", "`fa2`"), ("sdpa-cudnn", "cuDNN"), ("flex", "FlexAttention"), ("sdpa-flash", "`sdpa-flash`"),
             ("sdpa-efficient", "`sdpa-efficient`"), ("fa1", "`fa1`")]
    bests = ", ".join(f"{name} {best[(p, 'fwd')]:.0f} / {best[(p, 'bwd')]:.0f}" for p, name in shown)
    ceiling = _meta(root, TOP)["ceilings"]["matmul_fp16_tflops"]
    fwd16 = _ok(frame[(frame["mode"] == "fwd") & (frame["dtype"] == "fp16")]).groupby("provider")["tflops"].max()
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


def ablation_versus(root: Path) -> str:
    from fa2bench.read.ablation import steps

    table = steps(_load(root, ABLATION))
    split = _fa2_over(table, "fa1-split")
    modes = split.groupby(level="mode").apply(geomean)
    return (f"`fa2` is **{geomean(split):.1f}x faster** (geometric mean over {len(split)} points; "
            f"{split.min():.1f}x to {split.max():.1f}x; forward {modes['fwd']:.1f}x, backward {modes['bwd']:.1f}x)")


def ablation_fa1(root: Path) -> str:
    from fa2bench.read.ablation import steps

    from fa2bench.read.ablation import POINT

    frame = _load(root, ABLATION)
    plain = _fa2_over(steps(frame), "fa1")
    calls = frame.set_index(["provider", *POINT])["reps"]
    fa1, fa2 = (int(calls[(p, *plain.idxmax())]) for p in ("fa1", "fa2"))
    return (f"it is {geomean(plain):.1f}x, up to {plain.max():.0f}x at 16k tokens (that point rests on {fa1} timed "
            f"call{'s' * (fa1 != 1)} of fa1 and {fa2} of fa2: the run predates the suite's minimum of five samples)")


def ablation_steps(root: Path) -> str:
    """Speedup of each rung over the one before, head dim 128, at 2k and 16k."""
    from fa2bench.read.ablation import steps

    table = steps(_load(root, ABLATION))
    table = table[(table["headdim"] == 128) & table["seqlen_q"].isin([2048, 16384])]
    changes = {3: "Q outer, K/V inner, O on chip (from `fa1`)", 4: "+ deferred normalisation, LSE only",
               5: "+ sequence parallelism", 6: "+ causal block skipping", 7: "tuned (`fa2`)"}
    columns = [("fwd", False), ("fwd", True), ("bwd", False), ("bwd", True)]
    lines = ["| rung | change | fwd | fwd causal | bwd | bwd causal |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for rung, change in changes.items():
        cells = []
        for mode, causal in columns:
            mine = table[(table["rung"] == rung) & (table["mode"] == mode) & (table["causal"] == causal)]
            by_n = mine.set_index("seqlen_q")["speedup"]
            cells.append(" / ".join(f"{by_n[n]:.2f}" if n in by_n.index else "-" for n in (2048, 16384)))
        lines.append(f"| {rung} | {change} | " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n"


# --- results/h100-e2e -------------------------------------------------------------------------------------


def e2e_tokens(root: Path) -> str:
    """Tokens per optimizer step, the common count and the (model, seqlen) points that differ from it."""
    frame = _ok(_load(root, E2E))
    per = frame.groupby(["model", "seqlen_q"])["tokens_per_step"].max().astype(int)
    common = int(per.mode().iloc[0])
    others = [f"{n:,} for {model.upper().replace('GPT-', 'GPT-')} at {_k(int(s))}" for (model, s), n in per.items()
              if n != common]
    return f"{common:,} tokens per step" + (f" ({', '.join(others)})" if others else "")


def e2e_table(root: Path) -> str:
    from fa2bench.e2e.figures import table1

    return "\n" + table1(_load(root, E2E)).strip("\n") + "\n"


def e2e_versus(root: Path) -> str:
    frame = _ok(_load(root, E2E))
    t = frame.pivot_table(index=["model", "seqlen_q"], columns="provider", values="tflops")
    flash, cudnn = t["fa2"] / t["sdpa-flash"], t["fa2"] / t["sdpa-cudnn"]
    split = t["fa1-split"] / t["fa2"]
    short = split[split.index.get_level_values("seqlen_q") == 2048]
    long = split[split.index.get_level_values("seqlen_q") == 8192]
    return (f"`fa2` trains {flash.min():.2f}-{flash.max():.2f}x faster than `sdpa-flash` and at "
            f"{cudnn.min():.2f}-{cudnn.max():.2f}x of `sdpa-cudnn`; `fa1-split` reaches {long.min():.2f}-"
            f"{long.max():.2f}x of `fa2` at 8k and {short.min():.2f}-{short.max():.2f}x at 2k, where attention is "
            f"a smaller share of the step.")


# --- the first result (results/h200-default-run1, -run2) --------------------------------------------------


def _wall_s(meta: dict) -> float:
    import datetime as dt

    start, end = (dt.datetime.fromisoformat(meta[k]) for k in ("started_utc", "finished_utc"))
    return (end - start).total_seconds()


def first_run(root: Path) -> str:
    """The default sweep's two runs on one fresh machine: wall time (meta.json), set-up and timing, cached configs."""
    said = []
    for run in (FIRST, SECOND):
        frame, meta = _load(root, run), _meta(root, run)
        tuned = frame[frame["config_cached"].notna()]
        cached = int(tuned["config_cached"].astype(str).eq("True").sum())
        said.append(f"{_wall_s(meta):.0f} s ({frame['setup_s'].sum():.0f} s of set-up: checks, compilation, "
                    f"autotuning; {frame['timing_s'].sum():.0f} s of timing; {cached} of {len(tuned)} autotuned "
                    f"points with their configs from the disk cache)")
    from fa2bench.read.compare import compare
    from fa2bench.run.results import load_run

    same = compare(load_run(root / FIRST), load_run(root / SECOND)).counts
    return (f"the first run took {said[0]} and the second {said[1]}, from meta.json's start to finish; `fa2bench "
            f"compare` finds {same.get('same', 0)} of the second run's {sum(same.values())} points the same as the "
            f"first's within their noise")


# --- decoding (results/h200-decode, -splits) ---------------------------------------------------------------

_DECODE_KEYS = ["dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim", "page_size", "ragged"]


def _decode_fa2(root: Path, run: str = DECODE) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = _ok(_load(root, run))
    return frame[frame["provider"] == "fa2-decode"], frame[frame["provider"] != "fa2-decode"]


def decode_versus(root: Path) -> str:
    """fa2-decode's share of the copy bandwidth, its rank among the providers, and what paging costs it."""
    fa2, others = _decode_fa2(root)
    big = fa2[(fa2["page_size"] == 0) & (fa2["seqlen_k"] >= 8192) & (fa2["batch"] * fa2["kv_heads"] >= 64)]
    best = others.groupby(_DECODE_KEYS)["us"].min().rename("best")
    fastest = others.loc[others.groupby(_DECODE_KEYS)["us"].idxmin(), "provider"].value_counts()
    shared = fa2.set_index(_DECODE_KEYS)["us"].to_frame("fa2").join(best, how="inner")
    ratio = shared["best"] / shared["fa2"]
    flat = [k for k in _DECODE_KEYS if k != "page_size"]
    contiguous = fa2[fa2["page_size"] == 0].set_index(flat)["us"]
    paged = fa2[fa2["page_size"] >= 64].set_index(flat)["us"]
    cost = (paged / contiguous.reindex(paged.index) - 1).dropna() * 100
    slow = ratio.idxmin()
    return (f"On contiguous caches at KV length 8k and longer with batch x KV heads >= 64, `fa2-decode` moves its "
            f"compulsory bytes at a median {big['pct_copy_bw'].median():.0f}% of the run's measured copy bandwidth "
            f"({len(big)} points, {big['pct_copy_bw'].min():.0f}-{big['pct_copy_bw'].max():.0f}%; a copy reads and "
            f"writes, a decode call almost only reads, so it can pass 100%). It is the "
            f"fastest provider at {int((ratio >= 1).sum())} of the {len(ratio)} points where another provider "
            f"also ran (geometric mean {geomean(ratio):.2f}x the best other; its slowest, {ratio.min():.2f}x, at "
            f"batch {slow[1]}, {slow[2]} heads, KV length {_k(slow[5])}; the best other provider is "
            f"{', '.join(f'`{p}` at {n}' for p, n in fastest.items())} of them). A paged cache (64-token pages) costs "
            f"it a median {cost.median():.0f}% over a contiguous one of the same lengths (at most "
            f"{cost.max():.0f}%, {len(cost)} points).")


def decode_timers(root: Path) -> str:
    """How far the plain timer (events around each call) and the graph timer disagree on fa2-decode's points."""
    fa2 = _decode_fa2(root, DECODE_BEFORE)[0].set_index(_DECODE_KEYS)["us"]
    plain = _ok(_load(root, PLAIN))
    plain = plain[plain["provider"] == "fa2-decode"].set_index(_DECODE_KEYS)["us"]
    ratio = (plain / fa2.reindex(plain.index)).dropna()
    long = ratio[fa2.reindex(ratio.index) >= 250]
    return (f"on the {len(ratio)} contiguous points the plain timer reads {ratio.min():.2f}x to {ratio.max():.1f}x "
            f"the graph timer's time: it never reads below {plain.min():.0f} us, a floor the kernels do not explain "
            f"(the host's time to issue a call between the two events, which a graph replay removes), while the "
            f"graph timer goes down to {fa2.reindex(ratio.index).min():.0f} us; on calls of 250 us and "
            f"longer the two agree within {100 * (long - 1).abs().max():.0f}% ({len(long)} points)")


def decode_splits(root: Path) -> str:
    """The split heuristic against the best fixed split count."""
    frame = pd.read_csv(root / SPLITS / "decode_splits.csv")
    chosen = frame[frame["heuristic"].astype(str) == "True"]
    worst = chosen.loc[chosen["vs_best"].idxmax()]
    best = int((chosen["vs_best"] <= 1.0).sum())
    return (f"the heuristic's split count is the fastest of the fixed counts 1-128 at {best} of {len(chosen)} "
            f"shapes (at worst {chosen['vs_best'].max():.2f}x the best one's time, batch {worst['batch']} at KV "
            f"length {_k(worst['kv_len'])})")


# --- results/h200-variants -------------------------------------------------------------------------------


def _variant_ms(root: Path) -> pd.DataFrame:
    """Time per ok point of the variants run: one column per provider, one row per (shape, variant)."""
    return _ok(_load(root, VARIANTS)).pivot_table(index=SHAPE_COLUMNS + ["variant"], columns="provider",
                                                  values="ms")


def _median_ratio(ms: pd.DataFrame, slow: str, fast: str, **where) -> float:
    """Median over the matching points (both ran) of time(slow) / time(fast): above 1, ``fast`` is faster."""
    rows = ms
    for column, value in where.items():
        rows = rows[rows.index.get_level_values(column) == value]
    ratio = (rows[slow] / rows[fast]).dropna()
    return float(ratio.median()) if len(ratio) else float("nan")


def variants_table(root: Path) -> str:
    """fa2 against FlexAttention and SDPA's efficient backend per (variant, mode, head dim, dtype): the median over
    the run's sequence lengths of the time ratios (FLOPs count the same attended pairs for every provider)."""
    ms = _variant_ms(root)
    tflops = _ok(_load(root, VARIANTS)).set_index(SHAPE_COLUMNS + ["variant", "provider"])["tflops"]
    longest = int(ms.index.get_level_values("seqlen_q").max())
    head = ["variant", "mode", "head dim", f"fa2 TFLOP/s (bf16, {_k(longest)})", "fa2 / flex bf16", "fa2 / flex fp16",
            "fa2 / sdpa-efficient bf16"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | --- |" + " ---: |" * (len(head) - 3)]
    for variant in ("dense", "window4096", "window4096+softcap50", "docs"):
        for mode in ("fwd", "bwd"):
            for d in sorted(ms.index.get_level_values("headdim").unique()):
                key = dict(variant=variant, mode=mode, headdim=d)
                fa2 = tflops.xs((mode, "bf16", longest, d, variant, "fa2"),
                                level=("mode", "dtype", "seqlen_q", "headdim", "variant", "provider"))
                cells = [_median_ratio(ms, other, "fa2", dtype=dtype, **key)
                         for other, dtype in (("flex", "bf16"), ("flex", "fp16"), ("sdpa-efficient", "bf16"))]
                shown = ["-" if c != c else f"{c:.2f}" for c in cells]
                lines.append(f"| {variant} | {mode} | {d} | {fa2.iloc[0]:.0f} | " + " | ".join(shown) + " |")
    return "\n" + "\n".join(lines) + "\n"


def variants_varlen(root: Path) -> str:
    """fa2's varlen path against its padded document mask on the same packed documents."""
    ms = _variant_ms(root)
    parts = []
    for mode in ("fwd", "bwd"):
        ratios = [_median_ratio(ms, "fa2", "fa2-varlen", mode=mode, headdim=d, dtype=t)
                  for d in sorted(ms.index.get_level_values("headdim").unique()) for t in ("bf16", "fp16")]
        parts.append(f"{mode} {min(ratios):.2f}x-{max(ratios):.2f}x")
    both = ms[["fa2", "fa2-varlen"]].dropna()
    return (f"on the packed documents, `fa2-varlen` runs at {' and '.join(parts)} the speed of `fa2`'s padded "
            f"document mask (above 1: varlen faster; per head dim and dtype, the median over the sequence lengths; "
            f"{len(both)} points in all)")


def variants_power(root: Path) -> str:
    """What the GPU did during fa2's and FlexAttention's timed calls in the variants run (their own telemetry)."""
    ok = _ok(_load(root, VARIANTS))
    limit = _meta(root, VARIANTS)["gpus"][0]["power_limit_w"]
    said = []
    for provider, name in (("fa2", "`fa2`"), ("flex", "FlexAttention")):
        mine = ok[ok["provider"] == provider]
        said.append(f"{name} drew {mine['power_w'].mean():.0f} W at {mine['sm_clock_mhz'].mean():.0f} MHz on average "
                    f"and was held at the {limit:.0f} W cap in {100 * mine['throttled_frac'].mean():.0f}% of the "
                    f"samples")
    return "during their timed calls " + "; ".join(said)


def variants_cost(root: Path) -> str:
    """Each variant's TFLOP/s (attended pairs) as a share of dense causal's at the same shape, fa2 and Flex, bf16,
    the longest sequence: what masking and score modification cost beyond the pairs they remove."""
    ok = _ok(_load(root, VARIANTS))
    ok = ok[(ok["dtype"] == "bf16") & (ok["seqlen_q"] == ok["seqlen_q"].max())]
    tf = ok.set_index(["provider", "mode", "headdim", "variant"])["tflops"]
    lines = ["| mode | head dim | provider | window4096 | window4096+softcap50 | docs |", "| --- | --- | --- |" +
             " ---: |" * 3]
    for mode in ("fwd", "bwd"):
        for d in sorted(ok["headdim"].unique()):
            for provider in ("fa2", "flex"):
                dense = tf[(provider, mode, d, "dense")]
                cells = [f"{100 * tf[(provider, mode, d, v)] / dense:.0f}%" for v in
                         ("window4096", "window4096+softcap50", "docs")]
                lines.append(f"| {mode} | {d} | {provider} | " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n"


def variants_tiles(root: Path) -> str:
    """The share of (Q block, K block) tiles fa2's forward visits for each variant of the run, 128 x 128 tiles,
    against the share of (query, key) pairs attended (kernels/tiles.py and core.variants: computed, not timed)."""
    from fa2bench.core.variants import attended_pairs, doc_lengths, parse
    from fa2bench.kernels.tiles import tile_fraction

    frame = _load(root, VARIANTS)
    tokens = int((frame["batch"] * frame["seqlen_q"]).iloc[0])
    parts = []
    for n in sorted(frame["seqlen_q"].unique()):
        for name in ("dense", "window4096", "docs"):
            v, batch = parse(name), tokens // n
            docs = doc_lengths(v, batch, n) if v.docs is not None else [None] * batch
            tiles = sum(tile_fraction(n, n, 128, 128, True, v.window, d) for d in docs) / batch
            pairs = attended_pairs(v, batch, n, n, True) / (batch * n * n)
            parts.append(f"{name} at {_k(n)}: {100 * tiles:.1f}% of the tiles for {100 * pairs:.1f}% of the pairs")
    return "; ".join(parts)


def variants_profile(root: Path) -> str:
    """GPU kernel time per backward call by kernel, from the profiles the run folder keeps (profiles.log, written by
    ``fa2bench profile --variant ... --trace``)."""
    text = (root / VARIANTS / "profiles.log").read_text()
    lines = ["| provider | variant | kernels (us per call) | total us | dK/dV kernel: tiles, registers, spilled "
             "32-bit words per thread |",
             "| --- | --- | --- | ---: | --- |"]
    for head, body in re.findall(r"^=== (\S+ bwd \S+) .*?\n(.*?)(?=^=== |\Z)", text, re.S | re.M):
        provider, _, variant = head.split()
        kernels = re.findall(r"│ (\w+) +│ kernel │ +\d+ │ +([\d.]+) │", body)
        total = sum(float(us) for _, us in kernels)
        shown = ", ".join(f"`{name}` {float(us):.0f}" for name, us in kernels)
        dkdv = re.search(r"│ bwd_dkdv +│ \w+ +│ BLOCK_D=\d+ (BLOCK_M=\d+ BLOCK_N=\d+) +│ +(\d+) │ +(\d+) │ "
                         r"+(\d+) │ +(\d+) │", body)
        resources = f"{dkdv[1]} w{dkdv[2]} s{dkdv[3]}, {dkdv[4]}, {dkdv[5]}" if dkdv else "-"
        lines.append(f"| {provider} | {variant} | {shown} | {total:.0f} | {resources} |")
    return "\n" + "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[Path], str]] = {
    "top-points": top_points, "top-table": top_table, "top-versus": top_versus,
    "ablation-versus": ablation_versus, "ablation-fa1": ablation_fa1, "ablation-steps": ablation_steps,
    "e2e-tokens": e2e_tokens, "e2e-table": e2e_table, "e2e-versus": e2e_versus,
    "first-run": first_run, "decode-versus": decode_versus, "decode-splits": decode_splits,
    "decode-timers": decode_timers, "variants-table": variants_table, "variants-varlen": variants_varlen,
    "variants-power": variants_power, "variants-cost": variants_cost, "variants-tiles": variants_tiles,
    "variants-profile": variants_profile, "headline-table": headline_table,
}


def blocks(text: str) -> list[tuple[str, str]]:
    """(name, text) of every marked block, in order."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(text)]


def render(text: str, root: str | Path = "results") -> str:
    """``text`` with every marked block's contents recomputed from the runs under ``root``; an unknown block
    name is a ValueError."""
    root, cache = Path(root), {}

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in BLOCKS:
            raise ValueError(f"unknown block {name!r} (known: {', '.join(BLOCKS)})")
        if name not in cache:
            cache[name] = BLOCKS[name](root)
        return BEGIN.format(name) + cache[name] + END.format(name)

    return _BLOCK.sub(fill, text)


def stale(text: str, root: str | Path = "results") -> list[str]:
    """Names of the blocks whose text differs from what the data gives."""
    fresh = dict(blocks(render(text, root)))
    return [name for name, body in blocks(text) if fresh[name] != body]


def update(paths, root: str | Path = "results") -> list[Path]:
    """Rewrite the marked blocks of each file in ``paths``; returns the files that changed."""
    changed = []
    for path in map(Path, paths):
        text = path.read_text()
        new = render(text, root)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed

