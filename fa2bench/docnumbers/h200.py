"""Blocks from the H200 runs: the headline (the paper's shapes, six providers) and its rerun, the ladder to FA3 and
fa3's backward, the first result on a fresh machine, and decoding."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from fa2bench.docnumbers.data import (DECODE, DECODE_BEFORE, FA3_ACCEPT, FA3_ACCEPT_H100, FA3_BWD, FA3_FORWARD,
                                      FA3_FORWARD_H100, FA3_RUNGS, FIRST, HEADLINE, LADDER, PLAIN, RERUN, SAME_CARD,
                                      SECOND, SPLITS, TOP, kilo, load, ok_rows, read_meta)
from fa2bench.docnumbers.h100 import ablation_fa1, ablation_steps, ablation_versus, top_table, versus_cudnn
from fa2bench.read.summary import geomean


def headline_table(root: Path) -> str:
    """``top_table`` of the H200 headline run, and what stands behind it (points, noisy ones, whether complete)."""
    frame = load(root, HEADLINE)
    fp16 = ok_rows(frame[frame["dtype"] == "fp16"])
    noisy = fp16[fp16["noisy"].astype(str) == "True"]
    done = "complete" if read_meta(root, HEADLINE).get("complete") else "not yet complete: its bf16 half is unfinished"
    apart = (versus_cudnn(root, HEADLINE)[2]["median"] - versus_cudnn(root, TOP)[2]["median"]).abs().dropna()
    bf16 = versus_cudnn(root, HEADLINE, "bf16")[2]["median"]
    return (top_table(root, HEADLINE) + f"\n{len(fp16)} fp16 points ok (the run is {done}); {len(noisy)} of them "
            f"`noisy` (spread above 3% at the time cap), {int((noisy['provider'] == 'fa2').sum())} of those fa2's. "
            f"The fa2 / cuDNN medians differ from the H100 run's (`{TOP}`, above) by at most {apart.max():.2f} "
            f"over the {len(apart)} rows. In bf16 ({len(ok_rows(frame[frame['dtype'] == 'bf16']))} points ok) the "
            f"same {len(bf16)} medians run from {bf16.min():.2f} to {bf16.max():.2f}.\n")


def headline_rerun(root: Path) -> str:
    """The rerun's points against the headline's (``fa2bench compare``), split by how each was timed."""
    card = {True: "the same card", False: "another H200",
            None: "an H200 (meta.json does not record whether the same card)"}[_one_card(root, HEADLINE, RERUN)]
    return _agreement(root, HEADLINE, RERUN, f"Rerun on {card} (`{RERUN}`")


def same_card(root: Path) -> str:
    """Two reruns of the subset back to back, on a card both meta.json files name by its UUID."""
    card = ("one card (the same GPU UUID in both meta.json files)" if _one_card(root, *SAME_CARD) else
            "one lease (meta.json does not show the same card)")
    return _agreement(root, *SAME_CARD, f"Two reruns back to back on {card} (`{SAME_CARD[0]}`, `{SAME_CARD[1]}`")


def _one_card(root: Path, *runs: str) -> bool | None:
    """Whether the runs ran on one GPU, by the UUID meta.json records (None where a run predates the record)."""
    cards = [read_meta(root, run)["gpus"][0].get("uuid") for run in runs]
    return None if None in cards else len(set(cards)) == 1


def _agreement(root: Path, first: str, second: str, opening: str) -> str:
    """``second``'s points against ``first``'s (``fa2bench compare``): the points timed alike, how many agree within
    the noise the suite reports and which do not, and the points the two runs timed differently."""
    from fa2bench.read.compare import compare

    result = compare(load(root, first), load(root, second))
    table, retimed = result.table, result.retimed
    alike = table.drop(retimed.index)
    agree = alike["verdict"].isin(("same", "noise"))
    off = alike.loc[~agree]
    worst = (alike["ratio"] - 1).abs().max()
    parts = [f"{opening}, {len(table)} points: fp16, head dim 128, fa2 and cuDNN, fwd and bwd, causal both, 512 to "
             f"16k tokens): of the {len(alike)} points timed the same way both times, {int(agree.sum())} agree within "
             f"5% or within the spreads the suite reports (`fa2bench compare`: same or noise), the largest difference "
             f"{100 * worst:.1f}%"]
    if len(off):
        parts.append(("the other: " if len(off) == 1 else "the others: ") + ", ".join(
            f"{r.provider} {r.mode} {r.seqlen_q} tokens{' causal' if r.causal else ''} {r.ratio:.2f}x"
            for r in off.itertuples()))
    if len(retimed):
        spans = [f"its {len(f)} {mode} points {f['ratio'].min():.2f}x to {f['ratio'].max():.2f}x"
                 for mode, f in retimed.groupby("mode", sort=False)]
        parts.append(f"{len(retimed)} points were timed with the CUDA graph in one run and plainly in the other (the "
                     f"`auto` rule switches where the host's time to issue a call nears the call's), the second "
                     f"against the first: " + " and ".join(spans))
    return "; ".join(parts) + "."


def ladder_state(root: Path) -> str:
    """What the H200 ablation holds: points, statuses, completeness, the commit of each call (a resumed run)."""
    frame, meta = load(root, LADDER), read_meta(root, LADDER)
    counts = frame["status"].value_counts()
    others = ", ".join(f"{n} `{status}`" for status, n in counts.items() if status != "ok")
    missing = sorted(set(frame.loc[frame["status"] == "unsupported", "provider"]))
    commits = list(dict.fromkeys(m["git"]["commit"][:7] for m in [meta, *meta.get("resumed", [])]))
    return (f"[`results/{LADDER}`](results/{LADDER}/ablation.md): {len(frame)} points, {counts.get('ok', 0)} ok"
            + (f", {others} ({', '.join(f'`{p}`' for p in missing)} backward)" if others else "")
            + f"; meta.json `complete: {str(bool(meta.get('complete'))).lower()}`, "
            + (f"commit `{commits[0]}`" if len(commits) == 1 else
               f"{len(commits)} calls at commits " + ", ".join(f"`{c}`" for c in commits)))


def ladder_versus(root: Path) -> str:
    return ablation_versus(root, LADDER)


def ladder_fa1(root: Path) -> str:
    return ablation_fa1(root, LADDER)


def ladder_steps(root: Path) -> str:
    return ablation_steps(root, LADDER)


def fa3_backward(root: Path) -> str:
    """fa3's Gluon backward against fa2's and cuDNN's, per head dim: the range of the time ratios over the run's
    points (fp16, both masks, 2k and 8k)."""
    frame = ok_rows(load(root, FA3_BWD))
    ms = frame.pivot_table(index=["headdim", "causal", "seqlen_q"], columns="provider", values="ms")
    parts = []
    for d, sub in ms.groupby(level="headdim"):
        fa2, cudnn, atomic = (sub[p] / sub["fa3"] for p in ("fa2", "sdpa-cudnn", "fa3-dq-atomic"))
        parts.append(f"head dim {d}: {fa2.min():.2f}-{fa2.max():.2f}x the speed of `fa2`, {cudnn.min():.2f}-"
                     f"{cudnn.max():.2f}x cuDNN's; its atomic-dQ variant {atomic.min():.2f}-{atomic.max():.2f}x the "
                     f"deterministic one's time")
    commit = read_meta(root, FA3_BWD)["git"]["commit"][:7]
    lengths = " and ".join(kilo(n) for n in sorted(set(frame["seqlen_q"])))
    return (f"In [`results/{FA3_BWD}`](results/{FA3_BWD}) ({len(frame)} points ok: fp16, the backward pass alone, "
            f"{lengths} tokens, causal both; at `{commit}`, whose fa2 backward held the one-loop dK/dV kernel, since "
            f"reverted as slower) fa3's backward runs at " + "; ".join(parts))



FA3_FASTEST = {"fwd": "fa3-pingpong", "bwd": "fa3"}  # fa3's fastest forward rung (9); its one backward


def fa3_accept(root: Path, run: str = FA3_ACCEPT, card: str = "") -> str:
    """fa3 against cuDNN, fa2 and FlexAttention per (mode, head dim, dtype, mask) in acceptance run ``run`` (on
    ``card`` where it is not the H200): the median over the run's sequence lengths of the speed ratios (time of the
    other over fa3's), and fa3's TFLOP/s at the longest; fa3 is its fastest forward rung in the forward rows
    (``FA3_FASTEST``), named in the row."""
    frame = ok_rows(load(root, run))
    key = ["mode", "headdim", "dtype", "causal", "seqlen_q"]
    ms = frame.pivot_table(index=key, columns="provider", values="ms")
    tf = frame.pivot_table(index=key, columns="provider", values="tflops")
    longest = int(ms.index.get_level_values("seqlen_q").max())
    lines = [f"| mode | head dim | dtype | mask | fa3 as | TFLOP/s ({kilo(longest)}) | / cuDNN | / fa2 | / flex |",
             "| --- | --- | --- | --- | --- |" + " ---: |" * 4]
    for (mode, d, dtype, causal), sub in ms.groupby(level=["mode", "headdim", "dtype", "causal"]):
        fa3 = FA3_FASTEST[mode]
        ratios = [float((sub[p] / sub[fa3]).median()) for p in ("sdpa-cudnn", "fa2", "flex")]
        lines.append(f"| {mode} | {d} | {dtype} | {'causal' if causal else 'full'} | `{fa3}` | "
                     f"{tf.loc[(mode, d, dtype, causal, longest), fa3]:.0f} | "
                     + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    return _paper_run(root, run, frame, f", on an {card}" if card else "",
                      "ratios are medians over those lengths, above 1 fa3 is faster", lines)


def fa3_accept_h100(root: Path) -> str:
    """``fa3_accept`` of the acceptance run on an H100 (session 19: no H200 came for it)."""
    return fa3_accept(root, FA3_ACCEPT_H100, "H100")


def fa3_forward(root: Path) -> str:
    """``fa3_against_cudnn`` of the H200 forward run after the boundary group (session 15)."""
    return fa3_against_cudnn(root, FA3_FORWARD)


def fa3_forward_h100(root: Path) -> str:
    """``fa3_against_cudnn`` of the H100 forward run with O written by TMA copies at d128, both masks (session 37)."""
    return fa3_against_cudnn(root, FA3_FORWARD_H100, "H100")


def fa3_against_cudnn(root: Path, run: str, card: str = "") -> str:
    """fa3's fastest forward rung against cuDNN per (head dim, dtype, mask), one device call (on ``card`` where it
    is not the H200): the speed ratio at each sequence length and their median, and fa3's TFLOP/s at the longest."""
    frame = ok_rows(load(root, run))
    frame = frame[frame["mode"] == "fwd"]
    fa3 = FA3_FASTEST["fwd"]
    key = ["headdim", "dtype", "causal", "seqlen_q"]
    ms = frame.pivot_table(index=key, columns="provider", values="ms")
    tf = frame.pivot_table(index=key, columns="provider", values="tflops")
    lengths = sorted(set(frame["seqlen_q"]))
    lines = [f"| head dim | dtype | mask | `{fa3}` TFLOP/s ({kilo(lengths[-1])}) | / cuDNN: "
             + " / ".join(kilo(n) for n in lengths) + " | median |", "| --- | --- | --- | ---: | ---: | ---: |"]
    for (d, dtype, causal), sub in ms.groupby(level=["headdim", "dtype", "causal"]):
        speed = sub["sdpa-cudnn"] / sub[fa3]
        lines.append(f"| {d} | {dtype} | {'causal' if causal else 'full'} | "
                     f"{tf.loc[(d, dtype, causal, lengths[-1]), fa3]:.0f} | "
                     + " / ".join(f"{r:.2f}" for r in speed) + f" | {float(speed.median()):.3f} |")
    return _paper_run(root, run, frame, f", one device call{f' on an {card}' if card else ''}, forward",
                      "speeds over cuDNN's, above 1 fa3 is faster", lines)


