"""Figures from a results frame alone: every kind is drawn from a synthetic H100 run and from a real run on
disk; points that did not run are labelled, never drawn as zero; labels and colours come from the provider
registry; partial, CPU-interpreter and odd runs never crash ``plot``."""
import re
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.colors import to_hex
from typer.testing import CliRunner

from fa2bench.run import hardware

from fa2bench.core import iomodel, providers

from fa2bench.read import plots
from fa2bench.cli import app
from fa2bench.core.presets import Shape
from fa2bench.run.results import load_run
from tests.synthetic import H100, H100_PEAK, copy_of_committed_run, results_frame, write_run

runner = CliRunner()


@pytest.fixture(scope="module")
def run():
    """4 seqlens x 2 head dims x causal or not x fwd, bwd x 6 providers, H100, fp16."""
    return results_frame()


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_every_kind_is_written(run, tmp_path):
    plotted = plots.plot_run(run, tmp_path)
    assert plotted.skipped == {}
    stems = ["throughput-fwd", "throughput-bwd", "speedup", "fraction_of_peak-fwd", "fraction_of_peak-bwd",
             "memory", "roofline"]
    written = [p for files in plotted.files.values() for p in files]
    assert sorted(p.name for p in written) == sorted(f"{s}.png" for s in stems)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)


def test_throughput_marks_points_that_did_not_run_instead_of_drawing_zero(run):
    fig = plots.throughput(run, mode="bwd")
    bwd = run[run["mode"] == "bwd"]
    texts = _texts(fig)
    assert texts.count("OOM") == 4  # naive at the longest sequence, in each (head dim, causal) panel
    assert texts.count("n/a") == 16  # flash-attn is not installed: every point
    assert texts.count("error") == 1 and texts.count("wrong") == 1
    bars = [p for ax in fig.axes for p in ax.patches]
    assert len(bars) == (bwd["status"] == "ok").sum()
    assert all(b.get_height() > 0 for b in bars)
    values = [t for t in texts if t not in plots.MARKS.values()]
    assert len(values) == len(bars)  # every bar carries its value


def test_throughput_takes_labels_and_colours_from_the_registry_and_draws_both_peaks(run):
    fig = plots.throughput(run, mode="fwd")
    ok = run[(run["mode"] == "fwd") & (run["status"] == "ok")]
    assert {to_hex(p.get_facecolor()) for ax in fig.axes for p in ax.patches} == \
        {providers.get(p).color for p in set(ok["provider"])}
    labels = _legend_labels(fig)
    for name in set(run["provider"]):
        assert providers.get(name).label in labels
    for ax in fig.axes:
        assert {round(line.get_ydata()[0], 1) for line in ax.lines} == {312.0, H100_PEAK}
    title = fig._suptitle.get_text()
    assert H100 in title and "fp16" in title and "batch·seqlen = 16k" in title


def _at_one_point(f):
    return f[(f["mode"] == "fwd") & (f["headdim"] == 64) & (~f["causal"]) & (f["seqlen_q"] == 1024)]


def test_speedups_are_fa2_over_every_other_provider_where_both_ran(run):
    table = plots.speedups(run)
    assert set(table["baseline"]) == {"naive", "fa1", "sdpa-flash", "torch-eager"}  # not flash-attn: never ran
    ms = _at_one_point(run).set_index("provider")["ms"]
    got = _at_one_point(table).set_index("baseline")["speedup"]
    assert got["naive"] == pytest.approx(ms["naive"] / ms["fa2"])
    assert got["fa1"] > 1 > got["sdpa-flash"]
    fig = plots.speedup(run)
    assert len(fig.axes) == 2 * 4  # (fwd, bwd) x (d64, d128) x (causal or not)
    assert {f"vs {providers.get(b).label}" for b in set(table["baseline"])} <= set(_legend_labels(fig))


def test_fraction_of_peak_uses_the_device_peak_and_falls_back_to_the_a100(run):
    fig = plots.fraction_of_peak(run, mode="fwd")
    assert f"% of {H100} peak" in fig.axes[-1].get_ylabel()  # the colour bar
    assert "OOM" in _texts(fig) and "n/a" in _texts(fig)
    cpu = results_frame(gpu=None, providers=("fa2", "torch-eager"), seqlens=(64, 128), headdims=(32,))
    fig = plots.fraction_of_peak(cpu)
    assert "A100" in fig.axes[-1].get_ylabel()


def test_memory_marks_oom_points_and_is_skipped_without_measurements(run, tmp_path):
    fig = plots.memory(run)
    naive = providers.get("naive").color
    crosses = [c for ax in fig.axes for c in ax.collections if to_hex(c.get_facecolor()[0]) == naive]
    assert len(crosses) == 4  # one oom cross per (mode, head dim) panel
    assert "causal" not in " ".join(ax.get_title() for ax in fig.axes)  # non-causal points are shown
    cpu = results_frame(gpu=None, providers=("fa2", "torch-eager"), seqlens=(64, 128), headdims=(32,))
    with pytest.raises(plots.NothingToPlot, match="peak-memory"):
        plots.memory(cpu)
    assert "memory" in plots.plot_run(cpu, tmp_path, kinds=("memory",)).skipped


