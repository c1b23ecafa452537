"""The report of a ring run (``fa2bench report R``, through ``api.report``, as every kind of run): ring.csv ->
scaling.csv (scaling efficiency = time on 1 GPU / (N x time on N GPUs), per method; all-gather shares ring-fa2's
one-GPU time: on one GPU both are one fa2 call), scaling.png (TFLOP/s per GPU, efficiency, communication hidden)
and report.md. Torch-free: it reads the folder only."""
from __future__ import annotations

import sys
from pathlib import Path

from fa2bench.distributed.methods import METHODS

CSV_NAME, REPORT_NAME = "ring.csv", "report.md"
KIND = "ring"  # meta.json's "kind" of a ring run
STORE_NAMES = {"provider": "method", "seqlen_q": "seqlen"}  # ring.csv's columns in the results store -> the report's


def scaling(frame):
    """ring.csv rows that ran, with scaling efficiency against the same method on one GPU."""
    import pandas as pd

    frame = frame.rename(columns=STORE_NAMES)
    ok = frame[frame["status"] == "ok"].copy()
    keys = ["method", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen", "headdim", "causal"]
    one = ok[ok["world_size"] == 1][keys + ["ms"]].rename(columns={"ms": "ms_1gpu"})
    # all-gather on one GPU is ring-fa2 on one GPU (one fa2 call): it shares that baseline
    shared = one[one["method"] == "ring-fa2"].assign(method="allgather-fa2")
    one = pd.concat([one, shared[~shared.set_index(keys).index.isin(one.set_index(keys).index)]])
    ok = ok.merge(one, on=keys, how="left")
    ok["speedup"] = ok["ms_1gpu"] / ok["ms"]
    ok["scaling_efficiency_pct"] = 100.0 * ok["speedup"] / ok["world_size"]
    return ok.sort_values(keys + ["world_size"]).reset_index(drop=True) if len(ok) else pd.DataFrame(
        columns=list(ok.columns))


def figure(table):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(table["mode"]))
    fig, axes = plt.subplots(len(modes), 3, figsize=(15, 4.2 * len(modes)), squeeze=False)
    styles = ["-", "--", ":", "-."]
    seqlens = sorted(set(table["seqlen"]))
    for i, mode in enumerate(modes):
        part = table[table["mode"] == mode]
        ax_t, ax_e, ax_h = axes[i]
        for (method, seqlen), g in part.groupby(["method", "seqlen"]):
            m = METHODS[method]
            style = styles[seqlens.index(seqlen) % len(styles)]
            label = f"{m.label}, {seqlen // 1024}k"
            ax_t.plot(g["world_size"], g["tflops_per_gpu"], style, marker="o", color=m.color, label=label)
            ax_e.plot(g["world_size"], g["scaling_efficiency_pct"], style, marker="o", color=m.color, label=label)
            if method == "ring-fa2":
                multi = g[g["world_size"] > 1]
                ax_h.plot(multi["world_size"], multi["comm_hidden_pct"], style, marker="o", color=m.color,
                          label=label)
        worlds = sorted(set(part["world_size"]))
        for ax, title, ylabel in ((ax_t, "TFLOP/s per GPU", "TFLOP/s"), (ax_e, "scaling efficiency", "%"),
                                  (ax_h, "ring-fa2: communication hidden", "%")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(worlds, [str(w) for w in worlds])
            ax.set_xlabel("GPUs")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{mode}: {title}")
            ax.grid(alpha=0.3)
        ax_e.set_ylim(0, 110)
        ax_h.set_ylim(0, 105)
        ax_t.legend(fontsize=7)
    first = table.iloc[0]
    fig.suptitle(f"Context-parallel attention, {first['gpu']}: batch {first['batch']}, {first['heads']} heads "
                 f"(kv {first['kv_heads']}), d{first['headdim']}, {first['dtype']}, "
                 f"{'causal' if first['causal'] else 'non-causal'}")
    fig.tight_layout()
    return fig


def is_ring(run_dir: Path, meta: dict | None = None) -> bool:
    """Whether a folder holds a ring run: meta.json (``meta`` if the caller has read it) says so, or (a run from
    before it did) it holds ring.csv and no sweep results."""
    from fa2bench.run.results import CSV_NAME as SWEEP_CSV, read_meta

    run_dir = Path(run_dir)
    if meta is None:
        meta = read_meta(run_dir) if run_dir.is_dir() else {}
    kind = meta.get("kind")
    return kind == KIND if kind else (run_dir / CSV_NAME).exists() and not (run_dir / SWEEP_CSV).exists()


def load(out: Path):
    """ring.csv as the report reads it (the results store's column names renamed: ``STORE_NAMES``)."""
    import pandas as pd

    from fa2bench.run.results import ResultsError

    path = Path(out) / CSV_NAME
    if not path.exists():
        raise ResultsError(f"no {CSV_NAME} in {out}")
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""]).rename(columns=STORE_NAMES)
    frame["causal"] = frame["causal"].astype(str).str.lower().isin(["true", "1"])
    return frame