def _paper_run(root: Path, run: str, frame: pd.DataFrame, how: str, reading: str, lines: list[str]) -> str:
    """A table of a paper-shape run under one line naming the run: points, commit, ``how`` it ran, the lengths
    and how to read it."""
    meta = read_meta(root, run)
    commits = list(dict.fromkeys(m["git"]["commit"][:7] for m in [meta, *meta.get("resumed", [])]))
    at = f"`{commits[0]}`" + "".join(f", resumed at `{c}`" for c in commits[1:])
    lengths = sorted(set(frame["seqlen_q"]))
    return (f"\n[`results/{run}`](results/{run}) ({len(frame)} points ok, at {at}{how}; "
            f"{kilo(lengths[0])}-{kilo(lengths[-1])} tokens per sequence, 16k tokens per batch, hidden 2048; "
            f"{reading}):\n\n" + "\n".join(lines) + "\n")


def fa3_rungs(root: Path) -> str:
    """fa3's forward rungs against cuDNN per (head dim, dtype, mask), all timed in one device call: each rung's
    TFLOP/s at the longest sequence and its median speed over cuDNN's across the run's lengths."""
    frame = ok_rows(load(root, FA3_RUNGS))
    key = ["headdim", "dtype", "causal", "seqlen_q"]
    ms = frame.pivot_table(index=key, columns="provider", values="ms")
    tf = frame.pivot_table(index=key, columns="provider", values="tflops")
    rungs = ("fa3", "fa3-pingpong", "fa3-overlap")
    longest = int(ms.index.get_level_values("seqlen_q").max())
    lines = [f"| head dim | dtype | mask | TFLOP/s ({kilo(longest)}): " + " / ".join(f"`{r}`" for r in rungs)
             + " / cuDNN | " + " | ".join(f"`{r}` / cuDNN" for r in rungs) + " |", "| --- | --- | --- | --- |"
             + " ---: |" * len(rungs)]
    for (d, dtype, causal), sub in ms.groupby(level=["headdim", "dtype", "causal"]):
        speeds = [float((sub["sdpa-cudnn"] / sub[r]).median()) for r in rungs]
        at = tf.loc[(d, dtype, causal, longest)]
        lines.append(f"| {d} | {dtype} | {'causal' if causal else 'full'} | "
                     + " / ".join(f"{at[p]:.0f}" for p in (*rungs, "sdpa-cudnn")) + " | "
                     + " | ".join(f"{r:.2f}" for r in speeds) + " |")
    return _paper_run(root, FA3_RUNGS, frame, ", one device call, forward",
                      "speeds are medians over those lengths, above 1 the rung is faster", lines)