@pytest.mark.parametrize("name, tb_per_s", [
    ("NVIDIA H100 80GB HBM3", 3.35), ("NVIDIA H100 PCIe", 2.0), ("NVIDIA H200", 4.8),
    ("NVIDIA A100-SXM4-80GB", 2.0), ("NVIDIA A100-SXM4-40GB", 1.555), ("NVIDIA A100-PCIE-40GB", 1.555),
    ("Some Future GPU", None), (None, None),
])
def test_hbm_bandwidth_table(name, tb_per_s):
    found = hardware.hbm_bandwidth(name)
    assert (found[0] if found else None) == tb_per_s


def test_roofline_ceilings_prefer_measured_numbers_and_name_their_source(run):
    meta = run.attrs["meta"]
    datasheet = plots.ceilings(meta, "fp16")
    assert (datasheet.compute_tflops, datasheet.bandwidth_tbs) == (H100_PEAK, 3.35)
    assert datasheet.compute_source == datasheet.bandwidth_source == "datasheet"
    measured = plots.ceilings({**meta, "ceilings": {"matmul_fp16_tflops": 700.0, "copy_tb_per_s": 2.9}}, "fp16")
    assert (measured.compute_tflops, measured.bandwidth_tbs, measured.datasheet_tflops) == (700.0, 2.9, H100_PEAK)
    assert "measured" in measured.compute_source and "measured" in measured.bandwidth_source
    unknown = plots.ceilings({"gpus": [], "device": "cpu"}, "fp32")
    assert unknown.compute_tflops is None and unknown.bandwidth_tbs is None

    fig = plots.roofline(results_frame(ceilings={"matmul_fp16_tflops": 700.0, "copy_tb_per_s": 2.9}))
    labels = " ".join(_legend_labels(fig))
    assert "2.90 TB/s (measured copy)" in labels and "700 TFLOP/s (measured fp16 matmul)" in labels
    roof = fig.axes[0].lines[0].get_ydata()
    assert roof.max() == pytest.approx(700.0)


def test_roofline_intensity_is_flops_over_the_byte_model(run):
    points = plots.intensity(run)
    assert all(iomodel.modelled(p) for p in points["provider"])
    assert (points["status"] == "ok").all()
    r = points.iloc[0]
    shape = Shape(*(int(r[c]) for c in ("batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim")),
                  bool(r["causal"]))
    model = iomodel.hbm_bytes(r["provider"], shape, r["mode"], r["dtype"], config=r["config"] or None)
    assert r["intensity"] == pytest.approx(r["flops"] / model)
    stranger = run.assign(provider=run["provider"].replace({"fa2": "not-modelled"}))
    assert "not-modelled" not in set(plots.intensity(stranger)["provider"])


def test_roofline_places_points_by_measured_bytes_where_an_io_study_measured_them(run, tmp_path):
    """fa2's modelled bytes count no L2 reuse; with the run's folder holding Nsight Compute's DRAM bytes for a
    point, that point is drawn again, hollow, at FLOPs per measured byte."""
    points = plots.intensity(run)
    fa2 = points[(points["provider"] == "fa2") & (points["mode"] == "fwd")].iloc[[0]]
    keys = ["provider", "mode", "dtype", "batch", "heads", "kv_heads", "seqlen_q", "seqlen_k", "headdim", "causal"]
    fa2[keys].assign(status="ok", dram_bytes=fa2["hbm_bytes"] / 4).to_csv(tmp_path / "io_study.csv", index=False)
    framed = run.copy()
    framed.attrs = {**run.attrs, "run_dir": str(tmp_path)}
    measured = plots.measured_intensity(points, str(tmp_path))
    assert len(measured) == 1 and measured["measured_intensity"].iloc[0] == pytest.approx(4 * fa2["intensity"].iloc[0])
    fig = plots.roofline(framed)
    assert "hollow: at the DRAM bytes Nsight Compute measured" in _legend_labels(fig)
    assert "hollow: at the DRAM bytes Nsight Compute measured" not in _legend_labels(plots.roofline(run))


def test_a_run_with_several_dtypes_or_batches_is_drawn_once_per_group(tmp_path):
    two = results_frame(dtypes=("fp16", "bf16"), providers=("fa2", "naive"), seqlens=(512, 1024), headdims=(64,),
                        modes=("fwd",))
    assert list(plots.split(two)) == ["fp16", "bf16"]
    with pytest.raises(ValueError, match="plots.split"):
        plots.throughput(two)
    plotted = plots.plot_run(two, tmp_path, kinds=("throughput",))
    names = sorted(p.name for p in plotted.files["throughput"])
    assert names == ["throughput-fwd-bf16.png", "throughput-fwd-fp16.png"]
    batches = pd.concat([results_frame(tokens=t, providers=("fa2",), seqlens=(512,), headdims=(64,),
                                       modes=("fwd",)) for t in (512, 4096)])
    assert list(plots.split(batches)) == ["fp16-b1", "fp16-b8"]


