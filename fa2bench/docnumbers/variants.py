"""Blocks from the H200 variants run (issue 18): fa2 against FlexAttention and SDPA per variant, varlen against
the padded document mask, telemetry, cost per attended pair, visited tiles and the backward's kernels."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fa2bench.docnumbers.data import (DENSE_FLAT_AB, DKDV_TILES, DQ_STREAMS_AB, TORCH_VARLEN, VARIANTS, VARIANTS_H100,
                                      VARIANTS_H100_FULL, VARIANTS_H100_ONE_STREAM, VARIANTS_LATEST, VARLEN_H100, kilo,
                                      load, ok_rows, read_meta)
from fa2bench.read.summary import SHAPE_COLUMNS, geomean

PRESET_VARIANTS = ("dense", "window4096", "window4096+softcap50", "docs")  # the variants preset's, in table order
FLEX_TARGET = 1.10  # issue 18: fa2 at least this much faster than FlexAttention in every cell


# --- results/h200-variants -------------------------------------------------------------------------------


def _variant_ms(root: Path, runs: tuple[str, ...] = (VARIANTS,)) -> pd.DataFrame:
    """Time per ok point of the variants run (or ``runs`` together): one column per provider, one row per (shape,
    variant)."""
    frame = pd.concat([ok_rows(load(root, run)) for run in runs])
    return frame.pivot_table(index=SHAPE_COLUMNS + ["variant"], columns="provider", values="ms")


def _median_ratio(ms: pd.DataFrame, slow: str, fast: str, **where) -> float:
    """Median over the matching points (both ran) of time(slow) / time(fast): above 1, ``fast`` is faster."""
    rows = ms
    for column, value in where.items():
        rows = rows[rows.index.get_level_values(column) == value]
    ratio = (rows[slow] / rows[fast]).dropna()
    return float(ratio.median()) if len(ratio) else float("nan")


def variants_table(root: Path, run: str = VARIANTS) -> str:
    """fa2 against FlexAttention (and SDPA's efficient backend, where the run has it) per (variant, mode, head dim,
    dtype): the median over the run's sequence lengths of the time ratios (FLOPs count the same attended pairs for
    every provider)."""
    ms = _variant_ms(root, (run,))
    tflops = ok_rows(load(root, run)).set_index(SHAPE_COLUMNS + ["variant", "provider"])["tflops"]
    longest = int(ms.index.get_level_values("seqlen_q").max())
    others = [("flex", "bf16"), ("flex", "fp16")] + [("sdpa-efficient", "bf16")] * ("sdpa-efficient" in ms)
    head = ["variant", "mode", "head dim", f"fa2 TFLOP/s (bf16, {kilo(longest)})",
            *(f"fa2 / {other} {dtype}" for other, dtype in others)]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | --- |" + " ---: |" * (len(head) - 3)]
    for variant in PRESET_VARIANTS:
        for mode in ("fwd", "bwd"):
            for d in sorted(ms.index.get_level_values("headdim").unique()):
                key = dict(variant=variant, mode=mode, headdim=d)
                fa2 = tflops.xs((mode, "bf16", longest, d, variant, "fa2"),
                                level=("mode", "dtype", "seqlen_q", "headdim", "variant", "provider"))
                cells = [_median_ratio(ms, other, "fa2", dtype=dtype, **key) for other, dtype in others]
                shown = ["-" if c != c else f"{c:.2f}" for c in cells]
                lines.append(f"| {variant} | {mode} | {d} | {fa2.iloc[0]:.0f} | " + " | ".join(shown) + " |")
    return "\n" + "\n".join(lines) + "\n"


def variants_misses(root: Path, run: str = VARIANTS_H100_FULL) -> str:
    """The cells of ``run`` under issue 18's target, fa2 at least FLEX_TARGET x FlexAttention (median over the sequence
    lengths per variant, mode, head dim and dtype), and how many cells there are."""
    ms = _variant_ms(root, (run,))
    cells, missed = 0, []
    for variant in PRESET_VARIANTS:
        for mode in ("fwd", "bwd"):
            for d in sorted(ms.index.get_level_values("headdim").unique()):
                for dtype in ("bf16", "fp16"):
                    ratio = _median_ratio(ms, "flex", "fa2", variant=variant, mode=mode, headdim=d, dtype=dtype)
                    cells += 1
                    if ratio < FLEX_TARGET:
                        missed.append(f"{variant} {mode} d{d} {dtype} {ratio:.2f}x")
    reach = f"reach {FLEX_TARGET:.2f}x Flex"
    if not missed:
        return f"all {cells} cells {reach}"
    return f"{cells - len(missed)} of {cells} cells {reach}; under it: " + "; ".join(missed)


def variants_varlen(root: Path, runs: tuple[str, ...] = (VARIANTS,)) -> str:
    """fa2's varlen path against its padded document mask on the same packed documents (of ``runs``)."""
    ms = _variant_ms(root, runs)
    parts = []
    for mode in ("fwd", "bwd"):
        ratios = [_median_ratio(ms, "fa2", "fa2-varlen", mode=mode, headdim=d, dtype=t)
                  for d in sorted(ms.index.get_level_values("headdim").unique()) for t in ("bf16", "fp16")]
        parts.append(f"{mode} {min(ratios):.2f}x-{max(ratios):.2f}x")
    both = ms[["fa2", "fa2-varlen"]].dropna()
    return (f"on the packed documents, `fa2-varlen` runs at {' and '.join(parts)} the speed of `fa2`'s padded "
            f"document mask (above 1: varlen faster; per head dim and dtype, the median over the sequence lengths; "
            f"{len(both)} points in all)")


