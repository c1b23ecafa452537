"""The scaling report of a context-parallel run: ring.csv -> scaling.csv (scaling efficiency against the same
method on one GPU) and scaling.png (TFLOP/s per GPU, efficiency, communication hidden)."""
from __future__ import annotations

import sys
from pathlib import Path

from fa2bench.distributed import ring

CSV_NAME = "ring.csv"
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
            m = ring.METHODS[method]
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


def report(out: Path) -> int:
    import pandas as pd

    path = out / CSV_NAME
    if not path.exists():
        print(f"fa2bench: error: no {CSV_NAME} in {out}", file=sys.stderr)
        return 2
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""]).rename(columns=STORE_NAMES)
    frame["causal"] = frame["causal"].astype(str).str.lower().isin(["true", "1"])
    table = scaling(frame)
    table.to_csv(out / "scaling.csv", index=False)
    if len(table):
        figure(table).savefig(out / "scaling.png", dpi=120)
    cols = ["method", "mode", "seqlen", "world_size", "ms", "tflops_per_gpu", "scaling_efficiency_pct",
            "comm_hidden_pct", "peak_mem_gb"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.1f}") if len(table) else "no ok rows")
    bad = frame[frame["status"] != "ok"]
    for r in bad.to_dict("records"):
        print(f"{r['status']}: {r['method']} {r['mode']} s{r['seqlen']} x{r['world_size']}: {r['error']}")
    return 0



def main(argv: list[str] | None = None) -> int:
    """``python -m fa2bench.distributed.ringreport OUT``: scaling.csv and scaling.png from OUT's ring.csv again
    (``fa2bench ring`` writes them after its last world size)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fa2bench.distributed.ringreport RUN_DIR", file=sys.stderr)
        return 2
    return report(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