# --- the first result (results/h200-default-run1, -run2) --------------------------------------------------


def _wall_s(meta: dict) -> float:
    import datetime as dt

    start, end = (dt.datetime.fromisoformat(meta[k]) for k in ("started_utc", "finished_utc"))
    return (end - start).total_seconds()


def first_run(root: Path) -> str:
    """The default sweep's two runs on one fresh machine: wall time (meta.json), set-up and timing, cached configs."""
    said = []
    for run in (FIRST, SECOND):
        frame, meta = load(root, run), read_meta(root, run)
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
    frame = ok_rows(load(root, run))
    return frame[frame["provider"] == "fa2-decode"], frame[frame["provider"] != "fa2-decode"]


def decode_versus(root: Path, run: str = DECODE) -> str:
    """fa2-decode's share of the copy bandwidth, its rank among the providers, and what paging costs it."""
    fa2, others = _decode_fa2(root, run)
    big = fa2[(fa2["page_size"] == 0) & (fa2["seqlen_k"] >= 8192) & (fa2["batch"] * fa2["kv_heads"] >= 64)]
    best = others.groupby(_DECODE_KEYS)["us"].min().rename("best")
    fastest = others.loc[others.groupby(_DECODE_KEYS)["us"].idxmin(), "provider"].value_counts()
    shared = fa2.set_index(_DECODE_KEYS)["us"].to_frame("fa2").join(best, how="inner")
    ratio = shared["best"] / shared["fa2"]
    # a tie within the spreads: fa2's 20th-percentile time at or below the fastest other's 80th percentile
    best_p80 = others.loc[others.groupby(_DECODE_KEYS)["us"].idxmin()].set_index(_DECODE_KEYS)["ms_p80"]
    fa2_p20 = fa2.set_index(_DECODE_KEYS)["ms_p20"].reindex(ratio.index)
    ties = int(((ratio < 1) & (fa2_p20 <= best_p80.reindex(ratio.index))).sum())
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
            f"also ran, and within the two providers' spreads at {ties} more (its 20th-percentile time at or below "
            f"the fastest other's 80th; geometric mean {geomean(ratio):.2f}x the best other; its slowest, "
            f"{ratio.min():.2f}x, at "
            f"batch {slow[1]}, {slow[2]} heads, KV length {kilo(slow[5])}; the best other provider is "
            f"{', '.join(f'`{p}` at {n}' for p, n in fastest.items())} of them). A paged cache (64-token pages) costs "
            f"it a median {cost.median():.0f}% over a contiguous one of the same lengths (at most "
            f"{cost.max():.0f}%, {len(cost)} points).")