SHOWN = ["method", "mode", "seqlen", "world_size", "ms", "tflops_per_gpu", "scaling_efficiency_pct",
         "comm_hidden_pct", "peak_mem_gb"]


def write_figure(out: Path, folder: Path | None = None, formats=("png",), table=None) -> list[Path]:
    """The ring run's scaling figure (what ``fa2bench plot`` draws for it): scaling.png and any other
    ``formats`` in ``folder`` (default: the run folder); none when no point ran."""
    out = Path(out)
    folder = Path(folder) if folder is not None else out
    table = scaling(load(out)) if table is None else table
    if not len(table):
        return []
    folder.mkdir(parents=True, exist_ok=True)
    fig = figure(table)
    paths = [folder / f"scaling.{fmt}" for fmt in dict.fromkeys(("png", *formats))]
    for path in paths:
        fig.savefig(path, dpi=120, format=path.suffix[1:])
    return paths


def write_report(out: Path, formats=("png",)) -> Path:
    """The ring run's report (what ``fa2bench report`` writes for it): scaling.csv, the figure (scaling.png and
    any other ``formats``) and report.md (the scaling table, the points that did not run, the figure)."""
    out = Path(out)
    frame = load(out)
    table = scaling(frame)
    table.to_csv(out / "scaling.csv", index=False)
    write_figure(out, out, formats, table)
    path = out / REPORT_NAME
    path.write_text(render(frame, table, out.name))
    return path


def render(frame, table, name: str) -> str:
    from fa2bench.read.markdown import md_table

    def cell(value):
        return "" if value != value else f"{value:.1f}" if isinstance(value, float) else value

    sections = [f"# fa2bench ring run `{name}`",
                "Context-parallel attention over GPUs (docs/multigpu.md): time, TFLOP/s per GPU, scaling efficiency "
                "against the same method on one GPU, communication hidden behind compute (ring-fa2) and memory per "
                "GPU; every row is in scaling.csv."]
    if len(table):
        sections += ["## Scaling", md_table([[cell(r[c]) for c in SHOWN] for r in table[SHOWN].to_dict("records")],
                                             SHOWN, "ll" + "r" * (len(SHOWN) - 2)), "![scaling](scaling.png)"]
    bad = frame[frame["status"] != "ok"]
    if len(bad):
        sections += ["## Points that did not run", md_table(
            [[r["status"], r["method"], r["mode"], r["seqlen"], r["world_size"], r["error"]]
             for r in bad.to_dict("records")], ["status", "method", "mode", "seqlen", "world_size", "error"])]
    return "\n\n".join(sections) + "\n"


def report(out: Path) -> int:
    """``write_report``, then the scaling table and the points that did not run on the terminal (what
    ``fa2bench ring`` shows after its last world size)."""
    import pandas as pd

    from fa2bench.run.results import ResultsError

    try:
        write_report(out)
    except ResultsError as exc:
        print(f"fa2bench: error: {exc}", file=sys.stderr)
        return 2
    frame, table = load(out), pd.read_csv(Path(out) / "scaling.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[SHOWN].to_string(index=False, float_format=lambda x: f"{x:.1f}") if len(table) else "no ok rows")
    for r in frame[frame["status"] != "ok"].to_dict("records"):
        print(f"{r['status']}: {r['method']} {r['mode']} s{r['seqlen']} x{r['world_size']}: {r['error']}")
    return 0