def variants_varlen_h100(root: Path) -> str:
    """``variants_varlen`` of the latest rerun on an H100, bf16 and fp16 in a run each."""
    return variants_varlen(root, VARLEN_H100)


def variants_power(root: Path) -> str:
    """What the GPU did during fa2's and FlexAttention's timed calls in the variants run (their own telemetry)."""
    ok = ok_rows(load(root, VARIANTS))
    limit = read_meta(root, VARIANTS)["gpus"][0]["power_limit_w"]
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
    ok = ok_rows(load(root, VARIANTS))
    ok = ok[(ok["dtype"] == "bf16") & (ok["seqlen_q"] == ok["seqlen_q"].max())]
    tf = ok.set_index(["provider", "mode", "headdim", "variant"])["tflops"]
    lines = ["| mode | head dim | provider | window4096 | window4096+softcap50 | docs |", "| --- | --- | --- |" +
             " ---: |" * 3]
    for mode in ("fwd", "bwd"):
        for d in sorted(ok["headdim"].unique()):
            for provider in ("fa2", "flex"):
                dense = tf[(provider, mode, d, "dense")]
                cells = [f"{100 * tf[(provider, mode, d, v)] / dense:.0f}%" for v in
                         PRESET_VARIANTS[1:]]
                lines.append(f"| {mode} | {d} | {provider} | " + " | ".join(cells) + " |")
    return "\n" + "\n".join(lines) + "\n"


def variants_tiles(root: Path) -> str:
    """The share of (Q block, K block) tiles fa2's forward visits for each variant of the run, 128 x 128 tiles,
    against the share of (query, key) pairs attended (kernels/tiles.py and core.variants: computed, not timed)."""
    from fa2bench.core.variants import attended_pairs, doc_lengths, parse
    from fa2bench.kernels.tiles import tile_fraction

    frame = load(root, VARIANTS)
    tokens = int((frame["batch"] * frame["seqlen_q"]).iloc[0])
    parts = []
    for n in sorted(frame["seqlen_q"].unique()):
        for name in ("dense", "window4096", "docs"):
            v, batch = parse(name), tokens // n
            docs = doc_lengths(v, batch, n) if v.docs is not None else [None] * batch
            tiles = sum(tile_fraction(n, n, 128, 128, True, v.window, d) for d in docs) / batch
            pairs = attended_pairs(v, batch, n, n, True) / (batch * n * n)
            parts.append(f"{name} at {kilo(n)}: {100 * tiles:.1f}% of the tiles for {100 * pairs:.1f}% of the pairs")
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



# --- results/h200-variants-3 and h100-variants-4: bf16, head dim 128, at the one-loop forward --------------------