def _decode_ab_frame(root: Path, run: str) -> pd.DataFrame:
    """The rows of a one-process decode A/B (``tools/decode_paged_ab.py``)."""
    return pd.read_csv(root / run / "decode_paged_ab.csv")


def decode_ab(root: Path, run: str, points: tuple[tuple[int, int], ...], pages: tuple[int, ...] | None) -> str:
    """A one-process A/B of the decode kernel (``tools/decode_paged_ab.py``): what paging costs before and after
    the change at the (batch, keys) ``points`` and ``pages`` it was made for, and the paged time after over before
    there and at the run's other points."""
    frame = _decode_ab_frame(root, run)
    paged = frame[frame["page_size"] > 0].pivot_table(index=["batch", "heads", "kv_len", "page_size"],
                                                       columns="kernel", values=["vs_contiguous", "us"])
    shape = paged.index.to_frame()
    inside = (pd.Series(list(zip(shape["batch"], shape["kv_len"])), index=paged.index).isin(points)
              & (shape["page_size"].isin(pages) if pages else True)).to_numpy()
    cost = (paged["vs_contiguous"][inside] - 1) * 100
    speed = paged["us"]["after"] / paged["us"]["before"]
    where = ", ".join(f"batch {b} / {kilo(k)} keys" for b, k in points)
    sizes = "/".join(str(p) for p in sorted(shape["page_size"][inside].unique()))
    n, rest = int(inside.sum()), speed[~inside]
    median = "" if n == 1 else "a median "
    return (f"at {where} ({n} paged point{'s' * (n > 1)}, {sizes}-token pages) the paged launch took {median}"
            f"{cost['before'].median():.0f}% longer than the contiguous one before the change and "
            f"{cost['after'].median():.0f}% after (both against the contiguous launch after it), in one process "
            f"under the graph timer ([`{run}`](results/{run})); the paged time after over before "
            f"{_span(speed[inside])} there" + (f", {_span(rest)} at the run's {len(rest)} other paged points"
                                              if len(rest) else ""))