def test_partial_and_odd_runs_never_crash(tmp_path):
    base = results_frame(providers=("naive", "fa2"), seqlens=(512, 1024), headdims=(64,), modes=("fwd",))
    failed = base.assign(status="error", error="RuntimeError: boom", ms=float("nan"), tflops=float("nan"),
                         pct_device_peak=float("nan"), pct_a100_peak=float("nan"), peak_mem_mb=float("nan"))
    plotted = plots.plot_run(failed, tmp_path / "failed")
    assert [p.name for p in plotted.files["throughput"]] == ["throughput-fwd.png"]  # all labelled "error"
    assert set(plotted.skipped) == {"speedup", "fraction_of_peak", "memory", "roofline"}

    assert set(plots.plot_run(base.iloc[:0], tmp_path / "empty").skipped) == set(plots.FIGURES)
    plots.plot_run(base.iloc[:1], tmp_path / "one")

    stranger = base.assign(provider=base["provider"].replace({"naive": "from-the-future"}))
    fig = plots.throughput(stranger)
    assert "from-the-future" in _legend_labels(fig)

    csv_only = write_run(base, tmp_path / "csv-only")
    (csv_only / "meta.json").unlink()
    (csv_only / "results.parquet").unlink()
    frame = load_run(csv_only)
    assert "unknown GPU" in plots.throughput(frame)._suptitle.get_text()
    assert plots.plot_run(frame, tmp_path / "csv-figures").files


@pytest.mark.slow  # draws every figure of a real run
def test_a_real_run_on_disk_is_plotted(tmp_path):
    run_dir = copy_of_committed_run(tmp_path)
    plotted = plots.plot_run(load_run(run_dir), run_dir / "figures")
    assert plotted.files["throughput"]
    assert all(p.exists() and p.stat().st_size > 0 for files in plotted.files.values() for p in files)
    # every kind is drawn or says why, but the decode figure, which exists only for runs with decode rows
    assert set(plotted.files) | set(plotted.skipped) == set(plots.FIGURES) - set(plots.WHOLE_RUN)


def test_plot_command(tmp_path):
    run_dir = write_run(results_frame(providers=("naive", "fa2"), seqlens=(512, 1024), headdims=(64,),
                                      causal=(False,), modes=("fwd",)), tmp_path / "run")
    result = runner.invoke(app, ["plot", str(run_dir), "--out", str(tmp_path / "figs"), "--format", "png,svg"])
    assert result.exit_code == 0, result.output
    magic = {"png": b"\x89PNG", "svg": b"<?xml"}
    for fmt, head in magic.items():
        for stem in ("throughput-fwd", "speedup", "fraction_of_peak-fwd", "memory", "roofline"):
            assert (tmp_path / "figs" / f"{stem}.{fmt}").read_bytes().startswith(head)

    result = runner.invoke(app, ["plot", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no results folder" in result.output
    result = runner.invoke(app, ["plot", str(run_dir), "--format", "gif"])
    assert result.exit_code == 2 and "--format" in result.output


def test_ratio_labels_read_as_plain_numbers():
    from fa2bench.read.display import ratio_label

    assert [ratio_label(v) for v in (2, 0.25, 1 / 1024, 0.3, 1024)] == ["2×", "1/4×", "1/1024×", "0.3×", "1024×"]
    assert "e+" not in ratio_label(1 / 1.02e3)


def _tick_labels(fig, axis: str) -> list[list]:
    """Per panel, the drawn tick labels (major and minor) of ``axis`` ("x" or "y") inside the view: (text, box)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    panels = []
    for ax in fig.axes:
        which = getattr(ax, f"get_{axis}axis")()
        ticks = which.get_major_ticks() + which.get_minor_ticks()
        lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
        panels.append([(t.label1.get_text(), t.label1.get_window_extent(renderer)) for t in ticks
                       if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi])
    return panels


def test_roofline_log_ticks_are_plain_numbers_that_do_not_run_together():
    """The committed H100 roofline's axes once read "2×10³×4×10 6×10¹": every label is now a plain number and no
    two labels of one axis overlap."""
    frame = load_run(Path(__file__).resolve().parents[1] / "results" / "h100-top")
    fig = plots.roofline(frame[frame["dtype"] == "fp16"], frame.attrs["meta"])
    for axis in ("x", "y"):
        for labels in _tick_labels(fig, axis):
            assert len(labels) >= 2
            assert all(re.fullmatch(r"\d+(\.\d+)?", text) for text, _ in labels), [t for t, _ in labels]
            boxes = [box for _, box in labels]
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), [t for t, _ in labels]


def test_a_speedup_axis_a_thousand_times_below_one_reads_as_a_fraction(run):
    """A CPU run's fa2 is about a thousand times slower than the eager baselines: its ticks read "1/1024×",
    never "1/1.02e+03×"."""
    slow = run.assign(ms=run["ms"].where(run["provider"] != "fa2", run["ms"] * 1500))
    labels = [text for panel in _tick_labels(plots.speedup(slow), "y") for text, _ in panel]
    assert "1/1024×" in labels and not any("e+" in t or "e-" in t for t in labels), labels