def variants_latest(root: Path, run: str = VARIANTS_LATEST) -> str:
    """fa2 against FlexAttention per (variant, mode) in the later bf16 d128 run, and varlen against the padded
    document mask there: medians over the run's sequence lengths of the time ratios (above 1: fa2 is faster)."""
    frame = ok_rows(load(root, run))
    ms = frame.pivot_table(index=SHAPE_COLUMNS + ["variant"], columns="provider", values="ms")
    parts = []
    for variant in PRESET_VARIANTS:
        cells = [f"{mode} {_median_ratio(ms, 'flex', 'fa2', variant=variant, mode=mode):.2f}"
                 for mode in ("fwd", "bwd")]
        parts.append(f"{variant} {', '.join(cells)}")
    varlen = [f"{mode} {_median_ratio(ms, 'fa2', 'fa2-varlen', mode=mode):.2f}x" for mode in ("fwd", "bwd")]
    commit = read_meta(root, run)["git"]["commit"][:7]
    lengths = " and ".join(kilo(n) for n in sorted(set(frame["seqlen_q"])))
    return (f"[`results/{run}`](results/{run}) (bf16, head dim 128, {lengths}, "
            f"{len(frame)} points ok, at `{commit}`): fa2 / Flex {'; '.join(parts)}; `fa2-varlen` against the padded "
            f"document mask {' and '.join(varlen)}")


def variants_h100(root: Path) -> str:
    """``variants_latest`` of the H100 rerun at the current defaults."""
    return variants_latest(root, VARIANTS_H100)


# --- session 32 on an H100: PyTorch's varlen_attn, and fa2's dK/dV tiles forced ----------------------------------


def variants_torch_varlen(root: Path) -> str:
    """``torch-varlen`` beside ``fa2-varlen`` on the preset's packed documents: first on its GQA heads, then with as
    many K/V heads as query heads; per (head dim, mode), torch's speed over fa2-varlen's at each sequence length."""
    gqa = load(root, TORCH_VARLEN[0])
    torch_gqa = gqa[gqa["provider"] == "torch-varlen"]
    reasons = "; ".join(sorted(set(torch_gqa.loc[torch_gqa["status"] == "unsupported", "error"])))
    unsupported = int((torch_gqa["status"] == "unsupported").sum())
    ms = _variant_ms(root, TORCH_VARLEN[1:])
    ran = int(ms["torch-varlen"].notna().sum())
    cells = []
    for d in sorted(ms.index.get_level_values("headdim").unique()):
        for mode in ("fwd", "bwd"):
            rows = ms[(ms.index.get_level_values("headdim") == d) & (ms.index.get_level_values("mode") == mode)]
            ratios = (rows["fa2-varlen"] / rows["torch-varlen"]).sort_index(level="seqlen_q")
            shown = " and ".join(f"{r:.2f}x" for r in ratios)
            cells.append(f"d{d} {mode} {shown}")
    lengths = " and ".join(kilo(n) for n in sorted(set(ms.index.get_level_values("seqlen_q"))))
    return (f"with {int(gqa['heads'].iloc[0])} query heads over {int(gqa['kv_heads'].iloc[0])} K/V heads "
            f"([`{TORCH_VARLEN[0]}`](results/{TORCH_VARLEN[0]})) {unsupported} of {len(torch_gqa)} `torch-varlen` "
            f"points are unsupported: \"{reasons}\"; with as many K/V heads as query heads "
            f"([`{TORCH_VARLEN[1]}`](results/{TORCH_VARLEN[1]})) {ran} of its points ran and passed the float64 "
            f"check, and `torch-varlen` runs at {'; '.join(cells)} the speed of `fa2-varlen` (at {lengths})")


def variants_dkdv_tiles(root: Path) -> str:
    """The dK/dV tile A/B (``tools/tiles_ab.py --kernel bwd_dkdv``): the backward's median time over the rounds per
    forced tile, and its speed against the first tile (the autotuner's pick)."""
    parts = []
    for run in DKDV_TILES:
        frame = pd.read_csv(root / run / "tiles_ab.csv")
        ms = frame.groupby("tile", sort=False)["ms"].median()
        first = ms.iloc[0]
        shown = [f"{tile} {t:.2f} ms" + ("" if i == 0 else f" ({first / t:.2f}x)")
                 for i, (tile, t) in enumerate(ms.items())]
        rounds = frame["round"].nunique()
        parts.append(f"[`{run}`](results/{run}) ({frame['variant'].iloc[0]}, {rounds} rounds): " + ", ".join(shown))
    return "; ".join(parts)