def decode_tma_paged(root: Path, run: str) -> str:
    """TMA boxes against pointer loads at the same tiles on the same paged caches, in one process
    (``decode_paged_ab.py --tma``): the launches where a block fits in a page."""
    frame = _decode_ab_frame(root, run)
    us = frame[frame["page_size"] > 0].pivot_table(index=["batch", "kv_len", "page_size"], columns="kernel",
                                                    values="us")
    boxed = frame[(frame["kernel"] == "after, tma") & frame["config"].str.contains(" tma")]
    boxed = boxed.set_index(["batch", "kv_len", "page_size"]).index
    speed = (us["after, tma"] / us["after, pointers"]).reindex(boxed)
    where = ", ".join(f"batch {b} / {kilo(k)} keys / {p}-key pages" for b, k, p in speed.index)
    return (f"on paged caches where a block fits in a page ({where}), the same tiles read as TMA boxes took "
            f"{_span(speed)} the time of pointer loads (median {speed.median():.2f}x), in one process under the "
            f"graph timer ([`{run}`](results/{run}))")


def decode_tma_contiguous(root: Path, run: str) -> str:
    """TMA boxes against pointer loads at the plan's tiles on contiguous caches, and each against cuDNN, in one
    process (``decode_paged_ab.py --tma --cudnn``)."""
    frame = _decode_ab_frame(root, run)
    us = frame[frame["page_size"] == 0].pivot_table(index=["batch", "kv_len"], columns="kernel", values="us")
    speed = us["plan after, tma"] / us["plan after, pointers"]
    before, after = (us["sdpa-cudnn"] / us[f"plan after, {way}"] for way in ("pointers", "tma"))
    where = ", ".join(f"batch {b} / {kilo(k)}" for b, k in us.index)
    return (f"on contiguous caches ({where} keys) the plan's tiles read as TMA boxes took {_span(speed)} the time "
            f"of pointer loads (median {speed.median():.2f}x), and cuDNN's time over `fa2-decode`'s went from "
            f"{_span(before)} with pointer loads to {_span(after)} with TMA boxes (at or above 1.00x at "
            f"{int((after >= 1).sum())} of {len(after)} shapes), in one process under the graph timer "
            f"([`{run}`](results/{run}))")

def decode_rerun(root: Path, before: str, after: str) -> str:
    """How a rerun of the decode preset moved the points of the providers that did not change (not fa2-decode)."""
    keys = ["provider"] + _DECODE_KEYS
    times = [_decode_fa2(root, run)[1].set_index(keys)["us"] for run in (before, after)]
    ratio = (times[1] / times[0].reindex(times[1].index)).dropna()
    providers = ", ".join(f"`{p}`" for p in sorted(ratio.index.get_level_values("provider").unique()))
    return (f"the other providers' points ({providers}; {len(ratio)} points) took a median "
            f"{ratio.median():.3f}x their time in [`{before}`](results/{before}), {_span(ratio)}")


def _span(ratios: pd.Series) -> str:
    lo, hi = ratios.min(), ratios.max()
    return f"{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}x"


def decode_timers(root: Path) -> str:
    """How far the plain timer (events around each call) and the graph timer disagree on fa2-decode's points."""
    fa2 = _decode_fa2(root, DECODE_BEFORE)[0].set_index(_DECODE_KEYS)["us"]
    plain = ok_rows(load(root, PLAIN))
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
            f"length {kilo(worst['kv_len'])})")