def variants_dq_streams(root: Path) -> str:
    """The A/B of the dQ kernel on a second stream (``tools/bench_bwd_flat.py --modes 1,1+s``): per variant, the
    backward's median time in each mode and the speed of ``1+s`` over ``1``, and whether the gradients agreed."""
    frame = pd.read_csv(root / DQ_STREAMS_AB / "bench_bwd_flat.csv")
    parts = []
    for variant, rows in frame.groupby("variant", sort=False):
        alone, beside = rows.set_index("flat")["bwd_ms"].loc[["1", "1+s"]]
        parts.append(f"{variant} {alone:.2f} -> {beside:.2f} ms ({alone / beside:.3f}x)")
    same = "bit-identical" if (frame["max_grad_diff_last_vs_first"] == 0).all() else "not identical"
    return (f"[`{DQ_STREAMS_AB}`](results/{DQ_STREAMS_AB}) ({int(frame['rounds'].iloc[0])} rotated rounds, "
            f"autotuned), the backward one stream -> two: {'; '.join(parts)}; gradients {same}")


def variants_dense_flat(root: Path) -> str:
    """The dense one-loop A/Bs (``tools/bench_bwd_flat.py --variants dense``), one table row per (run, mode): the
    shape from the run's meta.json, the forward's and the backward's speed over the first mode, and whether the
    gradients agreed."""
    lines = ["| run | head dim, heads | mode | fwd | bwd |", "| --- | --- | --- | ---: | ---: |"]
    same = True
    for run in DENSE_FLAT_AB:
        frame = pd.read_csv(root / run / "bench_bwd_flat.csv")
        same &= bool((frame["max_grad_diff_last_vs_first"] == 0).all())
        a = read_meta(root, run)["args"]
        shape = f"d{a['headdim']}, {a['batch']} x {a['heads']} / {a['kv_heads']}, {kilo(int(a['seqlen']))}"
        for _, row in frame.iloc[1:].iterrows():
            lines.append(f"| [`{run}`](results/{run}) | {shape} | `{row['flat']}` over `{frame['flat'].iloc[0]}` | "
                         f"{row['fwd_speed_vs_first']:.3f}x | {row['bwd_speed_vs_first']:.3f}x |")
    said = "are bit-identical to" if same else "differ from"
    return "\n" + "\n".join(lines) + f"\n\nIn every run the last mode's gradients {said} the first's.\n"


def variants_versus(root: Path, run: str, before: str = VARIANTS_H100_ONE_STREAM, headdims: tuple[int, ...] = (128,),
                    skip: tuple[str, ...] = ()) -> str:
    """fa2 against FlexAttention in ``run`` beside ``before``, for the cells at ``headdims`` whose every point ran in
    both, leaving out the variants in ``skip``: the median over the sequence lengths of time(Flex) / time(fa2), per
    (variant, mode, head dim), bf16 / fp16. A cell with fewer points in ``run`` (a run cut short) is an error."""
    now, then = _variant_ms(root, (run,)), _variant_ms(root, (before,))
    done = int(now.notna().to_numpy().sum())  # one cell per ok point: a point is one (shape, variant, provider)
    cells = []
    for headdim in headdims:
        for variant in (v for v in PRESET_VARIANTS if v not in skip):
            for mode in ("fwd", "bwd"):
                key = dict(variant=variant, mode=mode, headdim=headdim)
                pair = [[_median_ratio(ms, "flex", "fa2", dtype=dtype, **key) for dtype in ("bf16", "fp16")]
                        for ms in (now, then)]
                cell = [(ms.xs((mode, variant, headdim), level=("mode", "variant", "headdim"))[["fa2", "flex"]]
                         .notna().all(axis=1).sum()) for ms in (now, then)]
                if cell[0] != cell[1]:
                    raise ValueError(f"{run}: {variant} {mode} d{headdim} has {cell[0]} of "
                                     f"{cell[1]} points; only whole cells are shown")
                name = f"{variant} {mode}" + (f" d{headdim}" if len(headdims) > 1 else "")
                cells.append(f"{name} {pair[0][0]:.2f} / {pair[0][1]:.2f} ({pair[1][0]:.2f} / {pair[1][1]:.2f})")
    dims = " and ".join(str(d) for d in headdims)
    return (f"[`{run}`](results/{run}) ({done} points ok), fa2 / Flex at head dim {dims}, bf16 / fp16 (in "
            f"`{before}`): " + "; ".join(cells))
